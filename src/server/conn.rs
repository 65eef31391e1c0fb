//! One client connection on a core: handshake, then a loop that reads frames,
//! hands decoded requests to `requests`, and writes the replies back in order.

use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::time::Duration;

use compio::buf::BufResult;
use compio::io::{AsyncReadExt, AsyncWriteExt};
use compio::net::UnixStream;

use crate::protocol::frame::{write_frame, FrameError, Header, FLAG_NO_REPLY, REQUEST_BODY_MAX};
use crate::protocol::handshake::{
    ClientHello, ServerHello, CLIENT_HELLO_LEN, FLAG_WRITE, PROTOCOL_VERSION,
    STATUS_ACCESS_REFUSED, STATUS_OK, STATUS_TOO_MANY_CONNECTIONS, STATUS_WRITE_REFUSED,
};
use crate::protocol::{ErrorCode, ErrorReply, Kind, Request};
use crate::store::ConnId;

use super::peers::Allowed;
use super::requests::{handle, write_error, Access, Ctx};
use super::shared::Shared;

/// Bytes asked of the socket per read. Requests are small; pipelined bursts fit.
const READ_CHUNK: usize = 64 * 1024;
/// A client must send its hello within this time. Clients send it right after
/// connecting, so this only bounds how long a silent socket holds a slot.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a refused connection's hello is waited for before closing.
const REFUSAL_READ_TIMEOUT: Duration = Duration::from_millis(500);

/// Unregisters the connection when its task ends, however it ends (even by
/// panic), so leases and unsealed creates never outlive it.
struct Registration<'a> {
    shared: &'a Shared,
    conn: ConnId,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.shared.unregister(self.conn);
    }
}

/// Serves one connection until the client closes it, sends something that
/// cannot be framed, or the server shuts down.
///
/// Until its hello arrives, a connection counts only against the bound of
/// handshakes in progress (`HANDSHAKES_MAX`), not against `--max-connections`,
/// and has `HANDSHAKE_TIMEOUT` to send it: sockets that connect and never
/// finish the handshake cannot keep real clients out.
pub async fn serve(mut stream: UnixStream, shared: Arc<Shared>) {
    let Some(client) = read_hello(&mut stream, &shared).await else {
        return;
    };
    let Some(conn) = shared.register(stream.as_raw_fd()) else {
        refuse(&stream, &shared, STATUS_TOO_MANY_CONNECTIONS);
        return;
    };
    let _registration = Registration {
        shared: &shared,
        conn,
    };
    let Ok(access) = answer_hello(&stream, &shared, client) else {
        return;
    };
    let mut inbuf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    loop {
        if inbuf.capacity() - inbuf.len() < READ_CHUNK / 2 {
            inbuf.reserve(READ_CHUNK);
        }
        let BufResult(res, buf) = stream.append(inbuf).await;
        inbuf = buf;
        match res {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let (consumed, fatal) = process(&shared, conn, access, &inbuf, &mut out).await;
        inbuf.drain(..consumed);
        if !out.is_empty() {
            let BufResult(res, buf) = stream.write_all(out).await;
            out = buf;
            out.clear();
            if res.is_err() {
                return;
            }
        }
        if fatal {
            return;
        }
    }
    if shared
        .shutting_down
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        let mut notice = Vec::with_capacity(16);
        write_frame(&mut notice, 0, Kind::Shutdown as u16, 0, |_| {});
        let _ = stream.write_all(notice).await;
    }
}

/// Handles every complete frame in `inbuf`. Returns the bytes consumed and
/// whether the connection must close (a frame that cannot be skipped).
async fn process(
    shared: &Arc<Shared>,
    conn: ConnId,
    access: Access,
    inbuf: &[u8],
    out: &mut Vec<u8>,
) -> (usize, bool) {
    let mut pos = 0;
    loop {
        let header = match Header::parse(&inbuf[pos..], REQUEST_BODY_MAX) {
            Ok(h) => h,
            Err(FrameError::Incomplete) => return (pos, false),
            Err(e) => {
                // The body cannot be skipped safely (it may be huge or the length a
                // lie): report and close. The request id is still readable.
                let request_id = crate::protocol::frame::request_id_of(&inbuf[pos..]);
                write_error(
                    out,
                    request_id,
                    &ErrorReply::new(ErrorCode::Malformed, format!("{e}; closing")),
                );
                return (inbuf.len(), true);
            }
        };
        if inbuf.len() - pos < header.frame_len() {
            return (pos, false);
        }
        let body = &inbuf[pos + crate::protocol::HEADER_LEN..pos + header.frame_len()];
        match Request::decode(header.kind, body) {
            Ok(req) => {
                let ctx = Ctx {
                    shared,
                    conn,
                    access,
                };
                handle(&ctx, header.request_id, header.flags, req, out).await
            }
            // A release sent with NO_REPLY gets nothing back, not even an error:
            // its sender does not wait for a reply, so one would put it out of step.
            Err(_) if header.kind == Kind::Release as u16 && header.flags & FLAG_NO_REPLY != 0 => {}
            Err(e) => {
                let code = match e {
                    FrameError::UnknownKind(_) => ErrorCode::UnknownKind,
                    _ => ErrorCode::Malformed,
                };
                write_error(
                    out,
                    header.request_id,
                    &ErrorReply::new(code, e.to_string()),
                );
            }
        }
        pos += header.frame_len();
    }
}

/// Reads and checks the client hello, within `HANDSHAKE_TIMEOUT` and only
/// while fewer than `HANDSHAKES_MAX` handshakes are in progress. `None` when
/// the connection must close (refused, silent, or gone).
async fn read_hello(stream: &mut UnixStream, shared: &Shared) -> Option<ClientHello> {
    let slot = shared.begin_handshake();
    let timeout = if slot.is_some() {
        HANDSHAKE_TIMEOUT
    } else {
        // Read the hello briefly anyway, so that closing does not discard unread
        // bytes and reset the connection before the client has read why it was
        // refused.
        REFUSAL_READ_TIMEOUT
    };
    let read = compio::time::timeout(
        timeout,
        stream.read_exact(Vec::with_capacity(CLIENT_HELLO_LEN)),
    )
    .await;
    let Ok(BufResult(Ok(()), hello)) = read else {
        return None;
    };
    if slot.is_none() {
        refuse(stream, shared, STATUS_TOO_MANY_CONNECTIONS);
        return None;
    }
    let hello: [u8; CLIENT_HELLO_LEN] = hello.try_into().ok()?;
    match ClientHello::decode(&hello) {
        Ok(c) => Some(c),
        Err(status) => {
            refuse(stream, shared, status);
            None
        }
    }
}

/// Answers a hello with the arena descriptors (the writable one only to a
/// client that asked for write access).
fn answer_hello(stream: &UnixStream, shared: &Shared, client: ClientHello) -> Result<Access, ()> {
    let writer = client.flags & FLAG_WRITE != 0;
    if shared.groups.is_set() {
        // `--writers-group` / `--readers-group`: the peer's credentials decide.
        let allowed = match crate::sys::peer_user_and_groups(stream.as_fd()) {
            Ok((uid, groups)) => {
                let a = shared.groups.allowed(uid, &groups, shared.owner_uid);
                if a == Allowed::Nothing || (writer && a == Allowed::Read) {
                    eprintln!("arrowpoold: {}", shared.groups.refusal(uid, writer));
                }
                a
            }
            Err(e) => {
                eprintln!("arrowpoold: cannot read a connecting peer's credentials: {e}");
                Allowed::Nothing
            }
        };
        match allowed {
            Allowed::Nothing => {
                refuse(stream, shared, STATUS_ACCESS_REFUSED);
                return Err(());
            }
            Allowed::Read if writer => {
                refuse(stream, shared, STATUS_WRITE_REFUSED);
                return Err(());
            }
            _ => {}
        }
    }
    let reply = server_hello(shared, STATUS_OK, if writer { 2 } else { 1 });
    let ro = shared.pool.arena.read_only_fd();
    let rw = shared.pool.arena.fd();
    let fds = if writer { vec![ro, rw] } else { vec![ro] };
    // The socket is fresh and its send buffer empty, so 32 bytes go out at once.
    match crate::sys::send_with_fds(stream.as_fd(), &reply, &fds) {
        Ok(n) if n == reply.len() && writer => Ok(Access::Write),
        Ok(n) if n == reply.len() => Ok(Access::Read),
        _ => Err(()),
    }
}

fn server_hello(
    shared: &Shared,
    status: u16,
    fd_count: u8,
) -> [u8; crate::protocol::handshake::SERVER_HELLO_LEN] {
    ServerHello {
        version: PROTOCOL_VERSION,
        status,
        arena_len: shared.pool.arena.len(),
        map_align: shared.pool.arena.kind().page_bytes() as u32,
        memory_kind: shared.pool.arena.kind() as u8,
        io_driver: shared.io_driver as u8,
        fd_count,
    }
    .encode()
}

/// Answers a hello with a failure status and no descriptors.
fn refuse(stream: &UnixStream, shared: &Shared, status: u16) {
    let reply = server_hello(shared, status, 0);
    let _ = crate::sys::send_with_fds(stream.as_fd(), &reply, &[]);
}
