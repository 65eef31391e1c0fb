//! `Client::put` of a 10M-row x 12-column table (about 1 GB) against memcpy of
//! the same bytes, with reserved hugepages (when the machine has them) and
//! without. Throughput is reported in bytes of Arrow data.
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

mod common;

fn put(c: &mut Criterion) {
    let rows: usize = std::env::var("ARROWPOOL_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let (schema, batches) = common::table(rows);
    let bytes = common::table_bytes(&batches);
    let mut group = c.benchmark_group("Client::put");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .throughput(Throughput::Bytes(bytes));

    // The physical floor: copy the same bytes into memory that already exists.
    let mut dest = vec![0u8; bytes as usize];
    let src: Vec<arrow_buffer::Buffer> = batches
        .iter()
        .flat_map(|b| {
            b.columns()
                .iter()
                .flat_map(|c| c.to_data().buffers().to_vec())
        })
        .collect();
    group.bench_function("memcpy", |b| {
        b.iter(|| {
            let mut at = 0;
            for s in &src {
                let s = s.as_slice();
                let end = (at + s.len()).min(dest.len());
                dest[at..end].copy_from_slice(&s[..end - at]);
                at = end;
            }
            black_box(&dest);
        })
    });
    drop(dest);

    let memory = format!("{}", bytes * 3);
    for (label, mode) in [("hugetlb", "require"), ("no_hugepages", "off")] {
        let Some(server) = common::Server::start(&["--memory", &memory, "--hugepages", mode])
        else {
            eprintln!("put/{label}: skipped, server refused --hugepages {mode} (reserve pages: echo N > /proc/sys/vm/nr_hugepages)");
            continue;
        };
        let client = arrowpool::Client::connect(&server.socket).unwrap();
        let kind = client.stats().unwrap().memory_kind;
        eprintln!("put/{label}: server memory kind {kind}");
        group.bench_function(label, |b| {
            b.iter(|| black_box(client.put("t", &schema, &batches).unwrap()))
        });
    }
    group.finish();
}

criterion_group!(benches, put);
criterion_main!(benches);
