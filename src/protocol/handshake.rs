//! The handshake: the first bytes on a new connection, before any frame.
//!
//! ```text
//! client hello (8 bytes):
//!  0         4         6         8
//!  | magic   | version | flags   |
//!  | "APc1"  | u16 LE  | u16 LE  |      flags bit 0: WRITE (also send a writable fd)
//!
//! server hello (32 bytes), sent with SCM_RIGHTS carrying `fd_count` descriptors:
//!  0         4         6         8             16            20            21          22         23                         32
//!  | magic   | version | status  | arena_len   | map_align   | memory_kind | io_driver | fd_count | reserved (9 bytes, zero) |
//!  | "APs1"  | u16 LE  | u16 LE  | u64 LE      | u32 LE      | u8          | u8        | u8       |                          |
//! ```
//! Descriptor 0 is read-only (map it `PROT_READ`); descriptor 1, present only when
//! WRITE was asked, is read-write.

pub const CLIENT_MAGIC: [u8; 4] = *b"APc1";
pub const SERVER_MAGIC: [u8; 4] = *b"APs1";
pub const PROTOCOL_VERSION: u16 = 1;
pub const FLAG_WRITE: u16 = 1;

pub const CLIENT_HELLO_LEN: usize = 8;
const _: () = assert!(CLIENT_HELLO_LEN == 4 + 2 + 2);

pub const SERVER_MAGIC_OFFSET: usize = 0;
pub const SERVER_VERSION_OFFSET: usize = SERVER_MAGIC_OFFSET + 4;
pub const SERVER_STATUS_OFFSET: usize = SERVER_VERSION_OFFSET + 2;
pub const SERVER_ARENA_LEN_OFFSET: usize = SERVER_STATUS_OFFSET + 2;
pub const SERVER_MAP_ALIGN_OFFSET: usize = SERVER_ARENA_LEN_OFFSET + 8;
pub const SERVER_MEMORY_KIND_OFFSET: usize = SERVER_MAP_ALIGN_OFFSET + 4;
pub const SERVER_IO_DRIVER_OFFSET: usize = SERVER_MEMORY_KIND_OFFSET + 1;
pub const SERVER_FD_COUNT_OFFSET: usize = SERVER_IO_DRIVER_OFFSET + 1;
pub const SERVER_RESERVED_OFFSET: usize = SERVER_FD_COUNT_OFFSET + 1;
pub const SERVER_HELLO_LEN: usize = 32;
const _: () = assert!(SERVER_RESERVED_OFFSET == 23);

/// Handshake status codes.
pub const STATUS_OK: u16 = 0;
pub const STATUS_BAD_MAGIC: u16 = 1;
pub const STATUS_BAD_VERSION: u16 = 2;
pub const STATUS_TOO_MANY_CONNECTIONS: u16 = 3;
/// The client asked for write access and its user is not in `--writers-group`
/// (it may connect read-only).
pub const STATUS_WRITE_REFUSED: u16 = 4;
/// The client's user is in neither `--readers-group` nor `--writers-group`.
pub const STATUS_ACCESS_REFUSED: u16 = 5;

/// What a client asks for in its hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientHello {
    pub version: u16,
    pub flags: u16,
}

impl ClientHello {
    pub fn encode(&self) -> [u8; CLIENT_HELLO_LEN] {
        let mut b = [0u8; CLIENT_HELLO_LEN];
        b[0..4].copy_from_slice(&CLIENT_MAGIC);
        b[4..6].copy_from_slice(&self.version.to_le_bytes());
        b[6..8].copy_from_slice(&self.flags.to_le_bytes());
        b
    }

    /// Decodes a hello; `Err(status)` tells the client why it is refused.
    pub fn decode(b: &[u8; CLIENT_HELLO_LEN]) -> Result<ClientHello, u16> {
        if b[0..4] != CLIENT_MAGIC {
            return Err(STATUS_BAD_MAGIC);
        }
        let version = u16::from_le_bytes([b[4], b[5]]);
        if version != PROTOCOL_VERSION {
            return Err(STATUS_BAD_VERSION);
        }
        Ok(ClientHello {
            version,
            flags: u16::from_le_bytes([b[6], b[7]]),
        })
    }
}

/// The server's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerHello {
    pub version: u16,
    pub status: u16,
    pub arena_len: u64,
    pub map_align: u32,
    /// 0 hugetlb, 1 transparent hugepages, 2 4 KiB pages.
    pub memory_kind: u8,
    /// 0 io_uring, 1 polling.
    pub io_driver: u8,
    pub fd_count: u8,
}

impl ServerHello {
    pub fn encode(&self) -> [u8; SERVER_HELLO_LEN] {
        let mut b = [0u8; SERVER_HELLO_LEN];
        b[0..4].copy_from_slice(&SERVER_MAGIC);
        b[SERVER_VERSION_OFFSET..SERVER_VERSION_OFFSET + 2]
            .copy_from_slice(&self.version.to_le_bytes());
        b[SERVER_STATUS_OFFSET..SERVER_STATUS_OFFSET + 2]
            .copy_from_slice(&self.status.to_le_bytes());
        b[SERVER_ARENA_LEN_OFFSET..SERVER_ARENA_LEN_OFFSET + 8]
            .copy_from_slice(&self.arena_len.to_le_bytes());
        b[SERVER_MAP_ALIGN_OFFSET..SERVER_MAP_ALIGN_OFFSET + 4]
            .copy_from_slice(&self.map_align.to_le_bytes());
        b[SERVER_MEMORY_KIND_OFFSET] = self.memory_kind;
        b[SERVER_IO_DRIVER_OFFSET] = self.io_driver;
        b[SERVER_FD_COUNT_OFFSET] = self.fd_count;
        b
    }

    pub fn decode(b: &[u8; SERVER_HELLO_LEN]) -> Option<ServerHello> {
        if b[0..4] != SERVER_MAGIC {
            return None;
        }
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let mut len = [0u8; 8];
        len.copy_from_slice(&b[SERVER_ARENA_LEN_OFFSET..SERVER_ARENA_LEN_OFFSET + 8]);
        let mut align = [0u8; 4];
        align.copy_from_slice(&b[SERVER_MAP_ALIGN_OFFSET..SERVER_MAP_ALIGN_OFFSET + 4]);
        Some(ServerHello {
            version: u16_at(SERVER_VERSION_OFFSET),
            status: u16_at(SERVER_STATUS_OFFSET),
            arena_len: u64::from_le_bytes(len),
            map_align: u32::from_le_bytes(align),
            memory_kind: b[SERVER_MEMORY_KIND_OFFSET],
            io_driver: b[SERVER_IO_DRIVER_OFFSET],
            fd_count: b[SERVER_FD_COUNT_OFFSET],
        })
    }
}
