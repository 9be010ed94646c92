//! `cargo lab`: set the lab up, open it, test it, retrain its model.
//!
//! - `cargo lab up` creates the project's Python venv with JupyterLab, installs the Rust kernel
//!   (evcxr_jupyter) into that venv only, warms evcxr's build cache and starts JupyterLab.
//! - `cargo lab test` runs the crate's tests and executes every notebook headless, failing on
//!   any error or panic text, since evcxr reports those as successful cells.
//! - `cargo lab student` writes the student notebooks from the solutions.
//! - `cargo lab train` regenerates `data/models/lab-cnn.safetensors`.
//! - `cargo lab bench` times the CNN's steps against PyTorch on the same weights.

mod bench;
mod browser;
mod kernel_bench;
mod kernel_test;
mod launcher;
mod notebooks;
mod server;
mod setup;
mod student;
mod train;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Errors of the command-line tool are plain sentences.
pub type CliResult<T> = Result<T, String>;

#[derive(Parser)]
#[command(name = "cargo lab", about = "Set up, open, test and retrain the adversarial-examples lab")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Set everything up (the first time) and start JupyterLab on notebooks/.
    Up {
        /// Do not open a browser (for a server or a test).
        #[arg(long)]
        no_browser: bool,
        /// Port for JupyterLab, on 127.0.0.1.
        #[arg(long, default_value_t = 8888)]
        port: u16,
        /// Set up only; do not start JupyterLab.
        #[arg(long)]
        setup_only: bool,
    },
    /// Run every test: lab-support's tests, then every notebook headless.
    Test {
        /// Only execute notebooks whose file name contains this text (skips the crate's tests;
        /// `browser` runs the browser test alone).
        #[arg(long)]
        notebook: Option<String>,
    },
    /// Write the student notebooks (notebooks/*.ipynb) from notebooks/solutions/.
    Student {
        /// Overwrite student notebooks even if their code was edited since they were generated.
        #[arg(long)]
        force: bool,
    },
    /// Time input-gradient, forward and training steps against PyTorch (installs torch into .venv/).
    Bench {
        /// Also time a PGD-40 robustness sweep over all 10,000 test digits (a few minutes).
        #[arg(long)]
        sweep: bool,
        /// Instead, time the notebook kernel: its first cells after a start, small cells, and two
        /// kernels started together (about 3 minutes).
        #[arg(long)]
        kernel: bool,
    },
    /// Start the notebook kernel (Jupyter runs this from the `rust` kernel spec; not for people).
    #[command(hide = true)]
    Kernel {
        /// evcxr_jupyter, the kernel itself.
        #[arg(long)]
        evcxr: PathBuf,
        /// Jupyter's connection file.
        connection_file: String,
    },
    /// Retrain a shipped digit model and update data/models/ and data/SHA256SUMS.
    Train {
        /// Epochs (default: 5 plain, 20 adversarial).
        #[arg(long)]
        epochs: Option<usize>,
        #[arg(long, default_value_t = lab_support::train::TrainConfig::default().seed)]
        seed: u64,
        /// Adversarial training (PGD on every batch): writes lab-cnn-robust.safetensors.
        #[arg(long)]
        adversarial: bool,
        /// Budget of adversarial training (L-inf).
        #[arg(long, default_value_t = lab_support::train::AdversarialTraining::shipped().eps)]
        eps: f32,
        /// PGD steps per batch in adversarial training (1: FGSM from a random start).
        #[arg(long, default_value_t = lab_support::train::AdversarialTraining::shipped().steps)]
        steps: usize,
        /// PGD step size as a fraction of eps.
        #[arg(long, default_value_t = lab_support::train::AdversarialTraining::shipped().step_ratio)]
        step_ratio: f32,
        /// Epochs over which eps grows from 0.
        #[arg(long, default_value_t = lab_support::train::AdversarialTraining::shipped().ramp_epochs)]
        ramp_epochs: f32,
        /// Adam's first learning rate.
        #[arg(long, default_value_t = lab_support::train::TrainConfig::default().learning_rate)]
        learning_rate: f64,
        /// Train, report and save under target/train/ only: data/models/ stays as it is.
        #[arg(long)]
        trial: bool,
    },
    /// Judge a shipped model under the lab's strongest attack (PGD-100, 2 restarts, cross-entropy and
    /// margin losses, worst case per digit) on the MNIST test digits.
    Eval {
        /// `plain`, `robust`, or a path to a .safetensors file.
        #[arg(long, default_value = "robust")]
        model: String,
        /// How many test digits (the first N).
        #[arg(long, default_value_t = 10_000)]
        images: usize,
        /// L-inf budgets, comma-separated.
        #[arg(long, default_value = "0.1,0.2,0.3", value_delimiter = ',')]
        eps: Vec<f32>,
        /// PGD steps per run.
        #[arg(long, default_value_t = 100)]
        steps: usize,
        /// Random starts per loss.
        #[arg(long, default_value_t = 2)]
        restarts: usize,
        /// Also run Square Attack, a black box, with this many queries per digit (0: not at all).
        /// If it leaves fewer digits standing than PGD, the gradient misled PGD.
        #[arg(long, default_value_t = 0)]
        square: usize,
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
        Command::Up { no_browser, port, setup_only } => setup::up(no_browser, port, setup_only),
        Command::Kernel { evcxr, connection_file } => launcher::launch(&evcxr, &connection_file),
        Command::Test { notebook } => notebooks::test(notebook.as_deref()),
        Command::Student { force } => student::run(force),
        Command::Train { epochs, seed, adversarial, eps, steps, step_ratio, ramp_epochs, learning_rate, trial } => {
            let adversarial = adversarial.then_some(lab_support::train::AdversarialTraining { eps, steps, step_ratio, ramp_epochs });
            train::run(epochs, seed, adversarial, learning_rate, trial)
        }
        Command::Eval { model, images, eps, steps, restarts, square } => train::eval(&model, images, &eps, steps, restarts, square),
        Command::Bench { sweep, kernel } => if kernel { kernel_bench::bench() } else { bench::bench(sweep) },
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

