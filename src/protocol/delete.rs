//! `delete`: unbind a name. Readers holding leases keep their data; the space is
//! freed when the last lease goes.
//!
//! ```text
//! request:  | name str |
//! reply:    (empty)
//! ```
use super::check_name;
use super::frame::{put_str, BodyReader, FrameError};

#[derive(Debug, Clone, PartialEq)]
pub struct Delete {
    pub name: String,
}

impl Delete {
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
        Ok(Delete {
            name: name.to_owned(),
        })
    }
}
