//! Notebook 06's checks: the interval step through a linear layer, IBP margins through the whole
//! CNN, and the certificate of randomized smoothing.

use super::*;
use crate::certify::{self, Bounds};
use crate::data::mnist;
use crate::grad::Objective;
use crate::model::Classifier;
use crate::rng::SeededRng;
use crate::smoothing::{certify_from, top, Smoothed};

/// The lab's functions that compute certificates whole: a TODO that builds one may not call them.
const CERTIFIERS: [&str; 5] = ["margin_bounds", "logit_bounds", "certify", "certified_accuracy", "worst_case_loss"];

/// Random bounds `(n, d)` with `lo <= hi`, a weight `(out, d)` of both signs and a bias.
fn random_layer(rng: &mut SeededRng, n: usize, d: usize, out: usize) -> Result<(Bounds, Tensor, Tensor)> {
    let lo = rng.uniform_tensor(&[n, d], -1.0, 1.0)?;
    let hi = (&lo + rng.uniform_tensor(&[n, d], 0.0, 0.5)?)?;
    Ok((Bounds { lo, hi }, rng.uniform_tensor(&[out, d], -1.0, 1.0)?, rng.uniform_tensor(&[out], -0.5, 0.5)?))
}

/// Whether two bounds agree within `tol` (absolute, and relative to the values' size).
fn same_bounds(a: &Bounds, b: &Bounds, tol: f32) -> Result<bool> {
    let scale = 1.0 + max_abs(&b.lo)?.max(max_abs(&b.hi)?);
    Ok(max_abs_diff(&a.lo, &b.lo)? <= tol * scale && max_abs_diff(&a.hi, &b.hi)? <= tol * scale)
}

/// Notebook 06, TODO 1: a linear layer on intervals,
/// `fn interval_linear(x: &Bounds, w: &Tensor, b: &Tensor) -> Result<Bounds>`, for bounds `(N, in)`,
/// a weight `(out, in)` and a bias `(out)`.
///
/// The check runs it on random layers (weights of both signs), compares with the tightest box,
/// `W c + b ± |W| r`, and tests that 2,000 random points of each input box land inside the bounds
/// that come back.
pub fn interval_linear<F>(f: F) -> Verdict
where
    F: Fn(&Bounds, &Tensor, &Tensor) -> Result<Bounds>,
{
    const TODO: &str = "TODO 1 (interval linear layer)";
    check(TODO, || {
        let mut rng = SeededRng::new(6);
        for (n, d, out) in [(3, 4, 5), (16, 50, 20)] {
            let (x, w, b) = random_layer(&mut rng, n, d, out)?;
            let got = run_own(TODO, &CERTIFIERS, || f(&x, &w, &b))?;
            let want = certify::linear(&x, &w, &b)?;
            for (part, name) in [(&got.lo, "lo"), (&got.hi, "hi")] {
                if let Some(v) = mismatch(
                    TODO,
                    part,
                    &want.lo,
                    &format!("`{name}`"),
                    "one interval per output: `lo` and `hi` of shape [N, out], like `x.lo.matmul(&w.t()?)?`",
                ) {
                    return Ok(v);
                }
            }
            if same_bounds(&got, &want, 1e-5)? {
                continue;
            }
            // Which mistake? Each is computed here and compared.
            let (c, r) = (x.center()?, x.radius()?);
            let wc = c.matmul(&w.t()?)?.broadcast_add(&b)?;
            let signed = r.matmul(&w.t()?)?;
            let no_abs = Bounds { lo: (&wc - &signed)?, hi: (&wc + &signed)? };
            let apart =
                Bounds { lo: x.lo.matmul(&w.t()?)?.broadcast_add(&b)?, hi: x.hi.matmul(&w.t()?)?.broadcast_add(&b)? };
            let no_bias = Bounds { lo: want.lo.broadcast_sub(&b)?, hi: want.hi.broadcast_sub(&b)? };
            // Pushing `lo` and `hi` through `W` apart is the same mistake: `W lo + b = W c + b - W r`.
            let cause = if same_bounds(&got, &no_abs, 1e-5)? || same_bounds(&got, &apart, 1e-5)? {
                "the radius went through `W` instead of `|W|`, or (the same thing) `lo` and `hi` went through `W` separately: where a weight is negative, the *high* input gives the *low* output, so `W lo + b` is no lower bound, and the box no longer holds every output. Go through the centre and the radius: `c' = c W^T + b`, `r' = r |W|^T` with `w.abs()?`"
            } else if same_bounds(&got, &no_bias, 1e-5)? {
                "the bias is missing: it moves the centre, `c' = W c + b` (and not the radius)"
            } else {
                "compare with the recipe: `c = (lo + hi) / 2`, `r = (hi - lo) / 2`, `c' = c W^T + b`, `r' = r |W|^T`, then `lo' = c' - r'`, `hi' = c' + r'`"
            };
            // Sound or not, say which: points of the box that land outside are the proof.
            let u = rng.uniform_tensor(&[2000, n, d], 0.0, 1.0)?;
            let points = x.lo.unsqueeze(0)?.broadcast_add(&u.broadcast_mul(&(&x.hi - &x.lo)?.unsqueeze(0)?)?)?;
            let outputs = points.broadcast_matmul(&w.t()?)?.broadcast_add(&b)?;
            let inside = Bounds { lo: got.lo.unsqueeze(0)?, hi: got.hi.unsqueeze(0)? }.contains(&outputs, 1e-4)?;
            let verdict = if inside {
                "bounds that hold but are not the tightest box"
            } else {
                "bounds that some point of the box breaks"
            };
            return Ok(Verdict::fail(TODO, "the tightest box around the layer's outputs", verdict, cause));
        }
        Ok(Verdict::pass(TODO, "your bounds match `W c + b ± |W| r` on random layers with weights of both signs, and hold for every point tried."))
    })
}

/// The digits and budget of TODO 2's check: the first 20 test digits at eps 0.1.
const MARGIN_DIGITS: usize = 20;
const MARGIN_EPS: f32 = 0.1;

/// Notebook 06, TODO 2: IBP through the whole CNN,
/// `fn ibp_margins(model: &Classifier, images: &Tensor, labels: &Tensor, eps: f32) -> Result<Tensor>`:
/// lower bounds of `z_label - z_j` for every class `j` over the box of radius `eps`, `(N, 10)`.
///
/// The check runs it on the certified model and the first 20 test digits at eps 0.1, compares
/// with the lab's own bounds, and tests them against the margins of random points of each box
/// and of PGD's adversarial images.
pub fn ibp_margins<F>(f: F) -> Verdict
where
    F: Fn(&Classifier, &Tensor, &Tensor, f32) -> Result<Tensor>,
{
    const TODO: &str = "TODO 2 (IBP margins)";
    check(TODO, || {
        let model = Classifier::certified()?;
        let set = mnist::test()?.take(MARGIN_DIGITS)?;
        let eps = MARGIN_EPS;
        let got = run_own(TODO, &CERTIFIERS, || f(&model, &set.images, &set.labels, eps))?;
        let want = certify::margin_bounds(&model, &set.images, &set.labels, eps)?;
        if let Some(v) = mismatch(
            TODO,
            &got,
            &want,
            "the margins' lower bounds",
            "one row per digit and one column per class: [N, 10], the label's own column 0",
        ) {
            return Ok(v);
        }
        let tol = 1e-3 * (1.0 + max_abs(&want)?);
        if max_abs_diff(&got, &want)? <= tol {
            let proved =
                want.gt(0.0)?.to_dtype(DType::U32)?.sum(1)?.to_vec1::<u32>()?.iter().filter(|&&k| k == 9).count();
            return Ok(Verdict::pass(TODO, format!("your bounds match the lab's on {MARGIN_DIGITS} digits at eps {eps} and hold for every point tried: they certify {proved} of the {MARGIN_DIGITS}.")));
        }
        // Sound? The margins of random points of the boxes, and of PGD's attack, must stay above.
        let labels = set.label_vec()?;
        let boxed = Bounds::linf_box(&set.images, eps)?;
        let mut rng = SeededRng::new(9);
        let mut points = vec![pgd_points(&model, &set, eps)?];
        for _ in 0..20 {
            let u = rng.uniform_tensor(set.images.dims(), 0.0, 1.0)?;
            points.push((&boxed.lo + u.mul(&(&boxed.hi - &boxed.lo)?)?)?);
        }
        let bound: Vec<Vec<f32>> = got.to_dtype(DType::F32)?.to_vec2()?;
        let mut broken = None;
        'points: for p in &points {
            let z: Vec<Vec<f32>> = model.forward(p)?.to_vec2()?;
            for (i, row) in z.iter().enumerate() {
                for j in 0..10 {
                    if row[labels[i] as usize] - row[j] < bound[i][j] - 1e-3 {
                        broken = Some((i, j));
                        break 'points;
                    }
                }
            }
        }
        // The usual mistakes, each computed and compared.
        let dtype = set.images.dtype();
        let (w2, b2) = (certify::param(&model, "fc2.weight", dtype)?, certify::param(&model, "fc2.bias", dtype)?);
        let unclamped = Bounds { lo: (&set.images - eps as f64)?, hi: (&set.images + eps as f64)? };
        let no_clamp = certify::margins(&certify::hidden(&model, &unclamped)?, &w2, &b2, &set.labels)?;
        let pre_relu = certify::before_relu(&model, &boxed)?;
        let (at_center, spread, bias) = certify::margin_parts(&certify::relu(&pre_relu)?, &w2, &b2, &set.labels)?;
        let no_bias = (&at_center - &spread)?;
        let reversed = ((at_center.neg()? - &bias)? - &spread)?;
        let no_relu = certify::margins(&pre_relu, &w2, &b2, &set.labels)?;
        let logits = certify::logit_bounds(&model, &set.images, eps)?;
        let lo_true = logits.lo.contiguous()?.gather(&set.labels.unsqueeze(1)?, 1)?;
        let from_logits = lo_true.broadcast_sub(&logits.hi)?;
        let close = |t: &Tensor| -> Result<bool> { Ok(max_abs_diff(&got, t)? <= tol) };
        let close_off_diagonal = |t: &Tensor| -> Result<bool> {
            let mask = Tensor::ones((MARGIN_DIGITS, 10), DType::F32, &candle_core::Device::Cpu)?
                .sub(&candle_nn::encoding::one_hot(set.labels.clone(), 10, 1f32, 0f32)?)?
                .to_dtype(dtype)?;
            Ok(max_abs_diff(&got.mul(&mask)?, &t.mul(&mask)?)? <= tol)
        };
        let cause = if close(&no_clamp)? {
            "the input box was not clamped to [0, 1]: pixels cannot go below 0 or above 1, and most of a digit is black (0), so `(x - eps).clamp(0.0, 1.0)` and `(x + eps).clamp(0.0, 1.0)` make the box, and the bounds, much tighter".to_string()
        } else if close(&no_relu)? {
            "the relu after `fc1` is missing: the hidden layer's bounds must go through it (`lo.relu()?`, `hi.relu()?`) before the last layer, as the network's values do".to_string()
        } else if close(&no_bias)? {
            "the margins miss their bias term `b_label - b_j`: `z_label - z_j = (w_label - w_j) · h + (b_label - b_j)`"
                .to_string()
        } else if close(&reversed)? {
            "the margins are the wrong way round: these bound `z_j - z_label`. The margin of the true class is `z_label - z_j`: `w.index_select(labels, 0)?.unsqueeze(1)?.broadcast_sub(&w.unsqueeze(0)?)?`, the label's row minus every row".to_string()
        } else if close_off_diagonal(&from_logits)? {
            "these are the margins of two separate logit intervals, `lo(z_label) - hi(z_j)`: sound, but loose. Bound each margin through the last layer directly, with the weight row `w_label - w_j` and bias `b_label - b_j` applied to the hidden layer's centre and radius (`(w_label - w_j) · c - |w_label - w_j| · r + b_label - b_j`)".to_string()
        } else if let Some((i, j)) = broken {
            format!("on digit #{i} a point of the box has a margin `z_{} - z_{j}` below your bound: the bounds are not sound. Check each layer: centre and radius through every linear map and convolution (`|W|` for the radius), relu and max pooling on `lo` and `hi` separately", labels[i])
        } else {
            "your bounds hold for every point tried, but differ from the lab's: compare layer by layer (conv block, conv block, fc1 with relu, then the margins through fc2), printing `max_width()` after each".to_string()
        };
        let largest_gap = max_abs_diff(&got, &want)?;
        Ok(Verdict::fail(
            TODO,
            format!("the lab's margin bounds (within {tol:.1e})"),
            format!("bounds {largest_gap:.3} away"),
            cause,
        ))
    })
}

/// PGD's adversarial images at `eps` against `model`, for a soundness test.
fn pgd_points(model: &Classifier, set: &crate::data::Dataset, eps: f32) -> Result<Tensor> {
    let config = crate::attack::PgdConfig::linf(eps);
    crate::attack::pgd_untraced(model, &set.images, &Objective::untargeted(&set.labels)?, &config)
}

/// The terms of TODO 3's check: noise, samples to pick the class and to bound it, and alpha.
pub const SMOOTHING_CHECK: SmoothingTerms = SmoothingTerms { sigma: 0.25, n0: 100, n: 1000, alpha: 0.001 };

/// The terms of the smoothing check.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SmoothingTerms {
    pub sigma: f32,
    pub n0: usize,
    pub n: usize,
    pub alpha: f64,
}

/// The test digits of TODO 3's check: the first six, and #62 and #495, on which the base model at
/// sigma 0.25 is so unsure (its top class won 535 and 538 of 1,000 noisy copies, measured) that a
/// correct certificate abstains.
pub const SMOOTHING_DIGITS: [usize; 8] = [0, 1, 2, 3, 4, 5, 62, 495];

/// Notebook 06, TODO 3: the certificate of randomized smoothing,
/// `fn certify_smoothed(smoothed: &Smoothed, x: &Tensor, n0: usize, n: usize, alpha: f64) -> Result<Option<(u32, f64)>>`:
/// the class and its certified L2 radius, or `None` to abstain.
///
/// The check hands it the shipped base model for sigma 0.25 behind a fresh [`Smoothed`] per digit,
/// records the votes each call of `counts` drew, and works out from those very votes what the
/// answer must be (Cohen et al.'s CERTIFY): so the noise can be anything, and the statistics must
/// be exactly right.
pub fn certify_smoothed<F>(f: F) -> Verdict
where
    F: Fn(&Smoothed, &Tensor, usize, usize, f64) -> Result<Option<(u32, f64)>>,
{
    const TODO: &str = "TODO 3 (certify with smoothing)";
    check(TODO, || {
        let SmoothingTerms { sigma, n0, n, alpha } = SMOOTHING_CHECK;
        let base = Classifier::noise_trained(sigma)?;
        let test = mnist::test()?;
        let (mut certified, mut abstained) = (0usize, 0usize);
        for (k, &i) in SMOOTHING_DIGITS.iter().enumerate() {
            let (x, _) = test.get(i)?;
            let smoothed = Smoothed::new(&base, sigma, 1000 + k as u64)?;
            let got = run_own(TODO, &[], || f(&smoothed, &x, n0, n, alpha))?;
            let draws = smoothed.draws();
            let fail = |expected: String, got: String, cause: &str| Ok(Verdict::fail(TODO, expected, got, cause));
            if draws.len() != 2 || draws[0].samples != n0 || draws[1].samples != n {
                let took: Vec<usize> = draws.iter().map(|d| d.samples).collect();
                let cause = if draws.len() == 1 {
                    "one draw serves both to pick the class and to bound its probability: the class you picked is the one that happened to win *these* votes, so their count overstates it. Draw `n0` votes to pick the class, then `n` fresh ones to bound it"
                } else {
                    "call `smoothed.counts(x, n0)?` once to pick the class, then `smoothed.counts(x, n)?` once to bound its probability"
                };
                return fail(
                    format!("two draws, of {n0} then {n} samples"),
                    format!("draws of {took:?} samples on digit #{i}"),
                    cause,
                );
            }
            let guess = top(&draws[0].counts);
            let want = certify_from(sigma, guess, &draws[1].counts, n, alpha)?;
            let agrees = match (got, want) {
                (None, None) => true,
                (Some((c, r)), Some((wc, wr))) => c == wc && (r - wr).abs() <= 1e-6 * wr.abs().max(1.0),
                _ => false,
            };
            if agrees {
                certified += usize::from(want.is_some());
                abstained += usize::from(want.is_none());
                continue;
            }
            let show = |a: Option<(u32, f64)>| {
                a.map_or("abstain (None)".to_string(), |(c, r)| format!("class {c}, radius {r:.4}"))
            };
            let k_votes = draws[1].counts[guess as usize];
            let radius_with = |p: f64| -> Result<Option<f64>> {
                (p > 0.0 && p < 1.0).then(|| crate::smoothing::normal_quantile(p).map(|z| sigma as f64 * z)).transpose()
            };
            let got_radius = got.map(|(_, r)| r);
            let near = |r: Option<f64>| matches!((got_radius, r), (Some(a), Some(b)) if (a - b).abs() <= 1e-6 * b.abs().max(1.0));
            let cp = |k: usize, trials: usize, a: f64| crate::smoothing::clopper_pearson_lower(k, trials, a);
            let cause = if want.is_none() && got.is_some() {
                "the lower bound is not above 1/2 here: abstain (`return Ok(None)`). A radius from `Phi^-1(p)` with p <= 1/2 is zero or negative, a certificate of nothing"
            } else if got.is_some_and(|(c, _)| c != guess) {
                "the class must be the one that won the first draw (`n0` samples): the second draw only bounds its probability"
            } else if near(radius_with(k_votes as f64 / n as f64)?) {
                "you used the empirical probability `k / n`. A certificate must hold whatever the noise happened to do: use its lower confidence bound, `clopper_pearson_lower(k, n, alpha)?`"
            } else if near(radius_with(cp(draws[0].counts[guess as usize], n0, alpha)?)?) {
                "the bound was computed from the selection draw's votes: bound the class's probability with the second draw's (`n` fresh samples), not the ones that chose it"
            } else if near(radius_with(cp(k_votes, n, alpha / 2.0)?)?) {
                "a two-sided interval (alpha / 2): the certificate needs only the lower bound, one-sided, `clopper_pearson_lower(k, n, alpha)?`"
            } else if got.is_some() && want.is_some_and(|(_, wr)| near(Some(wr / sigma as f64))) {
                "the radius is `sigma * Phi^-1(p_lower)`: the `sigma` is missing"
            } else if got.is_none() && want.is_some() {
                "this digit's lower bound is above 1/2: certify it, with radius `sigma * normal_quantile(p_lower)?`"
            } else {
                "follow CERTIFY: pick the class with the most votes of the first draw, `p_lower = clopper_pearson_lower(votes of that class in the second draw, n, alpha)?`, abstain unless `p_lower > 0.5`, else the radius `sigma * normal_quantile(p_lower)?`"
            };
            return fail(show(want), format!("{} on digit #{i}", show(got)), cause);
        }
        Ok(Verdict::pass(
            TODO,
            format!("your certificates match CERTIFY on all {} digits, from the very votes they drew ({certified} certified, {abstained} abstained, sigma {sigma}, n0 = {n0}, n = {n}, alpha = {alpha}).", SMOOTHING_DIGITS.len()),
        ))
    })
}
