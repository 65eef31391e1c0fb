//! `ping`: an empty request answered by an empty reply. Used for liveness and
//! by the small-operation benchmark.
use super::frame::{BodyReader, FrameError};

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Ping;

impl Ping {
    pub fn encode(&self, _out: &mut Vec<u8>) {}

    pub fn decode(body: &[u8]) -> Result<Self, FrameError> {
        BodyReader::new(body).finish()?;
        Ok(Ping)
    }
}
