//! The scenarios, one file each, run in order against the same table.
//!
//! ```text
//! operations Parquet write / read all / read 2 columns / read + scan, each run
//!            alternately with put / get / get_columns / get + scan; cold-cache reads
//! ingest     the server reads the same Parquet file (the first ingest timed apart)
//! cold       memcpy of the table; get vs a socket echo, each after 0.5 s idle
//! callbacks  N threads: get + scan of random column subsets vs the same from Parquet
//! update     replace 2 columns and publish a new version while readers check versions
//! small_ops  pipelined ping and get+release from several connections
//! churn      1000 rounds of switch + update + append; fragmentation, bytes back
//! switch     sources A, B, C, A under a memory cap of 1.5 tables (own server)
//! restart    kill -9 of a --state-dir server with 1 and 3 tables, to the first get (own server)
//! spill      switch back to a source spilled to disk vs ingest its Parquet again (own server)
//! remote     Flight do_get / do_put over loopback vs pyarrow's Flight server (own server)
//! objects    ingest from S3 (an emulator on loopback) vs the local file (own server; the emulator on a CPU of its own, then sharing)
//! ```

pub mod callbacks;
pub mod churn;
pub mod cold;
pub mod ingest;
pub mod objects;
pub mod operations;
pub mod remote;
pub mod restart;
pub mod small_ops;
pub mod spill;
pub mod switch;
pub mod update;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arrowpool::ClientError;

use crate::measure::{Sampler, Timing};
use crate::parquet_io::Batches;
use crate::results::{Check, Comparison, Figure, Raw};

/// The Float64 column every scan sums.
pub const SCAN_COLUMN: &str = "f64_0";
/// The two columns of the "2 columns" reads; also the two an update replaces.
pub const TWO_COLUMNS: [&str; 2] = ["f64_0", "i64_1"];
/// The name the main table is put under.
pub const MAIN_NAME: &str = "main";

/// Requests retried because the server's `fallocate` was interrupted (EINTR).
static INTERRUPTED_RETRIES: AtomicU64 = AtomicU64::new(0);
/// Most retries of one request.
const INTERRUPTED_RETRIES_MAX: u32 = 20;

/// Whether the server failed a put only because allocating its pages was
/// interrupted: `fallocate` on hugetlbfs returns EINTR when io_uring task work
/// is pending on the server thread, and the server reports it as OutOfMemory
/// instead of retrying. Nothing was written; the request can be sent again.
fn interrupted(e: &ClientError) -> bool {
    matches!(e, ClientError::Server(r) if r.message.contains("Interrupted system call"))
}

/// Runs `f`, sending it again while it fails with an interrupted allocation.
pub fn retry_interrupted<T>(
    mut f: impl FnMut() -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    let mut tries = 0;
    loop {
        match f() {
            Err(e) if interrupted(&e) && tries < INTERRUPTED_RETRIES_MAX => {
                tries += 1;
                INTERRUPTED_RETRIES.fetch_add(1, Ordering::Relaxed);
            }
            other => return other,
        }
    }
}

/// Requests retried so far by `retry_interrupted`.
pub fn interrupted_retries() -> u64 {
    INTERRUPTED_RETRIES.load(Ordering::Relaxed)
}

/// How `loadgen compare` treats a figure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Gate {
    /// Fails when it drops more than `--max-regression`.
    Gated,
    /// Gated, but allowed to drop at least this fraction: its noise is wide.
    Tolerance(f64),
    /// Shown, never fails.
    Informational,
}

/// Everything the scenarios share.
pub struct Run {
    pub parquet: PathBuf,
    pub table: Batches,
    pub batch_rows: usize,
    pub socket: PathBuf,
    pub sampler: Sampler,
    pub reader_threads: usize,
    pub clients: usize,
    pub duration: Duration,
    pub seed: u64,
    /// Where temporary Parquet files go (the data dir).
    pub scratch: PathBuf,
    pub raw: Raw,
    /// Histograms to write as `.hgrm` files, by name.
    pub histograms: Vec<(String, hdrhistogram::Histogram<u64>)>,
}

impl Run {
    /// Keeps a timing: its summary in raw.json, its histogram for a `.hgrm` file.
    pub fn keep(&mut self, t: &Timing) {
        self.raw.timings.insert(t.name.clone(), t.summary());
        self.histograms.push((t.name.clone(), t.hist.clone()));
    }

    /// The p50 of a kept timing, in seconds.
    pub fn p50_s(&self, name: &str) -> Option<f64> {
        self.raw.timings.get(name).map(|t| t.p50_us as f64 / 1e6)
    }

    /// Adds a summary-table row (and its figure) from two kept timings' medians.
    pub fn compare(
        &mut self,
        key: &str,
        label: &str,
        baseline: (&str, f64),
        candidate: (&str, f64),
        gate: Gate,
        note: &str,
    ) {
        let speedup = if candidate.1 > 0.0 {
            baseline.1 / candidate.1
        } else {
            0.0
        };
        self.raw.comparisons.push(Comparison {
            key: key.to_owned(),
            label: label.to_owned(),
            baseline: baseline.0.to_owned(),
            baseline_s: baseline.1,
            candidate: candidate.0.to_owned(),
            candidate_s: candidate.1,
            speedup,
        });
        self.figure(&format!("speedup.{key}"), speedup, "x", gate, note);
    }

    pub fn figure(&mut self, name: &str, value: f64, unit: &str, gate: Gate, note: &str) {
        let (gated, tolerance) = match gate {
            Gate::Gated => (true, None),
            Gate::Tolerance(t) => (true, Some(t)),
            Gate::Informational => (false, None),
        };
        self.raw.figures.push(Figure {
            name: name.to_owned(),
            value,
            unit: unit.to_owned(),
            gated,
            tolerance,
            note: note.to_owned(),
        });
    }

    pub fn check(&mut self, name: &str, passed: bool, detail: impl Into<String>) {
        let detail = detail.into();
        if !passed {
            eprintln!("loadgen: CHECK FAILED: {name}: {detail}");
        }
        self.raw.checks.push(Check {
            name: name.to_owned(),
            passed,
            detail,
        });
    }

    pub fn scratch_file(&self, what: &str) -> PathBuf {
        self.scratch
            .join(format!(".loadgen-{what}-{}.parquet", std::process::id()))
    }
}
