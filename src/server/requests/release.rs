//! `release`: drop one lease taken by `get`.
use crate::protocol::release::Release;

use super::{store_error, Body, Ctx, Reply};

pub fn apply(ctx: &Ctx<'_>, req: Release) -> Reply {
    ctx.shared
        .pool
        .store()
        .release(ctx.conn, req.object_id)
        .map_err(store_error)?;
    Ok(Body::Empty)
}
