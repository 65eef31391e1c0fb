//! Arrow Flight beside the Unix socket (`arrowpoold --flight ADDR:PORT`), on
//! the same pool: remote clients and any Flight client (pyarrow.flight, the
//! Rust `arrow-flight` client, ...) list, read, put and delete tables.
//!
//! ```text
//! flight thread: tokio runtime (tonic gRPC server) ── its own worker threads
//!     do_get   ─ lease (a server-side connection) ─ each batch as it lies in the
//!                arena (header rewritten, body zero-copy), or decoded in place and
//!                re-encoded in slices (no copy of the whole table either way)
//!     do_put   ─ no dictionaries: the IPC messages, undecoded, into a chunk per
//!                64 MiB as they arrive, each checked as a seal checks a file,
//!                one version over all (`put.rs`); with dictionaries: decoded,
//!                gathered, one IPC file written, checked and published
//!     do_action delete | ingest | stats | CreatePreparedStatement (Flight SQL)
//!     sql.rs   ─ SELECT * / SELECT columns FROM name, as tickets (no state)
//! ```
//! gRPC needs tokio; the io_uring cores do not run it and never wait for it:
//! the Flight threads take the store lock as the cores do, and do blocking
//! work (bringing a spilled version back, writing a put, an ingest) on
//! tokio's blocking pool.
//!
//! Security (`docs/OPERATING.md`, "Flight"): TLS with `--flight-tls-cert`
//! and `--flight-tls-key` (rustls), client certificates with
//! `--flight-tls-client-ca`, bearer tokens with roles from `--flight-tokens`
//! (`auth.rs`). A listener on an address other than loopback must have both
//! TLS and tokens, unless `--flight-insecure` is given (and logged). Without
//! a token file every caller has every role, as every user who can open the
//! Unix socket can write.

pub mod auth;
pub mod pull;
mod put;
mod raw_get;
mod service;
mod slice;
pub mod sql;
pub mod ticket;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::server::Shared;

/// `--flight-tls-*`: the server's certificate chain and key (PEM), and the CA
/// that client certificates must be signed by (then every client needs one).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// The Flight listener's settings (the `--flight*` flags).
#[derive(Debug, Clone)]
pub struct FlightConfig {
    pub addr: SocketAddr,
    pub tls: Option<TlsFiles>,
    pub tokens: Option<PathBuf>,
    /// Allow a non-loopback address without TLS and tokens.
    pub insecure: bool,
}

/// A bound listener, not serving yet: binding comes before the Unix socket
/// exists, so a taken port refuses the start before any client connects.
pub struct Bound {
    listener: std::net::TcpListener,
    runtime: tokio::runtime::Runtime,
    tls: Option<tonic::transport::ServerTlsConfig>,
    tokens: Option<Arc<auth::Tokens>>,
    addr: SocketAddr,
}

/// The running service; `stop` ends it.
pub struct Running {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Threads of the Flight runtime: gRPC framing and encoding. Bulk copies of
/// puts run on the blocking pool with every core.
const WORKERS: usize = 2;
/// HTTP/2 flow-control window (stream and connection) this server grants.
const WINDOW_BYTES: u32 = 64 << 20;
/// HTTP/2 pings to idle connections, and how long an answer may take.
const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);
/// Largest HTTP/2 frame this server accepts (the protocol's maximum is 16 MiB - 1).
const FRAME_BYTES: u32 = (1 << 20) - 1;

/// Checks the flags, reads the TLS files and tokens, and binds `config.addr`.
pub fn bind(config: &FlightConfig) -> Result<Bound, String> {
    let tls = match &config.tls {
        None => None,
        Some(files) => Some(tls_config(files)?),
    };
    let tokens = match &config.tokens {
        None => None,
        Some(p) => {
            let t = auth::Tokens::load(p)?;
            if t.is_empty() {
                return Err(format!(
                    "token file {}: no tokens in it (lines `ROLE TOKEN [EXPIRES]`)",
                    p.display()
                ));
            }
            Some(Arc::new(t))
        }
    };
    if !config.addr.ip().is_loopback() && (tls.is_none() || tokens.is_none()) {
        if !config.insecure {
            return Err(format!(
                "--flight {} is not a loopback address: it needs --flight-tls-cert/--flight-tls-key \
                 and --flight-tokens (anyone on the network could read and change every table), \
                 or --flight-insecure to accept that",
                config.addr
            ));
        }
        eprintln!(
            "arrowpoold: WARNING: --flight-insecure: Flight on {} without {}; anyone who can reach it \
             can read and change every table",
            config.addr,
            match (tls.is_none(), tokens.is_none()) {
                (true, true) => "TLS or tokens",
                (true, false) => "TLS",
                _ => "tokens",
            }
        );
    }
    let listener = std::net::TcpListener::bind(config.addr)
        .map_err(|e| format!("cannot listen on {} (--flight): {e}", config.addr))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("--flight: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("--flight: {e}"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .thread_name("arrowpool-flight")
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| format!("cannot start the Flight runtime: {e}"))?;
    Ok(Bound {
        listener,
        runtime,
        tls,
        tokens,
        addr,
    })
}

fn tls_config(files: &TlsFiles) -> Result<tonic::transport::ServerTlsConfig, String> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let read = |p: &PathBuf, what: &str| {
        std::fs::read(p).map_err(|e| format!("cannot read {what} {}: {e}", p.display()))
    };
    let cert = read(&files.cert, "--flight-tls-cert")?;
    let key = read(&files.key, "--flight-tls-key")?;
    for (bytes, p, what) in [
        (&cert, &files.cert, "CERTIFICATE"),
        (&key, &files.key, "PRIVATE KEY"),
    ] {
        if !String::from_utf8_lossy(bytes).contains(&format!("{what}-----")) {
            return Err(format!(
                "{} holds no PEM {what} block (`-----BEGIN {what}-----`)",
                p.display()
            ));
        }
    }
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    if let Some(ca) = &files.client_ca {
        let ca = read(ca, "--flight-tls-client-ca")?;
        tls = tls.client_ca_root(Certificate::from_pem(ca));
    }
    Ok(tls)
}

impl Bound {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves on the bound listener until `Running::stop`.
    pub fn serve(self, shared: Arc<Shared>) -> Result<Running, String> {
        let Bound {
            listener,
            runtime,
            tls,
            tokens,
            addr,
        } = self;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let max_message = usize::try_from(shared.pool.arena.len()).unwrap_or(usize::MAX);
        let router = {
            let _guard = runtime.enter();
            let listener = tokio::net::TcpListener::from_std(listener)
                .map_err(|e| format!("--flight: {e}"))?;
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            // HTTP/2's default windows (64 KiB) make a sender wait for a
            // window update every 64 KiB, which caps loopback at a fraction
            // of memory speed; tables are large, so the windows are too.
            let mut builder = tonic::transport::Server::builder()
                .initial_stream_window_size(WINDOW_BYTES)
                .initial_connection_window_size(WINDOW_BYTES)
                .max_frame_size(FRAME_BYTES)
                .tcp_nodelay(true)
                // A peer that vanished (its host down, the network cut)
                // without closing: its calls end, and a do_get's lease goes.
                .http2_keepalive_interval(Some(KEEPALIVE))
                .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
            if let Some(tls) = tls.clone() {
                builder = builder
                    .tls_config(tls)
                    .map_err(|e| format!("--flight TLS: {e}"))?;
            }
            let service = Arc::new(service::Service::new(shared.clone(), tokens));
            let server =
                arrow_flight::flight_service_server::FlightServiceServer::from_arc(service.clone())
                    .max_decoding_message_size(max_message)
                    .max_encoding_message_size(usize::MAX);
            let router = builder.add_service(raw_get::RawDoGet::new(server, service));
            router.serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
        };
        let thread = std::thread::Builder::new()
            .name("arrowpool-flight-main".into())
            .spawn(move || {
                if let Err(e) = runtime.block_on(router) {
                    eprintln!("arrowpoold: the Flight service stopped: {e}");
                }
                // Calls still streaming are cut here; the process is exiting.
                runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            })
            .map_err(|e| format!("cannot start the Flight thread: {e}"))?;
        let _ = shared.flight.set(addr.to_string());
        Ok(Running {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Running {
    /// Stops accepting calls and waits (briefly) for the service to end.
    pub fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        // Graceful shutdown waits for calls in progress; a client that stopped
        // reading must not hold the server's exit up.
        if let Some(t) = self.thread.take() {
            let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
            while !t.is_finished() && std::time::Instant::now() < until {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}
