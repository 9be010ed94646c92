//! Gradients with respect to the *input*, and the projections that keep an image valid.
//!
//! Training moves the weights against `dE/dw`. Here the weights stay fixed and we ask for
//! `dE/dx`: how the loss changes when each pixel changes. Two objectives, both to be *minimised*:
//!
//! - [`Objective::Targeted`]: cross-entropy toward a target class, `E = -log p_target(x)`.
//!   Descending it makes the model say the target.
//! - [`Objective::Untargeted`]: cross-entropy *away* from the true class, `E = +log p_true(x)`
//!   (the negated cross-entropy). Descending it makes the model stop saying the truth.
//!
//! Losses are summed over the batch, not averaged, so each image's gradient is the same whatever
//! the batch size. They are computed from logits with a log-softmax, because candle's
//! `softmax_last_dim` has no backward pass: gradients through it silently go missing.
//!
//! ```
//! use lab_support::prelude::*;
//! let model = Classifier::pretrained()?;
//! let (x, _label) = mnist::test()?.get(0)?;
//! let g = input_gradient(&model, &x, &Objective::targeted(3, 1)?)?;
//! assert_eq!(g.grad.dims(), x.dims());
//! let x_next = clamp_pixels(&(&x - (g.grad * 0.1)?)?)?;
//! # Ok::<(), LabError>(())
//! ```

use crate::error::{LabError, Result};
use crate::model::Classifier;
use crate::validate::{check_batch, check_class, check_eps, same_shape};
use candle_core::{DType, Tensor, Var, D};

/// What an attack wants the model to do, for each image of a batch.
#[derive(Clone, Debug)]
pub enum Objective {
    /// Make image `i` classified as `targets[i]`.
    Targeted(Vec<u32>),
    /// Make image `i` classified as anything but `labels[i]`.
    Untargeted(Vec<u32>),
}

impl Objective {
    /// The same target class for a batch of `n` images.
    pub fn targeted(class: u32, n: usize) -> Result<Self> {
        check_class(class)?;
        Ok(Objective::Targeted(vec![class; n]))
    }

    /// Away from the given true labels (a tensor or a slice).
    pub fn untargeted(labels: &Tensor) -> Result<Self> {
        let labels = labels.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        labels.iter().try_for_each(|&c| check_class(c))?;
        Ok(Objective::Untargeted(labels))
    }

    /// The class index per image (targets or true labels).
    pub fn classes(&self) -> &[u32] {
        match self {
            Objective::Targeted(c) | Objective::Untargeted(c) => c,
        }
    }

    /// True for a targeted objective.
    pub fn is_targeted(&self) -> bool {
        matches!(self, Objective::Targeted(_))
    }

    pub(crate) fn validate(&self, batch: usize) -> Result<()> {
        let classes = self.classes();
        classes.iter().try_for_each(|&c| check_class(c))?;
        if classes.len() != batch {
            return Err(LabError::invalid(
                "objective",
                format!("{} class(es)", classes.len()),
                format!("one class per image: the batch holds {batch} image(s)"),
            ));
        }
        Ok(())
    }

    /// The loss of the given kind to minimise, summed over the batch, from logits `(N, 10)`.
    pub fn loss_of(&self, logits: &Tensor, kind: AttackLoss) -> Result<Tensor> {
        match kind {
            AttackLoss::CrossEntropy => self.loss(logits),
            AttackLoss::Margin => self.margin_loss(logits),
        }
    }

    /// The margin (Carlini-Wagner) loss to minimise, summed over the batch, from logits `(N, 10)`:
    /// `z_true - max_{j != true} z_j` away from the true class, `max_{j != target} z_j - z_target`
    /// toward a target. Below zero, the attack has succeeded.
    ///
    /// Cross-entropy flattens out once the softmax saturates (a model that is 99.99% sure has a
    /// gradient of almost nothing), and some defenses saturate it on purpose; the margin of the
    /// logits keeps a gradient of the same size however sure the model is.
    pub fn margin_loss(&self, logits: &Tensor) -> Result<Tensor> {
        let (n, k) = logits.dims2()?;
        let classes = Tensor::new(self.classes(), logits.device())?.unsqueeze(1)?;
        let picked = logits.gather(&classes, 1)?.squeeze(1)?;
        // The class's own logit pushed far down, so the max runs over the others.
        let is_class = Tensor::arange(0u32, k as u32, logits.device())?
            .unsqueeze(0)?
            .broadcast_as((n, k))?
            .broadcast_eq(&classes)?;
        let pushed = is_class.to_dtype(logits.dtype())?.affine(1e9, 0.0)?;
        let others = (logits - pushed)?.max(1)?;
        let margin = match self {
            Objective::Targeted(_) => (others - picked)?,
            Objective::Untargeted(_) => (picked - others)?,
        };
        Ok(margin.sum_all()?)
    }

    /// The loss to minimise, summed over the batch, from logits `(N, 10)`.
    pub fn loss(&self, logits: &Tensor) -> Result<Tensor> {
        let classes = Tensor::new(self.classes(), logits.device())?;
        let log_probs = candle_nn::ops::log_softmax(logits, D::Minus1)?;
        let picked = log_probs.gather(&classes.unsqueeze(1)?, 1)?.sum_all()?;
        Ok(match self {
            Objective::Targeted(_) => picked.neg()?,
            Objective::Untargeted(_) => picked,
        })
    }
}

/// Which loss an attack descends. Both reach the same goal; they differ in where their gradient
/// vanishes (see [`Objective::margin_loss`]). A strong evaluation tries both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttackLoss {
    /// [`Objective::loss`]: cross-entropy toward the target, or away from the true class.
    CrossEntropy,
    /// [`Objective::margin_loss`]: the gap between the class's logit and the best other one.
    Margin,
}

/// The loss and its gradient with respect to the input batch.
#[derive(Clone, Debug)]
pub struct InputGradient {
    /// The objective's loss, summed over the batch.
    pub loss: f32,
    /// `dE/dx`, same shape as the input.
    pub grad: Tensor,
    /// The logits at the input, `(N, 10)`.
    pub logits: Tensor,
}

/// `dE/dx` for a batch `(N, 1, 28, 28)` under `objective`, weights held fixed.
pub fn input_gradient(model: &Classifier, images: &Tensor, objective: &Objective) -> Result<InputGradient> {
    let _call = crate::notebook::library_call("input_gradient");
    check_batch(images, "the image batch")?;
    objective.validate(images.dim(0)?)?;
    input_gradient_unchecked(model, images, objective)
}

/// [`input_gradient`] without the input checks, for attack loops that checked once.
pub(crate) fn input_gradient_unchecked(
    model: &Classifier,
    images: &Tensor,
    objective: &Objective,
) -> Result<InputGradient> {
    input_gradient_of(model, images, objective, AttackLoss::CrossEntropy)
}

/// [`input_gradient_unchecked`] of either loss.
pub(crate) fn input_gradient_of(
    model: &Classifier,
    images: &Tensor,
    objective: &Objective,
    kind: AttackLoss,
) -> Result<InputGradient> {
    let x = Var::from_tensor(&images.detach())?;
    let logits = model.forward(x.as_tensor())?;
    let loss = objective.loss_of(&logits, kind)?;
    let grads = loss.backward()?;
    let grad = match grads.get(x.as_tensor()) {
        Some(g) => g.clone(),
        // A preprocessing defense rounds the input: its derivative, and so the gradient, is zero.
        None if model.defense().is_some() => x.as_tensor().zeros_like()?,
        None => return Err(LabError::Other("the loss does not depend on the input: no gradient reached it".into())),
    };
    Ok(InputGradient { loss: loss.to_dtype(DType::F32)?.to_scalar::<f32>()?, grad, logits: logits.detach() })
}

/// Clamps every pixel into `[0, 1]`, the range of a valid image.
pub fn clamp_pixels(images: &Tensor) -> Result<Tensor> {
    Ok(images.clamp(0f32, 1f32)?)
}

/// Projects `images` onto the L-inf ball of radius `eps` around `original`: no pixel moves more
/// than `eps`. Does not clamp to `[0, 1]`; follow it with [`clamp_pixels`].
pub fn project_linf(images: &Tensor, original: &Tensor, eps: f32) -> Result<Tensor> {
    check_eps(eps)?;
    same_shape(images, original)?;
    let delta = (images - original)?.clamp(-eps, eps)?;
    Ok((original + delta)?)
}

/// Projects `images` onto the L2 ball of radius `eps` around `original`, image by image: a
/// perturbation longer than `eps` is scaled down to length `eps`, a shorter one is kept.
pub fn project_l2(images: &Tensor, original: &Tensor, eps: f32) -> Result<Tensor> {
    check_eps(eps)?;
    same_shape(images, original)?;
    let delta = (images - original)?;
    let norms = per_image_l2(&delta)?;
    // scale = min(1, eps / norm), guarding norm = 0.
    let scale = (norms.clamp(1e-12f32, f32::MAX)?.recip()? * eps as f64)?.clamp(0f32, 1f32)?;
    let n = delta.dim(0)?;
    let scaled = delta.broadcast_mul(&scale.reshape((n, 1, 1, 1))?)?;
    Ok((original + scaled)?)
}

/// The L2 norm of each image of a batch, `(N,)`.
pub fn per_image_l2(delta: &Tensor) -> Result<Tensor> {
    Ok(delta.flatten_from(1)?.sqr()?.sum(1)?.sqrt()?)
}

/// The L-inf norm (largest absolute pixel) of each image of a batch, `(N,)`.
pub fn per_image_linf(delta: &Tensor) -> Result<Tensor> {
    Ok(delta.flatten_from(1)?.abs()?.max(1)?)
}

/// Each image's gradient scaled to unit L2 length (zero stays zero): the L2 steepest direction.
pub fn normalize_l2(grad: &Tensor) -> Result<Tensor> {
    let n = grad.dim(0)?;
    let norms = per_image_l2(grad)?.clamp(1e-12f32, f32::MAX)?;
    Ok(grad.broadcast_div(&norms.reshape((n, 1, 1, 1))?)?)
}

/// A tensor of the given shape with uniform entries in `[-eps, eps]`, from a seeded generator.
pub fn uniform_noise(shape: &[usize], eps: f32, seed: u64) -> Result<Tensor> {
    let mut rng = crate::rng::SeededRng::new(seed);
    rng.uniform_tensor(shape, -eps, eps)
}

/// A batch of `n` images of uniform noise in `[0, 1]`, from a seeded generator.
pub fn noise_images(n: usize, seed: u64) -> Result<Tensor> {
    let mut rng = crate::rng::SeededRng::new(seed);
    rng.uniform_tensor(&[n, 1, 28, 28], 0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::mnist;
    use candle_core::Device;

    fn model() -> Classifier {
        Classifier::pretrained().expect("shipped model loads")
    }

    /// Central finite differences of the objective at a few pixels, in f64.
    fn finite_differences(model: &Classifier, x: &Tensor, objective: &Objective, pixels: &[usize], h: f64) -> Vec<f64> {
        let flat = x.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let loss_at = |v: Vec<f64>| {
            let t = Tensor::from_vec(v, x.dims(), x.device()).unwrap();
            objective.loss(&model.forward(&t).unwrap()).unwrap().to_scalar::<f64>().unwrap()
        };
        pixels
            .iter()
            .map(|&p| {
                let (mut plus, mut minus) = (flat.clone(), flat.clone());
                plus[p] += h;
                minus[p] -= h;
                (loss_at(plus) - loss_at(minus)) / (2.0 * h)
            })
            .collect()
    }

    #[test]
    fn input_gradient_matches_finite_differences() {
        // Tolerance, relative to the largest gradient entry: 1e-4 in f64 between the analytic
        // gradient and central differences (h = 1e-5; the untargeted loss of a confident digit is
        // ~1e-7, so round-off in the differences reaches ~1e-5 of its tiny gradient), and 1e-2 for
        // the f32 gradient the attacks use (1 - p in f32 loses digits when p is near 1).
        let model32 = model();
        let model64 = model32.to_dtype(DType::F64).unwrap();
        let test = mnist::test().unwrap();
        for (index, objective) in [(0, Objective::targeted(3, 1).unwrap()), (1, Objective::Untargeted(vec![2]))] {
            let (x, label) = test.get(index).unwrap();
            if let Objective::Untargeted(l) = &objective {
                assert_eq!(l[0], label, "test digit {index} changed");
            }
            // A clean digit is mostly exact zeros, so max-pool windows hold exact ties, where the
            // loss has a kink: central differences then average two one-sided slopes. Small noise
            // moves the check off those kinks.
            // Squeezed into [0.02, 0.98] first, so the noisy digit is still a valid image.
            let x =
                ((x * 0.96).unwrap() + 0.02).unwrap().add(&uniform_noise(&[1, 1, 28, 28], 0.02, 11).unwrap()).unwrap();
            let x64 = x.to_dtype(DType::F64).unwrap();
            let g64 = input_gradient(&model64, &x64, &objective)
                .unwrap()
                .grad
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let g32 =
                input_gradient(&model32, &x, &objective).unwrap().grad.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let scale = g64.iter().fold(0f64, |m, v| m.max(v.abs()));
            assert!(scale > 1e-8, "gradient is zero everywhere");
            // Probe the pixels with the largest gradients plus a spread of others.
            let mut order: Vec<usize> = (0..784).collect();
            order.sort_by(|&a, &b| g64[b].abs().total_cmp(&g64[a].abs()));
            let pixels: Vec<usize> = order[..8].iter().copied().chain((0..784).step_by(61)).collect();
            let fd = finite_differences(&model64, &x64, &objective, &pixels, 1e-5);
            for (&p, &numeric) in pixels.iter().zip(&fd) {
                let err64 = (g64[p] - numeric).abs() / scale;
                assert!(
                    err64 < 1e-4,
                    "pixel {p}: analytic {} vs finite difference {numeric} (rel err {err64:e})",
                    g64[p]
                );
                let err32 = (g32[p] as f64 - numeric).abs() / scale;
                assert!(
                    err32 < 1e-2,
                    "pixel {p}: f32 gradient {} vs finite difference {numeric} (rel err {err32:e})",
                    g32[p]
                );
            }
        }
    }

    #[test]
    fn gradient_flows_through_log_softmax_not_softmax_last_dim() {
        // The pitfall this module exists to avoid: candle's softmax_last_dim has no backward.
        let model = model();
        let (x, _) = mnist::test().unwrap().get(0).unwrap();
        let xv = Var::from_tensor(&x).unwrap();
        let probs = candle_nn::ops::softmax_last_dim(&model.forward(xv.as_tensor()).unwrap()).unwrap();
        let loss = probs.narrow(1, 3, 1).unwrap().sum_all().unwrap();
        let missing = loss.backward().unwrap().get(xv.as_tensor()).is_none();
        let ours = input_gradient(&model, &x, &Objective::targeted(3, 1).unwrap()).unwrap();
        assert!(ours.grad.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
        // If candle ever gains a backward for softmax_last_dim this documents the change.
        assert!(missing, "softmax_last_dim now has a backward pass; the notebooks' warning can go");
    }

    #[test]
    fn projections_keep_the_budget() {
        let x0 = noise_images(4, 1).unwrap();
        let far = (&x0 + uniform_noise(&[4, 1, 28, 28], 0.8, 2).unwrap()).unwrap();
        let linf = project_linf(&far, &x0, 0.1).unwrap();
        let d = per_image_linf(&(&linf - &x0).unwrap()).unwrap().to_vec1::<f32>().unwrap();
        assert!(d.iter().all(|&v| v <= 0.1 + 1e-6), "{d:?}");
        let l2 = project_l2(&far, &x0, 2.0).unwrap();
        let n = per_image_l2(&(&l2 - &x0).unwrap()).unwrap().to_vec1::<f32>().unwrap();
        assert!(n.iter().all(|&v| (v - 2.0).abs() < 1e-3), "{n:?}");
        // A perturbation already inside the ball is kept as it is.
        let near = (&x0 + uniform_noise(&[4, 1, 28, 28], 0.01, 3).unwrap()).unwrap();
        let kept = project_l2(&near, &x0, 2.0).unwrap();
        assert!((kept - &near).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() < 1e-6);
        let clamped = clamp_pixels(&far).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(clamped.iter().all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn rejects_bad_arguments() {
        let model = model();
        let x = noise_images(2, 0).unwrap();
        let err = |r: Result<InputGradient>| r.unwrap_err().to_string();
        assert!(Objective::targeted(10, 1).unwrap_err().to_string().contains("0..=9"));
        assert!(err(input_gradient(&model, &x, &Objective::Targeted(vec![1]))).contains("one class per image"));
        let wrong_shape = Tensor::zeros((2, 28, 28), DType::F32, &Device::Cpu).unwrap();
        assert!(err(input_gradient(&model, &wrong_shape, &Objective::Targeted(vec![1, 1]))).contains("unsqueeze"));
        let nan = (x.clone() * f64::NAN).unwrap();
        assert!(err(input_gradient(&model, &nan, &Objective::Targeted(vec![1, 1]))).contains("NaN"));
        assert!(project_linf(&x, &x, -0.1).unwrap_err().to_string().contains("eps"));
        assert!(project_l2(&x, &x, f32::NAN).unwrap_err().to_string().contains("eps"));
    }
}
