//! `loadgen`: measures arrowpool against a Parquet baseline on a generated
//! table and writes the results folder; `loadgen compare` is the CI gate.
//!
//! # Layout
//! - `presets`: `--preset` sizes and `10M`-style counts.
//! - `rng`: the fixed random generator behind the generated data.
//! - `workload`: column kinds, deterministic batches, the cached Parquet file.
//! - `parquet_io`: the baseline reader (all cores), writer, scans.
//! - `server`: starting and stopping `arrowpoold`, hugepage reservation, page cache.
//! - `machine`: machine facts and the memory/disk check.
//! - `measure`: hdrhistogram timings, the repeat policy, `.hgrm` text.
//! - `scenarios/`: one file per scenario; `run` drives them in order.
//! - `results`: the raw.json model; `report`: summary.md and files; `charts`: SVG.
//! - `compare`: the regression gate.

mod charts;
mod compare;
mod machine;
mod measure;
mod parquet_io;
mod presets;
mod progress;
mod report;
mod results;
mod rng;
mod run;
mod scenarios;
mod server;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use presets::Preset;

/// Measures arrowpool against Parquet on a generated table (default: `run`).
#[derive(Parser, Debug)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run every scenario and write a results folder (the default).
    Run(RunArgs),
    /// Compare two raw.json files; exit 1 naming each regressed or missing figure.
    Compare(CompareArgs),
    /// (Used by the cold scenario.) In this new process: read a Parquet file,
    /// time one memcpy of its buffers and one put of it, print both as JSON.
    #[command(hide = true)]
    PutOnce(scenarios::cold::PutOnceArgs),
}

/// A scenario `--only` can select (see `scenarios/mod.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Parquet write / reads against put / get / get_columns / get + scan.
    Operations,
    /// The server reads the Parquet file.
    Ingest,
    /// Cold paths against the machine's own costs: memcpy of the table, a get against a socket echo, both after 0.5 s idle.
    Cold,
    /// Concurrent callbacks: get + scan of random columns against Parquet reads.
    Callbacks,
    /// Pipelined ping and get + release from several connections.
    SmallOps,
    /// Replace 2 columns while readers check every version.
    Update,
    /// 1000 rounds of switch + update + append: fragmentation at the end.
    Churn,
    /// Switching sources under a memory cap (a server of its own).
    Switch,
    /// kill -9 of a `--state-dir` server holding 1 and 3 tables, to the first get (a server of its own).
    Restart,
    /// Switch back to a source spilled to disk (`--spill-dir`) vs ingest its Parquet again (a server of its own).
    Spill,
    /// Arrow Flight do_get / do_put over loopback against pyarrow's Flight server (a server of its own).
    Remote,
    /// Ingest from object storage (a local S3 emulator) against ingest of the local file (a server of its own).
    Objects,
}

/// What `--hugepages` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Hugepages {
    /// Leave `vm.nr_hugepages` alone (the server uses whatever it finds).
    Auto,
    /// As root, raise `vm.nr_hugepages` to fit the servers' arenas; restored at the end.
    Reserve,
}

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Workload size: smoke (100k x 12), quick (1M x 12), post (10M x 12), wide (10M x 165),
    /// large (200M x 12), max (200M x 165).
    #[arg(long, value_enum, default_value_t = Preset::Post)]
    preset: Preset,
    /// Rows, overriding the preset (100k, 10M, 200M...).
    #[arg(long, value_parser = presets::parse_count)]
    rows: Option<u64>,
    /// Columns (4..165), overriding the preset.
    #[arg(long, value_parser = presets::parse_columns)]
    columns: Option<usize>,
    /// Seed of the generated data.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Repeats per timed operation (fewer for operations over 2 s).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Concurrent callback threads, each with its own connection.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Seconds each fixed-duration scenario runs (default 5; 2 for smoke).
    #[arg(long)]
    duration: Option<f64>,
    /// Where generated Parquet files are cached between runs.
    #[arg(long, default_value = "loadgen-data")]
    data_dir: PathBuf,
    /// Results folder (default: results/<UTC date>-<preset>-<host>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// arrowpoold binary (default: next to loadgen, built if missing).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Use the server already listening on this socket instead of starting one.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// auto: leave vm.nr_hugepages alone; reserve (root): raise it for the run.
    #[arg(long, value_enum, default_value_t = Hugepages::Auto)]
    hugepages: Hugepages,
    /// Arena of the started server (default: 4 tables).
    #[arg(long, value_parser = arrowpool::util::parse_bytes)]
    server_memory: Option<u64>,
    /// Threads of the Parquet reader (default: all cores).
    #[arg(long)]
    reader_threads: Option<usize>,
    /// Run even when the memory/disk estimate says the machine is too small.
    #[arg(long)]
    ignore_limits: bool,
    /// Run only these scenarios, in their usual order (comma-separated, e.g.
    /// `--only operations,switch`). The table is put first when a scenario
    /// needs it and `operations` does not run.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Scenario>,
}

#[derive(clap::Args, Debug)]
struct CompareArgs {
    /// The baseline raw.json (e.g. results/baseline-smoke.json).
    base: PathBuf,
    /// The raw.json of the run to check.
    new: PathBuf,
    /// Largest allowed drop of a gated figure.
    #[arg(long, default_value = "15%", value_parser = compare::parse_regression)]
    max_regression: f64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Compare(c)) => match compare::run(&c.base, &c.new, c.max_regression) {
            Ok(failures) if failures.is_empty() => {
                println!(
                    "compare: no figure regressed more than {:.0}%",
                    c.max_regression * 100.0
                );
                ExitCode::SUCCESS
            }
            Ok(failures) => {
                for f in &failures {
                    eprintln!("FAILED: {f}");
                }
                ExitCode::from(1)
            }
            Err(e) => {
                eprintln!("loadgen compare: {e:#}");
                ExitCode::from(2)
            }
        },
        Some(Command::Run(args)) => run_main(args),
        Some(Command::PutOnce(a)) => match scenarios::cold::put_once(&a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("loadgen put-once: {e:#}");
                ExitCode::from(2)
            }
        },
        None => run_main(cli.run),
    }
}

fn run_main(args: RunArgs) -> ExitCode {
    match run::run(args) {
        Ok(true) => ExitCode::SUCCESS,
        // Results were written, but a correctness check failed.
        Ok(false) => ExitCode::from(3),
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::from(1)
        }
    }
}
