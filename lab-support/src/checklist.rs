//! Sanity checks for a defense's robustness numbers, after Carlini et al. (2019), "On Evaluating
//! Adversarial Robustness": a defense whose white-box numbers fail them is probably hiding its
//! gradient, not resisting attacks.
//!
//! [`checklist`] runs six on any model and budget: the first three and the fifth follow Carlini et
//! al.'s advice; the third, fourth and sixth are among the flags AutoAttack (Croce & Hein 2020)
//! raises when an evaluation looks unreliable (its `flags_doc.md`: a randomized output, a zero
//! gradient, Square Attack improving the evaluation):
//!
//! 1. **A large budget wins.** At L-inf 0.5 an attacker may turn every pixel mid-grey, wiping out
//!    the digit, so PGD must bring accuracy near 0 (at most 10%). If it cannot, the attack is not
//!    finding its way, whatever the defense.
//! 2. **More steps do not help the defense.** Accuracy under PGD-100 must not be above PGD-10's
//!    (by more than a point): an attack that gets worse with more work is not converging.
//! 3. **A black box does not beat the white box.** Square Attack sees only probabilities; the
//!    white-box attacks (APGD with cross-entropy and with the targeted DLR loss) see the weights.
//!    If Square Attack fools more digits (by more than 2 points), the gradients the white-box
//!    attacks followed were misleading.
//! 4. **The gradient is not zero.** At the clean digits, the input gradient must not be exactly
//!    zero for more than 5% of them: a zero gradient leaves every gradient attack standing still,
//!    whatever the network could be made to do.
//! 5. **More restarts do not help.** APGD from 5 random starts must not break more than a point
//!    more digits than from 1: an attack that keeps finding more with every restart has not
//!    converged, and its number is not the model's.
//! 6. **The output does not change between calls.** The logits of the same digits, computed twice,
//!    must agree (each row scaled to length 1, to within 1e-5) and so must the number of digits
//!    right. A model that answers at random (a noise layer, [`Defense::Noise`](crate::model::Defense::Noise)) makes one attack
//!    run a single draw: it needs attacks on the average over its randomness (EOT), and its
//!    accuracy over several draws.
//!
//! Passing them does not prove a defense robust; failing one says its numbers cannot be trusted.

use crate::attack::{pgd, Norm, PgdConfig};
use crate::blackbox::{square_attack, BlackBox, SquareConfig};
use crate::data::Dataset;
use crate::error::{LabError, Result};
use crate::evaluation::{evaluate, worst_case_sweep, Attack, Evaluation};
use crate::grad::{input_gradient, per_image_l2, Objective};
use crate::model::Classifier;
use crate::plot::Table;
use crate::validate::check_eps;
use candle_core::{DType, Tensor};

/// The budget of check 1.
pub const LARGE_EPS: f32 = 0.5;

/// One check's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct ChecklistItem {
    pub name: &'static str,
    pub passed: bool,
    /// The numbers behind it.
    pub detail: String,
}

/// What [`checklist`] found.
#[derive(Clone, Debug, PartialEq)]
pub struct Checklist {
    pub eps: f32,
    pub digits: usize,
    pub items: Vec<ChecklistItem>,
}

impl Checklist {
    /// True when no check flagged anything.
    pub fn passed(&self) -> bool {
        self.items.iter().all(|i| i.passed)
    }

    /// The checks as a table.
    pub fn table(&self) -> Table {
        let mut table = Table::new(&["check", "verdict", "measured"]);
        for item in &self.items {
            table = table.row(vec![
                item.name.to_string(),
                if item.passed { "ok".into() } else { "FLAGGED".into() },
                item.detail.clone(),
            ]);
        }
        table
    }

    /// Shows the table in a notebook.
    pub fn evcxr_display(&self) {
        self.table().evcxr_display()
    }
}

/// The share of digits whose input gradient may be exactly zero before check 4 flags it.
pub const ZERO_GRADIENT_SHARE: f32 = 0.05;

/// How far apart (each row scaled to length 1) two computations of the same logits may be before
/// check 6 flags the model as randomized.
pub const SAME_OUTPUT_TOLERANCE: f32 = 1e-5;

/// Check 6's measurement: the largest difference between the logits of `set`'s digits computed
/// twice, each row scaled to length 1, and the number of digits right each time.
pub fn output_changes(model: &Classifier, set: &Dataset) -> Result<(f32, usize, usize)> {
    let run = || -> Result<(Tensor, usize)> {
        let logits = model.forward(&set.images)?.detach();
        let norms = logits.sqr()?.sum_keepdim(1)?.sqrt()?.affine(1.0, 1e-10)?;
        let right = logits.argmax(1)?.eq(&set.labels.to_dtype(DType::U32)?)?.to_dtype(DType::U32)?;
        Ok((logits.broadcast_div(&norms)?, right.sum_all()?.to_scalar::<u32>()? as usize))
    };
    let ((first, right_first), (second, right_second)) = (run()?, run()?);
    let gap = (first - second)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    Ok((gap, right_first, right_second))
}

/// Runs the six checks (see the module docs) on `model` at budget `eps`, on the digits of `set`:
/// PGD-10 and PGD-100 with cross-entropy, the worst case of APGD-CE (100 steps) and APGD-DLR (100
/// steps, 3 targets), Square Attack with 1,000 queries per digit, the input gradient at the
/// clean digits, APGD-CE from 1 and from 5 random starts, and the logits computed twice.
pub fn checklist(model: &Classifier, set: &Dataset, eps: f32) -> Result<Checklist> {
    check_eps(eps)?;
    if set.is_empty() || set.len() > 2000 {
        return Err(LabError::invalid(
            "set",
            format!("{} digits", set.len()),
            "between 1 and 2,000 digits (a few hundred are enough; Square Attack costs a second per 20)",
        ));
    }
    let objective = Objective::untargeted(&set.labels)?;
    let pgd_steps = |eps: f32, steps: usize| -> Result<f32> {
        let config = PgdConfig { steps, step_size: 2.5 * eps / steps as f32, ..PgdConfig::linf(eps) };
        model.accuracy_on(&pgd(model, &set.images, &objective, &config)?.adversarial, &set.labels)
    };
    // A line every stage or so: the whole list takes half a minute on 100 digits. The units are
    // rough costs of each stage, in gradient steps per digit (Square Attack's queries are cheaper).
    let (gap, right_first, right_second) = output_changes(model, set)?;
    let mut progress = crate::notebook::Progress::new(format!("checklist on {} digits", set.len()), 1411);
    let large = pgd_steps(LARGE_EPS, 100)?;
    progress.update(100);
    let (ten, hundred) = (pgd_steps(eps, 10)?, pgd_steps(eps, 100)?);
    progress.update(210);
    let evaluation = Evaluation {
        attacks: vec![Attack::ApgdCe { steps: 100, restarts: 1 }, Attack::ApgdDlr { steps: 100, targets: 3 }],
    };
    let white_box = evaluate(model, set, Norm::Linf, &[eps], &evaluation)?.remove(0);
    progress.update(610);
    let white = white_box.accuracy;
    // Its first attack is APGD-CE from one start, on the same digits with the same seed as below.
    let one_start = (set.len() - white_box.clean_errors - white_box.broken_by[0].1) as f32 / set.len() as f32;
    let black_box = BlackBox::new(model);
    let square = square_attack(
        &black_box,
        &set.images,
        &set.labels,
        &SquareConfig { eps, max_queries: 1000, ..SquareConfig::default() },
    )?;
    let black = model.accuracy_on(&square.adversarial, &set.labels)?;
    progress.update(910);
    let gradient = input_gradient(model, &set.images, &objective)?;
    let zero =
        per_image_l2(&gradient.grad)?.to_vec1::<f32>()?.iter().filter(|&&n| n == 0.0).count() as f32 / set.len() as f32;
    let five = Evaluation { attacks: vec![Attack::ApgdCe { steps: 100, restarts: 5 }] };
    let five_starts = worst_case_sweep(model, set, Norm::Linf, &[eps], &five)?[0].accuracy;
    progress.finish();
    let pct = |a: f32| format!("{:.1}%", 100.0 * a);
    // Accuracies in tenths of a point, so that a tolerance of exactly one point is one point.
    let tenths = |a: f32| (1000.0 * a).round() as i64;
    let items = vec![
        ChecklistItem {
            name: "a large budget wins",
            passed: tenths(large) <= 100,
            detail: format!("accuracy under PGD-100 at eps {LARGE_EPS}: {} (must be at most 10%)", pct(large)),
        },
        ChecklistItem {
            name: "more steps do not help the defense",
            passed: tenths(hundred) <= tenths(ten) + 10,
            detail: format!("at eps {eps}: PGD-10 {}, PGD-100 {}", pct(ten), pct(hundred)),
        },
        ChecklistItem {
            name: "a black box does not beat the white box",
            passed: tenths(black) >= tenths(white) - 20,
            detail: format!(
                "at eps {eps}: white box (APGD, CE and DLR) {}, Square Attack (1,000 queries) {}",
                pct(white),
                pct(black)
            ),
        },
        ChecklistItem {
            name: "the gradient is not zero",
            passed: zero <= ZERO_GRADIENT_SHARE,
            detail: format!(
                "input gradient exactly zero at {} of the clean digits (must be at most {})",
                pct(zero),
                pct(ZERO_GRADIENT_SHARE)
            ),
        },
        ChecklistItem {
            name: "more restarts do not help",
            passed: tenths(five_starts) >= tenths(one_start) - 10,
            detail: format!(
                "at eps {eps}: APGD-CE from 1 start {}, from 5 starts {}",
                pct(one_start),
                pct(five_starts)
            ),
        },
        ChecklistItem {
            name: "the output does not change between calls",
            passed: gap <= SAME_OUTPUT_TOLERANCE && right_first == right_second,
            detail: if gap <= SAME_OUTPUT_TOLERANCE && right_first == right_second {
                let same = if gap == 0.0 { "identical logits".to_string() } else { format!("logits within {gap:.1e}") };
                format!("the clean digits twice: {same}, {right_first} right both times")
            } else {
                format!(
                    "the clean digits twice: {right_first}, then {right_second} right, logits up to {gap:.2} apart (scaled to length 1): a randomized model, attack the average over its randomness (EOT)"
                )
            },
        },
    ];
    Ok(Checklist { eps, digits: set.len(), items })
}
