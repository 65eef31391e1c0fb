//! `get`: where the current version of a name lies, with a lease.
use crate::protocol::get::{Get, Located};

use super::{bytes, store_error, Ctx, Reply};

pub fn apply(ctx: &Ctx<'_>, req: Get) -> Reply {
    let l = ctx
        .shared
        .pool
        .store()
        .get(ctx.conn, &req.name)
        .map_err(store_error)?;
    let located = Located {
        object_id: l.object_id,
        version: l.version,
        offset: l.offset,
        length: l.length,
        rows: l.rows,
        object_kind: l.kind,
    };
    bytes(|o| located.encode(o))
}
