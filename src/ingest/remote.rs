//! Parquet files in object storage: `s3://bucket/key.parquet` (also `s3a://`),
//! `gs://`, `az://` / `abfs[s]://` / `azure://`, and `https://` (`http://`)
//! URLs, each naming one file or a prefix of many. Listed, their footers read
//! and their projected column chunks fetched with ranged GETs through the
//! `object_store` crate; the bytes then go through the same decode and write
//! pipeline as a local file's (`pipeline.rs`), on every core.
//!
//! ```text
//!  URL -> store (credentials from the server's environment) -> objects
//!  footers: ranged GETs of each object's tail (footer.rs, as for a file)
//!  extents: pieces of at most PIECE_BYTES, PIECES_IN_FLIGHT GETs at once on a
//!           small tokio runtime, each streamed into its place in the extent's
//!           buffer (the kept read buffers, as for a file) -> the decoders
//! ```
//! Streaming each response's chunks into the extent's buffer is the one copy
//! the bytes take after the kernel's: `get_range` collects a response into a
//! fresh `Vec` (page faults on every ingest), and the pieces of an extent were
//! then joined into another. Measured on S3 ingests of the 844 MiB loadgen
//! file (s3rver on loopback, 2-core VM, two alternating rounds): the server's
//! CPU per ingest went from 1.18-1.22 s to 1.06-1.11 s (a local ingest of the
//! same file: 0.91-1.00 s); the wall time did not move measurably (1.04-1.18 s
//! against 1.07-1.20 s): the emulator's own 0.6-1.1 s of CPU shares the cores.
//! A URL names one object if it exists; otherwise (or when it ends in `/`)
//! it is a prefix, and its `.parquet` objects directly below it are read in
//! name order, like a local directory (hidden `.x`/`_x` names and deeper
//! "directories" skipped). An empty object at the URL (a bucket's "directory
//! marker", a WebDAV collection) is a prefix too when objects lie below it.
//! Over `http(s)://` listing is WebDAV's `PROPFIND` (what `object_store`'s
//! HTTP store speaks): a plain web server can serve single files, and a
//! prefix needs a WebDAV server (nginx's or Apache's dav module, rclone,
//! WsgiDAV); a server that refuses `PROPFIND` gets an error that says so.
//!
//! Credentials and endpoints come from the server's environment, the usual
//! variables of each store (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, ...; `GOOGLE_*`;
//! `AZURE_*`), read when the ingest starts: the server, not the client, reads
//! the data. Requests are retried a few times and for at most
//! `RETRY_TIMEOUT`, never indefinitely, so an unreachable store is an error
//! within seconds rather than a stuck ingest.

use std::collections::VecDeque;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, ObjectStoreScheme, RetryConfig};

use super::buffer::{BufferPool, Landing, ReadBudget, ReadBuf, Slot};
use super::error::IngestError;
use super::files::FILES_MAX;
use super::footer::FooterSource;
use super::plan::Extent;
use super::read::ReadStats;

/// Largest single ranged GET: large enough that per-request costs vanish,
/// small enough that one column chunk is fetched by several requests at once.
pub const PIECE_BYTES: u64 = 8 * 1024 * 1024;
/// GETs in flight at once (object stores serve parallel ranges faster than
/// one stream).
pub const PIECES_IN_FLIGHT: usize = 16;
/// How long one request may be retried (connection refused, 5xx) before the
/// ingest fails.
const RETRY_TIMEOUT: Duration = Duration::from_secs(15);
/// Retries per request.
const RETRIES_MAX: usize = 3;
/// Threads of the runtime that drives the requests (TLS, HTTP framing).
const RUNTIME_THREADS: usize = 2;

/// URL schemes read from object storage (others, such as `flight://`, are
/// not ours).
const SCHEMES: &[&str] = &[
    "s3", "s3a", "gs", "az", "adl", "azure", "abfs", "abfss", "http", "https",
];

/// Whether `path` is a URL this module reads.
pub fn is_object_url(path: &str) -> bool {
    path.split_once("://")
        .is_some_and(|(scheme, _)| SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()))
}

/// One Parquet object.
pub struct Object {
    /// The object's URL, as errors and decoders name it.
    url: PathBuf,
    location: ObjectPath,
    len: u64,
    store: Arc<dyn ObjectStore>,
    runtime: tokio::runtime::Handle,
}

impl FooterSource for Object {
    fn path(&self) -> &Path {
        &self.url
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, len: u64) -> Result<Bytes, IngestError> {
        let range = offset..offset.saturating_add(len);
        let got = self
            .runtime
            .block_on(self.store.get_range(&self.location, range.clone()));
        // Footers: small, read once; `get_range`'s own buffer is fine.
        let sent = got
            .as_ref()
            .map(|b| b.len() as u64)
            .map_err(|e| e.to_string());
        check_piece(&self.url, &range, sent)?;
        got.map_err(|e| IngestError::Internal(e.to_string()))
    }
}

/// The objects of one ingest and the runtime that fetches them.
pub struct Objects {
    pub objects: Vec<Object>,
    // Dropped last: the objects hold handles to it.
    runtime: tokio::runtime::Runtime,
}

impl Objects {
    /// Lists the Parquet objects `url` names (see the module docs).
    pub fn open(url: &str, options: &[(String, String)]) -> Result<Objects, IngestError> {
        let error = |what: String| IngestError::Open {
            path: url.into(),
            err: std::io::Error::other(what),
        };
        // reqwest's rustls takes the process's crypto provider: ring, as
        // tonic's TLS. Installing it twice is refused harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let parsed = url::Url::parse(url).map_err(|e| error(format!("not a valid URL: {e}")))?;
        let (store, prefix) = store_for(&parsed, options).map_err(|e| error(e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_THREADS)
            .thread_name("arrowpool-objects")
            .enable_all()
            .build()
            .map_err(|e| error(format!("cannot start the object store runtime: {e}")))?;
        let metas = runtime
            .block_on(list(&*store, &prefix, url.ends_with('/')))
            .map_err(|e| error(listing_error(&parsed, e)))?;
        if metas.is_empty() {
            return Err(error(
                "no object there, and no .parquet objects directly below it as a prefix".into(),
            ));
        }
        if metas.len() > FILES_MAX {
            return Err(IngestError::TooManyFiles {
                path: url.into(),
                max: FILES_MAX,
            });
        }
        let base = object_url(&parsed, &prefix);
        let objects = metas
            .into_iter()
            .map(|m| Object {
                url: PathBuf::from(if m.location == prefix {
                    url.to_string()
                } else {
                    format!("{base}{}", relative(&prefix, &m.location))
                }),
                location: m.location,
                len: m.size,
                store: store.clone(),
                runtime: runtime.handle().clone(),
            })
            .collect();
        Ok(Objects { objects, runtime })
    }

    /// Fetches every extent (see `read::read_extents`, whose contract this
    /// keeps): `done(extent, bytes)` as each one's pieces are all in, the
    /// read-ahead budget charged before an extent is started.
    pub fn read_extents(
        &self,
        extents: &[Extent],
        budget: &Arc<ReadBudget>,
        mut done: impl FnMut(usize, Bytes) -> Result<(), IngestError>,
    ) -> Result<ReadStats, IngestError> {
        let mut f = Fetch::new(self, extents);
        let mut stats = ReadStats {
            reader: format!("object_store ({PIECES_IN_FLIGHT} ranged GETs in flight)"),
            ..ReadStats::default()
        };
        loop {
            if budget.is_cancelled() {
                return Ok(stats);
            }
            f.fill(budget);
            if f.in_flight == 0 {
                if f.waiting.is_empty() && f.next >= extents.len() {
                    return Ok(stats);
                }
                continue;
            }
            let began = Instant::now();
            let (e, got) =
                f.rx.recv()
                    .map_err(|_| IngestError::Internal("object store requests vanished".into()))?;
            stats.io_time += began.elapsed();
            f.in_flight -= 1;
            stats.bytes += got?;
            if let Some(bytes) = f.arrived(e)? {
                done(e, bytes)?;
            }
        }
    }
}

/// A piece's extent and its length once written into the extent's buffer
/// (or why not).
type Fetched = (usize, Result<u64, IngestError>);

/// The state of one `read_extents`: extents started, pieces waiting, in
/// flight and arrived.
struct Fetch<'a> {
    objects: &'a Objects,
    extents: &'a [Extent],
    tx: std::sync::mpsc::Sender<Fetched>,
    rx: std::sync::mpsc::Receiver<Fetched>,
    /// Per started extent: the buffer its pieces land in (until all have),
    /// and how many are missing.
    landings: Vec<Option<Arc<Landing>>>,
    left: Vec<usize>,
    pool: Arc<BufferPool>,
    /// Pieces to start: extent, range of the object, and the part of the
    /// extent's buffer the piece writes.
    waiting: VecDeque<(usize, Range<u64>, Slot)>,
    /// The next extent to start.
    next: usize,
    in_flight: usize,
}

impl<'a> Fetch<'a> {
    fn new(objects: &'a Objects, extents: &'a [Extent]) -> Fetch<'a> {
        let (tx, rx) = std::sync::mpsc::channel();
        Fetch {
            objects,
            extents,
            tx,
            rx,
            landings: Vec::with_capacity(extents.len()),
            left: Vec::with_capacity(extents.len()),
            pool: BufferPool::shared(),
            waiting: VecDeque::new(),
            next: 0,
            in_flight: 0,
        }
    }

    /// Starts GETs until `PIECES_IN_FLIGHT` are in flight: waiting pieces
    /// first, then new extents while the budget has room for them (waiting
    /// for room only when nothing is in flight, as the local reader does).
    fn fill(&mut self, budget: &Arc<ReadBudget>) {
        while self.in_flight < PIECES_IN_FLIGHT {
            if let Some((e, range, slot)) = self.waiting.pop_front() {
                self.spawn(e, range, slot);
                continue;
            }
            let Some(extent) = self.extents.get(self.next) else {
                return;
            };
            let need = extent.range.end - extent.range.start;
            let fits = if self.in_flight == 0 {
                budget.acquire(need)
            } else {
                budget.try_acquire(need)
            };
            if !fits {
                return;
            }
            let pieces = split(&extent.range);
            self.left.push(pieces.len());
            let mut buf = ReadBuf::new(need as usize, BUFFER_ALIGN, Some(self.pool.clone()));
            buf.charge(budget.clone());
            let at = |r: &Range<u64>| {
                (r.start - extent.range.start) as usize..(r.end - extent.range.start) as usize
            };
            let (landing, slots) = Landing::new(buf, pieces.iter().map(at));
            self.landings.push(Some(landing));
            let e = self.next;
            self.waiting
                .extend(pieces.into_iter().zip(slots).map(|(r, slot)| (e, r, slot)));
            self.next += 1;
        }
    }

    /// One ranged GET on the runtime, streamed into its place in extent
    /// `e`'s buffer; its result comes back through `rx`.
    fn spawn(&mut self, e: usize, range: Range<u64>, mut slot: Slot) {
        let object = &self.objects.objects[self.extents[e].file];
        let (store, location, url, tx) = (
            object.store.clone(),
            object.location.clone(),
            object.url.clone(),
            self.tx.clone(),
        );
        self.objects.runtime.spawn(async move {
            let want = range.end - range.start;
            let got = fetch_into(store.as_ref(), &location, range.clone(), &mut slot).await;
            // Before reporting: the buffer is the fetch's alone once every
            // piece has reported (`arrived`).
            drop(slot);
            let _ = tx.send((e, check_piece(&url, &range, got).map(|()| want)));
        });
        self.in_flight += 1;
    }

    /// Records that a piece of extent `e` is written; the extent's bytes
    /// once all its pieces are.
    fn arrived(&mut self, e: usize) -> Result<Option<Bytes>, IngestError> {
        let internal = |what: &str| IngestError::Internal(format!("extent {e}: {what}"));
        let left = self
            .left
            .get_mut(e)
            .ok_or_else(|| internal("unknown extent"))?;
        *left = left
            .checked_sub(1)
            .ok_or_else(|| internal("a piece reported after the last"))?;
        if *left > 0 {
            return Ok(None);
        }
        let landing = self
            .landings
            .get_mut(e)
            .and_then(Option::take)
            .ok_or_else(|| internal("completed twice"))?;
        Landing::finish(landing).map(Some).map_err(|_| {
            IngestError::Internal("an extent's pieces are all in but its buffer is not full".into())
        })
    }
}

/// Alignment of an extent's buffer (the decoders read values in place).
const BUFFER_ALIGN: usize = 64;

/// A ranged GET whose response is copied, chunk by chunk as it arrives, to
/// `slot` (the piece's place in its extent's buffer). Returns how many bytes
/// the store sent, which is more than asked for only when it sent too many
/// (the extra bytes are not written).
async fn fetch_into(
    store: &dyn ObjectStore,
    location: &ObjectPath,
    range: Range<u64>,
    slot: &mut Slot,
) -> Result<u64, object_store::Error> {
    use futures::StreamExt;
    let want = range.end - range.start;
    let options = object_store::GetOptions::new().with_range(Some(range));
    let mut stream = store.get_opts(location, options).await?.into_stream();
    let mut got = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        got += chunk.len() as u64;
        if got > want || slot.write(&chunk).is_err() {
            return Ok(got.max(want + 1));
        }
    }
    Ok(got)
}

/// `options` as configuration keys of one store's builder (`K`): an unknown
/// key is an error naming it (never its value, which can be a secret).
fn config_keys<'a, K: std::str::FromStr>(
    options: &'a [(String, String)],
    store: &str,
) -> Result<Vec<(K, &'a str)>, object_store::Error> {
    options
        .iter()
        .map(|(k, v)| {
            k.parse::<K>().map(|key| (key, v.as_str())).map_err(|_| {
                object_store::Error::NotSupported {
                    source: format!(
                        "{k:?} is not a setting of {store} (the object_store crate's keys, \
                         e.g. aws_access_key_id, aws_region, aws_endpoint; docs/INGEST.md)"
                    )
                    .into(),
                }
            })
        })
        .collect()
}

/// The store behind `url` and the object path (or prefix) it names, with
/// `options` over the server's environment.
fn store_for(
    url: &url::Url,
    options: &[(String, String)],
) -> Result<(Arc<dyn ObjectStore>, ObjectPath), object_store::Error> {
    let (scheme, path) = ObjectStoreScheme::parse(url)?;
    let retry = RetryConfig {
        max_retries: RETRIES_MAX,
        retry_timeout: RETRY_TIMEOUT,
        ..RetryConfig::default()
    };
    let s = url.as_str();
    let store: Arc<dyn ObjectStore> = match scheme {
        ObjectStoreScheme::AmazonS3 => {
            let mut b = object_store::aws::AmazonS3Builder::from_env().with_url(s);
            for (k, v) in config_keys::<object_store::aws::AmazonS3ConfigKey>(options, "S3")? {
                b = b.with_config(k, v);
            }
            Arc::new(b.with_retry(retry).build()?)
        }
        ObjectStoreScheme::GoogleCloudStorage => {
            let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env().with_url(s);
            for (k, v) in
                config_keys::<object_store::gcp::GoogleConfigKey>(options, "Google Cloud Storage")?
            {
                b = b.with_config(k, v);
            }
            Arc::new(b.with_retry(retry).build()?)
        }
        ObjectStoreScheme::MicrosoftAzure => {
            let mut b = object_store::azure::MicrosoftAzureBuilder::from_env().with_url(s);
            for (k, v) in
                config_keys::<object_store::azure::AzureConfigKey>(options, "Azure storage")?
            {
                b = b.with_config(k, v);
            }
            Arc::new(b.with_retry(retry).build()?)
        }
        ObjectStoreScheme::Http => {
            // The user named the scheme: plain http:// is what they asked for.
            let mut client = object_store::ClientOptions::new().with_allow_http(true);
            for (k, v) in config_keys::<object_store::ClientConfigKey>(options, "HTTP")? {
                client = client.with_config(k, v);
            }
            Arc::new(
                object_store::http::HttpBuilder::new()
                    .with_url(&url[..url::Position::BeforePath])
                    .with_client_options(client)
                    .with_retry(retry)
                    .build()?,
            )
        }
        other => {
            return Err(object_store::Error::NotSupported {
                source: format!("{other:?} URLs are not read by ingest").into(),
            })
        }
    };
    Ok((store, path))
}

/// The Parquet objects at `prefix`: the object itself when one exists (and
/// the URL does not end in `/`), else the `.parquet` objects directly below
/// it, in name order.
async fn list(
    store: &dyn ObjectStore,
    prefix: &ObjectPath,
    is_dir: bool,
) -> Result<Vec<object_store::ObjectMeta>, object_store::Error> {
    let mut empty_object = None;
    if !is_dir && !prefix.as_ref().is_empty() {
        match store.head(prefix).await {
            // No Parquet file is empty: a directory marker or a collection,
            // unless nothing lies below it.
            Ok(meta) if meta.size == 0 => empty_object = Some(meta),
            Ok(meta) => return Ok(vec![meta]),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let prefix = (!prefix.as_ref().is_empty()).then_some(prefix);
    let listed = match store.list_with_delimiter(prefix).await {
        Ok(listed) => listed,
        // The empty object itself: its error says what is wrong with it.
        Err(_) if empty_object.is_some() => return Ok(empty_object.into_iter().collect()),
        Err(e) => return Err(e),
    };
    let mut objects: Vec<_> = listed
        .objects
        .into_iter()
        .filter(|m| {
            let name = m.location.filename().unwrap_or("");
            name.ends_with(".parquet") && !name.starts_with(['.', '_'])
        })
        .collect();
    objects.sort_by(|a, b| a.location.cmp(&b.location));
    if objects.is_empty() {
        return Ok(empty_object.into_iter().collect());
    }
    Ok(objects)
}

/// A listing error in words a user can act on: over HTTP, a server that
/// refuses WebDAV's `PROPFIND` (a plain web server) cannot list a prefix.
fn listing_error(url: &url::Url, e: object_store::Error) -> String {
    let text = e.to_string();
    if matches!(url.scheme(), "http" | "https") && text.contains("PROPFIND") {
        // The status, not the HTML page a web server sends with it.
        let status = text
            .split_once("status code: ")
            .map(|(_, rest)| rest.split(':').next().unwrap_or(rest).trim().to_string())
            .unwrap_or_else(|| "an error".into());
        return format!(
            "listing the files below a URL over HTTP takes a WebDAV server (PROPFIND), and this \
             one answered {status}: give each Parquet file's URL, or serve the directory over WebDAV"
        );
    }
    text
}

/// `url` up to and including `prefix` and a `/`, for naming the objects
/// below it.
fn object_url(url: &url::Url, prefix: &ObjectPath) -> String {
    let s = url.as_str().trim_end_matches('/');
    if prefix.as_ref().is_empty() || s.ends_with(prefix.as_ref()) {
        format!("{s}/")
    } else {
        format!("{}/{}/", s, prefix.as_ref())
    }
}

/// `location` relative to `prefix` (whole when it is not below it).
fn relative<'a>(prefix: &ObjectPath, location: &'a ObjectPath) -> &'a str {
    let (p, l) = (prefix.as_ref(), location.as_ref());
    l.strip_prefix(p)
        .map(|rest| rest.trim_start_matches('/'))
        .filter(|_| !p.is_empty())
        .unwrap_or(l)
}

/// `range` cut into GETs of at most `PIECE_BYTES`.
fn split(range: &Range<u64>) -> Vec<Range<u64>> {
    let mut pieces = Vec::with_capacity((range.end - range.start).div_ceil(PIECE_BYTES) as usize);
    let mut at = range.start;
    while at < range.end {
        let end = (at + PIECE_BYTES).min(range.end);
        pieces.push(at..end);
        at = end;
    }
    if pieces.is_empty() {
        pieces.push(range.clone());
    }
    pieces
}

/// Whether a GET sent exactly the `range` asked for (`got`: the bytes it
/// sent), or why not.
fn check_piece(
    url: &Path,
    range: &Range<u64>,
    got: Result<u64, impl std::fmt::Display>,
) -> Result<(), IngestError> {
    let len = range.end - range.start;
    match got {
        Ok(n) if n == len => Ok(()),
        Ok(n) if n < len => Err(IngestError::Truncated {
            path: url.into(),
            file_end: range.start + n,
            needed_end: range.end,
        }),
        Ok(n) => Err(IngestError::Read {
            path: url.into(),
            offset: range.start,
            len,
            err: std::io::Error::other(format!(
                "the store sent {n} or more bytes for a range of {len}"
            )),
        }),
        Err(e) => Err(IngestError::Read {
            path: url.into(),
            offset: range.start,
            len,
            err: std::io::Error::other(e.to_string()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_urls_are_recognised_by_scheme() {
        for u in [
            "s3://b/k.parquet",
            "S3://b/",
            "gs://b/p",
            "az://c/p",
            "https://h/x.parquet",
        ] {
            assert!(is_object_url(u), "{u}");
        }
        for u in ["/data/x.parquet", "flight://h:1/t", "file:///x", "x://y"] {
            assert!(!is_object_url(u), "{u}");
        }
    }

    #[test]
    fn extents_split_into_bounded_pieces() {
        assert_eq!(split(&(5..5)), vec![5..5]);
        assert_eq!(split(&(0..10)), vec![0..10]);
        let big = 3..(3 + 2 * PIECE_BYTES + 1);
        let pieces = split(&big);
        assert_eq!(pieces.len(), 3);
        assert_eq!(pieces[0], 3..3 + PIECE_BYTES);
        assert_eq!(pieces[2], 3 + 2 * PIECE_BYTES..big.end);
    }

    #[test]
    fn objects_are_named_by_their_urls() {
        let url = url::Url::parse("s3://bucket/data/").unwrap();
        let prefix = ObjectPath::from("data");
        let base = object_url(&url, &prefix);
        assert_eq!(base, "s3://bucket/data/");
        assert_eq!(
            relative(&prefix, &ObjectPath::from("data/a.parquet")),
            "a.parquet"
        );
        let root = url::Url::parse("s3://bucket").unwrap();
        assert_eq!(object_url(&root, &ObjectPath::from("")), "s3://bucket/");
        assert_eq!(
            relative(&ObjectPath::from(""), &ObjectPath::from("a.parquet")),
            "a.parquet"
        );
    }

    #[test]
    fn pieces_shorter_or_longer_than_asked_are_errors() {
        let url = Path::new("s3://b/k");
        let err = check_piece(url, &(10..20), Ok::<_, String>(3)).unwrap_err();
        assert!(matches!(
            err,
            IngestError::Truncated {
                file_end: 13,
                needed_end: 20,
                ..
            }
        ));
        let err = check_piece(url, &(10..20), Ok::<_, String>(11)).unwrap_err();
        assert!(
            err.to_string()
                .contains("sent 11 or more bytes for a range of 10"),
            "{err}"
        );
        check_piece(url, &(10..20), Ok::<_, String>(10)).unwrap();
    }
}
