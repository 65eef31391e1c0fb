//! Parquet ingest by the server: read a Parquet file (or a directory of them),
//! decode to Arrow, write one IPC file into the arena, bind the name.
#![deny(unsafe_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow_array::{RecordBatch, RecordBatchReader};
use arrow_schema::SchemaRef;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;

use crate::protocol::ingest::{Ingest, IngestReply};
use crate::protocol::ObjectKind;
use crate::server::Shared;
use crate::store::ConnId;

/// Why an ingest failed. Every message names the file.
#[derive(Debug)]
pub enum IngestError {
    Open {
        path: PathBuf,
        err: std::io::Error,
    },
    NoFiles(PathBuf),
    NotParquet {
        path: PathBuf,
        err: String,
    },
    Decode {
        path: PathBuf,
        err: String,
    },
    SchemaMismatch {
        path: PathBuf,
        expected: String,
        found: String,
    },
    UnknownColumn {
        path: PathBuf,
        column: String,
        available: Vec<String>,
    },
    Store(String),
}

impl std::fmt::Display for IngestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IngestError::Open { path, err } => write!(f, "cannot open {}: {err}", path.display()),
            IngestError::NoFiles(p) => write!(f, "no .parquet files in directory {}", p.display()),
            IngestError::NotParquet { path, err } => write!(f, "{} is not a readable Parquet file: {err}", path.display()),
            IngestError::Decode { path, err } => write!(f, "cannot decode {}: {err}", path.display()),
            IngestError::SchemaMismatch { path, expected, found } => write!(
                f,
                "{} has a different schema than the first file of the directory (expected {expected}, found {found})",
                path.display()
            ),
            IngestError::UnknownColumn { path, column, available } => write!(
                f,
                "{} has no column {column:?}; available: {}",
                path.display(),
                available.join(", ")
            ),
            IngestError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for IngestError {}

/// The Parquet files behind `path`: the file itself, or the `.parquet` files of
/// a directory in name order.
pub fn parquet_files(path: &Path) -> Result<Vec<PathBuf>, IngestError> {
    let meta = std::fs::metadata(path).map_err(|err| IngestError::Open {
        path: path.into(),
        err,
    })?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|err| IngestError::Open {
            path: path.into(),
            err,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "parquet") && p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(IngestError::NoFiles(path.into()));
    }
    Ok(files)
}

/// Reads one file with the given column names (all when empty).
fn read_file(
    path: &Path,
    columns: &[String],
) -> Result<(SchemaRef, Vec<RecordBatch>, u64), IngestError> {
    let file = File::open(path).map_err(|err| IngestError::Open {
        path: path.into(),
        err,
    })?;
    let file_len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| IngestError::NotParquet {
            path: path.into(),
            err: e.to_string(),
        })?;
    let schema = builder.schema().clone();
    let builder = if columns.is_empty() {
        builder
    } else {
        let mut roots = Vec::with_capacity(columns.len());
        for c in columns {
            let idx = schema.index_of(c).map_err(|_| IngestError::UnknownColumn {
                path: path.into(),
                column: c.clone(),
                available: schema.fields().iter().map(|f| f.name().clone()).collect(),
            })?;
            roots.push(idx);
        }
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        builder.with_projection(mask)
    };
    let reader = builder
        .with_batch_size(64 * 1024)
        .build()
        .map_err(|e| IngestError::Decode {
            path: path.into(),
            err: e.to_string(),
        })?;
    let schema = reader.schema();
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IngestError::Decode {
            path: path.into(),
            err: e.to_string(),
        })?;
    Ok((schema, batches, file_len))
}

/// Runs an ingest request on the calling thread (the server runs it off the
/// I/O cores). The name is bound only once the whole table is in the arena.
pub fn ingest(
    shared: &Arc<Shared>,
    conn: ConnId,
    req: &Ingest,
) -> Result<IngestReply, IngestError> {
    let start = Instant::now();
    let files = parquet_files(Path::new(&req.path))?;
    let mut schema: Option<SchemaRef> = None;
    let mut batches = Vec::new();
    let mut parquet_bytes = 0;
    for f in &files {
        let (s, b, n) = read_file(f, &req.columns)?;
        match &schema {
            None => schema = Some(s),
            Some(first) if first.fields() != s.fields() => {
                return Err(IngestError::SchemaMismatch {
                    path: f.clone(),
                    expected: format!(
                        "{:?}",
                        first.fields().iter().map(|f| f.name()).collect::<Vec<_>>()
                    ),
                    found: format!(
                        "{:?}",
                        s.fields().iter().map(|f| f.name()).collect::<Vec<_>>()
                    ),
                })
            }
            Some(_) => {}
        }
        batches.extend(b);
        parquet_bytes += n;
    }
    let schema = schema.ok_or_else(|| IngestError::NoFiles(req.path.clone().into()))?;
    let decoded = start.elapsed();
    let bound = crate::ipc::file_size_bound(&schema, &batches) as u64;
    let write_start = Instant::now();
    let sealed = shared
        .put_with(conn, &req.name, ObjectKind::Table, bound, |dest| {
            crate::ipc::write_file(dest, &schema, &batches)
        })
        .map_err(|e| IngestError::Store(e.message))?;
    let bytes = shared
        .store()
        .list()
        .iter()
        .find(|e| e.name == req.name)
        .map_or(0, |e| e.bytes);
    let write = write_start.elapsed();
    Ok(IngestReply {
        version: sealed.version,
        rows: sealed.rows,
        bytes,
        parquet_bytes,
        files: files.len() as u64,
        read_ms: 0.0,
        decode_ms: decoded.as_secs_f64() * 1e3,
        write_ms: write.as_secs_f64() * 1e3,
        total_ms: start.elapsed().as_secs_f64() * 1e3,
        reader: "std::fs (read and decode not yet split)".into(),
    })
}
