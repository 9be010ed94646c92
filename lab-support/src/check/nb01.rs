//! Notebook 01's check: one gradient-descent step on the approximator's weights.

use super::*;
use crate::approx::{log2_points, Mlp};

/// Notebook 01, TODO: one gradient-descent step on an [`Mlp`]'s weights,
/// `fn train_step(mlp: &Mlp, xs: &Tensor, ys: &Tensor, lr: f64) -> Result<f32>`, returning the
/// loss before the step.
pub fn train_step<F>(f: F) -> Verdict
where
    F: Fn(&Mlp, &Tensor, &Tensor, f64) -> Result<f32>,
{
    const TODO: &str = "TODO (training step)";
    check(TODO, || {
        let (xs, ys) = log2_points()?;
        let lr = 0.01;
        let student = Mlp::new(8, 42)?;
        let reference = student.deep_clone()?;
        let before = student.snapshot()?;
        let got_loss = run_own(TODO, &["Mlp::train"], || f(&student, &xs, &ys, lr))?;
        let want_loss = reference.reference_step(&xs, &ys, lr)?;
        let after = student.snapshot()?;
        let want = reference.snapshot()?;
        let (mut moved, mut worst, mut dot_sw, mut dot_ww, mut dot_ss) = (0f32, 0f32, 0f64, 0f64, 0f64);
        for ((b, a), w) in before.iter().zip(&after).zip(&want) {
            moved = moved.max(max_abs_diff(a, b)?);
            worst = worst.max(max_abs_diff(a, w)?);
            let (ds, dw) = ((a - b)?, (w - b)?);
            (dot_sw, dot_ww, dot_ss) = (dot_sw + dot(&ds, &dw)?, dot_ww + dot(&dw, &dw)?, dot_ss + dot(&ds, &ds)?);
        }
        let scale = dot_sw / dot_ww.max(1e-30);
        let cos = dot_sw / (dot_ss.sqrt() * dot_ww.sqrt()).max(1e-30);
        if moved == 0.0 {
            return Ok(Verdict::fail(
                TODO,
                "every weight to move by -lr * dE/dw",
                "weights that did not change",
                "the new values were never written back: use `var.set(&new_value)?` for each var in `mlp.vars()`",
            ));
        }
        if worst > 1e-5 {
            let cause = if cos < -0.99 {
                "the sign is flipped: moving with the gradient (w + lr * g) climbs the loss; step against it, w - lr * g".to_string()
            } else if cos > 0.99 {
                format!("the step is {scale:.3} times the right size: multiply the gradient by exactly lr")
            } else {
                "the update is not -lr * dE/dw for every weight: take the gradient of the mean squared error and update all six vars".into()
            };
            return Ok(Verdict::fail(
                TODO,
                "the weights after one step of w - lr * dE/dw",
                format!("weights off by up to {worst:.2e}"),
                cause,
            ));
        }
        if (got_loss - want_loss).abs() > 1e-4 * want_loss.abs().max(1.0) {
            return Ok(Verdict::fail(
                TODO,
                format!("the loss before the step, {want_loss:.5}"),
                format!("{got_loss:.5}"),
                "return the mean squared error computed before updating the weights",
            ));
        }
        Ok(Verdict::pass(
            TODO,
            format!("your step moves every weight by -lr * dE/dw (loss {got_loss:.4} matches the reference)."),
        ))
    })
}
