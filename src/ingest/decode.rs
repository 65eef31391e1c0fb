//! Decoding: one `ParquetPushDecoder` per unit (a row group, or some of its
//! columns), fed from the reader's buffers, for the unit's columns that are
//! not read straight into the arena (`direct.rs`).
//!
//! Why the push decoder: it does no I/O of its own, so the reader decides how
//! bytes arrive (io_uring, large reads, `O_DIRECT`) and the decoder only asks
//! for ranges, which here are always the column chunks already read.

use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use arrow_array::RecordBatch;
use arrow_schema::{Schema, SchemaRef};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ArrowReaderMetadata;
use parquet::arrow::push_decoder::ParquetPushDecoderBuilder;
use parquet::DecodeResult;

use super::error::IngestError;
use super::plan::Unit;

/// Decodes one unit's columns that are not direct from its column chunks
/// (`(file range, bytes)`): batches of those columns only, none if all are
/// direct.
pub fn decode_unit(
    metadata: &ArrowReaderMetadata,
    schema: &SchemaRef,
    unit: &Unit,
    chunks: &[(Range<u64>, Bytes)],
    path: &Path,
) -> Result<Vec<RecordBatch>, IngestError> {
    let fail = |err: String| IngestError::Decode {
        path: path.into(),
        row_group: unit.row_group,
        columns: column_names(metadata.schema(), &unit.roots),
        err,
    };
    // Decoders are not expected to panic on bad data, but a corrupt page must
    // never take the server down or hide which file it came from.
    let result = catch_unwind(AssertUnwindSafe(|| decode(metadata, schema, unit, chunks)));
    match result {
        Ok(Ok(batches)) => Ok(batches),
        Ok(Err(e)) => Err(fail(e)),
        Err(panic) => Err(fail(format!(
            "the decoder failed on corrupt data ({})",
            crate::util::panic_message(&*panic)
        ))),
    }
}

fn decode(
    metadata: &ArrowReaderMetadata,
    schema: &SchemaRef,
    unit: &Unit,
    chunks: &[(Range<u64>, Bytes)],
) -> Result<Vec<RecordBatch>, String> {
    let roots = unit.decoded_roots();
    if roots.is_empty() {
        // Every column of the unit is read straight into the arena.
        return Ok(Vec::new());
    }
    let expected = schema.project(&roots).map_err(|e| e.to_string())?;
    let mut decoder = ParquetPushDecoderBuilder::new_with_metadata(metadata.clone())
        .with_projection(unit.mask.clone())
        .with_row_groups(vec![unit.row_group])
        .with_batch_size(unit.batch_rows.max(1))
        .build()
        .map_err(|e| e.to_string())?;
    // The footer's row count may lie: reserve for a few batches at most.
    let expect = unit.rows.div_ceil(unit.batch_rows.max(1) as u64);
    let mut batches = Vec::with_capacity(expect.min(64) as usize);
    // Each round either pushes data the decoder lacked or yields a batch, so
    // the loop ends; the bound guards against a decoder that asks again for
    // what it was given.
    let mut rounds_without_progress = 0;
    loop {
        match decoder.try_decode().map_err(|e| e.to_string())? {
            DecodeResult::NeedsData(ranges) => {
                rounds_without_progress += 1;
                if rounds_without_progress > 2 {
                    return Err(format!("the decoder keeps asking for {ranges:?}"));
                }
                let mut data = Vec::with_capacity(ranges.len());
                for r in &ranges {
                    let found = chunks
                        .iter()
                        .find(|(c, _)| c.start <= r.start && r.end <= c.end);
                    let Some((c, bytes)) = found else {
                        return Err(format!(
                            "the decoder asked for bytes {r:?}, outside the column chunks read"
                        ));
                    };
                    data.push(
                        bytes.slice((r.start - c.start) as usize..(r.end - c.start) as usize),
                    );
                }
                decoder
                    .push_ranges(ranges, data)
                    .map_err(|e| e.to_string())?;
            }
            DecodeResult::Data(batch) => {
                rounds_without_progress = 0;
                batches.push(to_plain(batch, &expected)?);
            }
            DecodeResult::Finished => break,
        }
    }
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if rows as u64 != unit.rows {
        return Err(format!(
            "decoded {rows} rows where the footer announces {}",
            unit.rows
        ));
    }
    Ok(batches)
}

/// Casts columns whose type differs from `expected` (a dictionary the
/// decoder kept despite the requested schema) to the expected type.
fn to_plain(batch: RecordBatch, expected: &Schema) -> Result<RecordBatch, String> {
    let same = batch
        .columns()
        .iter()
        .zip(expected.fields().iter())
        .all(|(c, f)| c.data_type() == f.data_type());
    if same && batch.num_columns() == expected.fields().len() {
        return Ok(batch);
    }
    let columns = batch
        .columns()
        .iter()
        .zip(expected.fields().iter())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c.clone())
            } else {
                arrow_cast::cast(c, f.data_type())
            }
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    RecordBatch::try_new(std::sync::Arc::new(expected.clone()), columns).map_err(|e| e.to_string())
}

fn column_names(schema: &Schema, roots: &[usize]) -> String {
    let names: Vec<&str> = roots
        .iter()
        .filter_map(|&i| schema.fields().get(i))
        .map(|f| f.name().as_str())
        .collect();
    if names.len() > 8 {
        format!("{}, ... ({} columns)", names[..8].join(", "), names.len())
    } else {
        names.join(", ")
    }
}
