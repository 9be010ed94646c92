//! Reference attacks: the seed's targeted gradient descent on the input, FGSM and PGD.
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

use crate::data::{check_batch, Dataset};
use crate::error::{LabError, Result};
use crate::grad::{
    check_eps, clamp_pixels, input_gradient_unchecked, normalize_l2, per_image_l2, per_image_linf, project_l2,
    project_linf, uniform_noise, Objective,
};
use crate::model::Classifier;
use candle_core::{Tensor, D};

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

/// The most steps one attack call runs: 100,000 steps on one digit take about half a minute.
pub const MAX_STEPS: usize = 100_000;

/// Checks a number of steps against [`MAX_STEPS`].
pub fn check_steps(steps: usize) -> Result<()> {
    if steps > MAX_STEPS {
        return Err(LabError::invalid(
            "steps",
            steps,
            format!("at most {MAX_STEPS} in one call (that already takes about half a minute per digit); run fewer, or call the attack again on its result"),
        ));
    }
    Ok(())
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
}

impl PgdConfig {
    /// The usual L-inf PGD: 40 steps of eps/10 from a random start.
    pub fn linf(eps: f32) -> Self {
        PgdConfig { norm: Norm::Linf, eps, step_size: eps / 10.0, steps: 40, random_start: Some(0) }
    }

    /// The usual L2 PGD: 40 steps of eps/8 from a random start.
    pub fn l2(eps: f32) -> Self {
        PgdConfig { norm: Norm::L2, eps, step_size: eps / 8.0, steps: 40, random_start: Some(0) }
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
pub fn targeted_descent(model: &Classifier, images: &Tensor, target: u32, config: &DescentConfig) -> Result<AttackResult> {
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
    pgd(model, images, objective, &PgdConfig { norm: Norm::Linf, eps, step_size: eps, steps: 1, random_start: None })
}

/// Projected gradient descent under an L-inf or L2 budget, targeted or untargeted.
pub fn pgd(model: &Classifier, images: &Tensor, objective: &Objective, config: &PgdConfig) -> Result<AttackResult> {
    check_batch(images, "the image batch")?;
    objective.validate(images.dim(0)?)?;
    check_eps(config.eps)?;
    check_steps(config.steps)?;
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
    let start = match config.random_start {
        Some(seed) => project(&(images + uniform_noise(images.dims(), config.eps, seed)?)?)?,
        None => images.clone(),
    };
    let mut result = run_from(model, images, &start, objective, steps, |x, grad| {
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
pub fn epsilon_sweep(model: &Classifier, set: &Dataset, norm: Norm, eps: &[f32], steps: usize) -> Result<Vec<SweepPoint>> {
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
    let mut progress = crate::kernel::Progress::new(format!("PGD-{steps} on {} digits at {} budgets", set.len(), eps.len()), attacks);
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
    run_from(model, images, images, objective, steps, step)
}

/// The loop every attack shares: gradient, trace line, step; then one last trace line.
fn run_from(
    model: &Classifier,
    original: &Tensor,
    start: &Tensor,
    objective: &Objective,
    steps: usize,
    mut step: impl FnMut(&Tensor, &Tensor) -> Result<Tensor>,
) -> Result<AttackResult> {
    let n = original.dim(0)?;
    let mut x = start.detach();
    let mut trace = Vec::with_capacity(steps + 1);
    for i in 0..steps {
        let g = input_gradient_unchecked(model, &x, objective)?;
        trace.push(trace_line(i, &g.logits, &x, original, objective, g.loss / n as f32)?);
        x = step(&x, &g.grad)?.detach();
    }
    let logits = model.forward(&x)?;
    let loss = objective.loss(&logits)?.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()? / n as f32;
    trace.push(trace_line(steps, &logits, &x, original, objective, loss)?);
    Ok(AttackResult { adversarial: x, trace })
}

fn trace_line(step: usize, logits: &Tensor, x: &Tensor, original: &Tensor, objective: &Objective, loss: f32) -> Result<TraceStep> {
    let probs = candle_nn::ops::softmax(logits, D::Minus1)?.to_vec2::<f32>()?;
    let class_prob = probs.iter().zip(objective.classes()).map(|(row, &c)| row[c as usize]).sum::<f32>() / probs.len() as f32;
    let delta = (x - original)?;
    let linf = per_image_linf(&delta)?.max(0)?.to_scalar::<f32>()?;
    let l2 = per_image_l2(&delta)?.mean(0)?.to_scalar::<f32>()?;
    Ok(TraceStep { step, loss, class_prob, linf, l2 })
}

fn check_finite_positive(name: &'static str, value: f32) -> Result<()> {
    if !(value.is_finite() && value > 0.0) {
        return Err(LabError::invalid(name, value, "a finite number > 0"));
    }
    Ok(())
}
