//! Concurrent callbacks: `clients` threads, each with its own connection, each
//! getting a random subset of columns and scanning it, for a fixed time. The
//! baseline runs the same loop reading the subset from Parquet, as a callback
//! that re-reads the file does.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use arrowpool::Client;
use hdrhistogram::Histogram;

use super::{Gate, Run, MAIN_NAME};
use crate::measure::{histogram, us, TimingSummary};
use crate::parquet_io;
use crate::results::Throughput;
use crate::rng::SplitMix64;

/// Most columns one callback asks for.
const SUBSET_MAX: usize = 4;

#[derive(Clone, Copy, PartialEq)]
enum Source {
    Store,
    Parquet,
}

struct ThreadResult {
    hist: Histogram<u64>,
    calls: u64,
    checksum: f64,
}

pub fn run(r: &mut Run) -> Result<()> {
    let store = run_source(r, Source::Store)?;
    let parquet = run_source(r, Source::Parquet)?;
    let note = "throughput ratio of the same loop, same threads, same duration, run one after the \
                other: more threads than cores, and any other load on the machine lands on one phase \
                only: allowed to drop 70%";
    r.figure(
        "speedup.callbacks",
        if parquet.ops_per_s > 0.0 {
            store.ops_per_s / parquet.ops_per_s
        } else {
            0.0
        },
        "x",
        Gate::Tolerance(0.7),
        note,
    );
    r.figure(
        "callbacks.store_ops_per_s",
        store.ops_per_s,
        "ops/s",
        Gate::Informational,
        "absolute rate on this machine: not a ratio",
    );
    r.raw.throughput.insert("callbacks_store".into(), store);
    r.raw.throughput.insert("callbacks_parquet".into(), parquet);
    Ok(())
}

fn run_source(r: &mut Run, source: Source) -> Result<Throughput> {
    let threads = r.clients.max(1);
    let names: Vec<String> = r
        .table
        .schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let label = match source {
        Source::Store => "callbacks: get_columns + scan (arrowpool)",
        Source::Parquet => "callbacks: Parquet read of the columns + scan",
    };
    let pb = crate::progress::bar(r.duration.as_secs(), label, "s");
    let barrier = Arc::new(Barrier::new(threads + 1));
    let (socket, path, batch_rows, duration, seed) =
        (&r.socket, &r.parquet, r.batch_rows, r.duration, r.seed);
    let (results, seconds) = std::thread::scope(|s| -> Result<(Vec<Result<ThreadResult>>, f64)> {
        let mut handles = Vec::with_capacity(threads);
        for k in 0..threads {
            let barrier = barrier.clone();
            let names = names.clone();
            handles.push(s.spawn(move || -> Result<ThreadResult> {
                let client = match source {
                    Source::Store => Some(Client::connect(socket)),
                    Source::Parquet => None,
                };
                // Same seed per thread for both sources: the same column subsets.
                let mut rng = SplitMix64::keyed(&[seed, 0xCA11, k as u64]);
                let mut hist = histogram();
                let mut calls = 0u64;
                let mut checksum = 0.0;
                // Wait even after a failed connect, or the others would wait forever.
                barrier.wait();
                let client = client.transpose().context("cannot connect to arrowpoold")?;
                let deadline = Instant::now() + duration;
                while Instant::now() < deadline {
                    let subset = pick_columns(&mut rng, &names);
                    let cols: Vec<&str> = subset.iter().map(|&i| names[i].as_str()).collect();
                    let start = Instant::now();
                    let batches = match &client {
                        Some(c) => c.get_columns(MAIN_NAME, &cols)?.batches,
                        None => parquet_io::read(path, Some(&cols), 1, batch_rows)?.batches,
                    };
                    for b in &batches {
                        for c in b.columns() {
                            checksum += parquet_io::scan(c.as_ref());
                        }
                    }
                    drop(batches);
                    hist.saturating_record(us(start.elapsed()));
                    calls += 1;
                }
                Ok(ThreadResult {
                    hist,
                    calls,
                    checksum,
                })
            }));
        }
        barrier.wait();
        let start = Instant::now();
        while handles.iter().any(|h| !h.is_finished()) {
            pb.set_position(start.elapsed().as_secs().min(duration.as_secs()));
            std::thread::sleep(Duration::from_millis(50));
        }
        let seconds = start.elapsed().as_secs_f64();
        let results = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("callback thread panicked")))
            })
            .collect();
        Ok((results, seconds))
    })?;
    pb.finish_and_clear();
    let mut hist = histogram();
    let mut calls = 0;
    let mut checksum = 0.0;
    for res in results {
        let t = res?;
        hist.add(&t.hist)
            .map_err(|e| anyhow!("merging histograms: {e:?}"))?;
        calls += t.calls;
        checksum += t.checksum;
    }
    std::hint::black_box(checksum);
    let name = match source {
        Source::Store => "callbacks_store",
        Source::Parquet => "callbacks_parquet",
    };
    r.histograms.push((name.into(), hist.clone()));
    Ok(Throughput {
        label: format!("{label}, {threads} threads"),
        concurrency: threads,
        in_flight_per_connection: 1,
        ops: calls,
        seconds,
        ops_per_s: calls as f64 / seconds.max(1e-9),
        errors: 0,
        latency: TimingSummary::of(&hist, None),
    })
}

/// 1 to `SUBSET_MAX` distinct columns, in random order.
fn pick_columns(rng: &mut SplitMix64, names: &[String]) -> Vec<usize> {
    let k = 1 + rng.below(SUBSET_MAX.min(names.len()) as u64) as usize;
    let mut picked = Vec::with_capacity(k);
    while picked.len() < k {
        let c = rng.below(names.len() as u64) as usize;
        if !picked.contains(&c) {
            picked.push(c);
        }
    }
    picked
}
