//! Flat numeric columns read straight into the arena.
//!
//! A top-level `INT32`, `INT64`, `FLOAT` or `DOUBLE` column whose Arrow type
//! holds the Parquet values unchanged (integers of 32 and 64 bits, floats,
//! dates, times, durations, timestamps; see `width`), required or optional,
//! is the bulk of the tables this server holds. The record batch reader would decode it into fresh heap
//! arrays (zeroed, then filled), which the chunk writer then copies into the
//! arena: three passes over memory for each value. Here arrow-rs's column
//! reader (`parquet::column::reader`, its public low-level API: pages,
//! decompression, PLAIN and dictionary decoding, v1 and v2 pages, definition
//! levels) decodes 64Ki values at a time into a small reused buffer that
//! stays in cache, and each step is copied to its place in the arena (nulls
//! spread out by the definition levels, which also give the validity bitmap).
//! Nothing of Parquet's decoding is ours; we only place the values.
//!
//! Measured with `tools/decode-probe` on the loadgen file (8 such columns, 10
//! row groups, one thread): record batches then a copy 909-971 ms, the column
//! reader in steps into the destination 547-585 ms (docs/INGEST.md).
//!
//! The values land in a chunk of their own, laid out here (not an IPC file):
//! for each batch, for each column, its validity bitmap (optional columns)
//! then its values, each buffer at a multiple of 64 bytes. The manifest
//! names the buffers directly (`ColumnLayout`), as it does for columns of IPC
//! files; the version's own IPC file is what readers open.
//! ```text
//!  chunk: | b0: [validity a] [values a] [values b] | b1: [validity a] [values a] [values b] | ...
//! ```

use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use arrow_buffer::{ArrowNativeType, ToByteSlice};
use arrow_schema::{DataType, Schema};
use bytes::Bytes;
use parquet::basic::Type as PhysicalType;
use parquet::column::reader::{get_column_reader, ColumnReader, ColumnReaderImpl};
use parquet::data_type::DataType as ParquetType;
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, RowGroupMetaData};
use parquet::file::reader::{ChunkReader, Length};
use parquet::file::serialized_reader::SerializedPageReader;

use crate::ipc::manifest::{BufferRef, ColumnLayout, Node};

/// Values decoded per step: 64Ki values (at most 512 KiB) stay in cache
/// between the decoder writing them and the copy into the arena reading them.
const STEP: usize = 64 * 1024;

/// Where each buffer starts in the chunk (and its length is rounded up to).
const ALIGN: u64 = crate::ipc::IPC_ALIGNMENT as u64;

/// Whether top-level column `root` of `target` reads directly in every file:
/// one leaf, not repeated, at most optional, its physical type exactly the
/// target type's, and in every row group as many values (nulls included) as
/// the row group has rows. The chunk is sized from the footer's row counts
/// before any page is read; a footer whose counts disagree goes through the
/// record batch decoder, which reports the rows it really found.
pub fn is_direct(files: &[&ParquetMetaData], target: &Schema, root: usize) -> bool {
    let Some(field) = target.fields().get(root) else {
        return false;
    };
    files.iter().all(|m| {
        let schema = m.file_metadata().schema_descr();
        let leaves = super::plan::leaves_by_root(schema);
        let [leaf] = leaves.get(root).map_or(&[][..], |l| &l[..]) else {
            return false;
        };
        let col = schema.column(*leaf);
        col.path().parts().len() == 1
            && col.max_rep_level() == 0
            && col.max_def_level() <= 1
            && width(col.physical_type(), field.data_type()).is_some()
            && m.row_groups()
                .iter()
                .all(|rg| rg.column(*leaf).num_values() == rg.num_rows())
    })
}

/// Bytes of one value when `physical` decodes to `t` without conversion:
/// the types arrow-rs's primitive reader gets by reinterpreting the values
/// (`coerce_i32`, `coerce_i64` in its `primitive_array.rs`), not those it
/// computes (`Int8`, `Int16`, unsigned of 8 and 16 bits, `Date64` from days,
/// decimals, timestamps from `INT32` or `INT96`).
fn width(physical: PhysicalType, t: &DataType) -> Option<u64> {
    use DataType::*;
    match (physical, t) {
        (PhysicalType::INT32, Int32 | UInt32 | Date32 | Time32(_))
        | (PhysicalType::FLOAT, Float32) => Some(4),
        (
            PhysicalType::INT64,
            Int64 | UInt64 | Date64 | Time64(_) | Duration(_) | Timestamp(_, _),
        )
        | (PhysicalType::DOUBLE, Float64) => Some(8),
        _ => None,
    }
}

/// One column read directly: its leaf in the file, its value width, whether
/// it has a validity bitmap, whether its field may hold nulls.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub leaf: usize,
    width: u64,
    optional: bool,
    nullable: bool,
}

impl Column {
    /// Column `root` of `target` in file `metadata` (`None` unless `is_direct`).
    pub fn new(metadata: &ParquetMetaData, target: &Schema, root: usize) -> Option<Column> {
        let schema = metadata.file_metadata().schema_descr();
        let leaves = super::plan::leaves_by_root(schema);
        let [leaf] = leaves.get(root).map_or(&[][..], |l| &l[..]) else {
            return None;
        };
        let col = schema.column(*leaf);
        let field = target.fields().get(root)?;
        Some(Column {
            leaf: *leaf,
            width: width(col.physical_type(), field.data_type())?,
            optional: col.max_def_level() == 1,
            nullable: field.is_nullable(),
        })
    }

    fn validity_bytes(&self, rows: usize) -> u64 {
        if self.optional {
            (rows as u64).div_ceil(8).next_multiple_of(ALIGN)
        } else {
            0
        }
    }

    fn value_bytes(&self, rows: usize) -> u64 {
        (rows as u64 * self.width).next_multiple_of(ALIGN)
    }
}

/// Bytes of the chunk holding `columns` for batches of `batch_rows` rows;
/// `None` past `u64` (row counts come from the footer, which may lie).
pub fn chunk_bytes(columns: &[Column], batch_rows: &[usize]) -> Option<u64> {
    let mut total = 0u64;
    for &n in batch_rows {
        for c in columns {
            let values = (n as u64)
                .checked_mul(c.width)?
                .checked_next_multiple_of(ALIGN)?;
            total = total
                .checked_add(values)?
                .checked_add(c.validity_bytes(n))?;
        }
    }
    Some(total)
}
/// The column chunks read for a unit, seen as the file they came from.
struct Chunk {
    /// File offset of `bytes[0]`.
    start: u64,
    bytes: Bytes,
}

impl Length for Chunk {
    fn len(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }
}

impl ChunkReader for Chunk {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        use bytes::Buf;
        let at = start
            .checked_sub(self.start)
            .filter(|&a| a <= self.bytes.len() as u64);
        let at = at.ok_or_else(|| outside(start, 0))?;
        Ok(self.bytes.slice(at as usize..).reader())
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        let at = start.checked_sub(self.start).map(|a| a as usize);
        let range = at.and_then(|a| Some(a..a.checked_add(length)?));
        match range {
            Some(r) if r.end <= self.bytes.len() => Ok(self.bytes.slice(r)),
            _ => Err(outside(start, length)),
        }
    }
}

fn outside(start: u64, length: usize) -> ParquetError {
    ParquetError::General(format!(
        "bytes {start}..+{length} lie outside the column chunks read"
    ))
}

/// Decodes `columns` of row group `rg` (read into `chunks`: file range and
/// bytes) into `dest`, which lies at arena offset `base` and holds
/// `chunk_bytes(columns, batch_rows)` bytes, batch after batch as the module
/// doc shows. Returns per batch the columns' layouts, in `columns` order.
/// An error names the column (its index in `columns`, if one failed) and the
/// problem; the caller names the file and the column.
pub fn decode(
    metadata: &ParquetMetaData,
    rg: usize,
    columns: &[Column],
    batch_rows: &[usize],
    chunks: &[(Range<u64>, Bytes)],
    dest: &mut [u8],
    base: u64,
) -> Result<Vec<Vec<ColumnLayout>>, (Option<usize>, String)> {
    if Some(dest.len() as u64) != chunk_bytes(columns, batch_rows) {
        return Err((None, "the chunk is not the size of its columns".into()));
    }
    if !base.is_multiple_of(ALIGN) {
        let e = format!("the chunk at arena offset {base} is not {ALIGN}-byte aligned");
        return Err((None, e));
    }
    let row_group = metadata
        .row_groups()
        .get(rg)
        .ok_or_else(|| (None, format!("row group {rg} is not in the file")))?;
    // Where each (batch, column)'s buffers start in `dest`.
    let mut at = 0u64;
    let mut places = vec![Vec::with_capacity(columns.len()); batch_rows.len()];
    for (b, &n) in batch_rows.iter().enumerate() {
        for c in columns {
            places[b].push((at, at + c.validity_bytes(n)));
            at += c.validity_bytes(n) + c.value_bytes(n);
        }
    }
    let mut layouts = vec![Vec::with_capacity(columns.len()); batch_rows.len()];
    for (k, c) in columns.iter().enumerate() {
        let found: Vec<(Range<usize>, Range<usize>, usize)> = batch_rows
            .iter()
            .enumerate()
            .map(|(b, &n)| {
                let (v, x) = places[b][k];
                (
                    v as usize..(v + c.validity_bytes(n)) as usize,
                    x as usize..(x + c.value_bytes(n)) as usize,
                    n,
                )
            })
            .collect();
        // arrow-rs is not expected to panic on bad pages, but a corrupt file
        // must never take the server down.
        let nulls = catch_unwind(AssertUnwindSafe(|| {
            column(metadata, row_group, c, &found, chunks, dest)
        }))
        .map_err(|panic| {
            format!(
                "the decoder failed on corrupt data ({})",
                crate::util::panic_message(&*panic)
            )
        })
        .and_then(|r| r)
        .map_err(|e| (Some(k), e))?;
        for (b, (&n, &null_count)) in batch_rows.iter().zip(&nulls).enumerate() {
            let (v, x) = places[b][k];
            let validity_len = if null_count == 0 {
                0
            } else {
                (n as u64).div_ceil(8)
            };
            let validity = buffer(base + v, validity_len);
            let values = buffer(base + x, n as u64 * c.width);
            layouts[b].push(ColumnLayout {
                nodes: vec![Node {
                    length: n as i64,
                    null_count: null_count as i64,
                }],
                buffers: vec![validity, values],
                variadic: Vec::new(),
            });
        }
    }
    Ok(layouts)
}

/// A buffer of `length` bytes at arena offset `offset`; an empty one has no
/// place (as the manifest of an IPC file records it).
fn buffer(offset: u64, length: u64) -> BufferRef {
    if length == 0 {
        BufferRef {
            offset: 0,
            length: 0,
        }
    } else {
        BufferRef { offset, length }
    }
}

/// One column, all batches (`(validity range, values range, rows)` in
/// `dest`); returns each batch's null count.
fn column(
    metadata: &ParquetMetaData,
    row_group: &RowGroupMetaData,
    c: &Column,
    batches: &[(Range<usize>, Range<usize>, usize)],
    chunks: &[(Range<u64>, Bytes)],
    dest: &mut [u8],
) -> Result<Vec<usize>, String> {
    let meta = row_group.column(c.leaf);
    let (start, len) = meta.byte_range();
    let (range, bytes) = chunks
        .iter()
        .find(|(r, _)| r.start <= start && start.saturating_add(len) <= r.end)
        .ok_or_else(|| format!("column chunk at {start}..+{len} was not read"))?;
    let chunk = Arc::new(Chunk {
        start: range.start,
        bytes: bytes.clone(),
    });
    let rows = row_group.num_rows().max(0) as usize;
    let pages = SerializedPageReader::new(chunk, meta, rows, None).map_err(|e| e.to_string())?;
    let descr = metadata.file_metadata().schema_descr().column(c.leaf);
    let e = |e: ParquetError| e.to_string();
    match get_column_reader(descr, Box::new(pages)) {
        ColumnReader::Int32ColumnReader(r) => values(r, c, batches, dest).map_err(e),
        ColumnReader::Int64ColumnReader(r) => values(r, c, batches, dest).map_err(e),
        ColumnReader::FloatColumnReader(r) => values(r, c, batches, dest).map_err(e),
        ColumnReader::DoubleColumnReader(r) => values(r, c, batches, dest).map_err(e),
        _ => Err("not a fixed-width numeric column".into()),
    }
}

/// Reads each batch's rows from `r` into its buffers in `dest`.
fn values<T: ParquetType>(
    mut r: ColumnReaderImpl<T>,
    c: &Column,
    batches: &[(Range<usize>, Range<usize>, usize)],
    dest: &mut [u8],
) -> Result<Vec<usize>, ParquetError>
where
    T::T: ArrowNativeType,
{
    let w = c.width as usize;
    if std::mem::size_of::<T::T>() != w {
        return Err(ParquetError::General("value width mismatch".into()));
    }
    let mut vals: Vec<T::T> = Vec::with_capacity(STEP);
    let mut defs: Vec<i16> = Vec::with_capacity(if c.optional { STEP } else { 0 });
    let mut nulls = Vec::with_capacity(batches.len());
    for (validity, values, n) in batches {
        let n = *n;
        if validity.end > values.start || values.end > dest.len() || values.len() < n * w {
            return Err(ParquetError::General("a batch's buffers overlap".into()));
        }
        let (head, tail) = dest.split_at_mut(values.start);
        let bitmap = &mut head[validity.clone()];
        let out = &mut tail[..n * w];
        bitmap.fill(0);
        let mut got = 0;
        while got < n {
            let want = STEP.min(n - got);
            vals.clear();
            defs.clear();
            let (records, read, levels) =
                r.read_records(want, c.optional.then_some(&mut defs), None, &mut vals)?;
            if records == 0 {
                return Err(ParquetError::General(format!(
                    "the column chunk ended after {got} of the batch's {n} rows"
                )));
            }
            if records > want || read != vals.len() || (c.optional && levels != records) {
                return Err(ParquetError::General(format!(
                    "the column reader returned {records} rows, {read} values and {levels} \
                     levels for {want} rows"
                )));
            }
            let step = &mut out[got * w..(got + records) * w];
            if !c.optional || read == records {
                // No nulls in this step: one copy.
                if c.optional && defs.iter().any(|&d| d != 1) {
                    return Err(ParquetError::General("definition levels above 1".into()));
                }
                crate::ipc::stream_copy::copy(step, vals.to_byte_slice());
                if c.optional {
                    set_bits(bitmap, got, records);
                }
            } else {
                let mut next = vals.iter();
                for (i, (&d, slot)) in defs.iter().zip(step.chunks_exact_mut(w)).enumerate() {
                    match d {
                        1 => {
                            let v = next.next().ok_or_else(|| {
                                ParquetError::General("fewer values than definition levels".into())
                            })?;
                            slot.copy_from_slice(std::slice::from_ref(v).to_byte_slice());
                            set_bit(bitmap, got + i);
                        }
                        0 => slot.fill(0),
                        _ => return Err(ParquetError::General("definition levels above 1".into())),
                    }
                }
                if next.next().is_some() {
                    return Err(ParquetError::General(
                        "more values than definition levels".into(),
                    ));
                }
            }
            got += records;
        }
        // The values' padding, so no byte of the chunk is left as it was.
        tail[n * w..values.len()].fill(0);
        let null_count = if c.optional {
            let set: usize = bitmap.iter().map(|b| b.count_ones() as usize).sum();
            n - set
        } else {
            0
        };
        if null_count > 0 && !c.nullable {
            return Err(ParquetError::General(
                "a column declared not nullable holds nulls".into(),
            ));
        }
        nulls.push(null_count);
    }
    Ok(nulls)
}

/// Sets bits `[from, from + len)` of `bitmap` (LSB first).
fn set_bits(bitmap: &mut [u8], from: usize, len: usize) {
    let end = from + len;
    let mut i = from;
    while i < end && !i.is_multiple_of(8) {
        set_bit(bitmap, i);
        i += 1;
    }
    let whole = (end - i) / 8;
    bitmap[i / 8..i / 8 + whole].fill(0xFF);
    i += whole * 8;
    while i < end {
        set_bit(bitmap, i);
        i += 1;
    }
}

fn set_bit(bitmap: &mut [u8], i: usize) {
    bitmap[i / 8] |= 1 << (i % 8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{
        ArrayRef, Date32Array, Date64Array, DurationMillisecondArray, Float32Array, Float64Array,
        Int32Array, Int64Array, RecordBatch, Time32MillisecondArray, Time64MicrosecondArray,
        TimestampMillisecondArray, TimestampNanosecondArray, TimestampSecondArray, UInt32Array,
        UInt64Array,
    };
    use arrow_data::ArrayDataBuilder;
    use arrow_schema::{Field, TimeUnit};
    use parquet::arrow::ArrowWriter;
    use parquet::basic::Compression;
    use parquet::file::metadata::ParquetMetaDataReader;
    use parquet::file::properties::{WriterProperties, WriterVersion};

    const ROWS: usize = 150_003;
    const ROW_GROUP: usize = 70_001;
    const BATCH: usize = 66_000;

    fn table() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("i32", DataType::Int32, false),
            Field::new("i64_nulls", DataType::Int64, true),
            Field::new("f32_no_nulls", DataType::Float32, true),
            Field::new("f64_all_null", DataType::Float64, true),
            Field::new("i64_few", DataType::Int64, false),
            Field::new("f64_runs", DataType::Float64, true),
            Field::new("ts_s", DataType::Timestamp(TimeUnit::Second, None), true),
            Field::new(
                "ts_ms_utc",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                true,
            ),
            Field::new(
                "ts_ns",
                DataType::Timestamp(TimeUnit::Nanosecond, None),
                true,
            ),
            Field::new("date32", DataType::Date32, true),
            Field::new("date64", DataType::Date64, true),
            Field::new("u32", DataType::UInt32, true),
            Field::new("u64", DataType::UInt64, false),
            Field::new("time32", DataType::Time32(TimeUnit::Millisecond), true),
            Field::new("time64", DataType::Time64(TimeUnit::Microsecond), true),
            Field::new("dur", DataType::Duration(TimeUnit::Millisecond), true),
        ]));
        let n = ROWS as i64;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int32Array::from_iter_values(
                (0..n).map(|i| (i * 7919) as i32),
            )),
            Arc::new(Int64Array::from_iter(
                (0..n).map(|i| (i % 7 != 0).then_some(i * 1_000_003)),
            )),
            Arc::new(Float32Array::from_iter(
                (0..n).map(|i| Some(i as f32 * 0.5)),
            )),
            Arc::new(Float64Array::from_iter((0..n).map(|_| None::<f64>))),
            Arc::new(Int64Array::from_iter_values((0..n).map(|i| i % 100 - 50))),
            // Nulls in long runs: whole steps without a value, others full.
            Arc::new(Float64Array::from_iter(
                (0..n).map(|i| ((i / 50_000) % 2 == 0).then_some(i as f64)),
            )),
            Arc::new(TimestampSecondArray::from_iter(
                (0..n).map(|i| (i % 5 != 0).then_some(1_700_000_000 + i)),
            )),
            Arc::new(
                TimestampMillisecondArray::from_iter(
                    (0..n).map(|i| (i % 5 != 1).then_some(1_700_000_000_000 + i)),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(TimestampNanosecondArray::from_iter(
                (0..n).map(|i| Some(1_700_000_000_000_000_000 + i * 999)),
            )),
            Arc::new(Date32Array::from_iter(
                (0..n).map(|i| (i % 3 != 0).then_some(19_000 + (i % 1000) as i32)),
            )),
            Arc::new(Date64Array::from_iter((0..n).map(|i| {
                (i % 3 != 0).then_some((19_000 + i % 1000) * 86_400_000)
            }))),
            Arc::new(UInt32Array::from_iter(
                (0..n).map(|i| (i % 4 != 0).then_some(u32::MAX - i as u32)),
            )),
            Arc::new(UInt64Array::from_iter_values(
                (0..n).map(|i| u64::MAX - i as u64),
            )),
            Arc::new(Time32MillisecondArray::from_iter(
                (0..n).map(|i| (i % 2 == 0).then_some((i % 86_400_000) as i32)),
            )),
            Arc::new(Time64MicrosecondArray::from_iter(
                (0..n).map(|i| Some(i * 1_000)),
            )),
            Arc::new(DurationMillisecondArray::from_iter(
                (0..n).map(|i| (i % 9 != 0).then_some(i - 70_000)),
            )),
        ];
        RecordBatch::try_new(schema, columns).unwrap()
    }

    fn parquet(batch: &RecordBatch, props: WriterProperties) -> Bytes {
        let mut out = Vec::new();
        let mut w = ArrowWriter::try_new(&mut out, batch.schema(), Some(props)).unwrap();
        w.write(batch).unwrap();
        w.close().unwrap();
        Bytes::from(out)
    }

    fn batches(rows: usize) -> Vec<usize> {
        let mut v = Vec::new();
        let mut left = rows;
        while left > 0 {
            v.push(left.min(BATCH));
            left -= left.min(BATCH);
        }
        v
    }

    /// Every column of `bytes` read directly, against the table written.
    fn check(bytes: Bytes, expected: &RecordBatch) {
        let metadata = ParquetMetaDataReader::new()
            .parse_and_finish(&bytes)
            .unwrap();
        let target = expected.schema();
        let files = [&metadata];
        let columns: Vec<Column> = (0..target.fields().len())
            .map(|r| {
                assert!(is_direct(&files, &target, r), "column {r}");
                Column::new(&metadata, &target, r).unwrap()
            })
            .collect();
        let chunks = [(0..bytes.len() as u64, bytes.clone())];
        let mut first_row = 0;
        for rg in 0..metadata.num_row_groups() {
            let rows = metadata.row_group(rg).num_rows() as usize;
            let batch_rows = batches(rows);
            // Garbage where the chunk goes: every byte must be written.
            let mut dest = vec![0xA5u8; chunk_bytes(&columns, &batch_rows).unwrap() as usize];
            let base = 1 << 20;
            let layouts = decode(
                &metadata,
                rg,
                &columns,
                &batch_rows,
                &chunks,
                &mut dest,
                base,
            )
            .unwrap();
            assert!(
                dest.windows(8).all(|w| w != [0xA5; 8]),
                "bytes left unwritten"
            );
            let mut at = first_row;
            for (b, &n) in batch_rows.iter().enumerate() {
                for (c, layout) in layouts[b].iter().enumerate() {
                    let [validity, values] = layout.buffers[..] else {
                        panic!("two buffers")
                    };
                    let slice = |r: BufferRef| {
                        let start = (r.offset - base) as usize;
                        arrow_buffer::Buffer::from(&dest[start..start + r.length as usize])
                    };
                    let mut data = ArrayDataBuilder::new(target.field(c).data_type().clone())
                        .len(n)
                        .null_count(layout.nodes[0].null_count as usize)
                        .add_buffer(slice(values));
                    if validity.length > 0 {
                        data = data.null_bit_buffer(Some(slice(validity)));
                    }
                    let got = data.build().unwrap();
                    let want = expected.column(c).slice(at, n).to_data();
                    assert_eq!(got, want, "row group {rg}, batch {b}, column {c}");
                    assert_eq!(
                        layout.nodes[0].null_count as usize,
                        expected.column(c).slice(at, n).null_count()
                    );
                    assert_eq!(values.offset % ALIGN, 0);
                }
                at += n;
            }
            first_row += rows;
        }
        assert_eq!(first_row, ROWS);
    }

    #[test]
    fn direct_columns_read_as_the_record_reader_reads_them() {
        let t = table();
        let base = || {
            WriterProperties::builder()
                .set_max_row_group_row_count(Some(ROW_GROUP))
                .set_compression(Compression::SNAPPY)
        };
        // v1 pages with dictionaries (and their fallback to plain).
        check(parquet(&t, base().build()), &t);
        // v2 pages, no dictionaries, no compression.
        let v2 = base()
            .set_writer_version(WriterVersion::PARQUET_2_0)
            .set_dictionary_enabled(false)
            .set_compression(Compression::UNCOMPRESSED)
            .build();
        check(parquet(&t, v2), &t);
        // Many small pages: steps and batches cross page boundaries.
        let small = base()
            .set_data_page_row_count_limit(1000)
            .set_write_batch_size(1000)
            .build();
        check(parquet(&t, small), &t);
    }

    #[test]
    fn only_flat_numeric_columns_without_conversion_are_direct() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("i16", DataType::Int16, true),
            Field::new("u16", DataType::UInt16, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("i64", DataType::Int64, true),
            Field::new("date", DataType::Date32, true),
            Field::new(
                "list",
                DataType::List(Arc::new(Field::new("item", DataType::Int64, true))),
                true,
            ),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(arrow_array::Int16Array::from(vec![1, 2])),
                Arc::new(arrow_array::UInt16Array::from(vec![1, 2])),
                Arc::new(arrow_array::StringArray::from(vec!["a", "b"])),
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(Date32Array::from(vec![1, 2])),
                Arc::new(arrow_array::ListArray::from_iter_primitive::<
                    arrow_array::types::Int64Type,
                    _,
                    _,
                >(vec![Some(vec![Some(1)]), None])),
            ],
        )
        .unwrap();
        let bytes = parquet(&batch, WriterProperties::builder().build());
        let metadata = ParquetMetaDataReader::new()
            .parse_and_finish(&bytes)
            .unwrap();
        let direct: Vec<bool> = (0..6)
            .map(|r| is_direct(&[&metadata], &schema, r))
            .collect();
        assert_eq!(direct, [false, false, false, true, true, false]);
        // The file's Int64 read as another type (a schema hint): not direct.
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields[3] = Field::new("i64", DataType::Float64, true);
        assert!(!is_direct(&[&metadata], &Schema::new(fields), 3));
    }

    #[test]
    fn corrupt_or_missing_pages_are_errors() {
        let t = table();
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(ROW_GROUP))
            .set_compression(Compression::SNAPPY)
            .build();
        let bytes = parquet(&t, props);
        let metadata = ParquetMetaDataReader::new()
            .parse_and_finish(&bytes)
            .unwrap();
        let target = t.schema();
        let columns = [Column::new(&metadata, &target, 1).unwrap()];
        let rows = batches(metadata.row_group(0).num_rows() as usize);
        let mut dest = vec![0u8; chunk_bytes(&columns, &rows).unwrap() as usize];
        let (start, len) = metadata.row_group(0).column(1).byte_range();

        // The column's bytes were not read.
        let none = [(0..start, bytes.slice(..start as usize))];
        let (k, e) = decode(&metadata, 0, &columns, &rows, &none, &mut dest, 0).unwrap_err();
        assert_eq!(k, Some(0));
        assert!(e.contains("was not read"), "{e}");

        // Garbage over the first page header, then over a page's data.
        for at in [start, start + len / 2] {
            let mut bad = bytes.to_vec();
            bad[at as usize..at as usize + 64].fill(0xEE);
            let chunks = [(0..bad.len() as u64, Bytes::from(bad))];
            let r = decode(&metadata, 0, &columns, &rows, &chunks, &mut dest, 0);
            assert!(r.is_err(), "garbage at {at} went unnoticed");
        }

        // A misaligned chunk and a chunk of the wrong size are refused.
        let all = [(0..bytes.len() as u64, bytes.clone())];
        assert!(decode(&metadata, 0, &columns, &rows, &all, &mut dest, 8).is_err());
        let mut short = vec![0u8; dest.len() - 64];
        assert!(decode(&metadata, 0, &columns, &rows, &all, &mut short, 0).is_err());
    }

    #[test]
    fn set_bits_at_any_offset() {
        for from in 0..20 {
            for len in 0..40 {
                let mut bitmap = vec![0u8; 8];
                set_bits(&mut bitmap, from, len);
                for i in 0..64 {
                    let set = bitmap[i / 8] >> (i % 8) & 1 == 1;
                    assert_eq!(set, (from..from + len).contains(&i), "{from} {len} {i}");
                }
            }
        }
    }
}
