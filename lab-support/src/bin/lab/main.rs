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
mod kernel_test;
mod notebooks;
mod server;
mod setup;
mod student;

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
    },
    /// Retrain the shipped digit model and update data/models/ and data/SHA256SUMS.
    Train {
        #[arg(long, default_value_t = lab_support::train::TrainConfig::default().epochs)]
        epochs: usize,
        #[arg(long, default_value_t = lab_support::train::TrainConfig::default().seed)]
        seed: u64,
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
        Command::Test { notebook } => notebooks::test(notebook.as_deref()),
        Command::Student { force } => student::run(force),
        Command::Train { epochs, seed } => train(epochs, seed),
        Command::Bench { sweep } => bench::bench(sweep),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn train(epochs: usize, seed: u64) -> CliResult<()> {
    use lab_support::data::{data_dir, sha256_hex};
    use lab_support::model::WEIGHTS_FILE;
    use lab_support::train::{train, TrainConfig};
    let config = TrainConfig { epochs, seed, ..TrainConfig::default() };
    eprintln!("Training the lab CNN on MNIST: {config:?}");
    let (model, report) = train(&config, true).map_err(|e| e.to_string())?;
    let dir = data_dir();
    let path = dir.join(WEIGHTS_FILE);
    model.save(&path).map_err(|e| e.to_string())?;
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let hash = sha256_hex(&bytes);
    let sums_path = dir.join("SHA256SUMS");
    let sums = std::fs::read_to_string(&sums_path).unwrap_or_default();
    let mut lines: Vec<String> = sums.lines().filter(|l| !l.ends_with(WEIGHTS_FILE)).map(String::from).collect();
    lines.push(format!("{hash}  {WEIGHTS_FILE}"));
    std::fs::write(&sums_path, lines.join("\n") + "\n").map_err(|e| format!("{}: {e}", sums_path.display()))?;
    let readme = format!(
        "# The shipped digit model\n\n\
         `lab-cnn.safetensors` holds the weights of lab-support's `Classifier` (conv3x3 1->32, relu, \
         maxpool2, conv3x3 32->64, relu, maxpool2, fc 1600->128, relu, fc 128->10), in PyTorch's \
         parameter names.\n\n\
         | what | value |\n| --- | --- |\n\
         | command | `cargo lab train --epochs {epochs} --seed {seed}` |\n\
         | data | MNIST, 60,000 training images, no augmentation |\n\
         | optimiser | Adam (no weight decay), batch {batch}, learning rate {lr} decaying linearly to a tenth |\n\
         | steps | {steps} |\n\
         | test accuracy | {acc:.4} on the 10,000 MNIST test images |\n\
         | training time | {secs:.0} s on a {cores}-core CPU |\n\
         | SHA-256 | `{hash}` |\n\n\
         The same seed gives the same weights: initial weights and shuffling come from the crate's own \
         seeded generator, because candle's CPU generator cannot be seeded.\n",
        batch = config.batch_size,
        lr = config.learning_rate,
        steps = report.steps,
        acc = report.test_accuracy,
        secs = report.seconds,
        cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    );
    let readme_path = dir.join("models/README.md");
    std::fs::write(&readme_path, readme).map_err(|e| format!("{}: {e}", readme_path.display()))?;
    println!(
        "test accuracy {:.4}, {} steps in {:.0} s; wrote {} and updated SHA256SUMS",
        report.test_accuracy,
        report.steps,
        report.seconds,
        path.display()
    );
    Ok(())
}
