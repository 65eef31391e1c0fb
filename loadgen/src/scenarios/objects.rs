//! Objects: the server ingests the Parquet file from object storage (moto's
//! S3 server, in a Python process of its own on loopback) and from the local
//! file, alternating, `--repeats` times each, on one server of its own whose
//! environment points at the emulator (the usual AWS variables). The figure
//! is the S3 ingest's median time over the local one's (target <= 1.5).
//!
//! The emulator: s3rver (Node.js, serves from disk) when installed with
//! `npm ci --prefix loadgen/emulator`, else moto's server from a Python with
//! moto (`python/.venv`, which `scripts/python-tests.sh` installs, or
//! `$ARROWPOOL_PYTHON`). The upload needs boto3 from that Python. Without
//! either the scenario is skipped and says so. moto serves about 45 MB/s
//! here whatever the parallelism (one Python process): with it the figure
//! measures moto. s3rver serves 790 MB/s to 16 boto3 threads.
//!
//! Two passes. A real store does not run on the server's cores; an emulator
//! on this machine does, and s3rver takes 0.6-1.1 s of CPU per 844 MiB ingest
//! on the 2-core VM, as much as the server's decoders. So with two CPUs or
//! more, the first pass gives the emulator the last CPU and the server the
//! others, for its S3 *and* its local ingests (same resources on both sides):
//! `objects.ingest_vs_local`, the issue's target. The second pass shares every
//! CPU between them as before: `objects.ingest_vs_local_shared`, for the
//! record. With one CPU only the shared pass runs, under the first name.

use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use arrowpool::protocol::ErrorCode;
use arrowpool::Client;
use rustix::thread::CpuSet;

use super::{retry_interrupted, Gate, Run};
use crate::measure::Timing;
use crate::server::ServerProcess;

const BUCKET: &str = "loadgen";
const KEY: &str = "table.parquet";
const NAME: &str = "objects";

pub fn run(r: &mut Run, bin: &Path, hugepages: &str, dir: &Path) -> Result<()> {
    let all = rustix::thread::sched_getaffinity(None).context("cannot read this thread's CPUs")?;
    let cpus: Vec<usize> = (0..rustix::thread::CpuSet::MAX_CPU)
        .filter(|&c| all.is_set(c))
        .collect();
    let passes: Vec<(Option<(CpuSet, CpuSet)>, &str)> = match cpus.split_last() {
        Some((&last, rest)) if !rest.is_empty() => vec![
            (Some((cpu_set(rest), cpu_set(&[last]))), ""),
            (None, "_shared"),
        ],
        _ => vec![(None, "")],
    };
    for (split, suffix) in passes {
        let result = pass(r, bin, hugepages, dir, split.as_ref(), suffix);
        // Whatever happened, this thread's later children get every CPU.
        let _ = rustix::thread::sched_setaffinity(None, &all);
        match result {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn cpu_set(cpus: &[usize]) -> CpuSet {
    let mut set = CpuSet::new();
    for &c in cpus {
        set.set(c);
    }
    set
}

/// One pass: an emulator and a server (on `split`'s CPUs: the server's,
/// the emulator's; else anywhere), their ingests measured. `false`: no
/// emulator, the scenario is skipped.
fn pass(
    r: &mut Run,
    bin: &Path,
    hugepages: &str,
    dir: &Path,
    split: Option<&(CpuSet, CpuSet)>,
    suffix: &str,
) -> Result<bool> {
    // Children inherit the mask of the thread that spawns them.
    if let Some((_, emulator_cpus)) = split {
        rustix::thread::sched_setaffinity(None, emulator_cpus)
            .context("cannot move this thread to the emulator's CPU")?;
    }
    let moto = match Emulator::start(dir) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("loadgen: objects: no S3 emulator ({e:#}); skipped");
            return Ok(false);
        }
    };
    let placed = match split {
        Some(_) => ", on a CPU of its own (the server on the others)",
        None => ", sharing the CPUs with the server",
    };
    eprintln!("loadgen: objects: S3 emulator: {}{placed}", moto.kind);
    moto.upload(&r.parquet)?;
    if let Some((server_cpus, _)) = split {
        rustix::thread::sched_setaffinity(None, server_cpus)
            .context("cannot move this thread to the server's CPUs")?;
    }
    let page = crate::server::HUGEPAGE_BYTES;
    let memory = (super::switch::reserve_bytes(r) * 2 + (64 << 20)).div_ceil(page) * page;
    let socket = dir.join(format!("objects{suffix}.sock"));
    let log = dir.join(format!("arrowpoold-objects{suffix}.log"));
    let _ = std::fs::remove_file(&log);
    let none: [&OsStr; 0] = [];
    let server =
        ServerProcess::start_with_env(bin, &socket, memory, hugepages, &log, &none, &moto.env())?;
    let how = match split {
        Some(_) => format!(
            "{} on loopback, on a CPU of its own; the server on the others",
            moto.kind
        ),
        None => format!(
            "{} on loopback, sharing the CPUs with the server",
            moto.kind
        ),
    };
    let result = measure(r, &socket, &how, suffix);
    drop(moto);
    result?;
    server.stop()?;
    Ok(true)
}

fn measure(r: &mut Run, socket: &Path, emulator: &str, suffix: &str) -> Result<()> {
    let c = Client::connect(socket).context("cannot connect to the objects server")?;
    let local = std::fs::canonicalize(&r.parquet)?
        .to_str()
        .context("the Parquet path is not UTF-8")?
        .to_owned();
    let remote = format!("s3://{BUCKET}/{KEY}");
    let rows = r.table.rows() as u64;
    let repeats = r.sampler.repeats.max(1);
    let pb = crate::progress::bar(
        (2 * repeats + 2) as u64,
        "objects: ingest from S3 (emulator) and from the local file",
        "ingests",
    );
    let ingest = |path: &str| -> Result<std::time::Duration> {
        match c.delete(NAME) {
            Err(e) if e.code() != Some(ErrorCode::NotFound) => return Err(e.into()),
            _ => {}
        }
        let began = Instant::now();
        let reply = retry_interrupted(|| c.ingest(path, NAME, &[]))
            .with_context(|| format!("ingest of {path}"))?;
        let took = began.elapsed();
        if reply.rows != rows {
            bail!("ingest of {path} read {} rows, not {rows}", reply.rows);
        }
        pb.inc(1);
        Ok(took)
    };
    // Untimed: the arena's first pages and the emulator's first requests.
    ingest(&remote)?;
    ingest(&local)?;
    let mut s3 = Timing::new(&format!("objects_ingest_s3{suffix}"));
    let mut file = Timing::new(&format!("objects_ingest_local{suffix}"));
    for _ in 0..repeats {
        s3.record(ingest(&remote)?);
        file.record(ingest(&local)?);
    }
    pb.finish_and_clear();
    let (s3_us, file_us) = (s3.summary().p50_us as f64, file.summary().p50_us as f64);
    r.figure(
        &format!("objects.ingest_s3_ms{suffix}"),
        s3_us / 1e3,
        "ms",
        Gate::Informational,
        &format!("server-side ingest of the Parquet file from S3 ({emulator}), median"),
    );
    r.figure(
        &format!("objects.ingest_vs_local{suffix}"),
        s3_us / file_us.max(1.0),
        "x",
        Gate::Informational,
        &format!("ingest from S3 ({emulator}) over ingest of the same local file, medians, same run (target <= 1.5)"),
    );
    r.keep(&s3);
    r.keep(&file);
    r.check(
        &format!("objects{suffix}: ingest from S3 reads every row"),
        true,
        format!("{rows} rows, {repeats} times"),
    );
    Ok(())
}

/// An S3 emulator on a loopback port; killed (with its process group) when
/// dropped.
struct Emulator {
    kind: &'static str,
    child: Child,
    endpoint: String,
    credentials: &'static str,
    /// s3rver's data directory.
    _data: Option<tempfile_dir::Dir>,
}

/// A directory removed when dropped.
mod tempfile_dir {
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Starts moto's server on a free port and prints the port once it listens.
const START: &str = r#"
import socket, subprocess, sys, time
from pathlib import Path
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
moto = Path(sys.executable).parent / "moto_server"
p = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
for _ in range(300):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        break
    except OSError:
        if p.poll() is not None:
            sys.exit("moto_server exited")
        time.sleep(0.1)
else:
    sys.exit("moto_server did not listen")
print(port, flush=True)
p.wait()
"#;

/// Creates the bucket and uploads the file (multipart, as boto3 does).
const UPLOAD: &str = r#"
import sys, boto3
endpoint, bucket, key, path, credentials = sys.argv[1:6]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id=credentials, aws_secret_access_key=credentials)
s3.create_bucket(Bucket=bucket)
s3.upload_file(path, bucket, key)
"#;

impl Emulator {
    fn start(dir: &Path) -> Result<Emulator> {
        let s3rver =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("emulator/node_modules/.bin/s3rver");
        if s3rver.exists() {
            return Self::start_s3rver(&s3rver, dir);
        }
        Self::start_moto()
    }

    fn start_s3rver(bin: &Path, dir: &Path) -> Result<Emulator> {
        let data = dir.join("s3rver-data");
        std::fs::create_dir_all(&data)?;
        let data = tempfile_dir::Dir(data);
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut child = Command::new(bin)
            .arg("-d")
            .arg(&data.0)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "--silent"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot run {}", bin.display()))?;
        let began = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if child.try_wait()?.is_some() || began.elapsed().as_secs() > 30 {
                let _ = child.kill();
                bail!("s3rver did not listen on port {port}");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(Emulator {
            kind: "s3rver",
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            credentials: "S3RVER",
            _data: Some(data),
        })
    }

    fn start_moto() -> Result<Emulator> {
        let mut command = Command::new(super::remote::python());
        // Its own process group: dropping it ends moto_server too.
        command.arg("-c").arg(START).process_group(0);
        let (child, port) = super::remote::start_printing_port(command, "moto's server")?;
        Ok(Emulator {
            kind: "moto",
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            credentials: "loadgen",
            _data: None,
        })
    }

    fn upload(&self, parquet: &Path) -> Result<()> {
        let out = Command::new(super::remote::python())
            .arg("-c")
            .arg(UPLOAD)
            .args([&self.endpoint, BUCKET, KEY])
            .arg(parquet)
            .arg(self.credentials)
            .stdin(Stdio::null())
            .output()
            .context("cannot run Python")?;
        if !out.status.success() {
            bail!(
                "uploading {} to the emulator failed: {}",
                parquet.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// The server's environment: credentials and the emulator's endpoint.
    fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", self.credentials),
            ("AWS_SECRET_ACCESS_KEY", self.credentials),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            // Never ask a cloud's instance metadata service.
            ("AWS_METADATA_ENDPOINT", "http://127.0.0.1:9"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        // The whole group: moto's Python wrapper and moto_server, or s3rver.
        if let Some(group) = i32::try_from(self.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
