//! A stored record batch sent as row slices without copying its buffers.
//!
//! A batch too large for one Flight message (a pandas put is one batch of
//! the whole table; an ingested row group is 1M rows) used to go through
//! arrow's encoder, whose slices copy every buffer into a fresh message: one
//! more copy of the table, on the cores the client shares. For a batch of
//! flat columns a slice of rows `[a, b)` is, per buffer, one range of the
//! stored buffer, so each message's body here is a list of arena ranges:
//!
//! ```text
//!  column kind                  buffers sent for rows [a, b)        copied
//!  fixed width (ints, floats,   validity bytes a/8 .. ceil(b/8),    nothing
//!   dates, decimals...)         values a*w .. b*w
//!  boolean                      validity, value bits as validity    nothing
//!  utf8 / binary (and large)    validity, offsets a..=b rebased     the offsets
//!                               to start at 0, data off[a]..off[b]  (4-8 B/row)
//! ```
//!
//! `a` is a multiple of 64, so every bitmap slice starts on a byte; each
//! buffer starts 8-byte aligned in the body (zero padding between), as the
//! IPC format asks. The message header is the stored one with its numbers
//! rewritten in place (row count, each node's length and null count, each
//! buffer's offset and length, the body length): a batch's header has the
//! same shape whatever its rows. Anything else (nested or view columns,
//! dictionaries, compressed bodies, a header this does not recognise) gets
//! `None`, and the caller sends the table through arrow's encoder as before.

use arrow_buffer::bit_chunk_iterator::UnalignedBitChunk;
use arrow_schema::{DataType, Schema};
use bytes::Bytes;

/// Rows of a slice are a multiple of this: bitmaps then slice on bytes.
const ROW_STEP: usize = 64;
/// The body's buffers start at multiples of this.
const ALIGN: usize = 8;
static ZEROS: [u8; ALIGN] = [0; ALIGN];

/// One message of a sliced batch: its IPC header and its body in pieces.
pub(super) struct Slice {
    pub header: Vec<u8>,
    pub body: Vec<Bytes>,
}

/// How one flat column lies in IPC buffers.
#[derive(Clone, Copy)]
enum Layout {
    /// Validity, then `width` bytes per row.
    Fixed(usize),
    /// Validity, then one bit per row.
    Bits,
    /// Validity, offsets of `width` bytes (4 or 8), data.
    Offsets(usize),
}

fn layout(dt: &DataType) -> Option<Layout> {
    match dt {
        DataType::Boolean => Some(Layout::Bits),
        DataType::Utf8 | DataType::Binary => Some(Layout::Offsets(4)),
        DataType::LargeUtf8 | DataType::LargeBinary => Some(Layout::Offsets(8)),
        DataType::FixedSizeBinary(w) => usize::try_from(*w).ok().map(Layout::Fixed),
        dt => dt.primitive_width().map(Layout::Fixed),
    }
}

/// The stored batch (`header`, `body` its body as stored) as messages of
/// about `max_body` bytes each. `piece` turns a range of `body` into bytes
/// that keep it alive (a slice of the leased arena). `None`: not a batch of
/// flat columns this can slice (see the module's doc).
pub(super) fn row_slices(
    header: &[u8],
    body: &[u8],
    schema: &Schema,
    max_body: usize,
    piece: impl Fn(&[u8]) -> Bytes,
) -> Option<Vec<Slice>> {
    let message = arrow_ipc::root_as_message(header).ok()?;
    let batch = message.header_as_record_batch()?;
    if batch.compression().is_some() || batch.variadicBufferCounts().is_some_and(|v| !v.is_empty())
    {
        return None;
    }
    let rows = usize::try_from(batch.length()).ok()?;
    let nodes = batch.nodes()?;
    let buffers = batch.buffers()?;
    let layouts: Vec<Layout> = schema
        .fields()
        .iter()
        .map(|f| layout(f.data_type()))
        .collect::<Option<_>>()?;
    let wanted: usize = layouts
        .iter()
        .map(|l| {
            if matches!(l, Layout::Offsets(_)) {
                3
            } else {
                2
            }
        })
        .sum();
    if nodes.len() != layouts.len() || buffers.len() != wanted || rows == 0 {
        return None;
    }
    // Every stored buffer as a range of the body (checked once here).
    let stored: Vec<&[u8]> = buffers
        .iter()
        .map(|b| {
            let at = usize::try_from(b.offset()).ok()?;
            body.get(at..at.checked_add(usize::try_from(b.length()).ok()?)?)
        })
        .collect::<Option<_>>()?;
    if nodes.iter().any(|n| n.length() != batch.length()) {
        return None;
    }
    // The places in `header` of the numbers each message rewrites.
    let at_of = |ptr: *const u8| (ptr as usize).checked_sub(header.as_ptr() as usize);
    let nodes_at = at_of(nodes.bytes().as_ptr())?;
    let buffers_at = at_of(buffers.bytes().as_ptr())?;
    let rows_at = field_at(&batch._tab, arrow_ipc::RecordBatch::VT_LENGTH)?;
    let body_len_at = field_at(&message._tab, arrow_ipc::Message::VT_BODYLENGTH)?;

    let total: usize = stored.iter().map(|b| b.len()).sum();
    let pieces = total.div_ceil(max_body.max(1)).max(1);
    let per = rows.div_ceil(pieces).next_multiple_of(ROW_STEP);
    let mut out = Vec::with_capacity(rows.div_ceil(per));
    for a in (0..rows).step_by(per) {
        let b = (a + per).min(rows);
        let mut m = Body::default();
        let mut counts = Vec::with_capacity(layouts.len());
        let mut bufs = stored.iter();
        for (layout, node) in layouts.iter().zip(nodes.iter()) {
            let validity = bufs.next()?;
            let nulls = if node.null_count() == 0 {
                m.empty();
                0
            } else {
                let bits = bit_range(validity, a, b)?;
                m.push(piece(bits));
                (b - a) - UnalignedBitChunk::new(bits, 0, b - a).count_ones()
            };
            counts.push((b - a, nulls));
            let values = bufs.next()?;
            match *layout {
                Layout::Fixed(w) => {
                    m.push(piece(values.get(a.checked_mul(w)?..b.checked_mul(w)?)?))
                }
                Layout::Bits => m.push(piece(bit_range(values, a, b)?)),
                Layout::Offsets(w) => {
                    let data = bufs.next()?;
                    let offsets = values.get(a.checked_mul(w)?..(b + 1).checked_mul(w)?)?;
                    let (rebased, from, to) = rebase(offsets, w)?;
                    m.push(Bytes::from(rebased));
                    m.push(piece(data.get(from..to)?));
                }
            }
        }
        let mut h = header.to_vec();
        put_i64(&mut h, rows_at, b - a)?;
        for (i, (len, nulls)) in counts.into_iter().enumerate() {
            put_i64(&mut h, nodes_at + 16 * i, len)?;
            put_i64(&mut h, nodes_at + 16 * i + 8, nulls)?;
        }
        for (i, (offset, len)) in m.spans.iter().enumerate() {
            put_i64(&mut h, buffers_at + 16 * i, *offset)?;
            put_i64(&mut h, buffers_at + 16 * i + 8, *len)?;
        }
        m.pad();
        put_i64(&mut h, body_len_at, m.len)?;
        out.push(Slice {
            header: h,
            body: m.pieces,
        });
    }
    Some(out)
}

/// A message body being laid out: its pieces, and each buffer's span.
#[derive(Default)]
struct Body {
    pieces: Vec<Bytes>,
    spans: Vec<(usize, usize)>,
    len: usize,
}

impl Body {
    fn pad(&mut self) {
        let pad = self.len.next_multiple_of(ALIGN) - self.len;
        if pad > 0 {
            self.pieces.push(Bytes::from_static(&ZEROS[..pad]));
            self.len += pad;
        }
    }

    fn push(&mut self, bytes: Bytes) {
        self.pad();
        self.spans.push((self.len, bytes.len()));
        self.len += bytes.len();
        if !bytes.is_empty() {
            self.pieces.push(bytes);
        }
    }

    /// An absent buffer (the validity of a column without nulls). Readers
    /// check even empty buffers against the body: it points at its start.
    fn empty(&mut self) {
        self.spans.push((0, 0));
    }
}

/// The bytes holding bits `a..b` of `bitmap` (`a` a multiple of 8).
fn bit_range(bitmap: &[u8], a: usize, b: usize) -> Option<&[u8]> {
    debug_assert_eq!(a % 8, 0);
    bitmap.get(a / 8..b.div_ceil(8))
}

/// Offsets (`w` bytes each, little-endian) made to start at 0, and the range
/// of the data they cover. `None` if they go down or below 0.
fn rebase(offsets: &[u8], w: usize) -> Option<(Vec<u8>, usize, usize)> {
    let read = |c: &[u8]| -> i64 {
        if w == 4 {
            i32::from_le_bytes(c.try_into().unwrap()) as i64
        } else {
            i64::from_le_bytes(c.try_into().unwrap())
        }
    };
    let first = read(offsets.get(..w)?);
    let last = read(offsets.get(offsets.len().checked_sub(w)?..)?);
    if first < 0 || last < first {
        return None;
    }
    let mut out = Vec::with_capacity(offsets.len());
    for c in offsets.chunks_exact(w) {
        let o = read(c) - first;
        if w == 4 {
            out.extend_from_slice(&(o as i32).to_le_bytes());
        } else {
            out.extend_from_slice(&o.to_le_bytes());
        }
    }
    Some((
        out,
        usize::try_from(first).ok()?,
        usize::try_from(last).ok()?,
    ))
}

/// Where in the flatbuffer the scalar field `slot` of `table` lies; `None`
/// when it is not stored (its default, which a rewrite could not change).
fn field_at(table: &flatbuffers::Table, slot: flatbuffers::VOffsetT) -> Option<usize> {
    let o = table.vtable().get(slot) as usize;
    (o != 0).then_some(table.loc() + o)
}

fn put_i64(h: &mut [u8], at: usize, v: usize) -> Option<()> {
    let v = i64::try_from(v).ok()?;
    h.get_mut(at..at + 8)?.copy_from_slice(&v.to_le_bytes());
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use arrow_array::{
        Array, ArrayRef, BooleanArray, Decimal128Array, Float64Array, Int32Array, Int64Array,
        LargeStringArray, RecordBatch, StringArray,
    };
    use arrow_ipc::writer::{DictionaryTracker, IpcDataGenerator, IpcWriteOptions};

    /// A batch of every sliced kind, with and without nulls, rows not a
    /// multiple of 64.
    fn batch(rows: usize) -> RecordBatch {
        let n = |i: usize| i % 7 == 3;
        let cols: Vec<(&str, ArrayRef)> = vec![
            (
                "i64",
                Arc::new(Int64Array::from_iter_values(0..rows as i64)),
            ),
            (
                "i32_nulls",
                Arc::new(Int32Array::from_iter(
                    (0..rows).map(|i| (!n(i)).then_some(i as i32)),
                )),
            ),
            (
                "f64",
                Arc::new(Float64Array::from_iter_values(
                    (0..rows).map(|i| i as f64 / 3.0),
                )),
            ),
            (
                "bool_nulls",
                Arc::new(BooleanArray::from_iter(
                    (0..rows).map(|i| (i % 5 != 0).then_some(i % 3 == 0)),
                )),
            ),
            (
                "str_nulls",
                Arc::new(StringArray::from_iter(
                    (0..rows).map(|i| (!n(i)).then(|| format!("s{}", i * 7919))),
                )),
            ),
            (
                "large_str",
                Arc::new(LargeStringArray::from_iter_values(
                    (0..rows).map(|i| "x".repeat(i % 11)),
                )),
            ),
            (
                "dec",
                Arc::new(
                    Decimal128Array::from_iter_values((0..rows).map(|i| i as i128 * 1000))
                        .with_precision_and_scale(20, 3)
                        .unwrap(),
                ),
            ),
        ];
        RecordBatch::try_from_iter(cols).unwrap()
    }

    /// The IPC header and body arrow writes for `batch`.
    fn encoded(batch: &RecordBatch) -> (Vec<u8>, Vec<u8>) {
        let options = IpcWriteOptions::default();
        let mut tracker = DictionaryTracker::new(false);
        let (_, data) = IpcDataGenerator::default()
            .encode(
                batch,
                &mut tracker,
                &options,
                &mut arrow_ipc::writer::IpcWriteContext::default(),
            )
            .unwrap();
        (data.ipc_message, data.arrow_data)
    }

    fn decode(schema: &Arc<Schema>, s: &Slice) -> RecordBatch {
        let body: Vec<u8> = s.body.iter().flat_map(|p| p.iter().copied()).collect();
        let message = arrow_ipc::root_as_message(&s.header).unwrap();
        assert_eq!(message.bodyLength() as usize, body.len());
        assert_eq!(body.len() % ALIGN, 0);
        arrow_ipc::reader::read_record_batch(
            &arrow_buffer::Buffer::from_vec(body),
            message.header_as_record_batch().unwrap(),
            schema.clone(),
            &Default::default(),
            None,
            &message.version(),
        )
        .unwrap()
    }

    #[test]
    fn slices_decode_to_the_batch_in_order() {
        // (rows, message size, slices: None = more than one)
        for (rows, max_body, count) in [
            (1000, 1 << 30, Some(1)),
            (10_007, 20_000, None),
            (10_007, 1, Some(10_007usize.div_ceil(ROW_STEP))),
            (64, 10, Some(1)),
            (130, 10, Some(3)),
        ] {
            let batch = batch(rows);
            let schema = batch.schema();
            let (header, body) = encoded(&batch);
            let slices =
                row_slices(&header, &body, &schema, max_body, Bytes::copy_from_slice).unwrap();
            let mut at = 0;
            for s in &slices {
                let got = decode(&schema, s);
                got.columns()
                    .iter()
                    .for_each(|c| c.to_data().validate_full().unwrap());
                assert_eq!(got, batch.slice(at, got.num_rows()), "rows {at}..");
                for (g, w) in got
                    .columns()
                    .iter()
                    .zip(batch.slice(at, got.num_rows()).columns())
                {
                    assert_eq!(g.null_count(), w.null_count());
                }
                at += got.num_rows();
                assert!(at == rows || at % ROW_STEP == 0);
            }
            assert_eq!(at, rows);
            match count {
                Some(n) => assert_eq!(slices.len(), n, "{rows} rows in {max_body}-byte messages"),
                None => assert!(slices.len() > 1, "{rows} rows in {max_body}-byte messages"),
            }
        }
    }

    #[test]
    fn other_columns_are_left_to_the_encoder() {
        let list = arrow_array::ListArray::from_iter_primitive::<arrow_array::types::Int32Type, _, _>(
            (0..100).map(|i| Some(vec![Some(i)])),
        );
        let batch = RecordBatch::try_from_iter([("l", Arc::new(list) as ArrayRef)]).unwrap();
        let (header, body) = encoded(&batch);
        assert!(row_slices(&header, &body, &batch.schema(), 100, Bytes::copy_from_slice).is_none());
    }

    #[test]
    fn a_header_that_does_not_match_the_body_is_refused() {
        let batch = batch(1000);
        let (header, body) = encoded(&batch);
        let short = &body[..body.len() / 2];
        assert!(row_slices(&header, short, &batch.schema(), 100, Bytes::copy_from_slice).is_none());
        // A schema with other columns than the header's.
        let fewer = batch.schema().project(&[0, 1]).unwrap();
        assert!(row_slices(&header, &body, &fewer, 100, Bytes::copy_from_slice).is_none());
    }
}
