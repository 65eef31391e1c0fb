//! `get`: where the current version of a name lies, with a lease. A name
//! whose version was spilled to disk (`--spill-dir`) is brought back first,
//! on the blocking pool (it reads the file into the arena).
use crate::protocol::get::{Get, GetVersion, Located};
use crate::protocol::{ErrorCode, ErrorReply};
use crate::store::{Location, StoreError};

use super::{bytes, pool_error, store_error, Ctx, Reply};

pub async fn apply(ctx: &Ctx<'_>, req: Get) -> Reply {
    let get = || ctx.shared.pool.store().get(ctx.conn, &req.name);
    match get() {
        Err(StoreError::NotFound { .. }) if spilled(ctx, &req.name) => {
            bring_back(ctx, &req.name).await?;
            reply(get().map_err(store_error)?)
        }
        r => reply(r.map_err(store_error)?),
    }
}

/// `get_version`: a retained version by number (or the spilled current one).
pub async fn apply_version(ctx: &Ctx<'_>, req: GetVersion) -> Reply {
    let get = || {
        ctx.shared
            .pool
            .store()
            .get_version(ctx.conn, &req.name, req.version)
    };
    match get() {
        Err(StoreError::VersionNotKept { .. }) if spilled(ctx, &req.name) => {
            bring_back(ctx, &req.name).await?;
            reply(get().map_err(store_error)?)
        }
        r => reply(r.map_err(store_error)?),
    }
}

fn spilled(ctx: &Ctx<'_>, name: &str) -> bool {
    ctx.shared.pool.store().spilled(name).is_some()
}

async fn bring_back(ctx: &Ctx<'_>, name: &str) -> Result<(), ErrorReply> {
    let (pool, name) = (ctx.shared.pool.clone(), name.to_owned());
    match compio::runtime::spawn_blocking(move || pool.bring_back(&name)).await {
        Ok(r) => r.map(|_| ()).map_err(pool_error),
        Err(_) => Err(ErrorReply::new(
            ErrorCode::Internal,
            "the thread bringing a spilled version back panicked",
        )),
    }
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
