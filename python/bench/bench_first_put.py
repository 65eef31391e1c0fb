"""A new process's first put: connect (as a Dash worker does at start), make a
1 GB table, time a one-thread memcpy of its buffers and then the put.

    python python/bench/bench_first_put.py SOCKET

Start ``arrowpoold --socket SOCKET --memory 4200M`` (default flags otherwise) and
wait 10 s first, as #10's target says; ``ARROWPOOL_POPULATE_AT_CONNECT=0`` in this
process's environment turns off the page-table population at connect.
"""

import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import arrowpool  # noqa: E402

c = arrowpool.connect(sys.argv[1], autostart=False)
rng = np.random.default_rng(1)
t = pa.table({f"c{i}": rng.random(12_500_000) for i in range(10)})  # 1.0 GB
bufs = [b for col in t.columns for ch in col.chunks for b in ch.buffers() if b is not None]
n = sum(b.size for b in bufs)
dest = np.ones(n, dtype=np.uint8)
t0 = time.perf_counter(); at = 0
for b in bufs:
    a = np.frombuffer(b, dtype=np.uint8); dest[at:at+a.size] = a; at += a.size
memcpy = time.perf_counter() - t0
t0 = time.perf_counter(); c.put("first", t); put = time.perf_counter() - t0
print(f"put {put*1000:.0f} ms memcpy {memcpy*1000:.0f} ms ratio {put/memcpy:.2f}")
