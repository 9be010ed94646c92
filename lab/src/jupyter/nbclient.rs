//! `jupyter execute` (nbclient) on code cells: a throwaway notebook under `.lab/<name>/`, run in
//! the lab's `rust` kernel and read back executed.

use super::outputs::check_outputs;
use crate::ipynb;
use crate::paths::Paths;
use crate::sys::{At, CliResult};
use serde_json::{json, Value};
use std::process::Command;
use std::time::Instant;

/// What one notebook run found.
pub struct Report {
    pub problems: Vec<String>,
    pub seconds: f64,
}

/// Runs the given code cells in a throwaway notebook under `.lab/` (used to warm the cache).
pub fn run_cells(paths: &Paths, cells: &[&str], env: &[(&str, &str)]) -> CliResult<Report> {
    let start = Instant::now();
    let (executed, ok) = execute_cells_with(paths, "scratch", cells, env)?;
    let mut problems = check_outputs(&executed, false);
    if !ok {
        problems.push("jupyter execute failed; see its output above".into());
    }
    Ok(Report { problems, seconds: start.elapsed().as_secs_f64() })
}

/// Executes code cells as the notebook `.lab/<name>/<name>.ipynb` and returns it executed, and
/// whether `jupyter execute` succeeded. `"../lab-support"` in a cell becomes lab-support's path.
pub fn execute_cells(paths: &Paths, name: &str, cells: &[&str]) -> CliResult<(Value, bool)> {
    execute_cells_with(paths, name, cells, &[])
}

/// [`execute_cells`], with more environment for the kernel.
pub fn execute_cells_with(paths: &Paths, name: &str, cells: &[&str], env: &[(&str, &str)]) -> CliResult<(Value, bool)> {
    let dir = paths.state.join(name);
    std::fs::create_dir_all(&dir).at(&dir)?;
    let lab_support = paths.root.join("lab-support");
    let cells: Vec<Value> = cells
        .iter()
        .enumerate()
        .map(|(i, src)| {
            let src = src.replace("\"../lab-support\"", &format!("{:?}", lab_support.display().to_string()));
            // nbformat 4.5 wants an id on every cell (nbformat warns on each run otherwise).
            json!({"cell_type": "code", "id": format!("cell-{i}"), "execution_count": null, "metadata": {}, "outputs": [], "source": src})
        })
        .collect();
    let nb = json!({"cells": cells, "metadata": ipynb::kernel_metadata(), "nbformat": 4, "nbformat_minor": 5});
    let path = dir.join(format!("{name}.ipynb"));
    ipynb::write(&path, &nb)?;
    let mut cmd = Command::new(paths.venv_bin("jupyter"));
    cmd.args([
        "execute",
        "--inplace",
        "--allow-errors",
        "--timeout=1800",
        "--startup_timeout=120",
        "--kernel_name=rust",
    ])
    .arg(&path)
    .current_dir(&dir);
    paths.jupyter_env(&mut cmd);
    cmd.envs(env.iter().copied());
    let status = cmd.status().map_err(|e| format!("could not run jupyter execute: {e}"))?;
    Ok((ipynb::read(&path)?, status.success()))
}
