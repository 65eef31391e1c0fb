//! `--spill-dir`: when a reservation needs room, the least recently used
//! current version is written to disk instead of being dropped, and a get of
//! it brings it back.
//!
//! ```text
//! reserve ─> store: no room ─> NeedsSpill(victim, leased by the store) ─> write DIR/arrowpool-spill-*.arrow
//!     ▲          (outside the lock: tmp file, fsync, rename)     ├─ ok:   finish_spill (chunks freed) ─┐
//!     └──────────────────────── ask again ◄────────────────────────┴─ fail: abort_spill, refused ◄─────┘
//! get ─> NotFound, spilled ─> bring_back: reserve (may spill others), read the file into the chunk,
//!                              check as a seal does, publish with the same version number ─> get
//! ```
//! A table's file is a compact Arrow IPC file of its own (arrow's writer over
//! the version's zero-copy batches); a blob's is its bytes. Files are written
//! and read with io_uring and `O_DIRECT` where the kernel and the filesystem
//! allow (`spill_io.rs`: no page cache filled when memory is short), and
//! synced before the version leaves memory: a failing or full disk is an
//! error for the request that needed room and the table stays where it was.
//! Bringing back reads the file straight into a new chunk rather than serving
//! from the file: readers then get the same zero-copy mapping as for any
//! other version. The file is
//! kept while the brought-back version is current (it leaves again without a
//! write) and deleted with it; `--spill-ahead` writes such files ahead of need.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::ipc::manifest::Manifest;
use crate::store::{NewVersion, ObjectId, ObjectKind, Spilled, Store, StoreError};

use super::{Pool, PoolError};

/// Spills one request may cause before it gives up (each frees at least one
/// version's chunks, so this bounds only pathological fragmentation).
const SPILLS_PER_REQUEST_MAX: usize = 64;
/// How long a reservation waits for a copy being written ahead, in steps.
const COPY_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(120);
const COPY_WAIT_STEP: std::time::Duration = std::time::Duration::from_millis(5);
/// Spill files are named `arrowpool-spill-<server start ms>-<id>-v<version>.arrow`.
pub const SPILL_PREFIX: &str = "arrowpool-spill-";

impl Pool {
    /// Spill versions to `dir` instead of evicting them. Files a previous
    /// server left there (`arrowpool-spill-*`) are removed unless a spilled
    /// version recovered from the state directory's catalog is in them.
    pub fn enable_spill(&self, dir: &Path) -> std::io::Result<usize> {
        use std::os::unix::fs::DirBuilderExt;
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let probe = dir.join(format!("{SPILL_PREFIX}probe-{}", std::process::id()));
        std::fs::write(&probe, b"")?;
        std::fs::remove_file(&probe)?;
        let keep: std::collections::HashSet<PathBuf> = self
            .store()
            .spilled_state()
            .into_iter()
            .filter_map(|s| s.file.canonicalize().ok())
            .collect();
        let mut removed = 0;
        for entry in std::fs::read_dir(dir)?.flatten() {
            let path = entry.path();
            if keep.contains(&path.canonicalize().unwrap_or_else(|_| path.clone())) {
                continue;
            }
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(SPILL_PREFIX)
            {
                let _ = std::fs::remove_file(entry.path());
                removed += 1;
            }
        }
        let _ = self.spill_dir.set(dir.canonicalize()?);
        self.store().set_spill(true);
        Ok(removed)
    }

    pub fn spill_dir(&self) -> Option<&Path> {
        self.spill_dir.get().map(PathBuf::as_path)
    }

    /// Runs `f` on the store, writing victims to disk while it asks for room.
    pub(super) fn making_room<T>(
        &self,
        mut f: impl FnMut(&mut Store) -> Result<T, StoreError>,
    ) -> Result<T, PoolError> {
        let mut waited = std::time::Duration::ZERO;
        let mut spills = 0;
        while spills < SPILLS_PER_REQUEST_MAX {
            let (r, copying) = {
                let mut store = self.store();
                let r = f(&mut store);
                (r, store.copying() || store.spilling())
            };
            match r {
                Err(StoreError::NeedsSpill { victim }) => {
                    self.spill(victim)?;
                    spills += 1;
                }
                // The version a copy or a spill is being written of cannot go
                // until it is done (then it goes, making room): wait for it.
                // Another thread's spill, too: the decoders of one ingest
                // reserve at once, and the second must not fail while the
                // first one's spill is making room.
                Err(StoreError::OutOfMemory { .. }) if copying && waited < COPY_WAIT_MAX => {
                    self.waiting_for_room
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    std::thread::sleep(COPY_WAIT_STEP);
                    self.waiting_for_room
                        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                    waited += COPY_WAIT_STEP;
                    // A write to disk this slow is worth an operator's line
                    // (a stalled disk), every 5 s while it lasts.
                    if waited.as_millis().is_multiple_of(5000) {
                        eprintln!(
                            "arrowpoold: a request has waited {} s for room while {} is written to disk",
                            waited.as_secs(),
                            self.store().being_written().join(", ")
                        );
                    }
                }
                r => return r.map_err(PoolError::from),
            }
        }
        Err(PoolError::Spill(format!(
            "spilled {SPILLS_PER_REQUEST_MAX} versions and the request still does not fit (the arena is fragmented)"
        )))
    }

    /// Writes victim `victim` to the spill directory and lets it leave the
    /// arena; on failure it stays and the error says why.
    fn spill(&self, victim: ObjectId) -> Result<(), PoolError> {
        let Some(dir) = self.spill_dir() else {
            self.store().abort_spill(victim);
            return Err(PoolError::Spill("no --spill-dir".into()));
        };
        let Some(info) = self.store().spill_info(victim) else {
            return Ok(());
        };
        let began = Instant::now();
        match self.write_spill_file(dir, victim, &info) {
            Ok((file, file_bytes)) => {
                let kept = self
                    .store()
                    .finish_spill(victim, info.spilled_to(file.clone(), file_bytes));
                if kept {
                    eprintln!(
                        "arrowpoold: spilled {:?} version {} ({}) to {} in {:.2} s",
                        info.name,
                        info.number,
                        crate::util::human_bytes(file_bytes),
                        file.display(),
                        began.elapsed().as_secs_f64()
                    );
                } else {
                    // Replaced, deleted or leased meanwhile: not needed.
                    let _ = std::fs::remove_file(&file);
                }
                Ok(())
            }
            Err(e) => {
                self.store().abort_spill(victim);
                Err(PoolError::Spill(format!(
                    "no room without spilling {:?} version {} ({}), and writing it to {} failed: {e}; \
                     it stays in memory and this request was refused",
                    info.name,
                    info.number,
                    crate::util::human_bytes(info.data_bytes),
                    dir.display()
                )))
            }
        }
    }

    /// Writes version `id` (described by `info`, held by the caller) to a new
    /// file in `dir`: `.tmp`, synced, renamed. Returns the file and its size;
    /// on failure nothing is left behind.
    fn write_spill_file(
        &self,
        dir: &Path,
        id: ObjectId,
        info: &crate::store::SpillInfo,
    ) -> std::io::Result<(PathBuf, u64)> {
        // Object ids start again at each server start: the start time keeps
        // the names of files an earlier server left apart.
        let file = dir.join(format!(
            "{SPILL_PREFIX}{}-{id}-v{}.arrow",
            self.started_unix_ms, info.number
        ));
        let tmp = file.with_extension("tmp");
        let write = || -> std::io::Result<u64> {
            let mut w = super::spill_io::SpillWriter::create(&tmp)?;
            let bytes = self
                .arena
                .mapping()
                .slice(info.offset, info.length)
                .ok_or_else(|| std::io::Error::other("the version lies outside the arena"))?;
            match info.kind {
                ObjectKind::Table => {
                    crate::ipc::copy_file(bytes, &mut w).map_err(std::io::Error::other)?
                }
                ObjectKind::Bytes => w.write_all(bytes)?,
            }
            let (f, n) = w.finish()?;
            f.sync_all()?;
            std::fs::rename(&tmp, &file)?;
            Ok(n)
        };
        // A panic here (arrow's writer over a version's batches) must not
        // leave the version pinned as being written: that would hold every
        // request short of room waiting for it.
        let written =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(write)).unwrap_or_else(|panic| {
                Err(std::io::Error::other(format!(
                    "the writer panicked ({})",
                    crate::util::panic_message(&*panic)
                )))
            });
        match written {
            Ok(n) => Ok((file, n)),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Writing ahead (`--spill-ahead`): while more than `high_water` bytes of
    /// the arena are in use, writes a copy of the least recently used current
    /// version that has none, so that its eviction later costs no write.
    /// `Ok(false)` when there is nothing to do.
    pub fn copy_ahead(&self, high_water: u64) -> Result<bool, String> {
        let Some(dir) = self.spill_dir() else {
            return Ok(false);
        };
        if self
            .waiting_for_room
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
        {
            return Ok(false);
        }
        let Some((id, info)) = self.store().next_copy_candidate(high_water) else {
            return Ok(false);
        };
        let began = Instant::now();
        match self.write_spill_file(dir, id, &info) {
            Ok((file, file_bytes)) => {
                let kept = self
                    .store()
                    .finish_copy(id, info.spilled_to(file.clone(), file_bytes));
                if kept {
                    eprintln!(
                        "arrowpoold: wrote a copy of {:?} version {} ({}) ahead of need in {:.2} s",
                        info.name,
                        info.number,
                        crate::util::human_bytes(file_bytes),
                        began.elapsed().as_secs_f64()
                    );
                } else {
                    let _ = std::fs::remove_file(&file);
                }
                Ok(true)
            }
            Err(e) => {
                self.store().abort_copy(id);
                Err(format!(
                    "writing a copy of {:?} version {} to {} failed: {e}",
                    info.name,
                    info.number,
                    dir.display()
                ))
            }
        }
    }

    /// Brings the spilled version of `name` back into the arena, with its
    /// number. `false` when it has none (never spilled, or brought back by
    /// someone else meanwhile).
    pub fn bring_back(&self, name: &str) -> Result<bool, PoolError> {
        let Some(s) = self.store().spilled(name) else {
            return Ok(false);
        };
        let conn = self.server_conn();
        let result = self.read_back(conn.id(), &s);
        drop(conn);
        match result {
            // Someone else brought it back (or replaced it) meanwhile.
            Err(PoolError::Store(StoreError::InvalidObject { object_id: 0, .. })) => Ok(false),
            Err(e) => Err(e),
            Ok(()) => {
                self.versions_changed.notify(usize::MAX);
                Ok(true)
            }
        }
    }

    fn read_back(&self, conn: u64, s: &Spilled) -> Result<(), PoolError> {
        let began = Instant::now();
        let read = |dest: &mut [u8]| -> std::io::Result<usize> {
            let n = usize::try_from(s.file_bytes)
                .map_err(|_| std::io::Error::other("the spill file is too large"))?;
            super::spill_io::read_into(&s.file, dest, n)?;
            Ok(n)
        };
        let failed = |e: std::io::Error| {
            PoolError::Spill(format!(
                "cannot bring {:?} version {} back from {}: {e}",
                s.name,
                s.number,
                s.file.display()
            ))
        };
        // Room for the file's last block whole, so that it is read directly
        // (the chunk's length is still the file's).
        let size =
            super::spill_io::room_for(std::fs::metadata(&s.file).map_err(failed)?.len()).max(1);
        match s.kind {
            ObjectKind::Table => {
                let (id, written, manifest) =
                    self.write_chunk(conn, &s.name, size, read)
                        .map_err(|e| match e {
                            super::PutError::Pool(p) => p,
                            super::PutError::Write(io) => failed(io),
                        })?;
                self.publish_manifest(
                    conn,
                    &s.name,
                    None,
                    Some(s.number),
                    &[(id, written)],
                    &[],
                    Arc::new(manifest),
                    id,
                )?;
            }
            ObjectKind::Bytes => {
                let r = self.reserve(conn, &s.name, ObjectKind::Bytes, size)?;
                let dest = self.writable(&r)?;
                let n = read(dest).map_err(failed)? as u64;
                let mut store = self.store();
                store.publish(
                    conn,
                    NewVersion {
                        name: &s.name,
                        if_version: None,
                        rows: 0,
                        new_chunks: &[(r.object_id, n)],
                        shared: &[],
                        manifest: None,
                        layout: None::<Arc<Manifest>>,
                        restores: Some(s.number),
                    },
                )?;
                store.commit()?;
            }
        }
        eprintln!(
            "arrowpoold: brought {:?} version {} back from disk in {:.2} s",
            s.name,
            s.number,
            began.elapsed().as_secs_f64()
        );
        Ok(())
    }
}
