//! `seal`: check (tables) and publish a pending object.
use crate::ipc::CheckError;
use crate::pool::PoolError;
use crate::protocol::seal::{Seal, Sealed};
use crate::protocol::{ErrorCode, ErrorReply};

use super::{bytes, pool_error, Ctx, Reply};

/// Objects of this size or more are sealed on the blocking pool: a 1 GB
/// table's check takes tens of milliseconds (on every core), which the other
/// connections of this core should not wait for. With `--spill-dir` every
/// seal is: a table's manifest room may have to be made by writing other
/// versions to disk (as for `create`).
const SEAL_OFF_CORE_BYTES: u64 = 16 << 20;

pub async fn apply(ctx: &Ctx<'_>, req: Seal) -> Reply {
    let (pool, conn) = (ctx.shared.pool.clone(), ctx.conn);
    let seal = move || pool.seal(conn, req.object_id, req.length);
    let result = if req.length < SEAL_OFF_CORE_BYTES && ctx.shared.pool.spill_dir().is_none() {
        seal()
    } else {
        match compio::runtime::spawn_blocking(seal).await {
            Ok(r) => r,
            Err(_) => {
                // The check thread died: the object stays pending and goes
                // with the connection (or an abort).
                return Err(ErrorReply::new(
                    ErrorCode::Internal,
                    "the seal thread panicked",
                ));
            }
        }
    };
    // A panic of arrow's decoder is the one refusal worth an operator's line
    // (a missing check upstream); ordinary refusals only go to the writer.
    if let Err(
        e @ PoolError::InvalidTable {
            error: CheckError::DecoderPanic(_),
            ..
        },
    ) = &result
    {
        eprintln!("arrowpoold: connection {conn}: seal refused: {e}");
    }
    let s = result.map_err(pool_error)?;
    let sealed = Sealed {
        version: s.version,
        rows: s.rows,
    };
    bytes(|o| sealed.encode(o))
}
