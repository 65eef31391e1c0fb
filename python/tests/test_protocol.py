"""Encode/decode of the wire format, checked against the bytes in docs/PROTOCOL.md.

These need no server: they pin the layouts the client sends and accepts.
"""

import json
import struct

import pytest

from arrowpool import _protocol as proto
from arrowpool import errors


def hexbytes(s: str) -> bytes:
    """Bytes from the doc's notation: hex pairs, '|' separators, '00*9' repeats."""
    out = bytearray()
    for tok in s.replace("|", " ").split():
        if "*" in tok:
            byte, count = tok.split("*")
            out += bytes([int(byte, 16)]) * int(count)
        else:
            out.append(int(tok, 16))
    return bytes(out)


# PROTOCOL.md section 7, "A session, byte by byte".
DOC_CLIENT_HELLO = hexbytes("41 50 63 31 01 00 00 00")
DOC_SERVER_HELLO = hexbytes(
    "41 50 73 31 01 00 00 00 | 00 00 00 80 00 00 00 00 | 00 10 00 00 | 02 00 01 | 00*9"
)
DOC_PING = hexbytes("00 00 00 00 | 07 00 00 00 00 00 00 00 | 01 00 | 00 00")
DOC_PONG = hexbytes("00 00 00 00 | 07 00 00 00 00 00 00 00 | 01 80 | 00 00")


def test_section7_client_hello():
    assert proto.encode_client_hello(write=False) == DOC_CLIENT_HELLO


def test_client_hello_write_flag_sets_bit_0():
    assert proto.encode_client_hello(write=True) == b"APc1\x01\x00\x01\x00"


def test_section7_server_hello():
    assert len(DOC_SERVER_HELLO) == 32
    hello = proto.decode_server_hello(DOC_SERVER_HELLO)
    assert hello.version == 1
    assert hello.status == 0
    assert hello.arena_len == 2 * 1024**3
    assert hello.map_align == 4096
    assert hello.memory_kind_name == "4k-pages"
    assert hello.io_driver_name == "io_uring"
    assert hello.fd_count == 1


def test_section7_ping_and_pong():
    assert proto.encode_frame(7, proto.Kind.PING, proto.Ping.encode()) == DOC_PING
    header = proto.decode_header(DOC_PONG)
    assert header == proto.Header(len=0, request_id=7, kind=proto.Kind.PING | proto.REPLY_BIT, flags=0)
    assert proto.Ping.decode_reply(DOC_PONG[proto.HEADER_LEN :]) is None


def test_server_hello_rejects_wrong_magic_and_length():
    with pytest.raises(errors.ProtocolError, match="APs1"):
        proto.decode_server_hello(b"HTTP" + DOC_SERVER_HELLO[4:])
    with pytest.raises(errors.ProtocolError, match="32 bytes"):
        proto.decode_server_hello(DOC_SERVER_HELLO[:31])


def test_server_hello_refusal_status_is_decoded():
    refused = bytearray(DOC_SERVER_HELLO)
    refused[6:8] = struct.pack("<H", proto.STATUS_TOO_MANY_CONNECTIONS)
    refused[22] = 0
    hello = proto.decode_server_hello(bytes(refused))
    assert hello.status == 3 and hello.fd_count == 0


def test_header_layout_offsets():
    frame = proto.encode_frame(0x0102030405060708, 0x0A0B, b"xyz", flags=1)
    assert frame[0:4] == b"\x03\x00\x00\x00"
    assert frame[4:12] == bytes([8, 7, 6, 5, 4, 3, 2, 1])
    assert frame[12:14] == b"\x0b\x0a"
    assert frame[14:16] == b"\x01\x00"
    assert frame[16:] == b"xyz"


def test_request_body_limit_is_enforced_before_sending():
    proto.encode_frame(1, proto.Kind.PING, b"\0" * proto.REQUEST_BODY_MAX)
    with pytest.raises(ValueError, match="65536"):
        proto.encode_frame(1, proto.Kind.PING, b"\0" * (proto.REQUEST_BODY_MAX + 1))


def test_oversized_reply_header_is_a_protocol_error():
    header = struct.pack("<IQHH", proto.REPLY_BODY_MAX + 1, 1, proto.Kind.LIST | 0x8000, 0)
    with pytest.raises(errors.ProtocolError, match="limit"):
        proto.decode_header(header)
    ok = struct.pack("<IQHH", proto.REPLY_BODY_MAX, 1, proto.Kind.LIST | 0x8000, 0)
    assert proto.decode_header(ok).len == proto.REPLY_BODY_MAX


def test_create_request_and_reply():
    body = proto.Create.encode(proto.ObjectKind.TABLE, 4096, "sales")
    assert body == b"\x00" + (4096).to_bytes(8, "little") + b"\x05\x00sales"
    reply = struct.pack("<QQQ", 9, 8192, 12288)
    assert proto.Create.decode_reply(reply) == proto.Created(9, 8192, 12288)
    with pytest.raises(errors.ProtocolError):
        proto.Create.decode_reply(reply[:-1])


def test_bytes_object_kind_is_1():
    assert proto.Create.encode(proto.ObjectKind.BYTES, 0, "b")[0] == 1


def test_seal_abort_release_bodies():
    assert proto.Seal.encode(3, 1000) == struct.pack("<QQ", 3, 1000)
    assert proto.Seal.decode_reply(struct.pack("<QQ", 2, 77)) == proto.Sealed(version=2, rows=77)
    assert proto.Abort.encode(5) == b"\x05" + b"\0" * 7
    assert proto.Release.encode(6) == b"\x06" + b"\0" * 7
    frame = proto.encode_frame(11, proto.Kind.RELEASE, proto.Release.encode(6), proto.FLAG_NO_REPLY)
    assert frame[12:16] == b"\x06\x00\x01\x00"


def test_get_reply_is_41_bytes():
    assert proto.Get.encode("é") == b"\x02\x00\xc3\xa9"
    reply = struct.pack("<QQQQQB", 1, 2, 4096, 500, 10, 0)
    assert len(reply) == 41
    assert proto.Get.decode_reply(reply) == proto.Got(1, 2, 4096, 500, 10, proto.ObjectKind.TABLE)
    with pytest.raises(errors.ProtocolError, match="41"):
        proto.Get.decode_reply(reply + b"\0")


def test_wait_body_and_timeout_bound():
    assert proto.Wait.encode(3, 1500, "t") == struct.pack("<QI", 3, 1500) + b"\x01\x00t"
    with pytest.raises(ValueError):
        proto.Wait.encode(0, proto.WAIT_TIMEOUT_MS_MAX + 1, "t")
    assert proto.Wait.decode_reply(struct.pack("<Q", 4)) == 4


def test_ingest_body():
    body = proto.Ingest.encode("t", "/d/x.parquet", ["a", "bc"])
    assert body == (
        b"\x01\x00t" + b"\x0c\x00/d/x.parquet" + b"\x02\x00" + b"\x01\x00a" + b"\x02\x00bc"
    )
    assert proto.Ingest.encode("t", "/p", None).endswith(b"\x00\x00")
    with pytest.raises(ValueError):
        proto.Ingest.encode("t", "/" + "p" * proto.PATH_MAX, None)


def test_empty_replies_must_be_empty():
    for cls in (proto.Ping, proto.Abort, proto.Release, proto.Delete):
        cls.decode_reply(b"")
        with pytest.raises(errors.ProtocolError):
            cls.decode_reply(b"\0")


def test_json_replies():
    assert proto.List.decode_reply(json.dumps([{"name": "a"}]).encode()) == [{"name": "a"}]
    assert proto.Stats.decode_reply(b'{"objects": 0}') == {"objects": 0}
    with pytest.raises(errors.ProtocolError):
        proto.List.decode_reply(b'{"not": "a list"}')
    with pytest.raises(errors.ProtocolError):
        proto.Stats.decode_reply(b"\xff")


@pytest.mark.parametrize(
    "code, cls",
    [
        (1, errors.Malformed),
        (2, errors.UnknownKind),
        (3, errors.NotFound),
        (4, errors.OutOfMemory),
        (5, errors.InvalidObject),
        (6, errors.Timeout),
        (7, errors.InvalidData),
        (8, errors.IngestError),
        (9, errors.LimitExceeded),
        (10, errors.ServerUnavailable),
        (11, errors.InternalError),
    ],
)
def test_error_body_maps_code_to_class(code, cls):
    message = "what went wrong"
    body = struct.pack("<H", code) + struct.pack("<H", len(message)) + message.encode()
    err = proto.decode_error(body)
    assert type(err) is cls
    assert err.code == code
    assert str(err) == message
    assert isinstance(err, errors.ArrowpoolError)


def test_protocol_error_family():
    for cls in (errors.Malformed, errors.UnknownKind, errors.InvalidObject, errors.InvalidData):
        assert issubclass(cls, errors.ProtocolError)


def test_unknown_error_code_keeps_code_and_message():
    err = proto.decode_error(b"\x63\x00\x02\x00hi")
    assert type(err) is errors.ArrowpoolError and err.code == 99 and "hi" in str(err)


def test_truncated_error_body_is_a_protocol_error():
    with pytest.raises(errors.ProtocolError):
        proto.decode_error(b"\x03\x00\x09\x00short")


def test_names_over_u16_are_refused_locally():
    with pytest.raises(ValueError):
        proto.Get.encode("x" * 70000)
