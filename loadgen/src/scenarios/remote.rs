//! Remote: Arrow Flight over loopback. arrowpoold's `--flight` (a server of
//! its own) against pyarrow's Flight server serving the same table from
//! memory (`MemoryServer` of `python/bench/bench_flight.py`, in a Python
//! process of its own), both read (`do_get`) and written (`do_put`) by the
//! same Rust Flight client, alternating, `--repeats` times each. Throughput
//! is the table's Arrow bytes over the call's wall time.
//!
//! pyarrow's server needs a Python with pyarrow: `$ARROWPOOL_PYTHON`, else
//! the repository's `python/.venv`, else `python3`. Without one only
//! arrowpoold is measured (and the run says so).

use std::ffi::OsStr;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use arrow_array::RecordBatch;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::{FlightClient, FlightDescriptor, Ticket};
use arrowpool::Client;
use futures::TryStreamExt;

use super::{retry_interrupted, Gate, Run};
use crate::measure::Timing;
use crate::server::ServerProcess;

const NAME: &str = "remote";
const WINDOW: u32 = 64 << 20;
/// The largest HTTP/2 frame the client accepts (as `arrowpool ingest
/// flight://` does): with h2's 16 KiB default a server written with h2 sends
/// every 16 KiB in a syscall of its own.
const FRAME: u32 = (1 << 20) - 1;

pub fn run(r: &mut Run, bin: &Path, hugepages: &str, dir: &Path) -> Result<()> {
    let reserve = super::switch::reserve_bytes(r);
    let page = crate::server::HUGEPAGE_BYTES;
    // The table, a put's new version beside it, headroom.
    let memory = (reserve * 3 + (64 << 20)).div_ceil(page) * page;
    let socket = dir.join("remote.sock");
    let log = dir.join("arrowpoold-remote.log");
    let _ = std::fs::remove_file(&log);
    let extra: [&OsStr; 2] = [OsStr::new("--flight"), OsStr::new("127.0.0.1:0")];
    let server = ServerProcess::start_with(bin, &socket, memory, hugepages, &log, &extra)?;
    let c = Client::connect(&socket).context("cannot connect to the remote server")?;
    retry_interrupted(|| c.put(NAME, &r.table.schema, &r.table.batches))?;
    let ours = c
        .stats()?
        .flight
        .context("the server's stats name no Flight address")?;
    drop(c);
    let theirs = PyarrowServer::start(&r.parquet);
    if let Err(e) = &theirs {
        eprintln!("loadgen: remote: no pyarrow Flight server to compare with ({e:#}); measuring arrowpoold only");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(measure(
        r,
        &ours,
        theirs.as_ref().ok().map(|t| t.addr.as_str()),
    ));
    drop(theirs);
    result?;
    server.stop()
}

async fn connect(addr: &str) -> Result<FlightClient> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .initial_stream_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .max_frame_size(FRAME)
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| format!("cannot connect to the Flight server at {addr}"))?;
    let inner = arrow_flight::flight_service_client::FlightServiceClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    Ok(FlightClient::new_from_inner(inner))
}

async fn get(client: &mut FlightClient) -> Result<u64> {
    let batches: Vec<RecordBatch> = client
        .do_get(Ticket::new(NAME))
        .await?
        .try_collect()
        .await?;
    Ok(batches.iter().map(|b| b.num_rows() as u64).sum())
}

async fn put(client: &mut FlightClient, batches: Vec<RecordBatch>) -> Result<()> {
    let input = futures::stream::iter(batches.into_iter().map(Ok));
    let data = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_path(vec!["put".into()])))
        .build(input);
    let results: Vec<_> = client.do_put(data).await?.try_collect().await?;
    let _ = results;
    Ok(())
}

async fn measure(r: &mut Run, ours: &str, theirs: Option<&str>) -> Result<()> {
    let rows = r.table.rows() as u64;
    let bytes: usize = r
        .table
        .batches
        .iter()
        .flat_map(|b| b.columns())
        .map(|c| c.to_data().get_slice_memory_size().unwrap_or(0))
        .sum();
    let mut clients = vec![("arrowpoold", connect(ours).await?)];
    if let Some(t) = theirs {
        clients.push(("pyarrow", connect(t).await?));
    }
    let repeats = r.sampler.repeats.max(1);
    let pb = crate::progress::bar(
        (2 * repeats * clients.len()) as u64,
        "remote: Flight do_get and do_put over loopback",
        "calls",
    );
    let batches = r.table.batches.clone();
    // Warm: connections, the servers' first pages.
    for (_, c) in clients.iter_mut() {
        put(c, batches.clone()).await?;
        get(c).await?;
    }
    for op in ["do_get", "do_put"] {
        let mut timings: Vec<Timing> = clients
            .iter()
            .map(|(who, _)| Timing::new(&format!("remote_{op}_{who}")))
            .collect();
        for _ in 0..repeats {
            for (i, (who, c)) in clients.iter_mut().enumerate() {
                let began = Instant::now();
                if op == "do_get" {
                    let got = get(c).await?;
                    if got != rows {
                        bail!("{who}'s do_get returned {got} rows, not {rows}");
                    }
                } else {
                    put(c, batches.clone()).await?;
                }
                timings[i].record(began.elapsed());
                pb.inc(1);
            }
        }
        let gbps: Vec<f64> = timings
            .iter()
            .map(|t| bytes as f64 / (t.summary().p50_us as f64 / 1e6) / 1e9)
            .collect();
        r.figure(
            &format!("remote.{op}_gbps"),
            gbps[0],
            "GB/s",
            Gate::Informational,
            &format!(
                "Flight {op} of the table from arrowpoold over loopback, Rust client (median)"
            ),
        );
        if gbps.len() == 2 {
            r.figure(
                &format!("remote.{op}_vs_pyarrow"),
                gbps[0] / gbps[1],
                "x",
                Gate::Informational,
                &format!(
                    "arrowpoold's {op} throughput over pyarrow's Flight server serving the same table from memory (same run; target >= 0.8)"
                ),
            );
        }
        for t in &timings {
            r.keep(t);
        }
    }
    pb.finish_and_clear();
    r.check(
        "remote: Flight do_get returns every row",
        true,
        format!("{rows} rows from each server, {repeats} times"),
    );
    Ok(())
}

/// pyarrow's Flight server in a Python process of its own, serving the
/// Parquet file's table from memory; killed when dropped.
struct PyarrowServer {
    child: Child,
    addr: String,
}

pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("ARROWPOOL_PYTHON") {
        return p.into();
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../python/.venv/bin/python");
    if venv.exists() {
        return venv;
    }
    "python3".into()
}

impl PyarrowServer {
    fn start(parquet: &Path) -> Result<PyarrowServer> {
        let bench = Path::new(env!("CARGO_MANIFEST_DIR")).join("../python/bench");
        let script = format!(
            "import sys\nsys.path.insert(0, {bench:?})\nfrom bench_flight import serve_memory\nserve_memory(sys.argv[1])\n",
            bench = bench.display().to_string()
        );
        let mut command = Command::new(python());
        command.arg("-c").arg(script).arg(parquet);
        let (child, port) = start_printing_port(command, "pyarrow's Flight server")?;
        Ok(PyarrowServer {
            child,
            addr: format!("127.0.0.1:{port}"),
        })
    }
}

/// Runs a Python child that prints the port it listens on as its first line
/// of output; the child and that port, or an error with the last line of its
/// standard error.
pub fn start_printing_port(mut command: Command, what: &str) -> Result<(Child, u16)> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run Python")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    match line.trim().parse::<u16>() {
        Ok(port) => Ok((child, port)),
        Err(_) => {
            let _ = child.kill();
            let out = child.wait_with_output()?;
            bail!(
                "{what} did not start: {}",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            )
        }
    }
}

impl Drop for PyarrowServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
