//! State shared by all cores: the pool (arena + object table), the open
//! connections, and the server's settings.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::pool::Pool;
use crate::protocol::stats::StatsReply;
use crate::store::ConnId;

use super::{Config, IoDriver};

#[derive(Debug)]
pub struct Shared {
    /// The arena and the object table (shared with ingest and the blocking pool).
    pub pool: Arc<Pool>,
    pub shutting_down: AtomicBool,
    pub socket_path: PathBuf,
    pub io_driver: IoDriver,
    pub threads: usize,
    pub max_connections: usize,
    /// How ingests read (the environment, read once at start).
    pub ingest: crate::ingest::Settings,
    next_conn: AtomicU64,
    /// Connections that have not finished their handshake (bounded by
    /// `HANDSHAKES_MAX`, apart from `max_connections`).
    handshaking: AtomicUsize,
    /// Open connections' socket fds, so shutdown can wake them.
    conns: Mutex<HashMap<ConnId, RawFd>>,
    /// `--state-dir`, locked while the server runs.
    pub state_dir: Option<crate::durable::StateDir>,
    /// Versions recovered from it at start.
    pub recovered_versions: u64,
    /// `--flight`: the address the Flight service listens on.
    pub flight: std::sync::OnceLock<String>,
    /// `--writers-group` / `--readers-group`, checked at each handshake.
    pub groups: super::peers::Groups,
    /// The server's effective uid (always allowed everything).
    pub owner_uid: u32,
    /// `--flight-remote-ca`, for `ingest flight+tls://...`.
    pub flight_remote_ca: Option<PathBuf>,
}

impl Shared {
    pub fn new(
        pool: Pool,
        config: &Config,
        io_driver: IoDriver,
        threads: usize,
        state: Option<(crate::durable::StateDir, u64)>,
    ) -> Shared {
        let (state_dir, recovered_versions) = match state {
            Some((d, n)) => (Some(d), n),
            None => (None, 0),
        };
        Shared {
            pool: Arc::new(pool),
            shutting_down: AtomicBool::new(false),
            socket_path: config.socket.clone(),
            io_driver,
            threads,
            max_connections: config.max_connections,
            ingest: crate::ingest::Settings {
                kept_read_buffers: config.ingest_buffers_bytes,
                ..crate::ingest::Settings::from_env()
            },
            next_conn: AtomicU64::new(1),
            handshaking: AtomicUsize::new(0),
            conns: Mutex::new(HashMap::new()),
            state_dir,
            recovered_versions,
            flight: std::sync::OnceLock::new(),
            groups: config.groups.clone(),
            owner_uid: rustix::process::geteuid().as_raw(),
            flight_remote_ca: config.flight_remote_ca.clone(),
        }
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
        self.pool.store().connect(id);
        Some(id)
    }

    /// Forgets a connection: its leases are released and unsealed creates aborted.
    /// Must run before its fd is closed.
    pub fn unregister(&self, conn: ConnId) {
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&conn);
        self.pool.store().disconnect(conn);
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

    pub fn stats(&self) -> StatsReply {
        let s = {
            let mut store = self.pool.store();
            store.end_quarantine(false);
            store.stats()
        };
        StatsReply {
            memory_kind: self.pool.arena.kind().as_str().into(),
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
            state_dir: self
                .state_dir
                .as_ref()
                .map(|d| d.path().display().to_string()),
            recovered_versions: self.recovered_versions,
            catalog_error: self.pool.store().catalog_error(),
            spill_dir: self.pool.spill_dir().map(|d| d.display().to_string()),
            spilled_versions: s.spilled_versions,
            spilled_bytes: s.spilled_bytes,
            spills: s.spills,
            quarantined_bytes: s.quarantined_bytes,
            orphaned_versions: s.orphaned_versions,
            ingest_buffer_bytes: crate::ingest::kept_read_buffer_bytes(),
            flight: self.flight.get().cloned(),
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
