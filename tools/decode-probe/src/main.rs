//! The fixed-width (INT64/DOUBLE, required) columns of a Parquet file, decoded
//! two ways on one thread, three rounds:
//!
//! - A, the ingest's way: arrow-rs record batches of whole row groups, then
//!   each column's values copied into a destination (the arena, in the server);
//! - B: arrow-rs's `SerializedPageReader` (page headers, decompression), and
//!   the values decoded straight into the destination: PLAIN pages copied,
//!   dictionary pages gathered by `RleDecoder::get_batch_with_dict`.
//!
//! A measurement for a decision, not production code: it trusts the file
//! (required columns, v1 data pages, PLAIN or RLE_DICTIONARY) and panics
//! otherwise.
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_buffer::ToByteSlice;
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use parquet::basic::{Encoding, Type};
use parquet::column::page::{Page, PageReader};
use parquet::column::reader::{get_column_reader, ColumnReader};
use parquet::encodings::rle::RleDecoder;
use parquet::file::reader::{FileReader, SerializedFileReader};

const STEP: usize = 64 * 1024;

/// Reads `n` values of `r` in `STEP`s into `buf`, each step copied into
/// `out`; returns the values read.
fn in_steps<T: parquet::data_type::DataType>(
    mut r: parquet::column::reader::ColumnReaderImpl<T>,
    buf: &mut Vec<T::T>,
    out: &mut [u8],
    n: usize,
) -> usize
where
    T::T: arrow_buffer::ArrowNativeType,
{
    let mut got = 0;
    while got < n {
        buf.clear();
        let (k, _, _) = r.read_records(STEP.min(n - got), None, None, buf).unwrap();
        let s = buf.to_byte_slice();
        out[got * 8..got * 8 + s.len()].copy_from_slice(s);
        got += k;
    }
    got
}

fn bytes_of_mut(v: &mut [u64]) -> &mut [u8] {
    // SAFETY: u64 has no invalid bit patterns and u8 has alignment 1.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), v.len() * 8) }
}
use parquet::file::serialized_reader::SerializedPageReader;

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: decode-probe FILE.parquet");
    let data = Bytes::from(std::fs::read(&path).unwrap());
    let meta = SerializedFileReader::new(data.clone())
        .unwrap()
        .metadata()
        .clone();
    let schema = meta.file_metadata().schema_descr_ptr();
    let fixed: Vec<usize> = (0..schema.num_columns())
        .filter(|&i| {
            let c = schema.column(i);
            matches!(c.physical_type(), Type::INT64 | Type::DOUBLE) && c.max_def_level() == 0
        })
        .collect();
    let names: Vec<String> = fixed
        .iter()
        .map(|&i| schema.column(i).name().to_owned())
        .collect();
    println!("required 8-byte columns: {names:?}");
    let rows = meta.file_metadata().num_rows() as usize;
    let mut dest = vec![1u64; rows * fixed.len()];
    for round in 0..3 {
        // A: record batches, then a copy.
        let t = Instant::now();
        let mask = ProjectionMask::leaves(&schema, fixed.iter().copied());
        let batches = ParquetRecordBatchReaderBuilder::try_new(data.clone())
            .unwrap()
            .with_projection(mask)
            .with_batch_size(1 << 20)
            .build()
            .unwrap();
        let (mut at, mut copy) = (0, Duration::ZERO);
        for b in batches {
            let b = b.unwrap();
            let c0 = Instant::now();
            for col in b.columns() {
                let d = col.to_data();
                let s = d.buffers()[0].typed_data::<u64>();
                dest[at..at + s.len()].copy_from_slice(s);
                at += s.len();
            }
            copy += c0.elapsed();
        }
        let a = t.elapsed();

        // B: pages, values straight into `dest`.
        let t = Instant::now();
        let mut at = 0;
        for rg in 0..meta.num_row_groups() {
            let rgm = meta.row_group(rg);
            let n = rgm.num_rows() as usize;
            for &c in &fixed {
                let mut pages =
                    SerializedPageReader::new(Arc::new(data.clone()), rgm.column(c), n, None)
                        .unwrap();
                let out = &mut dest[at..at + n];
                let (mut dict, mut got) = (Vec::<u64>::new(), 0);
                while let Some(p) = pages.get_next_page().unwrap() {
                    match p {
                        Page::DictionaryPage {
                            buf, num_values, ..
                        } => {
                            dict = buf
                                .chunks_exact(8)
                                .take(num_values as usize)
                                .map(|x| u64::from_le_bytes(x.try_into().unwrap()))
                                .collect();
                        }
                        Page::DataPage {
                            buf,
                            num_values,
                            encoding,
                            ..
                        } => {
                            let k = num_values as usize;
                            let dst = &mut out[got..got + k];
                            match encoding {
                                Encoding::PLAIN => {
                                    for (d, s) in dst.iter_mut().zip(buf[..k * 8].chunks_exact(8)) {
                                        *d = u64::from_le_bytes(s.try_into().unwrap());
                                    }
                                }
                                Encoding::RLE_DICTIONARY | Encoding::PLAIN_DICTIONARY => {
                                    let mut d = RleDecoder::new(buf[0]);
                                    d.set_data(buf.slice(1..)).unwrap();
                                    assert_eq!(d.get_batch_with_dict(&dict, dst, k).unwrap(), k);
                                }
                                e => panic!("page encoding {e:?}"),
                            }
                            got += k;
                        }
                        _ => panic!("only v1 data pages"),
                    }
                }
                assert_eq!(got, n);
                at += n;
            }
        }
        let b = t.elapsed();

        // C: arrow-rs's column reader (public API) in 64Ki-value steps into
        // a reused buffer, each step copied into `dest`.
        let t = Instant::now();
        let mut at = 0;
        let mut i64s: Vec<i64> = Vec::with_capacity(STEP);
        let mut f64s: Vec<f64> = Vec::with_capacity(STEP);
        let dest_bytes: &mut [u8] = bytes_of_mut(&mut dest);
        for rg in 0..meta.num_row_groups() {
            let rgm = meta.row_group(rg);
            let n = rgm.num_rows() as usize;
            for &c in &fixed {
                let pages =
                    SerializedPageReader::new(Arc::new(data.clone()), rgm.column(c), n, None)
                        .unwrap();
                let reader = get_column_reader(schema.column(c), Box::new(pages));
                let out = &mut dest_bytes[at * 8..(at + n) * 8];
                let got = match reader {
                    ColumnReader::Int64ColumnReader(r) => in_steps(r, &mut i64s, out, n),
                    ColumnReader::DoubleColumnReader(r) => in_steps(r, &mut f64s, out, n),
                    _ => panic!("not INT64/DOUBLE"),
                };
                assert_eq!(got, n);
                at += n;
            }
        }
        let c = t.elapsed();
        println!("round {round}: A (batches, then copy) {a:?}, of which copy {copy:?}; B (pages into the destination) {b:?}; C (column reader in steps, copied) {c:?}");
    }
}
