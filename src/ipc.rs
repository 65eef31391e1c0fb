//! Arrow IPC files in the arena: size bounds, writing into a byte slice,
//! structural validation (server, at seal) and zero-copy opening (clients).
//!
//! Objects are uncompressed Arrow IPC *files* with 64-byte aligned buffers, so
//! the footer gives random access to batches and columns without reading data.

use std::io::Cursor;
use std::sync::Arc;

use arrow_array::{Array, RecordBatch};
use arrow_buffer::Buffer;
use arrow_ipc::reader::FileDecoder;
use arrow_ipc::writer::{FileWriter, IpcWriteOptions};
use arrow_ipc::{Block, MetadataVersion};
use arrow_schema::{ArrowError, Schema, SchemaRef};

/// Buffer alignment inside the IPC file.
pub const IPC_ALIGNMENT: usize = 64;
const ARROW_MAGIC: &[u8; 6] = b"ARROW1";
/// Trailer: footer length (i32) + magic.
const TRAILER_LEN: usize = 10;

/// An upper bound of the IPC file size for `batches`, so that space can be
/// reserved before writing. Data are bounded by the lengths of the arrays'
/// buffers (the writer emits at most that: sliced arrays are truncated, never
/// grown), each padded to the alignment; metadata generously. The unused tail
/// is returned to the arena at seal.
pub fn file_size_bound(schema: &Schema, batches: &[RecordBatch]) -> usize {
    let fields: usize = schema
        .fields()
        .iter()
        .map(|f| count_type(f.data_type()))
        .sum();
    let per_message = 4096 + fields * 256;
    let mut total = 64 + per_message; // magic + schema message
    for b in batches {
        total += per_message;
        for col in b.columns() {
            total += data_bound(&col.to_data());
            if matches!(col.data_type(), arrow_schema::DataType::Dictionary(_, _)) {
                total += per_message; // its own dictionary message
            }
        }
    }
    total += per_message + batches.len() * 64; // footer and its blocks
    total
}

fn data_bound(data: &arrow_data::ArrayData) -> usize {
    let pad = |n: usize| n.div_ceil(IPC_ALIGNMENT) * IPC_ALIGNMENT + IPC_ALIGNMENT;
    let buffers: usize = data.buffers().iter().map(|b| pad(b.len())).sum();
    let nulls = data
        .nulls()
        .map_or(IPC_ALIGNMENT, |n| pad(n.buffer().len()));
    let children: usize = data.child_data().iter().map(data_bound).sum();
    buffers + nulls + children
}

/// Number of fields in a type, its children included (each adds buffers and metadata).
fn count_type(t: &arrow_schema::DataType) -> usize {
    use arrow_schema::DataType::*;
    1 + match t {
        List(f)
        | LargeList(f)
        | FixedSizeList(f, _)
        | ListView(f)
        | LargeListView(f)
        | Map(f, _) => count_type(f.data_type()),
        Struct(fs) => fs.iter().map(|f| count_type(f.data_type())).sum(),
        Union(fs, _) => fs.iter().map(|(_, f)| count_type(f.data_type())).sum(),
        Dictionary(k, v) => count_type(k) + count_type(v),
        RunEndEncoded(a, b) => count_type(a.data_type()) + count_type(b.data_type()),
        _ => 0,
    }
}

/// Writes `batches` as an IPC file into `dest`, returning the bytes written.
/// Fails (without panicking) if `dest` is too small.
pub fn write_file(
    dest: &mut [u8],
    schema: &Schema,
    batches: &[RecordBatch],
) -> Result<usize, ArrowError> {
    let options = IpcWriteOptions::try_new(IPC_ALIGNMENT, false, MetadataVersion::V5)?;
    let mut w = FileWriter::try_new_with_options(Cursor::new(dest), schema, options)?;
    for b in batches {
        w.write(b)?;
    }
    w.finish()?;
    Ok(w.into_inner()?.position() as usize)
}

/// What the server learns from checking a sealed IPC file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSummary {
    pub rows: u64,
    pub batches: u64,
    pub columns: u64,
}

/// Reads the footer of an IPC file in `bytes` (flatbuffer-verified).
fn footer(bytes: &[u8]) -> Result<arrow_ipc::Footer<'_>, ArrowError> {
    if bytes.len() < ARROW_MAGIC.len() * 2 + TRAILER_LEN - ARROW_MAGIC.len()
        || &bytes[..6] != ARROW_MAGIC
    {
        return Err(ArrowError::ParseError(
            "not an Arrow IPC file (missing ARROW1 magic at the start)".into(),
        ));
    }
    let trailer: [u8; TRAILER_LEN] = bytes[bytes.len() - TRAILER_LEN..]
        .try_into()
        .expect("10 bytes");
    let footer_len = arrow_ipc::reader::read_footer_length(trailer)?;
    let footer_start = bytes
        .len()
        .checked_sub(TRAILER_LEN + footer_len)
        .ok_or_else(|| {
            ArrowError::ParseError(format!("footer length {footer_len} exceeds the file"))
        })?;
    arrow_ipc::root_as_footer(&bytes[footer_start..bytes.len() - TRAILER_LEN])
        .map_err(|e| ArrowError::ParseError(format!("invalid IPC footer: {e}")))
}

/// The flatbuffer message of a block, verified, plus the block's byte range.
/// The byte range `[start, end)` of a block (metadata + body), checked against
/// the file, plus the metadata length.
fn block_range(bytes: &[u8], block: &Block) -> Result<(usize, usize, usize), ArrowError> {
    let bad = || {
        ArrowError::ParseError(format!(
            "IPC block at offset {} lies outside the file",
            block.offset()
        ))
    };
    let start = usize::try_from(block.offset()).map_err(|_| bad())?;
    let meta = usize::try_from(block.metaDataLength()).map_err(|_| bad())?;
    let body = usize::try_from(block.bodyLength()).map_err(|_| bad())?;
    let end = start
        .checked_add(meta)
        .and_then(|e| e.checked_add(body))
        .ok_or_else(bad)?;
    if end > bytes.len() || meta < 8 {
        return Err(bad());
    }
    Ok((start, end, meta))
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
    let len = i32::from_le_bytes(head[len_at..len_at + 4].try_into().expect("4 bytes"));
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

/// Checks the structure of an IPC file (magic, footer, schema, every block in
/// bounds with a record batch header, every array's buffers large enough for
/// its length) and counts rows. Cost grows with the number of arrays, not with
/// the data size. The server runs it at seal so readers need not.
pub fn check_file(bytes: &[u8]) -> Result<FileSummary, ArrowError> {
    // Arrow's decoder asserts on some malformed inputs (bit lengths past a
    // buffer); a bad object must be an error, never a dead server thread.
    std::panic::catch_unwind(|| check_file_inner(bytes)).unwrap_or_else(|_| {
        Err(ArrowError::ParseError(
            "malformed IPC file (arrow's decoder rejected it)".into(),
        ))
    })
}

fn check_file_inner(bytes: &[u8]) -> Result<FileSummary, ArrowError> {
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
    let (_, batches) = decode(&buffer, None, true)?;
    drop(batches);
    Ok(summary)
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

/// Opens an IPC file held in `buffer` without copying: every array buffer of
/// the result is a slice of `buffer` (and so keeps its owner alive).
/// `projection` selects columns by index.
///
/// Nothing is validated here, so a get costs the same whatever the table's size:
/// the server checked the layout of every batch when the object was sealed
/// (`check_file`), and sealed objects never change. Element contents (UTF-8,
/// offset values) are never validated: objects come from trusted writers, the
/// same trust the socket's file permissions grant (see docs/OPERATING.md).
pub fn open_file(
    buffer: &Buffer,
    projection: Option<Vec<usize>>,
) -> Result<(SchemaRef, Vec<RecordBatch>), ArrowError> {
    decode(buffer, projection, false)
}

fn decode(
    buffer: &Buffer,
    projection: Option<Vec<usize>>,
    check_layout: bool,
) -> Result<(SchemaRef, Vec<RecordBatch>), ArrowError> {
    let bytes = buffer.as_slice();
    let footer = footer(bytes)?;
    let fb_schema = footer
        .schema()
        .ok_or_else(|| ArrowError::ParseError("IPC footer has no schema".into()))?;
    let schema = Arc::new(arrow_ipc::convert::try_fb_to_schema(fb_schema)?);
    let mut decoder =
        FileDecoder::new(schema.clone(), footer.version()).with_require_alignment(true);
    // SAFETY: skips arrow's per-element validation. Structure was checked at seal
    // by `check_file` (layouts) and the flatbuffers are verified on every read;
    // element contents are trusted (see the doc comment of `open_file`).
    decoder = unsafe { decoder.with_skip_validation(true) };
    let out_schema = match &projection {
        Some(p) => Arc::new(schema.project(p)?),
        None => schema.clone(),
    };
    if let Some(p) = projection {
        decoder = decoder.with_projection(p);
    }
    for block in footer.dictionaries().into_iter().flatten() {
        let (start, end, _) = block_range(bytes, block)?;
        decoder.read_dictionary(block, &buffer.slice_with_length(start, end - start))?;
    }
    let mut batches = Vec::new();
    for block in footer.recordBatches().into_iter().flatten() {
        let (start, end, _) = block_range(bytes, block)?;
        if let Some(b) =
            decoder.read_record_batch(block, &buffer.slice_with_length(start, end - start))?
        {
            if check_layout {
                for col in b.columns() {
                    check_layout_of(&col.to_data())?;
                }
            }
            batches.push(b);
        }
    }
    Ok((out_schema, batches))
}

/// Buffer sizes against lengths and offsets, recursively: O(arrays), not O(data).
fn check_layout_of(data: &arrow_data::ArrayData) -> Result<(), ArrowError> {
    data.validate()?;
    data.child_data().iter().try_for_each(check_layout_of)
}

/// The schema in an IPC file's footer, without touching data.
pub fn file_schema(bytes: &[u8]) -> Result<Schema, ArrowError> {
    let footer = footer(bytes)?;
    let fb_schema = footer
        .schema()
        .ok_or_else(|| ArrowError::ParseError("IPC footer has no schema".into()))?;
    arrow_ipc::convert::try_fb_to_schema(fb_schema)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, StringArray};
    use arrow_schema::{DataType, Field};

    fn sample() -> (Schema, Vec<RecordBatch>) {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
        ]);
        let b = RecordBatch::try_new(
            Arc::new(schema.clone()),
            vec![
                Arc::new(Int64Array::from_iter_values(0..1000)),
                Arc::new(StringArray::from_iter(
                    (0..1000).map(|i| (i % 7 != 0).then(|| format!("v{i}"))),
                )),
            ],
        )
        .unwrap();
        (schema, vec![b.clone(), b.slice(10, 100)])
    }

    #[test]
    fn write_check_open_round_trip() {
        let (schema, batches) = sample();
        let mut dest = vec![0u8; file_size_bound(&schema, &batches)];
        let n = write_file(&mut dest, &schema, &batches).unwrap();
        assert!(n <= dest.len());
        let summary = check_file(&dest[..n]).unwrap();
        assert_eq!(
            summary,
            FileSummary {
                rows: 1100,
                batches: 2,
                columns: 2
            }
        );
        let buffer = Buffer::from(dest[..n].to_vec());
        let (s, got) = open_file(&buffer, None).unwrap();
        assert_eq!(s.as_ref(), &schema);
        assert_eq!(got, batches);
        let (s, got) = open_file(&buffer, Some(vec![1])).unwrap();
        assert_eq!(s.fields().len(), 1);
        assert_eq!(got[0].column(0), batches[0].column(1));
    }

    #[test]
    fn too_small_destination_is_an_error() {
        let (schema, batches) = sample();
        let mut dest = vec![0u8; 100];
        assert!(write_file(&mut dest, &schema, &batches).is_err());
    }

    #[test]
    fn garbage_and_truncation_are_errors() {
        assert!(check_file(b"hello").is_err());
        assert!(check_file(&[0u8; 4096]).is_err());
        let (schema, batches) = sample();
        let mut dest = vec![0u8; file_size_bound(&schema, &batches)];
        let n = write_file(&mut dest, &schema, &batches).unwrap();
        for cut in [n - 1, n - 11, n / 2, 8] {
            assert!(check_file(&dest[..cut]).is_err(), "cut at {cut}");
        }
        // Corrupt the footer length.
        let mut bad = dest[..n].to_vec();
        bad[n - 10..n - 6].copy_from_slice(&i32::MAX.to_le_bytes());
        assert!(check_file(&bad).is_err());
    }

    proptest::proptest! {
        /// A sealed object with corrupted bytes is an error (or, if the flip hit
        /// padding, a valid file), never a panic.
        #[test]
        fn corrupted_files_never_panic(flips in proptest::collection::vec((0usize..100_000, 0u8..=255), 1..8)) {
            let (schema, batches) = sample();
            let mut dest = vec![0u8; file_size_bound(&schema, &batches)];
            let n = write_file(&mut dest, &schema, &batches).unwrap();
            let mut bad = dest[..n].to_vec();
            for (at, byte) in flips {
                let i = at % n;
                bad[i] = byte;
            }
            let _ = check_file(&bad);
        }
    }
}
