//! `Client::get`: latency must not grow with table size (the client maps the
//! arena once; a get is one round trip plus reading the IPC footer).
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

mod common;

fn get(c: &mut Criterion) {
    let server =
        common::Server::start(&["--memory", "3G", "--threads", "2"]).expect("server starts");
    let client = arrowpool::Client::connect(&server.socket).unwrap();
    let mut group = c.benchmark_group("Client::get");
    for (label, rows) in [("1M", 1_000_000usize), ("10M", 10_000_000)] {
        let (schema, batches) = common::table(rows);
        client.put(label, &schema, &batches).unwrap();
        drop(batches);
        group.bench_with_input(BenchmarkId::new("rows", label), label, |b, name| {
            b.iter(|| black_box(client.get(black_box(name)).unwrap()))
        });
        group.bench_with_input(
            BenchmarkId::new("rows_2_columns", label),
            label,
            |b, name| {
                b.iter(|| black_box(client.get_columns(black_box(name), &["f0", "s0"]).unwrap()))
            },
        );
        client.delete(label).unwrap();
    }
    client.put_bytes("tiny", b"{}").unwrap();
    group.bench_function("tiny_bytes_object", |b| {
        b.iter(|| black_box(client.get_bytes("tiny").unwrap()))
    });
    group.bench_function("ping", |b| b.iter(|| client.ping().unwrap()));
    group.finish();
}

criterion_group!(benches, get);
criterion_main!(benches);
