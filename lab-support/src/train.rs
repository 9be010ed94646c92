//! Training the lab CNN: the loop behind `cargo lab train`.
//!
//! Training is gradient descent on the *weights*: predict `y_pred = f(x)`, measure
//! `loss = E(y_pred, y_true)` (cross-entropy), and move every weight against `dE/dw`. Notebook 03
//! keeps the weights fixed and moves the pixels instead.
//!
//! Adversarial training ([`AdversarialTraining`]) plays both games at once: each batch is first
//! attacked with PGD against the current weights (the inner max over the input), and the weight
//! step is taken on the attacked batch (the outer min over the weights), as in Madry et al. 2018.
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

use crate::attack::{pgd_untraced, Norm, PgdConfig};
use crate::data::{mnist, Dataset};
use crate::error::{LabError, Result};
use crate::evaluation::{worst_case_sweep, Evaluation};
use crate::grad::Objective;
use crate::model::{Classifier, PARAMETERS};
use crate::rng::SeededRng;
use candle_core::{Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

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
    /// Attack every batch before the weight step (adversarial training); `None` for plain training.
    pub adversarial: Option<AdversarialTraining>,
    /// Train for certificates (interval bound propagation) instead; `None` for plain training.
    pub certified: Option<CertifiedTraining>,
    /// Add Gaussian noise of this standard deviation to every training batch (a base model for
    /// randomized smoothing, see [`crate::smoothing`]); `None` for clean batches.
    pub noise: Option<f32>,
    /// Save the weights here after every epoch (to look at a long run before it ends).
    pub checkpoint: Option<PathBuf>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 5,
            batch_size: 64,
            learning_rate: 1.5e-3,
            seed: 2024,
            limit: None,
            adversarial: None,
            certified: None,
            noise: None,
            checkpoint: None,
        }
    }
}

/// The inner attack of adversarial training: untargeted L-inf PGD from a random start, against the
/// current weights, on every batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdversarialTraining {
    /// The budget trained for.
    pub eps: f32,
    /// PGD steps per batch; 1 is FGSM from a random start ("Fast is better than free").
    pub steps: usize,
    /// Step size as a fraction of the current eps (Madry et al.: 2.5 / steps; FGSM-RS: 1.25).
    pub step_ratio: f32,
    /// The budget grows linearly from 0 to `eps` over this many epochs; a network attacked at
    /// full strength from its first step often never learns at all.
    pub ramp_epochs: f32,
}

impl AdversarialTraining {
    /// The recipe of the shipped robust model.
    pub fn shipped() -> Self {
        AdversarialTraining { eps: 0.3, steps: 7, step_ratio: 0.3, ramp_epochs: 2.0 }
    }

    /// The PGD the inner maximisation runs at budget `eps`, from random start `seed`.
    pub fn attack(&self, eps: f32, seed: u64) -> PgdConfig {
        PgdConfig {
            eps,
            step_size: self.step_ratio * eps,
            steps: self.steps,
            random_start: Some(seed),
            ..PgdConfig::linf(eps)
        }
    }
}

/// Training for certificates: interval bound propagation (IBP, Gowal et al. 2018). The loss mixes
/// the clean cross-entropy with the cross-entropy of the worst-case margins that IBP proves over
/// the box of radius `train_eps` around each digit:
/// `kappa * CE(clean) + (1 - kappa) * CE(-margin lower bounds)`.
///
/// A network is trained clean for `warmup_epochs`; then, over `ramp_epochs`, the box grows from 0
/// to `train_eps` and `kappa` falls from 1 to `kappa`. Bounds through a network that was never
/// asked to keep them tight are useless, and the worst case at full size from the first step
/// teaches nothing: the schedule is most of the method.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CertifiedTraining {
    /// The budget to certify (watched on the held-out digits).
    pub eps: f32,
    /// The box trained at, usually a little larger than `eps` (Gowal et al.: 0.4 for 0.3).
    pub train_eps: f32,
    /// The weight of the clean loss once the ramp is over.
    pub kappa: f32,
    /// Clean epochs first.
    pub warmup_epochs: f32,
    /// Epochs over which the box and the weight grow to their final values.
    pub ramp_epochs: f32,
}

impl CertifiedTraining {
    /// The recipe of the shipped certified model.
    pub fn shipped() -> Self {
        CertifiedTraining { eps: 0.3, train_eps: 0.4, kappa: 0.5, warmup_epochs: 1.0, ramp_epochs: 10.0 }
    }

    /// The box and the clean loss's weight at `epoch` (fractional).
    pub fn schedule(&self, epoch: f32) -> (f32, f32) {
        let t = if self.ramp_epochs <= 0.0 {
            if epoch >= self.warmup_epochs {
                1.0
            } else {
                0.0
            }
        } else {
            ((epoch - self.warmup_epochs) / self.ramp_epochs).clamp(0.0, 1.0)
        };
        (t * self.train_eps, 1.0 - t * (1.0 - self.kappa))
    }

    fn validate(&self) -> Result<()> {
        crate::validate::check_eps(self.eps)?;
        crate::validate::check_eps(self.train_eps)?;
        let ok = |v: f32| v.is_finite() && v >= 0.0;
        if !(ok(self.warmup_epochs) && ok(self.ramp_epochs) && (0.0..=1.0).contains(&self.kappa)) {
            return Err(LabError::invalid(
                "certified",
                format!("{self:?}"),
                "kappa in [0, 1], warmup_epochs and ramp_epochs >= 0",
            ));
        }
        Ok(())
    }
}

/// One look at the validation digits during training.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Validation {
    pub step: usize,
    pub seconds: f64,
    /// The budget trained at, at that step.
    pub eps: f32,
    pub clean: f32,
    /// Accuracy under PGD-10 at the full budget (adversarial training), or certified accuracy at
    /// the budget (certified training).
    pub robust: Option<f32>,
}

/// What a training run did.
#[derive(Clone, Debug)]
pub struct TrainReport {
    pub test_accuracy: f32,
    pub final_loss: f32,
    pub seconds: f64,
    pub steps: usize,
    /// Validation accuracy through training (adversarial training only; 1,000 held-out digits).
    pub history: Vec<Validation>,
    /// Why training stopped early, if it did.
    pub stopped_early: Option<String>,
}

/// Digits held out of adversarial training to watch robust accuracy on.
const VALIDATION: usize = 1000;
/// Validation looks per run.
const LOOKS: usize = 20;

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
///
/// With `config.adversarial`, every batch is attacked first and the last 1,000 training digits
/// are held out to watch clean and robust accuracy (PGD-10) as training goes. If robust accuracy
/// collapses (catastrophic overfitting, the failure of one-step training), training stops and
/// keeps the weights of the best look.
pub fn train(config: &TrainConfig, progress: bool) -> Result<(Classifier, TrainReport)> {
    train_on(&mnist::train()?, config, progress)
}

/// [`train`] on a set of your own instead of MNIST's 60,000 training digits: a substitute model
/// trained on a black box's answers ([`crate::blackbox::BlackBox::label`]), say. The test accuracy
/// is still measured on MNIST's test digits, against their true labels.
pub fn train_on(set: &Dataset, config: &TrainConfig, progress: bool) -> Result<(Classifier, TrainReport)> {
    if config.epochs == 0 || config.batch_size == 0 {
        return Err(LabError::invalid(
            "epochs/batch_size",
            format!("{}/{}", config.epochs, config.batch_size),
            "both at least 1",
        ));
    }
    crate::validate::check_batch(&set.images, "the training images")?;
    crate::grad::Objective::untargeted(&set.labels)?;
    if set.labels.dims() != [set.len()] {
        return Err(LabError::Shape {
            what: "the training labels".into(),
            expected: format!("[{}], one class per image", set.len()),
            got: set.labels.dims().to_vec(),
        });
    }
    let mut train_set = set.clone();
    if config.adversarial.is_some() && config.certified.is_some() {
        return Err(LabError::invalid("adversarial/certified", "both", "one of the two, or neither"));
    }
    if let Some(c) = &config.certified {
        c.validate()?;
    }
    if let Some(sigma) = config.noise {
        if !(sigma.is_finite() && sigma > 0.0) || config.adversarial.is_some() || config.certified.is_some() {
            return Err(LabError::invalid(
                "noise",
                sigma,
                "a finite sigma > 0, without adversarial or certified training",
            ));
        }
    }
    let watched = config.adversarial.is_some() || config.certified.is_some();
    if watched && train_set.len() <= VALIDATION {
        return Err(LabError::invalid(
            "set",
            format!("{} digits", train_set.len()),
            format!("more than {VALIDATION} for adversarial or certified training: that many are held out to watch it"),
        ));
    }
    let mut validation = None;
    if let Some(adv) = &config.adversarial {
        crate::validate::check_eps(adv.eps)?;
        crate::validate::check_steps(adv.steps)?;
        if adv.steps == 0
            || !(adv.step_ratio.is_finite() && adv.step_ratio > 0.0)
            || adv.ramp_epochs.is_nan()
            || adv.ramp_epochs < 0.0
        {
            return Err(LabError::invalid(
                "adversarial",
                format!("{adv:?}"),
                "at least 1 step, a step_ratio > 0 and ramp_epochs >= 0",
            ));
        }
    }
    if watched {
        let keep = train_set.len() - VALIDATION;
        validation = Some(train_set.slice(keep, VALIDATION)?);
        train_set = train_set.take(keep)?;
    }
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
    let (mut step, mut smoothed, mut look) = (0, f32::NAN, String::new());
    let (mut history, mut best, mut stopped_early) = (Vec::new(), None::<(f32, HashMap<String, Tensor>)>, None);
    'epochs: for epoch in 0..config.epochs {
        let order = rng.permutation(train_set.len());
        for chunk in order.chunks(config.batch_size) {
            let lr = config.learning_rate * (1.0 - 0.9 * step as f64 / total as f64);
            opt.set_learning_rate(lr);
            let mut eps = current_eps(config, step, steps_per_epoch);
            let (x, y) = batch(&train_set, chunk)?;
            let x = match config.noise {
                // Not clamped: the smoothed classifier adds the same unclamped noise.
                Some(sigma) => (&x + rng.normal_tensor(x.dims(), sigma)?)?,
                None => x,
            };
            let x = match &config.adversarial {
                Some(adv) if eps > 0.0 => attack_batch(&model.frozen(), &x, &y, adv, eps, rng.next_u64())?,
                _ => x,
            };
            let mut loss = candle_nn::loss::cross_entropy(&model.forward(&x)?, &y)?;
            if let Some(c) = &config.certified {
                let (box_eps, kappa) = c.schedule(step as f32 / steps_per_epoch as f32);
                eps = box_eps;
                if box_eps > 0.0 {
                    let worst = crate::certify::worst_case_loss(&model, &x, &y, box_eps)?;
                    loss = ((loss * kappa as f64)? + (worst * (1.0 - kappa) as f64)?)?;
                }
            }
            opt.backward_step(&loss)?;
            let l = loss.to_scalar::<f32>()?;
            smoothed = if smoothed.is_nan() { l } else { 0.98 * smoothed + 0.02 * l };
            step += 1;
            let last = step == total;
            if let (Some(val), Some(c)) = (&validation, &config.certified) {
                if step % (total / LOOKS).max(1) == 0 || last {
                    let frozen = model.frozen();
                    let certified = crate::certify::certified_accuracy(&frozen, val, c.eps)?;
                    let v = Validation {
                        step,
                        seconds: start.elapsed().as_secs_f64(),
                        eps,
                        clean: frozen.accuracy(val)?,
                        robust: Some(certified),
                    };
                    look = format!(
                        " | held out: clean {:.1}%, certified at {} {:.1}%",
                        100.0 * v.clean,
                        c.eps,
                        100.0 * certified
                    );
                    history.push(v);
                }
            }
            if let (Some(val), Some(adv)) = (&validation, &config.adversarial) {
                if step % (total / LOOKS).max(1) == 0 || last {
                    let v = validate(&model.frozen(), val, adv, step, eps, start.elapsed().as_secs_f64())?;
                    let robust = v.robust.unwrap_or(0.0);
                    look = format!(
                        " | held out: clean {:.1}%, PGD-10 at {} {:.1}%",
                        100.0 * v.clean,
                        adv.eps,
                        100.0 * robust
                    );
                    history.push(v);
                    // Only once the budget is at full strength do looks compare.
                    if eps >= adv.eps {
                        if best.as_ref().is_some_and(|(b, _)| robust < b - 0.2) {
                            stopped_early = Some(format!(
                                "robust accuracy on the held-out digits fell from {:.1}% to {:.1}% at step {step} (catastrophic overfitting); kept the weights of the best look",
                                100.0 * best.as_ref().map_or(0.0, |b| b.0),
                                100.0 * robust
                            ));
                            break 'epochs;
                        }
                        if best.as_ref().is_none_or(|(b, _)| robust >= *b) {
                            best = Some((robust, snapshot(&vars)));
                        }
                    }
                }
            }
            if let Some(bar) = &bar {
                bar.set_message(format!("epoch {}/{} loss {smoothed:.4}{look}", epoch + 1, config.epochs));
                bar.inc(1);
                // Without a terminal (a log, a notebook) the bar is hidden: print a line every 5% instead.
                if bar.is_hidden() && step % (total / 20).max(1) == 0 {
                    println!(
                        "step {step}/{total}, epoch {}/{}, loss {smoothed:.4}{look}, {:.0} s",
                        epoch + 1,
                        config.epochs,
                        start.elapsed().as_secs_f64()
                    );
                }
            }
        }
        if let Some(path) = &config.checkpoint {
            model.frozen().save(path)?;
        }
    }
    if let Some(bar) = &bar {
        bar.finish_with_message(format!("loss {smoothed:.4}{look}"));
    }
    let seconds = start.elapsed().as_secs_f64();
    let frozen = match (&stopped_early, best) {
        (Some(_), Some((_, weights))) => Classifier::from_tensors(weights)?,
        _ => model.frozen(),
    };
    let test_accuracy = frozen.accuracy(&test_set)?;
    Ok((frozen, TrainReport { test_accuracy, final_loss: smoothed, seconds, steps: step, history, stopped_early }))
}

/// The budget of adversarial training at `step`: a linear ramp from 0 over `ramp_epochs`.
fn current_eps(config: &TrainConfig, step: usize, steps_per_epoch: usize) -> f32 {
    match &config.adversarial {
        None => 0.0,
        Some(adv) if adv.ramp_epochs <= 0.0 => adv.eps,
        Some(adv) => adv.eps * (step as f32 / (adv.ramp_epochs * steps_per_epoch as f32)).min(1.0),
    }
}

/// The inner maximisation: untargeted PGD on the batch against frozen weights.
pub fn attack_batch(
    frozen: &Classifier,
    x: &Tensor,
    y: &Tensor,
    adv: &AdversarialTraining,
    eps: f32,
    seed: u64,
) -> Result<Tensor> {
    pgd_untraced(frozen, x, &Objective::untargeted(y)?, &adv.attack(eps, seed))
}

/// A copy of the current weights.
fn snapshot(vars: &[(String, Var)]) -> HashMap<String, Tensor> {
    vars.iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().copy().map(|t| t.detach()).unwrap_or_else(|_| v.as_tensor().detach())))
        .collect()
}

fn validate(
    model: &Classifier,
    set: &Dataset,
    adv: &AdversarialTraining,
    step: usize,
    eps: f32,
    seconds: f64,
) -> Result<Validation> {
    let clean = model.accuracy(set)?;
    let robust = worst_case_sweep(model, set, Norm::Linf, &[adv.eps], &Evaluation::quick(10))?[0].accuracy;
    Ok(Validation { step, seconds, eps, clean, robust: Some(robust) })
}

fn batch(set: &Dataset, indices: &[u32]) -> Result<(Tensor, Tensor)> {
    let idx = Tensor::new(indices, &Device::Cpu)?;
    Ok((set.images.index_select(&idx, 0)?, set.labels.index_select(&idx, 0)?))
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
            let diff =
                (ta - &b.parameters()[name]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert_eq!(diff, 0.0, "{name} differs between two runs with the same seed");
        }
        let moved =
            (&a.parameters()["fc2.weight"] - &c.parameters()["fc2.weight"]).unwrap().abs().unwrap().max_all().unwrap();
        assert!(moved.to_scalar::<f32>().unwrap() > 0.0, "a different seed should give different weights");
    }

    #[test]
    fn permutation_is_a_permutation() {
        let mut p = SeededRng::new(3).permutation(1000);
        p.sort();
        assert_eq!(p, (0..1000).collect::<Vec<u32>>());
    }
}
