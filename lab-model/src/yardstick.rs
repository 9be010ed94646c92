//! `cargo lab bench --eval`: the lab's strongest evaluation next to a reference AutoAttack, on the
//! same weights and the same digits.
//!
//! The reference is torchattacks' implementation of AutoAttack's attacks, run with the settings of
//! AutoAttack's standard version (`lab-model/bench/torch_ref.py`, `autoattack`), in the project venv
//! where the `lab` tool installs it with torch. For each model and budget both sides report the
//! digits left standing, what each attack broke and how long it took. The lab's figure is honest
//! when it is no higher than the reference's: a lower one means the lab's ensemble found more.

use crate::bench::Torch;
use crate::CliResult;
use candle_core::{DType, Tensor};
use lab_support::attack::Norm;
use lab_support::data::{data_dir, mnist};
use lab_support::evaluation::{evaluate, Evaluation};
use lab_support::model::{Classifier, ROBUST_WEIGHTS_FILE, WEIGHTS_FILE};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

/// Digits both sides attack: the first of the test set.
const DIGITS: usize = 500;
/// How far above the reference the lab's accuracy may be, in points, and still count as matching it.
const TOLERANCE_POINTS: f64 = 0.3;

/// Compares `models` (`robust`, `plain`) at each of `budgets`, one JSON line per pair as soon as
/// it is measured, then a table; an error if the lab's figure is more than TOLERANCE_POINTS above
/// the reference's anywhere.
pub fn compare(python: &Path, models: &[String], budgets: &[f32]) -> CliResult<()> {
    let mut files = Vec::new();
    for which in models {
        files.push(match which.as_str() {
            "plain" => ("plain", WEIGHTS_FILE),
            "robust" => ("robust", ROBUST_WEIGHTS_FILE),
            other => return Err(format!("--models: unknown model `{other}`; use robust, plain or robust,plain")),
        });
    }
    if let Some(eps) = budgets.iter().find(|e| !(**e > 0.0 && **e <= 1.0)) {
        return Err(format!("--budgets: {eps} is not an L-inf budget; use values in (0, 1], e.g. 0.3,0.2,0.1"));
    }
    let dir = crate::repo_root().join("target/bench");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let set = mnist::test().and_then(|s| s.take(DIGITS)).map_err(|e| e.to_string())?;
    let inputs = dir.join("eval-inputs.safetensors");
    let labels = set.labels.to_dtype(DType::I64).map_err(|e| e.to_string())?;
    let tensors: HashMap<String, Tensor> =
        [("images".to_string(), set.images.clone()), ("labels".to_string(), labels)].into();
    candle_core::safetensors::save(&tensors, &inputs).map_err(|e| format!("{}: {e}", inputs.display()))?;
    let mut torch = Torch::start(python)?;
    let mut rows = Vec::new();
    for (which, file) in files {
        let model = Classifier::load_from(&data_dir(), file).map_err(|e| e.to_string())?;
        for &eps in budgets {
            eprintln!("{which} model, eps {eps}: the lab's strongest evaluation, then the reference AutoAttack ...");
            let start = Instant::now();
            let ours = evaluate(&model, &set, Norm::Linf, &[eps], &Evaluation::strongest())
                .map_err(|e| e.to_string())?
                .remove(0);
            let lab_s = start.elapsed().as_secs_f64();
            let start = Instant::now();
            let theirs = torch.ask(
                json!({"cmd": "autoattack", "weights": data_dir().join(file), "inputs": inputs, "eps": eps, "seed": 0}),
            )?;
            let reference_s = start.elapsed().as_secs_f64();
            let reference = theirs["accuracy"].as_f64().ok_or("the reference answered no accuracy")?;
            let lab = ours.accuracy as f64;
            let broken: serde_json::Map<String, Value> =
                ours.broken_by.iter().map(|(name, count)| (name.clone(), json!(count))).collect();
            let row = json!({
                "model": which, "eps": eps, "digits": DIGITS,
                "lab_accuracy": lab, "reference_accuracy": reference,
                "points_above_reference": round2(100.0 * (lab - reference)),
                "lab_s": round2(lab_s), "reference_s": round2(reference_s),
                "lab_broken_by": broken, "reference_broken_by": theirs["broken_by"],
                "reference_seconds": theirs["seconds"], "torchattacks": theirs["torchattacks"],
            });
            println!("{row}");
            rows.push((which, eps, lab, reference, lab_s, reference_s));
        }
    }
    println!(
        "\n| model | eps | lab (strongest) | reference AutoAttack | lab time | reference time |\n| --- | --- | --- | --- | --- | --- |"
    );
    for &(which, eps, lab, reference, lab_s, reference_s) in &rows {
        println!(
            "| {which} | {eps} | {:.1}% | {:.1}% | {lab_s:.0} s | {reference_s:.0} s |",
            100.0 * lab,
            100.0 * reference
        );
    }
    let above: Vec<String> = rows
        .iter()
        .filter(|r| 100.0 * (r.2 - r.3) > TOLERANCE_POINTS)
        .map(|r| format!("{} at eps {} ({:.1} points above)", r.0, r.1, 100.0 * (r.2 - r.3)))
        .collect();
    if above.is_empty() {
        eprintln!("The lab's figure is within {TOLERANCE_POINTS} points of the reference, or below it, everywhere.");
        Ok(())
    } else {
        Err(format!("the lab's evaluation is weaker than the reference AutoAttack for {}", above.join(", ")))
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
