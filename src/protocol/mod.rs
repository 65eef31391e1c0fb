//! Wire format shared by the server and the Rust client.
//!
//! One file per request kind (mini-redis style): each defines the request and
//! its reply, with `encode` used by the sender and `decode` by the receiver, so
//! both sides share one type. `docs/PROTOCOL.md` documents the same layouts
//! byte by byte for clients in other languages.

pub mod abort;
pub mod create;
pub mod delete;
pub mod draft;
pub mod error;
pub mod frame;
pub mod get;
pub mod handshake;
pub mod ingest;
pub mod list;
pub mod ping;
pub mod publish;
pub mod release;
pub mod seal;
pub mod stats;
pub mod wait;

pub use error::{ErrorCode, ErrorReply};
pub use frame::{FrameError, Header, HEADER_LEN};

/// Longest object name in bytes (UTF-8).
pub const NAME_MAX: usize = 255;
/// Longest path in an ingest request, in bytes.
pub const PATH_MAX: usize = 4096;
/// Most columns an ingest request may name.
pub const COLUMNS_MAX: usize = 4096;

/// Bit set in a reply's kind: reply kind = request kind | `REPLY_BIT`.
pub const REPLY_BIT: u16 = 0x8000;

/// Request kinds. A successful reply has kind `request | REPLY_BIT`; a failed one
/// has kind `Error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Kind {
    Ping = 1,
    Create = 2,
    Seal = 3,
    Abort = 4,
    Get = 5,
    Release = 6,
    Delete = 7,
    List = 8,
    Stats = 9,
    Wait = 10,
    Ingest = 11,
    Publish = 12,
    GetVersion = 13,
    /// Server -> client, request id 0: the server is shutting down.
    Shutdown = 0xFFFE,
    /// Server -> client: the request failed; body is an [`ErrorReply`].
    Error = 0xFFFF,
}

impl Kind {
    /// Maps a request kind number to a `Kind`; replies and notices are not requests.
    pub fn request_from_u16(v: u16) -> Option<Kind> {
        Some(match v {
            1 => Kind::Ping,
            2 => Kind::Create,
            3 => Kind::Seal,
            4 => Kind::Abort,
            5 => Kind::Get,
            6 => Kind::Release,
            7 => Kind::Delete,
            8 => Kind::List,
            9 => Kind::Stats,
            10 => Kind::Wait,
            11 => Kind::Ingest,
            12 => Kind::Publish,
            13 => Kind::GetVersion,
            _ => return None,
        })
    }

    /// The request's name in the protocol document (`create`, `seal`...).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Ping => "ping",
            Kind::Create => "create",
            Kind::Seal => "seal",
            Kind::Abort => "abort",
            Kind::Get => "get",
            Kind::Release => "release",
            Kind::Delete => "delete",
            Kind::List => "list",
            Kind::Stats => "stats",
            Kind::Wait => "wait",
            Kind::Ingest => "ingest",
            Kind::Publish => "publish",
            Kind::GetVersion => "get_version",
            Kind::Shutdown => "shutdown",
            Kind::Error => "error",
        }
    }

    /// The kind number of a successful reply to this request.
    pub fn reply(self) -> u16 {
        self as u16 | REPLY_BIT
    }
}

pub use crate::store::ObjectKind;

/// Decodes an object kind byte: 0 table, 1 bytes.
pub fn object_kind(v: u8) -> Result<ObjectKind, FrameError> {
    match v {
        0 => Ok(ObjectKind::Table),
        1 => Ok(ObjectKind::Bytes),
        _ => Err(FrameError::Malformed(
            "object kind must be 0 (table) or 1 (bytes)",
        )),
    }
}

/// Checks a name: 1..=NAME_MAX bytes of UTF-8 without control characters.
pub fn check_name(name: &str) -> Result<(), FrameError> {
    if name.is_empty() {
        return Err(FrameError::Malformed("name is empty"));
    }
    if name.len() > NAME_MAX {
        return Err(FrameError::Malformed("name is longer than 255 bytes"));
    }
    if name.chars().any(char::is_control) {
        return Err(FrameError::Malformed("name contains control characters"));
    }
    Ok(())
}

/// A decoded request, as the server dispatches it.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Ping(ping::Ping),
    Create(create::Create),
    Seal(seal::Seal),
    Abort(abort::Abort),
    Get(get::Get),
    Release(release::Release),
    Delete(delete::Delete),
    List(list::List),
    Stats(stats::Stats),
    Wait(wait::Wait),
    Ingest(ingest::Ingest),
    Publish(publish::Publish),
    GetVersion(get::GetVersion),
}

impl Request {
    /// Decodes a request body of the given kind.
    pub fn decode(kind: u16, body: &[u8]) -> Result<Request, FrameError> {
        let kind = Kind::request_from_u16(kind).ok_or(FrameError::UnknownKind(kind))?;
        Ok(match kind {
            Kind::Ping => Request::Ping(ping::Ping::decode(body)?),
            Kind::Create => Request::Create(create::Create::decode(body)?),
            Kind::Seal => Request::Seal(seal::Seal::decode(body)?),
            Kind::Abort => Request::Abort(abort::Abort::decode(body)?),
            Kind::Get => Request::Get(get::Get::decode(body)?),
            Kind::Release => Request::Release(release::Release::decode(body)?),
            Kind::Delete => Request::Delete(delete::Delete::decode(body)?),
            Kind::List => Request::List(list::List::decode(body)?),
            Kind::Stats => Request::Stats(stats::Stats::decode(body)?),
            Kind::Wait => Request::Wait(wait::Wait::decode(body)?),
            Kind::Ingest => Request::Ingest(ingest::Ingest::decode(body)?),
            Kind::Publish => Request::Publish(publish::Publish::decode(body)?),
            Kind::GetVersion => Request::GetVersion(get::GetVersion::decode(body)?),
            Kind::Shutdown | Kind::Error => return Err(FrameError::UnknownKind(kind as u16)),
        })
    }

    /// Encodes the request's body (the inverse of `decode`). Fails, appending
    /// nothing, when the request breaks a limit `decode` would refuse.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        match self {
            Request::Ping(r) => r.encode(out),
            Request::Create(r) => return r.encode(out),
            Request::Seal(r) => r.encode(out),
            Request::Abort(r) => r.encode(out),
            Request::Get(r) => return r.encode(out),
            Request::Release(r) => r.encode(out),
            Request::Delete(r) => return r.encode(out),
            Request::List(r) => r.encode(out),
            Request::Stats(r) => r.encode(out),
            Request::Wait(r) => return r.encode(out),
            Request::Ingest(r) => return r.encode(out),
            Request::Publish(r) => return r.encode(out),
            Request::GetVersion(r) => return r.encode(out),
        }
        Ok(())
    }

    pub fn kind(&self) -> Kind {
        match self {
            Request::Ping(_) => Kind::Ping,
            Request::Create(_) => Kind::Create,
            Request::Seal(_) => Kind::Seal,
            Request::Abort(_) => Kind::Abort,
            Request::Get(_) => Kind::Get,
            Request::Release(_) => Kind::Release,
            Request::Delete(_) => Kind::Delete,
            Request::List(_) => Kind::List,
            Request::Stats(_) => Kind::Stats,
            Request::Wait(_) => Kind::Wait,
            Request::Ingest(_) => Kind::Ingest,
            Request::Publish(_) => Kind::Publish,
            Request::GetVersion(_) => Kind::GetVersion,
        }
    }
}
