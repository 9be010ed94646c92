//! `cargo lab course` and `cargo lab grade`: the lab's notebooks as an nbgrader course, graded by
//! the real nbgrader (from PyPI, in the project venv).
//!
//! The solutions carry nbgrader's cell metadata (schema 3): each exercise cell is a `solution`
//! cell, each check cell after it a locked `grade` cell worth one point. `cargo lab course` writes
//! them into an nbgrader course folder as its `source/` and runs `nbgrader generate_assignment`,
//! whose `release/` notebooks hold the same cells as `cargo lab student`'s: the region between
//! `// BEGIN SOLUTION` and `// END SOLUTION` becomes `todo!()` (`ClearSolutions.code_stub`).
//! `cargo lab grade` (`super::grade`) autogrades the submissions.
//!
//! nbgrader scores a grade cell by its first result, and reads a number there as the points: a
//! check that does not pass shows `0` as its plain text (see `lab_support::check::Verdict`).
//! nbgrader's own `Execute` cannot grade a cell that does not compile on evcxr; the lab's
//! (`lab/kernel-pool/lab_grading.py`) can, and the venv's own nbgrader configuration, which
//! `ensure_classroom` writes, puts it in nbgrader's pipeline for every course.
//!
//! Every notebook loads lab-support from `../lab-support`, relative to its own folder. nbgrader runs
//! a notebook in its own folder (`source/<assignment>/`, `autograded/<student>/<assignment>/`), so
//! the course gets a `lab-support` link beside each of those folders.

use crate::ipynb::{self, source_text};
use crate::paths::Paths;
use crate::sys::process::run;
use crate::sys::{At, CliResult};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const REQUIREMENTS: &str = "lab/requirements-classroom.txt";

/// The course's id in nbgrader's gradebook.
const COURSE_ID: &str = "adversarial-lab";

/// Written once into a course folder; an instructor's later edits are kept.
fn nbgrader_config() -> String {
    format!(
        r#"# nbgrader's configuration for the adversarial-examples lab, written by `cargo lab course`.
# Edit freely: `cargo lab course` never overwrites this file.
c = get_config()
c.CourseDirectory.course_id = "{COURSE_ID}"
# What a solution region becomes in the student notebooks (the same as `cargo lab student`).
c.ClearSolutions.code_stub = {{"rust": "{stub}"}}
c.ClearSolutions.begin_solution_delimeter = "BEGIN SOLUTION"
c.ClearSolutions.end_solution_delimeter = "END SOLUTION"
# Seconds a cell may run before nbgrader stops it and scores it 0 (the rest of the notebook is
# still graded); `cargo lab grade --timeout S` overrides it for one run. See CELL_TIMEOUT in
# lab/src/cmd/course.rs for what it was set from.
c.Execute.timeout = {CELL_TIMEOUT}
c.Execute.startup_timeout = 300
# nbgrader's autograde pipeline with the lab's Execute comes from the venv's own
# etc/jupyter/nbgrader_config.py (written by `cargo lab course` and `cargo lab grade`).
"#,
        stub = super::student::CODE_STUB
    )
}

/// The default limit on one cell's run while grading, in seconds. The slowest cell of the lab's
/// notebooks runs in under a minute on a set-up 2-core machine, and the first `:dep lab-support`
/// of a grading kernel in a few seconds; a kernel slot that must rebuild lab-support (after an
/// edit of its sources) takes minutes for that cell, so the limit leaves room for that.
pub const CELL_TIMEOUT: u64 = 300;

/// The venv's own nbgrader configuration (`.venv/etc/jupyter/nbgrader_config.py`), which every
/// nbgrader run in the venv loads before the course's own: the autograde pipeline with the lab's
/// `Execute` (lab/kernel-pool/lab_grading.py).
const VENV_NBGRADER_CONFIG: &str = r#"# The lab's grading for nbgrader, written by `cargo lab course` and `cargo lab grade`
# (lab/src/cmd/course.rs); rewritten each time. nbgrader's autograde pipeline with the lab's
# LabExecute (evcxr's error replies carry no `ename`, on which nbgrader's own Execute raises
# KeyError) and VerdictFirst (a check's verdict decides its grade cell): see lab_grading.py.
import lab_grading
c = get_config()
c.Autograde.autograde_preprocessors = lab_grading.autograde_preprocessors()
"#;

/// Installs JupyterHub and nbgrader into the project venv unless they are there.
pub fn ensure_classroom(paths: &Paths) -> CliResult<()> {
    super::setup::ensure_venv(paths, 1, 2)?;
    let requirements =
        std::fs::read_to_string(paths.root.join(REQUIREMENTS)).map_err(|e| format!("{REQUIREMENTS}: {e}"))?;
    let stamp = paths.venv.join(".lab-classroom");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(requirements.as_str()) {
        eprintln!("==> [2/2] JupyterHub and nbgrader in .venv/: ready");
        return write_venv_config(paths);
    }
    eprintln!("==> [2/2] Installing JupyterHub and nbgrader into .venv/ (about 20 s, once)");
    run(
        Command::new(paths.venv_bin("pip"))
            .args(["install", "--disable-pip-version-check", "-q", "-r"])
            .arg(paths.root.join(REQUIREMENTS)),
        "pip install jupyterhub nbgrader",
    )?;
    std::fs::write(&stamp, requirements).at(&stamp)?;
    write_venv_config(paths)
}

fn write_venv_config(paths: &Paths) -> CliResult<()> {
    let dir = paths.venv.join("etc/jupyter");
    std::fs::create_dir_all(&dir).at(&dir)?;
    let file = dir.join("nbgrader_config.py");
    if std::fs::read_to_string(&file).ok().as_deref() != Some(VENV_NBGRADER_CONFIG) {
        std::fs::write(&file, VENV_NBGRADER_CONFIG).at(&file)?;
    }
    Ok(())
}

/// The assignments: one per solution notebook, named after it (`03-adversarial`).
pub fn assignments(paths: &Paths) -> CliResult<Vec<(String, PathBuf)>> {
    Ok(super::student::pairs(&paths.root)?
        .into_iter()
        .map(|(solution, _)| (solution.file_stem().unwrap_or_default().to_string_lossy().into_owned(), solution))
        .collect())
}

/// Links `dir/lab-support` to the lab's crate (a notebook in `dir/<x>/` loads `../lab-support`).
pub fn link_lab_support(paths: &Paths, dir: &Path) -> CliResult<()> {
    std::fs::create_dir_all(dir).at(dir)?;
    let link = dir.join("lab-support");
    let target = paths.root.join("lab-support");
    if std::fs::read_link(&link).ok().as_deref() == Some(target.as_path()) {
        return Ok(());
    }
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&target, &link)
        .map_err(|e| format!("cannot link {} to {}: {e}", link.display(), target.display()))
}

/// Runs one nbgrader command in the course folder; its output goes to the terminal.
pub fn nbgrader(paths: &Paths, course: &Path, args: &[&str]) -> CliResult<()> {
    run(nbgrader_command(paths, course).args(args), &format!("nbgrader {}", args.join(" ")))
}

/// The venv's nbgrader, to run in the course folder with the lab's Jupyter environment.
pub fn nbgrader_command(paths: &Paths, course: &Path) -> Command {
    let mut cmd = Command::new(paths.venv_bin("nbgrader"));
    cmd.current_dir(course);
    paths.jupyter_env(&mut cmd);
    // A configuration file that fails to load is an error, not a warning nbgrader runs past.
    cmd.env("TRAITLETS_APPLICATION_RAISE_CONFIG_FILE_ERROR", "1");
    cmd
}

/// `cargo lab course`: writes (or refreshes) the course folder's `source/` from the solutions and
/// generates every assignment's student version into `release/`.
pub fn course(paths: &Paths, course: &Path) -> CliResult<()> {
    ensure_classroom(paths)?;
    std::fs::create_dir_all(course).at(course)?;
    let config = course.join("nbgrader_config.py");
    if !config.exists() {
        std::fs::write(&config, nbgrader_config()).at(&config)?;
    }
    for dir in ["source", "release"] {
        link_lab_support(paths, &course.join(dir))?;
    }
    for (name, solution) in assignments(paths)? {
        let nb: Value = serde_json::from_str(&std::fs::read_to_string(&solution).at(&solution)?).at(&solution)?;
        add_assignment(paths, course, &name, nb)?;
    }
    eprintln!(
        "Student versions are in {}/release/; grade submissions with `cargo lab grade <assignment>`.",
        course.display()
    );
    Ok(())
}

/// Writes `nb`, a solution notebook, as the course's source of assignment `name` and runs
/// `nbgrader generate_assignment` on it.
pub fn add_assignment(paths: &Paths, course: &Path, name: &str, mut nb: Value) -> CliResult<()> {
    let dir = course.join("source").join(name);
    std::fs::create_dir_all(&dir).at(&dir)?;
    // The source is the solution one folder up, as the student notebooks are.
    for cell in nb["cells"].as_array_mut().into_iter().flatten() {
        let src = source_text(cell);
        if src.contains("\"../../lab-support\"") {
            cell["source"] = Value::String(src.replace("\"../../lab-support\"", "\"../lab-support\""));
        }
    }
    ipynb::write(&dir.join(format!("{name}.ipynb")), &nb)?;
    eprintln!("==> nbgrader generate_assignment {name}");
    nbgrader(paths, course, &["generate_assignment", name, "--force", "--log-level=WARN"])
}
