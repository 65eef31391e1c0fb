"""Every Arrow type pyarrow can write, put and read back equal (issue: valid tables
refused at seal), at several buffer alignments, through the Python client and,
read back by the Rust client (the ``arrowpool get --out`` CLI), across clients.

pyarrow aligns IPC buffers to 8 bytes; arrow-rs needs 16 for decimal128/256,
interval month-day-nano and views, so the server must accept those files and the
Rust reader copies just the misaligned buffers (docs/PROTOCOL.md, "Alignment").
"""

from __future__ import annotations

import decimal
import os
import subprocess

import pyarrow as pa
import pytest

import arrowpool
from conftest import REPO, assert_in_arena

N = 23  # odd, so that buffers end at every alignment modulo 16 and 64


def _dec(scale: int):
    return [None if i % 5 == 0 else decimal.Decimal(i * 37 - 300).scaleb(-scale) for i in range(N)]


def _strings():
    return [None if i % 4 == 0 else ("x" * (i % 17)) + str(i) for i in range(N)]


def columns() -> dict[str, pa.Array]:
    ints = [None if i % 6 == 0 else i - 7 for i in range(N)]
    strs = _strings()
    lists = [None if i % 5 == 0 else list(range(i % 4)) for i in range(N)]
    cols = {
        "null": pa.nulls(N),
        "bool": pa.array([None if i % 3 == 0 else i % 2 == 0 for i in range(N)]),
        "int8": pa.array(ints, pa.int8()),
        "uint16": pa.array([None if v is None else abs(v) for v in ints], pa.uint16()),
        "int32": pa.array(ints, pa.int32()),
        "uint64": pa.array([None if v is None else abs(v) for v in ints], pa.uint64()),
        "float16": pa.array([None if v is None else float(v) for v in ints], pa.float16()),
        "float32": pa.array([None if v is None else v / 3 for v in ints], pa.float32()),
        "float64": pa.array([None if v is None else v / 7 for v in ints], pa.float64()),
        "decimal32": pa.array(_dec(2), pa.decimal32(7, 2)),
        "decimal64": pa.array(_dec(3), pa.decimal64(15, 3)),
        "decimal128": pa.array(_dec(2), pa.decimal128(12, 2)),
        "decimal256": pa.array(_dec(4), pa.decimal256(40, 4)),
        "date32": pa.array(ints, pa.int32()).cast(pa.date32()),
        "date64": pa.array([None if v is None else v * 86_400_000 for v in ints], pa.date64()),
        "time32": pa.array(ints, pa.int32()).cast(pa.time32("ms")),
        "time64": pa.array(ints, pa.int64()).cast(pa.time64("ns")),
        "timestamp_tz": pa.array(ints, pa.int64()).cast(pa.timestamp("us", tz="Europe/Paris")),
        "duration": pa.array(ints, pa.int64()).cast(pa.duration("s")),
        "interval_mdn": pa.array(
            [None if i % 4 == 0 else pa.MonthDayNano([i, -i, i * 1000]) for i in range(N)],
            pa.month_day_nano_interval(),
        ),
        "binary": pa.array([None if s is None else s.encode() for s in strs], pa.binary()),
        "large_binary": pa.array([None if s is None else s.encode() for s in strs], pa.large_binary()),
        "fixed_binary": pa.array([None if s is None else f"{s:>4}"[:4].encode() for s in strs], pa.binary(4)),
        "string": pa.array(strs, pa.string()),
        "large_string": pa.array(strs, pa.large_string()),
        "string_view": pa.array(strs, pa.string_view()),
        "binary_view": pa.array([None if s is None else s.encode() for s in strs], pa.binary_view()),
        "list": pa.array(lists, pa.list_(pa.int64())),
        "large_list": pa.array(
            [None if v is None else [str(x) for x in v] for v in lists], pa.large_list(pa.string())
        ),
        "fixed_list": pa.array(
            [None if i % 5 == 0 else [i, i + 1, i + 2] for i in range(N)], pa.list_(pa.int16(), 3)
        ),
        "list_view": pa.array(lists, pa.list_view(pa.int32())),
        "large_list_view": pa.array(lists, pa.large_list_view(pa.int32())),
        "struct": pa.array(
            [None if i % 7 == 0 else {"a": i, "b": strs[i], "c": {"d": float(i)}} for i in range(N)],
            pa.struct([("a", pa.int32()), ("b", pa.string()), ("c", pa.struct([("d", pa.float64())]))]),
        ),
        "map": pa.array(
            [None if i % 6 == 0 else [(f"k{j}", j * i) for j in range(i % 3)] for i in range(N)],
            pa.map_(pa.string(), pa.int64()),
        ),
        "dense_union": pa.UnionArray.from_dense(
            pa.array([i % 2 for i in range(N)], pa.int8()),
            pa.array([i // 2 for i in range(N)], pa.int32()),
            [pa.array(range(N), pa.int64()), pa.array([str(i) for i in range(N)])],
            ["i", "s"],
        ),
        "sparse_union": pa.UnionArray.from_sparse(
            pa.array([i % 3 % 2 for i in range(N)], pa.int8()),
            [pa.array(range(N), pa.int64()), pa.array([float(i) for i in range(N)])],
            ["i", "f"],
        ),
        "dictionary": pa.array(strs).dictionary_encode(),
        "dictionary_int": pa.DictionaryArray.from_arrays(
            pa.array([None if i % 4 == 0 else i % 3 for i in range(N)], pa.int16()),
            pa.array([10, 20, 30], pa.int64()),
        ),
        "run_end": pa.RunEndEncodedArray.from_arrays(
            pa.array([3, 9, 10, N], pa.int32()), pa.array(["a", None, "b", "c"])
        ),
        "uuid": pa.ExtensionArray.from_storage(
            pa.uuid(), pa.array([bytes([i]) * 16 for i in range(N)], pa.binary(16))
        ),
        "json": pa.ExtensionArray.from_storage(
            pa.json_(), pa.array([None if i % 3 == 0 else f'{{"a": {i}}}' for i in range(N)])
        ),
        "tensor": pa.ExtensionArray.from_storage(
            pa.fixed_shape_tensor(pa.float32(), [2, 2]),
            pa.array([[float(j) for j in range(i, i + 4)] for i in range(N)], pa.list_(pa.float32(), 4)),
        ),
    }
    return cols


def table() -> pa.Table:
    cols = columns()
    return pa.table(list(cols.values()), names=list(cols.keys()))


# Slices shift every buffer's start and length; batching splits the same columns
# across record batches whose bodies start at different offsets.
SHAPES = {
    "whole": lambda t: t,
    "offset1": lambda t: t.slice(1),
    "offset3_len17": lambda t: t.slice(3, 17),
    "two_batches": lambda t: pa.Table.from_batches(t.to_batches(max_chunksize=11)),
    "one_row": lambda t: t.slice(5, 1),
    "empty": lambda t: t.slice(0, 0),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_every_type_round_trips(client, name, shape):
    t = SHAPES[shape](table())
    client.put(name, t)
    got = client.get(name)
    assert got.schema == t.schema
    assert got.equals(t.combine_chunks()) or got.to_pylist() == t.to_pylist()
    assert got.to_pylist() == t.to_pylist()


@pytest.mark.parametrize("column", list(columns()))
def test_each_type_alone_is_zero_copy(client, name, column):
    t = table().select([column])
    client.put(name, t)
    got = client.get(name)
    assert got.equals(t)
    assert_in_arena(client, got)


def test_rust_client_reads_pyarrow_aligned_tables(server, client, name, tmp_path):
    """The Rust client (through the CLI) reads a table pyarrow wrote with 8-byte
    alignment, decimal128 and views included, and writes it out equal."""
    t = SHAPES["offset3_len17"](table())
    client.put(name, t)
    cli = REPO / "target" / os.environ.get("ARROWPOOL_PROFILE", "debug") / "arrowpool"
    if not cli.exists():
        cli = REPO / "target" / "debug" / "arrowpool"
    out = tmp_path / "out.arrow"
    subprocess.run(
        [str(cli), "--socket", server.socket, "get", name, "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    back = pa.ipc.open_file(pa.memory_map(str(out))).read_all()
    assert back.to_pylist() == t.to_pylist()


def test_metadata_that_is_not_utf8_is_refused_naming_the_key(client, name):
    """Regression (fuzzing): bytes metadata was refused with "invalid IPC footer:
    Utf8 error". The client names the key; the server, when the client is
    bypassed, says what is wrong and what to do."""
    t = pa.table({"a": [1]}).replace_schema_metadata({b"blob": b"\xff\x00\xfe"})
    with pytest.raises(ValueError, match=r"schema metadata value .* \(key b'blob'\) is not UTF-8"):
        client.put(name, t)
    field = pa.field("a", pa.int64(), metadata={b"\xc3": b"ok"})
    with pytest.raises(ValueError, match=r"field 'a' metadata key"):
        client.put(name, pa.table([pa.array([1])], schema=pa.schema([field])))
    from test_corrupt_tables import ipc_file, put_raw_table

    with pytest.raises(arrowpool.InvalidData, match="not valid UTF-8.*base64"):
        put_raw_table(client, name, ipc_file(t))
    # Text metadata (pandas' own, say) is stored and read back.
    ok = pa.table({"a": [1]}).replace_schema_metadata({"note": "café"})
    client.put(name, ok)
    assert client.get(name).schema.metadata == {b"note": "café".encode()}
