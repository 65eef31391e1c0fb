//! The object table: names, versions, leases, LRU eviction, capacity.
//!
//! This is the only state the server's cores share. It is pure bookkeeping (no
//! I/O, no memory access) behind one small API, so that it can be tested against
//! a model and, later, sharded by object id across cores.
//!
//! Lifecycle of an object:
//! ```text
//! create ──> Pending{owner} ──seal──> Sealed, current for its name ──(new seal / delete / evict)──> Sealed, not current
//!               │                                                                                      │
//!             abort / owner disconnects ──> freed                                   last lease released ──> freed
//! ```
//! A sealed object is never written; a leased object is never freed or evicted.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use crate::alloc::Allocator;
use crate::util::human_bytes;

pub type ConnId = u64;
pub type ObjectId = u64;

/// What an object holds. Tables are Arrow IPC files; bytes are opaque blobs.
/// (The protocol sends it as one byte: the discriminant.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ObjectKind {
    Table = 0,
    Bytes = 1,
}

impl ObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Table => "table",
            ObjectKind::Bytes => "bytes",
        }
    }
}

/// A new pending object: where its owner may write (`create`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    pub object_id: ObjectId,
    pub offset: u64,
    /// Bytes reserved (at least the size asked for).
    pub capacity: u64,
}

/// A version just published (`seal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealInfo {
    pub version: u64,
    pub rows: u64,
}

/// Where the current version of a name lies; the caller now holds a lease on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub object_id: ObjectId,
    pub version: u64,
    pub offset: u64,
    pub length: u64,
    pub rows: u64,
    pub kind: ObjectKind,
}

/// A pending object's range, for checking its bytes before the seal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub offset: u64,
    pub capacity: u64,
    pub kind: ObjectKind,
}

/// One named object (`list`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub object_id: ObjectId,
    pub version: u64,
    pub kind: ObjectKind,
    pub rows: u64,
    pub bytes: u64,
    pub leases: u64,
    /// Since the object was last read or written.
    pub idle: std::time::Duration,
}

/// Unsealed creates one connection may have at once.
pub const PENDING_PER_CONN_MAX: usize = 64;
/// Leases one connection may hold at once.
pub const LEASES_PER_CONN_MAX: u64 = 1_000_000;
/// Objects at or above this size are aligned to `large_align` (hugepage size).
pub const LARGE_OBJECT_BYTES: u64 = 2 * 1024 * 1024;

/// Unused bytes at the end of a reservation that seal keeps instead of
/// returning: at most 1/64 of the object and 2 MiB. Writers reserve a bound,
/// so the next version of the same table asks for the same bound; were the
/// tail returned, that version would no longer fit where this one lies once
/// it is freed, and would land in fresh memory (page allocation, and page
/// tables for every writer) on every other put. A bound far above the written
/// length (ingest of a file without statistics) is still trimmed.
fn kept_slack(length: u64) -> u64 {
    (length / 64).min(LARGE_OBJECT_BYTES)
}

/// Why a store operation failed. Each maps to one protocol error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    NotFound {
        name: String,
    },
    OutOfMemory {
        requested_bytes: u64,
        free_bytes: u64,
        held_bytes: u64,
        largest_free_bytes: u64,
        arena_bytes: u64,
    },
    /// Unknown id, not owned by the caller, wrong state, or not leased.
    InvalidObject {
        object_id: ObjectId,
        reason: &'static str,
    },
    LimitExceeded(&'static str),
    /// The sealed length is larger than the reservation.
    LengthTooLarge {
        object_id: ObjectId,
        length: u64,
        capacity: u64,
    },
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::NotFound { name } => write!(f, "no object named {name:?} (never put, deleted, or evicted)"),
            StoreError::OutOfMemory { requested_bytes, arena_bytes, .. } if requested_bytes > arena_bytes => write!(
                f,
                "object of {} can never fit: the whole arena is {}; restart arrowpoold with a larger --memory",
                exact_if_close(*requested_bytes, *arena_bytes),
                exact_if_close(*arena_bytes, *requested_bytes),
            ),
            StoreError::OutOfMemory { requested_bytes, free_bytes, held_bytes, largest_free_bytes, arena_bytes } => write!(
                f,
                "arena full: {} requested, {} free (largest free range {}), {} held by readers, arena {}; \
                 raise --memory, delete objects, or release leases",
                exact_if_close(*requested_bytes, (*free_bytes).max(*largest_free_bytes)),
                exact_if_close(*free_bytes, *requested_bytes),
                exact_if_close(*largest_free_bytes, *requested_bytes),
                human_bytes(*held_bytes),
                human_bytes(*arena_bytes)
            ),
            StoreError::InvalidObject { object_id, reason } => write!(f, "object {object_id}: {reason}"),
            StoreError::LimitExceeded(what) => write!(f, "limit exceeded: {what}"),
            StoreError::LengthTooLarge { object_id, length, capacity } => {
                write!(f, "object {object_id}: sealed length {length} exceeds its capacity {capacity}")
            }
        }
    }
}

impl std::error::Error for StoreError {}

/// `n` for people, with the exact byte count added when rounding would make it
/// look equal to `other` ("48.0 MiB (50340864 bytes) requested, 48.0 MiB
/// (50331648 bytes) free" instead of two identical numbers).
fn exact_if_close(n: u64, other: u64) -> String {
    if n != other && human_bytes(n) == human_bytes(other) {
        format!("{} ({n} bytes)", human_bytes(n))
    } else {
        human_bytes(n)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pending { owner: ConnId },
    Sealed,
}

#[derive(Debug, Clone)]
struct Object {
    name: String,
    kind: ObjectKind,
    offset: u64,
    /// Bytes reserved in the allocator (granule-rounded).
    alloc_bytes: u64,
    /// Bytes of content (set at seal).
    length: u64,
    version: u64,
    rows: u64,
    state: State,
    leases: u64,
    /// LRU clock value of the last get or seal.
    last_use: u64,
    last_use_at: Instant,
}

#[derive(Debug, Default)]
struct Conn {
    leases: HashMap<ObjectId, u64>,
    /// Sum of `leases`' counts, kept so that the limit check on every get is O(1).
    lease_count: u64,
    pending: HashSet<ObjectId>,
}

/// Counters for `stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub arena_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
    pub held_bytes: u64,
    pub pending_bytes: u64,
    pub largest_free_bytes: u64,
    pub objects: u64,
    pub names: u64,
    pub leases: u64,
    pub connections: u64,
    pub evictions: u64,
    pub puts: u64,
    pub gets: u64,
}

/// What happened to free space during an operation, so the caller can react
/// (the server notifies waiters on `sealed`).
#[derive(Debug)]
pub struct Store {
    alloc: Allocator,
    large_align: u64,
    objects: HashMap<ObjectId, Object>,
    names: HashMap<String, ObjectId>,
    /// Last version handed out per name; survives delete so versions only grow.
    last_version: HashMap<String, u64>,
    conns: HashMap<ConnId, Conn>,
    next_object_id: ObjectId,
    clock: u64,
    evictions: u64,
    puts: u64,
    gets: u64,
}

impl Store {
    /// A store over an arena of `capacity` bytes; objects of 2 MiB and more are
    /// aligned to `large_align`.
    pub fn new(capacity: u64, large_align: u64) -> Store {
        Store {
            alloc: Allocator::new(capacity),
            large_align: large_align.max(crate::alloc::GRANULE_BYTES),
            objects: HashMap::new(),
            names: HashMap::new(),
            last_version: HashMap::new(),
            conns: HashMap::new(),
            next_object_id: 1,
            clock: 0,
            evictions: 0,
            puts: 0,
            gets: 0,
        }
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Registers a connection. Operations from unknown connections register it implicitly.
    pub fn connect(&mut self, conn: ConnId) {
        self.conns.entry(conn).or_default();
    }

    /// Reserves space for a new version of `name`, evicting unheld LRU objects if needed.
    pub fn create(
        &mut self,
        conn: ConnId,
        name: &str,
        kind: ObjectKind,
        size: u64,
    ) -> Result<Reservation, StoreError> {
        let pending = self.conns.entry(conn).or_default().pending.len();
        if pending >= PENDING_PER_CONN_MAX {
            return Err(StoreError::LimitExceeded(
                "64 unsealed creates on one connection; seal or abort them",
            ));
        }
        let align = if size >= LARGE_OBJECT_BYTES {
            self.large_align
        } else {
            crate::alloc::GRANULE_BYTES
        };
        let (offset, alloc_bytes) = self.alloc_evicting(size.max(1), align, name)?;
        let id = self.next_object_id;
        self.next_object_id += 1;
        let last_use = self.tick();
        self.objects.insert(
            id,
            Object {
                name: name.to_owned(),
                kind,
                offset,
                alloc_bytes,
                length: 0,
                version: 0,
                rows: 0,
                state: State::Pending { owner: conn },
                leases: 0,
                last_use,
                last_use_at: Instant::now(),
            },
        );
        self.conns.entry(conn).or_default().pending.insert(id);
        Ok(Reservation {
            object_id: id,
            offset,
            capacity: alloc_bytes,
        })
    }

    /// Allocates, evicting unheld objects in LRU order if needed. The current
    /// version of `for_name` (the table being replaced) goes last: evicting it
    /// makes the name briefly unresolvable, so it is only done when nothing else
    /// frees enough room.
    fn alloc_evicting(
        &mut self,
        size: u64,
        align: u64,
        for_name: &str,
    ) -> Result<(u64, u64), StoreError> {
        if let Some(r) = self.alloc.alloc(size, align) {
            return Ok(r);
        }
        // Only evict when eviction can possibly make room: never throw away tables
        // for a request that cannot fit anyway.
        let candidates = self.evictable(for_name);
        let evictable: u64 = candidates
            .iter()
            .map(|&(_, id)| self.objects[&id].alloc_bytes)
            .sum();
        if self.alloc.free_bytes() + evictable >= size {
            for (_, id) in candidates {
                self.evict(id);
                if let Some(r) = self.alloc.alloc(size, align) {
                    return Ok(r);
                }
            }
        }
        Err(self.out_of_memory(size))
    }

    /// Sealed, current, unleased objects, least recently used first, the current
    /// version of `last_name` at the end.
    fn evictable(&self, last_name: &str) -> Vec<((bool, u64), ObjectId)> {
        let mut v: Vec<((bool, u64), ObjectId)> = self
            .names
            .iter()
            .filter_map(|(name, id)| {
                let o = &self.objects[id];
                (o.leases == 0 && o.state == State::Sealed)
                    .then_some(((name == last_name, o.last_use), *id))
            })
            .collect();
        v.sort_unstable();
        v
    }

    fn evict(&mut self, id: ObjectId) {
        let name = self.objects[&id].name.clone();
        self.names.remove(&name);
        self.evictions += 1;
        self.free_object(id);
    }

    fn out_of_memory(&self, requested_bytes: u64) -> StoreError {
        let s = self.stats();
        StoreError::OutOfMemory {
            requested_bytes,
            free_bytes: s.free_bytes,
            held_bytes: s.held_bytes,
            largest_free_bytes: s.largest_free_bytes,
            arena_bytes: s.arena_bytes,
        }
    }

    fn free_object(&mut self, id: ObjectId) {
        let o = self.objects.remove(&id).expect("freeing a known object");
        assert_eq!(o.leases, 0, "freeing object {id} that is still leased");
        self.alloc.free(o.offset, o.alloc_bytes);
    }

    fn pending_owned(&self, conn: ConnId, id: ObjectId) -> Result<&Object, StoreError> {
        let o = self.objects.get(&id).ok_or(StoreError::InvalidObject {
            object_id: id,
            reason: "unknown object id",
        })?;
        match o.state {
            State::Pending { owner } if owner == conn => Ok(o),
            State::Pending { .. } => Err(StoreError::InvalidObject {
                object_id: id,
                reason: "created by another connection",
            }),
            State::Sealed => Err(StoreError::InvalidObject {
                object_id: id,
                reason: "already sealed",
            }),
        }
    }

    /// Where a pending object of `conn` lies, for the server to check its
    /// bytes before sealing.
    pub fn pending(&self, conn: ConnId, id: ObjectId) -> Result<Pending, StoreError> {
        let o = self.pending_owned(conn, id)?;
        Ok(Pending {
            offset: o.offset,
            capacity: o.alloc_bytes,
            kind: o.kind,
        })
    }

    /// Publishes a pending object: the name moves to it atomically; the previous
    /// version is freed now or at its last release.
    pub fn seal(
        &mut self,
        conn: ConnId,
        id: ObjectId,
        length: u64,
        rows: u64,
    ) -> Result<SealInfo, StoreError> {
        let o = self.pending_owned(conn, id)?;
        if length > o.alloc_bytes {
            return Err(StoreError::LengthTooLarge {
                object_id: id,
                length,
                capacity: o.alloc_bytes,
            });
        }
        let (offset, alloc_bytes, name) = (o.offset, o.alloc_bytes, o.name.clone());
        let new_alloc = if alloc_bytes - length <= kept_slack(length) {
            alloc_bytes
        } else {
            self.alloc.shrink(offset, alloc_bytes, length)
        };
        let version = {
            let v = self.last_version.entry(name.clone()).or_insert(0);
            *v += 1;
            *v
        };
        let last_use = self.tick();
        let o = self.objects.get_mut(&id).expect("checked above");
        o.alloc_bytes = new_alloc;
        o.length = length;
        o.rows = rows;
        o.version = version;
        o.state = State::Sealed;
        o.last_use = last_use;
        o.last_use_at = Instant::now();
        if let Some(c) = self.conns.get_mut(&conn) {
            c.pending.remove(&id);
        }
        if let Some(prev) = self.names.insert(name, id) {
            if self.objects[&prev].leases == 0 {
                self.free_object(prev);
            }
        }
        self.puts += 1;
        Ok(SealInfo { version, rows })
    }

    /// Gives up a pending object.
    pub fn abort(&mut self, conn: ConnId, id: ObjectId) -> Result<(), StoreError> {
        self.pending_owned(conn, id)?;
        if let Some(c) = self.conns.get_mut(&conn) {
            c.pending.remove(&id);
        }
        self.free_object(id);
        Ok(())
    }

    /// Looks up the current version of `name` and takes a lease for `conn`.
    pub fn get(&mut self, conn: ConnId, name: &str) -> Result<Location, StoreError> {
        let id = *self.names.get(name).ok_or_else(|| StoreError::NotFound {
            name: name.to_owned(),
        })?;
        let c = self.conns.entry(conn).or_default();
        if c.lease_count >= LEASES_PER_CONN_MAX {
            return Err(StoreError::LimitExceeded(
                "1000000 leases on one connection; release some",
            ));
        }
        *c.leases.entry(id).or_insert(0) += 1;
        c.lease_count += 1;
        let last_use = self.tick();
        let o = self.objects.get_mut(&id).expect("named objects exist");
        o.leases += 1;
        o.last_use = last_use;
        o.last_use_at = Instant::now();
        self.gets += 1;
        Ok(Location {
            object_id: id,
            version: o.version,
            offset: o.offset,
            length: o.length,
            rows: o.rows,
            kind: o.kind,
        })
    }

    /// The current version of `name`, without taking a lease.
    pub fn version(&self, name: &str) -> Option<u64> {
        self.names.get(name).map(|id| self.objects[id].version)
    }

    /// Drops one lease of `conn` on `id`.
    pub fn release(&mut self, conn: ConnId, id: ObjectId) -> Result<(), StoreError> {
        let not_leased = StoreError::InvalidObject {
            object_id: id,
            reason: "not leased by this connection",
        };
        let Some(c) = self.conns.get_mut(&conn) else {
            return Err(not_leased);
        };
        let Some(count) = c.leases.get_mut(&id) else {
            return Err(not_leased);
        };
        *count -= 1;
        if *count == 0 {
            c.leases.remove(&id);
        }
        c.lease_count -= 1;
        self.drop_leases(id, 1);
        Ok(())
    }

    fn drop_leases(&mut self, id: ObjectId, n: u64) {
        let o = self.objects.get_mut(&id).expect("leased objects exist");
        assert!(
            o.leases >= n,
            "lease count of object {id} would go negative"
        );
        o.leases -= n;
        let current = self.names.get(&o.name) == Some(&id);
        if o.leases == 0 && !current {
            self.free_object(id);
        }
    }

    /// Unbinds `name`; its object is freed now or at its last release.
    pub fn delete(&mut self, name: &str) -> Result<(), StoreError> {
        let id = self
            .names
            .remove(name)
            .ok_or_else(|| StoreError::NotFound {
                name: name.to_owned(),
            })?;
        if self.objects[&id].leases == 0 {
            self.free_object(id);
        }
        Ok(())
    }

    /// Forgets a connection: releases its leases and aborts its pending creates.
    pub fn disconnect(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        for (id, n) in c.leases {
            self.drop_leases(id, n);
        }
        for id in c.pending {
            self.free_object(id);
        }
    }

    /// Every named object, by name.
    pub fn list(&self) -> Vec<Entry> {
        let mut v: Vec<Entry> = self
            .names
            .iter()
            .map(|(name, id)| {
                let o = &self.objects[id];
                Entry {
                    name: name.clone(),
                    object_id: *id,
                    version: o.version,
                    kind: o.kind,
                    rows: o.rows,
                    bytes: o.length,
                    leases: o.leases,
                    idle: o.last_use_at.elapsed(),
                }
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn stats(&self) -> StoreStats {
        let mut held_bytes = 0;
        let mut pending_bytes = 0;
        let mut leases = 0;
        for o in self.objects.values() {
            if o.leases > 0 {
                held_bytes += o.alloc_bytes;
            }
            if matches!(o.state, State::Pending { .. }) {
                pending_bytes += o.alloc_bytes;
            }
            leases += o.leases;
        }
        StoreStats {
            arena_bytes: self.alloc.capacity(),
            used_bytes: self.alloc.used_bytes(),
            free_bytes: self.alloc.free_bytes(),
            held_bytes,
            pending_bytes,
            largest_free_bytes: self.alloc.largest_free(),
            objects: self.objects.len() as u64,
            names: self.names.len() as u64,
            leases,
            connections: self.conns.len() as u64,
            evictions: self.evictions,
            puts: self.puts,
            gets: self.gets,
        }
    }

    /// Checks every invariant of the table; tests call it after each step.
    pub fn check_invariants(&self) {
        self.alloc.check_invariants();
        let live: u64 = self.objects.values().map(|o| o.alloc_bytes).sum();
        assert_eq!(
            live,
            self.alloc.used_bytes(),
            "object bytes != allocator used bytes"
        );
        for (name, id) in &self.names {
            let o = self.objects.get(id).expect("name points to a live object");
            assert_eq!(&o.name, name);
            assert_eq!(
                o.state,
                State::Sealed,
                "a name points to an unsealed object"
            );
        }
        let mut lease_sum: HashMap<ObjectId, u64> = HashMap::new();
        let mut pending_seen = HashSet::new();
        for c in self.conns.values() {
            assert_eq!(
                c.lease_count,
                c.leases.values().sum::<u64>(),
                "lease_count drifted"
            );
            for (&id, &n) in &c.leases {
                assert!(n > 0);
                assert!(self.objects.contains_key(&id), "a lease on a freed object");
                *lease_sum.entry(id).or_default() += n;
            }
            for id in &c.pending {
                assert!(pending_seen.insert(*id));
            }
        }
        for (id, o) in &self.objects {
            assert_eq!(
                o.leases,
                lease_sum.get(id).copied().unwrap_or(0),
                "lease count of {id} drifted"
            );
            match o.state {
                State::Pending { owner } => {
                    assert!(
                        self.conns
                            .get(&owner)
                            .is_some_and(|c| c.pending.contains(id)),
                        "orphan pending object"
                    );
                }
                State::Sealed => {
                    let current = self.names.get(&o.name) == Some(id);
                    assert!(
                        current || o.leases > 0,
                        "object {id} neither named nor leased but not freed"
                    );
                    assert!(o.length <= o.alloc_bytes);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
