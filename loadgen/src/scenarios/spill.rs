//! Switching back with `--spill-dir`: a server capped at about 1.5 tables
//! holds source A, then B (so A is spilled to disk); switching back is a get
//! of A, which brings it back and spills B to make room; then B, A, B...
//! The first switch writes B's file; later ones write nothing (a version
//! brought back keeps its file, so it leaves again for free): `first` and the
//! steady switches are timed apart. Against what a store without spill
//! does: ingest the Parquet file again (with room: nothing to evict). As
//! root the page cache is dropped before each timed step, so both read their
//! files from the disk.
//!
//! Its own server (started here, stopped at the end); the spill files go to
//! the data directory (a disk, as a spill directory would be).

use std::ffi::OsStr;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use arrowpool::protocol::ErrorCode;
use arrowpool::Client;

use super::{retry_interrupted, Gate, Run};
use crate::server::ServerProcess;

const A: &str = "spill_a";
const B: &str = "spill_b";
const INGESTED: &str = "spill_ingested";

fn delete_all(c: &Client) -> Result<()> {
    for name in [A, B, INGESTED] {
        match c.delete(name) {
            Err(e) if e.code() != Some(ErrorCode::NotFound) => return Err(e.into()),
            _ => {}
        }
    }
    Ok(())
}

pub fn run(r: &mut Run, bin: &Path, hugepages: &str, dir: &Path) -> Result<()> {
    let spill_dir = r
        .scratch
        .join(format!(".loadgen-spill-{}", std::process::id()));
    let result = run_in(r, bin, hugepages, dir, &spill_dir);
    let _ = std::fs::remove_dir_all(&spill_dir);
    result
}

fn run_in(r: &mut Run, bin: &Path, hugepages: &str, dir: &Path, spill_dir: &Path) -> Result<()> {
    let cap = super::switch::memory_cap(super::switch::reserve_bytes(r));
    let socket = dir.join("spill.sock");
    let log = dir.join("arrowpoold-spill.log");
    let _ = std::fs::remove_file(&log);
    let extra: [&OsStr; 2] = [OsStr::new("--spill-dir"), spill_dir.as_os_str()];
    let server = ServerProcess::start_with(bin, &socket, cap, hugepages, &log, &extra)?;
    let c = Client::connect(&socket).context("cannot connect to the spill server")?;
    let parquet = std::fs::canonicalize(&r.parquet)?
        .to_str()
        .context("the Parquet path is not UTF-8")?
        .to_owned();
    let root = rustix::process::geteuid().is_root();
    let drop_cache = || -> Result<()> {
        if root {
            crate::server::drop_page_cache()?;
        }
        Ok(())
    };
    let rows = r.table.rows() as u64;
    let repeats = r.sampler.repeats.max(1);
    delete_all(&c)?;
    retry_interrupted(|| c.put(A, &r.table.schema, &r.table.batches))?;
    retry_interrupted(|| c.put(B, &r.table.schema, &r.table.batches))?;
    let spilled_ok = c.list()?.iter().any(|e| e.name == A && e.on_disk);
    let mut first = crate::measure::Timing::new("spill_switch_back_first");
    let mut back = crate::measure::Timing::new("spill_switch_back");
    let pb = crate::progress::bar(
        repeats as u64 + 1,
        "switch back to a spilled source",
        "switches",
    );
    for k in 0..=repeats {
        let name = if k % 2 == 0 { A } else { B };
        drop_cache()?;
        let start = Instant::now();
        let t = c.get(name)?;
        let d = start.elapsed();
        if t.rows != rows {
            bail!("{name} came back with {} rows, not {rows}", t.rows);
        }
        if k == 0 {
            first.record(d)
        } else {
            back.record(d)
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    delete_all(&c)?;
    let ingest = r.sampler.sample("spill_ingest_again", || {
        delete_all(&c)?;
        drop_cache()?;
        let start = Instant::now();
        let reply = retry_interrupted(|| c.ingest(&parquet, INGESTED, &[]))?;
        let d = start.elapsed();
        if reply.rows != rows {
            bail!("ingest read {} rows, not {rows}", reply.rows);
        }
        Ok(d)
    })?;
    r.keep(&ingest);
    r.keep(&first);
    r.keep(&back);
    delete_all(&c)?;
    let stats = c.stats()?;
    r.check(
        "spill: the switched-away source is on disk, not gone",
        spilled_ok && stats.spills > 0,
        format!(
            "{} spills; page cache {}",
            stats.spills,
            if root {
                "dropped before each timed step"
            } else {
                "not dropped (not root): files read from memory"
            }
        ),
    );
    let (a, b) = (
        ingest.summary().p50_us as f64 / 1e6,
        back.summary().p50_us as f64 / 1e6,
    );
    r.compare(
        "switch_back",
        "switch back: ingest Parquet again vs get a spilled source",
        ("spill_ingest_again", a),
        ("spill_switch_back", b),
        Gate::Informational,
        "a spilled source brought back (the other leaving on its file) against ingesting its Parquet file again",
    );
    let f = first.summary().p50_us as f64 / 1e6;
    r.compare(
        "switch_back_first",
        "first switch back: ingest Parquet again vs get a spilled source (the other written out)",
        ("spill_ingest_again", a),
        ("spill_switch_back_first", f),
        Gate::Informational,
        "the first switch writes the other source's file",
    );
    drop(c);
    server.stop()
}
