//! `cargo lab`: set the lab up, open it, test it, retrain its model.
//!
//! - `cargo lab up` creates the project's Python venv with JupyterLab, installs the Rust kernel
//!   (evcxr_jupyter) into that venv only, warms evcxr's build cache and starts JupyterLab.
//! - `cargo lab test` runs the crate's tests and executes every notebook headless, failing on
//!   any error or panic text, since evcxr reports those as successful cells.
//! - `cargo lab student` writes the student notebooks from the solutions.
//! - `cargo lab train` regenerates `data/models/lab-cnn.safetensors`, `cargo lab eval` judges a
//!   model, and `cargo lab bench` times the CNN's steps against PyTorch on the same weights: these
//!   three need candle, and run the `lab-model` crate's binary (see `model`).
//!
//! This tool does not depend on lab-support, so that it builds in seconds on a fresh machine and
//! `cargo lab up` says what it is doing before anything heavy compiles.
//!
//! Its modules form layers; each uses only those listed before it (CONTRIBUTING.md,
//! "Architecture"): `sys` (processes, HTTP, /proc), `paths`, `ipynb` (notebook files), `jupyter`
//! (running notebooks and kernels), `cmd` (the commands), `selftest` (`cargo lab test`) and
//! `bench` (`cargo lab bench --kernel`). This file is the command line only.

mod bench;
mod cmd;
mod ipynb;
mod jupyter;
mod paths;
mod selftest;
mod sys;

use clap::{Parser, Subcommand};
use cmd::{course, grade, hub, launcher, model, setup, student};
use paths::{repo_root, Paths};
use std::path::PathBuf;
use std::process::ExitCode;
use sys::At;

#[derive(Parser)]
#[command(
    name = "cargo lab",
    bin_name = "cargo lab",
    about = "Set up, open, test and retrain the adversarial-examples lab"
)]
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
        /// Instead, compare the lab's strongest evaluation with a reference AutoAttack (torchattacks,
        /// installed with torch) on the first 500 test digits, both models, eps 0.3, 0.2, 0.1: same
        /// weights, same digits, accuracy and time side by side, a line per row as it is done (hours
        /// on 2 cores, nearly all of it the reference's; docs/models.md runs a single row).
        #[arg(long)]
        eval: bool,
        /// Instead, time the notebook kernel: its first cells after a start, small cells, and two
        /// kernels started together (about 3 minutes).
        #[arg(long)]
        kernel: bool,
    },
    /// Start a JupyterHub for a room on this machine: each student logs in with their name and a
    /// password they choose at their first login and gets their own copy of the notebooks, as a
    /// Unix user of their own when run as root (Ctrl-C stops it).
    Hub {
        /// The students' names, comma-separated.
        #[arg(long, value_delimiter = ',')]
        users: Vec<String>,
        /// A file with one student name per line (added to --users).
        #[arg(long)]
        users_file: Option<PathBuf>,
        /// The address to listen on; the default lets in this machine only.
        #[arg(long, default_value = "127.0.0.1")]
        ip: String,
        /// The port (the hub also uses the next two, on 127.0.0.1).
        #[arg(long, default_value_t = 8000)]
        port: u16,
        /// Stop a student's server after this many seconds without activity (0: never).
        #[arg(long, default_value_t = hub::CULL_AFTER_S)]
        cull_after: u64,
        /// Not as root, listen beyond 127.0.0.1 although every student's server runs as your Unix
        /// user (any student can read the others' work and the solutions).
        #[arg(long)]
        shared_unix_user: bool,
    },
    /// Make an nbgrader course of the lab (in course/): the solutions as its source, and
    /// `nbgrader generate_assignment` for each notebook (installs nbgrader into .venv/).
    Course {
        /// The course folder.
        #[arg(long, default_value = "course")]
        dir: PathBuf,
    },
    /// Autograde every submission of an assignment (course/submitted/<student>/<assignment>/) with
    /// `nbgrader autograde`: a line per student (score, and why each point was lost), and the
    /// same in <dir>/grades-<assignment>.csv.
    Grade {
        /// The assignment, such as 03-adversarial.
        assignment: String,
        /// The course folder.
        #[arg(long, default_value = "course")]
        dir: PathBuf,
        /// Submissions graded at once (default: as many as the cores and the free memory allow,
        /// about 1.7 GB each).
        #[arg(long)]
        jobs: Option<usize>,
        /// Seconds a cell may run before it is stopped and scores 0 (default: the course's
        /// nbgrader_config.py, which `cargo lab course` sets to 300).
        #[arg(long)]
        timeout: Option<u64>,
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
    /// Retrain a shipped digit model and update data/models/ and data/SHA256SUMS
    /// (`cargo lab train --help` for its options).
    #[command(disable_help_flag = true)]
    Train {
        /// Passed on to lab-model (the lab-model crate's binary).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Judge a model under the lab's strongest evaluation: APGD-CE, APGD-DLR and Square Attack,
    /// worst case per digit (`cargo lab eval --help` for its options).
    #[command(disable_help_flag = true)]
    Eval {
        /// Passed on to lab-model (the lab-model crate's binary).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// A path given on the command line, relative to the repository root (where `cargo lab` runs).
fn in_root(path: &std::path::Path) -> PathBuf {
    repo_root().join(path)
}

fn main() -> ExitCode {
    // `.lab/cargo/bin/cargo`, a link to this tool, is cargo for the kernel's rust-analyzer.
    if cmd::analyzer::started_as_cargo() {
        return cmd::analyzer::act_as_cargo();
    }
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Up { no_browser, port, setup_only } => setup::up(no_browser, port, setup_only),
        Command::Kernel { evcxr, connection_file } => launcher::launch(&evcxr, &connection_file),
        Command::Test { notebook } => selftest::test(notebook.as_deref()),
        Command::Student { force } => student::run(force),
        Command::Hub { mut users, users_file, ip, port, cull_after, shared_unix_user } => (|| {
            if let Some(file) = users_file {
                let text = std::fs::read_to_string(in_root(&file)).at(&file)?;
                users.extend(
                    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from),
                );
            }
            hub::serve(users, ip, port, cull_after, shared_unix_user)
        })(),
        Command::Course { dir } => course::course(&Paths::new(), &in_root(&dir)),
        Command::Grade { assignment, dir, jobs, timeout } => {
            let mut options = grade::GradeOptions::for_this_machine();
            options.jobs = jobs.unwrap_or(options.jobs);
            options.timeout = timeout;
            grade::grade(&Paths::new(), &in_root(&dir), &assignment, options).map(|_| ())
        }
        Command::Train { args } => model::forward("train", &args),
        Command::Eval { args } => model::forward("eval", &args),
        Command::Bench { sweep, eval, kernel } => {
            if kernel {
                bench::bench()
            } else {
                model::bench(sweep, eval)
            }
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
