"""``--state-dir`` from Python: the time from ``kill -9`` of the server to the first
successful get after a restart, with 1 and 3 resident tables (server-side ingest of a
Parquet file), and steady puts and gets with and without ``--state-dir``, alternating.

    python python/bench/bench_durable.py --parquet loadgen-data/table-10000000rows-12cols-seed42-rg1000000-gen1.parquet

Starts ``arrowpoold`` (``$ARROWPOOLD``, default target/release/arrowpoold) itself, on a
state directory under /dev/shm that it removes at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

import arrowpool

REPO = Path(__file__).resolve().parents[2]
SERVER = os.environ.get("ARROWPOOLD", str(REPO / "target/release/arrowpoold"))


def start(sock: str, memory: str, state: str | None, log) -> subprocess.Popen:
    args = [SERVER, "--socket", sock, "--memory", memory]
    if state:
        args += ["--state-dir", state]
    p = subprocess.Popen(args, stderr=log)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 20:
        try:
            arrowpool.connect(sock, autostart=False).close()
            return p
        except Exception:
            time.sleep(0.005)
    raise SystemExit("server did not start")


def kill(p: subprocess.Popen) -> None:
    os.kill(p.pid, signal.SIGKILL)
    p.wait()


def restart_times(work: Path, parquet: str, tables: int, trials: int, memory: str, log) -> list[float]:
    state, sock = str(work / f"state-{tables}"), str(work / "r.sock")
    shutil.rmtree(state, ignore_errors=True)
    p = start(sock, memory, state, log)
    c = arrowpool.connect(sock, autostart=False)
    for i in range(tables):
        c.ingest(parquet, f"t{i}")
    c.close()
    out = []
    for _ in range(trials):
        kill(p)
        t0 = time.perf_counter()
        p = subprocess.Popen([SERVER, "--socket", sock, "--memory", memory, "--state-dir", state], stderr=log)
        while True:
            try:
                c = arrowpool.connect(sock, autostart=False)
                t = c.get(f"t{tables - 1}")
                break
            except Exception:
                time.sleep(0.001)
        out.append(time.perf_counter() - t0)
        del t
        c.close()
    kill(p)
    shutil.rmtree(state, ignore_errors=True)
    return out


def steady(sock: str, table: pa.Table, puts: int, gets: int) -> tuple[list[float], float]:
    c = arrowpool.connect(sock, autostart=False)
    put_s = []
    for _ in range(puts):
        t = time.perf_counter()
        c.put("steady", table)
        put_s.append(time.perf_counter() - t)
    get_s = []
    for _ in range(gets):
        t = time.perf_counter()
        got = c.get("steady")
        get_s.append(time.perf_counter() - t)
        del got
    c.close()
    return put_s[1:], statistics.median(get_s)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parquet", required=True)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--memory", default="8G")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="arrowpool-bench-", dir="/dev/shm"))
    log = open(work / "server.log", "a")
    try:
        parquet = os.path.abspath(a.parquet)
        for n in (1, 3):
            ms = [x * 1000 for x in restart_times(work, parquet, n, a.trials, a.memory, log)]
            print(f"kill -9 -> first get, {n} table(s) resident: " + ", ".join(f"{x:.0f}" for x in ms) + " ms")
        rng = np.random.default_rng(1)
        per = a.rows // 10
        table = pa.concat_tables(
            pa.table({f"c{i}": rng.random(per) if i % 2 else rng.integers(0, 1 << 40, per) for i in range(12)})
            for _ in range(10)
        )
        print(f"steady puts of {table.nbytes / 1e9:.2f} GB and gets, alternating servers:")
        for r in range(a.rounds):
            for state in (None, str(work / "state-steady")):
                if state:
                    shutil.rmtree(state, ignore_errors=True)
                sock = str(work / "s.sock")
                p = start(sock, a.memory, state, log)
                puts, get = steady(sock, table, 6, 2000)
                kill(p)
                label = "--state-dir" if state else "memfd     "
                print(
                    f"  round {r} {label}: puts "
                    + ", ".join(f"{x * 1000:.0f}" for x in puts)
                    + f" ms (median {statistics.median(puts) * 1000:.0f}); get median {get * 1e6:.0f} us"
                )
    finally:
        log.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
