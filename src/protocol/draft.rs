//! The draft of a new table version (`publish`): which columns of which
//! batches are new (written by the writer as IPC files in its own pending
//! chunks) and which already lie in the arena (named by their buffers).
//!
//! ```text
//! draft:   | magic "APDRAFT1" | schema_len u32 | schema (IPC schema message) |
//!          | chunk_count u32 | (chunk_id u64, length u64) × chunk_count |
//!          | batch_count u32 | batch × batch_count |
//! batch:   | rows u64 | column × (fields in the schema) |
//! column:  | 0 u8 | chunk u32 | batch u32 | column u32 |     new: column of batch of the file in chunk (an index into the chunk list)
//!          | 1 u8 | n u16 | (offset u64, length u64) × n |   existing: the column whose non-empty buffers these are
//!          | 2 u8 | row_offset u64 | rows u64 | n u16 | (offset u64, length u64) × n |
//!                                                       rows [row_offset, +rows) of that existing column
//! ```
//! All little-endian. The schema is an encapsulated IPC message (what pyarrow's
//! `Schema.serialize()` writes). An existing column is found by its non-empty
//! buffers, in any order: arena offsets and lengths of every buffer of the
//! array and its children, dictionary values excluded.
use super::frame::{BodyReader, FrameError};

pub const MAGIC: &[u8; 8] = b"APDRAFT1";
/// Most (batch, column) entries in one draft.
pub const CELLS_MAX: usize = 4 << 20;
/// Most buffers one existing column may name.
pub const COLUMN_BUFFERS_MAX: usize = 4096;

/// Where a column of a batch comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Column `column` of batch `batch` of the file in `chunks[chunk]`.
    New { chunk: u32, batch: u32, column: u32 },
    /// The column of a live version whose non-empty buffers are these
    /// (offset, length) pairs.
    Existing { buffers: Vec<(u64, u64)> },
    /// Rows `[offset, offset + rows)` of the existing column named by its
    /// buffers (a slice: shared where IPC can express it in place).
    Slice {
        offset: u64,
        rows: u64,
        buffers: Vec<(u64, u64)>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DraftBatch {
    pub rows: u64,
    pub columns: Vec<Source>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draft {
    /// The encapsulated IPC schema message.
    pub schema: Vec<u8>,
    /// The writer's pending chunks holding new columns, with their lengths.
    pub chunks: Vec<(u64, u64)>,
    pub batches: Vec<DraftBatch>,
}

impl Draft {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(self.schema.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.schema);
        out.extend_from_slice(&(self.chunks.len() as u32).to_le_bytes());
        for (id, len) in &self.chunks {
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&len.to_le_bytes());
        }
        out.extend_from_slice(&(self.batches.len() as u32).to_le_bytes());
        for b in &self.batches {
            out.extend_from_slice(&b.rows.to_le_bytes());
            for c in &b.columns {
                match c {
                    Source::New {
                        chunk,
                        batch,
                        column,
                    } => {
                        out.push(0);
                        out.extend_from_slice(&chunk.to_le_bytes());
                        out.extend_from_slice(&batch.to_le_bytes());
                        out.extend_from_slice(&column.to_le_bytes());
                    }
                    Source::Slice {
                        offset,
                        rows,
                        buffers,
                    } => {
                        out.push(2);
                        out.extend_from_slice(&offset.to_le_bytes());
                        out.extend_from_slice(&rows.to_le_bytes());
                        out.extend_from_slice(&(buffers.len() as u16).to_le_bytes());
                        for (o, l) in buffers {
                            out.extend_from_slice(&o.to_le_bytes());
                            out.extend_from_slice(&l.to_le_bytes());
                        }
                    }
                    Source::Existing { buffers } => {
                        out.push(1);
                        out.extend_from_slice(&(buffers.len() as u16).to_le_bytes());
                        for (o, l) in buffers {
                            out.extend_from_slice(&o.to_le_bytes());
                            out.extend_from_slice(&l.to_le_bytes());
                        }
                    }
                }
            }
        }
    }

    /// Decodes a draft whose schema has `columns` fields: the caller reads the
    /// schema first (`schema_of`). Bounded: never allocates more than the
    /// draft's own size allows.
    pub fn decode(buf: &[u8], columns: usize) -> Result<Draft, FrameError> {
        let mut r = BodyReader::new(buf);
        let schema = Self::schema_bytes(&mut r)?.to_vec();
        let chunk_count = r.u32("chunk count")? as usize;
        if chunk_count > buf.len() / 16 {
            return Err(FrameError::Malformed("draft chunk count exceeds the draft"));
        }
        let mut chunks = Vec::with_capacity(chunk_count);
        for _ in 0..chunk_count {
            chunks.push((r.u64("chunk id")?, r.u64("chunk length")?));
        }
        let batch_count = r.u32("batch count")? as usize;
        if batch_count > buf.len() / 8 || batch_count.saturating_mul(columns) > CELLS_MAX {
            return Err(FrameError::Malformed(
                "draft has too many batches x columns",
            ));
        }
        let mut batches = Vec::with_capacity(batch_count);
        for _ in 0..batch_count {
            let rows = r.u64("batch rows")?;
            let mut cols = Vec::with_capacity(columns);
            for _ in 0..columns {
                cols.push(match r.u8("column source")? {
                    0 => Source::New {
                        chunk: r.u32("chunk index")?,
                        batch: r.u32("batch index")?,
                        column: r.u32("column index")?,
                    },
                    1 => Source::Existing {
                        buffers: Self::buffers(&mut r)?,
                    },
                    2 => Source::Slice {
                        offset: r.u64("slice row offset")?,
                        rows: r.u64("slice rows")?,
                        buffers: Self::buffers(&mut r)?,
                    },
                    _ => return Err(FrameError::Malformed("column source must be 0, 1 or 2")),
                });
            }
            batches.push(DraftBatch {
                rows,
                columns: cols,
            });
        }
        r.finish()?;
        Ok(Draft {
            schema,
            chunks,
            batches,
        })
    }

    /// An existing column's buffers: a count, then (offset, length) pairs.
    fn buffers(r: &mut BodyReader<'_>) -> Result<Vec<(u64, u64)>, FrameError> {
        let n = r.u16("buffer count")? as usize;
        if n == 0 || n > COLUMN_BUFFERS_MAX {
            return Err(FrameError::Malformed(
                "an existing column names 1 to 4096 buffers",
            ));
        }
        let mut buffers = Vec::with_capacity(n);
        for _ in 0..n {
            buffers.push((r.u64("buffer offset")?, r.u64("buffer length")?));
        }
        Ok(buffers)
    }

    fn schema_bytes<'a>(r: &mut BodyReader<'a>) -> Result<&'a [u8], FrameError> {
        let magic = [
            r.u32("draft magic")?.to_le_bytes(),
            r.u32("draft magic")?.to_le_bytes(),
        ]
        .concat();
        if magic != MAGIC {
            return Err(FrameError::Malformed("not a draft (no APDRAFT1 magic)"));
        }
        let len = r.u32("schema length")? as usize;
        let rest = r.rest();
        if rest.len() < len {
            return Err(FrameError::Malformed("draft schema exceeds the draft"));
        }
        let (schema, tail) = rest.split_at(len);
        *r = BodyReader::new(tail);
        Ok(schema)
    }

    /// The schema message of a draft, to learn its field count before `decode`.
    pub fn schema_of(buf: &[u8]) -> Result<&[u8], FrameError> {
        Self::schema_bytes(&mut BodyReader::new(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bad_drafts_are_errors() {
        let d = Draft {
            schema: vec![1, 2, 3, 4],
            chunks: vec![(7, 4096)],
            batches: vec![DraftBatch {
                rows: 10,
                columns: vec![
                    Source::New {
                        chunk: 0,
                        batch: 0,
                        column: 1,
                    },
                    Source::Existing {
                        buffers: vec![(65536, 80), (70000, 2)],
                    },
                    Source::Slice {
                        offset: 3,
                        rows: 10,
                        buffers: vec![(90000, 800)],
                    },
                ],
            }],
        };
        let mut buf = Vec::new();
        d.encode(&mut buf);
        assert_eq!(Draft::schema_of(&buf).unwrap(), &[1, 2, 3, 4]);
        assert_eq!(Draft::decode(&buf, 3).unwrap(), d);
        assert!(Draft::decode(&buf, 4).is_err(), "more columns than written");
        assert!(Draft::decode(&buf, 1).is_err(), "trailing bytes");
        for cut in 0..buf.len() {
            assert!(Draft::decode(&buf[..cut], 3).is_err());
        }
        let mut bad = buf.clone();
        bad[0] = b'X';
        assert!(Draft::decode(&bad, 3).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512), columns in 0usize..20) {
            let mut buf = MAGIC.to_vec();
            buf.extend_from_slice(&bytes);
            let _ = Draft::decode(&buf, columns);
        }
    }
}
