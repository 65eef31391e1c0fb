//! The read -> decode pipeline: the calling thread reads (it mostly waits on
//! io_uring), one decoder thread per core decodes units as soon as their
//! bytes are in, and the read-ahead budget keeps the reader at most
//! `READ_AHEAD_BYTES` ahead.
//!
//! ```text
//!  reader (this thread)          decoders (std::thread::scope, one per core)
//!  extents -> buffers --units--> ParquetPushDecoder per unit -> batches[unit]
//!       ^                                   |
//!       +---- budget: bytes released when a unit's buffers are dropped
//! ```
//! The first error (from a read or a decoder) cancels the rest: the reader
//! stops submitting and drains what is in flight, decoders skip the units
//! still queued.

use std::ops::Range;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use bytes::Bytes;
use parquet::arrow::arrow_reader::ArrowReaderMetadata;

use super::buffer::ReadBudget;
use super::decode::decode_unit;
use super::error::IngestError;
use super::files::Source;
use super::plan::Plan;
use super::read::{read_extents, ReadOptions, ReadStats};

/// Where the units' bytes come from.
pub enum Files<'a> {
    /// Local files, read with io_uring (or pread).
    Local {
        sources: &'a mut [Source],
        options: ReadOptions,
    },
    /// Objects in a store, fetched with ranged GETs.
    #[cfg(feature = "object-store")]
    Remote(&'a super::remote::Objects),
}

/// How far (in buffered Parquet bytes) reading may run ahead of decoding.
pub const READ_AHEAD_BYTES: u64 = 128 * 1024 * 1024;

/// A unit ready to decode: its index and its column chunks.
type Work = (usize, Vec<(Range<u64>, Bytes)>);

/// What the pipeline did.
#[derive(Debug)]
pub struct Decoded {
    pub read: ReadStats,
    /// Time spent decoding, summed over the decoder threads.
    pub decode_time: Duration,
}

/// Where decoded units go: called by the decoder thread that decoded unit
/// `u` (in any order of units), with its batches and its column chunks (for
/// the columns read straight into the arena).
pub type Sink<'a> =
    dyn Fn(usize, Vec<RecordBatch>, &[(Range<u64>, Bytes)]) -> Result<(), IngestError> + Sync + 'a;

/// Reads and decodes every unit of `plan` with `workers` decoder threads,
/// handing each unit's batches to `sink`. `readers[f]` is the Arrow view of
/// file `f` (its metadata with the target schema); `schema` is the full
/// target schema, for the decoders' output types.
pub fn run(
    files: Files<'_>,
    paths: &[std::path::PathBuf],
    readers: &[ArrowReaderMetadata],
    schema: &SchemaRef,
    plan: &Plan,
    workers: usize,
    sink: &Sink<'_>,
) -> Result<Decoded, IngestError> {
    let budget = ReadBudget::new(READ_AHEAD_BYTES);
    let first_error: Mutex<Option<IngestError>> = Mutex::new(None);
    let fail = |e: IngestError| {
        let mut slot = first_error.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(e);
        }
        drop(slot);
        budget.cancel();
    };
    let decode_time: Mutex<Duration> = Mutex::new(Duration::ZERO);
    let (tx, rx) = async_channel::unbounded::<Work>();

    let mut read = ReadStats::default();
    std::thread::scope(|scope| {
        let mut handles = Vec::with_capacity(workers);
        for _ in 0..workers {
            let rx = rx.clone();
            let (budget, fail, decode_time) = (&budget, &fail, &decode_time);
            handles.push(scope.spawn(move || {
                while let Ok((u, chunks)) = rx.recv_blocking() {
                    if !budget.is_cancelled() {
                        let began = Instant::now();
                        let unit = &plan.units[u];
                        let result = decode_unit(
                            &readers[unit.file],
                            schema,
                            unit,
                            &chunks,
                            &paths[unit.file],
                        );
                        *decode_time.lock().unwrap_or_else(|p| p.into_inner()) += began.elapsed();
                        if let Err(e) = result.and_then(|batches| sink(u, batches, &chunks)) {
                            fail(e);
                        }
                        drop(chunks);
                    }
                    budget.unit_finished();
                }
            }));
        }
        drop(rx);

        // Per unit: extents still being read, and the bytes of those done.
        let mut left: Vec<usize> = plan.units.iter().map(|u| u.extents.len()).collect();
        let mut got: Vec<Option<Bytes>> = vec![None; plan.extents.len()];
        let dispatch = |u: usize, got: &mut [Option<Bytes>]| -> Result<(), IngestError> {
            let unit = &plan.units[u];
            let mut chunks = Vec::with_capacity(unit.chunks.len());
            for c in &unit.chunks {
                let found = unit.extents.clone().find(|&e| {
                    let r = &plan.extents[e].range;
                    r.start <= c.start && c.end <= r.end
                });
                let Some(e) = found else {
                    return Err(IngestError::Internal(format!(
                        "column chunk {c:?} in no extent"
                    )));
                };
                let Some(bytes) = got[e].as_ref() else {
                    return Err(IngestError::Internal(format!(
                        "extent {e} dispatched before it was read"
                    )));
                };
                let base = plan.extents[e].range.start;
                chunks.push((
                    c.clone(),
                    bytes.slice((c.start - base) as usize..(c.end - base) as usize),
                ));
            }
            for e in unit.extents.clone() {
                got[e] = None;
            }
            budget.unit_dispatched();
            tx.send_blocking((u, chunks))
                .map_err(|_| IngestError::Internal("decoders are gone".into()))
        };
        let mut result = Ok(());
        for (u, unit) in plan.units.iter().enumerate() {
            if unit.extents.is_empty() {
                result = result.and_then(|()| dispatch(u, &mut got));
            }
        }
        if result.is_ok() {
            let done = |e: usize, bytes: Bytes| {
                let u = plan.extents[e].unit;
                got[e] = Some(bytes);
                left[u] -= 1;
                if left[u] == 0 {
                    dispatch(u, &mut got)?;
                }
                Ok(())
            };
            let r = match files {
                Files::Local { sources, options } => {
                    read_extents(sources, &plan.extents, options, &budget, done)
                }
                #[cfg(feature = "object-store")]
                Files::Remote(objects) => objects.read_extents(&plan.extents, &budget, done),
            };
            result = r.map(|stats| read = stats);
        }
        drop(tx);
        if let Err(e) = result {
            fail(e);
        }
        for h in handles {
            if h.join().is_err() {
                fail(IngestError::Internal("a decoder thread panicked".into()));
            }
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let decode_time = decode_time.into_inner().unwrap_or_else(|p| p.into_inner());
    Ok(Decoded { read, decode_time })
}
