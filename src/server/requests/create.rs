//! `create`: reserve arena space (pages allocated) for a new pending object.
//! With `--spill-dir`, making room may write other versions to disk: then it
//! runs on the blocking pool, so the core's other connections do not wait.
use crate::protocol::create::{Create, Created};
use crate::protocol::{ErrorCode, ErrorReply};

use super::{bytes, pool_error, Ctx, Reply};

pub async fn apply(ctx: &Ctx<'_>, req: Create) -> Reply {
    let (pool, conn) = (ctx.shared.pool.clone(), ctx.conn);
    let reserve = move || pool.reserve(conn, &req.name, req.object_kind, req.size);
    let r = if ctx.shared.pool.spill_dir().is_none() {
        reserve()
    } else {
        match compio::runtime::spawn_blocking(reserve).await {
            Ok(r) => r,
            Err(_) => {
                return Err(ErrorReply::new(
                    ErrorCode::Internal,
                    "the thread making room panicked",
                ))
            }
        }
    }
    .map_err(pool_error)?;
    let created = Created {
        object_id: r.object_id,
        offset: r.offset,
        capacity: r.capacity,
    };
    bytes(|o| created.encode(o))
}
