//! `--state-dir` with real processes: a server killed with SIGKILL at random
//! moments while a client puts, updates, appends and deletes comes back with
//! every acknowledged version, byte for byte, and nothing else (the one
//! request in flight at the kill may or may not have happened); damaged
//! catalog records and manifests are reported and the rest recovered.
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_array::{Int64Array, RecordBatch};
use common::{table, Server};

/// A state directory on tmpfs, removed at the end.
fn state_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("arrowpool-state-")
        .tempdir_in("/dev/shm")
        .expect("a directory under /dev/shm")
}

fn start(dir: &Path, extra: &[&str]) -> Server {
    start_sized(dir, "256M", extra)
}

fn start_sized(dir: &Path, memory: &str, extra: &[&str]) -> Server {
    let mut args = vec!["--memory", memory, "--threads", "2", "--state-dir"];
    let d = dir.to_str().unwrap();
    args.push(d);
    args.extend_from_slice(extra);
    Server::start_with(&args)
}

/// What a name should hold.
#[derive(Clone, Debug, PartialEq)]
enum Content {
    Table(RecordBatch),
    Bytes(Vec<u8>),
}

/// One batch owning its memory (no arena buffers), for comparing later.
///
/// `concat_batches` of one batch copies nothing (arrow's `concat` of one
/// array returns a slice of it), so the empty batch forces the copy: an
/// expected value must not alias the arena, whose bytes a restarted server
/// (which knows nothing of this process's old leases) may free and reuse.
fn owned(schema: &arrow_schema::SchemaRef, batches: &[RecordBatch]) -> RecordBatch {
    let empty = RecordBatch::new_empty(schema.clone());
    arrow_select::concat::concat_batches(schema, batches.iter().chain([&empty])).unwrap()
}

fn read(c: &arrowpool::Client, name: &str, like: &Content) -> Option<(u64, Content)> {
    match like {
        Content::Table(_) => {
            let t = c
                .get(name)
                .inspect_err(|e| eprintln!("get {name}: {e}"))
                .ok()?;
            Some((t.version, Content::Table(owned(&t.schema, &t.batches))))
        }
        Content::Bytes(_) => {
            let b = c
                .get_bytes(name)
                .inspect_err(|e| eprintln!("get_bytes {name}: {e}"))
                .ok()?;
            let version = c
                .list()
                .unwrap()
                .into_iter()
                .find(|e| e.name == name)
                .map(|e| e.version)?;
            Some((version, Content::Bytes(b.as_slice().to_vec())))
        }
    }
}

/// Tiny deterministic generator (no dependency): xorshift.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The state the client knows it made, and the request it had in flight.
#[derive(Default)]
struct Known {
    acked: HashMap<String, (u64, Content)>,
    /// (name, what it holds if the request took effect: `None` for a delete)
    in_flight: Option<(String, Option<Content>)>,
    requests: u64,
}

/// Puts, updates (one column replaced: the rest shared), appends (a batch
/// added), blobs and deletes on a few names until the server dies.
fn write_until_error(
    c: &arrowpool::Client,
    rng: &mut Rng,
    known: &Mutex<Known>,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) {
        let name = format!("t{}", rng.below(4));
        let op = rng.below(10);
        let result: Result<Option<(u64, Content)>, arrowpool::ClientError> = (|| {
            let mut k = known.lock().unwrap();
            k.requests += 1;
            let present = k.acked.get(&name).cloned();
            match (op, &present) {
                (0, Some(_)) => {
                    k.in_flight = Some((name.clone(), None));
                    drop(k);
                    c.delete(&name)?;
                    Ok(None)
                }
                (1 | 2, _) => {
                    let blob = format!("blob {} of {name}", rng.next())
                        .repeat(1 + rng.below(2000) as usize);
                    let bname = format!("b{name}");
                    k.in_flight = Some((
                        bname.clone(),
                        Some(Content::Bytes(blob.clone().into_bytes())),
                    ));
                    drop(k);
                    let info = c.put_bytes(&bname, blob.as_bytes())?;
                    Ok(Some((info.version, Content::Bytes(blob.into_bytes()))))
                }
                (3..=5, Some((_, Content::Table(_)))) => {
                    drop(k);
                    // Update or append through a zero-copy get: the client
                    // shares every column it does not change.
                    let got = c.get(&name)?;
                    let mut batches = got.batches.clone();
                    if op == 3 {
                        let n = batches[0].num_rows() as i64;
                        let seed = rng.next() as i64 % 1000;
                        let mut cols = batches[0].columns().to_vec();
                        cols[0] = Arc::new(Int64Array::from_iter_values((0..n).map(|i| i * seed)));
                        batches[0] = RecordBatch::try_new(got.schema.clone(), cols).unwrap();
                    } else {
                        let extra =
                            table(1 + rng.below(5000) as usize, 1, rng.next() as i64 % 100).1;
                        batches.extend(extra);
                    }
                    let content = Content::Table(owned(&got.schema, &batches));
                    known.lock().unwrap().in_flight = Some((name.clone(), Some(content.clone())));
                    let info = c.put(&name, &got.schema, &batches)?;
                    Ok(Some((info.version, content)))
                }
                _ => {
                    let (schema, batches) = table(
                        1 + rng.below(60_000) as usize,
                        1 + rng.below(3) as usize,
                        rng.next() as i64 % 1000,
                    );
                    let content = Content::Table(owned(&schema, &batches));
                    k.in_flight = Some((name.clone(), Some(content.clone())));
                    drop(k);
                    let info = c.put(&name, &schema, &batches)?;
                    Ok(Some((info.version, content)))
                }
            }
        })();
        let mut k = known.lock().unwrap();
        match result {
            Ok(outcome) => {
                let (name, _) = k.in_flight.take().expect("every request sets in_flight");
                match outcome {
                    Some(v) => {
                        k.acked.insert(name, v);
                    }
                    None => {
                        k.acked.remove(&name);
                    }
                }
            }
            // The server died; `in_flight` may or may not have happened.
            Err(_) => return,
        }
    }
}

/// Checks the restarted server against what the client knew: every
/// acknowledged version with its bytes and number, the request in flight
/// either done or not, nothing else. Folds the in-flight request's outcome
/// into `known`.
fn verify(server: &Server, known: &mut Known) {
    let c = server.client();
    let listed: HashMap<String, u64> = c
        .list()
        .unwrap()
        .into_iter()
        .map(|e| (e.name, e.version))
        .collect();
    let in_flight = known.in_flight.take();
    for (name, (version, content)) in known.acked.clone() {
        let flight = in_flight.as_ref().filter(|(n, _)| *n == name);
        let asked = Instant::now();
        let mut got = read(&c, &name, &content);
        // No answer for a long time: what the server is doing, while it is.
        let stuck = (asked.elapsed() > Duration::from_secs(30)).then(|| server.diagnose());
        // A spilled version may not fit back while the bytes the killed
        // server had handed out, or the versions its readers held (orphans),
        // are held back: read it once they are not.
        let held = |c: &arrowpool::Client| {
            let st = c.stats().unwrap();
            st.quarantined_bytes > 0 || st.orphaned_versions > 0
        };
        if got.is_none() && held(&c) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while held(&c) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            got = read(&c, &name, &content);
        }
        match got {
            Some((v, got)) if v == version && got == content => {}
            Some((v, got))
                if flight.is_some_and(|(_, c)| c.as_ref() == Some(&got)) && v > version =>
            {
                known.acked.insert(name.clone(), (v, got));
            }
            None if flight.is_some_and(|(_, c)| c.is_none()) => {
                known.acked.remove(&name);
            }
            other => {
                let detail = match (&other, &content) {
                    (Some((_, Content::Table(g))), Content::Table(e)) => format!(
                        "rows {} vs {}, schema equal {}, columns equal {:?}",
                        g.num_rows(),
                        e.num_rows(),
                        g.schema() == e.schema(),
                        (0..g.num_columns().min(e.num_columns()))
                            .map(|i| g.column(i).to_data() == e.column(i).to_data())
                            .collect::<Vec<_>>()
                    ),
                    (Some((_, Content::Bytes(g))), Content::Bytes(e)) => {
                        format!("bytes {} vs {}", g.len(), e.len())
                    }
                    _ => String::new(),
                };
                panic!(
                    "{name}: expected version {version} (or the request in flight), found {:?}: {detail}; {}",
                    other.as_ref().map(|(v, _)| *v),
                    stuck.unwrap_or_else(|| server.diagnose())
                )
            }
        }
    }
    // A name the client never saw acknowledged can only be the one in flight.
    for (name, version) in &listed {
        if known.acked.contains_key(name) {
            continue;
        }
        let Some((n, Some(content))) = &in_flight else {
            panic!("{name} (version {version}) was never acknowledged");
        };
        assert_eq!(n, name, "{name} (version {version}) was never acknowledged");
        let (v, got) = read(&c, name, content).expect("listed, so readable");
        assert_eq!(&got, content, "{name}: the in-flight put's bytes");
        known.acked.insert(name.clone(), (v, got));
    }
    assert_eq!(listed.len(), known.acked.len(), "listed {listed:?}");
}

#[test]
fn kill_9_at_random_moments_loses_no_acknowledged_version() {
    kill_9_rounds("256M", &[]);
}

#[test]
fn kill_9_while_spilling_loses_no_acknowledged_version() {
    let spill = tempfile::tempdir().unwrap();
    let d = spill.path().to_str().unwrap();
    kill_9_rounds("6M", &["--spill-dir", d, "--spill-ahead", "0.4"]);
}

/// Rounds of writing and `kill -9`, each followed by a restart that must
/// serve exactly what was acknowledged.
fn kill_9_rounds(memory: &str, extra: &[&str]) {
    // What each killed server had handed out is held back for a second
    // after its restart: the rounds restart within that, so held-back
    // ranges are carried across restarts too.
    let extra = &[extra, &["--quarantine", "1"]].concat();
    let dir = state_dir();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("seed {seed}");
    let mut rng = Rng(seed);
    let known = Arc::new(Mutex::new(Known::default()));
    let empty_used = {
        let s = start_sized(dir.path(), memory, extra);
        s.client().stats().unwrap().used_bytes
    };
    let rounds = 25;
    let mut held_back = 0;
    for round in 0..rounds {
        let mut server = start_sized(dir.path(), memory, extra);
        held_back += server.client().stats().unwrap().quarantined_bytes;
        verify(&server, &mut known.lock().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (known, stop) = (known.clone(), stop.clone());
            let c = server.client();
            let mut rng = Rng(rng.next() | 1);
            std::thread::spawn(move || write_until_error(&c, &mut rng, &known, &stop))
        };
        std::thread::sleep(Duration::from_millis(30 + rng.below(400)));
        server.child.kill().unwrap(); // SIGKILL
        server.child.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        let k = known.lock().unwrap();
        eprintln!(
            "round {round}: {} requests so far, {} names acknowledged",
            k.requests,
            k.acked.len()
        );
    }
    let server = start_sized(dir.path(), memory, extra);
    let mut k = known.lock().unwrap();
    verify(&server, &mut k);
    assert!(
        k.requests > rounds,
        "the writer made requests: {}",
        k.requests
    );
    assert!(server.stderr().contains("restored"), "{}", server.stderr());
    // Most kills land in puts, whose reservations are then held back
    // (a_restart_holds_back_what_the_killed_servers_clients_still_use checks
    // that deterministically).
    eprintln!("held back after restarts: {held_back} bytes in all");
    // Memory accounting: once every name is deleted and the held-back
    // ranges are given back, the arena holds nothing (no chunk of a version
    // that was not brought back stays allocated).
    let c = server.client();
    for name in k.acked.keys() {
        c.delete(name).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let s = loop {
        let s = c.stats().unwrap();
        let held_back = s.quarantined_bytes + s.orphaned_versions;
        if held_back == 0 || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(s.used_bytes, empty_used, "{s:?}");
    assert_eq!(s.names, 0);
}

#[test]
fn a_clean_restart_keeps_numbers_sharing_and_memory() {
    let dir = state_dir();
    let (schema, batches) = table(50_000, 3, 1);
    let (before, used, shared) = {
        let s = start(dir.path(), &["--keep-versions", "2"]);
        let c = s.client();
        c.put("t", &schema, &batches).unwrap();
        let got = c.get("t").unwrap();
        let mut more = got.batches.clone();
        more.extend(table(1000, 1, 2).1);
        let info = c.put("t", &schema, &more).unwrap();
        assert_eq!(info.version, 2);
        c.put_bytes("b", b"kept").unwrap();
        c.put_bytes("gone", b"deleted").unwrap();
        c.delete("gone").unwrap();
        let expected = owned(&schema, &more);
        drop((got, more));
        s.wait_until("the lease released", |st| st.leases == 0);
        let list = c.list().unwrap();
        let t = list.iter().find(|e| e.name == "t").unwrap();
        assert_eq!(t.retained, vec![1]);
        let st = c.stats().unwrap();
        (expected, st.used_bytes, t.shared_bytes)
    }; // killed here (Server's drop), like a crash
    let s = start(dir.path(), &["--keep-versions", "2"]);
    let c = s.client();
    let st = c.stats().unwrap();
    assert_eq!(
        st.used_bytes, used,
        "the same bytes in use after the restart"
    );
    assert_eq!(st.recovered_versions, 3, "{st:?}");
    assert_eq!(st.state_dir.as_deref(), dir.path().to_str());
    let t = c.get("t").unwrap();
    assert_eq!(t.version, 2);
    assert_eq!(owned(&t.schema, &t.batches), before);
    assert_eq!(
        owned(&schema, &c.get_version("t", 1).unwrap().batches),
        owned(&schema, &batches)
    );
    let list = c.list().unwrap();
    assert_eq!(
        list.iter().find(|e| e.name == "t").unwrap().shared_bytes,
        shared
    );
    assert_eq!(c.get_bytes("b").unwrap().as_slice(), b"kept");
    // Numbers keep growing across the restart, also for a deleted name.
    assert_eq!(c.put_bytes("gone", b"again").unwrap().version, 2);
    assert_eq!(c.put("t", &schema, &batches).unwrap().version, 3);
}

#[test]
fn a_second_server_and_a_wrong_memory_and_a_disk_directory_are_refused() {
    let dir = state_dir();
    let first = start(dir.path(), &[]);
    first.client().put_bytes("x", b"1").unwrap();
    let d = dir.path().to_str().unwrap();
    let e = Server::try_start_with(&["--memory", "256M", "--state-dir", d])
        .err()
        .unwrap();
    assert!(
        e.contains("in use by another arrowpoold")
            && e.contains(&format!("pid {}", first.child.id())),
        "{e}"
    );
    drop(first);
    let e = Server::try_start_with(&["--memory", "128M", "--state-dir", d])
        .err()
        .unwrap();
    assert!(e.contains("--memory 268435456"), "{e}");
    // The refusal did not touch the arena: the table is still there.
    let s = start(dir.path(), &[]);
    assert_eq!(s.client().get_bytes("x").unwrap().as_slice(), b"1");
    drop(s);
    let disk = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let e = Server::try_start_with(&[
        "--memory",
        "64M",
        "--state-dir",
        disk.path().to_str().unwrap(),
    ])
    .err()
    .unwrap();
    assert!(e.contains("not on tmpfs"), "{e}");
}

/// Positions of `needle` in `hay`.
fn find_all(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    hay.windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

fn flip(path: &PathBuf, at: &[usize]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    for &p in at {
        let mut b = [0u8];
        f.read_exact_at(&mut b, p as u64).unwrap();
        f.write_all_at(&[b[0] ^ 0x5A], p as u64).unwrap();
    }
}

#[test]
fn a_damaged_catalog_record_or_manifest_is_reported_and_the_rest_recovered() {
    let dir = state_dir();
    let (schema, batches) = table(20_000, 2, 3);
    let renamed = |name: &str| {
        let fields: Vec<_> = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let f = f.as_ref().clone();
                if i == 0 {
                    f.with_name(name)
                } else {
                    f
                }
            })
            .collect();
        Arc::new(arrow_schema::Schema::new(fields))
    };
    {
        let s = start(dir.path(), &[]);
        let c = s.client();
        for name in ["alpha_table_one", "bravo_table_two", "charlie_table_three"] {
            let sch = renamed(&format!("{name}_column"));
            let b: Vec<RecordBatch> = batches
                .iter()
                .map(|b| RecordBatch::try_new(sch.clone(), b.columns().to_vec()).unwrap())
                .collect();
            c.put(name, &sch, &b).unwrap();
        }
    }
    // The catalog record that names bravo, and the footer of charlie (its
    // schema holds the first column's name) in the arena.
    let catalog = dir.path().join("catalog");
    let hits = find_all(&std::fs::read(&catalog).unwrap(), b"bravo_table_two");
    assert_eq!(hits.len(), 1);
    flip(&catalog, &[hits[0] + 3]);
    let arena = dir.path().join("arena");
    let hits = find_all(
        &std::fs::read(&arena).unwrap(),
        b"charlie_table_three_column",
    );
    assert!(!hits.is_empty());
    flip(&arena, &hits.iter().map(|h| h + 2).collect::<Vec<_>>());
    let s = start(dir.path(), &[]);
    let c = s.client();
    let names: Vec<String> = c.list().unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["alpha_table_one"]);
    let log = s.stderr();
    assert!(log.contains("is corrupt"), "{log}");
    assert!(
        log.contains("charlie_table_three") && log.contains("fails its checksum"),
        "{log}"
    );
    assert!(log.contains("1 of 2 recorded version(s) restored"), "{log}");
    assert_eq!(c.get("alpha_table_one").unwrap().rows, 20_000);
    // The space of what was left out is free again: the arena takes a table
    // as large as the rest of it.
    let st = c.stats().unwrap();
    assert!(st.free_bytes > 200 << 20, "{st:?}");
    let started = Instant::now();
    drop(s);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn the_rust_client_reconnects_and_keeps_its_tables_leased() {
    let dir = state_dir();
    let (schema, batches) = table(30_000, 2, 9);
    let mut s = start(dir.path(), &[]);
    let c = s.client();
    c.put("t", &schema, &batches).unwrap();
    let held = c.get("t").unwrap();
    let _restarted = kill_and_restart_in_place(&mut s, dir.path(), "256M", &[]);
    // No error: the closed connection is noticed before the request is sent.
    let again = c.get("t").unwrap();
    assert_eq!(owned(&schema, &again.batches), owned(&schema, &batches));
    assert_eq!(
        c.stats().unwrap().leases,
        2,
        "the held table was leased again"
    );
    drop(again);
    // Were the held version not leased, these puts could reuse its bytes.
    for seed in [10, 11, 12] {
        let (sch, b) = table(30_000, 2, seed);
        c.put("t", &sch, &b).unwrap();
    }
    assert_eq!(owned(&schema, &held.batches), owned(&schema, &batches));
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.stats().unwrap().leases != 0 {
        assert!(Instant::now() < deadline, "the lease was not released");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A request the killed server never read — it was stopped with the request
/// queued, then killed — is sent again to the restarted server: on a Unix
/// socket, ECONNRESET means our bytes were still queued when it closed.
#[test]
fn a_request_the_killed_server_never_read_goes_to_the_restarted_one() {
    let dir = state_dir();
    let (schema, batches) = table(30_000, 2, 5);
    // epoll, not io_uring: a recv armed in a ring before the stop can still
    // take the request's bytes into the stopped server (then its close is an
    // EOF, which a client must not resend); with epoll only the server's own
    // thread reads, so the bytes stay queued and the close is a reset.
    let mut s = start(dir.path(), &["--io-driver", "polling"]);
    let c = s.client();
    c.put("t", &schema, &batches).unwrap();
    let pid = rustix::process::Pid::from_raw(s.child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    // The stop lands on each thread when it next runs: on a loaded machine a
    // core thread can still read the request sent right after kill(2)
    // returns. Wait until every thread is stopped (state T).
    let tasks = format!("/proc/{}/task", s.child.id());
    let stopped = || {
        std::fs::read_dir(&tasks).unwrap().flatten().all(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            // "pid (comm) S ...": the state follows the last ')'.
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stopped() {
        assert!(Instant::now() < deadline, "the server did not stop");
        std::thread::sleep(Duration::from_millis(1));
    }
    let getter = {
        let (c, schema) = (c.clone(), schema.clone());
        std::thread::spawn(move || c.get("t").map(|t| owned(&schema, &t.batches)))
    };
    std::thread::sleep(Duration::from_millis(200)); // sent, queued, unread
    s.child.kill().unwrap(); // SIGKILL ends a stopped process too
    s.child.wait().unwrap();
    let log = s.dir.path().join("restarted.log");
    let restarted = std::process::Command::new(env!("CARGO_BIN_EXE_arrowpoold"))
        .args(["--socket", s.socket.to_str().unwrap(), "--memory", "256M"])
        .arg("--state-dir")
        .arg(dir.path())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(restarted);
    let got = getter.join().unwrap().unwrap_or_else(|e| {
        panic!(
            "not sent again to the restarted server: {e:?}; its log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    assert_eq!(got, owned(&schema, &batches));
}

/// Kills `s` and starts a server on the same socket and state directory
/// (the helpers would pick a new socket), once the kernel has closed the
/// killed server's sockets: a server killed while io_uring requests are
/// pending on them is reaped before they are closed (the ring is torn down
/// asynchronously, found taking over 10 ms on a loaded machine), and until
/// then a client's connection looks alive and a request sent on it fails
/// (ECONNRESET or EPIPE) instead of going to the new server. The new
/// server's stderr goes to `stderr.log` in `s.dir`, its previous log kept as
/// `stderr.0.log`.
fn kill_and_restart_in_place(
    s: &mut Server,
    dir: &Path,
    memory: &str,
    extra: &[&str],
) -> KillOnDrop {
    // A connection of our own to the old server, to see the close.
    let probe = std::os::unix::net::UnixStream::connect(&s.socket).unwrap();
    std::thread::sleep(Duration::from_millis(50)); // accepted, a read pending
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let closed = Instant::now() + Duration::from_secs(10);
    loop {
        let mut fds = [rustix::event::PollFd::new(
            &probe,
            rustix::event::PollFlags::IN,
        )];
        let timeout = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 10_000_000,
        };
        if rustix::event::poll(&mut fds, Some(&timeout)).unwrap_or(0) > 0 {
            break;
        }
        assert!(
            Instant::now() < closed,
            "the killed server's sockets stay open"
        );
    }
    let log = s.dir.path().join("stderr.log");
    let _ = std::fs::rename(&log, s.dir.path().join("stderr.0.log"));
    let restarted = std::process::Command::new(env!("CARGO_BIN_EXE_arrowpoold"))
        .arg("--socket")
        .arg(&s.socket)
        .args(["--memory", memory, "--threads", "2"])
        .arg("--state-dir")
        .arg(dir)
        .args(extra)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let guard = KillOnDrop(restarted);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&s.socket).is_err() {
        assert!(
            Instant::now() < deadline,
            "restarted server not listening: {}",
            s.stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    guard
}

struct KillOnDrop(std::process::Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spilling without any kill: every version read back is the one written.
#[test]
fn spilling_and_bringing_back_keep_every_version_exact() {
    let spill = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = spill.path().to_str().unwrap().to_owned();
    let server = Server::start_with(&[
        "--memory",
        "6M",
        "--threads",
        "2",
        "--spill-dir",
        &d,
        "--spill-ahead",
        "0.4",
    ]);
    let known = Arc::new(Mutex::new(Known::default()));
    let mut rng = Rng(7);
    for _ in 0..20 {
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (known, stop) = (known.clone(), stop.clone());
            let c = server.client();
            let mut rng = Rng(rng.next() | 1);
            std::thread::spawn(move || write_until_error(&c, &mut rng, &known, &stop))
        };
        std::thread::sleep(Duration::from_millis(150));
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        let mut k = known.lock().unwrap();
        k.in_flight = None;
        verify(&server, &mut k);
    }
}

/// What the killed server had handed out and no recovered version explains
/// is held back for `--quarantine`: a writer still copying into its
/// reservation, and a reader holding a replaced version, write and read the
/// same bytes for that long, whatever the restarted server is asked to store;
/// then the bytes are reused.
#[test]
fn a_restart_holds_back_what_the_killed_servers_clients_still_use() {
    use arrowpool::protocol::create::{Create, Created};
    use arrowpool::protocol::{Kind, ObjectKind};
    use std::io::Write;
    use std::os::fd::AsFd;
    const BLOB: usize = 8 << 20;
    let dir = state_dir();
    let mut s = start(dir.path(), &["--quarantine", "8"]);
    // A reader holds version 1 of "t" after version 2 replaced it.
    let c = s.client();
    let (schema, batches) = table(100_000, 1, 21);
    c.put("t", &schema, &batches).unwrap();
    let held = c.get("t").unwrap();
    let (schema2, batches2) = table(100_000, 1, 22);
    c.put("t", &schema2, &batches2).unwrap();
    // A writer has reserved room and is copying into it.
    let mut w = std::os::unix::net::UnixStream::connect(&s.socket).unwrap();
    let (hello, fds) = arrowpool::client::handshake(&w, true).unwrap();
    let map =
        arrowpool::arena::Mapping::map(fds[1].as_fd(), hello.arena_len as usize, true).unwrap();
    let mut body = Vec::new();
    Create {
        object_kind: ObjectKind::Bytes,
        size: BLOB as u64,
        name: "w".into(),
    }
    .encode(&mut body)
    .unwrap();
    w.write_all(&common::frame(1, Kind::Create as u16, 0, &body))
        .unwrap();
    let (_, kind, reply) = common::read_reply(&mut w).unwrap();
    assert_eq!(kind, Kind::Create.reply());
    let created = Created::decode(&reply).unwrap();
    // SAFETY: the server reserved this range for the pending chunk; this
    // test is its only writer (the point: it keeps writing after the kill).
    let dest = unsafe { map.slice_mut(created.offset, BLOB as u64) }.unwrap();
    dest.fill(0x11);
    s.child.kill().unwrap();
    s.child.wait().unwrap();

    let s = start(dir.path(), &["--quarantine", "8"]);
    let stats = s.client().stats().unwrap();
    assert!(
        stats.quarantined_bytes >= BLOB as u64,
        "the reservation and the held version are held back: {stats:?}"
    );
    assert!(s.stderr().contains("--quarantine"), "{}", s.stderr());
    let c2 = s.client();
    // Puts of the same sizes land elsewhere while the old clients go on.
    let blob: Vec<u8> = (0..BLOB).map(|i| (i % 251) as u8).collect();
    c2.put_bytes("b", &blob).unwrap();
    let (schema3, batches3) = table(100_000, 1, 23);
    c2.put("u", &schema3, &batches3).unwrap();
    dest.fill(0x22);
    assert!(
        c2.get_bytes("b").unwrap()[..] == blob[..],
        "the blob put after the restart was overwritten by the old writer"
    );
    assert_eq!(
        owned(&schema3, &c2.get("u").unwrap().batches),
        owned(&schema3, &batches3)
    );
    assert_eq!(owned(&schema, &held.batches), owned(&schema, &batches));
    assert_eq!(
        owned(&schema2, &c2.get("t").unwrap().batches),
        owned(&schema2, &batches2)
    );
    // Then the bytes come back (stats gives them back once the time is up;
    // 8 s leaves a loaded machine time for the checks above).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = c2.stats().unwrap();
        if st.quarantined_bytes == 0 {
            assert!(st.used_bytes < stats.used_bytes + (BLOB as u64) * 2);
            break;
        }
        assert!(Instant::now() < deadline, "still held back: {st:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(held);
}

/// A reader holding a replaced version when the server is killed keeps it
/// for good: the restarted server holds the version (an orphan in the
/// catalog) for the quarantine, the reader's client, reconnecting by itself
/// (its watcher thread: the reader sends no request), leases it again, and
/// once the quarantine is over puts that fill the arena many times over
/// never touch its bytes.
#[test]
fn a_reader_holding_a_replaced_version_leases_it_again_after_kill_9() {
    let dir = state_dir();
    let args = ["--quarantine", "3"];
    let mut s = start_sized(dir.path(), "64M", &args);
    let c = s.client();
    let (schema, batches) = table(100_000, 1, 41);
    c.put("t", &schema, &batches).unwrap();
    let held = c.get("t").unwrap();
    let (schema2, batches2) = table(100_000, 1, 42);
    c.put("t", &schema2, &batches2).unwrap();
    let restarted = kill_and_restart_in_place(&mut s, dir.path(), "64M", &args);
    assert!(
        s.stderr().contains("holding 1 replaced or deleted version"),
        "{}",
        s.stderr()
    );
    // The reader's client reconnects by itself and leases version 1 again.
    let w = s.client();
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.stats().unwrap().leases != 2 {
        assert!(
            Instant::now() < deadline,
            "the reader's client did not lease its table again: {:?} {}",
            w.stats().unwrap(),
            s.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        owned(&schema2, &w.get("t").unwrap().batches),
        owned(&schema2, &batches2),
        "the current version is served as before"
    );
    std::thread::sleep(Duration::from_millis(3500));
    let blob: Vec<u8> = vec![0x5a; 4 << 20];
    for i in 0..40 {
        w.put_bytes(&format!("fill-{i}"), &blob).unwrap();
    }
    let st = w.stats().unwrap();
    assert_eq!((st.quarantined_bytes, st.leases), (0, 1), "{st:?}");
    assert_eq!(
        owned(&schema, &held.batches),
        owned(&schema, &batches),
        "the held version's bytes were reused"
    );
    // Released, it goes; a restart then finds no orphan.
    drop(held);
    assert_eq!(c.stats().unwrap().leases, 0);
    drop(restarted);
    let s = start_sized(dir.path(), "64M", &args);
    assert!(
        !s.stderr().contains("replaced or deleted"),
        "{}",
        s.stderr()
    );
}

/// `--state-hugetlbfs`: the arena of a new state directory is a file of
/// reserved hugepages that outlives the server (root only: it mounts a
/// hugetlbfs, and needs 128 free hugepages, which scripts/test.sh reserves).
#[test]
fn a_state_dir_keeps_its_arena_on_hugetlbfs_across_kill_9() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("not root: cannot mount hugetlbfs; not checked here");
        return;
    }
    let free = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    if free < 128 {
        eprintln!("{free} free hugepages (vm.nr_hugepages): 128 needed; not checked here");
        return;
    }
    let mnt = common::Mounted::new("hugetlbfs", "pagesize=2M,mode=0700");
    let m = mnt.path().to_str().unwrap();
    let dir = state_dir();
    let (schema, batches) = table(50_000, 3, 31);
    let d = dir.path().to_str().unwrap();
    let args = [
        "--memory",
        "256M",
        "--threads",
        "2",
        "--state-dir",
        d,
        "--state-hugetlbfs",
        m,
    ];
    let mut s = match Server::try_start_with(&args) {
        Ok(s) => s,
        // Other tests' servers took the free hugepages meanwhile.
        Err(e) if e.contains("not enough free reserved hugepages") => {
            eprintln!("hugepages taken by other tests: not checked this time ({e})");
            return;
        }
        Err(e) => panic!("server did not start: {e}"),
    };
    let st = s.client().stats().unwrap();
    assert_eq!(st.memory_kind, "hugetlb", "{}", s.stderr());
    let link = std::fs::read_link(dir.path().join("arena")).unwrap();
    assert_eq!(link.parent(), Some(mnt.path()));
    s.client().put("t", &schema, &batches).unwrap();
    s.client().put_bytes("b", b"bytes on hugepages").unwrap();
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    // Restarted, with the flag or without it: the link says where the arena is.
    for extra in [&["--state-hugetlbfs", m][..], &[][..]] {
        let s = start(dir.path(), extra);
        let c = s.client();
        assert_eq!(c.stats().unwrap().memory_kind, "hugetlb");
        assert_eq!(c.stats().unwrap().recovered_versions, 2, "{}", s.stderr());
        assert_eq!(
            owned(&schema, &c.get("t").unwrap().batches),
            owned(&schema, &batches)
        );
        assert_eq!(&c.get_bytes("b").unwrap()[..], b"bytes on hugepages");
    }
    // Another place than the arena's, a directory that is not hugetlbfs, and
    // a state directory whose arena is on tmpfs: refused, saying why.
    let other = tempfile::tempdir().unwrap();
    let o = other.path().to_str().unwrap();
    let e = start_refused(dir.path(), &["--state-hugetlbfs", o]);
    assert!(e.contains(&format!("give --state-hugetlbfs {m}")), "{e}");
    let plain = state_dir();
    drop(start(plain.path(), &[]));
    let e = start_refused(plain.path(), &["--state-hugetlbfs", m]);
    assert!(e.contains("keeps its arena on tmpfs"), "{e}");
    let fresh = state_dir();
    let e = start_refused(fresh.path(), &["--state-hugetlbfs", o]);
    assert!(e.contains("is not a hugetlbfs mount"), "{e}");
}

/// The error of a server that must not start.
fn start_refused(dir: &Path, extra: &[&str]) -> String {
    let mut args = vec!["--memory", "256M", "--threads", "2", "--state-dir"];
    args.push(dir.to_str().unwrap());
    args.extend_from_slice(extra);
    match Server::try_start_with(&args) {
        Ok(_) => panic!("started with {args:?}"),
        Err(e) => e,
    }
}
