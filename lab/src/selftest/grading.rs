//! The grading test of `cargo lab test`: the nbgrader round trip of `cargo lab course` and
//! `cargo lab grade`: notebook 03 solved and untouched; then a small assignment (03's
//! first two TODOs and their checks) handed in ten times alike and once in each way a class breaks
//! a notebook.

use crate::cmd::course::{add_assignment, assignments, course};
use crate::cmd::grade::{grade, GradeOptions, Graded, StudentGrade};
use crate::cmd::student::expected_text;
use crate::ipynb::{self, source_text};
use crate::jupyter::check_outputs;
use crate::paths::Paths;
use crate::sys::CliResult;
use serde_json::Value;
use std::path::Path;

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

/// The assignment `cargo lab test` grades for real.
pub const TEST_ASSIGNMENT: &str = "03-adversarial";
/// The student notebook the grading test runs whole (the untouched submission of
/// `TEST_ASSIGNMENT`) and checks as a headless run would: a whole `cargo lab test` does not run it
/// headless too (51 s).
pub const STUDENT_NOTEBOOK_GRADED: &str = "notebooks/03-adversarial.ipynb";

/// The small assignment: 03's first cell, its first two TODOs and their checks.
const PROBE: &str = "grading-probe";
const PROBE_CELLS: [&str; 4] = ["todo_input_grad", "check_input_grad", "todo_descent_step", "check_descent_step"];
/// The per-cell limit of the probe's grading: the slots are warm by then (03 was graded first), so
/// a cell that needs more is the endless loop.
const PROBE_TIMEOUT: u64 = 60;

/// The nbgrader round trip, in a fresh course under `target/grading-test/`: generate every
/// assignment (each must hold the same cells as `cargo lab student` writes); autograde 03 solved
/// (full marks) and untouched (zero); then the probe, whose submissions alike must get the same
/// points (a grade decided by a race would differ among them). Until 2026-12-06 03 was graded a
/// second time and compared too: 80 s, for what the probe's ten checks the same way.
pub fn test(paths: &Paths) -> CliResult<Vec<String>> {
    let course_dir = paths.root.join("target/grading-test/course");
    let _ = std::fs::remove_dir_all(&course_dir);
    course(paths, &course_dir)?;
    let mut problems = Vec::new();
    let cells = |nb: &Value| -> Vec<(String, String)> {
        nb["cells"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| (c["cell_type"].as_str().unwrap_or("").to_string(), source_text(c)))
            .collect()
    };
    for (name, solution) in assignments(paths)? {
        let released = ipynb::read(&course_dir.join("release").join(&name).join(format!("{name}.ipynb")))?;
        let ours: Value = serde_json::from_str(&expected_text(&solution)?).map_err(|e| e.to_string())?;
        let (theirs, ours) = (cells(&released), cells(&ours));
        if theirs != ours {
            let first = theirs.iter().zip(&ours).position(|(a, b)| a != b).unwrap_or(theirs.len().min(ours.len()));
            problems.push(format!(
                "{name}: nbgrader's student version differs from `cargo lab student`'s at cell {}",
                first + 1
            ));
        }
    }
    let a = TEST_ASSIGNMENT;
    let solution = ipynb::read(&paths.root.join("notebooks/solutions").join(format!("{a}.ipynb")))?;
    let released = ipynb::read(&course_dir.join("release").join(a).join(format!("{a}.ipynb")))?;
    let submit = |student: &str, assignment: &str, nb: &Value| {
        ipynb::write(
            &course_dir.join("submitted").join(student).join(assignment).join(format!("{assignment}.ipynb")),
            nb,
        )
    };
    submit("solved", a, &filled_in(&released, &solution)?)?;
    submit("untouched", a, &released)?;
    let options = GradeOptions { jobs: 2, timeout: None };
    let grades = grade(paths, &course_dir, a, options)?;
    expect_scores(&grades, "solved", &mut problems, |s, max| s == max && max > 0.0, "full marks");
    expect_scores(&grades, "untouched", &mut problems, |s, _| s == 0.0, "zero");
    // The untouched submission is the student notebook run whole: the check a headless run of it
    // makes (only todo!() panics and unfinished checks), on what nbgrader executed. A whole `cargo
    // lab test` runs it here alone (see `STUDENT_NOTEBOOK_GRADED`).
    let untouched = course_dir.join("autograded/untouched").join(a).join(format!("{a}.ipynb"));
    match ipynb::read(&untouched) {
        Ok(executed) => problems
            .extend(check_outputs(&executed, true).into_iter().map(|p| format!("untouched {a}, as autograded: {p}"))),
        Err(e) => problems.push(format!("untouched {a}: no notebook nbgrader executed to check: {e}")),
    }
    problems.extend(probe(paths, &course_dir, &solution)?);
    Ok(problems)
}

/// The probe: ten submissions alike (five solved, five untouched) must get the same points cell by
/// cell, and each broken one what it earned, without stopping anyone else's grade.
fn probe(paths: &Paths, course_dir: &Path, solution03: &Value) -> CliResult<Vec<String>> {
    let mut probe = solution03.clone();
    let keep =
        |c: &Value, i: usize| i <= 1 || PROBE_CELLS.iter().any(|id| c["metadata"]["nbgrader"]["grade_id"] == *id);
    let kept: Vec<Value> = probe["cells"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .filter(|(i, c)| keep(c, *i))
        .map(|(_, c)| c.clone())
        .collect();
    probe["cells"] = Value::Array(kept);
    add_assignment(paths, course_dir, PROBE, probe.clone())?;
    let released = ipynb::read(&course_dir.join("release").join(PROBE).join(format!("{PROBE}.ipynb")))?;
    let solved = filled_in(&released, &probe)?;
    let dir = |student: &str| course_dir.join("submitted").join(student).join(PROBE);
    let submit = |student: &str, nb: &Value| ipynb::write(&dir(student).join(format!("{PROBE}.ipynb")), nb);
    for i in 1..=5 {
        submit(&format!("solved-{i}"), &solved)?;
        submit(&format!("untouched-{i}"), &released)?;
    }
    let signature = "fn input_grad(model: &Classifier, x: &Tensor, target: u32) -> Result<Tensor> {";
    let broken = [
        ("compile-error", "let y: i32 = \"seven\";\n    todo!()"),
        ("panic", "panic!(\"my own bug\")"),
        ("err", "Err(LabError::Other(\"not today\".into()))"),
        ("endless", "loop {\n        std::hint::spin_loop();\n    }"),
        ("library-call", "Ok(input_gradient(model, x, &Objective::targeted(target, 1)?)?.grad)"),
    ];
    for (student, body) in broken {
        submit(student, &with_source(&solved, "todo_input_grad", &format!("{signature}\n    {body}\n}}"))?)?;
    }
    let mut deleted = solved.clone();
    if let Some(cells) = deleted["cells"].as_array_mut() {
        cells.retain(|c| c["metadata"]["nbgrader"]["grade_id"] != "check_descent_step");
    }
    submit("deleted-check", &deleted)?;
    submit("edited-check", &with_source(&released, "check_input_grad", "\"full marks, please\"")?)?;
    std::fs::create_dir_all(dir("not-a-notebook")).map_err(|e| e.to_string())?;
    std::fs::write(dir("not-a-notebook").join(format!("{PROBE}.ipynb")), "my answers are in the email")
        .map_err(|e| e.to_string())?;

    let grades = grade(paths, course_dir, PROBE, GradeOptions { jobs: 2, timeout: Some(PROBE_TIMEOUT) })?;
    let mut problems = Vec::new();
    let of = |who: &str| grades.iter().find(|g| g.student == who);
    let alike = |prefix: &str| -> Vec<Vec<(String, f64)>> {
        grades.iter().filter(|g| g.student.starts_with(prefix)).map(cells_of).collect()
    };
    for (prefix, want) in [("solved-", 2.0), ("untouched-", 0.0)] {
        let runs = alike(prefix);
        if runs.len() != 5 || runs.iter().any(|r| r != &runs[0]) {
            problems.push(format!("five {prefix}* submissions alike got different points: {runs:?}"));
        }
        for g in grades.iter().filter(|g| g.student.starts_with(prefix)) {
            if g.score() != Some((want, 2.0)) {
                problems.push(format!("{}: expected {want} of 2: {}", g.student, g.line()));
            }
        }
    }
    // (student, points, the lost cell, words its reason must hold)
    let expected = [
        ("compile-error", 1.0, "check_input_grad", "error:"),
        ("panic", 1.0, "check_input_grad", "my own bug"),
        ("err", 1.0, "check_input_grad", "not today"),
        ("endless", 1.0, "check_input_grad", "per-cell limit"),
        ("library-call", 1.0, "check_input_grad", "`input_gradient`"),
        ("deleted-check", 1.0, "check_descent_step", ""),
        ("edited-check", 0.0, "check_input_grad", "NOT DONE · TODO 1"),
    ];
    for (student, points, cell, words) in expected {
        match of(student) {
            Some(g @ StudentGrade { graded: Graded::Scored { score, cells, .. }, .. }) => {
                let lost = cells.iter().find(|c| c.cell == cell && c.score < c.max_score);
                let reason = lost.and_then(|c| c.why.as_deref()).unwrap_or("");
                if *score != points || lost.is_none() || !reason.contains(words) {
                    problems
                        .push(format!("{student}: expected {points} of 2, losing {cell} for `{words}`: {}", g.line()));
                }
            }
            other => problems.push(format!("{student}: expected a grade, got {other:?}")),
        }
    }
    match of("not-a-notebook") {
        Some(StudentGrade { graded: Graded::NotGraded(why), .. }) if why.contains("not a notebook") => {}
        other => problems.push(format!("not-a-notebook: expected `not graded: ... not a notebook`, got {other:?}")),
    }
    let csv = std::fs::read_to_string(course_dir.join(format!("grades-{PROBE}.csv"))).unwrap_or_default();
    if csv.lines().count() != grades.len() + 1 {
        problems.push(format!("grades-{PROBE}.csv has {} lines for {} students", csv.lines().count(), grades.len()));
    }
    Ok(problems)
}

/// `nb` with the source of the cell `grade_id` replaced.
fn with_source(nb: &Value, grade_id: &str, source: &str) -> CliResult<Value> {
    let mut nb = nb.clone();
    let cell = nb["cells"]
        .as_array_mut()
        .into_iter()
        .flatten()
        .find(|c| c["metadata"]["nbgrader"]["grade_id"] == grade_id)
        .ok_or_else(|| format!("no cell {grade_id}"))?;
    cell["source"] = Value::String(source.to_string());
    Ok(nb)
}

fn cells_of(g: &StudentGrade) -> Vec<(String, f64)> {
    match &g.graded {
        Graded::Scored { cells, .. } => cells.iter().map(|c| (c.cell.clone(), c.score)).collect(),
        Graded::NotGraded(_) => Vec::new(),
    }
}

fn expect_scores(
    grades: &[StudentGrade],
    who: &str,
    problems: &mut Vec<String>,
    ok: impl Fn(f64, f64) -> bool,
    what: &str,
) {
    match grades.iter().find(|g| g.student == who) {
        Some(g) if g.score().is_some_and(|(s, max)| ok(s, max)) => {}
        Some(g) => problems.push(format!("the {who} submission should score {what}: {}", g.line())),
        None => problems.push(format!("no grade for the {who} submission")),
    }
}
