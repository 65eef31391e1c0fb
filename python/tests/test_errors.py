"""Server error replies become the documented exceptions; the connection stays usable
where the protocol says it does."""

import socket
import time

import pyarrow as pa
import pytest

import arrowpool
from arrowpool import _protocol as proto
from conftest import leases_of


def raw_request(client, kind, body=b""):
    """Sends one frame through the client's connection and returns the reply body."""
    return client._connection().request(kind, body)


def test_connect_to_missing_socket_is_server_unavailable(tmp_path):
    with pytest.raises(arrowpool.ServerUnavailable, match="cannot connect"):
        arrowpool.connect(str(tmp_path / "nobody.sock"))


def test_silent_peer_times_out_instead_of_hanging(tmp_path):
    # Something listens but never answers the handshake (a hung server).
    path = str(tmp_path / "silent.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    try:
        start = time.monotonic()
        with pytest.raises(arrowpool.ServerUnavailable, match="did not answer"):
            arrowpool.connect(path, timeout=0.3)
        assert time.monotonic() - start < 5
    finally:
        listener.close()


def test_not_a_server_is_a_protocol_error(tmp_path):
    import threading

    path = str(tmp_path / "http.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def answer():
        conn, _ = listener.accept()
        conn.recv(8)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        conn.close()

    t = threading.Thread(target=answer)
    t.start()
    try:
        with pytest.raises(arrowpool.ProtocolError, match="arrowpoold"):
            arrowpool.connect(path, timeout=5)
    finally:
        t.join()
        listener.close()


def test_get_missing_name(client, name):
    with pytest.raises(arrowpool.NotFound) as info:
        client.get(name)
    assert info.value.code == 3
    assert info.value.message  # the server's words are kept
    client.ping()


def test_delete_missing_name(client, name):
    with pytest.raises(arrowpool.NotFound):
        client.delete(name)


def test_name_too_long_is_malformed_and_connection_survives(client):
    with pytest.raises(arrowpool.Malformed) as info:
        client.get("x" * 256)
    assert isinstance(info.value, arrowpool.ProtocolError)
    client.ping()


def test_empty_name_is_malformed(client):
    with pytest.raises(arrowpool.Malformed):
        client.put("", pa.table({"a": [1]}))
    assert client.stats()["pending_bytes"] == 0


def test_control_characters_in_name_are_malformed(client):
    with pytest.raises(arrowpool.Malformed):
        client.put_bytes("bad\nname", b"x")


def test_unknown_kind_keeps_the_connection(client):
    with pytest.raises(arrowpool.UnknownKind):
        raw_request(client, 99)
    client.ping()


def test_malformed_body_keeps_the_connection(client):
    with pytest.raises(arrowpool.Malformed):
        raw_request(client, proto.Kind.GET, b"\x05\x00ab")  # string runs past the end
    with pytest.raises(arrowpool.Malformed):
        raw_request(client, proto.Kind.PING, b"extra")
    client.ping()


def test_seal_of_unknown_object_is_invalid_object(client):
    with pytest.raises(arrowpool.InvalidObject):
        raw_request(client, proto.Kind.SEAL, proto.Seal.encode(0xFFFF_FFFF_FFFF, 10))


def test_release_without_lease_is_invalid_object(client, name):
    client.put_bytes(name, b"x")
    with pytest.raises(arrowpool.InvalidObject):
        raw_request(client, proto.Kind.RELEASE, proto.Release.encode(0xFFFF_FFFF_FFFF))


def test_seal_of_garbage_is_invalid_data_and_aborts(client, name):
    conn = client._connection()
    created = proto.Create.decode_reply(
        conn.request(proto.Kind.CREATE, proto.Create.encode(proto.ObjectKind.TABLE, 100, name))
    )
    conn.rw_mmap[created.offset : created.offset + 100] = b"\xab" * 100
    with pytest.raises(arrowpool.InvalidData):
        conn.request(proto.Kind.SEAL, proto.Seal.encode(created.object_id, 100))
    with pytest.raises(arrowpool.NotFound):
        client.get(name)
    # Aborted: a second seal of the same id is refused.
    with pytest.raises(arrowpool.InvalidObject):
        conn.request(proto.Kind.SEAL, proto.Seal.encode(created.object_id, 100))


def test_only_the_creator_may_seal(server, client, name):
    conn = client._connection()
    created = proto.Create.decode_reply(
        conn.request(proto.Kind.CREATE, proto.Create.encode(proto.ObjectKind.BYTES, 10, name))
    )
    with server.connect() as other:
        with pytest.raises(arrowpool.InvalidObject):
            other._connection().request(proto.Kind.SEAL, proto.Seal.encode(created.object_id, 10))
    conn.request(proto.Kind.ABORT, proto.Abort.encode(created.object_id))


def test_too_many_unsealed_creates_is_limit_exceeded(server, name):
    with server.connect() as c:
        conn = c._connection()
        ids = []
        with pytest.raises(arrowpool.LimitExceeded):
            for i in range(200):
                created = proto.Create.decode_reply(
                    conn.request(
                        proto.Kind.CREATE, proto.Create.encode(proto.ObjectKind.BYTES, 1, f"{name}-{i}")
                    )
                )
                ids.append(created.object_id)
        assert len(ids) == 64  # the documented per-connection limit
    # Closing the connection aborted all of them (the server sees the close on
    # the connection's core, which may come after another core's stats).
    with server.connect() as c:
        deadline = time.monotonic() + 5
        while c.stats()["pending_bytes"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert c.stats()["pending_bytes"] == 0


def test_out_of_memory_says_how_much(client, name):
    arena = client.arena_bytes
    with pytest.raises(arrowpool.OutOfMemory) as info:
        client.put_bytes(name, memoryview(bytearray(arena + 4096)))
    assert info.value.code == 4
    # Larger than the whole arena: it says so, with how much data the arena can
    # hold (it keeps a little for table manifests), and names the flag to change.
    message = info.value.message
    assert "can never fit" in message and "--memory" in message, message
    assert "of data" in message, message
    client.ping()


def test_wait_timeout(client, name):
    version = client.put_bytes(name, b"v")
    start = time.monotonic()
    with pytest.raises(arrowpool.Timeout):
        client.wait_for_version(name, after=version, timeout=0.2)
    assert 0.15 < time.monotonic() - start < 5
    client.ping()


def test_wait_timeout_is_bounded_by_the_protocol(client, name):
    with pytest.raises(ValueError):
        client.wait_for_version(name, after=0, timeout=601)


def test_ingest_of_missing_file(client, name, tmp_path):
    with pytest.raises(arrowpool.IngestError) as info:
        client.ingest(tmp_path / "missing.parquet", name)
    assert info.value.message


def test_ingest_of_non_parquet(client, name, tmp_path):
    path = tmp_path / "x.parquet"
    path.write_bytes(b"this is not parquet" * 100)
    with pytest.raises(arrowpool.IngestError):
        client.ingest(path, name)


def test_release_of_bad_lease_with_no_reply_sends_nothing_back(client, name):
    # NO_REPLY releases get no answer, not even an error: the next reply is ping's.
    conn = client._connection()
    with conn.lock:
        conn.pending_releases.append(0xFFFF_FFFF_FFF0)
    client.ping()
    client.put_bytes(name, b"still in step")
    assert client.get_bytes(name) == b"still in step"
    assert leases_of(client, name) == 0
