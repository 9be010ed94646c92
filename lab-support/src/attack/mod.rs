//! Reference attacks: the seed's targeted gradient descent on the input, FGSM, PGD (with random
//! restarts and a margin loss), [`apgd`] (PGD that picks its own step size), and a robustness
//! curve under PGD ([`epsilon_sweep`]). The worst case of several attacks, digit by digit, is
//! [`crate::evaluation`]'s.
//!
//! All of them keep the model's weights fixed and move the pixels against the gradient of an
//! [`Objective`]. Each returns an [`AttackResult`]: the adversarial batch and a per-step trace of
//! the loss, the probability of the objective's class and the size of the perturbation. Whether an
//! attack worked is judged by asking the model again ([`AttackResult::successes`]), never by a
//! flag the attack sets itself.
//!
//! ```
//! use lab_support::prelude::*;
//! let model = Classifier::pretrained()?;
//! let test = mnist::test()?.take(20)?;
//! let objective = Objective::untargeted(&test.labels)?;
//! let result = pgd(&model, &test.images, &objective, &PgdConfig::linf(0.3))?;
//! assert!(result.success_rate(&model, &objective)? > 0.9);
//! # Ok::<(), LabError>(())
//! ```

use crate::data::Dataset;
use crate::error::{LabError, Result};
use crate::grad::{
    clamp_pixels, input_gradient_of, normalize_l2, per_image_l2, per_image_linf, project_l2, project_linf,
    uniform_noise, AttackLoss, Objective,
};
use crate::model::Classifier;
use crate::validate::{check_batch, check_eps, check_finite_positive, check_steps};
use candle_core::{Tensor, D};

mod apgd;
pub use apgd::{apgd, ApgdConfig, ApgdLoss};

/// One line of an attack's trace: the state of the batch *before* step `step` (the last line is
/// the final state).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TraceStep {
    pub step: usize,
    /// The objective's loss, averaged over the batch.
    pub loss: f32,
    /// Probability of the objective's class (the target, or the true class), averaged over the batch.
    pub class_prob: f32,
    /// Largest absolute pixel change over the whole batch.
    pub linf: f32,
    /// L2 norm of the perturbation, averaged over the batch.
    pub l2: f32,
}

/// What an attack produced.
#[derive(Clone, Debug)]
pub struct AttackResult {
    /// The adversarial batch, same shape as the input, pixels in `[0, 1]`.
    pub adversarial: Tensor,
    /// The state before each step, then after the last one.
    pub trace: Vec<TraceStep>,
}

impl AttackResult {
    /// For each image: does the model, asked again, do what the objective wants?
    pub fn successes(&self, model: &Classifier, objective: &Objective) -> Result<Vec<bool>> {
        objective.validate(self.adversarial.dim(0)?)?;
        let predictions = model.predict(&self.adversarial)?;
        Ok(predictions
            .iter()
            .zip(objective.classes())
            .map(|(p, &c)| if objective.is_targeted() { p.class == c as usize } else { p.class != c as usize })
            .collect())
    }

    /// The fraction of images for which the attack succeeded.
    pub fn success_rate(&self, model: &Classifier, objective: &Objective) -> Result<f32> {
        let s = self.successes(model, objective)?;
        Ok(s.iter().filter(|&&ok| ok).count() as f32 / s.len().max(1) as f32)
    }
}

/// The perturbation's geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    /// No pixel moves more than eps; steps follow the gradient's sign.
    Linf,
    /// The perturbation's Euclidean length is at most eps; steps follow the normalised gradient.
    L2,
}

/// Settings for [`pgd`].
#[derive(Clone, Copy, Debug)]
pub struct PgdConfig {
    pub norm: Norm,
    pub eps: f32,
    /// Step length (per pixel for L-inf, in L2 length for L2).
    pub step_size: f32,
    pub steps: usize,
    /// Start from a random point in the ball (seeded) instead of the original image.
    pub random_start: Option<u64>,
    /// The loss descended: cross-entropy, or the margin of the logits.
    pub loss: AttackLoss,
    /// Runs from different random starts (seeds `s`, `s + 1`, ...); each image keeps the first
    /// run that fooled the model. 1 is a single run. More than 1 needs a `random_start`.
    pub restarts: usize,
}

impl PgdConfig {
    /// The usual L-inf PGD: 40 steps of eps/10 from a random start, cross-entropy, one run.
    pub fn linf(eps: f32) -> Self {
        PgdConfig {
            norm: Norm::Linf,
            eps,
            step_size: eps / 10.0,
            steps: 40,
            random_start: Some(0),
            loss: AttackLoss::CrossEntropy,
            restarts: 1,
        }
    }

    /// The usual L2 PGD: 40 steps of eps/8 from a random start, cross-entropy, one run.
    pub fn l2(eps: f32) -> Self {
        PgdConfig {
            norm: Norm::L2,
            eps,
            step_size: eps / 8.0,
            steps: 40,
            random_start: Some(0),
            loss: AttackLoss::CrossEntropy,
            restarts: 1,
        }
    }
}

/// Settings for [`targeted_descent`], the seed's method.
#[derive(Clone, Copy, Debug)]
pub struct DescentConfig {
    /// How far to move against the raw gradient each step.
    pub step_size: f32,
    pub steps: usize,
    /// If set, no pixel moves more than this from the original.
    pub eps: Option<f32>,
}

impl Default for DescentConfig {
    fn default() -> Self {
        DescentConfig { step_size: 0.05, steps: 100, eps: None }
    }
}

/// The seed's attack: plain gradient descent on the input toward `target`, pixels kept in
/// `[0, 1]` (and within `eps` of the original if set). `x <- clamp(x - step_size * dE/dx)`.
pub fn targeted_descent(
    model: &Classifier,
    images: &Tensor,
    target: u32,
    config: &DescentConfig,
) -> Result<AttackResult> {
    let _call = crate::notebook::library_call("targeted_descent");
    check_batch(images, "the image batch")?;
    check_finite_positive("step_size", config.step_size)?;
    check_steps(config.steps)?;
    if let Some(eps) = config.eps {
        check_eps(eps)?;
    }
    let objective = Objective::targeted(target, images.dim(0)?)?;
    run(model, images, &objective, config.steps, |x, grad| {
        let mut next = (x - (grad * config.step_size as f64)?)?;
        if let Some(eps) = config.eps {
            next = project_linf(&next, images, eps)?;
        }
        clamp_pixels(&next)
    })
}

/// Fast Gradient Sign Method: one L-inf step of size `eps` along the sign of the gradient.
pub fn fgsm(model: &Classifier, images: &Tensor, objective: &Objective, eps: f32) -> Result<AttackResult> {
    let _call = crate::notebook::library_call("fgsm");
    pgd(model, images, objective, &PgdConfig { step_size: eps, steps: 1, random_start: None, ..PgdConfig::linf(eps) })
}

/// Projected gradient descent under an L-inf or L2 budget, targeted or untargeted.
///
/// With `restarts > 1`, each further run attacks only the images no earlier run fooled, from
/// another random start; the trace is the first run's.
pub fn pgd(model: &Classifier, images: &Tensor, objective: &Objective, config: &PgdConfig) -> Result<AttackResult> {
    let _call = crate::notebook::library_call("pgd");
    pgd_with(model, images, objective, config, false)
}

/// [`pgd`] against a model behind a preprocessing [`crate::model::Defense`], with the gradient
/// taken by BPDA (Backward Pass Differentiable Approximation, Athalye et al. 2018): the forward
/// pass is the true one, network of the defended image; the backward pass goes through the network
/// only and treats the defense as the identity, whose derivative is 1 instead of the zero of a
/// rounding step. On a model without a defense it is plain [`pgd`].
pub fn bpda_pgd(
    defended: &Classifier,
    images: &Tensor,
    objective: &Objective,
    config: &PgdConfig,
) -> Result<AttackResult> {
    let _call = crate::notebook::library_call("bpda_pgd");
    pgd_with(defended, images, objective, config, true)
}

fn pgd_with(
    model: &Classifier,
    images: &Tensor,
    objective: &Objective,
    config: &PgdConfig,
    bpda: bool,
) -> Result<AttackResult> {
    check_batch(images, "the image batch")?;
    objective.validate(images.dim(0)?)?;
    check_eps(config.eps)?;
    check_steps(config.steps)?;
    check_restarts(config.restarts, config.random_start)?;
    let first = pgd_once(model, images, objective, config, config.random_start, true, bpda)?;
    with_restarts(model, images, objective, config.restarts, first, |images, objective, restart| {
        let seed = config.random_start.map(|s| s.wrapping_add(restart as u64));
        pgd_once(model, images, objective, config, seed, true, bpda)
    })
}

/// Runs `again(images, objective, restart)` for restarts `1..restarts`, each on the images no
/// earlier run fooled, and keeps for each image the first run that fooled the model. The trace is
/// the first run's.
pub(crate) fn with_restarts(
    model: &Classifier,
    images: &Tensor,
    objective: &Objective,
    restarts: usize,
    mut result: AttackResult,
    mut again: impl FnMut(&Tensor, &Objective, usize) -> Result<AttackResult>,
) -> Result<AttackResult> {
    for restart in 1..restarts {
        let fooled = result.successes(model, objective)?;
        let left: Vec<u32> = (0..fooled.len() as u32).filter(|&i| !fooled[i as usize]).collect();
        if left.is_empty() {
            break;
        }
        let idx = Tensor::new(left.as_slice(), images.device())?;
        let classes = left.iter().map(|&i| objective.classes()[i as usize]).collect();
        let sub_objective =
            if objective.is_targeted() { Objective::Targeted(classes) } else { Objective::Untargeted(classes) };
        let run = again(&images.index_select(&idx, 0)?, &sub_objective, restart)?;
        result.adversarial =
            result.adversarial.index_add(&idx, &(run.adversarial - result.adversarial.index_select(&idx, 0)?)?, 0)?;
    }
    Ok(result)
}

/// Restarts between 1 and 1000, and more than 1 only from a random start (PGD's and APGD's rule).
pub(crate) fn check_restarts(restarts: usize, random_start: Option<u64>) -> Result<()> {
    if restarts == 0 || restarts > 1000 {
        return Err(LabError::invalid("restarts", restarts, "between 1 (a single run) and 1000"));
    }
    if restarts > 1 && random_start.is_none() {
        return Err(LabError::invalid(
            "restarts",
            restarts,
            "1 without a random start: every run from the image itself is the same run. Set `random_start: Some(0)`",
        ));
    }
    Ok(())
}

/// [`pgd`] with one start and no trace: only the adversarial batch, for the inner loop of
/// adversarial training (a trace costs an extra forward pass and a few reductions per step).
pub(crate) fn pgd_untraced(
    model: &Classifier,
    images: &Tensor,
    objective: &Objective,
    config: &PgdConfig,
) -> Result<Tensor> {
    check_batch(images, "the image batch")?;
    objective.validate(images.dim(0)?)?;
    check_eps(config.eps)?;
    check_steps(config.steps)?;
    Ok(pgd_once(model, images, objective, config, config.random_start, false, false)?.adversarial)
}

/// One PGD run from the random start `seed` (or the image itself), with a trace if `traced`, and
/// BPDA's gradient if `bpda`.
fn pgd_once(
    model: &Classifier,
    images: &Tensor,
    objective: &Objective,
    config: &PgdConfig,
    seed: Option<u64>,
    traced: bool,
    bpda: bool,
) -> Result<AttackResult> {
    // With no budget nothing can move, whatever the step size (eps / 10 is 0 there too).
    let steps = if config.eps == 0.0 { 0 } else { config.steps };
    if steps > 0 {
        check_finite_positive("step_size", config.step_size)?;
    }
    let project = |x: &Tensor| -> Result<Tensor> {
        let x = match config.norm {
            Norm::Linf => project_linf(x, images, config.eps)?,
            Norm::L2 => project_l2(x, images, config.eps)?,
        };
        clamp_pixels(&x)
    };
    // Random start: from the image itself, PGD on a plain CNN can stall where the gradient is flat.
    let start = match seed {
        Some(seed) => project(&(images + uniform_noise(images.dims(), config.eps, seed)?)?)?,
        None => images.clone(),
    };
    let mut result = run_from(model, images, &start, objective, config.loss, steps, traced, bpda, |x, grad| {
        let step = match config.norm {
            Norm::Linf => grad.sign()?,
            Norm::L2 => normalize_l2(grad)?,
        };
        project(&(x - (step * config.step_size as f64)?)?)
    })?;
    result.adversarial = result.adversarial.detach();
    Ok(result)
}

/// One point of a robustness curve: the model's accuracy on a dataset attacked with budget `eps`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SweepPoint {
    pub eps: f32,
    /// Fraction of the set still classified correctly after the attack (clean accuracy at 0).
    pub accuracy: f32,
}

/// The robustness curve of a whole dataset in one call: for each budget in `eps`, untargeted PGD
/// (`PgdConfig::linf(eps)` or `PgdConfig::l2(eps)` with `steps` steps) on every image, and the
/// accuracy that remains. Runs in batches of 500, so all 10,000 MNIST test digits fit in memory.
///
/// ```no_run
/// use lab_support::prelude::*;
/// let curve = epsilon_sweep(&Classifier::pretrained()?, &mnist::test()?, Norm::Linf, &[0.0, 0.1, 0.2, 0.3], 40)?;
/// for p in &curve {
///     println!("eps {:.2}: accuracy {:.3}", p.eps, p.accuracy);
/// }
/// # Ok::<(), LabError>(())
/// ```
pub fn epsilon_sweep(
    model: &Classifier,
    set: &Dataset,
    norm: Norm,
    eps: &[f32],
    steps: usize,
) -> Result<Vec<SweepPoint>> {
    if set.is_empty() {
        return Err(LabError::invalid("set", "an empty dataset", "at least one image"));
    }
    if steps == 0 {
        return Err(LabError::invalid("steps", 0, "at least 1 step of PGD"));
    }
    check_steps(steps)?;
    eps.iter().try_for_each(|&e| check_eps(e))?;
    let mut correct = vec![0usize; eps.len()];
    // One unit of progress is one batch attacked at one budget; eps = 0 costs nothing.
    let attacks = set.len().div_ceil(500) * eps.iter().filter(|&&e| e > 0.0).count();
    let mut progress = crate::notebook::Progress::new(
        format!("PGD-{steps} on {} digits at {} budgets", set.len(), eps.len()),
        attacks,
    );
    let mut done = 0;
    for start in (0..set.len()).step_by(500) {
        let part = set.slice(start, 500.min(set.len() - start))?;
        let objective = Objective::untargeted(&part.labels)?;
        for (count, &e) in correct.iter_mut().zip(eps) {
            let attacked = if e == 0.0 {
                part.images.clone()
            } else {
                let config = match norm {
                    Norm::Linf => PgdConfig::linf(e),
                    Norm::L2 => PgdConfig::l2(e),
                };
                let adversarial = pgd(model, &part.images, &objective, &PgdConfig { steps, ..config })?.adversarial;
                done += 1;
                progress.update(done);
                adversarial
            };
            let predictions = model.predict(&attacked)?;
            *count += predictions.iter().zip(objective.classes()).filter(|(p, &c)| p.class == c as usize).count();
        }
    }
    progress.finish();
    Ok(eps.iter().zip(correct).map(|(&eps, c)| SweepPoint { eps, accuracy: c as f32 / set.len() as f32 }).collect())
}

fn run(
    model: &Classifier,
    images: &Tensor,
    objective: &Objective,
    steps: usize,
    step: impl FnMut(&Tensor, &Tensor) -> Result<Tensor>,
) -> Result<AttackResult> {
    run_from(model, images, images, objective, AttackLoss::CrossEntropy, steps, true, false, step)
}

/// The loop every attack shares: gradient, trace line, step; then one last trace line. Without
/// `traced`, the trace stays empty. With `bpda`, the gradient is the network's at the defended
/// input (see [`bpda_pgd`]).
#[allow(clippy::too_many_arguments)]
fn run_from(
    model: &Classifier,
    original: &Tensor,
    start: &Tensor,
    objective: &Objective,
    loss: AttackLoss,
    steps: usize,
    traced: bool,
    bpda: bool,
    mut step: impl FnMut(&Tensor, &Tensor) -> Result<Tensor>,
) -> Result<AttackResult> {
    let n = original.dim(0)?;
    let mut x = start.detach();
    let mut trace = Vec::with_capacity(if traced { steps + 1 } else { 0 });
    // BPDA: the network without its defense, differentiated at the defended input.
    let bpda = model.defense().filter(|_| bpda).map(|defense| (model.without_defense(), defense));
    for i in 0..steps {
        let g = match &bpda {
            Some((network, defense)) => input_gradient_of(network, &defense.apply(&x)?, objective, loss)?,
            None => input_gradient_of(model, &x, objective, loss)?,
        };
        if traced {
            trace.push(trace_line(i, &g.logits, &x, original, objective, g.loss / n as f32)?);
        }
        x = step(&x, &g.grad)?.detach();
    }
    if !traced {
        return Ok(AttackResult { adversarial: x, trace });
    }
    let logits = model.forward(&x)?;
    let final_loss =
        objective.loss_of(&logits, loss)?.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()? / n as f32;
    trace.push(trace_line(steps, &logits, &x, original, objective, final_loss)?);
    Ok(AttackResult { adversarial: x, trace })
}

fn trace_line(
    step: usize,
    logits: &Tensor,
    x: &Tensor,
    original: &Tensor,
    objective: &Objective,
    loss: f32,
) -> Result<TraceStep> {
    let probs = candle_nn::ops::softmax(logits, D::Minus1)?.to_vec2::<f32>()?;
    let class_prob =
        probs.iter().zip(objective.classes()).map(|(row, &c)| row[c as usize]).sum::<f32>() / probs.len() as f32;
    let delta = (x - original)?;
    let linf = per_image_linf(&delta)?.max(0)?.to_scalar::<f32>()?;
    let l2 = per_image_l2(&delta)?.mean(0)?.to_scalar::<f32>()?;
    Ok(TraceStep { step, loss, class_prob, linf, l2 })
}
