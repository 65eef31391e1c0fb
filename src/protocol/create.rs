//! `create`: reserve arena space for a new version of a named object.
//!
//! ```text
//! request:  | object_kind u8 | size u64 | name str |
//! reply:    | object_id u64 | offset u64 | capacity u64 |
//! ```
//! The client then writes at most `capacity` bytes at `offset` in its writable
//! mapping and sends `seal` (or `abort`). Until sealed, the object is invisible.
use super::frame::{put_str, BodyReader, FrameError};
use super::{check_name, ObjectKind};

#[derive(Debug, Clone, PartialEq)]
pub struct Create {
    pub object_kind: ObjectKind,
    pub size: u64,
    pub name: String,
}

impl Create {
    /// Fails, appending nothing, when the name breaks the rules `decode` checks.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        check_name(&self.name)?;
        out.push(self.object_kind as u8);
        out.extend_from_slice(&self.size.to_le_bytes());
        put_str(out, &self.name)
    }

    pub fn decode(body: &[u8]) -> Result<Self, FrameError> {
        let mut r = BodyReader::new(body);
        let object_kind = super::object_kind(r.u8("object kind")?)?;
        let size = r.u64("size")?;
        let name = r.str("name")?;
        r.finish()?;
        check_name(name)?;
        Ok(Create {
            object_kind,
            size,
            name: name.to_owned(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Created {
    pub object_id: u64,
    pub offset: u64,
    pub capacity: u64,
}

impl Created {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.object_id.to_le_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.capacity.to_le_bytes());
    }

    pub fn decode(body: &[u8]) -> Result<Self, FrameError> {
        let mut r = BodyReader::new(body);
        let v = Created {
            object_id: r.u64("object id")?,
            offset: r.u64("offset")?,
            capacity: r.u64("capacity")?,
        };
        r.finish()?;
        Ok(v)
    }
}
