//! The `arrowpool` command line against a real server.
mod common;

use std::process::Command;

use common::{table, Server};

fn cli(server: &Server, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_arrowpool"))
        .arg("--socket")
        .arg(&server.socket)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_parquet(path: &std::path::Path, batches: &[arrow_array::RecordBatch]) {
    let file = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batches[0].schema(), None).unwrap();
    for b in batches {
        w.write(b).unwrap();
    }
    w.close().unwrap();
}

fn read_parquet(path: &std::path::Path) -> Vec<arrow_array::RecordBatch> {
    let f = std::fs::File::open(path).unwrap();
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn put_ls_get_rm_stats() {
    let server = Server::start("64M");
    let (_, batches) = table(5000, 1, 9);
    let src = server.dir.path().join("in.parquet");
    write_parquet(&src, &batches);

    let (ok, out, err) = cli(&server, &["--json", "put", src.to_str().unwrap(), "sales"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["version"].as_u64(), v["rows"].as_u64()),
        (Some(1), Some(5000))
    );

    let (ok, out, _) = cli(&server, &["--json", "ls"]);
    assert!(ok);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["name"], "sales");

    for ext in ["parquet", "arrow"] {
        let dst = server.dir.path().join(format!("out.{ext}"));
        let (ok, _, err) = cli(&server, &["get", "sales", "--out", dst.to_str().unwrap()]);
        assert!(ok, "{err}");
        let got = if ext == "parquet" {
            read_parquet(&dst)
        } else {
            let f = std::fs::File::open(&dst).unwrap();
            arrow_ipc::reader::FileReader::try_new(f, None)
                .unwrap()
                .map(|b| b.unwrap())
                .collect()
        };
        // The CLI reads Parquet in its own batch sizes: compare the data.
        let got = arrow_select::concat::concat_batches(&got[0].schema(), &got).unwrap();
        assert_eq!(got.columns(), batches[0].columns(), "{ext}");
    }

    let (ok, out, _) = cli(&server, &["--json", "stats"]);
    assert!(ok);
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["names"], 1);

    // The plain listing names the columns it shows; versions by number.
    let (ok, out, _) = cli(&server, &["ls"]);
    assert!(
        ok && out.contains("SHARED") && out.contains("sales"),
        "{out}"
    );
    let (ok, out, _) = cli(&server, &["get", "sales", "--version", "1"]);
    assert!(ok && out.contains("version 1"), "{out}");
    let (ok, _, err) = cli(&server, &["get", "sales", "--version", "7"]);
    assert!(!ok && err.contains("not kept"), "{err}");

    assert!(cli(&server, &["rm", "sales"]).0);
    let (ok, _, err) = cli(&server, &["get", "sales"]);
    assert!(!ok);
    assert!(err.contains("no object named"), "{err}");
}

#[test]
fn errors_are_clear_and_exit_non_zero() {
    let server = Server::start("16M");
    let (ok, _, err) = cli(&server, &["put", "/nonexistent/x.parquet", "t"]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/x.parquet"), "{err}");
    let not_parquet = server.dir.path().join("x.parquet");
    std::fs::write(&not_parquet, b"hello").unwrap();
    let (ok, _, err) = cli(&server, &["put", not_parquet.to_str().unwrap(), "t"]);
    assert!(!ok);
    assert!(err.contains("not a Parquet file"), "{err}");
    let (ok, _, err) = cli(&server, &["get", "t", "--out", "/tmp/x.csv"]);
    assert!(!ok, "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_arrowpool"))
        .args(["--socket", "/nonexistent/sock", "ls"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is the server running"));
}
