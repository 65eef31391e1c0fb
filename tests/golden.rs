//! Golden frames: tests/fixtures/protocol.json against the Rust protocol code
//! and against docs/PROTOCOL.md. No server.
//!
//! Every fixture frame is decoded and compared with its fields, and its fields
//! are encoded and compared with its bytes. The fixture's constants must equal
//! the Rust ones, and every byte and JSON example and every kind and error code
//! table row of PROTOCOL.md must appear in the fixture, so none of the three
//! can drift alone. python/tests/test_golden.py holds the Python client to the
//! same file.
//!
//! The fixture is the source of truth. After a deliberate protocol change,
//! rewrite it with `cargo test --test golden -- --ignored regenerate` and review
//! the diff.

#[path = "golden/cases.rs"]
mod cases;
#[path = "golden/doc.rs"]
mod doc;
#[path = "golden/fixture.rs"]
mod fixture;

use std::path::PathBuf;

use arrowpool::protocol::frame::{REPLY_BODY_MAX, REQUEST_BODY_MAX};
use arrowpool::protocol::handshake::{
    ClientHello, ServerHello, CLIENT_HELLO_LEN, SERVER_HELLO_LEN, SERVER_RESERVED_OFFSET,
};
use arrowpool::protocol::{ErrorReply, Header, Kind, Request, HEADER_LEN, REPLY_BIT};
use fixture::*;
use serde_json::Value;

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn load() -> Fixture {
    let path = repo_file("tests/fixtures/protocol.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn protocol_md() -> String {
    std::fs::read_to_string(repo_file("docs/PROTOCOL.md")).expect("docs/PROTOCOL.md")
}

#[test]
#[ignore = "rewrites the fixture: cargo test --test golden -- --ignored regenerate"]
fn regenerate() {
    let text = serde_json::to_string_pretty(&cases::fixture()).expect("fixture serializes");
    std::fs::write(repo_file("tests/fixtures/protocol.json"), text + "\n").expect("write fixture");
}

#[test]
fn frames_decode_to_their_fields() {
    for case in load().frames {
        let bytes = from_hex(&case.hex);
        let max = match case.role {
            Role::Request => REQUEST_BODY_MAX,
            _ => REPLY_BODY_MAX,
        };
        let header = Header::parse(&bytes, max).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_eq!(
            HeaderFields::from(header),
            case.header,
            "{}: header",
            case.name
        );
        assert_eq!(
            header.frame_len(),
            bytes.len(),
            "{}: frame length",
            case.name
        );
        assert_eq!(header.kind, expected_kind(&case), "{}: kind", case.name);
        check_body(&case, header, &bytes[HEADER_LEN..]);
    }
}

fn check_body(case: &FrameCase, header: Header, body: &[u8]) {
    let name = &case.name;
    match case.role {
        Role::Request => {
            let decoded = Request::decode(header.kind, body);
            assert_eq!(decoded, Ok(case_request(case)), "{name}");
        }
        Role::Reply => {
            let kind = kind_named(case.request.as_deref().expect("reply names its request"));
            assert_eq!(decode_reply(kind, body), Ok(case_reply(case)), "{name}");
            // Typed decoding ignores unknown JSON keys; the raw value does not.
            if let Some(json) = &case.json {
                let raw: Value = serde_json::from_slice(body).expect("JSON body");
                assert_eq!(&raw, json, "{name}: JSON body");
            }
        }
        Role::Error => assert_eq!(ErrorReply::decode(body), Ok(case_error(case)), "{name}"),
        Role::Shutdown => {
            assert!(body.is_empty(), "{name}: shutdown has no body");
            assert_eq!(header.request_id, 0, "{name}: shutdown uses request id 0");
        }
    }
}

#[test]
fn fields_encode_to_their_frames() {
    for case in load().frames {
        assert_eq!(to_hex(&encode_frame(&case)), case.hex, "{}", case.name);
    }
}

#[test]
fn hellos_decode_and_encode() {
    for case in load().handshakes {
        let bytes = from_hex(&case.hex);
        let name = &case.name;
        match case.side {
            Side::Client => {
                let b: &[u8; CLIENT_HELLO_LEN] = bytes[..].try_into().expect("8-byte hello");
                assert_eq!(
                    ClientHello::decode(b),
                    Ok(client_hello(&case.fields)),
                    "{name}"
                );
            }
            Side::Server => {
                let b: &[u8; SERVER_HELLO_LEN] = bytes[..].try_into().expect("32-byte hello");
                assert_eq!(
                    ServerHello::decode(b),
                    Some(server_hello(&case.fields)),
                    "{name}"
                );
                let reserved = &b[SERVER_RESERVED_OFFSET..];
                assert!(reserved.iter().all(|&x| x == 0), "{name}: reserved bytes");
            }
        }
        assert_eq!(to_hex(&encode_hello(&case)), case.hex, "{name}: encoding");
    }
}

/// The brief of the fixture: every request kind, both ways, and the error path.
#[test]
fn fixture_covers_every_kind() {
    let fixture = load();
    let kinds_with = |role: Role| {
        let mut k: Vec<String> = fixture
            .frames
            .iter()
            .filter(|c| c.role == role)
            .filter_map(|c| c.request.clone())
            .collect();
        k.sort();
        k.dedup();
        k
    };
    let mut all: Vec<String> = (0..=u16::MAX)
        .filter_map(Kind::request_from_u16)
        .map(|k| k.name().to_owned())
        .collect();
    all.sort();
    assert_eq!(kinds_with(Role::Request), all, "a request of every kind");
    assert_eq!(kinds_with(Role::Reply), all, "a reply to every kind");
    assert!(!kinds_with(Role::Error).is_empty(), "an error reply");
    let sides: Vec<Side> = fixture.handshakes.iter().map(|h| h.side).collect();
    assert!(sides.contains(&Side::Client) && sides.contains(&Side::Server));
}

#[test]
fn constants_match_rust() {
    let fixture = load().constants;
    let rust = cases::rust_constants();
    assert_eq!(fixture.frame, rust.frame, "frame constants");
    assert_eq!(fixture.limits, rust.limits, "limits");
    assert_eq!(fixture.handshake, rust.handshake, "handshake constants");
    assert_eq!(fixture.kinds, rust.kinds, "kinds");
    assert_eq!(fixture.error_codes, rust.error_codes, "error codes");
    assert_eq!(fixture.memory_kinds, rust.memory_kinds, "memory kinds");
    assert_eq!(fixture.object_kinds, rust.object_kinds, "object kinds");
    assert_eq!(fixture.io_drivers, cases::doc_io_drivers(), "io drivers");
}

/// Each fixture `doc` string is in PROTOCOL.md and spells the fixture's bytes;
/// each byte example of PROTOCOL.md is one of them.
#[test]
fn doc_byte_examples_are_in_the_fixture() {
    let md = protocol_md();
    let fixture = load();
    let documented: Vec<(&str, &str, &str)> = fixture
        .handshakes
        .iter()
        .filter_map(|h| Some((h.name.as_str(), h.doc.as_deref()?, h.hex.as_str())))
        .chain(
            fixture
                .frames
                .iter()
                .filter_map(|f| Some((f.name.as_str(), f.doc.as_deref()?, f.hex.as_str()))),
        )
        .collect();
    for (name, text, hex) in &documented {
        assert!(md.contains(text), "{name}: {text:?} is not in PROTOCOL.md");
        assert_eq!(to_hex(&doc::doc_bytes(text)), *hex, "{name}: doc bytes");
    }
    let examples = doc::byte_examples(&md);
    for example in &examples {
        let hex = to_hex(&example.bytes);
        assert!(
            documented.iter().any(|(_, _, h)| *h == hex),
            "PROTOCOL.md example {:?} ({hex}) is not a fixture frame with a doc string",
            example.text
        );
    }
    assert_eq!(
        examples.len(),
        documented.len(),
        "doc examples vs fixture doc strings"
    );
}

/// The JSON examples of PROTOCOL.md are the fixture's JSON replies (a list
/// reply's elements count one by one), and the other way round.
#[test]
fn doc_json_examples_are_in_the_fixture() {
    let doc_values = doc::json_examples(&protocol_md());
    let mut fixture_values = Vec::new();
    for case in load().frames {
        match case.json {
            Some(Value::Array(items)) => fixture_values.extend(items),
            Some(v) => fixture_values.push(v),
            None => {}
        }
    }
    for v in &doc_values {
        assert!(
            fixture_values.contains(v),
            "PROTOCOL.md JSON example not in the fixture: {v}"
        );
    }
    for v in &fixture_values {
        assert!(
            doc_values.contains(v),
            "fixture JSON reply not in PROTOCOL.md: {v}"
        );
    }
}

/// The request table (section 4) and the error table (section 5).
#[test]
fn doc_tables_match_the_fixture() {
    let md = protocol_md();
    let constants = load().constants;
    let pairs = |named: &[Named]| -> Vec<(u64, String)> {
        named.iter().map(|n| (n.value, n.name.clone())).collect()
    };
    // Shutdown and error are server-only kinds, numbered above REPLY_BIT.
    let requests: Vec<Named> = constants
        .kinds
        .into_iter()
        .filter(|k| k.value < u64::from(REPLY_BIT))
        .collect();
    assert_eq!(
        doc::numbered_rows(&md, "Requests"),
        pairs(&requests),
        "section 4"
    );
    assert_eq!(
        doc::numbered_rows(&md, "Errors"),
        pairs(&constants.error_codes),
        "section 5"
    );
}

/// The doc reader on a made-up document: it must find examples with and
/// without a direction, expand `00*N`, stop at the comment, and skip diagrams.
#[test]
fn doc_reader_understands_the_notation() {
    let md = "text\n```text\n 0        4\n | len    | id |\n\
        C->S  01 02 03 04 | 05      first\n\
        aa bb cc dd ee*2\n\
        ab cd ef\n```\n```json\n{\"a\": 1}\n```\n";
    let examples = doc::byte_examples(md);
    let hex: Vec<String> = examples.iter().map(|e| to_hex(&e.bytes)).collect();
    assert_eq!(hex, ["0102030405", "aabbccddeeee"]);
    assert_eq!(examples[0].text, "01 02 03 04 | 05");
    assert_eq!(doc::json_examples(md), [serde_json::json!({"a": 1})]);
}

#[path = "golden/properties.rs"]
mod properties;
