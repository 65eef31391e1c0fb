//! Shared by the benches: a real server process and seeded tables.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};

pub struct Server {
    child: Child,
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts `arrowpoold`; `None` when it refuses (e.g. `--hugepages require`
    /// without reserved pages).
    pub fn start(args: &[&str]) -> Option<Server> {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("bench.sock");
        let mut child = Command::new(env!("CARGO_BIN_EXE_arrowpoold"))
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if child.try_wait().unwrap().is_some() || start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(Server {
            child,
            socket,
            _dir: dir,
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Seeded table shaped like the users' data: 12 columns, half numeric, a
/// quarter unique strings, a quarter low-cardinality strings; 1M-row batches.
pub fn table(rows: usize) -> (Arc<Schema>, Vec<RecordBatch>) {
    let mut fields = Vec::new();
    for i in 0..3 {
        fields.push(Field::new(format!("f{i}"), DataType::Float64, true));
        fields.push(Field::new(format!("i{i}"), DataType::Int64, false));
    }
    for i in 0..3 {
        fields.push(Field::new(format!("s{i}"), DataType::Utf8, false));
        fields.push(Field::new(format!("c{i}"), DataType::Utf8, false));
    }
    let schema = Arc::new(Schema::new(fields));
    let batch_rows = 1_000_000.min(rows);
    let mut batches = Vec::new();
    let mut done = 0;
    while done < rows {
        let n = batch_rows.min(rows - done);
        let base = done as u64;
        let mut cols: Vec<ArrayRef> = Vec::new();
        for k in 0..3u64 {
            cols.push(Arc::new(Float64Array::from_iter_values((0..n as u64).map(
                |r| ((base + r).wrapping_mul(2654435761 + k) % 1_000_000) as f64 / 7.0,
            ))));
            cols.push(Arc::new(Int64Array::from_iter_values(
                (0..n as u64).map(|r| (base + r) as i64 * (k as i64 + 1)),
            )));
        }
        for k in 0..3u64 {
            cols.push(Arc::new(StringArray::from_iter_values(
                (0..n as u64).map(|r| format!("id-{k}-{}", base + r)),
            )));
            cols.push(Arc::new(StringArray::from_iter_values((0..n as u64).map(
                |r| ["north", "south", "east", "west", "center"][((base + r + k) % 5) as usize],
            ))));
        }
        batches.push(RecordBatch::try_new(schema.clone(), cols).unwrap());
        done += n;
    }
    (schema, batches)
}

pub fn table_bytes(batches: &[RecordBatch]) -> u64 {
    batches
        .iter()
        .map(|b| b.get_array_memory_size() as u64)
        .sum()
}
