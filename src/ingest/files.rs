//! The files behind an ingest path, and their descriptors.

use std::fs::File;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use super::error::IngestError;

/// Most files one ingest reads (a directory of more is refused, not truncated).
pub const FILES_MAX: usize = 100_000;

/// The Parquet files behind `path`: the file itself, or the `.parquet` files of
/// a directory in name order. Hidden files and subdirectories are skipped
/// (partitioned `key=value/` layouts are not read).
pub fn parquet_files(path: &Path) -> Result<Vec<PathBuf>, IngestError> {
    let meta = std::fs::metadata(path).map_err(|err| IngestError::Open {
        path: path.into(),
        err,
    })?;
    if !meta.is_dir() {
        check_regular(path, &meta)?;
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    let entries = std::fs::read_dir(path).map_err(|err| IngestError::Open {
        path: path.into(),
        err,
    })?;
    for entry in entries {
        let entry = entry.map_err(|err| IngestError::Open {
            path: path.into(),
            err,
        })?;
        let p = entry.path();
        let visible = !entry.file_name().to_string_lossy().starts_with(['.', '_']);
        // Entries that are FIFOs or devices are skipped like subdirectories
        // (`file_type` does not follow symlinks; `Source::open` checks again).
        if visible && p.extension().is_some_and(|e| e == "parquet") && p.is_file() {
            files.push(p);
            if files.len() > FILES_MAX {
                return Err(IngestError::TooManyFiles {
                    path: path.into(),
                    max: FILES_MAX,
                });
            }
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(IngestError::NoFiles(path.into()));
    }
    Ok(files)
}

/// Refuses FIFOs, sockets and devices: only regular files are read.
fn check_regular(path: &Path, meta: &std::fs::Metadata) -> Result<(), IngestError> {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    let kind = if t.is_file() {
        return Ok(());
    } else if t.is_fifo() {
        "named pipe (FIFO)"
    } else if t.is_socket() {
        "socket"
    } else if t.is_block_device() || t.is_char_device() {
        "device"
    } else {
        "special file"
    };
    Err(IngestError::NotRegularFile {
        path: path.into(),
        kind,
    })
}

/// Descriptors an ingest of `files` files may hold at once (buffered and
/// `O_DIRECT` per file, plus the server's own). Raises the soft limit toward
/// the hard one when needed: the default soft limit (1024) would stop a
/// directory of a few hundred files.
pub fn ensure_descriptors(files: usize) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let want = 2 * files as u64 + 1024;
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_some_and(|c| c < want) {
        let current = match limit.maximum {
            Some(max) => Some(want.min(max)),
            None => Some(want),
        };
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current,
                maximum: limit.maximum,
            },
        );
    }
}

/// One open Parquet file: a buffered descriptor (metadata, cache probes,
/// fallback) and, when the reader asks for it, an `O_DIRECT` one.
#[derive(Debug)]
pub struct Source {
    pub path: PathBuf,
    pub buffered: File,
    pub direct: Option<File>,
    /// A direct read failed with EINVAL: read through the page cache from
    /// now on (the descriptor stays open while reads may still name it).
    pub direct_refused: bool,
    pub len: u64,
}

impl Source {
    /// Opens `path` without blocking (`O_NONBLOCK`: a FIFO that replaced the
    /// file since it was listed opens at once instead of waiting for a writer)
    /// and refuses anything but a regular file.
    pub fn open(path: &Path) -> Result<Source, IngestError> {
        let open_error = |err: std::io::Error| IngestError::Open {
            path: path.into(),
            err,
        };
        let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK;
        let fd = rustix::fs::open(path, flags, Mode::empty()).map_err(|e| open_error(e.into()))?;
        let buffered = File::from(fd);
        let meta = buffered.metadata().map_err(open_error)?;
        if meta.is_dir() {
            return Err(open_error(std::io::Error::other("is a directory")));
        }
        check_regular(path, &meta)?;
        Ok(Source {
            path: path.to_owned(),
            buffered,
            direct: None,
            direct_refused: false,
            len: meta.len(),
        })
    }

    /// Opens the `O_DIRECT` descriptor. False where the filesystem refuses it
    /// (tmpfs, some FUSE and network filesystems): reads stay buffered.
    pub fn open_direct(&mut self) -> bool {
        let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::DIRECT;
        match rustix::fs::open(&self.path, flags, Mode::empty()) {
            Ok(fd) => {
                self.direct = Some(File::from(fd));
                true
            }
            Err(_) => false,
        }
    }
}
