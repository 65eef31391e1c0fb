//! `wait`: block until a name has a version newer than `after`, or time out.
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::protocol::wait::{Version, Wait};
use crate::protocol::{ErrorCode, ErrorReply};

use super::{bytes, Ctx, Reply};

pub async fn apply(ctx: &Ctx<'_>, req: Wait) -> Reply {
    let (shared, name) = (ctx.shared, &req.name);
    let timeout = Duration::from_millis(req.timeout_ms as u64);
    let deadline = Instant::now() + timeout;
    loop {
        // Listen before checking, so a seal between the check and the await is not missed.
        let listener = shared.pool.versions_changed.listen();
        if let Some(version) = shared.pool.store().version(name) {
            if version > req.after {
                return bytes(|o| Version { version }.encode(o));
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
                    "no version of {name:?} newer than {} within {} ms",
                    req.after,
                    timeout.as_millis()
                ),
            ));
        }
        let _ = compio::time::timeout(remaining, listener).await;
    }
}
