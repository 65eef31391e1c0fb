//! Micro-benchmarks of the pieces on the request path: frame encode/decode,
//! the offset allocator, zero-copy IPC open of a large object.
use std::hint::black_box;

use arrow_buffer::Buffer;
use arrowpool::alloc::Allocator;
use arrowpool::protocol::frame::{write_frame, Header, REQUEST_BODY_MAX};
use arrowpool::protocol::get::Get;
use arrowpool::protocol::{Kind, Request};
use criterion::{criterion_group, criterion_main, Criterion};

mod common;

fn frames(c: &mut Criterion) {
    let get = Get {
        name: "company_a_sales_2024".into(),
    };
    let mut out = Vec::with_capacity(256);
    c.bench_function("frame::write_frame(get)", |b| {
        b.iter(|| {
            out.clear();
            write_frame(&mut out, black_box(42), Kind::Get as u16, 0, |o| {
                get.encode(o).expect("a valid name")
            });
            black_box(&out);
        })
    });
    c.bench_function("Request::decode(get)", |b| {
        b.iter(|| {
            let h = Header::parse(black_box(&out), REQUEST_BODY_MAX).unwrap();
            black_box(Request::decode(h.kind, &out[16..h.frame_len()]).unwrap())
        })
    });
}

fn allocator(c: &mut Criterion) {
    let mut a = Allocator::new(64 << 30);
    // A fragmented arena: 1000 live objects of mixed sizes.
    let mut live: Vec<(u64, u64)> = (0..1000u64)
        .filter_map(|i| a.alloc((i % 17 + 1) * 1_000_003, 4096))
        .collect();
    for i in (0..live.len()).step_by(3).rev() {
        let (o, s) = live.swap_remove(i);
        a.free(o, s);
    }
    c.bench_function("Allocator::alloc+free", |b| {
        b.iter(|| {
            let (o, s) = a.alloc(black_box(5_000_000), 2 << 20).unwrap();
            a.free(o, s);
        })
    });
}

fn ipc_open(c: &mut Criterion) {
    let (schema, batches) = common::table(2_000_000);
    let mut dest = vec![0u8; arrowpool::ipc::file_size_bound(&schema, &batches)];
    let n = arrowpool::ipc::write_file(&mut dest, &schema, &batches).unwrap();
    dest.truncate(n);
    let buffer = Buffer::from(dest);
    c.bench_function("ipc::open_file(2M rows x 12)", |b| {
        b.iter(|| black_box(arrowpool::ipc::open_file(&buffer, None).unwrap()))
    });
    c.bench_function("ipc::check_file(2M rows x 12)", |b| {
        b.iter(|| black_box(arrowpool::ipc::check_file(buffer.as_slice()).unwrap()))
    });
}

/// The seal-time check on the loadgen `post` table's shape (10M rows x 12
/// columns, 1M-row batches, 1.2 GB): its cost is added to every put.
fn ipc_check_post(c: &mut Criterion) {
    let (schema, batches) = common::table(10_000_000);
    let mut dest = vec![0u8; arrowpool::ipc::file_size_bound(&schema, &batches)];
    let n = arrowpool::ipc::write_file(&mut dest, &schema, &batches).unwrap();
    dest.truncate(n);
    drop(batches);
    let mut group = c.benchmark_group("post");
    group.sample_size(10);
    group.bench_function("ipc::check_file(10M rows x 12)", |b| {
        b.iter(|| black_box(arrowpool::ipc::check_file(black_box(&dest)).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, frames, allocator, ipc_open, ipc_check_post);
criterion_main!(benches);
