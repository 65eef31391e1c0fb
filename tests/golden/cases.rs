//! What `regenerate` writes into tests/fixtures/protocol.json, and the Rust
//! constants the fixture's "constants" section is checked against.
//!
//! The cases follow one session (put "sales" as object 7, read it, wait for a
//! newer version, delete it, ingest "trips"), reuse the values of the JSON
//! examples in docs/PROTOCOL.md, and include the doc's byte examples verbatim.

use arrowpool::arena::MemoryKind;
use arrowpool::protocol::create::Create;
use arrowpool::protocol::frame::{self, HEADER_LEN};
use arrowpool::protocol::handshake as hs;
use arrowpool::protocol::{wait, ErrorCode, Kind, COLUMNS_MAX, NAME_MAX, PATH_MAX, REPLY_BIT};
use serde_json::{json, Value};

use super::fixture::*;

const ABOUT: &str = "Golden frames of the arrowpool wire protocol (docs/PROTOCOL.md). This \
file is the source of truth: tests/golden.rs (Rust) and python/tests/test_golden.py \
(Python) decode and encode every frame and compare. Written once by `cargo test --test \
golden -- --ignored regenerate`; review any change to it like a protocol change. Hex is the \
whole frame (16-byte header, then body); `doc` holds the same bytes as written in \
PROTOCOL.md.";

/// The doc's section 7 examples, verbatim.
pub const DOC_CLIENT_HELLO: &str = "41 50 63 31 01 00 00 00";
pub const DOC_SERVER_HELLO: &str =
    "41 50 73 31 01 00 00 00 | 00 00 00 80 00 00 00 00 | 00 10 00 00 | 02 00 01 | 00*9";
pub const DOC_PING: &str = "00 00 00 00 | 07 00 00 00 00 00 00 00 | 01 00 | 00 00";
pub const DOC_PONG: &str = "00 00 00 00 | 07 00 00 00 00 00 00 00 | 01 80 | 00 00";

pub fn fixture() -> Fixture {
    Fixture {
        about: ABOUT.into(),
        constants: rust_constants(),
        handshakes: hello_cases(),
        frames: frame_cases(),
    }
}

fn named(value: u64, name: &str) -> Named {
    Named {
        value,
        name: name.into(),
    }
}

/// The protocol constants as the Rust code defines them. Enumerations are
/// found by probing every number, so a number added in Rust shows up here.
pub fn rust_constants() -> Constants {
    Constants {
        frame: frame_constants(),
        limits: Limits {
            name_max: NAME_MAX as u64,
            path_max: PATH_MAX as u64,
            columns_max: COLUMNS_MAX as u64,
            wait_timeout_ms_max: wait::TIMEOUT_MS_MAX.into(),
        },
        handshake: handshake_constants(),
        kinds: kinds(),
        error_codes: (0..=u16::MAX)
            .filter(|&n| ErrorCode::from_u16(n) as u16 == n)
            .map(|n| named(n.into(), &format!("{:?}", ErrorCode::from_u16(n))))
            .collect(),
        memory_kinds: (0..=u8::MAX)
            .filter_map(MemoryKind::from_u8)
            .map(|k| named(k as u64, k.as_str()))
            .collect(),
        io_drivers: doc_io_drivers(),
        object_kinds: object_kinds(),
    }
}

fn frame_constants() -> FrameConstants {
    FrameConstants {
        header_len: HEADER_LEN as u64,
        len_offset: frame::LEN_OFFSET as u64,
        len_size: frame::LEN_SIZE as u64,
        request_id_offset: frame::REQUEST_ID_OFFSET as u64,
        request_id_size: frame::REQUEST_ID_SIZE as u64,
        kind_offset: frame::KIND_OFFSET as u64,
        kind_size: frame::KIND_SIZE as u64,
        flags_offset: frame::FLAGS_OFFSET as u64,
        flags_size: frame::FLAGS_SIZE as u64,
        request_body_max: frame::REQUEST_BODY_MAX as u64,
        reply_body_max: frame::REPLY_BODY_MAX as u64,
        reply_bit: REPLY_BIT.into(),
        flag_no_reply: frame::FLAG_NO_REPLY.into(),
    }
}

fn handshake_constants() -> HandshakeConstants {
    let magic = |m: [u8; 4]| String::from_utf8(m.to_vec()).expect("ASCII magic");
    HandshakeConstants {
        client_magic: magic(hs::CLIENT_MAGIC),
        server_magic: magic(hs::SERVER_MAGIC),
        version: hs::PROTOCOL_VERSION.into(),
        flag_write: hs::FLAG_WRITE.into(),
        client_hello_len: hs::CLIENT_HELLO_LEN as u64,
        server_hello_len: hs::SERVER_HELLO_LEN as u64,
        server_offsets: ServerOffsets {
            magic: hs::SERVER_MAGIC_OFFSET as u64,
            version: hs::SERVER_VERSION_OFFSET as u64,
            status: hs::SERVER_STATUS_OFFSET as u64,
            arena_len: hs::SERVER_ARENA_LEN_OFFSET as u64,
            map_align: hs::SERVER_MAP_ALIGN_OFFSET as u64,
            memory_kind: hs::SERVER_MEMORY_KIND_OFFSET as u64,
            io_driver: hs::SERVER_IO_DRIVER_OFFSET as u64,
            fd_count: hs::SERVER_FD_COUNT_OFFSET as u64,
            reserved: hs::SERVER_RESERVED_OFFSET as u64,
        },
        statuses: vec![
            named(hs::STATUS_OK.into(), "ok"),
            named(hs::STATUS_BAD_MAGIC.into(), "bad_magic"),
            named(hs::STATUS_BAD_VERSION.into(), "bad_version"),
            named(
                hs::STATUS_TOO_MANY_CONNECTIONS.into(),
                "too_many_connections",
            ),
            named(hs::STATUS_WRITE_REFUSED.into(), "write_refused"),
            named(hs::STATUS_ACCESS_REFUSED.into(), "access_refused"),
        ],
    }
}

fn kinds() -> Vec<Named> {
    let mut kinds: Vec<Named> = (0..=u16::MAX)
        .filter_map(Kind::request_from_u16)
        .map(|k| named(k as u64, k.name()))
        .collect();
    for k in [Kind::Shutdown, Kind::Error] {
        kinds.push(named(k as u64, k.name()));
    }
    kinds
}

/// The io_driver byte has no protocol-level Rust constant (the server's own
/// enum is not part of `protocol`), so these come from PROTOCOL.md section 2
/// and only the Python client is checked against them.
pub fn doc_io_drivers() -> Vec<Named> {
    vec![named(0, "io_uring"), named(1, "polling")]
}

/// Object kinds the `create` decoder accepts, named as in `list` replies.
fn object_kinds() -> Vec<Named> {
    (0..=u8::MAX)
        .filter_map(|n| {
            let mut body = vec![n];
            body.extend_from_slice(&0u64.to_le_bytes());
            body.extend_from_slice(&[1, 0, b'x']);
            Create::decode(&body).ok()
        })
        .map(|c| {
            let name = format!("{:?}", c.object_kind).to_lowercase();
            named(c.object_kind as u64, &name)
        })
        .collect()
}

fn hello(name: &str, side: Side, fields: Value, doc: Option<&str>) -> HelloCase {
    let mut case = HelloCase {
        name: name.into(),
        side,
        fields,
        hex: String::new(),
        doc: doc.map(Into::into),
    };
    case.hex = to_hex(&encode_hello(&case));
    case
}

fn hello_cases() -> Vec<HelloCase> {
    let server = |status, arena_len: u64, map_align, memory_kind, io_driver, fd_count| {
        json!({"version": 1, "status": status, "arena_len": arena_len, "map_align": map_align,
               "memory_kind": memory_kind, "io_driver": io_driver, "fd_count": fd_count})
    };
    vec![
        hello(
            "client hello, reader",
            Side::Client,
            json!({"version": 1, "flags": 0}),
            Some(DOC_CLIENT_HELLO),
        ),
        hello(
            "client hello, writer",
            Side::Client,
            json!({"version": 1, "flags": 1}),
            None,
        ),
        hello(
            "server hello, reader: 2 GiB of 4k pages, io_uring, 1 fd",
            Side::Server,
            server(0, 2 << 30, 4096, 2, 0, 1),
            Some(DOC_SERVER_HELLO),
        ),
        hello(
            "server hello, writer: 1 GiB of hugetlb, polling, 2 fds",
            Side::Server,
            server(0, 1 << 30, 2 << 20, 0, 1, 2),
            None,
        ),
        // A refusal carries the arena fields like any hello (the server fills
        // them in), but no descriptors; only magic, version and status count.
        hello(
            "server hello, refused: too many connections",
            Side::Server,
            server(3, 2 << 30, 4096, 1, 0, 0),
            None,
        ),
    ]
}

/// A frame case without its header length and hex, which `finish` computes.
fn frame(
    name: &str,
    role: Role,
    request: Option<&str>,
    (request_id, flags): (u64, u16),
    body: Value,
) -> FrameCase {
    let (fields, json) = match request {
        Some("list" | "stats" | "ingest") if role == Role::Reply => (None, Some(body)),
        _ => (Some(body), None),
    };
    let mut case = FrameCase {
        name: name.into(),
        role,
        request: request.map(Into::into),
        header: HeaderFields {
            len: 0,
            request_id,
            kind: 0,
            flags,
        },
        fields,
        json,
        hex: String::new(),
        doc: None,
    };
    case.header.kind = expected_kind(&case);
    let bytes = encode_frame(&case);
    case.header.len = (bytes.len() - HEADER_LEN) as u32;
    case.hex = to_hex(&bytes);
    case
}

fn request(name: &str, kind: &str, id: u64, fields: Value) -> FrameCase {
    frame(name, Role::Request, Some(kind), (id, 0), fields)
}

fn reply(name: &str, kind: &str, id: u64, body: Value) -> FrameCase {
    frame(name, Role::Reply, Some(kind), (id, 0), body)
}

fn with_doc(mut case: FrameCase, doc: &str) -> FrameCase {
    case.doc = Some(doc.into());
    case
}

/// `get`'s view of "sales": 10 M rows in 1040000000 bytes at 1 GiB.
const SALES_OFFSET: u64 = 1 << 30;
const SALES_BYTES: u64 = 1_040_000_000;
/// SALES_BYTES rounded up to 4 KiB.
const SALES_CAPACITY: u64 = 1_040_003_072;
/// An id with a different value in every byte, to pin the byte order.
const ID_ALL_BYTES: u64 = 0x0102_0304_0506_0708;

fn frame_cases() -> Vec<FrameCase> {
    let mut cases = vec![
        with_doc(request("ping", "ping", 7, json!({})), DOC_PING),
        with_doc(reply("ping reply (pong)", "ping", 7, json!({})), DOC_PONG),
    ];
    cases.extend(put_cases());
    cases.extend(read_cases());
    cases.extend(admin_cases());
    cases.extend(ingest_cases());
    cases.extend(publish_cases());
    cases.extend(error_cases());
    cases
}

fn put_cases() -> Vec<FrameCase> {
    vec![
        request(
            "create a table",
            "create",
            1,
            json!({"object_kind": 0, "size": SALES_BYTES, "name": "sales"}),
        ),
        reply(
            "create reply",
            "create",
            1,
            json!({"object_id": 7, "offset": SALES_OFFSET, "capacity": SALES_CAPACITY}),
        ),
        request(
            "create a bytes object with a non-ASCII name",
            "create",
            2,
            json!({"object_kind": 1, "size": 5, "name": "café/blob"}),
        ),
        request(
            "seal",
            "seal",
            3,
            json!({"object_id": 7, "length": SALES_BYTES}),
        ),
        reply(
            "seal reply",
            "seal",
            3,
            json!({"version": 3, "rows": 10_000_000}),
        ),
        request("abort", "abort", 4, json!({"object_id": 8})),
        reply("abort reply", "abort", 4, json!({})),
    ]
}

fn read_cases() -> Vec<FrameCase> {
    vec![
        request("get", "get", 5, json!({"name": "sales"})),
        reply(
            "get reply",
            "get",
            5,
            json!({"object_id": 7, "version": 3, "offset": SALES_OFFSET,
                   "length": SALES_BYTES, "rows": 10_000_000, "object_kind": 0}),
        ),
        request("release", "release", 6, json!({"object_id": 7})),
        reply("release reply", "release", 6, json!({})),
        frame(
            "release with NO_REPLY (the server sends nothing back)",
            Role::Request,
            Some("release"),
            (ID_ALL_BYTES, frame::FLAG_NO_REPLY),
            json!({"object_id": 7}),
        ),
        request(
            "wait",
            "wait",
            8,
            json!({"after": 3, "timeout_ms": 5000, "name": "sales"}),
        ),
        reply("wait reply", "wait", 8, json!({"version": 4})),
    ]
}

/// The JSON bodies are the examples of PROTOCOL.md section 4.
fn admin_cases() -> Vec<FrameCase> {
    let entry = json!({"name": "sales", "object_id": 7, "version": 3, "kind": "table",
        "rows": 10_000_000, "bytes": SALES_BYTES, "shared_bytes": 0, "retained": [], "leases": 2,
        "idle_ms": 1520});
    let stats = json!({"memory_kind": "hugetlb", "io_driver": "io_uring", "threads": 2,
        "arena_bytes": 2147483648u64, "used_bytes": 4096, "free_bytes": 2147479552u64,
        "held_bytes": 0, "pending_bytes": 0, "largest_free_bytes": 2120220672u64,
        "objects": 0, "names": 0, "leases": 0, "connections": 1, "evictions": 0,
        "puts": 0, "gets": 0});
    vec![
        request("delete", "delete", 9, json!({"name": "sales"})),
        reply("delete reply", "delete", 9, json!({})),
        request("list", "list", 10, json!({})),
        reply("list reply", "list", 10, json!([entry])),
        request("stats", "stats", 11, json!({})),
        reply("stats reply", "stats", 11, stats),
    ]
}

fn ingest_cases() -> Vec<FrameCase> {
    let reply_body = json!({"version": 1, "rows": 10_000_000, "bytes": SALES_BYTES,
        "parquet_bytes": 310_000_000, "files": 1, "read_ms": 120.5, "decode_ms": 800.1,
        "write_ms": 90.2, "total_ms": 1010.8, "reader": "io_uring/buffered"});
    vec![
        request(
            "ingest three columns",
            "ingest",
            ID_ALL_BYTES,
            json!({"name": "trips", "path": "/data/trips/2024.parquet",
                   "columns": ["fare", "distance", "zone"]}),
        ),
        request(
            "ingest all columns (column_count 0)",
            "ingest",
            12,
            json!({"name": "trips", "path": "/data/trips", "columns": []}),
        ),
        reply("ingest reply", "ingest", ID_ALL_BYTES, reply_body),
    ]
}

fn publish_cases() -> Vec<FrameCase> {
    vec![
        request(
            "publish a draft",
            "publish",
            14,
            json!({"if_version": null, "draft_id": 9, "draft_len": 1200, "name": "sales"}),
        ),
        request(
            "publish only over version 3",
            "publish",
            ID_ALL_BYTES,
            json!({"if_version": 3, "draft_id": 9, "draft_len": 1200, "name": "sales"}),
        ),
        request(
            "get version 3",
            "get_version",
            15,
            json!({"version": 3, "name": "sales"}),
        ),
        reply(
            "get_version reply",
            "get_version",
            15,
            json!({"object_id": 7, "version": 3, "offset": 0, "length": SALES_OFFSET + 4096,
                   "rows": 10_000_000, "object_kind": 0}),
        ),
        reply(
            "publish reply",
            "publish",
            14,
            json!({"version": 4, "rows": 10_000_000}),
        ),
    ]
}

fn error_cases() -> Vec<FrameCase> {
    let error = |name: &str, request: &str, id, code: ErrorCode, message: &str| {
        frame(
            name,
            Role::Error,
            Some(request),
            (id, 0),
            json!({"code": code as u16, "message": message}),
        )
    };
    vec![
        error(
            "error reply: get of a deleted name",
            "get",
            13,
            ErrorCode::NotFound,
            "no object named \"sales\" (never put, deleted, or evicted)",
        ),
        error(
            "error reply: create on a read-only connection",
            "create",
            14,
            ErrorCode::ReadOnly,
            "create needs a connection opened with write access",
        ),
        frame("shutdown notice", Role::Shutdown, None, (0, 0), json!({})),
    ]
}
