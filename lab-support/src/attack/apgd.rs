//! APGD, Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an
//! ensemble of diverse parameter-free attacks"): PGD that chooses its own step size.
//!
//! PGD with a fixed step either overshoots (a step too large bounces around the best point) or
//! crawls (a step too small never gets there in its budget of steps). APGD starts with a step of
//! `2 eps`, adds momentum, and at checkpoints spread over the run halves the step of each image
//! whose loss stopped climbing, restarting that image from the best point it found. Nothing to
//! tune but the number of steps.
//!
//! Two losses, both *climbed* (APGD maximises):
//! - cross-entropy, away from the true class or toward a target;
//! - the **targeted difference-of-logits ratio** (DLR), `-(z_y - z_t) / (z_1 - (z_3 + z_4) / 2)`
//!   with `z_1 >= z_2 >= ...` the sorted logits: it pulls the target class `t` above the true
//!   class `y`, and dividing by the spread of the top logits makes it blind to how the logits are
//!   scaled, so a network cannot hide behind a saturated softmax.
//!
//! ```
//! use lab_support::prelude::*;
//! let robust = Classifier::robust()?;
//! let test = mnist::test()?.take(20)?;
//! let objective = Objective::untargeted(&test.labels)?;
//! let result = apgd(&robust, &test.images, &objective, &ApgdConfig { steps: 20, ..ApgdConfig::linf(0.3) })?;
//! assert!(per_image_linf(&(&result.adversarial - &test.images)?)?.max(0)?.to_scalar::<f32>()? <= 0.3 + 1e-6);
//! # Ok::<(), LabError>(())
//! ```

use super::{check_restarts, trace_line, with_restarts, AttackResult, Norm, TraceStep};
use crate::error::{LabError, Result};
use crate::grad::{clamp_pixels, normalize_l2, project_l2, project_linf, uniform_noise, Objective};
use crate::model::Classifier;
use crate::validate::{check_batch, check_eps, check_steps};
use candle_core::{DType, Tensor, Var, D};

/// The loss [`apgd`] climbs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApgdLoss {
    /// Cross-entropy: away from the true class (untargeted objective) or toward the target.
    CrossEntropy,
    /// The targeted DLR loss (see the module docs) toward the `rank`-th likeliest wrong class of
    /// the clean image (1: the runner-up). Untargeted objectives only: it succeeds when the model
    /// reads anything but the true class.
    TargetedDlr { rank: usize },
}

/// Settings for [`apgd`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ApgdConfig {
    pub norm: Norm,
    pub eps: f32,
    /// Steps (gradients) per run; the step size and its checkpoints follow from it.
    pub steps: usize,
    pub loss: ApgdLoss,
    /// Start from a random point of the ball (seeded) instead of the image itself.
    pub random_start: Option<u64>,
    /// Runs from different random starts (seeds `s`, `s + 1`, ...) on the images no earlier run
    /// fooled. More than 1 needs a `random_start`.
    pub restarts: usize,
}

impl ApgdConfig {
    /// APGD as AutoAttack runs it: 100 steps, cross-entropy, a random start, one run.
    pub fn linf(eps: f32) -> Self {
        ApgdConfig {
            norm: Norm::Linf,
            eps,
            steps: 100,
            loss: ApgdLoss::CrossEntropy,
            random_start: Some(0),
            restarts: 1,
        }
    }

    /// The same under an L2 budget.
    pub fn l2(eps: f32) -> Self {
        ApgdConfig { norm: Norm::L2, ..ApgdConfig::linf(eps) }
    }
}

/// The weight of the new step against the last move (the paper's alpha).
const MOMENTUM: f32 = 0.75;
/// A step size is kept only if the loss rose on at least this fraction of the steps since the
/// last checkpoint (the paper's rho).
const RHO: f32 = 0.75;

/// Auto-PGD on a batch, untargeted or targeted, under an L-inf or L2 budget (see the module docs).
///
/// For each image the result is the first point that fooled the model, or else the point of
/// highest loss the run found. Steps stop early once every image is fooled.
pub fn apgd(model: &Classifier, images: &Tensor, objective: &Objective, config: &ApgdConfig) -> Result<AttackResult> {
    let _call = crate::notebook::library_call("apgd");
    check_batch(images, "the image batch")?;
    objective.validate(images.dim(0)?)?;
    check_eps(config.eps)?;
    check_steps(config.steps)?;
    check_restarts(config.restarts, config.random_start)?;
    if let ApgdLoss::TargetedDlr { rank } = config.loss {
        if objective.is_targeted() {
            return Err(LabError::invalid(
                "loss",
                "TargetedDlr with a targeted objective",
                "an untargeted objective (the true labels): the DLR loss picks its own target class",
            ));
        }
        if rank == 0 || rank >= model.num_classes() {
            return Err(LabError::invalid(
                "rank",
                rank,
                format!("between 1 (the likeliest wrong class) and {}", model.num_classes() - 1),
            ));
        }
    }
    let first = apgd_once(model, images, objective, config, config.random_start)?;
    with_restarts(model, images, objective, config.restarts, first, |images, objective, restart| {
        let seed = config.random_start.map(|s| s.wrapping_add(restart as u64));
        apgd_once(model, images, objective, config, seed)
    })
}

/// The steps at which APGD checks its progress: `ceil(p_j * steps)` for `p_0 = 0`, `p_1 = 0.22`,
/// `p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`, while `p_j <= 1`. Checkpoints come often
/// at first and sparser later.
pub(crate) fn checkpoints(steps: usize) -> Vec<usize> {
    // In hundredths, so that 0.41 * 100 is 41 and not 42 after rounding up.
    let (mut before, mut p) = (0i64, 22i64);
    let mut found = Vec::new();
    while p <= 100 {
        let w = (p as usize * steps).div_ceil(100);
        if w > 0 && found.last() != Some(&w) {
            found.push(w);
        }
        let next = p + (p - before - 3).max(6);
        (before, p) = (p, next);
    }
    found
}

/// What one gradient call returns: each image's loss (to climb), whether the model is fooled
/// there, the gradient of the summed loss, and the logits.
struct Point {
    gain: Vec<f32>,
    fooled: Vec<bool>,
    grad: Tensor,
    logits: Tensor,
}

/// The loss of every image at `x` and its gradient.
fn climb(model: &Classifier, x: &Tensor, objective: &Objective, targets: Option<&[u32]>) -> Result<Point> {
    let var = Var::from_tensor(&x.detach())?;
    let logits = model.forward(var.as_tensor())?;
    let values = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let classes = objective.classes();
    let device = logits.device();
    let pick = |idx: Vec<u32>| -> Result<Tensor> {
        Ok(logits.gather(&Tensor::new(idx.as_slice(), device)?.unsqueeze(1)?, 1)?.squeeze(1)?)
    };
    let gains = match targets {
        None => {
            let log_p = candle_nn::ops::log_softmax(&logits, D::Minus1)?
                .gather(&Tensor::new(classes, device)?.unsqueeze(1)?, 1)?;
            let log_p = log_p.squeeze(1)?;
            if objective.is_targeted() {
                log_p
            } else {
                log_p.neg()?
            }
        }
        Some(targets) => {
            // -(z_y - z_t) / (z_1 - (z_3 + z_4) / 2 + 1e-12), the sorted positions read from the values.
            let order: Vec<Vec<u32>> = values.iter().map(|row| descending(row)).collect();
            let z_true = pick(classes.to_vec())?;
            let z_target = pick(targets.to_vec())?;
            let top = |k: usize| pick(order.iter().map(|o| o[k]).collect());
            let spread = ((top(0)? - ((top(2)? + top(3)?)? * 0.5)?)? + 1e-12)?;
            (z_target - z_true)?.div(&spread)?
        }
    };
    let grads = gains.sum_all()?.backward()?;
    let grad = match grads.get(var.as_tensor()) {
        Some(g) => g.clone(),
        // A preprocessing defense rounds the input: its derivative, and so the gradient, is zero.
        None => var.as_tensor().zeros_like()?,
    };
    let fooled = values
        .iter()
        .zip(classes)
        .map(|(row, &c)| {
            let top = descending(row)[0];
            if objective.is_targeted() {
                top == c
            } else {
                top != c
            }
        })
        .collect();
    Ok(Point { gain: gains.to_dtype(DType::F32)?.to_vec1::<f32>()?, fooled, grad, logits: logits.detach() })
}

/// The class indices of `row` from the largest value down (ties: the lower index first).
fn descending(row: &[f32]) -> Vec<u32> {
    let mut order: Vec<u32> = (0..row.len() as u32).collect();
    order.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
    order
}

/// `a` where `mask` holds, `b` elsewhere, image by image.
fn choose(mask: &[bool], a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let n = mask.len();
    let m: Vec<u8> = mask.iter().map(|&m| m as u8).collect();
    let m = Tensor::from_vec(m, (n, 1, 1, 1), a.device())?.broadcast_as(a.dims())?;
    Ok(m.where_cond(a, b)?)
}

fn apgd_once(
    model: &Classifier,
    images: &Tensor,
    objective: &Objective,
    config: &ApgdConfig,
    seed: Option<u64>,
) -> Result<AttackResult> {
    let n = images.dim(0)?;
    let project = |x: &Tensor| -> Result<Tensor> {
        let x = match config.norm {
            Norm::Linf => project_linf(x, images, config.eps)?,
            Norm::L2 => project_l2(x, images, config.eps)?,
        };
        clamp_pixels(&x)
    };
    let direction = |g: &Tensor| -> Result<Tensor> {
        Ok(match config.norm {
            Norm::Linf => g.sign()?,
            Norm::L2 => normalize_l2(g)?,
        })
    };
    // The DLR loss's target: the rank-th likeliest wrong class at the clean image.
    let targets: Option<Vec<u32>> = match config.loss {
        ApgdLoss::CrossEntropy => None,
        ApgdLoss::TargetedDlr { rank } => {
            let clean = model.forward(images)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
            Some(
                clean
                    .iter()
                    .zip(objective.classes())
                    .map(|(row, &y)| descending(row).into_iter().filter(|&c| c != y).nth(rank - 1).unwrap_or(y))
                    .collect(),
            )
        }
    };
    let targets = targets.as_deref();
    let trace_loss = |p: &Point| -p.gain.iter().sum::<f32>() / n as f32;
    let mut x = match seed {
        Some(seed) if config.eps > 0.0 => project(&(images + uniform_noise(images.dims(), config.eps, seed)?)?)?,
        _ => images.clone(),
    };
    let steps = if config.eps == 0.0 { 0 } else { config.steps };
    let mut here = climb(model, &x, objective, targets)?;
    let mut trace: Vec<TraceStep> = vec![trace_line(0, &here.logits, &x, images, objective, trace_loss(&here))?];
    // The best point of each image so far, its loss and gradient; the first point that fooled it.
    let (mut best, mut best_gain, mut best_grad) = (x.clone(), here.gain.clone(), here.grad.clone());
    let (mut adversarial, mut fooled) = (choose(&here.fooled, &x, images)?, here.fooled.clone());
    let mut eta = vec![2.0 * config.eps; n];
    let mut previous = x.clone();
    // Bookkeeping between checkpoints: rises of the loss, the step size and best loss at the last one.
    let (mut rises, mut last_check) = (vec![0usize; n], 0usize);
    let (mut eta_at_check, mut best_at_check) = (eta.clone(), best_gain.clone());
    let checks = checkpoints(steps);
    for k in 0..steps {
        if fooled.iter().all(|&f| f) {
            break;
        }
        let eta_t = Tensor::from_vec(eta.clone(), (n, 1, 1, 1), images.device())?;
        let z = project(&(&x + direction(&here.grad)?.broadcast_mul(&eta_t)?)?)?;
        let next = if k == 0 {
            z
        } else {
            let pull = ((&z - &x)? * MOMENTUM as f64)?;
            let carry = ((&x - &previous)? * (1.0 - MOMENTUM) as f64)?;
            project(&((&x + pull)? + carry)?)?
        };
        previous = x;
        x = next.detach();
        let there = climb(model, &x, objective, targets)?;
        for (rise, (now, before)) in rises.iter_mut().zip(there.gain.iter().zip(&here.gain)) {
            *rise += (now > before) as usize;
        }
        let improved: Vec<bool> = (0..n).map(|i| there.gain[i] > best_gain[i]).collect();
        if improved.iter().any(|&b| b) {
            best = choose(&improved, &x, &best)?;
            best_grad = choose(&improved, &there.grad, &best_grad)?;
            (0..n).filter(|&i| improved[i]).for_each(|i| best_gain[i] = there.gain[i]);
        }
        let newly: Vec<bool> = (0..n).map(|i| there.fooled[i] && !fooled[i]).collect();
        if newly.iter().any(|&b| b) {
            adversarial = choose(&newly, &x, &adversarial)?;
            (0..n).filter(|&i| newly[i]).for_each(|i| fooled[i] = true);
        }
        trace.push(trace_line(k + 1, &there.logits, &x, images, objective, trace_loss(&there))?);
        here = there;
        if checks.contains(&(k + 1)) {
            // Halve the step of each image whose loss rose too rarely since the last checkpoint, or
            // whose step and best loss both stood still, and send it back to its best point.
            let span = (k + 1 - last_check) as f32;
            let halve: Vec<bool> = (0..n)
                .map(|i| {
                    (rises[i] as f32) < RHO * span || (eta[i] == eta_at_check[i] && best_gain[i] == best_at_check[i])
                })
                .collect();
            (eta_at_check, best_at_check) = (eta.clone(), best_gain.clone());
            if halve.iter().any(|&h| h) {
                (0..n).filter(|&i| halve[i]).for_each(|i| {
                    eta[i] /= 2.0;
                    here.gain[i] = best_gain[i];
                });
                x = choose(&halve, &best, &x)?;
                previous = choose(&halve, &best, &previous)?;
                here.grad = choose(&halve, &best_grad, &here.grad)?;
            }
            rises.iter_mut().for_each(|r| *r = 0);
            last_check = k + 1;
        }
    }
    let adversarial = choose(&fooled, &adversarial, &best)?.detach();
    Ok(AttackResult { adversarial, trace })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_follow_the_papers_schedule() {
        assert_eq!(checkpoints(100), [22, 41, 57, 70, 80, 87, 93, 99]);
        assert_eq!(checkpoints(10), [3, 5, 6, 7, 8, 9, 10]);
        assert_eq!(checkpoints(1), [1]);
    }

    #[test]
    fn the_order_is_from_the_largest_logit_down() {
        assert_eq!(descending(&[0.5, 2.0, -1.0, 2.0]), [1, 3, 0, 2]);
    }
}
