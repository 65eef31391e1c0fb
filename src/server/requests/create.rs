//! `create`: reserve arena space (pages allocated) for a new pending object.
use crate::protocol::create::{Create, Created};

use super::{bytes, pool_error, Ctx, Reply};

pub fn apply(ctx: &Ctx<'_>, req: Create) -> Reply {
    let r = ctx
        .shared
        .pool
        .reserve(ctx.conn, &req.name, req.object_kind, req.size)
        .map_err(pool_error)?;
    let created = Created {
        object_id: r.object_id,
        offset: r.offset,
        capacity: r.capacity,
    };
    bytes(|o| created.encode(o))
}
