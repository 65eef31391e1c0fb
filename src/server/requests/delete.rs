//! `delete`: unbind a name; readers keep what they hold.
use crate::protocol::delete::Delete;

use super::{store_error, Body, Ctx, Reply};

pub fn apply(ctx: &Ctx<'_>, req: Delete) -> Reply {
    ctx.shared
        .pool
        .store()
        .delete(&req.name)
        .map_err(store_error)?;
    Ok(Body::Empty)
}
