//! Parquet ingest against a real server: every type family compared with
//! arrow-rs's own Parquet reader, projection, directories, atomic
//! replacement, both read engines, and the corpus of bad files in
//! `tests/corpus/` (each must fail cleanly, leave the previous version in
//! place and give the arena space back).

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::builder::{
    Int32Builder, Int64Builder, ListBuilder, MapBuilder, StringBuilder, StringDictionaryBuilder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int8Type, UInt16Type};
use arrow_array::*;
use arrow_schema::{DataType, Field, FieldRef, Fields, Schema};
use arrowpool::protocol::ErrorCode;
use arrowpool::{Client, ClientError};
use common::Server;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

const ROWS: usize = 4000;
/// Rows per row group of the generated files: several row groups per file.
const ROW_GROUP_ROWS: usize = 1000;

fn corpus(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(name)
}

fn props(row_group_rows: usize) -> WriterProperties {
    WriterProperties::builder()
        .set_max_row_group_row_count(Some(row_group_rows))
        .set_compression(Compression::SNAPPY)
        .build()
}

fn write_parquet(path: &Path, batch: &RecordBatch, props: WriterProperties) {
    let mut w =
        ArrowWriter::try_new(File::create(path).unwrap(), batch.schema(), Some(props)).unwrap();
    // Several writes so that row groups do not line up with the batches.
    let mut at = 0;
    while at < batch.num_rows() {
        let n = 700.min(batch.num_rows() - at);
        w.write(&batch.slice(at, n)).unwrap();
        at += n;
    }
    w.close().unwrap();
}

fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
    RecordBatch::try_from_iter_with_nullable(columns.into_iter().map(|(n, a)| (n, a, true)))
        .unwrap()
}

/// The type arrowpool promises: dictionaries decoded, views as offsets.
fn plain(t: &DataType) -> DataType {
    let f = |f: &FieldRef| -> FieldRef {
        Arc::new(f.as_ref().clone().with_data_type(plain(f.data_type())))
    };
    match t {
        DataType::Dictionary(_, v) => plain(v),
        DataType::Utf8View => DataType::Utf8,
        DataType::BinaryView => DataType::Binary,
        DataType::List(x) => DataType::List(f(x)),
        DataType::LargeList(x) => DataType::LargeList(f(x)),
        DataType::FixedSizeList(x, n) => DataType::FixedSizeList(f(x), *n),
        DataType::Map(x, s) => DataType::Map(f(x), *s),
        DataType::Struct(xs) => DataType::Struct(xs.iter().map(f).collect::<Fields>()),
        other => other.clone(),
    }
}

fn is_plain(t: &DataType) -> bool {
    !format!("{t:?}").contains("Dictionary") && !format!("{t:?}").contains("View")
}

/// What arrow-rs's `ParquetRecordBatchReader` reads from `path` (columns in
/// `columns`, or all), concatenated and decoded to plain types.
fn reference(path: &Path, columns: &[&str]) -> RecordBatch {
    let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap()).unwrap();
    let builder = if columns.is_empty() {
        builder
    } else {
        let mask = parquet::arrow::ProjectionMask::columns(
            builder.parquet_schema(),
            columns.iter().copied(),
        );
        builder.with_projection(mask)
    };
    let reader = builder.build().unwrap();
    let schema = reader.schema();
    let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
    plain_batch(&arrow_select::concat::concat_batches(&schema, &batches).unwrap())
}

/// `batch` with every column cast to its plain type.
fn plain_batch(batch: &RecordBatch) -> RecordBatch {
    let fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_data_type(plain(f.data_type())))
        .collect();
    let columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .zip(&fields)
        .map(|(c, f)| arrow_cast::cast(c, f.data_type()).unwrap())
        .collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
}

/// The narrowest signed index type for a dictionary of `len` values.
fn narrowest_key(len: usize) -> DataType {
    match len {
        0..=128 => DataType::Int8,
        129..=32768 => DataType::Int16,
        _ => DataType::Int32,
    }
}

/// Asserts that `name` holds exactly `expected` (same columns, values; types
/// plain, or a kept dictionary of the plain type with the narrowest keys);
/// returns the types it came back with.
fn assert_table(client: &Client, name: &str, expected: &RecordBatch) -> Vec<DataType> {
    let table = client.get(name).unwrap();
    assert_eq!(table.rows as usize, expected.num_rows());
    let types: Vec<DataType> = table
        .schema
        .fields()
        .iter()
        .map(|f| f.data_type().clone())
        .collect();
    for (i, f) in table.schema.fields().iter().enumerate() {
        if let DataType::Dictionary(k, v) = f.data_type() {
            assert!(is_plain(v), "{} came back as {}", f.name(), f.data_type());
            // One dictionary for all batches, with the narrowest index type.
            let values = table
                .batches
                .first()
                .map(|b| b.column(i).as_any_dictionary().values().len());
            if let Some(n) = values {
                assert_eq!(**k, narrowest_key(n), "keys of {}", f.name());
            }
        } else {
            assert!(
                is_plain(f.data_type()),
                "{} came back as {}",
                f.name(),
                f.data_type()
            );
        }
    }
    let got =
        plain_batch(&arrow_select::concat::concat_batches(&table.schema, &table.batches).unwrap());
    assert_eq!(got.num_columns(), expected.num_columns());
    for (i, (g, e)) in got
        .schema()
        .fields()
        .iter()
        .zip(expected.schema().fields())
        .enumerate()
    {
        assert_eq!(g.name(), e.name(), "column {i}");
        assert_eq!(g.data_type(), e.data_type(), "column {}", e.name());
        assert_eq!(
            got.column(i).to_data(),
            expected.column(i).to_data(),
            "values of column {}",
            e.name()
        );
    }
    types
}

/// Writes `batch` as Parquet, ingests it, and compares with the reference
/// reader; returns the types the table came back with.
fn round_trip(name: &str, batch: &RecordBatch) -> Vec<DataType> {
    let server = Server::start("256M");
    {
        let client = server.client();
        let path = server.dir.path().join(format!("{name}.parquet"));
        write_parquet(&path, batch, props(ROW_GROUP_ROWS));
        let reply = client.ingest(path.to_str().unwrap(), name, &[]).unwrap();
        assert_eq!(reply.rows as usize, batch.num_rows());
        assert_eq!(reply.files, 1);
        assert!(reply.bytes > 0 && reply.parquet_bytes > 0);
        assert!(
            reply.reader.starts_with("io_uring/") || reply.reader.starts_with("pread/"),
            "{}",
            reply.reader
        );
        assert_table(&client, name, &reference(&path, &[]))
    }
}

/// Deterministic pseudo-random numbers.
fn lcg(seed: u64) -> impl Iterator<Item = u64> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    std::iter::repeat_with(move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        x >> 11
    })
}

/// `Some(v)` except every `k`-th row.
fn nulls_every<T>(k: usize, values: impl Iterator<Item = T>) -> impl Iterator<Item = Option<T>> {
    values
        .enumerate()
        .map(move |(i, v)| (i % k != 3).then_some(v))
}

#[test]
fn ingest_signed_and_unsigned_integers() {
    let r: Vec<u64> = lcg(1).take(ROWS).collect();
    let b = batch(vec![
        (
            "i8",
            Arc::new(Int8Array::from_iter(nulls_every(
                7,
                r.iter().map(|&v| v as i8),
            ))),
        ),
        (
            "i16",
            Arc::new(Int16Array::from_iter(nulls_every(
                5,
                r.iter().map(|&v| v as i16),
            ))),
        ),
        (
            "i32",
            Arc::new(Int32Array::from_iter(nulls_every(
                11,
                r.iter().map(|&v| v as i32),
            ))),
        ),
        (
            "i64",
            Arc::new(Int64Array::from_iter(nulls_every(
                13,
                r.iter().map(|&v| v as i64 - (1 << 50)),
            ))),
        ),
        (
            "u8",
            Arc::new(UInt8Array::from_iter(nulls_every(
                3,
                r.iter().map(|&v| v as u8),
            ))),
        ),
        (
            "u16",
            Arc::new(UInt16Array::from_iter(nulls_every(
                17,
                r.iter().map(|&v| v as u16),
            ))),
        ),
        (
            "u32",
            Arc::new(UInt32Array::from_iter(nulls_every(
                19,
                r.iter().map(|&v| v as u32),
            ))),
        ),
        (
            "u64",
            Arc::new(UInt64Array::from_iter(nulls_every(
                23,
                r.iter().map(|&v| v << 11),
            ))),
        ),
        (
            "seq",
            Arc::new(Int64Array::from_iter_values(0..ROWS as i64)),
        ),
    ]);
    round_trip("ints", &b);
}

#[test]
fn ingest_floats_and_booleans() {
    let r: Vec<u64> = lcg(2).take(ROWS).collect();
    let f32s: Vec<f32> = r
        .iter()
        .enumerate()
        .map(|(i, &v)| match i % 97 {
            0 => f32::NAN,
            1 => f32::INFINITY,
            2 => -0.0,
            _ => (v % 100_000) as f32 / 7.0,
        })
        .collect();
    let f16 = arrow_cast::cast(&Float32Array::from(f32s.clone()), &DataType::Float16).unwrap();
    let b = batch(vec![
        ("f16", f16),
        (
            "f32",
            Arc::new(Float32Array::from_iter(nulls_every(
                9,
                f32s.iter().copied(),
            ))),
        ),
        (
            "f64",
            Arc::new(Float64Array::from_iter(nulls_every(
                4,
                r.iter().map(|&v| v as f64 / 3.0 - 1e15),
            ))),
        ),
        (
            "flag",
            Arc::new(BooleanArray::from_iter(nulls_every(
                6,
                r.iter().map(|&v| v % 3 == 0),
            ))),
        ),
        ("always", Arc::new(BooleanArray::from(vec![true; ROWS]))),
    ]);
    round_trip("floats", &b);
}

#[test]
fn ingest_strings_large_strings_and_views() {
    let r: Vec<u64> = lcg(3).take(ROWS).collect();
    let words = [
        "",
        "a",
        "ü-é-日本",
        "a somewhat longer string that does not fit inline in a view",
    ];
    let text = |i: usize, v: u64| format!("{}-{v:x}-{}", words[i % words.len()], i);
    let b = batch(vec![
        (
            "utf8",
            Arc::new(StringArray::from_iter(nulls_every(
                5,
                r.iter().enumerate().map(|(i, &v)| text(i, v)),
            ))),
        ),
        (
            "large",
            Arc::new(LargeStringArray::from_iter(nulls_every(
                7,
                r.iter().enumerate().map(|(i, &v)| text(i, v)),
            ))),
        ),
        (
            "view",
            Arc::new(StringViewArray::from_iter(nulls_every(
                3,
                (0..ROWS).map(|i| words[i % 4].to_string()),
            ))),
        ),
        (
            "empty",
            Arc::new(StringArray::from_iter_values((0..ROWS).map(|_| ""))),
        ),
    ]);
    round_trip("strings", &b);
}

#[test]
fn ingest_binary() {
    let r: Vec<u64> = lcg(4).take(ROWS).collect();
    let bytes: Vec<Vec<u8>> = r
        .iter()
        .map(|&v| v.to_le_bytes()[..(v % 9) as usize].to_vec())
        .collect();
    let b = batch(vec![
        (
            "bin",
            Arc::new(BinaryArray::from_iter(nulls_every(
                5,
                bytes.iter().map(|b| b.as_slice()),
            ))),
        ),
        (
            "large",
            Arc::new(LargeBinaryArray::from_iter(nulls_every(
                6,
                bytes.iter().map(|b| b.as_slice()),
            ))),
        ),
        (
            "fixed",
            Arc::new(
                FixedSizeBinaryArray::try_from_sparse_iter_with_size(
                    nulls_every(7, r.iter().map(|v| v.to_be_bytes())),
                    8,
                )
                .unwrap(),
            ),
        ),
        (
            "view",
            Arc::new(BinaryViewArray::from_iter(nulls_every(
                4,
                bytes.iter().map(|b| b.as_slice()),
            ))),
        ),
    ]);
    round_trip("binary", &b);
}

#[test]
fn ingest_dates_times_and_timestamps_with_and_without_time_zones() {
    let r: Vec<i64> = lcg(5)
        .take(ROWS)
        .map(|v| (v % 4_000_000_000) as i64 - 1_000_000_000)
        .collect();
    let b = batch(vec![
        (
            "date32",
            Arc::new(Date32Array::from_iter(nulls_every(
                5,
                r.iter().map(|&v| (v / 86_400) as i32),
            ))),
        ),
        (
            "date64",
            Arc::new(Date64Array::from_iter(nulls_every(
                6,
                r.iter().map(|&v| v / 86_400 * 86_400_000),
            ))),
        ),
        (
            "ts_s",
            Arc::new(TimestampSecondArray::from_iter(nulls_every(
                7,
                r.iter().copied(),
            ))),
        ),
        (
            "ts_ms_utc",
            Arc::new(
                TimestampMillisecondArray::from_iter(nulls_every(8, r.iter().map(|&v| v * 1000)))
                    .with_timezone("UTC"),
            ),
        ),
        (
            "ts_us_offset",
            Arc::new(
                TimestampMicrosecondArray::from_iter(nulls_every(
                    9,
                    r.iter().map(|&v| v * 1_000_000 + 17),
                ))
                .with_timezone("+02:00"),
            ),
        ),
        (
            "ts_ns_named",
            Arc::new(
                TimestampNanosecondArray::from_iter(nulls_every(
                    10,
                    r.iter().map(|&v| v * 1_000_000_000 + 3),
                ))
                .with_timezone("America/New_York"),
            ),
        ),
        (
            "ts_ns",
            Arc::new(TimestampNanosecondArray::from_iter(nulls_every(
                11,
                r.iter().map(|&v| v * 999),
            ))),
        ),
        (
            "time32",
            Arc::new(Time32MillisecondArray::from_iter(nulls_every(
                12,
                r.iter().map(|&v| (v.rem_euclid(86_400_000)) as i32),
            ))),
        ),
        (
            "time64",
            Arc::new(Time64MicrosecondArray::from_iter(nulls_every(
                13,
                r.iter().map(|&v| v.rem_euclid(86_400_000_000)),
            ))),
        ),
    ]);
    round_trip("temporal", &b);
}

#[test]
fn ingest_decimals() {
    let r: Vec<i64> = lcg(6).take(ROWS).map(|v| v as i64).collect();
    let d128 = |p, s| -> ArrayRef {
        Arc::new(
            Decimal128Array::from_iter(nulls_every(
                5,
                r.iter().map(|&v| v as i128 * 1_000_003 - (1 << 60)),
            ))
            .with_precision_and_scale(p, s)
            .unwrap(),
        )
    };
    let small: ArrayRef = Arc::new(
        Decimal128Array::from_iter(nulls_every(
            4,
            r.iter().map(|&v| (v % 1_000_000_000) as i128 - 500_000_000),
        ))
        .with_precision_and_scale(9, 2)
        .unwrap(),
    );
    let d256: ArrayRef = Arc::new(
        Decimal256Array::from_iter(nulls_every(
            6,
            r.iter()
                .map(|&v| arrow_buffer::i256::from_i128(v as i128 * -7)),
        ))
        .with_precision_and_scale(50, 5)
        .unwrap(),
    );
    let b = batch(vec![
        ("d9_2", small),
        ("d38_10", d128(38, 10)),
        ("d28_0", d128(28, 0)),
        ("d256", d256),
    ]);
    round_trip("decimals", &b);
}

#[test]
fn ingest_dictionary_columns_whose_dictionaries_change_between_row_groups() {
    // Each row group sees other values, so each has its own dictionary: an IPC
    // file can only hold them decoded (or unified).
    let mut d32 = StringDictionaryBuilder::<Int32Type>::new();
    let mut d8 = StringDictionaryBuilder::<Int8Type>::new();
    let mut d16 = StringDictionaryBuilder::<UInt16Type>::new();
    for i in 0..ROWS {
        let group = i / ROW_GROUP_ROWS;
        if i % 9 == 4 {
            d32.append_null();
        } else {
            d32.append_value(format!("g{group}-v{}", i % 5));
        }
        d8.append_value(["x", "y", "z"][(i + group) % 3]);
        if i % 4 == 0 {
            d16.append_null();
        } else {
            d16.append_value(format!("{group}:{}", i % 300));
        }
    }
    let d32: ArrayRef = Arc::new(d32.finish());
    // A dictionary of large strings, and one with integer values.
    let large = arrow_cast::cast(
        &d8.finish(),
        &DataType::Dictionary(Box::new(DataType::Int8), Box::new(DataType::LargeUtf8)),
    )
    .unwrap();
    let ints = arrow_cast::cast(
        &Int64Array::from_iter((0..ROWS as i64).map(|i| Some(i / 100 % 7))),
        &DataType::Dictionary(Box::new(DataType::Int16), Box::new(DataType::Int64)),
    )
    .unwrap();
    // A dictionary nested in a struct.
    let inner = Arc::new(StructArray::from(vec![(
        Arc::new(Field::new("label", d32.data_type().clone(), true)),
        d32.clone(),
    )])) as ArrayRef;
    let b = batch(vec![
        ("d32", d32),
        ("d8_large", large),
        ("d16", Arc::new(d16.finish())),
        ("dict_ints", ints),
        ("nested", inner),
    ]);
    let types = round_trip("dictionaries", &b);
    let dict = |k: DataType, v: DataType| DataType::Dictionary(Box::new(k), Box::new(v));
    // Row groups' dictionaries unified, keys as narrow as the union allows
    // (20 values, 3, 1200); integer values and nested dictionaries decode.
    assert_eq!(types[0], dict(DataType::Int8, DataType::Utf8));
    assert_eq!(types[1], dict(DataType::Int8, DataType::LargeUtf8));
    assert_eq!(types[2], dict(DataType::Int16, DataType::Utf8));
    assert_eq!(types[3], DataType::Int64);
    assert!(is_plain(&types[4]), "{}", types[4]);
}

#[test]
fn ingest_lists_structs_and_maps() {
    let mut lists = ListBuilder::new(Int32Builder::new());
    let mut strings = ListBuilder::new(StringBuilder::new());
    let mut maps = MapBuilder::new(None, StringBuilder::new(), Int64Builder::new());
    for i in 0..ROWS {
        if i % 10 == 1 {
            lists.append(false);
        } else {
            for j in 0..(i % 4) {
                if j == 2 {
                    lists.values().append_null();
                } else {
                    lists.values().append_value((i * 10 + j) as i32);
                }
            }
            lists.append(true);
        }
        for j in 0..(i % 3) {
            strings.values().append_value(format!("s{i}.{j}"));
        }
        strings.append(i % 13 != 0);
        for j in 0..(i % 3) {
            maps.keys().append_value(format!("k{j}"));
            maps.values().append_value((i * j) as i64);
        }
        maps.append(i % 8 != 5).unwrap();
    }
    let strings = strings.finish();
    let large = arrow_cast::cast(
        &strings,
        &DataType::LargeList(Arc::new(Field::new("item", DataType::Utf8, true))),
    )
    .unwrap();
    let structs = StructArray::try_new(
        Fields::from(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Utf8, true),
            Field::new_list("c", Field::new("item", DataType::Int32, true), true),
        ]),
        vec![
            Arc::new(Int64Array::from_iter(nulls_every(5, 0..ROWS as i64))),
            Arc::new(StringArray::from_iter(nulls_every(
                6,
                (0..ROWS).map(|i| format!("b{i}")),
            ))),
            Arc::new(lists.finish_cloned()),
        ],
        Some(arrow_buffer::NullBuffer::from_iter(
            (0..ROWS).map(|i| i % 17 != 2),
        )),
    )
    .unwrap();
    let list_of_structs = {
        let values = structs.slice(0, ROWS / 2);
        let offsets = arrow_buffer::OffsetBuffer::from_lengths((0..ROWS / 4).map(|_| 2));
        ListArray::try_new(
            Arc::new(Field::new("item", values.data_type().clone(), true)),
            offsets,
            Arc::new(values),
            None,
        )
        .unwrap()
    };
    let list_of_structs = arrow_select::concat::concat(&[
        &list_of_structs,
        &list_of_structs,
        &list_of_structs,
        &list_of_structs,
    ])
    .unwrap();
    let b = batch(vec![
        ("list", Arc::new(lists.finish())),
        ("large_list", large),
        ("struct", Arc::new(structs)),
        ("list_of_structs", list_of_structs),
        ("map", Arc::new(maps.finish())),
    ]);
    round_trip("nested", &b);
}

#[test]
fn ingest_nulls_everywhere() {
    let b = batch(vec![
        ("null_type", Arc::new(NullArray::new(ROWS))),
        (
            "all_null_ints",
            Arc::new(Int64Array::from(vec![None; ROWS])),
        ),
        (
            "all_null_strings",
            Arc::new(StringArray::from(vec![None::<&str>; ROWS])),
        ),
        (
            "mostly_null",
            Arc::new(Float64Array::from_iter(
                (0..ROWS).map(|i| (i % 500 == 0).then_some(i as f64)),
            )),
        ),
        (
            "null_structs",
            Arc::new(StructArray::new_null(
                Fields::from(vec![Field::new("x", DataType::Int32, true)]),
                ROWS,
            )),
        ),
    ]);
    round_trip("nulls", &b);
}

/// Several columns in one row group: the server splits the row group by
/// columns across its decoder threads and must put the columns back together.
#[test]
fn ingest_a_single_row_group_split_across_decoders() {
    let server = Server::start("256M");
    let client = server.client();
    let r: Vec<u64> = lcg(7).take(ROWS).collect();
    let b = batch(vec![
        (
            "a",
            Arc::new(Int64Array::from_iter_values(r.iter().map(|&v| v as i64))),
        ),
        (
            "b",
            Arc::new(StringArray::from_iter_values(
                r.iter().map(|v| format!("{v:x}")),
            )),
        ),
        (
            "c",
            Arc::new(Float64Array::from_iter(nulls_every(
                3,
                r.iter().map(|&v| v as f64),
            ))),
        ),
        (
            "d",
            Arc::new(Int32Array::from_iter_values(r.iter().map(|&v| v as i32))),
        ),
        (
            "e",
            Arc::new(BooleanArray::from_iter(r.iter().map(|&v| Some(v % 2 == 0)))),
        ),
    ]);
    let path = server.dir.path().join("one_group.parquet");
    write_parquet(&path, &b, props(ROWS));
    client.ingest(path.to_str().unwrap(), "one", &[]).unwrap();
    assert_table(&client, "one", &reference(&path, &[]));
    // One batch per row group, its column splits joined batch by batch.
    assert_eq!(client.get("one").unwrap().batches.len(), 1);
}

/// A row group decodes to one batch, unless its strings would overflow
/// 32-bit offsets there: here 2.2 GB of values the footer cannot see (a
/// column dictionary-encoded, then plain: 10 bytes uncompressed for each
/// 8 KiB row). The first decoding fails, the ingest runs again in 64Ki-row
/// batches and succeeds, and the server's log says so.
#[test]
fn ingest_strings_beyond_32_bit_offsets_in_one_row_group() {
    const LEN: usize = 8 * 1024;
    const ROWS: usize = 270_000; // 2.2 GB: over 2 GiB in one batch, 512 MiB in 64Ki rows.
    let server = Server::start_with(&["--memory", "2600M", "--threads", "1"]);
    let client = server.client();
    let path = server.dir.path().join("wide_strings.parquet");
    let value = |i: usize| format!("{i:08}").repeat(LEN / 8);
    // Two values repeated (one dictionary page of 16 KiB), then four new ones
    // that outgrow the 20 KiB dictionary limit: those go plain, so the
    // column is not kept as a dictionary and decodes to plain strings.
    let repeated = DictionaryArray::<Int32Type>::new(
        Int32Array::from_iter_values((0..ROWS - 4).map(|i| (i % 2) as i32)),
        Arc::new(StringArray::from_iter_values((0..2).map(value))),
    );
    let fresh = StringArray::from_iter_values((2..6).map(value));
    let schema = Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8, false)]));
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(ROWS))
        .set_dictionary_page_size_limit(20 * 1024)
        .set_compression(Compression::SNAPPY)
        .build();
    let options = parquet::arrow::arrow_writer::ArrowWriterOptions::new()
        .with_properties(props)
        .with_skip_arrow_metadata(true);
    let mut w =
        ArrowWriter::try_new_with_options(File::create(&path).unwrap(), schema.clone(), options)
            .unwrap();
    w.write(
        &RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new(
                "s",
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                false,
            )])),
            vec![Arc::new(repeated)],
        )
        .unwrap(),
    )
    .unwrap();
    w.write(&RecordBatch::try_new(schema, vec![Arc::new(fresh)]).unwrap())
        .unwrap();
    w.close().unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() < 4 << 20);

    let reply = client.ingest(path.to_str().unwrap(), "wide", &[]).unwrap();
    assert_eq!(reply.rows, ROWS as u64);
    assert!(
        server
            .stderr()
            .contains("decoding again in batches of 65536 rows"),
        "{}",
        server.stderr()
    );
    let table = client.get("wide").unwrap();
    assert_eq!(table.schema.field(0).data_type(), &DataType::Utf8);
    assert_eq!(table.batches.len(), ROWS.div_ceil(64 * 1024));
    let mut row = 0;
    for b in &table.batches {
        let s = b.column(0).as_string::<i32>();
        for i in [0, 1, b.num_rows() - 1] {
            let at = row + i;
            let want = if at < ROWS - 4 {
                value(at % 2)
            } else {
                value(at - (ROWS - 4) + 2)
            };
            assert_eq!(s.value(i), want, "row {at}");
        }
        assert_eq!(s.value_data().len(), b.num_rows() * LEN);
        row += b.num_rows();
    }
    assert_eq!(row, ROWS);
}

/// A file with a schema and no rows gives a table with that schema and no rows.
#[test]
fn ingest_a_file_without_rows() {
    let server = Server::start("64M");
    let client = server.client();
    let path = server.dir.path().join("empty.parquet");
    let b = batch(vec![
        ("a", Arc::new(Int64Array::from(Vec::<i64>::new()))),
        ("s", Arc::new(StringArray::from(Vec::<&str>::new()))),
    ]);
    write_parquet(&path, &b, props(ROW_GROUP_ROWS));
    let reply = client.ingest(path.to_str().unwrap(), "empty", &[]).unwrap();
    assert_eq!(reply.rows, 0);
    let table = client.get("empty").unwrap();
    assert_eq!(table.rows, 0);
    let names: Vec<&str> = table
        .schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    assert_eq!(names, ["a", "s"]);
}

/// Only the requested columns are decoded, and only their column chunks are
/// read: the unrequested wide column costs no I/O.
#[test]
fn ingest_projected_columns_reads_only_their_chunks() {
    let server = Server::start("256M");
    let client = server.client();
    let r: Vec<u64> = lcg(8).take(ROWS).collect();
    let b = batch(vec![
        (
            "small",
            Arc::new(Int32Array::from_iter_values(
                (0..ROWS as i32).map(|i| i % 10),
            )),
        ),
        (
            "wide",
            Arc::new(StringArray::from_iter_values(
                r.iter().map(|v| format!("{v:064x}")),
            )),
        ),
        (
            "other",
            Arc::new(Int64Array::from_iter_values(r.iter().map(|&v| v as i64))),
        ),
    ]);
    let path = server.dir.path().join("wide.parquet");
    write_parquet(
        &path,
        &b,
        WriterProperties::builder()
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .build(),
    );
    let file_len = std::fs::metadata(&path).unwrap().len();
    let reply = client
        .ingest(path.to_str().unwrap(), "proj", &["other", "small"])
        .unwrap();
    assert_table(&client, "proj", &reference(&path, &["small", "other"]));
    assert!(
        reply.parquet_bytes * 3 < file_len,
        "read {} of {file_len} bytes for two narrow columns",
        reply.parquet_bytes
    );
    let table = client.get("proj").unwrap();
    let names: Vec<&str> = table
        .schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    assert_eq!(names, ["small", "other"], "columns come in file order");
}

#[test]
fn ingest_a_directory_of_files_in_name_order() {
    let server = Server::start("256M");
    let client = server.client();
    let dir = server.dir.path().join("parts");
    std::fs::create_dir(&dir).unwrap();
    // Byte-wise name order: part-1, part-10, part-2.
    let names = ["part-2.parquet", "part-10.parquet", "part-1.parquet"];
    let mut by_name: Vec<(String, RecordBatch)> = Vec::new();
    for (k, n) in names.iter().enumerate() {
        let start = k as i64 * 1000;
        let b = batch(vec![
            (
                "id",
                Arc::new(Int64Array::from_iter_values(start..start + 1500)),
            ),
            (
                "s",
                Arc::new(StringArray::from_iter(nulls_every(
                    4,
                    (0..1500).map(|i| format!("{n}:{i}")),
                ))),
            ),
        ]);
        write_parquet(&dir.join(n), &b, props(600));
        by_name.push((n.to_string(), b));
    }
    // Not Parquet by name, or hidden: skipped.
    std::fs::write(dir.join("README.txt"), "not data").unwrap();
    std::fs::write(dir.join(".hidden.parquet"), "garbage").unwrap();
    std::fs::write(dir.join("_SUCCESS"), "").unwrap();
    by_name.sort_by(|a, b| a.0.cmp(&b.0));
    let reply = client.ingest(dir.to_str().unwrap(), "dir", &[]).unwrap();
    assert_eq!(reply.files, 3);
    assert_eq!(reply.rows, 4500);
    let parts: Vec<RecordBatch> = by_name
        .iter()
        .map(|(n, _)| reference(&dir.join(n), &[]))
        .collect();
    let expected = arrow_select::concat::concat_batches(&parts[0].schema(), &parts).unwrap();
    assert_table(&client, "dir", &expected);
}

/// A new ingest replaces the name atomically; a reader of the old version
/// keeps reading it, untouched.
#[test]
fn ingest_replaces_the_previous_version_without_disturbing_its_readers() {
    let server = Server::start("256M");
    let client = server.client();
    let one = server.dir.path().join("one.parquet");
    let two = server.dir.path().join("two.parquet");
    let b1 = batch(vec![("x", Arc::new(Int64Array::from_iter_values(0..3000)))]);
    let b2 = batch(vec![(
        "x",
        Arc::new(Int64Array::from_iter_values((0..5000).map(|i| -i))),
    )]);
    write_parquet(&one, &b1, props(ROW_GROUP_ROWS));
    write_parquet(&two, &b2, props(ROW_GROUP_ROWS));
    assert_eq!(
        client
            .ingest(one.to_str().unwrap(), "t", &[])
            .unwrap()
            .version,
        1
    );
    let held = client.get("t").unwrap();
    assert_eq!(
        client
            .ingest(two.to_str().unwrap(), "t", &[])
            .unwrap()
            .version,
        2
    );
    let held_now = arrow_select::concat::concat_batches(&held.schema, &held.batches).unwrap();
    assert_eq!(
        held_now.column(0).to_data(),
        b1.column(0).to_data(),
        "the old version is intact"
    );
    assert_eq!(held.version, 1);
    assert_table(&client, "t", &reference(&two, &[]));
    assert_eq!(client.get("t").unwrap().version, 2);
}

/// Rewrites the footer of `path`, changing every column chunk with `change`.
fn rewrite_footer(
    path: &Path,
    change: impl Fn(
        parquet::file::metadata::ColumnChunkMetaDataBuilder,
    ) -> parquet::file::metadata::ColumnChunkMetaDataBuilder,
) {
    let bytes = std::fs::read(path).unwrap();
    let metadata = parquet::file::metadata::ParquetMetaDataReader::new()
        .parse_and_finish(&bytes::Bytes::from(bytes.clone()))
        .unwrap();
    let footer_len =
        u32::from_le_bytes(bytes[bytes.len() - 8..bytes.len() - 4].try_into().unwrap()) as usize;
    let mut builder = metadata.into_builder();
    let groups = builder
        .take_row_groups()
        .into_iter()
        .map(|rg| {
            let columns = rg
                .columns()
                .iter()
                .map(|c| change(c.clone().into_builder()).build().unwrap())
                .collect();
            rg.into_builder()
                .set_column_metadata(columns)
                .build()
                .unwrap()
        })
        .collect();
    let metadata = builder.set_row_groups(groups).build();
    let mut out = bytes[..bytes.len() - 8 - footer_len].to_vec();
    parquet::file::metadata::ParquetMetaDataWriter::new(&mut out, &metadata)
        .finish()
        .unwrap();
    std::fs::write(path, out).unwrap();
}

fn strings_batch(rows: usize) -> RecordBatch {
    let r: Vec<u64> = lcg(11).take(rows).collect();
    batch(vec![
        ("id", Arc::new(Int64Array::from_iter_values(0..rows as i64))),
        (
            "label",
            Arc::new(StringArray::from_iter(nulls_every(
                9,
                r.iter().map(|v| format!("label-{}", v % 40)),
            ))),
        ),
        (
            "text",
            Arc::new(LargeStringArray::from_iter(nulls_every(
                7,
                r.iter().map(|v| format!("{v:x}")),
            ))),
        ),
    ])
}

/// Strings of few values per row group (dictionary-encoded on every page,
/// a small dictionary page) come back as one dictionary with the narrowest
/// keys; unique strings as plain strings.
#[test]
fn ingest_keeps_low_cardinality_strings_as_dictionaries() {
    let types = round_trip("labels", &strings_batch(ROWS));
    assert_eq!(types[0], DataType::Int64);
    assert_eq!(
        types[1],
        DataType::Dictionary(Box::new(DataType::Int8), Box::new(DataType::Utf8))
    );
    assert_eq!(types[2], DataType::LargeUtf8);
}

/// Size statistics play no part: each unit's chunk is sized after decoding.
/// A footer without them ingests the same.
#[test]
fn ingest_without_size_statistics() {
    let server = Server::start("256M");
    let client = server.client();
    let path = server.dir.path().join("no_stats.parquet");
    write_parquet(&path, &strings_batch(ROWS), props(ROW_GROUP_ROWS));
    rewrite_footer(&path, |c| c.set_unencoded_byte_array_data_bytes(None));
    client.ingest(path.to_str().unwrap(), "t", &[]).unwrap();
    assert_table(&client, "t", &reference(&path, &[]));
}

/// Size statistics that understate the strings change nothing either, and
/// the arena holds only the table afterwards.
#[test]
fn ingest_with_understated_size_statistics() {
    let server = Server::start("256M");
    let client = server.client();
    let path = server.dir.path().join("lying.parquet");
    write_parquet(&path, &strings_batch(ROWS), props(ROW_GROUP_ROWS));
    rewrite_footer(&path, |c| c.set_unencoded_byte_array_data_bytes(Some(1)));
    let reply = client.ingest(path.to_str().unwrap(), "t", &[]).unwrap();
    assert_table(&client, "t", &reference(&path, &[]));
    server.wait_until("only the table in the arena", |s| {
        s.pending_bytes == 0 && s.objects == 1
    });
    let stats = client.stats().unwrap();
    assert!(
        stats.used_bytes < reply.bytes + 4 * 1024 * 1024,
        "{stats:?}"
    );
}

/// Starts a server with `ARROWPOOL_INGEST` set (the path to force).
fn server_with(io: &str) -> Server {
    spawn_server(&format!("ARROWPOOL_INGEST={io} exec \"$0\" \"$@\""))
}

/// Starts `arrowpoold` through `bash -c script`, where `$0` is the binary and
/// `$@` its arguments.
fn spawn_server(script: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("arrowpool.sock");
    let child = Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_arrowpoold"))
        .arg("--socket")
        .arg(&socket)
        .args(["--memory", "256M", "--threads", "1"])
        .stdout(Stdio::null())
        .stderr(File::create(dir.path().join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let mut server = Server { child, socket, dir };
    let start = Instant::now();
    while Client::connect(&server.socket).is_err() {
        assert!(
            server.child.try_wait().unwrap().is_none(),
            "server exited: {}",
            server.stderr()
        );
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "server did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    server
}

/// A directory of more files than the server's soft descriptor limit allows
/// open at once (two per file): the server raises the limit.
#[test]
fn ingest_a_directory_of_many_files() {
    let server = spawn_server("ulimit -Sn 256 && exec \"$0\" \"$@\"");
    let client = server.client();
    let dir = server.dir.path().join("many");
    std::fs::create_dir(&dir).unwrap();
    let b = batch(vec![("x", Arc::new(Int64Array::from_iter_values(0..10)))]);
    for i in 0..300 {
        write_parquet(&dir.join(format!("part-{i:04}.parquet")), &b, props(10));
    }
    let reply = client.ingest(dir.to_str().unwrap(), "many", &[]).unwrap();
    assert_eq!((reply.files, reply.rows), (300, 3000));
}

/// Both engines, direct and buffered, give the same table.
#[test]
fn ingest_through_io_uring_and_pread_direct_and_buffered() {
    let r: Vec<u64> = lcg(9).take(20_000).collect();
    let b = batch(vec![
        (
            "a",
            Arc::new(Int64Array::from_iter_values(r.iter().map(|&v| v as i64))),
        ),
        (
            "s",
            Arc::new(StringArray::from_iter(nulls_every(
                5,
                r.iter().map(|v| format!("{v}")),
            ))),
        ),
    ]);
    for io in [
        "uring,direct",
        "uring,buffered",
        "pread,direct",
        "pread,buffered",
    ] {
        let server = server_with(io);
        let client = server.client();
        let path = server.dir.path().join("data.parquet");
        write_parquet(&path, &b, props(3000));
        let reply = client
            .ingest(path.to_str().unwrap(), "t", &["a", "s"])
            .unwrap();
        let engine = io.split(',').next().unwrap().replace("uring", "io_uring");
        // io_uring may be unavailable (seccomp): then the server says so.
        assert!(
            reply.reader.starts_with(&format!("{engine}/")) || reply.reader.contains("unavailable"),
            "{io}: {}",
            reply.reader
        );
        assert_table(&client, "t", &reference(&path, &[]));
    }
}

/// The read buffers of an ingest stay for the next one, within
/// `--ingest-buffers` (and none with `off`); the next ingest of the same
/// file reuses them instead of allocating more.
#[test]
fn ingest_keeps_its_read_buffers_for_the_next_one_within_the_limit() {
    let r: Vec<u64> = lcg(3).take(200_000).collect();
    let b = batch(vec![
        (
            "a",
            Arc::new(Int64Array::from_iter_values(r.iter().map(|&v| v as i64))),
        ),
        (
            "s",
            Arc::new(StringArray::from_iter_values(
                r.iter().map(|v| format!("{v:x}")),
            )),
        ),
    ]);
    let mib = 1024 * 1024;
    for (flag, most) in [(None, 192 * mib), (Some("16M"), 16 * mib), (Some("off"), 0)] {
        // No buffers allocated ahead (`--preallocate off`): see the next test.
        let mut args = vec!["--memory", "256M", "--threads", "2", "--preallocate", "off"];
        if let Some(f) = flag {
            args.extend(["--ingest-buffers", f]);
        }
        let server = Server::start_with(&args);
        let client = server.client();
        assert_eq!(
            client.stats().unwrap().ingest_buffer_bytes,
            0,
            "{flag:?}: none before"
        );
        let path = server.dir.path().join("data.parquet");
        // Row groups of 50k rows: extents of a few MB, the file ~5 MB.
        write_parquet(&path, &b, props(50_000));
        client.ingest(path.to_str().unwrap(), "t", &[]).unwrap();
        let kept = client.stats().unwrap().ingest_buffer_bytes;
        assert!(kept <= most, "{flag:?}: {kept} kept");
        if most > 0 {
            assert!(kept > 0, "{flag:?}: the buffers were not kept");
        }
        client.ingest(path.to_str().unwrap(), "t", &[]).unwrap();
        assert_eq!(
            client.stats().unwrap().ingest_buffer_bytes,
            kept,
            "{flag:?}: the second ingest reused the buffers (it allocated none, freed none)"
        );
        assert_table(&client, "t", &reference(&path, &[]));
    }
}

/// With `--preallocate` on (the default), the server allocates read buffers
/// in the background after start (at most an eighth of the arena), and the
/// first ingest reads into them instead of allocating its own.
#[test]
fn the_first_ingest_reads_into_buffers_allocated_at_start() {
    let mib = 1024 * 1024;
    let server = Server::start_with(&["--memory", "1G", "--threads", "2"]);
    let client = server.client();
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.stats().unwrap().ingest_buffer_bytes < 128 * mib {
        assert!(Instant::now() < deadline, "{:?}", client.stats().unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        client.stats().unwrap().ingest_buffer_bytes,
        128 * mib,
        "an eighth of 1G"
    );
    assert!(
        server.stderr().contains("read buffers for ingests"),
        "{}",
        server.stderr()
    );
    let r: Vec<u64> = lcg(5).take(300_000).collect();
    let b = batch(vec![(
        "a",
        Arc::new(Int64Array::from_iter_values(r.iter().map(|&v| v as i64))),
    )]);
    let path = server.dir.path().join("data.parquet");
    write_parquet(&path, &b, props(100_000));
    client.ingest(path.to_str().unwrap(), "t", &[]).unwrap();
    assert_eq!(
        client.stats().unwrap().ingest_buffer_bytes,
        128 * mib,
        "the ingest allocated buffers of its own (they would be kept too)"
    );
    assert_table(&client, "t", &reference(&path, &[]));
}

// ---------------------------------------------------------------------------
// Bad input. Each case: a good table "t" is in place, the bad ingest into "t"
// and into a fresh name fails with a clear message naming the file, "t"
// still resolves to its first version, the fresh name does not exist, and
// the arena holds exactly what it held before.

const GOOD_ROWS: usize = 2500;

fn good_file(server: &Server) -> PathBuf {
    let path = server.dir.path().join("good.parquet");
    let b = batch(vec![
        (
            "id",
            Arc::new(Int64Array::from_iter_values(0..GOOD_ROWS as i64)),
        ),
        (
            "name",
            Arc::new(StringArray::from_iter_values(
                (0..GOOD_ROWS).map(|i| format!("n{i}")),
            )),
        ),
    ]);
    write_parquet(&path, &b, props(1000));
    path
}

/// Ingests `path` (with `columns`) and checks that it fails cleanly with one of
/// `codes` and a message that names `names_file` and contains `problem`.
fn assert_rejected(
    server: &Server,
    path: &Path,
    columns: &[&str],
    codes: &[ErrorCode],
    names_file: &Path,
    problem: &str,
) {
    let client = server.client();
    let good = good_file(server);
    assert_eq!(
        client
            .ingest(good.to_str().unwrap(), "t", &[])
            .unwrap()
            .version,
        1
    );
    let before = client.stats().unwrap();
    for name in ["t", "fresh"] {
        let err = client
            .ingest(path.to_str().unwrap(), name, columns)
            .expect_err("a bad ingest must fail");
        let ClientError::Server(reply) = &err else {
            panic!("not a server error: {err}")
        };
        assert!(
            codes.contains(&reply.code),
            "code {:?}: {}",
            reply.code,
            reply.message
        );
        assert!(
            reply.message.contains(&names_file.display().to_string()),
            "message does not name {}: {}",
            names_file.display(),
            reply.message
        );
        assert!(
            reply
                .message
                .to_lowercase()
                .contains(&problem.to_lowercase()),
            "message does not say {problem:?}: {}",
            reply.message
        );
    }
    let t = client.get("t").unwrap();
    assert_eq!(
        (t.version, t.rows),
        (1, GOOD_ROWS as u64),
        "the previous version still answers"
    );
    drop(t);
    match client.get("fresh") {
        Err(e) => assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}"),
        Ok(_) => panic!("a failed ingest made \"fresh\" visible"),
    }
    server.wait_until("the arena back to its state before the bad ingest", |s| {
        s.used_bytes == before.used_bytes && s.pending_bytes == 0 && s.objects == before.objects
    });
}

#[test]
fn bad_input_missing_file() {
    let server = Server::start("64M");
    let missing = server.dir.path().join("no-such-file.parquet");
    assert_rejected(
        &server,
        &missing,
        &[],
        &[ErrorCode::Ingest],
        &missing,
        "No such file",
    );
}

#[test]
fn bad_input_permission_denied() {
    if rustix::process::geteuid().is_root() {
        println!("skipped: running as root, which reads files whatever their mode");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let server = Server::start("64M");
    let locked = server.dir.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    let inside = locked.join("data.parquet");
    std::fs::copy(good_file(&server), &inside).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    assert_rejected(
        &server,
        &inside,
        &[],
        &[ErrorCode::Ingest],
        &inside,
        "Permission denied",
    );
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn bad_input_directory_with_mixed_schemas() {
    let server = Server::start("64M");
    let dir = corpus("mixed_schema");
    assert_rejected(
        &server,
        &dir,
        &[],
        &[ErrorCode::Ingest],
        &dir.join("b.parquet"),
        "different schema",
    );
}

#[test]
fn bad_input_empty_directory() {
    let server = Server::start("64M");
    let dir = server.dir.path().join("empty");
    std::fs::create_dir(&dir).unwrap();
    assert_rejected(
        &server,
        &dir,
        &[],
        &[ErrorCode::Ingest],
        &dir,
        "no .parquet files",
    );
}

/// A corpus file is refused with an `Ingest` error naming it and saying `needle`;
/// nothing becomes visible and the arena space comes back.
fn corpus_file_rejected(file: &str, needle: &str) {
    let server = Server::start("64M");
    let f = corpus(file);
    assert_rejected(&server, &f, &[], &[ErrorCode::Ingest], &f, needle);
}

#[test]
fn bad_input_not_parquet() {
    corpus_file_rejected("not_parquet.parquet", "not a readable Parquet file");
}

#[test]
fn bad_input_truncated_file() {
    corpus_file_rejected("truncated.parquet", "truncated");
}

#[test]
fn bad_input_corrupt_footer() {
    corpus_file_rejected("corrupt_footer.parquet", "corrupt Parquet footer");
}

#[test]
fn bad_input_footer_pointing_outside_the_file() {
    corpus_file_rejected("footer_offsets.parquet", "claims bytes");
}

#[test]
fn bad_input_corrupt_page_header() {
    corpus_file_rejected("corrupt_page_header.parquet", "cannot decode");
}

#[test]
fn bad_input_corrupt_page_data() {
    corpus_file_rejected("corrupt_page_data.parquet", "cannot decode");
}

#[test]
fn bad_input_unknown_column() {
    let server = Server::start("64M");
    let f = good_file(&server);
    assert_rejected(
        &server,
        &f,
        &["id", "nope"],
        &[ErrorCode::Ingest],
        &f,
        "no column \"nope\"",
    );
}

/// A tiny file (long runs compress to almost nothing) whose table is larger
/// than the whole arena.
#[test]
fn bad_input_table_larger_than_the_arena() {
    let server = Server::start("16M");
    let f = corpus("larger_than_arena.parquet");
    assert!(std::fs::metadata(&f).unwrap().len() < 64 * 1024);
    assert_rejected(
        &server,
        &f,
        &[],
        &[ErrorCode::OutOfMemory, ErrorCode::Ingest],
        &f,
        "can never fit",
    );
}

/// `good_file`'s bytes with a footer whose first row group claims `rows` rows
/// and the others none (the file: `rows`); the pages are untouched.
fn claiming_rows(server: &Server, columns: &[&str], rows: i64) -> PathBuf {
    use parquet::file::metadata::{
        FileMetaData, ParquetMetaData, ParquetMetaDataReader, ParquetMetaDataWriter,
        RowGroupMetaData,
    };
    let good = std::fs::read(good_file(server)).unwrap();
    let bytes = bytes::Bytes::from(good.clone());
    let meta = ParquetMetaDataReader::new()
        .parse_and_finish(&bytes)
        .unwrap();
    let footer_len = u32::from_le_bytes(good[good.len() - 8..good.len() - 4].try_into().unwrap());
    let data_end = good.len() - 8 - footer_len as usize;
    let row_groups: Vec<RowGroupMetaData> = meta
        .row_groups()
        .iter()
        .enumerate()
        .map(|(i, rg)| {
            let claim = if i == 0 { rows } else { 0 };
            rg.clone()
                .into_builder()
                .set_num_rows(claim)
                .build()
                .unwrap()
        })
        .collect();
    let f = meta.file_metadata();
    let file = FileMetaData::new(
        f.version(),
        rows,
        f.created_by().map(str::to_string),
        f.key_value_metadata().cloned(),
        f.schema_descr_ptr(),
        f.column_orders().cloned(),
    );
    let lying = ParquetMetaData::new(file, row_groups);
    let mut out = good[..data_end].to_vec();
    ParquetMetaDataWriter::new(&mut out, &lying)
        .finish()
        .unwrap();
    let path = server
        .dir
        .path()
        .join(format!("claims-{rows}-{}.parquet", columns.join("-")));
    std::fs::write(&path, out).unwrap();
    path
}

/// A footer claiming far more rows than its pages hold (a trillion, or
/// `i64::MAX`) fails cleanly, with an error that says so (not "the table can
/// never fit"), whether its columns would go straight into the arena (`id`)
/// or through the record batch decoder (`name`), and the server stays up.
/// Once the decoder reserved its buffers for a whole row group as the
/// footer sized it: terabytes, and the server aborted.
#[test]
fn bad_input_footer_claiming_absurd_row_counts() {
    let server = Server::start("64M");
    for rows in [1i64 << 40, i64::MAX] {
        for columns in [&["id"][..], &["name"][..], &[][..]] {
            let f = claiming_rows(&server, columns, rows);
            let client = server.client();
            let err = client
                .ingest(f.to_str().unwrap(), "lies", columns)
                .expect_err("a footer claiming more rows than its pages hold");
            let ClientError::Server(reply) = &err else {
                panic!(
                    "{rows} rows, columns {columns:?}: not a server error: {err}\n{}",
                    server.stderr()
                )
            };
            assert!(
                reply.code == ErrorCode::Ingest
                    && (reply.message.contains("footer announces")
                        || reply.message.contains("corrupt Parquet footer")),
                "{rows} rows, columns {columns:?}: {:?} {}",
                reply.code,
                reply.message
            );
            assert!(
                reply.message.contains(&f.display().to_string()),
                "{}",
                reply.message
            );
            client.ping().unwrap();
        }
    }
    assert!(!server.stderr().contains("panicked"), "{}", server.stderr());
}

/// Writes the files of `tests/corpus/`. Run once and commit the bytes:
/// `cargo test --test ingest -- --ignored regenerate_corpus`.
#[test]
#[ignore]
fn regenerate_corpus() {
    let dir = corpus("");
    std::fs::create_dir_all(dir.join("mixed_schema")).unwrap();
    let rows = 300;
    let base_batch = batch(vec![
        ("id", Arc::new(Int64Array::from_iter_values(0..rows as i64))),
        (
            "name",
            Arc::new(StringArray::from_iter_values(
                (0..rows).map(|i| format!("name-{i}")),
            )),
        ),
    ]);
    let base_path =
        std::env::temp_dir().join(format!("arrowpool-corpus-{}.parquet", std::process::id()));
    write_parquet(&base_path, &base_batch, props(150));
    let base = std::fs::read(&base_path).unwrap();
    std::fs::remove_file(&base_path).unwrap();
    let metadata = parquet::file::metadata::ParquetMetaDataReader::new()
        .parse_and_finish(&bytes::Bytes::from(base.clone()))
        .unwrap();
    let footer_len =
        u32::from_le_bytes(base[base.len() - 8..base.len() - 4].try_into().unwrap()) as usize;
    let footer_start = base.len() - 8 - footer_len;

    std::fs::write(
        dir.join("not_parquet.parquet"),
        "id,name\n1,this is a CSV file named .parquet\n".repeat(40),
    )
    .unwrap();
    std::fs::write(dir.join("truncated.parquet"), &base[..base.len() / 2]).unwrap();

    // Metadata bytes replaced by garbage; length and magic intact.
    let mut bad = base.clone();
    for (i, b) in bad[footer_start + 8..base.len() - 8].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(151) ^ 0x5a;
    }
    std::fs::write(dir.join("corrupt_footer.parquet"), &bad).unwrap();

    // A well-formed footer whose first column chunk lies past the end of the file.
    let mut builder = metadata.clone().into_builder();
    let mut groups = builder.take_row_groups();
    let rg = groups.remove(0);
    let mut columns: Vec<_> = rg.columns().to_vec();
    columns[0] = columns[0]
        .clone()
        .into_builder()
        .set_data_page_offset(1 << 40)
        .set_dictionary_page_offset(None)
        .build()
        .unwrap();
    let rg = rg
        .into_builder()
        .set_column_metadata(columns)
        .build()
        .unwrap();
    groups.insert(0, rg);
    let moved = builder.set_row_groups(groups).build();
    let mut out = base[..footer_start].to_vec();
    parquet::file::metadata::ParquetMetaDataWriter::new(&mut out, &moved)
        .finish()
        .unwrap();
    std::fs::write(dir.join("footer_offsets.parquet"), &out).unwrap();

    // The first page header of the "name" column of row group 1 overwritten.
    let (start, len) = metadata.row_group(1).column(1).byte_range();
    let mut bad = base.clone();
    bad[start as usize..start as usize + 12].fill(0xff);
    let _ = len;
    std::fs::write(dir.join("corrupt_page_header.parquet"), &bad).unwrap();

    // Page data: garbage in the middle of a column chunk, at the first offset
    // where arrow-rs's reader errors (so the file is known to be undecodable,
    // not merely decoding to other values).
    let (start, len) = metadata.row_group(0).column(1).byte_range();
    let mut chosen = None;
    for at in (start + len / 3)..(start + len - 4) {
        let mut bad = base.clone();
        bad[at as usize..at as usize + 4].copy_from_slice(&[0xff, 0xff, 0xff, 0x7f]);
        let bytes = bytes::Bytes::from(bad.clone());
        let fails = std::panic::catch_unwind(|| {
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
                .unwrap()
                .build()
                .unwrap();
            reader.into_iter().any(|b| b.is_err())
        })
        .unwrap_or(true);
        if fails {
            chosen = Some(bad);
            break;
        }
    }
    std::fs::write(
        dir.join("corrupt_page_data.parquet"),
        chosen.expect("some corruption is detected"),
    )
    .unwrap();

    // Two files whose "name" columns differ in type.
    write_parquet(&dir.join("mixed_schema/a.parquet"), &base_batch, props(150));
    let other = batch(vec![
        ("id", Arc::new(Int64Array::from_iter_values(0..100))),
        ("name", Arc::new(Int32Array::from_iter_values(0..100))),
    ]);
    write_parquet(&dir.join("mixed_schema/b.parquet"), &other, props(150));

    // 4M rows of long runs: a few KB of Parquet, 32 MB of Arrow.
    let rows = 4_000_000;
    let runs = batch(vec![(
        "v",
        Arc::new(Int64Array::from_iter_values(
            (0..rows as i64).map(|i| i / 500_000),
        )),
    )]);
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(1 << 20))
        .build();
    let mut w = ArrowWriter::try_new(
        File::create(dir.join("larger_than_arena.parquet")).unwrap(),
        runs.schema(),
        Some(props),
    )
    .unwrap();
    w.write(&runs).unwrap();
    w.close().unwrap();
}

/// Regression (fuzzing): ingest of a named pipe blocked the server's ingest
/// thread until a writer opened the pipe. It must be refused at once.
#[test]
fn bad_input_fifo_is_refused_without_blocking() {
    let server = Server::start("64M");
    let fifo = server.dir.path().join("pipe.parquet");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo failed");
    let (tx, rx) = std::sync::mpsc::channel();
    let socket = server.socket.clone();
    let path = fifo.clone();
    std::thread::spawn(move || {
        let client = Client::connect(&socket).unwrap();
        let _ = tx.send(
            client
                .ingest(path.to_str().unwrap(), "t", &[])
                .map(|r| r.version),
        );
    });
    let result = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("ingest of a FIFO still blocks after 10 s");
    let err = result.expect_err("a FIFO must be refused");
    let msg = err.to_string();
    assert!(
        msg.contains("named pipe") && msg.contains("pipe.parquet"),
        "{msg}"
    );
    assert_rejected(
        &server,
        &fifo,
        &[],
        &[ErrorCode::Ingest],
        &fifo,
        "not a regular file",
    );
}
