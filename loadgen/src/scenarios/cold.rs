//! Cold paths, measured against what the machine itself costs in the same
//! run (ratios, so that the gate can cover them):
//!
//! | figure                | baseline                               | candidate                        |
//! |-----------------------|----------------------------------------|----------------------------------|
//! | `speedup.put_memcpy`  | one thread's memcpy of the table       | a steady put (operations)        |
//! | `speedup.put_first`   | the same memcpy                        | the first put into a fresh server |
//! | `speedup.ingest_first`| Parquet read of all columns (arrow-rs) | the first ingest (ingest)        |
//! | `speedup.get_idle`    | a Unix-socket echo after `IDLE`        | a get after `IDLE`               |
//! | `speedup.put_first_process` | memcpy in that process           | a new client process's first put into a server idle `SERVER_AGE` |
//!
//! The memcpy and the idle pairs are measured here; the puts and ingests by
//! their scenarios. The echo server is a thread of this process blocked in
//! `read`, as the server's cores block in io_uring: both wake from the same
//! sleep.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use arrowpool::Client;

use super::{Run, MAIN_NAME};
use crate::measure::Timing;
use crate::server::ServerProcess;

/// How long the server of the new-process put has been running (the issue's
/// "a server started at least 10 s earlier with default flags").
pub const SERVER_AGE: Duration = Duration::from_secs(10);

/// The pause before each after-idle sample (a user's click after reading
/// the page).
pub const IDLE: Duration = Duration::from_millis(500);
/// After-idle samples of each kind (each costs `IDLE`).
const IDLE_SAMPLES: usize = 5;

pub fn run(r: &mut Run) -> Result<()> {
    let t = memcpy(r)?;
    r.keep(&t);
    let (echo, get) = after_idle(r)?;
    r.keep(&echo);
    r.keep(&get);
    Ok(())
}

/// One thread copying the table's buffers into memory that was touched
/// before: the floor of a put (what the cold-path targets are relative to).
fn memcpy(r: &Run) -> Result<Timing> {
    let src = buffers(&r.table.batches);
    let mut dest = touched_like(&src);
    r.sampler
        .sample("memcpy", || Ok(copy_once(&src, &mut dest)))
}

/// Every buffer of `batches`.
fn buffers(batches: &[arrow_array::RecordBatch]) -> Vec<impl AsRef<[u8]>> {
    batches
        .iter()
        .flat_map(|b| {
            b.columns()
                .iter()
                .flat_map(|c| c.to_data().buffers().to_vec())
        })
        .collect()
}

/// Memory as large as `src`, every page written once.
fn touched_like(src: &[impl AsRef<[u8]>]) -> Vec<u8> {
    vec![1u8; src.iter().map(|b| b.as_ref().len()).sum()]
}

/// One thread's copy of `src` into `dest`, timed.
fn copy_once(src: &[impl AsRef<[u8]>], dest: &mut [u8]) -> Duration {
    let start = Instant::now();
    let mut at = 0;
    for s in src {
        let s = s.as_ref();
        dest[at..at + s.len()].copy_from_slice(s);
        at += s.len();
    }
    std::hint::black_box(&dest);
    start.elapsed()
}

/// Alternating: an echo round trip after `IDLE`, a get of the main table
/// after `IDLE`.
fn after_idle(r: &Run) -> Result<(Timing, Timing)> {
    let dir = r.scratch_file("echo");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("echo.sock");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).context("cannot bind the echo socket")?;
    let echo_thread = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        let mut buf = [0u8; 64];
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            s.write_all(&buf[..n])?;
        }
    });
    let mut echo = UnixStream::connect(&path)?;
    let client = Client::connect(&r.socket).context("cannot connect to arrowpoold")?;
    let mut echo_t = Timing::new("echo_after_idle");
    let mut get_t = Timing::new("get_after_idle");
    let pb = crate::progress::bar(
        (2 * IDLE_SAMPLES) as u64,
        "after idle: echo and get",
        "samples",
    );
    let mut byte = [7u8; 16];
    for _ in 0..IDLE_SAMPLES {
        std::thread::sleep(IDLE);
        let start = Instant::now();
        echo.write_all(&byte)?;
        echo.read_exact(&mut byte)?;
        echo_t.record(start.elapsed());
        pb.inc(1);
        std::thread::sleep(IDLE);
        let start = Instant::now();
        let table = client.get(MAIN_NAME)?;
        get_t.record(start.elapsed());
        drop(table);
        pb.inc(1);
    }
    pb.finish_and_clear();
    drop(echo);
    let _ = echo_thread.join();
    let _ = std::fs::remove_dir_all(&dir);
    Ok((echo_t, get_t))
}

/// A server with default flags, `SERVER_AGE` old, and one put of the table
/// by a new process (`loadgen put-once`), which also times a memcpy of the
/// same bytes: what a Dash worker's first put costs.
pub fn first_put_of_a_new_process(
    r: &mut Run,
    bin: &std::path::Path,
    hugepages: &str,
    dir: &std::path::Path,
) -> Result<()> {
    let page = crate::server::HUGEPAGE_BYTES;
    let memory = (super::switch::reserve_bytes(r) * 3 + (64 << 20)).div_ceil(page) * page;
    let socket = dir.join("cold.sock");
    let log = dir.join("arrowpoold-cold.log");
    let _ = std::fs::remove_file(&log);
    let server = ServerProcess::start(bin, &socket, memory, hugepages, &log)?;
    let started = Instant::now();
    std::thread::sleep(SERVER_AGE.saturating_sub(started.elapsed()));
    let out = std::process::Command::new(std::env::current_exe()?)
        .arg("put-once")
        .arg("--socket")
        .arg(&socket)
        .arg("--parquet")
        .arg(&r.parquet)
        .arg("--batch-rows")
        .arg(r.batch_rows.to_string())
        .output()
        .context("cannot run loadgen put-once")?;
    if !out.status.success() {
        bail!(
            "loadgen put-once failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let got: PutOnce = serde_json::from_slice(&out.stdout).context("put-once's answer")?;
    let (mut put, mut memcpy) = (
        Timing::new("put_first_process"),
        Timing::new("memcpy_process"),
    );
    put.record(Duration::from_micros(got.put_us));
    memcpy.record(Duration::from_micros(got.memcpy_us));
    r.keep(&put);
    r.keep(&memcpy);
    server.stop()
}

#[derive(clap::Args, Debug)]
pub struct PutOnceArgs {
    #[arg(long)]
    socket: std::path::PathBuf,
    #[arg(long)]
    parquet: std::path::PathBuf,
    #[arg(long)]
    batch_rows: usize,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct PutOnce {
    put_us: u64,
    memcpy_us: u64,
}

/// `loadgen put-once`: connects, reads the table (untimed; a Dash worker
/// connects at start and loads its data after), copies its buffers once into
/// memory touched before (the floor), then puts it once.
pub fn put_once(a: &PutOnceArgs) -> Result<()> {
    let client = Client::connect(&a.socket).context("cannot connect to arrowpoold")?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let t = crate::parquet_io::read(&a.parquet, None, threads, a.batch_rows)?;
    let src = buffers(&t.batches);
    let mut dest = touched_like(&src);
    let memcpy_us = copy_once(&src, &mut dest).as_micros() as u64;
    drop((dest, src));
    let began = Instant::now();
    client.put("first_put", &t.schema, &t.batches)?;
    let put_us = began.elapsed().as_micros() as u64;
    println!("{}", serde_json::to_string(&PutOnce { put_us, memcpy_us })?);
    Ok(())
}
