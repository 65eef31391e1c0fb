//! `ping`: nothing to do; the reply proves the connection is served.
use super::{Body, Reply};

pub fn apply() -> Reply {
    Ok(Body::Empty)
}
