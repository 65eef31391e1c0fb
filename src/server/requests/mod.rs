//! Request handling, independent of the transport: a decoded request in, a
//! reply frame out. One file per request kind holds its server logic
//! (`apply`), beside its wire type in `protocol/`; `dispatch` is one line per
//! kind. Errors of the layers below (`pool`, `store`, `ingest`) become error
//! replies here, at the edge.

mod abort;
mod create;
mod delete;
mod get;
mod ingest;
mod list;
mod ping;
mod publish;
mod release;
mod seal;
mod stats;
mod wait;

#[cfg(feature = "flight")]
pub(crate) use ingest::ingest_error;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::pool::PoolError;
use crate::protocol::frame::{write_frame, FLAG_NO_REPLY};
use crate::protocol::{ErrorCode, ErrorReply, Kind, Request};
use crate::store::{ConnId, StoreError};

use super::shared::Shared;

/// What a connection may do, from its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Get, release, list, stats, wait, ping.
    Read,
    /// Everything: the handshake set `FLAG_WRITE` (and got the writable descriptor).
    Write,
}

/// The connection a request came from, and what its handshake allows.
pub struct Ctx<'a> {
    pub shared: &'a Arc<Shared>,
    pub conn: ConnId,
    pub access: Access,
}

/// A successful reply body, or an error.
type Reply = Result<Body, ErrorReply>;

enum Body {
    Empty,
    Bytes(Vec<u8>),
}

fn bytes(encode: impl FnOnce(&mut Vec<u8>)) -> Reply {
    let mut v = Vec::with_capacity(64);
    encode(&mut v);
    Ok(Body::Bytes(v))
}

fn json<T: serde::Serialize>(v: &T) -> Reply {
    serde_json::to_vec(v)
        .map(Body::Bytes)
        .map_err(|e| ErrorReply::new(ErrorCode::Internal, format!("cannot encode reply: {e}")))
}

/// Requests that change the store: refused on read-only connections.
fn writes(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Create | Kind::Seal | Kind::Abort | Kind::Delete | Kind::Ingest | Kind::Publish
    )
}

/// Handles one request and appends its reply frame (if any) to `out`.
pub async fn handle(ctx: &Ctx<'_>, request_id: u64, flags: u16, req: Request, out: &mut Vec<u8>) {
    let kind = req.kind();
    let no_reply = kind == Kind::Release && flags & FLAG_NO_REPLY != 0;
    let reply = if ctx.shared.shutting_down.load(Ordering::Relaxed)
        && !matches!(kind, Kind::Release | Kind::Abort)
    {
        Err(ErrorReply::new(
            ErrorCode::ShuttingDown,
            "the server is shutting down",
        ))
    } else if ctx.access == Access::Read && writes(kind) {
        Err(ErrorReply::new(
            ErrorCode::ReadOnly,
            format!(
                "{} refused: this connection is read-only (its handshake did not ask for \
                 write access); connect as a writer to create, seal, abort, delete or ingest",
                kind.name()
            ),
        ))
    } else {
        dispatch(ctx, req).await
    };
    if no_reply {
        return;
    }
    match reply {
        Ok(Body::Empty) => write_frame(out, request_id, kind.reply(), 0, |_| {}),
        Ok(Body::Bytes(b)) => write_frame(out, request_id, kind.reply(), 0, |o| {
            o.extend_from_slice(&b)
        }),
        Err(e) => write_error(out, request_id, &e),
    }
}

async fn dispatch(ctx: &Ctx<'_>, req: Request) -> Reply {
    match req {
        Request::Ping(_) => ping::apply(),
        Request::Create(r) => create::apply(ctx, r).await,
        Request::Seal(r) => seal::apply(ctx, r).await,
        Request::Abort(r) => abort::apply(ctx, r),
        Request::Get(r) => get::apply(ctx, r).await,
        Request::Release(r) => release::apply(ctx, r),
        Request::Delete(r) => delete::apply(ctx, r),
        Request::List(_) => list::apply(ctx),
        Request::Stats(_) => stats::apply(ctx),
        Request::Wait(r) => wait::apply(ctx, r).await,
        Request::Ingest(r) => ingest::apply(ctx, r).await,
        Request::Publish(r) => publish::apply(ctx, r).await,
        Request::GetVersion(r) => get::apply_version(ctx, r).await,
    }
}

/// Appends an error reply frame.
pub fn write_error(out: &mut Vec<u8>, request_id: u64, e: &ErrorReply) {
    write_frame(out, request_id, Kind::Error as u16, 0, |o| e.encode(o));
}

/// The error reply for a store error.
pub fn store_error(e: StoreError) -> ErrorReply {
    let code = match &e {
        StoreError::NotFound { .. } | StoreError::VersionNotKept { .. } => ErrorCode::NotFound,
        StoreError::OutOfMemory { .. } | StoreError::ManifestSpaceFull { .. } => {
            ErrorCode::OutOfMemory
        }
        StoreError::InvalidObject { .. } | StoreError::LengthTooLarge { .. } => {
            ErrorCode::InvalidObject
        }
        StoreError::LimitExceeded(_) => ErrorCode::LimitExceeded,
        StoreError::VersionConflict { .. } => ErrorCode::VersionConflict,
        StoreError::NeedsSpill { .. } => ErrorCode::Internal,
    };
    ErrorReply::new(code, e.to_string())
}

/// The error reply for a pool error.
pub fn pool_error(e: PoolError) -> ErrorReply {
    let code = match &e {
        PoolError::Store(e) => return store_error(e.clone()),
        PoolError::Memory(_) => ErrorCode::OutOfMemory,
        PoolError::OutsideArena { .. } | PoolError::Manifest { .. } | PoolError::Catalog(_) => {
            ErrorCode::Internal
        }
        PoolError::Spill(_) => ErrorCode::OutOfMemory,
        PoolError::InvalidTable { .. } | PoolError::InvalidDraft(_) => ErrorCode::InvalidData,
    };
    ErrorReply::new(code, e.to_string())
}
