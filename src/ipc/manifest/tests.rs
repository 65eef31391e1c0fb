use super::*;
use crate::ipc::{check_file, file_size_bound, open_file, write_file};
use arrow_array::builder::{ListBuilder, StringDictionaryBuilder};
use arrow_array::types::Int8Type;
use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray, StringViewArray};
use arrow_buffer::Buffer;

const LOW: u64 = 4096;
const CHUNK: u64 = 64 * 1024;

fn batches() -> (SchemaRef, Vec<RecordBatch>) {
    let mut dict = StringDictionaryBuilder::<Int8Type>::new();
    let mut nested = ListBuilder::new(StringDictionaryBuilder::<Int8Type>::new());
    for i in 0..300 {
        dict.append_value(["a", "b", "c"][i % 3]);
        nested.values().append_value(["x", "y"][i % 2]);
        nested.append(i % 5 != 0);
    }
    let cols: Vec<(&str, ArrayRef)> = vec![
        ("id", Arc::new(Int64Array::from_iter_values(0..300))),
        (
            "s",
            Arc::new(StringArray::from_iter(
                (0..300).map(|i| (i % 7 != 0).then(|| format!("value {i}"))),
            )),
        ),
        ("d", Arc::new(dict.finish())),
        ("l", Arc::new(nested.finish())),
        (
            "v",
            Arc::new(StringViewArray::from_iter_values(
                (0..300).map(|i| format!("a string longer than twelve bytes {i}")),
            )),
        ),
    ];
    let b = RecordBatch::try_from_iter(cols).unwrap();
    (b.schema(), vec![b.slice(0, 100), b.slice(100, 200)])
}

/// An arena with the magic, one chunk holding an IPC file of `batches`, and
/// the manifest of that file encoded into the low and high regions.
fn arena_with_manifest(schema: &Schema, batches: &[RecordBatch]) -> (Vec<u8>, u64, Manifest) {
    let mut file = vec![0u8; file_size_bound(schema, batches)];
    let n = write_file(&mut file, schema, batches).unwrap();
    let high_at = CHUNK + n as u64 + 4096 - (n as u64 % 4096);
    let mut arena = vec![0u8; high_at as usize + (1 << 20)];
    arena[..8].copy_from_slice(ARENA_MAGIC);
    arena[CHUNK as usize..CHUNK as usize + n].copy_from_slice(&file[..n]);
    let m = Manifest::from_file(&arena[CHUNK as usize..CHUNK as usize + n], CHUNK).unwrap();
    let (low_len, high_len) = m.sizes().unwrap();
    let e = m.encode(LOW, high_at).unwrap();
    assert_eq!(
        (e.low.len() as u64, e.high.len() as u64),
        (low_len, high_len)
    );
    assert!(LOW + low_len <= CHUNK);
    arena[LOW as usize..LOW as usize + e.low.len()].copy_from_slice(&e.low);
    arena[high_at as usize..high_at as usize + e.high.len()].copy_from_slice(&e.high);
    (arena, e.file_len, m)
}

#[test]
fn a_manifest_reads_back_as_the_file_it_came_from() {
    let (schema, batches) = batches();
    let (arena, file_len, m) = arena_with_manifest(&schema, &batches);
    assert_eq!(m.rows(), 300);
    assert_eq!(m.batches.len(), 2);
    assert_eq!(
        m.dictionaries.len(),
        2,
        "two dictionary fields, written once"
    );
    let (lo, hi) = m.extent().unwrap();
    assert!(lo >= CHUNK && hi <= arena.len() as u64);
    let file = &arena[..file_len as usize];
    // The whole-arena file passes the seal check and decodes to the same batches.
    let summary = check_file(file).unwrap();
    assert_eq!(summary.rows, 300);
    let buffer = Buffer::from(file.to_vec());
    let (s, got) = open_file(&buffer, None).unwrap();
    assert_eq!(s, schema);
    assert_eq!(got, batches);
    // Zero-copy: the int64 column of batch 1 is read where the chunk holds it.
    let values = got[1].column(0).to_data().buffers()[0].as_ptr() as usize;
    let base = buffer.as_ptr() as usize;
    assert!(values >= base + CHUNK as usize && values < base + hi as usize);
}

#[test]
fn dictionary_ids_follow_the_encoders_numbering() {
    let (schema, _) = batches();
    // `d` is the first dictionary, the list's item the second: depth first.
    let ids = new_dictionary_ids(&schema);
    assert_eq!(ids.len(), 2);
    #[expect(deprecated)]
    let d = schema.field(2).dict_id().unwrap();
    assert_eq!(ids[0], d);
}

#[test]
fn a_buffer_below_its_message_or_above_the_footer_is_refused() {
    let (schema, batches) = batches();
    let (_, _, m) = arena_with_manifest(&schema, &batches);
    let (lo, hi) = m.extent().unwrap();
    // Messages placed above the buffers cannot point down at them.
    assert!(m.encode(hi, hi + 4096).is_err());
    // A footer below the last buffer would cut the file short of it.
    assert!(m.encode(LOW, hi - 1).is_err());
    assert!(m.encode(LOW, lo).is_err());
}

#[test]
fn a_file_whose_blocks_lie_is_an_error_not_a_panic() {
    let (schema, batches) = batches();
    let mut file = vec![0u8; file_size_bound(&schema, &batches)];
    let n = write_file(&mut file, &schema, &batches).unwrap();
    for cut in [n - 1, n / 2, 12] {
        assert!(Manifest::from_file(&file[..cut], 0).is_err());
    }
    proptest::proptest!(|(flips in proptest::collection::vec((0usize..n, 0u8..=255), 1..6))| {
        let mut bad = file[..n].to_vec();
        for (at, byte) in flips {
            bad[at] = byte;
        }
        if let Ok(m) = Manifest::from_file(&bad, CHUNK) {
            let _ = m.sizes();
        }
    });
}
