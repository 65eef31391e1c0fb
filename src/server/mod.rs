//! The thread-per-core server.
//!
//! ```text
//! main thread: config, arena, signals ── waits for SIGINT/SIGTERM, then drains
//! accept thread: blocking accept on the Unix socket ── hands each connection
//!          round-robin to a core over a channel
//! core i: compio runtime (io_uring, or the polling/epoll fallback) ── its connections
//! ```
//! Transport (`listener.rs`, `conn.rs`) is kept apart from request handling
//! (`requests/`, one file per kind), which works on decoded requests and the
//! shared state (`shared.rs`: the pool and the connections), so another
//! transport (TCP) can reuse it.

mod conn;
mod listener;
pub mod peers;
mod requests;
pub mod shared;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::arena::{Arena, HugepageMode};
use crate::pool::Pool;
use crate::util::human_bytes;
// For the Flight service, which answers with the socket's error messages.
#[cfg(feature = "flight")]
pub(crate) use requests::{ingest_error, pool_error, store_error};
pub use shared::Shared;

/// Which I/O driver a core's runtime uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoDriver {
    IoUring = 0,
    Polling = 1,
}

impl IoDriver {
    pub fn as_str(self) -> &'static str {
        match self {
            IoDriver::IoUring => "io_uring",
            IoDriver::Polling => "polling",
        }
    }
}

/// Server configuration (the `arrowpoold` flags).
#[derive(Debug, Clone)]
pub struct Config {
    pub socket: PathBuf,
    pub memory_bytes: u64,
    pub threads: usize,
    pub hugepages: HugepageMode,
    pub prefault: bool,
    pub require_io_uring: bool,
    /// Use compio's polling (epoll) driver even where io_uring works.
    pub force_polling: bool,
    pub max_connections: usize,
    /// File mode of the socket (default 0o600: only the owner may connect;
    /// 0o666 with `groups` set, which then decide).
    pub socket_mode: u32,
    /// `--writers-group` / `--readers-group` (`peers.rs`).
    pub groups: peers::Groups,
    /// Versions kept readable per name, the current one included (at least 1).
    pub keep_versions: usize,
    /// Bytes at the start of the data region allocated in the background after
    /// start (0: none; `None`: a quarter of the arena, at most 4 GiB, except on
    /// reserved hugepages, whose pool other programs share); see `preallocate`.
    pub preallocate_bytes: Option<u64>,
    /// `--warm-ahead`: after each publish, allocate where the next put of the
    /// largest table would land, while idle (`warm_ahead`).
    pub warm_ahead: bool,
    /// `--ingest-buffers`: bytes of read buffers kept between ingests (0: none).
    pub ingest_buffers_bytes: u64,
    /// `--state-dir`: the arena in a tmpfs file and a catalog of its versions,
    /// so a restarted server serves them again (`durable`).
    pub state_dir: Option<PathBuf>,
    /// `--quarantine`: how long a restarted server holds back what the one
    /// before it had handed out and no recovered version explains
    /// (`Store::quarantine`).
    pub quarantine: Duration,
    /// `--state-hugetlbfs`: a hugetlbfs mount where a new state directory's
    /// arena file goes (`durable::StateDir::arena_file`).
    pub state_hugetlbfs: Option<PathBuf>,
    /// `--spill-dir`: versions that must leave the arena go there instead of
    /// being dropped, and come back on get (`pool/spill.rs`).
    pub spill_dir: Option<PathBuf>,
    /// With a spill directory: above this fraction of the arena in use, a
    /// background thread writes copies of the least recently used versions
    /// ahead of need (`None`: never).
    pub spill_ahead: Option<f64>,
    /// `--flight`: an Arrow Flight service on TCP beside the socket.
    #[cfg(feature = "flight")]
    pub flight: Option<crate::flight::FlightConfig>,
    /// `--flight-remote-ca`: a CA (PEM) trusted, beside the system's roots, by
    /// `ingest flight+tls://...` pulls.
    pub flight_remote_ca: Option<PathBuf>,
}

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    Arena(crate::arena::ArenaError),
    State(crate::durable::StateError),
    Spill {
        path: PathBuf,
        err: std::io::Error,
    },
    /// The Flight listener could not start (address, TLS files, tokens).
    Flight(String),
    Socket {
        path: PathBuf,
        err: std::io::Error,
    },
    SocketInUse(PathBuf),
    IoUringRequired,
    Runtime(std::io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Arena(e) => write!(f, "{e}"),
            StartError::State(e) => write!(f, "{e}"),
            StartError::Flight(m) => write!(f, "{m}"),
            StartError::Spill { path, err } => write!(
                f,
                "cannot use --spill-dir {}: {err} (it must be a directory this user can write)",
                path.display()
            ),
            StartError::Socket { path, err } => write!(f, "cannot listen on {}: {err}", path.display()),
            StartError::SocketInUse(p) => write!(
                f,
                "another arrowpoold is serving {} (it accepted a connection); stop it or pick another --socket",
                p.display()
            ),
            StartError::IoUringRequired => write!(
                f,
                "io_uring is unavailable (seccomp profile or kernel.io_uring_disabled) and --require-io-uring was given"
            ),
            StartError::Runtime(e) => write!(f, "cannot start the I/O runtime: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// A running server. Dropping it does not stop it; call `shutdown`.
pub struct Server {
    shared: Arc<Shared>,
    workers: Vec<std::thread::JoinHandle<()>>,
    #[cfg(feature = "flight")]
    flight: Option<crate::flight::Running>,
}

/// Allocates the first `budget` bytes of the data region, in steps, while the
/// server runs: where an empty arena places its first objects (lowest free
/// range first), so the first puts' `create` finds pages that exist instead of
/// allocating them (measured: 140-175 ms per fresh GB on 4 KiB pages). The
/// pages count as the server's memory from then on, as pages of any object do
/// (they are kept once allocated); never more than `--memory`. Stops at the
/// first failure (logged: the machine is short of memory, puts will say so
/// themselves) or at shutdown.
fn preallocate(shared: &Shared, budget: u64) {
    const STEP: u64 = 32 << 20;
    let regions = shared.pool.store().regions();
    let (start, end) = (
        regions.low_end,
        regions
            .low_end
            .saturating_add(budget)
            .min(regions.high_start),
    );
    let began = std::time::Instant::now();
    let mut at = start;
    while at < end && !shared.shutting_down.load(Ordering::Relaxed) {
        let n = STEP.min(end - at);
        if let Err(e) = shared.pool.arena.ensure_allocated(at, n).map(|()| {
            // Written once (zeroed) through the server's mapping: the pages
            // are then whole, and a writer's client can find them with
            // mincore and build its page tables before its first put
            // (`Mapping::populate_resident_range`).
            shared.pool.arena.mapping().populate_write_once(at, n)
        }) {
            eprintln!(
                "arrowpoold: preallocation stopped at {}: {e}",
                human_bytes(at - start)
            );
            return;
        }
        at += n;
    }
    eprintln!(
        "arrowpoold: preallocated {} of the arena in {:.2} s (--preallocate)",
        human_bytes(at - start),
        began.elapsed().as_secs_f64()
    );
}

/// After every publish, allocates (and writes once, through the server's
/// mapping) the range where the next put of the largest current table would
/// land (`Store::next_put_range`), while the server is idle: a replacement
/// put then copies into pages that exist instead of faulting in new ones.
/// That is the memory such a put commits anyway (old and new version side by
/// side), committed ahead of it.
///
/// Measured on the 2-core VM: the second put of a 1.29 GB table into a fresh
/// `--memory 4G` server (its first quarter preallocated, the second put
/// beyond it) took 3.6-4.1 s, nearly all of it the client's
/// `MADV_POPULATE_WRITE` zeroing fresh pages (the VM's host had taken back
/// the long-free memory: touching it cost ~1.3 s per GiB, recently freed
/// memory ~0.35 s); with this, after a pause, 0.3 s.
///
/// Starts once the store has gone `WARM_QUIET` without a publish, and stops
/// at the next 32 MiB step when a writer has something pending or the range
/// is taken (a put arrived: its writer populates what it reserved, and two
/// writers faulting the same new pages slow each other down several times).
/// A put that takes the range during a step is not harmed: `fallocate` only
/// fills holes and `MADV_POPULATE_WRITE` only maps pages, neither changes a
/// byte a writer wrote. The pages are the server's from then on, as pages of
/// any object are; never more than `--memory`; off with `--warm-ahead off`
/// (and with `--prefault`, which allocates everything at start).
fn warm_ahead(shared: &Shared) {
    use event_listener::Listener;
    let stop = || shared.shutting_down.load(Ordering::Relaxed);
    loop {
        let next = shared.pool.versions_changed.listen();
        warm_next_put(shared);
        // The next publish (a timeout only to notice shutdown)...
        let mut next = Some(next);
        while let Some(l) = next.take() {
            if stop() {
                return;
            }
            let fresh = shared.pool.versions_changed.listen();
            if l.wait_timeout(Duration::from_secs(1)).is_none() {
                next = Some(fresh);
            }
        }
        // ...then `WARM_QUIET` without another: puts that follow each other
        // (a loader writing several tables) are not slowed by the warming.
        loop {
            if stop() {
                return;
            }
            let l = shared.pool.versions_changed.listen();
            if l.wait_timeout(WARM_QUIET).is_none() {
                break;
            }
        }
    }
}

/// How long the store must go without a publish before the server warms the
/// next put's range.
const WARM_QUIET: Duration = Duration::from_secs(1);

/// One round of `warm_ahead`: the next put's range, 32 MiB at a time, until
/// done, or a writer has something pending (a put under way, which populates
/// what it reserved), or the range is taken.
fn warm_next_put(shared: &Shared) {
    const STEP: u64 = 32 << 20;
    let Some((offset, len)) = shared.pool.store().next_put_range() else {
        return;
    };
    let end = offset.saturating_add(len);
    let mut at = offset;
    while at < end && !shared.shutting_down.load(Ordering::Relaxed) {
        let n = STEP.min(end - at);
        {
            let store = shared.pool.store();
            if store.has_pending() || !store.is_free(at, n) {
                return;
            }
        }
        if let Err(e) = shared.pool.arena.ensure_allocated(at, n) {
            eprintln!("arrowpoold: warming the arena ahead stopped: {e}");
            return;
        }
        shared.pool.arena.mapping().populate_write_once(at, n);
        at += n;
    }
}

/// The pool of a `--state-dir` server: the directory locked, its catalog
/// read, the arena file mapped, the recorded versions checked and restored.
/// Returns how many were restored.
fn durable_pool(
    dir: &std::path::Path,
    config: &Config,
) -> Result<(Pool, crate::durable::StateDir, u64), StartError> {
    use crate::durable::{Geometry, StateDir};
    if config.hugepages == HugepageMode::Require && config.state_hugetlbfs.is_none() {
        return Err(StartError::State(crate::durable::StateError::Unsafe {
            path: dir.to_owned(),
            why: "--hugepages require: an arena in a state directory is a tmpfs file of 4 KiB \
                  pages unless --state-hugetlbfs names a hugetlbfs mount to keep it in"
                .into(),
        }));
    }
    let dir = StateDir::open(dir).map_err(StartError::State)?;
    let len = config
        .memory_bytes
        .div_ceil(crate::arena::HUGEPAGE_BYTES)
        .saturating_mul(crate::arena::HUGEPAGE_BYTES);
    let geometry = Geometry {
        arena_bytes: len,
        large_align: crate::arena::PAGE_BYTES,
    };
    // The catalog first: a refusal (another --memory) must not touch the arena file.
    let (catalog, replay) = dir.catalog(geometry).map_err(StartError::State)?;
    let (arena_file, hugetlb) = dir
        .arena_file(config.state_hugetlbfs.as_deref())
        .map_err(StartError::State)?;
    let (arena, kept) =
        Arena::open_file(&arena_file, config.memory_bytes, hugetlb).map_err(StartError::Arena)?;
    if !kept && !replay.versions.is_empty() {
        eprintln!(
            "arrowpoold: the arena file {} was missing or of another size: the {} version(s) the catalog records are lost",
            arena_file.display(),
            replay.versions.len()
        );
    }
    if config.prefault {
        arena
            .ensure_allocated(0, arena.len())
            .map_err(StartError::Arena)?;
    }
    let pool = Pool::with_large_align(arena, geometry.large_align).map_err(StartError::Arena)?;
    pool.store().set_keep_versions(config.keep_versions);
    let recorded = replay.versions.len();
    // A new arena file: no client of the server before maps it.
    let quarantine = if kept {
        config.quarantine
    } else {
        Duration::ZERO
    };
    let report = pool.recover(catalog, replay, quarantine).map_err(|e| {
        StartError::State(crate::durable::StateError::Catalog(
            crate::durable::CatalogError(e.to_string()),
        ))
    })?;
    for p in &report.problems {
        eprintln!("arrowpoold: state directory: {p}");
    }
    eprintln!(
        "arrowpoold: state directory {}: {} of {recorded} recorded version(s) restored ({}){} in {:.3} s",
        dir.path().display(),
        report.restored,
        human_bytes(report.bytes),
        if report.restored_spilled > 0 {
            format!(", {} spilled version(s) found on disk", report.restored_spilled)
        } else {
            String::new()
        },
        report.seconds
    );
    if report.orphans > 0 {
        eprintln!(
            "arrowpoold: holding {} replaced or deleted version(s) the server before this one's \
             readers still held, for {} s: a reader that reconnects leases its version again (--quarantine)",
            report.orphans,
            quarantine.as_secs_f64()
        );
    }
    if report.quarantined_bytes > 0 {
        eprintln!(
            "arrowpoold: holding back {} for {} s: the server before this one had handed it to \
             writers or readers, who may still use it (--quarantine)",
            human_bytes(report.quarantined_bytes),
            quarantine.as_secs_f64()
        );
    }
    Ok((
        pool,
        dir,
        (report.restored + report.restored_spilled) as u64,
    ))
}

/// Writes copies of least recently used versions ahead of need while more
/// than `high_water` bytes of the arena are in use (`Pool::copy_ahead`), so
/// that making room later only drops them. A write failure (full disk) is
/// logged and retried after a pause, never in a loop.
fn copy_ahead(shared: &Shared, high_water: u64) {
    const IDLE: Duration = Duration::from_millis(100);
    const AFTER_FAILURE: Duration = Duration::from_secs(30);
    let sleep_unless_stopping = |d: Duration| {
        let until = Instant::now() + d;
        while Instant::now() < until && !shared.shutting_down.load(Ordering::Relaxed) {
            std::thread::sleep(IDLE.min(d));
        }
    };
    while !shared.shutting_down.load(Ordering::Relaxed) {
        match shared.pool.copy_ahead(high_water) {
            Ok(true) => {}
            Ok(false) => sleep_unless_stopping(IDLE),
            Err(e) => {
                eprintln!(
                    "arrowpoold: {e}; writing ahead pauses for {} s",
                    AFTER_FAILURE.as_secs()
                );
                sleep_unless_stopping(AFTER_FAILURE);
            }
        }
    }
}

/// How the Flight listener is secured, for the start line.
#[cfg(feature = "flight")]
fn describe_flight(f: Option<&crate::flight::FlightConfig>) -> String {
    let Some(f) = f else { return String::new() };
    let tls = match &f.tls {
        None => "no TLS",
        Some(t) if t.client_ca.is_some() => "TLS with client certificates",
        Some(_) => "TLS",
    };
    let tokens = if f.tokens.is_some() {
        "tokens"
    } else {
        "no tokens (every caller may write)"
    };
    format!(" ({tls}, {tokens})")
}

impl Server {
    /// Creates the arena, binds the socket and starts one thread per core.
    pub fn start(config: Config) -> Result<Server, StartError> {
        let threads = config.threads.max(1);
        // Everything that can refuse to start comes before the socket exists, so
        // no client ever connects to a server that is about to exit.
        let driver = listener::probe_driver(config.require_io_uring, config.force_polling)?;
        let (pool, state) = match &config.state_dir {
            None => {
                let arena = Arena::create(config.memory_bytes, config.hugepages, config.prefault)
                    .map_err(StartError::Arena)?;
                let pool = Pool::new(arena).map_err(StartError::Arena)?;
                pool.store().set_keep_versions(config.keep_versions);
                (pool, None)
            }
            Some(dir) => {
                let (pool, dir, recovered) = durable_pool(dir, &config)?;
                (pool, Some((dir, recovered)))
            }
        };
        if let Some(dir) = &config.spill_dir {
            let removed = pool.enable_spill(dir).map_err(|err| StartError::Spill {
                path: dir.clone(),
                err,
            })?;
            eprintln!(
                "arrowpoold: versions that must leave memory are spilled to {}{}",
                dir.display(),
                if removed > 0 {
                    format!(
                        " ({removed} file(s) of an earlier server that no catalog names removed)"
                    )
                } else {
                    String::new()
                }
            );
        }
        #[cfg(feature = "flight")]
        let flight = match &config.flight {
            Some(f) => Some(crate::flight::bind(f).map_err(StartError::Flight)?),
            None => None,
        };
        let std_listener = listener::bind(&config.socket, config.socket_mode)?;
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..threads).map(|_| async_channel::bounded(1024)).unzip();
        let shared = Arc::new(Shared::new(pool, &config, driver, threads, state));
        eprintln!(
            "arrowpoold: arena {} of {}, {} thread(s), io driver {}, socket {}",
            human_bytes(shared.pool.arena.len()),
            shared.pool.arena.kind().as_str(),
            threads,
            driver.as_str(),
            config.socket.display()
        );
        let mut workers = Vec::with_capacity(threads + 1);
        for (core, rx) in receivers.into_iter().enumerate() {
            let shared = shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("arrowpool-core-{core}"))
                .spawn(move || listener::run_core(core, shared, rx))
                .map_err(StartError::Runtime)?;
            workers.push(handle);
        }
        let budget = config
            .preallocate_bytes
            .unwrap_or(match shared.pool.arena.kind() {
                crate::arena::MemoryKind::Hugetlb => 0,
                _ => (shared.pool.arena.len() / 4).min(4 << 30),
            });
        let warm = config.warm_ahead;
        if (budget > 0 || warm) && !config.prefault {
            let shared = shared.clone();
            let handle = std::thread::Builder::new()
                .name("arrowpool-prealloc".into())
                .spawn(move || {
                    if budget > 0 {
                        preallocate(&shared, budget);
                    }
                    if warm {
                        warm_ahead(&shared);
                    }
                })
                .map_err(StartError::Runtime)?;
            workers.push(handle);
        }
        // The first ingest's read buffers, likewise (heap, not arena): at
        // most an eighth of the arena, so that small servers stay small.
        let read_buffers = config.ingest_buffers_bytes.min(shared.pool.arena.len() / 8);
        if read_buffers > 0 && config.preallocate_bytes != Some(0) {
            let handle = std::thread::Builder::new()
                .name("arrowpool-prewarm".into())
                .spawn(move || {
                    let began = std::time::Instant::now();
                    let bytes = crate::ingest::prewarm_read_buffers(read_buffers);
                    if bytes > 0 {
                        eprintln!(
                            "arrowpoold: allocated {} of read buffers for ingests in {:.2} s (--ingest-buffers)",
                            human_bytes(bytes),
                            began.elapsed().as_secs_f64()
                        );
                    }
                })
                .map_err(StartError::Runtime)?;
            workers.push(handle);
        }
        if let (Some(_), Some(fraction)) = (&config.spill_dir, config.spill_ahead) {
            let high_water = (shared.pool.arena.len() as f64 * fraction.clamp(0.0, 1.0)) as u64;
            let shared = shared.clone();
            let handle = std::thread::Builder::new()
                .name("arrowpool-spill-ahead".into())
                .spawn(move || copy_ahead(&shared, high_water))
                .map_err(StartError::Runtime)?;
            workers.push(handle);
        }
        #[cfg(feature = "flight")]
        let flight = match flight {
            Some(bound) => {
                let running = bound.serve(shared.clone()).map_err(StartError::Flight)?;
                eprintln!(
                    "arrowpoold: Arrow Flight on {}{}",
                    running.addr,
                    describe_flight(config.flight.as_ref())
                );
                Some(running)
            }
            None => None,
        };
        let accept_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("arrowpool-accept".into())
            .spawn(move || listener::accept_loop(std_listener, accept_shared, senders))
            .map_err(StartError::Runtime)?;
        workers.push(handle);
        Ok(Server {
            shared,
            workers,
            #[cfg(feature = "flight")]
            flight,
        })
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops accepting, tells every client (shutdown notice), waits up to
    /// `grace` for connections to close, removes the socket file.
    #[cfg_attr(not(feature = "flight"), allow(unused_mut))]
    pub fn shutdown(mut self, grace: Duration) {
        #[cfg(feature = "flight")]
        let flight = self.flight.take();
        let shared = &self.shared;
        shared.shutting_down.store(true, Ordering::SeqCst);
        let _ = std::fs::remove_file(&shared.socket_path);
        shared.pool.versions_changed.notify(usize::MAX);
        shared.close_all_connections();
        #[cfg(feature = "flight")]
        if let Some(f) = flight {
            f.stop();
        }
        let start = Instant::now();
        while shared.connection_count() > 0 && start.elapsed() < grace {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Workers block in their runtimes; the process exits after this returns.
        drop(self.workers);
    }
}
