//! Robustness you can prove: interval bound propagation (IBP) through the lab CNN.
//!
//! An attack that fails shows that *it* found nothing; a certificate shows that nothing exists.
//! IBP pushes the whole box of inputs `[x - eps, x + eps] ∩ [0, 1]` through the network as one
//! interval per activation. In centre/radius form, a linear or convolutional layer maps the box
//! with centre `c` and radius `r` to centre `W c + b` and radius `|W| r`, the tightest box around
//! its image; relu and max pooling are monotone, so they map lower bounds to lower bounds and upper
//! to upper. The last layer is not bounded logit by logit: for a digit labelled `y`, the margins
//! `z_y - z_j` are themselves a linear function of the last hidden layer, `(w_y - w_j) · h +
//! (b_y - b_j)`, and bounding that directly is much tighter than subtracting two logit intervals.
//!
//! A digit is *certified* at `eps` when every lower bound of `z_y - z_j` (`j != y`) is positive:
//! then no image in the box, however it was found, is classified other than `y`. The bounds are
//! loose, never wrong: a digit that is not certified may still be robust; nobody knows.
//!
//! ```
//! use lab_support::prelude::*;
//! use lab_support::certify::certified_accuracy;
//! let model = Classifier::robust()?;
//! let test = mnist::test()?.take(100)?;
//! let proved = certified_accuracy(&model, &test, 0.01)?;
//! assert!(proved <= model.accuracy(&test)?);
//! # Ok::<(), LabError>(())
//! ```

use crate::data::Dataset;
use crate::error::{LabError, Result};
use crate::model::{kernels, Classifier};
use crate::validate::{check_batch, check_eps};
use candle_core::{DType, Tensor, D};

/// An interval per entry: `lo <= x <= hi`, elementwise, tensors of the same shape.
#[derive(Clone, Debug)]
pub struct Bounds {
    pub lo: Tensor,
    pub hi: Tensor,
}

impl Bounds {
    /// Every image within L-inf distance `eps` of `images` that is still an image: the box
    /// `[x - eps, x + eps] ∩ [0, 1]`.
    pub fn linf_box(images: &Tensor, eps: f32) -> Result<Bounds> {
        check_batch(images, "the images")?;
        check_eps(eps)?;
        Ok(Bounds { lo: (images - eps as f64)?.clamp(0.0, 1.0)?, hi: (images + eps as f64)?.clamp(0.0, 1.0)? })
    }

    /// `(lo + hi) / 2`.
    pub fn center(&self) -> Result<Tensor> {
        Ok(((&self.lo + &self.hi)? * 0.5)?)
    }

    /// `(hi - lo) / 2`.
    pub fn radius(&self) -> Result<Tensor> {
        Ok(((&self.hi - &self.lo)? * 0.5)?)
    }

    /// The largest width `hi - lo` over all entries: how loose the bounds have become.
    pub fn max_width(&self) -> Result<f32> {
        Ok((&self.hi - &self.lo)?.flatten_all()?.max(0)?.to_dtype(DType::F32)?.to_scalar::<f32>()?)
    }

    /// Whether `x` lies inside, up to `slack` (rounding), entry by entry.
    pub fn contains(&self, x: &Tensor, slack: f64) -> Result<bool> {
        let below = (&self.lo - slack)?.broadcast_le(x)?.to_dtype(DType::U32)?.min_all()?.to_scalar::<u32>()?;
        let above = x.broadcast_le(&(&self.hi + slack)?)?.to_dtype(DType::U32)?.min_all()?.to_scalar::<u32>()?;
        Ok(below == 1 && above == 1)
    }
}

/// `[W, -|W|]` and `[W, |W|]` stacked: applied to the input `[c, r]` (centre and radius side by
/// side along `axis`), the first half of the outputs is `W c - |W| r`, the lower bound of `W x`,
/// and the second half `W c + |W| r`, the upper bound: the bounds from one ordinary layer, at
/// twice the work of `W c` and `|W| r` apart. The tests check the fused op against it.
#[cfg(test)]
fn bound_weights(w: &Tensor, axis: usize) -> Result<Tensor> {
    let a = w.abs()?;
    let lower = Tensor::cat(&[w, &a.neg()?], axis)?;
    let upper = Tensor::cat(&[w, &a], axis)?;
    Ok(Tensor::cat(&[&lower, &upper], 0)?)
}

/// The first half of `t` along dimension 1 as `lo`, the second as `hi`.
#[cfg(test)]
fn split(t: &Tensor) -> Result<Bounds> {
    let half = t.dim(1)? / 2;
    Ok(Bounds { lo: t.narrow(1, 0, half)?, hi: t.narrow(1, half, half)? })
}

/// Bounds in centre/radius form, side by side along dimension 1 (`[c, r]`): what the interval conv
/// block takes and gives, so that blocks chain without converting (measured: splitting and
/// joining the bounds between blocks cost more in the backward pass than the block itself).
fn stacked(x: &Bounds) -> Result<Tensor> {
    Ok(Tensor::cat(&[&x.center()?, &x.radius()?], 1)?)
}

/// The centre and the radius of a stacked tensor.
#[cfg(test)]
fn unstack(cr: &Tensor) -> Result<(Tensor, Tensor)> {
    let half = cr.dim(1)? / 2;
    Ok((cr.narrow(1, 0, half)?, cr.narrow(1, half, half)?))
}

/// A conv block (3x3 convolution, bias, relu, 2x2 max pooling) on intervals: `W c ± |W| r`, one
/// fused op ([`kernels::interval_conv_relu_pool`]). (`before_relu` chains the op itself.)
#[cfg(test)]
pub(crate) fn conv_block(x: &Bounds, w: &Tensor, b: &Tensor) -> Result<Bounds> {
    let (c, r) = unstack(&kernels::interval_conv_relu_pool(&stacked(x)?, w, b)?)?;
    Ok(Bounds { lo: (&c - &r)?, hi: (&c + &r)? })
}

/// The same block through an ordinary conv block on stacked weights (see [`bound_weights`]): twice
/// the work; kept to test the fused op against.
#[cfg(test)]
pub(crate) fn conv_block_stacked(x: &Bounds, w: &Tensor, b: &Tensor) -> Result<Bounds> {
    let input = Tensor::cat(&[&x.center()?, &x.radius()?], 1)?;
    split(&kernels::conv_relu_pool(&input, &bound_weights(w, 1)?, &Tensor::cat(&[b, b], 0)?)?)
}

/// A linear layer `W x + b` on intervals (no relu): `W c + b ± |W| r`, one fused op
/// ([`kernels::interval_linear`]).
pub(crate) fn linear(x: &Bounds, w: &Tensor, b: &Tensor) -> Result<Bounds> {
    linear_of(&Tensor::cat(&[&x.center()?, &x.radius()?], 1)?, w, b)
}

/// [`linear`] on boxes stacked as rows `[c, r]` (centre, then radius).
fn linear_of(cr: &Tensor, w: &Tensor, b: &Tensor) -> Result<Bounds> {
    let out = kernels::interval_linear(cr, w, b)?;
    let half = out.dim(1)? / 2;
    let (centre, spread) = (out.narrow(1, 0, half)?, out.narrow(1, half, half)?);
    Ok(Bounds { lo: (&centre - &spread)?, hi: (&centre + &spread)? })
}

/// The same layer from candle ops: the yardstick the fused op is tested against.
#[cfg(test)]
fn linear_reference(x: &Bounds, w: &Tensor, b: &Tensor) -> Result<Bounds> {
    let centre = x.center()?.matmul(&w.t()?)?.broadcast_add(b)?;
    let spread = x.radius()?.matmul(&w.abs()?.t()?)?;
    Ok(Bounds { lo: (&centre - &spread)?, hi: (&centre + &spread)? })
}

/// Relu on intervals: monotone, so each bound goes through it.
pub(crate) fn relu(x: &Bounds) -> Result<Bounds> {
    Ok(Bounds { lo: x.lo.relu()?, hi: x.hi.relu()? })
}

/// Lower bounds of `z_y - z_j` for every class `j`, from bounds on the last hidden layer `h` and
/// the last layer `(w, b)`: `(w_y - w_j) · c - |w_y - w_j| · r + (b_y - b_j)` for `h`'s centre `c`
/// and radius `r`. `(N, classes)`; the entry of `y` itself is 0.
pub(crate) fn margins(h: &Bounds, w: &Tensor, b: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (at_center, spread, bias) = margin_parts(h, w, b, labels)?;
    Ok(((at_center - spread)? + bias)?)
}

/// The three terms of [`margins`], each `(N, classes)`: `(w_y - w_j) · c`, `|w_y - w_j| · r` and
/// `b_y - b_j` (notebook 06's check rebuilds the usual mistakes from them).
pub(crate) fn margin_parts(h: &Bounds, w: &Tensor, b: &Tensor, labels: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let labels = labels.to_dtype(DType::U32)?;
    let diff = w.index_select(&labels, 0)?.unsqueeze(1)?.broadcast_sub(&w.unsqueeze(0)?)?; // (N, K, H)
    let bias = b.index_select(&labels, 0)?.unsqueeze(1)?.broadcast_sub(&b.unsqueeze(0)?)?; // (N, K)
    let at_center = diff.broadcast_mul(&h.center()?.unsqueeze(1)?)?.sum(D::Minus1)?;
    let spread = diff.abs()?.broadcast_mul(&h.radius()?.unsqueeze(1)?)?.sum(D::Minus1)?;
    Ok((at_center, spread, bias))
}

/// The network's parameter `name` in the images' element type.
pub(crate) fn param(model: &Classifier, name: &str, dtype: DType) -> Result<Tensor> {
    Ok(model.parameters()[name].to_dtype(dtype)?)
}

/// Bounds on the last hidden layer (after fc1's relu) for every input in `input`.
pub(crate) fn hidden(model: &Classifier, input: &Bounds) -> Result<Bounds> {
    relu(&before_relu(model, input)?)
}

/// Bounds on fc1's outputs before its relu, for every input in `input`.
pub(crate) fn before_relu(model: &Classifier, input: &Bounds) -> Result<Bounds> {
    if model.defense().is_some() {
        return Err(LabError::invalid(
            "model",
            "a model behind a defense",
            "the network alone: bounds go through the network's layers (use `model.without_defense()`)",
        ));
    }
    let dtype = input.lo.dtype();
    let p = |name: &str| param(model, name, dtype);
    let h = kernels::interval_conv_relu_pool(&stacked(input)?, &p("conv1.weight")?, &p("conv1.bias")?)?;
    let h = kernels::interval_conv_relu_pool(&h, &p("conv2.weight")?, &p("conv2.bias")?)?;
    // (N, 2C, H, W) with the centre's channels first: each row `[c, r]` as it lies.
    linear_of(&h.flatten_from(1)?, &p("fc1.weight")?, &p("fc1.bias")?)
}

/// Bounds on each logit `(N, 10)` over the box of radius `eps` around each image. Looser than
/// [`margin_bounds`] for a certificate: use these to see the intervals, those to prove.
pub fn logit_bounds(model: &Classifier, images: &Tensor, eps: f32) -> Result<Bounds> {
    let _call = crate::notebook::library_call("logit_bounds");
    let dtype = images.dtype();
    let h = hidden(model, &Bounds::linf_box(images, eps)?)?;
    linear(&h, &param(model, "fc2.weight", dtype)?, &param(model, "fc2.bias", dtype)?)
}

/// The lower bound of `z_y - z_j` over the box of radius `eps` around each image, for `y` its
/// label and every class `j`: `(N, 10)`, the entry of `y` itself 0. All other entries positive
/// means certified.
pub fn margin_bounds(model: &Classifier, images: &Tensor, labels: &Tensor, eps: f32) -> Result<Tensor> {
    let _call = crate::notebook::library_call("margin_bounds");
    check_labels(images, labels, model.num_classes())?;
    let dtype = images.dtype();
    let h = hidden(model, &Bounds::linf_box(images, eps)?)?;
    margins(&h, &param(model, "fc2.weight", dtype)?, &param(model, "fc2.bias", dtype)?, labels)
}

/// For each image, whether it is certified at `eps`: no image of its box is classified other than
/// its label. Computed in f64, so that no rounding decides a certificate.
pub fn certify(model: &Classifier, images: &Tensor, labels: &Tensor, eps: f32) -> Result<Vec<bool>> {
    let _call = crate::notebook::library_call("certify");
    check_batch(images, "the images")?;
    check_labels(images, labels, model.num_classes())?;
    let model = model.to_dtype(DType::F64)?;
    let mut out = Vec::with_capacity(images.dim(0)?);
    for start in (0..images.dim(0)?).step_by(1000) {
        let n = 1000.min(images.dim(0)? - start);
        let x = images.narrow(0, start, n)?.to_dtype(DType::F64)?;
        let y = labels.narrow(0, start, n)?;
        let m = margin_bounds(&model, &x, &y, eps)?;
        // The label's own entry is exactly 0; every other must be positive.
        let positive = m.gt(0.0)?.to_dtype(DType::U32)?.sum(D::Minus1)?.to_vec1::<u32>()?;
        out.extend(positive.iter().map(|&k| k as usize == model.num_classes() - 1));
    }
    Ok(out)
}

/// The fraction of `set` certified at `eps` (see [`certify`]): a lower bound of its accuracy
/// under *any* attack within that L-inf budget.
pub fn certified_accuracy(model: &Classifier, set: &Dataset, eps: f32) -> Result<f32> {
    if set.is_empty() {
        return Err(LabError::invalid("set", "an empty dataset", "at least one example"));
    }
    let proved = certify(model, &set.images, &set.labels, eps)?;
    Ok(proved.iter().filter(|&&p| p).count() as f32 / set.len() as f32)
}

/// The worst-case cross-entropy of IBP training (Gowal et al. 2018): the cross-entropy of the
/// logits `-margin_bounds` (the label's logit 0, every other as high as the box lets it rise
/// relative to the label's), averaged over the batch. Differentiable in the weights.
pub fn worst_case_loss(model: &Classifier, images: &Tensor, labels: &Tensor, eps: f32) -> Result<Tensor> {
    let _call = crate::notebook::library_call("worst_case_loss");
    check_labels(images, labels, model.num_classes())?;
    let dtype = images.dtype();
    let h = hidden(model, &Bounds::linf_box(images, eps)?)?;
    let m = margins(&h, &param(model, "fc2.weight", dtype)?, &param(model, "fc2.bias", dtype)?, labels)?;
    Ok(candle_nn::loss::cross_entropy(&m.neg()?, labels)?)
}

fn check_labels(images: &Tensor, labels: &Tensor, classes: usize) -> Result<()> {
    let n = images.dim(0)?;
    if labels.dims() != [n] {
        return Err(LabError::Shape {
            what: "the labels".into(),
            expected: format!("[{n}], one class per image"),
            got: labels.dims().to_vec(),
        });
    }
    let max = labels.to_dtype(DType::U32)?.max(0)?.to_scalar::<u32>()?;
    if max as usize >= classes {
        return Err(LabError::invalid("labels", max, format!("classes 0 to {}", classes - 1)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SeededRng;
    use candle_core::Device;

    fn tensor(values: Vec<f64>, shape: &[usize]) -> Tensor {
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    fn rows(t: &Tensor) -> Vec<Vec<f64>> {
        t.to_vec2::<f64>().unwrap()
    }

    /// A tiny network, 2 inputs -> linear 3 -> relu -> linear 3, checked against every point of a
    /// 201 x 201 grid over the input box: each hidden value and each margin of every point lies
    /// inside the bounds, and the first layer's bounds (one linear map: IBP is exact there) are
    /// reached at the box's corners.
    #[test]
    fn bounds_of_a_tiny_network_hold_on_a_grid_of_its_whole_box() {
        let w1 = tensor(vec![1.0, -2.0, 0.5, 0.7, -1.5, -0.3], &[3, 2]);
        let b1 = tensor(vec![0.1, -0.2, 0.3], &[3]);
        let w2 = tensor(vec![0.9, -1.1, 0.4, -0.6, 0.8, 1.2, 0.3, 0.2, -0.7], &[3, 3]);
        let b2 = tensor(vec![0.0, 0.1, -0.1], &[3]);
        let (lo, hi) = ([0.2, -0.4], [0.6, 0.1]);
        let input = Bounds { lo: tensor(lo.to_vec(), &[1, 2]), hi: tensor(hi.to_vec(), &[1, 2]) };
        let pre = linear(&input, &w1, &b1).unwrap();
        let hidden = relu(&pre).unwrap();
        let label = Tensor::new(&[1u32], &Device::Cpu).unwrap();
        let margin_lo = rows(&margins(&hidden, &w2, &b2, &label).unwrap())[0].clone();

        let n = 201;
        let mut points = Vec::with_capacity(2 * n * n);
        for i in 0..n {
            for j in 0..n {
                points.push(lo[0] + (hi[0] - lo[0]) * i as f64 / (n - 1) as f64);
                points.push(lo[1] + (hi[1] - lo[1]) * j as f64 / (n - 1) as f64);
            }
        }
        let x = tensor(points, &[n * n, 2]);
        let z1 = x.matmul(&w1.t().unwrap()).unwrap().broadcast_add(&b1).unwrap();
        let h = z1.relu().unwrap();
        let z2 = h.matmul(&w2.t().unwrap()).unwrap().broadcast_add(&b2).unwrap();
        let (z1, h, z2) = (rows(&z1), rows(&h), rows(&z2));
        let (pre_lo, pre_hi) = (rows(&pre.lo)[0].clone(), rows(&pre.hi)[0].clone());
        let (h_lo, h_hi) = (rows(&hidden.lo)[0].clone(), rows(&hidden.hi)[0].clone());
        let tol = 1e-12;
        for k in 0..3 {
            let column = || z1.iter().map(|r| r[k]);
            let (min, max) = (column().fold(f64::INFINITY, f64::min), column().fold(f64::NEG_INFINITY, f64::max));
            assert!(
                (min - pre_lo[k]).abs() < 1e-9 && (max - pre_hi[k]).abs() < 1e-9,
                "layer 1 unit {k}: grid [{min}, {max}], bounds [{}, {}]",
                pre_lo[k],
                pre_hi[k]
            );
            assert!(
                h.iter().all(|r| r[k] >= h_lo[k] - tol && r[k] <= h_hi[k] + tol),
                "hidden unit {k} leaves its bounds"
            );
            let lowest = z2.iter().map(|r| r[1] - r[k]).fold(f64::INFINITY, f64::min);
            assert!(lowest >= margin_lo[k] - tol, "margin z_1 - z_{k}: grid reaches {lowest}, bound {}", margin_lo[k]);
        }
        assert_eq!(margin_lo[1], 0.0, "the label's own margin is 0");
    }

    /// One conv block on a 4x4 image, against 20,000 random points and 2,000 random corners of
    /// its box: every output lies inside the bounds.
    #[test]
    fn bounds_of_a_conv_block_hold_on_random_points_and_corners() {
        let mut rng = SeededRng::new(11);
        let w = rng.uniform_tensor(&[2, 1, 3, 3], -1.0, 1.0).unwrap().to_dtype(DType::F64).unwrap();
        let b = rng.uniform_tensor(&[2], -0.2, 0.2).unwrap().to_dtype(DType::F64).unwrap();
        let x = rng.uniform_tensor(&[1, 1, 4, 4], 0.0, 1.0).unwrap().to_dtype(DType::F64).unwrap();
        let eps = 0.15;
        let input = Bounds { lo: (&x - eps).unwrap(), hi: (&x + eps).unwrap() };
        let out = conv_block(&input, &w, &b).unwrap();
        let m = 22_000;
        let u = rng.uniform_tensor(&[m, 1, 4, 4], 0.0, 1.0).unwrap().to_dtype(DType::F64).unwrap();
        // The last 2,000 points are corners: every coordinate at lo or hi.
        let corners = u.narrow(0, 20_000, 2_000).unwrap().ge(0.5).unwrap().to_dtype(DType::F64).unwrap();
        let u = Tensor::cat(&[&u.narrow(0, 0, 20_000).unwrap(), &corners], 0).unwrap();
        let points = input.lo.broadcast_add(&(u * (2.0 * eps)).unwrap()).unwrap();
        let y = kernels::conv_relu_pool(&points, &w, &b).unwrap();
        assert!(out.contains(&y, 1e-12).unwrap(), "a point of the box left the conv block's bounds");
        assert!(
            out.lo
                .broadcast_le(&out.hi)
                .unwrap()
                .to_dtype(DType::U32)
                .unwrap()
                .min_all()
                .unwrap()
                .to_scalar::<u32>()
                .unwrap()
                == 1
        );
    }

    /// The fused interval block against the ordinary block on stacked weights (the construction it
    /// replaced): the same bounds and the same gradients for the box's centre and radius, the
    /// weights and the bias, on 3 images of 3 channels, 10x9 (odd sizes, where pooling drops a
    /// row or a column), in f64.
    #[test]
    fn the_fused_interval_block_matches_the_stacked_one_with_gradients() {
        let mut rng = SeededRng::new(5);
        let f64t = |shape: &[usize], lo: f32, hi: f32, rng: &mut SeededRng| {
            rng.uniform_tensor(shape, lo, hi).unwrap().to_dtype(DType::F64).unwrap()
        };
        let w = candle_core::Var::from_tensor(&f64t(&[4, 3, 3, 3], -1.0, 1.0, &mut rng)).unwrap();
        let b = candle_core::Var::from_tensor(&f64t(&[4], -0.3, 0.3, &mut rng)).unwrap();
        let x = f64t(&[3, 3, 10, 9], 0.0, 1.0, &mut rng);
        let radius = f64t(&[3, 3, 10, 9], 0.0, 0.2, &mut rng);
        let c = candle_core::Var::from_tensor(&x).unwrap();
        let r = candle_core::Var::from_tensor(&radius).unwrap();
        let input =
            Bounds { lo: (c.as_tensor() - r.as_tensor()).unwrap(), hi: (c.as_tensor() + r.as_tensor()).unwrap() };
        let probe = f64t(&[3, 8, 4, 3], -1.0, 1.0, &mut rng);
        let grads = |out: &Bounds| {
            let both = Tensor::cat(&[&out.lo, &out.hi], 1).unwrap();
            let g = (both * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            [c.as_tensor(), r.as_tensor(), w.as_tensor(), b.as_tensor()]
                .map(|t| g.get(t).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap())
        };
        let fused = conv_block(&input, w.as_tensor(), b.as_tensor()).unwrap();
        let stacked = conv_block_stacked(&input, w.as_tensor(), b.as_tensor()).unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for (a, e) in [(flat(&fused.lo), flat(&stacked.lo)), (flat(&fused.hi), flat(&stacked.hi))] {
            assert_eq!(a.len(), 3 * 4 * 4 * 3);
            assert!(a.iter().zip(&e).all(|(a, e)| (a - e).abs() < 1e-12), "the bounds differ");
        }
        for (name, (a, e)) in
            ["centre", "radius", "weight", "bias"].iter().zip(grads(&fused).iter().zip(&grads(&stacked)))
        {
            let scale = e.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            let worst = a.iter().zip(e).fold(0.0f64, |m, (a, e)| m.max((a - e).abs()));
            assert!(worst < 1e-10 * scale, "the {name} gradient differs by {worst}");
        }
    }

    #[test]
    fn the_fused_interval_linear_layer_matches_candle_ops_with_gradients() {
        let mut rng = SeededRng::new(6);
        let mut f64t = |shape: &[usize], lo: f32, hi: f32| {
            rng.uniform_tensor(shape, lo, hi).unwrap().to_dtype(DType::F64).unwrap()
        };
        // Weights on both sides of 0, and a 0 (whose |W| derivative is +1 on both sides).
        let w0 = f64t(&[5, 7], -1.0, 1.0);
        let zero_at = Tensor::ones((5, 7), DType::F64, &Device::Cpu)
            .unwrap()
            .slice_assign(&[0..1, 0..1], &Tensor::zeros((1, 1), DType::F64, &Device::Cpu).unwrap())
            .unwrap();
        let w = candle_core::Var::from_tensor(&(w0 * zero_at).unwrap()).unwrap();
        let b = candle_core::Var::from_tensor(&f64t(&[5], -0.3, 0.3)).unwrap();
        let c = candle_core::Var::from_tensor(&f64t(&[4, 7], -1.0, 1.0)).unwrap();
        let r = candle_core::Var::from_tensor(&f64t(&[4, 7], 0.0, 0.5)).unwrap();
        let probe = f64t(&[4, 10], -1.0, 1.0);
        let input =
            Bounds { lo: (c.as_tensor() - r.as_tensor()).unwrap(), hi: (c.as_tensor() + r.as_tensor()).unwrap() };
        let run = |layer: fn(&Bounds, &Tensor, &Tensor) -> Result<Bounds>| {
            let out = layer(&input, w.as_tensor(), b.as_tensor()).unwrap();
            let both = Tensor::cat(&[&out.lo, &out.hi], 1).unwrap();
            let g = (&both * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let grads = [c.as_tensor(), r.as_tensor(), w.as_tensor(), b.as_tensor()]
                .map(|t| g.get(t).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap());
            (both.flatten_all().unwrap().to_vec1::<f64>().unwrap(), grads)
        };
        let (fused, fused_grads) = run(linear);
        let (reference, reference_grads) = run(linear_reference);
        assert!(fused.iter().zip(&reference).all(|(a, e)| (a - e).abs() < 1e-12), "the bounds differ");
        for (name, (a, e)) in
            ["centre", "radius", "weight", "bias"].iter().zip(fused_grads.iter().zip(&reference_grads))
        {
            assert_eq!(a.len(), e.len());
            let worst = a.iter().zip(e).fold(0.0f64, |m, (a, e)| m.max((a - e).abs()));
            assert!(worst < 1e-12, "the {name} gradient differs by {worst}");
        }
        // Shapes that do not fit: a clear error, no panic.
        let odd = Tensor::zeros((4, 13), DType::F64, &Device::Cpu).unwrap();
        let err = kernels::interval_linear(&odd, w.as_tensor(), b.as_tensor()).unwrap_err().to_string();
        assert!(err.contains("2F columns"), "{err}");
    }

    #[test]
    fn bad_input_gets_a_clear_error() {
        let model = Classifier::pretrained().unwrap();
        let x = Tensor::zeros((2, 1, 28, 28), DType::F32, &Device::Cpu).unwrap();
        let y = Tensor::new(&[1u32, 2], &Device::Cpu).unwrap();
        assert!(margin_bounds(&model, &x, &y, -0.1).unwrap_err().to_string().contains("eps"));
        let short = Tensor::new(&[1u32], &Device::Cpu).unwrap();
        assert!(certify(&model, &x, &short, 0.1).unwrap_err().to_string().contains("one class per image"));
        let big = Tensor::new(&[1u32, 10], &Device::Cpu).unwrap();
        assert!(certify(&model, &x, &big, 0.1).unwrap_err().to_string().contains("classes 0 to 9"));
        let defended = model.with_defense(crate::model::Defense::Quantize { levels: 2 }).unwrap();
        assert!(certify(&defended, &x, &y, 0.1).unwrap_err().to_string().contains("without_defense"));
        let bright = (x + 2.0).unwrap();
        assert!(certify(&model, &bright, &y, 0.1).is_err());
    }
}
