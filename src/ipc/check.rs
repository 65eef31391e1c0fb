//! The seal-time check of an IPC file: its structure (footer, blocks, buffer
//! ranges), then every array's layout (`layout`), spread over the cores for
//! large tables. Readers skip validation because this ran.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};

use arrow_array::{Array, RecordBatch};
use arrow_buffer::Buffer;
use arrow_ipc::Block;
use arrow_schema::ArrowError;

use super::layout::check_array;
use super::{block_range, decode, footer};

/// What the server learns from checking a sealed IPC file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSummary {
    pub rows: u64,
    pub batches: u64,
    pub columns: u64,
}

/// Why a file was refused.
#[derive(Debug)]
pub enum CheckError {
    /// The file is malformed or its layout could make a reader go out of bounds.
    Invalid(ArrowError),
    /// Arrow's decoder panicked on the file (a missing check in arrow-rs; the
    /// file is refused all the same). The message says where, for a bug report.
    DecoderPanic(String),
}

impl std::fmt::Display for CheckError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckError::Invalid(e) => write!(f, "{e}"),
            CheckError::DecoderPanic(m) => {
                write!(f, "malformed IPC file (arrow's decoder panicked: {m})")
            }
        }
    }
}

impl std::error::Error for CheckError {}

impl From<ArrowError> for CheckError {
    fn from(e: ArrowError) -> Self {
        CheckError::Invalid(e)
    }
}

/// Files with less data than this are checked on the calling thread: spawning
/// helpers costs more than checking them.
const PARALLEL_CHECK_BYTES: usize = 16 << 20;

/// Checks an IPC file: magic, footer, schema, every block in bounds with a
/// record batch header, then every array's layout (`layout.rs` lists what that
/// covers) and every column's length against its batch. Counts rows. Cost: one
/// pass over offsets, keys and bitmaps, none over values; spread over the
/// machine's cores when the file is large.
pub fn check_file(bytes: &[u8]) -> Result<FileSummary, CheckError> {
    quietly(|| check_file_inner(bytes))?
}

fn check_file_inner(bytes: &[u8]) -> Result<FileSummary, CheckError> {
    let summary = check_structure(bytes)?;
    if bytes.is_empty() {
        return Ok(summary);
    }
    let ptr = std::ptr::NonNull::new(bytes.as_ptr() as *mut u8)
        .ok_or_else(|| ArrowError::ParseError("null buffer".into()))?;
    // SAFETY: the Buffer borrows `bytes` without owning it (the owner is a unit
    // value). Every Buffer and array derived from it is dropped before this
    // function returns, so none outlives the borrow.
    let buffer = unsafe { Buffer::from_custom_allocation(ptr, bytes.len(), Arc::new(())) };
    let (_, batches) = decode(&buffer, None)?;
    check_batches(&batches, bytes.len())?;
    Ok(summary)
}

/// Every column of every batch, on up to one thread per core.
fn check_batches(batches: &[RecordBatch], file_bytes: usize) -> Result<(), CheckError> {
    let units: Vec<(usize, usize)> = batches
        .iter()
        .enumerate()
        .flat_map(|(b, batch)| (0..batch.num_columns()).map(move |c| (b, c)))
        .collect();
    let check = |&(b, c): &(usize, usize)| -> Result<(), CheckError> {
        let batch = &batches[b];
        let name = batch.schema_ref().field(c).name().clone();
        let column = batch.column(c);
        if column.len() != batch.num_rows() {
            return Err(CheckError::Invalid(ArrowError::InvalidArgumentError(
                format!(
                    "column {name} of batch {b} has {} rows, its batch {}",
                    column.len(),
                    batch.num_rows()
                ),
            )));
        }
        check_array(&column.to_data(), &name).map_err(CheckError::Invalid)
    };
    // Small files (most puts) are checked here, without asking the kernel
    // anything.
    if file_bytes < PARALLEL_CHECK_BYTES || units.len() < 2 {
        return units.iter().try_for_each(check);
    }
    // The process's cores, not the calling thread's: a server core thread is
    // pinned to one, and helpers spawned from it unpin themselves.
    let threads = rustix::thread::sched_getaffinity(Some(rustix::process::getpid()))
        .map_or(1, |set| set.count() as usize);
    if threads < 2 {
        return units.iter().try_for_each(check);
    }
    let next = AtomicUsize::new(0);
    let work = || -> Result<(), CheckError> {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(unit) = units.get(i) else {
                return Ok(());
            };
            if let Err(e) = check(unit) {
                next.store(units.len(), Ordering::Relaxed); // stop the others early
                return Err(e);
            }
        }
    };
    std::thread::scope(|s| {
        let helpers: Vec<_> = (1..threads.min(units.len()))
            .map(|_| {
                s.spawn(|| {
                    crate::util::unpin_current_thread();
                    quietly(work).and_then(|r| r)
                })
            })
            .collect();
        let mine = work();
        helpers
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(CheckError::DecoderPanic("check thread died".into())))
            })
            .fold(mine, |acc, r| acc.and(r))
    })
}

thread_local! {
    /// Set while a check runs on this thread: its panics are expected, caught
    /// and reported as errors, so the panic hook records them instead of
    /// printing a backtrace an operator would take for a crash.
    static QUIET: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Runs `f`, turning a panic into `CheckError::DecoderPanic` with its message
/// and location, printed by nobody (the caller logs one line).
pub(crate) fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, CheckError> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(Cell::get) {
                let message = crate::util::panic_message(info.payload());
                let at = info
                    .location()
                    .map(|l| format!(" at {}:{}", l.file(), l.line()));
                LAST_PANIC.with(|p| {
                    *p.borrow_mut() = Some(format!("{message}{}", at.unwrap_or_default()))
                });
            } else {
                previous(info);
            }
        }));
    });
    let was = QUIET.with(|q| q.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    result.map_err(|_| {
        CheckError::DecoderPanic(
            LAST_PANIC
                .with(|p| p.borrow_mut().take())
                .unwrap_or_else(|| "unknown panic".into()),
        )
    })
}

/// The flatbuffer message of a block, verified, plus the block's byte range.
fn block_message<'a>(
    bytes: &'a [u8],
    block: &Block,
) -> Result<(arrow_ipc::Message<'a>, usize, usize), ArrowError> {
    let (start, end, meta) = block_range(bytes, block)?;
    let head = &bytes[start..start + meta];
    // Continuation marker 0xFFFFFFFF then a length, or (pre-1.0) just a length.
    let (len_at, msg_at) = if head[..4] == [0xff; 4] {
        (4, 8)
    } else {
        (0, 4)
    };
    let len = i32::from_le_bytes([
        head[len_at],
        head[len_at + 1],
        head[len_at + 2],
        head[len_at + 3],
    ]);
    let bad =
        || ArrowError::ParseError(format!("IPC message at offset {start} overruns its block"));
    let len = usize::try_from(len).map_err(|_| bad())?;
    if msg_at + len > meta {
        return Err(bad());
    }
    let msg = arrow_ipc::root_as_message(&head[msg_at..msg_at + len])
        .map_err(|e| ArrowError::ParseError(format!("invalid IPC message: {e}")))?;
    Ok((msg, start, end))
}

fn check_structure(bytes: &[u8]) -> Result<FileSummary, ArrowError> {
    let footer = footer(bytes)?;
    let schema = footer
        .schema()
        .ok_or_else(|| ArrowError::ParseError("IPC footer has no schema".into()))?;
    let schema = arrow_ipc::convert::try_fb_to_schema(schema)?;
    let mut rows = 0u64;
    let mut batches = 0u64;
    for block in footer.recordBatches().into_iter().flatten() {
        let (msg, _, _) = block_message(bytes, block)?;
        let rb = msg.header_as_record_batch().ok_or_else(|| {
            ArrowError::ParseError("record batch block holds another message".into())
        })?;
        check_buffers_in_body(&rb, block)?;
        if rb.compression().is_some() {
            return Err(ArrowError::ParseError(
                "compressed IPC buffers are not allowed in the arena".into(),
            ));
        }
        rows += u64::try_from(rb.length())
            .map_err(|_| ArrowError::ParseError("negative row count".into()))?;
        batches += 1;
    }
    for block in footer.dictionaries().into_iter().flatten() {
        let (msg, _, _) = block_message(bytes, block)?;
        let data = msg
            .header_as_dictionary_batch()
            .and_then(|d| d.data())
            .ok_or_else(|| {
                ArrowError::ParseError("dictionary block holds another message".into())
            })?;
        check_buffers_in_body(&data, block)?;
        // Decoding a compressed dictionary would allocate what its buffers
        // declare before anything checks it; the arena holds plain buffers.
        if data.compression().is_some() {
            return Err(ArrowError::ParseError(
                "compressed IPC buffers are not allowed in the arena".into(),
            ));
        }
    }
    Ok(FileSummary {
        rows,
        batches,
        columns: schema.fields().len() as u64,
    })
}

/// Every buffer a record batch message names must lie inside its block's body
/// (arrow's decoder would panic on one that does not).
fn check_buffers_in_body(rb: &arrow_ipc::RecordBatch<'_>, block: &Block) -> Result<(), ArrowError> {
    let body = u64::try_from(block.bodyLength())
        .map_err(|_| ArrowError::ParseError("negative body length".into()))?;
    for b in rb.buffers().into_iter().flatten() {
        let (Ok(offset), Ok(len)) = (u64::try_from(b.offset()), u64::try_from(b.length())) else {
            return Err(ArrowError::ParseError(
                "negative buffer offset or length".into(),
            ));
        };
        if offset.checked_add(len).is_none_or(|end| end > body) {
            return Err(ArrowError::ParseError(format!(
                "buffer at {offset} (+{len} bytes) lies outside its message body of {body} bytes"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, StringArray};
    use arrow_schema::{DataType, Field, Schema};

    fn file_of(schema: &Schema, batches: &[RecordBatch]) -> Vec<u8> {
        let mut dest = vec![0u8; super::super::file_size_bound(schema, batches)];
        let n = super::super::write_file(&mut dest, schema, batches).unwrap();
        dest.truncate(n);
        dest
    }

    #[test]
    fn column_shorter_than_its_batch_is_refused() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, false),
            Field::new("s", DataType::Utf8, false),
        ]));
        let columns: Vec<arrow_array::ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![1, 2, 3])),
            Arc::new(StringArray::from(vec!["x", "y"])),
        ];
        // SAFETY: test-only: a batch whose header claims 3 rows while column `s`
        // has 2, as a buggy writer could produce; it is only written, never read.
        let batch = unsafe { RecordBatch::new_unchecked(schema.clone(), columns, 3) };
        let e = check_file(&file_of(&schema, &[batch]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("column s of batch 0 has 2 rows, its batch 3"),
            "{e}"
        );
    }

    #[test]
    fn large_files_are_checked_on_every_core_and_errors_still_found() {
        let rows = 3_000_000;
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, false),
            Field::new("b", DataType::Int64, false),
            Field::new("c", DataType::Int64, false),
        ]));
        let col = || Arc::new(Int64Array::from_iter_values(0..rows)) as arrow_array::ArrayRef;
        let good = RecordBatch::try_new(schema.clone(), vec![col(), col(), col()]).unwrap();
        let bytes = file_of(&schema, &[good.clone(), good.clone()]);
        assert!(bytes.len() > PARALLEL_CHECK_BYTES);
        assert_eq!(check_file(&bytes).unwrap().rows, 2 * rows as u64);
        let short = Arc::new(Int64Array::from_iter_values(0..10)) as arrow_array::ArrayRef;
        // SAFETY: test-only, as above.
        let bad = unsafe {
            RecordBatch::new_unchecked(schema.clone(), vec![col(), col(), short], rows as usize)
        };
        let bytes = file_of(&schema, &[good, bad]);
        let e = check_file(&bytes).unwrap_err().to_string();
        assert!(e.contains("column c of batch 1"), "{e}");
    }

    #[test]
    fn panics_become_one_line_errors() {
        let e = quietly(|| -> () { panic!("boom {}", 7) }).unwrap_err();
        let CheckError::DecoderPanic(m) = e else {
            panic!("expected a decoder panic")
        };
        assert!(m.starts_with("boom 7 at src/ipc/check.rs:"), "{m}");
        // Outside `quietly` the hook is the previous one again: nothing to assert
        // without capturing stderr, but a normal result passes through.
        assert_eq!(quietly(|| 5).unwrap(), 5);
    }
}
