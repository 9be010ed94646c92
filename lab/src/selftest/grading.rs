//! The grading test of `cargo lab test`: the nbgrader round trip of `cargo lab course` and
//! `cargo lab grade`, with a solved and an untouched submission.

use crate::cmd::course::{assignments, course, grade};
use crate::cmd::student::expected_text;
use crate::ipynb::{self, source_text};
use crate::paths::Paths;
use crate::sys::CliResult;
use serde_json::Value;

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
    let student: Value =
        serde_json::from_str(&expected_text(&paths.root.join("notebooks/solutions").join(format!("{a}.ipynb")))?)
            .map_err(|e| e.to_string())?;
    let released = ipynb::read(&course_dir.join("release").join(a).join(format!("{a}.ipynb")))?;
    ipynb::write(
        &course_dir.join("submitted/solved").join(a).join(format!("{a}.ipynb")),
        &filled_in(&student, &solution)?,
    )?;
    ipynb::write(&course_dir.join("submitted/untouched").join(a).join(format!("{a}.ipynb")), &released)?;
    let scores = grade(paths, &course_dir, a)?;
    let of = |who: &str| scores.iter().find(|s| s.student == who).cloned();
    match (of("solved"), of("untouched")) {
        (Some(good), Some(empty)) => {
            if !(good.max_score > 0.0 && good.score == good.max_score) {
                problems
                    .push(format!("the solved submission scored {} of {}, not full marks", good.score, good.max_score));
            }
            if empty.score != 0.0 {
                problems
                    .push(format!("the untouched submission scored {} of {}, not zero", empty.score, empty.max_score));
            }
        }
        _ => problems.push(format!("nbgrader's grades lack a submission: {scores:?}")),
    }
    Ok(problems)
}
