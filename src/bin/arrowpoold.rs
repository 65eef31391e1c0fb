//! `arrowpoold`: the arrowpool server.
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use arrowpool::arena::HugepageMode;

/// `--hugepages`: the flag's values, mapped onto the library's `HugepageMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Hugepages {
    /// Use reserved hugepages if there are enough, else transparent hugepages, else 4 KiB pages.
    Auto,
    /// Refuse to start without reserved hugepages.
    Require,
    /// Never use reserved hugepages (transparent hugepages are still tried).
    Off,
}

impl From<Hugepages> for HugepageMode {
    fn from(h: Hugepages) -> Self {
        match h {
            Hugepages::Auto => HugepageMode::Auto,
            Hugepages::Require => HugepageMode::Require,
            Hugepages::Off => HugepageMode::Off,
        }
    }
}
use arrowpool::server::{Config, Server};
use clap::Parser;

/// Keeps Arrow tables in shared memory for many processes to read zero-copy.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Unix socket to listen on [default: $ARROWPOOL_SOCKET, else
    /// $XDG_RUNTIME_DIR/arrowpool/arrowpool.sock, else
    /// /tmp/arrowpool-<uid>/arrowpool.sock, in a directory only this user may enter].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Arena size (e.g. 2G, 512M): the most memory objects may use. Rounded up
    /// to a multiple of 2 MiB (the hugepage size), so 10000 becomes 2097152.
    #[arg(long, default_value = "1G", value_parser = arrowpool::util::parse_bytes)]
    memory: u64,
    /// I/O threads, one per core (default: number of cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Reserved hugepages: auto (use if available), require (refuse to start without), off.
    #[arg(long, value_enum, default_value_t = Hugepages::Auto)]
    hugepages: Hugepages,
    /// Allocate every page of the arena at start instead of on first use.
    #[arg(long)]
    prefault: bool,
    /// Allocate the first SIZE of the data region in the background after
    /// start, so the first puts land in memory that exists (commits SIZE of RAM
    /// while the server runs): a size, `auto` (a quarter of --memory, at most
    /// 4G; none on reserved hugepages, a pool other programs share) or `off`.
    #[arg(long, default_value = "auto", value_parser = parse_preallocate)]
    preallocate: Preallocate,
    /// After each put or ingest, allocate in the background (while idle) the
    /// memory where the next put of the largest table would land, so that a
    /// replacement put copies into pages that exist: commits up to one more
    /// table of RAM (what a replacement holds anyway while old and new
    /// coexist), never more than --memory. `on` or `off`.
    #[arg(long, default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    warm_ahead: bool,
    /// Read buffers kept for Parquet ingests, so an ingest reads into memory
    /// that exists (heap outside --memory, at most SIZE while no ingest runs;
    /// allocated in the background after start unless --preallocate off, at
    /// most an eighth of --memory): a size or `off` (every ingest allocates
    /// its own and frees them at its end).
    #[arg(long, default_value = "192M", value_parser = parse_size_or_off)]
    ingest_buffers: u64,
    /// Refuse to start when io_uring is unavailable instead of falling back to epoll.
    #[arg(long)]
    require_io_uring: bool,
    /// I/O driver: auto (io_uring, epoll where io_uring is blocked), io-uring
    /// (same as --require-io-uring), or polling (epoll even where io_uring works).
    #[arg(long, value_enum, default_value_t = IoDriverChoice::Auto)]
    io_driver: IoDriverChoice,
    /// Most simultaneous client connections.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// File mode of the socket, octal [default: 600; 666 with --writers-group
    /// or --readers-group, which then decide]. Without the group flags anyone
    /// who can connect can read and write every object.
    #[arg(long, value_parser = parse_mode)]
    socket_mode: Option<u32>,
    /// Only the server's user, root and members of GROUP (name or gid) may
    /// write; others connect read-only (checked with the peer's credentials).
    #[arg(long, value_name = "GROUP")]
    writers_group: Option<String>,
    /// Only the server's user, root, members of GROUP and of --writers-group
    /// may connect at all; members of GROUP only read.
    #[arg(long, value_name = "GROUP")]
    readers_group: Option<String>,
    /// Versions of each name kept readable by number (get with a version), the
    /// current one included. Older versions share their unchanged columns with
    /// newer ones; eviction takes them before current versions.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    keep_versions: u64,
    /// Keep the tables across restarts (a clean stop, a crash, `kill -9`):
    /// the arena lives in DIR/arena and a catalog of every sealed version in
    /// DIR/catalog. DIR must be on tmpfs (e.g. /dev/shm/arrowpool): tables
    /// survive the server, not a reboot. One server per directory.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// With --state-dir: after a restart, hold back for SECS the arena bytes
    /// the server before had handed out and no recovered version explains (a
    /// put it was copying, a replaced table a reader still held): their
    /// clients may still write or read them. 0: reuse them at once.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 30,
        requires = "state_dir"
    )]
    quarantine: u64,
    /// With --state-dir: keep a new state directory's arena in a file on
    /// this hugetlbfs mount (reserved hugepages, which the file keeps while
    /// the server is down), DIR/arena pointing to it. Removing the state
    /// directory does not free those pages: remove the file too.
    #[arg(long, value_name = "MOUNT", requires = "state_dir")]
    state_hugetlbfs: Option<PathBuf>,
    /// When a put needs room, write least-recently-used tables to DIR (a disk
    /// directory) instead of dropping them; a get brings them back. A full or
    /// failing disk refuses the put and keeps the table in memory.
    #[arg(long, value_name = "DIR")]
    spill_dir: Option<PathBuf>,
    /// With --spill-dir: once more than this fraction of --memory is in use,
    /// write copies of the least recently used tables to DIR in the
    /// background, so that making room later drops them without waiting for
    /// a write (disk space: one file per copied table). `off`: write only when
    /// room is needed.
    #[arg(long, default_value = "0.5", value_parser = parse_fraction)]
    spill_ahead: SpillAhead,
    /// Serve Arrow Flight (gRPC) on ADDR:PORT beside the socket, e.g.
    /// 127.0.0.1:8815 (port 0: any free port; `arrowpool stats` shows it).
    /// An address other than loopback needs TLS and tokens, or --flight-insecure.
    #[arg(long, value_name = "ADDR:PORT")]
    flight: Option<std::net::SocketAddr>,
    /// With --flight: the server's TLS certificate chain (PEM).
    #[arg(long, value_name = "FILE", requires = "flight_tls_key")]
    flight_tls_cert: Option<PathBuf>,
    /// With --flight: the private key of --flight-tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "flight_tls_cert")]
    flight_tls_key: Option<PathBuf>,
    /// With TLS: require client certificates signed by this CA (PEM).
    #[arg(long, value_name = "FILE", requires = "flight_tls_cert")]
    flight_tls_client_ca: Option<PathBuf>,
    /// With --flight: bearer tokens and their roles, one `ROLE TOKEN [EXPIRES]`
    /// a line (roles read, write, admin); read again when it changes. Mode 600.
    #[arg(long, value_name = "FILE")]
    flight_tokens: Option<PathBuf>,
    /// Allow --flight on a non-loopback address without TLS or tokens (logged).
    #[arg(long)]
    flight_insecure: bool,
    /// A CA (PEM) trusted, beside the system's roots, when this server pulls
    /// a table with `ingest flight+tls://HOST:PORT/NAME`.
    #[arg(long, value_name = "FILE")]
    flight_remote_ca: Option<PathBuf>,
}

/// `--spill-ahead`: a fraction of the arena, or off.
#[derive(Debug, Clone, Copy, PartialEq)]
struct SpillAhead(Option<f64>);

fn parse_fraction(s: &str) -> Result<SpillAhead, String> {
    if s == "off" {
        return Ok(SpillAhead(None));
    }
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(SpillAhead(Some(f))),
        _ => Err(format!("{s:?} is not a fraction between 0 and 1, or off")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum IoDriverChoice {
    Auto,
    IoUring,
    Polling,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Preallocate {
    Auto,
    Bytes(u64),
}

fn parse_preallocate(s: &str) -> Result<Preallocate, String> {
    match s {
        "auto" => Ok(Preallocate::Auto),
        "off" | "0" => Ok(Preallocate::Bytes(0)),
        other => arrowpool::util::parse_bytes(other).map(Preallocate::Bytes),
    }
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("expected on or off, not {other:?}")),
    }
}

fn parse_size_or_off(s: &str) -> Result<u64, String> {
    match s {
        "off" => Ok(0),
        other => arrowpool::util::parse_bytes(other),
    }
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8).map_err(|_| format!("invalid octal mode {s:?}"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let socket = match args.socket {
        Some(s) => s,
        None => match arrowpool::paths::default_socket() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("arrowpoold: no socket path: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let resolve = |g: &Option<String>, flag: &str| -> Result<_, String> {
        g.as_deref()
            .map(arrowpool::server::peers::Group::resolve)
            .transpose()
            .map_err(|e| format!("{flag}: {e}"))
    };
    let groups = match (
        resolve(&args.writers_group, "--writers-group"),
        resolve(&args.readers_group, "--readers-group"),
    ) {
        (Ok(writers), Ok(readers)) => arrowpool::server::peers::Groups { writers, readers },
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("arrowpoold: {e}");
            return ExitCode::from(2);
        }
    };
    let socket_mode = args
        .socket_mode
        .unwrap_or(if groups.is_set() { 0o666 } else { 0o600 });
    let config = Config {
        socket,
        memory_bytes: args.memory,
        threads,
        hugepages: args.hugepages.into(),
        prefault: args.prefault,
        require_io_uring: args.require_io_uring || args.io_driver == IoDriverChoice::IoUring,
        force_polling: args.io_driver == IoDriverChoice::Polling,
        max_connections: args.max_connections,
        socket_mode,
        groups,
        keep_versions: args.keep_versions as usize,
        preallocate_bytes: match args.preallocate {
            Preallocate::Auto => None,
            Preallocate::Bytes(n) => Some(n),
        },
        ingest_buffers_bytes: args.ingest_buffers,
        warm_ahead: args.warm_ahead,
        state_dir: args.state_dir,
        quarantine: std::time::Duration::from_secs(args.quarantine),
        state_hugetlbfs: args.state_hugetlbfs,
        spill_dir: args.spill_dir,
        spill_ahead: args.spill_ahead.0,
        flight: args.flight.map(|addr| arrowpool::flight::FlightConfig {
            addr,
            tls: args
                .flight_tls_cert
                .zip(args.flight_tls_key)
                .map(|(cert, key)| arrowpool::flight::TlsFiles {
                    cert,
                    key,
                    client_ca: args.flight_tls_client_ca,
                }),
            tokens: args.flight_tokens,
            insecure: args.flight_insecure,
        }),
        flight_remote_ca: args.flight_remote_ca,
    };
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("arrowpoold: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    let server = match Server::start(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("arrowpoold: {e}");
            return ExitCode::from(2);
        }
    };
    eprintln!("arrowpoold: ready");
    if let Some(sig) = signals.forever().next() {
        eprintln!("arrowpoold: signal {sig}, shutting down");
    }
    server.shutdown(Duration::from_secs(2));
    eprintln!("arrowpoold: stopped");
    ExitCode::SUCCESS
}
