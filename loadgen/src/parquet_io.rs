//! The Parquet baseline: a reader that uses every core, the writer, and the
//! scans both sides run over their tables.

use std::fs::File;
use std::path::Path;

use anyhow::{Context, Result};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, SchemaRef};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::{ArrowWriter, ProjectionMask};

use crate::workload::writer_properties;

/// Batches read from Parquet or got from the store.
#[derive(Debug, Clone)]
pub struct Batches {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

impl Batches {
    pub fn rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }
}

/// Reads `path` (all columns, or the named ones) with up to `threads` threads.
///
/// Work is split by row groups when there are enough of them, else by columns
/// (each thread reads some columns of every row group and the batches are
/// zipped back together). Columns come back in file order, as arrow-rs gives
/// them. Batches hold at most `batch_rows` rows and, when that is the row
/// group size, are one row group each.
pub fn read(
    path: &Path,
    columns: Option<&[&str]>,
    threads: usize,
    batch_rows: usize,
) -> Result<Batches> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let meta = ArrowReaderMetadata::load(&file, ArrowReaderOptions::new())?;
    let file_schema = meta.schema().clone();
    let mut roots: Vec<usize> = match columns {
        None => (0..file_schema.fields().len()).collect(),
        Some(names) => names
            .iter()
            .map(|n| file_schema.index_of(n))
            .collect::<Result<_, _>>()?,
    };
    roots.sort_unstable();
    roots.dedup();
    let schema = std::sync::Arc::new(file_schema.project(&roots)?);
    let row_groups = meta.metadata().num_row_groups();
    let threads = threads.max(1);

    let read_part = |groups: Vec<usize>, cols: Vec<usize>| -> Result<Vec<RecordBatch>> {
        // Each thread opens the file itself: a cloned descriptor shares the file
        // offset, and parquet's `File` reader seeks then reads.
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mask = ProjectionMask::roots(meta.parquet_schema(), cols);
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(file, meta.clone())
            .with_row_groups(groups)
            .with_projection(mask)
            .with_batch_size(batch_rows.max(1))
            .build()?;
        Ok(reader.collect::<Result<Vec<_>, _>>()?)
    };

    if threads == 1 || (row_groups < threads && roots.len() < 2) || row_groups == 0 {
        let batches = read_part((0..row_groups).collect(), roots)?;
        return Ok(Batches { schema, batches });
    }
    if row_groups >= threads {
        let parts = split((0..row_groups).collect(), threads);
        let results: Vec<Result<Vec<RecordBatch>>> = std::thread::scope(|s| {
            let handles: Vec<_> = parts
                .into_iter()
                .map(|g| s.spawn(|| read_part(g, roots.clone())))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("reader thread panicked")))
                })
                .collect()
        });
        let mut batches = Vec::new();
        for r in results {
            batches.extend(r?);
        }
        return Ok(Batches { schema, batches });
    }
    // Fewer row groups than threads: split the columns instead.
    let parts = split(roots, threads);
    let results: Vec<Result<Vec<RecordBatch>>> = std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|cols| s.spawn(|| read_part((0..row_groups).collect(), cols)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("reader thread panicked")))
            })
            .collect()
    });
    let parts: Vec<Vec<RecordBatch>> = results.into_iter().collect::<Result<_>>()?;
    let count = parts[0].len();
    let mut batches = Vec::with_capacity(count);
    for b in 0..count {
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for p in &parts {
            let part = p
                .get(b)
                .context("column readers returned different batch counts")?;
            cols.extend(part.columns().iter().cloned());
        }
        batches.push(RecordBatch::try_new(schema.clone(), cols)?);
    }
    Ok(Batches { schema, batches })
}

/// Splits `items` into at most `n` contiguous, non-empty parts of near-equal size.
pub fn split<T: Clone>(items: Vec<T>, n: usize) -> Vec<Vec<T>> {
    let n = n.clamp(1, items.len().max(1));
    let base = items.len() / n;
    let extra = items.len() % n;
    let mut out = Vec::with_capacity(n);
    let mut at = 0;
    for k in 0..n {
        let len = base + usize::from(k < extra);
        if len > 0 {
            out.push(items[at..at + len].to_vec());
        }
        at += len;
    }
    out
}

/// Writes batches as one Parquet file (snappy, `batch_rows`-row groups) on one
/// thread with `ArrowWriter`; returns the file size.
pub fn write(
    path: &Path,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    batch_rows: usize,
) -> Result<u64> {
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut writer =
        ArrowWriter::try_new(file, schema.clone(), Some(writer_properties(batch_rows)))?;
    for b in batches {
        writer.write(b)?;
    }
    writer.close()?;
    Ok(std::fs::metadata(path)?.len())
}

/// Sums a Float64 column over all batches: touches every value (every page).
pub fn sum_f64(batches: &[RecordBatch], column: &str) -> Result<f64> {
    let mut total = 0.0;
    for b in batches {
        let col = b
            .column_by_name(column)
            .with_context(|| format!("no column {column}"))?;
        let values = col
            .as_primitive_opt::<Float64Type>()
            .with_context(|| format!("{column} is not Float64"))?;
        total += values.values().iter().sum::<f64>();
    }
    Ok(total)
}

/// A scan of any generated column: numbers are summed, strings contribute
/// their lengths (read from the offsets).
pub fn scan(array: &dyn Array) -> f64 {
    match array.data_type() {
        DataType::Float64 => array.as_primitive::<Float64Type>().values().iter().sum(),
        DataType::Int64 => array
            .as_primitive::<Int64Type>()
            .values()
            .iter()
            .fold(0i64, |a, &v| a.wrapping_add(v)) as f64,
        DataType::Utf8 => {
            let s = array.as_string::<i32>();
            s.offsets()
                .windows(2)
                .map(|w| (w[1] - w[0]) as i64)
                .sum::<i64>() as f64
        }
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{ensure_parquet, Workload};

    #[test]
    fn split_is_balanced_and_complete() {
        assert_eq!(split((0..5).collect(), 2), vec![vec![0, 1, 2], vec![3, 4]]);
        assert_eq!(split((0..2).collect(), 4), vec![vec![0], vec![1]]);
        assert_eq!(split(Vec::<u8>::new(), 3), Vec::<Vec<u8>>::new());
    }

    #[test]
    fn parallel_reads_match_the_generated_table() {
        let dir = std::env::temp_dir().join(format!("loadgen-read-test-{}", std::process::id()));
        // 2.5 row groups: the row-group split; 1 row group: the column split.
        for rows in [25_000, 1000] {
            let w = Workload {
                rows,
                columns: 8,
                seed: 3,
                batch_rows: 10_000,
            };
            let (path, _) = ensure_parquet(&dir, &w).unwrap();
            let expected: Vec<RecordBatch> =
                (0..w.batch_count()).map(|i| w.batch(i).unwrap()).collect();
            for threads in [1, 2, 3] {
                let got = read(&path, None, threads, w.batch_rows).unwrap();
                assert_eq!(got.batches, expected, "rows {rows}, threads {threads}");
                let two = read(&path, Some(&["i64_1", "f64_0"]), threads, w.batch_rows).unwrap();
                assert_eq!(two.schema.fields().len(), 2);
                assert_eq!(two.schema.field(0).name(), "f64_0");
                assert_eq!(two.rows() as u64, rows);
                let a = sum_f64(&two.batches, "f64_0").unwrap();
                let b = sum_f64(&expected, "f64_0").unwrap();
                assert!((a - b).abs() <= 1e-6 * b.abs());
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
