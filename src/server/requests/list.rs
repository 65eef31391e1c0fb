//! `list`: every named object, as JSON.
use crate::protocol::list::ListEntry;

use super::{json, Ctx, Reply};

pub fn apply(ctx: &Ctx<'_>) -> Reply {
    let entries: Vec<ListEntry> = ctx
        .shared
        .pool
        .store()
        .list()
        .into_iter()
        .map(|e| ListEntry {
            name: e.name,
            object_id: e.object_id,
            version: e.version,
            kind: e.kind.as_str().into(),
            rows: e.rows,
            bytes: e.bytes,
            shared_bytes: e.shared_bytes,
            retained: e.retained,
            leases: e.leases,
            idle_ms: e.idle.as_millis() as u64,
            on_disk: e.on_disk,
        })
        .collect();
    json(&entries)
}
