//! `abort`: give up an unsealed object; its space returns to the arena.
//!
//! ```text
//! request:  | object_id u64 |
//! reply:    (empty)
//! ```
use super::frame::{BodyReader, FrameError};

#[derive(Debug, Clone, PartialEq)]
pub struct Abort {
    pub object_id: u64,
}

impl Abort {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.object_id.to_le_bytes());
    }

    pub fn decode(body: &[u8]) -> Result<Self, FrameError> {
        let mut r = BodyReader::new(body);
        let v = Abort {
            object_id: r.u64("object id")?,
        };
        r.finish()?;
        Ok(v)
    }
}
