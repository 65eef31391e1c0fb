//! `--spill-dir` with a real server: under the memory cap the least recently
//! used table goes to disk instead of away, `list` and `stats` say where each
//! version is, a get brings it back with its bytes and number, delete and
//! new versions remove its file, and a full disk refuses the put while the
//! table stays in memory.
mod common;

use std::path::Path;
use std::time::Duration;

use arrow_array::RecordBatch;
use common::{table, Server};

/// One batch owning its memory (no arena buffers), for comparing later.
/// `concat_batches` of one batch copies nothing (arrow's `concat` of one
/// array returns a slice of it), so the empty batch forces the copy: an
/// expected value must not alias the arena, whose bytes a restarted server
/// (which knows nothing of this process's old leases) may free and reuse.
fn owned(schema: &arrow_schema::SchemaRef, batches: &[RecordBatch]) -> RecordBatch {
    let empty = RecordBatch::new_empty(schema.clone());
    arrow_select::concat::concat_batches(schema, batches.iter().chain([&empty])).unwrap()
}

fn spill_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn on_disk(c: &arrowpool::Client) -> Vec<String> {
    let mut v: Vec<String> = c
        .list()
        .unwrap()
        .into_iter()
        .filter(|e| e.on_disk)
        .map(|e| e.name)
        .collect();
    v.sort();
    v
}

/// A server of 64 MiB spilling to `dir`, with `extra` flags.
fn spilling(dir: &Path, ahead: &str, extra: &[&str]) -> Server {
    let mut args = vec![
        "--memory",
        "64M",
        "--threads",
        "2",
        "--spill-dir",
        dir.to_str().unwrap(),
        "--spill-ahead",
        ahead,
    ];
    args.extend_from_slice(extra);
    Server::start_with(&args)
}

type Table = (arrow_schema::SchemaRef, Vec<RecordBatch>);

/// Three tables of about 25 MB: two fit in 64M, three do not.
fn three() -> (Table, Table, Table) {
    (
        table(700_000, 2, 1),
        table(700_000, 2, 2),
        table(700_000, 2, 3),
    )
}

#[test]
fn switching_back_to_a_spilled_table_brings_it_back() {
    let spill = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let s = spilling(spill.path(), "off", &[]);
    let c = s.client();
    let (a, b, d) = three();
    c.put("a", &a.0, &a.1).unwrap();
    c.put("b", &b.0, &b.1).unwrap();
    c.put_bytes("blob", &vec![7u8; 3 << 20]).unwrap();
    assert!(on_disk(&c).is_empty());
    c.put("d", &d.0, &d.1).unwrap();
    // The least recently used went to disk, not away.
    assert_eq!(on_disk(&c), ["a"]);
    let st = c.stats().unwrap();
    assert_eq!((st.spilled_versions, st.spills), (1, 1), "{st:?}");
    assert!(st.spilled_bytes > 10 << 20, "{st:?}");
    assert_eq!(st.spill_dir.as_deref(), spill.path().to_str());
    assert_eq!(spill_files(spill.path()).len(), 1);
    assert!(
        s.stderr().contains("spilled \"a\" version 1"),
        "{}",
        s.stderr()
    );
    // A get brings it back, same bytes, same number (making room spills b).
    let got = c.get("a").unwrap();
    assert_eq!(got.version, 1);
    assert_eq!(owned(&a.0, &got.batches), owned(&a.0, &a.1));
    drop(got);
    assert_eq!(on_disk(&c), ["b"]);
    // a's file stays while a is unchanged: spilling it again writes nothing.
    assert_eq!(spill_files(spill.path()).len(), 2);
    let spills = c.stats().unwrap().spills;
    // A blob spills and comes back too: e needs more room than the blob (least
    // recently used) frees, so d goes as well.
    let e = table(700_000, 2, 4);
    c.put("e", &e.0, &e.1).unwrap();
    assert_eq!(on_disk(&c), ["b", "blob", "d"]);
    // a goes out next on its old file, without a second write.
    let writes_of_a = s.stderr().matches("spilled \"a\"").count();
    let f = table(700_000, 2, 5);
    c.put("f", &f.0, &f.1).unwrap();
    assert!(on_disk(&c).contains(&"a".to_string()), "{:?}", on_disk(&c));
    assert_eq!(s.stderr().matches("spilled \"a\"").count(), writes_of_a);
    assert!(c.stats().unwrap().spills > spills);
    let blob = c.get_bytes("blob").unwrap();
    assert_eq!(blob.as_slice(), &vec![7u8; 3 << 20][..]);
    drop(blob);
    s.wait_until("the blob released", |st| st.leases == 0);
    // A new version of a spilled name replaces it (its file goes); delete of a
    // spilled name removes it and its file.
    let spilled: Vec<String> = on_disk(&c);
    assert!(!spilled.is_empty());
    let first = spilled[0].clone();
    c.put_bytes(&first, b"new").unwrap();
    assert!(!on_disk(&c).contains(&first));
    assert_eq!(
        c.list()
            .unwrap()
            .iter()
            .find(|x| x.name == first)
            .unwrap()
            .version,
        2
    );
    for e in c.list().unwrap() {
        c.delete(&e.name).unwrap();
    }
    assert!(on_disk(&c).is_empty());
    assert!(
        spill_files(spill.path()).is_empty(),
        "{:?}",
        spill_files(spill.path())
    );
    assert_eq!(c.stats().unwrap().spilled_versions, 0);
}

/// A spill directory on a 4 MiB tmpfs (root only: it mounts one).
#[test]
fn a_full_spill_disk_refuses_the_put_and_keeps_the_table() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("not root: cannot mount a small tmpfs; the full-disk case is not checked here");
        return;
    }
    let mnt = common::Mounted::new("tmpfs", "size=4m");
    let s = spilling(mnt.path(), "off", &[]);
    let c = s.client();
    let (a, b, d) = three();
    c.put("a", &a.0, &a.1).unwrap();
    c.put("b", &b.0, &b.1).unwrap();
    let started = std::time::Instant::now();
    let e = c.put("d", &d.0, &d.1).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "no hang, no retry loop"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("writing it to") && msg.contains("stays in memory"),
        "{msg}"
    );
    assert!(msg.contains("No space left on device"), "{msg}");
    // Nothing moved: both tables are where they were, no partial file left.
    assert!(on_disk(&c).is_empty());
    assert_eq!(owned(&a.0, &c.get("a").unwrap().batches), owned(&a.0, &a.1));
    assert_eq!(owned(&b.0, &c.get("b").unwrap().batches), owned(&b.0, &b.1));
    assert!(
        spill_files(mnt.path()).is_empty(),
        "{:?}",
        spill_files(mnt.path())
    );
    // Once there is room (a delete), puts work again.
    c.delete("b").unwrap();
    c.put("d", &d.0, &d.1).unwrap();
}

#[test]
fn a_spill_dir_that_cannot_be_written_is_refused_at_start() {
    let e = Server::try_start_with(&["--memory", "16M", "--spill-dir", "/proc/arrowpool-spill"])
        .err()
        .unwrap();
    assert!(
        e.contains("cannot use --spill-dir /proc/arrowpool-spill"),
        "{e}"
    );
}

#[test]
fn copies_written_ahead_make_room_without_a_write() {
    let spill = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let s = spilling(spill.path(), "0.3", &[]);
    let c = s.client();
    let (a, b, d) = three();
    c.put("a", &a.0, &a.1).unwrap();
    c.put("b", &b.0, &b.1).unwrap();
    // Over 30% in use: both get copies in the background.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while s.stderr().matches("ahead of need").count() < 2 {
        assert!(std::time::Instant::now() < deadline, "{}", s.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(spill_files(spill.path()).len(), 2);
    assert!(
        on_disk(&c).is_empty(),
        "copies, not spills: both still in memory"
    );
    c.put("d", &d.0, &d.1).unwrap();
    assert_eq!(on_disk(&c), ["a"]);
    assert!(
        !s.stderr().contains("spilled \"a\""),
        "a left on its copy, without a write at put time: {}",
        s.stderr()
    );
    assert_eq!(owned(&a.0, &c.get("a").unwrap().batches), owned(&a.0, &a.1));
}

/// A spill directory, and a state directory on tmpfs.
fn spill_and_state_dirs() -> (tempfile::TempDir, tempfile::TempDir) {
    let spill = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let state = tempfile::Builder::new()
        .prefix("arrowpool-state-")
        .tempdir_in("/dev/shm")
        .unwrap();
    (spill, state)
}

/// With a state directory, spilled versions are catalog records: a server
/// killed with `kill -9` comes back with them on disk (their files kept, not
/// removed as strays), brings them back on get with their numbers, and the
/// version that stayed in memory is served from the arena file as it was.
#[test]
fn spilled_versions_survive_kill_9_with_a_state_dir() {
    let (spill, state) = spill_and_state_dirs();
    let state_dir = state.path().to_str().unwrap();
    let mut s = spilling(spill.path(), "off", &["--state-dir", state_dir]);
    let (a, b, d) = three();
    {
        let c = s.client();
        c.put("a", &a.0, &a.1).unwrap();
        c.put("b", &b.0, &b.1).unwrap();
        c.put("b", &b.0, &b.1).unwrap(); // version 2
        c.put("d", &d.0, &d.1).unwrap();
        assert_eq!(on_disk(&c), ["a"]);
    }
    s.child.kill().unwrap(); // SIGKILL
    s.child.wait().unwrap();
    assert_eq!(spill_files(spill.path()).len(), 1);

    let s = spilling(spill.path(), "off", &["--state-dir", state_dir]);
    assert!(
        s.stderr().contains("1 spilled version(s) found on disk"),
        "{}",
        s.stderr()
    );
    let c = s.client();
    assert_eq!(on_disk(&c), ["a"]);
    assert_eq!(spill_files(spill.path()).len(), 1, "the file was kept");
    let got = c.get("a").unwrap();
    assert_eq!(got.version, 1);
    assert_eq!(owned(&a.0, &got.batches), owned(&a.0, &a.1));
    drop(got);
    let got = c.get("d").unwrap();
    assert_eq!(owned(&d.0, &got.batches), owned(&d.0, &d.1));
    drop(got);
    // Bringing a back made room by spilling b (least recently used).
    assert_eq!(on_disk(&c), ["b"]);
    let got = c.get("b").unwrap();
    assert_eq!(got.version, 2);
    assert_eq!(owned(&b.0, &got.batches), owned(&b.0, &b.1));
}

/// A spill file cut short is found: at a get (an error naming the file, the
/// server still serving) and at a restart with a state directory (reported,
/// left out; the other tables recovered).
#[test]
fn a_truncated_spill_file_is_reported_and_the_rest_recovered() {
    let (spill, state) = spill_and_state_dirs();
    let state_dir = state.path().to_str().unwrap();
    let mut s = spilling(spill.path(), "off", &["--state-dir", state_dir]);
    let (a, b, d) = three();
    let c = s.client();
    c.put_bytes("blob", &vec![7u8; 20 << 20]).unwrap();
    c.put("a", &a.0, &a.1).unwrap();
    c.put("b", &b.0, &b.1).unwrap();
    c.put("d", &d.0, &d.1).unwrap();
    assert_eq!(on_disk(&c), ["a", "blob"]);
    let cut = |name: &str| {
        for f in std::fs::read_dir(spill.path()).unwrap().flatten() {
            let len = f.metadata().unwrap().len();
            let is_blob = len == 20 << 20;
            if (name == "blob") == is_blob {
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(f.path())
                    .unwrap();
                file.set_len(len / 2).unwrap();
            }
        }
    };
    cut("blob");
    let e = c.get_bytes("blob").unwrap_err().to_string();
    assert!(
        e.contains("cannot bring \"blob\"") && e.contains("bytes"),
        "{e}"
    );
    assert_eq!(
        c.get("d").unwrap().rows,
        d.1.iter().map(|b| b.num_rows() as u64).sum::<u64>()
    );
    drop(c);
    cut("a");
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let s = spilling(spill.path(), "off", &["--state-dir", state_dir]);
    let log = s.stderr();
    assert!(log.contains("spilled version 1 of \"a\" left out"), "{log}");
    assert!(
        log.contains("spilled version 1 of \"blob\" left out"),
        "{log}"
    );
    let c = s.client();
    assert!(on_disk(&c).is_empty());
    let names: Vec<String> = c.list().unwrap().into_iter().map(|e| e.name).collect();
    assert!(
        !names.contains(&"a".to_string()) && !names.contains(&"blob".to_string()),
        "{names:?}"
    );
    let got = c.get("d").unwrap();
    assert_eq!(owned(&d.0, &got.batches), owned(&d.0, &d.1));
}

/// An ingest reserves from every decoder thread at once: when the first
/// reservation must spill a table, the others wait for that room instead of
/// failing for lack of it (found with `--spill-ahead off`, where nothing was
/// written ahead).
#[test]
fn an_ingest_that_needs_a_spill_waits_for_it_on_every_thread() {
    let dir = tempfile::tempdir().unwrap();
    let spill = tempfile::tempdir().unwrap();
    // 24 MiB of numbers in 12 row groups.
    let path = dir.path().join("t.parquet");
    let (schema, batches) = {
        let n = 1_000_000i64;
        let schema = std::sync::Arc::new(arrow_schema::Schema::new(vec![
            arrow_schema::Field::new("a", arrow_schema::DataType::Int64, false),
            arrow_schema::Field::new("b", arrow_schema::DataType::Float64, false),
            arrow_schema::Field::new("c", arrow_schema::DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                std::sync::Arc::new(arrow_array::Int64Array::from_iter_values(0..n)),
                std::sync::Arc::new(arrow_array::Float64Array::from_iter_values(
                    (0..n).map(|i| i as f64 / 3.0),
                )),
                std::sync::Arc::new(arrow_array::Int64Array::from_iter_values(
                    (0..n).map(|i| i * 7),
                )),
            ],
        )
        .unwrap();
        (schema, vec![batch])
    };
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(1_000_000 / 12))
        .build();
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&path).unwrap(),
        schema.clone(),
        Some(props),
    )
    .unwrap();
    w.write(&batches[0]).unwrap();
    w.close().unwrap();
    let s = Server::start_with(&[
        "--memory",
        "40M",
        "--threads",
        "2",
        "--spill-dir",
        spill.path().to_str().unwrap(),
        "--spill-ahead",
        "off",
    ]);
    let c = s.client();
    let p = path.to_str().unwrap();
    for round in 0..4 {
        for name in ["x", "y"] {
            c.ingest(p, name, &[])
                .unwrap_or_else(|e| panic!("round {round}, ingest of {name}: {e}"));
        }
    }
    assert_eq!(on_disk(&c), vec!["x".to_string()]);
    let got = c.get("x").unwrap();
    assert_eq!(owned(&schema, &got.batches), owned(&schema, &batches));
}
