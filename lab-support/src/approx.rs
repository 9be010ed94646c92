//! A tiny approximator for Problem #1: a multilayer perceptron from one number to one number.
//!
//! A network is an approximator tuned on discrete points. [`Mlp`] is trained on the five points
//! of [`log2_points`] (x = 1, 2, 4, 8, 16, y = log2 x) by plain gradient descent on the weights:
//! predict, measure the mean squared error E, take dE/dw for every weight, step against it.
//! Between the points nothing ties it to log2.
//!
//! ```
//! use lab_support::approx::{log2_points, Mlp};
//! let (xs, ys) = log2_points()?;
//! let mlp = Mlp::new(32, 0)?;
//! // Notebook 01 trains it with `mlp.train(&xs, &ys, 300, 0.01, train_step)`, where
//! // `train_step` is the TODO: one step of gradient descent on the weights.
//! assert!(mlp.loss(&xs, &ys)?.to_scalar::<f32>()? > 0.0);
//! assert_eq!(mlp.predict(&[1.0, 16.0])?.len(), 2);
//! # Ok::<(), lab_support::LabError>(())
//! ```

use crate::error::{LabError, Result};
use crate::model::fresh_id;
use crate::notebook::{call_student, StudentCall};
use crate::rng::SeededRng;
use candle_core::{Device, Tensor, Var};
use std::sync::Mutex;

/// The five training points: x = 1, 2, 4, 8, 16 and y = log2 x = 0..4, each shaped `(5, 1)`.
pub fn log2_points() -> Result<(Tensor, Tensor)> {
    crate::notebook::init();
    let xs = Tensor::new(&[[1f32], [2.], [4.], [8.], [16.]], &Device::Cpu)?;
    let ys = Tensor::new(&[[0f32], [1.], [2.], [3.], [4.]], &Device::Cpu)?;
    Ok((xs, ys))
}

/// Why training went wrong: one step with a tiny learning rate from the starting weights must
/// lower the loss if the step is right, whatever the learning rate of the real run.
fn diagnose<F>(start: &Mlp, xs: &Tensor, ys: &Tensor, step: &mut F) -> Result<String>
where
    F: FnMut(&Mlp, &Tensor, &Tensor, f64) -> Result<f32>,
{
    let probe = start.deep_clone()?;
    let before = probe.loss(xs, ys)?.to_scalar::<f32>()?;
    step(&probe, xs, ys, 1e-4)?;
    let after = probe.loss(xs, ys)?.to_scalar::<f32>()?;
    Ok(if after > before {
        format!(
            "The cause is your train_step, not the learning rate: one step with lr = 0.0001 raised the \
             loss from {before:.6} to {after:.6}, so it moves the weights uphill, with the gradient. The sign \
             is flipped: step with w - lr * dE/dw (check::train_step says the same)"
        )
    } else {
        "A step with a tiny learning rate lowers the loss, so the step's direction is right: this \
         learning rate is too large. Try a smaller one, such as a tenth"
            .into()
    })
}

/// 1 -> width -> width -> 1, tanh between layers. Its weights are `Var`s you can update.
#[derive(Debug)]
pub struct Mlp {
    // Behind a lock so that `train` can give the weights fresh ids (see `model::fresh_id`) when
    // a network made in one notebook cell is trained in another.
    vars: Mutex<Vec<Var>>,
}

impl Clone for Mlp {
    /// Shares the weights (like cloning a `Var`); see [`Mlp::deep_clone`] for a copy.
    fn clone(&self) -> Self {
        Mlp { vars: Mutex::new(self.vars()) }
    }
}

impl Mlp {
    /// Fresh weights, uniform in `±1/sqrt(fan_in)` from a seeded generator.
    pub fn new(width: usize, seed: u64) -> Result<Self> {
        Self::with_init_scale(width, seed, 1.0)
    }

    /// Like [`Mlp::new`], with the first layer's initial weights and biases multiplied by
    /// `scale`. Large scales make each tanh unit a sharp step at a random x: the network can
    /// still fit the five points, but what it does between them changes character.
    pub fn with_init_scale(width: usize, seed: u64, scale: f32) -> Result<Self> {
        if !(scale.is_finite() && scale > 0.0) {
            return Err(LabError::invalid("scale", scale, "a finite number > 0; 1.0 is the usual initialisation"));
        }
        if width == 0 || width > 4096 {
            return Err(LabError::invalid("width", width, "between 1 and 4096 neurons"));
        }
        let mut rng = SeededRng::new(seed);
        let mut layer = |fan_in: usize, fan_out: usize, scale: f32| -> Result<[Var; 2]> {
            let b = scale / (fan_in as f32).sqrt();
            Ok([
                Var::from_tensor(&rng.uniform_tensor(&[fan_in, fan_out], -b, b)?)?,
                Var::from_tensor(&rng.uniform_tensor(&[fan_out], -b, b)?)?,
            ])
        };
        let vars =
            [layer(1, width, scale)?, layer(width, width, 1.0)?, layer(width, 1, 1.0)?].into_iter().flatten().collect();
        Ok(Mlp { vars: Mutex::new(vars) })
    }

    /// The weights and biases, layer by layer: `[w1, b1, w2, b2, w3, b3]`.
    pub fn vars(&self) -> Vec<Var> {
        self.vars.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Gives every weight a new `Var` with the same values, numbered by the current cell.
    fn refresh_ids(&self) -> Result<()> {
        let mut vars = self.vars.lock().unwrap_or_else(|p| p.into_inner());
        for v in vars.iter_mut() {
            *v = Var::from_tensor(&v.as_tensor().copy()?)?;
        }
        Ok(())
    }

    /// Predictions `(N, 1)` for inputs `(N, 1)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = fresh_id(x)?;
        let v = self.vars();
        let h = x.matmul(v[0].as_tensor())?.broadcast_add(v[1].as_tensor())?.tanh()?;
        let h = h.matmul(v[2].as_tensor())?.broadcast_add(v[3].as_tensor())?.tanh()?;
        Ok(h.matmul(v[4].as_tensor())?.broadcast_add(v[5].as_tensor())?)
    }

    /// Predictions at each `x`.
    pub fn predict(&self, xs: &[f64]) -> Result<Vec<f64>> {
        let x = Tensor::from_vec(xs.iter().map(|&x| x as f32).collect::<Vec<_>>(), (xs.len(), 1), &Device::Cpu)?;
        Ok(self.forward(&x)?.flatten_all()?.to_vec1::<f32>()?.into_iter().map(f64::from).collect())
    }

    /// `(x, prediction)` pairs at each `x`, ready for [`crate::plot::LinePlot::line`].
    pub fn curve(&self, xs: &[f64]) -> Result<Vec<(f64, f64)>> {
        Ok(xs.iter().copied().zip(self.predict(xs)?).collect())
    }

    /// The mean squared error on `(xs, ys)`.
    pub fn loss(&self, xs: &Tensor, ys: &Tensor) -> Result<Tensor> {
        Ok((self.forward(xs)? - ys)?.sqr()?.mean_all()?)
    }

    /// One step of plain gradient descent: `w <- w - lr * dE/dw` for every weight. Returns E
    /// before the step.
    pub(crate) fn reference_step(&self, xs: &Tensor, ys: &Tensor, lr: f64) -> Result<f32> {
        let loss = self.loss(xs, ys)?;
        let grads = loss.backward()?;
        for var in self.vars() {
            if let Some(g) = grads.get(var.as_tensor()) {
                var.set(&(var.as_tensor() - (g * lr)?)?)?;
            }
        }
        Ok(loss.to_scalar::<f32>()?)
    }

    /// Runs `epochs` training steps with `step` (yours, notebook 01's TODO) and returns
    /// the loss of each.
    ///
    /// If `step` is still a `todo!()`, this says so and trains with the reference step instead,
    /// so the rest of the notebook still works.
    pub fn train<F>(&self, xs: &Tensor, ys: &Tensor, epochs: usize, lr: f64, mut step: F) -> Result<Vec<f32>>
    where
        F: FnMut(&Mlp, &Tensor, &Tensor, f64) -> Result<f32>,
    {
        let _call = crate::notebook::library_call("Mlp::train");
        if !(lr.is_finite() && lr > 0.0) {
            return Err(LabError::invalid("lr", lr, "a finite learning rate > 0, such as 0.01"));
        }
        crate::validate::check_steps(epochs)?;
        self.refresh_ids()?;
        let start = self.deep_clone()?;
        let mut losses = Vec::with_capacity(epochs);
        for epoch in 0..epochs {
            let loss = if epoch == 0 {
                match call_student(|| step(self, xs, ys, lr)) {
                    StudentCall::Returned(r) => r?,
                    StudentCall::Todo(msg) => {
                        println!(
                            "Your training step is not written yet ({msg}); training with the reference step instead."
                        );
                        return self.train(xs, ys, epochs, lr, Mlp::reference_step);
                    }
                    StudentCall::Panicked(msg) => {
                        return Err(LabError::Other(format!("your training step panicked: {msg}")))
                    }
                }
            } else {
                step(self, xs, ys, lr)?
            };
            if !loss.is_finite() {
                let cause = diagnose(&start, xs, ys, &mut step)?;
                return Err(LabError::Other(format!(
                    "the loss became {loss} at epoch {epoch}: training diverged. {cause}"
                )));
            }
            losses.push(loss);
        }
        // Gradient descent with a working step lowers the loss over thousands of epochs; a loss
        // that ends above where it started means the step goes the wrong way.
        if let (Some(&first), Some(&last)) = (losses.first(), losses.last()) {
            if epochs >= 10 && last > first {
                let cause = diagnose(&start, xs, ys, &mut step)?;
                return Err(LabError::Other(format!(
                    "the loss rose from {first:.4} to {last:.4} over {epochs} epochs. {cause}"
                )));
            }
        }
        Ok(losses)
    }

    /// A copy of the current weights, for comparing before and after a step.
    pub fn snapshot(&self) -> Result<Vec<Tensor>> {
        Ok(self.vars().iter().map(|v| v.as_tensor().copy()).collect::<std::result::Result<_, _>>()?)
    }

    /// An independent copy (new `Var`s with the same values).
    pub fn deep_clone(&self) -> Result<Self> {
        let vars = self
            .vars()
            .iter()
            .map(|v| Var::from_tensor(&v.as_tensor().copy()?))
            .collect::<std::result::Result<_, _>>()?;
        Ok(Mlp { vars: Mutex::new(vars) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_sign_is_named_as_the_cause_not_the_learning_rate() {
        let (xs, ys) = log2_points().unwrap();
        let uphill = |mlp: &Mlp, xs: &Tensor, ys: &Tensor, lr: f64| mlp.reference_step(xs, ys, -lr);
        let msg = Mlp::new(32, 1).unwrap().train(&xs, &ys, 3000, 0.01, uphill).unwrap_err().to_string();
        assert!(msg.contains("sign is flipped") && !msg.contains("smaller"), "{msg}");
        // A right step with a learning rate far too large is told to use a smaller one.
        let msg = Mlp::new(32, 1).unwrap().train(&xs, &ys, 300, 50.0, Mlp::reference_step).unwrap_err().to_string();
        assert!(msg.contains("smaller") && !msg.contains("sign is flipped"), "{msg}");
        // And a good run is not disturbed.
        let losses = Mlp::new(32, 1).unwrap().train(&xs, &ys, 300, 0.01, Mlp::reference_step).unwrap();
        assert!(losses.last() < losses.first());
    }
}
