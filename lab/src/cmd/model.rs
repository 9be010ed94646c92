//! `cargo lab train`, `eval` and `bench`: the commands that need the model, and so candle. They live
//! in the `lab-model` crate; this module builds and runs it, so that the `lab` tool
//! itself never compiles candle.

use super::setup::ensure_venv;
use crate::paths::Paths;
use crate::sys::process::run;
use crate::sys::CliResult;
use std::process::{Command, Stdio};

const REQUIREMENTS: &str = "lab-model/bench/requirements-bench.txt";

/// `cargo run --release` of lab-model with `args`: its output goes straight to the terminal.
pub fn forward(command: &str, args: &[String]) -> CliResult<()> {
    let paths = Paths::new();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(
        Command::new(cargo)
            .args(["run", "--release", "--quiet", "-p", "lab-model", "--bin", "lab-model", "--", command])
            .args(args)
            .current_dir(&paths.root),
        &format!("cargo lab {command}"),
    )
}

/// `cargo lab bench`: torch into the venv (once), then lab-model's bench with the venv's python.
pub fn bench(sweep: bool, eval: bool) -> CliResult<()> {
    let paths = Paths::new();
    ensure_torch(&paths)?;
    let mut args = vec!["--python".to_string(), paths.venv_bin("python").display().to_string()];
    if sweep {
        args.push("--sweep".into());
    }
    if eval {
        args.push("--eval".into());
    }
    forward("bench", &args)
}

/// Installs torch into the project venv unless it is there.
fn ensure_torch(paths: &Paths) -> CliResult<()> {
    ensure_venv(paths, 1, 2)?;
    let have = Command::new(paths.venv_bin("python"))
        .args(["-c", "import torch, safetensors, scipy, torchattacks"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if have {
        eprintln!("==> [2/2] PyTorch in .venv/: ready");
        return Ok(());
    }
    eprintln!(
        "==> [2/2] Installing PyTorch into .venv/ for the bench only (a few GB with its CUDA libraries, 1-3 min, once)"
    );
    run(
        Command::new(paths.venv_bin("pip"))
            .args(["install", "--disable-pip-version-check", "-q", "-r"])
            .arg(paths.root.join(REQUIREMENTS)),
        "pip install torch",
    )?;
    // The reference AutoAttack of `--eval`, without the dependencies it pins (see the requirements).
    run(
        Command::new(paths.venv_bin("pip")).args([
            "install",
            "--disable-pip-version-check",
            "-q",
            "--no-deps",
            TORCHATTACKS,
        ]),
        "pip install torchattacks",
    )
}

/// The reference implementation `cargo lab bench --eval` compares with.
const TORCHATTACKS: &str = "torchattacks==3.5.1";
