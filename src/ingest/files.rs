//! The files behind an ingest path, and their descriptors.
#![deny(unsafe_code)]

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
    pub fn open(path: &Path) -> Result<Source, IngestError> {
        let buffered = File::open(path).map_err(|err| IngestError::Open {
            path: path.into(),
            err,
        })?;
        let meta = buffered.metadata().map_err(|err| IngestError::Open {
            path: path.into(),
            err,
        })?;
        if meta.is_dir() {
            return Err(IngestError::Open {
                path: path.into(),
                err: std::io::Error::other("is a directory"),
            });
        }
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
