//! Arrow IPC files in the arena: size bounds, writing into a byte slice,
//! structural validation (server, at seal) and zero-copy opening (clients).
//!
//! Objects are uncompressed Arrow IPC *files* (64-byte aligned buffers when
//! arrowpool writes them, 8-byte aligned from pyarrow), so the footer gives
//! random access to batches and columns without reading data. The seal-time
//! check lives in `check` (the file) and `layout` (each array); `manifest`
//! turns a sealed file into a table version that readers open as one IPC file
//! spanning the arena.

mod check;
#[deny(unsafe_code)]
mod layout;
#[deny(unsafe_code)]
pub mod manifest;
pub mod stream_copy;
pub mod write;

pub(crate) use check::quietly;
pub use check::{check_file, CheckError, FileSummary};

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

/// Reads the footer of an IPC file in `bytes` (flatbuffer-verified).
pub(crate) fn footer(bytes: &[u8]) -> Result<arrow_ipc::Footer<'_>, ArrowError> {
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
    let footer_bytes = &bytes[footer_start..bytes.len() - TRAILER_LEN];
    arrow_ipc::root_as_footer(footer_bytes).map_err(|e| match e {
        flatbuffers::InvalidFlatbuffer::Utf8Error { range, .. } => {
            let text = footer_bytes.get(range).unwrap_or_default();
            ArrowError::ParseError(format!(
                "schema metadata (or a field name) is not valid UTF-8: {:?}; arrow-rs reads \
                 metadata keys and values as text, so encode binary values (e.g. base64) \
                 before the put",
                String::from_utf8_lossy(&text[..text.len().min(64)])
            ))
        }
        e => ArrowError::ParseError(format!("invalid IPC footer: {e}")),
    })
}

/// The byte range `[start, end)` of a block (metadata + body), checked against
/// the file, plus the metadata length.
pub(crate) fn block_range(
    bytes: &[u8],
    block: &Block,
) -> Result<(usize, usize, usize), ArrowError> {
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

/// Opens an IPC file held in `buffer` without copying: every array buffer of
/// the result is a slice of `buffer` (and so keeps its owner alive).
/// `projection` selects columns by index.
///
/// Nothing is validated here, so a get costs the same whatever the table's size:
/// the server checked the layout of every batch when the object was sealed
/// (`check_file`), and sealed objects never change. Element contents (UTF-8,
/// offset values) are never validated: objects come from trusted writers, the
/// same trust the socket's file permissions grant (see docs/OPERATING.md).
///
/// Buffers whose offset in the file does not meet their type's alignment in
/// arrow-rs (16 bytes for decimal128/256, interval month-day-nano and views;
/// writers such as pyarrow align to 8) are copied into aligned memory: those
/// columns are not zero-copy for Rust readers. Everything else is.
pub fn open_file(
    buffer: &Buffer,
    projection: Option<Vec<usize>>,
) -> Result<(SchemaRef, Vec<RecordBatch>), ArrowError> {
    decode(buffer, projection)
}

/// Writes the table of the IPC file `bytes` (a checked version in the
/// arena, read in place) to `out` as a compact IPC file of its own: what a
/// spilled version's file holds. The bytes must stay unchanged meanwhile
/// (the caller holds a lease).
pub fn copy_file(bytes: &[u8], out: impl std::io::Write) -> Result<(), ArrowError> {
    let ptr = std::ptr::NonNull::new(bytes.as_ptr() as *mut u8)
        .ok_or_else(|| ArrowError::ParseError("null buffer".into()))?;
    // SAFETY: the Buffer borrows `bytes` without owning them (a unit owner);
    // every buffer and array made from it is dropped before this returns.
    let buffer = unsafe { Buffer::from_custom_allocation(ptr, bytes.len(), Arc::new(())) };
    let (schema, batches) = decode(&buffer, None)?;
    let mut w = arrow_ipc::writer::FileWriter::try_new(out, &schema)?;
    for b in &batches {
        w.write(b)?;
    }
    w.finish()
}

/// Decodes every batch without per-element validation: a batch's `num_rows`
/// is what its header claims, which its columns' lengths must still be checked
/// against (`check`).
pub(crate) fn decode(
    buffer: &Buffer,
    projection: Option<Vec<usize>>,
) -> Result<(SchemaRef, Vec<RecordBatch>), ArrowError> {
    let bytes = buffer.as_slice();
    let footer = footer(bytes)?;
    let fb_schema = footer
        .schema()
        .ok_or_else(|| ArrowError::ParseError("IPC footer has no schema".into()))?;
    let schema = Arc::new(arrow_ipc::convert::try_fb_to_schema(fb_schema)?);
    let mut decoder =
        FileDecoder::new(schema.clone(), footer.version()).with_require_alignment(false);
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
            batches.push(b);
        }
    }
    Ok((out_schema, batches))
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
