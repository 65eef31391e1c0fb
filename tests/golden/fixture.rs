//! The shape of `tests/fixtures/protocol.json` and how its decoded fields map
//! onto the Rust protocol types, in both directions (fields -> typed value ->
//! bytes, and bytes -> typed value compared with the fields).

use arrowpool::protocol::create::{Create, Created};
use arrowpool::protocol::frame::write_frame;
use arrowpool::protocol::get::{Get, GetVersion, Located};
use arrowpool::protocol::handshake::{ClientHello, ServerHello};
use arrowpool::protocol::ingest::{Ingest, IngestReply};
use arrowpool::protocol::list::ListEntry;
use arrowpool::protocol::publish::Publish;
use arrowpool::protocol::seal::{Seal, Sealed};
use arrowpool::protocol::stats::StatsReply;
use arrowpool::protocol::wait::{Version, Wait};
use arrowpool::protocol::{
    abort, delete, list, ping, release, stats, ErrorCode, ErrorReply, FrameError, Header, Kind,
    ObjectKind, Request,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Serialize, Deserialize)]
pub struct Fixture {
    pub about: String,
    pub constants: Constants,
    pub handshakes: Vec<HelloCase>,
    pub frames: Vec<FrameCase>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Constants {
    pub frame: FrameConstants,
    pub limits: Limits,
    pub handshake: HandshakeConstants,
    /// Request kinds, then the server-only kinds `shutdown` and `error`.
    pub kinds: Vec<Named>,
    pub error_codes: Vec<Named>,
    pub memory_kinds: Vec<Named>,
    pub io_drivers: Vec<Named>,
    pub object_kinds: Vec<Named>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameConstants {
    pub header_len: u64,
    pub len_offset: u64,
    pub len_size: u64,
    pub request_id_offset: u64,
    pub request_id_size: u64,
    pub kind_offset: u64,
    pub kind_size: u64,
    pub flags_offset: u64,
    pub flags_size: u64,
    pub request_body_max: u64,
    pub reply_body_max: u64,
    pub reply_bit: u64,
    pub flag_no_reply: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub name_max: u64,
    pub path_max: u64,
    pub columns_max: u64,
    pub wait_timeout_ms_max: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandshakeConstants {
    pub client_magic: String,
    pub server_magic: String,
    pub version: u64,
    pub flag_write: u64,
    pub client_hello_len: u64,
    pub server_hello_len: u64,
    pub server_offsets: ServerOffsets,
    pub statuses: Vec<Named>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerOffsets {
    pub magic: u64,
    pub version: u64,
    pub status: u64,
    pub arena_len: u64,
    pub map_align: u64,
    pub memory_kind: u64,
    pub io_driver: u64,
    pub fd_count: u64,
    pub reserved: u64,
}

/// One number of an enumeration and its name in docs/PROTOCOL.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Named {
    pub value: u64,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Client,
    Server,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelloCase {
    pub name: String,
    pub side: Side,
    pub fields: Value,
    pub hex: String,
    /// The same bytes as written in docs/PROTOCOL.md, verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doc: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Request,
    Reply,
    Error,
    Shutdown,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FrameCase {
    pub name: String,
    pub role: Role,
    /// The request kind this frame is or answers (`None` for a shutdown notice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    pub header: HeaderFields,
    /// Decoded fixed-layout body (absent for JSON bodies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Value>,
    /// Decoded JSON body (list, stats and ingest replies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<Value>,
    /// The whole frame, header then body.
    pub hex: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doc: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderFields {
    pub len: u32,
    pub request_id: u64,
    pub kind: u16,
    pub flags: u16,
}

impl From<Header> for HeaderFields {
    fn from(h: Header) -> Self {
        HeaderFields {
            len: h.len,
            request_id: h.request_id,
            kind: h.kind,
            flags: h.flags,
        }
    }
}

pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn from_hex(hex: &str) -> Vec<u8> {
    assert!(hex.len().is_multiple_of(2), "odd-length hex {hex:?}");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("fixture hex digits"))
        .collect()
}

/// A successful reply body, typed.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Empty,
    Created(Created),
    Sealed(Sealed),
    Located(Located),
    Version(Version),
    List(Vec<ListEntry>),
    Stats(Box<StatsReply>),
    Ingest(IngestReply),
}

/// The request kind a fixture name refers to (`"create"` -> `Kind::Create`).
pub fn kind_named(name: &str) -> Kind {
    (0..=u16::MAX)
        .filter_map(Kind::request_from_u16)
        .find(|k| k.name() == name)
        .unwrap_or_else(|| panic!("no request kind is named {name:?}"))
}

/// The kind a case's header must carry, from its role and request.
pub fn expected_kind(case: &FrameCase) -> u16 {
    match case.role {
        Role::Request => kind_named(case_request_name(case)) as u16,
        Role::Reply => kind_named(case_request_name(case)).reply(),
        Role::Error => Kind::Error as u16,
        Role::Shutdown => Kind::Shutdown as u16,
    }
}

fn case_request_name(case: &FrameCase) -> &str {
    case.request
        .as_deref()
        .unwrap_or_else(|| panic!("{}: no request kind", case.name))
}

fn fields(case: &FrameCase) -> &Value {
    case.fields
        .as_ref()
        .unwrap_or_else(|| panic!("{}: no fields", case.name))
}

fn num(f: &Value, key: &str) -> u64 {
    f[key]
        .as_u64()
        .unwrap_or_else(|| panic!("field {key:?} missing or not an unsigned integer in {f}"))
}

fn narrow<T: TryFrom<u64>>(f: &Value, key: &str) -> T {
    T::try_from(num(f, key)).unwrap_or_else(|_| panic!("field {key:?} out of range in {f}"))
}

fn text(f: &Value, key: &str) -> String {
    f[key]
        .as_str()
        .unwrap_or_else(|| panic!("field {key:?} missing or not a string in {f}"))
        .to_owned()
}

/// Maps the wire byte to `ObjectKind` through its discriminant, so the test does
/// not lean on a conversion helper (the decoders are what is under test).
pub fn object_kind(v: u64) -> ObjectKind {
    [ObjectKind::Table, ObjectKind::Bytes]
        .into_iter()
        .find(|k| *k as u64 == v)
        .unwrap_or_else(|| panic!("object kind {v} is neither table nor bytes"))
}

/// The request a `request` case describes.
pub fn case_request(case: &FrameCase) -> Request {
    let kind = kind_named(case_request_name(case));
    let f = fields(case);
    match kind {
        Kind::Ping => Request::Ping(ping::Ping),
        Kind::Create => Request::Create(Create {
            object_kind: object_kind(num(f, "object_kind")),
            size: num(f, "size"),
            name: text(f, "name"),
        }),
        Kind::Seal => Request::Seal(Seal {
            object_id: num(f, "object_id"),
            length: num(f, "length"),
        }),
        Kind::Abort => Request::Abort(abort::Abort {
            object_id: num(f, "object_id"),
        }),
        Kind::Get => Request::Get(Get {
            name: text(f, "name"),
        }),
        Kind::Release => Request::Release(release::Release {
            object_id: num(f, "object_id"),
        }),
        Kind::Delete => Request::Delete(delete::Delete {
            name: text(f, "name"),
        }),
        Kind::List => Request::List(list::List),
        Kind::Stats => Request::Stats(stats::Stats),
        Kind::Wait => Request::Wait(Wait {
            after: num(f, "after"),
            timeout_ms: narrow(f, "timeout_ms"),
            name: text(f, "name"),
        }),
        Kind::Ingest => Request::Ingest(case_ingest(f)),
        Kind::GetVersion => Request::GetVersion(GetVersion {
            version: num(f, "version"),
            name: text(f, "name"),
        }),
        Kind::Publish => Request::Publish(Publish {
            if_version: f["if_version"].as_u64(),
            draft_id: num(f, "draft_id"),
            draft_len: num(f, "draft_len"),
            name: text(f, "name"),
        }),
        Kind::Shutdown | Kind::Error => unreachable!("not request kinds"),
    }
}

fn case_ingest(f: &Value) -> Ingest {
    let columns = f["columns"]
        .as_array()
        .unwrap_or_else(|| panic!("ingest fields need a columns array: {f}"));
    Ingest {
        name: text(f, "name"),
        path: text(f, "path"),
        columns: columns
            .iter()
            .map(|c| c.as_str().expect("column names are strings").to_owned())
            .collect(),
        options: Vec::new(),
    }
}

/// The reply a `reply` case describes.
pub fn case_reply(case: &FrameCase) -> Reply {
    let kind = kind_named(case_request_name(case));
    let json = || case.json.clone().expect("JSON replies carry a json value");
    match kind {
        Kind::Ping | Kind::Abort | Kind::Release | Kind::Delete => Reply::Empty,
        Kind::Create => {
            let f = fields(case);
            Reply::Created(Created {
                object_id: num(f, "object_id"),
                offset: num(f, "offset"),
                capacity: num(f, "capacity"),
            })
        }
        Kind::Seal | Kind::Publish => {
            let f = fields(case);
            Reply::Sealed(Sealed {
                version: num(f, "version"),
                rows: num(f, "rows"),
            })
        }
        Kind::Get | Kind::GetVersion => Reply::Located(case_located(fields(case))),
        Kind::Wait => Reply::Version(Version {
            version: num(fields(case), "version"),
        }),
        Kind::List => Reply::List(serde_json::from_value(json()).expect("list entries")),
        Kind::Stats => Reply::Stats(serde_json::from_value(json()).expect("stats reply")),
        Kind::Ingest => Reply::Ingest(serde_json::from_value(json()).expect("ingest reply")),
        Kind::Shutdown | Kind::Error => unreachable!("not request kinds"),
    }
}

fn case_located(f: &Value) -> Located {
    Located {
        object_id: num(f, "object_id"),
        version: num(f, "version"),
        offset: num(f, "offset"),
        length: num(f, "length"),
        rows: num(f, "rows"),
        object_kind: object_kind(num(f, "object_kind")),
    }
}

/// The error reply an `error` case describes.
pub fn case_error(case: &FrameCase) -> ErrorReply {
    let f = fields(case);
    let code: u16 = narrow(f, "code");
    let typed = ErrorCode::from_u16(code);
    // from_u16 maps unknown numbers to Internal; a fixture code must be a real one.
    assert_eq!(
        typed as u16, code,
        "{}: unknown error code {code}",
        case.name
    );
    ErrorReply::new(typed, text(f, "message"))
}

/// Every fixture request is valid, so encoding cannot fail.
pub fn encode_request(req: &Request, out: &mut Vec<u8>) {
    req.encode(out)
        .expect("fixture requests are within the protocol's limits");
}

pub fn encode_reply(reply: &Reply, out: &mut Vec<u8>) {
    match reply {
        Reply::Empty => {}
        Reply::Created(r) => r.encode(out),
        Reply::Sealed(r) => r.encode(out),
        Reply::Located(r) => r.encode(out),
        Reply::Version(r) => r.encode(out),
        Reply::List(r) => out.extend(to_json(r)),
        Reply::Stats(r) => out.extend(to_json(&**r)),
        Reply::Ingest(r) => out.extend(to_json(r)),
    }
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("reply types serialize")
}

/// Decodes a successful reply body of `kind` with the Rust types.
pub fn decode_reply(kind: Kind, body: &[u8]) -> Result<Reply, String> {
    let err = |e: FrameError| e.to_string();
    let json_err = |e: serde_json::Error| e.to_string();
    Ok(match kind {
        Kind::Ping | Kind::Abort | Kind::Release | Kind::Delete if body.is_empty() => Reply::Empty,
        Kind::Ping | Kind::Abort | Kind::Release | Kind::Delete => {
            return Err(format!("{} reply must be empty", kind.name()))
        }
        Kind::Create => Reply::Created(Created::decode(body).map_err(err)?),
        Kind::Seal | Kind::Publish => Reply::Sealed(Sealed::decode(body).map_err(err)?),
        Kind::Get | Kind::GetVersion => Reply::Located(Located::decode(body).map_err(err)?),
        Kind::Wait => Reply::Version(Version::decode(body).map_err(err)?),
        Kind::List => Reply::List(serde_json::from_slice(body).map_err(json_err)?),
        Kind::Stats => Reply::Stats(serde_json::from_slice(body).map_err(json_err)?),
        Kind::Ingest => Reply::Ingest(serde_json::from_slice(body).map_err(json_err)?),
        Kind::Shutdown | Kind::Error => return Err("not a request kind".into()),
    })
}

/// The whole frame a case describes, encoded with the Rust types.
pub fn encode_frame(case: &FrameCase) -> Vec<u8> {
    let h = &case.header;
    let mut out = Vec::new();
    write_frame(&mut out, h.request_id, h.kind, h.flags, |b| {
        match case.role {
            Role::Request => encode_request(&case_request(case), b),
            Role::Reply => encode_reply(&case_reply(case), b),
            Role::Error => case_error(case).encode(b),
            Role::Shutdown => {}
        }
    });
    out
}

pub fn client_hello(f: &Value) -> ClientHello {
    ClientHello {
        version: narrow(f, "version"),
        flags: narrow(f, "flags"),
    }
}

pub fn server_hello(f: &Value) -> ServerHello {
    ServerHello {
        version: narrow(f, "version"),
        status: narrow(f, "status"),
        arena_len: num(f, "arena_len"),
        map_align: narrow(f, "map_align"),
        memory_kind: narrow(f, "memory_kind"),
        io_driver: narrow(f, "io_driver"),
        fd_count: narrow(f, "fd_count"),
    }
}

/// A hello case encoded with the Rust types.
pub fn encode_hello(case: &HelloCase) -> Vec<u8> {
    match case.side {
        Side::Client => client_hello(&case.fields).encode().to_vec(),
        Side::Server => server_hello(&case.fields).encode().to_vec(),
    }
}
