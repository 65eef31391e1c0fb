//! What a run records: the `raw.json` model. `compare` reads its `figures`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::machine::MachineFacts;
use crate::measure::TimingSummary;

/// Version of the raw.json layout.
pub const FORMAT: u32 = 1;

/// Everything a run measured (raw.json).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Raw {
    pub format: u32,
    pub preset: String,
    pub rows: u64,
    pub columns: usize,
    pub seed: u64,
    pub repeats: usize,
    pub clients: usize,
    pub duration_s: f64,
    pub reader_threads: usize,
    pub started_utc: String,
    pub finished_utc: String,
    pub command: String,
    pub machine: MachineFacts,
    pub server: ServerFacts,
    pub table: TableFacts,
    /// What was done for the cold page-cache variants.
    pub cold_cache: String,
    /// Every timed operation, by name.
    pub timings: BTreeMap<String, TimingSummary>,
    /// The rows of the summary table: a Parquet baseline against arrowpool.
    pub comparisons: Vec<Comparison>,
    /// Fixed-duration scenarios: callbacks and small operations.
    pub throughput: BTreeMap<String, Throughput>,
    pub ingest: Option<IngestFacts>,
    pub get_scan: Option<GetScanFacts>,
    pub switch: Option<SwitchFacts>,
    pub update: Option<UpdateFacts>,
    #[serde(default)]
    pub churn: Option<ChurnFacts>,
    /// Correctness checks made during the run; a failed one fails the run.
    pub checks: Vec<Check>,
    /// The figures `loadgen compare` gates on (and informational ones).
    pub figures: Vec<Figure>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ServerFacts {
    /// true when `--socket` pointed at a server this run did not start.
    pub external: bool,
    pub binary: String,
    pub memory_kind: String,
    pub io_driver: String,
    pub threads: u64,
    pub arena_bytes: u64,
    /// `--hugepages` of loadgen: `auto` (untouched) or `reserve`.
    pub hugepages_setting: String,
    /// `vm.nr_hugepages` while the server ran.
    pub nr_hugepages_during: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct TableFacts {
    pub parquet_file: String,
    pub parquet_bytes: u64,
    /// Bytes of the Arrow arrays in loadgen's memory.
    pub arrow_bytes: u64,
    /// Bytes of the IPC file in the arena (from the put reply).
    pub ipc_bytes: u64,
    pub batches: usize,
    /// false when the Parquet file came from the cache.
    pub generated: bool,
    pub generate_s: f64,
    pub load_s: f64,
}

/// One row of the summary table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Comparison {
    pub key: String,
    pub label: String,
    pub baseline: String,
    pub baseline_s: f64,
    pub candidate: String,
    pub candidate_s: f64,
    /// baseline_s / candidate_s: above 1 means arrowpool is faster.
    pub speedup: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Throughput {
    pub label: String,
    /// Threads (callbacks) or connections (small ops) running at once.
    pub concurrency: usize,
    pub in_flight_per_connection: usize,
    pub ops: u64,
    pub seconds: f64,
    pub ops_per_s: f64,
    pub errors: u64,
    pub latency: TimingSummary,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct IngestFacts {
    pub reader: String,
    pub decode_ms: f64,
    pub write_ms: f64,
    pub total_ms: f64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct GetScanFacts {
    /// Minor page faults of one get + scan on a fresh connection (median).
    pub minor_faults_p50: u64,
    pub scanned_column: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct SwitchFacts {
    pub memory_cap_bytes: u64,
    pub table_bytes: u64,
    pub names: Vec<String>,
    pub sequence: Vec<String>,
    /// Seconds of each switch (the put that makes a source current), in order.
    pub switch_s: Vec<f64>,
    /// Evictions the server counted during each switch.
    pub evictions: Vec<u64>,
    /// Puts retried because a reader held the only evictable table for a moment.
    pub out_of_memory_retries: u64,
    pub reader_gets_ok: u64,
    pub reader_not_found: u64,
    pub reader_other_errors: Vec<String>,
    pub names_at_end: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ChurnFacts {
    pub rounds: u64,
    pub seconds: f64,
    /// At the end, both sources still stored.
    pub used_bytes: u64,
    /// Data bytes of the two sources' current versions then.
    pub table_bytes: u64,
    pub free_bytes: u64,
    pub largest_free_bytes: u64,
    /// The smallest largest-free-range seen after any round.
    pub lowest_largest_free_bytes: u64,
    pub evictions: u64,
    /// 1 - largest free range / free bytes, at the end.
    pub fragmentation: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct UpdateFacts {
    pub columns: Vec<String>,
    pub versions_published: u64,
    pub reader_threads: usize,
    pub reader_checks: u64,
    pub versions_seen: u64,
    pub inconsistencies: Vec<String>,
    /// Arena growth of one update while the old version was held.
    #[serde(default)]
    pub grown_bytes: u64,
    /// Bytes that update wrote (the new columns' files).
    #[serde(default)]
    pub written_bytes: u64,
    /// Buffer bytes of the two new columns.
    #[serde(default)]
    pub new_column_bytes: u64,
    #[serde(default)]
    pub append_rows: u64,
    /// Bytes the last append wrote (the new rows' file).
    #[serde(default)]
    pub append_written_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// A number `loadgen compare` knows about. Every figure is a ratio or a rate
/// where higher is better.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: String,
    /// false: informational, shown by compare but never fails it.
    pub gated: bool,
    /// The smallest drop this figure is allowed whatever `--max-regression`
    /// says (a fraction), for gated figures whose run-to-run noise is wide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<f64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}
