"""Cold paths from Python: the first put of a new client process into a server that
has been idle, against a single-thread memcpy of the same bytes in the same process,
then steady puts; and a get after 0.5 s idle against a plain Unix-socket round trip
after the same idle.

    python python/bench/bench_cold.py [--rows 10000000] [--idle 10]

Starts ``arrowpoold`` (``$ARROWPOOLD``, default target/release/arrowpoold) with
only ``--memory`` (half the machine's memory, the autostart default) and
``$ARROWPOOLD_ARGS``, waits
``--idle`` seconds, then measures in a fresh Python process.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CHILD = r"""
import os, socket, statistics, sys, threading, time
import numpy as np, pyarrow as pa
import arrowpool

sock, rows, echo_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rng = np.random.default_rng(1)
# 10 batches whose buffers are their own (not slices of one).
per = rows // 10
parts = []
for _ in range(10):
    parts.append(pa.table({f"c{i}": rng.random(per) if i % 2 else rng.integers(0, 1 << 40, per) for i in range(12)}))
table = pa.concat_tables(parts)
nbytes = table.nbytes
# Single-thread memcpy of the same bytes into touched memory (the reference).
src = [np.frombuffer(b, dtype=np.uint8) for c in table.columns for ch in c.chunks for b in ch.buffers() if b is not None]
dst = np.empty(nbytes, dtype=np.uint8); dst[:] = 1
memcpy = []
for _ in range(5):
    t = time.perf_counter(); at = 0
    for s in src:
        dst[at:at + s.size] = s; at += s.size
    memcpy.append(time.perf_counter() - t)
c = arrowpool.connect(sock, autostart=False)
puts = []
for i in range(6):
    t = time.perf_counter(); c.put("cold", table); puts.append(time.perf_counter() - t)
# get after idle vs echo after idle
def echo_rt():
    s = socket.socket(socket.AF_UNIX); s.connect(echo_path)
    out = []
    for _ in range(8):
        time.sleep(0.5)
        t = time.perf_counter(); s.sendall(b"x"); s.recv(1); out.append(time.perf_counter() - t)
    s.close(); return out
gets = []
for _ in range(8):
    time.sleep(0.5)
    t = time.perf_counter(); g = c.get("cold"); gets.append(time.perf_counter() - t); del g
pings = []
for _ in range(8):
    time.sleep(0.5)
    t = time.perf_counter(); c.ping(); pings.append(time.perf_counter() - t)
# The client-side half of a get (open the IPC file in the arena) after the same idle.
conn, got, lease = c._get("cold")
buf = pa.foreign_buffer(conn.ro_address + got.offset, got.length, base=lease)
opens = []
for _ in range(8):
    time.sleep(0.5)
    t = time.perf_counter(); tt = pa.ipc.open_file(buf).read_all(); opens.append(time.perf_counter() - t); del tt
echo = echo_rt()
ms = lambda xs: ", ".join(f"{x*1e3:.1f}" for x in xs)
us = lambda xs: ", ".join(f"{x*1e6:.0f}" for x in xs)
m = statistics.median(memcpy)
print(f"table {nbytes/1e9:.3f} GB; memcpy (1 thread, touched pages) ms: {ms(memcpy)} (median {m*1e3:.1f})")
print(f"puts ms: {ms(puts)}; first/memcpy {puts[0]/m:.2f}x, steady (median of last 4)/memcpy {statistics.median(puts[2:])/m:.2f}x")
print(f"get after 0.5 s idle us: {us(gets)} (median {statistics.median(gets)*1e6:.0f})")
print(f"ping after 0.5 s idle us: {us(pings)} (median {statistics.median(pings)*1e6:.0f})")
print(f"open of the got table's IPC file (client only) after 0.5 s idle us: {us(opens)} (median {statistics.median(opens)*1e6:.0f})")
print(f"echo after 0.5 s idle us: {us(echo)} (median {statistics.median(echo)*1e6:.0f}); get/echo {statistics.median(gets)/statistics.median(echo):.2f}x")
"""


def echo_server(path: str, stop: threading.Event) -> None:
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(4)
    srv.settimeout(0.5)
    while not stop.is_set():
        try:
            conn, _ = srv.accept()
        except socket.timeout:
            continue
        with conn:
            while True:
                b = conn.recv(1)
                if not b:
                    break
                conn.sendall(b)
    srv.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--idle", type=float, default=10.0)
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "python"))
    from arrowpool.server import default_memory, listening

    binary = os.environ.get("ARROWPOOLD") or str(REPO / "target/release/arrowpoold")
    work = Path(tempfile.mkdtemp(prefix="arrowpool-cold-"))
    sock, echo = str(work / "s.sock"), str(work / "echo.sock")
    stop = threading.Event()
    # The echo server runs in a process of its own, as a second party would.
    echo_proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, threading; sys.path.insert(0, {str(Path(__file__).parent)!r})
            from bench_cold import echo_server
            echo_server({echo!r}, threading.Event())
        """)]
    )
    extra = os.environ.get("ARROWPOOLD_ARGS", "").split()
    server = subprocess.Popen(
        [binary, "--socket", sock, "--memory", default_memory(), *extra], stderr=subprocess.DEVNULL
    )
    try:
        while not (listening(sock) and os.path.exists(echo)):
            time.sleep(0.05)
        time.sleep(args.idle)
        out = subprocess.run([sys.executable, "-c", CHILD, sock, str(args.rows), echo], capture_output=True, text=True)
        print(out.stdout, end="")
        if out.returncode:
            print(out.stderr, file=sys.stderr)
    finally:
        stop.set()
        server.terminate()
        echo_proc.terminate()
        server.wait()
        echo_proc.wait()


if __name__ == "__main__":
    main()
