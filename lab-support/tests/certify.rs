//! Interval bound propagation on the real CNN: the bounds hold for every point tried, and no attack
//! breaks a certified digit.

use lab_support::attack::{pgd, Norm, PgdConfig};
use lab_support::certify::{certify, logit_bounds, margin_bounds, Bounds};
use lab_support::data::mnist;
use lab_support::evaluation::{evaluate, Evaluation};
use lab_support::grad::Objective;
use lab_support::model::Classifier;
use lab_support::prelude::*;
use lab_support::rng::SeededRng;

/// On 20 digits at eps 0.05 (f64): the logits of the clean digit, of 200 random points and 100
/// random corners of each box, and of PGD's adversarial images all lie inside the logit bounds,
/// and every margin `z_y - z_j` they reach is at least its lower bound. The margin bounds are
/// also at least as tight as subtracting two logit intervals.
#[test]
fn bounds_hold_for_random_points_corners_and_pgd_on_the_real_cnn() {
    let model = Classifier::robust().unwrap().to_dtype(DType::F64).unwrap();
    let set = mnist::test().unwrap().take(20).unwrap();
    let x = set.images.to_dtype(DType::F64).unwrap();
    let eps = 0.05;
    let logits = logit_bounds(&model, &x, eps).unwrap();
    let margins = margin_bounds(&model, &x, &set.labels, eps).unwrap();
    let boxes = Bounds::linf_box(&x, eps).unwrap();
    let mut rng = SeededRng::new(5);
    let mut tried = vec![x.clone()];
    for k in 0..300 {
        let u = rng.uniform_tensor(&[20, 1, 28, 28], 0.0, 1.0).unwrap().to_dtype(DType::F64).unwrap();
        let u = if k >= 200 { u.ge(0.5).unwrap().to_dtype(DType::F64).unwrap() } else { u };
        let width = (&boxes.hi - &boxes.lo).unwrap();
        tried.push((&boxes.lo + (u * width).unwrap()).unwrap());
    }
    let objective = Objective::untargeted(&set.labels).unwrap();
    // The attacks compute in f32: their result, rounded back into the f64 box.
    let attacked = pgd(&Classifier::robust().unwrap(), &set.images, &objective, &PgdConfig::linf(eps)).unwrap();
    let attacked = attacked.adversarial.to_dtype(DType::F64).unwrap();
    tried.push(attacked.maximum(&boxes.lo).unwrap().minimum(&boxes.hi).unwrap());
    let labels: Vec<u32> = set.labels.to_vec1().unwrap();
    let lower: Vec<Vec<f64>> = margins.to_vec2().unwrap();
    for point in &tried {
        assert!(boxes.contains(point, 1e-12).unwrap(), "a tried point is outside its box");
        let z = model.forward(point).unwrap();
        assert!(logits.contains(&z, 1e-9).unwrap(), "a point's logits left the logit bounds");
        let z: Vec<Vec<f64>> = z.to_vec2().unwrap();
        for (i, row) in z.iter().enumerate() {
            let y = labels[i] as usize;
            for j in 0..10 {
                assert!(
                    row[y] - row[j] >= lower[i][j] - 1e-9,
                    "digit {i}: margin to {j} is {} below its bound {}",
                    row[y] - row[j],
                    lower[i][j]
                );
            }
        }
    }
    let (lo, hi): (Vec<Vec<f64>>, Vec<Vec<f64>>) = (logits.lo.to_vec2().unwrap(), logits.hi.to_vec2().unwrap());
    for i in 0..20 {
        let y = labels[i] as usize;
        for j in 0..10 {
            assert!(lower[i][j] >= lo[i][y] - hi[i][j] - 1e-9, "digit {i}, class {j}: margins looser than logits");
        }
    }
}

/// The certified model's certificates, tested by the lab's strongest evaluation (APGD-CE, APGD-DLR
/// toward all 9 wrong classes, Square Attack with 5,000 queries): on the digits among the first 50
/// that IBP certifies at `eps`, no attack finds anything, and at least `least` are certified. The
/// robust (PGD-trained) model, as robust in practice, certifies far fewer. One test per case: each
/// runs on one core, and the test harness runs them side by side.
fn no_attack_breaks_a_certified_digit(model: &Classifier, eps: f32, least: usize) {
    let set = mnist::test().unwrap().take(50).unwrap();
    let proved = certify(model, &set.images, &set.labels, eps).unwrap();
    let idx: Vec<u32> = (0..50).filter(|&i| proved[i as usize]).collect();
    assert!(idx.len() >= least, "only {} of 50 certified at eps {eps}", idx.len());
    let idx = Tensor::new(idx.as_slice(), &Device::Cpu).unwrap();
    let certified = Dataset {
        images: set.images.index_select(&idx, 0).unwrap(),
        labels: set.labels.index_select(&idx, 0).unwrap(),
        class_names: set.class_names,
    };
    let point = evaluate(model, &certified, Norm::Linf, &[eps], &Evaluation::strongest()).unwrap().remove(0);
    assert_eq!(point.clean_errors, 0, "a certified digit is misread clean at eps {eps}");
    assert_eq!(point.accuracy, 1.0, "an attack broke a certified digit at eps {eps}: {:?}", point.broken_by);
    let robust = Classifier::robust().unwrap();
    let theirs = certify(&robust, &set.images, &set.labels, eps).unwrap().iter().filter(|&&p| p).count();
    assert!(theirs < idx.dim(0).unwrap() / 2, "the PGD-trained model certifies {theirs} at eps {eps}");
}

#[test]
fn no_attack_breaks_a_digit_certified_at_eps_0_1() {
    no_attack_breaks_a_certified_digit(&Classifier::certified().unwrap(), 0.1, 40);
}

#[test]
fn no_attack_breaks_a_digit_certified_at_eps_0_3() {
    no_attack_breaks_a_certified_digit(&Classifier::certified().unwrap(), 0.3, 35);
}

/// The model trained for eps 0.1, at 0.1.
#[test]
fn no_attack_breaks_a_digit_the_eps_0_1_model_certifies() {
    no_attack_breaks_a_certified_digit(&Classifier::certified_for(0.1).unwrap(), 0.1, 45);
}

// ---- Notebook 06's checks, with a solution written as a student would and the usual mistakes.

use lab_support::check::{self, Outcome, Verdict};
use lab_support::smoothing::{clopper_pearson_lower, normal_quantile, Smoothed};

fn assert_fails(v: &Verdict, cause: &str) {
    assert_eq!(v.outcome, Outcome::Fail, "{v}");
    assert!(v.message.contains(cause), "expected `{cause}` in: {v}");
}

/// The interval step, with the radius computed `how`.
fn linear_step(x: &Bounds, w: &Tensor, b: &Tensor, how: &str) -> Result<Bounds> {
    let c = x.center()?.matmul(&w.t()?)?.broadcast_add(b)?;
    Ok(match how {
        "no abs" => {
            let r = x.radius()?.matmul(&w.t()?)?;
            Bounds { lo: (&c - &r)?, hi: (&c + &r)? }
        }
        "apart" => Bounds { lo: x.lo.matmul(&w.t()?)?.broadcast_add(b)?, hi: x.hi.matmul(&w.t()?)?.broadcast_add(b)? },
        "no bias" => {
            let c = x.center()?.matmul(&w.t()?)?;
            let r = x.radius()?.matmul(&w.abs()?.t()?)?;
            Bounds { lo: (&c - &r)?, hi: (&c + &r)? }
        }
        _ => {
            let r = x.radius()?.matmul(&w.abs()?.t()?)?;
            Bounds { lo: (&c - &r)?, hi: (&c + &r)? }
        }
    })
}

#[test]
fn interval_linear_check_passes_the_solution_and_names_the_usual_mistakes() {
    let v = check::interval_linear(|x: &Bounds, w: &Tensor, b: &Tensor| linear_step(x, w, b, "right"));
    assert!(v.passed(), "{v}");
    assert_fails(
        &check::interval_linear(|x: &Bounds, w: &Tensor, b: &Tensor| linear_step(x, w, b, "no abs")),
        "instead of `|W|`",
    );
    assert_fails(
        &check::interval_linear(|x: &Bounds, w: &Tensor, b: &Tensor| linear_step(x, w, b, "apart")),
        "separately",
    );
    assert_fails(
        &check::interval_linear(|x: &Bounds, w: &Tensor, b: &Tensor| linear_step(x, w, b, "no bias")),
        "bias is missing",
    );
    let v = check::interval_linear(|_: &Bounds, _: &Tensor, _: &Tensor| -> Result<Bounds> { todo!() });
    assert_eq!(v.outcome, Outcome::NotDone, "{v}");
}

/// Notebook 06's TODO 2, written as a student would, with `clamp`, `direct` (margins through the
/// last layer) and `abs` switches, and a named `slip`, for the usual mistakes.
#[allow(clippy::too_many_arguments)]
fn student_margins(
    m: &Classifier,
    x: &Tensor,
    y: &Tensor,
    eps: f32,
    clamp: bool,
    direct: bool,
    abs: bool,
    slip: &str,
) -> Result<Tensor> {
    let p = |name: &str| &m.parameters()[name];
    let conv = |b: &Bounds, w: &Tensor, bias: &Tensor| -> Result<Bounds> {
        let c = b.center()?.conv2d(w, 0, 1, 1, 1)?.broadcast_add(&bias.reshape((1, bias.dim(0)?, 1, 1))?)?;
        let wr = if abs { w.abs()? } else { w.clone() };
        let r = b.radius()?.conv2d(&wr, 0, 1, 1, 1)?;
        Ok(Bounds { lo: (&c - &r)?.relu()?.max_pool2d(2)?, hi: (&c + &r)?.relu()?.max_pool2d(2)? })
    };
    let (lo, hi) = ((x - eps as f64)?, (x + eps as f64)?);
    let input = if clamp { Bounds { lo: lo.clamp(0.0, 1.0)?, hi: hi.clamp(0.0, 1.0)? } } else { Bounds { lo, hi } };
    let h = conv(&conv(&input, p("conv1.weight"), p("conv1.bias"))?, p("conv2.weight"), p("conv2.bias"))?;
    let h = Bounds { lo: h.lo.flatten_from(1)?, hi: h.hi.flatten_from(1)? };
    let h = linear_step(&h, p("fc1.weight"), p("fc1.bias"), "right")?;
    let h = if slip == "no relu" { h } else { Bounds { lo: h.lo.relu()?, hi: h.hi.relu()? } };
    let (w, b) = (p("fc2.weight"), p("fc2.bias"));
    if !direct {
        let z = linear_step(&h, w, b, "right")?;
        let lo_true = z.lo.contiguous()?.gather(&y.unsqueeze(1)?, 1)?;
        return Ok(lo_true.broadcast_sub(&z.hi)?);
    }
    let mut diff = w.index_select(y, 0)?.unsqueeze(1)?.broadcast_sub(&w.unsqueeze(0)?)?;
    let mut bias = b.index_select(y, 0)?.unsqueeze(1)?.broadcast_sub(&b.unsqueeze(0)?)?;
    if slip == "reversed" {
        (diff, bias) = (diff.neg()?, bias.neg()?);
    }
    let at_center = diff.broadcast_mul(&h.center()?.unsqueeze(1)?)?.sum(2)?;
    let spread = diff.abs()?.broadcast_mul(&h.radius()?.unsqueeze(1)?)?.sum(2)?;
    if slip == "no bias" {
        return Ok((at_center - spread)?);
    }
    Ok(((at_center - spread)? + bias)?)
}

#[test]
fn ibp_margins_check_passes_the_solution_and_names_the_usual_mistakes() {
    let v = check::ibp_margins(|m: &Classifier, x: &Tensor, y: &Tensor, e: f32| {
        student_margins(m, x, y, e, true, true, true, "")
    });
    assert!(v.passed(), "{v}");
    assert_fails(
        &check::ibp_margins(|m: &Classifier, x: &Tensor, y: &Tensor, e: f32| {
            student_margins(m, x, y, e, false, true, true, "")
        }),
        "not clamped",
    );
    assert_fails(
        &check::ibp_margins(|m: &Classifier, x: &Tensor, y: &Tensor, e: f32| {
            student_margins(m, x, y, e, true, false, true, "")
        }),
        "two separate logit intervals",
    );
    assert_fails(
        &check::ibp_margins(|m: &Classifier, x: &Tensor, y: &Tensor, e: f32| {
            student_margins(m, x, y, e, true, true, false, "")
        }),
        "not sound",
    );
    for (slip, cause) in [
        ("no relu", "relu after `fc1` is missing"),
        ("no bias", "miss their bias term"),
        ("reversed", "wrong way round"),
    ] {
        let v = check::ibp_margins(|m: &Classifier, x: &Tensor, y: &Tensor, e: f32| {
            student_margins(m, x, y, e, true, true, true, slip)
        });
        assert_fails(&v, cause);
    }
    let library = |m: &Classifier, x: &Tensor, y: &Tensor, e: f32| lab_support::certify::margin_bounds(m, x, y, e);
    assert_fails(&check::ibp_margins(library), "`margin_bounds` is what you are building");
}

/// Notebook 06's TODO 3, with one mistake switched on by name.
fn student_certify(
    s: &Smoothed,
    x: &Tensor,
    n0: usize,
    n: usize,
    alpha: f64,
    mistake: &str,
) -> Result<Option<(u32, f64)>> {
    let first = s.counts(x, if mistake == "one draw" { n } else { n0 })?;
    let class = (0..first.len()).max_by_key(|&c| (first[c], std::cmp::Reverse(c))).unwrap_or(0);
    let votes = if mistake == "one draw" { first.clone() } else { s.counts(x, n)? };
    let k = votes[class];
    let p = match mistake {
        "empirical" => k as f64 / n as f64,
        "two-sided" => clopper_pearson_lower(k, n, alpha / 2.0)?,
        "selection" => clopper_pearson_lower(first[class], n0, alpha)?,
        _ => clopper_pearson_lower(k, n, alpha)?,
    };
    if p <= 0.5 && mistake != "never abstain" {
        return Ok(None);
    }
    let sigma = if mistake == "no sigma" { 1.0 } else { s.sigma() as f64 };
    // With p <= 1/2 (never abstaining), the quantile is 0 or negative: a radius of nothing.
    Ok(Some((class as u32, sigma * normal_quantile(p.max(1e-12))?)))
}

#[test]
fn certify_smoothed_check_passes_the_solution_and_names_the_usual_mistakes() {
    let v = check::certify_smoothed(|s: &Smoothed, x: &Tensor, n0, n, a| student_certify(s, x, n0, n, a, "none"));
    assert!(v.passed(), "{v}");
    assert!(
        v.message.contains("abstained") && !v.message.contains(" 0 abstained"),
        "the check must include digits to abstain on: {v}"
    );
    for (mistake, cause) in [
        ("one draw", "one draw serves both"),
        ("selection", "selection draw"),
        ("empirical", "empirical"),
        ("two-sided", "two-sided"),
        ("never abstain", "abstain"),
        ("no sigma", "`sigma` is missing"),
    ] {
        let v = check::certify_smoothed(|s: &Smoothed, x: &Tensor, n0, n, a| student_certify(s, x, n0, n, a, mistake));
        assert_fails(&v, cause);
    }
}
