//! Error replies.
//!
//! ```text
//! reply (kind 0xFFFF):  | code u16 | message str |
//! ```
use super::frame::{put_str_truncated, BodyReader, FrameError};

/// Why a request failed. Numbers are part of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// The frame could not be decoded (bad layout, bad UTF-8, bad name).
    Malformed = 1,
    /// The request kind is not known to this server.
    UnknownKind = 2,
    /// No object has this name (never put, deleted or evicted).
    NotFound = 3,
    /// The arena cannot hold the object even after eviction.
    OutOfMemory = 4,
    /// The object id is unknown, not owned by this connection, or in the wrong state.
    InvalidObject = 5,
    /// `wait` ended without a newer version.
    Timeout = 6,
    /// The sealed bytes are not a valid Arrow IPC file.
    InvalidData = 7,
    /// Ingest failed: file missing, unreadable, not Parquet, bad column...
    Ingest = 8,
    /// A per-connection or server limit was hit (too many pending creates, leases...).
    LimitExceeded = 9,
    /// The server is shutting down.
    ShuttingDown = 10,
    /// A server-side failure that is not the client's fault.
    Internal = 11,
    /// A write request (create, seal, abort, delete, ingest) on a connection
    /// whose handshake did not ask for write access.
    ReadOnly = 12,
    /// A put with `if_version` found the name at another version (a writer
    /// published in between): nothing was published.
    VersionConflict = 13,
}

impl ErrorCode {
    pub fn from_u16(v: u16) -> ErrorCode {
        match v {
            1 => ErrorCode::Malformed,
            2 => ErrorCode::UnknownKind,
            3 => ErrorCode::NotFound,
            4 => ErrorCode::OutOfMemory,
            5 => ErrorCode::InvalidObject,
            6 => ErrorCode::Timeout,
            7 => ErrorCode::InvalidData,
            8 => ErrorCode::Ingest,
            9 => ErrorCode::LimitExceeded,
            10 => ErrorCode::ShuttingDown,
            12 => ErrorCode::ReadOnly,
            13 => ErrorCode::VersionConflict,
            _ => ErrorCode::Internal,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorReply {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorReply {
            code,
            message: message.into(),
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.code as u16).to_le_bytes());
        put_str_truncated(out, &self.message);
    }

    pub fn decode(body: &[u8]) -> Result<Self, FrameError> {
        let mut r = BodyReader::new(body);
        let code = ErrorCode::from_u16(r.u16("error code")?);
        let message = r.str("error message")?.to_owned();
        r.finish()?;
        Ok(ErrorReply { code, message })
    }
}

impl std::fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}
