//! The `arrowpoold` processes a run starts: finding (or building) the binary,
//! starting it on a private socket, waiting until it answers, stopping it; and
//! the hugepage reservation `--hugepages reserve` makes for it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use arrowpool::Client;

/// How long a fresh server may take to answer its socket.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What an interrupted run (SIGINT, SIGTERM) must undo before it exits.
struct Cleanup {
    servers: Vec<u32>,
    nr_hugepages: Option<u64>,
    dirs: Vec<PathBuf>,
}

static CLEANUP: Mutex<Cleanup> = Mutex::new(Cleanup {
    servers: Vec::new(),
    nr_hugepages: None,
    dirs: Vec::new(),
});

fn cleanup() -> MutexGuard<'static, Cleanup> {
    CLEANUP.lock().unwrap_or_else(|p| p.into_inner())
}

/// On SIGINT or SIGTERM: stop the servers this run started, put
/// `vm.nr_hugepages` back, remove the socket directory, exit 130.
pub fn stop_everything_on_signal() -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("cannot install signal handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                eprintln!("loadgen: signal {sig}: stopping the servers and restoring settings");
                let c = cleanup();
                for &pid in &c.servers {
                    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                    }
                }
                if let Some(n) = c.nr_hugepages {
                    let _ = write_nr(n);
                }
                for d in &c.dirs {
                    let _ = std::fs::remove_dir_all(d);
                }
                std::process::exit(130);
            }
        })?;
    Ok(())
}

/// Removes `dir` if the run is interrupted (it is removed normally by its owner).
pub fn remove_on_signal(dir: &Path, remove: bool) {
    let mut c = cleanup();
    c.dirs.retain(|d| d != dir);
    if remove {
        c.dirs.push(dir.to_owned());
    }
}

/// The server binary: `--server-bin`, else `arrowpoold` next to this
/// executable, else built with `cargo build --release --bin arrowpoold`.
pub fn find_binary(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if !p.is_file() {
            bail!("--server-bin {} does not exist", p.display());
        }
        return Ok(p.to_owned());
    }
    let exe = std::env::current_exe().context("cannot find the loadgen executable")?;
    let beside = exe
        .parent()
        .map(|d| d.join("arrowpoold"))
        .context("loadgen has no parent directory")?;
    if beside.is_file() {
        return Ok(beside);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    eprintln!(
        "loadgen: {} is missing; building it (cargo build --release --bin arrowpoold)",
        beside.display()
    );
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--bin", "arrowpoold"])
        .current_dir(&workspace)
        .status()
        .context("cannot run cargo to build arrowpoold; pass --server-bin PATH")?;
    if !status.success() {
        bail!("building arrowpoold failed ({status}); pass --server-bin PATH");
    }
    let built = workspace.join("target/release/arrowpoold");
    for candidate in [beside, built] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("arrowpoold was built but not found next to loadgen; pass --server-bin PATH")
}

/// A running `arrowpoold` started by this run. Killed on drop if not stopped.
#[derive(Debug)]
pub struct ServerProcess {
    child: Option<Child>,
    log: PathBuf,
}

impl ServerProcess {
    /// Starts `bin` on `socket` with an arena of `memory_bytes`; its stderr goes to `log`.
    pub fn start(
        bin: &Path,
        socket: &Path,
        memory_bytes: u64,
        hugepages: &str,
        log: &Path,
    ) -> Result<ServerProcess> {
        Self::start_with(bin, socket, memory_bytes, hugepages, log, &[])
    }

    /// `start` with more flags; the log is appended to (a restarted server's
    /// lines follow the one before).
    pub fn start_with(
        bin: &Path,
        socket: &Path,
        memory_bytes: u64,
        hugepages: &str,
        log: &Path,
        extra: &[&std::ffi::OsStr],
    ) -> Result<ServerProcess> {
        Self::start_with_env(bin, socket, memory_bytes, hugepages, log, extra, &[])
    }

    /// `start_with`, the server's environment extended by `env`.
    pub fn start_with_env(
        bin: &Path,
        socket: &Path,
        memory_bytes: u64,
        hugepages: &str,
        log: &Path,
        extra: &[&std::ffi::OsStr],
        env: &[(String, String)],
    ) -> Result<ServerProcess> {
        let mut server = Self::spawn(bin, socket, memory_bytes, hugepages, log, extra, env)?;
        let start = Instant::now();
        loop {
            server.check_running()?;
            if socket.exists() && Client::connect(socket).is_ok() {
                return Ok(server);
            }
            if start.elapsed() > START_TIMEOUT {
                bail!(
                    "arrowpoold did not answer on {} within {START_TIMEOUT:?}:\n{}",
                    socket.display(),
                    server.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// An error with the end of its log if the server has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(child) = self.child.as_mut() {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                bail!(
                    "arrowpoold exited at start ({status}):\n{}",
                    self.log_tail()
                );
            }
        }
        Ok(())
    }

    /// Starts the server without waiting for it to listen.
    pub fn spawn(
        bin: &Path,
        socket: &Path,
        memory_bytes: u64,
        hugepages: &str,
        log: &Path,
        extra: &[&std::ffi::OsStr],
        env: &[(String, String)],
    ) -> Result<ServerProcess> {
        let _ = std::fs::remove_file(socket);
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let child = Command::new(bin)
            .arg("--socket")
            .arg(socket)
            .arg("--memory")
            .arg(memory_bytes.to_string())
            .arg("--hugepages")
            .arg(hugepages)
            .args(extra)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        cleanup().servers.push(child.id());
        Ok(ServerProcess {
            child: Some(child),
            log: log.to_owned(),
        })
    }

    /// The last lines the server wrote to its log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Kills the server with SIGKILL (a crash) and waits for it to be gone.
    pub fn kill9(mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            cleanup().servers.retain(|&p| p != child.id());
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Stops the server with SIGTERM (the clean shutdown), SIGKILL after a timeout.
    pub fn stop(mut self) -> Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        cleanup().servers.retain(|&p| p != child.id());
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_child(&child),
            rustix::process::Signal::TERM,
        );
        let start = Instant::now();
        while start.elapsed() < STOP_TIMEOUT {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill()?;
        child.wait()?;
        bail!("arrowpoold did not stop within {STOP_TIMEOUT:?} of SIGTERM and was killed")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            cleanup().servers.retain(|&p| p != child.id());
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";
/// Size of a reserved hugepage (x86_64 and aarch64 default).
pub const HUGEPAGE_BYTES: u64 = arrowpool::arena::HUGEPAGE_BYTES;

/// A raised `vm.nr_hugepages`, put back to its old value on drop.
#[derive(Debug)]
pub struct HugepageReservation {
    pub original: u64,
    pub requested: u64,
    pub granted: u64,
}

impl HugepageReservation {
    /// Raises the pool to at least `bytes` worth of hugepages (root only).
    /// The kernel may grant fewer when memory is fragmented; `granted` says.
    pub fn reserve(bytes: u64) -> Result<HugepageReservation> {
        if !rustix::process::geteuid().is_root() {
            bail!("--hugepages reserve needs root (it writes {NR_HUGEPAGES})");
        }
        let original = read_nr()?;
        let requested = bytes.div_ceil(HUGEPAGE_BYTES);
        if requested > original {
            write_nr(requested)?;
        }
        let granted = read_nr()?;
        cleanup().nr_hugepages = Some(original);
        Ok(HugepageReservation {
            original,
            requested,
            granted,
        })
    }
}

impl Drop for HugepageReservation {
    fn drop(&mut self) {
        cleanup().nr_hugepages = None;
        if let Err(e) = write_nr(self.original) {
            eprintln!(
                "loadgen: could not restore {NR_HUGEPAGES} to {}: {e}",
                self.original
            );
        }
    }
}

fn read_nr() -> Result<u64> {
    let text = std::fs::read_to_string(NR_HUGEPAGES)
        .with_context(|| format!("cannot read {NR_HUGEPAGES}"))?;
    text.trim()
        .parse()
        .with_context(|| format!("{NR_HUGEPAGES} holds {text:?}"))
}

fn write_nr(pages: u64) -> Result<()> {
    std::fs::write(NR_HUGEPAGES, format!("{pages}\n"))
        .with_context(|| format!("cannot write {NR_HUGEPAGES}"))
}

/// Empties the page cache (`sync`, then `echo 3 > /proc/sys/vm/drop_caches`).
/// Root only; the error says why it could not.
pub fn drop_page_cache() -> Result<()> {
    rustix::fs::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3\n")
        .context("cannot write /proc/sys/vm/drop_caches")
}
