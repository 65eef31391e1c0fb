"""Tables whose layout would make a stock reader read out of bounds are refused at
seal (issue: tables the server accepted crash readers).

Each case builds the bad array with ``pa.Array.from_buffers`` (which does not
validate), lets pyarrow's own IPC writer write it, and expects ``InvalidData``.
A random corruption test then flips bytes of a valid file and checks that every
file the server accepts is read by pyarrow in a child process without a crash.
"""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pytest

import arrowpool
from arrowpool import _protocol as proto


def i32(*v):
    return pa.py_buffer(np.array(v, dtype=np.int32).tobytes())


def i64(*v):
    return pa.py_buffer(np.array(v, dtype=np.int64).tobytes())


def bitmap(*valid):
    return pa.py_buffer(np.packbits(np.array(valid, dtype=bool), bitorder="little").tobytes())


DATA6 = pa.py_buffer(b"abcdef")
INTS3 = pa.array([1, 2, 3], pa.int64())


A = "a" * 1037
B = "b" * 1024
SENTINEL = (0, 1037, 2061)  # offsets of [A, B]: a byte pattern found once per file
RUNS = (1037, 2061, 3079)


class Patch:
    """A valid array whose IPC file gets ``old`` replaced by ``new`` (pyarrow
    refuses to build these arrays at all, but a buggy writer can produce them)."""

    def __init__(self, array: pa.Array, old: bytes, new: bytes):
        self.array, self.old, self.new = array, old, new


def raw(pybuf) -> bytes:
    return pybuf.to_pybytes()


def bad_arrays():
    """name -> an array whose layout is out of bounds (or inconsistent), or a Patch."""
    s = pa.string()
    two_lists = pa.array([[1] * 1037, [2] * 1024], pa.list_(pa.int8()))
    return {
        "string_offsets_decrease": pa.Array.from_buffers(s, 3, [None, i32(0, 4, 2, 6), DATA6]),
        "string_offset_past_data": Patch(
            pa.array([A, B]), raw(i32(*SENTINEL)), raw(i32(0, 1037, 9999))
        ),
        "string_offset_negative": Patch(
            pa.array([A, B]), raw(i32(*SENTINEL)), raw(i32(-8, 1037, 2061))
        ),
        "large_string_offsets_decrease": pa.Array.from_buffers(
            pa.large_string(), 3, [None, i64(0, 5, 1, 6), DATA6]
        ),
        "binary_offset_past_data": Patch(
            pa.array([A.encode(), B.encode()]), raw(i32(*SENTINEL)), raw(i32(0, 1037, 7000))
        ),
        "list_offsets_decrease": pa.Array.from_buffers(
            pa.list_(pa.int64()), 3, [None, i32(0, 3, 1, 3)], children=[INTS3]
        ),
        "list_offset_past_child": Patch(two_lists, raw(i32(*SENTINEL)), raw(i32(0, 1037, 5000))),
        "large_list_offset_past_child": Patch(
            two_lists.cast(pa.large_list(pa.int8())), raw(i64(*SENTINEL)), raw(i64(0, 1037, 9000))
        ),
        "map_offset_past_entries": Patch(
            pa.array(
                [[(i, 1) for i in range(1037)], [(i, 2) for i in range(1024)]],
                pa.map_(pa.int16(), pa.int8()),
            ),
            raw(i32(*SENTINEL)),
            raw(i32(0, 1037, 4000)),
        ),
        "list_view_past_child": pa.Array.from_buffers(
            pa.list_view(pa.int64()), 2, [None, i32(0, 2), i32(1, 5)], children=[INTS3]
        ),
        "dictionary_key_out_of_range": pa.DictionaryArray.from_buffers(
            pa.dictionary(pa.int32(), pa.string()),
            3,
            [None, i32(0, 1, 99)],
            pa.array(["a", "b"]),
        ),
        "dictionary_junk_under_false_null_count": pa.DictionaryArray.from_buffers(
            pa.dictionary(pa.int32(), pa.string()),
            3,
            [bitmap(True, False, True), i32(0, 12345, 1)],
            pa.array(["a", "b"]),
            null_count=0,
        ),
        "dense_union_offset_past_child": pa.UnionArray.from_dense(
            pa.array([0, 0], pa.int8()), pa.array([0, 70], pa.int32()), [INTS3], ["i"]
        ),
        "union_undeclared_type_id": pa.UnionArray.from_sparse(
            pa.array([0, 5, 0], pa.int8()), [INTS3], ["i"]
        ),
        "run_ends_decrease": Patch(
            pa.RunEndEncodedArray.from_arrays(pa.array(RUNS, pa.int32()), pa.array(["a", "b", "c"])),
            raw(i32(*RUNS)),
            raw(i32(2061, 1037, 3079)),
        ),
        "run_ends_short_of_length": Patch(
            pa.RunEndEncodedArray.from_arrays(pa.array(RUNS, pa.int32()), pa.array(["a", "b", "c"])),
            raw(i32(*RUNS)),
            raw(i32(1037, 2061, 3000)),
        ),
        "string_view_past_buffer": pa.Array.from_buffers(
            pa.string_view(),
            1,
            [None, pa.py_buffer(np.array([20, 0x64636261, 0, 0], dtype=np.uint32).tobytes()), DATA6],
        ),
        "string_view_missing_buffer": pa.Array.from_buffers(
            pa.string_view(),
            1,
            [None, pa.py_buffer(np.array([20, 0x64636261, 3, 0], dtype=np.uint32).tobytes()), DATA6],
        ),
    }


def ipc_file(t: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, t.schema) as w:
        w.write_table(t)
    return sink.getvalue().to_pybytes()


@pytest.mark.parametrize("case", list(bad_arrays()))
def test_out_of_bounds_layout_is_refused(client, name, case):
    bad = bad_arrays()[case]
    arr = bad.array if isinstance(bad, Patch) else bad
    data = ipc_file(pa.table({"id": pa.array(range(len(arr)), pa.int32()), "bad": arr}))
    if isinstance(bad, Patch):
        assert data.count(bad.old) == 1, "the patched pattern must be unique in the file"
        data = data.replace(bad.old, bad.new)
    with pytest.raises(arrowpool.InvalidData) as e:
        put_raw_table(client, name, data)
    assert "bad" in str(e.value), e.value  # the message names the column
    assert client.stats()["pending_bytes"] == 0
    with pytest.raises(arrowpool.NotFound):
        client.get(name)


def test_odd_values_pass(client, name):
    """Invalid UTF-8 in a string column and NaNs are not layout errors: stored."""
    bad_utf8 = pa.Array.from_buffers(pa.string(), 2, [None, i32(0, 2, 4), pa.py_buffer(b"\xff\xfeok")])
    t = pa.table({"s": bad_utf8, "f": pa.array([float("nan"), 1.0])})
    client.put(name, t)
    got = client.get(name)
    assert got.column("s").chunk(0).buffers()[2].to_pybytes()[:4] == b"\xff\xfeok"


def put_raw_table(client: arrowpool.Client, name: str, data: bytes) -> None:
    """Writes ``data`` as a table object and seals it, bypassing the writer."""
    conn, body = client._request(
        proto.Kind.CREATE, proto.Create.encode(proto.ObjectKind.TABLE, len(data), name)
    )
    created = proto.Create.decode_reply(body)
    conn.rw_mmap[created.offset : created.offset + len(data)] = data
    client._request(proto.Kind.SEAL, proto.Seal.encode(created.object_id, len(data)))


def valid_table() -> pa.Table:
    rows = 64
    return pa.table(
        {
            "s": pa.array([None if i % 5 == 0 else "v" * (i % 9) for i in range(rows)]),
            "l": pa.array([[i] * (i % 4) for i in range(rows)], pa.list_(pa.int32())),
            "m": pa.array([[("k", i)] for i in range(rows)], pa.map_(pa.string(), pa.int64())),
            "d": pa.array(["a", "b", None, "c"] * (rows // 4)).dictionary_encode(),
            "v": pa.array(["x" * (i % 20) for i in range(rows)], pa.string_view()),
            "u": pa.UnionArray.from_dense(
                pa.array([i % 2 for i in range(rows)], pa.int8()),
                pa.array([i // 2 for i in range(rows)], pa.int32()),
                [pa.array(range(rows)), pa.array([str(i) for i in range(rows)])],
                ["i", "s"],
            ),
        }
    )


READER = textwrap.dedent(
    """
    import sys, arrowpool
    c = arrowpool.connect(sys.argv[1], write=False)
    for name in sys.argv[2:]:
        try:
            t = c.get(name)
            t.to_pylist()
            t.to_pandas()
        except Exception:
            pass  # an exception is a clean failure; only a crash fails the test
        print(name, flush=True)
    """
)


def test_corrupted_files_that_pass_never_crash_a_reader(server, client, name):
    """Random byte flips in a valid file: whatever the server accepts, pyarrow reads
    (to_pylist, to_pandas) in a child process without SIGSEGV/SIGBUS."""
    rng = random.Random(8)
    good = ipc_file(valid_table())
    accepted = []
    for i in range(300):
        bad = bytearray(good)
        for _ in range(rng.randint(1, 6)):
            bad[rng.randrange(len(bad))] = rng.randrange(256)
        try:
            put_raw_table(client, f"{name}-{i}", bytes(bad))
            accepted.append(f"{name}-{i}")
        except arrowpool.ArrowpoolError:
            pass
    assert len(accepted) < 300  # the corruptions are not all harmless
    run = subprocess.run(
        [sys.executable, "-c", READER, server.socket, *accepted],
        capture_output=True, text=True, timeout=300,
    )
    read = run.stdout.split()
    assert run.returncode == 0, (
        f"reader died with status {run.returncode} after {len(read)} of {len(accepted)} "
        f"accepted tables; next: {accepted[len(read)] if len(read) < len(accepted) else None}\n"
        f"{run.stderr[-2000:]}"
    )
    for n in accepted:
        client.delete(n)
