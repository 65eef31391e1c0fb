//! State shared by all cores: the arena, the object table, counters.
//! (One `unsafe`: the server-side put writes into a range it just reserved.)

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::arena::Arena;
use crate::protocol::seal::Sealed;
use crate::protocol::stats::StatsReply;
use crate::protocol::{ErrorCode, ErrorReply, ObjectKind};
use crate::store::{ConnId, Store, StoreError};

use super::{Config, IoDriver};

#[derive(Debug)]
pub struct Shared {
    pub arena: Arena,
    /// The object table. A std Mutex: every critical section is a few map
    /// operations (no I/O, no await), far shorter than a syscall, so a lock is
    /// cheaper than message passing until the small-ops benchmark says otherwise.
    store: Mutex<Store>,
    /// Notified on every seal and at shutdown; `wait` requests listen to it.
    pub versions_changed: event_listener::Event,
    pub shutting_down: AtomicBool,
    pub socket_path: PathBuf,
    pub io_driver: IoDriver,
    pub threads: usize,
    pub max_connections: usize,
    next_conn: AtomicU64,
    /// Connections that have not finished their handshake (bounded by
    /// `HANDSHAKES_MAX`, apart from `max_connections`).
    handshaking: AtomicUsize,
    /// Open connections' socket fds, so shutdown can wake them.
    conns: Mutex<HashMap<ConnId, RawFd>>,
}

impl Shared {
    pub fn new(arena: Arena, config: &Config, io_driver: IoDriver, threads: usize) -> Shared {
        let large_align = arena.kind().large_object_align();
        let store = Store::new(arena.len(), large_align);
        Shared {
            arena,
            store: Mutex::new(store),
            versions_changed: event_listener::Event::new(),
            shutting_down: AtomicBool::new(false),
            socket_path: config.socket.clone(),
            io_driver,
            threads,
            max_connections: config.max_connections,
            next_conn: AtomicU64::new(1),
            handshaking: AtomicUsize::new(0),
            conns: Mutex::new(HashMap::new()),
        }
    }

    /// Locks the object table. A panic while holding it cannot leave it
    /// half-updated in a way later calls trip on (each operation checks its
    /// inputs first), so a poisoned lock is recovered.
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for one handshake in progress, freed when dropped; `None` when
    /// `HANDSHAKES_MAX` handshakes are already in progress.
    pub fn begin_handshake(&self) -> Option<HandshakeSlot<'_>> {
        let previous = self.handshaking.fetch_add(1, Ordering::AcqRel);
        let slot = HandshakeSlot { shared: self };
        (previous < HANDSHAKES_MAX).then_some(slot)
    }

    /// Registers a new connection; `None` when at the connection limit.
    pub fn register(&self, fd: RawFd) -> Option<ConnId> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if conns.len() >= self.max_connections {
            return None;
        }
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        conns.insert(id, fd);
        self.store().connect(id);
        Some(id)
    }

    /// Forgets a connection: its leases are released and unsealed creates aborted.
    /// Must run before its fd is closed.
    pub fn unregister(&self, conn: ConnId) {
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&conn);
        self.store().disconnect(conn);
    }

    pub fn connection_count(&self) -> usize {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Shuts down the read side of every connection: each connection's task sees
    /// end-of-stream, sends the shutdown notice after its last reply, and closes.
    pub fn close_all_connections(&self) {
        let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        for &fd in conns.values() {
            crate::sys::shutdown_read(fd);
        }
    }

    /// A server-side put: reserves `size` bytes, lets `write` fill them through
    /// the server's own mapping, then seals. Used by ingest.
    pub fn put_with<E: std::fmt::Display>(
        &self,
        conn: ConnId,
        name: &str,
        kind: ObjectKind,
        size: u64,
        write: impl FnOnce(&mut [u8]) -> Result<usize, E>,
    ) -> Result<Sealed, ErrorReply> {
        let created = self
            .store()
            .create(conn, name, kind, size)
            .map_err(store_error)?;
        let result = (|| {
            self.arena
                .ensure_allocated(created.offset, created.capacity)
                .map_err(|e| ErrorReply::new(ErrorCode::OutOfMemory, e.to_string()))?;
            // SAFETY: the range belongs to the pending object we just created on this
            // connection; nobody else can see or write it until we seal it.
            let dest = unsafe {
                self.arena
                    .mapping()
                    .slice_mut(created.offset, created.capacity)
            }
            .ok_or_else(|| ErrorReply::new(ErrorCode::Internal, "object outside the arena"))?;
            let written =
                write(dest).map_err(|e| ErrorReply::new(ErrorCode::Internal, e.to_string()))?;
            let rows = if kind == ObjectKind::Table {
                let bytes = self
                    .arena
                    .mapping()
                    .slice(created.offset, written as u64)
                    .ok_or_else(|| {
                        ErrorReply::new(ErrorCode::Internal, "written object outside the arena")
                    })?;
                crate::ipc::check_file(bytes)
                    .map_err(|e| ErrorReply::new(ErrorCode::InvalidData, e.to_string()))?
                    .rows
            } else {
                0
            };
            self.store()
                .seal(conn, created.object_id, written as u64, rows)
                .map_err(store_error)
        })();
        match result {
            Ok(sealed) => {
                self.versions_changed.notify(usize::MAX);
                Ok(sealed)
            }
            Err(e) => {
                let _ = self.store().abort(conn, created.object_id);
                Err(e)
            }
        }
    }

    pub fn stats(&self) -> StatsReply {
        let s = self.store().stats();
        StatsReply {
            memory_kind: self.arena.kind().as_str().into(),
            io_driver: self.io_driver.as_str().into(),
            threads: self.threads as u64,
            arena_bytes: s.arena_bytes,
            used_bytes: s.used_bytes,
            free_bytes: s.free_bytes,
            held_bytes: s.held_bytes,
            pending_bytes: s.pending_bytes,
            largest_free_bytes: s.largest_free_bytes,
            objects: s.objects,
            names: s.names,
            leases: s.leases,
            connections: self.connection_count() as u64,
            evictions: s.evictions,
            puts: s.puts,
            gets: s.gets,
        }
    }
}

/// Handshakes that may be in progress at once. Connections count against
/// `--max-connections` only once their hello has arrived.
pub const HANDSHAKES_MAX: usize = 256;

/// One handshake in progress (see `Shared::begin_handshake`).
pub struct HandshakeSlot<'a> {
    shared: &'a Shared,
}

impl Drop for HandshakeSlot<'_> {
    fn drop(&mut self) {
        self.shared.handshaking.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Maps a store error to its protocol error reply.
pub fn store_error(e: StoreError) -> ErrorReply {
    let code = match &e {
        StoreError::NotFound { .. } => ErrorCode::NotFound,
        StoreError::OutOfMemory { .. } => ErrorCode::OutOfMemory,
        StoreError::InvalidObject { .. } | StoreError::LengthTooLarge { .. } => {
            ErrorCode::InvalidObject
        }
        StoreError::LimitExceeded(_) => ErrorCode::LimitExceeded,
    };
    ErrorReply::new(code, e.to_string())
}
