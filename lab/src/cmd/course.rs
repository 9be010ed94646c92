//! `cargo lab course` and `cargo lab grade`: the lab's notebooks as an nbgrader course, graded by
//! the real nbgrader (from PyPI, in the project venv).
//!
//! The solutions carry nbgrader's cell metadata (schema 3): each exercise cell is a `solution`
//! cell, each check cell after it a locked `grade` cell worth one point. `cargo lab course` writes
//! them into an nbgrader course folder as its `source/` and runs `nbgrader generate_assignment`,
//! whose `release/` notebooks hold the same cells as `cargo lab student`'s: the region between
//! `// BEGIN SOLUTION` and `// END SOLUTION` becomes `todo!()` (`ClearSolutions.code_stub`).
//! `cargo lab grade` runs `nbgrader autograde` and prints the scores.
//!
//! nbgrader scores a grade cell 0 when it shows an error or writes to stderr, so a check that does
//! not pass says so on stderr (see `lab_support::check::Verdict`).
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
# A kernel's first `:dep lab-support` cell takes about 6 s on a set-up machine, but minutes if
# lab-support changed since `cargo lab up`; nbgrader's default of 30 s per cell is too short.
c.Execute.timeout = 1200
c.Execute.startup_timeout = 300
"#,
        stub = super::student::CODE_STUB
    )
}

/// Installs JupyterHub and nbgrader into the project venv unless they are there.
pub fn ensure_classroom(paths: &Paths) -> CliResult<()> {
    super::setup::ensure_venv(paths, 1, 2)?;
    let requirements =
        std::fs::read_to_string(paths.root.join(REQUIREMENTS)).map_err(|e| format!("{REQUIREMENTS}: {e}"))?;
    let stamp = paths.venv.join(".lab-classroom");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(requirements.as_str()) {
        eprintln!("==> [2/2] JupyterHub and nbgrader in .venv/: ready");
        return Ok(());
    }
    eprintln!("==> [2/2] Installing JupyterHub and nbgrader into .venv/ (about 20 s, once)");
    run(
        Command::new(paths.venv_bin("pip"))
            .args(["install", "--disable-pip-version-check", "-q", "-r"])
            .arg(paths.root.join(REQUIREMENTS)),
        "pip install jupyterhub nbgrader",
    )?;
    std::fs::write(&stamp, requirements).at(&stamp)
}

/// The assignments: one per solution notebook, named after it (`03-adversarial`).
pub fn assignments(paths: &Paths) -> CliResult<Vec<(String, PathBuf)>> {
    Ok(super::student::pairs(&paths.root)?
        .into_iter()
        .map(|(solution, _)| (solution.file_stem().unwrap_or_default().to_string_lossy().into_owned(), solution))
        .collect())
}

/// Links `dir/lab-support` to the lab's crate (a notebook in `dir/<x>/` loads `../lab-support`).
fn link_lab_support(paths: &Paths, dir: &Path) -> CliResult<()> {
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
fn nbgrader(paths: &Paths, course: &Path, args: &[&str]) -> CliResult<()> {
    let mut cmd = Command::new(paths.venv_bin("nbgrader"));
    cmd.args(args).current_dir(course);
    paths.jupyter_env(&mut cmd);
    run(&mut cmd, &format!("nbgrader {}", args.join(" ")))
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
        let dir = course.join("source").join(&name);
        std::fs::create_dir_all(&dir).at(&dir)?;
        let mut nb: Value = serde_json::from_str(&std::fs::read_to_string(&solution).at(&solution)?).at(&solution)?;
        // The source is the solution one folder up, as the student notebooks are.
        for cell in nb["cells"].as_array_mut().into_iter().flatten() {
            let src = source_text(cell);
            if src.contains("\"../../lab-support\"") {
                cell["source"] = Value::String(src.replace("\"../../lab-support\"", "\"../lab-support\""));
            }
        }
        let file = dir.join(format!("{name}.ipynb"));
        ipynb::write(&file, &nb)?;
        eprintln!("==> nbgrader generate_assignment {name}");
        nbgrader(paths, course, &["generate_assignment", &name, "--force", "--log-level=WARN"])?;
    }
    eprintln!(
        "Student versions are in {}/release/; grade submissions with `cargo lab grade <assignment>`.",
        course.display()
    );
    Ok(())
}

/// One student's score for one assignment, from nbgrader's gradebook.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    pub student: String,
    pub score: f64,
    pub max_score: f64,
}

/// `cargo lab grade <assignment>`: autogrades every submission in `submitted/*/<assignment>/`
/// with `nbgrader autograde` and returns each student's score.
pub fn grade(paths: &Paths, course: &Path, assignment: &str) -> CliResult<Vec<Score>> {
    ensure_classroom(paths)?;
    if !course.join("nbgrader_config.py").exists() {
        return Err(format!("{} is not a course folder yet: run `cargo lab course` first", course.display()));
    }
    let submitted = course.join("submitted");
    let mut students: Vec<String> = std::fs::read_dir(&submitted)
        .map_err(|e| {
            format!("{}: {e} (put each student's notebook in submitted/<student>/{assignment}/)", submitted.display())
        })?
        .flatten()
        .filter(|e| e.path().join(assignment).is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    students.sort();
    if students.is_empty() {
        return Err(format!("no submissions of {assignment} in {}/<student>/{assignment}/", submitted.display()));
    }
    for s in &students {
        link_lab_support(paths, &course.join("autograded").join(s))?;
    }
    eprintln!("==> nbgrader autograde {assignment} ({} submissions)", students.len());
    nbgrader(paths, course, &["autograde", assignment, "--force", "--log-level=ERROR"])?;
    let csv = course.join("grades.csv");
    nbgrader(paths, course, &["export", "--log-level=WARN", &format!("--to={}", csv.display())])?;
    let text = std::fs::read_to_string(&csv).at(&csv)?;
    let scores = parse_grades(&text, assignment)?;
    println!("| student | score | of |\n| --- | --- | --- |");
    for s in &scores {
        println!("| {} | {} | {} |", s.student, s.score, s.max_score);
    }
    Ok(scores)
}

/// The rows of nbgrader's `grades.csv` for one assignment.
fn parse_grades(text: &str, assignment: &str) -> CliResult<Vec<Score>> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().ok_or("nbgrader export wrote an empty grades.csv")?.split(',').collect();
    let col = |name: &str| {
        header.iter().position(|h| *h == name).ok_or_else(|| format!("grades.csv has no `{name}` column: {header:?}"))
    };
    let (a, s, score, max) = (col("assignment")?, col("student_id")?, col("score")?, col("max_score")?);
    let mut out = Vec::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        // nbgrader's fields here hold no commas (ids, numbers, dates).
        let f: Vec<&str> = line.split(',').collect();
        if f.get(a) != Some(&assignment) {
            continue;
        }
        let num = |i: usize| {
            f.get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .ok_or_else(|| format!("grades.csv: no number in column {i} of {line:?}"))
        };
        out.push(Score { student: f.get(s).unwrap_or(&"").to_string(), score: num(score)?, max_score: num(max)? });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grades_csv_rows_of_one_assignment() {
        let csv = "assignment,duedate,timestamp,student_id,last_name,first_name,email,raw_score,late_submission_penalty,score,max_score\n\
                   03-adversarial,,2026-11-25 10:00:00,good,,,,5.0,0.0,5.0,5.0\n\
                   01-interpolation,,,good,,,,1.0,0.0,1.0,1.0\n\
                   03-adversarial,,2026-11-25 10:00:00,empty,,,,0.0,0.0,0.0,5.0\n";
        let scores = parse_grades(csv, "03-adversarial").unwrap();
        assert_eq!(scores.len(), 2);
        assert_eq!(scores[0], Score { student: "good".into(), score: 5.0, max_score: 5.0 });
        assert_eq!(scores[1].score, 0.0);
        assert!(parse_grades("student_id\n", "x").unwrap_err().contains("assignment"));
    }
}
