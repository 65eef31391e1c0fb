//! The single operations, each Parquet one run alternately with its arrowpool
//! counterpart on the same table:
//!
//! | Parquet (what an application does today) | arrowpool                          |
//! |-------------------------------------------|------------------------------------|
//! | write the file (ArrowWriter)              | put                                |
//! | read all columns (all cores)              | get                                |
//! | read 2 columns                            | get_columns                        |
//! | read all + sum a column                   | get + sum, on a fresh connection   |
//!
//! then, as root, the Parquet reads again with a cold page cache.

use std::time::Instant;

use anyhow::{Context, Result};
use arrowpool::Client;

use super::{retry_interrupted, Run, MAIN_NAME, SCAN_COLUMN, TWO_COLUMNS};
use crate::measure::Timing;
use crate::parquet_io;
use crate::results::GetScanFacts;

/// Between the first and second put: a second of quiet for the server to
/// start warming the second put's range, and the time it takes on this
/// kind of VM for a 1.3 GB table (up to ~4 s where the host reclaimed the
/// memory).
const PAUSE_BEFORE_SECOND_PUT: std::time::Duration = std::time::Duration::from_secs(6);

pub fn run(r: &mut Run) -> Result<()> {
    let client = Client::connect(&r.socket).context("cannot connect to arrowpoold")?;
    let (schema, batches, batch_rows) = (
        r.table.schema.clone(),
        r.table.batches.clone(),
        r.batch_rows,
    );
    let (path, threads) = (r.parquet.clone(), r.reader_threads);
    let rows = r.table.rows();
    let sampler = r.sampler;
    let mut rows_ok = true;

    // The first puts into a fresh arena also allocate its pages; they are kept
    // apart from the steady-state puts that reuse them.
    let start = Instant::now();
    let info = retry_interrupted(|| client.put(MAIN_NAME, &schema, &batches))?;
    let mut first = Timing::new("put_first");
    first.record(start.elapsed());
    r.keep(&first);
    r.raw.table.ipc_bytes = info.bytes;
    rows_ok &= info.rows == rows as u64;
    // The second version lands next to the first, in pages the arena has
    // not used; from the third on, puts alternate between ranges whose pages
    // exist. It follows a pause, as a user's next click does: the server
    // warms that range while idle (`--warm-ahead`, docs/OPERATING.md).
    std::thread::sleep(PAUSE_BEFORE_SECOND_PUT);
    let start = Instant::now();
    let info = retry_interrupted(|| client.put(MAIN_NAME, &schema, &batches))?;
    let mut second = Timing::new("put_second");
    second.record(start.elapsed());
    r.keep(&second);
    rows_ok &= info.rows == rows as u64;

    let tmp = r.scratch_file("write");
    let write = || {
        let start = Instant::now();
        parquet_io::write(&tmp, &schema, &batches, batch_rows)?;
        Ok(start.elapsed())
    };
    let mut put_rows = true;
    let put = || {
        let start = Instant::now();
        let info = retry_interrupted(|| client.put(MAIN_NAME, &schema, &batches))?;
        let d = start.elapsed();
        put_rows &= info.rows == rows as u64;
        Ok(d)
    };
    let pair = sampler.sample_pair(("parquet_write", write), ("put", put));
    let _ = std::fs::remove_file(&tmp);
    let (a, b) = pair?;
    r.keep(&a);
    r.keep(&b);
    rows_ok &= put_rows;

    let mut read_rows = true;
    let read_all = |ok: &mut bool| {
        let start = Instant::now();
        let t = parquet_io::read(&path, None, threads, batch_rows)?;
        let d = start.elapsed();
        *ok &= t.rows() == rows;
        Ok(d)
    };
    let read_two = |ok: &mut bool| {
        let start = Instant::now();
        let t = parquet_io::read(&path, Some(&TWO_COLUMNS), threads, batch_rows)?;
        let d = start.elapsed();
        *ok &= t.rows() == rows && t.schema.fields().len() == 2;
        Ok(d)
    };
    let mut get_rows = true;
    let (a, b) = sampler.sample_pair(
        ("parquet_read_all", || read_all(&mut read_rows)),
        ("get_all", || {
            let start = Instant::now();
            let table = client.get(MAIN_NAME)?;
            let d = start.elapsed();
            get_rows &= table.rows == rows as u64
                && table.batches.iter().map(|b| b.num_rows()).sum::<usize>() == rows;
            drop(table);
            Ok(d)
        }),
    )?;
    r.keep(&a);
    r.keep(&b);
    // Interleaved, each get above follows a read and so pays the server's
    // wake-up from idle, as a callback after a pause does. Back to back, for
    // reference:
    let t = sampler.sample("get_all_repeated", || {
        let start = Instant::now();
        let table = client.get(MAIN_NAME)?;
        let d = start.elapsed();
        drop(table);
        Ok(d)
    })?;
    r.keep(&t);
    let (a, b) = sampler.sample_pair(
        ("parquet_read_2", || read_two(&mut read_rows)),
        ("get_2", || {
            let start = Instant::now();
            let table = client.get_columns(MAIN_NAME, &TWO_COLUMNS)?;
            let d = start.elapsed();
            get_rows &= table.schema.fields().len() == 2;
            drop(table);
            Ok(d)
        }),
    )?;
    r.keep(&a);
    r.keep(&b);

    // A fresh connection per run maps the arena anew, so the scan faults in
    // every page of the column it reads, as a newly started worker would.
    let socket = r.socket.clone();
    let mut faults = Vec::new();
    let (mut parquet_sum, mut store_sum) = (0.0, 0.0);
    let (a, b) = sampler.sample_pair(
        ("parquet_read_scan", || {
            let start = Instant::now();
            let t = parquet_io::read(&path, None, threads, batch_rows)?;
            parquet_sum = parquet_io::sum_f64(&t.batches, SCAN_COLUMN)?;
            Ok(start.elapsed())
        }),
        ("get_scan", || {
            let fresh = Client::connect(&socket)?;
            let before = crate::machine::minor_faults();
            let start = Instant::now();
            let table = fresh.get(MAIN_NAME)?;
            store_sum = parquet_io::sum_f64(&table.batches, SCAN_COLUMN)?;
            let d = start.elapsed();
            faults.push(crate::machine::minor_faults() - before);
            drop(table);
            drop(fresh);
            Ok(d)
        }),
    )?;
    r.keep(&a);
    r.keep(&b);
    faults.sort_unstable();
    r.raw.get_scan = Some(GetScanFacts {
        minor_faults_p50: faults.get(faults.len() / 2).copied().unwrap_or(0),
        scanned_column: SCAN_COLUMN.into(),
    });

    // Cold page cache: only root may drop it. Each cold run pays a `sync` and a
    // full cache drop before its timer starts.
    match crate::server::drop_page_cache() {
        Ok(()) => {
            let t = sampler.sample("parquet_read_all_cold", || {
                crate::server::drop_page_cache()?;
                read_all(&mut read_rows)
            })?;
            r.keep(&t);
            let t = sampler.sample("parquet_read_2_cold", || {
                crate::server::drop_page_cache()?;
                read_two(&mut read_rows)
            })?;
            r.keep(&t);
            r.raw.cold_cache =
                "measured: `sync` then `echo 3 > /proc/sys/vm/drop_caches` before every cold run"
                    .into();
        }
        Err(e) => r.raw.cold_cache = format!("not measured: {e:#} (needs root)"),
    }

    let expected = parquet_io::sum_f64(&r.table.batches, SCAN_COLUMN)?;
    let close = |v: f64| (v - expected).abs() <= 1e-9 * expected.abs().max(1.0);
    r.check(
        "parquet reads return the whole table",
        read_rows,
        format!("{rows} rows; 2-column reads have 2 columns"),
    );
    r.check(
        "store returns whole tables",
        rows_ok && get_rows,
        format!("{rows} rows in every put and get"),
    );
    r.check(
        "both scans sum the generated values",
        close(parquet_sum) && close(store_sum),
        format!("sum of {SCAN_COLUMN}: Parquet {parquet_sum}, arrowpool {store_sum}, expected {expected}"),
    );

    let stats = client.stats()?;
    r.raw.server.memory_kind = stats.memory_kind;
    r.raw.server.io_driver = stats.io_driver;
    r.raw.server.threads = stats.threads;
    r.raw.server.arena_bytes = stats.arena_bytes;
    Ok(())
}
