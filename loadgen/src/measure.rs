//! Timings: hdrhistogram in microseconds, the repeat policy, the `.hgrm` text.

use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency a histogram records: one hour, in microseconds.
const HIGHEST_US: u64 = 3_600_000_000;
/// After its `repeats` runs, an operation keeps running until this much time
/// has passed in total (medians of a handful of microsecond samples are noise).
const BUDGET: Duration = Duration::from_secs(1);
const SAMPLES_MAX: usize = 1000;
/// An operation whose first run is faster than this gets that run as an
/// unrecorded warm-up (first-touch page faults, cold caches of a fresh name).
pub const WARM_UP_BELOW: Duration = Duration::from_secs(2);
/// An operation slower than this is repeated at most `SLOW_REPEATS` times.
pub const SLOW: Duration = Duration::from_secs(2);
const SLOW_REPEATS: usize = 3;

/// A new latency histogram (microseconds, 3 significant digits).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_US, 3).expect("static histogram bounds are valid")
}

/// Microseconds of a duration, at least 1 (the histogram's lowest value).
pub fn us(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

/// The samples of one timed operation.
#[derive(Debug, Clone)]
pub struct Timing {
    pub name: String,
    pub hist: Histogram<u64>,
    pub samples_us: Vec<u64>,
}

impl Timing {
    pub fn new(name: &str) -> Timing {
        Timing {
            name: name.to_owned(),
            hist: histogram(),
            samples_us: Vec::new(),
        }
    }

    pub fn record(&mut self, d: Duration) {
        let v = us(d);
        self.hist.saturating_record(v);
        self.samples_us.push(v);
    }

    pub fn count(&self) -> usize {
        self.samples_us.len()
    }

    pub fn summary(&self) -> TimingSummary {
        TimingSummary::of(&self.hist, Some(self.samples_us.clone()))
    }
}

/// Percentiles of a histogram, as written to raw.json (microseconds).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TimingSummary {
    pub count: u64,
    pub min_us: u64,
    pub p50_us: u64,
    pub mean_us: f64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub samples_us: Option<Vec<u64>>,
}

impl TimingSummary {
    pub fn of(h: &Histogram<u64>, samples_us: Option<Vec<u64>>) -> TimingSummary {
        TimingSummary {
            count: h.len(),
            min_us: h.min(),
            p50_us: h.value_at_quantile(0.5),
            mean_us: (h.mean() * 10.0).round() / 10.0,
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            samples_us,
        }
    }
}

/// The repeat policy: one unrecorded warm-up run (unless the first run took
/// over 2 s), then at least `repeats` runs, and more until 1 s has passed;
/// operations over 2 s run at most 3 times in all.
#[derive(Debug, Clone, Copy)]
pub struct Sampler {
    pub repeats: usize,
}

impl Sampler {
    /// Runs `f` (which returns the time of the part it measures) per the policy.
    pub fn sample(&self, name: &str, mut f: impl FnMut() -> Result<Duration>) -> Result<Timing> {
        let pb = crate::progress::spinner(format!("{name}: first run"));
        let start = Instant::now();
        let first = f()?;
        let slow = first > SLOW;
        let target = if slow {
            self.repeats.min(SLOW_REPEATS)
        } else {
            self.repeats
        }
        .max(1);
        let mut t = Timing::new(name);
        if first >= WARM_UP_BELOW {
            t.record(first);
        }
        while t.count() < target || (!slow && t.count() < SAMPLES_MAX && start.elapsed() < BUDGET) {
            pb.set_message(format!("{name}: run {} of {target}+", t.count() + 1));
            t.record(f()?);
        }
        pb.finish_and_clear();
        Ok(t)
    }
}

impl Sampler {
    /// Runs two operations alternately (a, b, a, b...) per the same policy, so
    /// that both see the same moments of the machine's other load: a ratio of
    /// their medians moves less than one of two separate phases. Each side keeps
    /// its own count: the fast side of a slow pair still gets `repeats` runs.
    pub fn sample_pair(
        &self,
        (name_a, mut a): (&str, impl FnMut() -> Result<Duration>),
        (name_b, mut b): (&str, impl FnMut() -> Result<Duration>),
    ) -> Result<(Timing, Timing)> {
        let pb = crate::progress::spinner(format!("{name_a} / {name_b}: first runs"));
        let start = Instant::now();
        let (first_a, first_b) = (a()?, b()?);
        let target = |first: Duration| {
            if first > SLOW {
                self.repeats.min(SLOW_REPEATS)
            } else {
                self.repeats
            }
            .max(1)
        };
        let (target_a, target_b) = (target(first_a), target(first_b));
        let (mut ta, mut tb) = (Timing::new(name_a), Timing::new(name_b));
        if first_a >= WARM_UP_BELOW {
            ta.record(first_a);
        }
        if first_b >= WARM_UP_BELOW {
            tb.record(first_b);
        }
        let budget = 2 * BUDGET;
        loop {
            let more = start.elapsed() < budget;
            let need = |t: &Timing, target: usize, first: Duration| {
                t.count() < target || (more && first <= SLOW && t.count() < SAMPLES_MAX)
            };
            let (need_a, need_b) = (need(&ta, target_a, first_a), need(&tb, target_b, first_b));
            if !need_a && !need_b {
                break;
            }
            pb.set_message(format!(
                "{name_a} / {name_b}: run {}",
                ta.count().min(tb.count()) + 1
            ));
            if need_a {
                ta.record(a()?);
            }
            if need_b {
                tb.record(b()?);
            }
        }
        pb.finish_and_clear();
        Ok((ta, tb))
    }
}

/// The percentile distribution in HdrHistogram's text format (the `.hgrm`
/// files plotters read), values in microseconds.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    if h.is_empty() {
        out.push_str("#[Mean    =        0.000, StdDeviation   =        0.000]\n");
        out.push_str("#[Max     =        0.000, Total count    =            0]\n");
        return out;
    }
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        if q < 1.0 {
            out.push_str(&format!(
                "{:12.3} {:2.12} {:10} {:14.2}\n",
                v.value_iterated_to() as f64,
                q,
                total,
                1.0 / (1.0 - q)
            ));
        } else {
            out.push_str(&format!(
                "{:12.3} {:2.12} {:10}\n",
                v.value_iterated_to() as f64,
                q,
                total
            ));
        }
    }
    out.push_str(&format!(
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]\n",
        h.mean(),
        h.stdev()
    ));
    out.push_str(&format!(
        "#[Max     = {:12.3}, Total count    = {:12}]\n",
        h.max() as f64,
        h.len()
    ));
    out.push_str(&format!(
        "#[Buckets = {:12}, SubBuckets     = {:12}]\n",
        h.buckets(),
        h.distinct_values()
    ));
    out
}

/// Human duration: `85 µs`, `12.3 ms`, `4.12 s`.
pub fn human_s(s: f64) -> String {
    if s < 1e-3 {
        format!("{:.0} µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_operations_get_more_samples_and_a_warm_up() {
        let mut calls = 0;
        let t = Sampler { repeats: 3 }
            .sample("fast", || {
                calls += 1;
                Ok(Duration::from_micros(50))
            })
            .unwrap();
        assert!(t.count() > 3);
        assert_eq!(calls, t.count() + 1, "the first run is a warm-up");
        assert_eq!(t.summary().p50_us, 50);
    }

    #[test]
    fn slow_operations_are_capped() {
        let mut calls = 0;
        let t = Sampler { repeats: 5 }
            .sample("slow", || {
                calls += 1;
                Ok(Duration::from_secs(3))
            })
            .unwrap();
        assert_eq!((t.count(), calls), (3, 3), "no warm-up, at most 3 runs");
        // Runs that take longer than the budget in real time stop at `repeats`.
        let t = Sampler { repeats: 2 }
            .sample("mid", || {
                std::thread::sleep(Duration::from_millis(600));
                Ok(Duration::from_millis(600))
            })
            .unwrap();
        assert_eq!(t.count(), 2);
    }

    #[test]
    fn pairs_alternate_and_share_the_policy() {
        let order = std::cell::RefCell::new(String::new());
        let (a, b) = Sampler { repeats: 3 }
            .sample_pair(
                ("a", || {
                    order.borrow_mut().push('a');
                    Ok(Duration::from_secs(3))
                }),
                ("b", || {
                    order.borrow_mut().push('b');
                    Ok(Duration::from_micros(10))
                }),
            )
            .unwrap();
        // The slow side's first run counts and it stops at 3; the fast side's
        // first run is a warm-up and it keeps going within the budget.
        let order = order.borrow();
        assert!(order.starts_with("abababb"), "{}", &order[..10]);
        assert_eq!(order.matches('a').count(), 3);
        assert_eq!(a.count(), 3);
        assert!(b.count() > 3);
        assert_eq!(b.count() + 1, order.matches('b').count());
    }

    #[test]
    fn hgrm_ends_at_the_maximum() {
        let mut h = histogram();
        for v in 1..=1000 {
            h.record(v).unwrap();
        }
        let text = hgrm(&h);
        let last = text
            .lines()
            .rfind(|l| !l.starts_with('#') && !l.trim().is_empty())
            .unwrap();
        assert!(last.contains("1.000000000000"), "{last}");
        assert!(last.trim_end().ends_with("1000"), "{last}");
        assert!(text.contains("Total count    =         1000"));
    }
}
