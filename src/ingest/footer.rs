//! The Parquet footer: read with the sans-IO metadata decoder, then checked
//! against the file so that nothing downstream trusts an offset blindly.

use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::Bytes;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataPushDecoder};
use parquet::DecodeResult;

use super::error::IngestError;
use super::files::Source;

/// Bytes read from the end of a file at first: footers are usually smaller,
/// so one read gets both the 8-byte tail and the metadata.
const TAIL_PREFETCH_BYTES: u64 = 64 * 1024;
/// Most metadata bytes an ingest accepts for one file. A footer claiming more
/// is corrupt (or not worth holding in memory).
pub const METADATA_BYTES_MAX: u64 = 256 * 1024 * 1024;
const MAGIC: &[u8; 4] = b"PAR1";
/// Rounds of "needs data" the metadata decoder may ask for.
const ROUNDS_MAX: usize = 8;

/// A file whose footer can be read: a local file or an object in a store.
pub trait FooterSource {
    /// The name errors give (a path, or a URL for an object).
    fn path(&self) -> &Path;
    /// The file's length in bytes.
    fn len(&self) -> u64;
    /// Exactly `len` bytes at `offset`.
    fn read_at(&self, offset: u64, len: u64) -> Result<Bytes, IngestError>;
}

impl FooterSource for Source {
    fn path(&self) -> &Path {
        &self.path
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, len: u64) -> Result<Bytes, IngestError> {
        let read_err = |err| IngestError::Read {
            path: self.path.clone(),
            offset,
            len,
            err,
        };
        let n =
            usize::try_from(len).map_err(|_| read_err(std::io::Error::other("range too large")))?;
        let mut buf = vec![0u8; n];
        self.buffered
            .read_exact_at(&mut buf, offset)
            .map_err(read_err)?;
        Ok(Bytes::from(buf))
    }
}

/// Reads and checks the footer of `source`. Page indexes are not read: the
/// ingest reads whole column chunks, so it never skips pages.
pub fn read_metadata(source: &dyn FooterSource) -> Result<ParquetMetaData, IngestError> {
    let path = source.path().to_owned();
    let file_len = source.len();
    let not_parquet = |err: String| IngestError::NotParquet {
        path: path.clone(),
        err,
    };
    if file_len < 12 {
        return Err(not_parquet(format!(
            "the file is {} bytes long; a Parquet file has at least 12 (magic, footer length, magic)",
            file_len
        )));
    }
    if source.read_at(0, 4)?.as_ref() != MAGIC {
        return Err(not_parquet(
            "it does not start with the Parquet magic bytes PAR1".into(),
        ));
    }
    let tail = TAIL_PREFETCH_BYTES.min(file_len);
    let start = file_len - tail;
    let tail_bytes = source.read_at(start, tail)?;
    if !tail_bytes.ends_with(MAGIC) {
        return Err(not_parquet(
            "it starts with the Parquet magic bytes but does not end with them: the file is truncated \
             (or still being written)"
                .into(),
        ));
    }
    // From here on the file claims to be Parquet: failures are a corrupt footer.
    let corrupt = |e: parquet::errors::ParquetError| IngestError::CorruptMetadata {
        path: path.clone(),
        problem: e.to_string(),
    };
    let mut decoder = ParquetMetaDataPushDecoder::try_new(file_len)
        .map_err(corrupt)?
        .with_page_index_policy(PageIndexPolicy::Skip);
    decoder
        .push_range(start..file_len, tail_bytes)
        .map_err(corrupt)?;
    for _ in 0..ROUNDS_MAX {
        match decoder.try_decode().map_err(corrupt)? {
            DecodeResult::Data(metadata) => {
                check_layout(&path, file_len, &metadata)?;
                return Ok(metadata);
            }
            DecodeResult::NeedsData(ranges) => {
                let mut data = Vec::with_capacity(ranges.len());
                for r in &ranges {
                    let len = r.end.saturating_sub(r.start);
                    if len > METADATA_BYTES_MAX || r.end > file_len {
                        return Err(IngestError::CorruptMetadata {
                            path: path.clone(),
                            problem: format!(
                                "the footer claims {len} bytes of metadata at offset {} in a file of {} bytes",
                                r.start, file_len
                            ),
                        });
                    }
                    data.push(source.read_at(r.start, len)?);
                }
                decoder.push_ranges(ranges, data).map_err(corrupt)?;
            }
            DecodeResult::Finished => break,
        }
    }
    Err(IngestError::CorruptMetadata {
        path,
        problem: "the metadata decoder kept asking for more data".into(),
    })
}

/// Checks what the decoders would otherwise trust (or assert on): every
/// column chunk lies inside the file, sizes and row counts are not negative,
/// each row group has one chunk per leaf column.
fn check_layout(path: &Path, file_len: u64, metadata: &ParquetMetaData) -> Result<(), IngestError> {
    let corrupt = |problem: String| IngestError::CorruptMetadata {
        path: path.to_owned(),
        problem,
    };
    let leaves = metadata.file_metadata().schema_descr().num_columns();
    if metadata.file_metadata().num_rows() < 0 {
        return Err(corrupt(format!(
            "negative row count {}",
            metadata.file_metadata().num_rows()
        )));
    }
    for (i, rg) in metadata.row_groups().iter().enumerate() {
        if rg.num_rows() < 0 {
            return Err(corrupt(format!(
                "row group {i} has a negative row count {}",
                rg.num_rows()
            )));
        }
        if rg.columns().len() != leaves {
            return Err(corrupt(format!(
                "row group {i} has {} column chunks for {leaves} leaf columns",
                rg.columns().len()
            )));
        }
        for (j, col) in rg.columns().iter().enumerate() {
            let start = col
                .dictionary_page_offset()
                .unwrap_or(col.data_page_offset());
            let len = col.compressed_size();
            let end = start.checked_add(len);
            let inside = start >= 0
                && col.data_page_offset() >= 0
                && len >= 0
                && end.is_some_and(|e| u64::try_from(e).is_ok_and(|e| e <= file_len));
            if !inside {
                return Err(corrupt(format!(
                    "column chunk {} of row group {i} claims bytes {start}..{} of a {}-byte file",
                    col.column_path(),
                    end.map_or_else(|| "overflow".to_string(), |e| e.to_string()),
                    file_len
                )));
            }
            if col.num_values() < 0 {
                return Err(corrupt(format!(
                    "column chunk {} of row group {i} has a negative value count",
                    j
                )));
            }
        }
    }
    Ok(())
}
