//! `cargo lab grade <assignment>`: autogrades every submission of an assignment with the real
//! nbgrader, one `nbgrader autograde --student` run per submission, a few at once, so that a
//! submission nbgrader cannot grade costs its own grade and nobody else's.
//!
//! What a class hands in and what it gets:
//! - a TODO that does not compile, panics, returns an `Err` or fails its check: 0 for the grade
//!   cells it breaks, full marks for the rest (the lab's `Execute`, see `super::course`); a check
//!   scores what its verdict said, whatever else the cell printed (`VerdictFirst`);
//! - a cell that runs past the per-cell limit (`--timeout`, default `super::course::CELL_TIMEOUT`): nbgrader
//!   stops it and scores it 0; the kernel loses its variables, the rest of the notebook still runs;
//! - an edited or deleted locked cell: nbgrader puts the instructor's version back (its
//!   `OverwriteCells`), or grades what is left;
//! - a file that is not a notebook, or no notebook at all: reported with the reason, not graded;
//! - a notebook whose first cell (`:dep lab-support`) failed, or whose check could not run: not
//!   graded, with the reason: that is the grading machine's problem, not the student's.
//!
//! It prints one line per student (score, maximum, and for each lost point the cell and why),
//! writes the same as `grades-<assignment>.csv` in the course folder, and fails only when it could
//! grade no submission at all. The points are nbgrader's own, read from its gradebook
//! (`python -m lab_grading`); the reasons come from the autograded notebooks.

use super::course::{ensure_classroom, link_lab_support, nbgrader_command};
use super::launcher::SLOTS;
use crate::ipynb::{self, join_text};
use crate::jupyter::outputs::strip_tags;
use crate::paths::Paths;
use crate::sys::{At, CliResult};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What one grading kernel holds at its peak, for sizing the runs at once: measured 1.42-1.50 GB
/// PSS per kernel in the hub test, plus nbgrader's own Python.
const BYTES_PER_RUN: u64 = 1_700_000_000;

/// How `cargo lab grade` runs.
#[derive(Clone, Copy, Debug)]
pub struct GradeOptions {
    /// Submissions graded at once.
    pub jobs: usize,
    /// The per-cell limit in seconds, if not the course's.
    pub timeout: Option<u64>,
}

impl GradeOptions {
    /// As many runs at once as the machine has cores and memory for (at least one).
    pub fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let by_memory = available_memory().map_or(cores, |bytes| (bytes / BYTES_PER_RUN) as usize);
        GradeOptions { jobs: cores.min(by_memory).clamp(1, SLOTS / 2), timeout: None }
    }
}

/// `MemAvailable` of /proc/meminfo, in bytes.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// One grade cell's points, and why it lost what it lost.
#[derive(Clone, Debug, PartialEq)]
pub struct CellGrade {
    pub cell: String,
    pub score: f64,
    pub max_score: f64,
    pub why: Option<String>,
}

/// One submission's grade, or why it has none.
#[derive(Clone, Debug, PartialEq)]
pub enum Graded {
    Scored { score: f64, max_score: f64, cells: Vec<CellGrade> },
    NotGraded(String),
}

/// One student's result.
#[derive(Clone, Debug, PartialEq)]
pub struct StudentGrade {
    pub student: String,
    pub graded: Graded,
}

impl StudentGrade {
    /// The score and maximum, if graded.
    pub fn score(&self) -> Option<(f64, f64)> {
        match &self.graded {
            Graded::Scored { score, max_score, .. } => Some((*score, *max_score)),
            Graded::NotGraded(_) => None,
        }
    }

    /// The line `cargo lab grade` prints for this student.
    pub fn line(&self) -> String {
        match &self.graded {
            Graded::Scored { score, max_score, cells } => {
                let lost: Vec<String> = lost_points(cells);
                let tail = if lost.is_empty() { String::new() } else { format!("  lost: {}", lost.join("; ")) };
                format!("{}: {} of {}{tail}", self.student, points(*score), points(*max_score))
            }
            Graded::NotGraded(why) => format!("{}: not graded: {why}", self.student),
        }
    }
}

fn lost_points(cells: &[CellGrade]) -> Vec<String> {
    cells
        .iter()
        .filter(|c| c.score < c.max_score)
        .map(|c| {
            let lost = c.max_score - c.score;
            let why = c.why.as_deref().unwrap_or("no reason found in the autograded notebook");
            format!("{} (-{}): {why}", c.cell, points(lost))
        })
        .collect()
}

/// `5`, `0.5`: points as a person writes them.
fn points(p: f64) -> String {
    if p.fract() == 0.0 {
        format!("{p:.0}")
    } else {
        format!("{p}")
    }
}

/// `cargo lab grade <assignment>`: autogrades every submission in `submitted/*/<assignment>/`,
/// prints a line per student and writes `grades-<assignment>.csv`.
pub fn grade(paths: &Paths, course: &Path, assignment: &str, options: GradeOptions) -> CliResult<Vec<StudentGrade>> {
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
    let logs = course.join("grading-logs").join(assignment);
    std::fs::create_dir_all(&logs).at(&logs)?;
    lab_grading(paths, course, &["prepare"])?;
    let expected = source_notebooks(course, assignment)?;
    let mut results: Vec<(String, Option<String>)> = Vec::new();
    let mut to_run = Vec::new();
    for s in &students {
        match unreadable(&submitted.join(s).join(assignment), &expected) {
            Some(why) => results.push((s.clone(), Some(why))),
            None => {
                link_lab_support(paths, &course.join("autograded").join(s))?;
                to_run.push(s.clone());
            }
        }
    }
    // Each run holds a kernel slot (`super::launcher`); leave half of them to the room.
    let jobs = options.jobs.clamp(1, SLOTS / 2).min(to_run.len().max(1));
    let limit = options.timeout.map_or("the course's limit (nbgrader_config.py)".to_string(), |t| format!("{t} s"));
    eprintln!(
        "==> nbgrader autograde {assignment}: {} submissions, {jobs} at once, a cell stopped after {limit}",
        to_run.len()
    );
    let queue = Arc::new(Mutex::new(to_run));
    let done = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            let (queue, done) = (Arc::clone(&queue), Arc::clone(&done));
            let logs = &logs;
            scope.spawn(move || loop {
                let Some(student) = queue.lock().unwrap().pop() else { break };
                let t0 = Instant::now();
                let failure = autograde(paths, course, assignment, &student, options.timeout, logs);
                eprintln!(
                    "    {student}: {} in {:.0} s",
                    if failure.is_none() { "autograded" } else { "nbgrader failed" },
                    t0.elapsed().as_secs_f64()
                );
                done.lock().unwrap().push((student, failure));
            });
        }
    });
    results.extend(std::mem::take(&mut *done.lock().unwrap()));
    eprintln!("==> autograded in {:.0} s", start.elapsed().as_secs_f64());
    let book = lab_grading(paths, course, &["grades", assignment])?;
    let book = book.as_array().cloned().unwrap_or_default();
    let mut out = Vec::new();
    for (student, failure) in results {
        let graded = match failure {
            Some(why) => Graded::NotGraded(why),
            None => match book.iter().find(|b| b["student"] == student.as_str()) {
                None => Graded::NotGraded("nbgrader's gradebook has no grade for it".into()),
                Some(entry) => scored(entry, &course.join("autograded").join(&student).join(assignment)),
            },
        };
        out.push(StudentGrade { student, graded });
    }
    out.sort_by(|a, b| a.student.cmp(&b.student));
    for s in &out {
        println!("{}", s.line());
    }
    let csv = course.join(format!("grades-{assignment}.csv"));
    std::fs::write(&csv, to_csv(&out)).at(&csv)?;
    eprintln!("Grades written to {}", csv.display());
    if out.iter().all(|s| s.score().is_none()) {
        return Err(format!("no submission of {assignment} could be graded (see the lines above)"));
    }
    Ok(out)
}

/// The notebooks of the assignment's source: the files a submission must hold.
fn source_notebooks(course: &Path, assignment: &str) -> CliResult<Vec<String>> {
    let dir = course.join("source").join(assignment);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e} (is {assignment} an assignment of this course?)", dir.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".ipynb"))
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(format!("{} holds no notebook", dir.display()));
    }
    Ok(names)
}

/// Why a submission's folder lacks a notebook of the assignment that nbgrader could read, if so.
/// Other files (a scratch notebook) are nbgrader's business, and it leaves them alone.
fn unreadable(dir: &Path, expected: &[String]) -> Option<String> {
    for name in expected {
        let nb = dir.join(name);
        if !nb.exists() {
            return Some(format!("no {name} in the submission's folder"));
        }
        let text = match std::fs::read(&nb) {
            Ok(bytes) => bytes,
            Err(e) => return Some(format!("{name} cannot be read: {e}")),
        };
        match serde_json::from_slice::<Value>(&text) {
            Ok(v) if v["cells"].is_array() => {}
            Ok(_) => return Some(format!("{name} is JSON but not a notebook (it has no cells)")),
            Err(e) => return Some(format!("{name} is not a notebook (not JSON: {e})")),
        }
    }
    None
}

/// Runs `nbgrader autograde` on one submission, its output into `logs/<student>.log`; the reason
/// it failed, if it did.
fn autograde(
    paths: &Paths,
    course: &Path,
    assignment: &str,
    student: &str,
    timeout: Option<u64>,
    logs: &Path,
) -> Option<String> {
    let log = logs.join(format!("{student}.log"));
    // Runs that write nbgrader's gradebook (SQLite, in write-ahead mode) at the same moment wait
    // for each other up to SQLite's timeout; a run that still found it locked is tried again.
    const TRIES: u64 = 3;
    for attempt in 1..=TRIES {
        let file = match std::fs::File::create(&log) {
            Ok(f) => f,
            Err(e) => return Some(format!("cannot write {}: {e}", log.display())),
        };
        let mut cmd = nbgrader_command(paths, course);
        cmd.args(["autograde", assignment, "--student", student, "--force", "--log-level=WARN"]);
        if let Some(t) = timeout {
            cmd.arg(format!("--Execute.timeout={t}"));
        }
        cmd.stdin(Stdio::null());
        if let Ok(err) = file.try_clone() {
            cmd.stderr(err);
        }
        cmd.stdout(file);
        let status = match cmd.status() {
            Ok(s) => s,
            Err(e) => return Some(format!("could not run nbgrader: {e}")),
        };
        if status.success() {
            return None;
        }
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if attempt < TRIES && text.contains("database is locked") {
            std::thread::sleep(std::time::Duration::from_secs(2 * attempt));
            continue;
        }
        return Some(format!("nbgrader autograde failed: {} (log: {})", failure_line(&text), log.display()));
    }
    None
}

/// The most telling line of a failed nbgrader run's log: its last error line.
fn failure_line(log: &str) -> String {
    let lines: Vec<&str> = log.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let pick = lines
        .iter()
        .rev()
        .find(|l| l.contains("Error") || l.contains("error"))
        .or(lines.last())
        .copied()
        .unwrap_or("no output");
    pick.chars().take(300).collect()
}

/// Runs `python -m lab_grading <args> <course>...` (lab/kernel-pool/lab_grading.py): `prepare`
/// sets the gradebook to write-ahead logging, `grades <assignment>` prints every submission's
/// points per grade cell from nbgrader's gradebook, as JSON.
fn lab_grading(paths: &Paths, course: &Path, args: &[&str]) -> CliResult<Value> {
    let mut cmd = Command::new(paths.venv_bin("python"));
    cmd.args(["-m", "lab_grading", args[0]]).arg(course).args(&args[1..]).current_dir(course);
    paths.jupyter_env(&mut cmd);
    let what = format!("python -m lab_grading {}", args.join(" "));
    let out = cmd.output().map_err(|e| format!("could not run {what}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{what} failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("{what}: {e}"))
}

/// A gradebook entry with the reason for each lost point, read from the autograded notebooks in
/// `dir`.
fn scored(entry: &Value, dir: &Path) -> Graded {
    let num = |v: &Value| v.as_f64().unwrap_or(0.0);
    let notebooks: Vec<(String, Value)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "ipynb"))
        .filter_map(|p| Some((p.file_stem()?.to_string_lossy().into_owned(), ipynb::read(&p).ok()?)))
        .collect();
    for (name, nb) in &notebooks {
        if let Some(why) = machine_trouble(nb) {
            return Graded::NotGraded(format!("{name}: {why}"));
        }
    }
    let cells = entry["cells"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let name = c["cell"].as_str().unwrap_or("").to_string();
            let (score, max_score) = (num(&c["score"]), num(&c["max_score"]));
            let why = (score < max_score).then(|| {
                let nb = notebooks.iter().find(|(n, _)| c["notebook"] == n.as_str()).map(|(_, nb)| nb);
                match nb.and_then(|nb| grade_cell(nb, &name)) {
                    Some(cell) => why_lost(cell),
                    None => "the cell is missing from the submission".to_string(),
                }
            });
            CellGrade { cell: name, score, max_score, why }
        })
        .collect();
    Graded::Scored { score: num(&entry["score"]), max_score: num(&entry["max_score"]), cells }
}

/// Why an autograded notebook's points say nothing about the student's work, if so: its first
/// code cell (`:dep lab-support`) failed, or a check could not run at all.
fn machine_trouble(nb: &Value) -> Option<String> {
    let cells = nb["cells"].as_array()?;
    let first = cells.iter().find(|c| c["cell_type"] == "code")?;
    if crate::ipynb::source_text(first).trim_start().starts_with(":dep") {
        for out in first["outputs"].as_array().into_iter().flatten() {
            if out["output_type"] == "error" {
                let what = first_line(&strip_ansi(out["evalue"].as_str().unwrap_or("")));
                return Some(format!(
                    "its first cell (`:dep lab-support`) failed: {what}; that is the grading machine's \
                     trouble, not the student's: fix it (`cargo lab up --setup-only`) and grade again"
                ));
            }
        }
    }
    for cell in cells.iter().filter(|c| c["metadata"]["nbgrader"]["grade"] == true) {
        for out in cell["outputs"].as_array().into_iter().flatten() {
            let words = strip_tags(&join_text(&out["data"]["text/html"]));
            if words.contains("the check itself could not run") {
                return Some(format!("{}; grade again once the check runs", shorten(&words)));
            }
        }
    }
    None
}

fn grade_cell<'a>(nb: &'a Value, id: &str) -> Option<&'a Value> {
    nb["cells"].as_array()?.iter().find(|c| c["metadata"]["nbgrader"]["grade_id"] == id)
}

/// Why a grade cell scored less than full marks, in one line, from what it shows: in the order
/// nbgrader reads its outputs.
pub fn why_lost(cell: &Value) -> String {
    let outputs = cell["outputs"].as_array().cloned().unwrap_or_default();
    // A cell stopped at the limit shows evcxr's own error first (its child process was killed by
    // the interrupt), then nbgrader's timeout.
    if outputs.iter().any(|o| o["output_type"] == "error" && o["ename"] == "CellTimeoutError") {
        return "it ran past the per-cell limit and was stopped".into();
    }
    for out in &outputs {
        match out["output_type"].as_str() {
            Some("error") => {
                let what = first_line(&strip_ansi(out["evalue"].as_str().unwrap_or("")));
                return format!("error: {what}");
            }
            Some("stream") if out["name"] == "stderr" => {
                let text = strip_ansi(&join_text(&out["text"]));
                let line = text.lines().find(|l| !l.trim().is_empty() && !l.contains("panicked at")).unwrap_or("");
                return format!("wrote to stderr: {}", shorten(line.trim()));
            }
            Some("execute_result") => {
                let html = join_text(&out["data"]["text/html"]);
                if html.contains(" · ") {
                    let words = strip_tags(&html);
                    // NOT DONE says the same thing every time: its headline is enough.
                    return match words.split_once(": ") {
                        Some((head, _)) if words.starts_with("NOT DONE") => head.to_string(),
                        _ => shorten(&words),
                    };
                }
                return format!("showed {}", shorten(&first_line(&join_text(&out["data"]["text/plain"]))));
            }
            _ => {}
        }
    }
    "it shows no result".into()
}

fn first_line(s: &str) -> String {
    s.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("").to_string()
}

fn shorten(s: &str) -> String {
    const MAX: usize = 200;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(MAX).collect::<String>())
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The grades as CSV: student, score, max_score, graded (yes/no), and the lost points or the
/// reason it was not graded.
pub fn to_csv(grades: &[StudentGrade]) -> String {
    let field = |s: &str| {
        if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    let mut out = String::from("student,score,max_score,graded,lost\n");
    for g in grades {
        let row = match &g.graded {
            Graded::Scored { score, max_score, cells } => {
                [g.student.clone(), points(*score), points(*max_score), "yes".into(), lost_points(cells).join("; ")]
            }
            Graded::NotGraded(why) => [g.student.clone(), String::new(), String::new(), "no".into(), why.clone()],
        };
        out.push_str(&row.iter().map(|f| field(f)).collect::<Vec<_>>().join(","));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_lost_point_says_why_in_the_order_nbgrader_reads_a_cell() {
        let cell = |outputs: Value| json!({"cell_type": "code", "outputs": outputs});
        let compile = json!([{"output_type": "error", "ename": "Error", "evalue": "cannot find function `input_grad` in this scope", "traceback": []}]);
        assert_eq!(why_lost(&cell(compile)), "error: cannot find function `input_grad` in this scope");
        let timeout = json!([
            {"output_type": "error", "ename": "Error", "evalue": "Subprocess terminated with status: signal: 9 (SIGKILL)", "traceback": []},
            {"output_type": "error", "ename": "CellTimeoutError", "evalue": "", "traceback": []}
        ]);
        assert!(why_lost(&cell(timeout)).contains("per-cell limit"));
        let verdict = json!([{"output_type": "execute_result", "data": {
            "text/html": "<div><b style=\"color:#9a6700\">NOT DONE · TODO 1 (input gradient):</b> replace the `todo!()` &amp; run</div>",
            "text/plain": "0"}}]);
        assert_eq!(why_lost(&cell(verdict)), "NOT DONE · TODO 1 (input gradient)");
        let fail = json!([{"output_type": "execute_result", "data": {
            "text/html": "<div><b style=\"color:#cf222e\">FAIL · TODO 1 (input gradient):</b> expected a &amp; b</div>",
            "text/plain": "0"}}]);
        assert_eq!(why_lost(&cell(fail)), "FAIL · TODO 1 (input gradient): expected a & b");
        let panic = json!([{"output_type": "stream", "name": "stderr", "text": "\u{1b}[31mthread 'x' panicked at src/lib.rs:3:5:\u{1b}[0m\nboom\n"}]);
        assert_eq!(why_lost(&cell(panic)), "wrote to stderr: boom");
        assert_eq!(why_lost(&cell(json!([]))), "it shows no result");
    }

    #[test]
    fn a_failed_first_cell_or_a_check_that_could_not_run_is_the_machines_trouble() {
        let nb = |first: Value, check: Value| {
            json!({"cells": [
                {"cell_type": "code", "source": ":dep lab-support = { path = \"../lab-support\" }", "outputs": first},
                {"cell_type": "code", "source": "check::x(x)", "metadata": {"nbgrader": {"grade": true}}, "outputs": check}
            ]})
        };
        let fine = json!([{"output_type": "execute_result", "data": {"text/html": "<b>FAIL · TODO 1 (x):</b> expected a", "text/plain": "0"}}]);
        assert_eq!(machine_trouble(&nb(json!([]), fine.clone())), None, "a FAIL is the student's");
        let dep = json!([{"output_type": "error", "ename": "Error", "evalue": "failed to build lab-support", "traceback": []}]);
        assert!(machine_trouble(&nb(dep, fine))
            .unwrap()
            .contains("first cell (`:dep lab-support`) failed: failed to build"));
        let broken = json!([{"output_type": "execute_result", "data": {"text/html": "<b>FAIL · TODO 1 (x):</b> the check itself could not run: no data/mnist", "text/plain": "0"}}]);
        assert!(machine_trouble(&nb(json!([]), broken)).unwrap().contains("could not run: no data/mnist"));
    }

    #[test]
    fn one_line_and_one_csv_row_per_student() {
        let grades = vec![
            StudentGrade {
                student: "ada".into(),
                graded: Graded::Scored {
                    score: 1.0,
                    max_score: 2.0,
                    cells: vec![
                        CellGrade { cell: "check_a".into(), score: 1.0, max_score: 1.0, why: None },
                        CellGrade {
                            cell: "check_b".into(),
                            score: 0.0,
                            max_score: 1.0,
                            why: Some("error: x, y".into()),
                        },
                    ],
                },
            },
            StudentGrade { student: "bo".into(), graded: Graded::NotGraded("x.ipynb is not a notebook".into()) },
        ];
        assert_eq!(grades[0].line(), "ada: 1 of 2  lost: check_b (-1): error: x, y");
        assert_eq!(grades[1].line(), "bo: not graded: x.ipynb is not a notebook");
        assert_eq!(
            to_csv(&grades),
            "student,score,max_score,graded,lost\nada,1,2,yes,\"check_b (-1): error: x, y\"\nbo,,,no,x.ipynb is not a notebook\n"
        );
    }

    #[test]
    fn a_folder_without_a_readable_notebook_is_named_as_such() {
        let dir = std::env::temp_dir().join(format!("lab-grade-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let expected = ["03.ipynb".to_string()];
        assert_eq!(unreadable(&dir, &expected).unwrap(), "no 03.ipynb in the submission's folder");
        std::fs::write(dir.join("03.ipynb"), "this is not a notebook").unwrap();
        assert!(unreadable(&dir, &expected).unwrap().contains("not a notebook (not JSON"));
        std::fs::write(dir.join("03.ipynb"), "{\"cells\": [], \"metadata\": {}}").unwrap();
        std::fs::write(dir.join("scratch.ipynb"), "not mine to judge").unwrap();
        assert_eq!(unreadable(&dir, &expected), None, "a stray file is nbgrader's business");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
