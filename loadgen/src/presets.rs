//! Presets (`--preset`) and the parsing of counts like `10M`.

use clap::ValueEnum;

/// Named workload sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// 100k rows x 12 columns: seconds; the CI gate.
    Smoke,
    /// 1M rows x 12 columns.
    Quick,
    /// 10M rows x 12 columns: the numbers quoted in the design.
    Post,
    /// 10M rows x 165 columns.
    Wide,
    /// 200M rows x 12 columns.
    Large,
    /// 200M rows x 165 columns.
    Max,
}

impl Preset {
    pub fn rows(self) -> u64 {
        match self {
            Preset::Smoke => 100_000,
            Preset::Quick => 1_000_000,
            Preset::Post | Preset::Wide => 10_000_000,
            Preset::Large | Preset::Max => 200_000_000,
        }
    }

    pub fn columns(self) -> usize {
        match self {
            Preset::Wide | Preset::Max => 165,
            _ => 12,
        }
    }

    /// Seconds each timed-duration scenario runs when `--duration` is not given.
    /// The smoke preset is the CI gate and must stay well under two minutes.
    pub fn default_duration_s(self) -> f64 {
        match self {
            Preset::Smoke => 2.0,
            _ => 5.0,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Preset::Smoke => "smoke",
            Preset::Quick => "quick",
            Preset::Post => "post",
            Preset::Wide => "wide",
            Preset::Large => "large",
            Preset::Max => "max",
        }
    }
}

/// Fewest and most columns a workload may have.
pub const COLUMNS_MIN: usize = 4;
pub const COLUMNS_MAX: usize = 165;

/// Parses a count: `100000`, `100k`, `10M`, `1.5M`, `2G`, `10_000_000`.
pub fn parse_count(s: &str) -> Result<u64, String> {
    let t = s.trim().replace('_', "");
    let (num, mult) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1_000f64),
        Some('m' | 'M') => (&t[..t.len() - 1], 1_000_000f64),
        Some('g' | 'G' | 'b' | 'B') => (&t[..t.len() - 1], 1_000_000_000f64),
        _ => (t.as_str(), 1f64),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a count like 100k, 10M or 200M"))?;
    let n = v * mult;
    if !(n >= 1.0 && n.is_finite() && n <= 1e12) || n.fract() != 0.0 {
        return Err(format!(
            "{s:?} must be a whole number of rows between 1 and 10^12"
        ));
    }
    Ok(n as u64)
}

/// Parses a column count and checks the supported range.
pub fn parse_columns(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of columns"))?;
    if !(COLUMNS_MIN..=COLUMNS_MAX).contains(&n) {
        return Err(format!(
            "--columns must be between {COLUMNS_MIN} and {COLUMNS_MAX}, got {n}"
        ));
    }
    Ok(n)
}

/// Writes a count the way it is parsed: `10M`, `100k`, `1234`.
pub fn format_count(n: u64) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1_000 && n.is_multiple_of(1_000) {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        assert_eq!(parse_count("10M"), Ok(10_000_000));
        assert_eq!(parse_count("200M"), Ok(200_000_000));
        assert_eq!(parse_count("100k"), Ok(100_000));
        assert_eq!(parse_count("1.5M"), Ok(1_500_000));
        assert_eq!(parse_count("10_000"), Ok(10_000));
        assert!(parse_count("0").is_err());
        assert!(parse_count("1.5").is_err());
        assert!(parse_count("ten").is_err());
        assert!(parse_count("-5k").is_err());
        assert_eq!(format_count(10_000_000), "10M");
        assert_eq!(format_count(100_000), "100k");
        assert_eq!(format_count(1234), "1234");
    }

    #[test]
    fn columns_range() {
        assert!(parse_columns("3").is_err());
        assert_eq!(parse_columns("4"), Ok(4));
        assert_eq!(parse_columns("165"), Ok(165));
        assert!(parse_columns("166").is_err());
    }
}
