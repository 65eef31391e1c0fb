//! `abort`: give up a pending object of this connection.
use crate::protocol::abort::Abort;

use super::{store_error, Body, Ctx, Reply};

pub fn apply(ctx: &Ctx<'_>, req: Abort) -> Reply {
    ctx.shared
        .pool
        .store()
        .abort(ctx.conn, req.object_id)
        .map_err(store_error)?;
    Ok(Body::Empty)
}
