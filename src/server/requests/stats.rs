//! `stats`: the server's counters, as JSON.
use super::{json, Ctx, Reply};

pub fn apply(ctx: &Ctx<'_>) -> Reply {
    json(&ctx.shared.stats())
}
