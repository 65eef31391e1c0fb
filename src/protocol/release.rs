//! `release`: drop one lease taken by `get`. With frame flag `FLAG_NO_REPLY`
//! the server sends nothing back (clients release from destructors and must
//! not wait).
//!
//! ```text
//! request:  | object_id u64 |
//! reply:    (empty)
//! ```
use super::frame::{BodyReader, FrameError};

#[derive(Debug, Clone, PartialEq)]
pub struct Release {
    pub object_id: u64,
}

impl Release {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.object_id.to_le_bytes());
    }

    pub fn decode(body: &[u8]) -> Result<Self, FrameError> {
        let mut r = BodyReader::new(body);
        let v = Release {
            object_id: r.u64("object id")?,
        };
        r.finish()?;
        Ok(v)
    }
}
