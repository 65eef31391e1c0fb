//! `get`: where the current version of a name lies, with a lease.
use crate::protocol::get::{Get, GetVersion, Located};
use crate::store::Location;

use super::{bytes, store_error, Ctx, Reply};

pub fn apply(ctx: &Ctx<'_>, req: Get) -> Reply {
    let l = ctx
        .shared
        .pool
        .store()
        .get(ctx.conn, &req.name)
        .map_err(store_error)?;
    reply(l)
}

/// `get_version`: a retained version by number.
pub fn apply_version(ctx: &Ctx<'_>, req: GetVersion) -> Reply {
    let l = ctx
        .shared
        .pool
        .store()
        .get_version(ctx.conn, &req.name, req.version)
        .map_err(store_error)?;
    reply(l)
}

fn reply(l: Location) -> Reply {
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
