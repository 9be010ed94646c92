//! Training the lab CNN: the loop behind `cargo lab train`.
//!
//! Training is gradient descent on the *weights*: predict `y_pred = f(x)`, measure
//! `loss = E(y_pred, y_true)` (cross-entropy), and move every weight against `dE/dw`. Notebook 03
//! keeps the weights fixed and moves the pixels instead.
//!
//! Candle's CPU random generator cannot be seeded, so the initial weights come from [`SeededRng`]
//! (SplitMix64): the same seed gives the same network, bit for bit, on the same machine.
//!
//! ```no_run
//! use lab_support::train::{train, TrainConfig};
//! let (model, report) = train(&TrainConfig { epochs: 1, ..TrainConfig::default() }, true)?;
//! println!("test accuracy {:.4} after {:.0} s", report.test_accuracy, report.seconds);
//! # Ok::<(), lab_support::LabError>(())
//! ```

use crate::data::{mnist, Dataset};
use crate::error::{LabError, Result};
use crate::model::{Classifier, PARAMETERS};
use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use std::collections::HashMap;
use std::time::Instant;

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

    /// A tensor of `shape` with entries uniform in `[lo, hi)`.
    pub fn uniform_tensor(&mut self, shape: &[usize], lo: f32, hi: f32) -> Result<Tensor> {
        let n = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| lo + (hi - lo) * self.uniform()).collect();
        Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
    }
}

/// Settings of a training run. `Default` is the run that produced the shipped weights.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    /// Adam's learning rate at the start; it decays linearly to a tenth of it by the end.
    pub learning_rate: f64,
    pub seed: u64,
    /// Train on only the first `limit` training images (for quick tests); `None` for all.
    pub limit: Option<usize>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig { epochs: 5, batch_size: 64, learning_rate: 1.5e-3, seed: 2024, limit: None }
    }
}

/// What a training run did.
#[derive(Clone, Debug)]
pub struct TrainReport {
    pub test_accuracy: f32,
    pub final_loss: f32,
    pub seconds: f64,
    pub steps: usize,
}

/// Fresh weights drawn from `seed`, like PyTorch's default: uniform in `±1/sqrt(fan_in)`.
pub fn initial_parameters(seed: u64) -> Result<HashMap<String, Tensor>> {
    let mut rng = SeededRng::new(seed);
    let mut out = HashMap::new();
    for (name, shape) in PARAMETERS {
        let fan_in: usize = match name {
            n if n.starts_with("conv1") => 9,
            n if n.starts_with("conv2") => 32 * 9,
            n if n.starts_with("fc1") => 1600,
            _ => 128,
        };
        let bound = 1.0 / (fan_in as f32).sqrt();
        out.insert(name.to_string(), rng.uniform_tensor(shape, -bound, bound)?);
    }
    Ok(out)
}

/// Trains the lab CNN on MNIST and reports its test accuracy. Shows a progress bar if `progress`.
pub fn train(config: &TrainConfig, progress: bool) -> Result<(Classifier, TrainReport)> {
    if config.epochs == 0 || config.batch_size == 0 {
        return Err(LabError::invalid("epochs/batch_size", format!("{}/{}", config.epochs, config.batch_size), "both at least 1"));
    }
    let mut train_set = mnist::train()?;
    if let Some(n) = config.limit {
        train_set = train_set.take(n)?;
    }
    let test_set = mnist::test()?;
    // The Vars come sorted, so the optimiser's state is laid out the same way on every run.
    let (model, vars) = Classifier::trainable(&initial_parameters(config.seed)?)?;
    let params = ParamsAdamW { lr: config.learning_rate, weight_decay: 0.0, ..Default::default() };
    let mut opt = AdamW::new(vars.iter().map(|(_, v)| v.clone()).collect(), params)?;

    let steps_per_epoch = train_set.len().div_ceil(config.batch_size);
    let total = steps_per_epoch * config.epochs;
    let bar = progress_bar(progress, total as u64);
    let mut rng = SeededRng::new(config.seed ^ 0x5eed);
    let start = Instant::now();
    let mut step = 0;
    let mut smoothed = f32::NAN;
    for epoch in 0..config.epochs {
        let order = rng.permutation(train_set.len());
        for chunk in order.chunks(config.batch_size) {
            let lr = config.learning_rate * (1.0 - 0.9 * step as f64 / total as f64);
            opt.set_learning_rate(lr);
            let loss = batch_loss(&model, &train_set, chunk)?;
            opt.backward_step(&loss)?;
            let l = loss.to_scalar::<f32>()?;
            smoothed = if smoothed.is_nan() { l } else { 0.98 * smoothed + 0.02 * l };
            step += 1;
            if let Some(bar) = &bar {
                bar.set_message(format!("epoch {}/{} loss {smoothed:.4}", epoch + 1, config.epochs));
                bar.inc(1);
                // Without a terminal (a log, a notebook) the bar is hidden: print a line every 5% instead.
                if bar.is_hidden() && step % (total / 20).max(1) == 0 {
                    println!("step {step}/{total}, epoch {}/{}, loss {smoothed:.4}, {:.0} s", epoch + 1, config.epochs, start.elapsed().as_secs_f64());
                }
            }
        }
    }
    if let Some(bar) = &bar {
        bar.finish_with_message(format!("loss {smoothed:.4}"));
    }
    let seconds = start.elapsed().as_secs_f64();
    let frozen = Classifier::from_tensors(vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().detach())).collect())?;
    let test_accuracy = frozen.accuracy(&test_set)?;
    Ok((frozen, TrainReport { test_accuracy, final_loss: smoothed, seconds, steps: step }))
}

fn batch_loss(model: &Classifier, set: &Dataset, indices: &[u32]) -> Result<Tensor> {
    let idx = Tensor::new(indices, &Device::Cpu)?;
    let x = set.images.index_select(&idx, 0)?;
    let y = set.labels.index_select(&idx, 0)?;
    Ok(candle_nn::loss::cross_entropy(&model.forward(&x)?, &y)?)
}

fn progress_bar(show: bool, len: u64) -> Option<indicatif::ProgressBar> {
    show.then(|| {
        let bar = indicatif::ProgressBar::new(len);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} steps, eta {eta} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_gives_the_same_weights() {
        let config = TrainConfig { epochs: 1, batch_size: 32, limit: Some(320), seed: 7, ..TrainConfig::default() };
        let (a, _) = train(&config, false).unwrap();
        let (b, _) = train(&config, false).unwrap();
        let (c, _) = train(&TrainConfig { seed: 8, ..config }, false).unwrap();
        for (name, ta) in a.parameters() {
            let diff = (ta - &b.parameters()[name]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert_eq!(diff, 0.0, "{name} differs between two runs with the same seed");
        }
        let moved = (&a.parameters()["fc2.weight"] - &c.parameters()["fc2.weight"]).unwrap().abs().unwrap().max_all().unwrap();
        assert!(moved.to_scalar::<f32>().unwrap() > 0.0, "a different seed should give different weights");
    }

    #[test]
    fn permutation_is_a_permutation() {
        let mut p = SeededRng::new(3).permutation(1000);
        p.sort();
        assert_eq!(p, (0..1000).collect::<Vec<u32>>());
    }
}
