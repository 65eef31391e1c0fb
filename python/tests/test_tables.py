"""put / get of tables against a real server: round trips, zero copy, projection,
versions, leases."""

import datetime
import gc

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import arrowpool
from conftest import arena_range, assert_in_arena, leases_of


def sample_table(rows: int = 10_000, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "id": pa.array(np.arange(rows, dtype=np.int64)),
            "price": pa.array(rng.random(rows) * 100),
            "qty": pa.array(rng.integers(0, 1000, rows, dtype=np.int32)),
            "flag": pa.array(rng.random(rows) < 0.5),
            "sku": pa.array([f"sku-{i:08d}" for i in range(rows)]),
            "region": pa.array(rng.choice(["north", "south", "east", "west"], rows)).dictionary_encode(),
            "maybe": pa.array([None if i % 7 == 0 else i for i in range(rows)], pa.int64()),
            "ts": pa.array(np.arange(rows).astype("datetime64[us]")),
            "tags": pa.array([[i, i + 1] if i % 3 else [] for i in range(rows)], pa.list_(pa.int32())),
        }
    )


def decoded(table: pa.Table) -> pa.Table:
    """The table with dictionary columns turned into their value type."""
    columns = [
        c.cast(c.type.value_type) if pa.types.is_dictionary(c.type) else c for c in table.columns
    ]
    return pa.table(columns, names=table.column_names)


def test_round_trip_is_equal_and_zero_copy(client, name):
    table = sample_table()
    version = client.put(name, table)
    assert version >= 1
    got = client.get(name)
    assert got.equals(table)
    # 9 columns: dictionary, list and nullable columns bring more than one buffer each.
    assert assert_in_arena(client, got) == 14


def test_zero_copy_check_can_fail(client):
    # The arena check must reject a buffer that lives on the heap.
    heap = pa.table({"a": [1, 2, 3]})
    with pytest.raises(AssertionError, match="copied"):
        assert_in_arena(client, heap)


def test_get_does_not_copy_a_large_table(client, name):
    rows = 2_000_000
    table = pa.table({"a": np.arange(rows), "b": np.ones(rows)})
    client.put(name, table)
    got = client.get(name)
    assert got.num_rows == rows
    assert assert_in_arena(client, got) >= 2
    lo, hi = arena_range(client)
    column = got.column("b").chunk(0).to_numpy()
    assert lo <= column.__array_interface__["data"][0] < hi
    assert column.sum() == rows


def test_columns_projection_is_zero_copy_and_ordered(client, name):
    table = sample_table(5_000)
    client.put(name, table)
    got = client.get(name, columns=["sku", "price"])
    assert got.column_names == ["sku", "price"]
    assert got.equals(table.select(["sku", "price"]))
    assert assert_in_arena(client, got) >= 3
    by_index = client.get(name, columns=[0])
    assert by_index.column_names == ["id"]


def test_projection_of_unknown_column_fails_and_releases(client, name):
    client.put(name, sample_table(100))
    with pytest.raises(KeyError):
        client.get(name, columns=["nope"])
    assert leases_of(client, name) == 0


def test_multi_batch_table_keeps_its_batches(client, name):
    table = pa.concat_tables([sample_table(1000, seed=s) for s in range(3)])
    assert table.column("id").num_chunks == 3
    client.put(name, table)
    got = client.get(name)
    # Each batch had its own dictionary; the IPC file format needs one, so put unifies
    # them: compare values, not dictionary layouts.
    assert decoded(got).equals(decoded(table))
    assert got.column("id").num_chunks == 3
    assert_in_arena(client, got)
    projected = client.get(name, columns=["price"])
    assert projected.column("price").num_chunks == 3


def test_dictionaries_that_differ_between_batches(client, name):
    a = pa.table({"c": pa.array(["x", "y"]).dictionary_encode()})
    b = pa.table({"c": pa.array(["z", "x"]).dictionary_encode()})
    table = pa.concat_tables([a, b])
    client.put(name, table)
    got = client.get(name)
    assert got.column("c").to_pylist() == ["x", "y", "z", "x"]


def test_empty_table(client, name):
    table = pa.table({"a": pa.array([], pa.int64()), "s": pa.array([], pa.string())})
    client.put(name, table)
    got = client.get(name)
    assert got.num_rows == 0 and got.schema.equals(table.schema)
    assert client.get(name, columns=["s"]).column_names == ["s"]


def test_put_record_batch(client, name):
    batch = pa.record_batch({"a": [1, 2, 3], "b": ["x", "y", None]})
    client.put(name, batch)
    assert client.get(name).to_pylist() == batch.to_pylist()


def test_put_dataframe_and_get_pandas(client, name):
    df = pd.DataFrame(
        {
            "a": np.arange(1000, dtype=np.int64),
            "b": np.linspace(0, 1, 1000),
            "s": [f"v{i}" for i in range(1000)],
            "when": pd.date_range("2024-01-01", periods=1000, freq="h"),
        }
    )
    client.put(name, df)
    back = client.get_pandas(name)
    pd.testing.assert_frame_equal(back, df, check_dtype=False)
    assert list(back["s"]) == list(df["s"])
    pd.testing.assert_frame_equal(client.get_pandas(name, columns=["b", "s"]), df[["b", "s"]])


def test_dataframe_index_survives(client, name):
    df = pd.DataFrame({"x": [1.0, 2.0, 3.0]}, index=pd.Index(["a", "b", "c"], name="key"))
    client.put(name, df)
    pd.testing.assert_frame_equal(client.get_pandas(name), df)


def test_get_pandas_numeric_columns_point_into_the_arena(client, name):
    rows = 100_000
    client.put(name, pa.table({"a": np.arange(rows), "b": np.random.default_rng(1).random(rows)}))
    df = client.get_pandas(name)
    lo, hi = arena_range(client)
    for column in ("a", "b"):
        values = df[column].to_numpy()
        assert lo <= values.__array_interface__["data"][0] < hi, f"{column} was copied"
        assert not values.flags.writeable  # read-only shared memory


def test_get_pandas_pyarrow_backend_copies_nothing(client, name):
    table = sample_table(2_000)
    client.put(name, table)
    df = client.get_pandas(name, columns=["sku", "maybe", "price"], dtype_backend="pyarrow")
    assert all(isinstance(t, pd.ArrowDtype) for t in df.dtypes)
    arrow_back = pa.table({c: df[c].array._pa_array for c in df.columns})
    assert assert_in_arena(client, arrow_back) >= 5
    assert df["maybe"].isna().sum() == table.column("maybe").null_count


def test_get_pandas_rejects_unknown_backend(client, name):
    client.put(name, pa.table({"a": [1]}))
    with pytest.raises(ValueError, match="dtype_backend"):
        client.get_pandas(name, dtype_backend="arrowish")


def test_versions_increase_and_survive_delete(client, name):
    v1 = client.put(name, pa.table({"a": [1]}))
    v2 = client.put(name, pa.table({"a": [2]}))
    assert v2 == v1 + 1
    assert client.version(name) == v2
    client.delete(name)
    with pytest.raises(arrowpool.NotFound):
        client.get(name)
    v3 = client.put(name, pa.table({"a": [3]}))
    assert v3 > v2
    version, table = client.get_with_version(name)
    assert version == v3 and table.column("a").to_pylist() == [3]


def test_old_version_stays_readable_while_held(client, name):
    client.put(name, pa.table({"a": np.zeros(100_000)}))
    old = client.get(name)
    for i in range(1, 4):
        client.put(name, pa.table({"a": np.full(100_000, float(i))}))
    assert old.column("a").to_numpy().max() == 0.0
    assert client.get(name).column("a").to_numpy().min() == 3.0


def test_lease_is_released_when_the_table_dies(client, name):
    client.put(name, sample_table(1000))
    table = client.get(name)
    column = table.column("price")
    assert leases_of(client, name) == 1
    del table
    assert leases_of(client, name) == 1  # the column still points into the object
    second = client.get(name)
    assert leases_of(client, name) == 2
    del column, second
    gc.collect()
    assert leases_of(client, name) == 0


def test_table_outlives_close(server, name):
    with server.connect() as c:
        c.put(name, pa.table({"a": np.arange(1000)}))
        table = c.get(name)
    # The connection stays open for this table until it is garbage-collected.
    with server.connect() as other:
        assert leases_of(other, name) == 1
        assert table.column("a").to_numpy().sum() == 999 * 1000 // 2
        del table
        gc.collect()
        deadline = 50
        while leases_of(other, name) and deadline:
            other.ping()
            deadline -= 1
        assert leases_of(other, name) == 0


def test_closed_client_refuses_requests(server, name):
    c = server.connect()
    c.close()
    with pytest.raises(arrowpool.ArrowpoolError, match="closed"):
        c.ping()


def test_reader_client_cannot_put(server, client, name):
    client.put(name, pa.table({"a": [1, 2]}))
    with server.connect(write=False) as reader:
        assert reader.get(name).column("a").to_pylist() == [1, 2]
        with pytest.raises(arrowpool.ArrowpoolError, match="write=True"):
            reader.put(name, pa.table({"a": [3]}))
        assert reader._connection().rw_mmap is None


def test_read_only_connection_cannot_delete_or_ingest(server, client, name, tmp_path):
    """The server refuses writes on a read-only connection (the client's own check
    aside): delete and ingest reach the server and come back ReadOnly."""
    client.put(name, pa.table({"a": [1, 2]}))
    with server.connect(write=False) as reader:
        with pytest.raises(arrowpool.ReadOnly, match="read-only"):
            reader.delete(name)
        with pytest.raises(arrowpool.ReadOnly):
            reader.ingest(tmp_path / "x.parquet", name)
    assert client.get(name).column("a").to_pylist() == [1, 2]


def test_read_only_mapping_rejects_writes(client, name):
    client.put(name, pa.table({"a": [1, 2, 3]}))
    table = client.get(name)
    buf = table.column("a").chunk(0).buffers()[1]
    assert not buf.is_mutable
    with pytest.raises(TypeError):
        memoryview(buf)[0] = 1


def test_get_of_bytes_object_is_a_type_error(client, name):
    client.put_bytes(name, b"not a table")
    with pytest.raises(TypeError, match="get_bytes"):
        client.get(name)
    assert leases_of(client, name) == 0


def test_put_bytes_round_trip(client, name):
    payload = bytes(range(256)) * 1000
    v1 = client.put_bytes(name, payload)
    assert client.get_bytes(name) == payload
    v2 = client.put_bytes(name, bytearray(b"second"))
    assert v2 == v1 + 1
    assert client.get_bytes(name) == b"second"
    assert leases_of(client, name) == 0


def test_get_bytes_of_a_table_is_its_ipc_file(client, name):
    table = sample_table(10)
    client.put(name, table)
    raw = client.get_bytes(name)
    assert raw[:6] == b"ARROW1" and raw[-6:] == b"ARROW1"
    assert pa.ipc.open_file(pa.py_buffer(raw)).read_all().equals(table)


def test_put_retries_once_with_double_the_size(client, name):
    from arrowpool.client import _ipc_file_size

    table = sample_table(20_000)
    exact = _ipc_file_size(table)
    assert exact > 64 * 1024
    # Half the size (capacity is rounded to 4 KiB only): the first write runs out of
    # room, is aborted, and the retry at twice the size fits.
    version = client._put_table(name, table, size=exact // 2 + 1)
    assert version >= 1
    assert client.get(name).equals(table)
    assert client.stats()["pending_bytes"] == 0


def test_put_abort_frees_the_reservation(client, name):
    table = sample_table(20_000)
    with pytest.raises(arrowpool.ArrowpoolError, match="did not fit"):
        client._put_table(name, table, size=1024)
    stats = client.stats()
    assert stats["pending_bytes"] == 0
    with pytest.raises(arrowpool.NotFound):
        client.get(name)


def test_timestamps_with_timezone_and_decimals(client, name):
    table = pa.table(
        {
            "t": pa.array(
                [datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)] * 3,
                pa.timestamp("ms", tz="UTC"),
            ),
            "d": pa.array([1, 2, 3], pa.decimal128(10, 2)),
            "bin": pa.array([b"\x00\x01", b"", None]),
        }
    )
    client.put(name, table)
    assert client.get(name).equals(table)


def test_a_large_put_builds_its_page_tables_once(client, name):
    """A put of 32 MB populates the 2 MiB chunks it writes (in parallel threads)
    and records them, so the next put into the same memory skips the walk."""
    import numpy as np

    conn = client._connection()
    before = sum(conn.populated)
    t = pa.table({"x": np.arange(4_000_000, dtype=np.int64)})
    client.put(name, t)
    grown = sum(conn.populated) - before
    assert grown >= 32_000_000 // (2 << 20) - 1, grown
    assert client.get(name).column("x")[3_999_999].as_py() == 3_999_999
