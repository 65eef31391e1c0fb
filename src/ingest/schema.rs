//! The Arrow schema an ingest produces: the file's schema with dictionary
//! columns decoded to their values and view types to their offset-based
//! forms, the requested columns, and the check that every file of a
//! directory agrees.
//!
//! Why decode dictionaries: the table is one IPC *file*, whose format forbids
//! a dictionary that changes between batches, and each Parquet row group (and
//! each file) carries its own dictionary. Asking the Parquet decoder for the
//! value type directly (through `ArrowReaderOptions::with_schema`) costs less
//! than decoding keys and casting afterwards. Views (`Utf8View`) need 16-byte
//! alignment and bloat IPC, so strings decode to `Utf8`/`LargeUtf8`.

use std::path::Path;
use std::sync::Arc;

use arrow_schema::{DataType, Field, FieldRef, Fields, Schema, SchemaRef};

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

/// True if any field (at any depth) is still dictionary-encoded.
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
