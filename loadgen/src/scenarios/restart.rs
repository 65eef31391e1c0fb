//! Restart: a server with `--state-dir` holding 1, then 3, copies of the table
//! is killed with SIGKILL and started again; timed from the kill to the first
//! successful get of a table (the client connects and gets in a loop, 1 ms
//! apart), `--repeats` times each. Every table must come back with its rows.
//!
//! Its own server (started here, killed and restarted, stopped at the end), on
//! a state directory under /dev/shm that is removed at the end.

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use arrowpool::Client;

use super::{retry_interrupted, Gate, Run};
use crate::measure::Timing;
use crate::server::ServerProcess;

const NAMES: [&str; 3] = ["restart_a", "restart_b", "restart_c"];
const READY_TIMEOUT: Duration = Duration::from_secs(60);

pub fn run(r: &mut Run, bin: &Path, hugepages: &str, dir: &Path) -> Result<()> {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("loadgen: restart: no /dev/shm on this machine; scenario skipped");
        return Ok(());
    }
    let state = shm.join(format!("loadgen-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let result = run_in(r, bin, hugepages, dir, &state);
    let _ = std::fs::remove_dir_all(&state);
    result
}

fn run_in(r: &mut Run, bin: &Path, hugepages: &str, dir: &Path, state: &Path) -> Result<()> {
    let reserve = super::switch::reserve_bytes(r);
    let page = crate::server::HUGEPAGE_BYTES;
    let memory = (reserve * 3 + reserve / 4 + (64 << 20)).div_ceil(page) * page;
    let socket = dir.join("restart.sock");
    let log = dir.join("arrowpoold-restart.log");
    let _ = std::fs::remove_file(&log);
    let extra: [&OsStr; 2] = [OsStr::new("--state-dir"), state.as_os_str()];
    let mut server = ServerProcess::start_with(bin, &socket, memory, hugepages, &log, &extra)?;
    let rows = r.table.rows() as u64;
    let repeats = r.sampler.repeats.max(1);
    let pb = crate::progress::bar(
        2 * repeats as u64,
        "restart: kill -9, start, first get",
        "restarts",
    );
    for (resident, timing_name) in [(1usize, "restart_first_get_1"), (3, "restart_first_get_3")] {
        {
            let c = Client::connect(&socket).context("cannot connect to the restart server")?;
            for name in &NAMES[..resident] {
                if !present(&c, name) {
                    retry_interrupted(|| c.put(name, &r.table.schema, &r.table.batches))?;
                }
            }
        }
        let mut timing = Timing::new(timing_name);
        for _ in 0..repeats {
            server.kill9()?;
            let killed = Instant::now();
            server = ServerProcess::spawn(bin, &socket, memory, hugepages, &log, &extra, &[])?;
            let last = NAMES[resident - 1];
            loop {
                server.check_running()?;
                let got = Client::connect(&socket).ok().and_then(|c| c.get(last).ok());
                if let Some(t) = got {
                    timing.record(killed.elapsed());
                    if t.rows != rows {
                        bail!("{last} came back with {} rows, not {rows}", t.rows);
                    }
                    break;
                }
                if killed.elapsed() > READY_TIMEOUT {
                    bail!(
                        "no successful get {READY_TIMEOUT:?} after the restart:\n{}",
                        server.log_tail()
                    );
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            pb.inc(1);
        }
        let c = Client::connect(&socket)?;
        let back = NAMES[..resident]
            .iter()
            .filter(|n| c.get(n).is_ok_and(|t| t.rows == rows))
            .count();
        r.check(
            &format!("restart: {resident} table(s) back after kill -9"),
            back == resident,
            format!("{back} of {resident} tables of {rows} rows served after {repeats} restarts"),
        );
        let p50 = timing.summary().p50_us as f64 / 1e3;
        r.keep(&timing);
        r.figure(
            &format!("restart.first_get_{resident}_ms"),
            p50,
            "ms",
            Gate::Informational,
            &format!("kill -9 to the first successful get, {resident} table(s) resident (median)"),
        );
    }
    pb.finish_and_clear();
    server.stop()
}

/// Whether `name` is in the store (a put is not repeated when it is).
fn present(c: &Client, name: &str) -> bool {
    c.list()
        .map(|l| l.iter().any(|e| e.name == name))
        .unwrap_or(false)
}
