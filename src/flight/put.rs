//! `do_put` of a table without dictionaries, written as it arrives.
//!
//! A Flight stream is IPC messages: a schema, then record batches, each a
//! flatbuffer header and a body whose buffers lie where the header says. An
//! IPC file is the same messages between a magic and a footer. So the
//! messages are not decoded into arrays: every `PUT_CHUNK_BYTES` of bodies,
//! their headers and bodies are copied as they are into a chunk of their own,
//! laid out as an IPC file (on tokio's blocking pool, while the next messages
//! arrive), and that file is checked as a seal checks one (`Pool::write_chunk`):
//! structure and every array's layout. The version is a manifest over all the
//! chunks, published once the stream ends (`Pool::publish_manifest`, the path
//! an ingest takes). One copy of the table's bytes (tonic's message buffer ->
//! the arena); the heap holds about two groups, never the table.
//!
//! A compressed body (a client's `IpcWriteOptions` with LZ4 or ZSTD) is
//! decoded and encoded again uncompressed: the arena holds what readers map.
//! A stream that fails, or a client that goes away, publishes nothing and
//! leaves nothing pending (`PutConn`). Tables with dictionaries take the
//! decoding path in `service.rs`: their dictionaries may be replaced
//! mid-stream, and a file holds one per field.

use std::sync::Arc;

use arrow_ipc::{Block, MessageHeader};
use arrow_schema::{ArrowError, SchemaRef};
use bytes::Bytes;
use tonic::{Status, Streaming};

use arrow_flight::FlightData;

use crate::ipc::manifest::{encode_footer, BatchLayout, Manifest, ARENA_MAGIC, CONTINUATION};
use crate::pool::Pool;
use crate::store::{ConnId, ObjectId, SealInfo};

use super::service::pool_status;

/// Bytes of message bodies written together, as one IPC file in a chunk of
/// their own.
const PUT_CHUNK_BYTES: usize = 64 << 20;
/// Messages written together at most (a stream of tiny batches closes its
/// groups by count, so the heap holds few headers whatever the sizes).
const PUT_CHUNK_MESSAGES: usize = 16 * 1024;

/// The server-side connection a put's chunks are pending on, shared by the
/// put and its writes on the blocking pool: closed (whatever it left pending
/// aborted) when the last of them is done, so a write still running when the
/// client vanished never writes into a chunk already given back.
struct PutConn {
    pool: Arc<Pool>,
    id: ConnId,
}

impl Drop for PutConn {
    fn drop(&mut self) {
        self.pool.store().disconnect(self.id);
    }
}

/// One record batch message as it arrived.
struct Message {
    header: Bytes,
    body: Bytes,
}

fn pad8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

/// Bytes of the IPC file `write_file` makes of these messages.
fn file_len(schema_message: &[u8], messages: &[Message], footer: usize) -> usize {
    ARENA_MAGIC.len()
        + 8
        + pad8(schema_message.len())
        + messages
            .iter()
            .map(|m| 8 + pad8(m.header.len()) + pad8(m.body.len()))
            .sum::<usize>()
        + footer
}

/// Appends one encapsulated message (continuation, length, flatbuffer
/// padded to 8, body padded to 8) at `at` of `dest`; returns where it ends.
fn put_message(dest: &mut [u8], at: usize, header: &[u8], body: &[u8]) -> usize {
    let meta = pad8(header.len());
    dest[at..at + 4].copy_from_slice(&CONTINUATION.to_le_bytes());
    dest[at + 4..at + 8].copy_from_slice(&(meta as i32).to_le_bytes());
    let h = at + 8;
    dest[h..h + header.len()].copy_from_slice(header);
    dest[h + header.len()..h + meta].fill(0);
    let b = h + meta;
    crate::ipc::stream_copy::copy(&mut dest[b..b + body.len()], body);
    let end = b + pad8(body.len());
    dest[b + body.len()..end].fill(0);
    end
}

/// The footer for these messages, laid out as `write_file` lays them.
fn footer(
    schema: &SchemaRef,
    schema_message: &[u8],
    messages: &[Message],
) -> Result<Vec<u8>, ArrowError> {
    let mut at = ARENA_MAGIC.len() + 8 + pad8(schema_message.len());
    let mut blocks = Vec::with_capacity(messages.len());
    for m in messages {
        let meta = 8 + pad8(m.header.len());
        let body = pad8(m.body.len());
        blocks.push(Block::new(at as i64, meta as i32, body as i64));
        at += meta + body;
    }
    encode_footer(schema, &[], &blocks)
}

/// Lays `messages` out as an IPC file in `dest` (exactly `file_len` bytes).
fn write_file(dest: &mut [u8], schema_message: &[u8], messages: &[Message], footer: &[u8]) {
    dest[..ARENA_MAGIC.len()].copy_from_slice(ARENA_MAGIC);
    let mut at = put_message(dest, ARENA_MAGIC.len(), schema_message, &[]);
    for m in messages {
        at = put_message(dest, at, &m.header, &m.body);
    }
    dest[at..at + footer.len()].copy_from_slice(footer);
}

/// Writes a group of messages as one IPC file into a new chunk on `conn`,
/// checked as a seal checks a file; the chunk, its length and its batches.
fn write_group(
    conn: &PutConn,
    name: &str,
    schema: &SchemaRef,
    schema_message: &[u8],
    messages: &[Message],
) -> Result<(ObjectId, u64, Vec<BatchLayout>), Status> {
    let pool = &conn.pool;
    let footer = footer(schema, schema_message, messages)
        .map_err(|e| Status::invalid_argument(format!("do_put: {e}")))?;
    let len = file_len(schema_message, messages, footer.len());
    let mapping = pool.arena.mapping();
    let base = mapping.as_ptr() as usize;
    let (id, len, manifest) = pool
        .write_chunk(conn.id, name, len as u64, |dest| {
            let offset = (dest.as_ptr() as usize).wrapping_sub(base) as u64;
            mapping.populate_write_once(offset, len as u64);
            write_file(&mut dest[..len], schema_message, messages, &footer);
            Ok::<usize, std::convert::Infallible>(len)
        })
        .map_err(|e| match e {
            crate::pool::PutError::Pool(e) => pool_status(e),
            crate::pool::PutError::Write(never) => match never {},
        })?;
    if manifest.batches.len() != messages.len() {
        return Err(Status::internal("a written file lost batches"));
    }
    Ok((id, len, manifest.batches))
}

/// The schema a stream's first message carries, when it has no dictionary
/// field: such a stream is written undecoded (`put_streaming`).
pub(super) fn plain_schema(header: &[u8]) -> Option<SchemaRef> {
    arrow_ipc::convert::try_schema_from_flatbuffer_bytes(header)
        .ok()
        .filter(|s| {
            !s.fields()
                .iter()
                .any(|f| crate::ipc::write::has_dictionary(f.data_type()))
        })
        .map(Arc::new)
}

/// The batches of a stream (`first`, then `rest`) decoded by arrow, each
/// compressed message's declared lengths checked before (`check_compressed`):
/// the way of tables with dictionaries.
pub(super) fn decode_checked(
    first: FlightData,
    rest: Streaming<FlightData>,
    limit: usize,
) -> arrow_flight::decode::FlightRecordBatchStream {
    use futures::{StreamExt, TryStreamExt};
    let data = futures::stream::once(async { Ok(first) })
        .chain(rest.map_err(arrow_flight::error::FlightError::from))
        .and_then(move |fd| async move {
            check_compressed(&fd.data_header, &fd.data_body, limit)
                .map_err(arrow_flight::error::FlightError::protocol)?;
            Ok(fd)
        })
        .boxed();
    arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(data)
}

fn invalid(what: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("do_put: {what}"))
}

/// A compressed message's buffers each begin with the length they have
/// uncompressed, which arrow's decoder allocates before anything else looks
/// at it: a damaged or hostile length would make the server ask for
/// petabytes and abort. Checked here first, against `limit` (the arena: a
/// table could never be larger). Messages that are not compressed, or not
/// Arrow, pass (the decoder reports the latter).
fn check_compressed(header: &[u8], body: &[u8], limit: usize) -> Result<(), String> {
    let Ok(message) = arrow_ipc::root_as_message(header) else {
        return Ok(());
    };
    let rb = match message.header_type() {
        MessageHeader::RecordBatch => message.header_as_record_batch(),
        MessageHeader::DictionaryBatch => {
            message.header_as_dictionary_batch().and_then(|d| d.data())
        }
        _ => None,
    };
    let Some(rb) = rb.filter(|rb| rb.compression().is_some()) else {
        return Ok(());
    };
    let mut total: u64 = 0;
    for b in rb.buffers().into_iter().flatten() {
        if b.length() == 0 {
            continue;
        }
        let at = usize::try_from(b.offset()).map_err(|_| "a negative buffer offset".to_string())?;
        let prefix = at
            .checked_add(8)
            .filter(|_| b.length() >= 8)
            .and_then(|end| body.get(at..end))
            .ok_or("a compressed buffer without its length prefix inside the body")?;
        let n = i64::from_le_bytes(prefix.try_into().expect("8 bytes"));
        // -1: the buffer is stored uncompressed.
        if n == -1 {
            continue;
        }
        let n = u64::try_from(n).map_err(|_| format!("a compressed buffer declares {n} bytes"))?;
        total = total.saturating_add(n);
        if total > limit as u64 {
            return Err(format!(
                "a compressed batch declares {total} bytes uncompressed, more than the arena ({limit} bytes)"
            ));
        }
    }
    Ok(())
}

/// A record batch message with a compressed body, decoded and encoded again
/// without compression.
fn decompressed(
    schema: &SchemaRef,
    message: arrow_ipc::Message<'_>,
    body: Bytes,
) -> Result<Message, Status> {
    let rb = message
        .header_as_record_batch()
        .ok_or_else(|| invalid("a record batch message without its header"))?;
    // Arrow's decoder on a client's bytes: a panic in it is a refusal.
    let batch = crate::ipc::quietly(|| {
        arrow_ipc::reader::read_record_batch(
            &arrow_buffer::Buffer::from(body),
            rb,
            schema.clone(),
            &std::collections::HashMap::new(),
            None,
            &message.version(),
        )
    })
    .map_err(|e| invalid(format!("cannot decode a compressed batch: {e}")))?
    .map_err(|e| invalid(format!("cannot decode a compressed batch: {e}")))?;
    let mut tracker = arrow_ipc::writer::DictionaryTracker::new(false);
    let (_, encoded) = arrow_ipc::writer::IpcDataGenerator::default()
        .encode(
            &batch,
            &mut tracker,
            &arrow_ipc::writer::IpcWriteOptions::default(),
            &mut arrow_ipc::writer::IpcWriteContext::default(),
        )
        .map_err(|e| invalid(format!("cannot encode a decompressed batch: {e}")))?;
    Ok(Message {
        header: Bytes::from(encoded.ipc_message),
        body: Bytes::from(encoded.arrow_data),
    })
}

/// The stream's next record batch message; `None` at its end.
async fn next_message(
    input: &mut Streaming<FlightData>,
    schema: &SchemaRef,
    limit: usize,
) -> Result<Option<Message>, Status> {
    while let Some(data) = input.message().await? {
        let message = arrow_ipc::root_as_message(&data.data_header)
            .map_err(|e| invalid(format!("a message that is not Arrow IPC: {e}")))?;
        match message.header_type() {
            // Application metadata only.
            MessageHeader::NONE => continue,
            MessageHeader::RecordBatch => {}
            MessageHeader::Schema => {
                return Err(invalid(
                    "a second schema in the stream (a table has one schema)",
                ))
            }
            MessageHeader::DictionaryBatch => {
                return Err(invalid(
                    "a dictionary batch, but the schema has no dictionary field",
                ))
            }
            other => return Err(invalid(format!("unexpected message {other:?}"))),
        }
        let len = usize::try_from(message.bodyLength())
            .ok()
            .filter(|&n| n <= data.data_body.len())
            .ok_or_else(|| {
                invalid(format!(
                    "a batch declares a body of {} bytes and carries {}",
                    message.bodyLength(),
                    data.data_body.len()
                ))
            })?;
        let body = data.data_body.slice(..len);
        let compressed = message
            .header_as_record_batch()
            .is_some_and(|rb| rb.compression().is_some());
        if compressed {
            check_compressed(&data.data_header, &body, limit).map_err(invalid)?;
            return decompressed(schema, message, body).map(Some);
        }
        return Ok(Some(Message {
            header: data.data_header,
            body,
        }));
    }
    Ok(None)
}

/// A group's write on the blocking pool: its chunk, length and batches.
type Writing = tokio::task::JoinHandle<Result<(ObjectId, u64, Vec<BatchLayout>), Status>>;

/// Waits for `writing` (if any) and adds its chunk and batches to the version.
async fn settle(
    writing: Option<Writing>,
    chunks: &mut Vec<(ObjectId, u64)>,
    layouts: &mut Vec<BatchLayout>,
) -> Result<(), Status> {
    if let Some(w) = writing {
        let (id, len, batches) = w
            .await
            .map_err(|_| Status::internal("a Flight worker panicked"))??;
        chunks.push((id, len));
        layouts.extend(batches);
    }
    Ok(())
}

/// Writes the rest of a `do_put` stream (its schema, without dictionaries,
/// came in `schema_message`) into the arena as it arrives and publishes it as
/// the new version of `name`. `limit`: the most bytes the table may have.
pub(super) async fn put_streaming(
    pool: Arc<Pool>,
    name: String,
    if_version: Option<u64>,
    schema: SchemaRef,
    schema_message: Bytes,
    mut input: Streaming<FlightData>,
    limit: usize,
) -> Result<(SealInfo, u64), Status> {
    let conn = Arc::new(PutConn {
        id: pool.server_conn().into_id(),
        pool: pool.clone(),
    });
    let mut writing: Option<Writing> = None;
    let mut chunks: Vec<(ObjectId, u64)> = Vec::new();
    let mut layouts = Vec::new();
    let mut total = 0usize;
    let mut group: Vec<Message> = Vec::new();
    let mut group_bytes = 0usize;
    let mut done = false;
    while !done {
        match next_message(&mut input, &schema, limit).await? {
            Some(m) => {
                total += m.body.len();
                if total > limit {
                    return Err(Status::resource_exhausted(format!(
                        "do_put of {name:?}: the table is larger than the arena ({}); it can never fit",
                        crate::util::human_bytes(limit as u64)
                    )));
                }
                group_bytes += m.body.len();
                group.push(m);
                if group_bytes < PUT_CHUNK_BYTES && group.len() < PUT_CHUNK_MESSAGES {
                    continue;
                }
            }
            None => done = true,
        }
        // At the end, an empty group is written only for a table of no batches.
        if group.is_empty() && !(chunks.is_empty() && writing.is_none()) {
            continue;
        }
        // One write at a time: the previous group's, then this one's.
        settle(writing.take(), &mut chunks, &mut layouts).await?;
        let messages = std::mem::take(&mut group);
        group_bytes = 0;
        let (conn, name, schema, schema_message) = (
            conn.clone(),
            name.clone(),
            schema.clone(),
            schema_message.clone(),
        );
        writing = Some(tokio::task::spawn_blocking(move || {
            write_group(&conn, &name, &schema, &schema_message, &messages)
        }));
    }
    settle(writing.take(), &mut chunks, &mut layouts).await?;
    let manifest = Arc::new(Manifest {
        schema: schema.clone(),
        dictionaries: Vec::new(),
        batches: layouts,
    });
    let bytes = chunks.iter().map(|c| c.1).sum();
    let publish = conn.clone();
    let sealed = tokio::task::spawn_blocking(move || {
        publish
            .pool
            .publish_manifest(
                publish.id,
                &name,
                if_version,
                None,
                &chunks,
                &[],
                manifest,
                chunks.first().map_or(0, |c| c.0),
            )
            .map_err(pool_status)
    })
    .await
    .map_err(|_| Status::internal("a Flight worker panicked"))??;
    drop(conn);
    pool.versions_changed.notify(usize::MAX);
    Ok((sealed, bytes))
}
