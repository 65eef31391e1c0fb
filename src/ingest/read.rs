//! The reader: turns the plan's extents into `Bytes`, several large reads in
//! flight, `O_DIRECT` when the data is not in the page cache.
//!
//! Each extent gets one aligned buffer, read in pieces of at most
//! `READ_BYTES`; up to the engine's queue depth pieces are in flight. An
//! extent whose pieces are all done is handed to `done` (which dispatches
//! units to the decoders). Before a new extent is started its buffer is
//! charged to the read-ahead budget, so the reader runs ahead of the decoders
//! by a bounded number of bytes.
//!
//! Direct or buffered: a page-cache probe (`preadv2(RWF_NOWAIT)` at a few
//! places) decides. Cached data is copied from the page cache (faster than the
//! device); uncached data is read with `O_DIRECT`, which skips that copy and
//! does not fill the cache with a file that is read once. A filesystem that
//! refuses `O_DIRECT` (at open, or with `EINVAL` on a read) gets buffered
//! reads.

use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::buffer::{BufferPool, ReadBudget, ReadBuf};
use super::error::IngestError;
use super::files::Source;
use super::plan::Extent;
use crate::engine::{Completion, Engine, Pread, Uring};

/// Largest single read.
pub const READ_BYTES: usize = 8 * 1024 * 1024;
/// io_uring reads in flight.
pub const QUEUE_DEPTH: usize = 8;
/// File offset and memory alignment of `O_DIRECT` reads (covers 512-byte
/// and 4 KiB logical blocks).
pub const DIRECT_ALIGN: u64 = 4096;
/// Page-cache probes per ingest.
const PROBES: u64 = 16;

/// Which engine reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineChoice {
    /// io_uring if the kernel allows it, else pread.
    Auto,
    Uring,
    Pread,
}

/// Whether reads bypass the page cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheChoice {
    /// Direct unless the data is mostly in the page cache.
    Auto,
    Direct,
    Buffered,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOptions {
    pub engine: EngineChoice,
    pub cache: CacheChoice,
}

impl ReadOptions {
    /// Parses the read tokens of `ARROWPOOL_INGEST` (for benchmarks and
    /// diagnosis): `uring`/`pread` and `direct`/`buffered`; others are ignored.
    pub fn from_env_value(v: Option<&str>) -> ReadOptions {
        let mut o = ReadOptions {
            engine: EngineChoice::Auto,
            cache: CacheChoice::Auto,
        };
        for token in v.unwrap_or("").split(',').map(str::trim) {
            match token {
                "uring" | "io_uring" => o.engine = EngineChoice::Uring,
                "pread" => o.engine = EngineChoice::Pread,
                "direct" => o.cache = CacheChoice::Direct,
                "buffered" => o.cache = CacheChoice::Buffered,
                _ => {}
            }
        }
        o
    }
}

/// What the reader did.
#[derive(Debug, Clone, Default)]
pub struct ReadStats {
    /// `io_uring` or `pread`, `/direct`, `/buffered` or `/direct+buffered`,
    /// and why io_uring was not used, if it was not.
    pub reader: String,
    pub bytes: u64,
    /// Time the reader spent starting reads and waiting for them (not
    /// waiting for the decoders to make room).
    pub io_time: Duration,
}

/// A piece of an extent in flight or waiting.
#[derive(Debug, Clone)]
struct Piece {
    extent: usize,
    /// Next file offset to read and where it goes in the buffer.
    file_offset: u64,
    buf_offset: usize,
    /// Bytes left to read in this piece.
    len: usize,
    direct: bool,
}

#[derive(Debug)]
struct ExtentState {
    buf: Option<ReadBuf>,
    /// File offset of the buffer's first byte (the extent start, aligned down
    /// when reading directly).
    buf_start: u64,
    pieces_left: usize,
}

/// Reads every extent and calls `done(extent, bytes)` (bytes = exactly the
/// extent's range) as each completes, in whatever order they complete.
/// Stops early, without error, when the budget is cancelled.
pub fn read_extents(
    sources: &mut [Source],
    extents: &[Extent],
    options: ReadOptions,
    budget: &Arc<ReadBudget>,
    done: impl FnMut(usize, Bytes) -> Result<(), IngestError>,
) -> Result<ReadStats, IngestError> {
    let (mut engine, engine_name): (Box<dyn Engine>, String) = match options.engine {
        EngineChoice::Pread => (Box::new(Pread::default()), "pread".into()),
        EngineChoice::Uring | EngineChoice::Auto => match Uring::new(QUEUE_DEPTH) {
            Ok(u) => (Box::new(u), "io_uring".into()),
            Err(e) if options.engine == EngineChoice::Auto => (
                Box::new(Pread::default()),
                format!("pread (io_uring unavailable: {e})"),
            ),
            Err(e) => {
                return Err(IngestError::Internal(format!(
                    "io_uring requested but unavailable: {e}"
                )));
            }
        },
    };
    let direct = match options.cache {
        CacheChoice::Direct => true,
        CacheChoice::Buffered => false,
        CacheChoice::Auto => cached_fraction(sources, extents) < 0.5,
    };
    if direct {
        for s in sources.iter_mut() {
            s.open_direct();
        }
    }
    let mut scheduler = Scheduler {
        engine: engine.as_mut(),
        sources,
        extents,
        budget,
        pool: BufferPool::shared(),
        states: Vec::with_capacity(extents.len()),
        pieces: Vec::new(),
        free_tags: Vec::new(),
        next_extent: 0,
        direct_reads: 0,
        buffered_reads: 0,
        bytes: 0,
        io_time: Duration::ZERO,
    };
    let result = scheduler.run(done);
    let mode = match (scheduler.direct_reads, scheduler.buffered_reads) {
        (0, _) => "buffered",
        (_, 0) => "direct",
        _ => "direct+buffered",
    };
    let bytes = scheduler.bytes;
    let scheduler_io_time = scheduler.io_time;
    drop(scheduler);
    result?;
    let (engine, why) = match engine_name.split_once(' ') {
        Some((e, why)) => (e.to_string(), format!(" {why}")),
        None => (engine_name, String::new()),
    };
    Ok(ReadStats {
        reader: format!("{engine}/{mode}{why}"),
        bytes,
        io_time: scheduler_io_time,
    })
}

struct Scheduler<'a> {
    engine: &'a mut dyn Engine,
    sources: &'a mut [Source],
    extents: &'a [Extent],
    budget: &'a Arc<ReadBudget>,
    pool: Arc<BufferPool>,
    states: Vec<ExtentState>,
    /// Pieces by tag; `None` once done.
    pieces: Vec<Option<Piece>>,
    free_tags: Vec<usize>,
    next_extent: usize,
    direct_reads: u64,
    buffered_reads: u64,
    bytes: u64,
    io_time: Duration,
}

impl Scheduler<'_> {
    fn run(
        &mut self,
        mut done: impl FnMut(usize, Bytes) -> Result<(), IngestError>,
    ) -> Result<(), IngestError> {
        let mut waiting: Vec<Piece> = Vec::new();
        let mut completions: Vec<Completion> = Vec::with_capacity(QUEUE_DEPTH);
        loop {
            if self.budget.is_cancelled() {
                return Ok(());
            }
            // Fill the queue: retries first, then pieces of new extents.
            while self.engine.in_flight() < self.engine.queue_depth() {
                if let Some(p) = waiting.pop() {
                    let t = Instant::now();
                    self.start(p)?;
                    self.io_time += t.elapsed();
                    continue;
                }
                if self.next_extent >= self.extents.len() {
                    break;
                }
                let need = self.buffer_len(self.next_extent) as u64;
                let fits = if self.engine.in_flight() == 0 {
                    self.budget.acquire(need)
                } else {
                    self.budget.try_acquire(need)
                };
                if !fits {
                    break;
                }
                if self.budget.is_cancelled() {
                    return Ok(());
                }
                waiting.extend(self.begin_extent(self.next_extent).into_iter().rev());
                self.next_extent += 1;
            }
            if self.engine.in_flight() == 0 {
                if waiting.is_empty() && self.next_extent >= self.extents.len() {
                    return Ok(());
                }
                continue;
            }
            completions.clear();
            let t = Instant::now();
            let waited = self.engine.wait(&mut completions);
            self.io_time += t.elapsed();
            if let Err(err) = waited {
                let path = self
                    .sources
                    .first()
                    .map(|s| s.path.clone())
                    .unwrap_or_default();
                return Err(IngestError::Read {
                    path,
                    offset: 0,
                    len: 0,
                    err,
                });
            }
            for (tag, result) in completions.drain(..) {
                let tag = tag as usize;
                let Some(mut piece) = self.pieces.get_mut(tag).and_then(Option::take) else {
                    return Err(IngestError::Internal(format!(
                        "completion for unknown read {tag}"
                    )));
                };
                self.free_tags.push(tag);
                let extent = &self.extents[piece.extent];
                let file_end = self.sources[extent.file].len;
                match result {
                    Ok(0) => {
                        if piece.file_offset < extent.range.end {
                            let path = self.sources[extent.file].path.clone();
                            return Err(IngestError::Truncated {
                                path,
                                file_end: piece.file_offset.min(file_end),
                                needed_end: extent.range.end,
                            });
                        }
                        self.piece_done(piece.extent, &mut done)?;
                    }
                    Ok(n) => {
                        let n = n.min(piece.len);
                        self.bytes += n as u64;
                        piece.file_offset += n as u64;
                        piece.buf_offset += n;
                        piece.len -= n;
                        if piece.len == 0 || piece.file_offset >= extent.range.end {
                            self.piece_done(piece.extent, &mut done)?;
                        } else {
                            waiting.push(piece);
                        }
                    }
                    Err(e)
                        if e.kind() == io::ErrorKind::Interrupted
                            || e.kind() == io::ErrorKind::WouldBlock =>
                    {
                        waiting.push(piece)
                    }
                    Err(e)
                        if piece.direct
                            && e.raw_os_error()
                                == Some(rustix::io::Errno::INVAL.raw_os_error()) =>
                    {
                        // The filesystem took O_DIRECT at open but refuses this read.
                        // Stay aligned (harmless) and read through the page cache.
                        // The descriptor stays open: queued reads may still name it.
                        self.sources[extent.file].direct_refused = true;
                        piece.direct = false;
                        waiting.push(piece);
                    }
                    Err(err) => {
                        let path = self.sources[extent.file].path.clone();
                        return Err(IngestError::Read {
                            path,
                            offset: piece.file_offset,
                            len: piece.len as u64,
                            err,
                        });
                    }
                }
            }
        }
    }

    fn direct_for(&self, extent: usize) -> bool {
        let source = &self.sources[self.extents[extent].file];
        source.direct.is_some() && !source.direct_refused
    }

    /// File range the buffer of `extent` covers.
    fn buffer_range(&self, extent: usize) -> (u64, u64) {
        let r = &self.extents[extent].range;
        if self.direct_for(extent) {
            (
                r.start / DIRECT_ALIGN * DIRECT_ALIGN,
                r.end.next_multiple_of(DIRECT_ALIGN),
            )
        } else {
            (r.start, r.end)
        }
    }

    fn buffer_len(&self, extent: usize) -> usize {
        let (s, e) = self.buffer_range(extent);
        (e - s) as usize
    }

    /// Allocates the buffer of `extent` and returns its pieces.
    fn begin_extent(&mut self, extent: usize) -> Vec<Piece> {
        let (start, end) = self.buffer_range(extent);
        let direct = self.direct_for(extent);
        let needed_end = self.extents[extent].range.end;
        let mut buf = ReadBuf::new(
            (end - start) as usize,
            DIRECT_ALIGN as usize,
            Some(self.pool.clone()),
        );
        buf.charge(self.budget.clone());
        let mut pieces = Vec::new();
        let mut offset = start;
        while offset < needed_end {
            let len = (end - offset).min(READ_BYTES as u64) as usize;
            pieces.push(Piece {
                extent,
                file_offset: offset,
                buf_offset: (offset - start) as usize,
                len,
                direct,
            });
            offset += len as u64;
        }
        debug_assert_eq!(self.states.len(), extent);
        self.states.push(ExtentState {
            buf: Some(buf),
            buf_start: start,
            pieces_left: pieces.len(),
        });
        pieces
    }

    fn start(&mut self, piece: Piece) -> Result<(), IngestError> {
        let file = self.extents[piece.extent].file;
        let source = &self.sources[file];
        let fd = match (&source.direct, piece.direct && !source.direct_refused) {
            (Some(d), true) => d.as_fd(),
            _ => source.buffered.as_fd(),
        };
        let state = &mut self.states[piece.extent];
        let Some(buf) = state.buf.as_mut() else {
            return Err(IngestError::Internal(
                "read into a buffer already handed out".into(),
            ));
        };
        if piece.buf_offset + piece.len > buf.len() {
            return Err(IngestError::Internal("read beyond its buffer".into()));
        }
        let tag = match self.free_tags.pop() {
            Some(t) => t,
            None => {
                self.pieces.push(None);
                self.pieces.len() - 1
            }
        };
        let dst = buf.as_mut_ptr().wrapping_add(piece.buf_offset);
        if piece.direct {
            self.direct_reads += 1;
        } else {
            self.buffered_reads += 1;
        }
        let (offset, len) = (piece.file_offset, piece.len);
        self.pieces[tag] = Some(piece);
        // SAFETY: `dst..dst+len` lies inside the buffer (checked above), which
        // `self.states` owns and does not touch until every piece of the
        // extent has completed (`pieces_left`); the descriptor belongs to
        // `self.sources`, borrowed for the scheduler's whole life, and is
        // never closed during it (a refused O_DIRECT descriptor only stops
        // being used: a queued read may still name it). If the
        // scheduler is dropped with reads in flight, its Drop drains the
        // engine first, or leaks the buffers if it cannot.
        let started = unsafe { self.engine.start(fd, dst, len, offset, tag as u64) };
        started.map_err(|err| {
            self.pieces[tag] = None;
            self.free_tags.push(tag);
            IngestError::Read {
                path: self.sources[file].path.clone(),
                offset,
                len: len as u64,
                err,
            }
        })
    }

    fn piece_done(
        &mut self,
        extent: usize,
        done: &mut impl FnMut(usize, Bytes) -> Result<(), IngestError>,
    ) -> Result<(), IngestError> {
        let state = &mut self.states[extent];
        state.pieces_left -= 1;
        if state.pieces_left > 0 {
            return Ok(());
        }
        let Some(buf) = state.buf.take() else {
            return Err(IngestError::Internal("extent completed twice".into()));
        };
        let range = self.extents[extent].range.clone();
        let valid = (range.end - state.buf_start) as usize;
        // SAFETY: every piece of this extent has completed, and together the
        // pieces cover the buffer from its start up to at least the extent's
        // end (a piece only completes once it has read its full length or
        // reached the extent end; a short read is continued, an early end of
        // file is an error). No read of this buffer is in flight.
        let bytes = unsafe { buf.into_bytes(valid) };
        let skip = (range.start - state.buf_start) as usize;
        done(extent, bytes.slice(skip..))
    }
}

impl Drop for Scheduler<'_> {
    fn drop(&mut self) {
        if self.engine.in_flight() > 0 && !self.engine.drain() {
            // The kernel may still write into these buffers: never free them.
            for s in self.states.drain(..) {
                std::mem::forget(s.buf);
            }
        }
    }
}

/// The share of sampled places of the extents that are in the page cache.
/// Probes with `preadv2(RWF_NOWAIT)`, which reads only cached data.
fn cached_fraction(sources: &[Source], extents: &[Extent]) -> f64 {
    let total: u64 = extents.iter().map(|e| e.range.end - e.range.start).sum();
    if total == 0 {
        return 1.0;
    }
    let mut page = [0u8; 4096];
    let mut hits = 0;
    for i in 0..PROBES {
        let mut at = total * (2 * i + 1) / (2 * PROBES);
        let Some(e) = extents.iter().find(|e| {
            let len = e.range.end - e.range.start;
            if at < len {
                true
            } else {
                at -= len;
                false
            }
        }) else {
            continue;
        };
        let mut bufs = [io::IoSliceMut::new(&mut page)];
        let fd = sources[e.file].buffered.as_fd();
        if let Ok(n) = rustix::io::preadv2(
            fd,
            &mut bufs,
            e.range.start + at,
            rustix::io::ReadWriteFlags::NOWAIT,
        ) {
            if n > 0 {
                hits += 1;
            }
        }
    }
    hits as f64 / PROBES as f64
}
