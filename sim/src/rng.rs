//! The simulation's only source of randomness.
//!
//! SplitMix64 (Steele, Lea & Flood 2014), written here rather than taken from
//! `rand`: a seed must mean the same run on every machine and every Rust
//! release, and `StdRng` reserves the right to change its algorithm. All
//! draws are integer arithmetic (no `ln`/`exp`, whose last bits vary between
//! libms), so a trace hash is portable.

use std::fmt;

/// A probability in parts per million, so seeds and printouts stay integral.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ppm(pub u32);

impl Ppm {
    pub const NEVER: Self = Self(0);
    pub const ALWAYS: Self = Self(1_000_000);

    /// `n * self`, rounded down.
    #[must_use]
    pub fn of(self, n: u64) -> u64 {
        n * u64::from(self.0) / 1_000_000
    }
}

impl fmt::Display for Ppm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}%", self.0 / 10_000, (self.0 % 10_000) / 100)
    }
}

/// The SplitMix64 output function: a strong 64-bit mixer.
#[must_use]
pub const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seeded SplitMix64 generator.
#[derive(Clone, Debug)]
pub struct SimRng {
    state: u64,
}

impl SimRng {
    const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

    #[must_use]
    pub const fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// An independent stream of `seed` for one concern (`"params"`,
    /// `"network"`, …), so extra draws in one concern never shift another's.
    #[must_use]
    pub fn stream(seed: u64, concern: &str) -> Self {
        Self::new(mix64(seed ^ crate::trace::fnv1a(concern.as_bytes())))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(Self::GAMMA);
        mix64(self.state)
    }

    /// Uniform in `0..bound` (Lemire's multiply-high; the bias is below 2^-32
    /// for the bounds used here). `bound` must be positive.
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "SimRng::below(0)");
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi, "SimRng::between({lo}, {hi})");
        if hi - lo == u64::MAX {
            return self.next_u64();
        }
        lo + self.below(hi - lo + 1)
    }

    /// Uniform in `lo..=hi` for `u32`s.
    pub fn between_u32(&mut self, lo: u32, hi: u32) -> u32 {
        u32::try_from(self.between(u64::from(lo), u64::from(hi))).expect("between(lo, hi) <= hi")
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: Ppm) -> bool {
        self.below(1_000_000) < u64::from(p.0)
    }

    /// A value around `mean`: uniform in `mean/2 ..= mean*3/2` (at least 1).
    pub fn around(&mut self, mean: u64) -> u64 {
        let mean = mean.max(1);
        self.between(mean / 2, mean + mean / 2).max(1)
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        let i = self.below(items.len() as u64);
        &items[usize::try_from(i).expect("index below a slice length")]
    }

    /// Index chosen with probability proportional to `weights[i]`; `None` if all are zero.
    pub fn weighted(&mut self, weights: &[u32]) -> Option<usize> {
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        if total == 0 {
            return None;
        }
        let mut roll = self.below(total);
        for (i, &w) in weights.iter().enumerate() {
            if roll < u64::from(w) {
                return Some(i);
            }
            roll -= u64::from(w);
        }
        None
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_reference_values() {
        // First outputs for seed 1234567 from the reference C implementation.
        let mut rng = SimRng::new(1_234_567);
        assert_eq!(rng.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(rng.next_u64(), 3_203_168_211_198_807_973);
        assert_eq!(rng.next_u64(), 9_817_491_932_198_370_423);
    }

    #[test]
    fn ranges_hold() {
        let mut rng = SimRng::new(7);
        for _ in 0..10_000 {
            let x = rng.between(3, 9);
            assert!((3..=9).contains(&x));
            assert!(rng.below(5) < 5);
            let a = rng.around(10);
            assert!((5..=15).contains(&a));
        }
        assert_eq!(rng.weighted(&[0, 0]), None);
        assert_eq!(rng.weighted(&[0, 5]), Some(1));
        assert!(!rng.chance(Ppm::NEVER));
        assert!(rng.chance(Ppm::ALWAYS));
        assert_eq!(Ppm(125_000).to_string(), "12.50%");
    }
}
