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

#[test]
fn slices_share_buffers_where_they_start_on_8_bytes() {
    let b = |offset, length| BufferRef { offset, length };
    let node = |length, null_count| Node { length, null_count };
    // 128 rows of int64 with a validity bitmap: rows 0..64 valid, 64..128 alternate.
    let mut bitmap = vec![0xffu8; 8];
    bitmap.extend([0x55u8; 8]);
    let ints = ColumnLayout {
        nodes: vec![node(128, 32)],
        buffers: vec![b(4096, 16), b(8192, 1024)],
        variadic: Vec::new(),
    };
    let read = |r: BufferRef| (r.offset == 4096).then_some(&bitmap[..r.length as usize]);
    let t = DataType::Int64;
    // No nulls among rows 1..61: no validity, values from row 1 (8 bytes in).
    let s = ints.slice(&t, 1, 60, &read).unwrap().unwrap();
    assert_eq!(s.nodes, vec![node(60, 0)]);
    assert_eq!(s.buffers, vec![b(0, 0), b(8192 + 8, 480)]);
    // Nulls in the slice: the bitmap must start on a byte 8 apart.
    assert_eq!(ints.slice(&t, 65, 10, &read).unwrap(), None);
    let s = ints.slice(&t, 64, 64, &read).unwrap().unwrap();
    assert_eq!(s.nodes, vec![node(64, 32)]);
    assert_eq!(s.buffers, vec![b(4096 + 8, 8), b(8192 + 512, 512)]);
    // All of it, and rows outside it.
    assert_eq!(ints.slice(&t, 0, 128, &read).unwrap().unwrap(), ints);
    assert!(ints.slice(&t, 100, 29, &read).is_err());
    assert!(ints.slice(&t, u64::MAX, 2, &read).is_err());
    // int32 values at an odd row would start 4 bytes off.
    let int32 = ColumnLayout {
        nodes: vec![node(128, 0)],
        buffers: vec![b(0, 0), b(8192, 512)],
        variadic: Vec::new(),
    };
    assert_eq!(int32.slice(&DataType::Int32, 3, 10, &read).unwrap(), None);
    assert!(int32
        .slice(&DataType::Int32, 4, 10, &read)
        .unwrap()
        .is_some());
    // Strings: the offsets from the slice's row, all the character data.
    let strings = ColumnLayout {
        nodes: vec![node(128, 0)],
        buffers: vec![b(0, 0), b(8192, 516), b(16384, 1000)],
        variadic: Vec::new(),
    };
    let s = strings
        .slice(&DataType::Utf8, 10, 5, &read)
        .unwrap()
        .unwrap();
    assert_eq!(s.buffers, vec![b(0, 0), b(8192 + 40, 24), b(16384, 1000)]);
    // Types with children are not sliced in place.
    let list = DataType::List(Arc::new(Field::new("item", DataType::Int64, true)));
    let nested = ColumnLayout {
        nodes: vec![node(128, 0), node(256, 0)],
        buffers: vec![b(0, 0), b(8192, 516), b(0, 0), b(16384, 2048)],
        variadic: Vec::new(),
    };
    assert_eq!(nested.slice(&list, 8, 8, &read).unwrap(), None);
}
