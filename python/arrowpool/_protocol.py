"""The arrowpool wire protocol, version 1: handshake, frames, one class per request.

Everything here is pure (bytes in, bytes or tuples out, no sockets) so that it can be
checked byte for byte against ``docs/PROTOCOL.md``, which is the contract. All integers
are little-endian; a ``str`` is a ``u16`` byte length followed by UTF-8 bytes.

Frame header (every request and reply)::

     0        4              12       14       16
     +--------+--------------+--------+--------+------------------+
     | len    | request_id   | kind   | flags  | body (len bytes) |
     | u32    | u64          | u16    | u16    |                  |
     +--------+--------------+--------+--------+------------------+

Each request kind is a class with ``KIND``, ``encode(...) -> body`` and
``decode_reply(body) -> value``, the Python mirror of ``src/protocol/<kind>.rs``.
"""

from __future__ import annotations

import enum
import json
import struct
from typing import Any, NamedTuple

from .errors import ArrowpoolError, ProtocolError, from_code

# --- frame ------------------------------------------------------------------------

HEADER = struct.Struct("<IQHH")
HEADER_LEN = HEADER.size
assert HEADER_LEN == 16

#: Largest request body the server accepts.
REQUEST_BODY_MAX = 64 * 1024
#: Largest reply body the server may send; a header announcing more is a broken stream.
REPLY_BODY_MAX = 16 * 1024 * 1024

#: Reply kind = request kind | REPLY_BIT.
REPLY_BIT = 0x8000
#: Frame flag honoured by ``release`` only: the server sends no reply at all.
FLAG_NO_REPLY = 1

#: Longest name in bytes, longest ingest path, most ingest columns, longest wait.
NAME_MAX = 255
PATH_MAX = 4096
COLUMNS_MAX = 4096
WAIT_TIMEOUT_MS_MAX = 600_000


class Kind(enum.IntEnum):
    """Frame kinds. Replies to request ``k`` have kind ``k | REPLY_BIT``."""

    PING = 1
    CREATE = 2
    SEAL = 3
    ABORT = 4
    GET = 5
    RELEASE = 6
    DELETE = 7
    LIST = 8
    STATS = 9
    WAIT = 10
    INGEST = 11
    PUBLISH = 12
    GET_VERSION = 13
    #: Server -> client, request id 0, empty body: the server is stopping.
    SHUTDOWN = 0xFFFE
    #: Server -> client: the request failed; body is ``code u16, message str``.
    ERROR = 0xFFFF


class ObjectKind(enum.IntEnum):
    """What an object holds."""

    TABLE = 0  # an uncompressed Arrow IPC file
    BYTES = 1  # an opaque blob


class Header(NamedTuple):
    len: int
    request_id: int
    kind: int
    flags: int


def encode_frame(request_id: int, kind: int, body: bytes = b"", flags: int = 0) -> bytes:
    """A complete request frame: header then body."""
    if len(body) > REQUEST_BODY_MAX:
        raise ValueError(
            f"request body of {len(body)} bytes exceeds the protocol limit of "
            f"{REQUEST_BODY_MAX} bytes"
        )
    return HEADER.pack(len(body), request_id, kind, flags) + body


def decode_header(data: bytes | bytearray | memoryview, body_max: int = REPLY_BODY_MAX) -> Header:
    """Parses the 16-byte header at the front of ``data``.

    A header announcing a body over ``body_max`` is a :class:`ProtocolError`: the stream
    cannot be trusted after it.
    """
    if len(data) < HEADER_LEN:
        raise ProtocolError(f"frame header needs {HEADER_LEN} bytes, got {len(data)}")
    header = Header(*HEADER.unpack_from(data, 0))
    if header.len > body_max:
        raise ProtocolError(
            f"frame announces a body of {header.len} bytes, over the limit of {body_max}"
        )
    return header


def decode_error(body: bytes) -> ArrowpoolError:
    """Decodes an error body: ``code u16, message str``."""
    r = _Reader(body, "error reply")
    code = r.u16()
    message = r.str()
    r.finish()
    return from_code(code, message)


# --- body helpers ---------------------------------------------------------------


def encode_str(s: str, what: str = "string", max_len: int = 0xFFFF) -> bytes:
    """A ``str``: u16 byte length then UTF-8 bytes.

    Only the u16 length prefix (and ``max_len`` where given) is enforced here; whether
    a name is acceptable is the server's call (it answers ``Malformed``).
    """
    if not isinstance(s, str):
        raise TypeError(f"{what} must be a str, not {type(s).__name__}")
    data = s.encode("utf-8")
    if len(data) > max_len:
        raise ValueError(f"{what} is {len(data)} bytes of UTF-8, the limit is {max_len}")
    return struct.pack("<H", len(data)) + data


class _Reader:
    """Reads fixed fields and strings from a reply body; short or trailing bytes are a
    :class:`ProtocolError` (the server broke the protocol)."""

    __slots__ = ("buf", "pos", "what")

    def __init__(self, buf: bytes, what: str):
        self.buf = buf
        self.pos = 0
        self.what = what

    def _take(self, fmt: str, size: int) -> Any:
        if self.pos + size > len(self.buf):
            raise ProtocolError(f"{self.what}: body of {len(self.buf)} bytes is too short")
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return v

    def u8(self) -> int:
        return self._take("<B", 1)

    def u16(self) -> int:
        return self._take("<H", 2)

    def u32(self) -> int:
        return self._take("<I", 4)

    def u64(self) -> int:
        return self._take("<Q", 8)

    def str(self) -> str:
        n = self.u16()
        if self.pos + n > len(self.buf):
            raise ProtocolError(f"{self.what}: string runs past the end of the body")
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ProtocolError(f"{self.what}: string is not valid UTF-8") from e

    def finish(self) -> None:
        if self.pos != len(self.buf):
            raise ProtocolError(
                f"{self.what}: {len(self.buf) - self.pos} trailing bytes after the body"
            )


def _empty_reply(body: bytes, what: str) -> None:
    if body:
        raise ProtocolError(f"{what}: expected an empty reply, got {len(body)} bytes")


def _json_reply(body: bytes, what: str) -> Any:
    try:
        return json.loads(bytes(body).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError(f"{what}: reply is not valid JSON: {e}") from e


# --- handshake ------------------------------------------------------------------

CLIENT_MAGIC = b"APc1"
SERVER_MAGIC = b"APs1"
PROTOCOL_VERSION = 1
#: Client hello flag: the client will put objects and wants a writable descriptor.
HELLO_FLAG_WRITE = 1

CLIENT_HELLO = struct.Struct("<4sHH")
CLIENT_HELLO_LEN = CLIENT_HELLO.size
assert CLIENT_HELLO_LEN == 8

#  0        4         6         8            16          20            21          22         23            32
#  | magic  | version | status  | arena_len  | map_align | memory_kind | io_driver | fd_count | reserved    |
SERVER_HELLO = struct.Struct("<4sHHQIBBB9s")
SERVER_HELLO_LEN = SERVER_HELLO.size
assert SERVER_HELLO_LEN == 32

STATUS_OK = 0
STATUS_BAD_MAGIC = 1
STATUS_BAD_VERSION = 2
STATUS_TOO_MANY_CONNECTIONS = 3
STATUS_WRITE_REFUSED = 4  # not in --writers-group: connect with write=False
STATUS_ACCESS_REFUSED = 5  # in neither --readers-group nor --writers-group

MEMORY_KINDS = {0: "hugetlb", 1: "transparent-hugepages", 2: "4k-pages"}
IO_DRIVERS = {0: "io_uring", 1: "polling"}


def encode_client_hello(write: bool) -> bytes:
    return CLIENT_HELLO.pack(CLIENT_MAGIC, PROTOCOL_VERSION, HELLO_FLAG_WRITE if write else 0)


class ServerHello(NamedTuple):
    version: int
    status: int
    arena_len: int
    map_align: int
    memory_kind: int
    io_driver: int
    fd_count: int

    @property
    def memory_kind_name(self) -> str:
        return MEMORY_KINDS.get(self.memory_kind, f"unknown({self.memory_kind})")

    @property
    def io_driver_name(self) -> str:
        return IO_DRIVERS.get(self.io_driver, f"unknown({self.io_driver})")


def decode_server_hello(data: bytes) -> ServerHello:
    """Decodes the server's 32-byte hello; a wrong magic is a :class:`ProtocolError`.

    The status is returned, not checked: the caller turns a refusal into the right
    exception.
    """
    if len(data) != SERVER_HELLO_LEN:
        raise ProtocolError(f"server hello must be {SERVER_HELLO_LEN} bytes, got {len(data)}")
    magic, version, status, arena_len, map_align, memory_kind, io_driver, fd_count, _ = (
        SERVER_HELLO.unpack(data)
    )
    if magic != SERVER_MAGIC:
        raise ProtocolError(
            f"server hello starts with {magic!r}, not {SERVER_MAGIC!r}: "
            "is this socket an arrowpoold?"
        )
    return ServerHello(version, status, arena_len, map_align, memory_kind, io_driver, fd_count)


# --- requests -------------------------------------------------------------------


class Ping:
    """kind 1: empty -> empty."""

    KIND = Kind.PING

    @staticmethod
    def encode() -> bytes:
        return b""

    @staticmethod
    def decode_reply(body: bytes) -> None:
        _empty_reply(body, "ping")


class Created(NamedTuple):
    object_id: int
    offset: int
    capacity: int


class Create:
    """kind 2: ``object_kind u8, size u64, name str`` -> ``object_id, offset, capacity``."""

    KIND = Kind.CREATE
    REPLY = struct.Struct("<QQQ")

    @staticmethod
    def encode(object_kind: int, size: int, name: str) -> bytes:
        return struct.pack("<BQ", object_kind, size) + encode_str(name, "name")

    @classmethod
    def decode_reply(cls, body: bytes) -> Created:
        if len(body) != cls.REPLY.size:
            raise ProtocolError(f"create: reply must be {cls.REPLY.size} bytes, got {len(body)}")
        return Created(*cls.REPLY.unpack(body))


class Sealed(NamedTuple):
    version: int
    rows: int


class Seal:
    """kind 3: ``object_id u64, length u64`` -> ``version u64, rows u64``."""

    KIND = Kind.SEAL
    REPLY = struct.Struct("<QQ")

    @staticmethod
    def encode(object_id: int, length: int) -> bytes:
        return struct.pack("<QQ", object_id, length)

    @classmethod
    def decode_reply(cls, body: bytes) -> Sealed:
        if len(body) != cls.REPLY.size:
            raise ProtocolError(f"seal: reply must be {cls.REPLY.size} bytes, got {len(body)}")
        return Sealed(*cls.REPLY.unpack(body))


class Abort:
    """kind 4: ``object_id u64`` -> empty."""

    KIND = Kind.ABORT

    @staticmethod
    def encode(object_id: int) -> bytes:
        return struct.pack("<Q", object_id)

    @staticmethod
    def decode_reply(body: bytes) -> None:
        _empty_reply(body, "abort")


class Got(NamedTuple):
    object_id: int
    version: int
    offset: int
    length: int
    rows: int
    object_kind: int


class Get:
    """kind 5: ``name str`` -> ``object_id, version, offset, length, rows u64; object_kind u8``
    (41 bytes). Takes a lease that one ``release`` gives back."""

    KIND = Kind.GET
    REPLY = struct.Struct("<QQQQQB")
    assert REPLY.size == 41

    @staticmethod
    def encode(name: str) -> bytes:
        return encode_str(name, "name")

    @classmethod
    def decode_reply(cls, body: bytes) -> Got:
        if len(body) != cls.REPLY.size:
            raise ProtocolError(f"get: reply must be {cls.REPLY.size} bytes, got {len(body)}")
        return Got(*cls.REPLY.unpack(body))


class Release:
    """kind 6: ``object_id u64`` -> empty; nothing at all with ``FLAG_NO_REPLY``."""

    KIND = Kind.RELEASE

    @staticmethod
    def encode(object_id: int) -> bytes:
        return struct.pack("<Q", object_id)

    @staticmethod
    def decode_reply(body: bytes) -> None:
        _empty_reply(body, "release")


class Delete:
    """kind 7: ``name str`` -> empty."""

    KIND = Kind.DELETE

    @staticmethod
    def encode(name: str) -> bytes:
        return encode_str(name, "name")

    @staticmethod
    def decode_reply(body: bytes) -> None:
        _empty_reply(body, "delete")


class List:
    """kind 8: empty -> JSON array of objects."""

    KIND = Kind.LIST

    @staticmethod
    def encode() -> bytes:
        return b""

    @staticmethod
    def decode_reply(body: bytes) -> list[dict[str, Any]]:
        value = _json_reply(body, "list")
        if not isinstance(value, list):
            raise ProtocolError(f"list: reply is JSON {type(value).__name__}, not an array")
        return value


class Stats:
    """kind 9: empty -> JSON object."""

    KIND = Kind.STATS

    @staticmethod
    def encode() -> bytes:
        return b""

    @staticmethod
    def decode_reply(body: bytes) -> dict[str, Any]:
        value = _json_reply(body, "stats")
        if not isinstance(value, dict):
            raise ProtocolError(f"stats: reply is JSON {type(value).__name__}, not an object")
        return value


class Wait:
    """kind 10: ``after u64, timeout_ms u32, name str`` -> ``version u64``."""

    KIND = Kind.WAIT
    REPLY = struct.Struct("<Q")

    @staticmethod
    def encode(after: int, timeout_ms: int, name: str) -> bytes:
        if not 0 <= timeout_ms <= WAIT_TIMEOUT_MS_MAX:
            raise ValueError(
                f"wait timeout must be 0..{WAIT_TIMEOUT_MS_MAX} ms, got {timeout_ms}"
            )
        return struct.pack("<QI", after, timeout_ms) + encode_str(name, "name")

    @classmethod
    def decode_reply(cls, body: bytes) -> int:
        if len(body) != cls.REPLY.size:
            raise ProtocolError(f"wait: reply must be {cls.REPLY.size} bytes, got {len(body)}")
        return cls.REPLY.unpack(body)[0]


class Ingest:
    """kind 11: ``name str, path str, column_count u16, column str x column_count``,
    then, only when there are some, ``option_count u16, (key str, value str) x
    option_count`` (object store settings) -> JSON object (rows, bytes, timings)."""

    KIND = Kind.INGEST
    OPTIONS_MAX = 64

    @staticmethod
    def encode(
        name: str, path: str, columns: list[str] | None = None, options: dict[str, str] | None = None
    ) -> bytes:
        columns = list(columns or ())
        options = dict(options or {})
        if len(columns) > COLUMNS_MAX:
            raise ValueError(f"ingest takes at most {COLUMNS_MAX} columns, got {len(columns)}")
        if len(options) > Ingest.OPTIONS_MAX:
            raise ValueError(f"ingest takes at most {Ingest.OPTIONS_MAX} options, got {len(options)}")
        parts = [
            encode_str(name, "name"),
            encode_str(path, "ingest path", PATH_MAX),
            struct.pack("<H", len(columns)),
        ]
        parts += [encode_str(c, "column name") for c in columns]
        if options:
            parts.append(struct.pack("<H", len(options)))
            for k, v in options.items():
                if not isinstance(k, str) or not isinstance(v, str) or not k:
                    raise ValueError("storage options are non-empty str keys with str values")
                # The value's own text never goes into the message: it can be a secret.
                parts += [encode_str(k, "storage option key"), encode_str(v, f"value of storage option {k!r}")]
        return b"".join(parts)

    @staticmethod
    def decode_reply(body: bytes) -> dict[str, Any]:
        value = _json_reply(body, "ingest")
        if not isinstance(value, dict):
            raise ProtocolError(f"ingest: reply is JSON {type(value).__name__}, not an object")
        return value


class GetVersion:
    """kind 13: ``version u64, name str`` -> as get's (a kept version by number)."""

    KIND = Kind.GET_VERSION
    REPLY = Get.REPLY

    @staticmethod
    def encode(version: int, name: str) -> bytes:
        return struct.pack("<Q", version) + encode_str(name, "name")

    @classmethod
    def decode_reply(cls, body: bytes) -> Got:
        return Get.decode_reply(body)


class Publish:
    """kind 12: ``flags u8, if_version u64, draft_id u64, draft_len u64, name str``
    -> ``version u64, rows u64`` (a new version from a draft; see docs/PROTOCOL.md)."""

    KIND = Kind.PUBLISH
    REPLY = struct.Struct("<QQ")
    FLAG_IF_VERSION = 1

    @classmethod
    def encode(cls, name: str, draft_id: int, draft_len: int, if_version: int | None = None) -> bytes:
        flags = cls.FLAG_IF_VERSION if if_version is not None else 0
        return struct.pack("<BQQQ", flags, if_version or 0, draft_id, draft_len) + encode_str(
            name, "name"
        )

    @classmethod
    def decode_reply(cls, body: bytes) -> Sealed:
        if len(body) != cls.REPLY.size:
            raise ProtocolError(f"publish: reply must be {cls.REPLY.size} bytes, got {len(body)}")
        return Sealed(*cls.REPLY.unpack(body))


#: Request classes by kind number.
REQUESTS = {
    cls.KIND: cls
    for cls in (
        Ping, Create, Seal, Abort, Get, Release, Delete, List, Stats, Wait, Ingest, Publish,
        GetVersion,
    )
}
