//! Partial update: a callback replaces two columns and publishes the result as
//! a new version while readers keep reading; then appends 1% rows.
//!
//! The new version shares every untouched column with the old one (the client
//! finds them in the arena), so an update writes two columns, not the table.
//! Measured against rewriting the Parquet file and against a full put of the
//! same change (arrays outside the arena, so every column is written), with the
//! arena's growth while the old version is still held; the append against a
//! memcpy of the new rows.
//!
//! Each update adds 1 to both replaced columns (new arrays computed from the
//! ones the get returned; the other columns are the get's arrays, zero-copy)
//! and puts the batches. So version `base + d` holds `original + d` in both
//! columns of every row: a reader that sees anything else saw a torn or mixed
//! version. Readers check every row of both columns against the original table.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch};
use arrowpool::Client;

use super::{retry_interrupted, Run, TWO_COLUMNS};
use crate::parquet_io;
use crate::results::UpdateFacts;

const UPDATE_NAME: &str = "updated";
const FULL_NAME: &str = "updated-full";
const READERS: usize = 2;
/// Inconsistencies kept verbatim (the count is always exact).
const MESSAGES_MAX: usize = 10;

struct Original {
    floats: Float64Array,
    ints: Int64Array,
}

#[derive(Default)]
struct ReaderResult {
    checks: u64,
    versions: Vec<u64>,
    problems: Vec<String>,
    problem_count: u64,
}

impl ReaderResult {
    fn problem(&mut self, msg: String) {
        self.problem_count += 1;
        if self.problems.len() < MESSAGES_MAX {
            self.problems.push(msg);
        }
    }
}

pub fn run(r: &mut Run) -> Result<()> {
    let client = Client::connect(&r.socket).context("cannot connect to arrowpoold")?;
    let schema = r.table.schema.clone();
    let (fi, ii) = (
        schema.index_of(TWO_COLUMNS[0])?,
        schema.index_of(TWO_COLUMNS[1])?,
    );
    let rows = r.table.rows() as u64;
    let base = retry_interrupted(|| client.put(UPDATE_NAME, &schema, &r.table.batches))?;
    let originals: Arc<Vec<Original>> = Arc::new(
        r.table
            .batches
            .iter()
            .map(|b| Original {
                floats: b.column(fi).as_primitive::<Float64Type>().clone(),
                ints: b.column(ii).as_primitive::<Int64Type>().clone(),
            })
            .collect(),
    );

    let stop = AtomicBool::new(false);
    let socket = r.socket.clone();
    let sampler = r.sampler;
    let mut update = || -> Result<std::time::Duration> {
        let start = Instant::now();
        let current = client.get(UPDATE_NAME)?;
        let batches = replace_all(&current.batches, fi, ii)?;
        retry_interrupted(|| client.put(UPDATE_NAME, &current.schema, &batches))?;
        drop(batches);
        drop(current);
        Ok(start.elapsed())
    };
    // Baseline: the same two new columns, then the whole file written again.
    let tmp = r.scratch_file("rewrite");
    let (table, batch_rows) = (&r.table, r.batch_rows);
    let rewrite = || {
        let start = Instant::now();
        let batches = replace_all(&table.batches, fi, ii)?;
        parquet_io::write(&tmp, &table.schema, &batches, batch_rows)?;
        Ok(start.elapsed())
    };
    // Timed alternately with the rewrite first, without readers; then again
    // while the readers check every version.
    let pair = sampler.sample_pair(("parquet_rewrite", rewrite), ("update", &mut update));
    let _ = std::fs::remove_file(&tmp);
    let (rewrite, alone) = pair?;
    // The same change put whole: the batches are the generated ones, not the
    // arena's, so every column is written.
    let full = || {
        let start = Instant::now();
        let batches = replace_all(&table.batches, fi, ii)?;
        retry_interrupted(|| client.put(FULL_NAME, &table.schema, &batches))?;
        Ok(start.elapsed())
    };
    // Two warm-up puts: the two versions that alternate then lie in pages that
    // exist, as they do for the shared puts (first touches are not the subject).
    for _ in 0..2 {
        full()?;
    }
    let pair = sampler.sample_pair(("update_full_put", full), ("update_shared", &mut update));
    client.delete(FULL_NAME).ok();
    let (full_put, shared) = pair?;
    r.keep(&full_put);
    r.keep(&shared);
    // Growth of the arena by one update while the old version is held.
    let held = client.get(UPDATE_NAME)?;
    let before = client.stats()?.used_bytes;
    let changed = replace_all(&held.batches, fi, ii)?;
    let written = retry_interrupted(|| client.put(UPDATE_NAME, &held.schema, &changed))?.bytes;
    let grown = client.stats()?.used_bytes.saturating_sub(before);
    let new_column_bytes: u64 = changed
        .iter()
        .map(|b| {
            (b.column(fi).get_buffer_memory_size() + b.column(ii).get_buffer_memory_size()) as u64
        })
        .sum();
    drop((held, changed));
    let (timing, readers) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..READERS)
            .map(|_| {
                let originals = originals.clone();
                let (stop, socket) = (&stop, &socket);
                s.spawn(move || {
                    read_and_check(socket, rows, base.version, (fi, ii), &originals, stop)
                })
            })
            .collect();
        let timing = sampler.sample("update_with_readers", &mut update);
        stop.store(true, Ordering::Relaxed);
        let readers: Vec<Result<ReaderResult>> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("reader thread panicked")))
            })
            .collect();
        (timing, readers)
    });
    r.keep(&rewrite);
    r.keep(&alone);
    let timing = timing?;
    r.keep(&timing);
    let last = client.get(UPDATE_NAME)?.version;
    let append = append_rows(r, &client)?;
    client.delete(UPDATE_NAME)?;

    let mut facts = UpdateFacts {
        columns: TWO_COLUMNS.iter().map(|c| c.to_string()).collect(),
        versions_published: last - base.version,
        reader_threads: READERS,
        grown_bytes: grown,
        written_bytes: written,
        new_column_bytes,
        append_rows: append.0,
        append_written_bytes: append.1,
        ..Default::default()
    };
    let mut versions = Vec::new();
    let mut problem_count = 0;
    for res in readers {
        let res = res?;
        facts.reader_checks += res.checks;
        versions.extend(res.versions);
        facts.inconsistencies.extend(res.problems);
        problem_count += res.problem_count;
    }
    versions.sort_unstable();
    versions.dedup();
    facts.versions_seen = versions.len() as u64;
    r.check(
        "update: readers only see complete versions",
        problem_count == 0 && facts.reader_checks > 0,
        format!(
            "{} checks of every row of {} by {READERS} readers over {} versions; {problem_count} inconsistencies",
            facts.reader_checks,
            TWO_COLUMNS.join(" and "),
            facts.versions_seen
        ),
    );
    r.raw.update = Some(facts);

    Ok(())
}

/// Appends 1% of the table's rows (fresh arrays) to the current version of
/// UPDATE_NAME, timed against a memcpy of those rows' buffers. Returns the
/// rows appended and the bytes the last append wrote.
fn append_rows(r: &mut Run, client: &Client) -> Result<(u64, u64)> {
    let rows = (r.table.rows() / 100).max(1);
    let first = &r.table.batches[0];
    // A compact copy: the new rows lie in this process, not in the arena.
    let extra = arrow_select::concat::concat_batches(
        &first.schema(),
        [&first.slice(0, rows.min(first.num_rows()))],
    )?;
    let bytes: usize = extra
        .columns()
        .iter()
        .map(|c| c.get_buffer_memory_size())
        .sum();
    let mut dest = vec![0u8; bytes];
    let memcpy = || {
        let start = Instant::now();
        let mut at = 0;
        for c in extra.columns() {
            let d = c.to_data();
            for b in d.buffers().iter().chain(d.nulls().map(|n| n.buffer())) {
                dest[at..at + b.len()].copy_from_slice(b.as_slice());
                at += b.len();
            }
        }
        std::hint::black_box(&dest);
        Ok(start.elapsed())
    };
    let mut written = 0;
    // Each append starts from the table as it was (its first `base` batches),
    // so every sample appends 1% to the same 100%.
    let base = client.get(UPDATE_NAME)?.batches.len();
    let append = || {
        let start = Instant::now();
        let current = client.get(UPDATE_NAME)?;
        let mut batches = current.batches[..base.min(current.batches.len())].to_vec();
        batches.push(extra.clone());
        written = retry_interrupted(|| client.put(UPDATE_NAME, &current.schema, &batches))?.bytes;
        Ok(start.elapsed())
    };
    let (m, a) = r
        .sampler
        .sample_pair(("append_memcpy", memcpy), ("append", append))?;
    r.keep(&m);
    r.keep(&a);
    Ok((rows as u64, written))
}

/// `replace_columns` of every batch.
fn replace_all(batches: &[RecordBatch], fi: usize, ii: usize) -> Result<Vec<RecordBatch>> {
    batches.iter().map(|b| replace_columns(b, fi, ii)).collect()
}

/// The batch with columns `fi` (Float64) and `ii` (Int64) plus one; every
/// other column is the same array (zero-copy).
fn replace_columns(b: &RecordBatch, fi: usize, ii: usize) -> Result<RecordBatch> {
    let floats: Float64Array = b
        .column(fi)
        .as_primitive::<Float64Type>()
        .unary(|v| v + 1.0);
    let ints: Int64Array = b
        .column(ii)
        .as_primitive::<Int64Type>()
        .unary(|v| v.wrapping_add(1));
    let mut cols: Vec<ArrayRef> = b.columns().to_vec();
    cols[fi] = Arc::new(floats);
    cols[ii] = Arc::new(ints);
    Ok(RecordBatch::try_new(b.schema(), cols)?)
}

fn read_and_check(
    socket: &std::path::Path,
    rows: u64,
    base_version: u64,
    (fi, ii): (usize, usize),
    originals: &[Original],
    stop: &AtomicBool,
) -> Result<ReaderResult> {
    let client = Client::connect(socket).context("reader cannot connect")?;
    let mut out = ReaderResult::default();
    let mut last_version = 0;
    while !stop.load(Ordering::Relaxed) {
        let table = match client.get(UPDATE_NAME) {
            Ok(t) => t,
            Err(e) => {
                // The name exists for the whole scenario: any error is a failure.
                out.problem(format!("get failed: {e}"));
                break;
            }
        };
        out.checks += 1;
        if table.version < last_version {
            out.problem(format!(
                "version went back from {last_version} to {}",
                table.version
            ));
        }
        last_version = table.version;
        out.versions.push(table.version);
        let Some(d) = table.version.checked_sub(base_version) else {
            out.problem(format!(
                "version {} is older than the first put ({base_version})",
                table.version
            ));
            continue;
        };
        let got_rows: u64 = table.batches.iter().map(|b| b.num_rows() as u64).sum();
        if table.rows != rows || got_rows != rows || table.batches.len() != originals.len() {
            out.problem(format!(
                "version {}: {} rows in {} batches, expected {rows} in {}",
                table.version,
                got_rows,
                table.batches.len(),
                originals.len()
            ));
            continue;
        }
        for (n, (b, o)) in table.batches.iter().zip(originals).enumerate() {
            if let Some(msg) = check_batch(b, o, fi, ii, d) {
                out.problem(format!("version {} batch {n}: {msg}", table.version));
                break;
            }
        }
    }
    Ok(out)
}

/// None when both columns of `b` equal the original plus `d` on every row.
fn check_batch(b: &RecordBatch, o: &Original, fi: usize, ii: usize, d: u64) -> Option<String> {
    let (Some(f), Some(i)) = (
        b.column(fi).as_primitive_opt::<Float64Type>(),
        b.column(ii).as_primitive_opt::<Int64Type>(),
    ) else {
        return Some("updated columns have the wrong type".into());
    };
    if f.len() != o.floats.len() || i.len() != o.ints.len() {
        return Some(format!("{} rows, expected {}", f.len(), o.floats.len()));
    }
    let di = d as i64;
    if let Some(row) = i
        .values()
        .iter()
        .zip(o.ints.values())
        .position(|(&v, &w)| v != w.wrapping_add(di))
    {
        return Some(format!(
            "row {row}: {} = {}, expected {} + {d}",
            TWO_COLUMNS[1],
            i.value(row),
            o.ints.value(row)
        ));
    }
    let df = d as f64;
    if let Some(row) = f
        .values()
        .iter()
        .zip(o.floats.values())
        .position(|(&v, &w)| (v - (w + df)).abs() > 1e-6 * w.abs().max(1.0))
    {
        return Some(format!(
            "row {row}: {} = {}, expected {} + {d}",
            TWO_COLUMNS[0],
            f.value(row),
            o.floats.value(row)
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Workload;
    use arrow_array::Array;

    #[test]
    fn replaced_columns_pass_and_mixed_versions_fail() {
        let w = Workload {
            rows: 1000,
            columns: 8,
            seed: 5,
            batch_rows: 1000,
        };
        let b = w.batch(0).unwrap();
        let o = Original {
            floats: b.column(0).as_primitive::<Float64Type>().clone(),
            ints: b.column(1).as_primitive::<Int64Type>().clone(),
        };
        let once = replace_columns(&b, 0, 1).unwrap();
        let twice = replace_columns(&once, 0, 1).unwrap();
        assert_eq!(check_batch(&b, &o, 0, 1, 0), None);
        assert_eq!(check_batch(&once, &o, 0, 1, 1), None);
        assert_eq!(check_batch(&twice, &o, 0, 1, 2), None);
        assert!(check_batch(&twice, &o, 0, 1, 1).is_some());
        // Float column from one version, int column from another: torn.
        let mut cols = twice.columns().to_vec();
        cols[0] = once.column(0).clone();
        let torn = RecordBatch::try_new(b.schema(), cols).unwrap();
        assert!(check_batch(&torn, &o, 0, 1, 2).unwrap().contains("f64_0"));
        // Untouched columns are the same arrays, not copies.
        assert_eq!(
            once.column(2).to_data().buffers()[0].as_ptr(),
            b.column(2).to_data().buffers()[0].as_ptr()
        );
    }
}
