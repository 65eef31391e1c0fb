//! Frame header: the fixed 16 bytes in front of every request and reply.
//!
//! ```text
//!  0        4                 12       14       16
//!  +--------+-----------------+--------+--------+------------------+
//!  | len    | request_id      | kind   | flags  | body (len bytes) |
//!  | u32 LE | u64 LE          | u16 LE | u16 LE |                  |
//!  +--------+-----------------+--------+--------+------------------+
//! ```
//! `len` counts the body only. See `docs/PROTOCOL.md` for every kind.

pub const LEN_OFFSET: usize = 0;
pub const LEN_SIZE: usize = 4;
pub const REQUEST_ID_OFFSET: usize = LEN_OFFSET + LEN_SIZE;
pub const REQUEST_ID_SIZE: usize = 8;
pub const KIND_OFFSET: usize = REQUEST_ID_OFFSET + REQUEST_ID_SIZE;
pub const KIND_SIZE: usize = 2;
pub const FLAGS_OFFSET: usize = KIND_OFFSET + KIND_SIZE;
pub const FLAGS_SIZE: usize = 2;
/// Size of the frame header in bytes.
pub const HEADER_LEN: usize = FLAGS_OFFSET + FLAGS_SIZE;
const _: () = assert!(HEADER_LEN == 16);

/// Largest request body the server accepts. Requests carry names, paths and ids,
/// never table data (that goes through the arena), so 64 KiB is generous.
pub const REQUEST_BODY_MAX: usize = 64 * 1024;
/// Largest reply body (a `list` of many objects). Clients must accept this much.
pub const REPLY_BODY_MAX: usize = 16 * 1024 * 1024;

/// Flag on a `release` request: the client does not want a reply.
pub const FLAG_NO_REPLY: u16 = 1;

/// The decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub len: u32,
    pub request_id: u64,
    pub kind: u16,
    pub flags: u16,
}

/// Why bytes could not be turned into a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Not enough bytes yet; read more. Cheap, returned on the hot path.
    Incomplete,
    /// The header announces a body larger than the limit.
    TooLarge { len: usize, max: usize },
    /// The kind is not one this side knows.
    UnknownKind(u16),
    /// The body does not match the layout of its kind.
    Malformed(&'static str),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Incomplete => write!(f, "incomplete frame"),
            FrameError::TooLarge { len, max } => {
                write!(
                    f,
                    "frame body of {len} bytes exceeds the limit of {max} bytes"
                )
            }
            FrameError::UnknownKind(k) => write!(f, "unknown frame kind {k:#06x}"),
            FrameError::Malformed(what) => write!(f, "malformed frame body: {what}"),
        }
    }
}

impl std::error::Error for FrameError {}

impl Header {
    /// Parses a header from the front of `buf`, checking the body limit.
    pub fn parse(buf: &[u8], body_max: usize) -> Result<Header, FrameError> {
        if buf.len() < HEADER_LEN {
            return Err(FrameError::Incomplete);
        }
        let header = Header {
            len: u32::from_le_bytes(field(buf, LEN_OFFSET)),
            request_id: u64::from_le_bytes(field(buf, REQUEST_ID_OFFSET)),
            kind: u16::from_le_bytes(field(buf, KIND_OFFSET)),
            flags: u16::from_le_bytes(field(buf, FLAGS_OFFSET)),
        };
        if header.len as usize > body_max {
            return Err(FrameError::TooLarge {
                len: header.len as usize,
                max: body_max,
            });
        }
        Ok(header)
    }

    /// Total frame size: header plus body.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.len as usize
    }
}

/// Appends a complete frame to `out`: header, then whatever `body` writes.
pub fn write_frame(
    out: &mut Vec<u8>,
    request_id: u64,
    kind: u16,
    flags: u16,
    body: impl FnOnce(&mut Vec<u8>),
) {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    body(out);
    let len = (out.len() - start - HEADER_LEN) as u32;
    let header = &mut out[start..start + HEADER_LEN];
    header[LEN_OFFSET..][..LEN_SIZE].copy_from_slice(&len.to_le_bytes());
    header[REQUEST_ID_OFFSET..][..REQUEST_ID_SIZE].copy_from_slice(&request_id.to_le_bytes());
    header[KIND_OFFSET..][..KIND_SIZE].copy_from_slice(&kind.to_le_bytes());
    header[FLAGS_OFFSET..][..FLAGS_SIZE].copy_from_slice(&flags.to_le_bytes());
}

/// The `N` bytes at `at` of a buffer known to hold a whole header.
fn field<const N: usize>(buf: &[u8], at: usize) -> [u8; N] {
    let mut v = [0u8; N];
    v.copy_from_slice(&buf[at..at + N]);
    v
}

/// The request id of a frame whose header is in `buf` (even one whose length
/// is refused), so the error reply can name it; 0 when `buf` is shorter.
pub fn request_id_of(buf: &[u8]) -> u64 {
    buf.get(REQUEST_ID_OFFSET..REQUEST_ID_OFFSET + REQUEST_ID_SIZE)
        .map_or(0, |b| u64::from_le_bytes(field(b, 0)))
}

/// Reads fixed-size little-endian fields and length-prefixed strings from a body,
/// failing with `Malformed` instead of panicking on short or bad input.
pub struct BodyReader<'a> {
    buf: &'a [u8],
}

impl<'a> BodyReader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        BodyReader { buf }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FrameError> {
        if self.buf.len() < n {
            return Err(FrameError::Malformed(what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, FrameError> {
        Ok(self.take(1, what)?[0])
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, FrameError> {
        Ok(u16::from_le_bytes(
            self.take(2, what)?.try_into().expect("2 bytes"),
        ))
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, FrameError> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, FrameError> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }

    /// A string: u16 LE byte length, then that many bytes of UTF-8.
    pub fn str(&mut self, what: &'static str) -> Result<&'a str, FrameError> {
        let len = self.u16(what)? as usize;
        let bytes = self.take(len, what)?;
        std::str::from_utf8(bytes).map_err(|_| FrameError::Malformed("string is not valid UTF-8"))
    }

    /// Bytes not read yet (for a body with an optional trailing part).
    pub fn rest_len(&self) -> usize {
        self.buf.len()
    }

    /// Remaining bytes, for bodies that end in a blob (JSON replies).
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Fails if bytes are left over: a body must be exactly its layout.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Malformed("trailing bytes after body"))
        }
    }
}

/// Appends a u16-length-prefixed string; one longer than 65535 bytes is an
/// error (nothing is appended), never silently cut.
pub fn put_str(out: &mut Vec<u8>, s: &str) -> Result<(), FrameError> {
    let len = u16::try_from(s.len())
        .map_err(|_| FrameError::Malformed("string longer than 65535 bytes"))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// `put_str` for text the sender writes for people (error messages): cut at
/// the last character boundary within 65535 bytes instead of refused.
pub fn put_str_truncated(out: &mut Vec<u8>, s: &str) {
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..end]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Kind;

    #[test]
    fn header_round_trip() {
        let mut out = Vec::new();
        write_frame(&mut out, 42, Kind::Ping as u16, 3, |b| {
            b.extend_from_slice(b"xyz")
        });
        let h = Header::parse(&out, REQUEST_BODY_MAX).unwrap();
        assert_eq!(
            h,
            Header {
                len: 3,
                request_id: 42,
                kind: Kind::Ping as u16,
                flags: 3
            }
        );
        assert_eq!(h.frame_len(), out.len());
    }

    #[test]
    fn short_header_is_incomplete() {
        assert_eq!(Header::parse(&[0u8; 15], 10), Err(FrameError::Incomplete));
    }

    #[test]
    fn oversized_body_is_rejected() {
        let mut buf = [0u8; 16];
        buf[0..4].copy_from_slice(&(1u32 << 30).to_le_bytes());
        assert!(matches!(
            Header::parse(&buf, REQUEST_BODY_MAX),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn body_reader_rejects_bad_strings() {
        let mut r = BodyReader::new(&[5, 0, b'a']);
        assert!(matches!(r.str("name"), Err(FrameError::Malformed(_))));
        let mut r = BodyReader::new(&[2, 0, 0xff, 0xfe]);
        assert!(matches!(r.str("name"), Err(FrameError::Malformed(_))));
    }

    #[test]
    fn over_long_strings_are_an_error_not_cut() {
        let mut out = vec![7];
        let long = "é".repeat(40_000); // 80000 bytes
        assert!(put_str(&mut out, &long).is_err());
        assert_eq!(out, [7], "nothing appended");
        put_str(&mut out, "ok").unwrap();
        assert_eq!(out, [7, 2, 0, b'o', b'k']);
    }

    #[test]
    fn truncated_text_ends_on_a_character_boundary() {
        let mut out = Vec::new();
        // Two-byte characters: byte 65535 is the middle of one.
        let long = "é".repeat(40_000);
        put_str_truncated(&mut out, &long);
        let len = u16::from_le_bytes([out[0], out[1]]) as usize;
        assert_eq!(len, 65_534, "one byte short: no half character");
        assert!(std::str::from_utf8(&out[2..]).is_ok());
    }
}
