//! Churn: many rounds of what a dashboard does all day to one store — switch
//! to the other source (put it whole), update 2 of its columns (a version that
//! shares the rest), append 1% rows (a version that shares every batch) — then
//! how fragmented the arena is and whether every byte comes back.
//!
//! Shared versions make the chunk layout more varied than whole-table puts
//! (columns, batches and tables of different sizes, freed in other orders
//! than they were made), so this is where fragmentation would show: the
//! largest free range against the free bytes at the end, and the puts that
//! needed eviction or failed.

use std::time::Instant;

use anyhow::{Context, Result};
use arrow_array::cast::AsArray;
use arrow_array::types::Float64Type;
use arrow_array::{ArrayRef, Float64Array, RecordBatch};
use arrowpool::Client;

use super::{retry_interrupted, Run, TWO_COLUMNS};
use crate::results::ChurnFacts;

/// Rounds of switch + update + append.
pub const ROUNDS: u64 = 1000;
const SOURCES: [&str; 2] = ["churn-a", "churn-b"];

pub fn run(r: &mut Run) -> Result<()> {
    let client = Client::connect(&r.socket).context("cannot connect to arrowpoold")?;
    let schema = r.table.schema.clone();
    let fi = schema.index_of(TWO_COLUMNS[0])?;
    let baseline = client.stats()?;
    let first = &r.table.batches[0];
    let extra = arrow_select::concat::concat_batches(
        &first.schema(),
        [&first.slice(0, (r.table.rows() / 100).clamp(1, first.num_rows()))],
    )?;
    let start = Instant::now();
    let mut lowest_largest_free = u64::MAX;
    for round in 0..ROUNDS {
        let name = SOURCES[(round % 2) as usize];
        // Switch: the source is loaded again, whole.
        retry_interrupted(|| client.put(name, &schema, &r.table.batches))?;
        // Update: one column replaced, the rest shared.
        let current = client.get(name)?;
        let batches = current
            .batches
            .iter()
            .map(|b| {
                let f: Float64Array = b
                    .column(fi)
                    .as_primitive::<Float64Type>()
                    .unary(|v| v + 1.0);
                let mut cols: Vec<ArrayRef> = b.columns().to_vec();
                cols[fi] = std::sync::Arc::new(f);
                Ok(RecordBatch::try_new(b.schema(), cols)?)
            })
            .collect::<Result<Vec<_>>>()?;
        retry_interrupted(|| client.put(name, &current.schema, &batches))?;
        drop((current, batches));
        // Append: every batch shared, 1% new rows.
        let current = client.get(name)?;
        let mut batches = current.batches.clone();
        batches.push(extra.clone());
        retry_interrupted(|| client.put(name, &current.schema, &batches))?;
        drop((current, batches));
        let s = client.stats()?;
        lowest_largest_free = lowest_largest_free.min(s.largest_free_bytes);
    }
    let elapsed = start.elapsed();
    let end = client.stats()?;
    let held: u64 = client
        .list()?
        .iter()
        .filter(|e| SOURCES.contains(&e.name.as_str()))
        .map(|e| e.bytes)
        .sum();
    for name in SOURCES {
        client.delete(name)?;
    }
    let after = client.stats()?;
    let facts = ChurnFacts {
        rounds: ROUNDS,
        seconds: elapsed.as_secs_f64(),
        used_bytes: end.used_bytes,
        table_bytes: held,
        free_bytes: end.free_bytes,
        largest_free_bytes: end.largest_free_bytes,
        lowest_largest_free_bytes: lowest_largest_free,
        evictions: end.evictions - baseline.evictions,
        fragmentation: if end.free_bytes == 0 {
            0.0
        } else {
            1.0 - end.largest_free_bytes as f64 / end.free_bytes as f64
        },
    };
    r.check(
        "churn: every byte comes back",
        after.used_bytes == baseline.used_bytes && after.pending_bytes == 0,
        format!(
            "{ROUNDS} rounds of switch + update + append in {:.1} s; used {} bytes before, {} after deleting both sources",
            facts.seconds, baseline.used_bytes, after.used_bytes
        ),
    );
    r.raw.churn = Some(facts);
    Ok(())
}
