"""Unix-socket gets and puts with and without the Flight listener (``--flight``),
alternating servers in one run: the listener must not slow the socket.

    python python/bench/bench_flight_ab.py --parquet loadgen-data/table-10000000rows-12cols-seed42-rg1000000-gen1.parquet

Each round starts a server without ``--flight`` and one with it (in turn), puts the
table (median of ``--puts`` puts of the whole table) and times ``--gets`` gets of it
(median). Starts ``arrowpoold`` (``$ARROWPOOLD``, default target/release/arrowpoold).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

import arrowpool

REPO = Path(__file__).resolve().parents[2]
SERVER = os.environ.get("ARROWPOOLD", str(REPO / "target/release/arrowpoold"))


def start(work: Path, memory: str, flight: bool) -> tuple[subprocess.Popen, str]:
    sock = str(work / ("f.sock" if flight else "p.sock"))
    args = [SERVER, "--socket", sock, "--memory", memory]
    if flight:
        args += ["--flight", "127.0.0.1:0"]
    p = subprocess.Popen(args, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 30:
        try:
            arrowpool.connect(sock, autostart=False).close()
            return p, sock
        except Exception:
            time.sleep(0.01)
    raise SystemExit("server did not start")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parquet", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--puts", type=int, default=4)
    ap.add_argument("--gets", type=int, default=3000)
    ap.add_argument("--memory", default="4G")
    args = ap.parse_args()
    table = pq.read_table(args.parquet)
    print(f"table: {table.num_rows} rows, {table.nbytes / 1e9:.2f} GB")
    work = Path(tempfile.mkdtemp(prefix="bench-flight-ab-"))
    results: dict[bool, dict[str, list[float]]] = {False: {"put": [], "get": []}, True: {"put": [], "get": []}}
    for r in range(args.rounds):
        for flight in ((False, True) if r % 2 == 0 else (True, False)):
            p, sock = start(work, args.memory, flight)
            try:
                c = arrowpool.connect(sock, autostart=False)
                puts = []
                for _ in range(args.puts):
                    t0 = time.perf_counter()
                    c.put("t", table)
                    puts.append(time.perf_counter() - t0)
                gets = []
                for _ in range(args.gets):
                    t0 = time.perf_counter()
                    t = c.get("t")
                    gets.append(time.perf_counter() - t0)
                    del t
                c.close()
            finally:
                p.terminate()
                p.wait()
            results[flight]["put"].append(statistics.median(puts[1:] or puts))
            results[flight]["get"].append(statistics.median(gets))
            print(f"round {r} {'with' if flight else 'without'} --flight: put {results[flight]['put'][-1] * 1e3:.0f} ms, "
                  f"get {results[flight]['get'][-1] * 1e6:.1f} us", flush=True)
    for what in ("put", "get"):
        off, on = statistics.median(results[False][what]), statistics.median(results[True][what])
        print(f"{what}: with --flight {on / off:.3f}x the time without (medians of rounds)")


if __name__ == "__main__":
    main()
