//! Property tests: every decoder fails cleanly (never panics) on any input,
//! and valid values survive encode -> decode.
use super::fixture::{decode_reply, encode_reply, encode_request, Reply};
use arrowpool::protocol::create::{Create, Created};
use arrowpool::protocol::frame::{write_frame, FrameError, REQUEST_BODY_MAX};
use arrowpool::protocol::get::{Get, Located};
use arrowpool::protocol::handshake::{
    ClientHello, ServerHello, CLIENT_HELLO_LEN, SERVER_HELLO_LEN,
};
use arrowpool::protocol::ingest::Ingest;
use arrowpool::protocol::seal::{Seal, Sealed};
use arrowpool::protocol::wait::{Version, Wait, TIMEOUT_MS_MAX};
use arrowpool::protocol::{
    abort::Abort, delete::Delete, list::List, ping::Ping, release::Release, stats::Stats,
};
use arrowpool::protocol::{ErrorCode, ErrorReply, Header, Kind, ObjectKind, Request};
use arrowpool::protocol::{HEADER_LEN, NAME_MAX, PATH_MAX};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

/// Every request kind and both neighbours; the tests add random kinds.
const KINDS: std::ops::RangeInclusive<u16> = 0..=12;

/// Valid names: 1..=NAME_MAX bytes, no control characters (multi-byte
/// characters included, and the exact maximum).
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[^\\p{Cc}]{1,40}".prop_filter("fits NAME_MAX", |s| s.len() <= NAME_MAX),
        Just("n".repeat(NAME_MAX)),
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![".{1,64}", Just("/".repeat(PATH_MAX))]
}

fn object_kind() -> impl Strategy<Value = ObjectKind> {
    prop_oneof![Just(ObjectKind::Table), Just(ObjectKind::Bytes)]
}

fn valid_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        Just(Request::Ping(Ping)),
        (object_kind(), any::<u64>(), name()).prop_map(|(object_kind, size, name)| {
            Request::Create(Create {
                object_kind,
                size,
                name,
            })
        }),
        (any::<u64>(), any::<u64>())
            .prop_map(|(object_id, length)| Request::Seal(Seal { object_id, length })),
        any::<u64>().prop_map(|object_id| Request::Abort(Abort { object_id })),
        name().prop_map(|name| Request::Get(Get { name })),
        any::<u64>().prop_map(|object_id| Request::Release(Release { object_id })),
        name().prop_map(|name| Request::Delete(Delete { name })),
        Just(Request::List(List)),
        Just(Request::Stats(Stats)),
        (any::<u64>(), 0..=TIMEOUT_MS_MAX, name()).prop_map(|(after, timeout_ms, name)| {
            Request::Wait(Wait {
                after,
                timeout_ms,
                name,
            })
        }),
        (
            name(),
            path(),
            vec(".{0,16}", 0..8),
            vec(("[a-z_]{1,24}", ".{0,40}"), 0..4)
        )
            .prop_map(|(name, path, columns, options)| {
                Request::Ingest(Ingest {
                    name,
                    path,
                    columns,
                    options,
                })
            }),
    ]
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    (1u16..=12).prop_map(ErrorCode::from_u16)
}

fn valid_reply() -> impl Strategy<Value = (Kind, Reply)> {
    let u = any::<u64>;
    prop_oneof![
        Just((Kind::Ping, Reply::Empty)),
        (u(), u(), u()).prop_map(|(object_id, offset, capacity)| {
            (
                Kind::Create,
                Reply::Created(Created {
                    object_id,
                    offset,
                    capacity,
                }),
            )
        }),
        (u(), u())
            .prop_map(|(version, rows)| (Kind::Seal, Reply::Sealed(Sealed { version, rows }))),
        (u(), u(), u(), u(), u(), object_kind()).prop_map(|(a, b, c, d, e, k)| {
            let located = Located {
                object_id: a,
                version: b,
                offset: c,
                length: d,
                rows: e,
                object_kind: k,
            };
            (Kind::Get, Reply::Located(located))
        }),
        u().prop_map(|version| (Kind::Wait, Reply::Version(Version { version }))),
    ]
}

/// Runs every decoder over `bytes`; they may fail but must not panic. What
/// they accept must be canonical: it encodes back to exactly `bytes` (JSON
/// bodies aside, whose spacing is free).
fn decode_everything(bytes: &[u8]) -> Result<(), TestCaseError> {
    for kind in KINDS {
        let decoded = Request::decode(kind, bytes);
        let Some(kind) = Kind::request_from_u16(kind) else {
            prop_assert_eq!(decoded, Err(FrameError::UnknownKind(kind)));
            continue;
        };
        if let Ok(req) = decoded {
            prop_assert_eq!(&frame_of(&req, 1)[HEADER_LEN..], bytes);
        }
        match decode_reply(kind, bytes) {
            Ok(Reply::List(_) | Reply::Stats(_) | Reply::Ingest(_)) | Err(_) => {}
            Ok(reply) => {
                let mut again = Vec::new();
                encode_reply(&reply, &mut again);
                prop_assert_eq!(again, bytes);
            }
        }
    }
    if let Ok(header) = Header::parse(bytes, REQUEST_BODY_MAX) {
        prop_assert!(header.len as usize <= REQUEST_BODY_MAX);
    }
    let _ = Header::parse(bytes, usize::MAX);
    let _ = Created::decode(bytes);
    let _ = Sealed::decode(bytes);
    let _ = Located::decode(bytes);
    let _ = Version::decode(bytes);
    let _ = ErrorReply::decode(bytes);
    if let Some(b) = bytes.first_chunk::<CLIENT_HELLO_LEN>() {
        let _ = ClientHello::decode(b);
    }
    if let Some(b) = bytes.first_chunk::<SERVER_HELLO_LEN>() {
        let _ = ServerHello::decode(b);
    }
    Ok(())
}

fn frame_of(req: &Request, request_id: u64) -> Vec<u8> {
    let mut out = Vec::new();
    write_frame(&mut out, request_id, req.kind() as u16, 0, |b| {
        encode_request(req, b)
    });
    out
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..300), kind in any::<u16>()) {
        decode_everything(&bytes)?;
        let decoded = Request::decode(kind, &bytes);
        if Kind::request_from_u16(kind).is_none() {
            prop_assert_eq!(decoded, Err(FrameError::UnknownKind(kind)));
        }
    }

    /// Random bytes rarely get past a string length; edited valid bodies do.
    #[test]
    fn edited_valid_bodies_never_panic(
        req in valid_request(),
        edits in vec((any::<Index>(), any::<u8>()), 0..4),
        cut in any::<Index>(),
    ) {
        let mut body = frame_of(&req, 1).split_off(HEADER_LEN);
        if !body.is_empty() {
            for (at, value) in edits {
                let i = at.index(body.len());
                body[i] = value;
            }
        }
        let cut = cut.index(body.len() + 1);
        decode_everything(&body[..cut])?;
        decode_everything(&body)?;
    }

    #[test]
    fn valid_requests_round_trip(req in valid_request(), request_id in any::<u64>()) {
        let frame = frame_of(&req, request_id);
        let header = Header::parse(&frame, REQUEST_BODY_MAX).expect("request fits");
        prop_assert_eq!(header.frame_len(), frame.len());
        prop_assert_eq!(header.request_id, request_id);
        prop_assert_eq!(Request::decode(header.kind, &frame[HEADER_LEN..]), Ok(req));
    }

    #[test]
    fn valid_replies_round_trip((kind, reply) in valid_reply()) {
        let mut body = Vec::new();
        encode_reply(&reply, &mut body);
        prop_assert_eq!(decode_reply(kind, &body), Ok(reply));
    }

    #[test]
    fn error_replies_round_trip(code in error_code(), message in ".{0,200}") {
        let reply = ErrorReply::new(code, message);
        let mut body = Vec::new();
        reply.encode(&mut body);
        prop_assert_eq!(ErrorReply::decode(&body), Ok(reply));
    }
}
