//! The object table: chunks, versions, names, leases, LRU eviction, capacity.
//!
//! This is the only state the server's cores share. It is pure bookkeeping (no
//! I/O, no memory access) behind one small API, so that it can be tested against
//! a model and, later, sharded by object id across cores.
//!
//! - A **chunk** is an allocation of the arena's data region that a writer
//!   fills (`create`, then `seal` or `abort`). Sealed chunks are never written
//!   again. A chunk is counted by the versions that reference it and freed
//!   when none does.
//! - A **version** is what a name points to and what a get leases: a table (its
//!   manifest, see `ipc::manifest`, in the low and high regions, referencing
//!   chunks) or a blob (one chunk). A version lives while it is its name's
//!   current version or leased.
//!
//! Lifecycle:
//! ```text
//! create ──> chunk Pending{owner} ──seal──> chunk Sealed + new version, current for its name
//!               │                                 │ (new seal / delete / evict: no longer current)
//!             abort / owner disconnects           │ last lease released
//!               └──> freed                        └──> version freed ──> chunks no version references freed
//! ```
//! A leased version is never freed or evicted, nor is any chunk it references.
//!
//! The arena is cut in three regions (`Regions`): the low one holds the
//! manifests' batch messages (after 8 bytes of file magic at offset 0), the high
//! one their footers, the data region between them the chunks. Every table
//! version is then an IPC file `[0, footer end)` whose buffers lie above its
//! messages and below its footer, whatever chunks it references.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

use std::sync::Arc;

use crate::alloc::{round_up, Allocator, GRANULE_BYTES};
use crate::ipc::manifest::{ColumnLayout, Manifest};
use crate::util::human_bytes;

pub type ConnId = u64;
/// Chunks, versions and pending manifests share one id space: an id names one
/// of them, never two, and is never reused.
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

/// Where the current version of a name lies; the caller now holds a lease on
/// it (`object_id` is the version's id, which `release` takes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub object_id: ObjectId,
    pub version: u64,
    pub offset: u64,
    pub length: u64,
    pub rows: u64,
    pub kind: ObjectKind,
}

/// A pending chunk's range, for checking its bytes before the seal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub offset: u64,
    pub capacity: u64,
    pub kind: ObjectKind,
}

/// A new version to publish (`publish`).
#[derive(Debug)]
pub struct NewVersion<'a> {
    pub name: &'a str,
    /// Publish only if the name's current version is this one.
    pub if_version: Option<u64>,
    pub rows: u64,
    /// The writer's pending chunks that become part of the version, with the
    /// bytes written in each.
    pub new_chunks: &'a [(ObjectId, u64)],
    /// Sealed chunks of other versions it references too.
    pub shared: &'a [ObjectId],
    /// Its manifest room (`reserve_manifest`) and file length; `None` for a
    /// blob (one new chunk, read as it is).
    pub manifest: Option<(ObjectId, u64)>,
    pub layout: Option<Arc<Manifest>>,
    /// Brings back the spilled version of this number (its number is kept);
    /// refused if the name's spilled version is another (or none).
    pub restores: Option<u64>,
}

/// A column `find_column` found.
#[derive(Debug, Clone)]
pub struct FoundColumn {
    pub version: ObjectId,
    pub layout: Arc<Manifest>,
    pub column: ColumnLayout,
    /// Its index in `layout`'s schema.
    pub index: usize,
    /// The version's chunks that hold its buffers.
    pub chunks: Vec<ObjectId>,
}

/// Room reserved for a table version's manifest (`reserve_manifest`): its
/// messages go at `low_offset`, its footer at `high_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManifestSpace {
    pub id: ObjectId,
    pub low_offset: u64,
    pub high_offset: u64,
}

/// A sealed chunk as the catalog records it (`VersionRecord`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRecord {
    pub offset: u64,
    pub alloc_bytes: u64,
    pub length: u64,
}

/// A durable version (current or retained): what a restarted server needs to
/// serve it again from the same arena file (`durable/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRecord {
    pub name: String,
    pub number: u64,
    pub kind: ObjectKind,
    pub rows: u64,
    /// What a reader opens: `[0, footer end)` for tables, the chunk for blobs.
    pub offset: u64,
    pub length: u64,
    /// Every chunk the version references, each once.
    pub chunks: Vec<ChunkRecord>,
    /// Its manifest's (offset, bytes) in the low and the high region (tables).
    pub manifest: Option<((u64, u64), (u64, u64))>,
}

/// A change of the set of durable versions, in the order it happened
/// (`Store::record_changes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A version was published: it is its name's current version now.
    Published(VersionRecord),
    /// A version is no longer current nor retained (a newer one, delete,
    /// eviction), or a spilled one is gone (brought back, replaced,
    /// deleted): a restart must not bring it back.
    Forgotten {
        name: String,
        number: u64,
    },
    /// A version left the durable set (as `Forgotten`) while readers held it:
    /// it stays in the arena until its last release, which records
    /// `Forgotten`. A restart brings it back for the quarantine only, for
    /// those readers to lease it again (`restore_orphan`).
    Orphaned {
        name: String,
        number: u64,
    },
    /// A current version left the arena for a spill file (`--spill-dir`);
    /// its `Published` record was forgotten just before.
    Spilled(Spilled),
    /// Arena bytes were handed out (a writer's reservation, a manifest's
    /// room, a version taken back at a restart) or given back. Replayed,
    /// these say which bytes a killed server had given to writers and
    /// readers: its successor holds back those no recovered version explains
    /// (`quarantine`), since those clients may still write or read them.
    Allocated {
        offset: u64,
        bytes: u64,
    },
    Freed {
        offset: u64,
        bytes: u64,
    },
}

/// Why `Store::restore` refused a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreError {
    /// A range lies outside its region or overlaps another version's.
    Overlap(&'static str, u64),
    /// The same chunk offset with another size than an earlier version's.
    ChunkMismatch(u64),
    /// A version of this name with this or a higher number is already restored.
    OutOfOrder,
    /// An orphan whose name and number a restored version has already.
    Duplicate,
}

impl std::fmt::Display for RestoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestoreError::Overlap(what, at) => write!(
                f,
                "its {what} at arena offset {at} lies outside its region or overlaps another version's"
            ),
            RestoreError::ChunkMismatch(at) => write!(
                f,
                "its chunk at arena offset {at} has another size than the same chunk of another version"
            ),
            RestoreError::OutOfOrder => write!(f, "a newer version of its name came first"),
            RestoreError::Duplicate => write!(f, "a version of this name and number was restored already"),
        }
    }
}

/// A current version written to disk to make room (`--spill-dir`): it holds
/// no arena bytes; a get brings it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spilled {
    pub name: String,
    pub number: u64,
    pub kind: ObjectKind,
    pub rows: u64,
    /// Bytes it held in the arena.
    pub data_bytes: u64,
    pub file: std::path::PathBuf,
    pub file_bytes: u64,
}

/// What a spiller needs to write a version out (`spill_info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpillInfo {
    pub name: String,
    pub number: u64,
    pub kind: ObjectKind,
    pub rows: u64,
    /// What a reader opens (`[0, footer end)` for tables).
    pub offset: u64,
    pub length: u64,
    pub data_bytes: u64,
}

impl SpillInfo {
    /// The spilled entry for this version, once written to `file`.
    pub fn spilled_to(&self, file: std::path::PathBuf, file_bytes: u64) -> Spilled {
        Spilled {
            name: self.name.clone(),
            number: self.number,
            kind: self.kind,
            rows: self.rows,
            data_bytes: self.data_bytes,
            file,
            file_bytes,
        }
    }
}

/// The connection that holds the lease of a version being spilled.
pub const SPILL_CONN: ConnId = SERVER_SIDE_CONN_BIT | (SERVER_SIDE_CONN_BIT - 1);
/// The connection that holds the orphans a restart brought back
/// (`restore_orphan`) until the quarantine ends.
pub const RECOVERY_CONN: ConnId = SERVER_SIDE_CONN_BIT | (SERVER_SIDE_CONN_BIT - 2);

/// One name and its current version (`list`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub object_id: ObjectId,
    pub version: u64,
    pub kind: ObjectKind,
    pub rows: u64,
    /// Data bytes of the chunks the version references (manifest excluded).
    pub bytes: u64,
    /// Of `bytes`, those in chunks other live versions reference too.
    pub shared_bytes: u64,
    /// Older versions still readable by number, oldest first.
    pub retained: Vec<u64>,
    pub leases: u64,
    /// Since the object was last read or written.
    pub idle: std::time::Duration,
    /// Spilled: on disk, not in the arena (a get brings it back).
    pub on_disk: bool,
}

/// Unsealed creates (and manifest reservations) one connection may have at once.
pub const PENDING_PER_CONN_MAX: usize = 64;
/// Set in the ids of `Store::server_side_conn` connections.
pub const SERVER_SIDE_CONN_BIT: ConnId = 1 << 63;
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
        /// Held back after a restart (`Store::quarantine`).
        quarantined_bytes: u64,
        largest_free_bytes: u64,
        /// The data region's size: the most any chunk can take.
        arena_bytes: u64,
    },
    /// Unknown id, not owned by the caller, wrong state, or not leased.
    InvalidObject {
        object_id: ObjectId,
        reason: &'static str,
    },
    LimitExceeded(&'static str),
    /// `get_version` of a version that is not current or retained.
    VersionNotKept {
        name: String,
        version: u64,
        /// The versions that are (retained, then current).
        kept: Vec<u64>,
    },
    /// `if_version` did not match the name's current version.
    VersionConflict {
        name: String,
        expected: u64,
        current: Option<u64>,
    },
    /// The region that holds manifests has no room for one more (many versions
    /// of many-batch tables): manifests of unheld versions were evicted first.
    ManifestSpaceFull {
        requested_bytes: u64,
        free_bytes: u64,
        region_bytes: u64,
    },
    /// The sealed length is larger than the reservation.
    LengthTooLarge {
        object_id: ObjectId,
        length: u64,
        capacity: u64,
    },
    /// Room can be made by spilling this current version to disk
    /// (`set_spill`): the caller writes it out (`spill_info`), calls
    /// `finish_spill` or `abort_spill`, then asks again. The store holds a
    /// lease on it meanwhile, so it is not freed while it is read.
    NeedsSpill {
        victim: ObjectId,
    },
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::NotFound { name } => write!(f, "no object named {name:?} (never put, deleted, or evicted)"),
            StoreError::OutOfMemory { requested_bytes, arena_bytes, .. } if requested_bytes > arena_bytes => write!(
                f,
                "object of {} can never fit: the arena holds at most {} of data (the rest keeps table manifests); restart arrowpoold with a larger --memory",
                exact_if_close(*requested_bytes, *arena_bytes),
                exact_if_close(*arena_bytes, *requested_bytes),
            ),
            StoreError::OutOfMemory { requested_bytes, free_bytes, held_bytes, quarantined_bytes, largest_free_bytes, arena_bytes } => write!(
                f,
                "arena full: {} requested, {} free (largest free range {}), {} held by readers, {}arena {}; \
                 raise --memory, delete objects, or release leases",
                exact_if_close(*requested_bytes, (*free_bytes).max(*largest_free_bytes)),
                exact_if_close(*free_bytes, *requested_bytes),
                exact_if_close(*largest_free_bytes, *requested_bytes),
                human_bytes(*held_bytes),
                if *quarantined_bytes > 0 {
                    format!(
                        "{} held back for the clients of the server before a restart (--quarantine), ",
                        human_bytes(*quarantined_bytes)
                    )
                } else {
                    String::new()
                },
                human_bytes(*arena_bytes)
            ),
            StoreError::InvalidObject { object_id, reason } => write!(f, "object {object_id}: {reason}"),
            StoreError::LimitExceeded(what) => write!(f, "limit exceeded: {what}"),
            StoreError::VersionNotKept { name, version, kept } if kept.is_empty() => write!(
                f,
                "no version {version} of {name:?}: no object has this name (never put, deleted, or evicted)"
            ),
            StoreError::VersionNotKept { name, version, kept } => write!(
                f,
                "version {version} of {name:?} is not kept (kept: {kept:?}); arrowpoold keeps \
                 --keep-versions versions per name, and older ones while a reader holds them"
            ),
            StoreError::VersionConflict { name, expected, current } => match current {
                Some(c) => write!(f, "{name:?} is at version {c}, not {expected}: another writer published first; get it again and redo the change"),
                None => write!(f, "{name:?} has no current version (deleted or evicted), not {expected}"),
            },
            StoreError::ManifestSpaceFull { requested_bytes, free_bytes, region_bytes } => write!(
                f,
                "no room for a table manifest: {} requested, {} free of the {} the arena keeps for \
                 manifests (it grows with --memory); delete tables or release leases",
                human_bytes(*requested_bytes),
                human_bytes(*free_bytes),
                human_bytes(*region_bytes)
            ),
            StoreError::LengthTooLarge { object_id, length, capacity } => {
                write!(f, "object {object_id}: sealed length {length} exceeds its capacity {capacity}")
            }
            StoreError::NeedsSpill { victim } => {
                write!(f, "version {victim} must be spilled to make room")
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

/// Bytes at the start of the arena that hold the file magic every table
/// version's file starts with (`ipc::manifest::ARENA_MAGIC`).
pub const MAGIC_BYTES: u64 = GRANULE_BYTES;

/// How the arena is cut: `[0, MAGIC_BYTES)` the magic, `[MAGIC_BYTES,
/// low_end)` manifests' batch messages, `[low_end, high_start)` chunks,
/// `[high_start, end)` manifests' footers.
///
/// The manifest regions take 1/128 (messages, 256 KiB to 1 GiB) and 1/256
/// (footers, 256 KiB to 256 MiB) of the arena, at most 1/16 each: a batch
/// message costs about 64 bytes per column, a footer the schema plus 24 bytes
/// per batch, so a 16 GiB arena holds the manifests of about a thousand versions
/// of a 165-column table in 100 batches. Their pages are only touched as
/// manifests are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Regions {
    pub low_end: u64,
    pub high_start: u64,
    pub end: u64,
}

impl Regions {
    pub fn new(capacity: u64, large_align: u64) -> Regions {
        let end = capacity / GRANULE_BYTES * GRANULE_BYTES;
        let low = (end / 128).clamp(256 << 10, 1 << 30).min(end / 16);
        let high = (end / 256).clamp(256 << 10, 256 << 20).min(end / 16);
        // The data region starts on a large-object boundary (hugepages), unless
        // the arena is so small that rounding would eat a quarter of it.
        let mut low_end = round_up(MAGIC_BYTES + low);
        if low_end.next_multiple_of(large_align) <= end / 4 {
            low_end = low_end.next_multiple_of(large_align);
        }
        let high_start = end.saturating_sub(round_up(high)).max(low_end);
        Regions {
            low_end: low_end.min(end),
            high_start,
            end,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Region {
    Data,
    Low,
    High,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Pending { owner: ConnId },
    Sealed,
}

#[derive(Debug, Clone)]
struct Chunk {
    kind: ObjectKind,
    /// The name the writer created it for (`seal` publishes it there).
    name: String,
    offset: u64,
    /// Bytes reserved in the allocator (granule-rounded).
    alloc_bytes: u64,
    /// Bytes of content (set at seal).
    length: u64,
    state: ChunkState,
    /// Live versions that reference it; 0 while pending.
    refs: u32,
}

/// A manifest's two allocations: (offset, bytes) in the low and high regions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ManifestAlloc {
    low: (u64, u64),
    high: (u64, u64),
}

#[derive(Debug, Clone)]
struct Version {
    name: String,
    number: u64,
    kind: ObjectKind,
    rows: u64,
    /// Chunks referenced, each once.
    chunks: Vec<ObjectId>,
    manifest: Option<ManifestAlloc>,
    /// The manifest and its columns, for later versions to share them.
    layout: Option<(Arc<Manifest>, Vec<Vec<ColumnLayout>>)>,
    /// What a reader opens: `[0, footer end)` for tables, the chunk for blobs.
    offset: u64,
    length: u64,
    data_bytes: u64,
    leases: u64,
    /// LRU clock value of the last get or seal.
    last_use: u64,
    last_use_at: Instant,
    /// A spill file holding exactly this version (it was brought back from
    /// it): evicting it again needs no write.
    disk_copy: Option<Spilled>,
    /// Left the durable set while leased (`Change::Orphaned`): its last
    /// release records `Forgotten`.
    orphaned: bool,
}

#[derive(Debug, Default)]
struct Conn {
    leases: HashMap<ObjectId, u64>,
    /// Sum of `leases`' counts, kept so that the limit check on every get is O(1).
    lease_count: u64,
    /// Pending chunks and manifest reservations.
    pending: HashSet<ObjectId>,
    /// A server-side writer's connection (`server_side_conn`): no limit on
    /// pending chunks (its count is the writer's, bounded by its input).
    server_side: bool,
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
    /// Live versions (current or leased), pending chunks and manifest
    /// reservations: what writers and readers hold, not how it is stored.
    pub objects: u64,
    pub names: u64,
    pub leases: u64,
    pub connections: u64,
    pub evictions: u64,
    pub puts: u64,
    pub gets: u64,
    /// Current versions on disk (`--spill-dir`), their files' bytes, and
    /// versions spilled since start.
    pub spilled_versions: u64,
    pub spilled_bytes: u64,
    pub spills: u64,
    /// Held back after a restart (`quarantine`).
    pub quarantined_bytes: u64,
    /// Versions no name reaches any more that readers still hold (replaced
    /// or deleted while leased; after a restart, held for the readers of the
    /// server before until the quarantine ends).
    pub orphaned_versions: u64,
}

#[derive(Debug)]
pub struct Store {
    regions: Regions,
    data: Allocator,
    low: Allocator,
    high: Allocator,
    large_align: u64,
    chunks: HashMap<ObjectId, Chunk>,
    versions: HashMap<ObjectId, Version>,
    /// Manifest room reserved by a connection, not yet part of a version.
    manifests: HashMap<ObjectId, (ConnId, ManifestAlloc)>,
    /// Name -> its current version.
    names: HashMap<String, ObjectId>,
    /// Name -> older versions kept readable by number (`--keep-versions`),
    /// oldest first.
    retained: HashMap<String, VecDeque<ObjectId>>,
    /// Versions kept per name, the current one included (at least 1).
    keep_versions: usize,
    /// Lowest buffer offset of a column -> (version, batch, column) of the
    /// table versions that have it (`find_column`).
    columns: HashMap<u64, Vec<(ObjectId, u32, u32)>>,
    /// Last version number handed out per name; survives delete so numbers only grow.
    last_version: HashMap<String, u64>,
    conns: HashMap<ConnId, Conn>,
    /// Changes to durable versions not yet taken (`record_changes`); `None`
    /// when nothing records them.
    changes: Option<Vec<Change>>,
    /// Current versions are spilled instead of evicted (`set_spill`).
    spill: bool,
    /// Name -> its current version, on disk.
    spilled: HashMap<String, Spilled>,
    /// Spill files no longer needed, for the caller to remove.
    spill_garbage: Vec<std::path::PathBuf>,
    spills: u64,
    /// The version a copy is being written of (`next_copy_candidate`).
    copying: Option<ObjectId>,
    /// Ranges held back after a restart (`quarantine`), and until when.
    quarantined: Vec<(u64, u64)>,
    quarantine_until: Option<std::time::Instant>,
    /// Versions the server before a restart had orphaned (`restore_orphan`),
    /// by name and number, for its readers to lease again until the
    /// quarantine ends; `RECOVERY_CONN` holds a lease on each till then.
    recovered_orphans: HashMap<(String, u64), ObjectId>,
    next_id: ObjectId,
    clock: u64,
    evictions: u64,
    puts: u64,
    gets: u64,
}

impl Store {
    /// A store over an arena of `capacity` bytes; chunks of 2 MiB and more are
    /// aligned to `large_align`.
    pub fn new(capacity: u64, large_align: u64) -> Store {
        let large_align = large_align.max(GRANULE_BYTES);
        let regions = Regions::new(capacity, large_align);
        Store {
            regions,
            data: Allocator::over(regions.low_end, regions.high_start),
            low: Allocator::over(MAGIC_BYTES, regions.low_end),
            high: Allocator::over(regions.high_start, regions.end),
            large_align,
            chunks: HashMap::new(),
            versions: HashMap::new(),
            manifests: HashMap::new(),
            names: HashMap::new(),
            retained: HashMap::new(),
            keep_versions: 1,
            columns: HashMap::new(),
            last_version: HashMap::new(),
            conns: HashMap::new(),
            changes: None,
            spill: false,
            spilled: HashMap::new(),
            spill_garbage: Vec::new(),
            spills: 0,
            copying: None,
            quarantined: Vec::new(),
            quarantine_until: None,
            recovered_orphans: HashMap::new(),
            next_id: 1,
            clock: 0,
            evictions: 0,
            puts: 0,
            gets: 0,
        }
    }

    /// From now on, remembers every change of the durable versions (current
    /// and retained ones) for `take_changes`: what `--state-dir` writes to
    /// its catalog.
    pub fn record_changes(&mut self) {
        self.changes.get_or_insert_with(Vec::new);
        self.data.journal();
        self.low.journal();
        self.high.journal();
    }

    /// The changes since the last call, oldest first (the arena's
    /// `Allocated` and `Freed` last: they concern other bytes than each
    /// other's and the versions' records, so only their own order matters).
    pub fn take_changes(&mut self) -> Vec<Change> {
        let mut changes = self
            .changes
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        for a in [&mut self.data, &mut self.low, &mut self.high] {
            changes.extend(
                a.take_journal()
                    .into_iter()
                    .map(|(allocated, offset, bytes)| {
                        if allocated {
                            Change::Allocated { offset, bytes }
                        } else {
                            Change::Freed { offset, bytes }
                        }
                    }),
            );
        }
        changes
    }

    /// Whether changes are waiting for `take_changes`.
    pub fn has_changes(&self) -> bool {
        self.changes.as_ref().is_some_and(|c| !c.is_empty())
            || self.data.has_journal()
            || self.low.has_journal()
            || self.high.has_journal()
    }

    /// Every allocated range of the arena, neighbours merged: what a fresh
    /// catalog records as `Allocated` (with `durable_state`).
    pub fn allocated_ranges(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for a in [&self.low, &self.data, &self.high] {
            for (o, n) in a.used_ranges() {
                match out.last_mut() {
                    Some((lo, ln)) if *lo + *ln == o => *ln += n,
                    _ => out.push((o, n)),
                }
            }
        }
        out
    }

    /// Holds back, until `until`, every free byte of `ranges`: what the
    /// server before this one had handed out and no recovered version
    /// explains (a writer's reservation, a replaced version a reader still
    /// held). Their clients may still be writing or reading there: were the
    /// bytes reused at once, a killed server's writer would overwrite a new
    /// table, or a reader would see one. Returns the bytes held back.
    pub fn quarantine(&mut self, ranges: &[(u64, u64)], until: std::time::Instant) -> u64 {
        let mut bytes = 0;
        for &(offset, len) in ranges {
            let end = offset.saturating_add(len);
            for a in [&mut self.low, &mut self.data, &mut self.high] {
                for (o, n) in a.take_free_within(offset, end) {
                    bytes += n;
                    self.quarantined.push((o, n));
                }
            }
        }
        if !self.quarantined.is_empty() {
            self.quarantine_until = Some(until);
        }
        bytes
    }

    /// Bytes `quarantine` holds back now.
    pub fn quarantined_bytes(&self) -> u64 {
        self.quarantined.iter().map(|&(_, n)| n).sum()
    }

    /// Gives back the quarantined bytes once their time is up (now, when
    /// `force`). Returns the bytes given back.
    pub fn end_quarantine(&mut self, force: bool) -> u64 {
        match self.quarantine_until {
            Some(until) if force || std::time::Instant::now() >= until => {}
            _ => return 0,
        }
        self.quarantine_until = None;
        let mut bytes = 0;
        // Orphans no reader leased again go now (their bytes are counted when
        // freed: not here, they were never quarantined).
        self.disconnect(RECOVERY_CONN);
        self.recovered_orphans.clear();
        for (o, n) in std::mem::take(&mut self.quarantined) {
            let a = if o < self.regions.low_end {
                &mut self.low
            } else if o < self.regions.high_start {
                &mut self.data
            } else {
                &mut self.high
            };
            a.free(o, n);
            bytes += n;
        }
        bytes
    }

    fn push_change(&mut self, change: Change) {
        if let Some(changes) = &mut self.changes {
            changes.push(change);
        }
    }

    /// Version `id` leaves the durable set (call before it is freed, or
    /// left to its readers): `Forgotten`, or `Orphaned` while it is leased.
    fn forget(&mut self, id: ObjectId) {
        let v = self
            .versions
            .get_mut(&id)
            .expect("forgetting a known version");
        // (A spill's hold counts as a reader's: it ends soon, and a restart
        // in between only holds the version back for the quarantine.)
        v.orphaned = v.leases > 0;
        if self.changes.is_none() {
            return;
        }
        let (name, number) = (v.name.clone(), v.number);
        let change = if v.orphaned {
            Change::Orphaned { name, number }
        } else {
            Change::Forgotten { name, number }
        };
        self.push_change(change);
    }

    /// A spilled entry leaves the store (brought back, replaced, deleted).
    fn forget_spilled(&mut self, s: &Spilled) {
        self.push_change(Change::Forgotten {
            name: s.name.clone(),
            number: s.number,
        });
    }

    fn version_record(&self, id: ObjectId) -> VersionRecord {
        let v = &self.versions[&id];
        VersionRecord {
            name: v.name.clone(),
            number: v.number,
            kind: v.kind,
            rows: v.rows,
            offset: v.offset,
            length: v.length,
            chunks: v
                .chunks
                .iter()
                .map(|c| {
                    let c = &self.chunks[c];
                    ChunkRecord {
                        offset: c.offset,
                        alloc_bytes: c.alloc_bytes,
                        length: c.length,
                    }
                })
                .collect(),
            manifest: v.manifest.map(|m| (m.low, m.high)),
        }
    }

    /// Every durable version (retained ones oldest first, then the current
    /// one, name by name) and the last number handed out per name: the
    /// store's whole durable state, for a fresh catalog.
    pub fn durable_state(&self) -> (Vec<VersionRecord>, Vec<(String, u64)>) {
        let mut names: Vec<&String> = self.names.keys().collect();
        names.sort();
        let mut records = Vec::new();
        for name in names {
            for id in self.retained.get(name).into_iter().flatten() {
                records.push(self.version_record(*id));
            }
            records.push(self.version_record(self.names[name]));
        }
        let mut last: Vec<(String, u64)> = self
            .last_version
            .iter()
            .map(|(n, v)| (n.clone(), *v))
            .collect();
        last.sort();
        (records, last)
    }

    /// Versions out of the durable set that readers still hold
    /// (`Change::Orphaned`), for a fresh catalog.
    pub fn orphaned_state(&self) -> Vec<VersionRecord> {
        let mut ids: Vec<ObjectId> = self
            .versions
            .iter()
            .filter(|(_, v)| v.orphaned)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_by_key(|id| (&self.versions[id].name, self.versions[id].number));
        ids.into_iter().map(|id| self.version_record(id)).collect()
    }

    /// Every spilled version, by name (for a fresh catalog).
    pub fn spilled_state(&self) -> Vec<Spilled> {
        let mut v: Vec<Spilled> = self.spilled.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Brings back a spilled entry a catalog recorded (its file checked by
    /// the caller); ignored when the name has a current version already.
    pub fn restore_spilled(&mut self, s: Spilled) -> bool {
        if self.names.contains_key(&s.name) {
            return false;
        }
        self.restore_last_version(&s.name, s.number);
        self.spilled.insert(s.name.clone(), s);
        true
    }

    /// Raises the last number handed out for `name` to at least `number`, so
    /// a restarted server never hands out a number twice.
    pub fn restore_last_version(&mut self, name: &str, number: u64) {
        let n = self.last_version.entry(name.to_owned()).or_insert(0);
        *n = (*n).max(number);
    }

    /// Brings back a version a catalog recorded, its bytes already in the
    /// arena and checked by the caller: its chunks (shared with versions
    /// restored before it when at the same offset) and its manifest room are
    /// taken from the allocators, and it becomes its name's current version
    /// (the previous one retained, as `set_keep_versions` allows). Versions of
    /// one name come oldest first. A refusal changes nothing.
    pub fn restore(
        &mut self,
        record: &VersionRecord,
        layout: Option<Arc<Manifest>>,
    ) -> Result<ObjectId, RestoreError> {
        if self
            .names
            .get(&record.name)
            .is_some_and(|id| self.versions[id].number >= record.number)
        {
            return Err(RestoreError::OutOfOrder);
        }
        let vid = self.take_back(record, layout)?;
        self.restore_last_version(&record.name, record.number);
        if let Some(prev) = self.names.insert(record.name.clone(), vid) {
            self.retire(&record.name, prev);
        }
        Ok(vid)
    }

    /// Brings back a version the server before a restart had orphaned
    /// (`Change::Orphaned`: readers held it after it stopped being current or
    /// retained), after every current and retained version is restored: its
    /// ranges are taken as `restore` takes them (sharing chunks), it stays
    /// out of its name's versions, and a lease of `RECOVERY_CONN` keeps it
    /// until `end_quarantine`, so those readers, reconnecting, can lease it
    /// again by name and number (`get_version`) before its bytes are reused.
    pub fn restore_orphan(
        &mut self,
        record: &VersionRecord,
        layout: Option<Arc<Manifest>>,
        until: std::time::Instant,
    ) -> Result<ObjectId, RestoreError> {
        let key = (record.name.clone(), record.number);
        let known = self.recovered_orphans.contains_key(&key)
            || self
                .names
                .get(&record.name)
                .into_iter()
                .chain(self.retained.get(&record.name).into_iter().flatten())
                .any(|id| self.versions[id].number == record.number);
        if known {
            return Err(RestoreError::Duplicate);
        }
        let vid = self.take_back(record, layout)?;
        self.restore_last_version(&record.name, record.number);
        let v = self.versions.get_mut(&vid).expect("just inserted");
        v.orphaned = true;
        v.leases += 1;
        let c = self.conns.entry(RECOVERY_CONN).or_default();
        *c.leases.entry(vid).or_insert(0) += 1;
        c.lease_count += 1;
        self.recovered_orphans.insert(key, vid);
        self.quarantine_until = Some(self.quarantine_until.map_or(until, |t| t.max(until)));
        Ok(vid)
    }

    /// Takes `record`'s chunks (shared with versions taken back before when
    /// at the same offset) and manifest room from the allocators and makes
    /// it a version, in no name's list yet. A refusal changes nothing.
    fn take_back(
        &mut self,
        record: &VersionRecord,
        layout: Option<Arc<Manifest>>,
    ) -> Result<ObjectId, RestoreError> {
        // Claim every range, undoing the claims made so far on a refusal.
        let mut taken: Vec<(Region, u64, u64)> = Vec::new();
        let mut shared: Vec<ObjectId> = Vec::new();
        let mut result = Ok(());
        let mut manifest_ranges = Vec::new();
        if let Some((low, high)) = record.manifest {
            manifest_ranges.push((Region::Low, low, "manifest messages"));
            manifest_ranges.push((Region::High, high, "manifest footer"));
        }
        let existing: HashMap<u64, ObjectId> =
            self.chunks.iter().map(|(id, c)| (c.offset, *id)).collect();
        for c in &record.chunks {
            if let Some(&id) = existing.get(&c.offset) {
                let chunk = &self.chunks[&id];
                if chunk.alloc_bytes != c.alloc_bytes || chunk.length != c.length {
                    result = Err(RestoreError::ChunkMismatch(c.offset));
                    break;
                }
                if shared.contains(&id) {
                    result = Err(RestoreError::ChunkMismatch(c.offset));
                    break;
                }
                shared.push(id);
            } else if c.length <= c.alloc_bytes && self.data.take(c.offset, c.alloc_bytes) {
                taken.push((Region::Data, c.offset, c.alloc_bytes));
            } else {
                result = Err(RestoreError::Overlap("chunk", c.offset));
                break;
            }
        }
        if result.is_ok() {
            for &(region, (offset, bytes), what) in &manifest_ranges {
                if self.allocator(region).take(offset, bytes) {
                    taken.push((region, offset, bytes));
                } else {
                    result = Err(RestoreError::Overlap(what, offset));
                    break;
                }
            }
        }
        if let Err(e) = result {
            for (region, offset, bytes) in taken {
                self.allocator(region).free(offset, bytes);
            }
            return Err(e);
        }
        let mut ids = Vec::with_capacity(record.chunks.len());
        let mut data_bytes = 0;
        for c in &record.chunks {
            data_bytes += c.length;
            if let Some(&id) = existing.get(&c.offset) {
                self.chunks.get_mut(&id).expect("found above").refs += 1;
                ids.push(id);
                continue;
            }
            let id = self.new_id();
            self.chunks.insert(
                id,
                Chunk {
                    kind: record.kind,
                    name: record.name.clone(),
                    offset: c.offset,
                    alloc_bytes: c.alloc_bytes,
                    length: c.length,
                    state: ChunkState::Sealed,
                    refs: 1,
                },
            );
            ids.push(id);
        }
        let vid = self.new_id();
        let columns = self.index_columns(vid, layout.as_deref());
        let last_use = self.tick();
        self.versions.insert(
            vid,
            Version {
                name: record.name.clone(),
                number: record.number,
                kind: record.kind,
                rows: record.rows,
                chunks: ids,
                manifest: record
                    .manifest
                    .map(|(low, high)| ManifestAlloc { low, high }),
                offset: record.offset,
                length: record.length,
                data_bytes,
                layout: layout.zip(columns),
                leases: 0,
                last_use,
                last_use_at: Instant::now(),
                disk_copy: None,
                orphaned: false,
            },
        );
        Ok(vid)
    }

    /// Keeps the `n` latest versions of every name readable by number (the
    /// current one included; at least 1). Older ones go when a new version
    /// comes, at their last release if leased; eviction takes retained versions
    /// before current ones.
    pub fn set_keep_versions(&mut self, n: usize) {
        self.keep_versions = n.max(1);
    }

    /// Versions kept per name (`set_keep_versions`).
    pub fn keep_versions(&self) -> usize {
        self.keep_versions
    }

    /// From now on, making room spills current versions (`NeedsSpill`)
    /// instead of dropping them; retained older versions are still dropped.
    pub fn set_spill(&mut self, on: bool) {
        self.spill = on;
    }

    fn pin(&mut self, id: ObjectId) {
        let c = self.conns.entry(SPILL_CONN).or_default();
        *c.leases.entry(id).or_insert(0) += 1;
        c.lease_count += 1;
        self.versions
            .get_mut(&id)
            .expect("pinned versions exist")
            .leases += 1;
    }

    /// What to write out for victim `id` of a `NeedsSpill`.
    pub fn spill_info(&self, id: ObjectId) -> Option<SpillInfo> {
        let v = self.versions.get(&id)?;
        Some(SpillInfo {
            name: v.name.clone(),
            number: v.number,
            kind: v.kind,
            rows: v.rows,
            offset: v.offset,
            length: v.length,
            data_bytes: v.data_bytes,
        })
    }

    /// Victim `id` is on disk (`spilled`): if it is still its name's current
    /// version and nobody else holds it, it leaves the arena (its chunks
    /// freed as eviction frees them) and becomes the name's spilled version;
    /// else nothing changes and `false` says the file is not needed.
    pub fn finish_spill(&mut self, id: ObjectId, spilled: Spilled) -> bool {
        let _ = self.release(SPILL_CONN, id);
        let Some(v) = self.versions.get(&id) else {
            return false;
        };
        let name = v.name.clone();
        if self.names.get(&name) != Some(&id) || v.leases > 0 {
            return false;
        }
        self.evict(id);
        self.spills += 1;
        self.push_change(Change::Spilled(spilled.clone()));
        self.spilled.insert(name, spilled);
        true
    }

    /// The least recently used current version without a disk copy (and
    /// not being spilled or copied), pinned, when more than `high_water`
    /// bytes are in use: for writing a copy ahead of need (`finish_copy`).
    pub fn next_copy_candidate(&mut self, high_water: u64) -> Option<(ObjectId, SpillInfo)> {
        let used = self.regions.end
            - (self.data.free_bytes() + self.low.free_bytes() + self.high.free_bytes());
        if used <= high_water {
            return None;
        }
        let pinned = self.conns.get(&SPILL_CONN);
        let id = self
            .names
            .values()
            .filter(|id| {
                self.versions[id].disk_copy.is_none()
                    && !pinned.is_some_and(|c| c.leases.contains_key(id))
            })
            .min_by_key(|id| self.versions[id].last_use)
            .copied()?;
        self.pin(id);
        self.copying = Some(id);
        Some((id, self.spill_info(id)?))
    }

    /// Whether a copy is being written ahead (its version is held meanwhile).
    pub fn copying(&self) -> bool {
        self.copying.is_some()
    }

    /// Whether a version is being written to disk (a spill or a copy ahead):
    /// room may appear when it is done.
    pub fn spilling(&self) -> bool {
        self.conns
            .get(&SPILL_CONN)
            .is_some_and(|c| c.lease_count > 0)
    }

    /// The versions being written to disk now (spills and the copy ahead),
    /// as `name vN` for a log line.
    pub fn being_written(&self) -> Vec<String> {
        let Some(c) = self.conns.get(&SPILL_CONN) else {
            return Vec::new();
        };
        c.leases
            .keys()
            .filter_map(|id| self.versions.get(id))
            .map(|v| format!("{:?} v{}", v.name, v.number))
            .collect()
    }

    /// Writing a copy ahead failed: nothing changes.
    pub fn abort_copy(&mut self, id: ObjectId) {
        self.copying = None;
        let _ = self.release(SPILL_CONN, id);
    }

    /// A copy of version `id` is on disk (`next_copy_candidate`): kept as its
    /// disk copy if it is still current; `false` if the file is not needed.
    pub fn finish_copy(&mut self, id: ObjectId, copy: Spilled) -> bool {
        self.copying = None;
        let _ = self.release(SPILL_CONN, id);
        let Some(v) = self.versions.get(&id) else {
            return false;
        };
        if self.names.get(&v.name) != Some(&id) {
            return false;
        }
        self.versions.get_mut(&id).expect("seen").disk_copy = Some(copy);
        true
    }

    /// Writing victim `id` out failed: it stays where it was.
    pub fn abort_spill(&mut self, id: ObjectId) {
        let _ = self.release(SPILL_CONN, id);
    }

    /// The spilled version of `name`, if it has one.
    /// The schema of table version `id` (from its manifest), without taking
    /// a lease or counting as a use: for listings.
    pub fn table_schema(&self, id: ObjectId) -> Option<arrow_schema::SchemaRef> {
        let (manifest, _) = self.versions.get(&id)?.layout.as_ref()?;
        Some(manifest.schema.clone())
    }

    pub fn spilled(&self, name: &str) -> Option<Spilled> {
        self.spilled.get(name).cloned()
    }

    /// Spill files no longer needed (replaced, deleted, brought back).
    pub fn take_spill_garbage(&mut self) -> Vec<std::path::PathBuf> {
        std::mem::take(&mut self.spill_garbage)
    }

    pub fn regions(&self) -> Regions {
        self.regions
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn new_id(&mut self) -> ObjectId {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn allocator(&mut self, region: Region) -> &mut Allocator {
        match region {
            Region::Data => &mut self.data,
            Region::Low => &mut self.low,
            Region::High => &mut self.high,
        }
    }

    /// Where the next put of the largest current version would go if nothing
    /// were evicted (`create`'s placement, not taken): `(offset, bytes)` in the
    /// data region, or `None` without versions or room. What the server warms
    /// ahead of that put (`server::warm_ahead`).
    pub fn next_put_range(&self) -> Option<(u64, u64)> {
        let largest = self
            .names
            .values()
            .filter_map(|id| self.versions.get(id))
            .map(|v| v.data_bytes)
            .max()?;
        let align = if largest >= LARGE_OBJECT_BYTES {
            self.large_align
        } else {
            GRANULE_BYTES
        };
        self.data.fit(largest, align)
    }

    /// Whether any writer holds a pending chunk or manifest room (a put,
    /// publish or ingest under way).
    pub fn has_pending(&self) -> bool {
        !self.manifests.is_empty()
            || self
                .chunks
                .values()
                .any(|c| matches!(c.state, ChunkState::Pending { .. }))
    }

    /// Whether `[offset, offset + len)` of the data region is free.
    pub fn is_free(&self, offset: u64, len: u64) -> bool {
        self.data.is_free(offset, len)
    }

    /// Registers a connection. Operations from unknown connections register it implicitly.
    pub fn connect(&mut self, conn: ConnId) {
        self.conns.entry(conn).or_default();
    }

    /// A connection of the server's own for one writer (an ingest), with no
    /// limit on its pending chunks. The writer must `disconnect` it when done,
    /// which aborts whatever it left pending. Its ids never collide with the
    /// socket connections' (which count up from 1).
    pub fn server_side_conn(&mut self) -> ConnId {
        let id = SERVER_SIDE_CONN_BIT | self.new_id();
        self.conns.insert(
            id,
            Conn {
                server_side: true,
                ..Conn::default()
            },
        );
        id
    }

    fn check_pending_limit(&mut self, conn: ConnId) -> Result<(), StoreError> {
        let c = self.conns.entry(conn).or_default();
        if !c.server_side && c.pending.len() >= PENDING_PER_CONN_MAX {
            return Err(StoreError::LimitExceeded(
                "64 unsealed creates on one connection; seal or abort them",
            ));
        }
        Ok(())
    }

    /// Reserves a chunk of `size` bytes for `name`, evicting unheld LRU
    /// versions if needed.
    pub fn create(
        &mut self,
        conn: ConnId,
        name: &str,
        kind: ObjectKind,
        size: u64,
    ) -> Result<Reservation, StoreError> {
        self.check_pending_limit(conn)?;
        let align = if size >= LARGE_OBJECT_BYTES {
            self.large_align
        } else {
            GRANULE_BYTES
        };
        let (offset, alloc_bytes) = self.alloc_evicting(Region::Data, size.max(1), align, name)?;
        let id = self.new_id();
        self.chunks.insert(
            id,
            Chunk {
                kind,
                name: name.to_owned(),
                offset,
                alloc_bytes,
                length: 0,
                state: ChunkState::Pending { owner: conn },
                refs: 0,
            },
        );
        self.conns.entry(conn).or_default().pending.insert(id);
        Ok(Reservation {
            object_id: id,
            offset,
            capacity: alloc_bytes,
        })
    }

    /// Reserves room for the manifest of a new version of `name`: `low` bytes
    /// for its messages, `high` for its footer. `seal_table` uses it; `abort`
    /// or the owner's disconnect gives it back.
    pub fn reserve_manifest(
        &mut self,
        conn: ConnId,
        name: &str,
        low: u64,
        high: u64,
    ) -> Result<ManifestSpace, StoreError> {
        self.check_pending_limit(conn)?;
        let low = self.alloc_evicting(Region::Low, low.max(1), GRANULE_BYTES, name)?;
        let high = match self.alloc_evicting(Region::High, high.max(1), GRANULE_BYTES, name) {
            Ok(h) => h,
            Err(e) => {
                self.low.free(low.0, low.1);
                return Err(e);
            }
        };
        let id = self.new_id();
        self.manifests
            .insert(id, (conn, ManifestAlloc { low, high }));
        self.conns.entry(conn).or_default().pending.insert(id);
        Ok(ManifestSpace {
            id,
            low_offset: low.0,
            high_offset: high.0,
        })
    }

    /// Allocates in `region`, evicting unheld versions in LRU order if needed.
    /// The current version of `for_name` (the one being replaced) goes last:
    /// evicting it makes the name briefly unresolvable, so it is only done
    /// when nothing else frees enough room.
    fn alloc_evicting(
        &mut self,
        region: Region,
        size: u64,
        align: u64,
        for_name: &str,
    ) -> Result<(u64, u64), StoreError> {
        if self.quarantine_until.is_some() {
            self.end_quarantine(false);
        }
        if let Some(r) = self.allocator(region).alloc(size, align) {
            return Ok(r);
        }
        // Only evict when eviction can possibly make room: never throw away tables
        // for a request that cannot fit anyway.
        let candidates = self.evictable(for_name);
        let gain: u64 = candidates
            .iter()
            .map(|&(_, id)| self.freed_by(id, region))
            .sum();
        if self.allocator(region).free_bytes() + gain >= size {
            for (_, id) in candidates {
                if self.freed_by(id, region) == 0 {
                    continue;
                }
                let v = &self.versions[&id];
                if self.spill && self.names.get(&v.name) == Some(&id) {
                    if let Some(copy) = self.versions.get_mut(&id).and_then(|v| v.disk_copy.take())
                    {
                        // Its file is still on disk: leaving costs no write.
                        let name = copy.name.clone();
                        self.evict(id);
                        self.spills += 1;
                        self.push_change(Change::Spilled(copy.clone()));
                        self.spilled.insert(name, copy);
                        if let Some(r) = self.allocator(region).alloc(size, align) {
                            return Ok(r);
                        }
                        continue;
                    }
                    // Written to disk by the caller, outside the lock.
                    self.pin(id);
                    return Err(StoreError::NeedsSpill { victim: id });
                }
                self.evict(id);
                if let Some(r) = self.allocator(region).alloc(size, align) {
                    return Ok(r);
                }
            }
        }
        Err(self.no_room(region, size))
    }

    /// Bytes of `region` that freeing version `id` would give back.
    fn freed_by(&self, id: ObjectId, region: Region) -> u64 {
        let v = &self.versions[&id];
        match region {
            Region::Data => v
                .chunks
                .iter()
                .map(|c| &self.chunks[c])
                .filter(|c| c.refs == 1)
                .map(|c| c.alloc_bytes)
                .sum(),
            Region::Low => v.manifest.map_or(0, |m| m.low.1),
            Region::High => v.manifest.map_or(0, |m| m.high.1),
        }
    }

    /// Unleased versions to evict, in order: retained older versions first,
    /// then current ones, least recently used first, the current version of
    /// `last_name` at the end.
    fn evictable(&self, last_name: &str) -> Vec<((bool, bool, u64), ObjectId)> {
        let current = self.names.iter().map(|(name, id)| (name, *id, true));
        let retained = self
            .retained
            .iter()
            .flat_map(|(name, ids)| ids.iter().map(move |id| (name, *id, false)));
        let mut v: Vec<((bool, bool, u64), ObjectId)> = current
            .chain(retained)
            .filter_map(|(name, id, is_current)| {
                let v = &self.versions[&id];
                (v.leases == 0).then_some((
                    (is_current && name == last_name, is_current, v.last_use),
                    id,
                ))
            })
            .collect();
        v.sort_unstable();
        v
    }

    fn evict(&mut self, id: ObjectId) {
        let name = self.versions[&id].name.clone();
        self.forget(id);
        if self.names.get(&name) == Some(&id) {
            // The name goes, and its older versions with it (now, or at their
            // last release): a name is never readable by number only.
            self.names.remove(&name);
            self.evictions += 1;
            for old in self.retained.remove(&name).into_iter().flatten() {
                self.forget(old);
                if self.versions[&old].leases == 0 {
                    self.free_version(old);
                }
            }
        } else if let Some(list) = self.retained.get_mut(&name) {
            list.retain(|&r| r != id);
            if list.is_empty() {
                self.retained.remove(&name);
            }
        }
        self.free_version(id);
    }

    fn no_room(&self, region: Region, requested_bytes: u64) -> StoreError {
        match region {
            Region::Data => {
                let s = self.stats();
                StoreError::OutOfMemory {
                    requested_bytes,
                    free_bytes: self.data.free_bytes(),
                    held_bytes: s.held_bytes,
                    quarantined_bytes: s.quarantined_bytes,
                    largest_free_bytes: self.data.largest_free(),
                    arena_bytes: self.data.capacity(),
                }
            }
            Region::Low | Region::High => {
                let a = if region == Region::Low {
                    &self.low
                } else {
                    &self.high
                };
                StoreError::ManifestSpaceFull {
                    requested_bytes,
                    free_bytes: a.free_bytes(),
                    region_bytes: a.capacity(),
                }
            }
        }
    }

    /// Frees a version that is neither current nor leased, and every chunk
    /// no other version references.
    fn free_version(&mut self, id: ObjectId) {
        let v = self.versions.remove(&id).expect("freeing a known version");
        assert_eq!(v.leases, 0, "freeing version {id} that is still leased");
        if v.orphaned {
            self.recovered_orphans.remove(&(v.name.clone(), v.number));
            self.push_change(Change::Forgotten {
                name: v.name.clone(),
                number: v.number,
            });
        }
        if let Some(copy) = v.disk_copy {
            self.spill_garbage.push(copy.file);
        }
        for batch in v.layout.iter().flat_map(|(_, columns)| columns) {
            for key in batch.iter().filter_map(ColumnLayout::key) {
                if let Some(list) = self.columns.get_mut(&key) {
                    list.retain(|&(vid, _, _)| vid != id);
                    if list.is_empty() {
                        self.columns.remove(&key);
                    }
                }
            }
        }
        for c in v.chunks {
            let chunk = self.chunks.get_mut(&c).expect("referenced chunks exist");
            chunk.refs -= 1;
            if chunk.refs == 0 {
                let chunk = self.chunks.remove(&c).expect("just seen");
                self.data.free(chunk.offset, chunk.alloc_bytes);
            }
        }
        if let Some(m) = v.manifest {
            self.free_manifest(m);
        }
    }

    fn free_manifest(&mut self, m: ManifestAlloc) {
        self.low.free(m.low.0, m.low.1);
        self.high.free(m.high.0, m.high.1);
    }

    fn pending_chunk(&self, conn: ConnId, id: ObjectId) -> Result<&Chunk, StoreError> {
        let unknown = StoreError::InvalidObject {
            object_id: id,
            reason: "unknown object id",
        };
        let Some(c) = self.chunks.get(&id) else {
            return Err(if self.versions.contains_key(&id) {
                StoreError::InvalidObject {
                    object_id: id,
                    reason: "already sealed",
                }
            } else {
                unknown
            });
        };
        match c.state {
            ChunkState::Pending { owner } if owner == conn => Ok(c),
            ChunkState::Pending { .. } => Err(StoreError::InvalidObject {
                object_id: id,
                reason: "created by another connection",
            }),
            ChunkState::Sealed => Err(StoreError::InvalidObject {
                object_id: id,
                reason: "already sealed",
            }),
        }
    }

    /// Where a pending chunk of `conn` lies, for the server to check its
    /// bytes before sealing.
    pub fn pending(&self, conn: ConnId, id: ObjectId) -> Result<Pending, StoreError> {
        let c = self.pending_chunk(conn, id)?;
        Ok(Pending {
            offset: c.offset,
            capacity: c.alloc_bytes,
            kind: c.kind,
        })
    }

    /// `pending`, refusing a `length` larger than the chunk's capacity: how
    /// many bytes a writer says it wrote is checked before they are read.
    pub fn pending_within(
        &self,
        conn: ConnId,
        id: ObjectId,
        length: u64,
    ) -> Result<Pending, StoreError> {
        let p = self.pending(conn, id)?;
        if length > p.capacity {
            return Err(StoreError::LengthTooLarge {
                object_id: id,
                length,
                capacity: p.capacity,
            });
        }
        Ok(p)
    }

    /// The name a pending chunk was created for.
    pub fn pending_name(&self, conn: ConnId, id: ObjectId) -> Result<String, StoreError> {
        Ok(self.pending_chunk(conn, id)?.name.clone())
    }

    /// Publishes a pending chunk as a new version of its name, read as the
    /// chunk itself (blobs): the name moves to it atomically; the previous
    /// version is freed now or at its last release.
    pub fn seal(
        &mut self,
        conn: ConnId,
        id: ObjectId,
        length: u64,
        rows: u64,
    ) -> Result<SealInfo, StoreError> {
        self.seal_one(conn, id, length, rows, None, None)
    }

    /// Publishes a pending chunk as a new table version whose manifest was
    /// written into `manifest` (reserved by `conn`): readers open
    /// `[0, file_len)` of the arena. `layout` lets later versions find and
    /// share its columns.
    #[allow(clippy::too_many_arguments)]
    pub fn seal_table(
        &mut self,
        conn: ConnId,
        id: ObjectId,
        length: u64,
        rows: u64,
        manifest: ObjectId,
        file_len: u64,
        layout: Option<Arc<Manifest>>,
    ) -> Result<SealInfo, StoreError> {
        self.seal_one(conn, id, length, rows, Some((manifest, file_len)), layout)
    }

    /// A version of one new chunk, published under the name it was created for.
    fn seal_one(
        &mut self,
        conn: ConnId,
        id: ObjectId,
        length: u64,
        rows: u64,
        manifest: Option<(ObjectId, u64)>,
        layout: Option<Arc<Manifest>>,
    ) -> Result<SealInfo, StoreError> {
        let name = self.pending_name(conn, id)?;
        self.publish(
            conn,
            NewVersion {
                name: &name,
                if_version: None,
                rows,
                new_chunks: &[(id, length)],
                shared: &[],
                manifest,
                layout,
                restores: None,
            },
        )
    }

    /// Publishes a new version of `v.name`: the writer's pending chunks in
    /// `new_chunks` are sealed with their lengths, the sealed chunks in
    /// `shared` gain a reference, and the name moves atomically. Checks
    /// everything before changing anything: a refusal leaves the store as it
    /// was (the writer's chunks still pending).
    pub fn publish(&mut self, conn: ConnId, v: NewVersion<'_>) -> Result<SealInfo, StoreError> {
        let current = self.version(v.name);
        if let Some(n) = v.restores {
            if self.spilled.get(v.name).map(|s| s.number) != Some(n) || current.is_some() {
                return Err(StoreError::InvalidObject {
                    object_id: 0,
                    reason:
                        "the spilled version being brought back was replaced or deleted meanwhile",
                });
            }
        }
        if let Some(expected) = v.if_version {
            if current != Some(expected) {
                return Err(StoreError::VersionConflict {
                    name: v.name.to_owned(),
                    expected,
                    current,
                });
            }
        }
        let mut kind = ObjectKind::Table;
        for &(id, length) in v.new_chunks {
            let c = self.pending_chunk(conn, id)?;
            if length > c.alloc_bytes {
                return Err(StoreError::LengthTooLarge {
                    object_id: id,
                    length,
                    capacity: c.alloc_bytes,
                });
            }
            kind = c.kind;
        }
        for id in v.shared {
            match self.chunks.get(id) {
                Some(c) if c.state == ChunkState::Sealed => {}
                _ => {
                    return Err(StoreError::InvalidObject {
                        object_id: *id,
                        reason: "a shared chunk is no longer sealed and referenced (its versions were freed meanwhile)",
                    })
                }
            }
        }
        let mut ids: Vec<ObjectId> = v.new_chunks.iter().map(|&(id, _)| id).collect();
        ids.extend_from_slice(v.shared);
        let distinct: HashSet<ObjectId> = ids.iter().copied().collect();
        if distinct.len() != ids.len() {
            return Err(StoreError::InvalidObject {
                object_id: ids[0],
                reason: "a chunk is named twice in one version",
            });
        }
        let manifest = match v.manifest {
            None => None,
            Some((mid, file_len)) => match self.manifests.get(&mid) {
                Some(&(owner, m)) if owner == conn => Some((mid, m, file_len)),
                _ => {
                    return Err(StoreError::InvalidObject {
                        object_id: mid,
                        reason: "not a manifest reservation of this connection",
                    })
                }
            },
        };
        if manifest.is_none() && (v.new_chunks.len() != 1 || !v.shared.is_empty()) {
            return Err(StoreError::InvalidObject {
                object_id: ids.first().copied().unwrap_or(0),
                reason: "a version without a manifest is exactly one new chunk",
            });
        }
        // Checked: from here on nothing fails.
        let mut data_bytes = 0;
        for &(id, length) in v.new_chunks {
            let c = &self.chunks[&id];
            let (offset, alloc_bytes) = (c.offset, c.alloc_bytes);
            let new_alloc = if alloc_bytes - length <= kept_slack(length) {
                alloc_bytes
            } else {
                self.data.shrink(offset, alloc_bytes, length)
            };
            let chunk = self.chunks.get_mut(&id).expect("checked above");
            chunk.alloc_bytes = new_alloc;
            chunk.length = length;
            chunk.state = ChunkState::Sealed;
            chunk.refs = 1;
            data_bytes += length;
            self.conns.entry(conn).or_default().pending.remove(&id);
        }
        for id in v.shared {
            let c = self.chunks.get_mut(id).expect("checked above");
            c.refs += 1;
            data_bytes += c.length;
        }
        let number = match v.restores {
            Some(n) => n,
            None => {
                let n = self.last_version.entry(v.name.to_owned()).or_insert(0);
                *n += 1;
                *n
            }
        };
        // A new version of a spilled name: its file is no longer needed. The
        // spilled version brought back keeps it, as a copy that makes its
        // next spill free.
        let mut disk_copy = None;
        if let Some(s) = self.spilled.remove(v.name) {
            self.forget_spilled(&s);
            if v.restores.is_some() {
                disk_copy = Some(s);
            } else {
                self.spill_garbage.push(s.file);
            }
        }
        let (read_offset, read_length, manifest) = match manifest {
            None => {
                let c = &self.chunks[&v.new_chunks[0].0];
                (c.offset, c.length, None)
            }
            Some((mid, m, file_len)) => {
                self.conns.entry(conn).or_default().pending.remove(&mid);
                self.manifests.remove(&mid);
                (0, file_len, Some(m))
            }
        };
        let last_use = self.tick();
        let vid = self.new_id();
        let columns = self.index_columns(vid, v.layout.as_deref());
        self.versions.insert(
            vid,
            Version {
                name: v.name.to_owned(),
                number,
                kind,
                rows: v.rows,
                chunks: ids,
                manifest,
                offset: read_offset,
                length: read_length,
                data_bytes,
                layout: v.layout.zip(columns),
                leases: 0,
                last_use,
                last_use_at: Instant::now(),
                disk_copy: None,
                orphaned: false,
            },
        );
        self.versions
            .get_mut(&vid)
            .expect("just inserted")
            .disk_copy = disk_copy;
        if self.changes.is_some() {
            let record = self.version_record(vid);
            self.push_change(Change::Published(record));
        }
        if let Some(prev) = self.names.insert(v.name.to_owned(), vid) {
            self.retire(v.name, prev);
        }
        self.puts += 1;
        Ok(SealInfo {
            version: number,
            rows: v.rows,
        })
    }

    /// Adds version `vid`'s columns to the index `find_column` searches and
    /// returns them.
    fn index_columns(
        &mut self,
        vid: ObjectId,
        layout: Option<&Manifest>,
    ) -> Option<Vec<Vec<ColumnLayout>>> {
        let columns = layout.and_then(|l| l.batch_columns().ok().flatten())?;
        for (b, batch) in columns.iter().enumerate() {
            for (c, column) in batch.iter().enumerate() {
                if let Some(key) = column.key() {
                    self.columns
                        .entry(key)
                        .or_default()
                        .push((vid, b as u32, c as u32));
                }
            }
        }
        Some(columns)
    }

    /// `prev` is no longer `name`'s current version: kept among the retained
    /// ones, or freed (now, or at its last release); retained versions beyond
    /// the limit go the same way.
    fn retire(&mut self, name: &str, prev: ObjectId) {
        let mut out = Vec::new();
        if self.keep_versions > 1 {
            let list = self.retained.entry(name.to_owned()).or_default();
            list.push_back(prev);
            while list.len() > self.keep_versions - 1 {
                out.extend(list.pop_front());
            }
        } else {
            out.push(prev);
        }
        for id in out {
            self.forget(id);
            if self.versions[&id].leases == 0 {
                self.free_version(id);
            }
        }
    }

    fn is_retained(&self, id: ObjectId) -> bool {
        let v = &self.versions[&id];
        self.retained.get(&v.name).is_some_and(|l| l.contains(&id))
    }

    /// A column of a live table version whose non-empty buffers are exactly
    /// `buffers` (sorted by offset), with the chunks of that version that hold
    /// them: how a writer's "these buffers are already in the arena" becomes
    /// a reference.
    pub fn find_column(&self, buffers: &[(u64, u64)]) -> Option<FoundColumn> {
        let key = buffers.first()?.0;
        for &(vid, b, c) in self.columns.get(&key)? {
            let v = &self.versions[&vid];
            let Some((layout, columns)) = &v.layout else {
                continue;
            };
            let column = &columns[b as usize][c as usize];
            if column.buffer_set() != buffers {
                continue;
            }
            let mut chunks = Vec::new();
            for &(offset, length) in buffers {
                let holder = v.chunks.iter().copied().find(|id| {
                    let ch = &self.chunks[id];
                    offset >= ch.offset && offset + length <= ch.offset + ch.length.max(1)
                })?;
                if !chunks.contains(&holder) {
                    chunks.push(holder);
                }
            }
            return Some(FoundColumn {
                version: vid,
                layout: layout.clone(),
                column: column.clone(),
                index: c as usize,
                chunks,
            });
        }
        None
    }

    /// Gives up a pending chunk or manifest reservation.
    pub fn abort(&mut self, conn: ConnId, id: ObjectId) -> Result<(), StoreError> {
        if let Some(&(owner, m)) = self.manifests.get(&id) {
            if owner != conn {
                return Err(StoreError::InvalidObject {
                    object_id: id,
                    reason: "created by another connection",
                });
            }
            self.manifests.remove(&id);
            self.free_manifest(m);
        } else {
            self.pending_chunk(conn, id)?;
            let c = self.chunks.remove(&id).expect("checked above");
            self.data.free(c.offset, c.alloc_bytes);
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.pending.remove(&id);
        }
        Ok(())
    }

    /// Looks up the current version of `name` and takes a lease for `conn`.
    pub fn get(&mut self, conn: ConnId, name: &str) -> Result<Location, StoreError> {
        let id = *self.names.get(name).ok_or_else(|| StoreError::NotFound {
            name: name.to_owned(),
        })?;
        self.lease(conn, id)
    }

    /// Version `number` of `name` if it is current or retained
    /// (`set_keep_versions`), or an orphan a restart brought back for its
    /// readers (`restore_orphan`), with a lease for `conn`.
    pub fn get_version(
        &mut self,
        conn: ConnId,
        name: &str,
        number: u64,
    ) -> Result<Location, StoreError> {
        let candidates = self
            .names
            .get(name)
            .into_iter()
            .chain(self.retained.get(name).into_iter().flatten())
            .chain(self.recovered_orphans.get(&(name.to_owned(), number)));
        let id = candidates
            .copied()
            .find(|id| self.versions[id].number == number)
            .ok_or_else(|| StoreError::VersionNotKept {
                name: name.to_owned(),
                version: number,
                kept: self
                    .retained
                    .get(name)
                    .into_iter()
                    .flatten()
                    .chain(self.names.get(name))
                    .map(|id| self.versions[id].number)
                    .collect(),
            })?;
        self.lease(conn, id)
    }

    fn lease(&mut self, conn: ConnId, id: ObjectId) -> Result<Location, StoreError> {
        let c = self.conns.entry(conn).or_default();
        if c.lease_count >= LEASES_PER_CONN_MAX {
            return Err(StoreError::LimitExceeded(
                "1000000 leases on one connection; release some",
            ));
        }
        *c.leases.entry(id).or_insert(0) += 1;
        c.lease_count += 1;
        let last_use = self.tick();
        let v = self.versions.get_mut(&id).expect("named versions exist");
        v.leases += 1;
        v.last_use = last_use;
        v.last_use_at = Instant::now();
        self.gets += 1;
        Ok(Location {
            object_id: id,
            version: v.number,
            offset: v.offset,
            length: v.length,
            rows: v.rows,
            kind: v.kind,
        })
    }

    /// The chunks the current version of `name` references.
    pub fn chunks_of(&self, name: &str) -> Vec<ObjectId> {
        self.names
            .get(name)
            .map(|id| self.versions[id].chunks.clone())
            .unwrap_or_default()
    }

    /// The current version number of `name`, without taking a lease.
    pub fn version(&self, name: &str) -> Option<u64> {
        self.names.get(name).map(|id| self.versions[id].number)
    }

    /// Drops one lease of `conn` on version `id`.
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
        let v = self.versions.get_mut(&id).expect("leased versions exist");
        assert!(
            v.leases >= n,
            "lease count of version {id} would go negative"
        );
        v.leases -= n;
        let current = self.names.get(&v.name) == Some(&id);
        if v.leases == 0 && !current && !self.is_retained(id) {
            self.free_version(id);
        }
    }

    /// Unbinds `name`; its version is freed now or at its last release.
    pub fn delete(&mut self, name: &str) -> Result<(), StoreError> {
        if let Some(s) = self.spilled.remove(name) {
            self.forget_spilled(&s);
            self.spill_garbage.push(s.file);
            return Ok(());
        }
        let id = self
            .names
            .remove(name)
            .ok_or_else(|| StoreError::NotFound {
                name: name.to_owned(),
            })?;
        let mut gone = vec![id];
        gone.extend(self.retained.remove(name).into_iter().flatten());
        for id in gone {
            self.forget(id);
            if self.versions[&id].leases == 0 {
                self.free_version(id);
            }
        }
        Ok(())
    }

    /// Forgets a connection: releases its leases and aborts its pending
    /// chunks and manifest reservations.
    pub fn disconnect(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        for (id, n) in c.leases {
            self.drop_leases(id, n);
        }
        for id in c.pending {
            if let Some((_, m)) = self.manifests.remove(&id) {
                self.free_manifest(m);
            } else {
                let c = self.chunks.remove(&id).expect("pending chunks exist");
                self.data.free(c.offset, c.alloc_bytes);
            }
        }
    }

    /// Every name and its current version, by name.
    pub fn list(&self) -> Vec<Entry> {
        let mut v: Vec<Entry> = self
            .names
            .iter()
            .map(|(name, id)| {
                let v = &self.versions[id];
                Entry {
                    name: name.clone(),
                    object_id: *id,
                    version: v.number,
                    kind: v.kind,
                    rows: v.rows,
                    bytes: v.data_bytes,
                    shared_bytes: v
                        .chunks
                        .iter()
                        .map(|c| &self.chunks[c])
                        .filter(|c| c.refs > 1)
                        .map(|c| c.length)
                        .sum(),
                    retained: self
                        .retained
                        .get(name)
                        .into_iter()
                        .flatten()
                        .map(|r| self.versions[r].number)
                        .collect(),
                    leases: v.leases,
                    idle: v.last_use_at.elapsed(),
                    on_disk: false,
                }
            })
            .collect();
        v.extend(self.spilled.values().map(|s| Entry {
            name: s.name.clone(),
            object_id: 0,
            version: s.number,
            kind: s.kind,
            rows: s.rows,
            bytes: s.data_bytes,
            shared_bytes: 0,
            retained: Vec::new(),
            leases: 0,
            idle: std::time::Duration::ZERO,
            on_disk: true,
        }));
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn stats(&self) -> StoreStats {
        let mut held = HashSet::new();
        let mut held_bytes = 0;
        let mut leases = 0;
        for v in self.versions.values() {
            leases += v.leases;
            if v.leases > 0 {
                held_bytes += v.manifest.map_or(0, |m| m.low.1 + m.high.1);
                for c in &v.chunks {
                    if held.insert(*c) {
                        held_bytes += self.chunks[c].alloc_bytes;
                    }
                }
            }
        }
        let (mut pending_chunks, mut pending_count) = (0, 0);
        for c in self.chunks.values() {
            if matches!(c.state, ChunkState::Pending { .. }) {
                pending_chunks += c.alloc_bytes;
                pending_count += 1;
            }
        }
        let pending_manifests: u64 = self
            .manifests
            .values()
            .map(|(_, m)| m.low.1 + m.high.1)
            .sum();
        let free_bytes = self.data.free_bytes() + self.low.free_bytes() + self.high.free_bytes();
        StoreStats {
            arena_bytes: self.regions.end,
            used_bytes: self.regions.end - free_bytes,
            free_bytes,
            held_bytes,
            pending_bytes: pending_chunks + pending_manifests,
            largest_free_bytes: self.data.largest_free(),
            objects: (self.versions.len() + pending_count + self.manifests.len()) as u64,
            names: self.names.len() as u64,
            leases,
            connections: self.conns.len() as u64,
            evictions: self.evictions,
            puts: self.puts,
            gets: self.gets,
            spilled_versions: self.spilled.len() as u64,
            spilled_bytes: self.spilled.values().map(|s| s.file_bytes).sum(),
            spills: self.spills,
            quarantined_bytes: self.quarantined_bytes(),
            orphaned_versions: self.versions.values().filter(|v| v.orphaned).count() as u64,
        }
    }

    /// Bytes in use when the store holds nothing: the arena's magic.
    pub fn empty_used_bytes(&self) -> u64 {
        self.regions.end.min(MAGIC_BYTES)
    }

    /// Checks every invariant of the table; tests call it after each step.
    pub fn check_invariants(&self) {
        self.data.check_invariants();
        self.low.check_invariants();
        self.high.check_invariants();
        for c in self.chunks.values() {
            assert!(
                self.data.is_live(c.offset, c.alloc_bytes),
                "chunk at {} (+{}) is not one allocation",
                c.offset,
                c.alloc_bytes
            );
        }
        for v in self.versions.values() {
            if let Some(m) = v.manifest {
                assert!(
                    self.low.is_live(m.low.0, m.low.1),
                    "manifest low of {} not allocated",
                    v.name
                );
                assert!(
                    self.high.is_live(m.high.0, m.high.1),
                    "manifest high of {} not allocated",
                    v.name
                );
            }
        }
        // Quarantined ranges are allocations of their own, in their regions.
        let (mut q_low, mut q_data, mut q_high) = (0, 0, 0);
        for &(o, n) in &self.quarantined {
            let (a, sum) = if o < self.regions.low_end {
                (&self.low, &mut q_low)
            } else if o < self.regions.high_start {
                (&self.data, &mut q_data)
            } else {
                (&self.high, &mut q_high)
            };
            assert!(
                a.is_live(o, n),
                "quarantined {o} (+{n}) is not one allocation"
            );
            *sum += n;
        }
        let chunk_bytes: u64 = self.chunks.values().map(|c| c.alloc_bytes).sum::<u64>() + q_data;
        assert_eq!(
            chunk_bytes,
            self.data.used_bytes(),
            "chunk bytes != data region used bytes"
        );
        let manifests = self
            .versions
            .values()
            .filter_map(|v| v.manifest)
            .chain(self.manifests.values().map(|(_, m)| *m));
        let (mut low, mut high) = (q_low, q_high);
        for m in manifests {
            low += m.low.1;
            high += m.high.1;
        }
        assert_eq!(
            low,
            self.low.used_bytes(),
            "manifest bytes != low region used bytes"
        );
        assert_eq!(
            high,
            self.high.used_bytes(),
            "footer bytes != high region used bytes"
        );
        for (name, id) in &self.names {
            let v = self
                .versions
                .get(id)
                .expect("name points to a live version");
            assert_eq!(&v.name, name);
        }
        for (name, ids) in &self.retained {
            assert!(
                !ids.is_empty() && ids.len() < self.keep_versions,
                "retained list of {name}"
            );
            assert!(
                self.names.contains_key(name),
                "{name} has retained versions but no current one"
            );
            for id in ids {
                let v = self.versions.get(id).expect("retained versions are live");
                assert_eq!(&v.name, name);
                assert_ne!(
                    self.names.get(name),
                    Some(id),
                    "a retained version is not current"
                );
            }
        }
        let mut refs: HashMap<ObjectId, u32> = HashMap::new();
        for (id, v) in &self.versions {
            let current = self.names.get(&v.name) == Some(id);
            assert!(
                current || v.leases > 0 || self.is_retained(*id),
                "version {id} neither named, retained nor leased but not freed"
            );
            assert_eq!(
                v.orphaned,
                !current && !self.is_retained(*id),
                "version {id}: orphaned is not 'leased only'"
            );
            let unique: HashSet<_> = v.chunks.iter().collect();
            assert_eq!(
                unique.len(),
                v.chunks.len(),
                "version {id} lists a chunk twice"
            );
            for c in &v.chunks {
                let chunk = self
                    .chunks
                    .get(c)
                    .expect("a version references a freed chunk");
                assert_eq!(
                    chunk.state,
                    ChunkState::Sealed,
                    "a version references a pending chunk"
                );
                *refs.entry(*c).or_default() += 1;
            }
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
                assert!(
                    self.versions.contains_key(&id),
                    "a lease on a freed version"
                );
                *lease_sum.entry(id).or_default() += n;
            }
            for id in &c.pending {
                assert!(pending_seen.insert(*id));
            }
        }
        for (id, v) in &self.versions {
            assert_eq!(
                v.leases,
                lease_sum.get(id).copied().unwrap_or(0),
                "lease count of {id} drifted"
            );
        }
        for (id, c) in &self.chunks {
            match c.state {
                ChunkState::Pending { owner } => {
                    assert_eq!(c.refs, 0);
                    assert!(
                        self.conns
                            .get(&owner)
                            .is_some_and(|conn| conn.pending.contains(id)),
                        "orphan pending chunk"
                    );
                }
                ChunkState::Sealed => {
                    assert_eq!(
                        c.refs,
                        refs.get(id).copied().unwrap_or(0),
                        "refs of chunk {id} drifted"
                    );
                    assert!(
                        c.refs > 0,
                        "sealed chunk {id} referenced by no version but not freed"
                    );
                    assert!(c.length <= c.alloc_bytes);
                }
            }
        }
        for (id, (owner, _)) in &self.manifests {
            assert!(
                self.conns
                    .get(owner)
                    .is_some_and(|conn| conn.pending.contains(id)),
                "orphan manifest reservation"
            );
        }
        assert_eq!(
            pending_seen.len(),
            self.manifests.len()
                + self
                    .chunks
                    .values()
                    .filter(|c| matches!(c.state, ChunkState::Pending { .. }))
                    .count(),
            "pending sets and pending objects disagree"
        );
    }
}

#[cfg(test)]
mod tests;
