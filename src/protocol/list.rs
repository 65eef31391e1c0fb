//! `list`: every named object. Not on a hot path, so the reply is JSON.
//!
//! ```text
//! request:  (empty)
//! reply:    UTF-8 JSON array of ListEntry objects
//! ```
use super::frame::{BodyReader, FrameError};

#[derive(Debug, Clone, PartialEq, Default)]
pub struct List;

impl List {
    pub fn encode(&self, _out: &mut Vec<u8>) {}

    pub fn decode(body: &[u8]) -> Result<Self, FrameError> {
        BodyReader::new(body).finish()?;
        Ok(List)
    }
}

/// One row of a `list` reply.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ListEntry {
    pub name: String,
    pub object_id: u64,
    pub version: u64,
    pub kind: String,
    pub rows: u64,
    pub bytes: u64,
    /// Of `bytes`, those in chunks that other live versions reference too.
    #[serde(default)]
    pub shared_bytes: u64,
    /// Older versions still readable by number (`--keep-versions`), oldest first.
    #[serde(default)]
    pub retained: Vec<u64>,
    pub leases: u64,
    /// Milliseconds since the object was last read or written.
    pub idle_ms: u64,
    /// Spilled to disk (`--spill-dir`): a get brings it back into memory.
    /// Left out of the JSON when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub on_disk: bool,
}
