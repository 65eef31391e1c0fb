//! `seal`: publish a created object. The name moves to it atomically.
//!
//! ```text
//! request:  | object_id u64 | length u64 |
//! reply:    | version u64 | rows u64 |
//! ```
//! `length` is the number of bytes written (<= capacity); the rest of the
//! reservation is returned to the arena. For tables the server checks that the
//! bytes are an Arrow IPC file and counts its rows.
use super::frame::{BodyReader, FrameError};

#[derive(Debug, Clone, PartialEq)]
pub struct Seal {
    pub object_id: u64,
    pub length: u64,
}

impl Seal {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.object_id.to_le_bytes());
        out.extend_from_slice(&self.length.to_le_bytes());
    }

    pub fn decode(body: &[u8]) -> Result<Self, FrameError> {
        let mut r = BodyReader::new(body);
        let v = Seal {
            object_id: r.u64("object id")?,
            length: r.u64("length")?,
        };
        r.finish()?;
        Ok(v)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sealed {
    pub version: u64,
    pub rows: u64,
}

impl Sealed {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.rows.to_le_bytes());
    }

    pub fn decode(body: &[u8]) -> Result<Self, FrameError> {
        let mut r = BodyReader::new(body);
        let v = Sealed {
            version: r.u64("version")?,
            rows: r.u64("rows")?,
        };
        r.finish()?;
        Ok(v)
    }
}
