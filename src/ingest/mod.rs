//! Parquet ingest by the server: read a Parquet file (or a directory of them
//! with one schema), decode it on every core, write one Arrow IPC file into
//! the arena, and bind the name once the whole table is there.
//!
//! ```text
//!  files.rs    path -> files (a directory's .parquet files in name order), descriptors
//!  footer.rs   footer -> ParquetMetaData (sans-IO metadata decoder), offsets checked
//!  schema.rs   target Arrow schema: dictionaries decoded, no view types; projection
//!  plan.rs     units (row group x columns) and extents (runs of column chunks to read)
//!  read.rs     extents -> Bytes: io_uring or pread, O_DIRECT or buffered, budgeted
//!  engine.rs   the io_uring and pread engines
//!  buffer.rs   aligned, reused read buffers and the read-ahead budget
//!  decode.rs   ParquetPushDecoder per unit; units -> batches in file order
//!  pipeline.rs reader (this thread) + one decoder thread per core
//!  bound.rs    an upper bound of the IPC file's size from the footer
//!  stream.rs   row groups written into the reservation as they are decoded
//!  write.rs    IPC layout without copying; the whole table written by every core
//! ```
//! Reading, decoding and writing overlap when the footer bounds the table's
//! size (`bound.rs`, `stream.rs`): the reservation is made while the decoders
//! start, and row groups are copied into it in order as they complete, so the
//! heap never holds the table. Otherwise the table is decoded first and then
//! written (`write.rs`). Decoders allocate on the heap (arrow-rs cannot
//! allocate in the arena), so the write is the one copy of the table.
//!
//! `unsafe` lives in `engine.rs` (io_uring submissions), `buffer.rs`
//! (uninitialized read buffers) and `read.rs` (which keeps both contracts);
//! the other files deny it.
//!
//! The reply's `read_ms` is the time the reader spent starting reads and
//! waiting for them; `decode_ms` and `write_ms` are summed over the threads
//! doing them; the stages overlap, `total_ms` is the wall time.
//!
//! Nothing is visible before the seal: a failure anywhere aborts the pending
//! object (`Pool::put`), readers of the previous version keep it, and
//! the name still resolves to it.

mod bound;
#[allow(unsafe_code)] // aligned read buffers handed to io_uring
mod buffer;
mod decode;
#[allow(unsafe_code)] // io_uring submissions: buffers owned until their completion
mod engine;
mod error;
mod files;
mod footer;
mod pipeline;
mod plan;
#[allow(unsafe_code)] // the reads' buffers while io_uring owns them
mod read;
mod schema;
mod stream;
mod write;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;

use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};

use crate::pool::{Pool, PutError};
use crate::protocol::ingest::{Ingest, IngestReply};
use crate::store::{ConnId, ObjectKind, SealInfo};

pub use error::IngestError;
pub use files::parquet_files;
pub use read::{CacheChoice, EngineChoice, ReadOptions};

/// Environment variable of the server that forces a path, for benchmarks,
/// diagnosis and tests: a comma list of `uring` or `pread` (engine), `direct`
/// or `buffered` (page cache), and `decode-first` (decode the whole table
/// before reserving arena space, as for files without size statistics).
/// Default: io_uring if available; O_DIRECT unless the data is in the page
/// cache; write row groups as they are decoded when the footer bounds the size.
pub const ENV: &str = "ARROWPOOL_INGEST";

/// How ingests read and write, fixed when the server starts (from `ENV`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub read: ReadOptions,
    /// Decode the whole table before reserving space, even when the footer
    /// bounds its size.
    pub decode_first: bool,
}

impl Settings {
    /// Parses a value of `ENV` (unknown tokens are ignored).
    pub fn from_env_value(v: &str) -> Settings {
        Settings {
            read: ReadOptions::from_env_value(Some(v)),
            decode_first: v.split(',').any(|t| t.trim() == "decode-first"),
        }
    }

    /// The settings `ENV` gives this process (the defaults when it is unset).
    pub fn from_env() -> Settings {
        Settings::from_env_value(&std::env::var(ENV).unwrap_or_default())
    }
}
/// Most decoder (and writer) threads, whatever the core count.
const THREADS_MAX: usize = 64;

/// Runs an ingest request on the calling thread (the server runs it on its
/// blocking pool, off the I/O cores), with one decoder thread per core.
pub fn ingest(
    pool: &Pool,
    settings: Settings,
    conn: ConnId,
    req: &Ingest,
) -> Result<IngestReply, IngestError> {
    let start = Instant::now();
    let (options, decode_first) = (settings.read, settings.decode_first);
    // Its decoder threads inherit this mask (see `util::unpin_current_thread`).
    crate::util::unpin_current_thread();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, THREADS_MAX);
    let path = Path::new(&req.path);

    // Footers and schemas first: a bad file, a mixed directory or an unknown
    // column fails before any data is read.
    let paths = files::parquet_files(path)?;
    files::ensure_descriptors(paths.len());
    let mut sources = Vec::with_capacity(paths.len());
    let mut metadata = Vec::with_capacity(paths.len());
    for p in &paths {
        let source = files::Source::open(p)?;
        metadata.push(Arc::new(footer::read_metadata(&source)?));
        sources.push(source);
    }
    let not_parquet = |p: &Path, e: parquet::errors::ParquetError| IngestError::NotParquet {
        path: p.into(),
        err: e.to_string(),
    };
    let first = ArrowReaderMetadata::try_new(metadata[0].clone(), ArrowReaderOptions::new())
        .map_err(|e| not_parquet(&paths[0], e))?;
    let target = schema::plain_schema(first.schema());
    let roots = schema::column_indices(&target, &req.columns, &paths[0])?;
    let mut readers = Vec::with_capacity(paths.len());
    for (i, (p, m)) in paths.iter().zip(&metadata).enumerate() {
        if i > 0 {
            let own = ArrowReaderMetadata::try_new(m.clone(), ArrowReaderOptions::new())
                .map_err(|e| not_parquet(p, e))?;
            if let Some(difference) =
                schema::difference(&target, &schema::plain_schema(own.schema()))
            {
                return Err(IngestError::SchemaMismatch {
                    path: p.clone(),
                    first: paths[0].clone(),
                    difference,
                });
            }
        }
        // Decode straight to the plain types; if the decoder cannot honour the
        // requested schema, keep its own and cast batch by batch (decode.rs).
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
    if out_schema
        .fields()
        .iter()
        .any(|f| schema::has_dictionary(f.data_type()))
    {
        return Err(IngestError::Internal(
            "a dictionary type survived schema planning".into(),
        ));
    }

    let meta_refs: Vec<_> = metadata.iter().map(|m| m.as_ref()).collect();
    let plan = plan::plan(&meta_refs, &roots, threads);
    let job = Job {
        pool,
        conn,
        name: &req.name,
        path,
        readers: &readers,
        target: &target,
        schema: &out_schema,
        plan: &plan,
        options,
        threads,
    };
    let bound = bound::batches_bound(&meta_refs, &out_schema, &roots)
        .and_then(|b| job.file_bound(b))
        .filter(|_| !decode_first);
    let done = match bound {
        Some(bound) => match job.streaming(&mut sources, bound) {
            Err(e @ IngestError::BoundTooSmall) => {
                // Rare (a writer's wrong statistics) and twice the work: say so.
                eprintln!(
                    "arrowpoold: ingest of {}: {e}; decoding the whole table first",
                    path.display()
                );
                job.two_phase(&mut sources)?
            }
            other => other?,
        },
        None => job.two_phase(&mut sources)?,
    };
    let total_ms = start.elapsed().as_secs_f64() * 1e3;
    Ok(IngestReply {
        version: done.sealed.version,
        rows: done.sealed.rows,
        bytes: done.written as u64,
        parquet_bytes: done.decoded.read.bytes,
        files: paths.len() as u64,
        read_ms: done.decoded.read.io_time.as_secs_f64() * 1e3,
        decode_ms: done.decoded.decode_time.as_secs_f64() * 1e3,
        write_ms: done.write.as_secs_f64() * 1e3,
        total_ms,
        reader: done.decoded.read.reader,
    })
}

/// Everything both ways of writing need.
struct Job<'a> {
    pool: &'a Pool,
    conn: ConnId,
    name: &'a str,
    path: &'a Path,
    readers: &'a [ArrowReaderMetadata],
    /// All columns, plain types (what the decoders produce).
    target: &'a SchemaRef,
    /// The requested columns: the table's schema.
    schema: &'a SchemaRef,
    plan: &'a plan::Plan,
    options: ReadOptions,
    threads: usize,
}

/// A sealed ingest.
struct Done {
    sealed: SealInfo,
    written: usize,
    decoded: pipeline::Decoded,
    write: Duration,
}

impl Job<'_> {
    /// Adds the file header and footer to a bound of the batches' bytes.
    fn file_bound(&self, batches_bytes: u64) -> Option<u64> {
        let empty = write::layout(self.schema, &[]).ok()?;
        let batches: u64 = self
            .plan
            .units
            .iter()
            .map(|u| u.rows.div_ceil(decode::BATCH_ROWS as u64))
            .sum();
        // Each batch adds a 24-byte block to the footer.
        let fixed = (empty.file_len() + 64) as u64;
        batches_bytes
            .checked_add(fixed)?
            .checked_add(batches.checked_mul(32)?)
    }

    /// Maps a part of the arena's mapping ahead of the copy into it: one
    /// madvise instead of a page fault per 4 KiB page, for the chunks this
    /// server has not written before.
    fn prepare(&self) -> impl Fn(&mut [u8]) + Sync + '_ {
        let mapping = self.pool.arena.mapping();
        let base = mapping.as_ptr() as usize;
        move |part: &mut [u8]| {
            let offset = (part.as_ptr() as usize).wrapping_sub(base) as u64;
            mapping.populate_write_once(offset, part.len() as u64);
        }
    }

    /// Reserves `bound` bytes, then decodes and writes row group by row group
    /// into the reservation (`stream.rs`); the unused tail goes back at seal.
    fn streaming(&self, sources: &mut [files::Source], bound: u64) -> Result<Done, IngestError> {
        let prepare = self.prepare();
        let queue = stream::UnitQueue::new(4 * self.threads);
        let (put, decoded) = std::thread::scope(|scope| {
            // Decoding starts now; the reservation (and the allocation of its
            // pages) happens meanwhile on this thread.
            let pipeline = scope.spawn(|| {
                let sink = |u: usize, batches| queue.push(u, batches);
                let decoded = pipeline::run(
                    sources,
                    self.readers,
                    self.target,
                    self.plan,
                    self.options,
                    self.threads,
                    &sink,
                );
                queue.close();
                decoded
            });
            let put = self
                .pool
                .put(self.conn, self.name, ObjectKind::Table, bound, |dest| {
                    let writer = stream::StreamWriter::new(
                        dest,
                        self.schema.clone(),
                        &self.plan.units,
                        &prepare,
                    )?;
                    while let Some((u, batches)) = queue.pop() {
                        writer.unit_done(u, batches)?;
                    }
                    writer.finish()
                });
            if put.is_err() {
                queue.abandon();
            }
            let decoded = pipeline.join().unwrap_or_else(|_| {
                Err(IngestError::Internal(
                    "the decoding pipeline panicked".into(),
                ))
            });
            (put, decoded)
        });
        // The first cause wins. The writer gives up (abandons the queue) only
        // after its own failure; otherwise a decoding error explains an
        // incomplete write.
        let abandoned = queue.is_abandoned();
        match (put, decoded) {
            (Ok((sealed, written, write)), Ok(decoded)) => Ok(Done {
                sealed,
                written,
                decoded,
                write,
            }),
            (Ok(_), Err(e)) => Err(e),
            (Err(PutError::Write(IngestError::BoundTooSmall)), _) => {
                Err(IngestError::BoundTooSmall)
            }
            (Err(PutError::Pool(err)), _) => Err(self.store_error(err)),
            (Err(PutError::Write(_)), Err(e)) if !abandoned => Err(e),
            (Err(PutError::Write(e)), _) => Err(e),
        }
    }

    fn store_error(&self, err: crate::pool::PoolError) -> IngestError {
        IngestError::Store {
            path: self.path.into(),
            err,
        }
    }

    /// Decodes the whole table, then reserves its exact size and writes it
    /// with every core. For files whose footer gives no size bound.
    fn two_phase(&self, sources: &mut [files::Source]) -> Result<Done, IngestError> {
        let decoded_units: Vec<std::sync::Mutex<Vec<RecordBatch>>> = self
            .plan
            .units
            .iter()
            .map(|_| std::sync::Mutex::new(Vec::new()))
            .collect();
        let sink = |u: usize, batches: Vec<RecordBatch>| {
            if let Some(slot) = decoded_units.get(u) {
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = batches;
            }
            Ok(())
        };
        let decoded = pipeline::run(
            sources,
            self.readers,
            self.target,
            self.plan,
            self.options,
            self.threads,
            &sink,
        )?;
        let units: Vec<Vec<RecordBatch>> = decoded_units
            .into_iter()
            .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
            .collect();
        let batches = decode::assemble(&self.plan.units, units, self.schema)?;

        let layout = write::layout(self.schema, &batches)
            .map_err(|e| IngestError::Internal(e.to_string()))?;
        let prepare = self.prepare();
        let size = layout.file_len() as u64;
        let (sealed, written, write) = self
            .pool
            .put(self.conn, self.name, ObjectKind::Table, size, |dest| {
                write::write(dest, self.schema, &batches, &layout, self.threads, &prepare)
            })
            .map_err(|e| match e {
                PutError::Pool(err) => self.store_error(err),
                PutError::Write(e) => IngestError::Internal(format!("writing the table: {e}")),
            })?;
        // Freeing a table-sized heap takes a while; the client need not wait for it.
        let _ = std::thread::Builder::new()
            .name("ingest-free".into())
            .spawn(move || drop(batches));
        Ok(Done {
            sealed,
            written,
            decoded,
            write,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_the_environment_tokens() {
        let s = Settings::from_env_value("pread, buffered,decode-first,unknown");
        assert_eq!(s.read.engine, EngineChoice::Pread);
        assert_eq!(s.read.cache, CacheChoice::Buffered);
        assert!(s.decode_first);
        let d = Settings::from_env_value("");
        assert_eq!(
            (d.read.engine, d.read.cache, d.decode_first),
            (EngineChoice::Auto, CacheChoice::Auto, false)
        );
    }
}
