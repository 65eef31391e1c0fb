//! Table versions as manifests: an Arrow IPC *file* that spans the arena.
//!
//! A version's bytes live in chunks (arena allocations) that other versions may
//! share. What a reader opens is not a chunk but the range `[0, file_len)` of
//! the arena, read as one IPC file:
//! ```text
//! arena offset 0                                                         arena end
//! │ARROW1··│ batch messages (low region) │ chunks: buffers ... │ footers (high region) │
//!  magic     └ message k, its body ─────────────> buffers of k      └ footer of v, trailer
//!            starts right after it and reaches       anywhere in      (blocks point at the
//!            up to its last buffer                   the chunks       messages of v)
//! ```
//! - The first 8 bytes of the arena hold the file magic, once for all versions.
//! - Each record batch (and dictionary batch) message of the version lies in the
//!   low region; its body is "the rest of the arena" up to its last buffer, so
//!   the buffer offsets in the message (relative to the body, as IPC defines
//!   them) can reach any chunk above it. Bodies of different messages overlap:
//!   readers of the IPC file format never read a body as a whole, only the
//!   buffers the message names.
//! - The footer (schema, dictionary and record batch blocks) lies in the high
//!   region, above every chunk, followed by the usual trailer; the version's
//!   file ends there.
//!
//! So a stock IPC file reader (pyarrow's `ipc.open_file`, arrow-rs's
//! `FileDecoder`) reads a version zero-copy from `arena[0 .. file_len]` with no
//! code of ours, and a get costs what opening a one-chunk file costs. The
//! schema message a file usually carries after its leading magic is absent:
//! file readers take the schema from the footer.
//!
//! This module turns a checked IPC file lying in a chunk into a `Manifest`
//! (nodes and absolute buffer ranges of every batch) and encodes manifests.

use std::sync::Arc;

use arrow_ipc::{Block, MessageHeader, MetadataVersion};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use flatbuffers::FlatBufferBuilder;

use super::{block_range, footer};

/// The magic at arena offset 0 (and in every footer's trailer), padded to 8.
pub const ARENA_MAGIC: &[u8; 8] = b"ARROW1\0\0";
/// IPC messages start with this marker, then their metadata length.
pub(crate) const CONTINUATION: u32 = 0xFFFF_FFFF;

/// One field node of a batch, as IPC records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    pub length: i64,
    pub null_count: i64,
}

/// A buffer at an absolute arena offset. Empty buffers have no place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferRef {
    pub offset: u64,
    pub length: u64,
}

/// A record batch (or a dictionary's values): what its message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchLayout {
    pub rows: i64,
    pub nodes: Vec<Node>,
    pub buffers: Vec<BufferRef>,
    /// Data buffers of each view column, in order (`variadicBufferCounts`).
    pub variadic: Vec<i64>,
}

impl BatchLayout {
    /// `[start, end)` over the non-empty buffers, if any.
    pub fn extent(&self) -> Option<(u64, u64)> {
        let mut it = self.buffers.iter().filter(|b| b.length > 0);
        let first = it.next()?;
        let init = (first.offset, first.offset + first.length);
        Some(it.fold(init, |(lo, hi), b| {
            (lo.min(b.offset), hi.max(b.offset + b.length))
        }))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DictionaryLayout {
    /// The id this dictionary has in `Manifest::schema`.
    pub id: i64,
    pub is_delta: bool,
    pub batch: BatchLayout,
}

/// A table version: its schema and where every buffer of every batch lies.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Dictionary fields carry the ids their dictionaries use.
    pub schema: SchemaRef,
    pub dictionaries: Vec<DictionaryLayout>,
    pub batches: Vec<BatchLayout>,
}

/// A manifest encoded for two places: `low` (the messages) goes to the low
/// region at the offset it was encoded for, `high` (footer and trailer) to the
/// high region. Readers open `[0, file_len)`.
#[derive(Debug)]
pub struct Encoded {
    pub low: Vec<u8>,
    pub high: Vec<u8>,
    pub file_len: u64,
}

impl Manifest {
    /// The manifest of the IPC file `bytes`, which lies at arena offset
    /// `base`. The file must have passed `check_file`; anything that does not
    /// add up is still an error, never a panic.
    pub fn from_file(bytes: &[u8], base: u64) -> Result<Manifest, ArrowError> {
        let footer = footer(bytes)?;
        let fb_schema = footer
            .schema()
            .ok_or_else(|| ArrowError::ParseError("IPC footer has no schema".into()))?;
        let schema = Arc::new(arrow_ipc::convert::try_fb_to_schema(fb_schema)?);
        let mut dictionaries = Vec::new();
        for block in footer.dictionaries().into_iter().flatten() {
            let message = Message::at(bytes, block)?;
            let dict = message.header_as_dictionary_batch().ok_or_else(|| {
                ArrowError::ParseError("dictionary block without a dictionary batch".into())
            })?;
            let data = dict
                .data()
                .ok_or_else(|| ArrowError::ParseError("dictionary batch without data".into()))?;
            dictionaries.push(DictionaryLayout {
                id: dict.id(),
                is_delta: dict.isDelta(),
                batch: message.layout(data, base)?,
            });
        }
        let mut batches = Vec::new();
        for block in footer.recordBatches().into_iter().flatten() {
            let message = Message::at(bytes, block)?;
            let batch = message.header_as_record_batch().ok_or_else(|| {
                ArrowError::ParseError("record batch block without a record batch".into())
            })?;
            batches.push(message.layout(batch, base)?);
        }
        Ok(Manifest {
            schema,
            dictionaries,
            batches,
        })
    }

    pub fn rows(&self) -> u64 {
        self.batches.iter().map(|b| b.rows.max(0) as u64).sum()
    }

    /// `[start, end)` over every buffer of the manifest, if it has any.
    pub fn extent(&self) -> Option<(u64, u64)> {
        self.dictionaries
            .iter()
            .map(|d| &d.batch)
            .chain(&self.batches)
            .filter_map(BatchLayout::extent)
            .reduce(|(a, b), (c, d)| (a.min(c), b.max(d)))
    }

    /// The bytes `encode` will produce for the low and the high region, to
    /// reserve room before encoding.
    pub fn sizes(&self) -> Result<(u64, u64), ArrowError> {
        let high_at = self.extent().map_or(0, |(_, end)| end);
        let e = self.encode(0, high_at)?;
        Ok((e.low.len() as u64, e.high.len() as u64))
    }

    /// Encodes the manifest with its messages at arena offset `low_at` and its
    /// footer at `high_at`. Sizes do not depend on the offsets (every field is
    /// written, structs have fixed sizes), so `sizes` tells how much room to
    /// reserve. Fails if a buffer lies below its message's body or the footer
    /// below a buffer: the store's regions keep that from happening.
    pub fn encode(&self, low_at: u64, high_at: u64) -> Result<Encoded, ArrowError> {
        let ids = new_dictionary_ids(&self.schema);
        let mut low = Vec::new();
        let mut dictionary_blocks = Vec::new();
        for (new_id, old_id) in ids.iter().enumerate() {
            for d in self.dictionaries.iter().filter(|d| d.id == *old_id) {
                let at = low_at + low.len() as u64;
                let block =
                    encode_message(&mut low, at, &d.batch, Some((new_id as i64, d.is_delta)))?;
                dictionary_blocks.push(block);
            }
        }
        let mut batch_blocks = Vec::with_capacity(self.batches.len());
        for b in &self.batches {
            let at = low_at + low.len() as u64;
            batch_blocks.push(encode_message(&mut low, at, b, None)?);
        }
        if let Some((_, end)) = self.extent() {
            if end > high_at {
                return Err(ArrowError::InvalidArgumentError(format!(
                    "footer at {high_at} would lie below a buffer ending at {end}"
                )));
            }
        }
        let high = encode_footer(&self.schema, &dictionary_blocks, &batch_blocks)?;
        let file_len = high_at + high.len() as u64;
        Ok(Encoded {
            low,
            high,
            file_len,
        })
    }
}

/// The dictionary ids of `schema`'s dictionary fields, in the order arrow-rs's
/// schema encoder numbers them (0, 1, 2...: depth first, a dictionary's value
/// type before the dictionary itself). The encoded footer uses position `i` for
/// the field whose dictionary had id `ids[i]`.
fn new_dictionary_ids(schema: &Schema) -> Vec<i64> {
    fn field(f: &Field, out: &mut Vec<i64>) {
        data_type(f.data_type(), out);
        if let DataType::Dictionary(_, _) = f.data_type() {
            #[expect(deprecated)] // the id the file's schema gave this field
            out.push(f.dict_id().unwrap_or(-1));
        }
    }
    fn data_type(t: &DataType, out: &mut Vec<i64>) {
        use DataType::*;
        match t {
            Dictionary(_, v) => data_type(v, out),
            List(f)
            | LargeList(f)
            | ListView(f)
            | LargeListView(f)
            | FixedSizeList(f, _)
            | Map(f, _) => field(f, out),
            Struct(fs) => fs.iter().for_each(|f| field(f, out)),
            Union(fs, _) => fs.iter().for_each(|(_, f)| field(f, out)),
            RunEndEncoded(a, b) => {
                field(a, out);
                field(b, out);
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    schema.fields().iter().for_each(|f| field(f, &mut out));
    out
}

/// A message of an IPC file lying in `bytes`, at a block of its footer.
struct Message<'a> {
    fb: arrow_ipc::Message<'a>,
    /// Offset of the body in `bytes`, and its length.
    body_start: usize,
    body_len: usize,
}

impl<'a> Message<'a> {
    fn at(bytes: &'a [u8], block: &Block) -> Result<Message<'a>, ArrowError> {
        let (start, end, meta) = block_range(bytes, block)?;
        let m = &bytes[start..start + meta];
        // `block_range` ensures meta >= 8. Legacy files lack the continuation marker.
        let fb = if m[..4] == CONTINUATION.to_le_bytes() {
            &m[8..]
        } else {
            &m[4..]
        };
        let fb = arrow_ipc::root_as_message(fb)
            .map_err(|e| ArrowError::ParseError(format!("invalid IPC message: {e}")))?;
        Ok(Message {
            fb,
            body_start: start + meta,
            body_len: end - start - meta,
        })
    }

    fn header_as_record_batch(&self) -> Option<arrow_ipc::RecordBatch<'a>> {
        self.fb.header_as_record_batch()
    }

    fn header_as_dictionary_batch(&self) -> Option<arrow_ipc::DictionaryBatch<'a>> {
        self.fb.header_as_dictionary_batch()
    }

    fn layout(
        &self,
        batch: arrow_ipc::RecordBatch<'_>,
        base: u64,
    ) -> Result<BatchLayout, ArrowError> {
        if batch.compression().is_some() {
            return Err(ArrowError::ParseError(
                "compressed IPC bodies are not supported (write uncompressed files)".into(),
            ));
        }
        let nodes = batch
            .nodes()
            .map(|v| {
                v.iter()
                    .map(|n| Node {
                        length: n.length(),
                        null_count: n.null_count(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut buffers = Vec::new();
        for b in batch.buffers().into_iter().flatten() {
            let (offset, length) = (b.offset(), b.length());
            let in_body = usize::try_from(offset)
                .ok()
                .zip(usize::try_from(length).ok())
                .and_then(|(o, l)| o.checked_add(l))
                .is_some_and(|end| end <= self.body_len);
            if !in_body {
                return Err(ArrowError::ParseError(format!(
                    "buffer at {offset} (+{length}) lies outside its message body of {} bytes",
                    self.body_len
                )));
            }
            buffers.push(if length == 0 {
                BufferRef {
                    offset: 0,
                    length: 0,
                }
            } else {
                BufferRef {
                    offset: base + (self.body_start as u64) + offset as u64,
                    length: length as u64,
                }
            });
        }
        let variadic = batch
            .variadicBufferCounts()
            .map(|v| v.iter().collect())
            .unwrap_or_default();
        Ok(BatchLayout {
            rows: batch.length(),
            nodes,
            buffers,
            variadic,
        })
    }
}

fn pad8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

/// Appends the encapsulated message of `b` (a record batch, or a dictionary
/// batch `(id, is_delta)`) to `out`, encoded for arena offset `at`, where it
/// will be written; returns its footer block.
fn encode_message(
    out: &mut Vec<u8>,
    at: u64,
    b: &BatchLayout,
    dictionary: Option<(i64, bool)>,
) -> Result<Block, ArrowError> {
    // The metadata's size does not depend on the offsets in it, so the body's
    // start is known once the metadata is encoded with any offsets.
    let probe = message_fb(b, 0, dictionary)?;
    let meta_len = 8 + pad8(probe.len());
    let body_start = at + meta_len as u64;
    let fb = message_fb(b, body_start, dictionary)?;
    if fb.len() != probe.len() {
        return Err(ArrowError::ComputeError(
            "message metadata size changed with its offsets".into(),
        ));
    }
    // Readers want block lengths in multiples of 8 (pyarrow: "Unaligned block");
    // the padding lies below the footer, inside the file.
    let body_len = pad8(b.extent().map_or(0, |(_, end)| (end - body_start) as usize)) as u64;
    out.extend_from_slice(&CONTINUATION.to_le_bytes());
    out.extend_from_slice(&((meta_len - 8) as i32).to_le_bytes());
    out.extend_from_slice(&fb);
    out.resize(out.len() + pad8(fb.len()) - fb.len(), 0);
    Ok(Block::new(at as i64, meta_len as i32, body_len as i64))
}

fn message_fb(
    b: &BatchLayout,
    body_start: u64,
    dictionary: Option<(i64, bool)>,
) -> Result<Vec<u8>, ArrowError> {
    let mut fbb = FlatBufferBuilder::new();
    fbb.force_defaults(true);
    let nodes: Vec<arrow_ipc::FieldNode> = b
        .nodes
        .iter()
        .map(|n| arrow_ipc::FieldNode::new(n.length, n.null_count))
        .collect();
    let mut buffers = Vec::with_capacity(b.buffers.len());
    let mut body_end = body_start;
    for r in &b.buffers {
        if r.length == 0 {
            buffers.push(arrow_ipc::Buffer::new(0, 0));
            continue;
        }
        let rel = r.offset.checked_sub(body_start).ok_or_else(|| {
            ArrowError::InvalidArgumentError(format!(
                "buffer at {} lies below its message body at {body_start}",
                r.offset
            ))
        })?;
        body_end = body_end.max(r.offset + r.length);
        buffers.push(arrow_ipc::Buffer::new(rel as i64, r.length as i64));
    }
    let fb_nodes = fbb.create_vector(&nodes);
    let fb_buffers = fbb.create_vector(&buffers);
    let fb_variadic = (!b.variadic.is_empty()).then(|| fbb.create_vector(&b.variadic));
    let mut rb = arrow_ipc::RecordBatchBuilder::new(&mut fbb);
    rb.add_length(b.rows);
    rb.add_nodes(fb_nodes);
    rb.add_buffers(fb_buffers);
    if let Some(v) = fb_variadic {
        rb.add_variadicBufferCounts(v);
    }
    let rb = rb.finish();
    let (header_type, header) = match dictionary {
        None => (MessageHeader::RecordBatch, rb.as_union_value()),
        Some((id, is_delta)) => {
            let mut db = arrow_ipc::DictionaryBatchBuilder::new(&mut fbb);
            db.add_id(id);
            db.add_data(rb);
            db.add_isDelta(is_delta);
            (MessageHeader::DictionaryBatch, db.finish().as_union_value())
        }
    };
    let mut mb = arrow_ipc::MessageBuilder::new(&mut fbb);
    mb.add_version(MetadataVersion::V5);
    mb.add_header_type(header_type);
    mb.add_header(header);
    mb.add_bodyLength(pad8((body_end - body_start) as usize) as i64);
    let m = mb.finish();
    fbb.finish(m, None);
    Ok(fbb.finished_data().to_vec())
}

/// The footer flatbuffer (padded to 8), its length and the trailing magic.
pub(crate) fn encode_footer(
    schema: &Schema,
    dictionaries: &[Block],
    batches: &[Block],
) -> Result<Vec<u8>, ArrowError> {
    let mut fbb = FlatBufferBuilder::new();
    fbb.force_defaults(true);
    let mut tracker = arrow_ipc::writer::DictionaryTracker::new(false);
    let fb_schema = arrow_ipc::convert::IpcSchemaEncoder::new()
        .with_dictionary_tracker(&mut tracker)
        .schema_to_fb_offset(&mut fbb, schema);
    let fb_dictionaries = fbb.create_vector(dictionaries);
    let fb_batches = fbb.create_vector(batches);
    let mut fb = arrow_ipc::FooterBuilder::new(&mut fbb);
    fb.add_version(MetadataVersion::V5);
    fb.add_schema(fb_schema);
    fb.add_dictionaries(fb_dictionaries);
    fb.add_recordBatches(fb_batches);
    let root = fb.finish();
    fbb.finish(root, None);
    let data = fbb.finished_data();
    let padded = pad8(data.len());
    let mut out = Vec::with_capacity(padded + 10);
    out.extend_from_slice(data);
    out.resize(padded, 0);
    let len = i32::try_from(padded)
        .map_err(|_| ArrowError::InvalidArgumentError("footer over 2 GiB".into()))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&ARENA_MAGIC[..6]);
    Ok(out)
}

#[cfg(test)]
mod tests;

/// Where one top-level column's nodes and buffers lie in its batch's lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnLayout {
    pub nodes: Vec<Node>,
    pub buffers: Vec<BufferRef>,
    pub variadic: Vec<i64>,
}

/// Bits set in `bitmap` among bits `[from, from + len)` (LSB first, as Arrow
/// validity bitmaps are); `None` if the bitmap is too short.
fn count_set_bits(bitmap: &[u8], from: u64, len: u64) -> Option<u64> {
    let end = from.checked_add(len)?;
    if end.div_ceil(8) > bitmap.len() as u64 {
        return None;
    }
    let mut set = 0u64;
    let mut i = from;
    while i < end {
        if i.is_multiple_of(8) && end - i >= 8 {
            set += u64::from(bitmap[(i / 8) as usize].count_ones());
            i += 8;
        } else {
            set += u64::from(bitmap[(i / 8) as usize] >> (i % 8) & 1);
            i += 1;
        }
    }
    Some(set)
}

impl ColumnLayout {
    /// Rows `[offset, offset + length)` of this top-level column of type `t`,
    /// as buffers inside its own (no copy), or `Ok(None)` where IPC cannot say
    /// it that way: a type with children, or a buffer that would start off an
    /// 8-byte boundary (pyarrow refuses those): a bitmap (booleans, or a
    /// validity bitmap with nulls in the slice) unless the offset is a multiple
    /// of 64, values of w bytes unless `offset * w` is a multiple of 8 (32-bit
    /// string offsets: an even offset). `bytes` reads a buffer of the
    /// column (its validity bitmap, to count the slice's nulls). Strings keep
    /// their whole data buffer and start at a non-zero offset, which IPC
    /// allows. Errors if the rows lie outside the column.
    pub fn slice<'b>(
        &self,
        t: &DataType,
        offset: u64,
        length: u64,
        bytes: &dyn Fn(BufferRef) -> Option<&'b [u8]>,
    ) -> Result<Option<ColumnLayout>, String> {
        let [node] = self.nodes[..] else {
            return Ok(None);
        };
        let rows = node.length.max(0) as u64;
        let end = offset.checked_add(length).filter(|&e| e <= rows);
        if end.is_none() {
            return Err(format!(
                "rows {offset}..+{length} lie outside a column of {rows} rows"
            ));
        }
        if offset == 0 && length == rows {
            return Ok(Some(self.clone()));
        }
        let short = || format!("a buffer of the column is shorter than its {rows} rows");
        let empty = BufferRef {
            offset: 0,
            length: 0,
        };
        use DataType::*;
        if let Null = t {
            let n = i64::try_from(length).map_err(|e| e.to_string())?;
            return Ok(Some(ColumnLayout {
                nodes: vec![Node {
                    length: n,
                    null_count: n,
                }],
                buffers: self.buffers.clone(),
                variadic: Vec::new(),
            }));
        }
        let Some(&validity) = self.buffers.first() else {
            return Ok(None);
        };
        // The slice's validity: none if it has no nulls.
        let (validity, nulls) = if validity.length == 0 || node.null_count == 0 {
            (empty, 0)
        } else {
            let bits = bytes(validity).ok_or_else(short)?;
            let valid = count_set_bits(bits, offset, length).ok_or_else(short)?;
            match length - valid {
                0 => (empty, 0),
                _ if !offset.is_multiple_of(64) => return Ok(None),
                n => (
                    BufferRef {
                        offset: validity.offset + offset / 8,
                        length: length.div_ceil(8),
                    },
                    n,
                ),
            }
        };
        // A part of buffer `b`: `Ok(None)` if it would not start on 8 bytes.
        let sub = |b: BufferRef, at: u64, len: u64| -> Result<Option<BufferRef>, String> {
            if at.checked_add(len).is_none_or(|e| e > b.length) {
                return Err(short());
            }
            if len == 0 {
                return Ok(Some(empty));
            }
            Ok((b.offset + at).is_multiple_of(8).then_some(BufferRef {
                offset: b.offset + at,
                length: len,
            }))
        };
        let part = match (t, &self.buffers[1..]) {
            (Boolean, &[data]) => {
                if !offset.is_multiple_of(64) {
                    return Ok(None);
                }
                sub(data, offset / 8, length.div_ceil(8))?.map(|d| vec![validity, d])
            }
            (Utf8 | Binary, &[offsets, data]) => {
                sub(offsets, offset * 4, (length + 1) * 4)?.map(|o| vec![validity, o, data])
            }
            (LargeUtf8 | LargeBinary, &[offsets, data]) => {
                sub(offsets, offset * 8, (length + 1) * 8)?.map(|o| vec![validity, o, data])
            }
            (t, &[data]) => {
                let width = match t {
                    Dictionary(k, _) => k.primitive_width(),
                    FixedSizeBinary(n) => usize::try_from(*n).ok(),
                    t => t.primitive_width(),
                };
                let Some(w) = width.map(|w| w as u64).filter(|&w| w > 0) else {
                    return Ok(None);
                };
                sub(data, offset * w, length * w)?.map(|d| vec![validity, d])
            }
            _ => return Ok(None),
        };
        let Some(buffers) = part else {
            return Ok(None);
        };
        Ok(Some(ColumnLayout {
            nodes: vec![Node {
                length: i64::try_from(length).map_err(|e| e.to_string())?,
                null_count: nulls as i64,
            }],
            buffers,
            variadic: Vec::new(),
        }))
    }
}

impl ColumnLayout {
    /// The lowest offset among the column's non-empty buffers: how a column
    /// is looked up when a writer names its buffers.
    pub fn key(&self) -> Option<u64> {
        self.buffers
            .iter()
            .filter(|b| b.length > 0)
            .map(|b| b.offset)
            .min()
    }

    /// Its non-empty buffers as a sorted list, to compare with what a writer
    /// names (writers list buffers in their own order and leave out empty ones).
    pub fn buffer_set(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = self
            .buffers
            .iter()
            .filter(|b| b.length > 0)
            .map(|b| (b.offset, b.length))
            .collect();
        v.sort_unstable();
        v
    }
}

/// IPC field nodes and fixed buffers of a type, its children included, and
/// how many view fields it has (each adds a variadic count and that many
/// buffers). Dictionary values are not counted: they travel in dictionary
/// batches. `None` for types with dictionaries below the top level, which
/// versions cannot take column by column yet.
fn type_span(t: &DataType, top: bool) -> Option<(usize, usize, usize)> {
    use DataType::*;
    let children = |fs: &mut dyn Iterator<Item = &Field>| -> Option<(usize, usize, usize)> {
        let (mut n, mut b, mut v) = (0, 0, 0);
        for f in fs {
            let (n2, b2, v2) = type_span(f.data_type(), false)?;
            (n, b, v) = (n + n2, b + b2, v + v2);
        }
        Some((n, b, v))
    };
    let (own_buffers, (n, b, v)) = match t {
        Null => (0, (0, 0, 0)),
        Utf8 | Binary | LargeUtf8 | LargeBinary => (3, (0, 0, 0)),
        Utf8View | BinaryView => (2, (0, 0, 1)),
        List(f) | LargeList(f) | Map(f, _) => (2, children(&mut std::iter::once(f.as_ref()))?),
        ListView(f) | LargeListView(f) => (3, children(&mut std::iter::once(f.as_ref()))?),
        FixedSizeList(f, _) => (1, children(&mut std::iter::once(f.as_ref()))?),
        Struct(fs) => (1, children(&mut fs.iter().map(|f| f.as_ref()))?),
        RunEndEncoded(a, b) => (0, children(&mut [a.as_ref(), b.as_ref()].into_iter())?),
        Union(fs, mode) => {
            let own = if *mode == arrow_schema::UnionMode::Dense {
                2
            } else {
                1
            };
            (own, children(&mut fs.iter().map(|(_, f)| f.as_ref()))?)
        }
        Dictionary(_, _) if !top => return None,
        Dictionary(_, _) => (2, (0, 0, 0)),
        _ => (2, (0, 0, 0)),
    };
    Some((1 + n, own_buffers + b, v))
}

impl BatchLayout {
    /// Splits the batch into its top-level columns, given the schema it was
    /// written with. Errors if the counts do not add up (a bug or a schema
    /// that is not the batch's), `Ok(None)` if a column has nested dictionaries.
    pub fn columns(&self, schema: &Schema) -> Result<Option<Vec<ColumnLayout>>, ArrowError> {
        let mut out = Vec::with_capacity(schema.fields().len());
        let (mut n, mut b, mut v) = (0usize, 0usize, 0usize);
        let short =
            || ArrowError::ParseError("batch has fewer nodes or buffers than its schema".into());
        for f in schema.fields() {
            let Some((nodes, fixed, views)) = type_span(f.data_type(), true) else {
                return Ok(None);
            };
            let variadic = self.variadic.get(v..v + views).ok_or_else(short)?.to_vec();
            let extra: usize = variadic.iter().map(|&c| c.max(0) as usize).sum();
            let buffers = self
                .buffers
                .get(b..b + fixed + extra)
                .ok_or_else(short)?
                .to_vec();
            out.push(ColumnLayout {
                nodes: self.nodes.get(n..n + nodes).ok_or_else(short)?.to_vec(),
                buffers,
                variadic,
            });
            n += nodes;
            b += fixed + extra;
            v += views;
        }
        if (n, b, v) != (self.nodes.len(), self.buffers.len(), self.variadic.len()) {
            return Err(ArrowError::ParseError(
                "batch has more nodes or buffers than its schema".into(),
            ));
        }
        Ok(Some(out))
    }

    /// A batch of `rows` rows made of `columns`, in order.
    pub fn from_columns(rows: i64, columns: &[&ColumnLayout]) -> BatchLayout {
        let mut b = BatchLayout {
            rows,
            nodes: Vec::new(),
            buffers: Vec::new(),
            variadic: Vec::new(),
        };
        for c in columns {
            b.nodes.extend_from_slice(&c.nodes);
            b.buffers.extend_from_slice(&c.buffers);
            b.variadic.extend_from_slice(&c.variadic);
        }
        b
    }
}

impl Manifest {
    /// Column `c` of every batch, or `None` where a column has nested dictionaries.
    pub fn batch_columns(&self) -> Result<Option<Vec<Vec<ColumnLayout>>>, ArrowError> {
        let mut out = Vec::with_capacity(self.batches.len());
        for b in &self.batches {
            match b.columns(&self.schema)? {
                Some(c) => out.push(c),
                None => return Ok(None),
            }
        }
        Ok(Some(out))
    }

    /// The dictionaries of top-level column `c` (a dictionary field), in order.
    pub fn column_dictionaries(&self, c: usize) -> Vec<&DictionaryLayout> {
        #[expect(deprecated)] // ids as the file's schema gave them
        let id = self.schema.field(c).dict_id();
        match id {
            Some(id) => self.dictionaries.iter().filter(|d| d.id == id).collect(),
            None => Vec::new(),
        }
    }
}
