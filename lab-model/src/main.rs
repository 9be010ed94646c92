//! `lab-model`: the part of `cargo lab` that needs the model, and so candle: `train`, `eval` and
//! `bench` (lab-support's side of it). The `lab` tool forwards those commands here, so that the
//! tool itself builds in seconds; run them as `cargo lab train`, `cargo lab eval`, `cargo lab bench`.

mod bench;
mod train;
mod yardstick;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Errors of the command-line tool are plain sentences.
pub type CliResult<T> = Result<T, String>;

#[derive(Parser)]
#[command(name = "cargo lab", bin_name = "cargo lab", about = "Retrain, judge and time the lab's digit models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Retrain a shipped digit model and update data/models/ and data/SHA256SUMS.
    Train {
        /// Epochs (default: 5 plain, 20 adversarial, 30 certified).
        #[arg(long)]
        epochs: Option<usize>,
        #[arg(long, default_value_t = lab_support::train::TrainConfig::default().seed)]
        seed: u64,
        /// Adversarial training (PGD on every batch): writes lab-cnn-robust.safetensors.
        #[arg(long)]
        adversarial: bool,
        /// Certified training (interval bound propagation): writes lab-cnn-certified.safetensors
        /// (--eps 0.3, the default) or lab-cnn-certified-0.1.safetensors (--eps 0.1).
        #[arg(long, conflicts_with = "adversarial")]
        certified: bool,
        /// Train on digits with Gaussian noise of this standard deviation (0.25 or 0.5): a base
        /// model for randomized smoothing, written to lab-cnn-noise-SIGMA.safetensors.
        #[arg(long, conflicts_with_all = ["adversarial", "certified"])]
        noise: Option<f32>,
        /// With --certified: the box trained at (default: the shipped recipe's).
        #[arg(long)]
        train_eps: Option<f32>,
        /// With --certified: the final weight of the clean loss.
        #[arg(long, default_value_t = lab_support::train::CertifiedTraining::shipped().kappa)]
        kappa: f32,
        /// With --certified: clean epochs before the box starts to grow.
        #[arg(long, default_value_t = lab_support::train::CertifiedTraining::shipped().warmup_epochs)]
        warmup_epochs: f32,
        /// Budget of adversarial training, or the budget certified training watches (L-inf).
        #[arg(long, default_value_t = lab_support::train::AdversarialTraining::shipped().eps)]
        eps: f32,
        /// PGD steps per batch in adversarial training (1: FGSM from a random start).
        #[arg(long, default_value_t = lab_support::train::AdversarialTraining::shipped().steps)]
        steps: usize,
        /// PGD step size as a fraction of eps.
        #[arg(long, default_value_t = lab_support::train::AdversarialTraining::shipped().step_ratio)]
        step_ratio: f32,
        /// Epochs over which eps grows from 0 (default: 2 adversarial, 10 certified).
        #[arg(long)]
        ramp_epochs: Option<f32>,
        /// Adam's first learning rate.
        #[arg(long, default_value_t = lab_support::train::TrainConfig::default().learning_rate)]
        learning_rate: f64,
        /// Train, report and save under target/train/ only: data/models/ stays as it is.
        #[arg(long)]
        trial: bool,
    },
    /// Judge a model under the lab's strongest evaluation, in AutoAttack's spirit: APGD with
    /// cross-entropy, APGD with the targeted DLR loss against the likeliest wrong classes, and Square
    /// Attack (a black box), each on the digits the earlier ones left standing; a digit counts as
    /// robust only if every attack fails. On the MNIST test digits, L-inf.
    Eval {
        /// `plain`, `robust`, `certified`, `certified-0.1`, or a path to a .safetensors file.
        #[arg(long, default_value = "robust")]
        model: String,
        /// Instead of attacking, prove: the share of digits interval bound propagation certifies
        /// at each budget (no attack within it can change their class). Seconds, not minutes.
        #[arg(long)]
        certify: bool,
        /// How many test digits (the first N).
        #[arg(long, default_value_t = 10_000)]
        images: usize,
        /// L-inf budgets, comma-separated.
        #[arg(long, default_value = "0.1,0.2,0.3", value_delimiter = ',')]
        eps: Vec<f32>,
        /// Steps per APGD run (or per PGD run with --pgd).
        #[arg(long, default_value_t = 100)]
        steps: usize,
        /// Random starts of APGD with cross-entropy (of each PGD loss with --pgd: at least 2).
        #[arg(long, default_value_t = 1)]
        restarts: usize,
        /// Target classes of APGD with the DLR loss (0: leave it out).
        #[arg(long, default_value_t = 9)]
        targets: usize,
        /// Queries per digit of Square Attack (0: leave it out).
        #[arg(long, default_value_t = 5000)]
        square: usize,
        /// The lab's evaluation before APGD instead: PGD with cross-entropy and with the margin loss,
        /// 2 random starts each. Weaker; kept for comparison.
        #[arg(long)]
        pgd: bool,
    },
    /// Time input-gradient, forward and training steps against PyTorch (`cargo lab bench` installs
    /// torch and passes its python).
    Bench {
        /// The python that has torch (the project venv's).
        #[arg(long)]
        python: PathBuf,
        /// Also time a PGD-40 robustness sweep over all 10,000 test digits (a few minutes).
        #[arg(long)]
        sweep: bool,
        /// Instead, compare the lab's strongest evaluation with a reference AutoAttack on the first
        /// 500 test digits.
        #[arg(long)]
        eval: bool,
        /// With --eval: the models to compare, `robust`, `plain` or both (the robust model first).
        #[arg(long, value_delimiter = ',', default_value = "robust,plain")]
        models: Vec<String>,
        /// With --eval: the L-inf budgets, comma-separated (each row prints as soon as it is done).
        #[arg(long, value_delimiter = ',', default_value = "0.3,0.2,0.1")]
        budgets: Vec<f32>,
    },
}

/// The repository root (lab-support's parent folder).
pub fn repo_root() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    root.canonicalize().unwrap_or(root)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Train {
            epochs,
            seed,
            adversarial,
            certified,
            noise,
            train_eps,
            kappa,
            warmup_epochs,
            eps,
            steps,
            step_ratio,
            ramp_epochs,
            learning_rate,
            trial,
        } => {
            use lab_support::train::{AdversarialTraining, CertifiedTraining};
            let mode = if certified {
                let shipped = CertifiedTraining::shipped();
                train::Mode::Certified(CertifiedTraining {
                    eps,
                    train_eps: train_eps.unwrap_or(shipped.train_eps),
                    kappa,
                    warmup_epochs,
                    ramp_epochs: ramp_epochs.unwrap_or(shipped.ramp_epochs),
                })
            } else if adversarial {
                let ramp_epochs = ramp_epochs.unwrap_or(AdversarialTraining::shipped().ramp_epochs);
                train::Mode::Adversarial(AdversarialTraining { eps, steps, step_ratio, ramp_epochs })
            } else if let Some(sigma) = noise {
                train::Mode::Noise(sigma)
            } else {
                train::Mode::Plain
            };
            train::run(epochs, seed, mode, learning_rate, trial)
        }
        Command::Eval { model, certify: true, images, eps, .. } => train::certify(&model, images, &eps),
        Command::Eval { model, images, eps, steps, restarts, targets, square, pgd, .. } => {
            train::eval(&model, images, &eps, &train::EvalSettings { steps, restarts, targets, square, pgd })
        }
        Command::Bench { python, eval: true, models, budgets, .. } => yardstick::compare(&python, &models, &budgets),
        Command::Bench { python, sweep, eval: false, .. } => bench::bench(&python, sweep),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
