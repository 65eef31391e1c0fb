//! Bad input on the Flight listener (`--flight`), with the Rust Flight client
//! against a real server: malformed messages, a stream whose schema changes,
//! a client that dies mid-put, a client that stops reading mid-get. Each gets
//! an error (or nothing happens), nothing is published half-way, no space or
//! lease is left behind, and the server keeps serving.

mod common;

use std::time::Duration;

use arrow_array::{Int64Array, RecordBatch};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::{FlightClient, FlightData, FlightDescriptor, Ticket};
use arrow_schema::{DataType, Field, Schema};
use common::Server;
use futures::{StreamExt, TryStreamExt};
use std::sync::Arc;

fn server() -> (Server, String) {
    let s = Server::start_with(&[
        "--memory",
        "256M",
        "--threads",
        "2",
        "--flight",
        "127.0.0.1:0",
    ]);
    let addr = s
        .client()
        .stats()
        .unwrap()
        .flight
        .expect("flight address in stats");
    (s, addr)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn connect(addr: &str) -> FlightClient {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // Messages are up to 32 MiB; tonic's default limit is 4 MiB.
    let inner = arrow_flight::flight_service_client::FlightServiceClient::new(channel)
        .max_decoding_message_size(usize::MAX);
    FlightClient::new_from_inner(inner)
}

fn batch(rows: i64) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
    RecordBatch::try_new(
        schema,
        vec![Arc::new(Int64Array::from_iter_values(0..rows))],
    )
    .unwrap()
}

/// The first message of a put of `b` (its schema, dictionaries kept) under
/// `descriptor`.
async fn first_message(descriptor: &FlightDescriptor, b: RecordBatch) -> FlightData {
    FlightDataEncoderBuilder::new()
        .with_dictionary_handling(arrow_flight::encode::DictionaryHandling::Resend)
        .with_flight_descriptor(Some(descriptor.clone()))
        .build(futures::stream::iter([Ok(b)]))
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .remove(0)
}

/// A valid put of `b` as "ok": the server still takes puts.
async fn put_ok(client: &mut FlightClient, b: RecordBatch) {
    let put = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_path(vec!["ok".into()])))
        .build(futures::stream::iter([Ok(b)]));
    client
        .do_put(put)
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
}

/// Deterministic bytes (xorshift), for garbage that is the same every run.
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn malformed_put_messages_are_refused_and_leave_nothing() {
    let (s, addr) = server();
    let rt = runtime();
    rt.block_on(async {
        let mut client = connect(&addr).await;
        let descriptor = FlightDescriptor::new_path(vec!["t".into()]);
        // A valid schema message first, then garbage headers and bodies.
        let schema_message = first_message(&descriptor, batch(10)).await;
        let mut refused = 0;
        for seed in 0..60u64 {
            let bad = FlightData::new()
                .with_data_header(garbage(seed, (seed as usize * 37) % 300))
                .with_data_body(garbage(seed + 1000, (seed as usize * 101) % 5000));
            let first = if seed % 3 == 0 {
                // No schema at all: the garbage comes first, with the descriptor.
                bad.clone().with_descriptor(descriptor.clone())
            } else {
                schema_message.clone()
            };
            let stream = futures::stream::iter([Ok(first), Ok(bad)]);
            let r: Result<Vec<_>, _> = match client.do_put(stream).await {
                Ok(s) => s.try_collect().await,
                Err(e) => Err(e),
            };
            if r.is_err() {
                refused += 1;
            }
        }
        assert!(refused >= 40, "only {refused} of 60 malformed puts refused");
        // A message with no descriptor, and a descriptor naming no table.
        let no_descriptor =
            FlightDataEncoderBuilder::new().build(futures::stream::iter([Ok(batch(5))]));
        let r = client.do_put(no_descriptor).await;
        let err = match r {
            Ok(s) => s.try_collect::<Vec<_>>().await.unwrap_err(),
            Err(e) => e,
        };
        assert!(err.to_string().contains("descriptor"), "{err}");
    });
    // Nothing was published from garbage... unless a garbage stream happened
    // to decode as an empty table, which would be a valid put: then it is "t".
    let c = s.client();
    let names: Vec<String> = c.list().unwrap().into_iter().map(|e| e.name).collect();
    assert!(names.iter().all(|n| n == "t"), "{names:?}");
    s.wait_until("no pending bytes", |st| st.pending_bytes == 0);
    // Still serving, both ways.
    rt.block_on(async {
        let mut client = connect(&addr).await;
        put_ok(&mut client, batch(1000)).await;
        let got: Vec<RecordBatch> = client
            .do_get(Ticket::new("ok"))
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(got.iter().map(|b| b.num_rows()).sum::<usize>(), 1000);
    });
    assert!(!s.stderr().contains("panicked"), "{}", s.stderr());
}

#[test]
fn a_schema_change_mid_stream_is_refused() {
    let (s, addr) = server();
    runtime().block_on(async {
        let mut client = connect(&addr).await;
        let mut messages: Vec<FlightData> = FlightDataEncoderBuilder::new()
            .with_flight_descriptor(Some(FlightDescriptor::new_path(vec!["t".into()])))
            .build(futures::stream::iter([Ok(batch(10))]))
            .try_collect()
            .await
            .unwrap();
        let other = Arc::new(Schema::new(vec![Field::new("b", DataType::Utf8, true)]));
        let other_batch = RecordBatch::try_new(
            other,
            vec![Arc::new(arrow_array::StringArray::from(vec!["x"; 3]))],
        )
        .unwrap();
        let more: Vec<FlightData> = FlightDataEncoderBuilder::new()
            .build(futures::stream::iter([Ok(other_batch)]))
            .try_collect()
            .await
            .unwrap();
        messages.extend(more);
        let r = match client
            .do_put(futures::stream::iter(messages.into_iter().map(Ok)))
            .await
        {
            Ok(s) => s.try_collect::<Vec<_>>().await.map(|_| ()),
            Err(e) => Err(e),
        };
        assert!(r.is_err(), "a stream whose schema changed was accepted");
    });
    assert!(s.client().list().unwrap().is_empty());
    s.wait_until("no pending bytes", |st| st.pending_bytes == 0);
}

#[test]
fn a_client_that_stops_reading_or_dies_mid_call_leaves_no_lease_or_space() {
    let (s, addr) = server();
    let c = s.client();
    let (schema, batches) = common::table(400_000, 8, 1);
    c.put("big", &schema, &batches).unwrap();
    // Read one message of a many-message stream, then drop the stream; the
    // client's runtime (and with it the connection) goes too.
    let rt = runtime();
    rt.block_on(async {
        let mut client = connect(&addr).await;
        let mut stream = client.do_get(Ticket::new("big")).await.unwrap();
        assert!(stream.next().await.unwrap().is_ok());
    });
    drop(rt);
    s.wait_until("the abandoned stream's lease released", |st| st.leases == 0);
    let rt = runtime();
    let tx = rt.block_on(async {
        // A put whose client goes away before the end of its stream: the
        // process's runtime and connection vanish while the stream is open
        // (ending the stream cleanly would be a complete put of fewer rows).
        let mut client = connect(&addr).await;
        let (tx, rx) = futures::channel::mpsc::unbounded::<FlightData>();
        let messages: Vec<FlightData> = FlightDataEncoderBuilder::new()
            .with_flight_descriptor(Some(FlightDescriptor::new_path(vec!["half".into()])))
            .build(futures::stream::iter(batches.clone().into_iter().map(Ok)))
            .try_collect()
            .await
            .unwrap();
        for m in messages.into_iter().take(4) {
            tx.unbounded_send(m).unwrap();
        }
        let _call = tokio::spawn(async move {
            let _ = client.do_put(rx.map(Ok)).await;
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        tx
    });
    drop(rt);
    drop(tx);
    std::thread::sleep(Duration::from_millis(300));
    let names: Vec<String> = c.list().unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(names, vec!["big".to_string()]);
    s.wait_until("nothing pending or leased", |st| {
        st.pending_bytes == 0 && st.leases == 0
    });
}

/// 16 MB: one million rows of an integer and a float column.
fn big_batch(seed: i64) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("a", DataType::Int64, false),
        Field::new("b", DataType::Float64, false),
    ]));
    let n = 1_000_000;
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values((0..n).map(|i| i * seed))),
            Arc::new(arrow_array::Float64Array::from_iter_values(
                (0..n).map(|i| (i ^ seed) as f64 * 0.5),
            )),
        ],
    )
    .unwrap()
}

/// A `do_put` of a table without dictionaries is written into the arena as
/// it arrives (chunks pending while the stream is still open), and the
/// version is all of it; a client that dies after some chunks were written
/// leaves nothing behind.
#[test]
fn a_large_put_is_written_as_it_arrives_and_a_death_mid_stream_leaves_nothing() {
    let (s, addr) = server();
    let c = s.client();
    let empty = c.stats().unwrap().used_bytes;
    // A runtime whose thread drives the call while this one waits.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let tx = rt.block_on(async {
        let mut client = connect(&addr).await;
        let (tx, rx) = futures::channel::mpsc::unbounded::<FlightData>();
        let messages: Vec<FlightData> = FlightDataEncoderBuilder::new()
            .with_flight_descriptor(Some(FlightDescriptor::new_path(vec!["dies".into()])))
            .build(futures::stream::iter((1..=6).map(|i| Ok(big_batch(i)))))
            .try_collect()
            .await
            .unwrap();
        for m in messages {
            tx.unbounded_send(m).unwrap();
        }
        tokio::spawn(async move {
            let _ = client.do_put(rx.map(Ok)).await;
        });
        tx
    });
    // 96 MB sent, the stream still open: the first 64 MiB are in the arena.
    s.wait_until("a chunk written before the stream ended", |st| {
        st.pending_bytes >= 64 << 20
    });
    drop(rt);
    drop(tx);
    s.wait_until("the dead put's chunks given back", |st| {
        st.pending_bytes == 0 && st.used_bytes == empty
    });
    assert!(c.list().unwrap().is_empty());

    let batches: Vec<RecordBatch> = (1..=12).map(big_batch).collect();
    let rt = runtime();
    rt.block_on(async {
        let mut client = connect(&addr).await;
        let messages = FlightDataEncoderBuilder::new()
            .with_flight_descriptor(Some(FlightDescriptor::new_path(vec!["whole".into()])))
            .build(futures::stream::iter(batches.clone().into_iter().map(Ok)));
        let replies: Vec<_> = client
            .do_put(messages)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(replies.len(), 1);
    });
    let got = c.get("whole").unwrap();
    let rows: usize = got.batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 12_000_000);
    let expected = arrow_select::concat::concat_batches(&batches[0].schema(), &batches).unwrap();
    let got_all = arrow_select::concat::concat_batches(&got.schema, &got.batches).unwrap();
    assert!(got_all == expected, "the streamed put reads back different");
    let st = c.stats().unwrap();
    assert_eq!(st.pending_bytes, 0);
    assert!(
        st.used_bytes - empty < 200 << 20,
        "the version holds its 192 MB once: {st:?}"
    );
}

/// A compressed batch whose body is damaged (lengths and bytes scrambled
/// after a valid LZ4 encoding): refused, nothing published or left pending,
/// no panic in the server's log, and the server still takes puts.
#[test]
fn a_damaged_compressed_batch_is_refused() {
    use arrow_ipc::writer::{
        DictionaryTracker, IpcDataGenerator, IpcWriteContext, IpcWriteOptions,
    };
    let (s, addr) = server();
    let rt = runtime();
    rt.block_on(async {
        let mut client = connect(&addr).await;
        let descriptor = FlightDescriptor::new_path(vec!["z".into()]);
        let schema_message = first_message(&descriptor, batch(10)).await;
        let options = IpcWriteOptions::default()
            .try_with_compression(Some(arrow_ipc::CompressionType::LZ4_FRAME))
            .unwrap();
        let (_, encoded) = IpcDataGenerator::default()
            .encode(
                &batch(50_000),
                &mut DictionaryTracker::new(false),
                &options,
                &mut IpcWriteContext::default(),
            )
            .unwrap();
        let mut refused = 0;
        for seed in 0..12u64 {
            let mut body = encoded.arrow_data.clone();
            // Scramble a stretch: the uncompressed-length prefix, frame bytes.
            let g = garbage(seed, 64);
            let at = (seed as usize * 8) % body.len().saturating_sub(64).max(1);
            body[at..at + 64].copy_from_slice(&g);
            let bad = FlightData::new()
                .with_data_header(encoded.ipc_message.clone())
                .with_data_body(body);
            let stream = futures::stream::iter([Ok(schema_message.clone()), Ok(bad)]);
            let r: Result<Vec<_>, _> = match client.do_put(stream).await {
                Ok(s) => s.try_collect().await,
                Err(e) => Err(e),
            };
            if r.is_err() {
                refused += 1;
            }
        }
        assert!(
            refused >= 10,
            "only {refused} of 12 damaged batches refused"
        );

        // A table with a dictionary (the decoding path): its compressed
        // dictionary batch declares a huge length.
        let dict_schema = Arc::new(Schema::new(vec![Field::new(
            "d",
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            false,
        )]));
        let keys = arrow_array::Int32Array::from_iter_values((0..1000).map(|i| i % 3));
        let values = Arc::new(arrow_array::StringArray::from(vec!["a", "b", "c"]));
        let dict = arrow_array::DictionaryArray::new(keys, values);
        let dict_batch = RecordBatch::try_new(dict_schema.clone(), vec![Arc::new(dict)]).unwrap();
        let zd = FlightDescriptor::new_path(vec!["zd".into()]);
        let dict_schema_message = first_message(&zd, dict_batch.clone()).await;
        let mut tracker = DictionaryTracker::new(false);
        let generator = IpcDataGenerator::default();
        // Numbers the dictionary fields, as a writer does with its schema.
        generator.schema_to_bytes_with_dictionary_tracker(&dict_schema, &mut tracker, &options);
        let (dicts, encoded) = generator
            .encode(
                &dict_batch,
                &mut tracker,
                &options,
                &mut IpcWriteContext::default(),
            )
            .unwrap();
        let mut dict_body = dicts[0].arrow_data.clone();
        // The first buffer's uncompressed-length prefix.
        dict_body[..8].copy_from_slice(&(1i64 << 60).to_le_bytes());
        let stream = futures::stream::iter([
            Ok(dict_schema_message),
            Ok(FlightData::new()
                .with_data_header(dicts[0].ipc_message.clone())
                .with_data_body(dict_body)),
            Ok(FlightData::new()
                .with_data_header(encoded.ipc_message.clone())
                .with_data_body(encoded.arrow_data.clone())),
        ]);
        let r: Result<Vec<_>, _> = match client.do_put(stream).await {
            Ok(s) => s.try_collect().await,
            Err(e) => Err(e),
        };
        let e = r.unwrap_err();
        assert!(e.to_string().contains("uncompressed"), "{e}");
    });
    s.wait_until("no pending bytes", |st| st.pending_bytes == 0);
    assert!(!s.stderr().contains("panicked"), "{}", s.stderr());
    rt.block_on(async {
        let mut client = connect(&addr).await;
        put_ok(&mut client, batch(1000)).await;
    });
}

/// One batch larger than a Flight message (a pandas put is one batch) goes
/// as row slices over the arena: the Rust client reads back the table it
/// was, nulls and strings included, in several messages of whole 64-row
/// steps (arrow's encoder would cut 1,200,007 rows into thirds).
#[test]
fn one_large_batch_reads_back_exactly_in_row_slices() {
    let (s, addr) = server();
    let c = s.client();
    let (schema, batches) = common::table(1_200_007, 1, 4);
    let one = arrow_select::concat::concat_batches(&schema, &batches).unwrap();
    c.put("one", &schema, std::slice::from_ref(&one)).unwrap();
    let got: Vec<RecordBatch> = runtime().block_on(async {
        let mut client = connect(&addr).await;
        client
            .do_get(Ticket::new("one"))
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap()
    });
    assert!(got.len() > 1, "sent as one message");
    assert_eq!(got[0].num_rows() % 64, 0, "not the raw row slices");
    let all = arrow_select::concat::concat_batches(&schema, &got).unwrap();
    assert!(all == one, "the table reads back different");
    assert_eq!(all.column(3).null_count(), one.column(3).null_count());
    s.wait_until("the stream's lease released", |st| st.leases == 0);
}
