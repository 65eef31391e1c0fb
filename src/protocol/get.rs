//! `get`: look up the current version of a name and take a lease on it.
//!
//! ```text
//! request:  | name str |
//! reply:    | object_id u64 | version u64 | offset u64 | length u64 | rows u64 | object_kind u8 |
//! ```
//! The object stays in place until the connection releases the lease (or closes).
use super::frame::{put_str, BodyReader, FrameError};
use super::{check_name, ObjectKind};

#[derive(Debug, Clone, PartialEq)]
pub struct Get {
    pub name: String,
}

impl Get {
    /// Fails, appending nothing, when the name breaks the rules `decode` checks.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        check_name(&self.name)?;
        put_str(out, &self.name)
    }

    pub fn decode(body: &[u8]) -> Result<Self, FrameError> {
        let mut r = BodyReader::new(body);
        let name = r.str("name")?;
        r.finish()?;
        check_name(name)?;
        Ok(Get {
            name: name.to_owned(),
        })
    }
}

/// `get_version` (kind 13): a retained version by number.
///
/// ```text
/// request:  | version u64 | name str |
/// reply:    as get's
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct GetVersion {
    pub version: u64,
    pub name: String,
}

impl GetVersion {
    /// Fails, appending nothing, when the name breaks the rules `decode` checks.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        check_name(&self.name)?;
        out.extend_from_slice(&self.version.to_le_bytes());
        put_str(out, &self.name)
    }

    pub fn decode(body: &[u8]) -> Result<Self, FrameError> {
        let mut r = BodyReader::new(body);
        let version = r.u64("version")?;
        let name = r.str("name")?;
        r.finish()?;
        check_name(name)?;
        Ok(GetVersion {
            version,
            name: name.to_owned(),
        })
    }
}

/// Where a sealed object lies in the arena.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Located {
    pub object_id: u64,
    pub version: u64,
    pub offset: u64,
    pub length: u64,
    pub rows: u64,
    pub object_kind: ObjectKind,
}

impl Located {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.object_id.to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.length.to_le_bytes());
        out.extend_from_slice(&self.rows.to_le_bytes());
        out.push(self.object_kind as u8);
    }

    pub fn decode(body: &[u8]) -> Result<Self, FrameError> {
        let mut r = BodyReader::new(body);
        let v = Located {
            object_id: r.u64("object id")?,
            version: r.u64("version")?,
            offset: r.u64("offset")?,
            length: r.u64("length")?,
            rows: r.u64("rows")?,
            object_kind: super::object_kind(r.u8("object kind")?)?,
        };
        r.finish()?;
        Ok(v)
    }
}
