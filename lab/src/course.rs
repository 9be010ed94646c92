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

use crate::notebooks::source_text;
use crate::setup::{run, Paths};
use crate::CliResult;
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
        stub = crate::student::CODE_STUB
    )
}

/// Installs JupyterHub and nbgrader into the project venv unless they are there.
pub fn ensure_classroom(paths: &Paths) -> CliResult<()> {
    crate::setup::ensure_venv(paths, 1, 2)?;
    let requirements = std::fs::read_to_string(paths.root.join(REQUIREMENTS)).map_err(|e| format!("{REQUIREMENTS}: {e}"))?;
    let stamp = paths.venv.join(".lab-classroom");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(requirements.as_str()) {
        eprintln!("==> [2/2] JupyterHub and nbgrader in .venv/: ready");
        return Ok(());
    }
    eprintln!("==> [2/2] Installing JupyterHub and nbgrader into .venv/ (about 20 s, once)");
    run(
        Command::new(paths.venv_bin("pip")).args(["install", "--disable-pip-version-check", "-q", "-r"]).arg(paths.root.join(REQUIREMENTS)),
        "pip install jupyterhub nbgrader",
    )?;
    std::fs::write(&stamp, requirements).map_err(|e| format!("{}: {e}", stamp.display()))
}

/// The assignments: one per solution notebook, named after it (`03-adversarial`).
pub fn assignments(paths: &Paths) -> CliResult<Vec<(String, PathBuf)>> {
    Ok(crate::student::pairs(&paths.root)?
        .into_iter()
        .map(|(solution, _)| (solution.file_stem().unwrap_or_default().to_string_lossy().into_owned(), solution))
        .collect())
}

/// Links `dir/lab-support` to the lab's crate (a notebook in `dir/<x>/` loads `../lab-support`).
fn link_lab_support(paths: &Paths, dir: &Path) -> CliResult<()> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let link = dir.join("lab-support");
    let target = paths.root.join("lab-support");
    if std::fs::read_link(&link).ok().as_deref() == Some(target.as_path()) {
        return Ok(());
    }
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&target, &link).map_err(|e| format!("cannot link {} to {}: {e}", link.display(), target.display()))
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
    std::fs::create_dir_all(course).map_err(|e| format!("{}: {e}", course.display()))?;
    let config = course.join("nbgrader_config.py");
    if !config.exists() {
        std::fs::write(&config, nbgrader_config()).map_err(|e| format!("{}: {e}", config.display()))?;
    }
    for dir in ["source", "release"] {
        link_lab_support(paths, &course.join(dir))?;
    }
    for (name, solution) in assignments(paths)? {
        let dir = course.join("source").join(&name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut nb: Value = serde_json::from_str(&std::fs::read_to_string(&solution).map_err(|e| format!("{}: {e}", solution.display()))?)
            .map_err(|e| format!("{}: {e}", solution.display()))?;
        // The source is the solution one folder up, as the student notebooks are.
        for cell in nb["cells"].as_array_mut().into_iter().flatten() {
            let src = source_text(cell);
            if src.contains("\"../../lab-support\"") {
                cell["source"] = Value::String(src.replace("\"../../lab-support\"", "\"../lab-support\""));
            }
        }
        let file = dir.join(format!("{name}.ipynb"));
        std::fs::write(&file, crate::student::to_json(&nb)?).map_err(|e| format!("{}: {e}", file.display()))?;
        eprintln!("==> nbgrader generate_assignment {name}");
        nbgrader(paths, course, &["generate_assignment", &name, "--force", "--log-level=WARN"])?;
    }
    eprintln!("Student versions are in {}/release/; grade submissions with `cargo lab grade <assignment>`.", course.display());
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
        .map_err(|e| format!("{}: {e} (put each student's notebook in submitted/<student>/{assignment}/)", submitted.display()))?
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
    let text = std::fs::read_to_string(&csv).map_err(|e| format!("{}: {e}", csv.display()))?;
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
    let col = |name: &str| header.iter().position(|h| *h == name).ok_or_else(|| format!("grades.csv has no `{name}` column: {header:?}"));
    let (a, s, score, max) = (col("assignment")?, col("student_id")?, col("score")?, col("max_score")?);
    let mut out = Vec::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        // nbgrader's fields here hold no commas (ids, numbers, dates).
        let f: Vec<&str> = line.split(',').collect();
        if f.get(a) != Some(&assignment) {
            continue;
        }
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).ok_or_else(|| format!("grades.csv: no number in column {i} of {line:?}"));
        out.push(Score { student: f.get(s).unwrap_or(&"").to_string(), score: num(score)?, max_score: num(max)? });
    }
    Ok(out)
}

/// A student's notebook with every exercise cell (nbgrader `solution` cell) filled in with the
/// solution's code for the same `grade_id`: what a student who solved everything hands in.
pub fn filled_in(student: &Value, solution: &Value) -> CliResult<Value> {
    let id = |c: &Value| c["metadata"]["nbgrader"]["grade_id"].as_str().map(String::from);
    let is_exercise = |c: &Value| c["metadata"]["nbgrader"]["solution"] == true;
    let mut nb = student.clone();
    let mut filled = 0;
    for cell in nb["cells"].as_array_mut().into_iter().flatten().filter(|c| is_exercise(c)) {
        let want = id(cell);
        let answer = solution["cells"].as_array().into_iter().flatten().find(|c| is_exercise(c) && id(c) == want);
        let answer = answer.ok_or_else(|| format!("the solution has no exercise cell {want:?}"))?;
        cell["source"] = answer["source"].clone();
        filled += 1;
    }
    if filled == 0 {
        return Err("the notebook has no exercise cells (nbgrader `solution` cells) to fill in".into());
    }
    Ok(nb)
}

pub fn write_notebook(path: &Path, nb: &Value) -> CliResult<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(path, crate::student::to_json(nb)?).map_err(|e| format!("{}: {e}", path.display()))
}

/// The assignment `cargo lab test` grades for real.
pub const TEST_ASSIGNMENT: &str = "03-adversarial";

/// The nbgrader round trip, in a fresh course under `target/grading-test/`: generate every
/// assignment (each must hold the same cells as `cargo lab student` writes), then autograde two
/// submissions of 03: the student notebook with every exercise solved (full marks) and the released
/// one untouched (zero).
pub fn test(paths: &Paths) -> CliResult<Vec<String>> {
    let course_dir = paths.root.join("target/grading-test/course");
    let _ = std::fs::remove_dir_all(&course_dir);
    course(paths, &course_dir)?;
    let mut problems = Vec::new();
    let cells = |nb: &Value| -> Vec<(String, String)> {
        nb["cells"].as_array().into_iter().flatten().map(|c| (c["cell_type"].as_str().unwrap_or("").to_string(), source_text(c))).collect()
    };
    for (name, solution) in assignments(paths)? {
        let released = crate::notebooks::read_json(&course_dir.join("release").join(&name).join(format!("{name}.ipynb")))?;
        let ours: Value = serde_json::from_str(&crate::student::expected_text(&solution)?).map_err(|e| e.to_string())?;
        let (theirs, ours) = (cells(&released), cells(&ours));
        if theirs != ours {
            let first = theirs.iter().zip(&ours).position(|(a, b)| a != b).unwrap_or(theirs.len().min(ours.len()));
            problems.push(format!("{name}: nbgrader's student version differs from `cargo lab student`'s at cell {}", first + 1));
        }
    }
    let a = TEST_ASSIGNMENT;
    let solution = crate::notebooks::read_json(&paths.root.join("notebooks/solutions").join(format!("{a}.ipynb")))?;
    let student: Value = serde_json::from_str(&crate::student::expected_text(&paths.root.join("notebooks/solutions").join(format!("{a}.ipynb")))?)
        .map_err(|e| e.to_string())?;
    let released = crate::notebooks::read_json(&course_dir.join("release").join(a).join(format!("{a}.ipynb")))?;
    write_notebook(&course_dir.join("submitted/solved").join(a).join(format!("{a}.ipynb")), &filled_in(&student, &solution)?)?;
    write_notebook(&course_dir.join("submitted/untouched").join(a).join(format!("{a}.ipynb")), &released)?;
    let scores = grade(paths, &course_dir, a)?;
    let of = |who: &str| scores.iter().find(|s| s.student == who).cloned();
    match (of("solved"), of("untouched")) {
        (Some(good), Some(empty)) => {
            if !(good.max_score > 0.0 && good.score == good.max_score) {
                problems.push(format!("the solved submission scored {} of {}, not full marks", good.score, good.max_score));
            }
            if empty.score != 0.0 {
                problems.push(format!("the untouched submission scored {} of {}, not zero", empty.score, empty.max_score));
            }
        }
        _ => problems.push(format!("nbgrader's grades lack a submission: {scores:?}")),
    }
    Ok(problems)
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
