"""The Flask-Caching backend (``CACHE_TYPE = "arrowpool.flask_caching.ArrowpoolCache"``)
against a real server: memoize of DataFrames (stored as tables, read back over the
arena), pickled values, timeouts, delete, clear, prefixes; and get_or_load."""

from __future__ import annotations

import multiprocessing
import time
import uuid

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from flask import Flask
from flask_caching import Cache

import arrowpool
from arrowpool.flask_caching import ArrowpoolCache


def in_arena(client: arrowpool.Client, address: int) -> bool:
    conn = client._connection()
    return conn.ro_address <= address < conn.ro_address + conn.arena_len


@pytest.fixture
def app_cache(server):
    # A prefix of its own: the server is shared with other tests.
    prefix = f"fc{uuid.uuid4().hex[:8]}_"
    app = Flask(__name__)
    cache = Cache(
        app,
        config={
            "CACHE_TYPE": "arrowpool.flask_caching.ArrowpoolCache",
            "CACHE_ARROWPOOL_SOCKET": server.socket,
            "CACHE_DEFAULT_TIMEOUT": 60,
            "CACHE_KEY_PREFIX": prefix,
        },
    )
    with app.app_context():
        yield app, cache
    cache.clear()


def test_memoize_keeps_dataframes_as_tables_read_without_copy(app_cache, server):
    _, cache = app_cache
    calls = []

    @cache.memoize(timeout=60)
    def orders(company: str) -> pd.DataFrame:
        calls.append(company)
        n = 100_000
        return pd.DataFrame(
            {
                "id": np.arange(n, dtype=np.int64),
                "price": np.linspace(0, 1, n),
                "region": pd.Categorical(np.array(["north", "south"])[np.arange(n) % 2]),
            }
        )

    first = orders("a")
    second = orders("a")
    assert calls == ["a"]
    pd.testing.assert_frame_equal(first, second)
    assert isinstance(second["region"].dtype, pd.CategoricalDtype)
    # The hit's numeric columns are views of the arena (as the cache's own
    # connection maps it), not copies.
    assert in_arena(cache.cache.client, second["price"].to_numpy().__array_interface__["data"][0])
    client = arrowpool.connect(server.socket)
    # The value is a table; memoize's own version marker a pickled blob.
    prefix = cache.cache.key_prefix
    kinds = sorted(e["kind"] for e in client.list() if e["name"].startswith(prefix))
    assert kinds == ["bytes", "table"]
    orders("b")
    assert calls == ["a", "b"]
    cache.delete_memoized(orders, "a")
    orders("a")
    assert calls == ["a", "b", "a"]


def test_values_kinds_timeouts_delete_clear(app_cache, server):
    _, cache = app_cache
    backend: ArrowpoolCache = cache.cache
    cache.set("dict", {"a": [1, 2, 3]})
    assert cache.get("dict") == {"a": [1, 2, 3]}
    table = pa.table({"x": [1, 2, 3]})
    cache.set("table", table)
    got = cache.get("table")
    assert isinstance(got, pa.Table) and got.equals(table)
    import polars as pl

    cache.set("polars", pl.DataFrame({"y": [1.5, 2.5]}))
    assert cache.get("polars").equals(pl.DataFrame({"y": [1.5, 2.5]}))
    batch = pa.record_batch({"b": [True, False]})
    cache.set("batch", batch)
    assert cache.get("batch").equals(batch)
    cache.set("empty_batch", batch.slice(0, 0))
    assert cache.get("empty_batch").num_rows == 0
    assert cache.get("missing") is None
    assert cache.has("dict") and not cache.has("missing")
    assert cache.add("dict", "other") is False
    assert cache.add("fresh", 7) is True and cache.get("fresh") == 7
    # Timeouts, for blobs and tables.
    cache.set("short", "soon gone", timeout=1)
    cache.set("short_table", table, timeout=1)
    cache.set("forever", "stays", timeout=0)
    time.sleep(1.2)
    assert cache.get("short") is None and cache.get("short_table") is None
    assert cache.get("forever") == "stays"
    client = arrowpool.connect(server.socket)
    prefix = backend.key_prefix
    assert not any(e["name"] in (prefix + "short", prefix + "short_table") for e in client.list())
    assert cache.delete("dict") is True and cache.delete("dict") is False
    # clear() removes this cache's names only.
    others = {e["name"] for e in client.list() if not e["name"].startswith(prefix)}
    client.put_bytes(prefix[:-1] + "-someone_else", b"keep")
    cache.clear()
    assert {e["name"] for e in client.list()} == others | {prefix[:-1] + "-someone_else"}
    client.delete(prefix[:-1] + "-someone_else")


def _worker(socket: str, out) -> None:
    client = arrowpool.connect(socket)
    calls = []

    def load():
        calls.append(1)
        time.sleep(0.3)
        return pa.table({"x": np.arange(1000)})

    t = client.get_or_load("get_or_load_shared", load)
    out.put((len(calls), t.num_rows))


def test_get_or_load_loads_once_for_many_processes(server, tmp_path):
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(server.socket, out)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert sorted(results) == [(0, 1000)] * 3 + [(1, 1000)]
    # A Parquet path: the server reads it.
    import pyarrow.parquet as pq

    path = tmp_path / "src.parquet"
    pq.write_table(pa.table({"y": [1, 2, 3]}), path)
    client = arrowpool.connect(server.socket)
    assert client.get_or_load("from_parquet", str(path)).column("y").to_pylist() == [1, 2, 3]
    assert client.get_or_load("from_parquet", lambda: pytest.fail("loaded twice")).num_rows == 3


def test_polars_and_duckdb_read_gets_without_copying(client, name):
    import duckdb
    import polars as pl

    n = 200_000
    client.put(name, pa.table({"a": np.arange(n, dtype=np.int64), "b": np.linspace(0, 1, n)}))
    t = client.get(name)
    df = pl.from_arrow(t, rechunk=False)
    # polars keeps the Arrow buffers: its column's data is the arena's.
    back = df["a"].to_arrow()
    assert back.buffers()[1].address == t.column("a").chunk(0).buffers()[1].address
    assert in_arena(client, back.buffers()[1].address)
    # DuckDB scans the Arrow table in place (an Arrow scan, no import).
    con = duckdb.connect()
    assert con.execute("select sum(a) from t").fetchall()[0][0] == n * (n - 1) // 2
    assert con.execute("select count(*) from t where b > 0.5").fetchall()[0][0] == n // 2
    # DuckDB gives no buffer addresses; its Arrow scan reads the arrays where they
    # are: scanning 160 MB of arena columns grows the process's private memory by
    # far less than a copy would.
    big = 20_000_000
    client.put(name + "-big", pa.table({"v": np.arange(big, dtype=np.int64)}))
    tb = client.get(name + "-big")

    def rss_anon() -> int:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith("RssAnon:"))

    before = rss_anon()
    assert con.execute("select sum(v) from tb").fetchall()[0][0] == big * (big - 1) // 2
    assert rss_anon() - before < 48 * 1024 * 1024, rss_anon() - before
    # put of a polars frame (via __arrow_c_stream__) built over the arena
    # shares its columns: only the new one is written.
    before = client.stats()["used_bytes"]
    changed = df.with_columns((pl.col("b") * 2).alias("c"))
    client.put(name, changed)
    grown = client.stats()["used_bytes"] - before
    assert grown < 8 * n + 256 * 1024, grown
    assert client.get(name).column("c").to_pylist()[:2] == [0.0, 2.0 / (n - 1)]


def test_put_takes_any_arrow_c_stream(client, name):
    class Stream:
        def __init__(self, table):
            self.table = table

        def __arrow_c_stream__(self, requested_schema=None):
            return self.table.__arrow_c_stream__(requested_schema)

    client.put(name, Stream(pa.table({"z": ["p", "q"]})))
    assert client.get(name).column("z").to_pylist() == ["p", "q"]
