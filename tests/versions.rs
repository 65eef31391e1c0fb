//! Versions that share columns: a put of a table derived from a get writes
//! only what changed, against a real server.
mod common;

use std::sync::Arc;

use arrow_array::types::Int8Type;
use arrow_array::{Array, ArrayRef, DictionaryArray, Float64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use arrowpool::client::PutOptions;
use arrowpool::protocol::ErrorCode;
use common::{table, Server};

/// Address of a column's values: where its last buffer starts.
fn values_ptr(a: &ArrayRef) -> usize {
    a.to_data()
        .buffers()
        .last()
        .map_or(0, |b| b.as_ptr() as usize)
}

fn used(c: &arrowpool::Client) -> u64 {
    c.stats().unwrap().used_bytes
}

#[test]
fn replacing_a_column_writes_only_that_column() {
    let server = Server::start("256M");
    let c = server.client();
    let (schema, batches) = table(400_000, 4, 1);
    let first = c.put("t", &schema, &batches).unwrap();
    let base = used(&c);
    let got = c.get("t").unwrap();

    // Replace `value` (column 1) in every batch.
    let new_schema = Arc::new(Schema::new(vec![
        schema.field(0).clone(),
        Field::new("value", DataType::Float64, false),
        schema.field(2).clone(),
        schema.field(3).clone(),
    ]));
    let replaced: Vec<RecordBatch> = got
        .batches
        .iter()
        .map(|b| {
            let v: ArrayRef = Arc::new(Float64Array::from_iter_values(
                (0..b.num_rows()).map(|i| i as f64),
            ));
            let mut cols = b.columns().to_vec();
            cols[1] = v;
            RecordBatch::try_new(new_schema.clone(), cols).unwrap()
        })
        .collect();
    let info = c.put("t", &new_schema, &replaced).unwrap();
    assert_eq!(info.version, first.version + 1);
    assert_eq!(info.rows, 400_000);
    let value_bytes = 400_000 * 8;
    assert!(
        info.bytes < value_bytes + 64 * 1024,
        "only the new column is written: {} bytes for {value_bytes} bytes of values",
        info.bytes
    );
    // The arena grew by the new column, not the table, while the old version is held.
    let grown = used(&c) - base;
    assert!(
        grown < value_bytes + 1024 * 1024,
        "arena grew {grown} bytes"
    );

    // `list`: the new version holds its new column alone, shares the rest.
    let e = &c.list().unwrap()[0];
    assert_eq!(e.bytes - e.shared_bytes, info.bytes, "{e:?}");
    let new = c.get("t").unwrap();
    assert_eq!(new.batches.len(), 4);
    for (b, (old_b, new_b)) in got.batches.iter().zip(&new.batches).enumerate() {
        assert_eq!(new_b, &replaced[b]);
        for col in [0, 2, 3] {
            assert_eq!(
                values_ptr(old_b.column(col)),
                values_ptr(new_b.column(col)),
                "column {col} of batch {b} is the old version's memory"
            );
        }
        assert_ne!(values_ptr(old_b.column(1)), values_ptr(new_b.column(1)));
    }
    // The old version goes with its readers (`replaced` holds its arrays
    // too); the shared chunk stays.
    drop((got, replaced));
    server.wait_until("old version released", |s| s.leases == 1);
    let list = c.list().unwrap();
    assert_eq!(list.len(), 1);
    drop(new);
    // Delete frees everything: chunks are counted, not leaked.
    c.delete("t").unwrap();
    server.wait_until("arena empty", |s| s.leases == 0 && s.objects == 0);
    assert_eq!(used(&c), 4096);
}

#[test]
fn appending_rows_writes_only_the_new_batches() {
    let server = Server::start("256M");
    let c = server.client();
    let (schema, batches) = table(400_000, 4, 1);
    c.put("t", &schema, &batches).unwrap();
    let got = c.get("t").unwrap();
    let (_, more) = table(40_000, 1, 99);
    let mut all = got.batches.clone();
    all.extend(more.iter().cloned());
    let info = c.put("t", &schema, &all).unwrap();
    assert_eq!(info.rows, 440_000);
    let more_bytes: usize = more[0]
        .columns()
        .iter()
        .map(|a| a.get_buffer_memory_size())
        .sum();
    assert!(
        (info.bytes as usize) < more_bytes + 64 * 1024,
        "{} bytes written for {more_bytes} bytes of new rows",
        info.bytes
    );
    let new = c.get("t").unwrap();
    assert_eq!(new.batches.len(), 5);
    assert_eq!(&new.batches[..], &all[..]);
    for b in 0..4 {
        assert_eq!(
            values_ptr(got.batches[b].column(3)),
            values_ptr(new.batches[b].column(3))
        );
    }
}

#[test]
fn dropping_and_renaming_columns_copies_nothing() {
    let server = Server::start("256M");
    let c = server.client();
    let (schema, batches) = table(100_000, 2, 1);
    c.put("t", &schema, &batches).unwrap();
    let got = c.get("t").unwrap();
    let sub = Arc::new(Schema::new(vec![
        Field::new("renamed_text", DataType::Utf8, true),
        schema.field(0).clone(),
    ]));
    let parts: Vec<RecordBatch> = got
        .batches
        .iter()
        .map(|b| {
            RecordBatch::try_new(sub.clone(), vec![b.column(3).clone(), b.column(0).clone()])
                .unwrap()
        })
        .collect();
    let info = c.put("u", &sub, &parts).unwrap();
    assert_eq!(info.bytes, 0, "every column is reused");
    let u = c.get("u").unwrap();
    assert_eq!(u.schema, sub);
    assert_eq!(&u.batches[..], &parts[..]);
}

#[test]
fn if_version_refuses_a_lost_update() {
    let server = Server::start("256M");
    let c = server.client();
    let (schema, batches) = table(10_000, 1, 1);
    let v1 = c.put("t", &schema, &batches).unwrap().version;
    let opts = PutOptions {
        if_version: Some(v1),
    };
    let v2 = c.put_with("t", &schema, &batches, opts).unwrap().version;
    assert_eq!(v2, v1 + 1);
    // A second writer that read v1 must not overwrite v2.
    let before = c.stats().unwrap();
    let e = c.put_with("t", &schema, &batches, opts).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::VersionConflict), "{e}");
    assert!(e.to_string().contains("version 2"), "{e}");
    let after = c.stats().unwrap();
    assert_eq!(
        (after.used_bytes, after.pending_bytes),
        (before.used_bytes, 0),
        "nothing left behind"
    );
    assert_eq!(c.get("t").unwrap().version, v2);
}

#[test]
fn a_dictionary_column_is_shared_with_its_dictionary() {
    let server = Server::start("256M");
    let c = server.client();
    let schema = Arc::new(Schema::new(vec![
        Field::new(
            "k",
            DataType::Dictionary(Box::new(DataType::Int8), Box::new(DataType::Utf8)),
            false,
        ),
        Field::new("x", DataType::Float64, false),
    ]));
    // One batch: an IPC file holds one dictionary per column.
    let k: DictionaryArray<Int8Type> = (0..3000).map(|i| ["a", "b", "c"][i % 3]).collect();
    let whole = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(k),
            Arc::new(Float64Array::from_iter_values((0..3000).map(|i| i as f64))),
        ],
    )
    .unwrap();
    c.put("d", &schema, std::slice::from_ref(&whole)).unwrap();
    let got = c.get("d").unwrap();
    let x2: ArrayRef = Arc::new(Float64Array::from_iter_values(
        (0..3000).map(|i| -(i as f64)),
    ));
    let changed =
        RecordBatch::try_new(schema.clone(), vec![got.batches[0].column(0).clone(), x2]).unwrap();
    let info = c.put("d", &schema, std::slice::from_ref(&changed)).unwrap();
    assert!(info.bytes < 3000 * 8 + 64 * 1024, "{}", info.bytes);
    let new = c.get("d").unwrap();
    assert_eq!(new.batches[0], changed);
    assert_eq!(
        values_ptr(got.batches[0].column(0)),
        values_ptr(new.batches[0].column(0)),
        "the keys are shared"
    );
}

#[test]
fn a_bad_draft_is_refused_and_changes_nothing() {
    use arrowpool::protocol::draft::{Draft, DraftBatch, Source};
    let server = Server::start("256M");
    let c = server.client();
    let (schema, batches) = table(10_000, 1, 1);
    c.put("t", &schema, &batches).unwrap();
    let before = c.stats().unwrap();
    let schema_msg = {
        let w = arrow_ipc::writer::StreamWriter::try_new(Vec::new(), &schema).unwrap();
        w.get_ref().clone()
    };
    // Buffers no version has, a column count the schema disagrees with, garbage.
    let bogus = Draft {
        schema: schema_msg.clone(),
        chunks: vec![],
        batches: vec![DraftBatch {
            rows: 10_000,
            columns: (0..4)
                .map(|_| Source::Existing {
                    buffers: vec![(12345 * 4096, 80_000)],
                })
                .collect(),
        }],
    };
    let mut cases = Vec::new();
    cases.push(("unknown buffers", encoded(bogus.clone())));
    let b = encoded(Draft {
        batches: vec![DraftBatch {
            rows: 1,
            columns: vec![],
        }],
        ..bogus.clone()
    });
    cases.push(("too few columns", b));
    cases.push(("garbage", b"APDRAFT1 and then nonsense".to_vec()));
    // Real buffers, but of the int64 column `id` under the float64 `value`,
    // and a batch whose rows disagree with its columns.
    let got = c.get("t").unwrap();
    let existing = |col: usize| {
        let d = got.batches[0].column(col).to_data();
        let mut v: Vec<(u64, u64)> = d
            .buffers()
            .iter()
            .chain(d.nulls().map(|n| n.buffer()))
            .filter(|b| !b.is_empty())
            .map(|b| {
                (
                    c.arena_offset(b.as_ptr()).expect("in the arena"),
                    b.len() as u64,
                )
            })
            .collect();
        v.sort_unstable();
        Source::Existing { buffers: v }
    };
    let b = encoded(Draft {
        batches: vec![DraftBatch {
            rows: 10_000,
            columns: vec![existing(0), existing(0), existing(2), existing(3)],
        }],
        ..bogus.clone()
    });
    cases.push(("int64 buffers as a float64 column", b));
    let b = encoded(Draft {
        batches: vec![DraftBatch {
            rows: 10_001,
            columns: (0..4).map(existing).collect(),
        }],
        ..bogus.clone()
    });
    cases.push(("rows that disagree with the columns", b));
    // Rows of a column beyond its end.
    let slice = |col: usize, offset: u64, rows: u64| match existing(col) {
        Source::Existing { buffers } => Source::Slice {
            offset,
            rows,
            buffers,
        },
        other => other,
    };
    let b = encoded(Draft {
        batches: vec![DraftBatch {
            rows: 100,
            columns: (0..4).map(|c| slice(c, 9_950, 100)).collect(),
        }],
        ..bogus.clone()
    });
    cases.push(("a slice past the column's end", b));
    for (what, bytes) in cases {
        let e = publish_raw(&server, "t", &bytes).unwrap_err();
        assert_eq!(e.0, ErrorCode::InvalidData as u16, "{what}: {}", e.1);
        assert!(e.1.contains("nothing was published"), "{what}: {}", e.1);
    }
    // The same columns, right: accepted (so the refusals above were about
    // what they changed).
    let b = encoded(Draft {
        batches: vec![DraftBatch {
            rows: 10_000,
            columns: (0..4).map(existing).collect(),
        }],
        ..bogus.clone()
    });
    publish_raw(&server, "t2", &b).unwrap();
    assert_eq!(c.get("t2").unwrap().batches, batches);
    c.delete("t2").unwrap();
    // Rows 64..+1000 of every column, shared in place.
    let b = encoded(Draft {
        batches: vec![DraftBatch {
            rows: 1000,
            columns: (0..4).map(|c| slice(c, 64, 1000)).collect(),
        }],
        ..bogus.clone()
    });
    publish_raw(&server, "t2", &b).unwrap();
    let sliced = c.get("t2").unwrap();
    assert_eq!(sliced.batches, vec![batches[0].slice(64, 1000)]);
    assert_eq!(
        values_ptr(sliced.batches[0].column(0)),
        values_ptr(got.batches[0].column(0)) + 64 * 8
    );
    drop(sliced);
    c.delete("t2").unwrap();
    drop(got);
    // A new column in a chunk that another connection created: refused.
    let other = c
        .put_with(
            "t",
            &schema,
            &batches,
            PutOptions {
                if_version: Some(999),
            },
        )
        .unwrap_err();
    assert_eq!(other.code(), Some(ErrorCode::VersionConflict));
    let (keep, created) = create_raw(&server, "t");
    let b = encoded(Draft {
        chunks: vec![(created, 4096)],
        batches: vec![DraftBatch {
            rows: 10_000,
            columns: (0..4)
                .map(|c| Source::New {
                    chunk: 0,
                    batch: 0,
                    column: c,
                })
                .collect(),
        }],
        ..bogus.clone()
    });
    let e = publish_raw(&server, "t", &b).unwrap_err();
    assert_eq!(e.0, ErrorCode::InvalidObject as u16, "{}", e.1);
    assert!(e.1.contains("another connection"), "{}", e.1);
    drop(keep);
    server.wait_until("refused drafts left nothing", |s| {
        s.used_bytes == before.used_bytes && s.pending_bytes == 0
    });
    assert_eq!(
        c.stats().unwrap().puts,
        before.puts + 2,
        "only the two t2 were published"
    );
    assert_eq!(c.get("t").unwrap().batches, batches);
}

fn encoded(d: arrowpool::protocol::draft::Draft) -> Vec<u8> {
    let mut b = Vec::new();
    d.encode(&mut b);
    b
}

/// A pending chunk created on a connection of its own, which stays open (and
/// the chunk pending) until the returned stream is dropped.
fn create_raw(server: &Server, name: &str) -> (std::os::unix::net::UnixStream, u64) {
    use arrowpool::protocol::create::{Create, Created};
    use arrowpool::protocol::{Kind, ObjectKind};
    use std::io::Write;
    let mut s = common::raw_connect(server);
    let mut body = Vec::new();
    Create {
        object_kind: ObjectKind::Table,
        size: 4096,
        name: name.into(),
    }
    .encode(&mut body)
    .unwrap();
    s.write_all(&common::frame(1, Kind::Create as u16, 0, &body))
        .unwrap();
    let (_, kind, reply) = common::read_reply(&mut s).unwrap();
    assert_eq!(kind, Kind::Create.reply());
    let id = Created::decode(&reply).unwrap().object_id;
    (s, id)
}

/// Writes `draft` into a new pending chunk over a raw connection and sends
/// `publish` for it: the error code and message, if refused.
fn publish_raw(server: &Server, name: &str, draft: &[u8]) -> Result<(), (u16, String)> {
    use arrowpool::protocol::create::{Create, Created};
    use arrowpool::protocol::publish::Publish;
    use arrowpool::protocol::{ErrorReply, Kind, ObjectKind};
    use std::io::Write;
    use std::os::fd::AsFd;
    let mut s = std::os::unix::net::UnixStream::connect(&server.socket).unwrap();
    let (hello, fds) = arrowpool::client::handshake(&s, true).unwrap();
    let map =
        arrowpool::arena::Mapping::map(fds[1].as_fd(), hello.arena_len as usize, true).unwrap();
    let mut body = Vec::new();
    Create {
        object_kind: ObjectKind::Bytes,
        size: draft.len() as u64,
        name: name.into(),
    }
    .encode(&mut body)
    .unwrap();
    s.write_all(&common::frame(1, Kind::Create as u16, 0, &body))
        .unwrap();
    let (_, kind, reply) = common::read_reply(&mut s).unwrap();
    assert_eq!(kind, Kind::Create.reply());
    let created = Created::decode(&reply).unwrap();
    // SAFETY: the server reserved this range for our pending chunk; nobody
    // else reads or writes it before the publish.
    let dest = unsafe { map.slice_mut(created.offset, draft.len() as u64) }.unwrap();
    dest.copy_from_slice(draft);
    let mut body = Vec::new();
    Publish {
        if_version: None,
        draft_id: created.object_id,
        draft_len: draft.len() as u64,
        name: name.into(),
    }
    .encode(&mut body)
    .unwrap();
    s.write_all(&common::frame(2, Kind::Publish as u16, 0, &body))
        .unwrap();
    let (_, kind, reply) = common::read_reply(&mut s).unwrap();
    if kind == Kind::Publish.reply() {
        return Ok(());
    }
    let e = ErrorReply::decode(&reply).unwrap();
    Err((e.code as u16, e.message))
}

#[test]
fn kept_versions_are_read_by_number() {
    let server = Server::start_with(&["--memory", "256M", "--keep-versions", "3"]);
    let c = server.client();
    let (schema, batches) = table(10_000, 1, 1);
    for seed in 0..4 {
        let (_, b) = table(10_000, 1, seed);
        c.put("t", &schema, &b).unwrap();
    }
    let list = c.list().unwrap();
    assert_eq!(list[0].retained, vec![2, 3]);
    let v2 = c.get_version("t", 2).unwrap();
    assert_eq!((v2.version, &v2.batches), (2, &table(10_000, 1, 1).1));
    assert_eq!(c.get_version("t", 4).unwrap().version, 4);
    let e = c.get_version("t", 1).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    assert!(e.to_string().contains("not kept"), "{e}");
    let _ = batches;
}

#[test]
fn many_different_new_column_sets_still_fit_in_one_put() {
    let server = Server::start("256M");
    let c = server.client();
    let fields: Vec<Field> = (0..7)
        .map(|i| Field::new(format!("c{i}"), DataType::Float64, false))
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let batch = |seed: f64| {
        let cols: Vec<ArrayRef> = (0..7)
            .map(|i| {
                Arc::new(Float64Array::from_iter_values(
                    (0..1000).map(|r| seed + (i * r) as f64),
                )) as ArrayRef
            })
            .collect();
        RecordBatch::try_new(schema.clone(), cols).unwrap()
    };
    let batches: Vec<RecordBatch> = (0..70).map(|b| batch(b as f64)).collect();
    c.put("t", &schema, &batches).unwrap();
    let got = c.get("t").unwrap();
    // Batch b replaces the columns of the bits of b + 1: 70 different sets,
    // more files than a connection may hold pending (64) were each its own.
    let changed: Vec<RecordBatch> = got
        .batches
        .iter()
        .enumerate()
        .map(|(b, old)| {
            let fresh = batch(1000.0 + b as f64);
            let cols: Vec<ArrayRef> = (0..7)
                .map(|i| {
                    if (b + 1) >> i & 1 == 1 {
                        fresh.column(i).clone()
                    } else {
                        old.column(i).clone()
                    }
                })
                .collect();
            RecordBatch::try_new(schema.clone(), cols).unwrap()
        })
        .collect();
    c.put("t", &schema, &changed).unwrap();
    assert_eq!(c.get("t").unwrap().batches, changed);
    assert_eq!(c.stats().unwrap().pending_bytes, 0);
}
