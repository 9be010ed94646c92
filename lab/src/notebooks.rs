//! `cargo lab test`: the crate's tests, then every notebook executed headless.
//!
//! evcxr reports a panic or a `?` error as a cell that ran fine, so passing through nbclient
//! proves little. After each run we read the executed notebook and fail on any error output,
//! any panic or compiler-error text and any failed check line.

use crate::setup::{ensure, Paths};
use crate::CliResult;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// What one notebook run found.
pub struct Report {
    pub problems: Vec<String>,
    pub seconds: f64,
}

/// Text that means something went wrong even though the kernel called the cell a success.
/// (Anything on stderr counts too: evcxr prints a `?` error there as its bare message.)
const BAD_TEXT: [&str; 5] = ["panicked at", "error[E", "FAIL", "NOT DONE", "thread '"];

/// lab-support's displayable types.
pub const FIGURES: [&str; 8] = ["LinePlot", "BarChart", "ImageGrid", "Figure", "Stack", "Table", "Verdict", "Challenge"];

/// Passed and failed tests, and the names of the failed ones.
#[derive(Default)]
struct Tally {
    passed: usize,
    failed: usize,
    failures: Vec<String>,
}

impl Tally {
    /// Prints one test's outcome (`extra` after its time) and counts it.
    fn record(&mut self, name: String, seconds: f64, extra: &str, problems: &[String]) {
        if problems.is_empty() {
            eprintln!("    ok ({seconds:.0} s){extra}");
            self.passed += 1;
        } else {
            eprintln!("    FAILED ({seconds:.0} s){extra}:");
            for p in problems {
                eprintln!("      {p}");
            }
            self.failed += 1;
            self.failures.push(name);
        }
    }
}

/// `cargo lab test`.
pub fn test(filter: Option<&str>) -> CliResult<()> {
    let paths = Paths::new();
    let mut tally = Tally::default();
    if filter.is_none() {
        let (p, f) = cargo_tests(&paths)?;
        tally.passed += p;
        tally.failed += f;
        if f > 0 {
            tally.failures.push(format!("{f} lab-support test(s)"));
        }
        let start = Instant::now();
        let problems = format_check(&paths)?;
        tally.record("format check".into(), start.elapsed().as_secs_f64(), "", &problems);
    }
    // With the kernel's seed built: the kernels of the tests below copy it.
    ensure(&paths, true)?;
    let notebooks = list_notebooks(&paths.root.join("notebooks"))?;
    for nb in notebooks.iter().filter(|nb| filter.is_none_or(|f| nb.to_string_lossy().contains(f))) {
        let name = nb.strip_prefix(&paths.root).unwrap_or(nb).display().to_string();
        eprintln!("==> notebook {name}");
        let report = run_notebook(&paths, nb)?;
        tally.record(name, report.seconds, "", &report.problems);
    }
    let timed = |test: &dyn Fn(&Paths) -> CliResult<Vec<String>>| -> CliResult<(f64, Vec<String>)> {
        let start = Instant::now();
        let problems = test(&paths)?;
        Ok((start.elapsed().as_secs_f64(), problems))
    };
    // The test groups after the notebooks: `--notebook <group>` runs one alone.
    let groups: [(&str, String, &str, &str, &dyn Fn(&Paths) -> CliResult<Vec<String>>); 8] = [
        ("kernel", "kernel test: panics, errors and figures in a real evcxr kernel".into(), "kernel test", "", &crate::kernel_test::test),
        ("kernel", "kernel test: two kernels started at the same moment, three times".into(), "concurrent kernels test", "", &crate::kernel_test::concurrent),
        ("kernel", "kernel test: a path crate changed between two kernels is rebuilt".into(), "kernel pickup test", "", &crate::kernel_test::pickup),
        ("kernel", "kernel test: a control channel closed early, as Jupyter's nudge does, leaves the kernel alive".into(), "kernel control test", " (log: target/kernel-control-test.log)", &crate::kernel_test::control),
        ("spare", "spare kernel test: a restart in `cargo lab up`'s JupyterLab gets the warm spare, fresh and working".into(), "spare kernel test", " (log: target/spare-test.log)", &crate::spare::test),
        ("hub", format!("hub test: {} students run notebook 03 at once through a real JupyterHub", crate::hub::TEST_USERS), "hub test", " (log: target/hub-test.log)", &crate::hub::test),
        ("grading", format!("grading test: nbgrader generate_assignment, then autograde a solved and an untouched {}", crate::course::TEST_ASSIGNMENT), "grading test", "", &crate::course::test),
        ("server", "server test: `cargo lab up` on a busy port and on --port 0, the token kept off command lines".into(), "server test", "", &crate::server::test),
    ];
    for (group, banner, name, extra, test) in groups {
        if filter.is_none_or(|f| f == group) {
            eprintln!("==> {banner}");
            let (seconds, problems) = timed(test)?;
            tally.record(name.into(), seconds, extra, &problems);
        }
    }
    if filter.is_none_or(|f| f == "browser") {
        eprintln!("==> browser test: {} in JupyterLab, headless Chromium", crate::browser::NOTEBOOKS.join(" and "));
        let report = crate::browser::test(&paths)?;
        let shots: Vec<String> = report.screenshots.iter().map(|s| s.display().to_string()).collect();
        tally.record("browser test".into(), report.seconds, &format!("; screenshots: {}", shots.join(", ")), &report.problems);
    }
    println!();
    if !tally.failures.is_empty() {
        println!("failed: {}", tally.failures.join(", "));
    }
    println!("{} passed, {} failed", tally.passed, tally.failed);
    if tally.failed > 0 {
        return Err(format!("{} test(s) failed", tally.failed));
    }
    Ok(())
}

/// Runs `cargo test` on the workspace and counts its results.
fn cargo_tests(paths: &Paths) -> CliResult<(usize, usize)> {
    eprintln!("==> cargo test (lab-support and the lab tool)");
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["test", "--release", "--workspace"])
        .current_dir(&paths.root)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("could not run cargo test: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    let (mut passed, mut failed) = (0, 0);
    for line in stdout.lines().filter(|l| l.starts_with("test result:")) {
        let count = |word: &str| {
            line.split(';').find(|p| p.trim_end().ends_with(word)).and_then(|p| p.split_whitespace().rev().nth(1)?.parse::<usize>().ok()).unwrap_or(0)
        };
        passed += count("passed");
        failed += count("failed");
    }
    if !out.status.success() && failed == 0 {
        return Err("cargo test failed before running the tests (a build error?); see above".into());
    }
    Ok((passed, failed))
}

/// `cargo fmt --check` on the crates that follow the house format (rustfmt.toml): lab-support and
/// lab-model. The `lab` tool is not formatted yet.
fn format_check(paths: &Paths) -> CliResult<Vec<String>> {
    eprintln!("==> format check: cargo fmt --check on lab-support and lab-model");
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["fmt", "--check", "-p", "lab-support", "-p", "lab-model"])
        .current_dir(&paths.root)
        .output()
        .map_err(|e| format!("could not run cargo fmt: {e}"))?;
    if out.status.success() {
        return Ok(vec![]);
    }
    let diff = String::from_utf8_lossy(&out.stdout);
    let files: Vec<&str> = diff.lines().filter_map(|l| l.strip_prefix("Diff in ")).collect();
    Ok(vec![format!(
        "not formatted (run `cargo fmt -p lab-support -p lab-model`): {}{}",
        files.join(", "),
        last_lines(&String::from_utf8_lossy(&out.stderr), 3)
    )])
}

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
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
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
    let executed: Value = read_json(&out_file)?;
    let student = notebook.parent() == Some(&paths.root.join("notebooks"))
        && paths.root.join("notebooks/solutions").join(notebook.file_name().unwrap_or_default()).exists();
    let mut problems = check_outputs(&executed, student);
    if !out.status.success() {
        problems.push(format!("jupyter execute exited with {}: {}", out.status, last_lines(&String::from_utf8_lossy(&out.stderr), 5)));
    }
    Ok(Report { problems, seconds })
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
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let lab_support = paths.root.join("lab-support");
    let cells: Vec<Value> = cells
        .iter()
        .map(|src| {
            let src = src.replace("\"../lab-support\"", &format!("{:?}", lab_support.display().to_string()));
            json!({"cell_type": "code", "execution_count": null, "metadata": {}, "outputs": [], "source": src})
        })
        .collect();
    let nb = json!({"cells": cells, "metadata": kernel_metadata(), "nbformat": 4, "nbformat_minor": 5});
    let path = dir.join(format!("{name}.ipynb"));
    std::fs::write(&path, serde_json::to_string_pretty(&nb).map_err(|e| e.to_string())?).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut cmd = Command::new(paths.venv_bin("jupyter"));
    cmd.args(["execute", "--inplace", "--allow-errors", "--timeout=1800", "--startup_timeout=120", "--kernel_name=rust"]).arg(&path).current_dir(&dir);
    paths.jupyter_env(&mut cmd);
    cmd.envs(env.iter().copied());
    let status = cmd.status().map_err(|e| format!("could not run jupyter execute: {e}"))?;
    Ok((read_json(&path)?, status.success()))
}

/// The kernelspec metadata every lab notebook carries.
pub fn kernel_metadata() -> Value {
    json!({
        "kernelspec": {"display_name": "Rust (lab)", "language": "rust", "name": "rust"},
        "language_info": {"codemirror_mode": "rust", "file_extension": ".rs", "mimetype": "text/rust", "name": "Rust", "pygment_lexer": "rust", "version": ""}
    })
}

pub fn read_json(path: &Path) -> CliResult<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{} is not valid notebook JSON: {e}", path.display()))
}

/// A notebook cell's source as one string.
pub fn source_text(cell: &Value) -> String {
    match &cell["source"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().filter_map(Value::as_str).collect(),
        _ => String::new(),
    }
}

/// Every problem in an executed notebook's outputs.
///
/// A `student` notebook still holds `todo!()`s: there a cell may panic with "not yet
/// implemented", and checks may answer FAIL or NOT DONE. Compile errors are never allowed.
pub fn check_outputs(nb: &Value, student: bool) -> Vec<String> {
    let mut problems = Vec::new();
    let cells = nb["cells"].as_array().cloned().unwrap_or_default();
    for (i, cell) in cells.iter().enumerate().filter(|(_, c)| c["cell_type"] == "code") {
        let first_line = source_text(cell).lines().next().unwrap_or("").chars().take(60).collect::<String>();
        let label = format!("cell {} (`{first_line}`)", i + 1);
        if cell["execution_count"].is_null() && !source_text(cell).trim().is_empty() {
            problems.push(format!("{label}: was not executed"));
        }
        let outputs = cell["outputs"].as_array().cloned().unwrap_or_default();
        for out in outputs.iter().filter(|o| o["output_type"] == "error") {
            let text = format!("{}: {}", out["ename"].as_str().unwrap_or(""), out["evalue"].as_str().unwrap_or(""));
            problems.push(format!("{label}: error output: {}", last_lines(&text, 6)));
        }
        // evcxr sends a panic in several stderr pieces, and the last pieces (the backtrace) can
        // land in the next cell's outputs. In a student notebook, drop the panic's frame lines;
        // what remains must be a todo!() message.
        let stderr: String = outputs.iter().filter(|o| o["name"] == "stderr").map(output_text).collect();
        // A check that did not pass names itself on stderr too (for nbgrader); a student notebook
        // may have those.
        let stderr = if student {
            stderr.lines().filter(|l| !is_panic_frame(l) && !l.starts_with("FAIL ·") && !l.starts_with("NOT DONE ·")).collect::<Vec<_>>().join("\n")
        } else {
            stderr
        };
        let todo_panic = student && stderr.contains("not yet implemented");
        if !stderr.trim().is_empty() && !todo_panic {
            let line = stderr.lines().find(|l| !l.trim().is_empty() && !l.contains("panicked at")).unwrap_or("");
            problems.push(format!("{label}: stderr: {}", line.trim()));
        }
        let text: String = outputs.iter().filter(|o| o["name"] != "stderr").map(output_text).collect();
        // When evcxr cannot compile a call to `evcxr_display` for a cell's final value, it prints
        // the value's Debug text instead of the figure, silently.
        if let Some(kind) = FIGURES.iter().find(|f| text.trim_start().starts_with(&format!("{f} {{"))) {
            problems.push(format!("{label}: shows a {kind} as Debug text instead of drawing it (evcxr fell back from evcxr_display; define the cell's new variables in an earlier cell)"));
        }
        // evcxr merges everything a cell displays into one output; a notebook shows only the
        // richest of its kinds, so a second figure in the same cell silently disappears.
        for out in &outputs {
            let kinds: Vec<&str> = ["text/html", "image/svg+xml", "image/png"].into_iter().filter(|k| !out["data"][*k].is_null()).collect();
            if kinds.len() > 1 {
                problems.push(format!("{label}: shows {} in one output, and a notebook draws only the first: give each figure its own cell", kinds.join(" and ")));
            }
        }
        let allowed: &[&str] = if student { &["FAIL ·", "NOT DONE ·"] } else { &[] };
        for line in text.lines() {
            let bad = BAD_TEXT.iter().any(|b| line.contains(b)) && !allowed.iter().any(|a| line.contains(a));
            if bad {
                problems.push(format!("{label}: {}", line.trim()));
                break;
            }
        }
    }
    problems
}

/// A line of a panic report other than its message: the header, the backtrace, its footnote.
fn is_panic_frame(line: &str) -> bool {
    let t = line.trim();
    t.is_empty()
        || (t.starts_with("thread '") && t.contains("panicked at"))
        || t == "stack backtrace:"
        || t.starts_with("at ")
        || t.starts_with("note: Some details are omitted")
        || t.split_once(": ").is_some_and(|(n, _)| n.chars().all(|c| c.is_ascii_digit()))
}

/// A notebook text field, stored either as one string or as a list of lines.
pub fn join_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().filter_map(Value::as_str).collect(),
        _ => String::new(),
    }
}

/// The plain text of a stream or display output.
pub fn output_text(out: &Value) -> String {
    let join = join_text;
    match out["output_type"].as_str() {
        Some("stream") => join(&out["text"]),
        Some("execute_result") | Some("display_data") => join(&out["data"]["text/plain"]),
        _ => String::new(),
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nb(outputs: Value) -> Value {
        json!({"cells": [{"cell_type": "code", "execution_count": 1, "source": "x", "outputs": outputs}]})
    }

    fn stream(name: &str, text: &str) -> Value {
        json!({"output_type": "stream", "name": name, "text": text})
    }

    fn result(text: &str) -> Value {
        json!({"output_type": "execute_result", "data": {"text/plain": text}})
    }

    #[test]
    fn a_question_mark_error_on_stderr_fails_the_cell() {
        // What evcxr prints for `Err(e)?`: the bare message on stderr, nothing else.
        assert_eq!(check_outputs(&nb(json!([stream("stderr", "cannot read `x.png`\n")])), false).len(), 1);
        assert!(check_outputs(&nb(json!([stream("stdout", "fine\n")])), false).is_empty());
    }

    #[test]
    fn todo_panics_and_verdicts_pass_only_in_student_notebooks() {
        let todo = json!([stream("stderr", "\n"), stream("stderr", "thread '<unnamed>' panicked at src/lib.rs:3:5:\n"), stream("stderr", "not yet implemented: write it\n")]);
        assert!(check_outputs(&nb(todo.clone()), true).is_empty());
        assert!(!check_outputs(&nb(todo), false).is_empty());
        // The tail of a todo!() panic's backtrace, delivered into the next cell.
        let tail = json!([stream("stderr", "   3: evcxr::runtime::Runtime::run_loop\n"), stream("stderr", "note: Some details are omitted, run with `RUST_BACKTRACE=full` for a verbose backtrace.\n")]);
        assert!(check_outputs(&nb(tail.clone()), true).is_empty());
        assert!(!check_outputs(&nb(tail), false).is_empty());
        let other_panic = json!([stream("stderr", "thread '<unnamed>' panicked at src/lib.rs:3:5:\nindex out of bounds\n")]);
        assert!(!check_outputs(&nb(other_panic), true).is_empty());
        for verdict in ["FAIL · TODO 1 (x): expected a, got b", "NOT DONE · TODO 1 (x): replace the todo!()"] {
            assert!(check_outputs(&nb(json!([result(verdict)])), true).is_empty());
            assert!(!check_outputs(&nb(json!([result(verdict)])), false).is_empty());
        }
        assert!(check_outputs(&nb(json!([result("PASS · TODO 1 (x): ok")])), false).is_empty());
    }

    #[test]
    fn compile_errors_and_figures_shown_as_debug_text_always_fail() {
        let error = json!([{"output_type": "error", "ename": "Error", "evalue": "cannot find value `x`", "traceback": []}]);
        assert!(!check_outputs(&nb(error), true).is_empty());
        let debug = json!([result("LinePlot { title: \"t\", x_label: \"x\" }")]);
        assert!(check_outputs(&nb(debug), true)[0].contains("Debug text"));
        let unexecuted = json!({"cells": [{"cell_type": "code", "execution_count": null, "source": "let x = 1;", "outputs": []}]});
        assert!(check_outputs(&unexecuted, true)[0].contains("not executed"));
    }

    #[test]
    fn two_figures_in_one_output_fail() {
        let both = json!([{"output_type": "execute_result", "data": {"image/png": "iVBOR", "text/html": "<svg></svg>", "text/plain": ""}}]);
        assert!(check_outputs(&nb(both), true)[0].contains("its own cell"));
        let verdict = json!([{"output_type": "execute_result", "data": {"text/html": "<b>PASS</b>", "text/plain": "PASS"}}]);
        assert!(check_outputs(&nb(verdict), false).is_empty());
    }
}
