"""The golden frames of ``tests/fixtures/protocol.json`` against ``arrowpool._protocol``.

The same file is checked against the Rust protocol code and against docs/PROTOCOL.md
by ``tests/golden.rs``, so a frame that passes both is one the server and this client
agree on byte for byte. No server needed.

The client only sends requests and only reads replies, so requests are checked by
encoding (and their header by decoding) and replies by decoding; reply bodies are
also packed with the module's ``REPLY`` layouts to check them the other way.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest

from arrowpool import _protocol as proto
from arrowpool import errors

FIXTURE_PATH = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "protocol.json"
FIXTURE = json.loads(FIXTURE_PATH.read_text(encoding="utf-8"))
CONSTANTS = FIXTURE["constants"]

# Python names some error classes differently from the protocol's code names.
PYTHON_ERROR_NAMES = {
    "Ingest": "IngestError",
    "ShuttingDown": "ServerUnavailable",
    "Internal": "InternalError",
}


def cases(role: str | None = None, side: str | None = None) -> pytest.MarkDecorator:
    if side is not None:
        chosen = [c for c in FIXTURE["handshakes"] if c["side"] == side]
    else:
        chosen = [c for c in FIXTURE["frames"] if c["role"] == role]
    assert chosen, f"the fixture has no {role or side} cases"
    return pytest.mark.parametrize("case", chosen, ids=[c["name"] for c in chosen])


def request_class(case: dict):
    return proto.REQUESTS[proto.Kind[case["request"].upper()]]


def split(case: dict) -> tuple[proto.Header, bytes]:
    """Decodes the frame's header with the module and checks it against the fixture."""
    frame = bytes.fromhex(case["hex"])
    body_max = proto.REQUEST_BODY_MAX if case["role"] == "request" else proto.REPLY_BODY_MAX
    header = proto.decode_header(frame, body_max)
    assert header == proto.Header(**case["header"])
    assert len(frame) == proto.HEADER_LEN + header.len
    return header, frame[proto.HEADER_LEN :]


def reply_frame(header: proto.Header, body: bytes) -> bytes:
    # encode_frame is for requests (it enforces REQUEST_BODY_MAX); replies use HEADER.
    return proto.HEADER.pack(len(body), header.request_id, header.kind, header.flags) + body


@cases(role="request")
def test_request_encodes_to_fixture_bytes(case):
    cls = request_class(case)
    header, _ = split(case)
    assert header.kind == cls.KIND
    body = cls.encode(**case["fields"])
    frame = proto.encode_frame(header.request_id, cls.KIND, body, header.flags)
    assert frame.hex() == case["hex"]


def expected_reply(case: dict):
    """What ``decode_reply`` returns for this case's fields."""
    if "json" in case:
        return case["json"]
    fields = case["fields"]
    value = {
        proto.Kind.CREATE: lambda: proto.Created(**fields),
        proto.Kind.SEAL: lambda: proto.Sealed(**fields),
        proto.Kind.PUBLISH: lambda: proto.Sealed(**fields),
        proto.Kind.GET: lambda: proto.Got(**fields),
        proto.Kind.GET_VERSION: lambda: proto.Got(**fields),
        proto.Kind.WAIT: lambda: fields["version"],
    }.get(request_class(case).KIND)
    return value() if value else None


def pack_reply(cls, value) -> bytes:
    if value is None:
        return b""
    if isinstance(value, tuple):
        return cls.REPLY.pack(*value)
    return cls.REPLY.pack(value)


@cases(role="reply")
def test_reply_decodes_to_fixture_fields(case):
    cls = request_class(case)
    header, body = split(case)
    assert header.kind == cls.KIND | proto.REPLY_BIT
    decoded = cls.decode_reply(body)
    assert decoded == expected_reply(case)
    if "json" in case:
        # The server writes compact JSON in field order; so does json.dumps here.
        assert json.dumps(decoded, separators=(",", ":")).encode() == body
    else:
        assert reply_frame(header, pack_reply(cls, decoded)).hex() == case["hex"]


@cases(role="error")
def test_error_reply_decodes_and_encodes(case):
    header, body = split(case)
    assert header.kind == proto.Kind.ERROR
    code, message = case["fields"]["code"], case["fields"]["message"]
    err = proto.decode_error(body)
    assert (err.code, err.message) == (code, message)
    assert type(err) is type(errors.from_code(code, message))
    packed = struct.pack("<H", code) + proto.encode_str(message)
    assert reply_frame(header, packed).hex() == case["hex"]


@cases(role="shutdown")
def test_shutdown_notice(case):
    header, body = split(case)
    assert (header.kind, header.request_id, body) == (proto.Kind.SHUTDOWN, 0, b"")


@cases(side="client")
def test_client_hello(case):
    fields = case["fields"]
    assert fields["version"] == proto.PROTOCOL_VERSION
    assert fields["flags"] in (0, proto.HELLO_FLAG_WRITE)
    write = bool(fields["flags"] & proto.HELLO_FLAG_WRITE)
    assert proto.encode_client_hello(write=write).hex() == case["hex"]
    magic, version, flags = proto.CLIENT_HELLO.unpack(bytes.fromhex(case["hex"]))
    assert (magic, version, flags) == (proto.CLIENT_MAGIC, fields["version"], fields["flags"])


@cases(side="server")
def test_server_hello(case):
    data = bytes.fromhex(case["hex"])
    hello = proto.decode_server_hello(data)
    assert hello._asdict() == case["fields"]
    reserved = bytes(proto.SERVER_HELLO_LEN - CONSTANTS["handshake"]["server_offsets"]["reserved"])
    assert proto.SERVER_HELLO.pack(proto.SERVER_MAGIC, *hello, reserved) == data


def struct_offsets(layout: struct.Struct) -> list[tuple[int, int]]:
    """(offset, size) of each field of a little-endian struct without padding."""
    assert layout.format[0] == "<"
    fields, offset = [], 0
    for count, code in re.findall(r"(\d*)([a-zA-Z])", layout.format[1:]):
        size = struct.calcsize("<" + count + code)
        fields.append((offset, size))
        offset += size
    return fields


def test_frame_constants():
    c = CONSTANTS["frame"]
    assert proto.Header._fields == ("len", "request_id", "kind", "flags")
    for name, (offset, size) in zip(proto.Header._fields, struct_offsets(proto.HEADER)):
        assert (c[f"{name}_offset"], c[f"{name}_size"]) == (offset, size), name
    assert c["header_len"] == proto.HEADER_LEN
    assert c["request_body_max"] == proto.REQUEST_BODY_MAX
    assert c["reply_body_max"] == proto.REPLY_BODY_MAX
    assert c["reply_bit"] == proto.REPLY_BIT
    assert c["flag_no_reply"] == proto.FLAG_NO_REPLY


def test_limits():
    c = CONSTANTS["limits"]
    assert c["name_max"] == proto.NAME_MAX
    assert c["path_max"] == proto.PATH_MAX
    assert c["columns_max"] == proto.COLUMNS_MAX
    assert c["wait_timeout_ms_max"] == proto.WAIT_TIMEOUT_MS_MAX


def test_handshake_constants():
    c = CONSTANTS["handshake"]
    assert c["client_magic"].encode() == proto.CLIENT_MAGIC
    assert c["server_magic"].encode() == proto.SERVER_MAGIC
    assert c["version"] == proto.PROTOCOL_VERSION
    assert c["flag_write"] == proto.HELLO_FLAG_WRITE
    assert c["client_hello_len"] == proto.CLIENT_HELLO_LEN
    assert c["server_hello_len"] == proto.SERVER_HELLO_LEN
    fields = ["magic", *proto.ServerHello._fields, "reserved"]
    offsets = [offset for offset, _ in struct_offsets(proto.SERVER_HELLO)]
    assert dict(zip(fields, offsets, strict=True)) == c["server_offsets"]
    statuses = {n: getattr(proto, n) for n in dir(proto) if n.startswith("STATUS_")}
    assert statuses == {f"STATUS_{s['name'].upper()}": s["value"] for s in c["statuses"]}


def named(section: str) -> dict[str, int]:
    return {n["name"]: n["value"] for n in CONSTANTS[section]}


def test_kinds():
    assert {k.name.lower(): k.value for k in proto.Kind} == named("kinds")
    requests = {v for v in named("kinds").values() if v < proto.REPLY_BIT}
    assert set(proto.REQUESTS) == requests


def test_error_codes():
    for name, code in named("error_codes").items():
        err = errors.from_code(code, "m")
        assert type(err).__name__ == PYTHON_ERROR_NAMES.get(name, name)
        assert err.code == code and type(err).code == code
    # No Python error class claims a code the protocol does not have.
    stack, claimed = [errors.ArrowpoolError], set()
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls.code is not None:
            claimed.add(cls.code)
    assert claimed == set(named("error_codes").values())


def test_memory_kinds_io_drivers_object_kinds():
    assert proto.MEMORY_KINDS == {v: k for k, v in named("memory_kinds").items()}
    assert proto.IO_DRIVERS == {v: k for k, v in named("io_drivers").items()}
    assert {k.name.lower(): k.value for k in proto.ObjectKind} == named("object_kinds")
