//! The `FlightService` methods, on the server's pool.

use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::ptr::NonNull;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_buffer::Buffer;
use arrow_flight::encode::{DictionaryHandling, FlightDataEncoderBuilder};
use arrow_flight::error::FlightError;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaAsIpc, SchemaResult, Ticket,
};
use arrow_ipc::writer::IpcWriteOptions;
use arrow_schema::{Schema, SchemaRef};
use futures::{Stream, StreamExt, TryStreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::auth::{self, Refusal, Role, Tokens};
use super::ticket::{self, IngestAction, Wanted};
use crate::pool::{Pool, PoolError};
use crate::protocol::{ErrorCode, ErrorReply};
use crate::server::Shared;
use crate::store::{ConnId, Location, ObjectKind, StoreError};

pub(super) type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Largest Flight message `do_get` encodes (larger batches are sent in
/// slices). Clients disagree: pyarrow's reading a 129 MB batch over loopback
/// took 680-850 ms in 4 MiB messages (550 ms of its CPU), 210-320 ms in 32
/// MiB ones, 160-250 ms as one message; the Rust `arrow-flight` client read
/// 10M x 12 in 4.4 s as 64 MiB messages and 2.4 s as 16 MiB ones.
const MESSAGE_BYTES: usize = 16 << 20;

pub struct Service {
    shared: Arc<Shared>,
    tokens: Option<Arc<Tokens>>,
}

impl Service {
    pub fn new(shared: Arc<Shared>, tokens: Option<Arc<Tokens>>) -> Service {
        Service { shared, tokens }
    }

    /// The caller's role: from its token, or every role without a token file.
    fn role<T>(&self, req: &Request<T>) -> Result<Role, Status> {
        let Some(tokens) = &self.tokens else {
            return Ok(Role::Admin);
        };
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(auth::token_of)
            .ok_or_else(|| Status::unauthenticated(Refusal::Missing.to_string()))?;
        tokens
            .role(&token)
            .map_err(|r| Status::unauthenticated(r.to_string()))
    }

    /// Refuses callers below `need`, and every call while shutting down.
    fn require<T>(&self, req: &Request<T>, need: Role, what: &str) -> Result<Role, Status> {
        let role = self.role(req)?;
        if role < need {
            return Err(Status::permission_denied(format!(
                "{what} needs the {} role; this token has the {} role",
                need.as_str(),
                role.as_str()
            )));
        }
        if self
            .shared
            .shutting_down
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(Status::unavailable("the server is shutting down"));
        }
        Ok(role)
    }

    fn pool(&self) -> Arc<Pool> {
        self.shared.pool.clone()
    }

    /// A `do_get`'s messages: the caller's role checked, the ticket parsed,
    /// the version leased (held by the messages' bodies until the last is
    /// dropped). A whole table of flat columns without dictionaries goes as
    /// it lies in the arena (`raw_messages`; large batches in row slices of
    /// arena ranges); other tables are decoded in place and re-encoded by
    /// arrow's encoder, in slices of `MESSAGE_BYTES`.
    pub(super) async fn get_stream(
        &self,
        req: &Request<Ticket>,
    ) -> Result<BoxStream<Outgoing>, Status> {
        self.require(req, Role::Read, "do_get")?;
        let wanted: Wanted =
            ticket::parse_ticket(&req.get_ref().ticket).map_err(Status::invalid_argument)?;
        if wanted.columns.is_none() {
            let pool = self.pool();
            let (name, version) = (wanted.name.clone(), wanted.version);
            let raw = blocking(move || {
                let lease = Lease::take(&pool, &name, version)?;
                Ok(raw_messages(lease))
            })
            .await?;
            if let Some(messages) = raw {
                return Ok(Box::pin(futures::stream::iter(
                    messages.into_iter().map(Ok),
                )));
            }
        }
        let pool = self.pool();
        let (schema, batches) = blocking(move || {
            let lease = Lease::take(&pool, &wanted.name, wanted.version)?;
            open(lease, wanted.columns.as_deref())
        })
        .await?;
        let messages = batches
            .into_iter()
            .flat_map(|b| split(b, MESSAGE_BYTES))
            .map(Ok);
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .with_dictionary_handling(DictionaryHandling::Resend)
            // Split above: the encoder's own split measures each buffer by
            // its allocation, which for buffers over the arena is the whole
            // version, and would cut every batch into slivers.
            .with_max_flight_data_size(usize::MAX)
            .build(futures::stream::iter(messages))
            .map_ok(Outgoing::whole)
            .map_err(Status::from);
        Ok(Box::pin(stream))
    }
}

/// One `do_get` message: its fields but the body, and the body in pieces
/// written one after another (arena ranges, padding, rebased offsets; see
/// `slice.rs`), or as the one buffer arrow's encoder wrote.
pub(super) struct Outgoing {
    pub fields: FlightData,
    pub body: Vec<bytes::Bytes>,
}

impl Outgoing {
    pub(super) fn whole(mut m: FlightData) -> Outgoing {
        let body = std::mem::take(&mut m.data_body);
        Outgoing {
            fields: m,
            body: if body.is_empty() { vec![] } else { vec![body] },
        }
    }

    pub(super) fn body_len(&self) -> usize {
        self.body.iter().map(|b| b.len()).sum()
    }

    /// The message as one `FlightData`, for tonic's way (the pieces copied
    /// into one body when there are several).
    fn into_flight_data(self) -> FlightData {
        let body = match <[_; 1]>::try_from(self.body) {
            Ok([one]) => one,
            Err(pieces) => pieces.concat().into(),
        };
        self.fields.with_data_body(body)
    }
}

/// Runs `f` on tokio's blocking pool (it may read a disk or copy gigabytes).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| Status::internal("a Flight worker panicked"))?
}

/// The gRPC status for an error reply of the socket protocol.
fn status(e: ErrorReply) -> Status {
    let m = e.message;
    match e.code {
        ErrorCode::NotFound => Status::not_found(m),
        ErrorCode::OutOfMemory => Status::resource_exhausted(m),
        ErrorCode::InvalidData | ErrorCode::Malformed | ErrorCode::InvalidObject => {
            Status::invalid_argument(m)
        }
        ErrorCode::Ingest => Status::invalid_argument(m),
        ErrorCode::LimitExceeded => Status::resource_exhausted(m),
        ErrorCode::ShuttingDown => Status::unavailable(m),
        ErrorCode::ReadOnly => Status::permission_denied(m),
        ErrorCode::VersionConflict => Status::failed_precondition(m),
        ErrorCode::Timeout => Status::deadline_exceeded(m),
        ErrorCode::UnknownKind | ErrorCode::Internal => Status::internal(m),
    }
}

fn store_status(e: StoreError) -> Status {
    status(crate::server::store_error(e))
}

pub(super) fn pool_status(e: PoolError) -> Status {
    status(crate::server::pool_error(e))
}

/// A server-side connection holding one lease; dropping it releases the
/// lease. Table buffers made over the arena own it, so the bytes stay while
/// any array (a batch being encoded) exists.
struct Lease {
    pool: AssertUnwindSafe<Arc<Pool>>,
    conn: ConnId,
    loc: Location,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.store().disconnect(self.conn);
    }
}

impl Lease {
    /// Leases the current version of `name` (or version `version`),
    /// bringing it back from the spill directory when it is there.
    fn take(pool: &Arc<Pool>, name: &str, version: Option<u64>) -> Result<Lease, Status> {
        // Closed if anything below fails; kept open by the lease after.
        let guard = pool.server_conn();
        let conn = guard.id();
        let get = || match version {
            None => pool.store().get(conn, name),
            Some(v) => pool.store().get_version(conn, name, v),
        };
        let loc = match get() {
            Err(StoreError::NotFound { .. } | StoreError::VersionNotKept { .. })
                if pool.store().spilled(name).is_some() =>
            {
                pool.bring_back(name).map_err(pool_status)?;
                get()
            }
            r => r,
        }
        .map_err(store_status)?;
        Ok(Lease {
            pool: AssertUnwindSafe(pool.clone()),
            conn: guard.into_id(),
            loc,
        })
    }

    fn location(&self) -> Location {
        self.loc
    }
}

/// The table a lease holds, decoded in place (zero-copy), projected to
/// `columns`; the batches own the lease.
fn open(lease: Lease, columns: Option<&[String]>) -> Result<(SchemaRef, Vec<RecordBatch>), Status> {
    let loc = lease.location();
    if loc.kind != ObjectKind::Table {
        return Err(Status::failed_precondition(
            "this name holds bytes, not a table: read it over the Unix socket (get_bytes)",
        ));
    }
    let bytes = lease
        .pool
        .arena
        .mapping()
        .slice(loc.offset, loc.length)
        .ok_or_else(|| Status::internal("the version lies outside the arena"))?;
    let ptr =
        NonNull::new(bytes.as_ptr() as *mut u8).ok_or_else(|| Status::internal("null mapping"))?;
    let len = bytes.len();
    // SAFETY: `ptr..ptr+len` lies in the server's mapping of the arena
    // (checked by `slice`), which lives as long as the pool the lease holds
    // an Arc of. The lease keeps the version's chunks from being freed or
    // reused while any buffer exists, and sealed chunks are never written.
    let buffer = unsafe { Buffer::from_custom_allocation(ptr, len, Arc::new(lease)) };
    let projection = match columns {
        None => None,
        Some(cols) => {
            let schema = crate::ipc::file_schema(buffer.as_slice())
                .map_err(|e| Status::internal(e.to_string()))?;
            Some(
                cols.iter()
                    .map(|c| column_index(&schema, c))
                    .collect::<Result<Vec<_>, _>>()?,
            )
        }
    };
    crate::ipc::open_file(&buffer, projection).map_err(|e| Status::internal(e.to_string()))
}

fn column_index(schema: &Schema, name: &str) -> Result<usize, Status> {
    schema.index_of(name).map_err(|_| {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        Status::invalid_argument(format!(
            "no column {name:?}; the table has {}",
            names.join(", ")
        ))
    })
}

fn project(schema: &SchemaRef, columns: Option<&[String]>) -> Result<SchemaRef, Status> {
    match columns {
        None => Ok(schema.clone()),
        Some(cols) => {
            let idx = cols
                .iter()
                .map(|c| column_index(schema, c))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Arc::new(
                schema
                    .project(&idx)
                    .map_err(|e| Status::internal(e.to_string()))?,
            ))
        }
    }
}

/// A range of the arena that a Flight message body points at, holding the
/// lease that keeps it unchanged.
struct Piece {
    lease: Arc<Lease>,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the pointer is into the server's shared mapping, valid from any
// thread while the lease (an Arc, itself Send + Sync) lives; nothing writes
// sealed bytes.
unsafe impl Send for Piece {}

impl AsRef<[u8]> for Piece {
    fn as_ref(&self) -> &[u8] {
        let _ = &self.lease;
        // SAFETY: `ptr..ptr+len` was a slice of the mapping when the piece was
        // made, and the lease keeps those bytes mapped and unchanged.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

/// The largest body sent as one range of the arena: a larger batch goes
/// in slices of rows of about `MESSAGE_BYTES` (`slice.rs`), so no gRPC
/// message gets large enough to slow clients down.
const RAW_BODY_MAX: usize = 32 << 20;

/// The version's messages as they lie in the arena, zero-copy: the schema
/// message, then every batch, each body a slice of the arena (the socket
/// write copies it once), its header rewritten to that slice (`compact`);
/// a batch too large for one message, or whose buffers are spread over the
/// arena (a version that shares columns with others), in row slices of
/// arena ranges (`slice.rs`). `None` when a batch has columns those cannot
/// slice (nested, views) or the table has dictionaries: then the caller
/// decodes and re-encodes.
fn raw_messages(lease: Lease) -> Option<Vec<Outgoing>> {
    let loc = lease.location();
    if loc.kind != ObjectKind::Table {
        return None;
    }
    let pool = lease.pool.0.clone();
    let bytes = pool.arena.mapping().slice(loc.offset, loc.length)?;
    let footer = crate::ipc::footer(bytes).ok()?;
    let schema = crate::ipc::file_schema(bytes).ok()?;
    // Dictionary messages carry the ids their writer gave them, which the
    // schema message must match; arrow's encoder numbers them afresh, so
    // tables with dictionaries take the encoder's way.
    if schema
        .fields()
        .iter()
        .any(|f| crate::ipc::write::has_dictionary(f.data_type()))
    {
        return None;
    }
    let lease = Arc::new(lease);
    // A range of `bytes` as a message body piece holding the lease.
    let piece = |range: &[u8]| {
        // The piece outlives this borrow: it must lie in the leased range.
        let at = (range.as_ptr() as usize).wrapping_sub(bytes.as_ptr() as usize);
        assert!(at <= bytes.len() && range.len() <= bytes.len() - at);
        bytes::Bytes::from_owner(Piece {
            lease: lease.clone(),
            // Every caller passes a subslice of `bytes`, the leased range.
            ptr: NonNull::from(range).cast(),
            len: range.len(),
        })
    };
    let mut out = vec![Outgoing::whole(FlightData::from(SchemaAsIpc::new(
        &schema,
        &IpcWriteOptions::default(),
    )))];
    let blocks = footer
        .dictionaries()
        .into_iter()
        .flatten()
        .chain(footer.recordBatches().into_iter().flatten());
    for block in blocks {
        let (start, end, meta) = crate::ipc::block_range(bytes, block).ok()?;
        let header = encapsulated(bytes, start)?;
        let body = bytes.get(start + meta..end)?;
        // One range of the arena when its buffers lie together and it is
        // small enough for one message; else slices of rows.
        let whole = compact(header, body.len()).filter(|c| c.2 <= RAW_BODY_MAX);
        if let Some((header, first, len)) = whole {
            out.push(Outgoing {
                fields: FlightData::new().with_data_header(header),
                body: vec![piece(body.get(first..first.checked_add(len)?)?)],
            });
            continue;
        }
        let slices = super::slice::row_slices(header, body, &schema, MESSAGE_BYTES, piece)?;
        out.extend(slices.into_iter().map(|s| Outgoing {
            fields: FlightData::new().with_data_header(s.header),
            body: s.body,
        }));
    }
    Some(out)
}

/// The flatbuffer of the encapsulated message at `at` (continuation marker,
/// length, flatbuffer).
fn encapsulated(bytes: &[u8], at: usize) -> Option<&[u8]> {
    let prefix = bytes.get(at..at.checked_add(8)?)?;
    if prefix[..4] != [0xff; 4] {
        return None;
    }
    let len = i32::from_le_bytes(prefix[4..8].try_into().ok()?);
    let len = usize::try_from(len).ok()?;
    bytes.get(at + 8..(at + 8).checked_add(len)?)
}

/// The message `header` rewritten for a body that holds only its buffers:
/// in a version's file view the body of a batch starts at its message (in
/// the manifest region) while its buffers lie further on, in the version's
/// chunk. When the buffers lie one after another (but for alignment padding)
/// they are one range of the arena: returns the header with every buffer
/// offset and the body length made relative to that range, the range's
/// start within the old body, and its length. `None` when they are spread
/// (a version sharing columns with another) or the header is not a batch.
fn compact(header: &[u8], body_len: usize) -> Option<(Vec<u8>, usize, usize)> {
    const PAD: u64 = 64;
    let message = arrow_ipc::root_as_message(header).ok()?;
    let buffers = match message.header_type() {
        arrow_ipc::MessageHeader::RecordBatch => message.header_as_record_batch()?.buffers()?,
        arrow_ipc::MessageHeader::DictionaryBatch => {
            message.header_as_dictionary_batch()?.data()?.buffers()?
        }
        _ => return None,
    };
    let mut spans: Vec<(u64, u64)> = buffers
        .iter()
        .filter(|b| b.length() > 0)
        .map(|b| {
            Some((
                u64::try_from(b.offset()).ok()?,
                u64::try_from(b.length()).ok()?,
            ))
        })
        .collect::<Option<_>>()?;
    spans.sort_unstable();
    let first = spans.first().map_or(0, |s| s.0);
    let mut end = first;
    for &(offset, len) in &spans {
        if offset > end + PAD {
            return None;
        }
        end = end.max(offset.checked_add(len)?);
    }
    if end > body_len as u64 {
        return None;
    }
    // Keep the body a multiple of 8 bytes where the old body has room.
    let len = (end - first)
        .next_multiple_of(8)
        .min(body_len as u64 - first);
    let mut out = header.to_vec();
    // The buffers are a vector of 16-byte structs (offset i64, length i64).
    let vector_at = (buffers.bytes().as_ptr() as usize).checked_sub(header.as_ptr() as usize)?;
    for (i, b) in buffers.iter().enumerate() {
        // Empty buffers point at the start: readers check every buffer
        // against the body, empty ones too.
        let new = if b.length() > 0 {
            (b.offset() as u64 - first) as i64
        } else {
            0
        };
        let at = vector_at + 16 * i;
        out.get_mut(at..at + 8)?.copy_from_slice(&new.to_le_bytes());
    }
    let slot = message._tab.vtable().get(arrow_ipc::Message::VT_BODYLENGTH) as usize;
    if slot == 0 {
        // No body length stored (0): only an empty body can match.
        return (len == 0).then_some((out, first as usize, 0));
    }
    let at = message._tab.loc() + slot;
    out.get_mut(at..at + 8)?
        .copy_from_slice(&(len as i64).to_le_bytes());
    Some((out, first as usize, len as usize))
}

/// The bytes `batch`'s arrays span.
pub(super) fn slice_bytes(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|c| c.to_data().get_slice_memory_size().unwrap_or(0))
        .sum()
}

/// Slices `batch` into pieces of about `max` bytes, measured by the bytes
/// its arrays span (not their allocations).
fn split(batch: RecordBatch, max: usize) -> Vec<RecordBatch> {
    let bytes = slice_bytes(&batch);
    let rows = batch.num_rows();
    let pieces = bytes.div_ceil(max.max(1)).clamp(1, rows.max(1));
    if pieces == 1 {
        return vec![batch];
    }
    let per = rows.div_ceil(pieces);
    (0..rows)
        .step_by(per)
        .map(|at| batch.slice(at, per.min(rows - at)))
        .collect()
}

/// The table a descriptor names: a Flight SQL command (`sql.rs`) or our own
/// path / JSON command (`ticket.rs`).
fn described(d: &FlightDescriptor) -> Result<Wanted, Status> {
    if d.r#type() == arrow_flight::flight_descriptor::DescriptorType::Cmd {
        if let Some(w) = super::sql::command(&d.cmd) {
            return w.map_err(Status::invalid_argument);
        }
    }
    ticket::parse_descriptor(d).map_err(Status::invalid_argument)
}

/// Where the version `wanted` names lies and its schema, projected (a spilled
/// version is brought back; the lease is released on return).
fn leased_schema(pool: &Arc<Pool>, wanted: &Wanted) -> Result<(Location, SchemaRef), Status> {
    let lease = Lease::take(pool, &wanted.name, wanted.version)?;
    let loc = lease.location();
    let schema = pool
        .store()
        .table_schema(loc.object_id)
        .ok_or_else(|| Status::failed_precondition("this name holds bytes, not a table"))?;
    Ok((loc, project(&schema, wanted.columns.as_deref())?))
}

/// Why `collect` stopped.
pub(super) enum Collect {
    Flight(FlightError),
    /// The batches so far span more than the limit.
    TooLarge,
    NoSchema,
}

/// Every batch of a decoded Flight stream and its schema, refused once the
/// bytes they span pass `limit` (the arena: it could never be stored).
pub(super) async fn collect(
    stream: &mut arrow_flight::decode::FlightRecordBatchStream,
    limit: usize,
) -> Result<(SchemaRef, Vec<RecordBatch>), Collect> {
    let mut batches = Vec::new();
    let mut bytes = 0usize;
    while let Some(b) = stream.next().await {
        let b = b.map_err(Collect::Flight)?;
        // The bytes the batch's arrays span (their buffers slice whole
        // messages, which `get_array_memory_size` would count per column).
        bytes += slice_bytes(&b);
        if bytes > limit {
            return Err(Collect::TooLarge);
        }
        batches.push(b);
    }
    let schema = match batches.first() {
        Some(b) => b.schema(),
        None => stream.schema().cloned().ok_or(Collect::NoSchema)?,
    };
    Ok((schema, batches))
}

/// What `FlightInfo.app_metadata` carries.
#[derive(serde::Serialize)]
struct InfoMetadata {
    version: u64,
    on_disk: bool,
}

fn flight_info(
    name: &str,
    version: u64,
    schema: &Schema,
    rows: u64,
    bytes: u64,
    on_disk: bool,
    columns: Option<&[String]>,
) -> Result<FlightInfo, Status> {
    let ticket = Ticket::new(ticket::ticket_for(name, version, columns));
    let metadata = serde_json::to_vec(&InfoMetadata { version, on_disk }).unwrap_or_default();
    FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(e.to_string()))
        .map(|i| {
            i.with_descriptor(FlightDescriptor::new_path(vec![name.to_owned()]))
                .with_endpoint(FlightEndpoint::new().with_ticket(ticket))
                .with_total_records(rows as i64)
                .with_total_bytes(bytes as i64)
                .with_ordered(true)
                .with_app_metadata(metadata)
        })
}

/// The schema of a spilled version, from its file's footer.
fn spilled_schema(file: &std::path::Path) -> Option<SchemaRef> {
    let f = std::fs::File::open(file).ok()?;
    let r = arrow_ipc::reader::FileReader::try_new(std::io::BufReader::new(f), None).ok()?;
    Some(r.schema())
}

/// Every table whose name starts with `prefix`, as `FlightInfo`s, without
/// taking leases (a listing does not count as a use).
fn list(pool: &Pool, prefix: &str) -> Result<Vec<FlightInfo>, Status> {
    let entries = pool.store().list();
    let mut out = Vec::new();
    for e in entries {
        if e.kind != ObjectKind::Table || !e.name.starts_with(prefix) {
            continue;
        }
        let schema = if e.on_disk {
            pool.store()
                .spilled(&e.name)
                .and_then(|s| spilled_schema(&s.file))
        } else {
            pool.store().table_schema(e.object_id)
        };
        // Replaced or deleted since the listing began: leave it out.
        let Some(schema) = schema else { continue };
        out.push(flight_info(
            &e.name, e.version, &schema, e.rows, e.bytes, e.on_disk, None,
        )?);
    }
    Ok(out)
}

/// Writes `batches` into the arena as one IPC file (every core copying),
/// checks it as a seal does and publishes it as the new version of `name`.
pub(super) fn put(
    pool: &Pool,
    name: &str,
    if_version: Option<u64>,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<(crate::store::SealInfo, u64), Status> {
    // Closed on every way out: a failed put leaves nothing pending.
    let conn = pool.server_conn();
    let layout = crate::ipc::write::layout(schema, batches)
        .map_err(|e| Status::invalid_argument(format!("cannot lay the table out: {e}")))?;
    // Tables with dictionaries are written by one thread (`ipc::write`).
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mapping = pool.arena.mapping();
    let base = mapping.as_ptr() as usize;
    let prepare = move |part: &mut [u8]| {
        let offset = (part.as_ptr() as usize).wrapping_sub(base) as u64;
        mapping.populate_write_once(offset, part.len() as u64);
    };
    let written = pool.write_chunk(conn.id(), name, layout.file_len() as u64, |dest| {
        crate::ipc::write::write(dest, schema, batches, &layout, threads, &prepare).map(|(n, _)| n)
    });
    let (id, len, manifest) = written.map_err(|e| match e {
        crate::pool::PutError::Pool(e) => pool_status(e),
        crate::pool::PutError::Write(e) => {
            Status::invalid_argument(format!("cannot write the table: {e}"))
        }
    })?;
    let sealed = pool
        .publish_manifest(
            conn.id(),
            name,
            if_version,
            None,
            &[(id, len)],
            &[],
            Arc::new(manifest),
            id,
        )
        .map_err(pool_status)?;
    drop(conn);
    pool.versions_changed.notify(usize::MAX);
    Ok((sealed, len))
}

/// What a `do_put` answers (one `PutResult`, JSON app metadata).
#[derive(serde::Serialize)]
struct PutReply {
    name: String,
    version: u64,
    rows: u64,
    /// Bytes of the IPC file written into the arena.
    bytes: u64,
}

fn put_reply(
    name: String,
    sealed: crate::store::SealInfo,
    bytes: u64,
) -> Response<BoxStream<PutResult>> {
    let reply = PutReply {
        name,
        version: sealed.version,
        rows: sealed.rows,
        bytes,
    };
    let metadata = serde_json::to_vec(&reply).unwrap_or_default();
    Response::new(Box::pin(futures::stream::iter([Ok(PutResult {
        app_metadata: metadata.into(),
    })])))
}

fn result_json<T: serde::Serialize>(v: &T) -> BoxStream<arrow_flight::Result> {
    let body = serde_json::to_vec(v).unwrap_or_default();
    Box::pin(futures::stream::iter([Ok(arrow_flight::Result::new(body))]))
}

const ACTIONS: [(&str, &str); 5] = [
    (
        "delete",
        "Unbind a table name (body: the name). Readers keep what they hold. Role: write.",
    ),
    (
        "ingest",
        "Read a Parquet file or directory on the server's file system into a table \
         (body: JSON {\"name\", \"path\", \"columns\"?}); replies with the ingest's figures. Role: admin.",
    ),
    (
        "stats",
        "The server's counters as JSON (as `arrowpool stats`). Role: admin.",
    ),
    (
        super::sql::CREATE_PREPARED,
        "Flight SQL: prepare SELECT * FROM name or SELECT column, ... FROM name. Role: read.",
    ),
    (
        super::sql::CLOSE_PREPARED,
        "Flight SQL: close a prepared statement (they hold nothing). Role: read.",
    ),
];

#[tonic::async_trait]
impl arrow_flight::flight_service_server::FlightService for Service {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = BoxStream<FlightData>;
    type DoPutStream = BoxStream<PutResult>;
    type DoExchangeStream = BoxStream<FlightData>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;

    /// Checks the caller's token (basic authentication whose password is the
    /// token, or a bearer header) and hands it back as a bearer header.
    async fn handshake(
        &self,
        req: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        self.require(&req, Role::Read, "handshake")?;
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(auth::token_of);
        let mut response: Response<Self::HandshakeStream> =
            Response::new(Box::pin(futures::stream::iter([Ok(HandshakeResponse {
                protocol_version: 0,
                payload: Default::default(),
            })])));
        if let Some(t) = token {
            if let Ok(v) = format!("Bearer {t}").parse() {
                response.metadata_mut().insert("authorization", v);
            }
        }
        Ok(response)
    }

    async fn list_flights(
        &self,
        req: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        self.require(&req, Role::Read, "list_flights")?;
        let prefix = String::from_utf8(req.get_ref().expression.to_vec())
            .map_err(|_| Status::invalid_argument("criteria: a name prefix in UTF-8"))?;
        let pool = self.pool();
        let infos = blocking(move || list(&pool, &prefix)).await?;
        Ok(Response::new(Box::pin(futures::stream::iter(
            infos.into_iter().map(Ok),
        ))))
    }

    async fn get_flight_info(
        &self,
        req: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.require(&req, Role::Read, "get_flight_info")?;
        let wanted = described(req.get_ref())?;
        let pool = self.pool();
        let info = blocking(move || {
            let (loc, schema) = leased_schema(&pool, &wanted)?;
            flight_info(
                &wanted.name,
                loc.version,
                &schema,
                loc.rows,
                loc.length,
                false,
                wanted.columns.as_deref(),
            )
        })
        .await?;
        Ok(Response::new(info))
    }

    async fn poll_flight_info(
        &self,
        _req: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented(
            "poll_flight_info: every table is ready; use get_flight_info",
        ))
    }

    async fn get_schema(
        &self,
        req: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        self.require(&req, Role::Read, "get_schema")?;
        let wanted = described(req.get_ref())?;
        let pool = self.pool();
        let schema = blocking(move || Ok(leased_schema(&pool, &wanted)?.1)).await?;
        let options = IpcWriteOptions::default();
        let result: SchemaResult = SchemaAsIpc::new(&schema, &options)
            .try_into()
            .map_err(|e: arrow_schema::ArrowError| Status::internal(e.to_string()))?;
        Ok(Response::new(result))
    }

    async fn do_get(&self, req: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        // Served by `raw_get::RawDoGet` in front of this service; reached
        // only for requests it leaves to tonic (a compressed one).
        let messages = self.get_stream(&req).await?;
        Ok(Response::new(Box::pin(
            messages.map_ok(Outgoing::into_flight_data),
        )))
    }

    async fn do_put(
        &self,
        req: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        self.require(&req, Role::Write, "do_put")?;
        let mut input = req.into_inner();
        let first = input
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("do_put: the stream was empty"))?;
        let descriptor = first.flight_descriptor.clone().ok_or_else(|| {
            Status::invalid_argument("do_put: the first message has no descriptor naming the table")
        })?;
        let target = ticket::parse_put(&descriptor).map_err(Status::invalid_argument)?;
        crate::protocol::check_name(&target.name)
            .map_err(|e| Status::invalid_argument(format!("table name: {e}")))?;
        // Bounded by the arena: a larger table could never be stored.
        let limit = self.shared.pool.arena.len() as usize;
        // A schema without dictionaries: the messages go into the arena as
        // they arrive (`put.rs`).
        if let Some(schema) = super::put::plain_schema(&first.data_header) {
            let (sealed, bytes) = super::put::put_streaming(
                self.pool(),
                target.name.clone(),
                target.if_version,
                schema,
                first.data_header.clone(),
                input,
                limit,
            )
            .await?;
            return Ok(put_reply(target.name, sealed, bytes));
        }
        let mut batches_in = super::put::decode_checked(first, input, limit);
        // With dictionaries the table arrives whole before it is written (its
        // dictionaries may be replaced mid-stream; one file has one per field).
        let (schema, batches) = collect(&mut batches_in, limit).await.map_err(|e| match e {
            Collect::Flight(FlightError::Tonic(s)) => *s,
            Collect::Flight(e) => Status::invalid_argument(format!("do_put: {e}")),
            Collect::TooLarge => Status::resource_exhausted(format!(
                "do_put of {:?}: the table is larger than the arena ({}); it can never fit",
                target.name,
                crate::util::human_bytes(limit as u64)
            )),
            Collect::NoSchema => Status::invalid_argument("do_put: the stream carried no schema"),
        })?;
        let pool = self.pool();
        let name = target.name.clone();
        let (sealed, bytes) =
            blocking(move || put(&pool, &name, target.if_version, &schema, &batches)).await?;
        Ok(put_reply(target.name, sealed, bytes))
    }

    async fn do_exchange(
        &self,
        _req: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented("do_exchange is not offered"))
    }

    async fn do_action(
        &self,
        req: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        let kind = req.get_ref().r#type.clone();
        match kind.as_str() {
            "delete" => {
                self.require(&req, Role::Write, "the delete action")?;
                let name = String::from_utf8(req.get_ref().body.to_vec())
                    .map_err(|_| Status::invalid_argument("delete: the body is the table name"))?;
                self.shared
                    .pool
                    .store()
                    .delete(&name)
                    .map_err(store_status)?;
                Ok(Response::new(result_json(&serde_json::json!({
                    "deleted": name
                }))))
            }
            "ingest" => {
                self.require(
                    &req,
                    Role::Admin,
                    "the ingest action (reads the server's files)",
                )?;
                let a: IngestAction = serde_json::from_slice(&req.get_ref().body)
                    .map_err(|e| Status::invalid_argument(format!("ingest: {e}")))?;
                let ingest = crate::protocol::ingest::Ingest {
                    name: a.name,
                    path: a.path,
                    columns: a.columns,
                    options: a.storage_options.into_iter().collect(),
                };
                // The checks the socket's decoder makes (name rules, lengths).
                let mut probe = Vec::new();
                ingest
                    .encode(&mut probe)
                    .map_err(|e| Status::invalid_argument(format!("ingest: {e}")))?;
                let (pool, settings) = (self.pool(), self.shared.ingest);
                let reply = blocking(move || {
                    crate::ingest::ingest(&pool, settings, 0, &ingest)
                        .map_err(|e| status(crate::server::ingest_error(e)))
                })
                .await?;
                Ok(Response::new(result_json(&reply)))
            }
            "stats" => {
                self.require(&req, Role::Admin, "the stats action")?;
                Ok(Response::new(result_json(&self.shared.stats())))
            }
            super::sql::CREATE_PREPARED => {
                self.require(&req, Role::Read, "a Flight SQL statement")?;
                let wanted =
                    super::sql::prepared(&req.get_ref().body).map_err(Status::invalid_argument)?;
                let pool = self.pool();
                let checked = wanted.clone();
                let schema = blocking(move || Ok(leased_schema(&pool, &checked)?.1)).await?;
                let options = IpcWriteOptions::default();
                let ipc = arrow_flight::IpcMessage::try_from(SchemaAsIpc::new(&schema, &options))
                    .map_err(|e| Status::internal(e.to_string()))?;
                let result = arrow_flight::sql::ActionCreatePreparedStatementResult {
                    prepared_statement_handle: super::sql::handle(&wanted).into(),
                    dataset_schema: ipc.0,
                    parameter_schema: Default::default(),
                };
                let body = super::sql::packed(&result);
                Ok(Response::new(Box::pin(futures::stream::iter([Ok(
                    arrow_flight::Result::new(body),
                )]))))
            }
            // Handles hold no state (they are tickets): nothing to free.
            super::sql::CLOSE_PREPARED => {
                self.require(&req, Role::Read, "a Flight SQL statement")?;
                Ok(Response::new(Box::pin(futures::stream::empty())))
            }
            other => Err(Status::invalid_argument(format!(
                "unknown action {other:?}; list_actions names delete, ingest, stats, \
                 CreatePreparedStatement and ClosePreparedStatement"
            ))),
        }
    }

    async fn list_actions(
        &self,
        req: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        self.require(&req, Role::Read, "list_actions")?;
        Ok(Response::new(Box::pin(futures::stream::iter(
            ACTIONS.iter().map(|(t, d)| {
                Ok(ActionType {
                    r#type: (*t).into(),
                    description: (*d).into(),
                })
            }),
        ))))
    }
}
