//! Notebook 04's check: one adversarial training step.

use super::*;
use crate::data::mnist;
use crate::grad::Objective;
use crate::model::Classifier;
use candle_core::Var;
use std::collections::HashMap;

/// A trainable model, its weights as named `Var`s, and an optimiser over them.
pub type Trainable = (Classifier, Vec<(String, Var)>, candle_nn::AdamW);

/// A trainable copy of `params` with its `Var`s and a fresh optimiser, as [`adversarial_step`]'s
/// check hands them out: Adam at 1e-3, no weight decay.
pub fn check_trainable(params: &HashMap<String, Tensor>) -> Result<Trainable> {
    use candle_nn::Optimizer;
    let (model, vars) = Classifier::trainable(params)?;
    let opt = candle_nn::AdamW::new(
        vars.iter().map(|(_, v)| v.clone()).collect(),
        candle_nn::ParamsAdamW { lr: 1e-3, weight_decay: 0.0, ..Default::default() },
    )?;
    Ok((model, vars, opt))
}

/// Notebook 04, the lab's own adversarial training step: PGD-7 (step 0.3 eps, random start)
/// against the frozen weights, then one Adam step on the cross-entropy of the attacked batch.
/// Returns the attacked batch.
pub(crate) fn reference_adversarial_step(
    model: &Classifier,
    opt: &mut candle_nn::AdamW,
    x: &Tensor,
    y: &Tensor,
    eps: f32,
) -> Result<Tensor> {
    use candle_nn::Optimizer;
    let x_adv = crate::train::attack_batch(
        &model.frozen(),
        x,
        y,
        &crate::train::AdversarialTraining { eps, ..crate::train::AdversarialTraining::shipped() },
        eps,
        0,
    )?;
    let loss = candle_nn::loss::cross_entropy(&model.forward(&x_adv)?, y)?;
    opt.backward_step(&loss)?;
    Ok(x_adv)
}

/// Notebook 04, TODO 1: one adversarial training step,
/// `fn adversarial_step(model: &Classifier, opt: &mut AdamW, x: &Tensor, y: &Tensor, eps: f32) -> Result<Tensor>`:
/// attack the batch `x` (labels `y`) within `eps` against the current weights, take one optimiser
/// step on the attacked batch, and return that batch.
///
/// The check gives your function the shipped plain model (as `Var`s), a fresh Adam and 64
/// training digits at eps 0.25 (not the 0.3 of the notebook, so a budget written into the function
/// instead of taken from `eps` shows). It asks the untouched model about the batch you return (is
/// it attacked, within budget, valid?) and replays one Adam step on it and on the clean batch from
/// the same weights, to see which one your weights took.
pub fn adversarial_step<F>(f: F) -> Verdict
where
    F: FnOnce(&Classifier, &mut candle_nn::AdamW, &Tensor, &Tensor, f32) -> Result<Tensor>,
{
    const TODO: &str = "TODO 1 (adversarial training step)";
    check(TODO, || {
        let eps = 0.25;
        let batch = mnist::train()?.take(64)?;
        let (x, y) = (batch.images.clone(), batch.labels.clone());
        let plain = Classifier::pretrained()?;
        let (model, vars, mut opt) = check_trainable(plain.parameters())?;
        let returned = run_student(TODO, || f(&model, &mut opt, &x, &y, eps))?;
        if let Some(v) = mismatch(
            TODO,
            &returned,
            &x,
            "the attacked batch",
            "return the attacked batch itself, one image per digit of `x`",
        ) {
            return Ok(v);
        }
        let moved = max_abs_diff(&returned, &x)?;
        if moved < 1e-6 {
            // Did the weights step on some other batch, an attacked one the function did not return?
            let stepped_elsewhere =
                weights_moved(&vars, &plain)? && replay(&plain, &vars, &x, &y, Replay::Descent)? < 0.99;
            let cause = if stepped_elsewhere {
                "your weights stepped on a batch other than `x`, but you returned `x` itself: return the attacked batch your step was taken on (`Ok(x_adv)`)"
            } else {
                "the inner step must attack `x` first: `pgd(&model.frozen(), x, &Objective::untargeted(y)?, &config)?.adversarial`, then step on that batch and return it"
            };
            return Ok(Verdict::fail(TODO, "the attacked batch", "the clean batch, unchanged", cause));
        }
        if let Err(e) = crate::validate::check_batch(&returned, "the attacked batch") {
            return Ok(Verdict::fail(
                TODO,
                "pixels in [0, 1]",
                "pixels outside it",
                format!("{}; clamp after every attack step with `clamp_pixels`", e.message()),
            ));
        }
        if moved > eps + 1e-5 {
            return Ok(Verdict::fail(
                    TODO,
                    format!("no pixel moved more than eps = {eps}"),
                    format!("a pixel moved by {moved:.3}"),
                    "the attack was not projected back into the budget (after each step, `project_linf(&x_adv, x, eps)?` then `clamp_pixels`; a model trained on unbounded images learns the wrong game), or it uses a budget of its own instead of the `eps` argument",
                ));
        }
        let labels = Objective::untargeted(&y)?;
        let fooled = |images: &Tensor| -> Result<usize> {
            Ok(plain.predict(images)?.iter().zip(labels.classes()).filter(|(p, &c)| p.class != c as usize).count())
        };
        let (got_fooled, clean_fooled) = (fooled(&returned)?, fooled(&x)?);
        let (ref_model, _, mut ref_opt) = check_trainable(plain.parameters())?;
        let reference = reference_adversarial_step(&ref_model, &mut ref_opt, &x, &y, eps)?;
        let ref_fooled = fooled(&reference)?;
        if got_fooled * 2 < ref_fooled {
            let cause = if got_fooled <= clean_fooled {
                "your attack makes the digits no harder than the clean ones: it climbs the objective instead of descending it (with `Objective::untargeted`, step `x - step * sign(grad)`), or its steps are too small to reach eps"
            } else {
                "the attack is too weak to train against: use several PGD steps of a good fraction of eps (the lab uses 7 steps of 0.3 eps) from a random start"
            };
            return Ok(Verdict::fail(TODO, format!("an attack that fools the untouched model on about {ref_fooled} of 64 digits, as the lab's PGD-7 does"), format!("{got_fooled} of 64 fooled"), cause));
        }
        // Which batch did the weights step on? Replay one Adam step from the same weights.
        if !weights_moved(&vars, &plain)? {
            return Ok(Verdict::fail(
                    TODO,
                    "the weights to take one optimiser step",
                    "weights that did not move",
                    "after the attack, compute the loss with the model being trained, `model.forward(&x_adv)` (not `model.frozen()`, whose weights are cut off from the optimiser), and call `opt.backward_step(&loss)?`",
                ));
        }
        let on = |images: &Tensor, how: Replay| replay(&plain, &vars, images, &y, how);
        let on_returned = on(&returned, Replay::Descent)?;
        if on_returned < 0.99 {
            let cause = if on(&x, Replay::Descent)? >= 0.99 {
                "the weights stepped on the clean batch `x`: the outer step must be taken on the attacked batch, `model.forward(&x_adv)`".to_string()
            } else if on(&returned, Replay::Ascent)? >= 0.99 {
                "your weight step climbed the loss (`loss.neg()`, or a gradient added instead of subtracted): the attack maximises the loss over the input, but the weights must *minimise* it: `opt.backward_step(&loss)?` on the cross-entropy itself".to_string()
            } else if on(&returned, Replay::Probabilities)? >= 0.99 {
                "you fed probabilities to the loss: `cross_entropy` takes the logits, `model.forward(&x_adv)?`, and applies the softmax itself (probabilities go through it twice, and their gradient almost vanishes)".to_string()
            } else {
                format!("only {:.0}% of the weights moved as one Adam step on your returned batch would move them: take exactly one `opt.backward_step` on the cross-entropy of the attacked batch, and return that batch", 100.0 * on_returned)
            };
            return Ok(Verdict::fail(TODO, "one weight step on the attacked batch", "a different step", cause));
        }
        Ok(Verdict::pass(
                TODO,
                format!("your attack fools the untouched model on {got_fooled} of 64 digits within eps {eps} (the lab's PGD-7: {ref_fooled}), and the weights took one step on that attacked batch."),
            ))
    })
}

/// How a replayed weight step computes its loss from the logits.
#[derive(Clone, Copy)]
enum Replay {
    /// The cross-entropy, descended: the step the TODO asks for.
    Descent,
    /// The cross-entropy, climbed (`loss.neg()`).
    Ascent,
    /// The cross-entropy of the softmax probabilities instead of the logits.
    Probabilities,
}

/// Whether any of the student's weights moved away from `plain`'s.
fn weights_moved(vars: &[(String, Var)], plain: &Classifier) -> Result<bool> {
    for (name, v) in vars {
        if max_abs_diff(v.as_tensor(), &plain.parameters()[name])? > 0.0 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// One Adam step from `plain`'s weights on `images`, computed `how`, and the fraction of the
/// student's weights (`vars`) it reproduces (see [`agreement`]).
fn replay(plain: &Classifier, vars: &[(String, Var)], images: &Tensor, y: &Tensor, how: Replay) -> Result<f32> {
    use candle_nn::Optimizer;
    let after: Vec<Tensor> = vars.iter().map(|(_, v)| v.as_tensor().detach()).collect();
    let (m, vs, mut o) = check_trainable(plain.parameters())?;
    let logits = m.forward(images)?;
    let loss = match how {
        Replay::Descent => candle_nn::loss::cross_entropy(&logits, y)?,
        Replay::Ascent => candle_nn::loss::cross_entropy(&logits, y)?.neg()?,
        Replay::Probabilities => {
            candle_nn::loss::cross_entropy(&candle_nn::ops::softmax(&logits, candle_core::D::Minus1)?, y)?
        }
    };
    o.backward_step(&loss)?;
    agreement(&after, &vs)
}

/// The fraction of weights whose value after the student's step (`after`, in name order) equals
/// the replayed step's (`replayed`, in name order too), within 1e-6. One Adam step moves each
/// weight by about the learning rate (1e-3), so a step on another batch differs in most weights.
fn agreement(after: &[Tensor], replayed: &[(String, Var)]) -> Result<f32> {
    let (mut same, mut total) = (0usize, 0usize);
    for (a, (_, r)) in after.iter().zip(replayed) {
        let close = (a - r.as_tensor())?.abs()?.lt(1e-6)?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
        same += close as usize;
        total += a.elem_count();
    }
    Ok(same as f32 / total.max(1) as f32)
}
