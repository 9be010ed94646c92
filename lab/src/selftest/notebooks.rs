//! The notebooks of `cargo lab test`: every student and solution notebook, executed headless by
//! `jupyter execute` with its outputs under `target/notebook-runs/`, then checked.

use crate::ipynb;
use crate::jupyter::{check_outputs, Report};
use crate::paths::Paths;
use crate::sys::text::last_lines;
use crate::sys::{At, CliResult};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Every `.ipynb` in `dir` and its `solutions/` folder, sorted.
pub fn list_notebooks(dir: &Path) -> CliResult<Vec<PathBuf>> {
    let mut found = Vec::new();
    for d in [dir.to_path_buf(), dir.join("solutions")] {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "ipynb") {
                found.push(p);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Executes a notebook headless (its outputs go under target/notebook-runs/, the original is
/// not touched) and returns what went wrong.
pub fn run_notebook(paths: &Paths, notebook: &Path) -> CliResult<Report> {
    let out_dir = paths.root.join("target/notebook-runs");
    std::fs::create_dir_all(&out_dir).at(&out_dir)?;
    let stem = notebook.file_stem().unwrap_or_default().to_string_lossy().into_owned();
    let rel = notebook.strip_prefix(paths.root.join("notebooks")).unwrap_or(notebook);
    let tag = rel.with_extension("").to_string_lossy().replace('/', "__");
    let out_file = out_dir.join(format!("{tag}.ipynb"));
    let _ = std::fs::remove_file(&out_file);
    // nbclient writes its output relative to the notebook's folder; the kernel runs there too, so
    // the notebook's own relative `:dep` path works.
    let parent = notebook.parent().unwrap_or(Path::new("."));
    let depth = parent.strip_prefix(&paths.root).map(|p| p.components().count()).unwrap_or(1);
    let output_base = format!("{}target/notebook-runs/{tag}", "../".repeat(depth));
    let start = Instant::now();
    let mut cmd = Command::new(paths.venv_bin("jupyter"));
    cmd.args(["execute", "--allow-errors", "--timeout=1200", "--startup_timeout=120", "--kernel_name=rust"])
        .arg(format!("--output={output_base}"))
        .arg(notebook)
        .current_dir(parent);
    paths.jupyter_env(&mut cmd);
    let out = cmd.output().map_err(|e| format!("could not run jupyter execute: {e}"))?;
    let seconds = start.elapsed().as_secs_f64();
    if !out_file.exists() {
        return Ok(Report {
            problems: vec![format!(
                "{stem}: jupyter execute wrote no output ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )],
            seconds,
        });
    }
    let executed = ipynb::read(&out_file)?;
    let student = notebook.parent() == Some(&paths.root.join("notebooks"))
        && paths.root.join("notebooks/solutions").join(notebook.file_name().unwrap_or_default()).exists();
    let mut problems = check_outputs(&executed, student);
    if !out.status.success() {
        problems.push(format!(
            "jupyter execute exited with {}: {}",
            out.status,
            last_lines(&String::from_utf8_lossy(&out.stderr), 5)
        ));
    }
    Ok(Report { problems, seconds })
}
