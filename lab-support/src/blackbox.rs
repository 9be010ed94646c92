//! Attackers who know less: a model behind an API that answers with probabilities only, attacks
//! that need nothing else (SimBA, Square Attack), and transfer from a model the attacker trained.
//!
//! A [`BlackBox`] hides a [`Classifier`]: no weights, no gradients, only
//! [`BlackBox::probabilities`], and it counts every image it is asked about. That count, the
//! number of *queries*, is what a score-only attack spends, and what a real service would see in
//! its logs.
//!
//! - [`simba`]: Simple Black-box Attack (Guo et al. 2019), pixel basis. Visit the pixels in a
//!   random order; push each one by +eps, and keep the change if the true class's probability
//!   drops; else try -eps. Each pixel moves at most once, so the result stays within L-inf eps.
//! - [`square_attack`]: Square Attack (Andriushchenko et al. 2020), L-inf. Random squares set to
//!   +eps or -eps, kept when the margin between the true class and the best other one shrinks;
//!   the squares get smaller as the attack goes.
//! - [`transfer_rates`]: adversarial digits crafted with white-box PGD on one model, shown to
//!   another.
//!
//! ```
//! use lab_support::prelude::*;
//! let model = Classifier::pretrained()?;
//! let test = mnist::test()?.take(8)?;
//! let black_box = BlackBox::new(&model);
//! let result = square_attack(&black_box, &test.images, &test.labels, &SquareConfig { eps: 0.3, max_queries: 300, ..SquareConfig::default() })?;
//! assert!(result.success_rate() > 0.5);
//! assert_eq!(black_box.queries(), result.queries.iter().sum::<usize>());
//! # Ok::<(), LabError>(())
//! ```

use crate::attack::{pgd, PgdConfig};
use crate::data::{Dataset, SIDE};
use crate::error::{LabError, Result};
use crate::grad::Objective;
use crate::model::{Classifier, Prediction};
use crate::rng::SeededRng;
use crate::validate::{check_batch, check_eps};
use candle_core::{DType, Device, Tensor};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Pixels in one digit.
const PIXELS: usize = SIDE * SIDE;

/// A model you may only ask: probabilities in, probabilities out, every image counted.
///
/// Asking about a batch of `n` images costs `n` queries. With a budget
/// ([`BlackBox::with_budget`]), a call that would go over it is refused with an error and
/// answers nothing, the way a rate-limited service would.
#[derive(Debug)]
pub struct BlackBox {
    model: Classifier,
    queries: AtomicUsize,
    budget: Option<usize>,
}

impl BlackBox {
    /// `model` behind the black box, with no limit on queries.
    pub fn new(model: &Classifier) -> Self {
        BlackBox { model: model.clone(), queries: AtomicUsize::new(0), budget: None }
    }

    /// `model` behind the black box, answering at most `budget` queries in all.
    pub fn with_budget(model: &Classifier, budget: usize) -> Self {
        BlackBox { budget: Some(budget), ..BlackBox::new(model) }
    }

    /// Class probabilities `(N, 10)` for a batch `(N, 1, 28, 28)`; costs `N` queries.
    pub fn probabilities(&self, images: &Tensor) -> Result<Tensor> {
        check_batch(images, "the batch sent to the black box")?;
        self.spend(images.dim(0)?)?;
        self.model.probabilities(images)
    }

    /// The most probable class of each image and its probability; costs one query per image.
    pub fn predict(&self, images: &Tensor) -> Result<Vec<Prediction>> {
        check_batch(images, "the batch sent to the black box")?;
        self.spend(images.dim(0)?)?;
        self.model.predict(images)
    }

    /// The images labelled by the black box's own answers: the training set of a substitute
    /// model (Papernot et al. 2017). Costs one query per image.
    pub fn label(&self, images: &Tensor) -> Result<Dataset> {
        let answers: Vec<u32> = self.predict(images)?.iter().map(|p| p.class as u32).collect();
        let n = answers.len();
        Ok(Dataset {
            images: images.clone(),
            labels: Tensor::from_vec(answers, n, &Device::Cpu)?,
            class_names: self.model.class_names(),
        })
    }

    /// Queries answered so far.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::Relaxed)
    }

    /// Queries left, if the black box has a budget.
    pub fn queries_left(&self) -> Option<usize> {
        self.budget.map(|b| b.saturating_sub(self.queries()))
    }

    fn spend(&self, n: usize) -> Result<()> {
        let before = self.queries.fetch_add(n, Ordering::Relaxed);
        if let Some(budget) = self.budget {
            if before + n > budget {
                self.queries.fetch_sub(n, Ordering::Relaxed);
                return Err(LabError::invalid(
                    "queries",
                    format!("{n} more after {before}"),
                    format!("at most {budget} in all: the black box's query budget is spent. Stop asking once the model is fooled, and try one change per query"),
                ));
            }
        }
        Ok(())
    }
}

/// What a score-only attack produced.
#[derive(Clone, Debug)]
pub struct QueryAttack {
    /// The adversarial batch, pixels in `[0, 1]`, within L-inf eps of the originals.
    pub adversarial: Tensor,
    /// Queries spent on each image, up to and including the one that fooled the model (or all
    /// it was allowed, if none did).
    pub queries: Vec<usize>,
    /// Whether the black box misclassifies each adversarial image (by its own last answer).
    pub fooled: Vec<bool>,
    /// The batch's state as the attack went, one line per round.
    pub trace: Vec<QueryStep>,
}

/// One line of a score-only attack's trace.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QueryStep {
    /// Queries spent so far, per image on average.
    pub queries: f32,
    /// Fraction of the batch fooled so far.
    pub fooled: f32,
    /// The attack's loss, averaged over the batch: the true class's probability for SimBA, the
    /// log-probability margin for Square Attack.
    pub loss: f32,
    /// L2 norm of the perturbation, averaged over the batch.
    pub l2: f32,
}

impl QueryAttack {
    /// The fraction of images fooled.
    pub fn success_rate(&self) -> f32 {
        self.fooled.iter().filter(|&&f| f).count() as f32 / self.fooled.len().max(1) as f32
    }

    /// For each budget in `budgets`, the fraction of images fooled within that many queries: the
    /// curve of success against queries.
    pub fn success_within(&self, budgets: &[usize]) -> Vec<(f64, f64)> {
        let n = self.fooled.len().max(1) as f64;
        budgets
            .iter()
            .map(|&b| {
                (b as f64, self.fooled.iter().zip(&self.queries).filter(|(&f, &q)| f && q <= b).count() as f64 / n)
            })
            .collect()
    }

    /// The median number of queries over the images that were fooled (`None` if none was).
    pub fn median_queries(&self) -> Option<usize> {
        let mut q: Vec<usize> = self.fooled.iter().zip(&self.queries).filter(|(&f, _)| f).map(|(_, &q)| q).collect();
        q.sort_unstable();
        q.get(q.len().saturating_sub(1) / 2).copied()
    }
}

/// Settings for [`simba`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SimbaConfig {
    /// How far each pixel is pushed (once), so also the L-inf budget.
    pub eps: f32,
    /// Queries allowed per image (a full pass over the 784 pixels takes at most 1,569).
    pub max_queries: usize,
    /// Seeds the order in which pixels are visited.
    pub seed: u64,
}

impl Default for SimbaConfig {
    fn default() -> Self {
        SimbaConfig { eps: 0.2, max_queries: 1569, seed: 0 }
    }
}

/// Settings for [`square_attack`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SquareConfig {
    /// The L-inf budget.
    pub eps: f32,
    /// Queries allowed per image.
    pub max_queries: usize,
    /// The fraction of the image the first squares cover; it halves on a fixed schedule.
    pub p_init: f32,
    pub seed: u64,
}

impl Default for SquareConfig {
    fn default() -> Self {
        SquareConfig { eps: 0.2, max_queries: 1000, p_init: 0.3, seed: 0 }
    }
}

/// The most queries one score-only attack may spend on one image.
pub const MAX_QUERIES: usize = 100_000;

fn check_query_attack(images: &Tensor, labels: &Tensor, eps: f32, max_queries: usize) -> Result<Vec<u32>> {
    check_batch(images, "the image batch")?;
    check_eps(eps)?;
    if max_queries == 0 || max_queries > MAX_QUERIES {
        return Err(LabError::invalid("max_queries", max_queries, format!("between 1 and {MAX_QUERIES} per image")));
    }
    let labels = Objective::untargeted(labels)?.classes().to_vec();
    if labels.len() != images.dim(0)? {
        return Err(LabError::invalid(
            "labels",
            format!("{} label(s)", labels.len()),
            format!("one per image: the batch holds {}", images.dim(0)?),
        ));
    }
    Ok(labels)
}

/// A batch of images kept as plain pixel rows, for attacks that change a few pixels at a time.
struct Rows {
    original: Vec<Vec<f32>>,
    current: Vec<Vec<f32>>,
}

impl Rows {
    fn new(images: &Tensor) -> Result<Self> {
        let original: Vec<Vec<f32>> = images.to_dtype(DType::F32)?.flatten_from(1)?.to_vec2::<f32>()?;
        Ok(Rows { current: original.clone(), original })
    }

    fn tensor(rows: &[&[f32]]) -> Result<Tensor> {
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Ok(Tensor::from_vec(flat, (rows.len(), 1, SIDE, SIDE), &Device::Cpu)?)
    }

    fn mean_l2(&self) -> f32 {
        let total: f32 = self
            .original
            .iter()
            .zip(&self.current)
            .map(|(o, c)| o.iter().zip(c).map(|(a, b)| (a - b) * (a - b)).sum::<f32>().sqrt())
            .sum();
        total / self.original.len().max(1) as f32
    }

    fn into_tensor(self, dtype: DType) -> Result<Tensor> {
        let refs: Vec<&[f32]> = self.current.iter().map(|r| r.as_slice()).collect();
        Ok(Rows::tensor(&refs)?.to_dtype(dtype)?)
    }
}

/// The probabilities the black box gives each of `rows`, one query each.
fn ask(black_box: &BlackBox, rows: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
    let batch: Vec<&[f32]> = rows.iter().map(|r| r.as_slice()).collect();
    Ok(black_box.probabilities(&Rows::tensor(&batch)?)?.to_vec2::<f32>()?)
}

fn argmax(row: &[f32]) -> usize {
    crate::model::top1(row).class
}

/// SimBA with the pixel basis, on a batch, against a black box (Guo et al. 2019).
///
/// The pixels are visited in one random order (from `config.seed`). For each image not yet
/// fooled: push the pixel up by eps and ask; if the true class's probability dropped, keep it;
/// otherwise push it down by eps and ask again, keeping that if it helped. "Dropped" is measured
/// as the other classes' probability rising: a confident model's `p_true` is exactly 1.0 in f32.
/// A push the `[0, 1]` range undoes (a black pixel pushed down) costs no query. An image stops as
/// soon as the black box's answer for it is wrong, or its `max_queries` are spent (its first
/// query, of the clean image, included).
pub fn simba(black_box: &BlackBox, images: &Tensor, labels: &Tensor, config: &SimbaConfig) -> Result<QueryAttack> {
    let _call = crate::notebook::library_call("simba");
    let labels = check_query_attack(images, labels, config.eps, config.max_queries)?;
    let n = labels.len();
    let mut rows = Rows::new(images)?;
    let first = ask(black_box, &rows.current)?;
    let mut queries = vec![1usize; n];
    // The probability of the other classes, summed: the same as 1 - p_true, but it keeps its
    // digits where p_true rounds to exactly 1.0 in f32 (a confident model, on most digits).
    let rest =
        |p: &[f32], y: u32| -> f32 { p.iter().enumerate().filter(|&(j, _)| j != y as usize).map(|(_, &v)| v).sum() };
    let mut prob: Vec<f32> = first.iter().zip(&labels).map(|(p, &y)| p[y as usize]).collect();
    let mut others: Vec<f32> = first.iter().zip(&labels).map(|(p, &y)| rest(p, y)).collect();
    let mut fooled: Vec<bool> = first.iter().zip(&labels).map(|(p, &y)| argmax(p) != y as usize).collect();
    let mut trace = vec![trace_line(&queries, &fooled, &prob, &rows)];
    let order = SeededRng::new(config.seed).permutation(PIXELS);
    let mut progress = crate::notebook::Progress::new(format!("SimBA on {n} digits"), PIXELS);
    for (round, &pixel) in order.iter().enumerate() {
        progress.update(round);
        let pixel = pixel as usize;
        for sign in [1.0f32, -1.0] {
            // Images still in play whose pixel the push actually changes.
            let mut which = Vec::new();
            let mut candidates = Vec::new();
            for i in 0..n {
                let moved_already = rows.current[i][pixel] != rows.original[i][pixel];
                if fooled[i] || queries[i] >= config.max_queries || moved_already {
                    continue;
                }
                let value = (rows.original[i][pixel] + sign * config.eps).clamp(0.0, 1.0);
                if value != rows.current[i][pixel] {
                    let mut row = rows.current[i].clone();
                    row[pixel] = value;
                    which.push(i);
                    candidates.push(row);
                }
            }
            if which.is_empty() {
                continue;
            }
            let answers = ask(black_box, &candidates)?;
            for ((&i, row), p) in which.iter().zip(candidates).zip(answers) {
                queries[i] += 1;
                let y = labels[i] as usize;
                let r = rest(&p, labels[i]);
                if r > others[i] {
                    (prob[i], others[i]) = (p[y], r);
                    fooled[i] = argmax(&p) != y;
                    rows.current[i] = row;
                }
            }
        }
        if round % 8 == 7 || round + 1 == PIXELS {
            trace.push(trace_line(&queries, &fooled, &prob, &rows));
        }
    }
    progress.finish();
    Ok(QueryAttack { adversarial: rows.into_tensor(images.dtype())?, queries, fooled, trace })
}

/// Square Attack under an L-inf budget, on a batch, against a black box (Andriushchenko et al.
/// 2020).
///
/// It starts from vertical stripes of +eps and -eps, then, round after round, sets a random
/// square of each image not yet fooled to +eps or -eps (one sign for the whole square) and keeps
/// it if the margin `log p_true - max_other log p` shrank. The squares cover `p_init` of the image
/// at first and shrink on the paper's schedule. One query per image per round.
pub fn square_attack(
    black_box: &BlackBox,
    images: &Tensor,
    labels: &Tensor,
    config: &SquareConfig,
) -> Result<QueryAttack> {
    let _call = crate::notebook::library_call("square_attack");
    let labels = check_query_attack(images, labels, config.eps, config.max_queries)?;
    if !(config.p_init > 0.0 && config.p_init <= 1.0) {
        return Err(LabError::invalid("p_init", config.p_init, "a fraction in (0, 1]"));
    }
    let n = labels.len();
    let eps = config.eps;
    let mut rng = SeededRng::new(config.seed);
    let mut rows = Rows::new(images)?;
    // Vertical stripes: one random sign per column.
    for i in 0..n {
        for col in 0..SIDE {
            let s = if rng.uniform() < 0.5 { -eps } else { eps };
            for r in 0..SIDE {
                let k = r * SIDE + col;
                rows.current[i][k] = (rows.original[i][k] + s).clamp(0.0, 1.0);
            }
        }
    }
    let first = ask(black_box, &rows.current)?;
    let mut queries = vec![1usize; n];
    let mut margin: Vec<f32> = first.iter().zip(&labels).map(|(p, &y)| log_margin(p, y as usize)).collect();
    let mut fooled: Vec<bool> = margin.iter().map(|&m| m < 0.0).collect();
    let mut trace = vec![trace_line(&queries, &fooled, &margin, &rows)];
    let mut round = 0;
    let mut progress = crate::notebook::Progress::new(format!("Square Attack on {n} digits"), config.max_queries);
    loop {
        round += 1;
        progress.update(round);
        let which: Vec<usize> = (0..n).filter(|&i| !fooled[i] && queries[i] < config.max_queries).collect();
        if which.is_empty() {
            break;
        }
        let p = square_fraction(config.p_init, round, config.max_queries);
        let side = ((p * PIXELS as f32).sqrt().round() as usize).clamp(1, SIDE - 1);
        let mut candidates = Vec::with_capacity(which.len());
        for &i in &which {
            let (top, left) = (
                (rng.uniform() * (SIDE - side + 1) as f32) as usize,
                (rng.uniform() * (SIDE - side + 1) as f32) as usize,
            );
            let (top, left) = (top.min(SIDE - side), left.min(SIDE - side));
            let mut row = rows.current[i].clone();
            // A sign that changes nothing in the square would waste the query: try the other.
            for attempt in 0..2 {
                let s = if (rng.uniform() < 0.5) ^ (attempt == 1) { -eps } else { eps };
                let mut changed = false;
                for r in top..top + side {
                    for c in left..left + side {
                        let k = r * SIDE + c;
                        let v = (rows.original[i][k] + s).clamp(0.0, 1.0);
                        changed |= v != rows.current[i][k];
                        row[k] = v;
                    }
                }
                if changed {
                    break;
                }
            }
            candidates.push(row);
        }
        let answers = ask(black_box, &candidates)?;
        for ((&i, row), p) in which.iter().zip(candidates).zip(answers) {
            queries[i] += 1;
            let m = log_margin(&p, labels[i] as usize);
            if m < margin[i] {
                margin[i] = m;
                fooled[i] = m < 0.0;
                rows.current[i] = row;
            }
        }
        if round % 10 == 0 {
            trace.push(trace_line(&queries, &fooled, &margin, &rows));
        }
    }
    trace.push(trace_line(&queries, &fooled, &margin, &rows));
    progress.finish();
    Ok(QueryAttack { adversarial: rows.into_tensor(images.dtype())?, queries, fooled, trace })
}

/// `log p_true - max_{j != true} log p_j`: below zero, the model is fooled.
fn log_margin(p: &[f32], y: usize) -> f32 {
    let other = p.iter().enumerate().filter(|&(j, _)| j != y).map(|(_, &v)| v).fold(0.0f32, f32::max);
    p[y].max(1e-30).ln() - other.max(1e-30).ln()
}

/// The fraction of the image a square covers at `round`: the paper's schedule (halving at rounds
/// 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of 10,000), stretched to `max_queries`.
fn square_fraction(p_init: f32, round: usize, max_queries: usize) -> f32 {
    let r = round * 10_000 / max_queries.max(1);
    let halvings = [10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000].iter().filter(|&&t| r > t).count();
    p_init / (1u32 << halvings) as f32
}

fn trace_line(queries: &[usize], fooled: &[bool], loss: &[f32], rows: &Rows) -> QueryStep {
    let n = queries.len().max(1) as f32;
    QueryStep {
        queries: queries.iter().sum::<usize>() as f32 / n,
        fooled: fooled.iter().filter(|&&f| f).count() as f32 / n,
        loss: loss.iter().sum::<f32>() / n,
        l2: rows.mean_l2(),
    }
}

/// How often adversarial digits crafted on one model fool another.
#[derive(Clone, Debug)]
pub struct TransferRates {
    /// The models' names, in order.
    pub names: Vec<String>,
    /// `rates[s][t]`: of the digits both source `s` and target `t` classify correctly, the fraction
    /// whose PGD adversarial made on `s` fools `t`. The diagonal is white-box success.
    pub rates: Vec<Vec<f32>>,
    pub eps: f32,
    pub digits: usize,
}

impl TransferRates {
    /// The rates as a table: one row per source, one column per target.
    pub fn table(&self) -> crate::plot::Table {
        let mut headers = vec!["crafted on \\ shown to".to_string()];
        headers.extend(self.names.iter().cloned());
        let refs: Vec<&str> = headers.iter().map(|s| s.as_str()).collect();
        let mut table = crate::plot::Table::new(&refs);
        for (name, row) in self.names.iter().zip(&self.rates) {
            let mut cells = vec![name.clone()];
            cells.extend(row.iter().map(|r| format!("{:.0}%", 100.0 * r)));
            table = table.row(cells);
        }
        table
    }
}

/// For every pair of `models`: craft untargeted L-inf PGD-40 adversarials (eps `eps`, from a
/// random start) on the source, and count how many fool the target. See [`TransferRates`].
pub fn transfer_rates(models: &[(&str, &Classifier)], set: &Dataset, eps: f32) -> Result<TransferRates> {
    check_eps(eps)?;
    if models.is_empty() || set.is_empty() {
        return Err(LabError::invalid(
            "models/set",
            format!("{} model(s), {} digit(s)", models.len(), set.len()),
            "at least one of each",
        ));
    }
    let labels = Objective::untargeted(&set.labels)?;
    let right = |m: &Classifier, images: &Tensor| -> Result<Vec<bool>> {
        Ok(m.predict(images)?.iter().zip(labels.classes()).map(|(p, &c)| p.class == c as usize).collect())
    };
    let clean: Vec<Vec<bool>> = models.iter().map(|(_, m)| right(m, &set.images)).collect::<Result<_>>()?;
    let mut progress = crate::notebook::Progress::new(
        format!("PGD-40 on {} digits with {} models", set.len(), models.len()),
        models.len(),
    );
    let mut rates = Vec::new();
    for (s, (_, source)) in models.iter().enumerate() {
        let adversarial = pgd(source, &set.images, &labels, &PgdConfig::linf(eps))?.adversarial;
        let mut row = Vec::new();
        for (t, (_, target)) in models.iter().enumerate() {
            let after = right(target, &adversarial)?;
            let both: Vec<usize> = (0..set.len()).filter(|&i| clean[s][i] && clean[t][i]).collect();
            let fooled = both.iter().filter(|&&i| !after[i]).count();
            row.push(fooled as f32 / both.len().max(1) as f32);
        }
        rates.push(row);
        progress.update(s + 1);
    }
    progress.finish();
    Ok(TransferRates { names: models.iter().map(|(n, _)| n.to_string()).collect(), rates, eps, digits: set.len() })
}
