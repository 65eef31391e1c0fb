//! `stats`: server and arena counters. The reply is JSON (see `StatsReply`).
//!
//! ```text
//! request:  (empty)
//! reply:    UTF-8 JSON object
//! ```
use super::frame::{BodyReader, FrameError};

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Stats;

impl Stats {
    pub fn encode(&self, _out: &mut Vec<u8>) {}

    pub fn decode(body: &[u8]) -> Result<Self, FrameError> {
        BodyReader::new(body).finish()?;
        Ok(Stats)
    }
}

/// The `stats` reply.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StatsReply {
    /// `hugetlb`, `transparent-hugepages` or `4k-pages`.
    pub memory_kind: String,
    /// `io_uring` or `polling` (epoll fallback).
    pub io_driver: String,
    pub threads: u64,
    pub arena_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
    /// Bytes of objects with at least one lease.
    pub held_bytes: u64,
    /// Bytes reserved by creates not yet sealed.
    pub pending_bytes: u64,
    pub largest_free_bytes: u64,
    pub objects: u64,
    pub names: u64,
    pub leases: u64,
    pub connections: u64,
    pub evictions: u64,
    pub puts: u64,
    pub gets: u64,
    // The three below are left out of the JSON when unset, so a server
    // without `--state-dir` replies as before.
    /// `--state-dir`, when the server keeps its tables across restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<String>,
    /// Versions the server found in its state directory when it started.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub recovered_versions: u64,
    /// The last write to the state directory's catalog failed (the message):
    /// changes since may not survive a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog_error: Option<String>,
    /// `--spill-dir`, when versions go to disk instead of being evicted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spill_dir: Option<String>,
    /// Current versions on disk, their files' bytes, spills since start.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub spilled_versions: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub spilled_bytes: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub spills: u64,
    /// Bytes a restarted server holds back for the clients of the one before
    /// it (`--quarantine`), for a while after the restart.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub quarantined_bytes: u64,
    /// Versions no name reaches any more that readers still hold (replaced
    /// or deleted while leased; after a `--state-dir` restart, held for the
    /// readers of the server before until `--quarantine` ends).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub orphaned_versions: u64,
    /// Read buffers the server keeps for its next Parquet ingest
    /// (`--ingest-buffers`): heap outside the arena.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ingest_buffer_bytes: u64,
    /// `--flight`: the address the Arrow Flight service listens on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flight: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}
