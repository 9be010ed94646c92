//! One honest robustness figure: the worst case, digit by digit, of several different attacks.
//!
//! A weak attack flatters a defense: a digit that survives one PGD run may fall to another start,
//! another loss, or an attack that needs no gradient at all. [`Evaluation::strongest`] follows
//! AutoAttack (Croce & Hein 2020), the field's yardstick: APGD with cross-entropy, APGD with the
//! targeted DLR loss against each of the nine likeliest wrong classes, and Square Attack, a black
//! box that a masked gradient cannot mislead. Each attack runs only on the digits every earlier
//! one left standing, so the cost falls as the model fails, and a digit counts as robust only if
//! every attack failed on it.
//!
//! ```no_run
//! use lab_support::prelude::*;
//! let test = mnist::test()?.take(500)?;
//! for point in evaluate(&Classifier::robust()?, &test, Norm::Linf, &[0.3], &Evaluation::strongest())? {
//!     println!("eps {}: {:.1}% robust; broken by {:?}", point.eps, 100.0 * point.accuracy, point.broken_by);
//! }
//! # Ok::<(), LabError>(())
//! ```

use crate::attack::{apgd, pgd, ApgdConfig, ApgdLoss, Norm, PgdConfig, SweepPoint};
use crate::blackbox::{square_attack, BlackBox, SquareConfig};
use crate::data::Dataset;
use crate::error::{LabError, Result};
use crate::grad::{AttackLoss, Objective};
use crate::model::Classifier;
use crate::plot::Table;
use crate::validate::{check_eps, check_steps};
use candle_core::Tensor;

/// One attack of an [`Evaluation`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Attack {
    /// PGD with a fixed step of `2.5 eps / steps`, from `restarts` random starts.
    Pgd { steps: usize, restarts: usize, loss: AttackLoss },
    /// APGD with cross-entropy, from `restarts` random starts.
    ApgdCe { steps: usize, restarts: usize },
    /// APGD with the targeted DLR loss, once toward each of the `targets` likeliest wrong classes.
    ApgdDlr { steps: usize, targets: usize },
    /// Square Attack (L-inf only: skipped under L2) with `queries` queries per digit.
    Square { queries: usize },
}

impl Attack {
    /// A short name for tables.
    pub fn name(&self) -> String {
        match *self {
            Attack::Pgd { steps, restarts, loss } => {
                let loss = if loss == AttackLoss::Margin { "margin" } else { "CE" };
                let starts = if restarts > 1 { format!(", {restarts} starts") } else { String::new() };
                format!("PGD-{steps} ({loss}{starts})")
            }
            Attack::ApgdCe { steps, restarts } if restarts > 1 => format!("APGD-CE ({steps} steps, {restarts} starts)"),
            Attack::ApgdCe { steps, .. } => format!("APGD-CE ({steps} steps)"),
            Attack::ApgdDlr { steps, targets } => format!("APGD-DLR ({targets} targets x {steps} steps)"),
            Attack::Square { queries } => format!("Square Attack ({queries} queries)"),
        }
    }

    fn runs_under(&self, norm: Norm) -> bool {
        !matches!((self, norm), (Attack::Square { .. }, Norm::L2))
    }

    fn check(&self) -> Result<()> {
        let (steps, runs) = match *self {
            Attack::Pgd { steps, restarts, .. } | Attack::ApgdCe { steps, restarts } => (steps, restarts),
            Attack::ApgdDlr { steps, targets } => (steps, targets),
            Attack::Square { queries } => (queries.min(1), 1),
        };
        if steps == 0 || runs == 0 {
            return Err(LabError::invalid(
                "evaluation",
                format!("{self:?}"),
                "at least 1 step, query, start and target",
            ));
        }
        check_steps(steps)?;
        if let Attack::ApgdDlr { targets, .. } = self {
            if *targets > 9 {
                return Err(LabError::invalid("targets", targets, "at most 9: a digit has nine wrong classes"));
            }
        }
        Ok(())
    }

    /// Which of `images` this attack makes the model misread, asked again after the attack.
    fn fooled(
        &self,
        model: &Classifier,
        images: &Tensor,
        labels: &[u32],
        norm: Norm,
        eps: f32,
        seed: u64,
    ) -> Result<Vec<bool>> {
        let objective = Objective::Untargeted(labels.to_vec());
        let adversarial = match *self {
            Attack::Pgd { steps, restarts, loss } => {
                let config = PgdConfig {
                    norm,
                    eps,
                    step_size: 2.5 * eps / steps as f32,
                    steps,
                    random_start: Some(seed),
                    loss,
                    restarts,
                };
                pgd(model, images, &objective, &config)?.adversarial
            }
            Attack::ApgdCe { steps, restarts } => {
                let config =
                    ApgdConfig { norm, eps, steps, loss: ApgdLoss::CrossEntropy, random_start: Some(seed), restarts };
                apgd(model, images, &objective, &config)?.adversarial
            }
            Attack::ApgdDlr { steps, targets } => {
                // One run per target class, each on the digits the earlier targets left standing.
                let mut fooled = vec![false; labels.len()];
                for rank in 1..=targets {
                    let left: Vec<u32> = (0..labels.len() as u32).filter(|&i| !fooled[i as usize]).collect();
                    if left.is_empty() {
                        break;
                    }
                    let idx = Tensor::new(left.as_slice(), images.device())?;
                    let sub_labels: Vec<u32> = left.iter().map(|&i| labels[i as usize]).collect();
                    let config = ApgdConfig {
                        norm,
                        eps,
                        steps,
                        loss: ApgdLoss::TargetedDlr { rank },
                        random_start: Some(seed + rank as u64),
                        restarts: 1,
                    };
                    let objective = Objective::Untargeted(sub_labels.clone());
                    let result = apgd(model, &images.index_select(&idx, 0)?, &objective, &config)?;
                    for (&i, broke) in left.iter().zip(misread(model, &result.adversarial, &sub_labels)?) {
                        fooled[i as usize] = broke;
                    }
                }
                return Ok(fooled);
            }
            Attack::Square { queries } => {
                let labels_t = Tensor::new(labels, images.device())?;
                let config = SquareConfig { eps, max_queries: queries, p_init: SQUARE_P_INIT, seed };
                square_attack(&BlackBox::new(model), images, &labels_t, &config)?.adversarial
            }
        };
        misread(model, &adversarial, labels)
    }
}

/// The fraction of the image Square Attack's first squares cover in an evaluation (AutoAttack's
/// setting for MNIST).
const SQUARE_P_INIT: f32 = 0.8;

fn misread(model: &Classifier, images: &Tensor, labels: &[u32]) -> Result<Vec<bool>> {
    Ok(model.predict(images)?.iter().zip(labels).map(|(p, &y)| p.class != y as usize).collect())
}

/// A list of attacks run one after the other; a digit counts as robust only if every one fails.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    pub attacks: Vec<Attack>,
}

impl Evaluation {
    /// The strongest evaluation the lab runs, AutoAttack's standard ensemble without FAB: APGD-CE
    /// (100 steps), APGD-DLR against each of the 9 wrong classes (100 steps each), Square Attack
    /// (5,000 queries; L-inf only).
    pub fn strongest() -> Self {
        Evaluation {
            attacks: vec![
                Attack::ApgdCe { steps: 100, restarts: 1 },
                Attack::ApgdDlr { steps: 100, targets: 9 },
                Attack::Square { queries: 5000 },
            ],
        }
    }

    /// A lighter ensemble for a notebook's few hundred digits: APGD-CE (50 steps), APGD-DLR
    /// against the 3 likeliest wrong classes (50 steps each), Square Attack (1,000 queries).
    pub fn light() -> Self {
        Evaluation {
            attacks: vec![
                Attack::ApgdCe { steps: 50, restarts: 1 },
                Attack::ApgdDlr { steps: 50, targets: 3 },
                Attack::Square { queries: 1000 },
            ],
        }
    }

    /// PGD-`steps` with the cross-entropy and with the margin loss, each from `restarts` random
    /// starts: the lab's evaluation before APGD.
    pub fn pgd(steps: usize, restarts: usize) -> Self {
        Evaluation {
            attacks: [AttackLoss::CrossEntropy, AttackLoss::Margin]
                .map(|loss| Attack::Pgd { steps, restarts, loss })
                .to_vec(),
        }
    }

    /// A quick one for monitoring and notebooks: PGD-`steps`, one start, cross-entropy.
    pub fn quick(steps: usize) -> Self {
        Evaluation { attacks: vec![Attack::Pgd { steps, restarts: 1, loss: AttackLoss::CrossEntropy }] }
    }
}

/// What [`evaluate`] measured at one budget.
#[derive(Clone, Debug, PartialEq)]
pub struct Robustness {
    pub eps: f32,
    pub digits: usize,
    /// The fraction no attack could make the model misread (clean accuracy at eps 0).
    pub accuracy: f32,
    /// Digits the model misreads with no attack at all.
    pub clean_errors: usize,
    /// For each attack that ran, in order: its name and how many digits it broke that the earlier
    /// attacks had left standing.
    pub broken_by: Vec<(String, usize)>,
}

/// The worst case of `evaluation`'s attacks at each budget in `eps`, on every digit of `set`, in
/// batches of 500 (all 10,000 MNIST test digits fit in memory).
pub fn evaluate(
    model: &Classifier,
    set: &Dataset,
    norm: Norm,
    eps: &[f32],
    evaluation: &Evaluation,
) -> Result<Vec<Robustness>> {
    if set.is_empty() {
        return Err(LabError::invalid("set", "an empty dataset", "at least one image"));
    }
    if evaluation.attacks.is_empty() {
        return Err(LabError::invalid("evaluation", "no attacks", "at least one attack, e.g. Evaluation::strongest()"));
    }
    evaluation.attacks.iter().try_for_each(Attack::check)?;
    eps.iter().try_for_each(|&e| check_eps(e))?;
    let attacks: Vec<&Attack> = evaluation.attacks.iter().filter(|a| a.runs_under(norm)).collect();
    let mut points: Vec<Robustness> = eps
        .iter()
        .map(|&eps| Robustness {
            eps,
            digits: set.len(),
            accuracy: 0.0,
            clean_errors: 0,
            broken_by: if eps > 0.0 { attacks.iter().map(|a| (a.name(), 0)).collect() } else { Vec::new() },
        })
        .collect();
    let units = set.len().div_ceil(500) * eps.iter().filter(|&&e| e > 0.0).count() * attacks.len();
    let names: Vec<String> = attacks.iter().map(|a| a.name()).collect();
    let mut progress = crate::notebook::Progress::new(
        format!("worst case of {} on {} digits at {} budgets", names.join(", "), set.len(), eps.len()),
        units,
    );
    let (mut standing_total, mut done) = (vec![0usize; eps.len()], 0);
    for start in (0..set.len()).step_by(500) {
        let part = set.slice(start, 500.min(set.len() - start))?;
        let labels = Objective::untargeted(&part.labels)?.classes().to_vec();
        let clean = misread(model, &part.images, &labels)?;
        for (k, point) in points.iter_mut().enumerate() {
            // Indices of the digits still read correctly.
            let mut standing: Vec<u32> = (0..labels.len() as u32).filter(|&i| !clean[i as usize]).collect();
            point.clean_errors += labels.len() - standing.len();
            if point.eps > 0.0 {
                for (a, attack) in attacks.iter().enumerate() {
                    if !standing.is_empty() {
                        let idx = Tensor::new(standing.as_slice(), part.images.device())?;
                        let sub_labels: Vec<u32> = standing.iter().map(|&i| labels[i as usize]).collect();
                        let seed = 1000 * a as u64 + start as u64;
                        let fooled = attack.fooled(
                            model,
                            &part.images.index_select(&idx, 0)?,
                            &sub_labels,
                            norm,
                            point.eps,
                            seed,
                        )?;
                        point.broken_by[a].1 += fooled.iter().filter(|&&f| f).count();
                        standing = standing.into_iter().zip(fooled).filter(|(_, f)| !f).map(|(i, _)| i).collect();
                    }
                    done += 1;
                    progress.update(done);
                }
            }
            standing_total[k] += standing.len();
        }
    }
    progress.finish();
    for (point, standing) in points.iter_mut().zip(standing_total) {
        point.accuracy = standing as f32 / set.len() as f32;
    }
    Ok(points)
}

/// The robustness curve under [`evaluate`]'s worst case: for each budget in `eps`, the fraction of
/// `set` that no attack of `evaluation` could make the model misread.
pub fn worst_case_sweep(
    model: &Classifier,
    set: &Dataset,
    norm: Norm,
    eps: &[f32],
    evaluation: &Evaluation,
) -> Result<Vec<SweepPoint>> {
    Ok(evaluate(model, set, norm, eps, evaluation)?
        .into_iter()
        .map(|p| SweepPoint { eps: p.eps, accuracy: p.accuracy })
        .collect())
}

/// [`evaluate`]'s findings as a table: one row per budget, the accuracy that remains, then how many
/// digits each attack broke among those the earlier ones left standing.
pub fn robustness_table(points: &[Robustness]) -> Table {
    let mut names: Vec<String> = Vec::new();
    for (name, _) in points.iter().flat_map(|p| &p.broken_by) {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    let mut header = vec!["eps".to_string(), "robust accuracy".to_string(), "misread clean".to_string()];
    header.extend(names.iter().map(|n| format!("broken by {n}")));
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut table = Table::new(&header);
    for p in points {
        let mut row = vec![format!("{}", p.eps), format!("{:.1}%", 100.0 * p.accuracy), p.clean_errors.to_string()];
        row.extend(
            names
                .iter()
                .map(|n| p.broken_by.iter().find(|(m, _)| m == n).map_or("-".to_string(), |(_, c)| c.to_string())),
        );
        table = table.row(row);
    }
    table
}
