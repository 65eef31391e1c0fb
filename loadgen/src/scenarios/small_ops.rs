//! Small-operation throughput: several connections, each keeping many requests
//! in flight (pipelining), measuring pings and get+release pairs.
//!
//! The Rust `Client` waits for each reply, so this speaks the protocol itself
//! (docs/PROTOCOL.md): the 8-byte hello, the 32-byte answer (its descriptors
//! are closed unused: nothing is mapped), then frames on a plain UnixStream.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use arrowpool::protocol::frame::{write_frame, Header, HEADER_LEN, REPLY_BODY_MAX};
use arrowpool::protocol::get::{Get, Located};
use arrowpool::protocol::release::Release;
use arrowpool::protocol::{ErrorReply, Kind};
use hdrhistogram::Histogram;

use super::{Gate, Run, MAIN_NAME};
use crate::measure::{histogram, us, TimingSummary};
use crate::results::Throughput;

/// Connections running at once.
pub const CONNECTIONS: usize = 4;
/// Requests (pings) or pairs (get+release) each connection keeps in flight.
pub const IN_FLIGHT: usize = 64;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Op {
    Ping,
    GetRelease,
}

pub fn run(r: &mut Run) -> Result<()> {
    let ping = run_op(r, Op::Ping)?;
    let pairs = run_op(r, Op::GetRelease)?;
    let note = "absolute rate on this machine: not a ratio, so informational";
    r.figure(
        "small_ops.ping_per_s",
        ping.ops_per_s,
        "ops/s",
        Gate::Informational,
        note,
    );
    r.figure(
        "small_ops.get_release_pairs_per_s",
        pairs.ops_per_s,
        "pairs/s",
        Gate::Informational,
        note,
    );
    r.raw.throughput.insert("small_ops_ping".into(), ping);
    r.raw
        .throughput
        .insert("small_ops_get_release".into(), pairs);
    Ok(())
}

fn run_op(r: &mut Run, op: Op) -> Result<Throughput> {
    let label = match op {
        Op::Ping => "small ops: ping",
        Op::GetRelease => "small ops: get + release",
    };
    let pb = crate::progress::bar(r.duration.as_secs(), label, "s");
    let barrier = Arc::new(Barrier::new(CONNECTIONS + 1));
    let (socket, duration) = (&r.socket, r.duration);
    let (results, seconds) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CONNECTIONS)
            .map(|_| {
                let barrier = barrier.clone();
                s.spawn(move || {
                    let conn = connect(socket);
                    barrier.wait();
                    drive(conn?, op, duration)
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        while handles.iter().any(|h| !h.is_finished()) {
            pb.set_position(start.elapsed().as_secs().min(duration.as_secs()));
            std::thread::sleep(Duration::from_millis(50));
        }
        let seconds = start.elapsed().as_secs_f64();
        let results: Vec<Result<(Histogram<u64>, u64)>> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("connection thread panicked")))
            })
            .collect();
        (results, seconds)
    });
    pb.finish_and_clear();
    let mut hist = histogram();
    let mut ops = 0;
    for res in results {
        let (h, n) = res?;
        hist.add(&h)
            .map_err(|e| anyhow!("merging histograms: {e:?}"))?;
        ops += n;
    }
    let name = match op {
        Op::Ping => "small_ops_ping",
        Op::GetRelease => "small_ops_get_release",
    };
    r.histograms.push((name.into(), hist.clone()));
    Ok(Throughput {
        label: format!("{label}, {CONNECTIONS} connections x {IN_FLIGHT} in flight"),
        concurrency: CONNECTIONS,
        in_flight_per_connection: IN_FLIGHT,
        ops,
        seconds,
        ops_per_s: ops as f64 / seconds.max(1e-9),
        errors: 0,
        latency: TimingSummary::of(&hist, None),
    })
}

/// Connects and does the handshake as a reader (the library's handshake; the
/// descriptors are not needed for pings and gets that are never read).
fn connect(socket: &Path) -> Result<UnixStream> {
    let stream = UnixStream::connect(socket)
        .with_context(|| format!("cannot connect to {}", socket.display()))?;
    let (_hello, fds) = arrowpool::client::handshake(&stream, false)?;
    drop(fds);
    Ok(stream)
}

/// One request in flight, in send order (replies come back in that order).
struct Pending {
    id: u64,
    kind: Kind,
    /// When the operation (the ping, or the get of a pair) was sent.
    started: Instant,
}

/// Keeps `IN_FLIGHT` operations going until `duration` has passed, then drains.
fn drive(mut stream: UnixStream, op: Op, duration: Duration) -> Result<(Histogram<u64>, u64)> {
    let mut hist = histogram();
    let mut ops = 0u64;
    let mut next_id = 1u64;
    let mut queue: VecDeque<Pending> = VecDeque::with_capacity(2 * IN_FLIGHT);
    let mut out: Vec<u8> = Vec::with_capacity(IN_FLIGHT * 64);
    let mut inbuf: Vec<u8> = vec![0; 256 * 1024];
    let (mut filled, mut parsed) = (0usize, 0usize);
    let mut active = 0usize; // operations started and not finished
    let deadline = Instant::now() + duration;
    // The same get body every time: encoded once.
    let mut get_body = Vec::new();
    Get {
        name: MAIN_NAME.into(),
    }
    .encode(&mut get_body)?;
    loop {
        let open = Instant::now() < deadline;
        while open && active < IN_FLIGHT {
            let kind = if op == Op::Ping {
                Kind::Ping
            } else {
                Kind::Get
            };
            write_frame(&mut out, next_id, kind as u16, 0, |o| {
                if kind == Kind::Get {
                    o.extend_from_slice(&get_body)
                }
            });
            queue.push_back(Pending {
                id: next_id,
                kind,
                started: Instant::now(),
            });
            next_id += 1;
            active += 1;
        }
        if !out.is_empty() {
            stream.write_all(&out)?;
            out.clear();
        }
        if active == 0 {
            break;
        }
        // Read at least one reply, then handle every complete frame.
        if parsed > 0 && parsed == filled {
            (filled, parsed) = (0, 0);
        } else if filled == inbuf.len() {
            inbuf.copy_within(parsed..filled, 0);
            (filled, parsed) = (filled - parsed, 0);
        }
        let n = stream.read(&mut inbuf[filled..])?;
        if n == 0 {
            bail!("the server closed the connection");
        }
        filled += n;
        loop {
            let header = match Header::parse(&inbuf[parsed..filled], REPLY_BODY_MAX) {
                Ok(h) => h,
                Err(arrowpool::protocol::FrameError::Incomplete) => break,
                Err(e) => bail!("bad reply frame: {e}"),
            };
            if filled - parsed < header.frame_len() {
                break;
            }
            let body = &inbuf[parsed + HEADER_LEN..parsed + header.frame_len()];
            let pending = queue.pop_front().context("a reply no request asked for")?;
            if header.request_id != pending.id {
                bail!(
                    "reply to request {} while {} was next",
                    header.request_id,
                    pending.id
                );
            }
            if header.kind == Kind::Error as u16 {
                let e = ErrorReply::decode(body).map_err(|e| anyhow!("bad error reply: {e}"))?;
                bail!("{:?} request {} failed: {e}", pending.kind, pending.id);
            }
            if header.kind != pending.kind.reply() {
                bail!(
                    "reply kind {:#x} to a {:?} request",
                    header.kind,
                    pending.kind
                );
            }
            match pending.kind {
                Kind::Get => {
                    // Release with a reply, so the pair completes only when the
                    // server has handled both halves.
                    let located =
                        Located::decode(body).map_err(|e| anyhow!("bad get reply: {e}"))?;
                    write_frame(&mut out, next_id, Kind::Release as u16, 0, |o| {
                        Release {
                            object_id: located.object_id,
                        }
                        .encode(o)
                    });
                    queue.push_back(Pending {
                        id: next_id,
                        kind: Kind::Release,
                        started: pending.started,
                    });
                    next_id += 1;
                }
                _ => {
                    hist.saturating_record(us(pending.started.elapsed()));
                    ops += 1;
                    active -= 1;
                }
            }
            parsed += header.frame_len();
        }
    }
    Ok((hist, ops))
}
