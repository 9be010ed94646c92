//! `cargo lab train` and `cargo lab eval`: retrain a shipped model, and judge one under the lab's
//! strongest evaluation.
//!
//! Each model has its own section of `data/models/README.md`, between `<!-- model: FILE -->` and
//! `<!-- end -->`; retraining one rewrites its section only.

use crate::CliResult;
use lab_support::attack::Norm;
use lab_support::data::{data_dir, mnist, sha256_hex};
use lab_support::evaluation::{evaluate, Attack, Evaluation};
use lab_support::model::{Classifier, CERTIFIED_WEIGHTS_FILES, NOISE_WEIGHTS_FILES, ROBUST_WEIGHTS_FILE, WEIGHTS_FILE};
use lab_support::train::{train, AdversarialTraining, CertifiedTraining, TrainConfig, TrainReport};
use serde_json::json;
use std::path::Path;
use std::time::Instant;

/// Which of the shipped models to train.
pub enum Mode {
    Plain,
    Adversarial(AdversarialTraining),
    Certified(CertifiedTraining),
    /// Plain training on noisy digits, the noise's standard deviation.
    Noise(f32),
}

pub fn run(epochs: Option<usize>, seed: u64, mode: Mode, learning_rate: f64, trial: bool) -> CliResult<()> {
    let noise = match mode {
        Mode::Noise(sigma) => Some(sigma),
        _ => None,
    };
    let (file, default_epochs, adversarial, certified) = match mode {
        Mode::Plain => (WEIGHTS_FILE, TrainConfig::default().epochs, None, None),
        Mode::Adversarial(a) => (ROBUST_WEIGHTS_FILE, 20, Some(a), None),
        Mode::Certified(c) => match CERTIFIED_WEIGHTS_FILES.iter().find(|(e, _)| *e == c.eps) {
            Some((_, file)) => (*file, 30, None, Some(c)),
            None if trial => ("models/lab-cnn-certified-trial.safetensors", 30, None, Some(c)),
            None => {
                return Err(format!(
                    "--certified --eps {}: the lab ships certified models for 0.3 and 0.1; train for another budget with --trial",
                    c.eps
                ))
            }
        },
        Mode::Noise(sigma) => match NOISE_WEIGHTS_FILES.iter().find(|(s, _)| *s == sigma) {
            Some((_, file)) => (*file, TrainConfig::default().epochs, None, None),
            None => return Err(format!("--noise {sigma}: the lab ships base models for 0.25 and 0.5 only")),
        },
    };
    let epochs = epochs.unwrap_or(default_epochs);
    let dir = data_dir();
    let out = if trial {
        crate::repo_root().join("target/train").join(Path::new(file).file_name().unwrap_or_default())
    } else {
        dir.join(file)
    };
    let parent = out.parent().ok_or("no folder for the weights")?;
    std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let checkpoint = crate::repo_root().join("target/train/checkpoint.safetensors");
    std::fs::create_dir_all(checkpoint.parent().unwrap_or(parent)).map_err(|e| e.to_string())?;
    let config = TrainConfig {
        epochs,
        seed,
        learning_rate,
        adversarial,
        certified,
        noise,
        checkpoint: Some(checkpoint.clone()),
        ..TrainConfig::default()
    };
    eprintln!("Training the lab CNN on MNIST: {config:?}");
    eprintln!("(the weights after each epoch go to {})", checkpoint.display());
    let (model, report) = train(&config, true).map_err(|e| e.to_string())?;
    model.save(&out).map_err(|e| e.to_string())?;
    if let Some(why) = &report.stopped_early {
        eprintln!("stopped early: {why}");
    }
    for v in &report.history {
        let watched = if config.certified.is_some() { "heldout_certified" } else { "heldout_pgd10" };
        println!(
            "{}",
            json!({"step": v.step, "seconds": v.seconds.round(), "eps": v.eps, "heldout_clean": v.clean, watched: v.robust})
        );
    }
    println!(
        "test accuracy {:.4}, {} steps in {:.0} s; wrote {}",
        report.test_accuracy,
        report.steps,
        report.seconds,
        out.display()
    );
    if trial {
        println!("(a trial: data/models/ is unchanged; judge it with `cargo lab eval --model {}`)", out.display());
        return Ok(());
    }
    let bytes = std::fs::read(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let hash = sha256_hex(&bytes);
    let sums_path = dir.join("SHA256SUMS");
    let sums = std::fs::read_to_string(&sums_path).unwrap_or_default();
    let mut lines: Vec<String> = sums.lines().filter(|l| !l.ends_with(file)).map(String::from).collect();
    lines.push(format!("{hash}  {file}"));
    std::fs::write(&sums_path, lines.join("\n") + "\n").map_err(|e| format!("{}: {e}", sums_path.display()))?;
    let readme_path = dir.join("models/README.md");
    let readme = std::fs::read_to_string(&readme_path).unwrap_or_else(|_| "# The shipped digit models\n".into());
    std::fs::write(&readme_path, with_section(&readme, file, &section(file, &config, &report, &hash)))
        .map_err(|e| format!("{}: {e}", readme_path.display()))?;
    println!("updated data/SHA256SUMS and data/models/README.md; judge the model with `cargo lab eval`");
    Ok(())
}

/// The README section of one model.
fn section(file: &str, config: &TrainConfig, report: &TrainReport, hash: &str) -> String {
    let name = Path::new(file).file_name().and_then(|n| n.to_str()).unwrap_or(file);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let (command, data, how) = match (&config.adversarial, &config.certified) {
        (_, Some(c)) => (
            format!(
                "`cargo lab train --certified --epochs {} --seed {} --eps {} --train-eps {} --kappa {} --warmup-epochs {} --ramp-epochs {} --learning-rate {}`",
                config.epochs, config.seed, c.eps, c.train_eps, c.kappa, c.warmup_epochs, c.ramp_epochs, config.learning_rate
            ),
            "MNIST, the first 59,000 training images (the last 1,000 are held out to watch certified accuracy), no augmentation".to_string(),
            format!(
                "certified training, interval bound propagation (Gowal et al. 2018): loss = kappa x cross-entropy of the clean logits + (1 - kappa) x cross-entropy of the worst-case margins IBP proves over the L-inf box of radius eps_train; {} clean epoch(s), then over {} epoch(s) eps_train grows linearly from 0 to {} and kappa falls from 1 to {}",
                c.warmup_epochs, c.ramp_epochs, c.train_eps, c.kappa
            ),
        ),
        (None, None) => match config.noise {
            Some(sigma) => (
                format!("`cargo lab train --noise {sigma} --epochs {} --seed {}`", config.epochs, config.seed),
                format!("MNIST, 60,000 training images, each batch with Gaussian noise of standard deviation {sigma} added (not clamped)"),
                "plain training on noisy digits: cross-entropy on the noisy batch, the base model of randomized smoothing".to_string(),
            ),
            None => (
                format!("`cargo lab train --epochs {} --seed {}`", config.epochs, config.seed),
                "MNIST, 60,000 training images, no augmentation".to_string(),
                "plain training: cross-entropy on the clean batch".to_string(),
            ),
        },
        (Some(a), None) => (
            format!(
                "`cargo lab train --adversarial --epochs {} --seed {} --eps {} --steps {} --step-ratio {} --ramp-epochs {} --learning-rate {}`",
                config.epochs, config.seed, a.eps, a.steps, a.step_ratio, a.ramp_epochs, config.learning_rate
            ),
            "MNIST, the first 59,000 training images (the last 1,000 are held out to watch robust accuracy), no augmentation".to_string(),
            format!(
                "adversarial training: every batch attacked first by L-inf PGD-{} (random start, step {} x eps, cross-entropy) against the current weights; eps grows linearly from 0 to {} over the first {} epoch(s); the weight step is taken on the attacked batch only",
                a.steps, a.step_ratio, a.eps, a.ramp_epochs
            ),
        ),
    };
    let mut text = format!(
        "## `{name}`\n\n\
         | what | value |\n| --- | --- |\n\
         | network | conv3x3 1->32, relu, maxpool2, conv3x3 32->64, relu, maxpool2, fc 1600->128, relu, fc 128->10 (PyTorch parameter names) |\n\
         | command | {command} |\n\
         | data | {data} |\n\
         | training | {how} |\n\
         | optimiser | Adam (no weight decay), batch {batch}, learning rate {lr} decaying linearly to a tenth |\n\
         | steps | {steps} |\n\
         | clean test accuracy | {acc:.4} on the 10,000 MNIST test images |\n\
         | training time | {secs:.0} s on a {cores}-core CPU |\n\
         | SHA-256 | `{hash}` |\n",
        batch = config.batch_size,
        lr = config.learning_rate,
        steps = report.steps,
        acc = report.test_accuracy,
        secs = report.seconds,
    );
    if let Some(why) = &report.stopped_early {
        text += &format!("\nTraining stopped early: {why}.\n");
    }
    if !report.history.is_empty() {
        let (watched, column, footer) = match &config.certified {
            Some(c) => (
                format!("certified by IBP at eps {}", c.eps),
                "certified",
                {
                    let name = if c.eps == CertifiedTraining::shipped().eps { "certified".to_string() } else { format!("certified-{}", c.eps) };
                    format!("Certified and empirical robustness: `cargo lab eval --certify --model {name}` and `cargo lab eval --model {name}`.")
                },
            ),
            None => (
                "under PGD-10 at the full budget".to_string(),
                "PGD-10",
                "Its robustness under the lab's strongest evaluation: `cargo lab eval --model robust` (see [docs/models.md](../../docs/models.md#measured-robustness-cargo-lab-eval)).".to_string(),
            ),
        };
        text += &format!("\nHeld-out digits during training (clean, and {watched}):\n\n| step | seconds | eps trained at | clean | {column} |\n| --- | --- | --- | --- | --- |\n");
        for v in &report.history {
            text += &format!(
                "| {} | {:.0} | {:.3} | {:.3} | {:.3} |\n",
                v.step,
                v.seconds,
                v.eps,
                v.clean,
                v.robust.unwrap_or(f32::NAN)
            );
        }
        text += &format!("\n{footer}\n");
    }
    text
}

/// `readme` with the section of `file` replaced by `body` (or added at the end).
fn with_section(readme: &str, file: &str, body: &str) -> String {
    let open = format!("<!-- model: {file} -->");
    let close = "<!-- end -->";
    let block = format!("{open}\n{body}{close}");
    match readme.find(&open) {
        Some(start) => match readme[start..].find(close) {
            Some(len) => format!("{}{block}{}", &readme[..start], &readme[start + len + close.len()..]),
            None => format!("{}{block}\n", &readme[..start]),
        },
        None => format!("{}\n{block}\n", readme.trim_end()),
    }
}

/// What `cargo lab eval` runs: the strongest evaluation's attacks with the given settings, or
/// the PGD evaluation the lab used before APGD.
pub struct EvalSettings {
    pub steps: usize,
    pub restarts: usize,
    pub targets: usize,
    pub square: usize,
    pub pgd: bool,
}

impl EvalSettings {
    fn evaluation(&self) -> Evaluation {
        if self.pgd {
            return Evaluation::pgd(self.steps, self.restarts.max(2));
        }
        let mut attacks = vec![Attack::ApgdCe { steps: self.steps, restarts: self.restarts }];
        if self.targets > 0 {
            attacks.push(Attack::ApgdDlr { steps: self.steps, targets: self.targets });
        }
        if self.square > 0 {
            attacks.push(Attack::Square { queries: self.square });
        }
        Evaluation { attacks }
    }
}

/// A shipped model by name, or weights from a file.
fn load_model(which: &str) -> CliResult<Classifier> {
    match which {
        "plain" => Classifier::pretrained(),
        "robust" => Classifier::robust(),
        "certified" => Classifier::certified(),
        "certified-0.1" => Classifier::certified_for(0.1),
        path => {
            let tensors = candle_core::safetensors::load(path, &candle_core::Device::Cpu).map_err(|e| {
                format!(
                    "--model {path}: {e} (give `plain`, `robust`, `certified`, `certified-0.1` or a .safetensors file)"
                )
            })?;
            Classifier::from_tensors(tensors)
        }
    }
    .map_err(|e| e.to_string())
}

/// `cargo lab eval --certify`: certified accuracy per budget, by interval bound propagation.
pub fn certify(which: &str, images: usize, eps: &[f32]) -> CliResult<()> {
    let model = load_model(which)?;
    let test = mnist::test().and_then(|t| t.take(images.clamp(1, 10_000))).map_err(|e| e.to_string())?;
    eprintln!("{which}: certified by interval bound propagation on the first {} test digits", test.len());
    println!(
        "{}",
        json!({"model": which, "images": test.len(), "eps": 0.0, "accuracy": test_accuracy(&model, &test)?})
    );
    for &e in eps {
        let start = Instant::now();
        let proved = lab_support::certify::certified_accuracy(&model, &test, e).map_err(|e| e.to_string())?;
        let seconds = start.elapsed().as_secs_f64();
        println!(
            "{}",
            json!({"model": which, "images": test.len(), "eps": e, "certified": proved, "seconds": (seconds * 100.0).round() / 100.0})
        );
        eprintln!("eps {e}: {:.2}% certified, {:.2} s", 100.0 * proved, seconds);
    }
    Ok(())
}

pub fn eval(which: &str, images: usize, eps: &[f32], settings: &EvalSettings) -> CliResult<()> {
    let model = load_model(which)?;
    let test = mnist::test().and_then(|t| t.take(images.clamp(1, 10_000))).map_err(|e| e.to_string())?;
    let evaluation = settings.evaluation();
    let names: Vec<String> = evaluation.attacks.iter().map(Attack::name).collect();
    eprintln!("{which}: worst case of {} on the first {} test digits", names.join(", "), test.len());
    println!(
        "{}",
        json!({"model": which, "images": test.len(), "eps": 0.0, "accuracy": test_accuracy(&model, &test)?})
    );
    for &e in eps.iter().filter(|&&e| e > 0.0) {
        let start = Instant::now();
        let point = evaluate(&model, &test, Norm::Linf, &[e], &evaluation).map_err(|e| e.to_string())?.remove(0);
        let seconds = start.elapsed().as_secs_f64();
        let broken: serde_json::Map<String, serde_json::Value> =
            point.broken_by.iter().map(|(name, count)| (name.clone(), json!(count))).collect();
        println!(
            "{}",
            json!({"model": which, "images": test.len(), "eps": e, "accuracy": point.accuracy,
                   "misread_clean": point.clean_errors, "broken_by": broken, "seconds": (seconds * 10.0).round() / 10.0})
        );
        eprintln!("eps {e}: {:.2}% robust, {:.0} s", 100.0 * point.accuracy, seconds);
    }
    Ok(())
}

fn test_accuracy(model: &Classifier, test: &lab_support::data::Dataset) -> CliResult<f32> {
    model.accuracy(test).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::with_section;

    #[test]
    fn a_models_section_is_replaced_and_the_others_kept() {
        let readme = "# Models\n\n<!-- model: a -->\nold a\n<!-- end -->\n\n<!-- model: b -->\nb\n<!-- end -->\n";
        let new = with_section(readme, "a", "new a\n");
        assert_eq!(new, "# Models\n\n<!-- model: a -->\nnew a\n<!-- end -->\n\n<!-- model: b -->\nb\n<!-- end -->\n");
        let added = with_section(&new, "c", "c\n");
        assert!(
            added.ends_with("<!-- model: c -->\nc\n<!-- end -->\n")
                && added.contains("new a")
                && added.contains("\nb\n")
        );
    }
}
