//! An upper bound of the IPC file's size from the Parquet footer alone, so
//! that space can be reserved in the arena *before* decoding and each row
//! group written there as soon as it is decoded (see `stream.rs`).
//!
//! Fixed-width columns are exact (rows x width). Strings and binaries need
//! their decoded byte count: the footer's size statistics
//! (`unencoded_byte_array_data_bytes`, written by pyarrow >= 15 and
//! parquet-rs) give it; a chunk without a dictionary page is bounded by its
//! uncompressed size. Nested columns bound each level's entries by the value
//! count of the leaves under it. Anything else (a dictionary-encoded string
//! chunk without size statistics, an unusual type) gives no bound, and the
//! ingest decodes the whole table before reserving its exact size.

use arrow_schema::{DataType, Schema};
use parquet::file::metadata::{ColumnChunkMetaData, ParquetMetaData};

use super::decode::BATCH_ROWS;
use super::plan::leaves_by_root;

/// Metadata bytes of one record batch message, beyond 64 per field: the
/// continuation marker, length, flatbuffer header and padding.
const BATCH_MESSAGE_BYTES: u64 = 512;
/// Per field and batch: a field node and up to three buffer entries in the
/// metadata, and up to three buffers padded to 64 bytes in the body.
const FIELD_BATCH_BYTES: u64 = 64 + 3 * 64;

/// What the bound needs to know of one leaf column chunk.
#[derive(Debug, Clone, Copy)]
struct Leaf {
    /// Values including nulls (levels): bounds the entries of every level above.
    values: u64,
    /// Decoded bytes of a byte-array leaf, if known.
    bytes: Option<u64>,
    /// Nulls, from the statistics. A top-level column without nulls is
    /// written without a validity buffer.
    nulls: Option<u64>,
}

impl Leaf {
    fn of(c: &ColumnChunkMetaData) -> Leaf {
        let bytes = match c.unencoded_byte_array_data_bytes() {
            Some(n) if n >= 0 => Some(n as u64),
            // Without a dictionary, decoded values are never longer than the
            // uncompressed pages holding them (which add lengths and headers).
            _ if c.dictionary_page_offset().is_none() => Some(c.uncompressed_size().max(0) as u64),
            _ => None,
        };
        Leaf {
            values: c.num_values().max(0) as u64,
            bytes,
            nulls: c.statistics().and_then(|s| s.null_count_opt()),
        }
    }
}

/// Bytes of the IPC body and metadata of the batches of the requested
/// columns (`fields[i]` is top-level column `roots[i]`), over all files and
/// row groups; the caller adds the header and trailer. `None` if some column
/// cannot be bounded.
pub fn batches_bound(files: &[&ParquetMetaData], schema: &Schema, roots: &[usize]) -> Option<u64> {
    let fields_total: u64 = schema
        .fields()
        .iter()
        .map(|f| count_fields(f.data_type()))
        .sum();
    let mut total = 0u64;
    for metadata in files {
        let leaves_of = leaves_by_root(metadata.file_metadata().schema_descr());
        for rg in metadata.row_groups() {
            let rows = rg.num_rows().max(0) as u64;
            let batches = rows.div_ceil(BATCH_ROWS as u64);
            total = total
                .checked_add(batches * (BATCH_MESSAGE_BYTES + fields_total * FIELD_BATCH_BYTES))?;
            for (field, &root) in schema.fields().iter().zip(roots) {
                let leaves: Vec<Leaf> = leaves_of
                    .get(root)?
                    .iter()
                    .map(|&l| Leaf::of(rg.column(l)))
                    .collect();
                let mut at = 0;
                total = total.checked_add(column_bound(
                    field.data_type(),
                    rows,
                    batches,
                    &leaves,
                    &mut at,
                )?)?;
                if at != leaves.len() {
                    return None;
                }
            }
        }
    }
    Some(total)
}

/// Fields in a type, children included.
fn count_fields(t: &DataType) -> u64 {
    1 + match t {
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::FixedSizeList(f, _)
        | DataType::Map(f, _) => count_fields(f.data_type()),
        DataType::Struct(fs) => fs.iter().map(|f| count_fields(f.data_type())).sum(),
        _ => 0,
    }
}

/// Parquet leaves under a type.
fn count_leaves(t: &DataType) -> usize {
    match t {
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::FixedSizeList(f, _)
        | DataType::Map(f, _) => count_leaves(f.data_type()),
        DataType::Struct(fs) => fs.iter().map(|f| count_leaves(f.data_type())).sum(),
        _ => 1,
    }
}

/// Buffer bytes (unpadded; padding is in `FIELD_BATCH_BYTES`) of `entries`
/// values of type `t`, split into `batches` arrays, whose leaves start at
/// `leaves[*at]`. Each array has one offset more than its entries.
fn column_bound(
    t: &DataType,
    entries: u64,
    batches: u64,
    leaves: &[Leaf],
    at: &mut usize,
) -> Option<u64> {
    // A top-level leaf (entries are rows) without nulls gets no validity
    // buffer; everything else may.
    let top = *at == 0
        && count_leaves(t) == leaves.len()
        && entries == leaves.first().map_or(0, |l| l.values);
    let bitmap = entries.div_ceil(8);
    let mut validity = bitmap;
    let mut leaf = || -> Option<Leaf> {
        let l = leaves.get(*at).copied();
        *at += 1;
        if let Some(l) = l {
            if top && l.nulls == Some(0) {
                validity = 0;
            }
        }
        l
    };
    let bytes = match t {
        DataType::Null => {
            leaf()?;
            0
        }
        DataType::Boolean => {
            leaf()?;
            validity + bitmap
        }
        DataType::FixedSizeBinary(n) => {
            leaf()?;
            validity + entries.checked_mul(u64::try_from(*n).ok()?)?
        }
        DataType::Utf8 | DataType::Binary | DataType::LargeUtf8 | DataType::LargeBinary => {
            let l = leaf()?;
            let offset = if matches!(t, DataType::Utf8 | DataType::Binary) {
                4
            } else {
                8
            };
            // One extra offset per batch: entries + batches <= 2 * entries + 1.
            validity + (entries + batches).checked_mul(offset)? + l.bytes?
        }
        DataType::List(f) | DataType::LargeList(f) | DataType::Map(f, _) => {
            let offset = if matches!(t, DataType::LargeList(_)) {
                8
            } else {
                4
            };
            let n = count_leaves(f.data_type());
            let children = leaves.get(*at..*at + n)?.iter().map(|l| l.values).min()?;
            validity
                + (entries + batches).checked_mul(offset)?
                + column_bound(f.data_type(), children, batches, leaves, at)?
        }
        DataType::FixedSizeList(f, n) => {
            let children = entries.checked_mul(u64::try_from(*n).ok()?)?;
            validity + column_bound(f.data_type(), children, batches, leaves, at)?
        }
        DataType::Struct(fs) => {
            let mut sum = validity;
            for f in fs {
                sum =
                    sum.checked_add(column_bound(f.data_type(), entries, batches, leaves, at)?)?;
            }
            sum
        }
        other => {
            let width = other.primitive_width()? as u64;
            leaf()?;
            validity + entries.checked_mul(width)?
        }
    };
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_schema::Field;
    use std::sync::Arc;

    fn leaf(values: u64, bytes: Option<u64>) -> Leaf {
        Leaf {
            values,
            bytes,
            nulls: None,
        }
    }

    #[test]
    fn columns_without_nulls_have_no_validity_buffer() {
        let no_nulls = Leaf {
            values: 100,
            bytes: None,
            nulls: Some(0),
        };
        let mut at = 0;
        assert_eq!(
            column_bound(&DataType::Int64, 100, 1, &[no_nulls], &mut at),
            Some(800)
        );
        let some = Leaf {
            values: 100,
            bytes: None,
            nulls: Some(3),
        };
        let mut at = 0;
        assert_eq!(
            column_bound(&DataType::Int64, 100, 1, &[some], &mut at),
            Some(13 + 800)
        );
    }

    #[test]
    fn flat_and_nested_columns() {
        let mut at = 0;
        assert_eq!(
            column_bound(&DataType::Int64, 100, 1, &[leaf(100, None)], &mut at),
            Some(13 + 800)
        );
        let mut at = 0;
        assert_eq!(
            column_bound(&DataType::Utf8, 8, 2, &[leaf(8, Some(50))], &mut at),
            Some(1 + 10 * 4 + 50)
        );
        let mut at = 0;
        assert_eq!(
            column_bound(&DataType::Utf8, 8, 1, &[leaf(8, None)], &mut at),
            None,
            "unknown string bytes"
        );
        let list = DataType::List(Arc::new(Field::new("item", DataType::Int32, true)));
        let mut at = 0;
        assert_eq!(
            column_bound(&list, 10, 1, &[leaf(30, None)], &mut at),
            Some(2 + 11 * 4 + 4 + 120)
        );
        let st = DataType::Struct(
            vec![
                Field::new("a", DataType::Int8, true),
                Field::new("b", DataType::Boolean, true),
            ]
            .into(),
        );
        let mut at = 0;
        assert_eq!(
            column_bound(&st, 16, 1, &[leaf(16, None), leaf(16, None)], &mut at),
            Some(2 + (2 + 16) + (2 + 2))
        );
        assert_eq!(at, 2);
        let mut at = 0;
        assert_eq!(column_bound(&DataType::Utf8View, 1, 1, &[], &mut at), None);
    }
}
