//! `ingest`: the server reads Parquet into a new version, on the blocking pool
//! (never on a core's event loop: a large ingest must not stall other clients).
use crate::ingest::IngestError;
use crate::pool::PoolError;
use crate::protocol::ingest::Ingest;
use crate::protocol::{ErrorCode, ErrorReply};
use crate::store::StoreError;

use super::{json, Ctx, Reply};

pub async fn apply(ctx: &Ctx<'_>, req: Ingest) -> Reply {
    if req.path.contains("://") && !is_object_url(&req.path) {
        return pull(ctx, req).await;
    }
    let (pool, settings, conn) = (ctx.shared.pool.clone(), ctx.shared.ingest, ctx.conn);
    let result =
        compio::runtime::spawn_blocking(move || crate::ingest::ingest(&pool, settings, conn, &req))
            .await;
    match result {
        Ok(Ok(reply)) => json(&reply),
        Ok(Err(e)) => Err(ingest_error(e)),
        Err(_) => Err(ErrorReply::new(
            ErrorCode::Internal,
            "ingest worker panicked",
        )),
    }
}

/// `s3://`, `gs://`, `https://`...: read like a local file (`ingest::remote`).
#[cfg(feature = "object-store")]
fn is_object_url(path: &str) -> bool {
    crate::ingest::remote::is_object_url(path)
}

#[cfg(not(feature = "object-store"))]
fn is_object_url(_path: &str) -> bool {
    false
}

/// `Ingest` for the file's problems, `OutOfMemory` when the table does not
/// fit, `Internal` for bugs. The message is the ingest error's: it names the file.
pub fn ingest_error(e: IngestError) -> ErrorReply {
    let code = match &e {
        IngestError::Store {
            err: PoolError::Memory(_) | PoolError::Store(StoreError::OutOfMemory { .. }),
            ..
        } => ErrorCode::OutOfMemory,
        IngestError::Internal(_) => ErrorCode::Internal,
        _ => ErrorCode::Ingest,
    };
    ErrorReply::new(code, e.to_string())
}

/// `ingest flight://...`: pull the table from another Flight server.
#[cfg(feature = "flight")]
async fn pull(ctx: &Ctx<'_>, req: Ingest) -> Reply {
    if !crate::flight::pull::is_flight_url(&req.path) {
        return Err(unknown_scheme(&req.path));
    }
    if !req.options.is_empty() {
        return Err(ErrorReply::new(
            ErrorCode::Ingest,
            "options are settings of an object store; a flight:// pull takes none (its token goes in the URL)",
        ));
    }
    let (pool, ca) = (ctx.shared.pool.clone(), ctx.shared.flight_remote_ca.clone());
    let result = compio::runtime::spawn_blocking(move || {
        crate::flight::pull::ingest(&pool, &req, ca.as_deref())
    })
    .await;
    match result {
        Ok(Ok(reply)) => json(&reply),
        Ok(Err(e)) => Err(ErrorReply::new(ErrorCode::Ingest, e)),
        Err(_) => Err(ErrorReply::new(
            ErrorCode::Internal,
            "ingest worker panicked",
        )),
    }
}

#[cfg(not(feature = "flight"))]
async fn pull(_ctx: &Ctx<'_>, req: Ingest) -> Reply {
    Err(unknown_scheme(&req.path))
}

fn unknown_scheme(path: &str) -> ErrorReply {
    let scheme = path.split("://").next().unwrap_or("");
    ErrorReply::new(
        ErrorCode::Ingest,
        format!(
            "cannot ingest {scheme}:// URLs: give a Parquet file or directory on the server's \
             machine, an object store URL (s3://, gs://, az://, https://; this server {}), \
             or flight://[TOKEN@]HOST:PORT/NAME",
            if cfg!(feature = "object-store") {
                "reads them"
            } else {
                "was built without the object-store feature"
            }
        ),
    )
}
