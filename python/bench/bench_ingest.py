"""Server-side ingest against pyarrow's own Parquet read, same file, same run: the
first ingest into a fresh server and the steady ones, against
``pyarrow.parquet.read_table`` (all cores, as pyarrow does by default).

    python python/bench/bench_ingest.py --parquet loadgen-data/table-10000000rows-12cols-seed42-rg1000000-gen1.parquet

For each of ``--rounds`` rounds: a server with default flags (``$ARROWPOOLD``, default
target/release/arrowpoold, ``--memory`` half the machine as autostart does) is started,
left idle ``--idle`` seconds, and ingests the file ``--ingests`` times (the first is
"first", the rest "steady"); between ingests pyarrow reads the file. The file is read
once before the first round, so every read (ours and pyarrow's) finds it in the page
cache. The ratios are medians: ingest time over ``read_table`` time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "python"))

import arrowpool  # noqa: E402

SERVER = os.environ.get("ARROWPOOLD", str(REPO / "target/release/arrowpoold"))


def half_memory() -> str:
    with open("/proc/meminfo") as f:
        kb = int(f.readline().split()[1])
    return f"{kb // 2 // 1024}M"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parquet", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ingests", type=int, default=4)
    ap.add_argument("--idle", type=float, default=10.0)
    a = ap.parse_args()
    path = os.path.abspath(a.parquet)
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass
    first, steady, reads = [], [], []
    for r in range(a.rounds):
        work = tempfile.mkdtemp(prefix="arrowpool-bench-")
        sock = os.path.join(work, "s.sock")
        p = subprocess.Popen([SERVER, "--socket", sock, "--memory", half_memory()], stderr=subprocess.DEVNULL)
        try:
            while True:
                try:
                    c = arrowpool.connect(sock, autostart=False)
                    break
                except Exception:
                    time.sleep(0.01)
            time.sleep(a.idle)
            row = []
            for i in range(a.ingests):
                t0 = time.perf_counter()
                t = pq.read_table(path)
                reads.append(time.perf_counter() - t0)
                del t
                t0 = time.perf_counter()
                c.ingest(path, "t")
                took = time.perf_counter() - t0
                (first if i == 0 else steady).append(took)
                row.append(took)
            print(
                f"round {r}: ingests " + ", ".join(f"{x * 1000:.0f}" for x in row)
                + " ms; read_table " + ", ".join(f"{x * 1000:.0f}" for x in reads[-a.ingests:]) + " ms",
                flush=True,
            )
            c.close()
        finally:
            p.kill()
            p.wait()
            shutil.rmtree(work, ignore_errors=True)
    read = statistics.median(reads)
    print(f"read_table median {read * 1000:.0f} ms")
    print(f"first ingest median {statistics.median(first) * 1000:.0f} ms = {statistics.median(first) / read:.2f}x read_table")
    print(f"steady ingest median {statistics.median(steady) * 1000:.0f} ms = {statistics.median(steady) / read:.2f}x read_table")


if __name__ == "__main__":
    main()
