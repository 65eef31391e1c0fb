"""The arrowpool client: one Unix-socket connection to ``arrowpoold`` plus the arena
mappings it hands over at connect time.

How a get stays zero-copy: the server answers ``get`` with where the table lies in
the arena and takes a lease. The client wraps ``[offset, offset + length)`` of its
read-only mapping in a ``pyarrow.foreign_buffer`` whose ``base`` is a :class:`_Lease`,
and lets pyarrow read the IPC file from that buffer: every array buffer of the
returned table is a slice of it, so the lease lives exactly as long as the last
array. When the lease dies it sends ``release`` with ``NO_REPLY``, so a release never
has to wait for an answer.

Threads: one lock per connection covers each request/reply exchange. A lease may
die on any thread, including one that is inside an exchange (a garbage collection
can run anywhere), so a release never waits for the lock: it queues the object id
and sends the queue only if the lock is free; otherwise the thread that holds the
lock sends it when it lets go (and every request sends the queue first).

Processes: a connection belongs to the process that opened it. After ``fork`` the
child drops the inherited connection without writing to it (the parent still uses
that socket) and connects again on its first request.
"""

from __future__ import annotations

import array
import collections
import itertools
import fcntl
import mmap
import logging
import os
import select
import socket
import struct
import threading
import time
import weakref
from typing import Any, Iterable, Mapping, Sequence

import pyarrow as pa

from . import _protocol as proto
from . import server as _server
from .errors import (
    AccessRefused,
    ArrowpoolError,
    InvalidData,
    LimitExceeded,
    NotFound,
    ProtocolError,
    ReadOnly,
    ServerUnavailable,
)

#: Seconds to wait for any one reply before declaring the server dead.
DEFAULT_TIMEOUT = 60.0
#: Extra seconds on top of a ``wait`` request's own timeout before giving up on the server.
WAIT_MARGIN = 10.0
#: Threads pyarrow may use to copy a large buffer into the arena during put.
_PARALLEL_COPY_THREADS = max(1, min(4, os.cpu_count() or 1))
#: Threads that build page tables ahead of a large put (``_populate``):
#: ``$ARROWPOOL_POPULATE_THREADS`` (0: do not populate, leave it to page faults),
#: default as many as copy.
try:
    _POPULATE_THREADS = max(0, int(os.environ.get("ARROWPOOL_POPULATE_THREADS", _PARALLEL_COPY_THREADS)))
except ValueError:
    _POPULATE_THREADS = _PARALLEL_COPY_THREADS

#: A writer builds its page tables for the arena's existing pages right after
#: connecting (``_populate_resident``); ``$ARROWPOOL_POPULATE_AT_CONNECT=0`` turns it off.
_POPULATE_AT_CONNECT = os.environ.get("ARROWPOOL_POPULATE_AT_CONNECT", "1").strip() != "0"
#: It starts this long after connecting (short-lived connections never pay), at the
#: lowest priority, and stops after this many bytes (``--preallocate auto``'s cap).
_POPULATE_DELAY_S = 0.2
_POPULATE_AT_CONNECT_MAX = 4 << 30
#: Granule of ``_populate``'s record: 2 MiB.
_POPULATE_CHUNK = 2 << 20
#: Below this many bytes to populate, page faults during the copy cost less than a
#: thread hop.
_POPULATE_MIN = 8 << 20
#: madvise(2) advice that builds page tables for writing (Linux 5.14+).
_MADV_POPULATE_WRITE = 23

_UNSET: Any = object()
_log = logging.getLogger("arrowpool")
# A closed peer must be an EPIPE error, never a SIGPIPE (embedders may not ignore it).
_MSG_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)


class _StaleConnection(Exception):
    """The connection was already unusable before the request was sent: safe to retry
    on a new one."""


class _UnreadRequest(_StaleConnection):
    """The server closed the connection with the request still queued, unread
    (EPIPE on the send, ECONNRESET on the read: on a Unix socket that is what they
    mean). Sending it again cannot apply it twice; the server is restarting or gone."""


# How long a request the server closed its connection on without reading it waits
# for a server to send it again to (a restart takes tens of milliseconds).
_UNREAD_RETRY_WAIT_S = 2.0

#: A thread per client that holds tables of a server with a state directory
#: notices the server going away and connects to the restarted one at once,
#: so the held tables are leased again within its --quarantine even if this
#: process sends no request (see ``_watch``). ``ARROWPOOL_WATCH=0`` turns it off.
_WATCH = os.environ.get("ARROWPOOL_WATCH", "1").strip() != "0"
#: Connection attempts after the server went away: often at first (a restart
#: takes milliseconds to seconds), then slowly, for at most _WATCH_RECONNECT_FOR_S.
_WATCH_RETRY_S = 0.05
_WATCH_RETRY_SLOW_S = 0.5
_WATCH_FAST_FOR_S = 10.0
_WATCH_RECONNECT_FOR_S = 600.0
# Requests that name the connection's pending objects or leases: a new server
# would not know them, so they are not sent again.
_NOT_RESENDABLE = frozenset(
    (proto.Kind.SEAL, proto.Kind.ABORT, proto.Kind.PUBLISH, proto.Kind.RELEASE)
)


class _Connection:
    """One socket, its arena mappings and its leases. Used only by :class:`Client`."""

    def __init__(self, path: str, write: bool, timeout: float | None):
        self.path = path
        self.write = write
        self.timeout = timeout
        self.pid = os.getpid()
        self.lock = threading.Lock()
        #: Object ids whose release could not be sent at once (lock busy).
        self.pending_releases: collections.deque[int] = collections.deque()
        #: Live leases: token -> object id. dict set/pop are atomic under the GIL.
        self.leases: dict[int, int] = {}
        #: The lease objects themselves, for a new connection to take over.
        self.lease_objects: "weakref.WeakValueDictionary[int, _Lease]" = weakref.WeakValueDictionary()
        #: (st_dev, st_ino) of the arena: the same after a restart with --state-dir.
        #: (0, 0) for an arena no restart can find again (a memfd: no name, st_nlink
        #: 0): nothing to adopt, no restart to watch for.
        self.arena_id: tuple[int, int] = (0, 0)
        self._tokens = itertools.count(1)
        self._request_ids = itertools.count(1)
        #: No request may be sent any more (closed, broken, or inherited through fork).
        self.dead = False
        #: The server sent its shutdown notice before the stream ended.
        self.shut_down = False
        #: close() was called while leases were alive: close when the last one goes.
        self.closing = False
        self.ro_mmap: mmap.mmap | None = None
        self.rw_mmap: mmap.mmap | None = None
        self.rw_address = 0
        #: 2 MiB chunks of the writable mapping whose page tables this process built.
        self.populated = bytearray()
        self._rbuf = bytearray(64 * 1024)
        self._rview = memoryview(self._rbuf)
        self._rstart = 0
        self._rend = 0

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock = sock
        #: Readable before a request is sent means the server closed the stream
        #: (or sent its shutdown notice): the request goes to a new connection.
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)
        try:
            sock.settimeout(timeout)
            try:
                sock.connect(path)
            except (FileNotFoundError, ConnectionRefusedError) as e:
                raise ServerUnavailable(
                    f"cannot connect to arrowpoold at {path}: {e.strerror or e}; "
                    "is the server running (arrowpoold --socket PATH --memory SIZE)?"
                ) from e
            except socket.timeout as e:
                raise ServerUnavailable(
                    f"cannot connect to arrowpoold at {path}: no answer within {timeout} s"
                ) from e
            except OSError as e:
                raise ServerUnavailable(f"cannot connect to arrowpoold at {path}: {e}") from e
            self._handshake(write)
        except BaseException:
            self.dead = True
            sock.close()
            raise

    # --- handshake --------------------------------------------------------------

    def _handshake(self, write: bool) -> None:
        try:
            self.sock.sendall(proto.encode_client_hello(write))
            data, fds = self._recv_hello()
        except socket.timeout as e:
            raise ServerUnavailable(
                f"arrowpoold at {self.path} did not answer the handshake within "
                f"{self.timeout} s"
            ) from e
        except OSError as e:
            raise ServerUnavailable(f"handshake with arrowpoold at {self.path} failed: {e}") from e
        try:
            hello = proto.decode_server_hello(data)
            if hello.status != proto.STATUS_OK:
                raise self._refusal(hello.status)
            if hello.version != proto.PROTOCOL_VERSION:
                raise ProtocolError(
                    f"server speaks protocol version {hello.version}, this client "
                    f"{proto.PROTOCOL_VERSION}"
                )
            want = 2 if write else 1
            if hello.fd_count != want or len(fds) != want:
                raise ProtocolError(
                    f"server hello announces {hello.fd_count} descriptors and passed "
                    f"{len(fds)}; expected {want}"
                )
            if hello.arena_len <= 0:
                raise ProtocolError("server hello announces an empty arena")
            self.hello = hello
            self.arena_len = hello.arena_len
            st = os.fstat(fds[0])
            if st.st_nlink > 0:
                self.arena_id = (st.st_dev, st.st_ino)
            self.ro_mmap = mmap.mmap(
                fds[0], hello.arena_len, mmap.MAP_SHARED, mmap.PROT_READ
            )
            # The whole read-only arena as one pyarrow Buffer: gets slice their
            # foreign buffers out of its address range, and it keeps the mapping alive
            # (an mmap cannot be unmapped while a buffer export exists).
            self.ro_buffer = pa.py_buffer(self.ro_mmap)
            self.ro_address = self.ro_buffer.address
            if write:
                self.rw_mmap = mmap.mmap(
                    fds[1], hello.arena_len, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
                )
                # Its address, for populating page tables ahead of a copy; the
                # export is dropped at once (the mapping never moves).
                export = pa.py_buffer(self.rw_mmap)
                self.rw_address = export.address
                del export
                self.populated = bytearray(-(-hello.arena_len // _POPULATE_CHUNK))
                if _POPULATE_AT_CONNECT:
                    threading.Thread(
                        target=_populate_resident, args=(weakref.ref(self),),
                        name="arrowpool-populate", daemon=True,
                    ).start()
        finally:
            # mmap keeps its own duplicate of the descriptor; ours are not needed.
            for fd in fds:
                os.close(fd)

    def _recv_hello(self) -> tuple[bytes, list[int]]:
        """Reads the 32-byte server hello; the descriptors ride on its first byte."""
        fds = array.array("i")
        flags = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
        data, ancdata, msg_flags, _ = self.sock.recvmsg(
            proto.SERVER_HELLO_LEN, socket.CMSG_SPACE(2 * fds.itemsize), flags
        )
        for level, ctype, cdata in ancdata:
            if level == socket.SOL_SOCKET and ctype == socket.SCM_RIGHTS:
                usable = len(cdata) - len(cdata) % fds.itemsize
                fds.frombytes(cdata[:usable])
        received = list(fds)
        try:
            if not flags:
                for fd in received:
                    os.set_inheritable(fd, False)
            if msg_flags & socket.MSG_CTRUNC:
                raise ProtocolError("server passed more descriptors than the protocol allows")
            if not data:
                raise ServerUnavailable(
                    f"arrowpoold at {self.path} closed the connection during the handshake"
                )
            buf = bytearray(data)
            while len(buf) < proto.SERVER_HELLO_LEN:
                chunk = self.sock.recv(proto.SERVER_HELLO_LEN - len(buf))
                if not chunk:
                    # A refusal (status != 0) is followed by a close; only a short hello
                    # is an error.
                    raise ServerUnavailable(
                        f"arrowpoold at {self.path} closed the connection after "
                        f"{len(buf)} of {proto.SERVER_HELLO_LEN} handshake bytes"
                    )
                buf += chunk
            return bytes(buf), received
        except BaseException:
            for fd in received:
                os.close(fd)
            raise

    def _refusal(self, status: int) -> ArrowpoolError:
        if status == proto.STATUS_TOO_MANY_CONNECTIONS:
            return LimitExceeded(
                f"arrowpoold at {self.path} refused the connection: too many connections "
                "(raise --max-connections or close idle clients)",
                code=LimitExceeded.code,
            )
        if status == proto.STATUS_BAD_VERSION:
            return ProtocolError(
                f"arrowpoold at {self.path} does not support protocol version "
                f"{proto.PROTOCOL_VERSION}"
            )
        if status == proto.STATUS_WRITE_REFUSED:
            return ReadOnly(
                f"arrowpoold at {self.path} refused write access: this user is not in the "
                "server's --writers-group; connect with write=False to read",
                code=ReadOnly.code,
            )
        if status == proto.STATUS_ACCESS_REFUSED:
            return AccessRefused(
                f"arrowpoold at {self.path} refused the connection: this user is in neither "
                "its --readers-group nor its --writers-group"
            )
        if status == proto.STATUS_BAD_MAGIC:
            return ProtocolError(f"arrowpoold at {self.path} rejected the client hello")
        return ProtocolError(f"arrowpoold at {self.path} refused the handshake (status {status})")

    # --- frames -----------------------------------------------------------------

    def request(self, kind: int, body: bytes = b"", timeout: Any = _UNSET) -> bytes:
        """One request/reply exchange; returns the reply body or raises the server's
        error. ``timeout`` overrides the socket timeout for this exchange only."""
        try:
            with self.lock:
                if self.dead or self.closing or self.pid != os.getpid():
                    raise _StaleConnection()
                if self._poll.poll(0):
                    # Nothing is owed to us: the server is gone (restarted,
                    # stopped). Nothing was sent, so a new connection may retry.
                    self.shut_down = self._shutdown_notice_pending()
                    self.mark_dead()
                    raise _StaleConnection()
                rid = next(self._request_ids)
                frames = self._take_release_frames()
                frames.append(proto.encode_frame(rid, kind, body))
                if timeout is not _UNSET:
                    self.sock.settimeout(timeout)
                try:
                    self._sendall(b"".join(frames))
                    header, reply = self._read_reply(rid)
                finally:
                    if timeout is not _UNSET and not self.dead:
                        self.sock.settimeout(self.timeout)
        finally:
            self._flush_if_pending()
        if header.kind == proto.Kind.ERROR:
            err = proto.decode_error(reply)
            if isinstance(err, ServerUnavailable):
                self.mark_dead()
            raise err
        if header.kind != kind | proto.REPLY_BIT:
            self.mark_dead()
            raise ProtocolError(
                f"reply to request {rid} (kind {kind}) has kind {header.kind:#06x}; "
                "the connection was closed"
            )
        return reply

    def _read_reply(self, rid: int) -> tuple[proto.Header, bytes]:
        try:
            header = proto.decode_header(self._read_exact(proto.HEADER_LEN))
            body = self._read_exact(header.len) if header.len else b""
        except socket.timeout as e:
            self.mark_dead()
            raise ServerUnavailable(
                f"arrowpoold at {self.path} did not answer within {self.sock.gettimeout()} s; "
                "the connection was closed"
            ) from e
        except ProtocolError:
            self.mark_dead()
            raise
        except ConnectionResetError as e:
            self.mark_dead()
            raise _UnreadRequest() from e
        except OSError as e:
            self.mark_dead()
            raise ServerUnavailable(f"connection to arrowpoold at {self.path} failed: {e}") from e
        if header.kind == proto.Kind.SHUTDOWN:
            self.mark_dead()
            raise ServerUnavailable(f"arrowpoold at {self.path} is shutting down")
        if header.request_id != rid:
            self.mark_dead()
            raise ProtocolError(
                f"reply carries request id {header.request_id}, expected {rid}; "
                "the connection was closed"
            )
        return header, body

    def _read_exact(self, n: int) -> bytes:
        avail = self._rend - self._rstart
        if avail < n:
            if self._rstart + n > len(self._rbuf):
                # Compact, growing only for the rare large reply (a long list).
                size = max(len(self._rbuf), n)
                if size > len(self._rbuf):
                    new = bytearray(size)
                    new[:avail] = self._rbuf[self._rstart : self._rend]
                    self._rbuf = new
                    self._rview = memoryview(new)
                else:
                    self._rbuf[:avail] = self._rbuf[self._rstart : self._rend]
                self._rstart, self._rend = 0, avail
            while self._rend - self._rstart < n:
                got = self.sock.recv_into(self._rview[self._rend :])
                if got == 0:
                    self.mark_dead()
                    raise ServerUnavailable(
                        f"arrowpoold at {self.path} closed the connection"
                    )
                self._rend += got
        out = bytes(self._rview[self._rstart : self._rstart + n])
        self._rstart += n
        if self._rstart == self._rend:
            self._rstart = self._rend = 0
            if len(self._rbuf) > 64 * 1024:
                self._rbuf = bytearray(64 * 1024)
                self._rview = memoryview(self._rbuf)
        return out

    def _sendall(self, data: bytes) -> None:
        try:
            self.sock.sendall(data, _MSG_NOSIGNAL)
        except socket.timeout as e:
            self.mark_dead()
            raise ServerUnavailable(
                f"arrowpoold at {self.path} stopped reading requests; the connection was closed"
            ) from e
        except OSError as e:
            notice = self._shutdown_notice_pending()
            self.mark_dead()
            if notice:
                raise ServerUnavailable(f"arrowpoold at {self.path} is shutting down") from e
            if isinstance(e, BrokenPipeError):
                raise _UnreadRequest() from e
            raise ServerUnavailable(f"connection to arrowpoold at {self.path} failed: {e}") from e

    def _shutdown_notice_pending(self) -> bool:
        """After a failed send: did the server say it was stopping before it closed?"""
        try:
            data = self.sock.recv(proto.HEADER_LEN, socket.MSG_DONTWAIT | socket.MSG_PEEK)
            return len(data) == proto.HEADER_LEN and proto.decode_header(data).kind == proto.Kind.SHUTDOWN
        except (OSError, ProtocolError):
            return False

    # --- leases -----------------------------------------------------------------

    def new_lease(self, object_id: int, got: "proto.Got | None" = None, name: str = "") -> "_Lease":
        lease = _Lease(self, object_id, next(self._tokens))
        if got is not None:
            lease.name, lease.version, lease.offset, lease.length = name, got.version, got.offset, got.length
        return lease

    def adopt(self, old: "_Connection") -> None:
        """Takes over the leases of ``old``, a connection to a server that is gone,
        when this one's server has the same arena (a restart with ``--state-dir``):
        each held version is leased again here, so the new server does not reuse
        its bytes while tables still point into them. A version the new server does
        not have at the same place (it was replaced before the restart) cannot be
        protected: logged, and the table stays readable until its bytes are reused.
        With another arena (no ``--state-dir``) nothing is needed: the old mapping
        keeps the old memory alive."""
        if old.arena_id != self.arena_id or old.arena_id == (0, 0):
            return
        for lease in list(old.lease_objects.values()):
            if lease.conn is not old or not lease.name:
                continue
            try:
                body = self.request(proto.Kind.GET_VERSION, proto.GetVersion.encode(lease.version, lease.name))
                got = proto.Get.decode_reply(body)
            except ArrowpoolError as e:
                _log.warning(
                    "arrowpool: %r version %d, held across a server restart, is not on the new "
                    "server (%s); get it again: its bytes may be reused",
                    lease.name, lease.version, e,
                )
                continue
            if (got.offset, got.length) != (lease.offset, lease.length):
                self.pending_releases.append(got.object_id)
                self._flush_if_pending()
                _log.warning(
                    "arrowpool: %r version %d, held across a server restart, lies elsewhere "
                    "on the new server; get it again", lease.name, lease.version,
                )
                continue
            old.leases.pop(lease.token, None)
            lease.conn = self
            lease.token = next(self._tokens)
            self.leases[lease.token] = got.object_id
            self.lease_objects[lease.token] = lease
            lease.object_id = got.object_id

    def release(self, token: int) -> None:
        """Gives back one lease. Never blocks on the lock (may run inside ``__del__``
        on a thread that holds it): queue, then send only if the lock is free."""
        object_id = self.leases.pop(token, None)
        if object_id is None or self.dead or self.pid != os.getpid():
            return
        self.pending_releases.append(object_id)
        self._flush_if_pending()

    def _flush_if_pending(self) -> None:
        # Called after every exchange too: a release queued while this thread held
        # the lock (or while another thread did) goes out as soon as it is free.
        while self.pending_releases and not self.dead and self.pid == os.getpid():
            if not self.lock.acquire(blocking=False):
                return  # the holder flushes when it lets go
            try:
                frames = self._take_release_frames()
                if frames:
                    try:
                        self._sendall(b"".join(frames))
                    except ServerUnavailable:
                        return  # the server released them when the connection dropped
                if self.closing and not self.leases:
                    self._close_locked()
            finally:
                self.lock.release()

    def _take_release_frames(self) -> list[bytes]:
        frames = []
        while True:
            try:
                object_id = self.pending_releases.popleft()
            except IndexError:
                return frames
            frames.append(
                proto.encode_frame(
                    next(self._request_ids),
                    proto.Kind.RELEASE,
                    proto.Release.encode(object_id),
                    proto.FLAG_NO_REPLY,
                )
            )

    # --- life cycle -------------------------------------------------------------

    def mark_dead(self) -> None:
        """Stop using the socket (broken stream or server gone); the server aborts the
        connection's creates and releases its leases when it sees the close."""
        self.dead = True
        self.pending_releases.clear()
        try:
            self.sock.close()
        except OSError:
            pass

    def close(self) -> None:
        """Closes now if no table from this connection is alive, else as soon as the
        last one is garbage-collected (its data must stay valid until then)."""
        with self.lock:
            if self.dead:
                return
            self.closing = True
            frames = self._take_release_frames()
            if frames:
                try:
                    self._sendall(b"".join(frames))
                except ServerUnavailable:
                    return
            if not self.leases:
                self._close_locked()

    def _close_locked(self) -> None:
        self.mark_dead()
        # Unmap at once when nothing points into the arena any more; otherwise the
        # last buffer's death unmaps it.
        self.ro_buffer = None
        for m in (self.ro_mmap, self.rw_mmap):
            if m is not None:
                try:
                    m.close()
                except BufferError:
                    pass

    def forget_after_fork(self) -> None:
        """In a forked child: never write to the parent's socket; close our copy of the
        descriptor only (the parent's connection is unaffected). Tables inherited from
        the parent stay mapped."""
        self.dead = True
        self.pending_releases.clear()
        self.leases.clear()
        self.lock = threading.Lock()
        try:
            self.sock.close()
        except OSError:
            pass

    def __del__(self) -> None:
        try:
            if not self.dead and self.pid == os.getpid():
                self.sock.close()
        except Exception:
            pass


class _Lease:
    """Keeps one get's bytes valid; its death sends ``release`` (NO_REPLY).

    It is the ``base`` of the foreign buffer the table is read from, so it dies with
    the last Arrow buffer pointing into the object. It also holds the connection and
    the arena mapping alive.
    """

    __slots__ = ("conn", "object_id", "token", "arena", "name", "version", "offset", "length", "__weakref__")

    def __init__(self, conn: _Connection, object_id: int, token: int):
        self.conn = conn
        self.object_id = object_id
        self.token = token
        self.arena = conn.ro_buffer
        # What was leased, for a connection to a restarted server to lease it again.
        self.name, self.version, self.offset, self.length = "", 0, 0, 0
        conn.leases[token] = object_id
        conn.lease_objects[token] = self

    def release(self) -> None:
        """Idempotent: the first call gives the lease back."""
        conn = self.conn
        if conn is not None:
            self.conn = None
            conn.release(self.token)

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:
            # Interpreter shutdown or a dead socket: the server releases leases of
            # closed connections itself.
            pass


# Clients alive in this process, so that a fork can reset them in the child.
_CLIENTS: "weakref.WeakSet[Client]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for client in list(_CLIENTS):
        client._reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


_libc = None


def _madvise_populate(address: int, length: int) -> None:
    """``madvise(MADV_POPULATE_WRITE)`` through ctypes, which lets go of the GIL, so
    that several threads build page tables at once. Best effort: an older kernel's
    EINVAL leaves the work to page faults."""
    start = address & ~(mmap.PAGESIZE - 1)
    _load_libc().madvise(start, length + (address - start), _MADV_POPULATE_WRITE)


def _load_libc():
    """The C library, with the signatures of the calls made through it."""
    global _libc
    import ctypes

    if _libc is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
        _libc = libc
    return _libc


def _populate_resident(conn_ref: "weakref.ref[_Connection]") -> None:
    """Builds a new writer's page tables, front to back, for every 2 MiB chunk of
    the arena whose pages all exist already (``mincore``: the server's preallocated
    region, earlier objects' pages), so that its first put into that memory copies
    at memcpy speed. A page that does not exist is never touched (populating it
    would allocate it: memory the server did not commit). Runs on a thread of its
    own from shortly after connect on, at the lowest priority, for at most
    ``_POPULATE_AT_CONNECT_MAX`` bytes; stops when the connection closes or goes
    away. Off with ``$ARROWPOOL_POPULATE_AT_CONNECT=0``."""
    import ctypes

    mincore = _load_libc().mincore
    residency = ctypes.create_string_buffer(-(-_POPULATE_CHUNK // mmap.PAGESIZE))
    try:  # idle CPU only, not the caller's
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except OSError:
        pass
    time.sleep(_POPULATE_DELAY_S)  # a short-lived connection never pays
    conn = conn_ref()
    if conn is None:
        return
    chunks, base, arena_len = len(conn.populated), conn.rw_address, conn.arena_len
    del conn
    populated = 0
    for c in range(chunks):
        conn = conn_ref()
        if conn is None or conn.dead or conn.closing or populated >= _POPULATE_AT_CONNECT_MAX:
            return
        if not conn.populated[c]:
            start = c * _POPULATE_CHUNK
            length = min(_POPULATE_CHUNK, arena_len - start)
            pages = -(-length // mmap.PAGESIZE)
            if mincore(base + start, length, residency) == 0 and b"\x00" not in residency.raw[:pages]:
                conn.populated[c] = 1
                _madvise_populate(base + start, length)
                populated += length
        del conn


def _populate(conn: "_Connection", offset: int, length: int) -> list[threading.Thread]:
    """Builds this process's page tables for ``[offset, offset + length)`` of the
    writable mapping for a large copy into it, for the 2 MiB chunks this process
    has not populated before: on ``_POPULATE_THREADS`` threads that run while the
    caller copies (returned, for the caller to join after its copy); small ranges
    are populated at once, in this thread.

    Why: on 4 KiB pages a new writer's page faults cost more than the copy itself
    (measured: writing 1 GB through faults ~3x a memcpy), and a fault-per-page copy
    runs the faults one after another; tables built by other threads, front to
    back, ahead of the copy that follows them, leave the copy to run at memory
    speed. Populating a page the copy already wrote is a no-op. Pages stay mapped
    once written (the record may go stale if the kernel reclaims them: that costs
    faults, never correctness). Nothing is committed that the server did not
    allocate already: ``create`` allocated these pages."""
    if length <= 0 or not conn.populated or _POPULATE_THREADS == 0:
        return []
    first, last = offset // _POPULATE_CHUNK, min((offset + length - 1) // _POPULATE_CHUNK, len(conn.populated) - 1)
    runs = []
    c = first
    while c <= last:
        if conn.populated[c]:
            c += 1
            continue
        start = c
        while c <= last and not conn.populated[c]:
            conn.populated[c] = 1
            c += 1
        runs.append((max(start * _POPULATE_CHUNK, offset), min(c * _POPULATE_CHUNK, offset + length)))
    todo = sum(e - s for s, e in runs)
    if todo < _POPULATE_MIN:
        for s, e in runs:
            _madvise_populate(conn.rw_address + s, e - s)
        return []
    # Interleaved 2 MiB pieces, so that every thread works just ahead of the
    # copy, which goes front to back.
    threads = _POPULATE_THREADS
    pieces = [(s, min(s + _POPULATE_CHUNK, e)) for s0, e in runs for s in range(s0, e, _POPULATE_CHUNK)]

    def work(k: int) -> None:
        for s, e in pieces[k::threads]:
            _madvise_populate(conn.rw_address + s, e - s)

    workers = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(threads)]
    for w in workers:
        w.start()
    return workers


def _as_table(data: Any) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    module = type(data).__module__ or ""
    if module.startswith("pandas") and hasattr(data, "columns"):
        return pa.Table.from_pandas(data)
    if hasattr(data, "__arrow_c_stream__") or hasattr(data, "__arrow_c_array__"):
        return pa.table(data)
    raise TypeError(
        "put() takes a pyarrow.Table, a pyarrow.RecordBatch or a pandas.DataFrame, "
        f"not {type(data).__name__}"
    )


def _check_metadata(schema: pa.Schema) -> None:
    """Refuses metadata that is not UTF-8 (pyarrow allows bytes) before anything is
    written, naming the key: the server reads metadata as text (arrow-rs) and would
    refuse the file without being able to say which key it was."""

    def check(metadata, where: str) -> None:
        for key, value in (metadata or {}).items():
            for what, raw in (("key", key), ("value", value)):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise ValueError(
                        f"{where} metadata {what} {raw!r} (key {key!r}) is not UTF-8; "
                        "arrowpool stores metadata as text: encode binary values (e.g. "
                        "base64) before put"
                    ) from None

    def fields(field: pa.Field, path: str):
        yield field, path
        for i in range(field.type.num_fields):
            child = field.type.field(i)
            yield from fields(child, f"{path}.{child.name}")

    check(schema.metadata, "schema")
    for top in schema:
        for field, path in fields(top, top.name):
            check(field.metadata, f"field {path!r}")


_IPC_OPTIONS = pa.ipc.IpcWriteOptions(unify_dictionaries=True)


def _ipc_file_size(table: pa.Table) -> int:
    """Exact size of the IPC file ``put`` will write: the writer runs against a
    counting sink, which costs metadata work only (buffers are not copied)."""
    sink = pa.MockOutputStream()
    with pa.ipc.new_file(sink, table.schema, options=_IPC_OPTIONS) as writer:
        writer.write_table(table)
    return sink.size()


def _sliceable(arr: pa.Array) -> bool:
    """Whether rows of an arena column starting at ``arr.offset`` can be shared in
    place (the server's rule, ``ColumnLayout::slice``): a type without children
    whose sliced buffers all start on 8 bytes (pyarrow's IPC reader requires it):
    bitmaps (booleans, or validity with nulls in the slice) at offsets divisible
    by 64, values of w bytes where ``offset * w`` is divisible by 8. Other slices
    are written anew, column by column."""
    k = arr.offset
    t = arr.type
    if pa.types.is_dictionary(t):
        t = t.index_type
    if arr.null_count > 0 and k % 64 != 0 and not pa.types.is_null(t):
        return False
    if pa.types.is_boolean(t):
        return k % 64 == 0
    if pa.types.is_string(t) or pa.types.is_binary(t):
        return k % 2 == 0
    if pa.types.is_large_string(t) or pa.types.is_large_binary(t) or pa.types.is_null(t):
        return True
    fixed = (
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or (pa.types.is_temporal(t) and not pa.types.is_interval(t))
        or pa.types.is_decimal(t)
        or pa.types.is_fixed_size_binary(t)
    )
    return fixed and (k * (t.bit_width // 8)) % 8 == 0


def _arena_buffers(arr: pa.Array, lo: int, hi: int) -> tuple[int, int, list[tuple[int, int]]] | None:
    """``(row offset, rows, buffers)``: the (arena offset, length) of every non-empty
    buffer of ``arr`` (children included, dictionary values excluded; for a slice,
    its parent's), if all lie in ``[lo, hi)`` and a slice can be shared in place;
    else None."""
    if arr.offset != 0 and not _sliceable(arr):
        return None
    out = []
    for b in arr.buffers():
        if b is None or b.size == 0:
            continue
        address = b.address
        if address < lo or address + b.size > hi:
            return None
        out.append((address - lo, b.size))
    return (arr.offset, len(arr), out) if out else None


#: Most IPC files one put writes for its new columns (see ``_Plan``).
_FILES_PER_PUT_MAX = 16


class _Plan:
    """How a put is made of new and existing columns: the batches (each a list of
    arrays), which cells are already in the arena, and the new columns grouped into
    one IPC file per set of batches with the same new columns."""

    def __init__(self, schema: pa.Schema, batches: list[list[pa.Array]], existing: list[list[Any]]):
        self.schema = schema
        self.batches = batches
        self.existing = existing
        self.reuses = any(e is not None for row in existing for e in row)
        # Batches with the same new columns share a file. Past a few distinct sets
        # (each a pending chunk; a connection may hold 64), the batches with new
        # columns are written whole, in one file.
        patterns = {tuple(e is None for e in row) for row in existing if any(e is None for e in row)}
        if len(patterns) > _FILES_PER_PUT_MAX:
            existing = [[None] * len(row) if any(e is None for e in row) else row for row in existing]
            self.existing = existing
            self.reuses = any(e is not None for row in existing for e in row)
        groups: dict[tuple[int, ...], list[int]] = {}
        for b, row in enumerate(existing):
            new = tuple(c for c, e in enumerate(row) if e is None)
            if new:
                groups.setdefault(new, []).append(b)
        self.groups = list(groups.items())
        self.files = []
        for cols, bs in self.groups:
            fields = [schema.field(c) for c in cols]
            sub = pa.schema(fields)
            self.files.append(
                pa.Table.from_batches(
                    [pa.record_batch([batches[b][c] for c in cols], schema=sub) for b in bs], schema=sub
                )
            )

    @classmethod
    def all_new(cls, table: pa.Table) -> "_Plan":
        batches = [list(b.columns) for b in table.to_batches()]
        return cls(table.schema, batches, [[None] * len(row) for row in batches])

    def draft(self, chunks: list[tuple[int, int]]) -> bytes:
        """The draft (docs/PROTOCOL.md) once the new files lie in ``chunks``."""
        where: dict[tuple[int, int], tuple[int, int, int]] = {}
        for g, (cols, bs) in enumerate(self.groups):
            for i, b in enumerate(bs):
                for j, c in enumerate(cols):
                    where[(b, c)] = (g, i, j)
        schema = self.schema.serialize().to_pybytes()
        parts = [b"APDRAFT1", struct.pack("<I", len(schema)), schema, struct.pack("<I", len(chunks))]
        parts += [struct.pack("<QQ", cid, length) for cid, length in chunks]
        parts.append(struct.pack("<I", len(self.batches)))
        for b, row in enumerate(self.batches):
            parts.append(struct.pack("<Q", len(row[0]) if row else 0))
            for c, found in enumerate(self.existing[b]):
                if found is None:
                    parts.append(struct.pack("<BIII", 0, *where[(b, c)]))
                else:
                    # Always as a slice (rows from offset): the server shares the
                    # whole column when the rows are all of it.
                    row_offset, rows, buffers = found
                    parts.append(struct.pack("<BQQH", 2, row_offset, rows, len(buffers)))
                    parts += [struct.pack("<QQ", o, n) for o, n in buffers]
        return b"".join(parts)


def _reuse_plan(conn: _Connection, table: pa.Table) -> _Plan | None:
    """A plan that references the columns of ``table`` already in this connection's
    arena mapping, or None if none is (then a put writes one IPC file as before)."""
    lo, hi = conn.ro_address, conn.ro_address + conn.arena_len
    columns = table.columns
    if not columns or table.num_rows == 0:
        return None
    layouts = [[len(c) for c in col.chunks] for col in columns]
    in_arena = [
        any(_arena_buffers(chunk, lo, hi) is not None for chunk in col.chunks) for col in columns
    ]
    if not any(in_arena):
        return None
    # Batches follow the chunks of the first column found in the arena; columns
    # chunked otherwise are cut to match (they are written anew).
    layout = layouts[in_arena.index(True)]
    batches: list[list[pa.Array]] = [[] for _ in layout]
    existing: list[list[Any]] = [[] for _ in layout]
    for col, col_layout in zip(columns, layouts):
        if col_layout == layout:
            pieces = list(col.chunks)
            found = [_arena_buffers(p, lo, hi) for p in pieces]
        else:
            pieces, start = [], 0
            for n in layout:
                pieces.append(col.slice(start, n).combine_chunks())
                start += n
            found = [None] * len(pieces)
        for b, (piece, buffers) in enumerate(zip(pieces, found)):
            batches[b].append(piece)
            existing[b].append(buffers)
    return _Plan(table.schema, batches, existing)


def _watch(ref: "weakref.ref[Client]") -> None:
    """The restart watcher: waits (in ``poll``, no CPU) for the server to hang up
    the client's connection; then connects to the new server as soon as one
    listens (never starting one), which leases the held tables again
    (``_Connection.adopt``). Without it an idle process learns of a restart only
    on its next request, possibly after the new server's --quarantine, when the
    bytes of a replaced table it holds may be reused. Ends with the client, when
    the server has no state directory any more, or after _WATCH_RECONNECT_FOR_S
    without a server (the next table taken starts it again)."""
    pid = os.getpid()
    while True:
        client = ref()
        if client is None or client._closed or client._watcher_pid != pid:
            return
        conn = client._conn
        if conn is None or conn.arena_id == (0, 0) or conn.pid != pid:
            client._watcher_pid = 0
            return
        del client
        hung_up = False
        try:
            p = select.poll()
            # Replies make the socket readable, never hung up.
            p.register(conn.sock, select.POLLRDHUP)
            while not hung_up:
                events = p.poll(1000)
                client = ref()
                if client is None or client._closed:
                    return
                replaced = client._conn is not conn
                del client
                if replaced:
                    break
                if events:
                    if events[0][1] & select.POLLNVAL:  # closed meanwhile: look again
                        time.sleep(_WATCH_RETRY_S)
                        break
                    hung_up = True
        except (OSError, ValueError):  # closed meanwhile
            time.sleep(_WATCH_RETRY_S)
            continue
        if not hung_up:
            continue
        conn.dead = True
        began = time.monotonic()
        while True:
            client = ref()
            if client is None or client._closed:
                return
            try:
                if client._connection(autostart=False) is not conn:
                    break
            except ArrowpoolError:
                pass
            if time.monotonic() - began > _WATCH_RECONNECT_FOR_S:
                client._watcher_pid = 0
                return
            del client
            fast = time.monotonic() - began < _WATCH_FAST_FOR_S
            time.sleep(_WATCH_RETRY_S if fast else _WATCH_RETRY_SLOW_S)


class Client:
    """A connection to ``arrowpoold``. Create it with :func:`arrowpool.connect`.

    Safe to share between threads; safe across ``fork`` (the child connects again on
    its first request). Tables returned by :meth:`get` stay valid after :meth:`close`:
    the connection is kept until the last of them is garbage-collected.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        write: bool = True,
        timeout: float | None = DEFAULT_TIMEOUT,
    ):
        self.path = os.fspath(path) if path is not None else _server.default_socket()
        self.write = write
        self.timeout = timeout
        #: Set by :func:`connect`: start the server again if it is gone when this
        #: client reconnects (``memory`` as given there).
        self._autostart: tuple[bool, str | None] = (False, None)
        self._lock = threading.Lock()
        self._closed = False
        self._pid = os.getpid()
        #: The process whose restart watcher runs (0: none).
        self._watcher_pid = 0
        self._conn: _Connection | None = _Connection(self.path, write, timeout)
        _CLIENTS.add(self)

    # --- connection management ---------------------------------------------------

    @property
    def arena_bytes(self) -> int:
        """Size of the shared-memory arena in bytes."""
        return self._connection().arena_len

    @property
    def memory_kind(self) -> str:
        """``hugetlb``, ``transparent-hugepages`` or ``4k-pages``."""
        return self._connection().hello.memory_kind_name

    @property
    def io_driver(self) -> str:
        """``io_uring`` or ``polling``."""
        return self._connection().hello.io_driver_name

    def _reset_after_fork(self) -> None:
        # Runs in the child right after fork: only this thread exists, and the locks
        # may have been copied while another parent thread held them.
        self._lock = threading.Lock()
        if self._conn is not None and self._conn.pid != os.getpid():
            self._conn.forget_after_fork()
            self._conn = None
        self._pid = os.getpid()
        self._watcher_pid = 0

    def _watch_for_restart(self, conn: _Connection) -> None:
        """Starts the restart watcher (``_watch``) once this process holds a
        table of a server with a state directory."""
        pid = os.getpid()
        if not _WATCH or conn.arena_id == (0, 0) or self._watcher_pid == pid:
            return
        self._watcher_pid = pid
        threading.Thread(target=_watch, args=(weakref.ref(self),), name="arrowpool-watch", daemon=True).start()

    def _connection(self, autostart: bool = True) -> _Connection:
        if self._pid != os.getpid():
            # Forked without the at-fork hook (e.g. from C code).
            self._reset_after_fork()
        pid = os.getpid()
        conn = self._conn
        if conn is not None and not conn.dead and conn.pid == pid:
            return conn
        with self._lock:
            if self._closed:
                raise ArrowpoolError("this arrowpool client is closed")
            conn = self._conn
            if conn is not None and conn.pid != pid:
                conn.forget_after_fork()
            if conn is None or conn.dead or conn.pid != pid:
                old = conn if conn is not None and conn.pid == pid else None
                try:
                    conn = self._reconnect(autostart)
                except ServerUnavailable as e:
                    if old is not None and old.shut_down:
                        old.shut_down = False  # said once
                        raise ServerUnavailable(f"arrowpoold at {self.path} is shutting down (it said so); {e}") from e
                    raise
                self._conn = conn
                if old is not None and old.lease_objects:
                    conn.adopt(old)
            return conn

    def _reconnect(self, autostart: bool = True) -> _Connection:
        """A new connection: after a fork, or after the server went away (stopped,
        crashed, restarted). An autostarted client starts the server again (unless
        ``autostart`` is false: the restart watcher never starts one)."""
        try:
            return _Connection(self.path, self.write, self.timeout)
        except ServerUnavailable:
            start, memory = self._autostart
            if not start or not autostart:
                raise
            _server.ensure_server(self.path, memory=memory)
            return _Connection(self.path, self.write, self.timeout)

    def _request(self, kind: int, body: bytes = b"", timeout: Any = _UNSET) -> tuple[_Connection, bytes]:
        # A connection found broken before anything was sent is replaced once, and
        # so is one the server closed without reading the request (then a new
        # server is waited for); a request that failed half-way is never resent
        # (seal is not idempotent).
        unread = False
        for attempt in (0, 1):
            conn = self._connection_waiting() if unread else self._connection()
            try:
                return conn, conn.request(kind, body, timeout)
            except _StaleConnection as e:
                if attempt:
                    raise ServerUnavailable(
                        f"lost the connection to arrowpoold at {self.path}"
                    ) from None
                unread = isinstance(e, _UnreadRequest)
                if unread and kind in _NOT_RESENDABLE:
                    raise ServerUnavailable(
                        f"arrowpoold at {self.path} closed the connection before reading the "
                        "request (it stopped or restarted)"
                    ) from None
        raise AssertionError("unreachable")

    def _connection_waiting(self) -> _Connection:
        """``_connection``, waiting up to ``_UNREAD_RETRY_WAIT_S`` for a server."""
        deadline = time.monotonic() + _UNREAD_RETRY_WAIT_S
        while True:
            try:
                return self._connection()
            except ServerUnavailable:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.02)

    def close(self) -> None:
        """Closes the connection (at once, or when the last table from it is gone)."""
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
        if conn is not None and conn.pid == os.getpid():
            conn.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<arrowpool.Client {self.path!r} write={self.write} {state}>"

    # --- simple requests --------------------------------------------------------

    def ping(self) -> float:
        """Round trip to the server; returns its duration in seconds."""
        start = time.perf_counter()
        _, body = self._request(proto.Kind.PING)
        proto.Ping.decode_reply(body)
        return time.perf_counter() - start

    def delete(self, name: str) -> None:
        """Removes ``name``. Readers holding its table keep it until they release it.
        Raises :class:`NotFound` if there is no such name."""
        _, body = self._request(proto.Kind.DELETE, proto.Delete.encode(name))
        proto.Delete.decode_reply(body)

    def list(self) -> list[dict[str, Any]]:
        """Every named object: name, object_id, version, kind, rows, bytes, leases, idle_ms."""
        _, body = self._request(proto.Kind.LIST)
        return proto.List.decode_reply(body)

    def stats(self) -> dict[str, Any]:
        """Server counters: memory kind, arena/used/free/held bytes, objects, leases..."""
        _, body = self._request(proto.Kind.STATS)
        return proto.Stats.decode_reply(body)

    def wait_for_version(self, name: str, after: int = 0, timeout: float = 60.0) -> int:
        """Blocks until ``name`` has a version greater than ``after`` and returns it (at
        once if it already has). Raises :class:`Timeout` after ``timeout`` seconds (at
        most 600). The connection serves nothing else meanwhile: other threads of this
        client wait for it."""
        timeout_ms = int(round(timeout * 1000))
        body = proto.Wait.encode(after, timeout_ms, name)
        _, reply = self._request(proto.Kind.WAIT, body, timeout=timeout + WAIT_MARGIN)
        return proto.Wait.decode_reply(reply)

    def ingest(
        self,
        path: str | os.PathLike[str],
        name: str,
        columns: Sequence[str] | None = None,
        timeout: float | None = None,
        storage_options: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Makes the server read Parquet at ``path`` (a file, or a directory of
        ``.parquet`` files with one schema) into the table ``name``.

        ``path`` is made absolute here: the server resolves it, not this process.
        An object store URL (``s3://bucket/key.parquet`` or a prefix, ``gs://``,
        ``az://``, ``https://``) is read by the server with ranged GETs, credentials
        from the server's environment, or from ``storage_options`` for this ingest
        only (the ``object_store`` crate's keys, as pandas' ``storage_options``:
        ``{"aws_access_key_id": ..., "aws_secret_access_key": ..., "aws_region": ...,
        "aws_endpoint": ...}``; docs/INGEST.md).
        ``flight://[TOKEN@]HOST:PORT/NAME`` (or ``flight+tls://``) makes the server pull
        table ``NAME`` from another Flight server (another arrowpoold) instead.
        ``columns`` selects columns (all when None). Returns the server's report
        (version, rows, bytes, timings). Waits as long as the ingest takes unless
        ``timeout`` (seconds) is given. Raises :class:`IngestError` on bad input.
        """
        where = os.fspath(path)
        if "://" not in where:  # flight://HOST:PORT/NAME goes as it is
            where = os.path.abspath(where)
        body = proto.Ingest.encode(name, where, list(columns or ()), dict(storage_options or {}))
        _, reply = self._request(proto.Kind.INGEST, body, timeout=timeout)
        return proto.Ingest.decode_reply(reply)

    # --- put --------------------------------------------------------------------

    def put(self, name: str, data: Any, if_version: int | None = None) -> int:
        """Publishes ``data`` (pyarrow Table or RecordBatch, pandas DataFrame) as the
        new version of ``name`` and returns that version number.

        Data is written straight into the shared arena (one copy); readers see the old
        version or the new one, never a mix. Columns that already lie in the arena are
        not copied at all: a table from :meth:`get` after ``set_column``,
        ``append_column``, ``drop_columns``, ``select``, ``rename_columns``, or
        ``pa.concat_tables([old, new_rows])``, ``slice`` (a rolling window:
        ``concat_tables([old.slice(k), new_rows])``), or a frame from
        :meth:`get_pandas` with some columns replaced, writes only its new columns
        or rows; the new version shares the rest with the old one
        (docs/PROTOCOL.md, "publish"). A slice's columns are shared where their
        buffers stay 8-byte aligned (8-byte values always; int32 and string
        columns at even rows; bitmaps at rows divisible by 64); the others are
        written.

        ``if_version``: publish only if ``name`` is still at that version, else raise
        :class:`VersionConflict` and publish nothing, so that two callbacks updating
        one table cannot silently lose one update.
        """
        if not self.write:
            raise ArrowpoolError("this client was connected with write=False; put needs write=True")
        table = _as_table(data)
        _check_metadata(table.schema)
        conn = self._connection()
        plan = _reuse_plan(conn, table)
        if plan is None and if_version is None:
            return self._put_table(name, table, _ipc_file_size(table))
        if plan is None:
            plan = _Plan.all_new(table)
        try:
            return self._publish(conn, name, plan, if_version)
        except InvalidData:
            if not plan.reuses:
                raise
            # A column looked shared but is not one the server has (rebuilt over
            # the same memory, say): write everything.
            return self._publish(conn, name, _Plan.all_new(table), if_version)

    def append(self, name: str, rows: Any, if_version: int | None = None) -> int:
        """Appends ``rows`` (same schema) to table ``name``: the new version shares
        every existing batch and writes only the new rows. Returns the version."""
        version, current = self.get_with_version(name)
        new = _as_table(rows)
        if new.schema != current.schema:
            new = new.cast(current.schema)
        table = pa.concat_tables([current, new])
        return self.put(name, table, if_version=version if if_version is None else if_version)

    def replace_columns(self, name: str, columns: dict[str, Any], if_version: int | None = None) -> int:
        """Replaces (or adds, for new names) columns of table ``name``; the new
        version writes only those columns. ``columns`` maps names to arrays of the
        table's length (pyarrow arrays or chunked arrays, numpy arrays, lists).
        Returns the version."""
        version, table = self.get_with_version(name)
        for col, values in columns.items():
            if not isinstance(values, (pa.Array, pa.ChunkedArray)):
                values = pa.array(values)
            i = table.schema.get_field_index(col)
            field = pa.field(col, values.type)
            table = table.set_column(i, field, values) if i >= 0 else table.append_column(field, values)
        return self.put(name, table, if_version=version if if_version is None else if_version)

    def _publish(self, conn: _Connection, name: str, plan: "_Plan", if_version: int | None) -> int:
        pending: list[int] = []
        chunks: list[tuple[int, int]] = []
        try:
            for group in plan.files:
                size = _ipc_file_size(group)
                created = proto.Create.decode_reply(
                    _on(conn, proto.Kind.CREATE, proto.Create.encode(proto.ObjectKind.TABLE, size, name))
                )
                pending.append(created.object_id)
                written = self._write_table(conn, created, group)
                chunks.append((created.object_id, written))
            draft = plan.draft(chunks)
            created = proto.Create.decode_reply(
                _on(conn, proto.Kind.CREATE, proto.Create.encode(proto.ObjectKind.BYTES, len(draft), name))
            )
            pending.append(created.object_id)
            self._check_range(conn, created.offset, created.capacity)
            if created.capacity < len(draft):
                raise ProtocolError(f"server granted {created.capacity} bytes for a {len(draft)}-byte draft")
            assert conn.rw_mmap is not None
            conn.rw_mmap[created.offset : created.offset + len(draft)] = draft
        except BaseException:
            for object_id in pending:
                self._abort(conn, object_id)
            raise
        # A refused publish aborts everything it named on the server's side.
        sealed = proto.Publish.decode_reply(
            _on(conn, proto.Kind.PUBLISH, proto.Publish.encode(name, created.object_id, len(draft), if_version))
        )
        return sealed.version

    def _put_table(self, name: str, table: pa.Table, size: int) -> int:
        for attempt in (0, 1):
            try:
                return self._put_once(name, table, size)
            except _TooSmall:
                if attempt:
                    raise ArrowpoolError(
                        f"the Arrow IPC file for {name!r} did not fit in {size} bytes "
                        "even after doubling the estimate"
                    ) from None
                size *= 2
        raise AssertionError("unreachable")

    def _put_once(self, name: str, table: pa.Table, size: int) -> int:
        conn, body = self._request(
            proto.Kind.CREATE, proto.Create.encode(proto.ObjectKind.TABLE, size, name)
        )
        created = proto.Create.decode_reply(body)
        try:
            written = self._write_table(conn, created, table)
        except BaseException as e:
            self._abort(conn, created.object_id)
            if isinstance(e, OSError) and "out of bounds" in str(e):
                raise _TooSmall() from e
            raise
        sealed = proto.Seal.decode_reply(
            _on(conn, proto.Kind.SEAL, proto.Seal.encode(created.object_id, written))
        )
        return sealed.version

    @staticmethod
    def _check_range(conn: _Connection, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > conn.arena_len:
            conn.mark_dead()
            raise ProtocolError(
                f"server placed an object at [{offset}, {offset + length}) outside the "
                f"arena of {conn.arena_len} bytes; the connection was closed"
            )

    def _write_table(self, conn: _Connection, created: proto.Created, table: pa.Table) -> int:
        self._check_range(conn, created.offset, created.capacity)
        assert conn.rw_mmap is not None
        populating = _populate(conn, created.offset, created.capacity)
        window = memoryview(conn.rw_mmap)[created.offset : created.offset + created.capacity]
        dest = sink = writer = None
        try:
            dest = pa.py_buffer(window)
            # FixedSizeBufferWriter aborts the process on a read-only buffer; never
            # hand it one.
            if not dest.is_mutable:
                raise ProtocolError("the writable arena mapping is not writable")
            sink = pa.FixedSizeBufferWriter(dest)
            sink.set_memcopy_threads(_PARALLEL_COPY_THREADS)
            with pa.ipc.new_file(sink, table.schema, options=_IPC_OPTIONS) as writer:
                writer.write_table(table)
            written = sink.tell()
            sink.close()
            return written
        finally:
            for t in populating:
                t.join()
            # Drop the exports of the mapping now rather than when a traceback dies.
            writer = sink = dest = None
            try:
                window.release()
            except BufferError:
                pass

    def _abort(self, conn: _Connection, object_id: int) -> None:
        if conn.dead:
            return  # the server aborts unsealed objects of a closed connection
        try:
            conn.request(proto.Kind.ABORT, proto.Abort.encode(object_id))
        except (ArrowpoolError, _StaleConnection):
            pass

    def put_bytes(self, name: str, data: bytes | bytearray | memoryview) -> int:
        """Stores an opaque blob (pickle, JSON...) under ``name``; returns its version."""
        if not self.write:
            raise ArrowpoolError("this client was connected with write=False; put_bytes needs write=True")
        src = memoryview(data).cast("B")
        conn, body = self._request(
            proto.Kind.CREATE, proto.Create.encode(proto.ObjectKind.BYTES, len(src), name)
        )
        created = proto.Create.decode_reply(body)
        try:
            self._check_range(conn, created.offset, created.capacity)
            if created.capacity < len(src):
                raise ProtocolError(
                    f"server granted {created.capacity} bytes for a {len(src)}-byte object"
                )
            assert conn.rw_mmap is not None
            conn.rw_mmap[created.offset : created.offset + len(src)] = src
        except BaseException:
            self._abort(conn, created.object_id)
            raise
        sealed = proto.Seal.decode_reply(
            _on(conn, proto.Kind.SEAL, proto.Seal.encode(created.object_id, len(src)))
        )
        return sealed.version

    # --- get --------------------------------------------------------------------

    def _get(self, name: str, version: int | None = None) -> tuple[_Connection, proto.Got, _Lease]:
        if version is None:
            conn, body = self._request(proto.Kind.GET, proto.Get.encode(name))
        else:
            conn, body = self._request(proto.Kind.GET_VERSION, proto.GetVersion.encode(version, name))
        got = proto.Get.decode_reply(body)
        lease = conn.new_lease(got.object_id, got, name)
        try:
            self._check_range(conn, got.offset, got.length)
        except BaseException:
            lease.release()
            raise
        self._watch_for_restart(conn)
        return conn, got, lease

    def get_bytes(self, name: str) -> bytes:
        """A copy of the bytes of ``name``: a blob from :meth:`put_bytes`, or, for a
        table, the table written as one Arrow IPC file.

        A table version is read from a range of the arena that also spans other
        tables' data (its manifest references chunks anywhere, see docs/PROTOCOL.md),
        so a table's bytes are written out afresh rather than copied as they lie."""
        found = self.get_object(name)
        if isinstance(found, pa.Table):
            sink = pa.BufferOutputStream()
            with pa.ipc.new_file(sink, found.schema) as writer:
                writer.write_table(found)
            return sink.getvalue().to_pybytes()
        return found

    def get_object(self, name: str) -> pa.Table | bytes:
        """Whatever ``name`` holds, in one request: a table as :meth:`get` returns it
        (zero-copy), a blob as :meth:`get_bytes` does (a copy)."""
        conn, got, lease = self._get(name)
        if got.object_kind == proto.ObjectKind.TABLE:
            return self._open_table(conn, got, lease, None)
        try:
            assert conn.ro_mmap is not None
            return conn.ro_mmap[got.offset : got.offset + got.length]
        finally:
            lease.release()

    @staticmethod
    def _open_table(conn: _Connection, got: proto.Got, lease: _Lease, columns) -> pa.Table:
        """The table a get located, over the arena (its buffers hold ``lease``);
        ``columns`` projects without copying. Releases the lease on failure."""
        try:
            buf = pa.foreign_buffer(conn.ro_address + got.offset, got.length, base=lease)
            reader = pa.ipc.open_file(buf)
            if columns is None:
                return reader.read_all()
            # RecordBatch.select slices the batch in place: zero-copy, unlike
            # IpcReadOptions(included_fields=...), which copies the bodies.
            columns = list(columns)
            batches = [reader.get_batch(i).select(columns) for i in range(reader.num_record_batches)]
            if batches:
                return pa.Table.from_batches(batches)
            return reader.schema.empty_table().select(columns)
        except BaseException:
            lease.release()
            raise

    def get_or_load(
        self,
        name: str,
        load: Any,
        columns: Iterable[str | int] | None = None,
    ) -> pa.Table:
        """The table ``name``; if there is none, the first caller makes it and the
        others wait for it: ``load`` is a Parquet path (file or directory, read by
        the server: :meth:`ingest`), a table or frame to :meth:`put`, or a callable
        returning either. Processes that ask at once (the workers of a web app)
        load it once, under a lock file beside the server's socket.

        The usual shape in a Dash app: every callback starts with
        ``t = client.get_or_load("sales-" + company, f"/data/{company}.parquet")``.
        """
        try:
            return self.get(name, columns)
        except NotFound:
            pass
        import hashlib

        digest = hashlib.sha256(name.encode()).hexdigest()[:32]
        lock = os.path.join(os.path.dirname(os.path.abspath(self.path)), f"load-{digest}.lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                return self.get(name, columns)
            except NotFound:
                pass
            data = load() if callable(load) else load
            if isinstance(data, (str, os.PathLike)):
                self.ingest(data, name)
            else:
                self.put(name, data)
            return self.get(name, columns)
        finally:
            os.close(fd)

    def version(self, name: str) -> int:
        """The current version number of ``name`` (raises :class:`NotFound`)."""
        _, got, lease = self._get(name)
        lease.release()
        return got.version

    def get(
        self, name: str, columns: Iterable[str | int] | None = None, version: int | None = None
    ) -> pa.Table:
        """The current version of table ``name``, zero-copy.

        Every buffer of the returned table points into the shared arena (read-only
        memory); nothing is copied, whatever the table's size. ``columns`` (names or
        indices) selects columns, still without copying. The server keeps this version
        in place until the last array of the table is garbage-collected, even if a
        newer version is put meanwhile.

        ``version`` reads that version instead of the current one, if the server keeps
        it (``arrowpoold --keep-versions K`` keeps the K latest); else :class:`NotFound`.
        """
        return self.get_with_version(name, columns, version)[1]

    def get_with_version(
        self, name: str, columns: Iterable[str | int] | None = None, version: int | None = None
    ) -> tuple[int, pa.Table]:
        """Like :meth:`get`, also returning the version number of the table read."""
        conn, got, lease = self._get(name, version)
        if got.object_kind != proto.ObjectKind.TABLE:
            lease.release()
            raise TypeError(f"{name!r} holds bytes, not a table: use get_bytes()")
        return got.version, self._open_table(conn, got, lease, columns)

    def get_pandas(
        self,
        name: str,
        columns: Iterable[str | int] | None = None,
        dtype_backend: str = "numpy",
        version: int | None = None,
    ):
        """The table ``name`` (or its kept ``version``, as in :meth:`get`) as a pandas
        DataFrame, copying as little as pandas allows.

        ``dtype_backend="numpy"`` (default) calls ``to_pandas(split_blocks=True,
        self_destruct=False, zero_copy_only=False)``:

        * numeric and timestamp columns without nulls, stored as one record batch,
          become NumPy arrays that point into the arena (no copy, read-only: call
          ``df.copy()`` before editing in place);
        * columns with nulls (ints become floats), booleans (bit-packed in Arrow),
          and any column of a table stored as several record batches are copied;
        * strings: with pandas 3 they become the ``str`` dtype backed by Arrow; the
          character data stays in the arena, the 32-bit offsets are widened to 64-bit
          (a copy of 8 bytes per row). With pandas < 3 they become Python ``str``
          objects (a full copy);
        * dictionary columns become ``Categorical`` (categories and codes copied).

        ``dtype_backend="pyarrow"`` uses ``types_mapper=pandas.ArrowDtype``: every
        column stays an Arrow array over the arena, nothing is copied, including
        strings and columns with nulls.
        """
        import pandas as pd

        table = self.get(name, columns, version)
        if dtype_backend == "pyarrow":
            return table.to_pandas(types_mapper=pd.ArrowDtype, self_destruct=False)
        if dtype_backend == "numpy":
            return table.to_pandas(split_blocks=True, self_destruct=False, zero_copy_only=False)
        raise ValueError(f"dtype_backend must be 'numpy' or 'pyarrow', not {dtype_backend!r}")


def _on(conn: _Connection, kind: int, body: bytes) -> bytes:
    """A request that must go over this very connection (seal after create)."""
    try:
        return conn.request(kind, body)
    except _StaleConnection:
        raise ServerUnavailable(
            f"lost the connection to arrowpoold at {conn.path} in the middle of a put"
        ) from None


class _TooSmall(Exception):
    """The IPC writer ran past the object's capacity."""


def connect(
    path: str | os.PathLike[str] | None = None,
    write: bool = True,
    timeout: float | None = DEFAULT_TIMEOUT,
    autostart: bool | None = None,
    memory: str | None = None,
) -> Client:
    """Connects to ``arrowpoold`` listening on the Unix socket ``path``.

    With no ``path``: this user's server (:func:`arrowpool.default_socket`), started
    if none is running (``autostart``, on by default there): every process of the
    user on the machine shares it, it outlives the process that started it, logs
    to ``arrowpoold.log`` beside its socket, and ``arrowpool stop`` ends it. Its
    memory cap is ``memory`` (``"8G"``), else ``$ARROWPOOL_MEMORY``, else half of
    the machine's memory. An explicit ``path`` is a server you run yourself:
    nothing is started unless ``autostart=True``. ``autostart=False`` never starts
    one.

    ``write=False`` asks only for the read-only descriptor (the client can get, not
    put). ``timeout`` (seconds, None for no limit) bounds every wait for a reply so a
    dead server is an error, not a hang. Raises :class:`ServerUnavailable` when
    nothing answers at ``path`` (and none could be started).
    """
    if path is None:
        path = _server.default_socket()
        start = autostart is not False
    else:
        start = bool(autostart)
    if not start:
        return Client(path, write=write, timeout=timeout)
    # Try the server first: the common case, one connection, no probe.
    try:
        client = Client(path, write=write, timeout=timeout)
    except ServerUnavailable:
        _server.ensure_server(path, memory=memory)
        client = Client(path, write=write, timeout=timeout)
    client._autostart = (True, memory)
    return client
