//! Notebook 03's checks: the input gradient, a descent step, the crafting loop, the challenge
//! and an untargeted L2 attack.

use super::*;
use crate::data::mnist;
use crate::grad::{clamp_pixels, input_gradient, normalize_l2, per_image_l2, project_l2, project_linf, Objective};
use crate::model::Classifier;
use crate::rng::SeededRng;
use candle_core::{Var, D};

/// The digits and targets the gradient checks use: test digits #0 and #1, with a little noise,
/// toward other classes. A clean digit is mostly exact zeros, so its max-pool windows hold exact
/// ties where the loss has kinks, and finite differences there average two one-sided slopes; the
/// noise (±0.01) moves the probes off those kinks. The digit is first squeezed into
/// [0.01, 0.99], so the noisy probe is still a valid image without a clamp (which would bring the
/// exact zeros back).
fn probe_inputs() -> Result<Vec<(Tensor, u32)>> {
    let test = mnist::test()?;
    let mut out = Vec::new();
    for (i, shift) in [(0usize, 3u32), (1, 5)] {
        let (x, label) = test.get(i)?;
        let noise = SeededRng::new(i as u64 + 40).uniform_tensor(x.dims(), -0.01, 0.01)?;
        out.push((((x * 0.98)? + 0.01)?.add(&noise)?, (label + shift) % 10));
    }
    Ok(out)
}

/// Notebook 03, TODO 1: the gradient of the cross-entropy toward `target` with respect to the
/// input, `fn input_grad(model: &Classifier, x: &Tensor, target: u32) -> Result<Tensor>`.
pub fn input_grad<F>(f: F) -> Verdict
where
    F: Fn(&Classifier, &Tensor, u32) -> Result<Tensor>,
{
    const TODO: &str = "TODO 1 (input gradient)";
    check(TODO, || {
        let model = Classifier::pretrained()?;
        let model64 = model.to_dtype(DType::F64)?;
        for (x, target) in probe_inputs()? {
            let got = run_own(TODO, &["input_gradient"], || f(&model, &x, target))?;
            if let Some(v) = mismatch(
                TODO,
                &got,
                &x,
                "a gradient",
                "return grads.get(x.as_tensor()), the gradient for the input itself",
            ) {
                return Ok(v);
            }
            if let Err(e) = crate::validate::check_finite(&got, "your gradient") {
                return Ok(Verdict::fail(
                    TODO,
                    "finite numbers",
                    e.message(),
                    "a log of 0: take log-softmax of the logits instead of the log of probabilities",
                ));
            }
            let want = input_gradient(&model, &x, &Objective::targeted(target, 1)?)?.grad;
            if max_abs(&got)? == 0.0 {
                return Ok(Verdict::fail(
                    TODO,
                    "a non-zero gradient",
                    "all zeros",
                    "the loss does not depend on x: it was computed from a detached tensor or from argmax",
                ));
            }
            let (cos, ratio) = compare(&got, &want)?;
            if cos < -0.99 {
                return Ok(Verdict::fail(
                    TODO,
                    "dE/dx for E = cross-entropy toward the target",
                    "the same gradient with the opposite sign",
                    "the sign is flipped: E = -log p_target (you took +log p_target, or the loss away from the target)",
                ));
            }
            // Compare with the gradient of the classic mistake: cross-entropy of probabilities.
            let xv = Var::from_tensor(&x)?;
            let probs = candle_nn::ops::softmax(&model.forward(xv.as_tensor())?, D::Minus1)?;
            let wrong = Objective::targeted(target, 1)?.loss(&probs)?.backward()?;
            if let Some(w) = wrong.get(xv.as_tensor()) {
                if compare(&got, w)?.0 > 0.999 && cos < 0.99 {
                    return Ok(Verdict::fail(TODO, "the gradient of the loss of the logits", "the gradient of the loss of the probabilities", "the step used probabilities instead of logits: cross-entropy already applies log-softmax, so pass it the logits"));
                }
            }
            if cos < 0.999 || (ratio - 1.0).abs() > 1e-3 {
                return Ok(Verdict::fail(TODO, "the reference gradient", format!("a gradient with cosine {cos:.4} and length ratio {ratio:.4} to it"), "a different loss: use E = cross_entropy(logits, target), summed (or averaged, for one image) over the batch"));
            }
            // Finite differences along a random direction, in f64.
            let d = SeededRng::new(5).uniform_tensor(x.dims(), -1.0, 1.0)?.to_dtype(DType::F64)?;
            let x64 = x.to_dtype(DType::F64)?;
            let loss_at = |t: &Tensor| -> Result<f64> {
                Ok(Objective::targeted(target, 1)?.loss(&model64.forward(t)?)?.to_scalar::<f64>()?)
            };
            // h far below the gaps between pooled values at the noisy probe, so the
            // differences never straddle one of the loss's kinks.
            let h = 1e-8;
            let numeric = (loss_at(&(&x64 + (&d * h)?)?)? - loss_at(&(&x64 - (&d * h)?)?)?) / (2.0 * h);
            let analytic = dot(&got, &d)?;
            if (numeric - analytic).abs() > 1e-2 * numeric.abs().max(1e-3) {
                return Ok(Verdict::fail(
                    TODO,
                    format!("a directional derivative of {numeric:.5} (finite differences)"),
                    format!("{analytic:.5} from your gradient"),
                    "the gradient does not match the loss's slope: check which loss you differentiate",
                ));
            }
        }
        Ok(Verdict::pass(TODO, "your gradient matches the reference and finite differences (within 1%) on two digits."))
    })
}

/// Notebook 03, TODO 2: one descent step on the input,
/// `fn descent_step(x: &Tensor, grad: &Tensor, step_size: f64) -> Result<Tensor>`: move against
/// the gradient and keep pixels in [0, 1].
pub fn descent_step<F>(f: F) -> Verdict
where
    F: Fn(&Tensor, &Tensor, f64) -> Result<Tensor>,
{
    const TODO: &str = "TODO 2 (descent step)";
    check(TODO, || {
        let (x, _) = mnist::test()?.get(0)?;
        let grad = SeededRng::new(9).uniform_tensor(x.dims(), -1.0, 1.0)?;
        let step = 0.3;
        let got = run_student(TODO, || f(&x, &grad, step))?;
        if let Some(v) = mismatch(TODO, &got, &x, "an image", "return the whole updated image") {
            return Ok(v);
        }
        let want = clamp_pixels(&(&x - (&grad * step)?)?)?;
        if max_abs_diff(&got, &want)? < 1e-6 {
            return Ok(Verdict::pass(TODO, "x - step_size * grad, clamped to [0, 1]."));
        }
        let (lo, hi) = (got.min_all()?.to_scalar::<f32>()?, got.max_all()?.to_scalar::<f32>()?);
        let outside = format!("pixels from {lo:.3} to {hi:.3}, outside [0, 1]");
        let uphill =
            "an image that moved up the gradient: pixels with a positive gradient got brighter, which raises the loss"
                .to_string();
        let candidates = [
                (clamp_pixels(&(&x + (&grad * step)?)?)?, uphill.clone(), "the sign is flipped: x + step_size * grad climbs the loss; descend with x - step_size * grad"),
                ((&x - (&grad * step)?)?, outside.clone(), "the values were not clamped: pixels must stay in [0, 1] (`clamp_pixels` or `.clamp(0f32, 1f32)`)"),
                ((&x + (&grad * step)?)?, format!("{uphill}, and {outside}"), "the sign is flipped and the values were not clamped"),
                (clamp_pixels(&(&x - (grad.sign()? * step)?)?)?, format!("every changed pixel moved by exactly {step}"), "you stepped along the sign of the gradient (FGSM's step); here move by step_size times the gradient itself"),
                (clamp_pixels(&(&x - &grad)?)?, "pixels moved by the whole gradient".into(), "step_size was not used: multiply the gradient by step_size"),
            ];
        for (candidate, got_text, cause) in candidates {
            if max_abs_diff(&got, &candidate)? < 1e-6 {
                return Ok(Verdict::fail(TODO, "x - step_size * grad, clamped to [0, 1]", got_text, cause));
            }
        }
        Ok(Verdict::fail(
            TODO,
            "x - step_size * grad, clamped to [0, 1]",
            format!("pixels off by up to {:.3}", max_abs_diff(&got, &want)?),
            "compute x - step_size * grad, then clamp to [0, 1]",
        ))
    })
}

/// Notebook 03, TODO 3: the crafting loop,
/// `fn craft(model: &Classifier, original: &Tensor, target: u32, eps: f32, steps: usize, step_size: f64) -> Result<Vec<Tensor>>`,
/// returning the image after each step.
pub fn craft<F>(f: F) -> Verdict
where
    F: Fn(&Classifier, &Tensor, u32, f32, usize, f64) -> Result<Vec<Tensor>>,
{
    const TODO: &str = "TODO 3 (crafting loop)";
    check(TODO, || {
        let model = Classifier::pretrained()?;
        let (x, label) = mnist::test()?.get(0)?;
        let (target, eps, steps, step_size) = ((label + 1) % 10, 0.15f32, 30usize, 0.02);
        let history = run_own(TODO, &["targeted_descent", "pgd", "apgd", "bpda_pgd"], || {
            f(&model, &x, target, eps, steps, step_size)
        })?;
        if history.len() != steps && history.len() != steps + 1 {
            return Ok(Verdict::fail(
                TODO,
                format!("{steps} images, one per step"),
                format!("{}", history.len()),
                "push the image into the history once per step",
            ));
        }
        for img in &history {
            if let Some(v) = mismatch(TODO, img, &x, "images", "keep the batch shape through the loop") {
                return Ok(v);
            }
        }
        for (i, img) in history.iter().enumerate() {
            let moved = max_abs_diff(img, &x)?;
            if moved > eps + 1e-5 {
                return Ok(Verdict::fail(TODO, format!("no pixel moved more than eps = {eps}"), format!("a pixel moved {moved:.3} at step {i}"), "eps was broken: after each step, project back with `project_linf(&x, original, eps)` (clamp x - original to [-eps, eps])"));
            }
            let (lo, hi) = (img.min_all()?.to_scalar::<f32>()?, img.max_all()?.to_scalar::<f32>()?);
            if lo < 0.0 || hi > 1.0 {
                return Ok(Verdict::fail(
                    TODO,
                    "pixels in [0, 1]",
                    format!("pixels in [{lo:.3}, {hi:.3}] at step {i}"),
                    "the values were not clamped: clamp to [0, 1] after projecting",
                ));
            }
        }
        let p = |img: &Tensor| -> Result<f32> {
            Ok(model.probabilities(img)?.get(0)?.get(target as usize)?.to_scalar::<f32>()?)
        };
        let (p0, p1) = (p(&x)?, p(history.last().unwrap_or(&x))?);
        let want = reference_craft(&model, &x, target, eps, steps, step_size)?;
        let pw = p(want.last().unwrap_or(&x))?;
        if p1 <= p0 {
            return Ok(Verdict::fail(
                TODO,
                format!("p(target) to rise from {p0:.4}"),
                format!("{p1:.4}"),
                "the loop moves the wrong way: step against the gradient of the loss toward the target",
            ));
        }
        if p1 < 0.5 * pw {
            return Ok(Verdict::fail(
                TODO,
                format!("p(target) near the reference's {pw:.3} after {steps} steps"),
                format!("{p1:.3}"),
                "the steps are too small or not repeated: each step needs a fresh gradient at the current image",
            ));
        }
        Ok(Verdict::pass(TODO, format!(
                "your loop moves like the reference: after {steps} small steps at eps = {eps}, p({target}) rose from {p0:.4} to {p1:.3} (reference {pw:.3}), within eps and [0, 1]. This checks the loop, not its strength: \"Watch it work\" gives it room."
            )))
    })
}

/// The reference crafting loop: gradient steps toward `target`, projected onto the eps-ball and
/// into [0, 1] after each; returns the image after each step.
pub(crate) fn reference_craft(
    model: &Classifier,
    original: &Tensor,
    target: u32,
    eps: f32,
    steps: usize,
    step_size: f64,
) -> Result<Vec<Tensor>> {
    let objective = Objective::targeted(target, original.dim(0)?)?;
    let mut x = original.clone();
    let mut history = Vec::with_capacity(steps);
    for _ in 0..steps {
        let g = input_gradient(model, &x, &objective)?.grad;
        x = clamp_pixels(&project_linf(&(&x - (g * step_size)?)?, original, eps)?)?;
        history.push(x.clone());
    }
    Ok(history)
}

/// The probe of TODO 5: test digits #0 to #3, an L2 budget of 3 (9 pixels flipped from black to
/// white, or a fainter change spread over many), 20 steps of eps / 8.
const L2_PROBE: (usize, f32, usize, f64) = (4, 3.0, 20, 0.375);

/// The reference untargeted L2 attack: steps of fixed L2 length *up* the loss of the true class,
/// along the gradient scaled to unit length, projected back onto the L2 ball around the original
/// and into [0, 1] after each. The loop of [`crate::attack::pgd`] under L2, written out as a
/// student writes it (it also takes a negative step size, which the tests use as a mistake).
pub(crate) fn reference_untargeted_l2(
    model: &Classifier,
    x: &Tensor,
    label: u32,
    eps: f32,
    steps: usize,
    step_size: f64,
) -> Result<Tensor> {
    let objective = Objective::targeted(label, x.dim(0)?)?;
    let mut adv = x.clone();
    for _ in 0..steps {
        let grad = input_gradient(model, &adv, &objective)?.grad;
        adv = clamp_pixels(&project_l2(&(&adv + (normalize_l2(&grad)? * step_size)?)?, x, eps)?)?;
    }
    Ok(adv)
}

/// Notebook 03, TODO 5: an untargeted attack under an L2 budget,
/// `fn untargeted_l2(model: &Classifier, x: &Tensor, label: u32, eps: f32, steps: usize, step_size: f64) -> Result<Tensor>`,
/// returning the attacked image.
pub fn untargeted_l2<F>(f: F) -> Verdict
where
    F: Fn(&Classifier, &Tensor, u32, f32, usize, f64) -> Result<Tensor>,
{
    const TODO: &str = "TODO 5 (untargeted L2 attack)";
    check(TODO, || {
        let model = Classifier::pretrained()?;
        let (n, eps, steps, step_size) = L2_PROBE;
        let test = mnist::test()?;
        let (mut fooled, mut reference_fooled) = (0, 0);
        let mut moved_least = f32::MAX;
        for i in 0..n {
            let (x, label) = test.get(i)?;
            let got = run_own(TODO, &["pgd", "apgd", "bpda_pgd"], || f(&model, &x, label, eps, steps, step_size))?;
            if let Some(v) = mismatch(TODO, &got, &x, "an image", "return the attacked image, shaped like x") {
                return Ok(v);
            }
            crate::validate::check_finite(&got, "your image")?;
            let (lo, hi) = (got.min_all()?.to_scalar::<f32>()?, got.max_all()?.to_scalar::<f32>()?);
            if lo < -1e-6 || hi > 1.0 + 1e-6 {
                return Ok(Verdict::fail(
                    TODO,
                    "pixels in [0, 1]",
                    format!("pixels from {lo:.3} to {hi:.3}"),
                    "the values were not clamped: `clamp_pixels` after projecting",
                ));
            }
            let l2 = per_image_l2(&(&got - &x)?)?.to_vec1::<f32>()?[0];
            if l2 > eps + 1e-3 {
                let linf = max_abs_diff(&got, &x)?;
                let cause = if linf <= eps + 1e-5 {
                    "the budget was enforced pixel by pixel (project_linf); an L2 budget limits the length of the whole change: `project_l2(&x, original, eps)?`"
                } else {
                    "the budget was not enforced: after each step, project back with `project_l2(&x, original, eps)?`"
                };
                return Ok(Verdict::fail(
                    TODO,
                    format!("an L2 distance of at most eps = {eps}"),
                    format!("{l2:.3} for test digit #{i}"),
                    cause,
                ));
            }
            moved_least = moved_least.min(l2);
            fooled += usize::from(model.predict(&got)?[0].class != label as usize);
            let want = reference_untargeted_l2(&model, &x, label, eps, steps, step_size)?;
            reference_fooled += usize::from(model.predict(&want)?[0].class != label as usize);
        }
        if fooled >= reference_fooled {
            return Ok(Verdict::pass(TODO, format!("{fooled} of {n} digits misread within an L2 distance of {eps} (the reference: {reference_fooled}).")));
        }
        let cause = if moved_least < 0.1 * eps {
            "the image barely moved: the raw gradient of a confident digit is tiny, so scale it to unit length first (`normalize_l2(&grad)?`), then step by step_size"
        } else {
            "each step must go up the loss of the true class: x + step_size * grad / |grad|, with grad = dE/dx for E = cross-entropy toward `label` (the descent of TODO 3 goes the other way)"
        };
        Ok(Verdict::fail(
            TODO,
            format!("{reference_fooled} of {n} digits misread, as the reference does"),
            format!("{fooled}"),
            cause,
        ))
    })
}

/// Checks that `image` is a valid attack on `original` under an L-inf budget: same shape, pixels
/// in `[0, 1]`, no pixel moved more than `eps`. Use it before putting numbers from your own attack
/// in a table: a success that broke the budget means nothing.
pub fn within_budget(original: &Tensor, image: &Tensor, eps: f32) -> Result<()> {
    crate::validate::check_eps(eps)?;
    if image.dims() != original.dims() {
        return Err(LabError::Shape {
            what: "the attacked image".into(),
            expected: format!("{:?}, like the original", original.dims()),
            got: image.dims().to_vec(),
        });
    }
    crate::validate::check_batch(image, "the attacked image")?;
    let moved = max_abs_diff(&image.to_dtype(DType::F32)?, &original.to_dtype(DType::F32)?)?;
    if moved > eps + 1e-5 {
        return Err(LabError::Other(format!(
            "the attacked image moved a pixel by {moved:.3}, more than eps = {eps}: it broke the budget, so \
             whatever it does to the model proves nothing. Keep every step inside the budget \
             (after each step, `project_linf(&x_adv, &original, eps)?`) and run the cell again"
        )));
    }
    Ok(())
}

/// The challenge of notebook 03: turn one test digit into another class with at least 90%
/// confidence, no pixel moving more than `eps`, calling the model at most `max_calls` times.
#[derive(Clone)]
pub struct Challenge {
    /// The digit to change, `(1, 1, 28, 28)`.
    pub original: Tensor,
    pub index: usize,
    pub label: u32,
    pub target: u32,
    pub eps: f32,
    pub min_confidence: f32,
    /// Forward passes of the model allowed: each gradient step of an attack makes one.
    pub max_calls: usize,
}

impl Challenge {
    /// The lab's challenge. See the notebook for how eps and the budget were chosen.
    pub fn new() -> Result<Self> {
        let index = CHALLENGE_INDEX;
        let (original, label) = mnist::test()?.get(index)?;
        Ok(Challenge {
            original,
            index,
            label,
            target: CHALLENGE_TARGET,
            eps: CHALLENGE_EPS,
            min_confidence: 0.9,
            max_calls: CHALLENGE_CALLS,
        })
    }

    /// Shows the digit and the task.
    pub fn evcxr_display(&self) {
        let grid = crate::plot::ImageGrid::new(
            format!(
                "Challenge: make this {} read as {} {} (>= {:.0}%), eps = {}, at most {} model calls",
                self.label,
                article(self.target),
                self.target,
                self.min_confidence * 100.0,
                self.eps,
                self.max_calls
            ),
            1,
        )
        .image(&self.original, format!("test digit #{}", self.index));
        match grid {
            Ok(g) => g.evcxr_display(),
            Err(e) => println!("{}", e.message()),
        }
    }
}

impl fmt::Debug for Challenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::plot::debug_figure(
            f,
            "Challenge",
            &format!("{} -> {}, eps {}", self.label, self.target, self.eps),
            || self.evcxr_display(),
        )
    }
}

/// Test digit used for the challenge, its target, the budget and the number of model calls;
/// measured in the notebook and held by this module's tests.
pub const CHALLENGE_INDEX: usize = 1;
pub const CHALLENGE_TARGET: u32 = 8;
pub const CHALLENGE_EPS: f32 = 0.19;
pub const CHALLENGE_CALLS: usize = 10;

/// Notebook 03, TODO 4: checks the challenge by predicting again, and counts the model calls
/// `f` made. `f` is `fn solve(model: &Classifier, challenge: &Challenge) -> Result<Tensor>`.
pub fn challenge<F>(f: F) -> Verdict
where
    F: Fn(&Classifier, &Challenge) -> Result<Tensor>,
{
    const TODO: &str = "TODO 4 (the challenge)";
    check(TODO, || {
        let model = Classifier::pretrained()?;
        let (counted, calls) = model.counting_calls();
        let c = Challenge::new()?;
        let adv = run_own(TODO, &["targeted_descent"], || f(&counted, &c))?;
        let used = calls.count();
        let verdict = judge_challenge(&model, &c, &adv);
        if used > c.max_calls {
            let result = if verdict.passed() {
                "it reached the target, but only by going over budget".to_string()
            } else {
                verdict.message.clone()
            };
            return Ok(Verdict::fail(
                    TODO,
                    format!("at most {} calls of the model", c.max_calls),
                    format!("{used} calls ({result})"),
                    "each step of your loop calls the model once (for its gradient): reach the target in fewer, larger steps. Which step size lets 10 steps go far enough, and does the sign of the gradient help?",
                ));
        }
        if verdict.passed() {
            return Ok(Verdict::pass(
                TODO,
                format!("{} It took {used} model call(s) of the {} allowed.", verdict.message, c.max_calls),
            ));
        }
        Ok(verdict)
    })
}

/// The challenge's rules for an image: shape, pixels in [0, 1], within eps, and the target class
/// with enough confidence, predicted again.
pub fn judge_challenge(model: &Classifier, c: &Challenge, adv: &Tensor) -> Verdict {
    const TODO: &str = "TODO 4 (the challenge)";
    check(TODO, || {
        if let Some(v) = mismatch(TODO, adv, &c.original, "an image", "return one image, like challenge.original") {
            return Ok(v);
        }
        crate::validate::check_finite(adv, "your image")?;
        let (lo, hi) = (adv.min_all()?.to_scalar::<f32>()?, adv.max_all()?.to_scalar::<f32>()?);
        if lo < 0.0 || hi > 1.0 {
            return Ok(Verdict::fail(
                TODO,
                "pixels in [0, 1]",
                format!("pixels from {lo:.3} to {hi:.3}"),
                "the values were not clamped",
            ));
        }
        let moved = max_abs_diff(adv, &c.original)?;
        if moved > c.eps + 1e-6 {
            return Ok(Verdict::fail(
                TODO,
                format!("no pixel moved more than eps = {}", c.eps),
                format!("a pixel moved {moved:.4}"),
                "eps was broken: project onto the eps-ball after every step",
            ));
        }
        let p = model.predict(adv)?[0];
        let target_p = model.probabilities(adv)?.get(0)?.get(c.target as usize)?.to_scalar::<f32>()?;
        if p.class != c.target as usize || target_p < c.min_confidence {
            return Ok(Verdict::fail(
                    TODO,
                    format!("the model to say {} with >= {:.0}%", c.target, c.min_confidence * 100.0),
                    format!("{} with {:.1}% (p({}) = {:.1}%)", p.class, p.confidence * 100.0, c.target, target_p * 100.0),
                    "not there yet: with so few steps, each one has to go further; try larger step sizes (the projection keeps you within eps)",
                ));
        }
        Ok(Verdict::pass(
            TODO,
            format!(
                "the model now reads {} {} with {:.1}% confidence; largest pixel change {moved:.3} <= eps {}.",
                article(c.target),
                c.target,
                target_p * 100.0,
                c.eps
            ),
        ))
    })
}
