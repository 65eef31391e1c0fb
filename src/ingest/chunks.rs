//! Decoded units into the arena, each in a chunk of its own, and the version
//! that references them all.
//!
//! A version is a manifest over chunks (`ipc::manifest`), so an ingest is a
//! forward pipeline: the decoder thread that decoded a unit writes its plain
//! columns, exactly sized, as an IPC file into a new chunk (and its heap
//! batches go), while the other threads go on decoding. Dictionary columns
//! are remapped to their table-wide dictionary on the same thread
//! (`dictionary.rs`); their keys wait on the heap (a byte a row for most) until
//! the dictionary is complete and fixes their index type, then go with the
//! dictionaries into one last chunk. A unit's flat numeric columns (`d`) are
//! not in its batches: the same thread reads them from the unit's column
//! chunks straight into a chunk of raw buffers (`direct.rs`). The manifest
//! puts every unit's columns back into row groups, in file order:
//! ```text
//!  unit chunks (any order):   [rg2: a b][rg2: d] [rg0: a b][rg0: d] ...   [keys of c, all batches | dict of c]
//!  version (file order):      rg0: a b c d   rg1: a b c d   rg2: a b c d ...   (c: keys + one dictionary)
//! ```
//! Nothing needs a size bound or a second pass: each chunk's size is known
//! when it is reserved. All chunks belong to the ingest's own server-side
//! connection; a failure anywhere disconnects it, which aborts them all.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use parquet::file::metadata::ParquetMetaData;

use crate::ipc::manifest::{BatchLayout, ColumnLayout, DictionaryLayout, Manifest};
use crate::pool::{Pool, PoolError, PutError};
use crate::store::{ConnId, ObjectId, SealInfo, StoreError};

use super::dictionary::{key_type, Dictionaries};
use super::direct;
use super::error::IngestError;
use super::plan::Unit;
use crate::ipc::write;

/// A unit once placed.
struct Placed {
    /// Rows of each of its batches.
    rows: Vec<i64>,
    /// Per batch, its plain columns in the arena, in unit order.
    plain: Vec<Vec<ColumnLayout>>,
    /// Per batch, the table-wide keys of its dictionary columns, in unit order.
    keys: Vec<Vec<ArrayRef>>,
}

/// What a finished ingest wrote.
pub struct Written {
    pub sealed: SealInfo,
    /// Bytes of its chunks.
    pub bytes: u64,
    /// Time spent writing into the arena, summed over threads.
    pub write: Duration,
    /// Time spent reading direct columns into the arena (decoding, and
    /// faulting their chunks in), summed over threads.
    pub direct: Duration,
}

/// Places the units of one ingest; `place` runs on the decoder threads.
pub struct Placer<'a> {
    pool: &'a Pool,
    conn: ConnId,
    name: &'a str,
    units: &'a [Unit],
    /// The decode schema: all columns, kept dictionaries with `Int32` keys.
    target: &'a SchemaRef,
    dictionaries: &'a Dictionaries,
    prepare: &'a (dyn Fn(&mut [u8]) + Sync),
    path: &'a std::path::Path,
    /// Each file's metadata, for the direct columns' page readers.
    files: &'a [&'a ParquetMetaData],
    placed: Mutex<Vec<Option<Placed>>>,
    chunks: Mutex<Vec<(ObjectId, u64)>>,
    /// Bytes of all chunks asked for so far (for the "never fits" message).
    reserved: AtomicU64,
    write_time: Mutex<Duration>,
    /// Time spent reading direct columns into the arena, summed over threads.
    direct_time: Mutex<Duration>,
}

fn internal(what: impl std::fmt::Display) -> IngestError {
    IngestError::Internal(what.to_string())
}

impl<'a> Placer<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pool: &'a Pool,
        conn: ConnId,
        name: &'a str,
        units: &'a [Unit],
        target: &'a SchemaRef,
        dictionaries: &'a Dictionaries,
        prepare: &'a (dyn Fn(&mut [u8]) + Sync),
        path: &'a std::path::Path,
        files: &'a [&'a ParquetMetaData],
    ) -> Placer<'a> {
        Placer {
            pool,
            conn,
            name,
            units,
            target,
            dictionaries,
            prepare,
            path,
            files,
            placed: Mutex::new((0..units.len()).map(|_| None).collect()),
            chunks: Mutex::new(Vec::new()),
            reserved: AtomicU64::new(0),
            write_time: Mutex::new(Duration::ZERO),
            direct_time: Mutex::new(Duration::ZERO),
        }
    }

    fn store_error(&self, err: crate::pool::PoolError) -> IngestError {
        IngestError::Store {
            path: self.path.into(),
            err,
        }
    }

    /// An arena too small for the chunk asked: if the chunks placed so far
    /// and this one exceed what the arena can hold at all, the table can
    /// never fit, and the error says so with the table's bytes so far.
    fn never_fits(&self, err: PoolError) -> PoolError {
        match err {
            PoolError::Store(StoreError::OutOfMemory {
                requested_bytes,
                free_bytes,
                held_bytes,
                quarantined_bytes,
                largest_free_bytes,
                arena_bytes,
            }) => {
                // Every chunk reserved so far, this one included.
                let total = self.reserved.load(Ordering::Relaxed).max(requested_bytes);
                PoolError::Store(StoreError::OutOfMemory {
                    requested_bytes: if total > arena_bytes {
                        total
                    } else {
                        requested_bytes
                    },
                    free_bytes,
                    held_bytes,
                    quarantined_bytes,
                    largest_free_bytes,
                    arena_bytes,
                })
            }
            other => other,
        }
    }

    /// Writes `batches` as one IPC file into a new chunk; returns each
    /// batch's columns as they lie in the arena.
    fn write_file(
        &self,
        schema: &SchemaRef,
        batches: &[RecordBatch],
        threads: usize,
    ) -> Result<(ObjectId, Manifest), IngestError> {
        let layout = write::layout(schema, batches).map_err(internal)?;
        let size = layout.file_len() as u64;
        self.reserved.fetch_add(size, Ordering::Relaxed);
        let (id, len, manifest) = self
            .pool
            .write_chunk(self.conn, self.name, size, |dest| {
                let (n, t) = write::write(dest, schema, batches, &layout, threads, self.prepare)?;
                *self.write_time.lock().unwrap_or_else(|p| p.into_inner()) += t;
                Ok::<usize, ArrowError>(n)
            })
            .map_err(|e| match e {
                PutError::Pool(err) => self.store_error(self.never_fits(err)),
                PutError::Write(e) => internal(format!("writing the table: {e}")),
            })?;
        self.chunks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, len));
        if manifest.batches.len() != batches.len() {
            return Err(internal("a written file lost batches"));
        }
        Ok((id, manifest))
    }

    /// Reads unit `u`'s direct columns (`direct.rs`) from its column chunks
    /// into a chunk of their own; returns per batch their layouts, in unit
    /// order (none if the unit has no direct column).
    fn place_direct(
        &self,
        unit: &Unit,
        batch_rows: &[usize],
        chunks: &[(Range<u64>, Bytes)],
    ) -> Result<Vec<Vec<ColumnLayout>>, IngestError> {
        let positions: Vec<usize> = (0..unit.roots.len()).filter(|&i| unit.direct[i]).collect();
        if positions.is_empty() || batch_rows.is_empty() {
            return Ok(vec![Vec::new(); batch_rows.len()]);
        }
        let metadata = self
            .files
            .get(unit.file)
            .ok_or_else(|| internal("a unit of an unknown file"))?;
        let columns: Vec<direct::Column> = positions
            .iter()
            .map(|&i| direct::Column::new(metadata, self.target, unit.roots[i]))
            .collect::<Option<_>>()
            .ok_or_else(|| internal("a column planned as direct is not"))?;
        let size = direct::chunk_bytes(&columns, batch_rows).ok_or_else(|| {
            IngestError::CorruptMetadata {
                path: self.path.into(),
                problem: format!(
                    "row group {} claims {} rows, more than any column can hold",
                    unit.row_group, unit.rows
                ),
            }
        })?;
        self.reserved.fetch_add(size, Ordering::Relaxed);
        let began = Instant::now();
        let (id, layouts) = self
            .pool
            .write_raw_chunk(self.conn, self.name, size, |dest, base| {
                (self.prepare)(dest);
                direct::decode(
                    metadata,
                    unit.row_group,
                    &columns,
                    batch_rows,
                    chunks,
                    dest,
                    base,
                )
            })
            .map_err(|e| match e {
                PutError::Pool(err) => self.store_error(self.never_fits(err)),
                PutError::Write((k, err)) => IngestError::Decode {
                    path: self.path.into(),
                    row_group: unit.row_group,
                    columns: match k.and_then(|k| positions.get(k)) {
                        Some(&i) => self.target.field(unit.roots[i]).name().clone(),
                        None => positions
                            .iter()
                            .map(|&i| self.target.field(unit.roots[i]).name().as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    },
                    err,
                },
            })?;
        *self.direct_time.lock().unwrap_or_else(|p| p.into_inner()) += began.elapsed();
        self.chunks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, size));
        Ok(layouts)
    }

    /// Places unit `u`: its decoded batches (columns: the unit's roots that
    /// are not direct, in the decode schema's types) and its direct columns,
    /// read here from its column chunks.
    pub fn place(
        &self,
        u: usize,
        batches: Vec<RecordBatch>,
        chunks: &[(Range<u64>, Bytes)],
    ) -> Result<(), IngestError> {
        let unit = self.units.get(u).ok_or_else(|| internal("unknown unit"))?;
        let batch_rows = unit
            .batches()
            .map_err(|problem| IngestError::CorruptMetadata {
                path: self.path.into(),
                problem,
            })?;
        // Where each root's column is in the decoded batches (direct: none).
        let mut in_batch = vec![None; unit.roots.len()];
        let mut decoded = 0;
        for (i, slot) in in_batch.iter_mut().enumerate() {
            if !unit.direct[i] {
                *slot = Some(decoded);
                decoded += 1;
            }
        }
        if decoded > 0 {
            let got: Vec<usize> = batches.iter().map(RecordBatch::num_rows).collect();
            if got != batch_rows {
                return Err(internal(format!(
                    "row group {} decoded to batches of {got:?} rows where {batch_rows:?} were planned",
                    unit.row_group
                )));
            }
        }
        for b in &batches {
            if b.num_columns() != decoded {
                return Err(internal("a decoded batch has other columns than its unit"));
            }
        }
        let is_dict: Vec<bool> = unit
            .roots
            .iter()
            .map(|&r| self.dictionaries.is_dictionary(r))
            .collect();
        let plain_idx: Vec<usize> = (0..unit.roots.len())
            .filter(|&i| !is_dict[i] && !unit.direct[i])
            .collect();
        let dict_idx: Vec<usize> = (0..unit.roots.len()).filter(|&i| is_dict[i]).collect();
        let column = |b: &RecordBatch, i: usize| -> Result<ArrayRef, IngestError> {
            in_batch[i]
                .map(|c| b.column(c).clone())
                .ok_or_else(|| internal("a dictionary column planned as direct"))
        };

        let mut keys = Vec::with_capacity(batches.len());
        let mut caches = vec![None; dict_idx.len()];
        for b in &batches {
            let mut k = Vec::with_capacity(dict_idx.len());
            for (j, &i) in dict_idx.iter().enumerate() {
                let remapped = self
                    .dictionaries
                    .remap(unit.roots[i], &column(b, i)?, &mut caches[j])
                    .map_err(|e| IngestError::Decode {
                        path: self.path.into(),
                        row_group: unit.row_group,
                        columns: self.target.field(unit.roots[i]).name().clone(),
                        err: e.to_string(),
                    })?;
                k.push(remapped);
            }
            keys.push(k);
        }
        drop(caches);
        if decoded == 0 {
            // No decoded batches: the direct columns alone make the batches.
            keys = vec![Vec::new(); batch_rows.len()];
        }

        let written = if plain_idx.is_empty() {
            vec![Vec::new(); batch_rows.len()]
        } else {
            let schema = Arc::new(
                self.target
                    .project(&plain_idx.iter().map(|&i| unit.roots[i]).collect::<Vec<_>>())
                    .map_err(internal)?,
            );
            let projected: Vec<RecordBatch> = batches
                .iter()
                .map(|b| {
                    let columns = plain_idx
                        .iter()
                        .map(|&i| column(b, i))
                        .collect::<Result<Vec<_>, _>>()?;
                    RecordBatch::try_new(schema.clone(), columns).map_err(internal)
                })
                .collect::<Result<_, _>>()?;
            let (_, manifest) = self.write_file(&schema, &projected, 1)?;
            manifest
                .batch_columns()
                .map_err(internal)?
                .ok_or_else(|| internal("a plain unit has nested dictionaries"))?
        };
        drop(batches);
        let direct = self.place_direct(unit, &batch_rows, chunks)?;
        if written.len() != batch_rows.len() || direct.len() != batch_rows.len() {
            return Err(internal(
                "a unit's columns were placed as different batches",
            ));
        }
        // Per batch, the plain columns in unit order: written or direct.
        let mut plain = Vec::with_capacity(batch_rows.len());
        for (w, d) in written.into_iter().zip(direct) {
            let (mut w, mut d) = (w.into_iter(), d.into_iter());
            let mut columns = Vec::with_capacity(unit.roots.len() - dict_idx.len());
            for i in (0..unit.roots.len()).filter(|&i| !is_dict[i]) {
                let c = if unit.direct[i] { d.next() } else { w.next() };
                columns.push(c.ok_or_else(|| internal("a column was not placed"))?);
            }
            plain.push(columns);
        }
        let rows = batch_rows.iter().map(|&n| n as i64).collect();
        let mut placed = self.placed.lock().unwrap_or_else(|p| p.into_inner());
        placed[u] = Some(Placed { rows, plain, keys });
        Ok(())
    }

    /// Writes the dictionaries and keys, then publishes the version of
    /// `name` (the requested columns: `roots` of the decode schema, whose
    /// `schema` is `out`). `threads` write the keys.
    pub fn finish(
        self,
        roots: &[usize],
        out: &SchemaRef,
        threads: usize,
    ) -> Result<Written, IngestError> {
        let placed: Vec<Placed> = self
            .placed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .map(|p| p.ok_or_else(|| internal("a unit was never placed")))
            .collect::<Result<_, _>>()?;

        // The version's schema: kept dictionaries get their final index type
        // and an id each.
        let mut dict_cols = Vec::new(); // (position in `out`, root, key type)
        let mut fields = Vec::with_capacity(out.fields().len());
        for (pos, (&root, f)) in roots.iter().zip(out.fields()).enumerate() {
            if self.dictionaries.is_dictionary(root) {
                let DataType::Dictionary(_, values) = f.data_type() else {
                    return Err(internal("a dictionary column without a dictionary type"));
                };
                let k = key_type(self.dictionaries.len(root));
                let id = dict_cols.len() as i64;
                dict_cols.push((pos, root, k.clone()));
                #[expect(deprecated)] // the manifest's encoder reads ids from the schema
                let field = Field::new_dict(
                    f.name(),
                    DataType::Dictionary(Box::new(k), values.clone()),
                    f.is_nullable(),
                    id,
                    false,
                )
                .with_metadata(f.metadata().clone());
                fields.push(field);
            } else {
                fields.push(f.as_ref().clone());
            }
        }
        let schema = Arc::new(Schema::new_with_metadata(fields, out.metadata().clone()));

        // Row groups in file order: adjacent units of one row group are its
        // column splits, which decode to batches of equal rows.
        let mut order: Vec<(usize, usize)> = Vec::new(); // (first unit, end unit)
        let mut i = 0;
        while i < self.units.len() {
            let mut j = i + 1;
            while j < self.units.len()
                && self.units[j].file == self.units[i].file
                && self.units[j].row_group == self.units[i].row_group
            {
                j += 1;
            }
            let n = placed[i].rows.len();
            if placed[i..j].iter().any(|p| p.rows != placed[i].rows) {
                return Err(internal(format!(
                    "row group {} split into parts with different batches ({n} and others)",
                    self.units[i].row_group
                )));
            }
            order.push((i, j));
            i = j;
        }

        // Keys of every batch, one IPC file, in the version's batch order.
        let key_layouts: Vec<Vec<ColumnLayout>> = if dict_cols.is_empty() {
            Vec::new()
        } else {
            let key_schema = Arc::new(Schema::new(
                dict_cols
                    .iter()
                    .map(|(pos, _, k)| Field::new(out.field(*pos).name(), k.clone(), true))
                    .collect::<Vec<_>>(),
            ));
            let mut key_batches = Vec::new();
            for &(first, end) in &order {
                for b in 0..placed[first].rows.len() {
                    let mut columns = Vec::with_capacity(dict_cols.len());
                    for p in &placed[first..end] {
                        let keys = p
                            .keys
                            .get(b)
                            .ok_or_else(|| internal("a batch lacks keys"))?;
                        for k in keys {
                            let want = &key_schema.field(columns.len()).data_type().clone();
                            columns.push(arrow_cast::cast(k, want).map_err(internal)?);
                        }
                    }
                    let batch =
                        RecordBatch::try_new(key_schema.clone(), columns).map_err(internal)?;
                    key_batches.push(batch);
                }
            }
            if key_batches.is_empty() {
                Vec::new()
            } else {
                let (_, m) = self.write_file(&key_schema, &key_batches, threads)?;
                m.batch_columns()
                    .map_err(internal)?
                    .ok_or_else(|| internal("keys with nested dictionaries"))?
            }
        };

        let mut dictionaries = Vec::with_capacity(dict_cols.len());
        for (id, (_, root, _)) in dict_cols.iter().enumerate() {
            let values = self
                .dictionaries
                .values(*root)
                .ok_or_else(|| internal("a dictionary column without a dictionary"))?;
            let s = Arc::new(Schema::new(vec![Field::new(
                "values",
                values.data_type().clone(),
                true,
            )]));
            let batch = RecordBatch::try_new(s.clone(), vec![values]).map_err(internal)?;
            let (_, m) = self.write_file(&s, &[batch], 1)?;
            let batch = m
                .batches
                .into_iter()
                .next()
                .ok_or_else(|| internal("a dictionary file without its batch"))?;
            dictionaries.push(DictionaryLayout {
                id: id as i64,
                is_delta: false,
                batch,
            });
        }

        // The version's batches: each column from its unit, or its keys.
        let mut batches = Vec::new();
        let mut manifest_batch = 0;
        for &(first, end) in &order {
            for b in 0..placed[first].rows.len() {
                let mut columns: Vec<&ColumnLayout> = Vec::with_capacity(out.fields().len());
                let mut dict_at = 0;
                for (p, unit) in placed[first..end].iter().zip(&self.units[first..end]) {
                    let mut plain = p.plain[b].iter();
                    for &r in &unit.roots {
                        let c = if self.dictionaries.is_dictionary(r) {
                            dict_at += 1;
                            key_layouts
                                .get(manifest_batch)
                                .and_then(|k| k.get(dict_at - 1))
                        } else {
                            plain.next()
                        };
                        columns.push(c.ok_or_else(|| internal("a column was not placed"))?);
                    }
                }
                if columns.len() != out.fields().len() {
                    return Err(internal("a batch lacks columns"));
                }
                batches.push(BatchLayout::from_columns(placed[first].rows[b], &columns));
                manifest_batch += 1;
            }
        }
        drop(placed);

        let manifest = Arc::new(Manifest {
            schema,
            dictionaries,
            batches,
        });
        let chunks = self.chunks.into_inner().unwrap_or_else(|p| p.into_inner());
        let object_id = chunks.first().map_or(0, |c| c.0);
        let began = Instant::now();
        let sealed = self
            .pool
            .publish_manifest(
                self.conn,
                self.name,
                None,
                None,
                &chunks,
                &[],
                manifest,
                object_id,
            )
            .map_err(|err| IngestError::Store {
                path: self.path.into(),
                err,
            })?;
        self.pool.versions_changed.notify(usize::MAX);
        let write = self
            .write_time
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            + began.elapsed();
        Ok(Written {
            sealed,
            bytes: chunks.iter().map(|c| c.1).sum(),
            write,
            direct: self
                .direct_time
                .into_inner()
                .unwrap_or_else(|p| p.into_inner()),
        })
    }
}
