//! Socket setup, the accept loop, and the per-core runtime.

use std::collections::HashSet;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use compio::driver::{DriverType, ProactorBuilder};
use compio::net::UnixStream;

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
    Ok(listener)
}

fn runtime(
    core: Option<usize>,
    driver: Option<IoDriver>,
) -> std::io::Result<compio::runtime::Runtime> {
    let mut proactor = ProactorBuilder::new();
    proactor.capacity(1024);
    if driver == Some(IoDriver::Polling) {
        proactor.driver_type(DriverType::Poll);
    }
    let mut builder = compio::runtime::Runtime::builder();
    builder.with_proactor(proactor);
    if let Some(core) = core {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        builder.thread_affinity(HashSet::from([core % cpus]));
    }
    builder.build()
}

/// Which driver the cores will use: compio's pick on this machine (io_uring
/// unless it is blocked), or polling when `force_polling`.
pub fn probe_driver(require_io_uring: bool, force_polling: bool) -> Result<IoDriver, StartError> {
    if force_polling {
        if require_io_uring {
            return Err(StartError::IoUringRequired);
        }
        eprintln!("arrowpoold: polling (epoll) driver selected with --io-driver polling");
        return Ok(IoDriver::Polling);
    }
    let rt = runtime(None, None).map_err(StartError::Runtime)?;
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

/// Body of a core's thread: its own runtime and the connections the accept
/// thread hands it.
pub fn run_core(core: usize, shared: Arc<Shared>, rx: async_channel::Receiver<OwnedFd>) {
    let rt = match runtime(Some(core), Some(shared.io_driver)) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("arrowpoold: core {core}: cannot start runtime: {e}");
            return;
        }
    };
    rt.block_on(async move {
        while let Ok(fd) = rx.recv().await {
            match UnixStream::from_std(std::os::unix::net::UnixStream::from(fd)) {
                Ok(stream) => compio::runtime::spawn(conn::serve(stream, shared.clone())).detach(),
                Err(e) => eprintln!("arrowpoold: core {core}: cannot adopt connection: {e}"),
            }
        }
    });
}

/// The accept thread: blocking `accept` on the Unix socket, each connection
/// handed round-robin to a core, which serves it for its whole life.
///
/// Accepting is not on the hot path (one syscall per connection), and a plain
/// thread behaves the same under io_uring and the polling fallback (compio's
/// polling-mode accept closed the accepted descriptor in our tests).
pub fn accept_loop(
    listener: std::os::unix::net::UnixListener,
    shared: Arc<Shared>,
    senders: Vec<async_channel::Sender<OwnedFd>>,
) {
    let mut next = 0usize;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if shared.shutting_down.load(Ordering::Relaxed) {
                    continue;
                }
                let target = next % senders.len();
                next = next.wrapping_add(1);
                if senders[target]
                    .send_blocking(OwnedFd::from(stream))
                    .is_err()
                {
                    eprintln!("arrowpoold: core {target} is gone; dropping a connection");
                }
            }
            Err(e) => {
                // EMFILE/ENFILE and friends: back off instead of spinning.
                eprintln!("arrowpoold: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}
