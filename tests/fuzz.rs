//! Protocol-aware fuzzing of a real `arrowpoold`, bounded in time.
//!
//! Several raw connections (readers and writers) send a seeded mix of valid
//! frames of every kind, mutated frames (flipped bytes, wrong lengths, random
//! kinds and flags, truncated bodies, oversized headers, pipelined bursts,
//! abrupt closes) and corrupted Arrow IPC files written through the writable
//! arena mapping, while a canary table is checked every 100 ms. Every reply is
//! checked against docs/PROTOCOL.md; at the end the server must be alive, the
//! canary unchanged and nothing leaked.
//!
//! `ARROWPOOL_FUZZ_SECS` sets the duration (default 30), `ARROWPOOL_FUZZ_SEED`
//! the seed (printed at start). A seed replays each connection's choices, not
//! the interleaving of the threads, so failure messages carry the frames in hex.
mod common;

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_array::types::{Int16Type, Int32Type};
use arrow_array::{
    Array, ArrayRef, BooleanArray, DictionaryArray, Int32Array, Int64Array, ListArray, RecordBatch,
    StringViewArray, StructArray,
};
use arrow_buffer::Buffer;
use arrow_schema::{DataType, Field, Schema};
use arrowpool::arena::Mapping;
use arrowpool::protocol::create::Created;
use arrowpool::protocol::frame::{
    FrameError, Header, FLAG_NO_REPLY, HEADER_LEN, REPLY_BODY_MAX, REQUEST_BODY_MAX,
};
use arrowpool::protocol::get::Located;
use arrowpool::protocol::ingest::IngestReply;
use arrowpool::protocol::list::ListEntry;
use arrowpool::protocol::seal::Sealed;
use arrowpool::protocol::stats::StatsReply;
use arrowpool::protocol::{wait, ErrorCode, Kind, Request};
use arrowpool::Client;
use common::{frame, pstr, table, Server};

/// Fuzzing connections running at once (the test machines have 2 cores).
const FUZZ_THREADS: usize = 3;
/// Names the fuzzers use; the canary's name is never among them.
const FUZZ_NAMES: [&str; 8] = ["f0", "f1", "f2", "f3", "f4", "f5", "f6", "f7"];
const CANARY: &str = "canary-never-fuzzed";
/// Longest `wait` a fuzzer lets through: the connection serves nothing else
/// while it waits, and a long one would outlive the test.
const WAIT_MS_MAX: u32 = 20;
/// How long a reply (or the close after an unframeable frame) may take.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
const NONEXISTENT: &str = "/nonexistent/arrowpool-fuzz/";

// The library's numbers (the golden fixture checks them against PROTOCOL.md).
const KIND_PING: u16 = Kind::Ping as u16;
const KIND_CREATE: u16 = Kind::Create as u16;
const KIND_SEAL: u16 = Kind::Seal as u16;
const KIND_ABORT: u16 = Kind::Abort as u16;
const KIND_RELEASE: u16 = Kind::Release as u16;
const KIND_WAIT: u16 = Kind::Wait as u16;
const KIND_SHUTDOWN: u16 = Kind::Shutdown as u16;
const KIND_ERROR: u16 = Kind::Error as u16;
const MALFORMED: u16 = ErrorCode::Malformed as u16;
const UNKNOWN_KIND: u16 = ErrorCode::UnknownKind as u16;
const INVALID_OBJECT: u16 = ErrorCode::InvalidObject as u16;
const INVALID_DATA: u16 = ErrorCode::InvalidData as u16;

// ---------------------------------------------------------------------------
// Configuration and randomness

/// splitmix64: tiny and seedable, enough to pick fuzz inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// Error codes of docs/PROTOCOL.md section 5, read at run time so that a code
/// the document gains (say, for writes on read-only connections) is accepted.
fn documented_error_codes() -> Vec<(u16, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PROTOCOL.md");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let section = text
        .split("## 5. Errors")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .unwrap_or_default();
    let codes: Vec<(u16, String)> = section
        .lines()
        .filter_map(|line| {
            let mut cells = line.split('|').map(str::trim).skip(1);
            let code = cells.next()?.parse().ok()?;
            Some((code, cells.next()?.to_string()))
        })
        .collect();
    assert!(
        codes.len() >= 11,
        "read only {codes:?} from the error table of {path}"
    );
    codes
}

fn hex(bytes: &[u8]) -> String {
    let shown: Vec<String> = bytes.iter().take(96).map(|b| format!("{b:02x}")).collect();
    let more = if bytes.len() > 96 { " ..." } else { "" };
    format!("[{}{more}] ({} bytes)", shown.join(" "), bytes.len())
}

// ---------------------------------------------------------------------------
// Shared state

#[derive(Default)]
struct Counters {
    frames: AtomicU64,
    replies: AtomicU64,
    seals_accepted: AtomicU64,
    seals_refused: AtomicU64,
    readbacks: AtomicU64,
    sessions: AtomicU64,
    fatal_closes: AtomicU64,
    abrupt_closes: AtomicU64,
    bad_handshakes: AtomicU64,
    shutdown_notices: AtomicU64,
    canary_checks: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn count(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

struct Ctx {
    socket: PathBuf,
    seed: u64,
    deadline: Instant,
    arena_len: u64,
    codes: Vec<(u16, String)>,
    stop: AtomicBool,
    violations: Mutex<Vec<String>>,
    violation_count: AtomicU64,
    n: Counters,
}

impl Ctx {
    fn done(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || Instant::now() >= self.deadline
    }

    /// Records a failure; the first ones are kept whole for the final message.
    fn violation(&self, who: &str, what: String) {
        let line = format!("[{who}] {what}");
        eprintln!("fuzz violation: {line}");
        bump(&self.violation_count);
        let mut kept = self.violations.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() < 20 {
            kept.push(line);
        }
    }

    fn code_name(&self, code: u16) -> Option<&str> {
        self.codes
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, n)| n.as_str())
    }
}

// ---------------------------------------------------------------------------
// Request generation

fn fuzz_name(rng: &mut Rng) -> Vec<u8> {
    match rng.below(24) {
        0 => Vec::new(),
        1 => vec![b'n'; 256 + rng.below(64)],
        2 => b"f\n1".to_vec(),
        3 => vec![0xff, 0xfe, b'f'],
        _ => FUZZ_NAMES[rng.below(FUZZ_NAMES.len())].as_bytes().to_vec(),
    }
}

/// An object id: mostly one this connection was given, so that seal, abort and
/// release reach real objects, sometimes anything.
fn object_id(rng: &mut Rng, known: &[u64]) -> u64 {
    match rng.below(10) {
        0..=6 if !known.is_empty() => known[rng.below(known.len())],
        7 => rng.below(1000) as u64,
        _ => rng.next(),
    }
}

fn create_size(rng: &mut Rng) -> u64 {
    match rng.below(10) {
        0 => 0,
        1..=6 => rng.below(64 << 10) as u64,
        7 | 8 => rng.below(4 << 20) as u64,
        _ => rng.next(),
    }
}

fn ingest_body(rng: &mut Rng) -> Vec<u8> {
    let mut body = pstr(&fuzz_name(rng));
    let path = match rng.below(3) {
        0 => NONEXISTENT.to_string(),
        _ => format!("{NONEXISTENT}{}.parquet", rng.below(100)),
    };
    body.extend(pstr(path.as_bytes()));
    let columns = rng.below(4);
    body.extend((columns as u16).to_le_bytes());
    for c in 0..columns {
        body.extend(pstr(format!("c{c}").as_bytes()));
    }
    body
}

/// A well-formed request of a random kind: (kind, flags, body). Names and ids
/// are sometimes invalid on purpose; the layout is always right.
fn valid_request(rng: &mut Rng, known: &[u64]) -> (u16, u16, Vec<u8>) {
    let kind = 1 + rng.below(11) as u16;
    let mut flags = 0;
    let mut body = Vec::new();
    match kind {
        KIND_CREATE => {
            let kind_byte = if rng.chance(90) {
                rng.below(2)
            } else {
                rng.below(256)
            };
            body.push(kind_byte as u8);
            body.extend(create_size(rng).to_le_bytes());
            body.extend(pstr(&fuzz_name(rng)));
        }
        KIND_SEAL => {
            body.extend(object_id(rng, known).to_le_bytes());
            body.extend((rng.below(1 << 16) as u64).to_le_bytes());
        }
        KIND_ABORT | KIND_RELEASE => {
            body.extend(object_id(rng, known).to_le_bytes());
            if kind == KIND_RELEASE && rng.chance(50) {
                flags = FLAG_NO_REPLY;
            }
        }
        5 | 7 => body.extend(pstr(&fuzz_name(rng))),
        KIND_WAIT => {
            let after = [0, 1, rng.below(10) as u64, u64::MAX, rng.next()][rng.below(5)];
            body.extend(after.to_le_bytes());
            body.extend((rng.below(WAIT_MS_MAX as usize + 1) as u32).to_le_bytes());
            body.extend(pstr(&fuzz_name(rng)));
        }
        11 => body = ingest_body(rng),
        _ => {} // ping, list, stats: empty bodies
    }
    (kind, flags, body)
}

fn set_len(frame: &mut [u8], len: u32) {
    frame[0..4].copy_from_slice(&len.to_le_bytes());
}

/// Makes the header's length match the body again.
fn fix_len(frame: &mut [u8]) {
    let len = (frame.len() - HEADER_LEN) as u32;
    set_len(frame, len);
}

fn random_kind(rng: &mut Rng) -> u16 {
    let choices = [0, 12, 13, 0x7FFF, 0x8001, KIND_SHUTDOWN, KIND_ERROR];
    match rng.below(3) {
        0 => choices[rng.below(choices.len())],
        1 => 1 + rng.below(11) as u16,
        _ => rng.next() as u16,
    }
}

/// Damages a valid frame in one of several ways. Lengths may stop matching
/// the bytes: the mirror (`Mirror`) frames the stream as the server does.
fn mutate(rng: &mut Rng, f: &mut Vec<u8>) {
    let body_len = f.len() - HEADER_LEN;
    match rng.below(9) {
        0 => {
            for _ in 0..1 + rng.below(4) {
                // Mostly in the body: header flips mostly end the connection.
                let at = if body_len > 0 && rng.chance(75) {
                    HEADER_LEN + rng.below(body_len)
                } else {
                    rng.below(HEADER_LEN)
                };
                f[at] ^= 1 + rng.below(255) as u8;
            }
        }
        1 => f[12..14].copy_from_slice(&random_kind(rng).to_le_bytes()),
        2 => f[14..16].copy_from_slice(&(rng.next() as u16).to_le_bytes()),
        3 => {
            f.truncate(HEADER_LEN + rng.below(body_len));
            fix_len(f);
        }
        4 => f.truncate(HEADER_LEN + rng.below(body_len)), // stale length
        5 => {
            let delta = 1 + rng.below(8) as u32;
            let len = if rng.chance(50) {
                (body_len as u32).saturating_sub(delta)
            } else {
                body_len as u32 + delta
            };
            set_len(f, len);
        }
        6 => {
            f.truncate(HEADER_LEN);
            let n = rng.below(64);
            f.extend(rng.bytes(n));
            fix_len(f);
        }
        7 => {
            let n = 1 + rng.below(16);
            f.extend(rng.bytes(n));
            fix_len(f);
        }
        _ => {
            let id = [0, u64::MAX, rng.next(), rng.below(4) as u64][rng.below(4)];
            f[4..12].copy_from_slice(&id.to_le_bytes());
        }
    }
}

/// A small table with the types the seal-time layout check covers beyond
/// plain columns: lists, dictionaries, string views, structs.
fn rich_table(rng: &mut Rng) -> (Arc<Schema>, Vec<RecordBatch>) {
    let rows = 1 + rng.below(300);
    let ints: Int32Array = (0..rows)
        .map(|i| (i % 5 != 0).then_some(i as i32))
        .collect();
    let lists = ListArray::from_iter_primitive::<Int32Type, _, _>(
        (0..rows).map(|i| (i % 7 != 0).then(|| (0..(i % 4) as i32).map(Some).collect::<Vec<_>>())),
    );
    let dict: DictionaryArray<Int16Type> = (0..rows).map(|i| ["x", "y", "z"][i % 3]).collect();
    // Longer than 12 bytes, so the views point into a data buffer.
    let views =
        StringViewArray::from_iter_values((0..rows).map(|i| format!("view-value-number-{i}")));
    let strukt = StructArray::from(vec![
        (
            Arc::new(Field::new("a", DataType::Int64, false)),
            Arc::new(Int64Array::from_iter_values(0..rows as i64)) as ArrayRef,
        ),
        (
            Arc::new(Field::new("b", DataType::Boolean, true)),
            Arc::new(BooleanArray::from_iter((0..rows).map(|i| Some(i % 2 == 0)))) as ArrayRef,
        ),
    ]);
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("ints", Arc::new(ints)),
        ("lists", Arc::new(lists)),
        ("dict", Arc::new(dict)),
        ("views", Arc::new(views)),
        ("struct", Arc::new(strukt)),
    ];
    let batch = RecordBatch::try_from_iter(columns).expect("rich table");
    let split = rng.below(rows + 1);
    let batches = vec![batch.slice(0, split), batch.slice(split, rows - split)];
    (batch.schema(), batches)
}

/// How an IPC file is damaged before its seal.
struct Corruption {
    seal_len: usize,
    what: String,
    intact: bool,
}

/// Flips 1 to `most` bytes of `file[range]`, describing each as `offset^mask`.
fn flip_in(rng: &mut Rng, file: &mut [u8], range: std::ops::Range<usize>, most: usize) -> String {
    let mut what = Vec::new();
    for _ in 0..1 + rng.below(most) {
        let at = range.start + rng.below(range.len());
        let mask = 1 + rng.below(255) as u8;
        file[at] ^= mask;
        what.push(format!("{at}^{mask:#04x}"));
    }
    format!("flipped {}", what.join(" "))
}

/// Damages the IPC file of `n` bytes at the front of `file` (the rest is
/// garbage a longer seal takes in).
fn corrupt(rng: &mut Rng, file: &mut [u8], n: usize) -> Corruption {
    let edge = n.min(600);
    let (seal_len, what) = match rng.below(10) {
        0 => (n, "intact".to_string()),
        1..=3 => (n, flip_in(rng, file, 0..n, 16)),
        4 => (n, flip_in(rng, file, n - edge..n, 4)),
        5 => (n, flip_in(rng, file, 0..edge, 4)),
        6 => {
            // Word-sized values land on lengths, offsets and counts.
            let at = rng.below(n / 4) * 4;
            let value = [0u32, 1, 0x7FFF_FFFF, u32::MAX, 0x8000_0000, 64, 4096][rng.below(7)];
            file[at..at + 4].copy_from_slice(&value.to_le_bytes());
            (n, format!("word at {at} set to {value:#x}"))
        }
        7 => {
            let len = rng.below(n);
            (len, format!("truncated to {len} of {n} bytes"))
        }
        8 if file.len() > n => {
            let len = n + 1 + rng.below(file.len() - n);
            (len, format!("{} garbage bytes after the file", len - n))
        }
        _ => {
            let what = flip_in(rng, file, 0..n, 4);
            let len = n - rng.below(8).min(n);
            (len, format!("{what}, sealed {len} of {n} bytes"))
        }
    };
    Corruption {
        seal_len,
        intact: what == "intact",
        what,
    }
}

// ---------------------------------------------------------------------------
// The mirror: frames the byte stream exactly as the server does, so that every
// reply can be matched to the request it answers, however mangled the bytes.

enum Decoded {
    Unknown,
    Malformed(String),
    Ok(Request),
}

/// A reply the server owes, in order.
struct Expect {
    id: u64,
    kind: u16,
    decoded: Decoded,
    /// The header announced more than 65536 body bytes: an error, then close.
    fatal: bool,
    frame: String,
}

#[derive(Default)]
struct Mirror {
    /// Bytes sent that do not form a complete frame yet.
    pending: Vec<u8>,
    expected: VecDeque<Expect>,
    /// An unframeable header was sent: the server closes after it.
    closing: bool,
    /// Recent releases with NO_REPLY, to explain a reply that should not exist.
    silent: VecDeque<(u64, String)>,
}

impl Mirror {
    /// Bytes still needed to complete the pending frame (0 if none).
    fn missing(&self) -> usize {
        if self.pending.is_empty() || self.closing {
            return 0;
        }
        match Header::parse(&self.pending, REQUEST_BODY_MAX) {
            Ok(h) => h.frame_len().saturating_sub(self.pending.len()),
            Err(_) => HEADER_LEN.saturating_sub(self.pending.len()),
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        if self.closing {
            return; // the server discards everything after an unframeable header
        }
        self.pending.extend_from_slice(bytes);
        let mut pos = 0;
        loop {
            let rest = &self.pending[pos..];
            match Header::parse(rest, REQUEST_BODY_MAX) {
                Err(FrameError::Incomplete) => break,
                Err(_) => {
                    let id = u64::from_le_bytes(rest[4..12].try_into().expect("8 bytes"));
                    let h = Header::parse(rest, u32::MAX as usize).expect("a whole header");
                    self.expected.push_back(Expect {
                        id,
                        kind: h.kind,
                        decoded: Decoded::Malformed("oversized".into()),
                        fatal: true,
                        frame: hex(&rest[..HEADER_LEN]),
                    });
                    self.closing = true;
                    self.pending.clear();
                    return;
                }
                Ok(h) if rest.len() < h.frame_len() => break,
                Ok(h) => {
                    let f = rest[..h.frame_len()].to_vec();
                    self.on_frame(h, &f[HEADER_LEN..], hex(&f));
                    pos += h.frame_len();
                }
            }
        }
        self.pending.drain(..pos);
    }

    fn on_frame(&mut self, h: Header, body: &[u8], frame: String) {
        if h.kind == KIND_RELEASE && h.flags & FLAG_NO_REPLY != 0 {
            // PROTOCOL.md section 3: nothing comes back, not even an error.
            self.silent.push_back((h.request_id, frame));
            if self.silent.len() > 64 {
                self.silent.pop_front();
            }
            return;
        }
        let decoded = match Request::decode(h.kind, body) {
            Ok(r) => Decoded::Ok(r),
            Err(FrameError::UnknownKind(_)) => Decoded::Unknown,
            Err(e) => Decoded::Malformed(e.to_string()),
        };
        self.expected.push_back(Expect {
            id: h.request_id,
            kind: h.kind,
            decoded,
            fatal: false,
            frame,
        });
    }

    /// Makes sure no `wait` that `new` completes or starts can block longer
    /// than `WAIT_MS_MAX`: clamps its timeout if those bytes are still unsent,
    /// else zeroes the body's last byte, which makes the body malformed (it
    /// lands in the name, as a control character, or in the name length).
    fn defuse_waits(&self, new: &mut [u8]) {
        if self.closing {
            return;
        }
        let base = self.pending.len();
        let mut all = self.pending.clone();
        all.extend_from_slice(new);
        let mut pos = 0;
        while let Ok(h) = Header::parse(&all[pos..], REQUEST_BODY_MAX) {
            let timeout_at = pos + HEADER_LEN + 8;
            let end = pos + h.frame_len();
            if h.kind == KIND_WAIT && h.len >= 12 && all.len() >= timeout_at + 4 {
                let t = u32::from_le_bytes(all[timeout_at..timeout_at + 4].try_into().expect("4"));
                if t > WAIT_MS_MAX && timeout_at >= base {
                    let small = (t % (WAIT_MS_MAX + 1)).to_le_bytes();
                    new[timeout_at - base..timeout_at - base + 4].copy_from_slice(&small);
                } else if t > WAIT_MS_MAX && end <= all.len() {
                    // Every frame here ends past the pending bytes: they hold
                    // no complete frame.
                    new[end - 1 - base] = 0;
                }
            }
            if end > all.len() {
                break;
            }
            pos = end;
        }
    }
}

// ---------------------------------------------------------------------------
// Reply checks (pure: what the protocol allows, given the request)

fn is_write_kind(kind: u16) -> bool {
    matches!(kind, KIND_CREATE | KIND_SEAL | KIND_ABORT | 7 | 11)
}

/// An error body must decode: a documented code, a UTF-8 message, nothing after.
fn error_body(ctx: &Ctx, body: &[u8]) -> Result<(u16, String), String> {
    let fail = |why: &str| format!("error reply body {} {why}", hex(body));
    if body.len() < 4 {
        return Err(fail("is shorter than code + message length"));
    }
    let code = u16::from_le_bytes([body[0], body[1]]);
    let len = u16::from_le_bytes([body[2], body[3]]) as usize;
    if body.len() != 4 + len {
        return Err(fail(&format!(
            "has a message length {len} that does not match"
        )));
    }
    let message = std::str::from_utf8(&body[4..]).map_err(|_| fail("has a non-UTF-8 message"))?;
    if ctx.code_name(code).is_none() {
        return Err(fail(&format!(
            "has code {code}, not in PROTOCOL.md section 5"
        )));
    }
    Ok((code, message.to_string()))
}

fn check_error(ctx: &Ctx, e: &Expect, writer: bool, body: &[u8]) -> Result<(), String> {
    let (code, message) = error_body(ctx, body)?;
    let name = ctx.code_name(code).unwrap_or("?");
    let want = match &e.decoded {
        _ if e.fatal => Some(MALFORMED),
        Decoded::Unknown => Some(UNKNOWN_KIND),
        // A read-only connection may be refused a write before the body is read.
        Decoded::Malformed(_) if !writer && is_write_kind(e.kind) => None,
        Decoded::Malformed(_) => Some(MALFORMED),
        Decoded::Ok(req) => {
            return match req {
                Request::Ping(_) | Request::List(_) | Request::Stats(_) => Err(format!(
                    "{req:?} must always succeed, got error {code} {name}: {message}"
                )),
                _ if code == UNKNOWN_KIND => {
                    Err(format!("UnknownKind for known kind {}: {message}", e.kind))
                }
                _ => Ok(()),
            };
        }
    };
    match want {
        Some(w) if w != code => Err(format!(
            "error {code} {name} ({message}); PROTOCOL.md requires {w} {}",
            ctx.code_name(w).unwrap_or("?")
        )),
        _ => Ok(()),
    }
}

fn check_create(ctx: &Ctx, size: u64, body: &[u8]) -> Result<(), String> {
    let c = Created::decode(body).map_err(|e| e.to_string())?;
    let fits = c
        .offset
        .checked_add(c.capacity)
        .is_some_and(|end| end <= ctx.arena_len);
    if c.capacity < size.max(1) || c.capacity % 4096 != 0 || c.offset % 4096 != 0 || !fits {
        return Err(format!(
            "create of {size} bytes got {c:?}: PROTOCOL.md wants capacity >= size, 4 KiB \
             multiples and 4096-aligned offsets inside the {}-byte arena",
            ctx.arena_len
        ));
    }
    Ok(())
}

fn check_get(ctx: &Ctx, body: &[u8]) -> Result<(), String> {
    if body.len() != 41 {
        return Err(format!(
            "get reply of {} bytes, PROTOCOL.md says 41",
            body.len()
        ));
    }
    let l = Located::decode(body).map_err(|e| e.to_string())?;
    let inside = l
        .offset
        .checked_add(l.length)
        .is_some_and(|end| end <= ctx.arena_len);
    if !inside || l.version == 0 {
        return Err(format!("get located {l:?}: outside the arena or version 0"));
    }
    Ok(())
}

/// A `list` reply: one entry per name, each a sealed version of a known kind.
fn check_list(entries: &[ListEntry]) -> Result<(), String> {
    let mut names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let bad = entries
        .iter()
        .find(|e| e.version == 0 || !["table", "bytes"].contains(&e.kind.as_str()));
    match bad {
        Some(e) => Err(format!("list entry {e:?}: version 0 or unknown kind")),
        None if names.len() != entries.len() => {
            Err(format!("list names a name twice: {entries:?}"))
        }
        None => Ok(()),
    }
}

/// A `stats` reply must add up: the arena is used or free, and held (leased,
/// so sealed) and pending (unsealed) objects are disjoint parts of the used.
fn check_stats(ctx: &Ctx, s: &StatsReply) -> Result<(), String> {
    let consistent = s.arena_bytes == ctx.arena_len
        && s.used_bytes.checked_add(s.free_bytes) == Some(s.arena_bytes)
        && s.held_bytes.saturating_add(s.pending_bytes) <= s.used_bytes
        && s.largest_free_bytes <= s.free_bytes
        && s.names <= s.objects;
    if consistent {
        Ok(())
    } else {
        Err(format!(
            "inconsistent stats (arena of {} bytes): {s:?}",
            ctx.arena_len
        ))
    }
}

/// The body of a success reply must be what PROTOCOL.md section 4 lists.
fn check_ok_body(ctx: &Ctx, req: &Request, body: &[u8]) -> Result<(), String> {
    let json_err = |e: serde_json::Error| format!("bad JSON ({e}): {}", hex(body));
    match req {
        Request::Ping(_) | Request::Abort(_) | Request::Release(_) | Request::Delete(_) => {
            if !body.is_empty() {
                return Err(format!("body {} where PROTOCOL.md says empty", hex(body)));
            }
        }
        Request::Create(c) => check_create(ctx, c.size, body)?,
        Request::Seal(_) | Request::Publish(_) => {
            let s = Sealed::decode(body).map_err(|e| e.to_string())?;
            if s.version == 0 {
                return Err("seal reply with version 0 (versions start at 1)".into());
            }
        }
        Request::Get(_) | Request::GetVersion(_) => check_get(ctx, body)?,
        Request::List(_) => {
            check_list(&serde_json::from_slice::<Vec<ListEntry>>(body).map_err(json_err)?)?
        }
        Request::Stats(_) => check_stats(ctx, &serde_json::from_slice(body).map_err(json_err)?)?,
        Request::Wait(w) => {
            let v = wait::Version::decode(body).map_err(|e| e.to_string())?;
            if v.version <= w.after {
                return Err(format!(
                    "wait after {} answered version {}",
                    w.after, v.version
                ));
            }
        }
        Request::Ingest(i) => {
            if i.path.starts_with(NONEXISTENT) {
                return Err(format!("ingest of nonexistent {:?} succeeded", i.path));
            }
            serde_json::from_slice::<IngestReply>(body).map_err(json_err)?;
        }
    }
    Ok(())
}

fn check_reply(ctx: &Ctx, e: &Expect, writer: bool, kind: u16, body: &[u8]) -> Result<(), String> {
    if kind == KIND_ERROR {
        return check_error(ctx, e, writer, body);
    }
    if e.fatal {
        return Err(format!("reply kind {kind:#06x} to a header announcing more than 65536 bytes; PROTOCOL.md: Malformed, then close"));
    }
    match &e.decoded {
        Decoded::Ok(req) if kind == e.kind | 0x8000 => check_ok_body(ctx, req, body),
        Decoded::Ok(_) => Err(format!(
            "reply kind {kind:#06x} to request kind {}: must be {:#06x} or 0xffff",
            e.kind,
            e.kind | 0x8000
        )),
        Decoded::Unknown => Err(format!(
            "success kind {kind:#06x} for unknown kind {}",
            e.kind
        )),
        Decoded::Malformed(why) => Err(format!(
            "success kind {kind:#06x} for a malformed request ({why})"
        )),
    }
}

/// What an accepted table promises (ipc::check_file): readers that skip
/// validation stay in bounds. Decode it as the client does, then let arrow
/// validate every column fully; only what check_file leaves out is tolerated.
fn readback(bytes: &[u8], rows: u64) -> Result<(), String> {
    let buffer = Buffer::from_slice_ref(bytes);
    let run = std::panic::AssertUnwindSafe(|| validate_table(&buffer, rows));
    std::panic::catch_unwind(run).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(format!("reading it panics: {msg}"))
    })
}

fn validate_table(buffer: &Buffer, rows: u64) -> Result<(), String> {
    let (_, batches) =
        arrowpool::ipc::open_file(buffer, None).map_err(|e| format!("open_file fails: {e}"))?;
    let total: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
    if total != rows {
        return Err(format!(
            "seal said {rows} rows, the file decodes to {total}"
        ));
    }
    // Not checked at seal by design (ipc/layout.rs): value contents, which a
    // trusting reader misreads but never reads out of bounds for.
    let tolerated = [
        "utf8",
        "utf-8",
        "prefix",
        "padding",
        "precision",
        "non-nullable",
    ];
    for (b, batch) in batches.iter().enumerate() {
        for (c, col) in batch.columns().iter().enumerate() {
            if col.len() != batch.num_rows() {
                return Err(format!(
                    "batch {b} column {c}: {} rows of {}",
                    col.len(),
                    batch.num_rows()
                ));
            }
            if let Err(e) = col.to_data().validate_full() {
                let msg = e.to_string();
                if !tolerated.iter().any(|t| msg.to_lowercase().contains(t)) {
                    return Err(format!("batch {b} column {c} ({}): {msg}", col.data_type()));
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Handshakes

fn client_hello(version: u16, flags: u16) -> Vec<u8> {
    let mut v = b"APc1".to_vec();
    v.extend(version.to_le_bytes());
    v.extend(flags.to_le_bytes());
    v
}

fn connect(ctx: &Ctx) -> Result<UnixStream, String> {
    let s = UnixStream::connect(&ctx.socket).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(REPLY_TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(REPLY_TIMEOUT))
        .map_err(|e| e.to_string())?;
    Ok(s)
}

/// Reads the 32-byte server hello and the descriptors that come with it.
fn read_server_hello(s: &UnixStream) -> Result<([u8; 32], Vec<OwnedFd>), String> {
    let mut hello = [0u8; 32];
    let mut fds = Vec::new();
    let mut got = 0;
    while got < hello.len() {
        match arrowpool::sys::recv_with_fds(s.as_fd(), &mut hello[got..], &mut fds) {
            Ok(0) => {
                return Err(format!(
                    "server closed the handshake after {got} of 32 bytes"
                ))
            }
            Ok(n) => got += n,
            Err(e) => return Err(format!("handshake read after {got} bytes: {e}")),
        }
    }
    Ok((hello, fds))
}

/// Checks an accepting server hello field by field (PROTOCOL.md section 2).
fn check_hello(ctx: &Ctx, h: &[u8; 32], fds: usize, writer: bool) -> Result<(), String> {
    let u16_at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
    let arena_len = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
    let align = u32::from_le_bytes(h[16..20].try_into().expect("4 bytes"));
    let problems = [
        (&h[0..4] != b"APs1", "magic is not APs1"),
        (u16_at(4) != 1, "version is not 1"),
        (u16_at(6) != 0, "status is not 0"),
        (
            arena_len != ctx.arena_len,
            "arena_len differs from the Rust client's",
        ),
        (
            ![4096, 2 << 20].contains(&align),
            "map_align is neither 4096 nor 2 MiB",
        ),
        (
            align != 0 && arena_len % u64::from(align) != 0,
            "arena_len is not a multiple of map_align",
        ),
        (
            h[20] > 2 || h[21] > 1,
            "memory_kind or io_driver out of range",
        ),
        (
            h[22] as usize != 1 + usize::from(writer),
            "fd_count is not 1 (+1 for WRITE)",
        ),
        (
            h[22] as usize != fds,
            "fd_count differs from the descriptors received",
        ),
        (
            h[23..].iter().any(|&b| b != 0),
            "reserved bytes are not zero",
        ),
    ];
    match problems.iter().find(|(bad, _)| *bad) {
        Some((_, why)) => Err(format!("server hello {}: {why} ({fds} fds)", hex(h))),
        None => Ok(()),
    }
}

/// A hello the server must refuse: bad magic (status 1), bad version
/// (status 2), or a few bytes and a close (nothing to check but survival).
fn fuzz_handshake(ctx: &Ctx, rng: &mut Rng) -> Result<(), String> {
    let mut s = connect(ctx)?;
    bump(&ctx.n.bad_handshakes);
    let (hello, status) = match rng.below(3) {
        0 => {
            let mut h = rng.bytes(8);
            h[0] = b'a'; // never the magic
            (h, 1)
        }
        1 => (
            client_hello(2 + rng.below(1000) as u16, rng.next() as u16),
            2,
        ),
        _ => {
            let cut = rng.below(8);
            let _ = s.write_all(&client_hello(1, 0)[..cut]);
            return Ok(());
        }
    };
    s.write_all(&hello)
        .map_err(|e| format!("write hello: {e}"))?;
    let (reply, fds) = read_server_hello(&s)?;
    let got = u16::from_le_bytes([reply[6], reply[7]]);
    if &reply[0..4] != b"APs1" || got != status || !fds.is_empty() {
        return Err(format!(
            "hello {} answered {} with {} fds; PROTOCOL.md: status {status}, no fds",
            hex(&hello),
            hex(&reply),
            fds.len()
        ));
    }
    match s.read(&mut [0u8; 1]) {
        Ok(0) | Err(_) => Ok(()),
        Ok(_) => Err(format!(
            "bytes after refusing hello {}: not closed",
            hex(&hello)
        )),
    }
}

// ---------------------------------------------------------------------------
// A fuzzing connection

/// How a session ended early: the server closed as it had to, or a violation
/// (already recorded).
enum End {
    Closed,
    Failed,
}

type Step<T> = Result<T, End>;

/// A reply that passed the checks.
struct Checked {
    kind: u16,
    body: Vec<u8>,
}

struct FuzzConn<'a> {
    ctx: &'a Ctx,
    label: String,
    stream: UnixStream,
    writable: Option<Mapping>,
    writer: bool,
    mirror: Mirror,
    next_id: u64,
    /// Object ids the server handed this connection (create, get).
    known: Vec<u64>,
    worker: usize,
}

impl<'a> FuzzConn<'a> {
    fn open(ctx: &'a Ctx, rng: &mut Rng, writer: bool, label: String) -> Result<Self, String> {
        let mut flags = u16::from(writer);
        if rng.chance(20) {
            flags |= rng.next() as u16 & !1; // reserved bits: ignored
        }
        let mut stream = connect(ctx)?;
        stream
            .write_all(&client_hello(1, flags))
            .map_err(|e| format!("write hello: {e}"))?;
        let (hello, fds) = read_server_hello(&stream)?;
        check_hello(ctx, &hello, fds.len(), writer)?;
        let writable = match (writer, fds.get(1)) {
            (true, Some(fd)) => Some(
                Mapping::map(fd.as_fd(), ctx.arena_len as usize, true)
                    .map_err(|e| format!("cannot map the writable arena descriptor: {e}"))?,
            ),
            _ => None,
        };
        Ok(FuzzConn {
            ctx,
            label,
            stream,
            writable,
            writer,
            mirror: Mirror::default(),
            next_id: 1,
            known: Vec::new(),
            worker: 0,
        })
    }

    fn fail(&self, what: String) -> End {
        self.ctx.violation(&self.label, what);
        End::Failed
    }

    fn valid_frame(&mut self, rng: &mut Rng) -> Vec<u8> {
        let (kind, flags, body) = valid_request(rng, &self.known);
        self.next_id += 1;
        frame(self.next_id, kind, flags, &body)
    }

    fn mutated_frame(&mut self, rng: &mut Rng) -> Vec<u8> {
        let mut f = self.valid_frame(rng);
        mutate(rng, &mut f);
        f
    }

    /// Sends frames in one write (a pipelined burst when more than one).
    fn send(&mut self, frames: Vec<Vec<u8>>) -> Step<()> {
        bump_by(&self.ctx.n.frames, frames.len());
        let mut bytes = frames.concat();
        self.mirror.defuse_waits(&mut bytes);
        self.mirror.feed(&bytes);
        match self.stream.write_all(&bytes) {
            Ok(()) => Ok(()),
            // After an unframeable header the server may close before reading all.
            Err(_) if self.mirror.closing => Ok(()),
            Err(e) => {
                self.drain()?;
                Err(self.fail(format!(
                    "write failed ({e}) though nothing asked for a close"
                )))
            }
        }
    }

    /// Reads one frame; None on a clean end of stream.
    fn read_frame(&mut self) -> Step<Option<(u64, u16, Vec<u8>)>> {
        let mut head = [0u8; HEADER_LEN];
        match self.stream.read(&mut head) {
            Ok(0) => return Ok(None),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(None),
            Err(e) => return Err(self.read_failure(e)),
            Ok(n) => {
                if let Err(e) = self.stream.read_exact(&mut head[n..]) {
                    return Err(self.fail(format!("reply header cut after {n} bytes: {e}")));
                }
            }
        }
        let len = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes")) as usize;
        let id = u64::from_le_bytes(head[4..12].try_into().expect("8 bytes"));
        let kind = u16::from_le_bytes(head[12..14].try_into().expect("2 bytes"));
        if len > REPLY_BODY_MAX {
            return Err(self.fail(format!(
                "reply header {} announces {len} bytes, above the 16 MiB reply limit",
                hex(&head)
            )));
        }
        let mut body = vec![0u8; len];
        if let Err(e) = self.stream.read_exact(&mut body) {
            return Err(self.fail(format!(
                "reply {} cut inside its {len}-byte body: {e}",
                hex(&head)
            )));
        }
        Ok(Some((id, kind, body)))
    }

    fn read_failure(&self, e: std::io::Error) -> End {
        let next = match self.mirror.expected.front() {
            Some(x) => format!("request {} kind {} {}", x.id, x.kind, x.frame),
            None => "the close after an unframeable frame".into(),
        };
        self.fail(format!(
            "no reply within {REPLY_TIMEOUT:?} ({e}); waiting for {next}"
        ))
    }

    fn describe(&self, kind: u16, body: &[u8]) -> String {
        match (kind, error_body(self.ctx, body)) {
            (KIND_ERROR, Ok((code, msg))) => format!("error {code} {:?}", msg),
            _ => format!("kind {kind:#06x} body {}", hex(body)),
        }
    }

    /// A reply whose request id is not the next one owed.
    fn stray(&self, id: u64, kind: u16, body: &[u8]) -> End {
        let reply = self.describe(kind, body);
        let next = match self.mirror.expected.front() {
            Some(x) => format!("request {} {}", x.id, x.frame),
            None => "nothing".into(),
        };
        if let Some((_, f)) = self.mirror.silent.iter().rev().find(|(s, _)| *s == id) {
            return self.fail(format!(
                "reply ({reply}) to request {id}, a release with flag NO_REPLY {f}: PROTOCOL.md \
                 section 3 says the server sends nothing back, not even an error (next owed: {next})"
            ));
        }
        self.fail(format!(
            "reply ({reply}) for request id {id}, but the next reply owed is for {next}: \
             replies must come in request order, one per request"
        ))
    }
}

fn bump_by(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}

impl FuzzConn<'_> {
    /// Reads and checks the next reply. Err(Closed) when the server closed as
    /// it was entitled to.
    fn next_reply(&mut self) -> Step<Checked> {
        let Some((id, kind, body)) = self.read_frame()? else {
            return match self.mirror.expected.front() {
                None if self.mirror.closing => Err(End::Closed),
                Some(x) => Err(self.fail(format!(
                    "server closed the connection owing {} replies, the next to request {} {}",
                    self.mirror.expected.len(),
                    x.id,
                    x.frame
                ))),
                None => Err(self.fail("server closed the connection unasked".into())),
            };
        };
        if kind == KIND_SHUTDOWN {
            bump(&self.ctx.n.shutdown_notices);
            if id != 0 || !body.is_empty() {
                return Err(self.fail(format!("shutdown notice with id {id}, body {}", hex(&body))));
            }
            return Err(End::Closed);
        }
        let Some(front) = self.mirror.expected.front() else {
            return Err(self.stray(id, kind, &body));
        };
        if front.id != id {
            return Err(self.stray(id, kind, &body));
        }
        let e = self.mirror.expected.pop_front().expect("front exists");
        if let Err(why) = check_reply(self.ctx, &e, self.writer, kind, &body) {
            return Err(self.fail(format!("request {} {} -> {why}", e.id, e.frame)));
        }
        bump(&self.ctx.n.replies);
        self.learn(&e, kind, &body);
        Ok(Checked { kind, body })
    }

    /// Remembers object ids, so later seals, aborts and releases hit real objects.
    fn learn(&mut self, e: &Expect, kind: u16, body: &[u8]) {
        if kind == KIND_ERROR || !matches!(e.decoded, Decoded::Ok(_)) {
            return;
        }
        let id = match e.kind {
            KIND_CREATE => Created::decode(body).ok().map(|c| c.object_id),
            5 => Located::decode(body).ok().map(|l| l.object_id),
            _ => None,
        };
        if let Some(id) = id {
            if self.known.len() >= 64 {
                self.known.remove(0);
            }
            self.known.push(id);
        }
    }

    /// Reads every reply owed for complete frames; after an unframeable frame,
    /// also the close.
    fn drain(&mut self) -> Step<()> {
        while !self.mirror.expected.is_empty() {
            self.next_reply()?;
        }
        if self.mirror.closing {
            return match self.read_frame()? {
                None => Err(End::Closed),
                Some((id, kind, body)) => Err(self.fail(format!(
                    "after the error to an unframeable frame the server sent {} (id {id}) instead of closing",
                    self.describe(kind, &body)
                ))),
            };
        }
        Ok(())
    }

    /// Completes any partial frame, reads all replies, then pings: a reply
    /// nobody asked for shows up in front of the pong.
    fn settle(&mut self) -> Step<()> {
        while self.mirror.missing() > 0 {
            let filler = vec![0u8; self.mirror.missing()];
            self.send(vec![filler])?;
        }
        self.drain()?;
        self.next_id += 1;
        self.exchange(frame(self.next_id, KIND_PING, 0, &[]))
            .map(|_| ())
    }

    /// Sends one frame on a settled stream and returns its checked reply.
    fn exchange(&mut self, f: Vec<u8>) -> Step<Checked> {
        self.send(vec![f])?;
        if self.mirror.expected.len() != 1 {
            return Err(self.fail("internal: exchange on an unsettled stream".into()));
        }
        self.next_reply()
    }
}

// ---------------------------------------------------------------------------
// Putting corrupted tables through the writable mapping

impl FuzzConn<'_> {
    fn put_table(&mut self, rng: &mut Rng) -> Step<()> {
        self.settle()?;
        let (schema, batches) = if rng.chance(50) {
            let rows = 1 + rng.below(2000);
            table(rows, 1 + rng.below(3), rng.below(1000) as i64)
        } else {
            rich_table(rng)
        };
        let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        let bound = arrowpool::ipc::file_size_bound(&schema, &batches);
        let mut file = rng.bytes(bound); // the tail is garbage a longer seal takes in
        let n = arrowpool::ipc::write_file(&mut file, &schema, &batches)
            .expect("write_file into its own size bound");
        let damage = corrupt(rng, &mut file, n);
        let name = FUZZ_NAMES[rng.below(FUZZ_NAMES.len())];
        let Some(created) = self.create_table(name, bound as u64)? else {
            return Ok(()); // refused (full arena, pending limit): checked already
        };
        self.write_arena(&created, &file[..damage.seal_len])?;
        let over = rng.chance(3);
        let seal_len = if over {
            created.capacity + 1 + rng.below(4096) as u64
        } else {
            damage.seal_len as u64
        };
        let mut body = created.object_id.to_le_bytes().to_vec();
        body.extend(seal_len.to_le_bytes());
        self.next_id += 1;
        let reply = self.exchange(frame(self.next_id, KIND_SEAL, 0, &body))?;
        let seal = Seal {
            damage,
            rows,
            over,
            object_id: created.object_id,
        };
        self.judge_seal(&seal, &reply, &file[..seal.damage.seal_len])
    }

    fn create_table(&mut self, name: &str, size: u64) -> Step<Option<Created>> {
        let mut body = vec![0u8]; // table
        body.extend(size.to_le_bytes());
        body.extend(pstr(name.as_bytes()));
        self.next_id += 1;
        let reply = self.exchange(frame(self.next_id, KIND_CREATE, 0, &body))?;
        if reply.kind == KIND_ERROR {
            return Ok(None);
        }
        Created::decode(&reply.body)
            .map(Some)
            .map_err(|e| self.fail(format!("create reply: {e}")))
    }

    fn write_arena(&mut self, created: &Created, bytes: &[u8]) -> Step<()> {
        let Some(map) = &self.writable else {
            return Err(self.fail("internal: table put on a reader".into()));
        };
        // SAFETY: [offset, offset + capacity) is the unsealed object this
        // connection just created and nothing else was sent since: no one else
        // writes or reads it until our seal. check_create verified the range
        // lies in the arena and capacity >= size >= bytes.len().
        let dest = unsafe { map.slice_mut(created.offset, bytes.len() as u64) };
        match dest {
            Some(d) => {
                d.copy_from_slice(bytes);
                Ok(())
            }
            None => Err(self.fail(format!("created {created:?} lies outside the mapping"))),
        }
    }

    /// Keeps the file of a seal that revealed a bug, for reproduction.
    fn save(&self, bytes: &[u8]) -> String {
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "fuzz-seal-{:x}-w{}-{}.arrow",
            self.ctx.seed, self.worker, self.next_id
        ));
        match std::fs::write(&path, bytes) {
            Ok(()) => format!("file saved to {}", path.display()),
            Err(e) => format!("could not save the file: {e}"),
        }
    }
}

/// One seal of a table the fuzzer wrote.
struct Seal {
    damage: Corruption,
    rows: u64,
    /// Sealed longer than the capacity: must be InvalidObject, object kept.
    over: bool,
    object_id: u64,
}

impl FuzzConn<'_> {
    fn judge_seal(&mut self, seal: &Seal, reply: &Checked, bytes: &[u8]) -> Step<()> {
        let past = if seal.over {
            ", sealed past its capacity"
        } else {
            ""
        };
        let what = format!(
            "seal of object {} ({}{past})",
            seal.object_id, seal.damage.what
        );
        if reply.kind == KIND_ERROR {
            bump(&self.ctx.n.seals_refused);
            return self.judge_refusal(seal, &reply.body, &what, bytes);
        }
        bump(&self.ctx.n.seals_accepted);
        let sealed = Sealed::decode(&reply.body).map_err(|e| self.fail(format!("{what}: {e}")))?;
        if seal.over {
            return Err(self.fail(format!(
                "{what}: a seal longer than the capacity was accepted"
            )));
        }
        if seal.damage.intact && sealed.rows != seal.rows {
            return Err(self.fail(format!(
                "{what}: {} rows reported, {} put",
                sealed.rows, seal.rows
            )));
        }
        if !seal.damage.intact {
            bump(&self.ctx.n.readbacks);
            if let Err(why) = readback(bytes, sealed.rows) {
                let saved = self.save(bytes);
                return Err(self.fail(format!("{what} was accepted, but {why}; {saved}")));
            }
        }
        Ok(())
    }

    /// A refused seal: an intact file never is; a seal past the capacity is
    /// InvalidObject and keeps the object (abort succeeds); a bad file is
    /// InvalidData and aborts the object (abort then fails, InvalidObject).
    fn judge_refusal(&mut self, seal: &Seal, body: &[u8], what: &str, bytes: &[u8]) -> Step<()> {
        let message = self.describe(KIND_ERROR, body);
        if seal.damage.intact && !seal.over {
            let saved = self.save(bytes);
            return Err(self.fail(format!(
                "{what}: an intact IPC file was refused: {message}; {saved}"
            )));
        }
        let want = if seal.over {
            INVALID_OBJECT
        } else {
            INVALID_DATA
        };
        if body[..2] != want.to_le_bytes() {
            return Err(self.fail(format!(
                "{what}: refused with {message}, PROTOCOL.md says code {want}"
            )));
        }
        self.next_id += 1;
        let abort = frame(self.next_id, KIND_ABORT, 0, &seal.object_id.to_le_bytes());
        let reply = self.exchange(abort)?;
        let ok = if seal.over {
            reply.kind == KIND_ABORT | 0x8000
        } else {
            reply.kind == KIND_ERROR && reply.body[..2] == INVALID_OBJECT.to_le_bytes()
        };
        if !ok {
            let got = self.describe(reply.kind, &reply.body);
            let want = if seal.over {
                "success"
            } else {
                "InvalidObject (a refused seal aborts)"
            };
            return Err(self.fail(format!(
                "{what} was refused ({message}); abort afterwards got {got}, expected {want}"
            )));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Sessions and workers

impl FuzzConn<'_> {
    /// A frame announcing more than the request limit: Malformed, then close.
    fn oversized(&mut self, rng: &mut Rng) -> Step<()> {
        // Settled first, so that no partial frame swallows the header.
        self.settle()?;
        let mut frames: Vec<Vec<u8>> = (0..rng.below(3)).map(|_| self.valid_frame(rng)).collect();
        let mut f = self.valid_frame(rng);
        let len = [
            65537,
            1 << 20,
            1 << 30,
            u32::MAX,
            65537 + rng.next() as u32 % 1000,
        ];
        set_len(&mut f, len[rng.below(len.len())]);
        let extra = rng.below(32);
        f.extend(rng.bytes(extra));
        frames.push(f);
        bump(&self.ctx.n.fatal_closes);
        self.send(frames)?;
        self.drain()
    }

    /// Closes mid-frame, or with replies unread.
    fn abrupt_close(&mut self, rng: &mut Rng) -> Step<()> {
        bump(&self.ctx.n.abrupt_closes);
        let f = self.valid_frame(rng);
        if rng.chance(50) {
            let cut = 1 + rng.below(f.len() - 1);
            self.send(vec![f[..cut].to_vec()])
        } else {
            let burst = (0..1 + rng.below(8))
                .map(|_| self.valid_frame(rng))
                .collect();
            self.send(burst)
        }
    }

    fn step(&mut self, rng: &mut Rng) -> Step<bool> {
        match rng.below(100) {
            0..=34 => {
                let f = self.valid_frame(rng);
                self.send(vec![f])?
            }
            35..=59 => {
                let f = self.mutated_frame(rng);
                self.send(vec![f])?
            }
            60..=74 => {
                let burst = (0..2 + rng.below(15))
                    .map(|_| {
                        if rng.chance(60) {
                            self.valid_frame(rng)
                        } else {
                            self.mutated_frame(rng)
                        }
                    })
                    .collect();
                self.send(burst)?
            }
            75..=86 if self.writable.is_some() => self.put_table(rng)?,
            75..=90 => self.settle()?,
            // The session ends: closed by the server, abruptly, or cleanly.
            91..=92 => return self.oversized(rng).map(|_| false),
            93..=95 => return self.abrupt_close(rng).map(|_| false),
            96..=97 => return self.settle().map(|_| false),
            _ => {
                // A partial frame the stream may or may not complete later.
                let f = self.valid_frame(rng);
                let cut = 1 + rng.below(f.len());
                self.send(vec![f[..cut].to_vec()])?
            }
        }
        self.drain()?;
        Ok(true)
    }
}

fn session(conn: &mut FuzzConn, rng: &mut Rng) -> Step<()> {
    for _ in 0..10 + rng.below(200) {
        if conn.ctx.done() {
            break;
        }
        if !conn.step(rng)? {
            return Ok(());
        }
    }
    conn.settle()
}

fn worker(ctx: &Ctx, index: usize) {
    let mut rng = Rng(ctx.seed ^ (index as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407));
    let mut n = 0;
    while !ctx.done() {
        n += 1;
        bump(&ctx.n.sessions);
        if rng.chance(4) {
            if let Err(why) = fuzz_handshake(ctx, &mut rng) {
                let label = format!("seed {:#x} worker {index} handshake {n}", ctx.seed);
                ctx.violation(&label, why);
            }
            continue;
        }
        let writer = rng.chance(60);
        let role = if writer { "writer" } else { "reader" };
        let label = format!("seed {:#x} worker {index} session {n} ({role})", ctx.seed);
        match FuzzConn::open(ctx, &mut rng, writer, label.clone()) {
            Ok(mut conn) => {
                conn.worker = index;
                // Violations were recorded where found; either way, reconnect.
                let _ = session(&mut conn, &mut rng);
            }
            Err(why) => {
                // Usually the server is gone; the final checks will tell.
                ctx.violation(&label, format!("connection failed: {why}"));
                ctx.stop.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// Gets the canary every ~100 ms; it must stay exactly as put.
fn canary(ctx: &Ctx, expected: &[RecordBatch], version: u64) {
    let client = match Client::connect_reader(&ctx.socket) {
        Ok(c) => c,
        Err(e) => return ctx.violation("canary", format!("connect: {e}")),
    };
    while !ctx.done() {
        std::thread::sleep(Duration::from_millis(100));
        match client.get(CANARY) {
            Ok(t) if t.version == version && t.batches == expected => bump(&ctx.n.canary_checks),
            Ok(t) => ctx.violation(
                "canary",
                format!(
                    "canary changed: version {} (put as {version}), {} rows, batches equal: {}",
                    t.version,
                    t.rows,
                    t.batches == expected
                ),
            ),
            Err(e) => {
                ctx.violation("canary", format!("get {CANARY:?} failed: {e}"));
                if e.code().is_none() {
                    // The connection is gone (the server with it, most likely):
                    // stop, the final checks tell what happened.
                    ctx.stop.store(true, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Final checks

fn server_alive(ctx: &Ctx, server: &mut Server) -> bool {
    match server.child.try_wait() {
        Ok(None) => true,
        Ok(Some(status)) => {
            let log = server.stderr();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            ctx.violation(
                "end",
                format!(
                    "server exited ({status}); stderr tail:\n{}",
                    tail.join("\n")
                ),
            );
            false
        }
        Err(e) => {
            ctx.violation("end", format!("cannot query the server process: {e}"));
            false
        }
    }
}

/// Deletes every name but the canary's (fuzzers may have made names outside
/// f0..f7 by mutating frames).
fn delete_fuzz_names(ctx: &Ctx, c: &Client) {
    let entries = match c.list() {
        Ok(e) => e,
        Err(e) => return ctx.violation("end", format!("list failed: {e}")),
    };
    for entry in entries.iter().filter(|e| e.name != CANARY) {
        if let Err(e) = c.delete(&entry.name) {
            if e.code() != Some(arrowpool::protocol::ErrorCode::NotFound) {
                ctx.violation("end", format!("delete {:?} failed: {e}", entry.name));
            }
        }
    }
}

/// Once every fuzz connection has unregistered, the store must be back to
/// what it was right after the canary put.
fn wait_for_no_leak(ctx: &Ctx, c: &Client, baseline: &StatsReply) {
    let start = Instant::now();
    loop {
        let s = match c.stats() {
            Ok(s) => s,
            Err(e) => return ctx.violation("end", format!("stats failed: {e}")),
        };
        let quiet = s.leases == 0
            && s.pending_bytes == 0
            && s.used_bytes == baseline.used_bytes
            && s.objects == baseline.objects
            && s.names == baseline.names
            && s.connections == baseline.connections;
        if quiet {
            return;
        }
        if start.elapsed() > Duration::from_secs(10) {
            return ctx.violation(
                "end",
                format!(
                    "leak: after 10 s stats are {s:?}; right after the canary put: {baseline:?}"
                ),
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn final_checks(
    ctx: &Ctx,
    server: &mut Server,
    c: &Client,
    batches: &[RecordBatch],
    version: u64,
    baseline: &StatsReply,
) {
    if !server_alive(ctx, server) {
        return;
    }
    if let Err(e) = c.ping() {
        return ctx.violation("end", format!("ping failed: {e}"));
    }
    match c.get(CANARY) {
        Ok(t) if t.version == version && t.batches == batches => {}
        Ok(t) => ctx.violation(
            "end",
            format!("canary changed: version {} (put as {version})", t.version),
        ),
        Err(e) => ctx.violation("end", format!("canary get failed: {e}")),
    }
    delete_fuzz_names(ctx, c);
    wait_for_no_leak(ctx, c, baseline);
    server_alive(ctx, server);
    // Real panics print "thread '...' panicked at"; a refused seal whose
    // decoder panic was caught is logged as "decoder panicked:" and is fine.
    let log = server.stderr();
    let panics: Vec<&str> = log.lines().filter(|l| l.contains("panicked at")).collect();
    if !panics.is_empty() {
        ctx.violation(
            "end",
            format!("server stderr has panics:\n{}", panics.join("\n")),
        );
    }
}

/// `.../registry/src/index.crates.io-HASH/arrow-buffer-60.1.0/src/x.rs:1)`
/// -> `arrow-buffer-60.1.0/src/x.rs:1`.
fn short_path(at: &str) -> &str {
    let at = at.trim_end_matches(')');
    at.split_once("crates.io-")
        .and_then(|(_, rest)| rest.split_once('/'))
        .map_or(at, |(_, rest)| rest)
}

fn summary(ctx: &Ctx, secs: f64, server: &Server) -> String {
    let n = &ctx.n;
    let log = server.stderr();
    let caught: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split_once("decoder panicked: ").map(|(_, m)| m))
        .collect();
    // Where arrow-rs panicked on refused files: missing checks worth reporting.
    let mut places: Vec<&str> = caught
        .iter()
        .filter_map(|m| m.rsplit_once(" at ").map(|(_, at)| short_path(at)))
        .collect();
    places.sort_unstable();
    places.dedup();
    let caught = format!("{} (at {})", caught.len(), places.join(", "));
    format!(
        "fuzz summary (seed {:#x}, {secs:.1} s): {} frames sent, {} replies checked, \
         seals accepted {} / refused {} ({} accepted corrupt files read back), {} sessions \
         ({} closed by oversized frames, {} closed abruptly, {} bad handshakes, {} shutdown \
         notices), {} canary checks, {caught} decoder panics caught by the server, {} violations",
        ctx.seed,
        count(&n.frames),
        count(&n.replies),
        count(&n.seals_accepted),
        count(&n.seals_refused),
        count(&n.readbacks),
        count(&n.sessions),
        count(&n.fatal_closes),
        count(&n.abrupt_closes),
        count(&n.bad_handshakes),
        count(&n.shutdown_notices),
        count(&n.canary_checks),
        count(&ctx.violation_count),
    )
}

#[test]
fn fuzz_the_protocol_against_a_real_server() {
    let secs = env_u64("ARROWPOOL_FUZZ_SECS").unwrap_or(30);
    let seed = env_u64("ARROWPOOL_FUZZ_SEED").unwrap_or_else(random_seed);
    println!("fuzz: seed {seed:#x} for {secs} s (reproduce with ARROWPOOL_FUZZ_SEED={seed:#x})");
    let mut server = Server::start("256M");
    let checker = server.client();
    let (schema, batches) = table(5_000, 3, 7);
    let put = checker.put(CANARY, &schema, &batches).expect("canary put");
    let baseline = checker.stats().expect("stats after the canary put");
    // A lease keeps the canary from being evicted by the fuzzers' creates.
    let hold = checker.get(CANARY).expect("canary get");
    let ctx = Ctx {
        socket: server.socket.clone(),
        seed,
        deadline: Instant::now() + Duration::from_secs(secs),
        arena_len: checker.server_hello().arena_len,
        codes: documented_error_codes(),
        stop: AtomicBool::new(false),
        violations: Mutex::new(Vec::new()),
        violation_count: AtomicU64::new(0),
        n: Counters::default(),
    };
    let started = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| canary(&ctx, &batches, put.version));
        for i in 0..FUZZ_THREADS {
            let ctx = &ctx;
            s.spawn(move || worker(ctx, i));
        }
    });
    drop(hold);
    final_checks(
        &ctx,
        &mut server,
        &checker,
        &batches,
        put.version,
        &baseline,
    );
    println!(
        "{}",
        summary(&ctx, started.elapsed().as_secs_f64(), &server)
    );
    let kept = ctx.violations.lock().unwrap_or_else(|p| p.into_inner());
    assert!(
        kept.is_empty(),
        "fuzzing (seed {seed:#x}, ARROWPOOL_FUZZ_SEED={seed:#x}) found {} violations; the first:\n{}",
        count(&ctx.violation_count),
        kept.join("\n")
    );
}

/// Replays the files a failing run saved (`ARROWPOOL_FUZZ_REPLAY`, paths
/// separated by `:`): each is put as a table into a fresh server and, if
/// accepted, read back as during fuzzing. Prints what happened to each.
#[test]
#[ignore = "set ARROWPOOL_FUZZ_REPLAY to files saved by a failing fuzz run"]
fn replay_saved_seal_files() {
    let paths = std::env::var("ARROWPOOL_FUZZ_REPLAY").unwrap_or_default();
    let server = Server::start("256M");
    let c = server.client();
    let mut failures = Vec::new();
    for path in paths.split(':').filter(|p| !p.is_empty()) {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        let outcome = match c.put_ipc_file("replay", &bytes) {
            Err(e) => format!("refused: {e}"),
            Ok(put) => match readback(&bytes, put.rows) {
                Ok(()) => format!("accepted ({} rows), reads back fine", put.rows),
                Err(why) => {
                    failures.push(path);
                    format!("accepted ({} rows), but {why}", put.rows)
                }
            },
        };
        println!("{path}: {outcome}");
    }
    assert!(
        failures.is_empty(),
        "accepted but unsafe to read: {failures:?}"
    );
}
