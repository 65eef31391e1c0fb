//! `loadgen compare BASE.json NEW.json --max-regression 15%`: the CI gate.
//!
//! Compares figures (speedup ratios and rates, higher is better), never raw
//! seconds: a slower CI machine slows both sides of a ratio. A gated figure
//! that dropped by more than the limit fails; a figure of BASE missing from
//! NEW fails; figures only in NEW are listed and accepted. Informational
//! figures (marked in BASE) are shown but never fail.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::results::Figure;

/// The part of raw.json the gate reads.
#[derive(Debug, Deserialize)]
struct FiguresOnly {
    figures: Vec<Figure>,
}

/// Reads the figures of a raw.json.
pub fn load(path: &Path) -> Result<Vec<Figure>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let f: FiguresOnly = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a loadgen raw.json", path.display()))?;
    Ok(f.figures)
}

/// Parses `15%`, `15` (percent) or `0.15` (fraction) into a fraction in [0, 1).
pub fn parse_regression(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (num, percent) = match t.strip_suffix('%') {
        Some(n) => (n, true),
        None => (t, false),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a percentage like 15%"))?;
    let fraction = if percent || v >= 1.0 { v / 100.0 } else { v };
    if !(0.0..1.0).contains(&fraction) {
        return Err(format!(
            "{s:?}: the allowed regression must be at least 0% and below 100%"
        ));
    }
    Ok(fraction)
}

#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Ok,
    Regressed,
    Missing,
    /// Only in NEW.
    Added,
    /// Not gated: shown only.
    Informational,
}

#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    /// The drop allowed for this figure.
    pub allowed: f64,
    pub base: Option<f64>,
    pub new: Option<f64>,
    pub unit: String,
    pub status: Status,
}

impl Row {
    /// Relative change, new / base - 1.
    pub fn change(&self) -> Option<f64> {
        match (self.base, self.new) {
            (Some(b), Some(n)) if b > 0.0 => Some(n / b - 1.0),
            _ => None,
        }
    }
}

/// The drop a figure of BASE may show: the limit, or its own wider tolerance.
pub fn allowed(base: &Figure, max_regression: f64) -> f64 {
    base.tolerance
        .map_or(max_regression, |t| t.clamp(0.0, 0.99).max(max_regression))
}

/// Compares NEW against BASE; the rows that fail have status Regressed or Missing.
pub fn compare(base: &[Figure], new: &[Figure], max_regression: f64) -> Vec<Row> {
    let mut rows = Vec::new();
    for b in base {
        let n = new.iter().find(|f| f.name == b.name);
        let status = match n {
            None => Status::Missing,
            Some(n) if !n.value.is_finite() => Status::Regressed,
            Some(_) if !b.gated => Status::Informational,
            Some(n) if n.value < b.value * (1.0 - allowed(b, max_regression)) => Status::Regressed,
            Some(_) => Status::Ok,
        };
        rows.push(Row {
            name: b.name.clone(),
            allowed: allowed(b, max_regression),
            base: Some(b.value),
            new: n.map(|f| f.value),
            unit: b.unit.clone(),
            status,
        });
    }
    for n in new {
        if !base.iter().any(|b| b.name == n.name) {
            rows.push(Row {
                name: n.name.clone(),
                allowed: max_regression,
                base: None,
                new: Some(n.value),
                unit: n.unit.clone(),
                status: Status::Added,
            });
        }
    }
    rows
}

/// Runs the gate: prints the comparison, returns the failure messages.
pub fn run(base: &Path, new: &Path, max_regression: f64) -> Result<Vec<String>> {
    let rows = compare(&load(base)?, &load(new)?, max_regression);
    let fmt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.4}"));
    let w = rows.iter().map(|r| r.name.len()).max().unwrap_or(6).max(6);
    println!(
        "{:<w$}  {:>14}  {:>14}  {:>8}  {:>7}  status",
        "figure", "base", "new", "change", "allowed"
    );
    let mut failures = Vec::new();
    for r in &rows {
        let change = r
            .change()
            .map_or("-".to_owned(), |c| format!("{:+.1}%", c * 100.0));
        let status = match r.status {
            Status::Ok => "ok",
            Status::Regressed => "REGRESSED",
            Status::Missing => "MISSING",
            Status::Added => "new",
            Status::Informational => "info (not gated)",
        };
        let allowed = format!("-{:.0}%", r.allowed * 100.0);
        println!(
            "{:<w$}  {:>14}  {:>14}  {:>8}  {allowed:>7}  {status}",
            r.name,
            fmt(r.base),
            fmt(r.new),
            change
        );
        match r.status {
            Status::Regressed => failures.push(format!(
                "{} regressed: {} -> {} {} ({change}; allowed {allowed})",
                r.name,
                fmt(r.base),
                fmt(r.new),
                r.unit
            )),
            Status::Missing => {
                failures.push(format!("{} is missing from {}", r.name, new.display()))
            }
            _ => {}
        }
    }
    Ok(failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fig(name: &str, value: f64, gated: bool) -> Figure {
        Figure {
            name: name.into(),
            value,
            unit: "x".into(),
            gated,
            tolerance: None,
            note: String::new(),
        }
    }

    #[test]
    fn a_figure_tolerance_widens_the_limit_never_narrows_it() {
        let mut noisy = fig("speedup.read_all", 1000.0, true);
        noisy.tolerance = Some(0.8);
        let rows = compare(
            std::slice::from_ref(&noisy),
            &[fig("speedup.read_all", 300.0, true)],
            0.15,
        );
        assert_eq!(
            rows[0].status,
            Status::Ok,
            "70% drop within the figure's 80%"
        );
        let rows = compare(
            std::slice::from_ref(&noisy),
            &[fig("speedup.read_all", 150.0, true)],
            0.15,
        );
        assert_eq!(rows[0].status, Status::Regressed, "85% drop");
        noisy.tolerance = Some(0.1);
        assert_eq!(allowed(&noisy, 0.5), 0.5);
    }

    #[test]
    fn regression_limits() {
        assert_eq!(parse_regression("15%"), Ok(0.15));
        assert_eq!(parse_regression("50%"), Ok(0.5));
        assert_eq!(parse_regression("0.2"), Ok(0.2));
        assert_eq!(parse_regression("20"), Ok(0.2));
        assert!(parse_regression("100%").is_err());
        assert!(parse_regression("-5%").is_err());
        assert!(parse_regression("abc").is_err());
    }

    #[test]
    fn gated_drop_beyond_the_limit_fails() {
        let base = [
            fig("speedup.read_all", 1000.0, true),
            fig("speedup.write", 20.0, true),
        ];
        let new = [
            fig("speedup.read_all", 840.0, true),
            fig("speedup.write", 30.0, true),
        ];
        let rows = compare(&base, &new, 0.15);
        assert_eq!(
            rows[0].status,
            Status::Regressed,
            "16% drop with a 15% limit"
        );
        assert_eq!(rows[1].status, Status::Ok, "improvements pass");
        let rows = compare(
            &base,
            &[
                fig("speedup.read_all", 860.0, true),
                fig("speedup.write", 20.0, true),
            ],
            0.15,
        );
        assert!(
            rows.iter().all(|r| r.status == Status::Ok),
            "14% drop passes"
        );
    }

    #[test]
    fn missing_fails_added_and_informational_pass() {
        let base = [
            fig("a", 10.0, true),
            fig("info", 100.0, false),
            fig("gone", 5.0, false),
        ];
        let new = [
            fig("a", 10.0, true),
            fig("info", 1.0, false),
            fig("extra", 1.0, true),
        ];
        let rows = compare(&base, &new, 0.15);
        let status = |n: &str| rows.iter().find(|r| r.name == n).unwrap().status.clone();
        assert_eq!(status("a"), Status::Ok);
        assert_eq!(
            status("info"),
            Status::Informational,
            "a 99% drop of an informational figure passes"
        );
        assert_eq!(
            status("gone"),
            Status::Missing,
            "every figure of BASE must be in NEW"
        );
        assert_eq!(status("extra"), Status::Added);
    }

    #[test]
    fn nan_is_a_regression() {
        let rows = compare(&[fig("a", 10.0, true)], &[fig("a", f64::NAN, true)], 0.5);
        assert_eq!(rows[0].status, Status::Regressed);
    }

    #[test]
    fn run_reads_files_and_names_failures() {
        let dir = std::env::temp_dir().join(format!("loadgen-compare-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, figs: &[Figure]| {
            let p = dir.join(name);
            let raw = crate::results::Raw {
                figures: figs.to_vec(),
                ..Default::default()
            };
            std::fs::write(&p, serde_json::to_string(&raw).unwrap()).unwrap();
            p
        };
        let base = write(
            "base.json",
            &[
                fig("speedup.get", 100.0, true),
                fig("speedup.put", 10.0, true),
            ],
        );
        let new = write("new.json", &[fig("speedup.get", 40.0, true)]);
        let failures = run(&base, &new, 0.5).unwrap();
        assert_eq!(failures.len(), 2);
        assert!(failures[0].starts_with("speedup.get regressed"));
        assert!(failures[1].starts_with("speedup.put is missing"));
        assert!(run(&base, &base, 0.15).unwrap().is_empty());
        std::fs::write(dir.join("bad.json"), "{}").unwrap();
        assert!(run(&dir.join("bad.json"), &base, 0.1).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
