//! Small helpers shared by the binaries and the library: byte sizes, thread
//! placement.

/// Formats a byte count for people: `1.5 GiB`, `300.0 MiB`, `512 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Parses sizes like `512M`, `2G`, `1.5GiB`, `1048576`. Suffixes are powers of 1024.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}; use e.g. 512M or 2G"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("unknown size unit in {s:?}; use K, M, G or T")),
    };
    let v = num * mult as f64;
    if !(v.is_finite() && v >= 0.0 && v < u64::MAX as f64) {
        return Err(format!("size {s:?} out of range"));
    }
    Ok(v as u64)
}

/// Lets the calling thread (and the threads it spawns, which inherit its mask)
/// run on every core the process may use. Server threads are pinned to one
/// core each; work they hand to helper threads (ingest decoders, the seal-time
/// check of a large table) would otherwise all share that core (and
/// `available_parallelism`, which reads the calling thread's mask, would say 1).
pub fn unpin_current_thread() {
    let process = rustix::process::getpid();
    if let Ok(all) = rustix::thread::sched_getaffinity(Some(process)) {
        let _ = rustix::thread::sched_setaffinity(None, &all);
    }
}

/// The message of a panic payload (`catch_unwind`'s error, a panic hook's
/// `payload()`), or "unknown".
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_bytes("2G").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("512M").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert!(parse_bytes("2X").is_err());
        assert!(parse_bytes("").is_err());
    }

    #[test]
    fn formats_sizes() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
    }
}
