//! Parquet ingest by the server: read a Parquet file (or a directory of them
//! with one schema), decode it on every core, write each unit's columns into
//! chunks of the arena as they are decoded, and publish the version that
//! references them once the whole table is there.
//!
//! ```text
//!  files.rs      path -> files (a directory's .parquet files in name order), descriptors
//!  footer.rs     footer -> ParquetMetaData (sans-IO metadata decoder), offsets checked
//!  schema.rs     target Arrow schema: which dictionaries stay, no view types; projection
//!  plan.rs       units (row group x columns) and extents (runs of column chunks to read)
//!  read.rs       extents -> Bytes: io_uring or pread, O_DIRECT or buffered, budgeted
//!  engine.rs     the io_uring and pread engines
//!  buffer.rs     aligned, reused read buffers and the read-ahead budget
//!  decode.rs     ParquetPushDecoder per unit, for the columns not direct
//!  direct.rs     flat numeric columns: arrow-rs's column reader straight into the arena
//!  pipeline.rs   reader (this thread) + one decoder thread per core
//!  dictionary.rs row groups' dictionaries -> one per column, narrow keys
//!  chunks.rs     each decoded unit -> a chunk (on its decoder thread); the manifest
//!  (ipc/write.rs the IPC layout without copying; a file written by several threads)
//!  remote.rs     s3:// gs:// az:// https:// URLs: objects listed, footers and
//!                extents fetched with ranged GETs (feature `object-store`)
//! ```
//! A forward pipeline: read -> decode -> write, each unit once, on the thread
//! that decoded it; the heap holds the units in flight (and the dictionary
//! columns' keys), never the table. The record batch decoder allocates on the
//! heap (arrow-rs cannot allocate in the arena), so its columns are copied
//! once; flat numeric columns are read by arrow-rs's column reader in small
//! steps straight into the arena (`direct.rs`).
//!
//! `unsafe` lives in `engine.rs` (io_uring submissions), `buffer.rs`
//! (uninitialized read buffers) and `read.rs` (which keeps both contracts);
//! the other files deny it.
//!
//! The reply's `read_ms` is the time the reader spent starting reads and
//! waiting for them; `decode_ms` (direct columns included, with their chunks'
//! page population) and `write_ms` are summed over the threads doing them;
//! the stages overlap, `total_ms` is the wall time.
//!
//! Nothing is visible before the publish: the chunks belong to the ingest's
//! own server-side connection, which a failure anywhere (or the end) closes,
//! aborting whatever is still pending; readers of the previous version keep
//! it, and the name still resolves to it.

#[allow(unsafe_code)] // aligned read buffers handed to io_uring
mod buffer;
mod chunks;
mod decode;
mod dictionary;
mod direct;
mod error;
mod files;
mod footer;
mod pipeline;
mod plan;
#[allow(unsafe_code)] // the reads' buffers while io_uring owns them
mod read;
#[cfg(feature = "object-store")]
pub mod remote;
mod schema;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arrow_array::RecordBatch;

use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};

use crate::pool::Pool;
use crate::protocol::ingest::{Ingest, IngestReply};
use crate::store::ConnId;

pub use error::IngestError;
pub use files::parquet_files;
pub use read::{CacheChoice, EngineChoice, ReadOptions};

/// Environment variable of the server that forces a path, for benchmarks,
/// diagnosis and tests: a comma list of `uring` or `pread` (engine), `direct`
/// or `buffered` (page cache), `records` (every column by the record batch
/// decoder, none read straight into the arena by `direct.rs`). Default:
/// io_uring if available; O_DIRECT unless the data is in the page cache;
/// flat numeric columns straight into the arena.
pub const ENV: &str = "ARROWPOOL_INGEST";

/// How ingests read and write, fixed when the server starts (from `ENV`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub read: ReadOptions,
    /// Bytes of read buffers kept between ingests (`--ingest-buffers`):
    /// the next ingest reads into memory that exists instead of faulting in
    /// fresh pages.
    pub kept_read_buffers: u64,
    /// Flat numeric columns read straight into the arena (`direct.rs`);
    /// off with `records` in `ENV`.
    pub direct_columns: bool,
}

impl Settings {
    /// Parses a value of `ENV` (unknown tokens are ignored).
    pub fn from_env_value(v: &str) -> Settings {
        Settings {
            read: ReadOptions::from_env_value(Some(v)),
            kept_read_buffers: DEFAULT_KEPT_READ_BUFFERS,
            direct_columns: !v.split(',').any(|t| t.trim() == "records"),
        }
    }

    /// The settings `ENV` gives this process (the defaults when it is unset).
    pub fn from_env() -> Settings {
        Settings::from_env_value(&std::env::var(ENV).unwrap_or_default())
    }
}
/// Read buffers kept between ingests by default: what one ingest has in
/// flight at most (the read-ahead budget and each buffer's rounding up to
/// 8 MiB), so a steady stream of ingests allocates none.
pub const DEFAULT_KEPT_READ_BUFFERS: u64 = 192 * 1024 * 1024;

/// Bytes of read buffers this process holds for ingests (all of them kept
/// for the next ingest once none runs).
pub fn kept_read_buffer_bytes() -> u64 {
    buffer::BufferPool::shared().free_bytes() as u64
}

/// Allocates up to `keep` bytes of read buffers for the next ingest now (the
/// server does this in the background after start): the first ingest then
/// reads into memory that exists. Pieces of `PREWARM_PIECE_BYTES` serve the
/// extents up to that size (a row group's columns split between decoders,
/// typically); larger ones are allocated as before. Returns the bytes added.
pub fn prewarm_read_buffers(keep: u64) -> u64 {
    buffer::BufferPool::shared().prewarm(keep as usize, PREWARM_PIECE_BYTES) as u64
}

const PREWARM_PIECE_BYTES: usize = 32 * 1024 * 1024;

/// Most decoder (and writer) threads, whatever the core count.
const THREADS_MAX: usize = 64;

/// Runs an ingest request on the calling thread (the server runs it on its
/// blocking pool, off the I/O cores), with one decoder thread per core.
pub fn ingest(
    pool: &Pool,
    settings: Settings,
    _client: ConnId,
    req: &Ingest,
) -> Result<IngestReply, IngestError> {
    let start = Instant::now();
    let options = settings.read;
    let _buffers = buffer::BufferPool::shared().begin_ingest(settings.kept_read_buffers as usize);
    // Its decoder threads inherit this mask (see `util::unpin_current_thread`).
    crate::util::unpin_current_thread();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, THREADS_MAX);
    let path = Path::new(&req.path);

    // Footers and schemas first: a bad file, a mixed directory or an unknown
    // column fails before any data is read.
    let mut inputs = Inputs::open(&req.path, &req.options)?;
    let paths = inputs.paths();
    let mut metadata = Vec::with_capacity(paths.len());
    for source in inputs.footers() {
        metadata.push(Arc::new(footer::read_metadata(source)?));
    }
    let not_parquet = |p: &Path, e: parquet::errors::ParquetError| IngestError::NotParquet {
        path: p.into(),
        err: e.to_string(),
    };
    let first = ArrowReaderMetadata::try_new(metadata[0].clone(), ArrowReaderOptions::new())
        .map_err(|e| not_parquet(&paths[0], e))?;
    let plain = schema::plain_schema(first.schema());
    let roots = schema::column_indices(&plain, &req.columns, &paths[0])?;
    let meta_refs: Vec<_> = metadata.iter().map(|m| m.as_ref()).collect();
    let keep = schema::dictionary_columns(first.schema(), &meta_refs);
    let target = schema::decode_schema(&plain, &keep);
    let mut readers = Vec::with_capacity(paths.len());
    for (i, (p, m)) in paths.iter().zip(&metadata).enumerate() {
        if i > 0 {
            let own = ArrowReaderMetadata::try_new(m.clone(), ArrowReaderOptions::new())
                .map_err(|e| not_parquet(p, e))?;
            if let Some(difference) =
                schema::difference(&plain, &schema::plain_schema(own.schema()))
            {
                return Err(IngestError::SchemaMismatch {
                    path: p.clone(),
                    first: paths[0].clone(),
                    difference,
                });
            }
        }
        // Decode straight to the target types; if the decoder cannot honour
        // the requested schema, keep its own and cast batch by batch (decode.rs).
        let with_target = ArrowReaderOptions::new().with_schema(target.clone());
        let reader = match ArrowReaderMetadata::try_new(m.clone(), with_target) {
            Ok(r) => r,
            Err(_) => ArrowReaderMetadata::try_new(m.clone(), ArrowReaderOptions::new())
                .map_err(|e| not_parquet(p, e))?,
        };
        readers.push(reader);
    }
    let out_schema = Arc::new(
        target
            .project(&roots)
            .map_err(|e| IngestError::Internal(e.to_string()))?,
    );
    let nested = out_schema.fields().iter().any(|f| match f.data_type() {
        arrow_schema::DataType::Dictionary(_, v) => schema::has_dictionary(v),
        t => schema::has_dictionary(t),
    });
    if nested {
        return Err(IngestError::Internal(
            "a nested dictionary type survived schema planning".into(),
        ));
    }

    // Whole row groups decode to one batch each (a get then builds few
    // arrays: 10 instead of 160 batches for 10M rows), unless a column is
    // large. A string column the footer cannot size (dictionary pages
    // decoded to plain values) may still overflow 32-bit offsets in one
    // batch: a decoding error then runs the ingest again in 64Ki-row
    // batches, which is also what a corrupt file costs before its error.
    let direct: Vec<bool> = (0..target.fields().len())
        .map(|r| {
            settings.direct_columns
                && !keep.get(r).copied().unwrap_or(false)
                && direct::is_direct(&meta_refs, &target, r)
        })
        .collect();
    let mut batching = plan::Batching::RowGroups;
    let (decoded, written) = loop {
        let plan = plan::plan(&meta_refs, &roots, |r| direct[r], threads, batching);
        let large = plan
            .units
            .iter()
            .any(|u| u.batch_rows > plan::SMALL_BATCH_ROWS);
        let mut attempt = || -> Result<_, IngestError> {
            let dictionaries =
                dictionary::Dictionaries::new(target.fields().iter().map(|f| f.data_type()));
            // Its chunks are pending on it until the publish; closing it (on every
            // path out of here, a panic included) aborts whatever is still pending.
            let conn = pool.server_conn();
            let mapping = pool.arena.mapping();
            let base = mapping.as_ptr() as usize;
            // One madvise per chunk instead of a page fault per 4 KiB page, for the
            // chunks this server has not written before.
            let prepare = move |part: &mut [u8]| {
                let offset = (part.as_ptr() as usize).wrapping_sub(base) as u64;
                mapping.populate_write_once(offset, part.len() as u64);
            };
            let placer = chunks::Placer::new(
                pool,
                conn.id(),
                &req.name,
                &plan.units,
                &target,
                &dictionaries,
                &prepare,
                path,
                &meta_refs,
            );
            let sink = |u: usize, batches: Vec<RecordBatch>, chunks: &[_]| {
                placer.place(u, batches, chunks)
            };
            let decoded = pipeline::run(
                inputs.files(options),
                &paths,
                &readers,
                &target,
                &plan,
                threads,
                &sink,
            )?;
            let written = placer.finish(&roots, &out_schema, threads)?;
            drop(conn);
            Ok((decoded, written))
        };
        match attempt() {
            Err(e @ IngestError::Decode { .. })
                if batching == plan::Batching::RowGroups && large =>
            {
                eprintln!(
                    "arrowpoold: ingest of {}: {e}; decoding again in batches of {} rows",
                    req.path,
                    plan::SMALL_BATCH_ROWS
                );
                batching = plan::Batching::Rows(plan::SMALL_BATCH_ROWS);
            }
            result => break result?,
        }
    };
    let total_ms = start.elapsed().as_secs_f64() * 1e3;
    Ok(IngestReply {
        version: written.sealed.version,
        rows: written.sealed.rows,
        bytes: written.bytes,
        parquet_bytes: decoded.read.bytes,
        files: paths.len() as u64,
        read_ms: decoded.read.io_time.as_secs_f64() * 1e3,
        decode_ms: (decoded.decode_time + written.direct).as_secs_f64() * 1e3,
        write_ms: written.write.as_secs_f64() * 1e3,
        total_ms,
        reader: decoded.read.reader,
    })
}

/// The files of one ingest: local Parquet files, or objects in a store.
enum Inputs {
    Local(Vec<files::Source>),
    #[cfg(feature = "object-store")]
    Remote(remote::Objects),
}

impl Inputs {
    /// Opens the file, the directory's files, or (a URL) the objects `path`
    /// names; `options` are settings of the object store, for URLs only.
    fn open(path: &str, options: &[(String, String)]) -> Result<Inputs, IngestError> {
        #[cfg(feature = "object-store")]
        if remote::is_object_url(path) {
            return Ok(Inputs::Remote(remote::Objects::open(path, options)?));
        }
        if !options.is_empty() {
            return Err(IngestError::Open {
                path: path.into(),
                err: std::io::Error::other(
                    "options are settings of an object store; a local path takes none",
                ),
            });
        }
        let paths = files::parquet_files(Path::new(path))?;
        files::ensure_descriptors(paths.len());
        let sources = paths
            .iter()
            .map(|p| files::Source::open(p))
            .collect::<Result<_, _>>()?;
        Ok(Inputs::Local(sources))
    }

    fn footers(&self) -> Vec<&dyn footer::FooterSource> {
        match self {
            Inputs::Local(sources) => sources.iter().map(|s| s as _).collect(),
            #[cfg(feature = "object-store")]
            Inputs::Remote(objects) => objects.objects.iter().map(|o| o as _).collect(),
        }
    }

    /// Each file's name (a URL for an object), for messages.
    fn paths(&self) -> Vec<std::path::PathBuf> {
        self.footers().iter().map(|f| f.path().to_owned()).collect()
    }

    fn files(&mut self, options: ReadOptions) -> pipeline::Files<'_> {
        match self {
            Inputs::Local(sources) => pipeline::Files::Local { sources, options },
            #[cfg(feature = "object-store")]
            Inputs::Remote(objects) => pipeline::Files::Remote(objects),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_the_environment_tokens() {
        let s = Settings::from_env_value("pread, buffered,unknown");
        assert_eq!(s.read.engine, EngineChoice::Pread);
        assert_eq!(s.read.cache, CacheChoice::Buffered);
        assert!(s.direct_columns);
        let d = Settings::from_env_value("");
        assert_eq!(
            (d.read.engine, d.read.cache),
            (EngineChoice::Auto, CacheChoice::Auto)
        );
        assert!(d.direct_columns);
        assert!(!Settings::from_env_value("buffered,records").direct_columns);
    }
}
