//! After-idle round trips, alternating: a Unix-socket echo (thread unpinned),
//! a ping, and a get of NAME, each after IDLE_MS (default 500) of sleep; then,
//! back to back, a ping and a get. Medians and all samples in microseconds.
//! CPU pins this client to one CPU. With IDLE_MS 0 it is a loop of gets to
//! profile (`perf record`).
//!
//! ```text
//! cargo run --release --example idle_probe -- SOCKET NAME [SAMPLES] [IDLE_MS] [CPU]
//! ```
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let socket = &a[1];
    let name = &a[2];
    let samples: usize = a.get(3).map_or(10, |s| s.parse().unwrap());
    let idle = Duration::from_millis(a.get(4).map_or(500, |s| s.parse().unwrap()));
    if let Some(cpu) = a.get(5) {
        let mut set = rustix::thread::CpuSet::new();
        set.set(cpu.parse().unwrap());
        rustix::thread::sched_setaffinity(None, &set).unwrap();
    }
    let dir = std::env::temp_dir().join(format!("idle-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("echo.sock");
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 64];
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                return;
            }
            s.write_all(&buf[..n]).unwrap();
        }
    });
    let mut echo = UnixStream::connect(&path).unwrap();
    let client = arrowpool::client::Client::connect(socket).unwrap();
    drop(client.get(name).unwrap());
    let (mut e, mut p, mut g, mut wp, mut wg) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut byte = [7u8; 16];
    for _ in 0..samples {
        std::thread::sleep(idle);
        let t = Instant::now();
        echo.write_all(&byte).unwrap();
        echo.read_exact(&mut byte).unwrap();
        e.push(t.elapsed().as_micros());
        std::thread::sleep(idle);
        let t = Instant::now();
        client.ping().unwrap();
        p.push(t.elapsed().as_micros());
        std::thread::sleep(idle);
        let t = Instant::now();
        let table = client.get(name).unwrap();
        g.push(t.elapsed().as_micros());
        drop(table);
        let t = Instant::now();
        client.ping().unwrap();
        wp.push(t.elapsed().as_micros());
        let t = Instant::now();
        let table = client.get(name).unwrap();
        wg.push(t.elapsed().as_micros());
        drop(table);
    }
    let quiet = samples > 50;
    for (what, mut v) in [
        ("echo", e),
        ("ping", p),
        ("get", g),
        ("ping (warm)", wp),
        ("get (warm)", wg),
    ] {
        v.sort();
        if quiet {
            println!("{what:12} median {:4} us", v[v.len() / 2]);
        } else {
            println!("{what:12} median {:4} us  all {:?}", v[v.len() / 2], v);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
