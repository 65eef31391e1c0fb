//! Bad input: every malformed thing a client can send gets an error reply or a
//! closed connection; the server keeps serving and loses nothing stored.
mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;

use common::{error_code, frame, pstr, raw_connect, read_reply, table, Server};

const ERROR_KIND: u16 = 0xFFFF;
const MALFORMED: u16 = 1;
const UNKNOWN_KIND: u16 = 2;
const INVALID_OBJECT: u16 = 5;
const INVALID_DATA: u16 = 7;
const READ_ONLY: u16 = 12;

/// A server holding one table, "keep", which every test checks survives.
fn server_with_table() -> (Server, Vec<arrow_array::RecordBatch>) {
    let server = Server::start("64M");
    let (schema, batches) = table(10_000, 2, 0);
    server.client().put("keep", &schema, &batches).unwrap();
    (server, batches)
}

fn assert_intact(server: &Server, batches: &[arrow_array::RecordBatch]) {
    let c = server.client();
    assert_eq!(
        c.get("keep").unwrap().batches,
        batches,
        "stored table lost or changed"
    );
    server.wait_until("no stray pending objects or leases", |s| {
        s.pending_bytes == 0 && s.leases == 0
    });
}

fn ping_ok(s: &mut UnixStream) {
    s.write_all(&frame(77, 1, 0, &[])).unwrap();
    assert_eq!(read_reply(s).unwrap(), (77, 0x8001, vec![]));
}

#[test]
fn truncated_header_then_close() {
    let (server, keep) = server_with_table();
    let mut s = raw_connect(&server);
    s.write_all(&frame(1, 1, 0, &[])[..10]).unwrap();
    drop(s);
    assert_intact(&server, &keep);
}

#[test]
fn truncated_body_then_close() {
    let (server, keep) = server_with_table();
    let mut s = raw_connect(&server);
    let f = frame(1, 5, 0, &pstr(b"keep"));
    s.write_all(&f[..f.len() - 2]).unwrap();
    drop(s);
    assert_intact(&server, &keep);
}

#[test]
fn unknown_kind_gets_error_and_connection_stays_usable() {
    let (server, keep) = server_with_table();
    let mut s = raw_connect(&server);
    s.write_all(&frame(5, 999, 0, b"whatever")).unwrap();
    let (id, kind, body) = read_reply(&mut s).unwrap();
    assert_eq!((id, kind, error_code(&body)), (5, ERROR_KIND, UNKNOWN_KIND));
    ping_ok(&mut s);
    assert_intact(&server, &keep);
}

#[test]
fn length_above_limit_is_rejected_and_closed() {
    let (server, keep) = server_with_table();
    let mut s = raw_connect(&server);
    let mut f = frame(9, 5, 0, &[]);
    f[0..4].copy_from_slice(&(1u32 << 30).to_le_bytes());
    s.write_all(&f).unwrap();
    let (id, kind, body) = read_reply(&mut s).unwrap();
    assert_eq!((id, kind, error_code(&body)), (9, ERROR_KIND, MALFORMED));
    assert!(
        read_reply(&mut s).is_none(),
        "connection closed after an unframeable request"
    );
    assert_intact(&server, &keep);
}

#[test]
fn invalid_utf8_name_is_malformed() {
    let (server, keep) = server_with_table();
    let mut s = raw_connect(&server);
    s.write_all(&frame(3, 5, 0, &pstr(&[0xff, 0xfe, b'a'])))
        .unwrap();
    let (_, kind, body) = read_reply(&mut s).unwrap();
    assert_eq!((kind, error_code(&body)), (ERROR_KIND, MALFORMED));
    ping_ok(&mut s);
    assert_intact(&server, &keep);
}

#[test]
fn over_long_and_empty_names_are_malformed() {
    let (server, keep) = server_with_table();
    let mut s = raw_connect(&server);
    for name in [vec![b'x'; 300], vec![], b"a\nb".to_vec()] {
        s.write_all(&frame(3, 5, 0, &pstr(&name))).unwrap();
        let (_, kind, body) = read_reply(&mut s).unwrap();
        assert_eq!(
            (kind, error_code(&body)),
            (ERROR_KIND, MALFORMED),
            "name {name:?}"
        );
    }
    assert_intact(&server, &keep);
}

#[test]
fn trailing_bytes_and_short_bodies_are_malformed() {
    let (server, keep) = server_with_table();
    let mut s = raw_connect(&server);
    for (kind, body) in [
        (1u16, vec![1u8]),
        (3, vec![1, 2, 3]),
        (2, vec![0, 1, 2]),
        (10, vec![0; 12]),
    ] {
        s.write_all(&frame(4, kind, 0, &body)).unwrap();
        let (_, k, b) = read_reply(&mut s).unwrap();
        assert_eq!((k, error_code(&b)), (ERROR_KIND, MALFORMED), "kind {kind}");
    }
    ping_ok(&mut s);
    assert_intact(&server, &keep);
}

#[test]
fn seal_abort_release_of_unknown_ids() {
    let (server, keep) = server_with_table();
    let mut s = raw_connect(&server);
    let mut seal = 12345u64.to_le_bytes().to_vec();
    seal.extend_from_slice(&10u64.to_le_bytes());
    for (kind, body) in [
        (3u16, seal),
        (4, 12345u64.to_le_bytes().to_vec()),
        (6, 12345u64.to_le_bytes().to_vec()),
    ] {
        s.write_all(&frame(6, kind, 0, &body)).unwrap();
        let (_, k, b) = read_reply(&mut s).unwrap();
        assert_eq!(
            (k, error_code(&b)),
            (ERROR_KIND, INVALID_OBJECT),
            "kind {kind}"
        );
    }
    assert_intact(&server, &keep);
}

#[test]
fn double_release_is_an_error() {
    let (server, keep) = server_with_table();
    let mut s = raw_connect(&server);
    s.write_all(&frame(1, 5, 0, &pstr(b"keep"))).unwrap();
    let (_, kind, body) = read_reply(&mut s).unwrap();
    assert_eq!(kind, 0x8005);
    let id = body[0..8].to_vec();
    s.write_all(&frame(2, 6, 0, &id)).unwrap();
    assert_eq!(read_reply(&mut s).unwrap().1, 0x8006);
    s.write_all(&frame(3, 6, 0, &id)).unwrap();
    let (_, k, b) = read_reply(&mut s).unwrap();
    assert_eq!((k, error_code(&b)), (ERROR_KIND, INVALID_OBJECT));
    assert_intact(&server, &keep);
}

#[test]
fn sealing_garbage_is_invalid_data_and_space_is_returned() {
    let (server, keep) = server_with_table();
    let used = server.client().stats().unwrap().used_bytes;
    let mut s = raw_connect(&server);
    let mut create = vec![0u8]; // table
    create.extend_from_slice(&(1u64 << 20).to_le_bytes());
    create.extend_from_slice(&pstr(b"keep"));
    s.write_all(&frame(1, 2, 0, &create)).unwrap();
    let (_, kind, body) = read_reply(&mut s).unwrap();
    assert_eq!(kind, 0x8002);
    let id = u64::from_le_bytes(body[0..8].try_into().unwrap());
    let capacity = u64::from_le_bytes(body[16..24].try_into().unwrap());
    // Seal longer than the reservation: refused.
    let mut seal = id.to_le_bytes().to_vec();
    seal.extend_from_slice(&(capacity + 1).to_le_bytes());
    s.write_all(&frame(2, 3, 0, &seal)).unwrap();
    let (_, k, b) = read_reply(&mut s).unwrap();
    assert_eq!((k, error_code(&b)), (ERROR_KIND, INVALID_OBJECT));
    // Seal of bytes that are not an IPC file (never written: zeros): refused, aborted.
    let mut seal = id.to_le_bytes().to_vec();
    seal.extend_from_slice(&4096u64.to_le_bytes());
    s.write_all(&frame(3, 3, 0, &seal)).unwrap();
    let (_, k, b) = read_reply(&mut s).unwrap();
    assert_eq!((k, error_code(&b)), (ERROR_KIND, INVALID_DATA));
    assert_eq!(
        server.client().stats().unwrap().used_bytes,
        used,
        "aborted object's space returned"
    );
    assert_intact(&server, &keep);
}

#[test]
fn garbage_before_handshake_is_refused() {
    let (server, keep) = server_with_table();
    let mut s = UnixStream::connect(&server.socket).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut reply = [0u8; 32];
    std::io::Read::read_exact(&mut s, &mut reply).unwrap();
    assert_eq!(&reply[0..4], b"APs1");
    assert_eq!(
        u16::from_le_bytes([reply[6], reply[7]]),
        1,
        "status bad magic"
    );
    assert!(read_reply(&mut s).is_none(), "closed");
    // Wrong version.
    let mut s = UnixStream::connect(&server.socket).unwrap();
    s.write_all(b"APc1\x09\x00\x00\x00").unwrap();
    std::io::Read::read_exact(&mut s, &mut reply).unwrap();
    assert_eq!(
        u16::from_le_bytes([reply[6], reply[7]]),
        2,
        "status bad version"
    );
    assert_intact(&server, &keep);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let (server, keep) = server_with_table();
    let mut s = raw_connect(&server);
    let mut burst = Vec::new();
    for id in 0..200u64 {
        burst.extend_from_slice(&frame(id, if id % 2 == 0 { 1 } else { 999 }, 0, &[]));
    }
    s.write_all(&burst).unwrap();
    for id in 0..200u64 {
        let (rid, kind, _) = read_reply(&mut s).unwrap();
        assert_eq!(rid, id);
        assert_eq!(kind, if id % 2 == 0 { 0x8001 } else { ERROR_KIND });
    }
    assert_intact(&server, &keep);
}

/// Regression (fuzzing): a malformed `release` sent with NO_REPLY got an error
/// reply, putting a pipelining client out of step with its replies.
#[test]
fn malformed_release_with_no_reply_gets_nothing_back() {
    let (server, keep) = server_with_table();
    let mut s = raw_connect(&server);
    for body in [
        vec![],
        vec![1, 2, 3],
        vec![0; 9],
        777u64.to_le_bytes().to_vec(),
    ] {
        s.write_all(&frame(40, 6, 1, &body)).unwrap();
    }
    // The next reply on the stream must be the ping's, not an error for a release.
    s.write_all(&frame(41, 1, 0, &[])).unwrap();
    let (id, kind, _) = read_reply(&mut s).unwrap();
    assert_eq!((id, kind), (41, 0x8001));
    assert_intact(&server, &keep);
}

/// Regression (fuzzing): a connection that did not ask for WRITE created,
/// sealed and deleted objects. Every write request is refused with ReadOnly.
#[test]
fn read_only_connection_cannot_write() {
    let (server, keep) = server_with_table();
    let mut s = common::raw_connect_reader(&server);
    let mut create = vec![1u8]; // bytes object
    create.extend_from_slice(&4096u64.to_le_bytes());
    create.extend_from_slice(&pstr(b"sneaky"));
    let mut seal = 1u64.to_le_bytes().to_vec();
    seal.extend_from_slice(&0u64.to_le_bytes());
    let mut ingest = pstr(b"sneaky");
    ingest.extend_from_slice(&pstr(b"/nonexistent.parquet"));
    ingest.extend_from_slice(&0u16.to_le_bytes());
    for (kind, body) in [
        (2u16, create),
        (3, seal),
        (4, 1u64.to_le_bytes().to_vec()),
        (7, pstr(b"keep")),
        (11, ingest),
    ] {
        s.write_all(&frame(9, kind, 0, &body)).unwrap();
        let (_, k, b) = read_reply(&mut s).unwrap();
        assert_eq!((k, error_code(&b)), (ERROR_KIND, READ_ONLY), "kind {kind}");
        let message = String::from_utf8_lossy(&b[4..]);
        assert!(message.contains("read-only"), "{message}");
    }
    // Reads still work on it, and nothing changed.
    s.write_all(&frame(10, 5, 0, &pstr(b"keep"))).unwrap();
    assert_eq!(read_reply(&mut s).unwrap().1, 0x8005);
    drop(s); // its lease goes with it
    assert_intact(&server, &keep);
}

/// An over-long name or path was silently cut by the encoder (and could be
/// cut inside a UTF-8 character). The client now refuses to send it and says
/// why; the connection stays usable.
#[test]
fn client_refuses_requests_over_the_protocols_limits() {
    let (server, keep) = server_with_table();
    let c = server.client();
    let long_name = "n".repeat(300);
    for e in [
        c.get(&long_name).map(|_| ()).unwrap_err(),
        c.delete("").unwrap_err(),
        c.ingest(&"/p".repeat(3000), "t", &[])
            .map(|_| ())
            .unwrap_err(),
    ] {
        assert!(
            matches!(e, arrowpool::ClientError::InvalidRequest(_)),
            "{e}"
        );
        assert!(e.to_string().starts_with("request not sent"), "{e}");
    }
    c.ping().unwrap();
    assert_intact(&server, &keep);
}
