//! The one random number generator of the workload: SplitMix64.
//!
//! Why not the `rand` crate: the generated tables are cached on disk and keyed
//! by their parameters, so the bytes must not change when a dependency changes
//! its algorithms. SplitMix64 is ten lines, fast, and fixed forever here.

/// SplitMix64's output function. A bijection on `u64`, so `mix(key ^ row)` is
/// unique per row (the unique-string columns rely on it).
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seeded stream of pseudo-random numbers.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    /// A stream that depends on every part of `key`, for per-column, per-batch streams.
    pub fn keyed(parts: &[u64]) -> SplitMix64 {
        let mut h = 0x6A09_E667_F3BC_C908u64;
        for &p in parts {
            h = mix(h ^ mix(p.wrapping_add(0x9E37_79B9_7F4A_7C15)));
        }
        SplitMix64::new(h)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.state)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; bias below 2^-64 * n).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in `[0, 1)` with 53 bits.
    pub fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_first_values() {
        // Reference values of SplitMix64 seeded with 0 (Vigna's splitmix64.c).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn below_stays_in_range() {
        let mut r = SplitMix64::new(7);
        for n in [1u64, 2, 3, 10, 1000] {
            for _ in 0..1000 {
                assert!(r.below(n) < n);
            }
        }
    }

    #[test]
    fn keyed_streams_differ() {
        let a = SplitMix64::keyed(&[1, 2, 3]).next_u64();
        let b = SplitMix64::keyed(&[1, 2, 4]).next_u64();
        let c = SplitMix64::keyed(&[1, 2, 3]).next_u64();
        assert_ne!(a, b);
        assert_eq!(a, c);
    }
}
