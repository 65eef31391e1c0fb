//! Steady puts of a Parquet file's table against one thread's memcpy of its
//! buffers, alternating (the pair `loadgen` reports as `speedup.put_memcpy`),
//! in a loop short enough to profile the server or this client with `perf`.
//! Milliseconds, every sample and the medians.
//!
//! ```text
//! cargo run --release --example put_probe -- SOCKET FILE.parquet [ROUNDS] [PAUSE_MS]
//! ```
//! PAUSE_MS (default 0): a pause after each put, as between a user's clicks.
use std::time::Instant;

use arrow_array::RecordBatchReader;
use arrowpool::Client;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (socket, file) = (&a[1], &a[2]);
    let rounds: usize = a.get(3).map_or(8, |s| s.parse().unwrap());
    let pause = std::time::Duration::from_millis(a.get(4).map_or(0, |s| s.parse().unwrap()));
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(file).unwrap())
        .unwrap()
        .with_batch_size(1_000_000)
        .build()
        .unwrap();
    let schema = reader.schema();
    let batches: Vec<_> = reader.map(Result::unwrap).collect();
    let src: Vec<arrow_buffer::Buffer> = batches
        .iter()
        .flat_map(|b| {
            b.columns()
                .iter()
                .flat_map(|c| c.to_data().buffers().to_vec())
        })
        .collect();
    let mut dest = vec![1u8; src.iter().map(|b| b.len()).sum()];
    let client = Client::connect(socket).unwrap();
    let (mut puts, mut copies) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        let mut at = 0;
        for s in &src {
            dest[at..at + s.len()].copy_from_slice(s);
            at += s.len();
        }
        std::hint::black_box(&dest);
        copies.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        client.put("put_probe", &schema, &batches).unwrap();
        puts.push(t.elapsed().as_secs_f64() * 1e3);
        std::thread::sleep(pause);
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let show = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.1}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!("memcpy ms: {}", show(&copies));
    println!("put ms:    {}", show(&puts));
    // The first two puts fault the arena's pages in; steady ones follow.
    let steady = &puts[puts.len().min(2)..];
    println!(
        "steady put median {:.1} ms, memcpy median {:.1} ms: put = {:.2}x memcpy",
        median(steady),
        median(&copies),
        median(steady) / median(&copies)
    );
}
