//! Socket setup, the accept loop, and the per-core runtime.
#![deny(unsafe_code)]

use std::collections::HashSet;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use compio::driver::{DriverType, ProactorBuilder};
use compio::net::{UnixListener, UnixStream};

use super::shared::Shared;
use super::{conn, IoDriver, StartError};

/// Binds the Unix socket with the given file mode. A stale socket file (no
/// server answers on it) is replaced; a live one is an error.
pub fn bind(path: &Path, mode: u32) -> Result<std::os::unix::net::UnixListener, StartError> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(StartError::SocketInUse(path.to_owned()));
        }
        let _ = std::fs::remove_file(path);
    }
    let err = |err| StartError::Socket {
        path: path.to_owned(),
        err,
    };
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    Ok(listener)
}

fn runtime(core: Option<usize>) -> std::io::Result<compio::runtime::Runtime> {
    let mut proactor = ProactorBuilder::new();
    proactor.capacity(1024);
    let mut builder = compio::runtime::Runtime::builder();
    builder.with_proactor(proactor);
    if let Some(core) = core {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        builder.thread_affinity(HashSet::from([core % cpus]));
    }
    builder.build()
}

/// Which driver compio picks on this machine (io_uring unless it is blocked).
pub fn probe_driver(require_io_uring: bool) -> Result<IoDriver, StartError> {
    let rt = runtime(None).map_err(StartError::Runtime)?;
    let driver = match rt.driver_type() {
        DriverType::IoUring => IoDriver::IoUring,
        _ => IoDriver::Polling,
    };
    if driver == IoDriver::Polling {
        if require_io_uring {
            return Err(StartError::IoUringRequired);
        }
        eprintln!(
            "arrowpoold: io_uring unavailable (blocked by seccomp or kernel.io_uring_disabled); \
             using the polling (epoll) fallback. Pass --require-io-uring to refuse this."
        );
    }
    Ok(driver)
}

/// Body of a core's thread: its own runtime, its connections, and on core 0 the
/// accept loop.
pub fn run_core(
    core: usize,
    shared: Arc<Shared>,
    listener: Option<std::os::unix::net::UnixListener>,
    senders: Vec<async_channel::Sender<OwnedFd>>,
    rx: async_channel::Receiver<OwnedFd>,
) {
    let rt = match runtime(Some(core)) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("arrowpoold: core {core}: cannot start runtime: {e}");
            return;
        }
    };
    rt.block_on(async move {
        if let Some(l) = listener {
            let shared = shared.clone();
            compio::runtime::spawn(accept_loop(core, l, shared, senders)).detach();
        }
        // Connections handed over by the accept loop.
        while let Ok(fd) = rx.recv().await {
            match UnixStream::from_std(std::os::unix::net::UnixStream::from(fd)) {
                Ok(stream) => compio::runtime::spawn(conn::serve(stream, shared.clone())).detach(),
                Err(e) => eprintln!("arrowpoold: core {core}: cannot adopt connection: {e}"),
            }
        }
    });
}

async fn accept_loop(
    core: usize,
    listener: std::os::unix::net::UnixListener,
    shared: Arc<Shared>,
    senders: Vec<async_channel::Sender<OwnedFd>>,
) {
    let listener = match UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("arrowpoold: cannot register the listening socket: {e}");
            return;
        }
    };
    let mut next = 0usize;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                if shared.shutting_down.load(Ordering::Relaxed) {
                    continue;
                }
                let target = next % senders.len();
                next = next.wrapping_add(1);
                if target == core {
                    compio::runtime::spawn(conn::serve(stream, shared.clone())).detach();
                    continue;
                }
                // Hand the socket to another core: a duplicate descriptor travels,
                // this core's registration is dropped with `stream`.
                match rustix::io::fcntl_dupfd_cloexec(stream.as_fd(), 0) {
                    Ok(fd) => {
                        if senders[target].send(fd).await.is_err() {
                            eprintln!("arrowpoold: core {target} is gone; dropping a connection");
                        }
                    }
                    Err(e) => eprintln!("arrowpoold: cannot hand over a connection: {e}"),
                }
            }
            Err(e) => {
                // EMFILE/ENFILE and friends: back off instead of spinning.
                eprintln!("arrowpoold: accept failed: {e}");
                compio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
