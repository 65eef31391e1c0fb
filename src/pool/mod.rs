//! The pool: the arena and the object table together, and the one way objects
//! get into them.
//!
//! Every put goes through the same three steps, whoever writes the bytes:
//! ```text
//! reserve (store.create + pages allocated) ─> the writer fills the chunk ─> seal
//!        └──── any failure: the pending chunk is aborted, nothing becomes visible ────┘
//! seal of a table: check the IPC file ─> its manifest (ipc::manifest) ─> reserve manifest room
//!                  ─> write messages and footer ─> store.seal_table + notify
//! ```
//! A socket client writes through its own mapping between `reserve` and `seal`
//! (two requests). The server's own writer (ingest) reserves and fills chunks
//! with `write_chunk` (a closure writes through the server's mapping, the file
//! is checked as a seal checks it) and publishes them all at once with
//! `publish_manifest`, the last step of a `publish` request too.
//!
//! Below the server and ingest, above `store`, `arena` and `ipc`; it knows
//! nothing of the wire: its errors are typed, and the server turns them into
//! error replies.

mod durable;
mod publish;
mod spill;
mod spill_io;

pub use durable::{Recovery, StoreGuard};

use std::sync::{Arc, Mutex};

use arrow_schema::ArrowError;

use crate::arena::{Arena, ArenaError};
use crate::ipc::manifest::{Manifest, ARENA_MAGIC};
use crate::ipc::CheckError;
use crate::store::{
    ConnId, ObjectId, ObjectKind, Reservation, SealInfo, Store, StoreError, MAGIC_BYTES,
};

/// The shared state every put and get goes through.
#[derive(Debug)]
pub struct Pool {
    pub arena: Arena,
    /// The object table. A std Mutex: every critical section is a few map
    /// operations (no I/O, no await), far shorter than a syscall, so a lock is
    /// cheaper than message passing until the small-ops benchmark says otherwise.
    /// The catalog (`--state-dir`) sits under the same lock, so its records
    /// follow the order of the changes.
    store: Mutex<durable::Locked>,
    /// Notified on every seal (and by the server at shutdown); `wait` listens.
    pub versions_changed: event_listener::Event,
    /// `--spill-dir`: where versions go instead of being evicted.
    spill_dir: std::sync::OnceLock<std::path::PathBuf>,
    /// When this pool was made (ms since the epoch): part of spill file names.
    started_unix_ms: u128,
    /// Reservations waiting for a copy written ahead (it starts no new one).
    waiting_for_room: std::sync::atomic::AtomicUsize,
}

/// A server-side connection, closed when dropped (`Pool::server_conn`).
pub struct ServerConn<'a> {
    pool: &'a Pool,
    id: ConnId,
}

impl ServerConn<'_> {
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// Keeps the connection open past this guard: the caller now closes it
    /// (`Store::disconnect`).
    pub fn into_id(self) -> ConnId {
        let id = self.id;
        std::mem::forget(self);
        id
    }
}

impl Drop for ServerConn<'_> {
    fn drop(&mut self) {
        self.pool.store().disconnect(self.id);
    }
}

/// Why reserving or sealing failed. A reservation whose pages could not be
/// allocated, and a table the check refused, are aborted; after a store error
/// (unknown object, a seal longer than the reservation) the object stays as it
/// was, for its owner to seal correctly or abort.
#[derive(Debug)]
pub enum PoolError {
    /// The object table refused (no room, unknown object, a limit...).
    Store(StoreError),
    /// The pages of the reservation could not be allocated (the machine is
    /// out of memory or hugepages).
    Memory(ArenaError),
    /// The object's range is not inside the arena (a bug, not the writer's fault).
    OutsideArena { offset: u64, len: u64 },
    /// The sealed bytes are not a table every reader can open safely.
    InvalidTable {
        object_id: ObjectId,
        error: CheckError,
    },
    /// A `publish` draft that does not add up (unknown columns, types or
    /// lengths that disagree, a malformed draft); everything it named was
    /// aborted.
    InvalidDraft(String),
    /// A checked table's manifest could not be made (a bug, not the writer's
    /// fault); the table was aborted.
    Manifest {
        object_id: ObjectId,
        error: ArrowError,
    },
    /// The change happened, but the state directory's catalog could not
    /// record it: it may not survive a restart.
    Catalog(String),
    /// Making room needed a version spilled to disk, and writing it failed
    /// (full or failing disk): it stayed in memory, the request was refused.
    Spill(String),
}

impl std::fmt::Display for PoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoolError::Store(e) => write!(f, "{e}"),
            PoolError::Memory(e) => write!(f, "{e}"),
            PoolError::OutsideArena { offset, len } => {
                write!(f, "object range [{offset}, +{len}) lies outside the arena")
            }
            PoolError::InvalidTable { object_id, error } => write!(
                f,
                "object {object_id} is not a valid Arrow IPC file ({error}); it was aborted"
            ),
            PoolError::InvalidDraft(m) => write!(f, "publish refused: {m}; nothing was published"),
            PoolError::Manifest { object_id, error } => write!(
                f,
                "object {object_id}: cannot lay out its manifest ({error}); it was aborted"
            ),
            PoolError::Spill(m) => write!(f, "{m}"),
            PoolError::Catalog(m) => write!(
                f,
                "the change was made but not recorded in the state directory ({m}); it will not survive a restart"
            ),
        }
    }
}

impl std::error::Error for PoolError {}

impl From<StoreError> for PoolError {
    fn from(e: StoreError) -> Self {
        PoolError::Store(e)
    }
}

/// Why a server-side write failed: the pool's reason, or the writer's own.
#[derive(Debug)]
pub enum PutError<E> {
    Pool(PoolError),
    Write(E),
}

impl<E: std::fmt::Display> std::fmt::Display for PutError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PutError::Pool(e) => write!(f, "{e}"),
            PutError::Write(e) => write!(f, "{e}"),
        }
    }
}

impl<E: std::fmt::Debug + std::fmt::Display> std::error::Error for PutError<E> {}

impl Pool {
    /// A pool over `arena`; large objects are aligned to its hugepages, if
    /// any. Writes the file magic every table version starts with at offset 0.
    pub fn new(arena: Arena) -> Result<Pool, ArenaError> {
        let large_align = arena.kind().large_object_align();
        Self::with_large_align(arena, large_align)
    }

    /// `new` with large objects aligned to `large_align`: a restarted server
    /// keeps the alignment its catalog was made with.
    pub fn with_large_align(arena: Arena, large_align: u64) -> Result<Pool, ArenaError> {
        let store = Store::new(arena.len(), large_align);
        let magic = MAGIC_BYTES.min(arena.len());
        arena.ensure_allocated(0, magic)?;
        let pool = Pool {
            arena,
            store: Mutex::new(durable::Locked {
                store,
                catalog: None,
                catalog_error: None,
            }),
            versions_changed: event_listener::Event::new(),
            spill_dir: std::sync::OnceLock::new(),
            waiting_for_room: std::sync::atomic::AtomicUsize::new(0),
            started_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis()),
        };
        // SAFETY: the magic's granule belongs to no chunk or manifest (the
        // store never hands it out) and nobody has a mapping yet: the server
        // starts listening after the pool exists.
        if let Some(head) = unsafe { pool.arena.mapping().slice_mut(0, ARENA_MAGIC.len() as u64) } {
            head.copy_from_slice(ARENA_MAGIC);
        }
        Ok(pool)
    }

    /// Locks the object table. A panic while holding it cannot leave it
    /// half-updated in a way later calls trip on (each operation checks its
    /// inputs first), so a poisoned lock is recovered.
    pub fn store(&self) -> StoreGuard<'_> {
        StoreGuard {
            guard: self.store.lock().unwrap_or_else(|p| p.into_inner()),
            pool: self,
        }
    }

    /// Reserves `size` bytes for a new version of `name` owned by `conn` and
    /// allocates their pages now, so the writer's copy does not fault them in
    /// and a memory shortage is an error here rather than a SIGBUS later.
    pub fn reserve(
        &self,
        conn: ConnId,
        name: &str,
        kind: ObjectKind,
        size: u64,
    ) -> Result<Reservation, PoolError> {
        let r = self.making_room(|s| s.create(conn, name, kind, size))?;
        if let Err(e) = self.arena.ensure_allocated(r.offset, r.capacity) {
            let _ = self.store().abort(conn, r.object_id);
            return Err(PoolError::Memory(e));
        }
        Ok(r)
    }

    /// Publishes `conn`'s pending object with `length` bytes: tables are
    /// checked first (`ipc::check_file`), then the name moves to it and
    /// waiters are woken. A refused table is aborted.
    pub fn seal(&self, conn: ConnId, id: ObjectId, length: u64) -> Result<SealInfo, PoolError> {
        let pending = self.store().pending_within(conn, id, length)?;
        let sealed = match pending.kind {
            ObjectKind::Table => {
                let manifest = match self.check_table(pending.offset, length, id) {
                    Ok(m) => m,
                    Err(e) => {
                        let _ = self.store().abort(conn, id);
                        return Err(e);
                    }
                };
                self.publish_table(conn, id, length, Arc::new(manifest))?
            }
            ObjectKind::Bytes => {
                let mut store = self.store();
                let sealed = store.seal(conn, id, length, 0)?;
                store.commit()?;
                sealed
            }
        };
        self.versions_changed.notify(usize::MAX);
        Ok(sealed)
    }

    /// Checks the IPC file a pending chunk holds and returns its manifest.
    fn check_table(
        &self,
        offset: u64,
        len: u64,
        object_id: ObjectId,
    ) -> Result<Manifest, PoolError> {
        let bytes = self
            .arena
            .mapping()
            .slice(offset, len)
            .ok_or(PoolError::OutsideArena { offset, len })?;
        crate::ipc::check_file(bytes)
            .map_err(|error| PoolError::InvalidTable { object_id, error })?;
        Manifest::from_file(bytes, offset).map_err(|error| PoolError::InvalidTable {
            object_id,
            error: CheckError::Invalid(error),
        })
    }

    /// Writes `manifest` (whose buffers lie in pending chunk `id`) into the
    /// manifest regions and publishes the chunk as a table version. On any
    /// failure the chunk and the manifest room are aborted.
    fn publish_table(
        &self,
        conn: ConnId,
        id: ObjectId,
        length: u64,
        manifest: Arc<Manifest>,
    ) -> Result<SealInfo, PoolError> {
        let abort = |space: Option<ObjectId>, e: PoolError| {
            let mut store = self.store();
            if let Some(space) = space {
                let _ = store.abort(conn, space);
            }
            let _ = store.abort(conn, id);
            e
        };
        let bad = |error| PoolError::Manifest {
            object_id: id,
            error,
        };
        let (low, high) = manifest.sizes().map_err(|e| abort(None, bad(e)))?;
        let name = self.store().pending_name(conn, id)?;
        let space = self
            .making_room(|s| s.reserve_manifest(conn, &name, low, high))
            .map_err(|e| abort(None, e))?;
        let encoded = manifest
            .encode(space.low_offset, space.high_offset)
            .map_err(|e| abort(Some(space.id), bad(e)))?;
        for (at, bytes) in [
            (space.low_offset, &encoded.low),
            (space.high_offset, &encoded.high),
        ] {
            self.write_manifest(at, bytes)
                .map_err(|e| abort(Some(space.id), e))?;
        }
        let mut store = self.store();
        let sealed = store.seal_table(
            conn,
            id,
            length,
            manifest.rows(),
            space.id,
            encoded.file_len,
            Some(manifest),
        );
        let sealed = match sealed {
            Ok(s) => s,
            Err(e) => {
                drop(store);
                return Err(abort(Some(space.id), e.into()));
            }
        };
        // Recorded before the reply (`--state-dir`): an acknowledged seal
        // survives the server.
        store.commit()?;
        Ok(sealed)
    }

    /// Copies manifest bytes into room `reserve_manifest` handed out.
    fn write_manifest(&self, at: u64, bytes: &[u8]) -> Result<(), PoolError> {
        let len = bytes.len() as u64;
        self.arena
            .ensure_allocated(at, len)
            .map_err(PoolError::Memory)?;
        // SAFETY: `[at, at + len)` lies in manifest room reserved by this
        // connection and not yet part of any version: nobody reads it until
        // the seal that follows publishes it, and nobody else writes it.
        let dest = unsafe { self.arena.mapping().slice_mut(at, len) }
            .ok_or(PoolError::OutsideArena { offset: at, len })?;
        dest.copy_from_slice(bytes);
        Ok(())
    }

    /// A server-side writer's chunk of a version still to be published:
    /// reserves `size` bytes on `conn`, lets `write` fill them with an IPC
    /// file (returning its length), checks the file as a seal does and
    /// returns the pending chunk, its length and the file's manifest. The
    /// chunk stays pending, for `publish_manifest` (or the caller's abort); on
    /// any failure here it is aborted.
    pub fn write_chunk<E>(
        &self,
        conn: ConnId,
        name: &str,
        size: u64,
        write: impl FnOnce(&mut [u8]) -> Result<usize, E>,
    ) -> Result<(ObjectId, u64, Manifest), PutError<E>> {
        let (id, (offset, written)) = self.write_raw_chunk(conn, name, size, |dest, offset| {
            write(dest).map(|n| (offset, n as u64))
        })?;
        let checked = if written > size {
            Err(PoolError::OutsideArena {
                offset,
                len: written,
            })
        } else {
            self.check_table(offset, written, id)
        };
        match checked {
            Ok(manifest) => Ok((id, written, manifest)),
            Err(e) => {
                let _ = self.store().abort(conn, id);
                Err(PutError::Pool(e))
            }
        }
    }

    /// A server-side writer's chunk of raw buffers that it lays out itself
    /// (ingest's directly read columns, `ingest/direct.rs`): reserves `size`
    /// bytes on `conn` and lets `write` fill exactly them, given their arena
    /// offset. Nothing checks the bytes: the writer builds the manifest that
    /// names them, and vouches for it. The chunk stays pending, as with
    /// `write_chunk`; on any failure here it is aborted.
    pub fn write_raw_chunk<T, E>(
        &self,
        conn: ConnId,
        name: &str,
        size: u64,
        write: impl FnOnce(&mut [u8], u64) -> Result<T, E>,
    ) -> Result<(ObjectId, T), PutError<E>> {
        let r = self
            .reserve(conn, name, ObjectKind::Table, size)
            .map_err(PutError::Pool)?;
        let abort = |e| {
            let _ = self.store().abort(conn, r.object_id);
            e
        };
        let dest = self.writable(&r).map_err(|e| abort(PutError::Pool(e)))?;
        let Some(dest) = dest.get_mut(..size as usize) else {
            return Err(abort(PutError::Pool(PoolError::OutsideArena {
                offset: r.offset,
                len: size,
            })));
        };
        let made = write(dest, r.offset).map_err(|e| abort(PutError::Write(e)))?;
        Ok((r.object_id, made))
    }

    /// A connection of the server's own (`Store::server_side_conn`) for one
    /// server-side writer or reader, closed when dropped: what it left
    /// pending is aborted, its leases released.
    pub fn server_conn(&self) -> ServerConn<'_> {
        ServerConn {
            pool: self,
            id: self.store().server_side_conn(),
        }
    }

    #[allow(clippy::mut_from_ref)] // exclusive by the pending object's ownership
    fn writable(&self, r: &Reservation) -> Result<&mut [u8], PoolError> {
        // SAFETY: the range belongs to the pending object `put` just reserved on
        // its connection; nobody else can see or write it until it is sealed,
        // and `put` does not hand it out beyond the writer's call.
        unsafe { self.arena.mapping().slice_mut(r.offset, r.capacity) }.ok_or(
            PoolError::OutsideArena {
                offset: r.offset,
                len: r.capacity,
            },
        )
    }
}
