//! The pool's side of `--state-dir`: every change of the durable versions is
//! written to the catalog while the object table is still locked (so records
//! go in the order the changes happened), and a restarted server brings the
//! recorded versions back after checking them.
//!
//! Recovery, for each version the catalog replays (newest first where two
//! claim the same bytes):
//! 1. its ranges lie in their regions (chunks in the data region, manifest in
//!    the low and high ones);
//! 2. its manifest's bytes have the checksum recorded at publish;
//! 3. a table passes the seal-time check again (`ipc::check_file` on `[0,
//!    file end)`: structure and every array's layout), its rows agree, and
//!    every buffer lies in one of its recorded chunks (chunks are freed by
//!    reference counts: a buffer outside them could be overwritten);
//! 4. no range overlaps a newer version's, unless it is the same chunk.
//!
//! A version that fails is reported and left out; its bytes become free
//! space once `--quarantine` is over: every range the killed server had
//! handed out (the catalog's `allocated`/`freed` records) that no restored
//! version occupies is held back that long, since its writers and readers
//! may still be using it (`Store::quarantine`). Table bytes are not checksummed (a restart would read every byte);
//! sealed chunks are never written by the server, and writers only get
//! ranges they reserved.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, MutexGuard};
use std::time::Instant;

use crate::durable::{Catalog, Replay};
use crate::ipc::manifest::Manifest;
use crate::store::{ObjectKind, Store, VersionRecord};

use super::{Pool, PoolError};

/// The object table and the catalog its changes go to, under one lock.
#[derive(Debug)]
pub(super) struct Locked {
    pub(super) store: Store,
    pub(super) catalog: Option<Catalog>,
    /// The last catalog write failed: the message, for `stats` and the log.
    pub(super) catalog_error: Option<String>,
}

/// The locked object table (`Pool::store`). Changes of the durable versions
/// made through it are written to the catalog when it is dropped, or by
/// `commit`, which reports a failure.
pub struct StoreGuard<'a> {
    pub(super) guard: MutexGuard<'a, Locked>,
    pub(super) pool: &'a Pool,
}

impl std::ops::Deref for StoreGuard<'_> {
    type Target = Store;
    fn deref(&self) -> &Store {
        &self.guard.store
    }
}

impl std::ops::DerefMut for StoreGuard<'_> {
    fn deref_mut(&mut self) -> &mut Store {
        &mut self.guard.store
    }
}

impl StoreGuard<'_> {
    /// Writes the changes made so far to the catalog (nothing without
    /// `--state-dir`). An error means the catalog may lack them: the change
    /// happened in memory but may not survive a restart.
    pub fn commit(&mut self) -> Result<(), PoolError> {
        let locked = &mut *self.guard;
        let Some(catalog) = &mut locked.catalog else {
            return Ok(());
        };
        if !locked.store.has_changes() && !catalog.wants_rewrite() {
            return Ok(());
        }
        let changes = locked.store.take_changes();
        let arena = &self.pool.arena;
        let result = if catalog.wants_rewrite() {
            let (versions, last) = locked.store.durable_state();
            let with_crc = |list: Vec<VersionRecord>| -> Vec<(VersionRecord, u32)> {
                list.into_iter()
                    .map(|v| {
                        let crc = manifest_crc(arena, &v);
                        (v, crc)
                    })
                    .collect()
            };
            catalog.rewrite(
                &with_crc(versions),
                &with_crc(locked.store.orphaned_state()),
                &last,
                &locked.store.spilled_state(),
                &locked.store.allocated_ranges(),
            )
        } else {
            catalog.append(&changes, |v| manifest_crc(arena, v))
        };
        match result {
            Ok(()) => {
                locked.catalog_error = None;
                Ok(())
            }
            Err(e) => {
                let message = e.to_string();
                eprintln!("arrowpoold: {message}; the last change may not survive a restart");
                locked.catalog_error = Some(message.clone());
                Err(PoolError::Catalog(message))
            }
        }
    }

    /// The last catalog write's failure, if it failed.
    pub fn catalog_error(&self) -> Option<String> {
        self.guard.catalog_error.clone()
    }
}

impl Drop for StoreGuard<'_> {
    fn drop(&mut self) {
        for file in self.guard.store.take_spill_garbage() {
            let _ = std::fs::remove_file(file);
        }
        if self.guard.catalog.is_some() && self.guard.store.has_changes() {
            // Logged and kept for `stats` by `commit`; no one to answer here.
            let _ = self.commit();
        }
    }
}

/// crc32c of a table version's two manifest ranges in the arena (0 for blobs).
fn manifest_crc(arena: &crate::arena::Arena, v: &VersionRecord) -> u32 {
    let Some(((lo, ll), (ho, hl))) = v.manifest else {
        return 0;
    };
    let m = arena.mapping();
    match (m.slice(lo, ll), m.slice(ho, hl)) {
        (Some(low), Some(high)) => crc32c::crc32c_append(crc32c::crc32c(low), high),
        _ => 0,
    }
}

/// What recovery found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Versions served again.
    pub restored: usize,
    /// Data bytes they hold (shared chunks once).
    pub bytes: u64,
    /// Spilled versions whose files were found.
    pub restored_spilled: usize,
    /// Versions readers of the server before held after they were replaced
    /// or deleted, held for those readers until the quarantine ends.
    pub orphans: usize,
    /// Bytes held back (`Store::quarantine`).
    pub quarantined_bytes: u64,
    /// One line per version left out, and per damaged catalog record.
    pub problems: Vec<String>,
    pub seconds: f64,
}

impl Pool {
    /// Brings back the versions of `replay` (the catalog of the state
    /// directory this pool's arena file belongs to), checked as the module
    /// says, then writes a fresh catalog of what was restored and from now on
    /// records every change there. The store must be empty.
    pub fn recover(
        &self,
        mut catalog: Catalog,
        replay: Replay,
        quarantine: std::time::Duration,
    ) -> Result<Recovery, PoolError> {
        let began = Instant::now();
        let mut report = Recovery {
            problems: replay.problems.clone(),
            ..Recovery::default()
        };
        let keep = self.store().keep_versions();
        // Newest first by number within a name; at most `keep` per name.
        let mut by_name: BTreeMap<String, Vec<(VersionRecord, u32)>> = BTreeMap::new();
        for (v, crc) in replay.versions {
            by_name.entry(v.name.clone()).or_default().push((v, crc));
        }
        let mut candidates: Vec<(VersionRecord, u32)> = Vec::new();
        for (_, mut list) in by_name {
            list.sort_by_key(|(v, _)| std::cmp::Reverse(v.number));
            for (i, item) in list.into_iter().enumerate() {
                if i < keep {
                    candidates.push(item);
                }
            }
        }
        // Checks 1-3, each version on its own.
        let mut checked: Vec<(VersionRecord, Option<Arc<Manifest>>)> = Vec::new();
        for (v, crc) in candidates {
            match self.check_recorded(&v, crc) {
                Ok(layout) => checked.push((v, layout)),
                Err(why) => report.problems.push(format!(
                    "version {} of {:?} left out: {why}",
                    v.number, v.name
                )),
            }
        }
        // Check 4 and the restore: newest numbers claim their ranges first, then
        // versions are restored oldest first per name (the newest is current).
        checked.sort_by_key(|(v, _)| std::cmp::Reverse(v.number));
        let mut claimed: BTreeMap<u64, (u64, u64, u64)> = BTreeMap::new(); // offset -> (end, alloc, len)
        let mut kept: Vec<(VersionRecord, Option<Arc<Manifest>>)> = Vec::new();
        for (v, layout) in checked {
            match claim(&mut claimed, &v) {
                Ok(()) => kept.push((v, layout)),
                Err(at) => report.problems.push(format!(
                    "version {} of {:?} left out: its bytes at arena offset {at} overlap a newer version's \
                     (the catalog lost a record)",
                    v.number, v.name
                )),
            }
        }
        kept.sort_by(|(a, _), (b, _)| (&a.name, a.number).cmp(&(&b.name, b.number)));
        // Orphans: readers of the killed server may still read them; held
        // (not served by name) for the quarantine, so that those readers,
        // reconnecting, lease them again. Checked as the others, their ranges
        // after every kept version's. Without a quarantine they are not
        // protected at all, so they are not taken back either.
        let mut orphans: Vec<(VersionRecord, Option<Arc<Manifest>>)> = Vec::new();
        let taken_back = if quarantine.is_zero() {
            Vec::new()
        } else {
            replay.orphans
        };
        for (v, crc) in taken_back {
            let checked = self.check_recorded(&v, crc).and_then(|layout| {
                claim(&mut claimed, &v).map(|()| layout).map_err(|at| {
                    format!("its bytes at arena offset {at} overlap a version restored before it")
                })
            });
            match checked {
                Ok(layout) => orphans.push((v, layout)),
                Err(why) => report.problems.push(format!(
                    "replaced version {} of {:?}, held by readers, left out: {why}",
                    v.number, v.name
                )),
            }
        }
        let mut store = self.store();
        for (name, number) in &replay.last_numbers {
            store.restore_last_version(name, *number);
        }
        let mut counted: HashMap<u64, u64> = HashMap::new();
        for (v, layout) in kept {
            match store.restore(&v, layout) {
                Ok(_) => {
                    report.restored += 1;
                    for c in &v.chunks {
                        counted.insert(c.offset, c.length);
                    }
                    self.mark_allocated(&v);
                }
                Err(e) => report.problems.push(format!(
                    "version {} of {:?} left out: {e}",
                    v.number, v.name
                )),
            }
        }
        report.bytes = counted.values().sum();
        let until = Instant::now() + quarantine;
        for (v, layout) in orphans {
            match store.restore_orphan(&v, layout, until) {
                Ok(_) => {
                    report.orphans += 1;
                    self.mark_allocated(&v);
                }
                Err(e) => report.problems.push(format!(
                    "replaced version {} of {:?}, held by readers, left out: {e}",
                    v.number, v.name
                )),
            }
        }
        // Spilled versions: their files must still be there, whole.
        for s in replay.spilled {
            let found = std::fs::metadata(&s.file).map(|m| m.len());
            match found {
                Ok(n) if n == s.file_bytes => {
                    let (name, number) = (s.name.clone(), s.number);
                    if store.restore_spilled(s) {
                        report.restored_spilled += 1;
                    } else {
                        report.problems.push(format!(
                            "spilled version {number} of {name:?} left out: the name has a version in memory"
                        ));
                    }
                }
                Ok(n) => report.problems.push(format!(
                    "spilled version {} of {:?} left out: its file {} has {n} bytes, the catalog says {}",
                    s.number,
                    s.name,
                    s.file.display(),
                    s.file_bytes
                )),
                Err(e) => report.problems.push(format!(
                    "spilled version {} of {:?} left out: its file {}: {e}",
                    s.number,
                    s.name,
                    s.file.display()
                )),
            }
        }
        if !quarantine.is_zero() {
            report.quarantined_bytes =
                store.quarantine(&replay.allocated, Instant::now() + quarantine);
        }
        // Whatever the store kept, written afresh: the old log's dead records go.
        let (versions, last) = store.durable_state();
        let with_crc = |list: Vec<VersionRecord>| -> Vec<(VersionRecord, u32)> {
            list.into_iter()
                .map(|v| {
                    let crc = manifest_crc(&self.arena, &v);
                    (v, crc)
                })
                .collect()
        };
        catalog
            .rewrite(
                &with_crc(versions),
                &with_crc(store.orphaned_state()),
                &last,
                &store.spilled_state(),
                &store.allocated_ranges(),
            )
            .map_err(|e| PoolError::Catalog(e.to_string()))?;
        #[cfg(debug_assertions)]
        store.check_invariants();
        store.record_changes();
        store.guard.catalog = Some(catalog);
        drop(store);
        report.seconds = began.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Marks a restored version's chunks and manifest room as allocated pages
    /// of the arena (they hold its bytes already).
    fn mark_allocated(&self, v: &VersionRecord) {
        for c in &v.chunks {
            self.arena.mark_allocated(c.offset, c.alloc_bytes);
        }
        if let Some(((lo, ll), (ho, hl))) = v.manifest {
            self.arena.mark_allocated(lo, ll);
            self.arena.mark_allocated(ho, hl);
        }
    }

    /// Checks 1-3 of the module comment; the table's manifest when it passes.
    fn check_recorded(&self, v: &VersionRecord, crc: u32) -> Result<Option<Arc<Manifest>>, String> {
        let regions = self.store().regions();
        let data = regions.low_end..regions.high_start;
        for c in &v.chunks {
            let end = c.offset.saturating_add(c.alloc_bytes);
            if c.offset < data.start || end > data.end || c.length > c.alloc_bytes {
                return Err(format!(
                    "its chunk at arena offset {} (+{}) is not in the data region",
                    c.offset, c.alloc_bytes
                ));
            }
        }
        match v.kind {
            ObjectKind::Bytes => {
                let [c] = v.chunks.as_slice() else {
                    return Err("a blob must be one chunk".into());
                };
                if v.offset != c.offset || v.length != c.length || v.manifest.is_some() {
                    return Err("a blob is read as its chunk".into());
                }
                Ok(None)
            }
            ObjectKind::Table => {
                let Some(((lo, ll), (ho, hl))) = v.manifest else {
                    return Err("a table without a manifest".into());
                };
                let in_low =
                    lo >= crate::store::MAGIC_BYTES && lo.saturating_add(ll) <= regions.low_end;
                let in_high = ho >= regions.high_start && ho.saturating_add(hl) <= regions.end;
                if !in_low
                    || !in_high
                    || v.offset != 0
                    || v.length <= ho
                    || v.length > ho.saturating_add(hl)
                {
                    return Err("its manifest is not where a manifest goes".into());
                }
                if manifest_crc(&self.arena, v) != crc {
                    return Err("its manifest fails its checksum".into());
                }
                let bytes = self
                    .arena
                    .mapping()
                    .slice(0, v.length)
                    .ok_or("its file lies outside the arena")?;
                crate::ipc::check_file(bytes)
                    .map_err(|e| format!("it fails the table check: {e}"))?;
                let manifest = Manifest::from_file(bytes, 0)
                    .map_err(|e| format!("its manifest does not read: {e}"))?;
                if manifest.rows() != v.rows {
                    return Err(format!(
                        "it has {} rows, the catalog says {}",
                        manifest.rows(),
                        v.rows
                    ));
                }
                let inside = |b: &crate::ipc::manifest::BufferRef| {
                    b.length == 0
                        || v.chunks.iter().any(|c| {
                            b.offset >= c.offset
                                && b.offset.saturating_add(b.length) <= c.offset + c.length
                        })
                };
                let all = manifest
                    .batches
                    .iter()
                    .chain(manifest.dictionaries.iter().map(|d| &d.batch))
                    .flat_map(|b| &b.buffers);
                if let Some(b) = all.clone().find(|b| !inside(b)) {
                    return Err(format!(
                        "a buffer at arena offset {} lies outside its recorded chunks",
                        b.offset
                    ));
                }
                Ok(Some(Arc::new(manifest)))
            }
        }
    }
}

/// Claims `v`'s ranges (check 4): `Err(offset)` at the first one that
/// overlaps a range claimed before, unless it is the same chunk.
fn claim(claimed: &mut BTreeMap<u64, (u64, u64, u64)>, v: &VersionRecord) -> Result<(), u64> {
    let mut ranges: Vec<(u64, u64, u64)> = v
        .chunks
        .iter()
        .map(|c| (c.offset, c.alloc_bytes, c.length))
        .collect();
    if let Some(((lo, ll), (ho, hl))) = v.manifest {
        ranges.push((lo, ll, u64::MAX));
        ranges.push((ho, hl, u64::MAX));
    }
    let overlaps = |claimed: &BTreeMap<u64, (u64, u64, u64)>, &(o, a, l): &(u64, u64, u64)| {
        if let Some(&(_, alloc, len)) = claimed.get(&o) {
            // The same chunk, shared: fine (manifests are never shared).
            return !(alloc == a && len == l && l != u64::MAX);
        }
        let before = claimed
            .range(..o)
            .next_back()
            .is_some_and(|(_, &(end, _, _))| end > o);
        let after = claimed
            .range(o..o.saturating_add(a.max(1)))
            .next()
            .is_some();
        before || after
    };
    if let Some(r) = ranges.iter().find(|r| overlaps(claimed, r)) {
        return Err(r.0);
    }
    for (o, a, l) in ranges {
        claimed.insert(o, (o.saturating_add(a), a, l));
    }
    Ok(())
}
