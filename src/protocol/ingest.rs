//! `ingest`: the server reads a Parquet file (or a directory of them) into a
//! new version of `name`.
//!
//! ```text
//! request:  | name str | path str | column_count u16 | column str * column_count |
//! reply:    UTF-8 JSON object (IngestReply)
//! ```
//! `column_count` 0 means all columns.
use super::frame::{put_str, BodyReader, FrameError};
use super::{check_name, COLUMNS_MAX, PATH_MAX};

#[derive(Debug, Clone, PartialEq)]
pub struct Ingest {
    pub name: String,
    pub path: String,
    pub columns: Vec<String>,
}

impl Ingest {
    /// Fails, appending nothing, when the request breaks the limits `decode`
    /// checks (name rules, `PATH_MAX`, `COLUMNS_MAX`, 65535-byte strings).
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        check_name(&self.name)?;
        if self.path.is_empty() || self.path.len() > PATH_MAX {
            return Err(FrameError::Malformed(
                "path is empty or longer than 4096 bytes",
            ));
        }
        if self.columns.len() > COLUMNS_MAX {
            return Err(FrameError::Malformed("more than 4096 columns"));
        }
        let start = out.len();
        let result = (|| {
            put_str(out, &self.name)?;
            put_str(out, &self.path)?;
            out.extend_from_slice(&(self.columns.len() as u16).to_le_bytes());
            self.columns.iter().try_for_each(|c| put_str(out, c))
        })();
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    pub fn decode(body: &[u8]) -> Result<Self, FrameError> {
        let mut r = BodyReader::new(body);
        let name = r.str("name")?;
        check_name(name)?;
        let path = r.str("path")?;
        if path.is_empty() || path.len() > PATH_MAX {
            return Err(FrameError::Malformed(
                "path is empty or longer than 4096 bytes",
            ));
        }
        let count = r.u16("column count")? as usize;
        if count > COLUMNS_MAX {
            return Err(FrameError::Malformed("more than 4096 columns"));
        }
        let mut columns = Vec::with_capacity(count);
        for _ in 0..count {
            columns.push(r.str("column")?.to_owned());
        }
        r.finish()?;
        Ok(Ingest {
            name: name.to_owned(),
            path: path.to_owned(),
            columns,
        })
    }
}

/// The `ingest` reply.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct IngestReply {
    pub version: u64,
    pub rows: u64,
    /// Bytes of the Arrow IPC file written into the arena.
    pub bytes: u64,
    /// Bytes read from Parquet files.
    pub parquet_bytes: u64,
    pub files: u64,
    /// Time the reader spent in I/O. Reading, decoding and writing overlap, so
    /// the three stage times do not add up to `total_ms`.
    pub read_ms: f64,
    /// Decoding time, summed over the decoder threads.
    pub decode_ms: f64,
    /// Time spent copying into the arena, summed over threads.
    pub write_ms: f64,
    /// Wall time of the whole ingest.
    pub total_ms: f64,
    /// How files were read: `io_uring/direct`, `io_uring/buffered`, `pread/...`,
    /// or `.../direct+buffered`; with `(io_uring unavailable: ...)` on fallback.
    pub reader: String,
}
