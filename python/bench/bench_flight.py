"""Arrow Flight over loopback: arrowpoold's ``--flight`` against pyarrow's own Flight
server serving the same table from memory, same run, alternating.

    python python/bench/bench_flight.py --parquet loadgen-data/table-10000000rows-12cols-seed42-rg1000000-gen1.parquet

``do_get``: a pyarrow client reads the whole table (``read_all``). ``do_put``: the
client sends the table; the pyarrow server reads it whole into memory
(``read_all``), arrowpoold writes it into its arena and publishes it. Throughput is
the table's Arrow bytes over the wall time of the call. Starts ``arrowpoold``
(``$ARROWPOOLD``, default target/release/arrowpoold) and the pyarrow server itself.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as fl
import pyarrow.parquet as pq

import arrowpool

REPO = Path(__file__).resolve().parents[2]
SERVER = os.environ.get("ARROWPOOLD", str(REPO / "target/release/arrowpoold"))


class MemoryServer(fl.FlightServerBase):
    """pyarrow's in-memory Flight example server, reduced to do_get and do_put."""

    def __init__(self, location: str):
        super().__init__(location)
        self.tables: dict[bytes, pa.Table] = {}
        self.lock = threading.Lock()

    def do_put(self, context, descriptor, reader, writer):
        t = reader.read_all()
        with self.lock:
            self.tables[descriptor.path[0]] = t

    def do_get(self, context, ticket):
        with self.lock:
            t = self.tables[ticket.ticket]
        return fl.RecordBatchStream(t)


def start_arrowpoold(work: Path, memory: str) -> tuple[subprocess.Popen, str, str]:
    sock = str(work / "a.sock")
    p = subprocess.Popen(
        [SERVER, "--socket", sock, "--memory", memory, "--flight", "127.0.0.1:0"],
        stderr=open(work / "arrowpoold.log", "wb"),
    )
    t0 = time.monotonic()
    while time.monotonic() - t0 < 30:
        try:
            c = arrowpool.connect(sock, autostart=False)
            addr = c.stats()["flight"]
            c.close()
            return p, sock, addr
        except Exception:
            time.sleep(0.01)
    raise SystemExit("arrowpoold did not start")


def timed(f) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parquet", required=True)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--memory", default="6G")
    args = ap.parse_args()

    table = pq.read_table(args.parquet)
    nbytes = table.nbytes
    print(f"table: {table.num_rows} rows x {table.num_columns} columns, {nbytes / 1e9:.2f} GB of Arrow data")

    # pyarrow's server runs in a process of its own, as arrowpoold does: a
    # server in the client's process would share its GIL and cores unfairly.
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, args.parquet],
        stdout=subprocess.PIPE, text=True,
    )
    port = int(child.stdout.readline())
    work = Path(tempfile.mkdtemp(prefix="bench-flight-"))
    ap_proc, sock, addr = start_arrowpoold(work, args.memory)
    try:
        c = arrowpool.connect(sock, autostart=False)
        c.put("t", table)
        c.close()
        ours = fl.connect(f"grpc://{addr}")
        theirs = fl.connect(f"grpc://127.0.0.1:{port}")

        def get(client):
            got = client.do_get(fl.Ticket(b"t")).read_all()
            assert got.num_rows == table.num_rows

        def put(client):
            w, r = client.do_put(fl.FlightDescriptor.for_path("p"), table.schema)
            w.write_table(table)
            w.done_writing()
            r.read()
            w.close()

        results = {}
        for what, f in (("do_get", get), ("do_put", put)):
            f(ours), f(theirs)  # warm: pages, connections
            times = {"arrowpoold": [], "pyarrow": []}
            for _ in range(args.repeats):
                times["arrowpoold"].append(timed(lambda: f(ours)))
                times["pyarrow"].append(timed(lambda: f(theirs)))
            med = {k: statistics.median(v) for k, v in times.items()}
            for k, v in times.items():
                print(f"{what} {k:10s}: median {med[k] * 1e3:7.1f} ms ({nbytes / med[k] / 1e9:5.2f} GB/s)  "
                      f"runs {', '.join(f'{x * 1e3:.0f}' for x in v)} ms")
            ratio = med["pyarrow"] / med["arrowpoold"]
            results[what] = ratio
            print(f"{what}: arrowpoold throughput {ratio:.2f}x pyarrow's")
        ours.close()
        theirs.close()
    finally:
        ap_proc.terminate()
        ap_proc.wait()
        child.kill()
        child.wait()


def serve_memory(parquet: str) -> None:
    """Serves the Parquet file's table from memory as ``t`` and ``remote``, printing
    the port first (also the server loadgen's remote scenario compares with)."""
    s = MemoryServer("grpc://127.0.0.1:0")
    t = pq.read_table(parquet)
    s.tables[b"t"] = t
    s.tables[b"remote"] = t
    print(s.port, flush=True)
    s.serve()


# The child runs this file's serve_memory; `python -c` with the path of this file.
CHILD = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from bench_flight import serve_memory
serve_memory(sys.argv[1])
"""

if __name__ == "__main__":
    main()
