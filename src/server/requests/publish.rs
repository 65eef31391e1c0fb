//! `publish`: a table version from a draft, on the blocking pool (it checks
//! the draft's new files as a seal does).
use crate::protocol::publish::Publish;
use crate::protocol::seal::Sealed;
use crate::protocol::{ErrorCode, ErrorReply};

use super::{bytes, pool_error, Ctx, Reply};

pub async fn apply(ctx: &Ctx<'_>, req: Publish) -> Reply {
    let (pool, conn) = (ctx.shared.pool.clone(), ctx.conn);
    let run = move || pool.publish(conn, &req.name, req.if_version, req.draft_id, req.draft_len);
    let s = match compio::runtime::spawn_blocking(run).await {
        Ok(r) => r.map_err(pool_error)?,
        Err(_) => {
            return Err(ErrorReply::new(
                ErrorCode::Internal,
                "the publish thread panicked",
            ))
        }
    };
    let sealed = Sealed {
        version: s.version,
        rows: s.rows,
    };
    bytes(|o| sealed.encode(o))
}
