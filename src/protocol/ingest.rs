//! `ingest`: the server reads a Parquet file (or a directory of them) into a
//! new version of `name`.
//!
//! ```text
//! request:  | name str | path str | column_count u16 | column str * column_count |
//!           [ option_count u16 | (key str, value str) * option_count ]
//! reply:    UTF-8 JSON object (IngestReply)
//! ```
//! `column_count` 0 means all columns. The options (object store settings for
//! this ingest, such as `aws_access_key_id`; `docs/INGEST.md`) are sent only
//! when there are some: a body without them is a request of an older client.
//! Their values can be secrets: `Debug` prints their keys only, and no error
//! or log quotes a value.
use super::frame::{put_str, BodyReader, FrameError};
use super::{check_name, COLUMNS_MAX, PATH_MAX};

/// Options one ingest may carry.
pub const OPTIONS_MAX: usize = 64;

#[derive(Clone, PartialEq)]
pub struct Ingest {
    pub name: String,
    pub path: String,
    pub columns: Vec<String>,
    /// Object store settings (key, value) for this ingest only.
    pub options: Vec<(String, String)>,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&str> = self.options.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("Ingest")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("columns", &self.columns)
            .field("options (values hidden)", &keys)
            .finish()
    }
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
        if self.options.len() > OPTIONS_MAX {
            return Err(FrameError::Malformed("more than 64 ingest options"));
        }
        let start = out.len();
        let result = (|| {
            put_str(out, &self.name)?;
            put_str(out, &self.path)?;
            out.extend_from_slice(&(self.columns.len() as u16).to_le_bytes());
            self.columns.iter().try_for_each(|c| put_str(out, c))?;
            if !self.options.is_empty() {
                out.extend_from_slice(&(self.options.len() as u16).to_le_bytes());
                for (k, v) in &self.options {
                    put_str(out, k)?;
                    put_str(out, v)?;
                }
            }
            Ok(())
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
        let mut options = Vec::new();
        if r.rest_len() > 0 {
            let count = r.u16("option count")? as usize;
            if count == 0 || count > OPTIONS_MAX {
                return Err(FrameError::Malformed(
                    "ingest options: 1 to 64 when present",
                ));
            }
            for _ in 0..count {
                let key = r.str("option key")?;
                let value = r.str("option value")?;
                if key.is_empty() {
                    return Err(FrameError::Malformed("an ingest option with an empty key"));
                }
                options.push((key.to_owned(), value.to_owned()));
            }
        }
        r.finish()?;
        Ok(Ingest {
            name: name.to_owned(),
            path: path.to_owned(),
            columns,
            options,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(options: Vec<(String, String)>) -> Ingest {
        Ingest {
            name: "t".into(),
            path: "s3://b/k.parquet".into(),
            columns: vec!["a".into()],
            options,
        }
    }

    #[test]
    fn options_are_sent_only_when_given_and_never_shown() {
        let plain = request(Vec::new());
        let mut old = Vec::new();
        plain.encode(&mut old).unwrap();
        // An older client's body (no options) decodes as before.
        assert_eq!(Ingest::decode(&old).unwrap(), plain);
        let with = request(vec![
            ("aws_region".into(), "eu-west-1".into()),
            ("aws_secret_access_key".into(), "very-secret".into()),
        ]);
        let mut body = Vec::new();
        with.encode(&mut body).unwrap();
        assert_eq!(Ingest::decode(&body).unwrap(), with);
        let shown = format!("{with:?}");
        assert!(
            shown.contains("aws_secret_access_key") && !shown.contains("very-secret"),
            "{shown}"
        );
        // A count of 0 after the columns, an empty key, too many: malformed.
        let mut zero = old.clone();
        zero.extend_from_slice(&0u16.to_le_bytes());
        assert!(Ingest::decode(&zero).is_err());
        let too_many = request(
            (0..=OPTIONS_MAX)
                .map(|i| (format!("k{i}"), "v".into()))
                .collect(),
        );
        assert!(too_many.encode(&mut Vec::new()).is_err());
        let mut empty_key = Vec::new();
        request(vec![(String::new(), "v".into())])
            .encode(&mut empty_key)
            .unwrap();
        assert!(Ingest::decode(&empty_key).is_err());
    }
}
