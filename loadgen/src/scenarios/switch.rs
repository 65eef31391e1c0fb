//! Switching data sources under a memory cap: a server whose arena holds about
//! 1.5 tables; sources A, B, C (the same table under three names) are made
//! current in turn, A, B, C, A, B, C, A..., so each switch must evict the
//! previous source. A reader thread gets all three names in a loop the whole
//! time: the only error it may see is NotFound, for an evicted source.
//!
//! This scenario runs on its own server (started here, stopped at the end), so
//! the cap does not constrain the others.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use arrowpool::protocol::ErrorCode;
use arrowpool::Client;

use super::{retry_interrupted, Run};
use crate::results::SwitchFacts;
use crate::server::ServerProcess;

const NAMES: [&str; 3] = ["source_a", "source_b", "source_c"];
/// A put that finds the only evictable table leased by the reader for a moment
/// gets OutOfMemory; it is retried after this pause, at most `RETRIES_MAX` times.
const RETRY_PAUSE: Duration = Duration::from_millis(1);
const RETRIES_MAX: u64 = 2_000;

/// The arena size that holds about 1.5 tables: 1.5 times the space a put of
/// the table reserves, rounded up to whole hugepages.
pub fn memory_cap(reserve_bytes: u64) -> u64 {
    let page = crate::server::HUGEPAGE_BYTES;
    (reserve_bytes * 3 / 2).div_ceil(page) * page
}

/// Bytes a put of the table reserves in the arena (the IPC size bound).
pub fn reserve_bytes(r: &Run) -> u64 {
    arrowpool::ipc::file_size_bound(&r.table.schema, &r.table.batches) as u64
}

pub fn run(
    r: &mut Run,
    bin: &std::path::Path,
    hugepages: &str,
    dir: &std::path::Path,
) -> Result<()> {
    let table_bytes = reserve_bytes(r);
    let cap = memory_cap(table_bytes);
    let socket = dir.join("switch.sock");
    let log = dir.join("arrowpoold-switch.log");
    let server = ServerProcess::start(bin, &socket, cap, hugepages, &log)?;
    let result = run_on(r, &socket, cap, table_bytes);
    let stopped = server.stop();
    result?;
    stopped
}

fn run_on(r: &mut Run, socket: &std::path::Path, cap: u64, table_bytes: u64) -> Result<()> {
    let writer = Client::connect(socket).context("cannot connect to the capped server")?;
    let rounds = r.sampler.repeats.max(1);
    let mut sequence = vec![NAMES[0]];
    for _ in 0..rounds {
        sequence.extend([NAMES[1], NAMES[2], NAMES[0]]);
    }
    let rows = r.table.rows() as u64;
    let stop = AtomicBool::new(false);
    let pb = crate::progress::bar(sequence.len() as u64, "switch A, B, C, A...", "switches");
    let mut facts = SwitchFacts {
        memory_cap_bytes: cap,
        table_bytes,
        names: NAMES.iter().map(|n| n.to_string()).collect(),
        sequence: sequence.iter().map(|n| n.to_string()).collect(),
        ..Default::default()
    };
    let mut timing = crate::measure::Timing::new("switch");
    let reader = std::thread::scope(|s| -> Result<(u64, u64, Vec<String>)> {
        let stop = &stop;
        let handle = s.spawn(move || -> Result<(u64, u64, Vec<String>)> {
            let client = Client::connect(socket).context("reader cannot connect")?;
            let (mut ok, mut not_found, mut other) = (0u64, 0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                for name in NAMES {
                    match client.get(name) {
                        Ok(t) if t.rows == rows => ok += 1,
                        Ok(t) => other.push(format!("{name}: {} rows, expected {rows}", t.rows)),
                        Err(e) if e.code() == Some(ErrorCode::NotFound) => not_found += 1,
                        Err(e) => other.push(format!("{name}: {e}")),
                    }
                }
                if other.len() > 10 {
                    break;
                }
            }
            Ok((ok, not_found, other))
        });
        let run = (|| -> Result<()> {
            for (k, name) in sequence.iter().enumerate() {
                let before = writer.stats()?.evictions;
                let start = Instant::now();
                let mut retries = 0;
                loop {
                    match retry_interrupted(|| writer.put(name, &r.table.schema, &r.table.batches))
                    {
                        Ok(_) => break,
                        Err(e)
                            if e.code() == Some(ErrorCode::OutOfMemory)
                                && retries < RETRIES_MAX =>
                        {
                            retries += 1;
                            std::thread::sleep(RETRY_PAUSE);
                        }
                        Err(e) => bail!("switch to {name} failed after {retries} retries: {e}"),
                    }
                }
                let d = start.elapsed();
                facts.out_of_memory_retries += retries;
                facts.switch_s.push(d.as_secs_f64());
                facts.evictions.push(writer.stats()?.evictions - before);
                // The first put lands in an empty arena: a load, not a switch.
                if k > 0 {
                    timing.record(d);
                }
                pb.inc(1);
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        let reader = handle
            .join()
            .unwrap_or_else(|_| Err(anyhow!("reader thread panicked")));
        run?;
        reader
    });
    pb.finish_and_clear();
    let (ok, not_found, other) = reader?;
    facts.reader_gets_ok = ok;
    facts.reader_not_found = not_found;
    facts.reader_other_errors = other;
    facts.names_at_end = writer.list()?.into_iter().map(|e| e.name).collect();
    facts.names_at_end.sort();
    r.keep(&timing);

    let switches = facts.evictions.len().saturating_sub(1);
    let evicting = facts.evictions.iter().skip(1).filter(|&&e| e >= 1).count();
    r.check(
        "switch: the reader sees no error but NotFound",
        facts.reader_other_errors.is_empty() && ok > 0,
        format!(
            "{ok} gets ok, {not_found} NotFound, {} other errors",
            facts.reader_other_errors.len()
        ),
    );
    r.check(
        "switch: every switch evicts the previous source",
        evicting == switches,
        format!(
            "{evicting} of {switches} switches evicted; evictions per switch {:?}",
            facts.evictions
        ),
    );
    let last = sequence.last().copied().unwrap_or(NAMES[0]);
    r.check(
        "switch: only the current source is left",
        facts.names_at_end == [last.to_string()],
        format!("names at the end: {:?}", facts.names_at_end),
    );
    r.raw.switch = Some(facts);
    Ok(())
}
