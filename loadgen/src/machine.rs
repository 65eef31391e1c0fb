//! Facts about the machine recorded next to the numbers, and the check that it
//! is big enough before a run starts.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use arrowpool::util::human_bytes;

/// What the results folder says about where the numbers come from.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct MachineFacts {
    pub host: String,
    pub cpu_model: String,
    pub cores: usize,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub kernel: String,
    /// `/proc/sys/vm/nr_hugepages` when the run started.
    pub nr_hugepages: u64,
    /// `/sys/kernel/mm/transparent_hugepage/shmem_enabled`, the selected value.
    pub thp_shmem: String,
    pub rustc: String,
    pub git_commit: String,
    pub root: bool,
}

impl MachineFacts {
    pub fn collect() -> MachineFacts {
        let cpuinfo = read("/proc/cpuinfo");
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let thp = read("/sys/kernel/mm/transparent_hugepage/shmem_enabled");
        let thp_shmem = thp
            .split_whitespace()
            .find(|w| w.starts_with('['))
            .map(|w| w.trim_matches(|c| c == '[' || c == ']').to_owned())
            .unwrap_or_else(|| "unknown".into());
        MachineFacts {
            host: hostname(),
            cpu_model,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_total_bytes: meminfo("MemTotal").unwrap_or(0),
            memory_available_bytes: meminfo("MemAvailable").unwrap_or(0),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            nr_hugepages: read("/proc/sys/vm/nr_hugepages")
                .trim()
                .parse()
                .unwrap_or(0),
            thp_shmem,
            rustc: command_output("rustc", &["--version"]).unwrap_or_else(|| "unknown".into()),
            git_commit: git_commit(),
            root: rustix::process::geteuid().is_root(),
        }
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A `/proc/meminfo` field in bytes.
pub fn meminfo(field: &str) -> Option<u64> {
    let text = read("/proc/meminfo");
    let line = text.lines().find(|l| l.split(':').next() == Some(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub fn hostname() -> String {
    let h = read("/proc/sys/kernel/hostname").trim().to_owned();
    if h.is_empty() {
        "host".into()
    } else {
        h.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    }
}

fn command_output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `git rev-parse HEAD` of the source tree loadgen was built from (else of the
/// current directory), with `-dirty` when tracked files have changes.
pub fn git_commit() -> String {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = if source.join(".git").exists() {
        source
    } else {
        Path::new(".").to_path_buf()
    };
    let dir = dir.to_string_lossy().into_owned();
    let Some(head) = command_output("git", &["-C", &dir, "rev-parse", "HEAD"]) else {
        return "unknown".into();
    };
    let dirty = command_output(
        "git",
        &["-C", &dir, "status", "--porcelain", "--untracked-files=no"],
    )
    .is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{head}-dirty")
    } else {
        head
    }
}

/// Free bytes for an unprivileged writer on the filesystem holding `dir`.
pub fn disk_free_bytes(dir: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Memory and disk a run needs.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Requirement {
    pub memory_bytes: u64,
    pub disk_bytes: u64,
}

/// Refuses (with the numbers) when the machine has less than `need`.
pub fn check_resources(need: Requirement, data_dir: &Path, what: &str) -> Result<()> {
    let available = meminfo("MemAvailable").unwrap_or(u64::MAX);
    let free = disk_free_bytes(data_dir).unwrap_or(u64::MAX);
    let mut problems = Vec::new();
    if need.memory_bytes > available {
        problems.push(format!(
            "memory: needs about {}, MemAvailable is {}",
            human_bytes(need.memory_bytes),
            human_bytes(available)
        ));
    }
    if need.disk_bytes > free {
        problems.push(format!(
            "disk: needs about {} in {}, {} free",
            human_bytes(need.disk_bytes),
            data_dir.display(),
            human_bytes(free)
        ));
    }
    if !problems.is_empty() {
        bail!(
            "this machine is too small for {what}:\n  {}\nuse a smaller --preset/--rows/--columns, another --data-dir, \
             or --ignore-limits to try anyway",
            problems.join("\n  ")
        );
    }
    Ok(())
}

/// Today's date in UTC, `YYYY-MM-DD`, from the system clock.
pub fn utc_date() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// UTC date and time, `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let t = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        t / 3600,
        t / 60 % 60,
        t % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Minor page faults of this process so far (`/proc/self/stat`, field 10).
pub fn minor_faults() -> u64 {
    let stat = read("/proc/self/stat");
    // Fields after the command name, which may contain spaces, closed by ')'.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(7))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_000), (2024, 10, 4));
        assert_eq!(utc_date().len(), 10);
    }

    #[test]
    fn faults_are_counted() {
        let before = minor_faults();
        let v = vec![1u8; 64 << 20];
        let after = minor_faults();
        assert!(v.iter().step_by(4096).map(|&b| b as u64).sum::<u64>() > 0);
        assert!(
            after > before,
            "touching 64 MiB faults pages in ({before} -> {after})"
        );
    }

    #[test]
    fn resource_check_refuses_with_numbers() {
        let need = Requirement {
            memory_bytes: u64::MAX / 2,
            disk_bytes: 0,
        };
        let err = check_resources(need, Path::new("."), "test")
            .unwrap_err()
            .to_string();
        assert!(err.contains("memory: needs about"), "{err}");
        assert!(check_resources(
            Requirement {
                memory_bytes: 1,
                disk_bytes: 1
            },
            Path::new("."),
            "t"
        )
        .is_ok());
    }
}
