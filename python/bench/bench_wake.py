"""Where a request after idle spends its time: the wake-up of a sleeping CPU.

    python python/bench/bench_wake.py [--idle 0.5] [--samples 8]

Starts ``arrowpoold`` (``$ARROWPOOLD``, default target/release/arrowpoold, plus
``$ARROWPOOLD_ARGS``) with one core thread (pinned by the server to CPU 0), then, for a client pinned to CPU 0 and
to CPU 1 in turn, measures after ``--idle`` seconds of sleep:

- a Unix-socket echo whose server thread is pinned to the client's CPU, and to the other;
- ``stats`` (a round trip that touches no table) to arrowpoold;
- ``stats`` back to back, for reference;
- a ``get`` of a 100k-row table, and the client's own part of it with no server at
  all (``pyarrow.ipc.open_file(...).read_all()`` of the same table in memory), after
  idle and back to back: what the process itself costs after a sleep.

On the 2-core VM this was written on, a round trip that must wake the other (idle)
virtual CPU costs 400-550 us whoever the server is, against about 90 us on the
client's own CPU: the figure a get after idle is compared with depends on where the
two threads sleep.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "python"))


def echo_peer(cpu: int) -> socket.socket:
    a, b = socket.socketpair()

    def serve() -> None:
        os.sched_setaffinity(0, {cpu})
        while True:
            data = b.recv(64)
            if not data:
                return
            b.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return a


def after_idle(op, idle: float, samples: int) -> list[float]:
    out = []
    for _ in range(samples):
        time.sleep(idle)
        began = time.perf_counter()
        op()
        out.append((time.perf_counter() - began) * 1e6)
    return out


def measure(sock_path: str, cpu: int, idle: float, samples: int) -> None:
    import arrowpool

    os.sched_setaffinity(0, {cpu})
    other = 1 - cpu
    c = arrowpool.connect(sock_path, autostart=False)
    rows = {}
    for label, peer_cpu in ((f"echo, peer on CPU {cpu} (same)", cpu), (f"echo, peer on CPU {other}", other)):
        s = echo_peer(peer_cpu)
        rows[label] = after_idle(lambda: (s.sendall(b"x"), s.recv(8)), idle, samples)
    rows["arrowpoold stats (server core on CPU 0)"] = after_idle(c.stats, idle, samples)
    rows["arrowpoold stats, back to back"] = after_idle(c.stats, 0, samples)
    import pyarrow as pa

    table = pa.table({"a": list(range(100_000)), "b": [str(i) for i in range(100_000)]})
    c.put("wake", table)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    buf = sink.getvalue()
    rows["arrowpoold get (100k rows)"] = after_idle(lambda: c.get("wake"), idle, samples)
    rows["arrowpoold get, back to back"] = after_idle(lambda: c.get("wake"), 0, samples)
    rows["no server: pyarrow open_file + read_all"] = after_idle(
        lambda: pa.ipc.open_file(buf).read_all(), idle, samples
    )
    rows["no server: the same, back to back"] = after_idle(
        lambda: pa.ipc.open_file(buf).read_all(), 0, samples
    )
    print(f"client on CPU {cpu}, after {idle} s idle:")
    for label, xs in rows.items():
        print(f"  {label:44s} median {statistics.median(xs):6.0f} us   {[round(x) for x in xs]}")
    c.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--idle", type=float, default=0.5)
    ap.add_argument("--samples", type=int, default=8)
    args = ap.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs two CPUs")
    binary = os.environ.get("ARROWPOOLD", str(REPO / "target/release/arrowpoold"))
    with tempfile.TemporaryDirectory() as d:
        sock = os.path.join(d, "s.sock")
        server = subprocess.Popen(
            [binary, "--socket", sock, "--memory", "256M", "--threads", "1",
             *os.environ.get("ARROWPOOLD_ARGS", "").split()],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            while not os.path.exists(sock):
                time.sleep(0.02)
            time.sleep(0.2)
            for cpu in (0, 1):
                measure(sock, cpu, args.idle, args.samples)
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
