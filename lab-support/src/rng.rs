//! A seeded random generator: every random start, shuffle and noise image in the lab comes from
//! one, so a run is the same run every time (candle's own CPU generator cannot be seeded).
//!
//! ```
//! use lab_support::rng::SeededRng;
//! let (mut a, mut b) = (SeededRng::new(7), SeededRng::new(7));
//! assert_eq!(a.next_u64(), b.next_u64());
//! ```

use crate::error::Result;
use candle_core::{Device, Tensor};

/// A small seedable random generator (SplitMix64), for weights and shuffling.
#[derive(Clone, Debug)]
pub struct SeededRng(u64);

impl SeededRng {
    /// A generator whose whole stream is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        SeededRng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in `[-bound, bound)`.
    pub fn symmetric(&mut self, bound: f32) -> f32 {
        (2.0 * self.uniform() - 1.0) * bound
    }

    /// A random permutation of `0..n` (Fisher-Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<u32> {
        let mut v: Vec<u32> = (0..n as u32).collect();
        for i in (1..n).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
        v
    }

    /// Standard normal (Box-Muller, one draw per call).
    pub fn normal(&mut self) -> f32 {
        // 1 - uniform is in (0, 1]: its logarithm is finite.
        let (u1, u2) = (1.0 - self.uniform() as f64, self.uniform() as f64);
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }

    /// A tensor of `shape` with entries normal, mean 0 and standard deviation `sigma`.
    pub fn normal_tensor(&mut self, shape: &[usize], sigma: f32) -> Result<Tensor> {
        let n = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| sigma * self.normal()).collect();
        Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
    }

    /// A tensor of `shape` with entries uniform in `[lo, hi)`.
    pub fn uniform_tensor(&mut self, shape: &[usize], lo: f32, hi: f32) -> Result<Tensor> {
        let n = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| lo + (hi - lo) * self.uniform()).collect();
        Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
    }
}
