//! Sanity checks for a defense's robustness numbers, after Carlini et al. (2019), "On Evaluating
//! Adversarial Robustness": a defense whose white-box numbers fail them is probably hiding its
//! gradient, not resisting attacks.
//!
//! [`checklist`] runs three on any model and budget:
//!
//! 1. **A large budget wins.** At L-inf 0.5 an attacker may turn every pixel mid-grey, wiping out
//!    the digit, so PGD must bring accuracy near 0 (at most 10%). If it cannot, the attack is not
//!    finding its way, whatever the defense.
//! 2. **More steps do not help the defense.** Accuracy under PGD-100 must not be above PGD-10's
//!    (by more than a point): an attack that gets worse with more work is not converging.
//! 3. **A black box does not beat the white box.** Square Attack sees only probabilities; the
//!    white-box attacks see the weights. If Square Attack fools more digits (by more than 2
//!    points), the gradients the white-box attacks followed were misleading.
//!
//! Passing them does not prove a defense robust; failing one says its numbers cannot be trusted.

use crate::attack::{pgd, Norm, PgdConfig};
use crate::blackbox::{square_attack, BlackBox, SquareConfig};
use crate::data::Dataset;
use crate::error::{LabError, Result};
use crate::evaluation::{worst_case_sweep, Evaluation};
use crate::grad::Objective;
use crate::model::Classifier;
use crate::plot::Table;
use crate::validate::check_eps;

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

/// Runs the three checks (see the module docs) on `model` at budget `eps`, on the digits of `set`:
/// PGD-10 and PGD-100 with cross-entropy, the worst case of PGD-100 with cross-entropy and with the
/// margin loss, and Square Attack with 1,000 queries per digit.
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
    let large = pgd_steps(LARGE_EPS, 100)?;
    let (ten, hundred) = (pgd_steps(eps, 10)?, pgd_steps(eps, 100)?);
    let evaluation = Evaluation::pgd(100, 1);
    let white = worst_case_sweep(model, set, Norm::Linf, &[eps], &evaluation)?[0].accuracy;
    let black_box = BlackBox::new(model);
    let square = square_attack(
        &black_box,
        &set.images,
        &set.labels,
        &SquareConfig { eps, max_queries: 1000, ..SquareConfig::default() },
    )?;
    let black = model.accuracy_on(&square.adversarial, &set.labels)?;
    let pct = |a: f32| format!("{:.1}%", 100.0 * a);
    let items = vec![
        ChecklistItem {
            name: "a large budget wins",
            passed: large <= 0.10,
            detail: format!("accuracy under PGD-100 at eps {LARGE_EPS}: {} (must be at most 10%)", pct(large)),
        },
        ChecklistItem {
            name: "more steps do not help the defense",
            passed: hundred <= ten + 0.01,
            detail: format!("at eps {eps}: PGD-10 {}, PGD-100 {}", pct(ten), pct(hundred)),
        },
        ChecklistItem {
            name: "a black box does not beat the white box",
            passed: black >= white - 0.02,
            detail: format!(
                "at eps {eps}: white box (PGD-100, both losses) {}, Square Attack (1,000 queries) {}",
                pct(white),
                pct(black)
            ),
        },
    ];
    Ok(Checklist { eps, digits: set.len(), items })
}
