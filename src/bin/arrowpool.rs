//! `arrowpool`: command-line client.
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use arrow_array::RecordBatchReader;
use arrowpool::util::human_bytes;
use arrowpool::Client;
use clap::{Parser, Subcommand};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// `println!` that exits quietly when stdout is closed (`arrowpool ls | head`)
/// instead of panicking on the broken pipe.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

/// Put, get and inspect tables in an arrowpool server.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Server socket [default: $ARROWPOOL_SOCKET, else
    /// $XDG_RUNTIME_DIR/arrowpool/arrowpool.sock, else /tmp/arrowpool-<uid>/arrowpool.sock].
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Read a Parquet file here and put it as NAME.
    Put { file: PathBuf, name: String },
    /// Get NAME and write it to FILE (.arrow or .parquet), or print a summary.
    Get {
        name: String,
        #[arg(long)]
        out: Option<PathBuf>,
        /// A kept older version instead of the current one (arrowpoold --keep-versions).
        #[arg(long)]
        version: Option<u64>,
    },
    /// Have the server read Parquet into NAME: a file or directory on the
    /// server's machine, an object store URL (s3://BUCKET/KEY or a prefix,
    /// gs://, az://, https://; credentials from the server's environment), or
    /// flight://[TOKEN@]HOST:PORT/NAME (a table of another Flight server).
    Ingest {
        path: PathBuf,
        name: String,
        /// Comma-separated columns to read (default: all).
        #[arg(long, value_delimiter = ',')]
        columns: Vec<String>,
        /// An object store setting for this ingest, over the server's
        /// environment (repeatable): KEY=VALUE with the object_store crate's
        /// keys, e.g. aws_region=eu-west-1, aws_endpoint=http://host:9000.
        /// Values on a command line are visible to other users (ps): give
        /// secrets through the server's environment or the Python client.
        #[arg(long = "storage-option", value_name = "KEY=VALUE", value_parser = parse_option)]
        storage_options: Vec<(String, String)>,
    },
    /// List objects.
    Ls,
    /// Delete NAME.
    Rm { name: String },
    /// Server and arena statistics.
    Stats,
    /// Stop the server (SIGTERM to the process behind the socket, then wait
    /// for it to go). Every table it holds is gone with it.
    Stop {
        /// Seconds to wait for the server to exit.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("arrowpool: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Stops the server on `socket`: its pid from the socket's peer credentials
/// (no pid file to go stale), SIGTERM, then waits until the process is gone.
fn stop(socket: &std::path::Path, timeout: Duration, json: bool) -> anyhow::Result<()> {
    let stream = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("no server on {}", socket.display()))?;
    let cred =
        rustix::net::sockopt::socket_peercred(&stream).context("reading the server's pid")?;
    drop(stream);
    let me = rustix::process::geteuid();
    if cred.uid != me && !me.is_root() {
        anyhow::bail!(
            "the server on {} runs as uid {}, not as you",
            socket.display(),
            cred.uid.as_raw()
        );
    }
    let pid = cred.pid;
    rustix::process::kill_process(pid, rustix::process::Signal::TERM)
        .with_context(|| format!("signalling arrowpoold (pid {})", pid.as_raw_nonzero()))?;
    let start = std::time::Instant::now();
    // Gone once signal 0 finds no such process.
    while rustix::process::test_kill_process(pid).is_ok() {
        if start.elapsed() > timeout {
            anyhow::bail!(
                "arrowpoold (pid {}) did not exit within {} s",
                pid.as_raw_nonzero(),
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if json {
        out!(
            "{}",
            serde_json::json!({"stopped": pid.as_raw_nonzero().get()})
        );
    } else {
        out!("stopped arrowpoold (pid {})", pid.as_raw_nonzero());
    }
    Ok(())
}

fn spinner(msg: String) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_message(msg);
    // Only show progress for work that lasts: the bar appears after a second.
    pb.enable_steady_tick(Duration::from_millis(200));
    pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    let shown = pb.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        if !shown.is_finished() {
            shown.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
    });
    pb
}

fn run(args: Args) -> anyhow::Result<()> {
    let socket = match args.socket {
        Some(s) => s,
        None => arrowpool::paths::default_socket().context("no socket path")?,
    };
    if let Command::Stop { timeout } = args.command {
        return stop(&socket, Duration::from_secs(timeout), args.json);
    }
    // Reading commands connect read-only, so they work for users a server's
    // --writers-group keeps from writing.
    let writes = matches!(
        args.command,
        Command::Put { .. } | Command::Ingest { .. } | Command::Rm { .. }
    );
    let client = if writes {
        Client::connect(&socket)
    } else {
        Client::connect_reader(&socket)
    }
    .with_context(|| "connecting")?;
    match args.command {
        Command::Put { file, name } => {
            let pb = spinner(format!("reading {}", file.display()));
            let f = std::fs::File::open(&file)
                .with_context(|| format!("opening {}", file.display()))?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(f)
                .with_context(|| format!("{} is not a Parquet file", file.display()))?
                .build()?;
            let schema = reader.schema();
            let batches = reader
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("decoding {}", file.display()))?;
            pb.set_message(format!("putting {name}"));
            let info = client.put(&name, &schema, &batches)?;
            pb.finish_and_clear();
            if args.json {
                out!(
                    "{}",
                    serde_json::json!({"name": name, "version": info.version, "rows": info.rows, "bytes": info.bytes})
                );
            } else {
                out!(
                    "{name}: version {}, {} rows, {}",
                    info.version,
                    info.rows,
                    human_bytes(info.bytes)
                );
            }
        }
        Command::Get { name, out, version } => {
            let table = match version {
                Some(v) => client.get_version(&name, v)?,
                None => client.get(&name)?,
            };
            if let Some(out) = out {
                write_table(&out, &table.schema, &table.batches)?;
            }
            if args.json {
                out!(
                    "{}",
                    serde_json::json!({"name": name, "version": table.version, "rows": table.rows, "columns": table.schema.fields().len()})
                );
            } else {
                out!(
                    "{name}: version {}, {} rows, {} columns",
                    table.version,
                    table.rows,
                    table.schema.fields().len()
                );
            }
        }
        Command::Ingest {
            path,
            name,
            columns,
            storage_options,
        } => {
            // A URL (flight://HOST:PORT/NAME) goes to the server as it is; a
            // local path is made absolute (the server's directory is not ours).
            let path = if path.to_string_lossy().contains("://") {
                path
            } else {
                std::fs::canonicalize(&path).with_context(|| format!("{}", path.display()))?
            };
            let shown = path.to_string_lossy();
            // A token in a URL (flight://TOKEN@HOST:PORT/NAME) is not shown.
            let shown = match shown.split_once("://") {
                Some((scheme, rest)) => {
                    let (authority, tail) = rest.split_once('/').unwrap_or((rest, ""));
                    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
                    format!("{scheme}://{authority}/{tail}")
                }
                None => shown.into_owned(),
            };
            let pb = spinner(format!("server ingesting {shown}"));
            let cols: Vec<&str> = columns.iter().map(String::as_str).collect();
            let options: Vec<(&str, &str)> = storage_options
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let reply = client.ingest_with(&path.to_string_lossy(), &name, &cols, &options)?;
            pb.finish_and_clear();
            if args.json {
                out!("{}", serde_json::to_string(&reply)?);
            } else {
                out!(
                    "{name}: version {}, {} rows, {} from {} file(s) in {:.0} ms (read {:.0} ms, decode {:.0} ms, write {:.0} ms)",
                    reply.version,
                    reply.rows,
                    human_bytes(reply.bytes),
                    reply.files,
                    reply.total_ms,
                    reply.read_ms,
                    reply.decode_ms,
                    reply.write_ms
                );
            }
        }
        Command::Ls => {
            let list = client.list()?;
            if args.json {
                out!("{}", serde_json::to_string(&list)?);
            } else {
                out!(
                    "{:<32} {:>8} {:>6} {:>12} {:>10} {:>10} {:>7} {:>10}  KEPT",
                    "NAME",
                    "VERSION",
                    "KIND",
                    "ROWS",
                    "SIZE",
                    "SHARED",
                    "LEASES",
                    "IDLE"
                );
                for e in list {
                    let kept: Vec<String> = e.retained.iter().map(u64::to_string).collect();
                    out!(
                        "{:<32} {:>8} {:>6} {:>12} {:>10} {:>10} {:>7} {:>9.1}s  {}",
                        e.name,
                        e.version,
                        e.kind,
                        e.rows,
                        human_bytes(e.bytes),
                        human_bytes(e.shared_bytes),
                        e.leases,
                        e.idle_ms as f64 / 1e3,
                        kept.join(",")
                    );
                }
            }
        }
        Command::Rm { name } => {
            client.delete(&name)?;
            if !args.json {
                out!("deleted {name}");
            }
        }
        Command::Stop { .. } => unreachable!("handled before connecting"),
        Command::Stats => {
            let s = client.stats()?;
            if args.json {
                out!("{}", serde_json::to_string(&s)?);
            } else {
                out!(
                    "memory     {} ({})",
                    human_bytes(s.arena_bytes),
                    s.memory_kind
                );
                out!("io driver  {} x {} threads", s.io_driver, s.threads);
                out!(
                    "used       {} ({} held by readers, {} being written)",
                    human_bytes(s.used_bytes),
                    human_bytes(s.held_bytes),
                    human_bytes(s.pending_bytes)
                );
                out!(
                    "free       {} (largest range {})",
                    human_bytes(s.free_bytes),
                    human_bytes(s.largest_free_bytes)
                );
                if s.quarantined_bytes > 0 {
                    out!(
                        "held back  {} for the clients of the server before the restart (--quarantine)",
                        human_bytes(s.quarantined_bytes)
                    );
                }
                out!(
                    "objects    {} ({} named), {} leases, {} connections",
                    s.objects,
                    s.names,
                    s.leases,
                    s.connections
                );
                if s.orphaned_versions > 0 {
                    out!(
                        "orphans    {} replaced or deleted version(s) kept while readers hold them",
                        s.orphaned_versions
                    );
                }
                if s.ingest_buffer_bytes > 0 {
                    out!(
                        "buffers    {} of read buffers kept for the next ingest (--ingest-buffers)",
                        human_bytes(s.ingest_buffer_bytes)
                    );
                }
                out!(
                    "ops        {} puts, {} gets, {} evictions",
                    s.puts,
                    s.gets,
                    s.evictions
                );
            }
        }
    }
    Ok(())
}

fn write_table(
    out: &Path,
    schema: &Arc<arrow_schema::Schema>,
    batches: &[arrow_array::RecordBatch],
) -> anyhow::Result<()> {
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    match out.extension().and_then(|e| e.to_str()) {
        Some("arrow") | Some("ipc") | Some("feather") => {
            let mut w = arrow_ipc::writer::FileWriter::try_new(file, schema)?;
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
        }
        Some("parquet") => {
            let mut w = parquet::arrow::ArrowWriter::try_new(file, schema.clone(), None)?;
            for b in batches {
                w.write(b)?;
            }
            w.close()?;
        }
        _ => bail!("--out must end in .arrow or .parquet"),
    }
    Ok(())
}

/// `KEY=VALUE` of `--storage-option` (the value is never echoed in errors).
fn parse_option(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err("expected KEY=VALUE, with a non-empty KEY".into()),
    }
}
