//! The one seeded generator of the tests and benchmarks (xorshift64): data
//! that is the same on every machine, without a dependency. The crate's
//! unit tests, its integration tests (`tests/support`) and `attune-bench`
//! all compile this file; each uses part of it.
#![allow(dead_code)]

/// A xorshift64 stream.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A stream for `seed` (any value, zero included).
    pub fn seeded(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// A stream from this exact (non-zero) state.
    pub fn from_state(state: u64) -> Self {
        Self(state)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Below `bound` (> 0).
    pub fn below(&mut self, bound: usize) -> usize {
        (self.next_u64() % bound as u64) as usize
    }

    /// Uniform in (0, 1), never exactly zero (a logarithm may take it).
    pub fn open_unit(&mut self) -> f32 {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64).max(1e-12) as f32
    }

    /// Uniform in [-0.5, 0.5).
    pub fn centred(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
}
