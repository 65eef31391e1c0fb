//! `--state-dir`: what lets a restarted server serve the tables of the one
//! before it (after a clean stop, a crash or `kill -9`).
//!
//! ```text
//! DIR/lock      flock(LOCK_EX) held while a server runs; holds its pid (for the refusal message)
//! DIR/arena     the arena: a tmpfs file of --memory bytes, mapped as the memfd is without it
//! DIR/catalog   the durable versions, a log of checksummed records (`catalog.rs`)
//! ```
//! The directory must be on tmpfs (`/dev/shm`, `$XDG_RUNTIME_DIR`): the arena
//! is memory, and a file on a disk filesystem would be written back to the
//! disk under every put. Files on tmpfs outlive the process that wrote them,
//! not the machine: what survives what is in docs/OPERATING.md.
//!
//! Between `store` and `pool`: the pool writes the store's changes here
//! (`pool/durable.rs`) and recovers from a replay at start.

pub mod catalog;

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub use catalog::{Catalog, CatalogError, Geometry, Replay};

/// `statfs` magic numbers of the filesystems an arena file may live on.
const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6_u32 as i64;

/// Why a state directory cannot be used.
#[derive(Debug)]
pub enum StateError {
    Io {
        what: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
    /// Not on a memory filesystem.
    NotMemory {
        path: PathBuf,
        fs_type: i64,
    },
    /// Another server holds the lock.
    InUse {
        path: PathBuf,
        pid: Option<u32>,
    },
    /// Owned by another user, or open to others.
    Unsafe {
        path: PathBuf,
        why: String,
    },
    Catalog(CatalogError),
}

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateError::Io { what, path, err } => {
                write!(f, "state directory {}: {what}: {err}", path.display())
            }
            StateError::NotMemory { path, fs_type } => write!(
                f,
                "--state-dir {} is not on tmpfs (filesystem type {fs_type:#x}): the arena lives there and \
                 must be memory; use a directory under /dev/shm (e.g. /dev/shm/arrowpool)",
                path.display()
            ),
            StateError::InUse { path, pid } => write!(
                f,
                "state directory {} is in use by another arrowpoold{}; stop it first (`arrowpool stop`) \
                 or give this one another --state-dir",
                path.display(),
                pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
            ),
            StateError::Unsafe { path, why } => {
                write!(f, "state directory {}: {why}", path.display())
            }
            StateError::Catalog(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StateError {}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StateError {
    let path = path.to_owned();
    move |err| StateError::Io { what, path, err }
}

/// A state directory this server holds (its lock is released when dropped,
/// or when the process dies).
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
    _lock: File,
}

impl StateDir {
    /// Creates (mode 0700) or opens `path`, checks that it is on tmpfs,
    /// this user's and writable by no one else, and takes its lock.
    pub fn open(path: &Path) -> Result<StateDir, StateError> {
        match std::fs::DirBuilder::new().mode(0o700).create(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io("create", path)(e)),
        }
        let meta = std::fs::symlink_metadata(path).map_err(io("stat", path))?;
        if !meta.is_dir() {
            return Err(StateError::Unsafe {
                path: path.to_owned(),
                why: "is not a directory (or is a symlink)".into(),
            });
        }
        let uid = rustix::process::geteuid().as_raw();
        if meta.uid() != uid {
            return Err(StateError::Unsafe {
                path: path.to_owned(),
                why: format!(
                    "belongs to uid {}, not to this user (uid {uid})",
                    meta.uid()
                ),
            });
        }
        // Its files are created 0600; others must not be able to replace them.
        if meta.permissions().mode() & 0o022 != 0 {
            return Err(StateError::Unsafe {
                path: path.to_owned(),
                why: format!(
                    "is writable by other users (mode {:o}); `chmod 700` it: its files hold every table",
                    meta.permissions().mode() & 0o777
                ),
            });
        }
        let fs = rustix::fs::statfs(path).map_err(|e| io("statfs", path)(e.into()))?;
        let fs_type = fs.f_type as i64;
        if fs_type != TMPFS_MAGIC && fs_type != RAMFS_MAGIC {
            return Err(StateError::NotMemory {
                path: path.to_owned(),
                fs_type,
            });
        }
        let lock_path = path.join("lock");
        let mut lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io("open lock", path))?;
        if let Err(e) =
            rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        {
            if e == rustix::io::Errno::WOULDBLOCK {
                let mut s = String::new();
                let _ = lock.read_to_string(&mut s);
                return Err(StateError::InUse {
                    path: path.to_owned(),
                    pid: s.trim().parse().ok(),
                });
            }
            return Err(io("lock", path)(e.into()));
        }
        let pid = format!("{}\n", std::process::id());
        lock.set_len(0)
            .and_then(|()| lock.rewind())
            .and_then(|()| lock.write_all(pid.as_bytes()))
            .map_err(io("write lock", path))?;
        Ok(StateDir {
            path: path.to_owned(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn arena_path(&self) -> PathBuf {
        self.path.join("arena")
    }

    pub fn catalog_path(&self) -> PathBuf {
        self.path.join("catalog")
    }

    /// Opens the catalog (creating it for `geometry` if there is none).
    pub fn catalog(&self, geometry: Geometry) -> Result<(Catalog, Replay), StateError> {
        Catalog::open(&self.catalog_path(), geometry).map_err(StateError::Catalog)
    }
}
