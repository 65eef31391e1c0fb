"""Versions that share columns: a put of a table derived from a get writes only what
changed. Checked by buffer address (the new version reads the old memory) and by
arena growth (the bytes of the new columns, not of the table)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import arrowpool

ROWS = 400_000


def table(batches: int = 4, seed: int = 1) -> pa.Table:
    rng = np.random.default_rng(seed)
    t = pa.table(
        {
            "a": rng.random(ROWS),
            "b": rng.integers(0, 1 << 40, ROWS),
            "s": pa.array([f"row-{i}" for i in range(ROWS)]),
            "k": pa.array(["x", "y", "z", "w"] * (ROWS // 4)).dictionary_encode(),
        }
    )
    return pa.Table.from_batches(t.combine_chunks().to_batches(max_chunksize=ROWS // batches))


def values_address(col: pa.ChunkedArray, chunk: int = 0) -> int:
    return col.chunk(chunk).buffers()[-1].address


def used(client) -> int:
    return client.stats()["used_bytes"]


@pytest.fixture
def stored(client, name):
    t = table()
    client.put(name, t)
    return t


def test_set_column_writes_only_the_new_column(client, name, stored):
    got = client.get(name)
    before = used(client)
    new_values = pa.array(np.arange(ROWS, dtype=np.float64))
    changed = got.set_column(0, "a", new_values)
    version = client.put(name, changed)
    grown = used(client) - before
    assert grown <= 1.1 * new_values.nbytes + 64 * 1024, grown
    new = client.get(name)
    assert new.equals(changed)
    for col in ("b", "s", "k"):
        for i in range(new.column(col).num_chunks):
            assert values_address(new.column(col), i) == values_address(got.column(col), i), col
    assert values_address(new.column("a")) != values_address(got.column("a"))
    assert client.version(name) == version


def test_append_and_drop_rename_select_concat_copy_only_new_rows(client, name, stored):
    got = client.get(name)
    before = used(client)
    for derived in (
        got.drop_columns(["s"]),
        got.select(["k", "a"]),
        got.rename_columns(["w", "x", "y", "z"]),
        got.append_column("a2", got.column("a")),
    ):
        client.put(name + "-d", derived)
        assert client.get(name + "-d").equals(derived)
    assert used(client) - before < 64 * 1024, "nothing but manifests was written"
    more = table(batches=1, seed=2).slice(0, 1000)
    before = used(client)
    client.put(name, pa.concat_tables([got, more]))
    assert used(client) - before < more.nbytes + 64 * 1024
    new = client.get(name)
    assert new.num_rows == ROWS + 1000
    assert values_address(new.column("s"), 3) == values_address(got.column("s"), 3)


def test_append_and_replace_columns_helpers(client, name, stored):
    got = client.get(name)
    before = used(client)
    v = client.append(name, table(batches=1, seed=3).slice(0, 500))
    assert client.get(name).num_rows == ROWS + 500
    v2 = client.replace_columns(name, {"b": np.zeros(ROWS + 500, dtype=np.int64), "c": [1.5] * (ROWS + 500)})
    assert v2 == v + 1
    new = client.get(name)
    assert new.column_names == ["a", "b", "s", "k", "c"]
    assert new.column("b").to_pylist()[:3] == [0, 0, 0]
    assert values_address(new.column("s")) == values_address(got.column("s"))
    # The appended rows, two new columns and manifests: far less than the table.
    assert used(client) - before < got.nbytes / 2


def test_pandas_frames_share_their_arena_columns(client, name):
    one = table(batches=1)
    client.put(name, one)
    got = client.get(name)
    df = client.get_pandas(name)
    df["a"] = df["a"] * 2
    before = used(client)
    client.put(name, df)
    # `a` is new; `b` (int64, no nulls, zero-copy in pandas) is shared; strings
    # and categoricals are rebuilt by pandas and written.
    assert values_address(client.get(name).column("b")) == values_address(got.column("b"))
    assert used(client) - before < one.nbytes + one.num_rows * 8
    df = client.get_pandas(name, dtype_backend="pyarrow")
    df["a"] = df["a"] * 2
    before = used(client)
    client.put(name, df)
    assert used(client) - before < one.column("a").nbytes * 1.1 + 64 * 1024


def test_if_version_refuses_a_lost_update(client, name, stored):
    v, got = client.get_with_version(name)
    first = client.put(name, got.set_column(0, "a", pa.array(np.ones(ROWS))), if_version=v)
    assert first == v + 1
    before = client.stats()
    with pytest.raises(arrowpool.VersionConflict) as info:
        client.put(name, got.set_column(0, "a", pa.array(np.zeros(ROWS))), if_version=v)
    assert f"version {first}" in info.value.message
    after = client.stats()
    assert (after["used_bytes"], after["pending_bytes"]) == (before["used_bytes"], 0)
    assert client.get(name).column("a").to_pylist()[:2] == [1.0, 1.0]
    # if_version also works for a table with nothing in the arena.
    assert client.put(name, table(batches=1, seed=9), if_version=first) == first + 1


def test_old_versions_stay_readable_and_memory_comes_back(client, name, stored):
    got = client.get(name)
    expected = got.column("s").to_pylist()[:5]
    client.put(name, got.set_column(1, "b", pa.array(np.zeros(ROWS, dtype=np.int64))))
    client.delete(name)
    # The old table is still whole while this reader holds it.
    assert got.column("s").to_pylist()[:5] == expected
    del got
    import gc

    gc.collect()
    stats = client.stats()
    assert stats["pending_bytes"] == 0


def test_kept_versions_by_number(tmp_path, name):
    from conftest import Server

    srv = Server(tmp_path, extra=("--keep-versions", "3"))
    try:
        with srv.connect() as c:
            for seed in range(4):
                c.put(name, table(batches=1, seed=seed))
            assert c.list()[0]["retained"] == [2, 3]
            assert c.get(name, version=2).equals(table(batches=1, seed=1))
            with pytest.raises(arrowpool.NotFound, match="not kept"):
                c.get(name, version=1)
            _, current = c.get_with_version(name, version=4)
            assert current.equals(table(batches=1, seed=3))
            # Unchanged columns are shared between the kept versions.
            v3 = c.get(name, version=3)
            changed = v3.set_column(0, "a", pa.array(np.zeros(ROWS)))
            before = c.stats()["used_bytes"]
            c.put(name, changed)
            assert c.stats()["used_bytes"] - before < ROWS * 8 * 1.1 + 64 * 1024
            assert c.list()[0]["retained"] == [3, 4]
    finally:
        srv.stop()


def test_many_different_new_column_sets_fit_in_one_put(client, name):
    # 70 batches, each replacing another set of its 7 columns: more files than a
    # connection may hold pending were each its own.
    t = pa.Table.from_batches(
        [pa.record_batch({f"c{i}": np.full(100, float(b + i)) for i in range(7)}) for b in range(70)]
    )
    client.put(name, t)
    got = client.get(name)
    batches = []
    for b, old in enumerate(got.to_batches()):
        cols = [
            pa.array(np.full(100, -1.0)) if (b + 1) >> i & 1 else old.column(i) for i in range(7)
        ]
        batches.append(pa.record_batch(cols, names=old.schema.names))
    changed = pa.Table.from_batches(batches)
    client.put(name, changed)
    assert client.get(name).equals(changed)
    assert client.stats()["pending_bytes"] == 0


def test_slices_at_any_row_share_their_columns(client, name):
    """A rolling window (drop the oldest rows, append new ones) and slices at any
    row reference the old buffers in place: fixed-width columns, strings (offsets
    from a non-zero start), dictionaries, nulls at a row offset divisible by 8. A
    boolean column cut inside a byte, and nulls cut so, are written anew."""
    rng = np.random.default_rng(5)
    n = 200_000
    nulls = np.arange(n) % 7 == 0
    t = pa.table(
        {
            "f": rng.random(n),
            "i": pa.array(rng.integers(0, 100, n), mask=nulls),
            "s": pa.array([f"row-{i}" for i in range(n)]),
            "k": pa.array(["x", "y", "z"] * (n // 3) + ["x"] * (n % 3)).dictionary_encode(),
            "flag": pa.array(rng.random(n) > 0.5),
            "t": pa.array(rng.integers(0, 10**12, n), pa.timestamp("us")),
        }
    )
    t = pa.Table.from_batches(t.to_batches(max_chunksize=n // 2))
    client.put(name, t)
    got = client.get(name)
    # (start, rows, columns written anew): at a multiple of 64 everything is
    # shared; at an odd row, 32-bit string offsets, int8 dictionary keys and
    # bitmaps would start off 8 bytes, so those columns are written.
    cases = (
        (8_000, 150_000, []),
        (12_345, 100_000, ["i", "s", "k", "flag"]),
        (0, 7, []),
        (100_000, 0, []),
        (99_999, 2, ["i", "s", "k", "flag"]),
        (2, 1_000, ["i", "k", "flag"]),
    )
    for start, length, written in cases:
        window = got.slice(start, length)
        before = used(client)
        client.put(name + "-w", window)
        back = client.get(name + "-w")
        assert back.equals(window), (start, length)
        assert back.to_pydict() == t.slice(start, length).to_pydict()
        grown = used(client) - before
        limit = sum(window.column(c).nbytes for c in written) + 128 * 1024
        assert grown <= limit, (start, length, grown)
        if length > 1 and start < n // 2:
            first = back.column("f").chunk(0)
            assert first.buffers()[1].address == got.column("f").chunk(0).buffers()[1].address + 8 * start
            # Strings keep the parent's character data.
            same = back.column("s").chunk(0).buffers()[2].address == got.column("s").chunk(0).buffers()[2].address
            assert same == ("s" not in written)
        client.delete(name + "-w")
    # A rolling window: drop the oldest 10,001 rows, append 10,001 new ones.
    new_rows = pa.table(
        {
            "f": rng.random(10_001),
            "i": pa.array(rng.integers(0, 100, 10_001)),
            "s": pa.array([f"new-{i}" for i in range(10_001)]),
            # The same categories (a dictionary of other values would make the
            # put unify them, writing the column whole).
            "k": pa.DictionaryArray.from_arrays(
                pa.array([2] * 10_001, pa.int32()), got.column("k").chunk(0).dictionary
            ),
            "flag": pa.array([True] * 10_001),
            "t": pa.array(rng.integers(0, 10**12, 10_001), pa.timestamp("us")),
        }
    )
    before = used(client)
    rolled = pa.concat_tables([got.slice(10_001), new_rows.cast(got.schema)])
    client.put(name, rolled)
    now = client.get(name)
    assert now.to_pydict() == rolled.to_pydict()
    assert now.column("f").chunk(0).buffers()[1].address == got.column("f").chunk(0).buffers()[1].address + 8 * 10_001
    # Written: the new rows, and of the first (sliced at an odd row) batch the
    # columns that cannot be shared there; the other batch is shared whole.
    cut = sum(rolled.column(c).chunk(0).nbytes for c in ("i", "s", "k", "flag"))
    assert used(client) - before <= new_rows.nbytes + cut + 256 * 1024
