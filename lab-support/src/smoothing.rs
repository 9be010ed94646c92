//! Randomized smoothing (Cohen, Rosenfeld & Kolter 2019): a certificate for any network, bought
//! with noise and statistics instead of bounds.
//!
//! The *smoothed* classifier `g(x)` answers the class the base network `f` picks most often for
//! `x + noise`, noise Gaussian with standard deviation `sigma` on every pixel. If that class wins
//! with probability `p_A > 1/2`, no change of L2 length below `sigma * Phi^-1(p_A)` can change
//! `g`'s answer (`Phi^-1` is the standard normal's quantile function). `p_A` is not known, only
//! sampled, so a certificate uses a lower confidence bound of it: with probability at least
//! `1 - alpha` over the noise, the radius is right. [`Smoothed`] draws the noise and counts the
//! votes; the statistics ([`clopper_pearson_lower`], [`normal_quantile`]) are here too. Turning
//! them into a certificate is notebook 06's TODO.
//!
//! ```
//! use lab_support::prelude::*;
//! use lab_support::smoothing::{clopper_pearson_lower, normal_quantile, Smoothed};
//! let smoothed = Smoothed::new(&Classifier::pretrained()?, 0.25, 0)?;
//! let (x, label) = mnist::test()?.get(0)?;
//! let votes = smoothed.counts(&x, 100)?;
//! assert_eq!(votes.iter().sum::<usize>(), 100);
//! let p = clopper_pearson_lower(votes[label as usize], 100, 0.001)?;
//! assert!(p <= votes[label as usize] as f64 / 100.0);
//! assert!((normal_quantile(0.975)? - 1.959964).abs() < 1e-5);
//! # Ok::<(), LabError>(())
//! ```

use crate::error::{LabError, Result};
use crate::model::Classifier;
use crate::rng::SeededRng;
use crate::validate::check_batch;
use candle_core::{Tensor, D};
use std::cell::RefCell;

/// The base network under Gaussian noise: draws noisy copies of a digit and counts the classes
/// the network gives them. Every draw comes from its own seeded generator, so the same seed gives
/// the same votes.
pub struct Smoothed {
    model: Classifier,
    sigma: f32,
    rng: RefCell<SeededRng>,
    draws: RefCell<Vec<Draw>>,
}

/// One call of [`Smoothed::counts`]: how many samples, and the votes they gave.
#[derive(Clone, Debug, PartialEq)]
pub struct Draw {
    pub samples: usize,
    pub counts: Vec<usize>,
}

/// Noisy copies per forward pass.
const BATCH: usize = 500;

impl Smoothed {
    /// `model` under Gaussian noise of standard deviation `sigma` (in pixel units; pixels span
    /// `[0, 1]`), its draws seeded by `seed`.
    pub fn new(model: &Classifier, sigma: f32, seed: u64) -> Result<Self> {
        if !(sigma.is_finite() && sigma > 0.0) {
            return Err(LabError::invalid("sigma", sigma, "a finite number > 0 (the noise's standard deviation)"));
        }
        Ok(Smoothed {
            model: model.clone(),
            sigma,
            rng: RefCell::new(SeededRng::new(seed)),
            draws: RefCell::new(Vec::new()),
        })
    }

    /// The noise's standard deviation.
    pub fn sigma(&self) -> f32 {
        self.sigma
    }

    /// The base network.
    pub fn model(&self) -> &Classifier {
        &self.model
    }

    /// How many of `samples` noisy copies of the digit `x` (`[1, 1, 28, 28]`) the network gives
    /// each class: a vote per class, summing to `samples`. Fresh noise on every call.
    pub fn counts(&self, x: &Tensor, samples: usize) -> Result<Vec<usize>> {
        check_batch(x, "the digit")?;
        if x.dim(0)? != 1 {
            return Err(LabError::Shape {
                what: "the digit".into(),
                expected: "[1, 1, 28, 28]: one digit (take one with `set.get(i)?`)".into(),
                got: x.dims().to_vec(),
            });
        }
        if samples == 0 || samples > 1_000_000 {
            return Err(LabError::invalid("samples", samples, "between 1 and 1,000,000"));
        }
        let mut counts = vec![0usize; self.model.num_classes()];
        let mut left = samples;
        while left > 0 {
            let n = left.min(BATCH);
            let noise = self.rng.borrow_mut().normal_tensor(&[n, 1, 28, 28], self.sigma)?;
            // No clamp: the noise is part of the classifier, not an image anyone draws.
            let noisy = x.broadcast_add(&noise)?;
            for class in self.model.forward(&noisy)?.argmax(D::Minus1)?.to_vec1::<u32>()? {
                counts[class as usize] += 1;
            }
            left -= n;
        }
        self.draws.borrow_mut().push(Draw { samples, counts: counts.clone() });
        Ok(counts)
    }

    /// Every call of [`Smoothed::counts`] so far, in order.
    pub fn draws(&self) -> Vec<Draw> {
        self.draws.borrow().clone()
    }
}

/// The one-sided Clopper-Pearson lower confidence bound of a success probability: after
/// `successes` of `trials`, the true probability is at least this with confidence `1 - alpha`.
/// (The `alpha` quantile of Beta(`successes`, `trials - successes + 1`); 0 for no success.)
pub fn clopper_pearson_lower(successes: usize, trials: usize, alpha: f64) -> Result<f64> {
    if trials == 0 || successes > trials {
        return Err(LabError::invalid(
            "successes/trials",
            format!("{successes}/{trials}"),
            "at least one trial, and no more successes than trials",
        ));
    }
    if !(alpha > 0.0 && alpha < 1.0) {
        return Err(LabError::invalid("alpha", alpha, "strictly between 0 and 1 (0.001 is usual)"));
    }
    if successes == 0 {
        return Ok(0.0);
    }
    let (k, n) = (successes as f64, trials as f64);
    // P(at least k successes | p) = I_p(k, n - k + 1) rises with p: find where it equals alpha.
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if regularized_beta(mid, k, n - k + 1.0) < alpha {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

/// The standard normal's quantile function `Phi^-1(p)` for `p` in (0, 1).
pub fn normal_quantile(p: f64) -> Result<f64> {
    if !(p > 0.0 && p < 1.0) {
        return Err(LabError::invalid("p", p, "strictly between 0 and 1"));
    }
    // Phi(x) = erfc(-x / sqrt 2) / 2 rises with x: bisection to full precision.
    let (mut lo, mut hi) = (-40.0f64, 40.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if 0.5 * erfc(-mid / std::f64::consts::SQRT_2) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(0.5 * (lo + hi))
}

/// Cohen et al.'s CERTIFY from its two draws (private: it is notebook 06's TODO): the class
/// `guess` picked by the first draw, its lower bound from the votes `counts` of the second, `n`
/// fresh samples, and an L2 radius `sigma * Phi^-1(p_lower)`, or abstain (`None`) when `p_lower`
/// is not above 1/2.
pub(crate) fn certify_from(
    sigma: f32,
    guess: u32,
    counts: &[usize],
    n: usize,
    alpha: f64,
) -> Result<Option<(u32, f64)>> {
    let p = clopper_pearson_lower(counts[guess as usize], n, alpha)?;
    if p <= 0.5 {
        return Ok(None);
    }
    Ok(Some((guess, sigma as f64 * normal_quantile(p)?)))
}

/// The class with the most votes (the first of a tie).
pub(crate) fn top(counts: &[usize]) -> u32 {
    let mut best = 0;
    for (i, &c) in counts.iter().enumerate() {
        if c > counts[best] {
            best = i;
        }
    }
    best as u32
}

/// `erfc(x)`: from erf's Taylor series below 3, from the continued fraction of erfc above.
fn erfc(x: f64) -> f64 {
    if x < 0.0 {
        return 2.0 - erfc(-x);
    }
    if x > 26.0 {
        return 0.0;
    }
    // erfc(x) = exp(-x^2) / (x sqrt(pi)) * continued fraction, for x >= 3; a series below.
    if x >= 3.0 {
        let mut f = 0.0;
        for k in (1..=60).rev() {
            f = (k as f64 / 2.0) / (x + f);
        }
        return (-x * x).exp() / ((x + f) * std::f64::consts::PI.sqrt());
    }
    // erf(x) = 2/sqrt(pi) * sum (-1)^n x^(2n+1) / (n! (2n+1)), converging fast for x < 3.
    let (mut term, mut sum, mut n) = (x, x, 0.0f64);
    loop {
        n += 1.0;
        term *= -x * x / n;
        let add = term / (2.0 * n + 1.0);
        sum += add;
        if add.abs() <= 1e-17 * sum.abs() {
            break;
        }
    }
    1.0 - 2.0 / std::f64::consts::PI.sqrt() * sum
}

/// `ln Gamma(x)` for `x > 0` (Lanczos, g = 7, 9 terms).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The regularized incomplete beta function `I_x(a, b)` (Numerical Recipes, `betai`).
fn regularized_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front = (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_fraction(x, a, b) / a
    } else {
        1.0 - front * beta_fraction(1.0 - x, b, a) / b
    }
}

/// The continued fraction of the incomplete beta function (modified Lentz).
fn beta_fraction(x: f64, a: f64, b: f64) -> f64 {
    /// Keeps a Lentz term away from zero.
    fn nonzero(v: f64) -> f64 {
        if v.abs() < 1e-300 {
            1e-300
        } else {
            v
        }
    }
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 / nonzero(1.0 - qab * x / qap);
    let mut h = d;
    for m in 1..10_000 {
        let (m, m2) = (m as f64, 2.0 * m as f64);
        // The even and the odd step of the fraction.
        for aa in [m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))] {
            d = 1.0 / nonzero(1.0 + aa * d);
            c = nonzero(1.0 + aa / c);
            h *= d * c;
        }
        if (d * c - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `scipy.stats.beta.ppf(alpha, k, n - k + 1)`, SciPy 1.17.1.
    const SCIPY: [(usize, usize, f64, f64); 7] = [
        (1, 10, 0.05, 0.005116196891823701),
        (5, 10, 0.05, 0.2224411010081294),
        (50, 100, 0.001, 0.34479800642531777),
        (990, 1000, 0.001, 0.9760361871553114),
        (9990, 10000, 0.001, 0.9975883080325683),
        (3, 100000, 0.01, 4.360485748951068e-06),
        (70, 100, 0.2, 0.6548310367650524),
    ];

    #[test]
    fn the_normal_quantile_matches_known_values() {
        for (p, z) in [
            (0.5, 0.0),
            (0.975, 1.959_963_984_540_054),
            (0.999, 3.090_232_306_167_813_5),
            (0.001, -3.090_232_306_167_813_5),
            (1e-10, -6.361_340_902_404_056),
        ] {
            let got = normal_quantile(p).unwrap();
            assert!((got - z).abs() < 1e-9, "Phi^-1({p}) = {got}, want {z}");
        }
        assert!(normal_quantile(1.0).is_err() && normal_quantile(0.0).is_err() && normal_quantile(f64::NAN).is_err());
    }

    /// Against SciPy 1.x, `scipy.stats.beta.ppf(alpha, k, n - k + 1)`, and the closed form
    /// `alpha^(1/n)` when every trial succeeded.
    #[test]
    fn clopper_pearson_matches_scipy_and_the_closed_form() {
        for (k, n, alpha, want) in SCIPY {
            let got = clopper_pearson_lower(k, n, alpha).unwrap();
            assert!((got - want).abs() < 1e-9 * want.max(1e-3), "CP({k}, {n}, {alpha}) = {got}, want {want}");
        }
        for n in [1usize, 10, 100, 1000, 100_000] {
            let got = clopper_pearson_lower(n, n, 0.001).unwrap();
            assert!((got - 0.001f64.powf(1.0 / n as f64)).abs() < 1e-9, "all {n} succeeded: {got}");
        }
        assert_eq!(clopper_pearson_lower(0, 10, 0.05).unwrap(), 0.0);
        assert!(clopper_pearson_lower(11, 10, 0.05).is_err());
        assert!(clopper_pearson_lower(5, 10, 0.0).is_err());
    }

    #[test]
    fn the_same_seed_gives_the_same_votes_and_each_draw_is_logged() {
        let model = Classifier::pretrained().unwrap();
        let (x, _) = crate::data::mnist::test().unwrap().get(0).unwrap();
        let a = Smoothed::new(&model, 0.5, 3).unwrap();
        let b = Smoothed::new(&model, 0.5, 3).unwrap();
        let (va, vb) = (a.counts(&x, 700).unwrap(), b.counts(&x, 700).unwrap());
        assert_eq!(va, vb);
        assert_eq!(va.iter().sum::<usize>(), 700);
        let again = a.counts(&x, 50).unwrap();
        assert_eq!(a.draws(), vec![Draw { samples: 700, counts: va }, Draw { samples: 50, counts: again }]);
        assert!(Smoothed::new(&model, 0.0, 0).is_err());
        assert!(a.counts(&x, 0).is_err());
        let two = crate::data::mnist::test().unwrap().take(2).unwrap().images;
        assert!(a.counts(&two, 10).unwrap_err().to_string().contains("one digit"));
    }
}
