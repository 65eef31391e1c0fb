"""Parquet vs arrowpool, side by side, from Python.

For a seeded table (default 10M rows x 12 columns: 75% numeric or unique strings, 25%
low-cardinality strings) it times, median of several runs:

* write:          ``df.to_parquet``          vs ``client.put(name, df)``
* read (pandas):  ``pd.read_parquet``        vs ``client.get_pandas``
* read (Arrow):   ``pq.read_table``          vs ``client.get``
* read 2 columns: ``pq.read_table(columns)`` vs ``client.get(columns)``
* a DataFrame cached with the Flask-Caching backend: ``client.get_pandas`` (in the
  Parquet column) vs ``ArrowpoolCache.get``

``client.get`` of a 1M-row table next to the big one, to show that a get does not
grow with the table, and a partial update: 2 columns replaced, put with a table from
``get`` (the other columns shared with the old version) against a put of the whole
table, plus the arena's growth and an append of 1% rows. Prints a Markdown table (microseconds; the faster side in bold).

Usage::

    python python/bench/bench_client.py                       # starts its own arrowpoold
    python python/bench/bench_client.py --socket PATH --rows 1000000

Without ``--socket`` it starts ``$ARROWPOOLD`` (default: target/release/arrowpoold if
built, else target/debug/arrowpoold) with ``--memory`` large enough for the tables.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import arrowpool

REPO = Path(__file__).resolve().parents[2]


def make_table(rows: int, columns: int = 12, seed: int = 42) -> pa.Table:
    """75% numeric or unique-string columns, 25% low-cardinality strings."""
    rng = np.random.default_rng(seed)
    low_card = max(1, columns // 4)
    out = {}
    for i in range(columns - low_card):
        kind = i % 3
        if kind == 0:
            out[f"int_{i}"] = pa.array(rng.integers(0, 1 << 40, rows, dtype=np.int64))
        elif kind == 1:
            out[f"float_{i}"] = pa.array(rng.random(rows))
        else:
            ids = pa.array(rng.permutation(rows).astype(np.int64))
            out[f"key_{i}"] = pc.binary_join_element_wise("k", pc.cast(ids, pa.string()), "")
    for i in range(low_card):
        words = pa.array([f"category-{i}-{j}" for j in range(12)])
        codes = pa.array(rng.integers(0, len(words), rows, dtype=np.int32))
        out[f"cat_{i}"] = pa.DictionaryArray.from_arrays(codes, words).cast(pa.string())
    return pa.table(out)


def median_us(fn, reps: int, warmup: int = 1, collect: bool = True) -> float:
    """Median wall time of ``fn`` in microseconds. ``collect`` runs the garbage
    collector between runs (for the slow operations that allocate a lot); fast ones run
    back to back, as a busy server sees them."""
    for _ in range(warmup):
        fn()
        gc.collect()
    samples = []
    for _ in range(reps):
        if collect:
            gc.collect()
        start = time.perf_counter_ns()
        result = fn()
        samples.append((time.perf_counter_ns() - start) / 1000)
        del result
    return statistics.median(samples)


def default_server_binary() -> Path:
    env = os.environ.get("ARROWPOOLD")
    if env:
        path = Path(env)
        return path if path.is_absolute() else REPO / path
    release = REPO / "target/release/arrowpoold"
    return release if release.exists() else REPO / "target/debug/arrowpoold"


def start_server(binary: Path, memory: str, workdir: Path) -> tuple[subprocess.Popen, str]:
    sock = str(workdir / "bench.sock")
    log = open(workdir / "arrowpoold.log", "wb")
    proc = subprocess.Popen(
        [str(binary), "--socket", sock, "--memory", memory],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log_text = (workdir / "arrowpoold.log").read_text()
            sys.exit(f"arrowpoold exited with {proc.returncode}:\n{log_text}")
        if os.path.exists(sock):
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.connect(sock)
                return proc, sock
            except OSError:
                pass
            finally:
                probe.close()
        time.sleep(0.05)
    proc.kill()
    sys.exit(f"arrowpoold did not start within 60 s:\n{(workdir / 'arrowpoold.log').read_text()}")


def fmt(us: float) -> str:
    return f"{us:,.0f}" if us >= 100 else f"{us:,.1f}"


def row(label: str, parquet_us: float | None, pool_us: float) -> str:
    if parquet_us is None:
        return f"| {label} | | {fmt(pool_us)} | |"
    p, a = fmt(parquet_us), fmt(pool_us)
    if pool_us <= parquet_us:
        a = f"**{a}**"
    else:
        p = f"**{p}**"
    return f"| {label} | {p} | {a} | {parquet_us / pool_us:,.1f}x |"


def main() -> None:
    parser = argparse.ArgumentParser(description="Parquet vs arrowpool from Python")
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--columns", type=int, default=12)
    parser.add_argument("--small-rows", type=int, default=1_000_000, help="rows of the second table for get")
    parser.add_argument("--socket", help="a running arrowpoold (default: start one)")
    parser.add_argument(
        "--memory", help="arena size for the server this script starts (default: from the table size)"
    )
    parser.add_argument("--reps", type=int, default=5, help="runs of each slow operation")
    parser.add_argument("--get-reps", type=int, default=200, help="runs of each get")
    args = parser.parse_args()

    t0 = time.perf_counter()
    table = make_table(args.rows, args.columns)
    small = make_table(args.small_rows, args.columns, seed=7)
    df = table.to_pandas()
    print(
        f"data: {args.rows:,} x {args.columns} ({table.nbytes / 2**30:.2f} GiB as Arrow), "
        f"small table {args.small_rows:,} rows; generated in {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )

    workdir = Path(tempfile.mkdtemp(prefix="arrowpool-bench-"))
    proc = None
    try:
        if args.socket:
            sock = args.socket
        else:
            # Room for two versions of the big table (a put while the last one is
            # still held) plus the small one.
            memory = args.memory or f"{int(3 * (table.nbytes + small.nbytes) / 2**30) + 1}G"
            binary = default_server_binary()
            proc, sock = start_server(binary, memory, workdir)
            print(f"started {binary} --memory {memory}", file=sys.stderr)

        client = arrowpool.connect(sock, timeout=600)
        stats = client.stats()
        path = workdir / "table.parquet"
        names = [c for c in table.column_names]
        two = [names[0], names[-1]]

        results = []
        # write
        parquet_write = median_us(lambda: df.to_parquet(path), args.reps, warmup=0)
        pool_put = median_us(lambda: client.put("bench", df), args.reps)
        results.append(("write: `df.to_parquet` vs `put(df)`", parquet_write, pool_put))
        arrow_write = median_us(lambda: pq.write_table(table, path), args.reps, warmup=0)
        pool_put_arrow = median_us(lambda: client.put("bench", table), args.reps)
        results.append(("write: `pq.write_table` vs `put(table)`", arrow_write, pool_put_arrow))
        # read into pandas
        pandas_read = median_us(lambda: pd.read_parquet(path), args.reps)
        pool_pandas = median_us(lambda: client.get_pandas("bench"), args.reps)
        results.append(("read: `pd.read_parquet` vs `get_pandas`", pandas_read, pool_pandas))
        # The same frame through the Flask-Caching backend (a memoized DataFrame):
        # set once, then gets, against get_pandas in the same run.
        from arrowpool.flask_caching import ArrowpoolCache

        cache = ArrowpoolCache(client=client, key_prefix="bench_cache_", default_timeout=0)
        cache.set("frame", df)
        cached = median_us(lambda: cache.get("frame"), args.reps)
        # get_pandas of the very table the cache stored (put from the frame: one
        # chunk per column, pandas' own string type), not of `bench`.
        pool_pandas_again = median_us(lambda: client.get_pandas("bench_cache_frame"), args.reps)
        results.append(("read: Flask-Caching `cache.get` of the frame (vs `get_pandas` of it)", pool_pandas_again, cached))
        cache.clear()
        pool_pandas_arrow = median_us(lambda: client.get_pandas("bench", dtype_backend="pyarrow"), args.reps)
        results.append(("read: `get_pandas(dtype_backend=\"pyarrow\")`", None, pool_pandas_arrow))
        # read as Arrow
        arrow_read = median_us(lambda: pq.read_table(path), args.reps)
        pool_get = median_us(lambda: client.get("bench"), args.get_reps, warmup=20, collect=False)
        results.append(("read: `pq.read_table` vs `get`", arrow_read, pool_get))
        arrow_read_two = median_us(lambda: pq.read_table(path, columns=two), args.reps)
        pool_get_two = median_us(
            lambda: client.get("bench", columns=two), args.get_reps, warmup=20, collect=False
        )
        results.append(
            ("read 2 columns: `pq.read_table(columns=)` vs `get(columns=)`", arrow_read_two, pool_get_two)
        )
        # get does not grow with the table
        client.put("bench-small", small)
        small_path = workdir / "small.parquet"
        pq.write_table(small, small_path)
        small_read = median_us(lambda: pq.read_table(small_path), args.reps)
        pool_get_small = median_us(
            lambda: client.get("bench-small"), args.get_reps, warmup=20, collect=False
        )
        label = f"read {args.small_rows:,} rows: `pq.read_table` vs `get`"
        results.append((label, small_read, pool_get_small))
        ping = median_us(client.ping, args.get_reps, warmup=20, collect=False)
        results.append(("round trip: `ping`", None, ping))

        # Partial update: 2 of the columns replaced. The same new columns put with
        # a table from `get` (the other columns are shared with the old version)
        # and with the generated table (every column written). New columns are
        # computed once, outside the timings.
        numeric = [n for n in names if table.column(n).type in (pa.float64(), pa.int64())][:2]
        new_cols = {n: pc.add(table.column(n), 1) for n in numeric}

        def replaced(t: pa.Table) -> pa.Table:
            for n, values in new_cols.items():
                t = t.set_column(t.schema.get_field_index(n), n, values)
            return t

        client.put("bench", table)
        whole = median_us(lambda: client.put("bench-whole", replaced(table)), args.reps)
        client.delete("bench-whole")
        base = client.get("bench")
        shared = median_us(lambda: client.put("bench", replaced(base)), args.reps)
        results.append(
            (f"replace {len(numeric)} columns: whole `put` (left column) vs `put` sharing the rest", whole, shared)
        )
        # Growth: a fresh version in one chunk, held by a reader, then the update.
        client.put("bench-growth", table)
        held = client.get("bench-growth")
        before = client.stats()["used_bytes"]
        client.put("bench-growth", replaced(held))
        grown = client.stats()["used_bytes"] - before
        del held
        client.delete("bench-growth")
        new_bytes = sum(v.nbytes for v in new_cols.values())
        extra = table.slice(0, max(1, args.rows // 100)).combine_chunks()
        append = median_us(lambda: client.put("bench-appended", pa.concat_tables([base, extra])), args.reps)
        results.append((f"append {extra.num_rows:,} rows: `put(concat_tables([got, rows]))`", None, append))
        del base

        print(f"\n### Parquet vs arrowpool (Python), {args.rows:,} rows x {args.columns} columns\n")
        print(
            f"Median of {args.reps} runs ({args.get_reps} for get and ping), microseconds. "
            f"Arrow size {table.nbytes / 2**30:.2f} GiB, Parquet file {path.stat().st_size / 2**30:.2f} GiB "
            f"(snappy, page cache warm).\n"
        )
        print("| operation | Parquet (µs) | arrowpool (µs) | speedup |")
        print("|---|---:|---:|---:|")
        for label, p, a in results:
            print(row(label, p, a))
        print(
            f"\npyarrow {pa.__version__}, pandas {pd.__version__}, numpy {np.__version__}, "
            f"Python {platform.python_version()}; server: {stats['memory_kind']}, "
            f"{stats['io_driver']}, {stats['threads']} threads, arena "
            f"{stats['arena_bytes'] / 2**30:.1f} GiB; {os.cpu_count()} CPUs, kernel {platform.release()}"
        )
        print(
            f"Partial update: the arena grew {grown:,} bytes for {new_bytes:,} bytes of new columns "
            f"({grown / new_bytes:.3f}x) while the old version was held."
        )
        print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
        client.delete("bench")
        client.delete("bench-small")
        client.delete("bench-appended")
        client.close()
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
