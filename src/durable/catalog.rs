//! The catalog: the durable versions of a `--state-dir`, as a log of
//! checksummed records.
//!
//! ```text
//! header (64 bytes): "APCATLG\0", format u32, 0 u32, arena bytes u64, large alignment u64,
//!                    crc32c of the 32 bytes before it u32, zeros
//! record (at 8-byte boundaries): payload length u32, crc32c(payload) u32, payload, zeros to 8
//! payload: type u8, then
//!   1 published  name, number u64, kind u8, rows u64, read offset u64, read length u64,
//!                manifest: 0 u8 | 1 u8, low offset u64, low bytes u64, high offset u64,
//!                high bytes u64, crc32c of those two ranges of the arena u32;
//!                chunks u32, then (offset u64, reserved bytes u64, length u64) each
//!   2 forgotten  name, number u64
//!   3 numbered   name, last number handed out u64 (written by a rewrite)
//!   4 spilled    name, number u64, kind u8, rows u64, data bytes u64, file bytes u64,
//!                file path (length u32, bytes): the version is in a spill file
//!                (`--spill-dir`); a later `forgotten` of the same name and number ends it
//!   5 allocated  offset u64, bytes u64: the arena range was handed out
//!   6 freed      offset u64, bytes u64: the range (or part of one handed out) was given back
//!   7 orphaned   name, number u64: the published version left its name (replaced, deleted)
//!                while readers held it; a later `forgotten` is its last release
//! name: length u32, UTF-8 bytes. Integers little-endian.
//! ```
//! Orphaned versions replay apart (`Replay::orphans`): a restarted server
//! holds them for the quarantine so that their readers, reconnecting, lease
//! them again (`Store::restore_orphan`). A server that predates `orphaned`
//! skips it as a damaged record, and forgets such a version only if a newer
//! one of its name was recorded (it would serve a deleted name's last version).
//! `allocated` and `freed` replay to the ranges the server had handed out when
//! it died, writers' reservations and replaced versions readers still held
//! among them; its successor holds back the ones no recovered version explains
//! for `--quarantine` (`Store::quarantine`). A server that predates them reads
//! them as damaged records, skips them and loses nothing else.
//! A change is appended (one `pwrite`) before the request that made it is
//! answered, so an acknowledged seal is in the file when the server dies: the
//! file lives on tmpfs, whose pages outlive the process. Replaying the records
//! in order gives the durable versions: published ones not forgotten since.
//! A record that fails its checksum is reported and skipped (the replay finds
//! the next record that passes); an incomplete last record is a write that was
//! never acknowledged and is dropped. The server rewrites the file from its
//! state after recovery and whenever the log grows to four times what a
//! rewrite would write (`catalog.new`, then `rename`: never half a file).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::store::{Change, ChunkRecord, ObjectKind, Spilled, VersionRecord};

const MAGIC: &[u8; 8] = b"APCATLG\0";
const FORMAT: u32 = 1;
pub const HEADER_BYTES: u64 = 64;
/// The log is rewritten when it passes this size and four times its live part.
const REWRITE_MIN_BYTES: u64 = 1 << 20;
/// Longest payload a record may have (a version of a million chunks); longer
/// lengths are corruption.
const PAYLOAD_MAX: u32 = 64 << 20;

const PUBLISHED: u8 = 1;
const FORGOTTEN: u8 = 2;
const NUMBERED: u8 = 3;
const SPILLED: u8 = 4;
const ALLOCATED: u8 = 5;
const FREED: u8 = 6;
const ORPHANED: u8 = 7;

/// What the arena looked like when the catalog was made: a restart must map
/// the same arena the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub arena_bytes: u64,
    pub large_align: u64,
}

/// One record as the log holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Published {
        version: VersionRecord,
        /// crc32c of the manifest's two ranges when the version was published.
        manifest_crc: u32,
    },
    Forgotten {
        name: String,
        number: u64,
    },
    /// Out of the durable set, still held by readers (`Change::Orphaned`).
    Orphaned {
        name: String,
        number: u64,
    },
    Numbered {
        name: String,
        number: u64,
    },
    Spilled(Spilled),
    Allocated {
        offset: u64,
        bytes: u64,
    },
    Freed {
        offset: u64,
        bytes: u64,
    },
}

/// What reading a catalog found.
#[derive(Debug, Default)]
pub struct Replay {
    /// Published and neither forgotten nor orphaned, in the order they were published.
    pub versions: Vec<(VersionRecord, u32)>,
    /// Published, then orphaned and not forgotten: versions readers of the
    /// server before held after they stopped being current or retained.
    pub orphans: Vec<(VersionRecord, u32)>,
    /// The highest version number each name ever had.
    pub last_numbers: Vec<(String, u64)>,
    /// Versions in spill files, not forgotten since.
    pub spilled: Vec<Spilled>,
    /// Arena ranges handed out and not given back, merged, in offset order.
    pub allocated: Vec<(u64, u64)>,
    /// Damage found and skipped, one line each.
    pub problems: Vec<String>,
    pub records: u64,
}

#[derive(Debug)]
pub struct CatalogError(pub String);

impl std::fmt::Display for CatalogError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CatalogError {}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> CatalogError {
    CatalogError(format!("catalog {}: {what}: {e}", path.display()))
}

/// An open catalog, appended to as versions change.
#[derive(Debug)]
pub struct Catalog {
    path: PathBuf,
    file: File,
    geometry: Geometry,
    /// Where the next record goes.
    tail: u64,
    /// Bytes the last rewrite wrote (the live part then).
    rewritten_bytes: u64,
    /// An append failed: the file may lack a record, so the next write is a
    /// whole rewrite from the store's state.
    stale: bool,
}

fn put_name(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(&(name.len() as u32).to_le_bytes());
    out.extend_from_slice(name.as_bytes());
}

fn encode_record(out: &mut Vec<u8>, record: &Record) {
    let mut p = Vec::new();
    match record {
        Record::Published {
            version: v,
            manifest_crc,
        } => {
            p.push(PUBLISHED);
            put_name(&mut p, &v.name);
            p.extend_from_slice(&v.number.to_le_bytes());
            p.push(v.kind as u8);
            for n in [v.rows, v.offset, v.length] {
                p.extend_from_slice(&n.to_le_bytes());
            }
            match v.manifest {
                None => p.push(0),
                Some(((lo, ll), (ho, hl))) => {
                    p.push(1);
                    for n in [lo, ll, ho, hl] {
                        p.extend_from_slice(&n.to_le_bytes());
                    }
                    p.extend_from_slice(&manifest_crc.to_le_bytes());
                }
            }
            p.extend_from_slice(&(v.chunks.len() as u32).to_le_bytes());
            for c in &v.chunks {
                for n in [c.offset, c.alloc_bytes, c.length] {
                    p.extend_from_slice(&n.to_le_bytes());
                }
            }
        }
        Record::Spilled(s) => {
            p.push(SPILLED);
            put_name(&mut p, &s.name);
            p.extend_from_slice(&s.number.to_le_bytes());
            p.push(s.kind as u8);
            for n in [s.rows, s.data_bytes, s.file_bytes] {
                p.extend_from_slice(&n.to_le_bytes());
            }
            use std::os::unix::ffi::OsStrExt;
            let path = s.file.as_os_str().as_bytes();
            p.extend_from_slice(&(path.len() as u32).to_le_bytes());
            p.extend_from_slice(path);
        }
        Record::Forgotten { name, number }
        | Record::Orphaned { name, number }
        | Record::Numbered { name, number } => {
            p.push(match record {
                Record::Forgotten { .. } => FORGOTTEN,
                Record::Orphaned { .. } => ORPHANED,
                _ => NUMBERED,
            });
            put_name(&mut p, name);
            p.extend_from_slice(&number.to_le_bytes());
        }
        Record::Allocated { offset, bytes } | Record::Freed { offset, bytes } => {
            p.push(if matches!(record, Record::Allocated { .. }) {
                ALLOCATED
            } else {
                FREED
            });
            p.extend_from_slice(&offset.to_le_bytes());
            p.extend_from_slice(&bytes.to_le_bytes());
        }
    }
    out.extend_from_slice(&(p.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&p).to_le_bytes());
    out.extend_from_slice(&p);
    out.resize(out.len().next_multiple_of(8), 0);
}

/// Reads a payload; `None` when it does not parse (corruption a checksum
/// collision let through, or a newer format).
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn kind(&mut self) -> Option<ObjectKind> {
        match self.u8()? {
            0 => Some(ObjectKind::Table),
            1 => Some(ObjectKind::Bytes),
            _ => None,
        }
    }
    fn name(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

fn decode_record(payload: &[u8]) -> Option<Record> {
    let mut r = Reader {
        bytes: payload,
        at: 0,
    };
    let record = match r.u8()? {
        PUBLISHED => {
            let name = r.name()?;
            let number = r.u64()?;
            let kind = r.kind()?;
            let (rows, offset, length) = (r.u64()?, r.u64()?, r.u64()?);
            let (manifest, manifest_crc) = match r.u8()? {
                0 => (None, 0),
                1 => {
                    let m = ((r.u64()?, r.u64()?), (r.u64()?, r.u64()?));
                    (Some(m), r.u32()?)
                }
                _ => return None,
            };
            let n = r.u32()? as usize;
            if n > payload.len() / 24 {
                return None;
            }
            let mut chunks = Vec::with_capacity(n);
            for _ in 0..n {
                chunks.push(ChunkRecord {
                    offset: r.u64()?,
                    alloc_bytes: r.u64()?,
                    length: r.u64()?,
                });
            }
            Record::Published {
                version: VersionRecord {
                    name,
                    number,
                    kind,
                    rows,
                    offset,
                    length,
                    chunks,
                    manifest,
                },
                manifest_crc,
            }
        }
        SPILLED => {
            let name = r.name()?;
            let number = r.u64()?;
            let kind = r.kind()?;
            let (rows, data_bytes, file_bytes) = (r.u64()?, r.u64()?, r.u64()?);
            let n = r.u32()? as usize;
            use std::os::unix::ffi::OsStrExt;
            let file = PathBuf::from(std::ffi::OsStr::from_bytes(r.take(n)?));
            Record::Spilled(Spilled {
                name,
                number,
                kind,
                rows,
                data_bytes,
                file,
                file_bytes,
            })
        }
        t @ (FORGOTTEN | ORPHANED | NUMBERED) => {
            let name = r.name()?;
            let number = r.u64()?;
            match t {
                FORGOTTEN => Record::Forgotten { name, number },
                ORPHANED => Record::Orphaned { name, number },
                _ => Record::Numbered { name, number },
            }
        }
        t @ (ALLOCATED | FREED) => {
            let (offset, bytes) = (r.u64()?, r.u64()?);
            if t == ALLOCATED {
                Record::Allocated { offset, bytes }
            } else {
                Record::Freed { offset, bytes }
            }
        }
        _ => return None,
    };
    (r.at == payload.len()).then_some(record)
}

fn encode_header(g: Geometry) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_BYTES as usize);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&FORMAT.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&g.arena_bytes.to_le_bytes());
    h.extend_from_slice(&g.large_align.to_le_bytes());
    let crc = crc32c::crc32c(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h.resize(HEADER_BYTES as usize, 0);
    h
}

fn decode_header(bytes: &[u8]) -> Result<Geometry, String> {
    if bytes.len() < HEADER_BYTES as usize || &bytes[..8] != MAGIC {
        return Err("not an arrowpool catalog (bad magic)".into());
    }
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    if u32_at(32) != crc32c::crc32c(&bytes[..32]) {
        return Err("its header fails its checksum".into());
    }
    if u32_at(8) != FORMAT {
        return Err(format!(
            "format {} (this server reads format {FORMAT})",
            u32_at(8)
        ));
    }
    Ok(Geometry {
        arena_bytes: u64_at(16),
        large_align: u64_at(24),
    })
}

/// The record at `at`, if one is there whole and passes its checksum, and
/// where the next one starts.
fn record_at(bytes: &[u8], at: usize) -> Option<(Record, usize)> {
    let head = bytes.get(at..at.checked_add(8)?)?;
    let len = u32::from_le_bytes(head[..4].try_into().ok()?);
    let crc = u32::from_le_bytes(head[4..].try_into().ok()?);
    if len == 0 || len > PAYLOAD_MAX {
        return None;
    }
    let payload = bytes.get(at + 8..(at + 8).checked_add(len as usize)?)?;
    if crc32c::crc32c(payload) != crc {
        return None;
    }
    let record = decode_record(payload)?;
    Some((record, (at + 8 + len as usize).next_multiple_of(8)))
}

/// Replays the records of a catalog file's bytes (after the header).
pub fn replay(bytes: &[u8]) -> Replay {
    use std::collections::HashMap;
    let mut out = Replay::default();
    // (name, number) -> index in `live`; `None` entries were forgotten.
    let mut live: Vec<Option<(VersionRecord, u32)>> = Vec::new();
    let mut index: HashMap<(String, u64), usize> = HashMap::new();
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut spilled: HashMap<(String, u64), Spilled> = HashMap::new();
    let mut orphans: HashMap<(String, u64), (usize, (VersionRecord, u32))> = HashMap::new();
    let mut allocated = Ranges::default();
    let mut at = HEADER_BYTES as usize;
    while at + 8 <= bytes.len() {
        match record_at(bytes, at) {
            Some((record, next)) => {
                out.records += 1;
                at = next;
                match record {
                    Record::Published {
                        version,
                        manifest_crc,
                    } => {
                        let n = last.entry(version.name.clone()).or_insert(0);
                        *n = (*n).max(version.number);
                        let key = (version.name.clone(), version.number);
                        index.insert(key, live.len());
                        live.push(Some((version, manifest_crc)));
                    }
                    Record::Forgotten { name, number } => {
                        let n = last.entry(name.clone()).or_insert(0);
                        *n = (*n).max(number);
                        spilled.remove(&(name.clone(), number));
                        orphans.remove(&(name.clone(), number));
                        if let Some(i) = index.remove(&(name, number)) {
                            live[i] = None;
                        }
                    }
                    Record::Orphaned { name, number } => {
                        let key = (name, number);
                        if let Some(i) = index.remove(&key) {
                            if let Some(v) = live[i].take() {
                                orphans.insert(key, (i, v));
                            }
                        }
                    }
                    Record::Numbered { name, number } => {
                        let n = last.entry(name).or_insert(0);
                        *n = (*n).max(number);
                    }
                    Record::Spilled(s) => {
                        let n = last.entry(s.name.clone()).or_insert(0);
                        *n = (*n).max(s.number);
                        spilled.insert((s.name.clone(), s.number), s);
                    }
                    Record::Allocated { offset, bytes } => allocated.add(offset, bytes),
                    Record::Freed { offset, bytes } => allocated.remove(offset, bytes),
                }
            }
            None => {
                // Damage, or the end: look for the next whole record.
                let resume = (at + 8..bytes.len().saturating_sub(7))
                    .step_by(8)
                    .find(|&p| record_at(bytes, p).is_some());
                match resume {
                    Some(p) => {
                        out.problems.push(format!(
                            "catalog record at byte {at} is corrupt (fails its checksum or does not parse); skipped {} bytes to the next whole record",
                            p - at
                        ));
                        at = p;
                    }
                    None => {
                        if bytes[at..].iter().any(|&b| b != 0) {
                            out.problems.push(format!(
                                "the last {} bytes of the catalog are an incomplete record (a write the server did not finish, so never acknowledged); dropped",
                                bytes.len() - at
                            ));
                        }
                        break;
                    }
                }
            }
        }
    }
    out.versions = live.into_iter().flatten().collect();
    let mut orphans: Vec<(usize, (VersionRecord, u32))> = orphans.into_values().collect();
    orphans.sort_by_key(|(i, _)| *i);
    out.orphans = orphans.into_iter().map(|(_, v)| v).collect();
    let mut spilled: Vec<Spilled> = spilled.into_values().collect();
    spilled.sort_by(|a, b| (&a.name, a.number).cmp(&(&b.name, b.number)));
    out.spilled = spilled;
    out.allocated = allocated.0.into_iter().map(|(o, e)| (o, e - o)).collect();
    let mut last: Vec<(String, u64)> = last.into_iter().collect();
    last.sort();
    out.last_numbers = last;
    out
}

/// A set of byte ranges, start -> end, neighbours merged.
#[derive(Default)]
struct Ranges(std::collections::BTreeMap<u64, u64>);

impl Ranges {
    fn add(&mut self, offset: u64, bytes: u64) {
        let (mut start, mut end) = (offset, offset.saturating_add(bytes));
        if start >= end {
            return;
        }
        // Merge every range that overlaps or touches [start, end).
        let touching: Vec<(u64, u64)> = self
            .0
            .range(..=end)
            .rev()
            .take_while(|(_, &e)| e >= start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touching {
            self.0.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        self.0.insert(start, end);
    }

    fn remove(&mut self, offset: u64, bytes: u64) {
        let (start, end) = (offset, offset.saturating_add(bytes));
        if start >= end {
            return;
        }
        let overlapping: Vec<(u64, u64)> = self
            .0
            .range(..end)
            .rev()
            .take_while(|(_, &e)| e > start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in overlapping {
            self.0.remove(&s);
            if s < start {
                self.0.insert(s, start);
            }
            if e > end {
                self.0.insert(end, e);
            }
        }
    }
}

impl Catalog {
    /// Opens the catalog at `path`, or creates it for `geometry` when there
    /// is none. An existing catalog of another geometry (another `--memory`)
    /// is an error: its versions lie where that arena put them.
    pub fn open(path: &Path, geometry: Geometry) -> Result<(Catalog, Replay), CatalogError> {
        let replay = match std::fs::read(path) {
            Ok(bytes) => {
                let found = decode_header(&bytes).map_err(|m| {
                    CatalogError(format!(
                        "{} is damaged: {m}; move it away to start with an empty store",
                        path.display()
                    ))
                })?;
                if found != geometry {
                    return Err(CatalogError(format!(
                        "the state directory holds an arena of {} bytes (large objects aligned to {}), \
                         and this server was asked for {} (aligned to {}): start it with --memory {} as \
                         before, or remove the state directory to start empty",
                        found.arena_bytes,
                        found.large_align,
                        geometry.arena_bytes,
                        geometry.large_align,
                        found.arena_bytes
                    )));
                }
                replay(&bytes)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Replay::default(),
            Err(e) => return Err(io_error("read", path, e)),
        };
        // Writes go to a fresh file (`rewrite`) before any append.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| io_error("open", path, e))?;
        let tail = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok((
            Catalog {
                path: path.to_owned(),
                file,
                geometry,
                tail,
                rewritten_bytes: 0,
                stale: true,
            },
            replay,
        ))
    }

    /// Replaces the file with one holding exactly `versions`, the
    /// `orphans` (published, then orphaned), the last numbers, the spilled
    /// versions and the arena ranges handed out: written beside it, synced,
    /// renamed over it.
    pub fn rewrite(
        &mut self,
        versions: &[(VersionRecord, u32)],
        orphans: &[(VersionRecord, u32)],
        last_numbers: &[(String, u64)],
        spilled: &[Spilled],
        allocated: &[(u64, u64)],
    ) -> Result<(), CatalogError> {
        let mut bytes = encode_header(self.geometry);
        for (name, number) in last_numbers {
            encode_record(
                &mut bytes,
                &Record::Numbered {
                    name: name.clone(),
                    number: *number,
                },
            );
        }
        for (version, manifest_crc) in versions {
            encode_record(
                &mut bytes,
                &Record::Published {
                    version: version.clone(),
                    manifest_crc: *manifest_crc,
                },
            );
        }
        for (version, manifest_crc) in orphans {
            encode_record(
                &mut bytes,
                &Record::Published {
                    version: version.clone(),
                    manifest_crc: *manifest_crc,
                },
            );
            encode_record(
                &mut bytes,
                &Record::Orphaned {
                    name: version.name.clone(),
                    number: version.number,
                },
            );
        }
        for s in spilled {
            encode_record(&mut bytes, &Record::Spilled(s.clone()));
        }
        for &(offset, bytes_) in allocated {
            encode_record(
                &mut bytes,
                &Record::Allocated {
                    offset,
                    bytes: bytes_,
                },
            );
        }
        let tmp = self.path.with_extension("new");
        let write = || -> std::io::Result<File> {
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            Ok(f)
        };
        match write() {
            Ok(f) => {
                self.file = f;
                self.tail = bytes.len() as u64;
                self.rewritten_bytes = bytes.len() as u64;
                self.stale = false;
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                self.stale = true;
                Err(io_error("rewrite", &self.path, e))
            }
        }
    }

    /// Whether the next write must be a rewrite: an earlier write failed, or
    /// the log has grown to four times its live part.
    pub fn wants_rewrite(&self) -> bool {
        self.stale || (self.tail > REWRITE_MIN_BYTES && self.tail > 4 * self.rewritten_bytes.max(1))
    }

    /// Appends `changes` in one write. `manifest_crc` gives a published
    /// table's manifest checksum. On failure the file may lack them: the
    /// catalog turns stale, so the next write rewrites it whole.
    pub fn append(
        &mut self,
        changes: &[Change],
        manifest_crc: impl Fn(&VersionRecord) -> u32,
    ) -> Result<(), CatalogError> {
        let mut bytes = Vec::new();
        for change in changes {
            let record = match change {
                Change::Published(v) => Record::Published {
                    manifest_crc: manifest_crc(v),
                    version: v.clone(),
                },
                Change::Forgotten { name, number } => Record::Forgotten {
                    name: name.clone(),
                    number: *number,
                },
                Change::Orphaned { name, number } => Record::Orphaned {
                    name: name.clone(),
                    number: *number,
                },
                Change::Spilled(s) => Record::Spilled(s.clone()),
                &Change::Allocated { offset, bytes } => Record::Allocated { offset, bytes },
                &Change::Freed { offset, bytes } => Record::Freed { offset, bytes },
            };
            encode_record(&mut bytes, &record);
        }
        match self.file.write_all_at(&bytes, self.tail) {
            Ok(()) => {
                self.tail += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.stale = true;
                Err(io_error("append", &self.path, e))
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of the file.
    pub fn len(&self) -> u64 {
        self.tail
    }

    pub fn is_empty(&self) -> bool {
        self.tail <= HEADER_BYTES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str, number: u64, chunk_at: u64) -> VersionRecord {
        VersionRecord {
            name: name.into(),
            number,
            kind: ObjectKind::Table,
            rows: 10,
            offset: 0,
            length: 9000,
            chunks: vec![ChunkRecord {
                offset: chunk_at,
                alloc_bytes: 8192,
                length: 8000,
            }],
            manifest: Some(((4096, 4096), (1 << 20, 4096))),
        }
    }

    const G: Geometry = Geometry {
        arena_bytes: 64 << 20,
        large_align: 4096,
    };

    fn temp_dir(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("arrowpool-catalog-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn records_round_trip_and_replay_drops_what_was_forgotten() {
        let dir = temp_dir("replay");
        let path = dir.join("catalog");
        let (mut c, r) = Catalog::open(&path, G).unwrap();
        assert!(r.versions.is_empty());
        c.rewrite(&[], &[], &[], &[], &[]).unwrap();
        let crc = |v: &VersionRecord| v.number as u32 * 7;
        c.append(&[Change::Published(table("a", 1, 1 << 16))], crc)
            .unwrap();
        c.append(
            &[
                Change::Published(table("a", 2, 2 << 16)),
                Change::Forgotten {
                    name: "a".into(),
                    number: 1,
                },
                Change::Published(table("b", 1, 3 << 16)),
                Change::Forgotten {
                    name: "b".into(),
                    number: 1,
                },
            ],
            crc,
        )
        .unwrap();
        drop(c);
        let (_, r) = Catalog::open(&path, G).unwrap();
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert_eq!(r.versions, vec![(table("a", 2, 2 << 16), 14)]);
        assert_eq!(r.last_numbers, vec![("a".into(), 2), ("b".into(), 1)]);
        // Another geometry is refused, with what to do.
        let e = Catalog::open(
            &path,
            Geometry {
                arena_bytes: 32 << 20,
                large_align: 4096,
            },
        )
        .unwrap_err();
        assert!(e.0.contains("--memory 67108864"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn orphans_replay_apart_until_forgotten_and_survive_a_rewrite() {
        let dir = temp_dir("orphans");
        let path = dir.join("catalog");
        let (mut c, _) = Catalog::open(&path, G).unwrap();
        c.rewrite(&[], &[], &[], &[], &[]).unwrap();
        let crc = |v: &VersionRecord| v.number as u32 + 100;
        let orphaned = |name: &str, number| Change::Orphaned {
            name: name.into(),
            number,
        };
        c.append(
            &[
                Change::Published(table("a", 1, 1 << 16)),
                Change::Published(table("b", 1, 2 << 16)),
                Change::Published(table("a", 2, 3 << 16)),
                orphaned("a", 1),
                orphaned("b", 1),
                Change::Forgotten {
                    name: "b".into(),
                    number: 1,
                },
            ],
            crc,
        )
        .unwrap();
        let (mut c, r) = Catalog::open(&path, G).unwrap();
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert_eq!(r.versions, vec![(table("a", 2, 3 << 16), 102)]);
        assert_eq!(r.orphans, vec![(table("a", 1, 1 << 16), 101)]);
        c.rewrite(&r.versions, &r.orphans, &r.last_numbers, &[], &[])
            .unwrap();
        drop(c);
        let (_, again) = Catalog::open(&path, G).unwrap();
        assert_eq!((again.versions, again.orphans), (r.versions, r.orphans));
        std::fs::remove_dir_all(dir).unwrap();
    }

    proptest::proptest! {
        /// The replay's range set against a set of granules.
        #[test]
        fn ranges_add_and_remove_as_granules_do(
            ops in proptest::collection::vec((proptest::bool::ANY, 0u64..64, 1u64..16), 0..60)
        ) {
            let mut r = Ranges::default();
            let mut model = std::collections::BTreeSet::new();
            for (add, at, n) in ops {
                if add {
                    r.add(at, n);
                    model.extend(at..at + n);
                } else {
                    r.remove(at, n);
                    for g in at..at + n {
                        model.remove(&g);
                    }
                }
                let got: std::collections::BTreeSet<u64> =
                    r.0.iter().flat_map(|(&s, &e)| s..e).collect();
                proptest::prop_assert_eq!(&got, &model);
                // Merged: no two ranges touch.
                let ends: Vec<(u64, u64)> = r.0.iter().map(|(&s, &e)| (s, e)).collect();
                for w in ends.windows(2) {
                    proptest::prop_assert!(w[0].1 < w[1].0, "{:?}", ends);
                }
            }
        }
    }

    #[test]
    fn allocated_and_freed_replay_to_the_ranges_still_handed_out() {
        let dir = temp_dir("ranges");
        let path = dir.join("catalog");
        let (mut c, _) = Catalog::open(&path, G).unwrap();
        // A rewrite's merged ranges, then a journal of single ones.
        c.rewrite(&[], &[], &[], &[], &[(4096, 8192), (65536, 65536)])
            .unwrap();
        let a = |offset, bytes| Change::Allocated { offset, bytes };
        let f = |offset, bytes| Change::Freed { offset, bytes };
        c.append(
            &[
                a(12288, 4096),      // touches the first: merged
                f(69632, 8192),      // splits the second
                a(1 << 20, 1 << 20), // a new one
                f(1 << 20, 1 << 20), // gone again
                a(3 << 20, 4096),
                f(65536, 4096), // the second's first granule
            ],
            |_| 0,
        )
        .unwrap();
        drop(c);
        let (_, r) = Catalog::open(&path, G).unwrap();
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert_eq!(
            r.allocated,
            vec![(4096, 12288), (77824, 131072 - 77824), (3 << 20, 4096)]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_corrupt_record_is_skipped_and_a_torn_tail_dropped() {
        let dir = temp_dir("damage");
        let path = dir.join("catalog");
        let (mut c, _) = Catalog::open(&path, G).unwrap();
        c.rewrite(&[], &[], &[], &[], &[]).unwrap();
        let crc = |_: &VersionRecord| 1;
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            c.append(
                &[Change::Published(table(name, 1, (i as u64 + 1) << 16))],
                crc,
            )
            .unwrap();
        }
        let b_at = {
            let bytes = std::fs::read(&path).unwrap();
            let (_, next) = record_at(&bytes, HEADER_BYTES as usize).unwrap();
            next
        };
        drop(c);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[b_at + 20] ^= 0xFF; // inside b's payload
        let whole = bytes.len();
        bytes.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3, 4, 5]); // a torn record
        std::fs::write(&path, &bytes).unwrap();
        let (_, r) = Catalog::open(&path, G).unwrap();
        let names: Vec<&str> = r.versions.iter().map(|(v, _)| v.name.as_str()).collect();
        assert_eq!(names, ["a", "c"]);
        assert_eq!(r.problems.len(), 2, "{:?}", r.problems);
        assert!(
            r.problems[0].contains(&format!("byte {b_at}")),
            "{:?}",
            r.problems
        );
        assert!(r.problems[1].contains("incomplete"), "{:?}", r.problems);
        // A bad header is an error that says what to do.
        bytes[3] = b'X';
        std::fs::write(&path, &bytes[..whole]).unwrap();
        let e = Catalog::open(&path, G).unwrap_err();
        assert!(e.0.contains("move it away"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_log_asks_for_a_rewrite_when_it_outgrows_its_live_part() {
        let dir = temp_dir("grow");
        let path = dir.join("catalog");
        let (mut c, _) = Catalog::open(&path, G).unwrap();
        assert!(
            c.wants_rewrite(),
            "a freshly opened catalog is rewritten first"
        );
        c.rewrite(&[(table("a", 1, 1 << 16), 0)], &[], &[], &[], &[])
            .unwrap();
        assert!(!c.wants_rewrite());
        let mut n = 1;
        while !c.wants_rewrite() {
            n += 1;
            c.append(
                &[
                    Change::Published(table("a", n, 1 << 16)),
                    Change::Forgotten {
                        name: "a".into(),
                        number: n - 1,
                    },
                ],
                |_| 0,
            )
            .unwrap();
        }
        assert!(c.len() > REWRITE_MIN_BYTES);
        drop(c);
        let (_, r) = Catalog::open(&path, G).unwrap();
        assert_eq!(r.versions.len(), 1);
        assert_eq!(r.versions[0].0.number, n);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
