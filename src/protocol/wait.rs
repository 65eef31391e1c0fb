//! `wait`: block until `name` has a version greater than `after`, or time out.
//!
//! ```text
//! request:  | after u64 | timeout_ms u32 | name str |
//! reply:    | version u64 |
//! ```
//! Fails with `Timeout` when no newer version appears in time. The connection
//! answers other requests only after the wait ends; use a separate connection
//! to wait while working.
use super::check_name;
use super::frame::{put_str, BodyReader, FrameError};

/// Longest wait a client may ask for (10 minutes).
pub const TIMEOUT_MS_MAX: u32 = 600_000;

#[derive(Debug, Clone, PartialEq)]
pub struct Wait {
    pub after: u64,
    pub timeout_ms: u32,
    pub name: String,
}

impl Wait {
    /// Fails, appending nothing, when the name breaks the rules `decode` checks.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        check_name(&self.name)?;
        out.extend_from_slice(&self.after.to_le_bytes());
        out.extend_from_slice(&self.timeout_ms.to_le_bytes());
        put_str(out, &self.name)
    }

    pub fn decode(body: &[u8]) -> Result<Self, FrameError> {
        let mut r = BodyReader::new(body);
        let after = r.u64("after")?;
        let timeout_ms = r.u32("timeout")?;
        let name = r.str("name")?;
        r.finish()?;
        check_name(name)?;
        if timeout_ms > TIMEOUT_MS_MAX {
            return Err(FrameError::Malformed("timeout above 600000 ms"));
        }
        Ok(Wait {
            after,
            timeout_ms,
            name: name.to_owned(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Version {
    pub version: u64,
}

impl Version {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.version.to_le_bytes());
    }

    pub fn decode(body: &[u8]) -> Result<Self, FrameError> {
        let mut r = BodyReader::new(body);
        let v = Version {
            version: r.u64("version")?,
        };
        r.finish()?;
        Ok(v)
    }
}
