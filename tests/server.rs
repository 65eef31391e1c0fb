//! Integration tests against a real `arrowpoold` process.
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::types::Float64Type;
use arrow_array::Array;
use arrowpool::protocol::ErrorCode;
use arrowpool::ClientError;
use common::{table, Server};

const MB: u64 = 1 << 20;

fn buffers_inside(batches: &[arrow_array::RecordBatch], range: &std::ops::Range<usize>) -> usize {
    let mut n = 0;
    for b in batches {
        for col in b.columns() {
            let data = col.to_data();
            for buf in data.buffers() {
                if buf.is_empty() {
                    continue;
                }
                let p = buf.as_ptr() as usize;
                assert!(
                    range.contains(&p) && p + buf.len() <= range.end,
                    "buffer outside the arena: copied"
                );
                n += 1;
            }
        }
    }
    n
}

#[test]
fn put_get_round_trip_is_zero_copy() {
    let server = Server::start("256M");
    let c = server.client();
    let (schema, batches) = table(100_000, 4, 0);
    let info = c.put("t", &schema, &batches).unwrap();
    assert_eq!((info.version, info.rows), (1, 100_000));
    let got = c.get("t").unwrap();
    assert_eq!(got.schema, schema);
    assert_eq!(got.batches, batches);
    assert!(buffers_inside(&got.batches, &c.mapping_range()) >= 4 * 4);
    // A reader-only connection in the same test sees the same bytes.
    let reader = arrowpool::Client::connect_reader(&server.socket).unwrap();
    let got2 = reader.get("t").unwrap();
    assert_eq!(got2.batches, batches);
    assert!(matches!(
        reader.put("x", &schema, &batches),
        Err(ClientError::ReadOnly)
    ));
}

#[test]
fn get_columns_projects() {
    let server = Server::start("128M");
    let c = server.client();
    let (schema, batches) = table(10_000, 2, 1);
    c.put("t", &schema, &batches).unwrap();
    let got = c.get_columns("t", &["text", "id"]).unwrap();
    assert_eq!(got.schema.fields().len(), 2);
    assert_eq!(got.schema.field(0).name(), "text");
    assert_eq!(got.batches[1].column(1), batches[1].column(0));
    let err = c.get_columns("t", &["nope"]).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}

#[test]
fn old_version_stays_intact_while_held_then_is_freed() {
    let server = Server::start("128M");
    let c = server.client();
    let (schema, v1) = table(50_000, 2, 1);
    let (_, v2) = table(50_000, 2, 2);
    c.put("t", &schema, &v1).unwrap();
    let old = c.get("t").unwrap();
    let used_one = c.stats().unwrap().used_bytes;
    assert_eq!(c.put("t", &schema, &v2).unwrap().version, 2);
    let new = c.get("t").unwrap();
    assert_eq!(new.version, 2);
    assert_eq!(new.batches, v2);
    assert_eq!(old.batches, v1, "a held version is never overwritten");
    drop(new);
    drop(old);
    server.wait_until("old version freed", |s| {
        s.leases == 0 && s.used_bytes == used_one
    });
}

#[test]
fn leases_are_released_when_arrays_drop() {
    let server = Server::start("64M");
    let c = server.client();
    let (schema, batches) = table(1000, 1, 0);
    c.put("t", &schema, &batches).unwrap();
    let t = c.get("t").unwrap();
    let col = t.batches[0].column(1).clone();
    drop(t);
    assert_eq!(
        c.stats().unwrap().leases,
        1,
        "one array still alive holds the lease"
    );
    let sum: f64 = col.as_primitive::<Float64Type>().iter().flatten().sum();
    assert!(sum > 0.0);
    drop(col);
    server.wait_until("lease released", |s| s.leases == 0);
}

#[test]
fn bytes_objects_round_trip() {
    let server = Server::start("64M");
    let c = server.client();
    c.put_bytes("cfg", b"{\"a\": 1}").unwrap();
    assert_eq!(c.get_bytes("cfg").unwrap().as_slice(), b"{\"a\": 1}");
    assert!(c.get("cfg").is_err());
    c.put_bytes("empty", b"").unwrap();
    assert_eq!(c.get_bytes("empty").unwrap().len(), 0);
}

#[test]
fn delete_list_stats() {
    let server = Server::start("64M");
    let c = server.client();
    let (schema, batches) = table(1000, 1, 0);
    c.put("b", &schema, &batches).unwrap();
    c.put("a", &schema, &batches).unwrap();
    let l = c.list().unwrap();
    assert_eq!(
        l.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(l[0].rows, 1000);
    c.delete("a").unwrap();
    assert_eq!(c.get("a").unwrap_err().code(), Some(ErrorCode::NotFound));
    assert_eq!(c.delete("a").unwrap_err().code(), Some(ErrorCode::NotFound));
    let s = c.stats().unwrap();
    assert_eq!(s.names, 1);
    assert_eq!(s.io_driver, "io_uring");
    assert!(s.puts >= 2);
}

#[test]
fn wait_for_version_wakes_on_seal_and_times_out() {
    let server = Server::start("64M");
    let c = server.client();
    let (schema, batches) = table(1000, 1, 0);
    c.put("t", &schema, &batches).unwrap();
    let waiter = arrowpool::Client::connect(&server.socket).unwrap();
    let h = std::thread::spawn(move || waiter.wait_for_version("t", 1, Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(100));
    c.put("t", &schema, &batches).unwrap();
    assert_eq!(h.join().unwrap().unwrap(), 2);
    let e = c
        .wait_for_version("t", 2, Duration::from_millis(50))
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Timeout));
    // Already newer: answers at once.
    assert_eq!(
        c.wait_for_version("t", 0, Duration::from_secs(1)).unwrap(),
        2
    );
}

#[test]
fn eviction_under_memory_cap_spares_held_tables() {
    let server = Server::start("48M");
    let c = server.client();
    let (schema, batches) = table(200_000, 2, 0); // ~ 9 MB as IPC
    let size = c.put("a", &schema, &batches).unwrap().bytes;
    let held = c.get("a").unwrap();
    // Enough puts to overflow the 48 MB arena twice.
    let puts = (96 * MB / size) as usize + 1;
    for i in 0..puts {
        c.put(&format!("t{i}"), &schema, &batches).unwrap();
    }
    let s = c.stats().unwrap();
    assert!(s.evictions >= 1, "{s:?}");
    assert_eq!(
        c.get("a").unwrap().batches,
        batches,
        "held table was not evicted"
    );
    assert!(c.get(&format!("t{}", puts - 1)).is_ok());
    assert!(
        c.get("t0").is_err(),
        "the least recently used table was evicted"
    );
    drop(held);
}

#[test]
fn put_larger_than_arena_is_out_of_memory_with_numbers() {
    let server = Server::start("16M");
    let c = server.client();
    let (schema, small) = table(1000, 1, 0);
    c.put("keep", &schema, &small).unwrap();
    let (_, big) = table(600_000, 2, 0);
    let e = c.put("big", &schema, &big).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::OutOfMemory), "{e}");
    let msg = e.to_string();
    // Larger than the whole arena: it can never fit, whatever is evicted.
    assert!(
        msg.contains("can never fit") && msg.contains("MiB") && msg.contains("--memory"),
        "{msg}"
    );
    assert_eq!(
        c.get("keep").unwrap().batches,
        small,
        "nothing stored is lost"
    );
    assert_eq!(c.stats().unwrap().pending_bytes, 0);
}

#[test]
fn many_threads_share_one_client() {
    let server = Server::start("128M");
    let c = server.client();
    let (schema, batches) = table(20_000, 2, 0);
    c.put("t", &schema, &batches).unwrap();
    let batches = Arc::new(batches);
    let hs: Vec<_> = (0..8)
        .map(|_| {
            let c = c.clone();
            let b = batches.clone();
            std::thread::spawn(move || {
                for _ in 0..50 {
                    assert_eq!(&c.get("t").unwrap().batches, b.as_ref());
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    server.wait_until("all leases released", |s| s.leases == 0);
}

#[test]
fn sigterm_removes_socket_and_tells_clients() {
    let mut server = Server::start("64M");
    let c = server.client();
    c.ping().unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(server.child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}: {}", server.stderr());
    assert!(!server.socket.exists(), "socket file removed");
    // Past the 1 ms after a reply in which the client skips its check.
    std::thread::sleep(Duration::from_millis(5));
    let e = c.ping().unwrap_err();
    assert!(matches!(e, ClientError::Disconnected(_)), "{e}");
    assert!(e.to_string().contains("a new one failed"), "{e}");
}

#[test]
fn second_server_on_same_socket_refuses() {
    let server = Server::start("16M");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_arrowpoold"))
        .arg("--socket")
        .arg(&server.socket)
        .args(["--memory", "16M"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another arrowpoold"));
    server.client().ping().unwrap();
}

#[test]
fn hugepages_require_either_works_or_says_why() {
    let reserved: u64 = std::fs::read_to_string("/proc/sys/vm/nr_hugepages")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let free: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("HugePages_Free:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    let result = Server::try_start_with(&["--memory", "8M", "--hugepages", "require"]);
    if free >= 64 {
        let server = result.expect("hugepages are reserved, so require must work");
        let c = server.client();
        assert_eq!(c.stats().unwrap().memory_kind, "hugetlb");
        let (schema, batches) = table(100_000, 2, 0);
        c.put("t", &schema, &batches).unwrap();
        assert_eq!(c.get("t").unwrap().batches, batches);
        assert_eq!(c.server_hello().map_align, 2 * 1024 * 1024);
    } else {
        let err = result
            .err()
            .expect("without free hugepages, require must refuse");
        assert!(
            err.contains("hugepages required"),
            "reserved={reserved} free={free}: {err}"
        );
    }
}

#[test]
fn hugepages_off_uses_small_pages() {
    let server = Server::start_with(&["--memory", "16M", "--hugepages", "off"]);
    let kind = server.client().stats().unwrap().memory_kind;
    assert!(
        kind == "4k-pages" || kind == "transparent-hugepages",
        "{kind}"
    );
}

#[test]
fn polling_fallback_serves_the_same_protocol() {
    let server = Server::start_with(&["--memory", "64M", "--io-driver", "polling"]);
    let c = server.client();
    assert_eq!(c.stats().unwrap().io_driver, "polling");
    assert_eq!(c.server_hello().io_driver, 1);
    let (schema, batches) = table(20_000, 2, 3);
    c.put("t", &schema, &batches).unwrap();
    assert_eq!(c.get("t").unwrap().batches, batches);
    let waiter = server.client();
    let h = std::thread::spawn(move || waiter.wait_for_version("t", 1, Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(50));
    c.put("t", &schema, &batches).unwrap();
    assert_eq!(h.join().unwrap().unwrap(), 2);
    assert!(Server::try_start_with(&[
        "--memory",
        "16M",
        "--io-driver",
        "polling",
        "--require-io-uring"
    ])
    .is_err());
}

#[test]
fn connection_limit_refuses_with_a_clear_error() {
    let server = Server::start_with(&["--memory", "16M", "--max-connections", "2"]);
    let a = server.client();
    let b = server.client();
    let e = arrowpool::Client::connect(&server.socket).unwrap_err();
    assert!(e.to_string().contains("status 3"), "{e}");
    drop(b);
    // The slot frees once the server has seen the close.
    let start = std::time::Instant::now();
    loop {
        match arrowpool::Client::connect(&server.socket) {
            Ok(c) => {
                c.ping().unwrap();
                break;
            }
            Err(_) if start.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("slot never freed: {e}"),
        }
    }
    a.ping().unwrap();
}

/// Regression (fuzzing): sockets that never finish the handshake counted
/// against --max-connections for 10 s, and a real client was refused meanwhile.
#[test]
fn half_open_connections_do_not_take_real_clients_places() {
    let server = Server::start_with(&["--memory", "16M", "--max-connections", "2"]);
    let silent: Vec<_> = (0..20)
        .map(|_| std::os::unix::net::UnixStream::connect(&server.socket).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200)); // let the server accept them all
    let a = server.client();
    let b = server.client();
    a.ping().unwrap();
    b.ping().unwrap();
    // The connection limit still holds for clients that did finish the handshake.
    let e = arrowpool::Client::connect(&server.socket).unwrap_err();
    assert!(e.to_string().contains("status 3"), "{e}");
    // A silent socket is closed after the short handshake deadline.
    let mut s = silent.into_iter().next().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let start = std::time::Instant::now();
    let mut byte = [0u8; 1];
    let n = std::io::Read::read(&mut s, &mut byte).unwrap_or(0);
    assert_eq!(n, 0, "a silent socket gets no reply, only a close");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "closed after {:?}",
        start.elapsed()
    );
}

/// Waits until every thread of `pid` is stopped (SIGSTOP is asynchronous).
fn wait_until_stopped(pid: u32) {
    let start = std::time::Instant::now();
    loop {
        let all_stopped = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .all(|t| {
                let stat =
                    std::fs::read_to_string(t.unwrap().path().join("stat")).unwrap_or_default();
                stat.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
            });
        if all_stopped {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "server did not stop"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn hung_server_is_a_timeout_not_a_hang() {
    let server = Server::start("16M");
    let c = server.client();
    c.ping().unwrap();
    c.set_timeout(Some(Duration::from_millis(300)));
    let pid = rustix::process::Pid::from_raw(server.child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    wait_until_stopped(server.child.id());
    let start = std::time::Instant::now();
    let e = c.ping().unwrap_err();
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
    assert!(matches!(e, ClientError::TimedOut(_)), "{e}");
    assert!(start.elapsed() < Duration::from_secs(3));
    assert!(e.to_string().contains("did not answer within"), "{e}");
    // The connection was closed rather than left out of step: the next
    // request goes to a new one.
    c.ping().unwrap();
    server.client().ping().unwrap();
}

/// `--preallocate SIZE` allocates the start of the data region in the
/// background (logged), `off` allocates nothing ahead, and a budget larger
/// than the arena stops at the arena: nothing beyond `--memory` is committed.
#[test]
fn preallocation_runs_in_the_background_and_stays_inside_the_arena() {
    let wait_log = |s: &Server, what: &str| {
        let start = std::time::Instant::now();
        while !s.stderr().contains(what) {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(20),
                "no {what:?} in: {}",
                s.stderr()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    let s = Server::start_with(&[
        "--memory",
        "64M",
        "--preallocate",
        "16M",
        "--hugepages",
        "off",
    ]);
    wait_log(&s, "preallocated 16.0 MiB");
    // Puts work as before, into the preallocated pages.
    let (schema, batches) = table(10_000, 2, 1);
    let c = s.client();
    c.put("t", &schema, &batches).unwrap();
    assert_eq!(c.get("t").unwrap().batches, batches);
    let big = Server::start_with(&[
        "--memory",
        "8M",
        "--preallocate",
        "1G",
        "--hugepages",
        "off",
    ]);
    wait_log(&big, "preallocated");
    let logged = big.stderr();
    let line = logged.lines().find(|l| l.contains("preallocated")).unwrap();
    assert!(!line.contains("GiB"), "more than the arena: {line}");
    let off = Server::start_with(&["--memory", "64M", "--preallocate", "off"]);
    off.client().ping().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(!off.stderr().contains("preallocated"), "{}", off.stderr());
}

/// A put of 64 MiB or more with several batches is copied by several threads
/// (`ipc::write`, runs of batches); what comes back is the table, byte for
/// byte, and the file passed the server's seal check.
#[test]
fn a_large_put_copied_by_several_threads_reads_back_exactly() {
    let server = Server::start_with(&["--memory", "512M"]);
    let c = server.client();
    let (schema, batches) = table(2_000_000, 5, 4);
    let bytes: usize = batches.iter().map(|b| b.get_array_memory_size()).sum();
    assert!(
        bytes > 64 << 20,
        "{bytes} bytes: large enough for the parallel copy"
    );
    let info = c.put("big", &schema, &batches).unwrap();
    assert_eq!(info.rows, 2_000_000);
    let got = c.get("big").unwrap();
    assert_eq!(got.batches.len(), 5);
    for (a, b) in got.batches.iter().zip(&batches) {
        assert_eq!(a, b);
    }
}

/// Bytes of the server's arena memfd that have pages (its `st_blocks`).
fn arena_committed_bytes(server: &Server) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let fds = format!("/proc/{}/fd", server.child.id());
    for entry in std::fs::read_dir(&fds).unwrap().flatten() {
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        if target.to_string_lossy().contains("memfd:arrowpool-arena") {
            return std::fs::metadata(entry.path()).unwrap().blocks() * 512;
        }
    }
    panic!("no arena memfd among the server's descriptors");
}

/// Resident bytes of this process's mappings of an arena.
fn arena_rss_bytes() -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut in_arena = false;
    let mut rss = 0;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        let is_header =
            first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
        if is_header {
            in_arena = line.contains("memfd:arrowpool-arena");
        }
        if let Some(kb) = line.strip_prefix("Rss:") {
            if in_arena {
                rss += kb
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0)
                    << 10;
            }
        }
    }
    rss
}

/// A writer builds its page tables for the server's preallocated pages in the
/// background after connecting (so its first put copies at memcpy speed),
/// and never for pages the server has not allocated: the arena's committed
/// memory does not grow.
#[test]
fn a_writer_populates_preallocated_pages_only() {
    let server = Server::start_with(&[
        "--memory",
        "256M",
        "--preallocate",
        "64M",
        "--hugepages",
        "off",
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.stderr().contains("preallocated") {
        assert!(Instant::now() < deadline, "{}", server.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    let committed = arena_committed_bytes(&server);
    assert!(committed >= 64 << 20, "{committed}");
    let before = arena_rss_bytes();
    let c = server.client();
    let deadline = Instant::now() + Duration::from_secs(10);
    // Chunks of 2 MiB that are whole: the region's ragged ends are skipped.
    while arena_rss_bytes() < before + (48 << 20) {
        assert!(
            Instant::now() < deadline,
            "page tables not built: {} bytes resident",
            arena_rss_bytes()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        arena_committed_bytes(&server),
        committed,
        "memory was committed"
    );
    drop(c);
}

/// The server's shared-memory pages mapped in its own page tables (kB):
/// what it has written of the arena (small pages or reserved hugepages).
fn rss_shmem_kb(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    ["RssShmem:", "HugetlbPages:"]
        .iter()
        .map(|key| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

/// `--warm-ahead on` (the default): after a put, the server allocates and
/// writes, while idle, the range where the next put of that table would
/// land, so its resident arena grows by about the table; `off`: it does not.
#[test]
fn warm_ahead_allocates_where_the_next_put_goes() {
    for (flag, grows) in [("on", true), ("off", false)] {
        let server = Server::start_with(&[
            "--memory",
            "256M",
            "--preallocate",
            "off",
            "--warm-ahead",
            flag,
        ]);
        let client = server.client();
        let (schema, batches) = table(1_000_000, 4, 7);
        let info = client.put("t", &schema, &batches).unwrap();
        let after_put = rss_shmem_kb(&server);
        let want = after_put + info.bytes / 1024 * 9 / 10;
        let deadline = Instant::now() + Duration::from_secs(if grows { 20 } else { 2 });
        while rss_shmem_kb(&server) < want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let now = rss_shmem_kb(&server);
        assert_eq!(
            now >= want,
            grows,
            "--warm-ahead {flag}: {after_put} kB after a put of {} bytes, {now} kB later",
            info.bytes
        );
        // The next put lands there and reads back whole.
        client.put("t", &schema, &batches).unwrap();
        assert_eq!(client.get("t").unwrap().rows, 1_000_000);
    }
}
