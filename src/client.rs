//! The Rust client: connect, put tables straight into the arena, get them back
//! zero-copy as `RecordBatch`es that hold a lease.
//!
//! Blocking and thread-safe: one connection guarded by a mutex, requests are
//! sent and their replies read in order. Dropping the last array of a `get`
//! releases its lease with a no-reply frame, so drops never wait on the server.
//!
//! A connection the server closed (it stopped, crashed or was restarted) is
//! noticed before the next request is sent, and that request goes to a new
//! connection. Tables got before stay readable (their mapping stays); when the
//! new server has the same arena (`--state-dir`), their versions are leased
//! again there, so it does not reuse their bytes. A request the server died
//! in the middle of fails: it is never sent twice.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_buffer::Buffer;
use arrow_schema::{ArrowError, Schema, SchemaRef};

use crate::arena::Mapping;
use crate::protocol::abort::Abort;
use crate::protocol::create::{Create, Created};
use crate::protocol::frame::{
    write_frame, FrameError, Header, FLAG_NO_REPLY, HEADER_LEN, REPLY_BODY_MAX, REQUEST_BODY_MAX,
};
use crate::protocol::get::{Get, Located};
use crate::protocol::handshake::{
    ClientHello, ServerHello, FLAG_WRITE, PROTOCOL_VERSION, SERVER_HELLO_LEN, STATUS_BAD_VERSION,
    STATUS_OK, STATUS_TOO_MANY_CONNECTIONS,
};
use crate::protocol::ingest::{Ingest, IngestReply};
use crate::protocol::list::ListEntry;
use crate::protocol::release::Release;
use crate::protocol::seal::{Seal, Sealed};
use crate::protocol::stats::StatsReply;
use crate::protocol::{ErrorCode, ErrorReply, Kind, ObjectKind};

/// How long a request waits for its reply by default; `wait` and `ingest`
/// adjust it (see `Client::set_timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// What a request encoder returns: an error when the request breaks a limit.
type Encoded = std::result::Result<(), FrameError>;

/// Why a client call failed.
#[derive(Debug)]
pub enum ClientError {
    /// No server answers on the socket.
    Connect { path: PathBuf, err: std::io::Error },
    /// The server refused the handshake or answered something else.
    Handshake(String),
    /// The server answered with an error.
    Server(ErrorReply),
    /// The connection broke or the server is shutting down.
    Disconnected(String),
    /// The reply did not match the protocol.
    Protocol(String),
    /// Arrow could not encode or decode a table.
    Arrow(ArrowError),
    /// The object's bytes lie outside the mapped arena.
    OutOfBounds { offset: u64, length: u64 },
    /// A put needs a writable connection (`connect_writer`).
    ReadOnly,
    /// The server did not answer in time (`Client::set_timeout`); the connection
    /// was closed, since a late reply would be out of step.
    TimedOut(Duration),
    /// The request breaks a protocol limit (a name over 255 bytes, a path over
    /// 4096, a body over 64 KiB...); it was not sent.
    InvalidRequest(FrameError),
}

impl ClientError {
    /// The server's error code, if the server answered with an error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server(e) => Some(e.code),
            _ => None,
        }
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Connect { path, err } => {
                write!(
                    f,
                    "cannot connect to arrowpoold at {}: {err} (is the server running?)",
                    path.display()
                )
            }
            ClientError::Handshake(m) => write!(f, "handshake failed: {m}"),
            ClientError::Server(e) => write!(f, "server error {e}"),
            ClientError::Disconnected(m) => write!(f, "connection to arrowpoold lost: {m}"),
            ClientError::Protocol(m) => write!(f, "protocol error: {m}"),
            ClientError::InvalidRequest(e) => write!(f, "request not sent: {e}"),
            ClientError::Arrow(e) => write!(f, "arrow: {e}"),
            ClientError::OutOfBounds { offset, length } => {
                write!(
                    f,
                    "object at offset {offset} (+{length} bytes) lies outside the arena"
                )
            }
            ClientError::ReadOnly => write!(
                f,
                "this connection is read-only; connect as a writer to put"
            ),
            ClientError::TimedOut(t) => write!(
                f,
                "arrowpoold did not answer within {t:?} (stopped or overloaded); the connection was closed"
            ),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<ArrowError> for ClientError {
    fn from(e: ArrowError) -> Self {
        ClientError::Arrow(e)
    }
}

type Result<T, E = ClientError> = std::result::Result<T, E>;

#[derive(Debug)]
struct Conn {
    /// Buffered for reads (a reply's header and body in one syscall); writes go
    /// to the inner stream directly.
    stream: std::io::BufReader<UnixStream>,
    next_id: u64,
    out: Vec<u8>,
    /// How long a reply may take (`None`: forever).
    timeout: Option<Duration>,
    /// When the last reply arrived (see `Inner::stale`).
    last_reply: std::time::Instant,
}

#[derive(Debug)]
struct Inner {
    conn: Mutex<Conn>,
    read_only: Mapping,
    writable: Option<Mapping>,
    hello: ServerHello,
    /// (st_dev, st_ino) of the arena: the same after a `--state-dir` restart.
    /// (0, 0) for an arena no restart can find again (a memfd, which has no
    /// name: `st_nlink` 0): nothing to adopt, no restart to watch for.
    arena_id: (u64, u64),
    /// A request failed in a way that leaves the stream unusable.
    dead: std::sync::atomic::AtomicBool,
    /// ... and the server closed it without reading that request (EPIPE on
    /// the write, ECONNRESET on the read: a Unix socket closed with our bytes
    /// still queued), so sending it again cannot apply it twice.
    unread: std::sync::atomic::AtomicBool,
    /// Leases taken on this connection, for a new connection to take over.
    leases: Mutex<Vec<std::sync::Weak<Lease>>>,
}

impl Inner {
    /// Whether the next request must go to a new connection: this one broke,
    /// or the server closed it (the stream is readable while nothing is owed
    /// to us: checked under the connection's lock, so no reply is in flight).
    fn stale(&self) -> bool {
        if self.dead.load(std::sync::atomic::Ordering::Relaxed) {
            return true;
        }
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if !conn.stream.buffer().is_empty() {
            return true;
        }
        // Right after a reply the server was there: no new server can have
        // started since, so skip the syscall on back-to-back requests (a
        // server that died in between fails that request, as it would anyway).
        if conn.last_reply.elapsed() < STALE_CHECK_AFTER {
            return false;
        }
        let mut fds = [rustix::event::PollFd::new(
            conn.stream.get_ref(),
            rustix::event::PollFlags::IN,
        )];
        rustix::event::poll(&mut fds, Some(&rustix::event::Timespec::default())).unwrap_or(1) > 0
    }
}

/// What every clone of a `Client` shares: the server's path and the current
/// connection, replaced when the server went away.
#[derive(Debug)]
struct State {
    path: PathBuf,
    write: bool,
    timeout: Mutex<Option<Duration>>,
    current: Mutex<Arc<Inner>>,
    /// A thread watches for the server's restart (`watch_for_restart`).
    watching: std::sync::atomic::AtomicBool,
}

/// A connection to `arrowpoold`. Cheap to clone (shares the connection).
#[derive(Debug, Clone)]
pub struct Client {
    state: Arc<State>,
}

/// A table read from the store. Its arrays point into the shared arena and keep
/// the lease (and the mapping) alive, even after the `Table` itself is dropped.
#[derive(Debug, Clone)]
pub struct Table {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub version: u64,
    pub object_id: u64,
    pub rows: u64,
}

/// Result of a put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutInfo {
    pub version: u64,
    pub rows: u64,
    /// Bytes this put wrote into the arena: the whole IPC file, or only the
    /// new columns' files when others were reused (0 if all were).
    pub bytes: u64,
}

/// A column's non-empty buffers as (arena offset, length), when all lie in the
/// arena; `None` for a column that must be written.
type InArena = Option<Vec<(u64, u64)>>;

/// Most IPC files one put writes for its new columns (see `put_with`).
const FILES_PER_PUT_MAX: usize = 16;

/// Options of `Client::put_with`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Publish only if the name is still at this version.
    pub if_version: Option<u64>,
}

/// The encapsulated IPC schema message of `schema` (what a draft carries).
fn schema_message(schema: &Schema) -> Result<Vec<u8>> {
    let w = arrow_ipc::writer::StreamWriter::try_new(Vec::new(), schema)?;
    Ok(w.get_ref().clone())
}

/// Keeps a lease: released when the last buffer built on it is dropped.
struct Lease {
    /// The connection that holds it and its object id there (both change when
    /// a new connection takes the lease over).
    holder: Mutex<(Arc<Inner>, u64)>,
    /// The mapping the buffers point into (the connection's that got it).
    _mapping: Arc<Inner>,
    name: String,
    version: u64,
    offset: u64,
    length: u64,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lease({} v{})", self.name, self.version)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Fire and forget: flag NO_REPLY means the server sends nothing back, so
        // the reply stream stays in step without reading here.
        let (inner, object_id) = {
            let h = self.holder.lock().unwrap_or_else(|p| p.into_inner());
            (h.0.clone(), h.1)
        };
        let mut conn = inner.conn.lock().unwrap_or_else(|p| p.into_inner());
        let id = conn.next_id;
        conn.next_id += 1;
        let mut frame = Vec::with_capacity(HEADER_LEN + 8);
        let release = Release { object_id };
        write_frame(&mut frame, id, Kind::Release as u16, FLAG_NO_REPLY, |o| {
            release.encode(o)
        });
        let _ = conn.stream.get_mut().write_all(&frame);
    }
}

impl Client {
    /// Connects as a reader and writer (maps the arena read-only, plus writable for puts).
    pub fn connect(path: impl AsRef<Path>) -> Result<Client> {
        Self::connect_with(path, true)
    }

    /// Connects as a reader only: the arena is mapped read-only and puts fail.
    pub fn connect_reader(path: impl AsRef<Path>) -> Result<Client> {
        Self::connect_with(path, false)
    }

    fn connect_with(path: impl AsRef<Path>, write: bool) -> Result<Client> {
        let path = path.as_ref();
        let inner = Arc::new(Self::open(path, write, Some(DEFAULT_TIMEOUT))?);
        populate_in_background(&inner);
        Ok(Client {
            state: Arc::new(State {
                path: path.to_owned(),
                write,
                timeout: Mutex::new(Some(DEFAULT_TIMEOUT)),
                current: Mutex::new(inner),
                watching: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    /// A new connection: socket, handshake, mappings.
    fn open(path: &Path, write: bool, timeout: Option<Duration>) -> Result<Inner> {
        let stream = UnixStream::connect(path).map_err(|err| ClientError::Connect {
            path: path.to_owned(),
            err,
        })?;
        stream.set_read_timeout(Some(Duration::from_secs(30))).ok();
        let (hello, fds) = handshake(&stream, write)?;
        let len = usize::try_from(hello.arena_len)
            .map_err(|_| ClientError::Handshake("arena too large".into()))?;
        let map_err = |e: crate::arena::ArenaError| {
            ClientError::Handshake(format!("cannot map the arena: {e}"))
        };
        let read_only = Mapping::map(fds[0].as_fd(), len, false).map_err(map_err)?;
        let arena_id = rustix::fs::fstat(&fds[0])
            .ok()
            .filter(|s| s.st_nlink > 0)
            .map_or((0, 0), |s| (s.st_dev, s.st_ino));
        let writable = if write {
            Some(Mapping::map(fds[1].as_fd(), len, true).map_err(map_err)?)
        } else {
            None
        };
        // The mappings keep the memory; the descriptors are no longer needed.
        drop(fds);
        stream.set_read_timeout(timeout).ok();
        Ok(Inner {
            conn: Mutex::new(Conn {
                stream: std::io::BufReader::with_capacity(64 * 1024, stream),
                timeout,
                next_id: 1,
                out: Vec::with_capacity(256),
                last_reply: std::time::Instant::now(),
            }),
            read_only,
            writable,
            hello,
            arena_id,
            dead: std::sync::atomic::AtomicBool::new(false),
            unread: std::sync::atomic::AtomicBool::new(false),
            leases: Mutex::new(Vec::new()),
        })
    }

    /// The connection requests go to now, without checking it.
    fn inner(&self) -> Arc<Inner> {
        self.state
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The connection for the next request: the current one, or a new one
    /// when the server closed it (see the module comment), which takes over
    /// the leases of the old one if it maps the same arena.
    fn live(&self) -> Result<Arc<Inner>> {
        let mut current = self.state.current.lock().unwrap_or_else(|p| p.into_inner());
        if !current.stale() {
            return Ok(current.clone());
        }
        let timeout = *self.state.timeout.lock().unwrap_or_else(|p| p.into_inner());
        let new = Arc::new(
            Self::open(&self.state.path, self.state.write, timeout).map_err(|e| {
                ClientError::Disconnected(format!(
                    "the connection to arrowpoold ended (it stopped or restarted) and a new one failed: {e}"
                ))
            })?,
        );
        populate_in_background(&new);
        let old = std::mem::replace(&mut *current, new.clone());
        drop(current);
        old.dead.store(true, std::sync::atomic::Ordering::Relaxed);
        Self::adopt(&old, &new);
        Ok(new)
    }

    /// The connection to send a request again on after the server closed
    /// the last one without reading it (`Inner::unread`): the server is
    /// restarting or gone, so a new one is waited for, at most
    /// `UNREAD_RETRY_WAIT`.
    fn live_after_unread(&self) -> Result<Arc<Inner>> {
        let began = std::time::Instant::now();
        loop {
            match self.live() {
                Err(ClientError::Disconnected(_)) if began.elapsed() < UNREAD_RETRY_WAIT => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    /// Leases `old`'s held versions again on `new` when both map the same
    /// arena (a `--state-dir` restart), so the new server keeps their bytes;
    /// a version it lacks at the same place cannot be protected (logged).
    fn adopt(old: &Arc<Inner>, new: &Arc<Inner>) {
        if old.arena_id != new.arena_id || old.arena_id == (0, 0) {
            return;
        }
        let leases: Vec<Arc<Lease>> = old
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .collect();
        for lease in leases {
            let got = Self::request_on(new, Kind::GetVersion, None, |o| {
                crate::protocol::get::GetVersion {
                    version: lease.version,
                    name: lease.name.clone(),
                }
                .encode(o)
            })
            .and_then(|body| Self::decode(body, Located::decode));
            match got {
                Ok(l) if (l.offset, l.length) == (lease.offset, lease.length) => {
                    *lease.holder.lock().unwrap_or_else(|p| p.into_inner()) =
                        (new.clone(), l.object_id);
                    Self::track(new, &lease);
                }
                Ok(l) => {
                    drop(Arc::new(Lease {
                        holder: Mutex::new((new.clone(), l.object_id)),
                        _mapping: new.clone(),
                        name: String::new(),
                        version: 0,
                        offset: 0,
                        length: 0,
                    }));
                    eprintln!(
                        "arrowpool: {:?} version {}, held across a server restart, lies elsewhere on the new server; get it again",
                        lease.name, lease.version
                    );
                }
                Err(e) => eprintln!(
                    "arrowpool: {:?} version {}, held across a server restart, is not on the new server ({e}); get it again: its bytes may be reused",
                    lease.name, lease.version
                ),
            }
        }
    }

    /// Once this client holds a table of a server with a state directory: a
    /// thread that notices the server going away (its socket hangs up) and
    /// connects to the restarted one as soon as it listens, which leases the
    /// held tables again (`adopt`) within the new server's `--quarantine`,
    /// even if this process sends no request meanwhile (an idle reader would
    /// otherwise learn of the restart only on its next request, possibly
    /// after the quarantine, when the bytes of a table it holds that the new
    /// server had only held back may be reused). It blocks in `poll` (no CPU
    /// while the server runs), tries to connect every `WATCH_RETRY` for at most
    /// `WATCH_RECONNECT_FOR` after a hang-up (never starting a server), and ends
    /// with the client or when the server has no state directory any more.
    /// `ARROWPOOL_WATCH=0` turns it off.
    fn watch_for_restart(&self, inner: &Arc<Inner>) {
        use std::sync::atomic::Ordering;
        // Read once per process: this runs on every get.
        static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let off =
            *OFF.get_or_init(|| std::env::var("ARROWPOOL_WATCH").is_ok_and(|v| v.trim() == "0"));
        if off
            || inner.arena_id == (0, 0)
            || self.state.watching.load(Ordering::Relaxed)
            || self.state.watching.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let weak = Arc::downgrade(&self.state);
        let spawned = std::thread::Builder::new()
            .name("arrowpool-watch".into())
            .spawn(move || watch(weak));
        if spawned.is_err() {
            self.state.watching.store(false, Ordering::Release);
        }
    }

    /// Remembers a lease on `inner` (for `adopt`), dropping entries of
    /// released leases as the list grows.
    fn track(inner: &Inner, lease: &Arc<Lease>) {
        let mut list = inner.leases.lock().unwrap_or_else(|p| p.into_inner());
        if list.len() >= 64 && list.len().is_power_of_two() {
            list.retain(|w| w.strong_count() > 0);
        }
        list.push(Arc::downgrade(lease));
    }

    /// What the server said at connect: arena size, memory kind, io driver.
    pub fn server_hello(&self) -> ServerHello {
        self.inner().hello
    }

    /// Sends one request and waits for its reply body.
    /// Sets how long a request waits for its reply (`None`: forever). After a
    /// timeout the connection is closed and later calls fail.
    pub fn set_timeout(&self, timeout: Option<Duration>) {
        *self.state.timeout.lock().unwrap_or_else(|p| p.into_inner()) = timeout;
        let inner = self.inner();
        let mut conn = inner.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.timeout = timeout;
        conn.stream.get_ref().set_read_timeout(timeout).ok();
    }

    fn request(&self, kind: Kind, encode: impl FnMut(&mut Vec<u8>) -> Encoded) -> Result<Vec<u8>> {
        self.request_within(kind, None, encode)
    }

    /// `request` with a reply timeout other than the connection's for this one
    /// request (`Some(None)`: no limit).
    fn request_within(
        &self,
        kind: Kind,
        timeout: Option<Option<Duration>>,
        mut encode: impl FnMut(&mut Vec<u8>) -> Encoded,
    ) -> Result<Vec<u8>> {
        self.request_resending(kind, timeout, &mut encode)
            .map(|(_, body)| body)
    }

    /// One request on the live connection, sent once more on a new one when
    /// the server closed the first without reading it (`Inner::unread`) and
    /// the request names nothing of the old connection (`resendable`).
    /// Returns the connection that answered, with the reply.
    fn request_resending(
        &self,
        kind: Kind,
        timeout: Option<Option<Duration>>,
        mut encode: impl FnMut(&mut Vec<u8>) -> Encoded,
    ) -> Result<(Arc<Inner>, Vec<u8>)> {
        let inner = self.live()?;
        match Self::request_on(&inner, kind, timeout, &mut encode) {
            Err(_)
                if inner.unread.load(std::sync::atomic::Ordering::Relaxed) && resendable(kind) =>
            {
                let inner = self.live_after_unread()?;
                let body = Self::request_on(&inner, kind, timeout, encode)?;
                Ok((inner, body))
            }
            result => result.map(|body| (inner, body)),
        }
    }

    /// One request on the connection `inner`; a failure that leaves its
    /// stream out of step (or the server gone) marks it dead.
    fn request_on(
        inner: &Inner,
        kind: Kind,
        timeout: Option<Option<Duration>>,
        encode: impl FnMut(&mut Vec<u8>) -> Encoded,
    ) -> Result<Vec<u8>> {
        let result = Self::request_locked(inner, kind, timeout, encode);
        if let Err(
            ClientError::Disconnected(_) | ClientError::TimedOut(_) | ClientError::Protocol(_),
        ) = &result
        {
            inner.dead.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    fn request_locked(
        inner: &Inner,
        kind: Kind,
        timeout: Option<Option<Duration>>,
        encode: impl FnMut(&mut Vec<u8>) -> Encoded,
    ) -> Result<Vec<u8>> {
        let mut conn = inner.conn.lock().unwrap_or_else(|p| p.into_inner());
        let limit = timeout.unwrap_or(conn.timeout);
        if timeout.is_some() {
            conn.stream.get_ref().set_read_timeout(limit).ok();
        }
        let result = Self::exchange(&mut conn, &inner.unread, kind, encode);
        if timeout.is_some() {
            let normal = conn.timeout;
            conn.stream.get_ref().set_read_timeout(normal).ok();
        }
        if let Err(ClientError::TimedOut(_)) = result {
            // A late reply would be read as the answer to the next request.
            let _ = conn.stream.get_ref().shutdown(std::net::Shutdown::Both);
            return Err(ClientError::TimedOut(limit.unwrap_or_default()));
        }
        result
    }

    fn exchange(
        conn: &mut Conn,
        unread: &std::sync::atomic::AtomicBool,
        kind: Kind,
        mut encode: impl FnMut(&mut Vec<u8>) -> Encoded,
    ) -> Result<Vec<u8>> {
        let mut out = std::mem::take(&mut conn.out);
        out.clear();
        let mut encoded = Ok(());
        write_frame(&mut out, conn.next_id, kind as u16, 0, |o| {
            encoded = encode(o)
        });
        if encoded.is_ok() && out.len() - HEADER_LEN > REQUEST_BODY_MAX {
            encoded = Err(FrameError::TooLarge {
                len: out.len() - HEADER_LEN,
                max: REQUEST_BODY_MAX,
            });
        }
        if let Err(e) = encoded {
            conn.out = out;
            return Err(ClientError::InvalidRequest(e));
        }
        let id = conn.next_id;
        conn.next_id += 1;
        let sent = conn.stream.get_mut().write_all(&out);
        conn.out = out;
        // EPIPE on the write, ECONNRESET on the read: on a Unix socket, the
        // server closed with our request still queued, unread.
        let noting = |e: std::io::Error, unread_kind| {
            if e.kind() == unread_kind {
                unread.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            e
        };
        if let Err(e) = sent {
            let e = noting(e, std::io::ErrorKind::BrokenPipe);
            return Err(ClientError::Disconnected(e.to_string()));
        }
        if conn.stream.buffer().is_empty() {
            spin_until_readable(conn.stream.get_ref());
        }
        let (header, body) = read_frame_with(&mut conn.stream, |e| {
            io_error(noting(e, std::io::ErrorKind::ConnectionReset))
        })?;
        conn.last_reply = std::time::Instant::now();
        if header.kind == Kind::Shutdown as u16 {
            return Err(ClientError::Disconnected(
                "the server is shutting down".into(),
            ));
        }
        if header.request_id != id {
            return Err(ClientError::Protocol(format!(
                "reply for request {} while waiting for {id}",
                header.request_id
            )));
        }
        if header.kind == Kind::Error as u16 {
            let e = ErrorReply::decode(&body).map_err(|e| ClientError::Protocol(e.to_string()))?;
            return Err(ClientError::Server(e));
        }
        if header.kind != kind.reply() {
            return Err(ClientError::Protocol(format!(
                "reply kind {:#x} to request kind {:?}",
                header.kind, kind
            )));
        }
        Ok(body)
    }

    fn decode<T>(
        body: Vec<u8>,
        f: impl FnOnce(&[u8]) -> Result<T, crate::protocol::FrameError>,
    ) -> Result<T> {
        f(&body).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    fn json<T: serde::de::DeserializeOwned>(body: Vec<u8>) -> Result<T> {
        serde_json::from_slice(&body)
            .map_err(|e| ClientError::Protocol(format!("bad JSON reply: {e}")))
    }

    pub fn ping(&self) -> Result<()> {
        self.request(Kind::Ping, |_| Ok(())).map(|_| ())
    }

    /// Creates an object, lets `write` fill it in the arena, then seals it.
    /// Aborts on any failure so nothing half-written is ever visible.
    fn put_object(
        &self,
        name: &str,
        kind: ObjectKind,
        size: u64,
        write: impl FnOnce(&mut [u8]) -> Result<usize>,
    ) -> Result<(Sealed, u64)> {
        let mut pending = Vec::new();
        let result = (|| {
            let (object_id, written) = self.write_pending(name, kind, size, &mut pending, write)?;
            let body = self.request(Kind::Seal, |o| {
                Seal {
                    object_id,
                    length: written,
                }
                .encode(o);
                Ok(())
            })?;
            Ok((Self::decode(body, Sealed::decode)?, written))
        })();
        if result.is_err() {
            self.abort_all(&pending);
        }
        result
    }

    /// Gives up pending chunks after a failed put (an id the server already
    /// dropped is just an error, ignored).
    fn abort_all(&self, ids: &[u64]) {
        for &object_id in ids {
            let abort = Abort { object_id };
            let _ = self.request(Kind::Abort, |o| {
                abort.encode(o);
                Ok(())
            });
        }
    }

    /// Puts a table as the new version of `name`. Columns whose buffers
    /// already lie in the arena (arrays of a table from `get`, unchanged) are
    /// referenced, not copied: only the other columns are written, straight
    /// into the shared arena (the one copy). See `put_with`.
    pub fn put(&self, name: &str, schema: &Schema, batches: &[RecordBatch]) -> Result<PutInfo> {
        self.put_with(name, schema, batches, PutOptions::default())
    }

    /// `put` with options: `if_version` publishes only if `name` is still at
    /// that version (else `ErrorCode::VersionConflict`, nothing published).
    ///
    /// A column of a batch is reused when every non-empty buffer of its array
    /// (children included, dictionary values excluded) lies in the arena and
    /// the server finds a live version with exactly that column; new columns
    /// are written as IPC files, one per set of batches with the same new
    /// columns. If the server finds no such column (the array was sliced
    /// inside a batch: arrow-rs moves a slice's buffer pointers, so the client
    /// cannot name the column it came from; or it was rebuilt over the same
    /// memory), the put falls back to writing the whole table. Slices on batch
    /// boundaries are shared; the Python client also shares slices inside a
    /// batch (`Source::Slice`).
    pub fn put_with(
        &self,
        name: &str,
        schema: &Schema,
        batches: &[RecordBatch],
        options: PutOptions,
    ) -> Result<PutInfo> {
        let sources: Vec<Vec<InArena>> = batches
            .iter()
            .map(|b| {
                b.columns()
                    .iter()
                    .map(|c| self.arena_buffers(&c.to_data()))
                    .collect()
            })
            .collect();
        let reuses = sources.iter().flatten().any(Option::is_some);
        if !reuses && options.if_version.is_none() {
            return self.put_whole(name, schema, batches);
        }
        match self.publish_parts(name, schema, batches, &sources, options) {
            Err(e) if reuses && e.code() == Some(ErrorCode::InvalidData) => {
                let none = vec![vec![None; schema.fields().len()]; batches.len()];
                self.publish_parts(name, schema, batches, &none, options)
            }
            r => r,
        }
    }

    /// The arena offsets and lengths of every non-empty buffer of `data`
    /// (children included, dictionary values excluded), if all lie in the
    /// arena and none is sliced by an array offset.
    fn arena_buffers(&self, data: &arrow_data::ArrayData) -> Option<Vec<(u64, u64)>> {
        fn walk(data: &arrow_data::ArrayData, map: &Mapping, out: &mut Vec<(u64, u64)>) -> bool {
            if data.offset() != 0 {
                return false;
            }
            let base = map.as_ptr() as usize;
            let mut add = |ptr: *const u8, len: usize| -> bool {
                if len == 0 {
                    return true;
                }
                let at = ptr as usize;
                let inside = at >= base && at + len <= base + map.len();
                if inside {
                    out.push(((at - base) as u64, len as u64));
                }
                inside
            };
            if let Some(n) = data.nulls() {
                let b = n.buffer();
                if !add(b.as_ptr(), b.len()) {
                    return false;
                }
            }
            for b in data.buffers() {
                if !add(b.as_ptr(), b.len()) {
                    return false;
                }
            }
            if matches!(data.data_type(), arrow_schema::DataType::Dictionary(_, _)) {
                return true;
            }
            data.child_data().iter().all(|c| walk(c, map, out))
        }
        let mut out = Vec::new();
        (walk(data, &self.inner().read_only, &mut out) && !out.is_empty()).then_some(out)
    }

    /// The publish path: new columns as IPC files in pending chunks, a draft
    /// naming every column's source, then `publish`.
    fn publish_parts(
        &self,
        name: &str,
        schema: &Schema,
        batches: &[RecordBatch],
        sources: &[Vec<InArena>],
        options: PutOptions,
    ) -> Result<PutInfo> {
        use crate::protocol::draft::{Draft, DraftBatch, Source};
        // Batches with the same new columns share a file. Past a few distinct
        // sets (each a pending chunk; a connection may hold 64), the batches
        // with new columns are written whole, in one file.
        let mut sources = sources.to_vec();
        let distinct: std::collections::HashSet<Vec<bool>> = sources
            .iter()
            .map(|cols| cols.iter().map(Option::is_none).collect())
            .filter(|new: &Vec<bool>| new.contains(&true))
            .collect();
        if distinct.len() > FILES_PER_PUT_MAX {
            for cols in sources
                .iter_mut()
                .filter(|cols| cols.iter().any(Option::is_none))
            {
                cols.iter_mut().for_each(|c| *c = None);
            }
        }
        let sources = &sources[..];
        let mut groups: Vec<(Vec<usize>, Vec<usize>)> = Vec::new(); // (new columns, batches)
        for (b, cols) in sources.iter().enumerate() {
            let new: Vec<usize> = (0..cols.len()).filter(|&c| cols[c].is_none()).collect();
            if new.is_empty() {
                continue;
            }
            match groups.iter_mut().find(|(g, _)| *g == new) {
                Some((_, bs)) => bs.push(b),
                None => groups.push((new, vec![b])),
            }
        }
        let mut pending: Vec<u64> = Vec::new();
        let result = (|| {
            let mut chunks = Vec::with_capacity(groups.len());
            let mut written = 0u64;
            for (cols, bs) in &groups {
                let sub = Arc::new(schema.project(cols)?);
                let parts = bs
                    .iter()
                    .map(|&b| batches[b].project(cols))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                let bound = crate::ipc::file_size_bound(&sub, &parts) as u64;
                let (id, len) =
                    self.write_pending(name, ObjectKind::Table, bound, &mut pending, |dest| {
                        Ok(crate::ipc::write_file(dest, &sub, &parts)?)
                    })?;
                written += len;
                chunks.push((id, len));
            }
            let mut draft_batches = Vec::with_capacity(batches.len());
            for (b, batch) in batches.iter().enumerate() {
                let columns = (0..batch.num_columns())
                    .map(|c| match &sources[b][c] {
                        Some(buffers) => Source::Existing {
                            buffers: buffers.clone(),
                        },
                        None => {
                            let g = groups
                                .iter()
                                .position(|(_, bs)| bs.contains(&b))
                                .expect("a batch with new columns has a group");
                            let (cols, bs) = &groups[g];
                            Source::New {
                                chunk: g as u32,
                                batch: bs.iter().position(|&x| x == b).expect("in its group")
                                    as u32,
                                column: cols.iter().position(|&x| x == c).expect("a new column")
                                    as u32,
                            }
                        }
                    })
                    .collect();
                draft_batches.push(DraftBatch {
                    rows: batch.num_rows() as u64,
                    columns,
                });
            }
            let draft = Draft {
                schema: schema_message(schema)?,
                chunks,
                batches: draft_batches,
            };
            let mut bytes = Vec::new();
            draft.encode(&mut bytes);
            let (draft_id, draft_len) = self.write_pending(
                name,
                ObjectKind::Bytes,
                bytes.len() as u64,
                &mut pending,
                |dest| {
                    let n = bytes.len();
                    dest.get_mut(..n)
                        .ok_or_else(|| {
                            ClientError::Protocol(
                                "the server granted too few bytes for a draft".into(),
                            )
                        })?
                        .copy_from_slice(&bytes);
                    Ok(n)
                },
            )?;
            let publish = crate::protocol::publish::Publish {
                if_version: options.if_version,
                draft_id,
                draft_len,
                name: name.to_owned(),
            };
            let body = self.request(Kind::Publish, |o| publish.encode(o))?;
            let sealed = Self::decode(body, Sealed::decode)?;
            Ok(PutInfo {
                version: sealed.version,
                rows: sealed.rows,
                bytes: written,
            })
        })();
        if result.is_err() {
            // The server aborts what a refused publish named; anything it did
            // not get to see is aborted here.
            self.abort_all(&pending);
        }
        result
    }

    /// Creates a pending chunk and fills it, without sealing; returns its id
    /// and the bytes written, and records the id in `pending`.
    fn write_pending(
        &self,
        name: &str,
        kind: ObjectKind,
        size: u64,
        pending: &mut Vec<u64>,
        write: impl FnOnce(&mut [u8]) -> Result<usize>,
    ) -> Result<(u64, u64)> {
        // The chunk is written through the mapping of the connection that
        // created it, whatever connection later requests use.
        let inner = self.live()?;
        let writable = inner.writable.as_ref().ok_or(ClientError::ReadOnly)?;
        let body = Self::request_on(&inner, Kind::Create, None, |o| {
            Create {
                object_kind: kind,
                size,
                name: name.to_owned(),
            }
            .encode(o)
        })?;
        let created = Self::decode(body, Created::decode)?;
        pending.push(created.object_id);
        writable.populate_write_once_parallel(created.offset, created.capacity);
        // SAFETY: the server reserved [offset, offset+capacity) for this pending
        // chunk on our connection; no one else writes or reads it before it is
        // sealed, published or aborted.
        let dest = unsafe { writable.slice_mut(created.offset, created.capacity) }.ok_or(
            ClientError::OutOfBounds {
                offset: created.offset,
                length: created.capacity,
            },
        )?;
        let written = write(dest)?;
        Ok((created.object_id, written as u64))
    }

    /// The whole table as one IPC file in one chunk, sealed. A large table is
    /// copied by several threads (runs of batches each, `ipc::write`): one
    /// thread's copy is bounded by memory latency, not bandwidth; and with
    /// streaming stores (`ipc::stream_copy`), even on one thread (one batch,
    /// or `ARROWPOOL_COPY_THREADS=1`).
    fn put_whole(&self, name: &str, schema: &Schema, batches: &[RecordBatch]) -> Result<PutInfo> {
        let threads = copy_threads();
        let bound = crate::ipc::file_size_bound(schema, batches);
        let (sealed, bytes) = if bound >= PARALLEL_COPY_BYTES_MIN {
            let layout = crate::ipc::write::layout(schema, batches)?;
            let size = layout.file_len() as u64;
            self.put_object(name, ObjectKind::Table, size, |dest| {
                let (n, _) =
                    crate::ipc::write::write(dest, schema, batches, &layout, threads, &|_| {})?;
                Ok(n)
            })?
        } else {
            self.put_object(name, ObjectKind::Table, bound as u64, |dest| {
                Ok(crate::ipc::write_file(dest, schema, batches)?)
            })?
        };
        Ok(PutInfo {
            version: sealed.version,
            rows: sealed.rows,
            bytes,
        })
    }

    /// Puts an Arrow IPC file written elsewhere (any Arrow implementation, any
    /// buffer alignment that is a multiple of 8, uncompressed) as the new version
    /// of table `name`, copying its bytes once. The server checks it at seal like
    /// any table.
    pub fn put_ipc_file(&self, name: &str, file: &[u8]) -> Result<PutInfo> {
        self.put_copy(name, ObjectKind::Table, file)
    }

    /// Puts opaque bytes (a pickle, JSON...) as the new version of `name`.
    pub fn put_bytes(&self, name: &str, data: &[u8]) -> Result<PutInfo> {
        self.put_copy(name, ObjectKind::Bytes, data)
    }

    fn put_copy(&self, name: &str, kind: ObjectKind, data: &[u8]) -> Result<PutInfo> {
        let (sealed, bytes) = self.put_object(name, kind, data.len() as u64, |dest| {
            let Some(dest) = dest.get_mut(..data.len()) else {
                return Err(ClientError::Protocol(format!(
                    "the server granted {} bytes for a {}-byte object",
                    dest.len(),
                    data.len()
                )));
            };
            dest.copy_from_slice(data);
            Ok(data.len())
        })?;
        Ok(PutInfo {
            version: sealed.version,
            rows: sealed.rows,
            bytes,
        })
    }

    /// Takes a lease on the current version of `name` and wraps its bytes in an
    /// Arrow buffer that releases the lease when dropped.
    fn lease(&self, name: &str, version: Option<u64>) -> Result<(Located, Buffer)> {
        // The buffer lies in the mapping of the connection that got the lease.
        let (inner, body) = match version {
            None => self.request_resending(Kind::Get, None, |o| {
                Get {
                    name: name.to_owned(),
                }
                .encode(o)
            })?,
            Some(version) => self.request_resending(Kind::GetVersion, None, |o| {
                crate::protocol::get::GetVersion {
                    version,
                    name: name.to_owned(),
                }
                .encode(o)
            })?,
        };
        let located = Self::decode(body, Located::decode)?;
        let lease = Arc::new(Lease {
            holder: Mutex::new((inner.clone(), located.object_id)),
            _mapping: inner.clone(),
            name: name.to_owned(),
            version: located.version,
            offset: located.offset,
            length: located.length,
        });
        Self::track(&inner, &lease);
        self.watch_for_restart(&inner);
        let bytes = inner
            .read_only
            .slice(located.offset, located.length)
            .ok_or(ClientError::OutOfBounds {
                offset: located.offset,
                length: located.length,
            })?;
        let ptr = NonNull::new(bytes.as_ptr() as *mut u8).unwrap_or(NonNull::dangling());
        // SAFETY: `ptr..ptr+len` lies in our read-only mapping (checked by `slice`).
        // The owner `lease` holds an Arc to the mapping, so the memory outlives the
        // buffer, and holds the server lease, so the bytes are not freed or reused
        // while any buffer exists. Sealed objects are never written.
        let buffer = unsafe { Buffer::from_custom_allocation(ptr, bytes.len(), lease) };
        Ok((located, buffer))
    }

    /// The arena offset of `ptr` (a buffer of a table from `get`), if it lies
    /// in this client's mapping of the arena: what a draft names existing
    /// buffers by, and a way to check that an array is zero-copy.
    pub fn arena_offset(&self, ptr: *const u8) -> Option<u64> {
        let inner = self.inner();
        let map = &inner.read_only;
        let (base, at) = (map.as_ptr() as usize, ptr as usize);
        (at >= base && at < base + map.len()).then(|| (at - base) as u64)
    }

    /// Gets the current version of `name`, zero-copy.
    pub fn get(&self, name: &str) -> Result<Table> {
        self.get_projected(name, None, None)
    }

    /// Gets version `version` of `name`, zero-copy, if the server keeps it: the
    /// current version or one of the `--keep-versions` latest (a version that
    /// only some reader's lease keeps alive is not found by number). Else
    /// `ErrorCode::NotFound`, naming the versions kept.
    pub fn get_version(&self, name: &str, version: u64) -> Result<Table> {
        self.get_projected(name, None, Some(version))
    }

    /// Gets only the named columns, zero-copy; other columns are never touched.
    pub fn get_columns(&self, name: &str, columns: &[&str]) -> Result<Table> {
        self.get_projected(name, Some(columns), None)
    }

    fn get_projected(
        &self,
        name: &str,
        columns: Option<&[&str]>,
        version: Option<u64>,
    ) -> Result<Table> {
        let (located, buffer) = self.lease(name, version)?;
        if located.object_kind != ObjectKind::Table {
            return Err(ClientError::Protocol(format!(
                "{name:?} holds bytes, not a table; use get_bytes"
            )));
        }
        let projection = match columns {
            None => None,
            Some(cols) => {
                let schema = crate::ipc::file_schema(buffer.as_slice())?;
                Some(
                    cols.iter()
                        .map(|c| schema.index_of(c))
                        .collect::<Result<Vec<_>, _>>()?,
                )
            }
        };
        let (schema, batches) = crate::ipc::open_file(&buffer, projection)?;
        Ok(Table {
            schema,
            batches,
            version: located.version,
            object_id: located.object_id,
            rows: located.rows,
        })
    }

    /// Gets a bytes object, zero-copy: the buffer holds the lease.
    pub fn get_bytes(&self, name: &str) -> Result<Buffer> {
        let (located, buffer) = self.lease(name, None)?;
        if located.object_kind != ObjectKind::Bytes {
            return Err(ClientError::Protocol(format!(
                "{name:?} holds a table; use get"
            )));
        }
        Ok(buffer)
    }

    pub fn delete(&self, name: &str) -> Result<()> {
        self.request(Kind::Delete, |o| {
            crate::protocol::delete::Delete {
                name: name.to_owned(),
            }
            .encode(o)
        })
        .map(|_| ())
    }

    pub fn list(&self) -> Result<Vec<ListEntry>> {
        Self::json(self.request(Kind::List, |_| Ok(()))?)
    }

    pub fn stats(&self) -> Result<StatsReply> {
        Self::json(self.request(Kind::Stats, |_| Ok(()))?)
    }

    /// Waits until `name` has a version newer than `after`; returns it.
    pub fn wait_for_version(&self, name: &str, after: u64, timeout: Duration) -> Result<u64> {
        let timeout_ms = timeout
            .as_millis()
            .min(crate::protocol::wait::TIMEOUT_MS_MAX as u128) as u32;
        // The server answers by `timeout`; allow it a margin before giving up.
        let limit = Some(Some(timeout + Duration::from_secs(10)));
        let body = self.request_within(Kind::Wait, limit, |o| {
            crate::protocol::wait::Wait {
                after,
                timeout_ms,
                name: name.to_owned(),
            }
            .encode(o)
        })?;
        Ok(Self::decode(body, crate::protocol::wait::Version::decode)?.version)
    }

    /// Asks the server to read Parquet at `path` (a file or a directory) into `name`.
    pub fn ingest(&self, path: &str, name: &str, columns: &[&str]) -> Result<IngestReply> {
        self.ingest_with(path, name, columns, &[])
    }

    /// `ingest` with object store settings for this ingest only (`options`:
    /// `("aws_access_key_id", ...)`, `("aws_region", ...)`, ...; the keys of
    /// the `object_store` crate's builders, see docs/INGEST.md). They take
    /// precedence over the server's environment.
    pub fn ingest_with(
        &self,
        path: &str,
        name: &str,
        columns: &[&str],
        options: &[(&str, &str)],
    ) -> Result<IngestReply> {
        // Ingests of large files take as long as they take.
        let body = self.request_within(Kind::Ingest, Some(None), |o| {
            Ingest {
                name: name.to_owned(),
                path: path.to_owned(),
                columns: columns.iter().map(|c| c.to_string()).collect(),
                options: options
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            }
            .encode(o)
        })?;
        Self::json(body)
    }

    /// Sends raw bytes (tests of malformed input) and reads one reply frame.
    #[doc(hidden)]
    pub fn raw_exchange(&self, bytes: &[u8]) -> Result<(Header, Vec<u8>)> {
        let inner = self.live()?;
        let mut conn = inner.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.stream
            .get_mut()
            .write_all(bytes)
            .map_err(|e| ClientError::Disconnected(e.to_string()))?;
        read_frame(&mut conn.stream)
    }

    /// The address range of the read-only mapping, for zero-copy checks.
    pub fn mapping_range(&self) -> std::ops::Range<usize> {
        let inner = self.inner();
        let start = inner.read_only.as_ptr() as usize;
        start..start + inner.read_only.len()
    }
}

/// Whether a request the server did not read may go to a new connection:
/// not one that names this connection's pending objects or leases (seal,
/// abort, publish, release), which a new server would not know.
fn resendable(kind: Kind) -> bool {
    !matches!(
        kind,
        Kind::Seal | Kind::Abort | Kind::Publish | Kind::Release
    )
}

/// A writer's page tables for the memory the server has already allocated,
/// built on a thread of its own shortly after connecting (`Mapping::
/// populate_resident_range`), so that the first put into it copies at memcpy
/// speed. The thread waits `POPULATE_DELAY` first (a short-lived connection,
/// such as a CLI command's, never pays), runs at the lowest priority (it uses
/// idle CPU, not the caller's), stops after `POPULATE_AT_CONNECT_BYTES_MAX`,
/// and holds no strong reference: it stops when the connection goes.
/// `ARROWPOOL_POPULATE_AT_CONNECT=0` turns it off.
fn populate_in_background(inner: &Arc<Inner>) {
    if inner.writable.is_none()
        || std::env::var("ARROWPOOL_POPULATE_AT_CONNECT").is_ok_and(|v| v.trim() == "0")
    {
        return;
    }
    let weak = Arc::downgrade(inner);
    let _ = std::thread::Builder::new()
        .name("arrowpool-populate".into())
        .spawn(move || {
            // SAFETY: setpriority only changes the nice value of the thread
            // named (this one); no memory is passed.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19);
            }
            std::thread::sleep(POPULATE_DELAY);
            let mapping_len = match weak.upgrade() {
                Some(inner) => inner.writable.as_ref().map_or(0, Mapping::len) as u64,
                None => return,
            };
            // 64 MiB at a time, each under a fresh upgrade: a dropped client
            // stops the walk at the next step.
            let step = 64u64 << 20;
            let (mut at, mut populated) = (0u64, 0u64);
            while at < mapping_len && populated < POPULATE_AT_CONNECT_BYTES_MAX {
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                if let Some(w) = &inner.writable {
                    populated += w.populate_resident_range(at, step);
                }
                at += step;
            }
        });
}

/// The body of the `watch_for_restart` thread.
fn watch(state: std::sync::Weak<State>) {
    use std::sync::atomic::Ordering;
    loop {
        let Some(strong) = state.upgrade() else {
            return;
        };
        let inner = strong
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if inner.arena_id == (0, 0) {
            strong.watching.store(false, Ordering::Release);
            return;
        }
        drop(strong);
        // A second descriptor of the same socket, polled without the
        // connection's lock (requests go on meanwhile).
        let Ok(probe) = inner
            .conn
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stream
            .get_ref()
            .try_clone()
        else {
            std::thread::sleep(WATCH_RETRY);
            continue;
        };
        // Replies make the socket readable, never hung up: only the server
        // going away wakes this. The timeout notices a dropped client.
        let hung_up = loop {
            let mut fds = [rustix::event::PollFd::new(
                &probe,
                rustix::event::PollFlags::RDHUP,
            )];
            let timeout = rustix::event::Timespec {
                tv_sec: 1,
                tv_nsec: 0,
            };
            match rustix::event::poll(&mut fds, Some(&timeout)) {
                Ok(n) if n > 0 => break true,
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(_) => {
                    std::thread::sleep(WATCH_RETRY);
                    break false;
                }
            }
            let replaced = match state.upgrade() {
                Some(s) => {
                    !Arc::ptr_eq(&s.current.lock().unwrap_or_else(|p| p.into_inner()), &inner)
                }
                None => return,
            };
            if replaced {
                break false;
            }
        };
        drop(probe);
        if !hung_up {
            continue;
        }
        inner.dead.store(true, Ordering::Relaxed);
        let began = std::time::Instant::now();
        loop {
            let Some(strong) = state.upgrade() else {
                return;
            };
            let client = Client { state: strong };
            if client.live().is_ok_and(|new| !Arc::ptr_eq(&new, &inner)) {
                break;
            }
            if began.elapsed() > WATCH_RECONNECT_FOR {
                // The next lease starts a watcher again.
                client.state.watching.store(false, Ordering::Release);
                return;
            }
            drop(client);
            std::thread::sleep(if began.elapsed() < WATCH_FAST_FOR {
                WATCH_RETRY
            } else {
                WATCH_RETRY_SLOW
            });
        }
    }
}

/// How often the restart watcher tries to connect after the server went
/// away: often at first (a restart takes milliseconds to seconds), then
/// slowly (a server stopped for good costs a failed connect per retry).
const WATCH_RETRY: Duration = Duration::from_millis(50);
const WATCH_RETRY_SLOW: Duration = Duration::from_millis(500);
const WATCH_FAST_FOR: Duration = Duration::from_secs(10);
/// How long it tries before leaving the reconnection to the next request.
const WATCH_RECONNECT_FOR: Duration = Duration::from_secs(600);

/// How long after connecting a writer starts building its page tables.
const POPULATE_DELAY: Duration = Duration::from_millis(200);
/// Most bytes of existing pages a writer builds page tables for at connect
/// (`--preallocate auto` allocates at most 4 GiB).
const POPULATE_AT_CONNECT_BYTES_MAX: u64 = 4 << 30;

/// How long a request the server closed its connection on without reading
/// it waits for a server to send it again to (a restart takes tens of ms).
const UNREAD_RETRY_WAIT: Duration = Duration::from_secs(2);

/// Requests sent this soon after the last reply skip the check that the
/// server closed the connection.
const STALE_CHECK_AFTER: Duration = Duration::from_millis(1);

/// Tables smaller than this are copied by one thread with arrow's writer:
/// starting threads costs more than it saves.
const PARALLEL_COPY_BYTES_MIN: usize = 64 << 20;
/// Most threads copying one put.
const COPY_THREADS_MAX: usize = 4;

/// Threads that copy a large put: `ARROWPOOL_COPY_THREADS` (1 = one thread,
/// as before), else the cores this process may use, at most
/// `COPY_THREADS_MAX` (the copy saturates memory bandwidth before that).
fn copy_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| {
        std::env::var("ARROWPOOL_COPY_THREADS")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map_or(1, |n| n.get())
                    .min(COPY_THREADS_MAX)
            })
            .max(1)
    })
}

/// How long a request polls for its reply before sleeping in `read`.
const SPIN_MICROS: u64 = 40;

/// Polls the socket briefly before the blocking read: a reply usually arrives
/// within tens of microseconds, and waking a sleeping thread costs about as
/// much again on virtual machines. Yields between polls so a server thread on
/// the same core can run.
fn spin_until_readable(stream: &UnixStream) {
    let start = std::time::Instant::now();
    let mut fds = [rustix::event::PollFd::new(
        stream,
        rustix::event::PollFlags::IN,
    )];
    while start.elapsed() < Duration::from_micros(SPIN_MICROS) {
        if rustix::event::poll(&mut fds, Some(&rustix::event::Timespec::default())).unwrap_or(1) > 0
        {
            return;
        }
        std::thread::yield_now();
    }
}

/// Maps a socket error: a read timeout is `TimedOut`, anything else a lost connection.
fn io_error(e: std::io::Error) -> ClientError {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            ClientError::TimedOut(Duration::ZERO)
        }
        _ => ClientError::Disconnected(e.to_string()),
    }
}

fn read_frame(stream: &mut impl Read) -> Result<(Header, Vec<u8>)> {
    read_frame_with(stream, io_error)
}

/// `read_frame`, turning socket errors into client errors with `on_io`.
fn read_frame_with(
    stream: &mut impl Read,
    mut on_io: impl FnMut(std::io::Error) -> ClientError,
) -> Result<(Header, Vec<u8>)> {
    let mut head = [0u8; HEADER_LEN];
    stream.read_exact(&mut head).map_err(&mut on_io)?;
    let header =
        Header::parse(&head, REPLY_BODY_MAX).map_err(|e| ClientError::Protocol(e.to_string()))?;
    let mut body = vec![0u8; header.len as usize];
    stream.read_exact(&mut body).map_err(&mut on_io)?;
    Ok((header, body))
}
/// The client side of the handshake on a connected socket: sends the hello
/// (asking for write access or not), reads the server's answer and the arena
/// descriptors (the read-only one, then the writable one for writers), and
/// turns a refusal into an error that says why. Used by `Client`, by loadgen's
/// raw connections and by the tests, so there is one implementation.
pub fn handshake(stream: &UnixStream, write: bool) -> Result<(ServerHello, Vec<OwnedFd>)> {
    let hello = ClientHello {
        version: PROTOCOL_VERSION,
        flags: if write { FLAG_WRITE } else { 0 },
    };
    // A server that refuses (connection limit) answers and closes without
    // reading our hello, so the write may fail with EPIPE while its answer
    // is waiting to be read: read it before reporting the write error.
    let sent = (&*stream).write_all(&hello.encode());
    let mut reply = [0u8; SERVER_HELLO_LEN];
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut got = 0;
    while got < SERVER_HELLO_LEN {
        let n = match crate::sys::recv_with_fds(stream.as_fd(), &mut reply[got..], &mut fds) {
            Ok(n) => n,
            Err(e) => return Err(ClientError::Handshake(sent.err().unwrap_or(e).to_string())),
        };
        if n == 0 {
            let why = match sent {
                Err(e) => e.to_string(),
                Ok(()) => "server closed the connection during the handshake".into(),
            };
            return Err(ClientError::Handshake(why));
        }
        got += n;
    }
    let hello = ServerHello::decode(&reply)
        .ok_or_else(|| ClientError::Handshake("bad server magic".into()))?;
    if hello.status != STATUS_OK {
        let why = match hello.status {
            STATUS_TOO_MANY_CONNECTIONS => "too many connections; raise --max-connections",
            STATUS_BAD_VERSION => "protocol version not supported by this server",
            crate::protocol::handshake::STATUS_WRITE_REFUSED => {
                "write access refused: this user is not in the server's --writers-group; \
                 connect read-only to read"
            }
            crate::protocol::handshake::STATUS_ACCESS_REFUSED => {
                "this user is in neither the server's --readers-group nor its --writers-group"
            }
            _ => "bad hello",
        };
        return Err(ClientError::Handshake(format!(
            "server refused the connection (status {}: {why})",
            hello.status
        )));
    }
    let want = if write { 2 } else { 1 };
    if fds.len() != want {
        return Err(ClientError::Handshake(format!(
            "expected {want} descriptors, got {}",
            fds.len()
        )));
    }
    Ok((hello, fds))
}
