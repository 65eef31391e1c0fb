//! The results folder: summary.md, raw.json, one `.hgrm` per histogram, two
//! SVG charts; and the table printed at the end of a run.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use arrowpool::util::human_bytes;
use hdrhistogram::Histogram;

use crate::charts::{self, format_speedup};
use crate::measure::{hgrm, human_s};
use crate::results::{Comparison, Raw, Throughput};

/// Writes every file of the results folder.
pub fn write(dir: &Path, raw: &Raw, histograms: &[(String, Histogram<u64>)]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let put = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text)
            .with_context(|| format!("cannot write {}", dir.join(name).display()))
    };
    put("raw.json", &(serde_json::to_string_pretty(raw)? + "\n"))?;
    put("summary.md", &summary(raw))?;
    for (name, h) in histograms {
        put(&format!("{name}.hgrm"), &hgrm(h))?;
    }
    let title = format!(
        "arrowpool vs Parquet, {} ({} rows x {} columns)",
        raw.preset, raw.rows, raw.columns
    );
    put("speedups.svg", &charts::speedups(&raw.comparisons, &title))?;
    let wanted = [
        "callbacks_store",
        "callbacks_parquet",
        "small_ops_ping",
        "small_ops_get_release",
        "get_all",
    ];
    let series: Vec<(String, &Histogram<u64>)> = wanted
        .iter()
        .filter_map(|w| {
            histograms
                .iter()
                .find(|(n, _)| n == w)
                .map(|(n, h)| (n.clone(), h))
        })
        .collect();
    put(
        "latency.svg",
        &charts::latency(&series, &format!("latency by percentile, {}", raw.preset)),
    )?;
    Ok(())
}

fn bold_if(cond: bool, s: String) -> String {
    if cond {
        format!("**{s}**")
    } else {
        s
    }
}

fn comparison_row(c: &Comparison) -> String {
    let ours = c.candidate_s <= c.baseline_s;
    format!(
        "| {} | {} | {} | {} | {} |\n",
        c.label,
        bold_if(!ours, format!("{} ({})", human_s(c.baseline_s), c.baseline)),
        bold_if(
            ours,
            format!("{} ({})", human_s(c.candidate_s), c.candidate)
        ),
        bold_if(ours, format_speedup(c.speedup)),
        if ours { "arrowpool" } else { "Parquet" }
    )
}

fn throughput_row(t: &Throughput, bold: bool) -> String {
    let l = &t.latency;
    format!(
        "| {} | {} | {} | {} | {} | {} |\n",
        t.label,
        bold_if(bold, format!("{:.0}", t.ops_per_s)),
        t.ops,
        human_s(l.p50_us as f64 / 1e6),
        human_s(l.p99_us as f64 / 1e6),
        human_s(l.p999_us as f64 / 1e6)
    )
}

/// The targets the `post` preset is held to, with what this run measured.
pub fn targets(raw: &Raw) -> Vec<(String, String, Option<bool>)> {
    let speed = |key: &str| {
        raw.comparisons
            .iter()
            .find(|c| c.key == key)
            .map(|c| c.speedup)
    };
    let mut out = Vec::new();
    for (key, min, what) in [
        (
            "read_scan",
            10.0,
            "get + scan at least 10x faster than Parquet read + scan",
        ),
        (
            "read_all",
            1000.0,
            "get at least 1000x faster than Parquet read (all columns)",
        ),
        ("write", 20.0, "put at least 20x faster than Parquet write"),
    ] {
        let v = speed(key);
        out.push((
            what.to_owned(),
            v.map_or("not measured".into(), format_speedup),
            v.map(|v| v >= min),
        ));
    }
    let ping = raw.throughput.get("small_ops_ping").map(|t| t.ops_per_s);
    let pairs = raw
        .throughput
        .get("small_ops_get_release")
        .map(|t| t.ops_per_s);
    out.push((
        "small ops at least 200k ops/s".into(),
        match (ping, pairs) {
            (Some(p), Some(g)) => format!(
                "ping {:.0} ops/s; get+release {:.0} pairs/s = {:.0} requests/s",
                p,
                g,
                2.0 * g
            ),
            _ => "not measured".into(),
        },
        ping.map(|p| p >= 200_000.0),
    ));
    out
}

/// summary.md.
pub fn summary(raw: &Raw) -> String {
    let mut s = String::new();
    let failed = raw.checks.iter().filter(|c| !c.passed).count();
    let _ = writeln!(
        s,
        "# loadgen: {} preset, {} rows x {} columns\n",
        raw.preset, raw.rows, raw.columns
    );
    let _ = writeln!(
        s,
        "- started {}, finished {}",
        raw.started_utc, raw.finished_utc
    );
    let _ = writeln!(s, "- command: `{}`", raw.command);
    let _ = writeln!(s, "- commit: `{}`", raw.machine.git_commit);
    let _ = writeln!(
        s,
        "- checks: {}\n",
        if failed == 0 {
            format!("all {} passed", raw.checks.len())
        } else {
            format!("**{failed} FAILED** (see Checks)")
        }
    );

    let _ = writeln!(s, "## Parquet vs arrowpool\n");
    let _ = writeln!(
        s,
        "Median times. Speedup = Parquet time / arrowpool time; the faster side of each row is in bold.\n"
    );
    s += "| operation | Parquet | arrowpool | speedup | winner |\n|---|---|---|---|---|\n";
    for c in &raw.comparisons {
        s += &comparison_row(c);
    }

    if let (Some(store), Some(parquet)) = (
        raw.throughput.get("callbacks_store"),
        raw.throughput.get("callbacks_parquet"),
    ) {
        let _ = writeln!(
            s,
            "\n## Concurrent callbacks: {} threads, each with its own connection, {:.0} s\n",
            store.concurrency, raw.duration_s
        );
        s += "Each callback gets 1 to 4 random columns and scans them (sums numbers, string lengths). \
              The baseline callback reads the same columns from the Parquet file.\n\n";
        s +=
            "| source | callbacks/s | callbacks | p50 | p99 | p99.9 |\n|---|---|---|---|---|---|\n";
        let ours = store.ops_per_s >= parquet.ops_per_s;
        s += &throughput_row(parquet, !ours);
        s += &throughput_row(store, ours);
        let _ = writeln!(
            s,
            "\nThroughput ratio: {}",
            format_speedup(store.ops_per_s / parquet.ops_per_s.max(1e-9))
        );
    }

    if let (Some(ping), Some(pairs)) = (
        raw.throughput.get("small_ops_ping"),
        raw.throughput.get("small_ops_get_release"),
    ) {
        let _ = writeln!(
            s,
            "\n## Small operations: {} connections x {} in flight, {:.0} s\n",
            ping.concurrency, ping.in_flight_per_connection, raw.duration_s
        );
        s += "Raw frames on Unix sockets, pipelined. A get+release pair is a get, then a release (with reply) of the \
              object it returned; its latency runs from sending the get to the release's reply.\n\n";
        s += "| operation | ops/s | ops | p50 | p99 | p99.9 |\n|---|---|---|---|---|---|\n";
        s += &throughput_row(ping, false);
        s += &throughput_row(pairs, false);
        let _ = writeln!(
            s,
            "\nget+release: {:.0} requests/s (2 per pair).",
            2.0 * pairs.ops_per_s
        );
    }

    if let Some(sw) = &raw.switch {
        let _ = writeln!(s, "\n## Switching sources under a memory cap\n");
        let _ = writeln!(
            s,
            "A second server with `--memory {}` (1.5 x the {} a put of the table reserves). Sources {} hold the same \
             table; the sequence {} makes each current in turn. A reader thread gets all three names in a loop.\n",
            human_bytes(sw.memory_cap_bytes),
            human_bytes(sw.table_bytes),
            sw.names.join(", "),
            sw.sequence.join(" → ")
        );
        if let Some(t) = raw.timings.get("switch") {
            let _ = writeln!(
                s,
                "- switch time (put that evicts the previous source): p50 {}, max {} over {} switches",
                human_s(t.p50_us as f64 / 1e6),
                human_s(t.max_us as f64 / 1e6),
                t.count
            );
        }
        if let Some(p) = raw.timings.get("put") {
            let _ = writeln!(
                s,
                "- the same put without a cap and without the reader thread: p50 {}",
                human_s(p.p50_us as f64 / 1e6)
            );
        }
        let _ = writeln!(s, "- evictions per switch: {:?}", sw.evictions);
        let _ = writeln!(
            s,
            "- puts retried on OutOfMemory while the reader held a lease: {}",
            sw.out_of_memory_retries
        );
        let _ = writeln!(
            s,
            "- reader: {} gets ok, {} NotFound (evicted source), {} other errors",
            sw.reader_gets_ok,
            sw.reader_not_found,
            sw.reader_other_errors.len()
        );
        for e in &sw.reader_other_errors {
            let _ = writeln!(s, "  - {e}");
        }
        let _ = writeln!(s, "- names left at the end: {:?}", sw.names_at_end);
    }

    if let Some(u) = &raw.update {
        let _ = writeln!(s, "\n## Partial update while reading\n");
        let _ = writeln!(
            s,
            "Each update gets the table, computes new `{}` from the old ones (+1), reuses the other columns \
             zero-copy and puts a new version. {} reader threads check every row of both columns of every \
             version they get against the original plus the number of updates that version says it has.\n",
            u.columns.join("` and `"),
            u.reader_threads
        );
        if let (Some(a), Some(w)) = (
            raw.timings.get("update"),
            raw.timings.get("update_with_readers"),
        ) {
            let _ = writeln!(
                s,
                "- update time: p50 {} alone (the row in the table above), {} while the readers run \
                 (they compete for the same cores)",
                human_s(a.p50_us as f64 / 1e6),
                human_s(w.p50_us as f64 / 1e6)
            );
        }
        let _ = writeln!(
            s,
            "- versions published: {}; reader checks: {}; distinct versions seen: {}; inconsistencies: {}",
            u.versions_published,
            u.reader_checks,
            u.versions_seen,
            u.inconsistencies.len()
        );
        for e in &u.inconsistencies {
            let _ = writeln!(s, "  - {e}");
        }
        if u.new_column_bytes > 0 {
            let _ = writeln!(
                s,
                "- one update wrote {} and grew the arena by {} while the old version was held, \
                 for {} of new columns ({:.3}x); an append of {} rows wrote {}",
                human_bytes(u.written_bytes),
                human_bytes(u.grown_bytes),
                human_bytes(u.new_column_bytes),
                u.grown_bytes as f64 / u.new_column_bytes as f64,
                u.append_rows,
                human_bytes(u.append_written_bytes)
            );
        }
    }

    if let Some(c) = &raw.churn {
        let _ = writeln!(s, "\n## Churn\n");
        let _ = writeln!(
            s,
            "{} rounds of switch (put the other source whole) + update (1 column replaced, the rest shared) \
             + append (1% rows, every batch shared) in {:.1} s. At the end: {} used for {} of current \
             tables, {} free, largest free range {} (fragmentation {:.1}%; the smallest largest-free-range \
             after any round: {}); {} evictions.",
            c.rounds,
            c.seconds,
            human_bytes(c.used_bytes),
            human_bytes(c.table_bytes),
            human_bytes(c.free_bytes),
            human_bytes(c.largest_free_bytes),
            c.fragmentation * 100.0,
            human_bytes(c.lowest_largest_free_bytes),
            c.evictions
        );
    }

    let _ = writeln!(s, "\n## Targets (defined for the post preset)\n");
    s += "| target | measured | met |\n|---|---|---|\n";
    for (what, got, met) in targets(raw) {
        let met = match met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "-",
        };
        let _ = writeln!(s, "| {what} | {got} | {met} |");
    }

    let _ = writeln!(s, "\n## Figures for `loadgen compare`\n");
    s += "| figure | value | gate | note |\n|---|---|---|---|\n";
    for f in &raw.figures {
        let gate = match (f.gated, f.tolerance) {
            (false, _) => "informational".to_owned(),
            (true, None) => "`--max-regression`".to_owned(),
            (true, Some(t)) => format!("at least -{:.0}%", t * 100.0),
        };
        let _ = writeln!(
            s,
            "| `{}` | {:.2} {} | {gate} | {} |",
            f.name, f.value, f.unit, f.note
        );
    }

    let _ = writeln!(s, "\n## Checks\n");
    for c in &raw.checks {
        let _ = writeln!(
            s,
            "- [{}] {}: {}",
            if c.passed { "x" } else { " " },
            c.name,
            c.detail
        );
    }

    let m = &raw.machine;
    let _ = writeln!(s, "\n## Machine\n");
    s += "| | |\n|---|---|\n";
    let _ = writeln!(s, "| host | {} |", m.host);
    let _ = writeln!(s, "| CPU | {} |", m.cpu_model);
    let _ = writeln!(s, "| cores | {} |", m.cores);
    let _ = writeln!(
        s,
        "| memory | {} total, {} available at start |",
        human_bytes(m.memory_total_bytes),
        human_bytes(m.memory_available_bytes)
    );
    let _ = writeln!(s, "| kernel | {} |", m.kernel);
    let _ = writeln!(
        s,
        "| hugepages | `vm.nr_hugepages` {} at start, {} while the server ran (loadgen `--hugepages {}`); \
         transparent hugepages for shmem: {} |",
        m.nr_hugepages, raw.server.nr_hugepages_during, raw.server.hugepages_setting, m.thp_shmem
    );
    let _ = writeln!(
        s,
        "| server | memory kind `{}`, io driver `{}`, {} threads, arena {}{} |",
        raw.server.memory_kind,
        raw.server.io_driver,
        raw.server.threads,
        human_bytes(raw.server.arena_bytes),
        if raw.server.external {
            " (external server)"
        } else {
            ""
        }
    );
    let _ = writeln!(s, "| rustc | {} |", m.rustc);
    let _ = writeln!(s, "| git commit | `{}` |", m.git_commit);
    let _ = writeln!(s, "| root | {} |", m.root);

    let t = &raw.table;
    let _ = writeln!(s, "\n## How it was measured\n");
    let _ = writeln!(
        s,
        "- Table: {} rows x {} columns, seed {}; Parquet {} (snappy, row groups of 1M rows), {} of Arrow arrays, \
         {} as an IPC file in the arena; {} batches. {}",
        raw.rows,
        raw.columns,
        raw.seed,
        human_bytes(t.parquet_bytes),
        human_bytes(t.arrow_bytes),
        human_bytes(t.ipc_bytes),
        t.batches,
        if t.generated { format!("Generated in {:.1} s.", t.generate_s) } else { "Parquet file from the cache.".into() }
    );
    let _ = writeln!(
        s,
        "- Repeats: one unrecorded warm-up run, then at least {} runs per operation, and more until 1 s has \
         passed; operations over 2 s get no warm-up and run at most 3 times. Times are medians (p50 of the \
         hdrhistogram, microseconds).",
        raw.repeats
    );
    let _ = writeln!(
        s,
        "- Parquet: arrow-rs `ArrowWriter` on one thread (no fsync); reads split row groups (or, with fewer row \
         groups than threads, columns) over {} threads. Read + scan reads all columns and sums `f64_0`.",
        raw.reader_threads
    );
    let _ = writeln!(
        s,
        "- Each Parquet operation runs alternately with its arrowpool counterpart (read, get, read, get...), so \
         both see the same moments of any other load on the machine. A get that follows a read pays the \
         server's wake-up from idle, as a callback after a pause does{}.",
        raw.timings.get("get_all_repeated").map_or(String::new(), |t| format!(
            "; back to back, a get of the whole table takes {} (p50)",
            human_s(t.p50_us as f64 / 1e6)
        ))
    );
    if let (Some(f), Some(g)) = (raw.timings.get("put_first"), raw.timings.get("put_second")) {
        let _ = writeln!(
            s,
            "- The first two puts land in pages the arena allocates for them ({} and {}, the second after \
             6 s, in which the server warms its range: `--warm-ahead`); the put row is the steady state, \
             alternating between ranges whose pages exist.",
            human_s(f.p50_us as f64 / 1e6),
            human_s(g.p50_us as f64 / 1e6)
        );
    }
    let _ = writeln!(s, "- Cold page cache: {}.", raw.cold_cache);
    if let Some(g) = &raw.get_scan {
        let _ = writeln!(
            s,
            "- get + scan runs on a fresh connection each time (connect not timed), so the scan of `{}` faults \
             its pages into a new mapping: {} minor faults per run (median).",
            g.scanned_column, g.minor_faults_p50
        );
    }
    if let Some(i) = &raw.ingest {
        let _ = writeln!(
            s,
            "- Ingest (server side, last run): reader `{}`, decode {:.0} ms, write {:.0} ms, total {:.0} ms.",
            i.reader, i.decode_ms, i.write_ms, i.total_ms
        );
    }
    for n in &raw.notes {
        let _ = writeln!(s, "- {n}");
    }
    s += "\nFiles: `raw.json` (every figure), `*.hgrm` (percentile distributions, microseconds), \
          `speedups.svg`, `latency.svg`.\n";
    s
}

/// The table printed at the end of a run.
pub fn print_table(raw: &Raw) {
    let w = raw
        .comparisons
        .iter()
        .map(|c| c.label.len())
        .max()
        .unwrap_or(10)
        .max(10);
    println!(
        "\n{:<w$}  {:>12}  {:>12}  {:>10}",
        "operation", "Parquet", "arrowpool", "speedup"
    );
    for c in &raw.comparisons {
        println!(
            "{:<w$}  {:>12}  {:>12}  {:>10}",
            c.label,
            human_s(c.baseline_s),
            human_s(c.candidate_s),
            format_speedup(c.speedup)
        );
    }
    for (name, t) in &raw.throughput {
        println!(
            "{name}: {:.0} ops/s, p50 {}, p99 {}, p99.9 {}",
            t.ops_per_s,
            human_s(t.latency.p50_us as f64 / 1e6),
            human_s(t.latency.p99_us as f64 / 1e6),
            human_s(t.latency.p999_us as f64 / 1e6)
        );
    }
    if let Some(t) = raw.timings.get("switch") {
        println!(
            "switch under the memory cap: p50 {}",
            human_s(t.p50_us as f64 / 1e6)
        );
    }
    let failed: Vec<_> = raw.checks.iter().filter(|c| !c.passed).collect();
    if failed.is_empty() {
        println!("checks: all {} passed", raw.checks.len());
    } else {
        for c in failed {
            println!("CHECK FAILED: {}: {}", c.name, c.detail);
        }
    }
}
