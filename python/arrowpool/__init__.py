"""Python client of arrowpool, a shared-memory store for Apache Arrow tables.

::

    import arrowpool
    with arrowpool.connect() as client:     # this user's server, started if none runs
        client.put("sales", table)          # -> version 1
        t = client.get("sales")             # zero-copy pyarrow.Table
        df = client.get_pandas("sales", columns=["region", "price"])

The wire protocol is ``docs/PROTOCOL.md`` in the repository.
"""

from .client import DEFAULT_TIMEOUT, Client, connect
from .server import default_socket, ensure_server, stop_server
from .errors import (
    AccessRefused,
    ArrowpoolError,
    IngestError,
    InternalError,
    ReadOnly,
    InvalidData,
    InvalidObject,
    LimitExceeded,
    Malformed,
    NotFound,
    OutOfMemory,
    ProtocolError,
    ServerUnavailable,
    Timeout,
    UnknownKind,
    VersionConflict,
)

__version__ = "0.1.0"

__all__ = [
    "AccessRefused",
    "ArrowpoolError",
    "Client",
    "DEFAULT_TIMEOUT",
    "IngestError",
    "InternalError",
    "ReadOnly",
    "InvalidData",
    "InvalidObject",
    "LimitExceeded",
    "Malformed",
    "NotFound",
    "OutOfMemory",
    "ProtocolError",
    "ServerUnavailable",
    "Timeout",
    "UnknownKind",
    "VersionConflict",
    "connect",
    "default_socket",
    "ensure_server",
    "stop_server",
]
