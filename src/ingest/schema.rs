//! The Arrow schema an ingest produces: the file's schema with dictionary
//! columns decoded to their values and view types to their offset-based
//! forms, the requested columns, and the check that every file of a
//! directory agrees.
//!
//! Dictionaries: top-level string and binary columns that Parquet stores as
//! dictionaries of few values stay Arrow dictionaries (`dictionary.rs` unifies
//! the row groups' dictionaries into one per column and picks the smallest
//! index type); everything else decodes to plain types (nested dictionaries
//! included). A column is kept as a dictionary when the file's Arrow schema
//! says it is one (pyarrow writes Categoricals so), or when in every row group
//! of every file it is dictionary-encoded on every data page (the page
//! encoding statistics say so) with a dictionary page of at most one byte per
//! row: writers fall back to plain pages once a dictionary outgrows its page
//! limit (1 MiB in parquet-cpp and arrow-rs), so unique strings never pass,
//! and small row groups of unique strings fail the byte-per-row test. Views
//! (`Utf8View`) need 16-byte alignment and bloat IPC, so strings decode to
//! `Utf8`/`LargeUtf8`.

use std::path::Path;
use std::sync::Arc;

use arrow_schema::{DataType, Field, FieldRef, Fields, Schema, SchemaRef};
use parquet::basic::Encoding;
use parquet::file::metadata::{ColumnChunkMetaData, ParquetMetaData};

use super::error::IngestError;

/// `t` with dictionaries replaced by their value type and views by their
/// offset-based forms, recursively.
pub fn plain_type(t: &DataType) -> DataType {
    match t {
        DataType::Dictionary(_, value) => plain_type(value),
        DataType::Utf8View => DataType::Utf8,
        DataType::BinaryView => DataType::Binary,
        DataType::ListView(f) | DataType::List(f) => DataType::List(plain_field(f)),
        DataType::LargeListView(f) | DataType::LargeList(f) => DataType::LargeList(plain_field(f)),
        DataType::FixedSizeList(f, n) => DataType::FixedSizeList(plain_field(f), *n),
        DataType::Map(f, sorted) => DataType::Map(plain_field(f), *sorted),
        DataType::Struct(fields) => DataType::Struct(plain_fields(fields)),
        other => other.clone(),
    }
}

fn plain_field(f: &FieldRef) -> FieldRef {
    Arc::new(f.as_ref().clone().with_data_type(plain_type(f.data_type())))
}

fn plain_fields(fields: &Fields) -> Fields {
    fields.iter().map(plain_field).collect()
}

/// The schema to decode into: `schema` with every field made plain. Keeps
/// schema metadata (pandas index information, for example).
pub fn plain_schema(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new_with_metadata(
        plain_fields(schema.fields()),
        schema.metadata().clone(),
    ))
}

/// String and binary types: the value types a kept dictionary may have.
pub fn is_byte_like(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Binary | DataType::LargeBinary
    )
}

/// The schema the decoders produce: `plain` (the file's schema made plain)
/// with the top-level columns `dictionary_columns` chose as
/// `Dictionary(Int32, values)` (the final index type is chosen once the
/// dictionary is known), and which columns those are.
pub fn decode_schema(plain: &SchemaRef, dictionary: &[bool]) -> SchemaRef {
    let fields: Vec<FieldRef> = plain
        .fields()
        .iter()
        .zip(dictionary)
        .map(|(f, &d)| {
            if d {
                let t = DataType::Dictionary(
                    Box::new(DataType::Int32),
                    Box::new(f.data_type().clone()),
                );
                Arc::new(f.as_ref().clone().with_data_type(t))
            } else {
                f.clone()
            }
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, plain.metadata().clone()))
}

/// Which top-level columns of `file_schema` (the first file's Arrow schema,
/// before `plain_schema`) stay dictionaries, by the rule in the module
/// comment, over the row groups of every file in `metadata`.
pub fn dictionary_columns(file_schema: &Schema, metadata: &[&ParquetMetaData]) -> Vec<bool> {
    let Some(descr) = metadata.first().map(|m| m.file_metadata().schema_descr()) else {
        return vec![false; file_schema.fields().len()];
    };
    // The leaf column of each root that is a single leaf.
    let roots = descr.root_schema().get_fields().len();
    let mut leaf_of_root: Vec<Option<usize>> = vec![None; roots];
    let mut leaves_of_root = vec![0usize; roots];
    for leaf in 0..descr.num_columns() {
        let r = descr.get_column_root_idx(leaf);
        if let Some(n) = leaves_of_root.get_mut(r) {
            *n += 1;
            leaf_of_root[r] = Some(leaf);
        }
    }
    let any_row_group = metadata.iter().any(|m| m.num_row_groups() > 0);
    file_schema
        .fields()
        .iter()
        .enumerate()
        .map(|(r, f)| {
            let t = f.data_type();
            let plain = plain_type(t);
            if !is_byte_like(&plain) || roots != file_schema.fields().len() {
                return false;
            }
            if let DataType::Dictionary(_, _) = t {
                return true;
            }
            let Some(leaf) = leaf_of_root[r].filter(|_| leaves_of_root[r] == 1) else {
                return false;
            };
            any_row_group
                && metadata.iter().all(|m| {
                    m.row_groups()
                        .iter()
                        .all(|rg| rg.columns().get(leaf).is_some_and(low_cardinality_chunk))
                })
        })
        .collect()
}

/// A column chunk dictionary-encoded on every data page, whose dictionary
/// page takes at most a byte per value.
fn low_cardinality_chunk(c: &ColumnChunkMetaData) -> bool {
    let Some(dict_at) = c.dictionary_page_offset() else {
        return false;
    };
    let all_dictionary = c.page_encoding_stats_mask().is_some_and(|m| {
        m.is_only(Encoding::PLAIN_DICTIONARY) || m.is_only(Encoding::RLE_DICTIONARY)
    });
    let dict_bytes = c.data_page_offset().saturating_sub(dict_at);
    all_dictionary && dict_bytes > 0 && dict_bytes <= c.num_values()
}

pub use crate::ipc::write::has_dictionary;

/// Indices of the requested top-level columns, in schema order (all when
/// `columns` is empty).
pub fn column_indices(
    schema: &Schema,
    columns: &[String],
    path: &Path,
) -> Result<Vec<usize>, IngestError> {
    if columns.is_empty() {
        return Ok((0..schema.fields().len()).collect());
    }
    let mut indices = Vec::with_capacity(columns.len());
    for c in columns {
        let idx = schema.index_of(c).map_err(|_| IngestError::UnknownColumn {
            path: path.into(),
            column: c.clone(),
            available: schema.fields().iter().map(|f| f.name().clone()).collect(),
        })?;
        indices.push(idx);
    }
    indices.sort_unstable();
    indices.dedup();
    Ok(indices)
}

/// How `other` differs from `first` (names, order, types, nullability; not
/// metadata), or `None` if they describe the same table.
pub fn difference(first: &Schema, other: &Schema) -> Option<String> {
    let (a, b) = (first.fields(), other.fields());
    for (i, (fa, fb)) in a.iter().zip(b.iter()).enumerate() {
        if fa.name() != fb.name() {
            return Some(format!(
                "column {i} is {:?} in the first file and {:?} here",
                fa.name(),
                fb.name()
            ));
        }
        if !same_type(fa.data_type(), fb.data_type()) {
            return Some(format!(
                "column {:?} is {} in the first file and {} here",
                fa.name(),
                fa.data_type(),
                fb.data_type()
            ));
        }
        if fa.is_nullable() != fb.is_nullable() {
            let n = |f: &Field| {
                if f.is_nullable() {
                    "nullable"
                } else {
                    "not nullable"
                }
            };
            return Some(format!(
                "column {:?} is {} in the first file and {} here",
                fa.name(),
                n(fa),
                n(fb)
            ));
        }
    }
    if a.len() != b.len() {
        let names = |fs: &Fields| {
            fs.iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Some(format!(
            "the first file has {} columns ({}), this one {} ({})",
            a.len(),
            names(a),
            b.len(),
            names(b)
        ));
    }
    None
}

/// Type equality that ignores field metadata (Parquet field ids differ
/// between writers) but not names, nullability or nesting.
fn same_type(a: &DataType, b: &DataType) -> bool {
    let same_field = |x: &FieldRef, y: &FieldRef| {
        x.name() == y.name()
            && x.is_nullable() == y.is_nullable()
            && same_type(x.data_type(), y.data_type())
    };
    match (a, b) {
        (DataType::List(x), DataType::List(y))
        | (DataType::LargeList(x), DataType::LargeList(y)) => same_field(x, y),
        (DataType::FixedSizeList(x, n), DataType::FixedSizeList(y, m)) => {
            n == m && same_field(x, y)
        }
        (DataType::Map(x, s), DataType::Map(y, t)) => s == t && same_field(x, y),
        (DataType::Struct(xs), DataType::Struct(ys)) => {
            xs.len() == ys.len() && xs.iter().zip(ys.iter()).all(|(x, y)| same_field(x, y))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionaries_and_views_become_plain() {
        let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
        assert_eq!(plain_type(&dict), DataType::Utf8);
        let nested = DataType::List(Arc::new(Field::new(
            "item",
            DataType::Struct(
                vec![
                    Field::new("s", dict.clone(), true),
                    Field::new("v", DataType::Utf8View, true),
                ]
                .into(),
            ),
            true,
        )));
        let plain = plain_type(&nested);
        assert!(has_dictionary(&nested));
        assert!(!has_dictionary(&plain));
        assert!(!format!("{plain}").contains("View"));
    }

    /// Writes `columns` as Parquet in row groups of `rg` rows and returns
    /// which columns `dictionary_columns` keeps.
    fn kept(columns: Vec<(&str, arrow_array::ArrayRef)>, rg: usize) -> Vec<bool> {
        use parquet::arrow::ArrowWriter;
        let batch = arrow_array::RecordBatch::try_from_iter(columns).unwrap();
        let props = parquet::file::properties::WriterProperties::builder()
            .set_max_row_group_row_count(Some(rg))
            .build();
        let mut buf = Vec::new();
        let mut w = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let bytes = bytes::Bytes::from(buf);
        let meta = parquet::file::metadata::ParquetMetaDataReader::new()
            .parse_and_finish(&bytes)
            .unwrap();
        dictionary_columns(&batch.schema(), &[&meta])
    }

    #[test]
    fn low_cardinality_strings_stay_dictionaries() {
        use arrow_array::{ArrayRef, Int64Array, StringArray};
        let n = 10_000;
        let labels: ArrayRef = Arc::new(StringArray::from_iter_values(
            (0..n).map(|i| format!("label-{}", i % 40)),
        ));
        let unique: ArrayRef = Arc::new(StringArray::from_iter_values(
            (0..n).map(|i| format!("row-{i:08}")),
        ));
        let ints: ArrayRef = Arc::new(Int64Array::from_iter_values((0..n as i64).map(|i| i % 3)));
        let cols = || {
            vec![
                ("labels", labels.clone()),
                ("unique", unique.clone()),
                ("ints", ints.clone()),
            ]
        };
        assert_eq!(kept(cols(), 1000), vec![true, false, false]);
        // Row groups of 50 rows: unique strings fit their dictionary page but
        // fail the byte-per-row test, and so do the 40 labels (a dictionary
        // page of 40 values for 50 rows says nothing of the whole column).
        assert_eq!(kept(cols(), 50), vec![false, false, false]);
    }

    #[test]
    fn differences_are_described() {
        let a = Schema::new(vec![
            Field::new("x", DataType::Int64, true),
            Field::new("y", DataType::Utf8, true),
        ]);
        let b = Schema::new(vec![
            Field::new("x", DataType::Int64, true),
            Field::new("y", DataType::Int32, true),
        ]);
        let c = Schema::new(vec![Field::new("x", DataType::Int64, true)]);
        assert_eq!(difference(&a, &a), None);
        assert!(difference(&a, &b).unwrap().contains("\"y\""));
        assert!(difference(&a, &c).unwrap().contains("2 columns"));
    }
}
