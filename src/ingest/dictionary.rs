//! One dictionary per kept dictionary column, from the row groups' own.
//!
//! Every Parquet column chunk has its own dictionary, and a table version
//! (an IPC file) has one dictionary per column. As units are decoded (on the
//! decoder threads, in any order), each batch's dictionary values are
//! interned into the column's table-wide dictionary (arrow's
//! `GenericByteDictionaryBuilder` is the interner: one lock per column, held
//! for the few distinct values of a batch, not its rows) and its keys are
//! rewritten to the table-wide ones, in the narrowest index type that fits
//! the dictionary so far. When the table is complete, every batch's keys are
//! widened to the index type the whole dictionary needs: `Int8` up to 128
//! values, `Int16` up to 32768, else `Int32` (signed, as pandas and the Arrow
//! format recommend). The values go into the version once, in first-seen
//! order.

use std::sync::{Arc, Mutex};

use arrow_array::builder::GenericByteDictionaryBuilder;
use arrow_array::cast::AsArray;
use arrow_array::types::{
    ArrowDictionaryKeyType, BinaryType, ByteArrayType, Int16Type, Int32Type, Int8Type,
    LargeBinaryType, LargeUtf8Type, Utf8Type,
};
use arrow_array::{Array, ArrayRef, PrimitiveArray};
use arrow_buffer::{NullBuffer, ScalarBuffer};
use arrow_schema::{ArrowError, DataType};

/// Interns values of one type into a table-wide dictionary.
trait Intern: Send {
    /// The table-wide key of each of `values` (0 for a null value: its rows
    /// are null).
    fn intern(&mut self, values: &dyn Array) -> Result<Vec<u32>, ArrowError>;
    fn len(&self) -> usize;
    /// The dictionary's values, in key order.
    fn values(&mut self) -> ArrayRef;
}

struct ByteInterner<T: ByteArrayType> {
    builder: GenericByteDictionaryBuilder<Int32Type, T>,
    /// Distinct values so far.
    len: usize,
}

impl<T: ByteArrayType> ByteInterner<T> {
    fn boxed() -> Box<dyn Intern> {
        Box::new(ByteInterner::<T> {
            builder: GenericByteDictionaryBuilder::new(),
            len: 0,
        })
    }
}

impl<T: ByteArrayType> Intern for ByteInterner<T> {
    fn intern(&mut self, values: &dyn Array) -> Result<Vec<u32>, ArrowError> {
        let v = values.as_bytes_opt::<T>().ok_or_else(|| {
            ArrowError::InvalidArgumentError(format!(
                "dictionary values of type {} where {} was planned",
                values.data_type(),
                T::DATA_TYPE
            ))
        })?;
        (0..v.len())
            .map(|i| {
                if v.is_null(i) {
                    Ok(0)
                } else {
                    let k = self.builder.append(v.value(i))? as u32;
                    self.len = self.len.max(k as usize + 1);
                    Ok(k)
                }
            })
            .collect()
    }

    fn len(&self) -> usize {
        self.len
    }

    fn values(&mut self) -> ArrayRef {
        self.len = 0;
        self.builder.finish().values().clone()
    }
}

fn interner(values: &DataType) -> Option<Box<dyn Intern>> {
    Some(match values {
        DataType::Utf8 => ByteInterner::<Utf8Type>::boxed(),
        DataType::LargeUtf8 => ByteInterner::<LargeUtf8Type>::boxed(),
        DataType::Binary => ByteInterner::<BinaryType>::boxed(),
        DataType::LargeBinary => ByteInterner::<LargeBinaryType>::boxed(),
        _ => return None,
    })
}

/// The index type for a dictionary of `len` values.
pub fn key_type(len: usize) -> DataType {
    if len <= 1 << 7 {
        DataType::Int8
    } else if len <= 1 << 15 {
        DataType::Int16
    } else {
        DataType::Int32
    }
}

/// The table-wide dictionaries of an ingest, by column of the decode schema
/// (`None` for plain columns).
pub struct Dictionaries {
    columns: Vec<Option<Mutex<Box<dyn Intern>>>>,
}

impl Dictionaries {
    /// Dictionaries for the columns of `types` (the decode schema's) that are
    /// dictionaries of string or binary values.
    pub fn new<'a>(types: impl Iterator<Item = &'a DataType>) -> Dictionaries {
        Dictionaries {
            columns: types
                .map(|t| match t {
                    DataType::Dictionary(_, v) => interner(v).map(Mutex::new),
                    _ => None,
                })
                .collect(),
        }
    }

    pub fn is_dictionary(&self, column: usize) -> bool {
        matches!(self.columns.get(column), Some(Some(_)))
    }

    /// Keys of `array` (a batch of dictionary column `column`, as decoded)
    /// rewritten to the column's table-wide dictionary. `cache` holds the
    /// last batch's dictionary and its table-wide keys: batches of one column
    /// chunk share their dictionary, which is then interned once.
    pub fn remap(
        &self,
        column: usize,
        array: &ArrayRef,
        cache: &mut Option<(ArrayRef, Arc<Vec<u32>>)>,
    ) -> Result<ArrayRef, ArrowError> {
        let Some(Some(interner)) = self.columns.get(column) else {
            return Err(ArrowError::InvalidArgumentError(format!(
                "column {column} has no dictionary"
            )));
        };
        let encoded;
        let dict = match array.as_dictionary_opt::<Int32Type>() {
            Some(d) => d,
            None => {
                // A decoder that gave other keys or plain values: encode.
                let values = match array.data_type() {
                    DataType::Dictionary(_, v) => v.as_ref().clone(),
                    t => t.clone(),
                };
                let t = DataType::Dictionary(Box::new(DataType::Int32), Box::new(values));
                encoded = arrow_cast::cast(array, &t)?;
                encoded.as_dictionary::<Int32Type>()
            }
        };
        let values = dict.values();
        let mapping = match cache {
            Some((v, m)) if Arc::ptr_eq(v, values) => m.clone(),
            _ => {
                let m = {
                    let mut i = interner.lock().unwrap_or_else(|p| p.into_inner());
                    Arc::new(i.intern(values.as_ref())?)
                };
                *cache = Some((values.clone(), m.clone()));
                m
            }
        };
        let nulls = dict.logical_nulls();
        let keys = dict.keys().values();
        let max = mapping.iter().copied().max().unwrap_or(0) as usize;
        match key_type(max + 1) {
            DataType::Int8 => gather::<Int8Type>(keys, &mapping, nulls),
            DataType::Int16 => gather::<Int16Type>(keys, &mapping, nulls),
            _ => gather::<Int32Type>(keys, &mapping, nulls),
        }
    }

    /// Dictionary column `column`'s values, in key order (the interner
    /// starts over).
    pub fn values(&self, column: usize) -> Option<ArrayRef> {
        let i = self.columns.get(column)?.as_ref()?;
        Some(i.lock().unwrap_or_else(|p| p.into_inner()).values())
    }

    /// How many values dictionary column `column` has.
    pub fn len(&self, column: usize) -> usize {
        match self.columns.get(column) {
            Some(Some(i)) => i.lock().unwrap_or_else(|p| p.into_inner()).len(),
            _ => 0,
        }
    }
}

/// `mapping[key]` for every valid key, 0 for null ones, as keys of type `K`.
fn gather<K: ArrowDictionaryKeyType>(
    keys: &ScalarBuffer<i32>,
    mapping: &[u32],
    nulls: Option<NullBuffer>,
) -> Result<ArrayRef, ArrowError>
where
    K::Native: TryFrom<u32>,
{
    let out_of_range = |k: i32| {
        ArrowError::InvalidArgumentError(format!(
            "dictionary key {k} outside a dictionary of {} values",
            mapping.len()
        ))
    };
    let narrow = |v: u32| K::Native::try_from(v).map_err(|_| out_of_range(v as i32));
    let mut out: Vec<K::Native> = Vec::with_capacity(keys.len());
    match &nulls {
        None => {
            for &k in keys.iter() {
                let v = *mapping.get(k as usize).ok_or_else(|| out_of_range(k))?;
                out.push(narrow(v)?);
            }
        }
        Some(n) => {
            for (i, &k) in keys.iter().enumerate() {
                let v = if n.is_valid(i) {
                    *mapping.get(k as usize).ok_or_else(|| out_of_range(k))?
                } else {
                    0
                };
                out.push(narrow(v)?);
            }
        }
    }
    Ok(Arc::new(PrimitiveArray::<K>::new(out.into(), nulls)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{DictionaryArray, Int32Array, StringArray};

    fn dict(keys: Vec<Option<i32>>, values: &[&str]) -> ArrayRef {
        Arc::new(
            DictionaryArray::<Int32Type>::try_new(
                Int32Array::from(keys),
                Arc::new(StringArray::from(values.to_vec())),
            )
            .unwrap(),
        )
    }

    #[test]
    fn row_groups_share_one_dictionary_with_narrow_keys() {
        let t = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
        let d = Dictionaries::new([DataType::Int64, t].iter());
        assert!(!d.is_dictionary(0) && d.is_dictionary(1));
        let mut cache = None;
        let a = d
            .remap(
                1,
                &dict(vec![Some(0), None, Some(1)], &["x", "y"]),
                &mut cache,
            )
            .unwrap();
        let mut other = None;
        let b = d
            .remap(1, &dict(vec![Some(1), Some(0)], &["y", "z"]), &mut other)
            .unwrap();
        assert_eq!(a.data_type(), &DataType::Int8);
        let a = a.as_primitive::<Int8Type>();
        assert_eq!(a.iter().collect::<Vec<_>>(), vec![Some(0), None, Some(1)]);
        let b = b.as_primitive::<Int8Type>();
        assert_eq!(b.iter().collect::<Vec<_>>(), vec![Some(2), Some(1)]);
        assert_eq!(d.len(1), 3);
        let values = d.values(1).unwrap();
        assert_eq!(
            values.as_string::<i32>().iter().collect::<Vec<_>>(),
            vec![Some("x"), Some("y"), Some("z")]
        );
        assert!(d.remap(0, &dict(vec![], &[]), &mut None).is_err());
    }

    #[test]
    fn keys_outside_the_dictionary_are_errors() {
        let keys = ScalarBuffer::from(vec![0, 5]);
        assert!(gather::<Int8Type>(&keys, &[0], None).is_err());
        assert!(gather::<Int8Type>(&keys, &[0], Some(NullBuffer::from(vec![true, false]))).is_ok());
        // A table-wide key too large for the index type is an error, not a wrap.
        assert!(gather::<Int8Type>(&ScalarBuffer::from(vec![0]), &[300], None).is_err());
    }

    #[test]
    fn index_types_grow_with_the_dictionary() {
        assert_eq!(key_type(0), DataType::Int8);
        assert_eq!(key_type(128), DataType::Int8);
        assert_eq!(key_type(129), DataType::Int16);
        assert_eq!(key_type(32768), DataType::Int16);
        assert_eq!(key_type(32769), DataType::Int32);
    }
}
