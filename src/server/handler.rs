//! Request handling, independent of the transport: a decoded request in, a
//! reply frame out.
#![deny(unsafe_code)]

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::protocol::frame::{write_frame, FLAG_NO_REPLY};
use crate::protocol::{ErrorCode, ErrorReply, Kind, ObjectKind, Request};
use crate::store::ConnId;

use super::shared::{store_error, Shared};

/// A successful reply body, or an error.
type Reply = Result<Body, ErrorReply>;

enum Body {
    Empty,
    Bytes(Vec<u8>),
}

fn bytes(encode: impl FnOnce(&mut Vec<u8>)) -> Body {
    let mut v = Vec::with_capacity(64);
    encode(&mut v);
    Body::Bytes(v)
}

fn json<T: serde::Serialize>(v: &T) -> Reply {
    serde_json::to_vec(v)
        .map(Body::Bytes)
        .map_err(|e| ErrorReply::new(ErrorCode::Internal, format!("cannot encode reply: {e}")))
}

/// What a connection may do, from its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Get, release, list, stats, wait, ping.
    Read,
    /// Everything: the handshake set `FLAG_WRITE` (and got the writable descriptor).
    Write,
}

/// Requests that change the store: refused on read-only connections.
fn writes(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Create | Kind::Seal | Kind::Abort | Kind::Delete | Kind::Ingest
    )
}

/// Handles one request and appends its reply frame (if any) to `out`.
pub async fn handle(
    shared: &Arc<Shared>,
    conn: ConnId,
    access: Access,
    request_id: u64,
    flags: u16,
    req: Request,
    out: &mut Vec<u8>,
) {
    let kind = req.kind();
    let no_reply = kind == Kind::Release && flags & FLAG_NO_REPLY != 0;
    let reply = if shared.shutting_down.load(Ordering::Relaxed)
        && !matches!(kind, Kind::Release | Kind::Abort)
    {
        Err(ErrorReply::new(
            ErrorCode::ShuttingDown,
            "the server is shutting down",
        ))
    } else if access == Access::Read && writes(kind) {
        Err(ErrorReply::new(
            ErrorCode::ReadOnly,
            format!(
                "{} refused: this connection is read-only (its handshake did not ask for \
                 write access); connect as a writer to create, seal, abort, delete or ingest",
                kind.name()
            ),
        ))
    } else {
        dispatch(shared, conn, req).await
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

/// Appends an error reply frame.
pub fn write_error(out: &mut Vec<u8>, request_id: u64, e: &ErrorReply) {
    write_frame(out, request_id, Kind::Error as u16, 0, |o| e.encode(o));
}

async fn dispatch(shared: &Arc<Shared>, conn: ConnId, req: Request) -> Reply {
    match req {
        Request::Ping(_) => Ok(Body::Empty),
        Request::Create(c) => {
            let created = shared
                .store()
                .create(conn, &c.name, c.object_kind, c.size)
                .map_err(store_error)?;
            // Allocate the pages now so the writer's copy does not fault them in,
            // and so a memory shortage is an error reply rather than a SIGBUS.
            if let Err(e) = shared
                .arena
                .ensure_allocated(created.offset, created.capacity)
            {
                let _ = shared.store().abort(conn, created.object_id);
                return Err(ErrorReply::new(ErrorCode::OutOfMemory, e.to_string()));
            }
            Ok(bytes(|o| created.encode(o)))
        }
        Request::Seal(s) => {
            let (offset, capacity, kind) = shared
                .store()
                .pending_range(conn, s.object_id)
                .map_err(store_error)?;
            if s.length > capacity {
                return Err(ErrorReply::new(
                    ErrorCode::InvalidObject,
                    format!(
                        "object {}: sealed length {} exceeds its capacity {capacity}",
                        s.object_id, s.length
                    ),
                ));
            }
            let rows = if kind == ObjectKind::Table {
                let Some(checked) = check_table(shared, offset, s.length).await else {
                    let _ = shared.store().abort(conn, s.object_id);
                    return Err(ErrorReply::new(
                        ErrorCode::Internal,
                        format!(
                            "object {}: [{offset}, +{}) lies outside the arena; it was aborted",
                            s.object_id, s.length
                        ),
                    ));
                };
                match checked {
                    Ok(summary) => summary.rows,
                    Err(e) => {
                        if let crate::ipc::CheckError::DecoderPanic(_) = e {
                            eprintln!(
                                "arrowpoold: connection {conn}: seal of object {} refused: {e}",
                                s.object_id
                            );
                        }
                        let _ = shared.store().abort(conn, s.object_id);
                        return Err(ErrorReply::new(
                            ErrorCode::InvalidData,
                            format!(
                                "object {} is not a valid Arrow IPC file ({e}); it was aborted",
                                s.object_id
                            ),
                        ));
                    }
                }
            } else {
                0
            };
            let sealed = shared
                .store()
                .seal(conn, s.object_id, s.length, rows)
                .map_err(store_error)?;
            shared.versions_changed.notify(usize::MAX);
            Ok(bytes(|o| sealed.encode(o)))
        }
        Request::Abort(a) => {
            shared
                .store()
                .abort(conn, a.object_id)
                .map_err(store_error)?;
            Ok(Body::Empty)
        }
        Request::Get(g) => {
            let located = shared.store().get(conn, &g.name).map_err(store_error)?;
            Ok(bytes(|o| located.encode(o)))
        }
        Request::Release(r) => {
            shared
                .store()
                .release(conn, r.object_id)
                .map_err(store_error)?;
            Ok(Body::Empty)
        }
        Request::Delete(d) => {
            shared.store().delete(&d.name).map_err(store_error)?;
            Ok(Body::Empty)
        }
        Request::List(_) => json(&shared.store().list()),
        Request::Stats(_) => json(&shared.stats()),
        Request::Wait(w) => {
            wait(
                shared,
                &w.name,
                w.after,
                Duration::from_millis(w.timeout_ms as u64),
            )
            .await
        }
        Request::Ingest(i) => {
            let shared2 = shared.clone();
            let result =
                compio::runtime::spawn_blocking(move || crate::ingest::ingest(&shared2, conn, &i))
                    .await;
            match result {
                Ok(Ok(reply)) => json(&reply),
                Ok(Err(e)) => Err(e.to_reply()),
                Err(_) => Err(ErrorReply::new(
                    ErrorCode::Internal,
                    "ingest worker panicked",
                )),
            }
        }
    }
}

/// Tables of this size or more are checked on the blocking pool, with every
/// core, instead of on this core's event loop: a 1 GB table takes tens of
/// milliseconds, which the other connections of the core should not wait for.
const CHECK_OFF_CORE_BYTES: u64 = 16 << 20;

/// The seal-time check of the table at `[offset, offset + len)`; `None` when
/// the range lies outside the arena.
async fn check_table(
    shared: &Arc<Shared>,
    offset: u64,
    len: u64,
) -> Option<Result<crate::ipc::FileSummary, crate::ipc::CheckError>> {
    let shared = shared.clone();
    let run = move || {
        shared
            .arena
            .mapping()
            .slice(offset, len)
            .map(crate::ipc::check_file)
    };
    if len < CHECK_OFF_CORE_BYTES {
        return run();
    }
    compio::runtime::spawn_blocking(run)
        .await
        .unwrap_or_else(|_| {
            Some(Err(crate::ipc::CheckError::DecoderPanic(
                "the check thread died".into(),
            )))
        })
}

async fn wait(shared: &Arc<Shared>, name: &str, after: u64, timeout: Duration) -> Reply {
    let deadline = Instant::now() + timeout;
    loop {
        // Listen before checking, so a seal between the check and the await is not missed.
        let listener = shared.versions_changed.listen();
        if let Some(version) = shared.store().version(name) {
            if version > after {
                return Ok(bytes(|o| {
                    crate::protocol::wait::Version { version }.encode(o)
                }));
            }
        }
        if shared.shutting_down.load(Ordering::Relaxed) {
            return Err(ErrorReply::new(
                ErrorCode::ShuttingDown,
                "the server is shutting down",
            ));
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ErrorReply::new(
                ErrorCode::Timeout,
                format!(
                    "no version of {name:?} newer than {after} within {} ms",
                    timeout.as_millis()
                ),
            ));
        }
        let _ = compio::time::timeout(remaining, listener).await;
    }
}
