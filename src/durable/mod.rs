//! `--state-dir`: what lets a restarted server serve the tables of the one
//! before it (after a clean stop, a crash or `kill -9`).
//!
//! ```text
//! DIR/lock      flock(LOCK_EX) held while a server runs; holds its pid (for the refusal message)
//! DIR/arena     the arena: a tmpfs file of --memory bytes, mapped as the memfd is without it;
//!               or, with --state-hugetlbfs MNT, a symlink to MNT/arrowpool-<uid>-<inode of DIR>.arena,
//!               a file of reserved hugepages (hugetlbfs files keep their pages until removed)
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
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6_u32 as i64;

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
    /// `--state-hugetlbfs` is not a hugetlbfs mount, or does not fit what
    /// the state directory already holds.
    Hugetlbfs {
        path: PathBuf,
        why: String,
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
            StateError::Hugetlbfs { path, why } => {
                write!(f, "--state-hugetlbfs {}: {why}", path.display())
            }
            StateError::Catalog(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StateError {}

/// `mount` is a hugetlbfs mount this user can create files in.
fn check_hugetlbfs(mount: &Path) -> Result<(), StateError> {
    let fs = rustix::fs::statfs(mount).map_err(|e| StateError::Hugetlbfs {
        path: mount.to_owned(),
        why: format!("{}", std::io::Error::from(e)),
    })?;
    if fs.f_type as i64 != HUGETLBFS_MAGIC {
        return Err(StateError::Hugetlbfs {
            path: mount.to_owned(),
            why: format!(
                "is not a hugetlbfs mount (filesystem type {:#x}); mount one, e.g. \
                 `mount -t hugetlbfs -o pagesize=2M,mode=0700 none /dev/hugepages`",
                fs.f_type
            ),
        });
    }
    Ok(())
}

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

    /// Where the arena file is, and whether it is on hugetlbfs. `DIR/arena`
    /// is the file itself (tmpfs), or a symlink to a file on hugetlbfs. With
    /// `hugetlbfs` (a mount point) and no arena yet, the arena goes there,
    /// named after this user and the directory's inode, and `DIR/arena`
    /// points to it. An arena already on tmpfs stays there (a flag cannot
    /// move the tables): asking for hugetlbfs then is an error, as is a
    /// hugetlbfs arena elsewhere than `hugetlbfs`.
    pub fn arena_file(&self, hugetlbfs: Option<&Path>) -> Result<(PathBuf, bool), StateError> {
        let link = self.arena_path();
        let existing = std::fs::symlink_metadata(&link);
        let is_link = existing.as_ref().is_ok_and(|m| m.file_type().is_symlink());
        if let Ok(m) = &existing {
            if !is_link && hugetlbfs.is_some() {
                return Err(StateError::Hugetlbfs {
                    path: hugetlbfs.unwrap_or(Path::new("")).to_owned(),
                    why: format!(
                        "this state directory keeps its arena on tmpfs ({}, {} bytes); its tables \
                         cannot move. Start without --state-hugetlbfs, or remove {} to start empty",
                        link.display(),
                        m.len(),
                        self.path.display()
                    ),
                });
            }
            if !is_link {
                return Ok((link, false));
            }
        }
        if is_link {
            let target = std::fs::read_link(&link).map_err(io("read the arena link", &link))?;
            if let Some(mount) = hugetlbfs {
                if target.parent() != Some(mount) {
                    return Err(StateError::Hugetlbfs {
                        path: mount.to_owned(),
                        why: format!(
                            "this state directory's arena is {}; give --state-hugetlbfs {}",
                            target.display(),
                            target.parent().unwrap_or(Path::new("/")).display()
                        ),
                    });
                }
            }
            check_hugetlbfs(target.parent().unwrap_or(Path::new("/")))?;
            return Ok((target, true));
        }
        let Some(mount) = hugetlbfs else {
            return Ok((link, false));
        };
        check_hugetlbfs(mount)?;
        let dir_meta = std::fs::metadata(&self.path).map_err(io("stat", &self.path))?;
        let target = mount.join(format!(
            "arrowpool-{}-{}.arena",
            rustix::process::geteuid().as_raw(),
            dir_meta.ino()
        ));
        std::os::unix::fs::symlink(&target, &link).map_err(io("link the arena", &link))?;
        Ok((target, true))
    }

    pub fn catalog_path(&self) -> PathBuf {
        self.path.join("catalog")
    }

    /// Opens the catalog (creating it for `geometry` if there is none).
    pub fn catalog(&self, geometry: Geometry) -> Result<(Catalog, Replay), StateError> {
        Catalog::open(&self.catalog_path(), geometry).map_err(StateError::Catalog)
    }
}
