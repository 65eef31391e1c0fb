//! Test helpers: a real `arrowpoold` on a temporary socket, tables, raw frames.
#![allow(dead_code)]

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};

/// A server process, killed on drop.
pub struct Server {
    pub child: Child,
    pub socket: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Server {
    pub fn start(memory: &str) -> Server {
        Self::start_with(&["--memory", memory, "--threads", "2"])
    }

    pub fn start_with(args: &[&str]) -> Server {
        Self::try_start_with(args).unwrap_or_else(|e| panic!("server did not start: {e}"))
    }

    /// Starts a server; Err(stderr) if it exits before accepting connections.
    pub fn try_start_with(args: &[&str]) -> Result<Server, String> {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("arrowpool.sock");
        let stderr_path = dir.path().join("stderr.log");
        let child = Command::new(env!("CARGO_BIN_EXE_arrowpoold"))
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("spawn arrowpoold");
        let mut server = Server { child, socket, dir };
        let start = Instant::now();
        loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                return Err(format!("exited with {status}: {log}"));
            }
            if UnixStream::connect(&server.socket).is_ok() {
                return Ok(server);
            }
            if start.elapsed() > Duration::from_secs(20) {
                let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                server.child.kill().ok();
                return Err(format!("not accepting after 20 s: {log}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn client(&self) -> arrowpool::Client {
        arrowpool::Client::connect(&self.socket).expect("connect")
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// For a failure where the server stopped answering: what each of its
    /// threads is doing now, then the end of its log (failure output is
    /// often cut in the middle, so the end must come last and be short).
    pub fn diagnose(&self) -> String {
        let log = self.stderr();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        format!(
            "{}\nthe server log's last {} of {} lines:\n{tail}",
            threads_of(self.child.id()),
            lines.len().min(40),
            lines.len()
        )
    }

    /// Stats once all earlier fire-and-forget releases have been processed:
    /// a fresh connection's request is served after them only eventually, so poll.
    pub fn wait_until(
        &self,
        what: &str,
        cond: impl Fn(&arrowpool::protocol::stats::StatsReply) -> bool,
    ) {
        let c = self.client();
        let start = Instant::now();
        loop {
            let s = c.stats().unwrap();
            if cond(&s) {
                return;
            }
            if start.elapsed() > Duration::from_secs(10) {
                panic!("timed out waiting for {what}; stats: {s:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Each thread of process `pid`: its name, state and kernel wait channel
/// (and kernel stack, as root), then user stacks from `gdb` when it is
/// installed.
pub fn threads_of(pid: u32) -> String {
    let mut out = format!("threads of process {pid}:\n");
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap_or_default();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten();
    for t in tasks.flatten() {
        let p = t.path();
        let stat = read(p.join("stat"));
        let state = stat.rsplit(") ").next().and_then(|r| r.split(' ').next());
        out += &format!(
            "  {} {:?} state {} wchan {}\n",
            t.file_name().to_string_lossy(),
            read(p.join("comm")).trim(),
            state.unwrap_or("?"),
            read(p.join("wchan")).trim()
        );
        for l in read(p.join("stack")).lines().take(12) {
            out += &format!("      {l}\n");
        }
    }
    let gdb = Command::new("timeout")
        .args(["60", "gdb", "-p", &pid.to_string(), "-batch", "-nx"])
        .args(["-ex", "set pagination off", "-ex", "thread apply all bt 14"])
        .stdin(Stdio::null())
        .output();
    if let Ok(o) = gdb {
        let text = String::from_utf8_lossy(&o.stdout);
        let frames: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("Thread ") || l.starts_with('#'))
            .collect();
        if !frames.is_empty() {
            out += &format!("gdb:\n{}\n", frames.join("\n"));
        }
    }
    out
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A deterministic table: id, value, label (low cardinality), text (unique).
pub fn table(rows: usize, batches: usize, seed: i64) -> (Arc<Schema>, Vec<RecordBatch>) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("value", DataType::Float64, true),
        Field::new("label", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, true),
    ]));
    let per = rows / batches;
    let out = (0..batches)
        .map(|b| {
            let start = (b * per) as i64;
            let ids: Vec<i64> = (start..start + per as i64).collect();
            let cols: Vec<ArrayRef> = vec![
                Arc::new(Int64Array::from(
                    ids.iter().map(|i| i + seed).collect::<Vec<_>>(),
                )),
                Arc::new(Float64Array::from_iter(
                    ids.iter().map(|i| (i % 13 != 0).then_some(*i as f64 * 0.5)),
                )),
                Arc::new(StringArray::from_iter_values(
                    ids.iter().map(|i| ["a", "b", "c"][(*i % 3) as usize]),
                )),
                Arc::new(StringArray::from_iter(
                    ids.iter()
                        .map(|i| (i % 11 != 0).then(|| format!("row-{i}-{seed}"))),
                )),
            ];
            RecordBatch::try_new(schema.clone(), cols).unwrap()
        })
        .collect();
    (schema, out)
}

/// A raw connection with write access that has done the handshake
/// (descriptors discarded).
pub fn raw_connect(server: &Server) -> UnixStream {
    raw_connect_path(&server.socket)
}

/// `raw_connect` by socket path.
pub fn raw_connect_path(socket: &std::path::Path) -> UnixStream {
    raw_handshake(socket, true)
}

/// A raw connection whose handshake did not ask for write access.
pub fn raw_connect_reader(server: &Server) -> UnixStream {
    raw_handshake(&server.socket, false)
}

fn raw_handshake(socket: &std::path::Path, write: bool) -> UnixStream {
    let s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (_hello, fds) = arrowpool::client::handshake(&s, write).expect("handshake");
    drop(fds);
    s
}

/// A frame with an arbitrary header and body.
pub fn frame(request_id: u64, kind: u16, flags: u16, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    arrowpool::protocol::frame::write_frame(&mut v, request_id, kind, flags, |o| {
        o.extend_from_slice(body)
    });
    v
}

/// Reads one reply frame: (request id, kind, body). None on end of stream.
pub fn read_reply(s: &mut UnixStream) -> Option<(u64, u16, Vec<u8>)> {
    let mut h = [0u8; 16];
    s.read_exact(&mut h).ok()?;
    let len = u32::from_le_bytes(h[0..4].try_into().unwrap()) as usize;
    let id = u64::from_le_bytes(h[4..12].try_into().unwrap());
    let kind = u16::from_le_bytes(h[12..14].try_into().unwrap());
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Some((id, kind, body))
}

/// The error code of an error reply body.
pub fn error_code(body: &[u8]) -> u16 {
    u16::from_le_bytes([body[0], body[1]])
}

/// Length-prefixed string as the protocol encodes it.
pub fn pstr(s: &[u8]) -> Vec<u8> {
    let mut v = (s.len() as u16).to_le_bytes().to_vec();
    v.extend_from_slice(s);
    v
}

/// A filesystem mounted on a temporary directory for one test (root only:
/// callers check), unmounted when dropped, its files removed first (a
/// hugetlbfs file holds reserved hugepages).
pub struct Mounted {
    dir: tempfile::TempDir,
}

impl Mounted {
    /// `mount -t FSTYPE -o OPTIONS` on a new directory.
    pub fn new(fstype: &str, options: &str) -> Mounted {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let status = Command::new("mount")
            .args(["-t", fstype, "-o", options, "none"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount -t {fstype} -o {options}");
        Mounted { dir }
    }

    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        for e in std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_file(e.path());
        }
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}
