//! `ingest flight://[TOKEN@]HOST:PORT/NAME` (or `flight+tls://`): this server
//! pulls a table from another Flight server — another arrowpoold, so that N
//! app hosts share one loading host — and publishes it as a new version here.
//!
//! The table is read over Flight (`do_get`, the ingest's columns as a
//! projection, `?version=N` for a version by number) and written into the
//! arena as a Flight `do_put` is: a table without dictionaries as its IPC
//! messages arrive (`put.rs`), one with dictionaries once whole. The token, when given, goes
//! out as `authorization: Bearer TOKEN` and never into logs or replies.
//! `flight+tls://` checks the remote certificate against the system's roots
//! plus `--flight-remote-ca FILE`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_flight::Ticket;
use arrow_schema::SchemaRef;

use crate::pool::Pool;
use crate::protocol::ingest::{Ingest, IngestReply};

/// A `flight://` URL taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub tls: bool,
    /// `host:port` (a bracketed IPv6 address stays bracketed).
    pub authority: String,
    pub host: String,
    pub name: String,
    pub version: Option<u64>,
    pub token: Option<String>,
}

impl Remote {
    /// The URL without its token, for messages.
    pub fn shown(&self) -> String {
        let scheme = if self.tls { "flight+tls" } else { "flight" };
        let version = self
            .version
            .map_or(String::new(), |v| format!("?version={v}"));
        format!("{scheme}://{}/{}{version}", self.authority, self.name)
    }
}

/// Whether an ingest path is a Flight URL rather than a file.
pub fn is_flight_url(path: &str) -> bool {
    path.starts_with("flight://") || path.starts_with("flight+tls://")
}

/// Parses `flight[+tls]://[TOKEN@]HOST:PORT/NAME[?version=N]`.
pub fn parse(url: &str) -> Result<Remote, String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("flight+tls://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("flight://") {
        (false, r)
    } else {
        return Err("not a flight:// or flight+tls:// URL".into());
    };
    let usage = "expected flight://[TOKEN@]HOST:PORT/NAME[?version=N]";
    let (authority, path) = rest.split_once('/').ok_or(usage)?;
    let (token, authority) = match authority.rsplit_once('@') {
        Some((t, a)) if !t.is_empty() => (Some(t.to_owned()), a),
        Some(_) => return Err(format!("empty token before '@'; {usage}")),
        None => (None, authority),
    };
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| format!("no port in {authority:?}; {usage}"))?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("bad host or port in {authority:?}; {usage}"));
    }
    let (name, query) = match path.split_once('?') {
        Some((n, q)) => (n, Some(q)),
        None => (path, None),
    };
    if name.is_empty() {
        return Err(format!("no table name after the address; {usage}"));
    }
    let version = match query {
        None => None,
        Some(q) => Some(
            q.strip_prefix("version=")
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| format!("unknown query {q:?}: only version=N"))?,
        ),
    };
    Ok(Remote {
        tls,
        authority: authority.to_owned(),
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        name: name.to_owned(),
        version,
        token,
    })
}

/// The HTTP/2 window a pull grants the remote sender (see `mod.rs`).
const WINDOW_BYTES: u32 = 64 << 20;
/// The largest HTTP/2 frame a pull accepts. h2 sends every DATA frame in a
/// write of its own, so the frame size the *receiver* advertises decides the
/// sender's syscalls: 16 KiB (h2's default) is about 80,000 writes for a
/// 1.3 GB table, 1 MiB about 1,300.
const FRAME_BYTES: u32 = (1 << 20) - 1;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Pulls `req.path` (a Flight URL) and publishes it as `req.name`.
pub fn ingest(
    pool: &Arc<Pool>,
    req: &Ingest,
    remote_ca: Option<&Path>,
) -> Result<IngestReply, String> {
    let remote = parse(&req.path)?;
    let shown = remote.shown();
    let fail = |e: String| format!("ingest from {shown}: {e}");
    let began = Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(format!("cannot start a runtime: {e}")))?;
    let limit = pool.arena.len() as usize;
    let fetched = runtime
        .block_on(fetch(
            pool,
            &req.name,
            &remote,
            &req.columns,
            remote_ca,
            limit,
        ))
        .map_err(fail)?;
    let read_ms = began.elapsed().as_secs_f64() * 1e3;
    let written = Instant::now();
    let (sealed, bytes) = match fetched {
        Fetched::Published(sealed, bytes) => (sealed, bytes),
        Fetched::Whole(schema, batches) => {
            super::service::put(pool, &req.name, None, &schema, &batches)
                .map_err(|s| fail(s.message().to_owned()))?
        }
    };
    Ok(IngestReply {
        version: sealed.version,
        rows: sealed.rows,
        bytes,
        parquet_bytes: 0,
        files: 0,
        read_ms,
        decode_ms: 0.0,
        write_ms: written.elapsed().as_secs_f64() * 1e3,
        total_ms: began.elapsed().as_secs_f64() * 1e3,
        reader: "flight".into(),
    })
}

/// What `fetch` got: a table written as it arrived and published, or a
/// table with dictionaries, whole, to write.
enum Fetched {
    Published(crate::store::SealInfo, u64),
    Whole(SchemaRef, Vec<RecordBatch>),
}

async fn fetch(
    pool: &Arc<Pool>,
    name: &str,
    remote: &Remote,
    columns: &[String],
    remote_ca: Option<&Path>,
    limit: usize,
) -> Result<Fetched, String> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    let scheme = if remote.tls { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", remote.authority))
        .map_err(|e| format!("bad address: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .initial_stream_window_size(WINDOW_BYTES)
        .initial_connection_window_size(WINDOW_BYTES)
        .max_frame_size(FRAME_BYTES)
        .tcp_nodelay(true);
    if remote.tls {
        let mut tls = ClientTlsConfig::new()
            .domain_name(remote.host.clone())
            .with_native_roots();
        if let Some(ca) = remote_ca {
            let pem = std::fs::read(ca)
                .map_err(|e| format!("cannot read --flight-remote-ca {}: {e}", ca.display()))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        endpoint = endpoint.tls_config(tls).map_err(|e| format!("TLS: {e}"))?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot connect: {}", error_chain(&e)))?;
    let inner = arrow_flight::flight_service_client::FlightServiceClient::new(channel)
        .max_decoding_message_size(usize::MAX);
    let mut client = arrow_flight::FlightClient::new_from_inner(inner);
    if let Some(t) = &remote.token {
        client
            .add_header("authorization", &format!("Bearer {t}"))
            .map_err(|_| "the token is not a valid header value".to_string())?;
    }
    let ticket = super::ticket::Wanted {
        name: remote.name.clone(),
        version: remote.version,
        columns: (!columns.is_empty()).then(|| columns.to_vec()),
    };
    let ticket = serde_json::to_vec(&ticket).map_err(|e| e.to_string())?;
    // The raw messages: a table without dictionaries is not decoded.
    let mut request = tonic::Request::new(Ticket::new(ticket));
    if let Some(t) = &remote.token {
        let value = format!("Bearer {t}")
            .parse()
            .map_err(|_| "the token is not a valid header value".to_string())?;
        request.metadata_mut().insert("authorization", value);
    }
    let mut stream = client
        .inner_mut()
        .do_get(request)
        .await
        .map_err(|s| flight_error(s.into()))?
        .into_inner();
    let first = stream
        .message()
        .await
        .map_err(|s| flight_error(s.into()))?
        .ok_or("the remote stream carried no schema")?;
    if let Some(schema) = super::put::plain_schema(&first.data_header) {
        let (sealed, bytes) = super::put::put_streaming(
            pool.clone(),
            name.to_owned(),
            None,
            schema,
            first.data_header.clone(),
            stream,
            limit,
        )
        .await
        .map_err(|s| flight_error(s.into()))?;
        return Ok(Fetched::Published(sealed, bytes));
    }
    let mut batches = super::put::decode_checked(first, stream, limit);
    super::service::collect(&mut batches, limit)
        .await
        .map(|(schema, batches)| Fetched::Whole(schema, batches))
        .map_err(|e| match e {
            super::service::Collect::Flight(e) => flight_error(e),
            super::service::Collect::TooLarge => format!(
                "the table is larger than this server's arena ({}); it can never fit",
                crate::util::human_bytes(limit as u64)
            ),
            super::service::Collect::NoSchema => "the remote stream carried no schema".into(),
        })
}

fn flight_error(e: arrow_flight::error::FlightError) -> String {
    match e {
        arrow_flight::error::FlightError::Tonic(s) => {
            // A status made by the client's transport, not sent by a server:
            // no answer at all (TLS to a plain listener or the reverse, a
            // refused port, not HTTP/2).
            let source = std::error::Error::source(&*s);
            let transport = source.is_some()
                || s.message().contains("transport error")
                || s.message().contains("h2 protocol error");
            if transport {
                let cause = source
                    .map(|c| format!(": {}", error_chain(c)))
                    .unwrap_or_default();
                format!(
                    "no answer ({}{cause}); is it a Flight server, and does flight:// vs \
                     flight+tls:// match its TLS?",
                    s.message()
                )
            } else {
                format!("the remote server answered {:?}: {}", s.code(), s.message())
            }
        }
        e => e.to_string(),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let r = parse("flight://tok123@10.0.0.5:8815/sales?version=3").unwrap();
        assert_eq!(r.token.as_deref(), Some("tok123"));
        assert_eq!(r.authority, "10.0.0.5:8815");
        assert_eq!(
            (r.name.as_str(), r.version, r.tls),
            ("sales", Some(3), false)
        );
        assert_eq!(r.shown(), "flight://10.0.0.5:8815/sales?version=3");
        let r = parse("flight+tls://[::1]:9/t").unwrap();
        assert!(r.tls && r.host == "::1" && r.token.is_none());
        for bad in [
            "flight://host/t",
            "flight://host:99999/t",
            "flight://host:1",
            "flight://host:1/",
            "flight://@host:1/t",
            "flight://host:1/t?v=2",
            "s3://b/k",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(is_flight_url("flight+tls://x:1/y") && !is_flight_url("/data/x.parquet"));
    }
}
