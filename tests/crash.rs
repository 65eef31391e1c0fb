//! Crash safety with real child processes: a client killed with SIGKILL while
//! holding leases or in the middle of writing loses them, its unsealed objects
//! are aborted, and memory accounting returns to what it was.
mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{frame, pstr, raw_connect_path, read_reply, table, Server};

/// Child entry point: does nothing unless started by a test below.
#[test]
fn child_process() {
    let Ok(mode) = std::env::var("ARROWPOOL_CRASH_CHILD") else {
        return;
    };
    let socket = std::env::var("ARROWPOOL_SOCKET").unwrap();
    let c = arrowpool::Client::connect(&socket).unwrap();
    match mode.as_str() {
        "hold" => {
            let held = c.get("t").unwrap();
            let again = c.get("t").unwrap();
            // An unsealed create on a second connection, and one on this client's.
            let mut raw = raw_connect_path(std::path::Path::new(&socket));
            let mut create = vec![0u8];
            create.extend_from_slice(&(8u64 << 20).to_le_bytes());
            create.extend_from_slice(&pstr(b"t"));
            raw.write_all(&frame(1, 2, 0, &create)).unwrap();
            assert_eq!(read_reply(&mut raw).unwrap().1, 0x8002);
            println!("READY");
            std::io::stdout().flush().unwrap();
            std::thread::sleep(Duration::from_secs(60));
            drop((held, again, raw));
        }
        "write" => {
            let (schema, batches) = table(400_000, 4, 7);
            println!("READY");
            std::io::stdout().flush().unwrap();
            loop {
                c.put("w", &schema, &batches).unwrap();
            }
        }
        "update" => {
            // Replace one column and append a batch, over and over: every put
            // shares the rest of the table with the version before.
            let (schema, _) = table(400_000, 4, 7);
            println!("READY");
            std::io::stdout().flush().unwrap();
            for round in 0u64.. {
                let got = c.get("u").unwrap();
                let mut batches: Vec<_> = got.batches[..4].to_vec();
                let ids = arrow_array::Int64Array::from_iter_values(
                    (0..batches[0].num_rows() as i64).map(|i| i + round as i64),
                );
                let mut cols = batches[0].columns().to_vec();
                cols[0] = std::sync::Arc::new(ids);
                batches[0] = arrow_array::RecordBatch::try_new(schema.clone(), cols).unwrap();
                if round % 2 == 1 {
                    batches.push(table(1000, 1, round as i64).1.remove(0));
                }
                c.put("u", &schema, &batches).unwrap();
            }
        }
        _ => unreachable!(),
    }
}

fn spawn_child(server: &Server, mode: &str) -> std::process::Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_process",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("ARROWPOOL_CRASH_CHILD", mode)
        .env("ARROWPOOL_SOCKET", &server.socket)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    while !line.contains("READY") {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "child exited before READY"
        );
    }
    std::mem::forget(out);
    child
}

#[test]
fn killed_reader_and_pending_writer_lose_everything() {
    let server = Server::start("128M");
    let c = server.client();
    let (schema, batches) = table(50_000, 2, 0);
    c.put("t", &schema, &batches).unwrap();
    let before = c.stats().unwrap();
    let mut child = spawn_child(&server, "hold");
    let during = c.stats().unwrap();
    assert_eq!(during.leases, 2);
    assert!(during.pending_bytes >= 8 << 20);
    // A new version while the child holds the old one: the old stays allocated.
    c.put("t", &schema, &batches).unwrap();
    assert!(c.stats().unwrap().used_bytes > before.used_bytes);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    server.wait_until("child's leases and creates dropped", |s| {
        s.leases == 0 && s.pending_bytes == 0 && s.used_bytes == before.used_bytes
    });
    assert_eq!(c.get("t").unwrap().batches, batches);
}

#[test]
fn writer_killed_mid_put_leaves_no_half_table() {
    let server = Server::start("256M");
    let c = server.client();
    let mut child = spawn_child(&server, "write");
    // Once one put has landed, the child is in a put loop: kill it mid-way.
    let start = std::time::Instant::now();
    while c.get("w").is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "child never completed a put"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(30));
    child.kill().unwrap();
    child.wait().unwrap();
    server.wait_until("child's pending create aborted", |s| {
        s.pending_bytes == 0 && s.leases == 0
    });
    let (_, expected) = table(400_000, 4, 7);
    match c.get("w") {
        Ok(t) => {
            assert_eq!(t.batches, expected, "a visible version is always complete");
            let s = c.stats().unwrap();
            assert_eq!(s.objects, 1, "only the current version remains: {s:?}");
        }
        Err(e) => assert_eq!(e.code(), Some(arrowpool::protocol::ErrorCode::NotFound)),
    }
}

#[test]
fn writer_killed_mid_update_leaves_the_previous_version_and_no_chunk() {
    let server = Server::start("256M");
    let c = server.client();
    let (schema, batches) = table(400_000, 4, 7);
    c.put("u", &schema, &batches).unwrap();
    let mut child = spawn_child(&server, "update");
    // Let it publish a few shared versions, then kill it at a random point.
    let start = std::time::Instant::now();
    while c.get("u").unwrap().version < 4 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "child never updated"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(7));
    child.kill().unwrap();
    child.wait().unwrap();
    server.wait_until("child's pending chunks aborted", |s| {
        s.pending_bytes == 0 && s.leases == 0
    });
    // The current version is complete: column 0 of batch 0 is ids + round,
    // every other column is the original's.
    let t = c.get("u").unwrap();
    assert!(
        t.batches.len() == 4 || t.batches.len() == 5,
        "{}",
        t.batches.len()
    );
    assert_eq!(
        t.batches[1..4],
        batches[1..4],
        "batches 1-3 are the original's"
    );
    assert_eq!(t.batches[0].columns()[1..], batches[0].columns()[1..]);
    let s = c.stats().unwrap();
    assert_eq!(s.objects, 1, "only the current version remains: {s:?}");
    // Deleting it frees every chunk, shared or not.
    drop(t);
    c.delete("u").unwrap();
    server.wait_until("arena empty", |s| s.used_bytes == 4096 && s.objects == 0);
}
