//! The seal-time layout check of one decoded array: everything a stock Arrow
//! reader (pyarrow, arrow-rs, DuckDB) trusts without checking, so that no table
//! the server accepted can make a reader read outside its buffers.
//!
//! Checked, recursively through children and dictionaries:
//! - buffer sizes against length and offset, child lengths, child counts
//!   (arrow's cheap `ArrayData::validate`);
//! - the null count against the validity bitmap (readers drop the bitmap when
//!   the count says 0, and then read every slot);
//! - offsets of string, binary, list and map columns (and their large variants):
//!   every one in range and monotonic, not only the first and the last;
//! - list views: every offset + size inside the child (arrow's `validate`);
//! - string and binary views: every out-of-line view names an existing data
//!   buffer and lies inside it;
//! - dictionary keys of valid slots inside the dictionary;
//! - union type ids declared by the type, dense union offsets inside their child;
//! - run ends positive, increasing, covering the array.
//!
//! Not checked, because a reader that trusts them stays in bounds: UTF-8 of
//! string values (a reader fails to decode, it does not crash), NaNs, decimal
//! precision, nulls in fields declared non-nullable, view prefixes that disagree
//! with the data, non-zero padding after the bytes of an inline view. Cost: one pass over offsets, views, keys and bitmaps, none over
//! fixed-width values or string bytes (measured in docs/ARCHITECTURE.md).

use arrow_buffer::ArrowNativeType;
use arrow_data::ArrayData;
use arrow_schema::{ArrowError, DataType};

/// Offsets scanned between early exits: large enough to vectorize, small
/// enough that a bad table is refused without reading all of it.
const SCAN_BLOCK: usize = 64 * 1024;

fn invalid(path: &str, what: String) -> ArrowError {
    ArrowError::InvalidArgumentError(format!("column {path}: {what}"))
}

/// Checks `data` and everything below it. `path` names the column in errors
/// (`"prices"`, `"prices.item"`).
pub fn check_array(data: &ArrayData, path: &str) -> Result<(), ArrowError> {
    data.validate().map_err(|e| invalid(path, e.to_string()))?;
    check_null_count(data, path)?;
    match data.data_type() {
        DataType::Utf8 | DataType::Binary => {
            check_offsets::<i32>(data, data.buffers()[1].len(), path)?
        }
        DataType::LargeUtf8 | DataType::LargeBinary => {
            check_offsets::<i64>(data, data.buffers()[1].len(), path)?
        }
        DataType::List(_) | DataType::Map(_, _) => {
            check_offsets::<i32>(data, data.child_data()[0].len(), path)?
        }
        DataType::LargeList(_) => check_offsets::<i64>(data, data.child_data()[0].len(), path)?,
        DataType::Utf8View | DataType::BinaryView => check_views(data, path)?,
        DataType::Dictionary(_, _) => check_dictionary_keys(data, path)?,
        // Rare in tables of this kind; arrow's own per-element checks are fast enough.
        DataType::Union(_, _) | DataType::RunEndEncoded(_, _) => data
            .validate_values()
            .map_err(|e| invalid(path, e.to_string()))?,
        _ => {}
    }
    for (i, child) in data.child_data().iter().enumerate() {
        check_array(
            child,
            &format!("{path}.{}", child_name(data.data_type(), i)),
        )?;
    }
    Ok(())
}

fn child_name(t: &DataType, i: usize) -> String {
    match t {
        DataType::Struct(fields) => fields.get(i).map_or(i.to_string(), |f| f.name().clone()),
        DataType::Union(fields, _) => fields
            .iter()
            .nth(i)
            .map_or(i.to_string(), |(_, f)| f.name().clone()),
        DataType::Dictionary(_, _) => "dictionary".into(),
        DataType::RunEndEncoded(_, _) => ["run_ends", "values"]
            .get(i)
            .map_or(i.to_string(), |s| s.to_string()),
        _ => "item".into(),
    }
}

fn check_null_count(data: &ArrayData, path: &str) -> Result<(), ArrowError> {
    let Some(nulls) = data.nulls() else {
        return Ok(());
    };
    let actual = nulls.len() - nulls.inner().count_set_bits();
    if actual != nulls.null_count() {
        return Err(invalid(
            path,
            format!(
                "null count {} does not match the {actual} nulls of its validity bitmap",
                nulls.null_count()
            ),
        ));
    }
    Ok(())
}

/// The first slot where `offsets` decrease; branch-free inside a block so it vectorizes.
fn decreasing_at<T: ArrowNativeType + PartialOrd>(offsets: &[T]) -> Option<usize> {
    if offsets.len() < 2 {
        return None;
    }
    let mut start = 0;
    while start + 1 < offsets.len() {
        let end = (start + SCAN_BLOCK + 1).min(offsets.len());
        let block = &offsets[start..end];
        let bad = block
            .iter()
            .zip(&block[1..])
            .fold(false, |bad, (a, b)| bad | (b < a));
        if bad {
            let i = block.windows(2).position(|w| w[1] < w[0]).unwrap_or(0);
            return Some(start + i);
        }
        start = end - 1;
    }
    None
}

/// Offsets `[offset, offset + len]` monotonic, the first non-negative and the
/// last at most `limit`.
fn check_offsets<T: ArrowNativeType + PartialOrd>(
    data: &ArrayData,
    limit: usize,
    path: &str,
) -> Result<(), ArrowError> {
    let all = data.buffers()[0].typed_data::<T>();
    if data.is_empty() && all.is_empty() {
        return Ok(());
    }
    // `validate` checked that the buffer holds offset + len + 1 offsets.
    let offsets = &all[data.offset()..data.offset() + data.len() + 1];
    if let Some(i) = decreasing_at(offsets) {
        return Err(invalid(
            path,
            format!(
                "offsets decrease at slot {i} ({:?} then {:?})",
                offsets[i],
                offsets[i + 1]
            ),
        ));
    }
    // Monotonic, so a non-negative first and a last within the limit put
    // every offset in [0, limit].
    if offsets[0] < T::usize_as(0) {
        return Err(invalid(
            path,
            format!("first offset {:?} is negative", offsets[0]),
        ));
    }
    let last = offsets[offsets.len() - 1].as_usize();
    if last > limit {
        return Err(invalid(
            path,
            format!("last offset {last} beyond the {limit} values it points into"),
        ));
    }
    Ok(())
}

/// Every view longer than 12 bytes (out of line) names one of the variadic data
/// buffers and lies inside it. Inline views (12 bytes or fewer) need nothing.
fn check_views(data: &ArrayData, path: &str) -> Result<(), ArrowError> {
    let views =
        &data.buffers()[0].as_slice()[data.offset() * 16..(data.offset() + data.len()) * 16];
    let buffers = &data.buffers()[1..];
    for (i, view) in views.chunks_exact(16).enumerate() {
        let word =
            |at: usize| u32::from_le_bytes([view[at], view[at + 1], view[at + 2], view[at + 3]]);
        let len = word(0);
        if len <= 12 {
            continue;
        }
        let (index, offset) = (word(8) as usize, word(12) as usize);
        let Some(buffer) = buffers.get(index) else {
            return Err(invalid(
                path,
                format!("view {i} names data buffer {index} of {}", buffers.len()),
            ));
        };
        if offset + len as usize > buffer.len() {
            return Err(invalid(
                path,
                format!(
                    "view {i} ({len} bytes at {offset}) lies outside its data buffer of {} bytes",
                    buffer.len()
                ),
            ));
        }
    }
    Ok(())
}

fn check_dictionary_keys(data: &ArrayData, path: &str) -> Result<(), ArrowError> {
    let DataType::Dictionary(key, _) = data.data_type() else {
        return Ok(());
    };
    let values = data.child_data()[0].len();
    match key.as_ref() {
        DataType::Int8 => check_keys::<i8>(data, values, path),
        DataType::Int16 => check_keys::<i16>(data, values, path),
        DataType::Int32 => check_keys::<i32>(data, values, path),
        DataType::Int64 => check_keys::<i64>(data, values, path),
        DataType::UInt8 => check_keys::<u8>(data, values, path),
        DataType::UInt16 => check_keys::<u16>(data, values, path),
        DataType::UInt32 => check_keys::<u32>(data, values, path),
        DataType::UInt64 => check_keys::<u64>(data, values, path),
        other => Err(invalid(
            path,
            format!("dictionary key type {other} is not an integer"),
        )),
    }
}

/// Keys of valid slots inside `[0, values)`. Writers put 0 (or another valid
/// key) under nulls, so one vectorized pass over all keys usually settles it;
/// only when that pass finds an out-of-range key are the nulls consulted.
fn check_keys<T: ArrowNativeType + PartialOrd>(
    data: &ArrayData,
    values: usize,
    path: &str,
) -> Result<(), ArrowError> {
    let keys = &data.buffers()[0].typed_data::<T>()[data.offset()..data.offset() + data.len()];
    let zero = T::usize_as(0);
    // A key type too small to hold `values` cannot exceed it.
    let limit = T::from_usize(values);
    let out = |k: &T| *k < zero || limit.is_some_and(|l| *k >= l);
    let any_out = keys
        .chunks(SCAN_BLOCK)
        .any(|block| block.iter().fold(false, |bad, k| bad | out(k)));
    if !any_out {
        return Ok(());
    }
    for (i, k) in keys.iter().enumerate() {
        if out(k) && data.is_valid(i) {
            return Err(invalid(
                path,
                format!("dictionary key {k:?} at slot {i} outside a dictionary of {values} values"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Array, DictionaryArray, Int32Array, ListArray, StringArray};
    use arrow_buffer::Buffer;
    use arrow_schema::Field;
    use std::sync::Arc;

    fn with_buffer(data: &ArrayData, i: usize, bytes: Vec<u8>) -> ArrayData {
        let mut buffers = data.buffers().to_vec();
        buffers[i] = Buffer::from_vec(bytes);
        // SAFETY: test-only: builds the invalid arrays the check must refuse; they
        // are only passed to the check, never read.
        #[allow(unsafe_code)]
        unsafe {
            data.clone()
                .into_builder()
                .buffers(buffers)
                .build_unchecked()
        }
    }

    fn i32s(v: &[i32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn valid_arrays_pass() {
        let s = StringArray::from(vec![Some("a"), None, Some("ccc")]);
        check_array(&s.to_data(), "s").unwrap();
        let l = ListArray::from_iter_primitive::<arrow_array::types::Int32Type, _, _>(vec![
            Some(vec![Some(1), None]),
            None,
            Some(vec![]),
        ]);
        check_array(&l.to_data(), "l").unwrap();
        let d: DictionaryArray<arrow_array::types::Int8Type> =
            vec![Some("x"), None, Some("y")].into_iter().collect();
        check_array(&d.to_data(), "d").unwrap();
        check_array(&s.slice(1, 2).to_data(), "s").unwrap();
    }

    #[test]
    fn non_monotonic_string_offsets_are_refused() {
        let s = StringArray::from(vec!["ab", "cd", "ef"]);
        let bad = with_buffer(&s.to_data(), 0, i32s(&[0, 4, 2, 6]));
        let e = check_array(&bad, "s").unwrap_err().to_string();
        assert!(e.contains("offsets decrease at slot 1"), "{e}");
    }

    #[test]
    fn list_offsets_past_the_child_are_refused() {
        let l = ListArray::new(
            Arc::new(Field::new_list_field(DataType::Int32, true)),
            arrow_buffer::OffsetBuffer::new(vec![0, 1, 2].into()),
            Arc::new(Int32Array::from(vec![1, 2])),
            None,
        );
        let bad = with_buffer(&l.to_data(), 0, i32s(&[0, 5, 2]));
        assert!(check_array(&bad, "l").is_err());
    }

    #[test]
    fn dictionary_keys_out_of_range_are_refused_unless_null() {
        let d: DictionaryArray<arrow_array::types::Int32Type> =
            vec![Some("x"), None, Some("y")].into_iter().collect();
        // Key 7 under the null slot is fine; under a valid slot it is not.
        let ok = with_buffer(&d.to_data(), 0, i32s(&[0, 7, 1]));
        check_array(&ok, "d").unwrap();
        let bad = with_buffer(&d.to_data(), 0, i32s(&[0, 0, 7]));
        let e = check_array(&bad, "d").unwrap_err().to_string();
        assert!(e.contains("dictionary key 7 at slot 2"), "{e}");
    }

    #[test]
    fn views_outside_their_buffer_are_refused() {
        let v = arrow_array::StringViewArray::from(vec!["a long string past twelve", "x"]);
        let data = v.to_data();
        let mut views = data.buffers()[0].as_slice().to_vec();
        views[12..16].copy_from_slice(&1000u32.to_le_bytes()); // offset of view 0
        let bad = with_buffer(&data, 0, views.clone());
        assert!(check_array(&bad, "v")
            .unwrap_err()
            .to_string()
            .contains("view 0"));
        views[12..16].copy_from_slice(&0u32.to_le_bytes());
        views[8..12].copy_from_slice(&3u32.to_le_bytes()); // buffer index
        let bad = with_buffer(&data, 0, views);
        assert!(check_array(&bad, "v")
            .unwrap_err()
            .to_string()
            .contains("data buffer 3"));
    }

    #[test]
    fn wrong_null_count_is_refused() {
        let a = Int32Array::from(vec![Some(1), None, Some(3)]);
        let data = a.to_data();
        let nulls = data.nulls().unwrap().inner().clone();
        // SAFETY: test-only: a null count that disagrees with the bitmap (a count of 0
        // would drop the bitmap: arrow-rs and the IPC readers treat it as "no nulls").
        #[allow(unsafe_code)]
        let bad = unsafe {
            data.clone()
                .into_builder()
                .nulls(Some(arrow_buffer::NullBuffer::new_unchecked(nulls, 2)))
                .build_unchecked()
        };
        assert!(check_array(&bad, "a")
            .unwrap_err()
            .to_string()
            .contains("null count 2"));
    }
}
