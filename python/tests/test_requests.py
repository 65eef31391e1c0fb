"""ping, list, stats, wait and ingest against a real server."""

import threading
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import arrowpool


def test_handshake_reports_the_arena(client):
    assert client.arena_bytes >= 512 * 1024 * 1024
    assert client.arena_bytes % client._connection().hello.map_align == 0
    assert client.memory_kind in ("hugetlb", "transparent-hugepages", "4k-pages")
    assert client.io_driver in ("io_uring", "polling")
    stats = client.stats()
    assert stats["arena_bytes"] == client.arena_bytes
    assert stats["memory_kind"] == client.memory_kind
    assert stats["io_driver"] == client.io_driver


def test_ping(client):
    assert 0 <= client.ping() < 5


def test_stats_has_the_documented_keys(client):
    stats = client.stats()
    for key in (
        "memory_kind", "io_driver", "threads", "arena_bytes", "used_bytes", "free_bytes",
        "held_bytes", "pending_bytes", "largest_free_bytes", "objects", "names", "leases",
        "connections", "evictions", "puts", "gets",
    ):
        assert key in stats, key
    assert stats["threads"] == 2
    assert stats["connections"] >= 1


def test_stats_count_puts_and_gets(client, name):
    before = client.stats()
    client.put(name, pa.table({"a": [1]}))
    client.get(name)
    after = client.stats()
    assert after["puts"] >= before["puts"] + 1
    assert after["gets"] >= before["gets"] + 1


def test_list_describes_objects(client, name):
    table = pa.table({"a": np.arange(1234)})
    version = client.put(name, table)
    client.put_bytes(name + "-blob", b"12345")
    entries = {e["name"]: e for e in client.list()}
    entry = entries[name]
    assert entry["version"] == version
    assert entry["kind"] == "table"
    assert entry["rows"] == 1234
    assert entry["bytes"] >= table.nbytes
    assert entry["leases"] == 0
    assert isinstance(entry["object_id"], int) and isinstance(entry["idle_ms"], (int, float))
    assert entries[name + "-blob"]["kind"] == "bytes"
    assert entries[name + "-blob"]["bytes"] == 5


def test_wait_returns_at_once_when_newer_exists(client, name):
    version = client.put_bytes(name, b"1")
    start = time.monotonic()
    assert client.wait_for_version(name, after=version - 1, timeout=10) == version
    assert time.monotonic() - start < 2


def test_wait_is_woken_by_a_put_from_another_client(server, client, name):
    version = client.put_bytes(name, b"1")

    def publish():
        time.sleep(0.3)
        with server.connect() as other:
            other.put_bytes(name, b"2")

    t = threading.Thread(target=publish)
    t.start()
    start = time.monotonic()
    new = client.wait_for_version(name, after=version, timeout=30)
    elapsed = time.monotonic() - start
    t.join()
    assert new == version + 1
    assert 0.2 < elapsed < 10
    assert client.get_bytes(name) == b"2"


def test_wait_for_a_name_not_yet_put(server, client, name):
    def publish():
        time.sleep(0.2)
        with server.connect() as other:
            other.put(name, pa.table({"a": [1]}))

    t = threading.Thread(target=publish)
    t.start()
    assert client.wait_for_version(name, after=0, timeout=30) >= 1
    t.join()


def test_ingest_parquet_file(client, name, tmp_path):
    rng = np.random.default_rng(3)
    rows = 50_000
    table = pa.table(
        {
            "id": np.arange(rows, dtype=np.int64),
            "x": rng.random(rows),
            "s": pa.array([f"s{i % 100}" for i in range(rows)]),
        }
    )
    path = tmp_path / "data.parquet"
    pq.write_table(table, path, row_group_size=10_000)
    report = client.ingest(path, name)
    assert report["rows"] == rows
    assert report["version"] >= 1
    assert report["files"] == 1
    got = client.get(name)
    assert got.num_rows == rows
    assert got.column("id").to_pylist() == table.column("id").to_pylist()
    assert got.column("x").to_pylist() == table.column("x").to_pylist()
    assert got.column("s").to_pylist() == table.column("s").to_pylist()


def test_ingest_keeps_low_cardinality_strings_as_one_dictionary(client, name, tmp_path):
    """A pyarrow-written file: strings of few values per row group stay a
    dictionary (one for the table, the narrowest index type), get_pandas makes
    a Categorical; unique strings and numbers stay plain."""
    rows = 60_000
    regions = ["north", "south", "east", "west", None]
    table = pa.table(
        {
            "id": np.arange(rows, dtype=np.int64),
            # Each row group sees other values: the dictionaries are unified.
            "region": pa.array([regions[(i // 20_000 + i) % 5] for i in range(rows)]),
            "city": pa.array([f"city-{(i * 7) % 300}" for i in range(rows)]),
            "key": pa.array([f"unique-{i:09d}" for i in range(rows)]),
        }
    )
    path = tmp_path / "labels.parquet"
    pq.write_table(table, path, row_group_size=20_000)
    client.ingest(path, name)
    got = client.get(name)
    assert got.schema.field("region").type == pa.dictionary(pa.int8(), pa.string())
    # 300 values: more than an int8 index holds.
    assert got.schema.field("city").type == pa.dictionary(pa.int16(), pa.string())
    assert got.schema.field("key").type == pa.string()
    assert got.schema.field("id").type == pa.int64()
    for c in ("region", "city"):
        chunks = got.column(c).chunks
        assert all(ch.dictionary.equals(chunks[0].dictionary) for ch in chunks)
        assert got.column(c).to_pylist() == table.column(c).to_pylist()
    assert got.column("key").to_pylist() == table.column("key").to_pylist()
    df = client.get_pandas(name)
    assert isinstance(df["region"].dtype, pd.CategoricalDtype)
    assert df["region"].isna().sum() == rows // 5
    assert df.groupby("region", observed=True)["id"].count().sum() == rows - rows // 5
    # A later version that replaces another column shares the dictionary
    # columns (keys in place, the one dictionary kept).
    client.replace_columns(name, {"id": np.arange(rows, dtype=np.int64) * 2})
    new = client.get(name)
    for c in ("region", "city"):
        old_keys = [ch.buffers()[1].address for ch in got.column(c).chunks]
        assert [ch.buffers()[1].address for ch in new.column(c).chunks] == old_keys
        assert new.column(c).to_pylist() == table.column(c).to_pylist()
    assert new.column("id").to_pylist()[:3] == [0, 2, 4]


def test_ingest_selected_columns_of_a_directory(client, name, tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    for i in range(3):
        part = pa.table({"a": np.arange(i * 10, i * 10 + 10), "b": np.ones(10) * i})
        pq.write_table(part, folder / f"part-{i}.parquet")
    report = client.ingest(folder, name, columns=["b"])
    assert report["rows"] == 30 and report["files"] == 3
    got = client.get(name)
    assert got.column_names == ["b"]
    assert got.column("b").to_pylist() == [0.0] * 10 + [1.0] * 10 + [2.0] * 10


def test_ingest_of_unknown_column(client, name, tmp_path):
    path = tmp_path / "one.parquet"
    pq.write_table(pa.table({"a": [1, 2]}), path)
    with pytest.raises(arrowpool.IngestError):
        client.ingest(path, name, columns=["zzz"])


def test_ingest_relative_path_is_resolved_by_the_client(client, name, tmp_path, monkeypatch):
    pq.write_table(pa.table({"a": [1, 2, 3]}), tmp_path / "rel.parquet")
    monkeypatch.chdir(tmp_path)
    assert client.ingest("rel.parquet", name)["rows"] == 3
