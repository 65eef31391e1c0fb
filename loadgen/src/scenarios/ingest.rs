//! Server-side ingest of the same Parquet file (`client.ingest`).

use anyhow::{bail, Context, Result};
use arrowpool::protocol::ErrorCode;
use arrowpool::Client;

use super::{retry_interrupted, Run, MAIN_NAME};
use crate::results::IngestFacts;

const INGEST_NAME: &str = "ingested";

pub fn run(r: &mut Run) -> Result<()> {
    let client = Client::connect(&r.socket).context("cannot connect to arrowpoold")?;
    let path = std::fs::canonicalize(&r.parquet)?;
    let path = path
        .to_str()
        .context("the Parquet path is not UTF-8")?
        .to_owned();
    let rows = r.table.rows() as u64;
    // The first ingest into this server writes into pages it never used:
    // timed apart (the cold path), then the steady ones.
    let start = std::time::Instant::now();
    let first = retry_interrupted(|| client.ingest(&path, INGEST_NAME, &[]))?;
    let mut t = crate::measure::Timing::new("ingest_first");
    t.record(start.elapsed());
    r.keep(&t);
    let mut last = None;
    let mut rows_ok = first.rows == rows;
    let t = r.sampler.sample("ingest", || {
        // Untimed: drop the previous run's table first, so that the arena holds
        // the main table and one ingested copy, never an LRU choice between them.
        match client.delete(INGEST_NAME) {
            Err(e) if e.code() != Some(ErrorCode::NotFound) => return Err(e.into()),
            _ => {}
        }
        let start = std::time::Instant::now();
        let reply = retry_interrupted(|| client.ingest(&path, INGEST_NAME, &[]))?;
        let d = start.elapsed();
        rows_ok &= reply.rows == rows;
        last = Some(reply);
        Ok(d)
    })?;
    r.keep(&t);
    // What a reader of the ingested table pays: a get builds one set of
    // arrays per record batch, and a row group is one batch
    // (docs/INGEST.md), as a put of the same table's batches is.
    let mut batches = 0;
    let t = r.sampler.sample("get_ingested", || {
        let start = std::time::Instant::now();
        let table = client.get(INGEST_NAME)?;
        let d = start.elapsed();
        batches = table.batches.len();
        drop(table);
        Ok(d)
    })?;
    r.keep(&t);
    let row_groups = rows.div_ceil(r.batch_rows.max(1) as u64);
    r.check(
        "an ingested table has a batch per row group",
        batches as u64 == row_groups,
        format!("{batches} batches, {row_groups} row groups"),
    );
    client.delete(INGEST_NAME)?;
    if let Err(e) = client.get(MAIN_NAME) {
        bail!(
            "the main table is gone after ingest ({e}): the arena evicted it to fit the ingested copy; \
             pass a larger --server-memory"
        );
    }
    r.check("ingest reads every row", rows_ok, format!("{rows} rows"));
    if let Some(reply) = last {
        r.raw.ingest = Some(IngestFacts {
            reader: reply.reader,
            decode_ms: reply.decode_ms,
            write_ms: reply.write_ms,
            total_ms: reply.total_ms,
            bytes: reply.bytes,
        });
    }
    Ok(())
}
