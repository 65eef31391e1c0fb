"""Exceptions raised by the arrowpool client.

Every error reply from ``arrowpoold`` (frame kind ``0xFFFF``, see
``docs/PROTOCOL.md`` section 5) becomes an instance of one of these classes. The
server's message is kept verbatim in :attr:`ArrowpoolError.message` and the wire code
in :attr:`ArrowpoolError.code`; match on the class, not on the text.

::

    ArrowpoolError
     +-- NotFound            3   no object has this name
     +-- OutOfMemory         4   does not fit even after eviction
     +-- ProtocolError           the request or the stream is not what the protocol says
     |    +-- Malformed      1
     |    +-- UnknownKind    2
     |    +-- InvalidObject  5
     |    +-- InvalidData    7
     +-- Timeout             6   wait ended without a newer version
     +-- IngestError         8   the server could not read the Parquet input
     +-- LimitExceeded       9   a per-connection or server limit was hit
     +-- ServerUnavailable  10   cannot connect, server stopping, connection lost
     +-- InternalError      11   a server-side failure
     +-- ReadOnly           12   a write request on a connection made with write=False
     +-- VersionConflict    13   put(..., if_version=N) found another version: nothing put
     +-- AccessRefused           the server's --readers-group/--writers-group refuse this user
"""

from __future__ import annotations


class ArrowpoolError(Exception):
    """Base class of every error raised by the arrowpool client.

    ``code`` is the protocol error code (``None`` when the error was detected by
    the client itself, e.g. a lost connection), ``message`` the server's text.
    """

    code: int | None = None

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class NotFound(ArrowpoolError, KeyError):
    """No object has this name: never put, deleted, or evicted (code 3)."""

    code = 3

    # KeyError quotes its argument in str(); keep the plain message.
    __str__ = ArrowpoolError.__str__


class OutOfMemory(ArrowpoolError, MemoryError):
    """The object does not fit in the arena even after eviction (code 4).

    The message says how many bytes were requested and how many are free, held by
    readers and available in the largest free range.
    """

    code = 4


class ProtocolError(ArrowpoolError):
    """The request, or the byte stream, does not follow ``docs/PROTOCOL.md``.

    Raised for the server's ``Malformed``, ``UnknownKind``, ``InvalidObject`` and
    ``InvalidData`` replies (through the subclasses below) and for replies the client
    cannot decode (``code`` is then ``None`` and the connection is dropped).
    """


class Malformed(ProtocolError):
    """The request body did not match its layout, or a name is invalid (code 1)."""

    code = 1


class UnknownKind(ProtocolError):
    """The server does not know the request kind (code 2)."""

    code = 2


class InvalidObject(ProtocolError):
    """Object id unknown, not created by this connection, or in the wrong state (code 5)."""

    code = 5


class InvalidData(ProtocolError):
    """The sealed bytes are not a valid Arrow IPC file; the object was aborted (code 7)."""

    code = 7


class Timeout(ArrowpoolError):
    """``wait_for_version`` ended without a newer version (code 6)."""

    code = 6


class IngestError(ArrowpoolError):
    """The server could not ingest the Parquet input (code 8): missing file, not
    Parquet, corrupt, unknown column..."""

    code = 8


class LimitExceeded(ArrowpoolError):
    """A per-connection or server limit was hit (code 9), or the server refused the
    connection because it has too many."""

    code = 9


class ServerUnavailable(ArrowpoolError, ConnectionError):
    """The server cannot be reached: nothing listens on the socket, it did not answer
    in time, it closed the connection, or it is shutting down (code 10 or the
    shutdown notice, frame kind ``0xFFFE``)."""

    code = 10

    __str__ = ArrowpoolError.__str__


class InternalError(ArrowpoolError):
    """A server-side failure that is not the client's fault (code 11)."""

    code = 11


class AccessRefused(ArrowpoolError, PermissionError):
    """The server refused the connection at the handshake: this user is in neither its
    ``--readers-group`` nor its ``--writers-group``. (A user who may only read and asks
    for write access gets :class:`ReadOnly`.)"""


class ReadOnly(ArrowpoolError, PermissionError):
    """A write request (put, delete, ingest...) on a connection whose handshake did
    not ask for write access, i.e. ``connect(..., write=False)`` (code 12)."""

    code = 12

    __str__ = ArrowpoolError.__str__


class VersionConflict(ArrowpoolError):
    """``put(..., if_version=N)`` found the name at another version: another writer
    published in between, and nothing was put (code 13). Get the table again and
    redo the change."""

    code = 13


_BY_CODE: dict[int, type[ArrowpoolError]] = {
    cls.code: cls
    for cls in (
        Malformed,
        UnknownKind,
        NotFound,
        OutOfMemory,
        InvalidObject,
        Timeout,
        InvalidData,
        IngestError,
        LimitExceeded,
        ServerUnavailable,
        InternalError,
        ReadOnly,
        VersionConflict,
    )
}


def from_code(code: int, message: str) -> ArrowpoolError:
    """The exception for an error reply with this code and message.

    Unknown codes (a newer server) become :class:`ArrowpoolError` with the code kept.
    """
    cls = _BY_CODE.get(code)
    if cls is None:
        return ArrowpoolError(f"error code {code}: {message}", code=code)
    return cls(message, code=code)
