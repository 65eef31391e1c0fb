//! `publish`: a table version assembled from new columns (IPC files in the
//! writer's pending chunks) and columns that already lie in the arena (found
//! by their buffers in live versions), sharing their chunks.
//!
//! Nothing is copied but the new files' bytes, which the writer wrote: the
//! server reads the draft, checks the new files as a seal does, looks the
//! existing columns up, checks that types and lengths agree, writes the
//! manifest and publishes. Existing columns were checked when their version
//! was sealed and sealed chunks never change, so they are not checked again.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_schema::{DataType, Schema};

use crate::ipc::manifest::{BatchLayout, BufferRef, ColumnLayout, DictionaryLayout, Manifest};
use crate::protocol::draft::{Draft, Source};
use crate::store::{NewVersion, ObjectId, ObjectKind, SealInfo, StoreError};

use super::{Pool, PoolError};

/// Where a dictionary column's dictionaries come from: one source per column,
/// since an IPC file holds one dictionary (plus deltas) per field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DictSource {
    Version(ObjectId, usize),
    File(usize, usize),
}

fn invalid(m: impl Into<String>) -> PoolError {
    PoolError::InvalidDraft(m.into())
}

/// The live column whose non-empty buffers are `buffers` (any order), named
/// by the draft as column `name` of batch `b`.
fn find(
    store: &crate::store::Store,
    buffers: &[(u64, u64)],
    name: &str,
    b: usize,
) -> Result<crate::store::FoundColumn, PoolError> {
    let mut sorted = buffers.to_vec();
    sorted.sort_unstable();
    store.find_column(&sorted).ok_or_else(|| {
        invalid(format!(
            "column {name} of batch {b}: no live table version has a column with exactly these {} buffers (its version was freed, or the array is not one a get returned)",
            sorted.len()
        ))
    })
}

impl Pool {
    /// Publishes the draft `conn` wrote into its pending chunk `draft_id`
    /// (`draft_len` bytes) as a new version of `name`. On success the draft
    /// chunk is freed; on any failure it and every chunk the draft lists are
    /// aborted, and nothing is published.
    pub fn publish(
        &self,
        conn: u64,
        name: &str,
        if_version: Option<u64>,
        draft_id: ObjectId,
        draft_len: u64,
    ) -> Result<SealInfo, PoolError> {
        let mut named = vec![draft_id];
        let result = self.publish_draft(conn, name, if_version, draft_id, draft_len, &mut named);
        let mut store = self.store();
        for id in named {
            // After success only the draft is still pending; after a failure,
            // whatever of the draft's chunks still is.
            if result.is_err() || id == draft_id {
                let _ = store.abort(conn, id);
            }
        }
        drop(store);
        if result.is_ok() {
            self.versions_changed.notify(usize::MAX);
        }
        result
    }

    fn publish_draft(
        &self,
        conn: u64,
        name: &str,
        if_version: Option<u64>,
        draft_id: ObjectId,
        draft_len: u64,
        named: &mut Vec<ObjectId>,
    ) -> Result<SealInfo, PoolError> {
        let p = self.store().pending_within(conn, draft_id, draft_len)?;
        // A copy: the writer could change its pending bytes while they are read.
        let bytes = self
            .arena
            .mapping()
            .slice(p.offset, draft_len)
            .ok_or(PoolError::OutsideArena {
                offset: p.offset,
                len: draft_len,
            })?
            .to_vec();
        let schema_bytes = Draft::schema_of(&bytes).map_err(|e| invalid(format!("draft: {e}")))?;
        let schema = arrow_ipc::convert::try_schema_from_ipc_buffer(schema_bytes)
            .map_err(|e| invalid(format!("draft schema: {e}")))?;
        let draft = Draft::decode(&bytes, schema.fields().len())
            .map_err(|e| invalid(format!("draft: {e}")))?;
        named.extend(draft.chunks.iter().map(|&(id, _)| id));

        // The new files: checked as a seal checks them.
        let mut files = Vec::with_capacity(draft.chunks.len());
        for &(id, len) in &draft.chunks {
            let p = self.store().pending_within(conn, id, len)?;
            if p.kind != ObjectKind::Table {
                return Err(invalid(format!(
                    "chunk {id} of the draft is not a table chunk"
                )));
            }
            let m = self.check_table(p.offset, len, id)?;
            let columns = m.batch_columns().map_err(|e| invalid(e.to_string()))?.ok_or_else(|| {
                invalid("a new file has dictionary columns nested in other types, which cannot be published column by column yet; put the whole table")
            })?;
            files.push((m, columns));
        }

        let (manifest, shared) = self.assemble(&schema, &draft, &files)?;
        let new_chunks: Vec<(ObjectId, u64)> = draft.chunks.clone();
        self.publish_manifest(
            conn,
            name,
            if_version,
            None,
            &new_chunks,
            &shared,
            Arc::new(manifest),
            draft_id,
        )
    }

    /// Writes `manifest` into the manifest regions and publishes it as the
    /// new version of `name`, made of `conn`'s pending `new_chunks` (with the
    /// bytes written in each) and the sealed chunks `shared`. `object_id`
    /// names the writer's object in errors. On failure the manifest room is
    /// given back; the new chunks stay pending, for the caller to abort.
    /// Waiters are not notified (the caller does, once its cleanup is done).
    #[allow(clippy::too_many_arguments)] // each is one part of the new version
    pub(crate) fn publish_manifest(
        &self,
        conn: u64,
        name: &str,
        if_version: Option<u64>,
        restores: Option<u64>,
        new_chunks: &[(ObjectId, u64)],
        shared: &[ObjectId],
        manifest: Arc<Manifest>,
        object_id: ObjectId,
    ) -> Result<SealInfo, PoolError> {
        let rows = manifest.rows();
        let bad = |error| PoolError::Manifest { object_id, error };
        let (low, high) = manifest.sizes().map_err(bad)?;
        let space = self.making_room(|s| s.reserve_manifest(conn, name, low, high))?;
        let result = (|| {
            let encoded = manifest
                .encode(space.low_offset, space.high_offset)
                .map_err(bad)?;
            self.write_manifest(space.low_offset, &encoded.low)?;
            self.write_manifest(space.high_offset, &encoded.high)?;
            let mut store = self.store();
            let sealed = store
                .publish(
                    conn,
                    NewVersion {
                        name,
                        if_version,
                        rows,
                        new_chunks,
                        shared,
                        manifest: Some((space.id, encoded.file_len)),
                        layout: Some(manifest.clone()),
                        restores,
                    },
                )
                .map_err(|e| match e {
                    // A version the draft took columns from was freed between
                    // the lookup and now: the writer should put again.
                    StoreError::InvalidObject { object_id, .. } if shared.contains(&object_id) => {
                        invalid(format!(
                            "a column the draft names lay in chunk {object_id}, freed meanwhile \
                             (its versions were replaced or deleted and released); put again"
                        ))
                    }
                    e => PoolError::from(e),
                })?;
            // Recorded before the reply (`--state-dir`): an acknowledged
            // version survives the server.
            store.commit()?;
            Ok(sealed)
        })();
        if result.is_err() {
            let _ = self.store().abort(conn, space.id);
        }
        result
    }

    /// Whether two dictionary sources hold the same values, byte for byte
    /// (compared in the arena; dictionaries over 64 MiB count as different).
    fn same_dictionaries(&self, a: &[DictionaryLayout], b: &[DictionaryLayout]) -> bool {
        const MAX: u64 = 64 << 20;
        if a.len() != b.len() {
            return false;
        }
        let mut budget = MAX;
        let map = self.arena.mapping();
        a.iter().zip(b).all(|(x, y)| {
            let (x, y) = (&x.batch, &y.batch);
            x.rows == y.rows
                && x.nodes == y.nodes
                && x.variadic == y.variadic
                && x.buffers.len() == y.buffers.len()
                && x.buffers.iter().zip(&y.buffers).all(|(p, q)| {
                    if p.length != q.length || p.length > budget {
                        return false;
                    }
                    budget -= p.length;
                    p.length == 0
                        || matches!(
                            (map.slice(p.offset, p.length), map.slice(q.offset, q.length)),
                            (Some(l), Some(r)) if l == r
                        )
                })
        })
    }

    /// The version's manifest from the draft's sources, and the sealed
    /// chunks it shares. One lock for all lookups: the versions found cannot
    /// go away between two of them.
    fn assemble(
        &self,
        schema: &Schema,
        draft: &Draft,
        files: &[(Manifest, Vec<Vec<ColumnLayout>>)],
    ) -> Result<(Manifest, Vec<ObjectId>), PoolError> {
        let store = self.store();
        let mut shared: Vec<ObjectId> = Vec::new();
        let mut dict_sources: HashMap<usize, (DictSource, Vec<DictionaryLayout>)> = HashMap::new();
        let mut batches = Vec::with_capacity(draft.batches.len());
        for (b, batch) in draft.batches.iter().enumerate() {
            let rows = i64::try_from(batch.rows).map_err(|_| invalid("batch rows overflow"))?;
            let mut columns: Vec<ColumnLayout> = Vec::with_capacity(batch.columns.len());
            for (c, source) in batch.columns.iter().enumerate() {
                let field = schema.field(c);
                let (column, source_type, dict): (
                    ColumnLayout,
                    DataType,
                    Option<(DictSource, Vec<DictionaryLayout>)>,
                ) = match source {
                    Source::New {
                        chunk,
                        batch: fb,
                        column: fc,
                    } => {
                        let (m, cols) = files.get(*chunk as usize).ok_or_else(|| {
                            invalid(format!(
                                "column {} of batch {b} names chunk {chunk} of {}",
                                field.name(),
                                files.len()
                            ))
                        })?;
                        let col = cols
                                .get(*fb as usize)
                                .and_then(|bc| bc.get(*fc as usize))
                                .ok_or_else(|| {
                                    invalid(format!(
                                        "column {} of batch {b} names batch {fb} column {fc}, which the file in chunk {chunk} does not have",
                                        field.name()
                                    ))
                                })?;
                        let dicts = m
                            .column_dictionaries(*fc as usize)
                            .into_iter()
                            .cloned()
                            .collect();
                        let t = m.schema.field(*fc as usize).data_type().clone();
                        (
                            col.clone(),
                            t,
                            Some((DictSource::File(*chunk as usize, *fc as usize), dicts)),
                        )
                    }
                    Source::Existing { buffers } | Source::Slice { buffers, .. } => {
                        let found = find(&store, buffers, field.name(), b)?;
                        let t = found.layout.schema.field(found.index).data_type().clone();
                        let column = match source {
                            Source::Slice {
                                offset, rows: n, ..
                            } => {
                                let map = self.arena.mapping();
                                let bytes = |r: BufferRef| map.slice(r.offset, r.length);
                                found
                                    .column
                                    .slice(&t, *offset, *n, &bytes)
                                    .map_err(|e| {
                                        invalid(format!("column {} of batch {b}: {e}", field.name()))
                                    })?
                                    .ok_or_else(|| {
                                        invalid(format!(
                                            "column {} of batch {b}: rows {offset}..+{n} of a {t} column cannot be shared in place (a buffer would start off an 8-byte boundary, or the type has children); write it",
                                            field.name()
                                        ))
                                    })?
                            }
                            _ => found.column.clone(),
                        };
                        for id in &found.chunks {
                            if !shared.contains(id) {
                                shared.push(*id);
                            }
                        }
                        let dicts = found
                            .layout
                            .column_dictionaries(found.index)
                            .into_iter()
                            .cloned()
                            .collect();
                        (
                            column,
                            t,
                            Some((DictSource::Version(found.version, found.index), dicts)),
                        )
                    }
                };
                if &source_type != field.data_type() {
                    return Err(invalid(format!(
                        "column {} of batch {b} is {source_type} where the schema says {}",
                        field.name(),
                        field.data_type()
                    )));
                }
                if column.nodes.first().map(|n| n.length) != Some(rows) {
                    return Err(invalid(format!(
                        "column {} of batch {b} has {} rows, its batch {rows}",
                        field.name(),
                        column.nodes.first().map_or(0, |n| n.length)
                    )));
                }
                if let (DataType::Dictionary(_, _), Some((src, dicts))) = (field.data_type(), dict)
                {
                    match dict_sources.get(&c) {
                        None => {
                            dict_sources.insert(c, (src, dicts));
                        }
                        Some((first, _)) if *first == src => {}
                        // Another source whose dictionary holds the same values
                        // (rows appended with the same categories) reads the same.
                        Some((_, first)) if self.same_dictionaries(first, &dicts) => {}
                        Some(_) => {
                            return Err(invalid(format!(
                                "dictionary column {} takes its dictionary from two sources; an IPC file holds one dictionary per column (unify the dictionaries, or put the whole table)",
                                field.name()
                            )))
                        }
                    }
                }
                columns.push(column);
            }
            let refs: Vec<&ColumnLayout> = columns.iter().collect();
            batches.push(BatchLayout::from_columns(rows, &refs));
        }
        let mut dictionaries = Vec::new();
        for c in 0..schema.fields().len() {
            #[expect(deprecated)] // the ids the draft's schema gives its fields
            let Some(id) = schema.field(c).dict_id() else {
                continue;
            };
            if let Some((_, dicts)) = dict_sources.remove(&c) {
                dictionaries.extend(dicts.into_iter().map(|d| DictionaryLayout { id, ..d }));
            }
        }
        Ok((
            Manifest {
                schema: Arc::new(schema.clone()),
                dictionaries,
                batches,
            },
            shared,
        ))
    }
}
