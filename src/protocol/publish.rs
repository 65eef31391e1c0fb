//! `publish`: a new table version from a draft, sharing chunks of existing
//! versions.
//!
//! ```text
//! request:  | flags u8 | if_version u64 | draft_id u64 | draft_len u64 | name str |
//! reply:    | version u64 | rows u64 |          (as seal's)
//! ```
//! The writer first writes its new columns as Arrow IPC files into chunks of
//! its own (`create`, kind table, not sealed), then a draft (`protocol::draft`,
//! byte by byte in docs/PROTOCOL.md) into another chunk (kind bytes), and sends
//! `publish`. The server checks the new files, finds the existing columns the
//! draft names, writes the version's manifest and moves `name` to it. Flag bit
//! 0: publish only if `name` is at version `if_version` (else
//! `VersionConflict`). On success the draft chunk is freed and the new chunks
//! belong to the version; on any failure they are all aborted.
use super::check_name;
use super::frame::{put_str, BodyReader, FrameError};

/// `flags` bit 0: `if_version` is set.
pub const FLAG_IF_VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    pub if_version: Option<u64>,
    pub draft_id: u64,
    pub draft_len: u64,
    pub name: String,
}

impl Publish {
    /// Fails, appending nothing, when the name breaks the rules `decode` checks.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        check_name(&self.name)?;
        out.push(if self.if_version.is_some() {
            FLAG_IF_VERSION
        } else {
            0
        });
        out.extend_from_slice(&self.if_version.unwrap_or(0).to_le_bytes());
        out.extend_from_slice(&self.draft_id.to_le_bytes());
        out.extend_from_slice(&self.draft_len.to_le_bytes());
        put_str(out, &self.name)
    }

    pub fn decode(body: &[u8]) -> Result<Self, FrameError> {
        let mut r = BodyReader::new(body);
        let flags = r.u8("flags")?;
        if flags & !FLAG_IF_VERSION != 0 {
            return Err(FrameError::Malformed("unknown publish flags"));
        }
        let if_version = r.u64("if_version")?;
        let draft_id = r.u64("draft id")?;
        let draft_len = r.u64("draft length")?;
        let name = r.str("name")?;
        r.finish()?;
        check_name(name)?;
        Ok(Publish {
            if_version: (flags & FLAG_IF_VERSION != 0).then_some(if_version),
            draft_id,
            draft_len,
            name: name.to_owned(),
        })
    }
}
