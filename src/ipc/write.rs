//! Writing a table into the arena as one Arrow IPC file, with several
//! threads copying (ingest's decoded tables, Flight puts, the Rust client's
//! large puts).
//!
//! `ipc::write_file` copies batch after batch on one thread. Here the file is
//! laid out first, without copying data: a `FileWriter` over a counting sink
//! gives the exact size, the offset of every batch, and the header and footer
//! bytes. Then each thread writes a run of batches straight into its part of
//! the destination (its own `FileWriter`, whose header is discarded), and the
//! header and footer are copied in. The writer is deterministic for equal
//! inputs and options, so the parts line up; each part's length is checked,
//! and the server checks the whole file again before sealing.
//!
//! ```text
//! | magic+schema (header) | batch 0 | batch 1 | ... | batch n-1 | EOS, footer, len, magic |
//!                         |<- thread 0 ->|<- thread 1 ->| ...
//! ```

use std::io::Write;

use arrow_array::RecordBatch;
use arrow_ipc::writer::{FileWriter, IpcWriteOptions};
use arrow_ipc::MetadataVersion;
use arrow_schema::{ArrowError, DataType, Schema};

/// Whether `t` is or contains a dictionary.
pub fn has_dictionary(t: &DataType) -> bool {
    match t {
        DataType::Dictionary(_, _) => true,
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::ListView(f)
        | DataType::LargeListView(f)
        | DataType::FixedSizeList(f, _)
        | DataType::Map(f, _) => has_dictionary(f.data_type()),
        DataType::Struct(fields) => fields.iter().any(|f| has_dictionary(f.data_type())),
        _ => false,
    }
}

/// Where everything goes in the file.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Magic, padding and schema message.
    pub header: Vec<u8>,
    /// File offset just past each batch.
    pub batch_ends: Vec<usize>,
    /// End-of-stream marker, footer, footer length, magic.
    pub trailer: Vec<u8>,
}

impl Layout {
    pub fn file_len(&self) -> usize {
        self.body_end() + self.trailer.len()
    }

    fn body_end(&self) -> usize {
        self.batch_ends.last().copied().unwrap_or(self.header.len())
    }
}

pub(crate) fn options() -> Result<IpcWriteOptions, ArrowError> {
    // The same options as `ipc::write_file`: what every object in the arena uses.
    IpcWriteOptions::try_new(crate::ipc::IPC_ALIGNMENT, false, MetadataVersion::V5)
}

/// Counts bytes, keeping them only while `keep` is set: a `FileWriter` over
/// it lays a file out (positions, header, footer) without copying data.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    pos: usize,
    keep: bool,
    kept: Vec<u8>,
}

impl Recorder {
    pub(super) fn keeping() -> Recorder {
        Recorder {
            keep: true,
            ..Recorder::default()
        }
    }

    pub(super) fn keep(&mut self, keep: bool) {
        self.keep = keep;
    }

    /// The bytes kept so far (and stop keeping).
    pub(super) fn take_kept(&mut self) -> Vec<u8> {
        self.keep = false;
        std::mem::take(&mut self.kept)
    }

    pub(super) fn position(&self) -> usize {
        self.pos
    }
}

impl Write for Recorder {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.pos += buf.len();
        if self.keep {
            self.kept.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Lays out the IPC file of `batches` without copying their data.
pub fn layout(schema: &Schema, batches: &[RecordBatch]) -> Result<Layout, ArrowError> {
    let mut w = FileWriter::try_new_with_options(Recorder::keeping(), schema, options()?)?;
    let header = w.get_mut().take_kept();
    let mut batch_ends = Vec::with_capacity(batches.len());
    for b in batches {
        w.write(b)?;
        batch_ends.push(w.get_ref().position());
    }
    w.get_mut().keep(true);
    w.finish()?;
    let trailer = w.get_mut().take_kept();
    Ok(Layout {
        header,
        batch_ends,
        trailer,
    })
}

/// Writes `batches` into `part`, which must be exactly their laid-out
/// bytes; `header_len` is the length of the file header (magic and schema)
/// that a fresh `FileWriter` emits first and that is not part of `part`.
pub(super) fn write_region(
    part: &mut [u8],
    header_len: usize,
    schema: &Schema,
    batches: &[RecordBatch],
) -> Result<(), ArrowError> {
    let expected = part.len();
    let mut w = FileWriter::try_new_with_options(
        Region {
            dest: part,
            skip: header_len,
            at: 0,
        },
        schema,
        options()?,
    )?;
    for b in batches {
        w.write(b)?;
    }
    if w.get_ref().at != expected {
        return Err(ArrowError::IpcError(format!(
            "IPC batches took {} bytes where {expected} were laid out",
            w.get_ref().at
        )));
    }
    Ok(())
}

/// Writes into `dest` after discarding the first `skip` bytes.
struct Region<'a> {
    dest: &'a mut [u8],
    skip: usize,
    at: usize,
}

impl Write for Region<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut b = buf;
        if self.skip > 0 {
            let n = self.skip.min(b.len());
            self.skip -= n;
            b = &b[n..];
        }
        let end = self.at + b.len();
        let Some(dst) = self.dest.get_mut(self.at..end) else {
            return Err(std::io::Error::other("IPC batch larger than laid out"));
        };
        super::stream_copy::copy(dst, b);
        self.at = end;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes the file laid out by `layout` into `dest` with up to `threads`
/// threads; `prepare` is called on each thread's part before it is written
/// (to fault its pages in). Returns the file length and the time spent
/// writing, summed over the threads.
pub fn write(
    dest: &mut [u8],
    schema: &Schema,
    batches: &[RecordBatch],
    layout: &Layout,
    threads: usize,
    prepare: &(dyn Fn(&mut [u8]) + Sync),
) -> Result<(usize, std::time::Duration), ArrowError> {
    let len = layout.file_len();
    if dest.len() < len || layout.batch_ends.len() != batches.len() {
        return Err(ArrowError::MemoryError(format!(
            "IPC file of {len} bytes does not fit {} bytes",
            dest.len()
        )));
    }
    // Each thread's `FileWriter` would emit the dictionaries again for its
    // first batch, which the layout (one writer) has only once: tables with
    // dictionaries are written by one thread.
    let threads = if schema
        .fields()
        .iter()
        .any(|f| has_dictionary(f.data_type()))
    {
        1
    } else {
        threads
    };
    let header_len = layout.header.len();
    let body_end = layout.body_end();
    let (head, rest) = dest[..len].split_at_mut(header_len);
    let (mut body, tail) = rest.split_at_mut(body_end - header_len);
    head.copy_from_slice(&layout.header);
    tail.copy_from_slice(&layout.trailer);

    // Runs of batches of about equal bytes, one per thread.
    let runs = runs(&layout.batch_ends, header_len, threads.max(1));
    let time = std::thread::scope(|scope| -> Result<std::time::Duration, ArrowError> {
        let mut handles = Vec::with_capacity(runs.len());
        let mut start = header_len;
        for run in &runs {
            let end = layout.batch_ends[run.end - 1];
            let (part, after) = std::mem::take(&mut body).split_at_mut(end - start);
            body = after;
            start = end;
            let batches = &batches[run.clone()];
            handles.push(
                scope.spawn(move || -> Result<std::time::Duration, ArrowError> {
                    let began = std::time::Instant::now();
                    prepare(part);
                    write_region(part, header_len, schema, batches)?;
                    Ok(began.elapsed())
                }),
            );
        }
        let mut time = std::time::Duration::ZERO;
        for h in handles {
            time += h
                .join()
                .map_err(|_| ArrowError::IpcError("IPC writer thread panicked".into()))??;
        }
        Ok(time)
    })?;
    Ok((len, time))
}

/// Splits batches `0..ends.len()` into at most `threads` contiguous runs of
/// about equal bytes (batch i spans `ends[i-1]..ends[i]`, batch 0 starts at
/// `start`).
fn runs(ends: &[usize], start: usize, threads: usize) -> Vec<std::ops::Range<usize>> {
    let total = ends.last().map_or(0, |e| e - start);
    let mut runs = Vec::with_capacity(threads);
    let mut first = 0;
    for t in 1..=threads {
        let target = start + total * t / threads;
        let mut last = first;
        while last < ends.len() && (ends[last] <= target || t == threads) {
            last += 1;
        }
        if last > first {
            runs.push(first..last);
            first = last;
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, StringArray};
    use arrow_schema::{DataType, Field};
    use std::sync::Arc;

    #[test]
    fn parallel_write_matches_the_sequential_writer() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
        ]));
        let batches: Vec<RecordBatch> = (0..7)
            .map(|k| {
                let n = 1000 + 37 * k;
                RecordBatch::try_new(
                    schema.clone(),
                    vec![
                        Arc::new(Int64Array::from_iter_values(0..n)),
                        Arc::new(StringArray::from_iter(
                            (0..n).map(|i| (i % 5 != 0).then(|| format!("v{i}"))),
                        )),
                    ],
                )
                .unwrap()
            })
            .collect();
        let mut expected = vec![0u8; crate::ipc::file_size_bound(&schema, &batches)];
        let n = crate::ipc::write_file(&mut expected, &schema, &batches).unwrap();
        let layout = layout(&schema, &batches).unwrap();
        assert_eq!(layout.file_len(), n);
        for threads in [1, 2, 3, 16] {
            let mut dest = vec![0u8; n + 100];
            let (written, _) =
                write(&mut dest, &schema, &batches, &layout, threads, &|_| {}).unwrap();
            assert_eq!(written, n);
            assert_eq!(&dest[..n], &expected[..n], "threads {threads}");
        }
        assert!(write(
            &mut vec![0u8; n - 1],
            &schema,
            &batches,
            &layout,
            2,
            &|_| {}
        )
        .is_err());
    }

    #[test]
    fn runs_cover_every_batch_once() {
        let ends = [110, 120, 400, 410, 420, 1000];
        for threads in 1..8 {
            let r = runs(&ends, 100, threads);
            assert!(r.len() <= threads);
            let flat: Vec<usize> = r.iter().flat_map(|x| x.clone()).collect();
            assert_eq!(flat, (0..ends.len()).collect::<Vec<_>>());
        }
        assert!(runs(&[], 64, 4).is_empty());
    }
}
