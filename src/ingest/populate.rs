//! Page tables of the server's own mapping, populated once.
//!
//! Writing into 4 KiB-page memory that this process has not touched costs a
//! page fault per page; `MADV_POPULATE_WRITE` maps a range in one call, but it
//! walks every page even when they are mapped already (about 7% of a steady
//! ingest's CPU time). Pages stay mapped once written (the arena never gives
//! them back on the put path), so this remembers, per 2 MiB chunk, what the
//! server has populated and only asks for the rest (the client does the same
//! for its writable mapping). A stale record can only cost page faults.
#![deny(unsafe_code)]

use std::sync::Mutex;

use crate::arena::Mapping;

const CHUNK_BYTES: u64 = 2 * 1024 * 1024;

/// Chunks populated, for the mapping at `base` (one server per process; a
/// different mapping starts a fresh record).
static POPULATED: Mutex<(usize, Vec<u64>)> = Mutex::new((0, Vec::new()));

/// Populates the page tables of `[offset, offset + len)` of `mapping`, skipping
/// the chunks populated before.
pub fn populate_fresh(mapping: &Mapping, offset: u64, len: u64) {
    if len == 0 {
        return;
    }
    let base = mapping.as_ptr() as usize;
    let chunks = (mapping.len() as u64).div_ceil(CHUNK_BYTES);
    let mut record = POPULATED.lock().unwrap_or_else(|p| p.into_inner());
    if record.0 != base || (record.1.len() as u64) < chunks.div_ceil(64) {
        *record = (base, vec![0; chunks.div_ceil(64) as usize]);
    }
    let bits = &mut record.1;
    let is_set = |bits: &[u64], c: u64| bits[(c / 64) as usize] & (1 << (c % 64)) != 0;
    let first = offset / CHUNK_BYTES;
    let last = ((offset + len - 1) / CHUNK_BYTES).min(chunks.saturating_sub(1));
    let mut runs = Vec::new();
    let mut chunk = first;
    while chunk <= last {
        if is_set(bits, chunk) {
            chunk += 1;
            continue;
        }
        let run_start = chunk;
        while chunk <= last && !is_set(bits, chunk) {
            bits[(chunk / 64) as usize] |= 1 << (chunk % 64);
            chunk += 1;
        }
        runs.push((
            (run_start * CHUNK_BYTES).max(offset),
            (chunk * CHUNK_BYTES).min(offset + len),
        ));
    }
    // The madvise outside the lock: writer threads populate in parallel.
    drop(record);
    for (start, end) in runs {
        mapping.populate_write(start, end - start);
    }
}
