//! Why an ingest failed. Every message names the file and the problem.

use std::path::PathBuf;

use crate::pool::PoolError;

/// Why an ingest failed.
#[derive(Debug)]
pub enum IngestError {
    /// The path (or a file in the directory) cannot be opened or listed.
    Open {
        path: PathBuf,
        err: std::io::Error,
    },
    /// A directory without `.parquet` files.
    NoFiles(PathBuf),
    /// A FIFO, socket or device: ingest reads only regular files (opening a
    /// FIFO would block until a writer appears).
    NotRegularFile {
        path: PathBuf,
        kind: &'static str,
    },
    TooManyFiles {
        path: PathBuf,
        max: usize,
    },
    /// The file is not Parquet or its footer does not decode.
    NotParquet {
        path: PathBuf,
        err: String,
    },
    /// The footer decodes but describes data that cannot be in the file.
    CorruptMetadata {
        path: PathBuf,
        problem: String,
    },
    /// A read failed.
    Read {
        path: PathBuf,
        offset: u64,
        len: u64,
        err: std::io::Error,
    },
    /// The file ended before the column data the footer describes.
    Truncated {
        path: PathBuf,
        file_end: u64,
        needed_end: u64,
    },
    /// A page does not decode.
    Decode {
        path: PathBuf,
        row_group: usize,
        columns: String,
        err: String,
    },
    /// A file of a directory differs in schema from the first file.
    SchemaMismatch {
        path: PathBuf,
        first: PathBuf,
        difference: String,
    },
    UnknownColumn {
        path: PathBuf,
        column: String,
        available: Vec<String>,
    },
    /// The decoded table cannot go into the arena (too large, ...).
    Store {
        path: PathBuf,
        err: PoolError,
    },
    /// A bug, not the file's fault.
    Internal(String),
}

impl std::fmt::Display for IngestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IngestError::Open { path, err } => write!(f, "cannot open {}: {err}", path.display()),
            IngestError::NoFiles(p) => write!(f, "no .parquet files in directory {}", p.display()),
            IngestError::NotRegularFile { path, kind } => write!(
                f,
                "{} is a {kind}, not a regular file or a directory of them; ingest reads only regular Parquet files",
                path.display()
            ),
            IngestError::TooManyFiles { path, max } => {
                write!(f, "directory {} holds more than {max} .parquet files; ingest fewer at once", path.display())
            }
            IngestError::NotParquet { path, err } => {
                write!(f, "{} is not a readable Parquet file: {err}", path.display())
            }
            IngestError::CorruptMetadata { path, problem } => {
                write!(f, "{} has a corrupt Parquet footer: {problem}", path.display())
            }
            IngestError::Read { path, offset, len, err } => {
                write!(f, "cannot read {} ({len} bytes at offset {offset}): {err}", path.display())
            }
            IngestError::Truncated { path, file_end, needed_end } => write!(
                f,
                "{} is truncated: it ends at byte {file_end} but its footer places column data up to byte {needed_end}",
                path.display()
            ),
            IngestError::Decode { path, row_group, columns, err } => write!(
                f,
                "cannot decode {} (row group {row_group}, columns {columns}): {err}",
                path.display()
            ),
            IngestError::SchemaMismatch { path, first, difference } => write!(
                f,
                "{} has a different schema than {} (the first file of the directory): {difference}",
                path.display(),
                first.display()
            ),
            IngestError::UnknownColumn { path, column, available } => write!(
                f,
                "{} has no column {column:?}; available: {}",
                path.display(),
                available.join(", ")
            ),
            IngestError::Store { path, err } => {
                write!(f, "cannot store the table read from {}: {err}", path.display())
            }
            IngestError::Internal(e) => write!(f, "internal ingest error: {e}"),
        }
    }
}

impl std::error::Error for IngestError {}
