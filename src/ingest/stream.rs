//! Writing row groups into the arena as they are decoded.
//!
//! With a size bound from the footer (`bound.rs`), the arena space is
//! reserved while the decoders start, and the IPC file is written while they
//! run: decoded units go through a bounded queue to the thread holding the
//! reservation; when a row group is complete (all its column-split units)
//! and every earlier row group has been placed, it is laid out by a
//! long-lived `FileWriter` over a counting sink (which tracks the file
//! position and the footer's blocks without copying data) and copied into the
//! next bytes of the reservation. Its batches are then dropped: the heap holds
//! a few row groups, never the table, and memory freed by one row group is
//! reused by the next.
//!
//! ```text
//!  reservation: | header | rg 0 | rg 1 | rg 2 | ...               | (unused, returned at seal)
//!                          ^ placed and copied in order             ^ EOS, footer, magic at the end
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_ipc::writer::FileWriter;
use arrow_schema::SchemaRef;

use super::decode::assemble;
use super::error::IngestError;
use super::plan::Unit;
use super::write::{options, write_region, Recorder};

/// Decoded units on their way from the decoder threads to the thread that
/// holds the reservation. Decoding starts before the reservation exists (the
/// server allocates its pages first, which takes a while on fresh memory), so
/// units wait here; at most `cap` of them, then decoders wait.
pub struct UnitQueue {
    state: Mutex<QueueState>,
    changed: Condvar,
    cap: usize,
}

#[derive(Default)]
struct QueueState {
    units: VecDeque<(usize, Vec<RecordBatch>)>,
    /// No more units will come.
    closed: bool,
    /// The writer gave up: pushing fails, so the pipeline stops.
    abandoned: bool,
}

impl UnitQueue {
    pub fn new(cap: usize) -> UnitQueue {
        UnitQueue {
            state: Mutex::new(QueueState::default()),
            changed: Condvar::new(),
            cap: cap.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a decoded unit; waits while the queue is full. Fails once the
    /// writer has given up.
    pub fn push(&self, unit: usize, batches: Vec<RecordBatch>) -> Result<(), IngestError> {
        let mut s = self.lock();
        while s.units.len() >= self.cap && !s.abandoned {
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        if s.abandoned {
            return Err(IngestError::Internal("the arena writer stopped".into()));
        }
        s.units.push_back((unit, batches));
        drop(s);
        self.changed.notify_all();
        Ok(())
    }

    /// The next unit, waiting for one; `None` once closed and empty.
    pub fn pop(&self) -> Option<(usize, Vec<RecordBatch>)> {
        let mut s = self.lock();
        loop {
            if let Some(u) = s.units.pop_front() {
                drop(s);
                self.changed.notify_all();
                return Some(u);
            }
            if s.closed || s.abandoned {
                return None;
            }
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// No more units (the pipeline ended).
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// True if the writer gave up while the pipeline was still running.
    pub fn is_abandoned(&self) -> bool {
        self.lock().abandoned
    }

    /// The writer stops taking units; queued ones are dropped. Only counts
    /// as giving up if the pipeline had not ended already.
    pub fn abandon(&self) {
        let mut s = self.lock();
        s.abandoned = !s.closed;
        s.units.clear();
        drop(s);
        self.changed.notify_all();
    }
}

/// Places and writes decoded units into the reservation.
pub struct StreamWriter<'d> {
    state: Mutex<State<'d>>,
    schema: SchemaRef,
    units: &'d [Unit],
    /// Units of each row group: `groups[g]` is a range of unit indices.
    groups: Vec<std::ops::Range<usize>>,
    group_of_unit: Vec<usize>,
    header_len: usize,
    prepare: &'d (dyn Fn(&mut [u8]) + Sync),
}

struct State<'d> {
    /// Lays the file out in order; its position is the file offset.
    layout: FileWriter<Recorder>,
    /// Reservation bytes not yet handed to a row group.
    tail: &'d mut [u8],
    next_group: usize,
    parts: Vec<Option<Vec<RecordBatch>>>,
    parts_left: Vec<usize>,
    ready: BTreeMap<usize, Vec<RecordBatch>>,
    /// Time spent copying into the arena, summed over threads.
    write_time: Duration,
}

/// The reservation turned out smaller than the file (the footer's size
/// statistics were wrong): the caller falls back to decoding everything first.
pub fn bound_too_small() -> IngestError {
    IngestError::BoundTooSmall
}

impl<'d> StreamWriter<'d> {
    /// Writes the file header into `dest` and prepares to place `units`.
    pub fn new(
        dest: &'d mut [u8],
        schema: SchemaRef,
        units: &'d [Unit],
        prepare: &'d (dyn Fn(&mut [u8]) + Sync),
    ) -> Result<StreamWriter<'d>, IngestError> {
        let internal = |e: arrow_schema::ArrowError| IngestError::Internal(e.to_string());
        let mut layout = FileWriter::try_new_with_options(
            Recorder::keeping(),
            &schema,
            options().map_err(internal)?,
        )
        .map_err(internal)?;
        let header = layout.get_mut().take_kept();
        if header.len() > dest.len() {
            return Err(bound_too_small());
        }
        let (head, tail) = dest.split_at_mut(header.len());
        prepare(head);
        head.copy_from_slice(&header);
        let mut groups: Vec<std::ops::Range<usize>> = Vec::new();
        let mut group_of_unit = Vec::with_capacity(units.len());
        for (i, u) in units.iter().enumerate() {
            match groups.last_mut() {
                Some(g)
                    if units[g.start].file == u.file && units[g.start].row_group == u.row_group =>
                {
                    g.end = i + 1
                }
                _ => groups.push(i..i + 1),
            }
            group_of_unit.push(groups.len() - 1);
        }
        let state = State {
            layout,
            tail,
            next_group: 0,
            parts: vec![None; units.len()],
            parts_left: groups.iter().map(|g| g.len()).collect(),
            ready: BTreeMap::new(),
            write_time: Duration::ZERO,
        };
        Ok(StreamWriter {
            state: Mutex::new(state),
            schema,
            units,
            groups,
            group_of_unit,
            header_len: header.len(),
            prepare,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<'d>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the batches of unit `u`; places (and writes) every row group
    /// that became placeable.
    pub fn unit_done(&self, u: usize, batches: Vec<RecordBatch>) -> Result<(), IngestError> {
        let internal = |e: arrow_schema::ArrowError| IngestError::Internal(e.to_string());
        let mut todo: Vec<(&'d mut [u8], Vec<RecordBatch>)> = Vec::new();
        {
            let mut s = self.lock();
            let g = self.group_of_unit[u];
            s.parts[u] = Some(batches);
            s.parts_left[g] -= 1;
            if s.parts_left[g] == 0 {
                let range = self.groups[g].clone();
                let parts: Vec<Vec<RecordBatch>> = s.parts[range.clone()]
                    .iter_mut()
                    .map(|p| p.take().unwrap_or_default())
                    .collect();
                let whole = assemble(&self.units[range], parts, &self.schema)?;
                s.ready.insert(g, whole);
            }
            loop {
                let next = s.next_group;
                let Some(batches) = s.ready.remove(&next) else {
                    break;
                };
                let start = s.layout.get_ref().position();
                for b in &batches {
                    s.layout.write(b).map_err(internal)?;
                }
                let len = s.layout.get_ref().position() - start;
                if len > s.tail.len() {
                    return Err(bound_too_small());
                }
                let (region, rest) = std::mem::take(&mut s.tail).split_at_mut(len);
                s.tail = rest;
                s.next_group += 1;
                todo.push((region, batches));
            }
        }
        let began = Instant::now();
        for (region, batches) in todo {
            (self.prepare)(region);
            write_region(region, self.header_len, &self.schema, &batches).map_err(internal)?;
        }
        self.lock().write_time += began.elapsed();
        Ok(())
    }

    /// Writes the end-of-stream marker and footer after the last row group.
    /// Returns the file length and the time spent copying (over all threads).
    pub fn finish(self) -> Result<(usize, Duration), IngestError> {
        let internal = |e: arrow_schema::ArrowError| IngestError::Internal(e.to_string());
        let s = self.state.into_inner().unwrap_or_else(|p| p.into_inner());
        let State {
            mut layout,
            tail,
            next_group,
            write_time,
            ..
        } = s;
        if next_group != self.groups.len() {
            return Err(IngestError::Internal(format!(
                "{} of {} row groups written",
                next_group,
                self.groups.len()
            )));
        }
        let body_end = layout.get_ref().position();
        layout.get_mut().keep(true);
        layout.finish().map_err(internal)?;
        let trailer = layout.get_mut().take_kept();
        let Some(dst) = tail.get_mut(..trailer.len()) else {
            return Err(bound_too_small());
        };
        (self.prepare)(dst);
        dst.copy_from_slice(&trailer);
        Ok((body_end + trailer.len(), write_time))
    }
}
