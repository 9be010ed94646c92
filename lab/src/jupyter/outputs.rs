//! What an executed notebook's outputs say went wrong.
//!
//! evcxr reports a panic or a `?` error as a cell that ran fine, so passing through nbclient
//! proves little: `check_outputs` reads the executed notebook and finds any error output, any
//! panic or compiler-error text and any failed check line.

use crate::ipynb::{join_text, output_text, source_text};
use crate::sys::text::last_lines;
use serde_json::Value;

/// Text that means something went wrong even though the kernel called the cell a success.
/// (Anything on stderr counts too: evcxr prints a `?` error there as its bare message.)
const BAD_TEXT: [&str; 5] = ["panicked at", "error[E", "FAIL", "NOT DONE", "thread '"];

/// lab-support's displayable types.
pub const FIGURES: [&str; 8] =
    ["LinePlot", "BarChart", "ImageGrid", "Figure", "Stack", "Table", "Verdict", "Challenge"];

/// Every problem in an executed notebook's outputs.
///
/// A `student` notebook still holds `todo!()`s: there a cell may panic with "not yet
/// implemented", and checks may answer FAIL or NOT DONE. Compile errors are never allowed.
pub fn check_outputs(nb: &Value, student: bool) -> Vec<String> {
    let mut problems = Vec::new();
    // After evcxr's process that runs the cells died, every variable is gone: the errors of later
    // cells that used one only repeat that, and are counted instead of listed.
    let (mut died, mut lost) = (false, 0);
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
            if died && text.contains("cannot find value") {
                lost += 1;
                continue;
            }
            died |= text.contains("Subprocess terminated");
            problems.push(format!("{label}: error output: {}", last_lines(&text, 6)));
        }
        // evcxr sends a panic in several stderr pieces, and the last pieces (the backtrace) can
        // land in the next cell's outputs. In a student notebook, drop the panic's frame lines;
        // what remains must be a todo!() message.
        let stderr: String = outputs.iter().filter(|o| o["name"] == "stderr").map(output_text).collect();
        let stderr =
            if student { stderr.lines().filter(|l| !is_panic_frame(l)).collect::<Vec<_>>().join("\n") } else { stderr };
        let todo_panic = student && stderr.contains("not yet implemented");
        if !stderr.trim().is_empty() && !todo_panic {
            let line = stderr.lines().find(|l| !l.trim().is_empty() && !l.contains("panicked at")).unwrap_or("");
            problems.push(format!("{label}: stderr: {}", line.trim()));
        }
        let mut text: String = outputs.iter().filter(|o| o["name"] != "stderr").map(output_text).collect();
        // A check's verdict shows its words in HTML; its `text/plain`, which nbgrader scores, is
        // `0` when it did not pass (lab_support::check::Verdict).
        text.extend(outputs.iter().filter_map(verdict_line).map(|l| format!("\n{l}")));
        // When evcxr cannot compile a call to `evcxr_display` for a cell's final value, it prints
        // the value's Debug text instead of the figure, silently.
        if let Some(kind) = FIGURES.iter().find(|f| text.trim_start().starts_with(&format!("{f} {{"))) {
            problems.push(format!("{label}: shows a {kind} as Debug text instead of drawing it (evcxr fell back from evcxr_display; define the cell's new variables in an earlier cell)"));
        }
        // evcxr merges everything a cell displays into one output; a notebook shows only the
        // richest of its kinds, so a second figure in the same cell silently disappears.
        for out in &outputs {
            let kinds: Vec<&str> = ["text/html", "image/svg+xml", "image/png"]
                .into_iter()
                .filter(|k| !out["data"][*k].is_null())
                .collect();
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
    if lost > 0 {
        problems.push(format!(
            "and {lost} error(s) in later cells that used a variable the kernel's process lost when it died"
        ));
    }
    problems
}

/// The words of a check's verdict (`FAIL · TODO 1 (...): ...`) when `out` shows one that did not
/// pass, read from its HTML without the tags.
pub fn verdict_line(out: &Value) -> Option<String> {
    let html = join_text(&out["data"]["text/html"]);
    if !(html.contains(">FAIL · ") || html.contains(">NOT DONE · ")) {
        return None;
    }
    Some(strip_tags(&html))
}

/// The text of a piece of HTML: its tags dropped and the entities a verdict uses decoded.
pub fn strip_tags(html: &str) -> String {
    let mut words = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => words.push(c),
            _ => {}
        }
    }
    words.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&").trim().to_string()
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
        let todo = json!([
            stream("stderr", "\n"),
            stream("stderr", "thread '<unnamed>' panicked at src/lib.rs:3:5:\n"),
            stream("stderr", "not yet implemented: write it\n")
        ]);
        assert!(check_outputs(&nb(todo.clone()), true).is_empty());
        assert!(!check_outputs(&nb(todo), false).is_empty());
        // The tail of a todo!() panic's backtrace, delivered into the next cell.
        let tail = json!([
            stream("stderr", "   3: evcxr::runtime::Runtime::run_loop\n"),
            stream(
                "stderr",
                "note: Some details are omitted, run with `RUST_BACKTRACE=full` for a verbose backtrace.\n"
            )
        ]);
        assert!(check_outputs(&nb(tail.clone()), true).is_empty());
        assert!(!check_outputs(&nb(tail), false).is_empty());
        let other_panic =
            json!([stream("stderr", "thread '<unnamed>' panicked at src/lib.rs:3:5:\nindex out of bounds\n")]);
        assert!(!check_outputs(&nb(other_panic), true).is_empty());
        // A verdict as lab-support shows it: its words in HTML, and `0` as the plain text when it
        // did not pass.
        let verdict = |head: &str, plain: &str| {
            json!([{"output_type": "execute_result", "data": {
                "text/html": format!("<div style=\"x\"><b style=\"color:#cf222e\">{head}</b> expected a, got b</div>"),
                "text/plain": plain}}])
        };
        for head in ["FAIL · TODO 1 (x):", "NOT DONE · TODO 1 (x):"] {
            assert!(check_outputs(&nb(verdict(head, "0")), true).is_empty());
            let problems = check_outputs(&nb(verdict(head, "0")), false);
            assert!(problems.len() == 1 && problems[0].contains(head), "{problems:?}");
        }
        assert!(check_outputs(&nb(verdict("PASS · TODO 1 (x):", "PASS · TODO 1 (x): ok")), false).is_empty());
    }

    #[test]
    fn compile_errors_and_figures_shown_as_debug_text_always_fail() {
        let error =
            json!([{"output_type": "error", "ename": "Error", "evalue": "cannot find value `x`", "traceback": []}]);
        assert!(!check_outputs(&nb(error), true).is_empty());
        let debug = json!([result("LinePlot { title: \"t\", x_label: \"x\" }")]);
        assert!(check_outputs(&nb(debug), true)[0].contains("Debug text"));
        let unexecuted =
            json!({"cells": [{"cell_type": "code", "execution_count": null, "source": "let x = 1;", "outputs": []}]});
        assert!(check_outputs(&unexecuted, true)[0].contains("not executed"));
    }

    /// After the kernel's process died, the errors of cells that used its lost variables are
    /// counted: the first cause stays in view, not buried under its echoes.
    #[test]
    fn errors_after_the_kernels_process_died_are_counted_not_listed() {
        let error = |text: &str| json!([{"output_type": "error", "ename": "Error", "evalue": text, "traceback": []}]);
        let cell =
            |outputs: Value| json!({"cell_type": "code", "execution_count": 1, "source": "x", "outputs": outputs});
        let died = json!({"cells": [
            cell(error("cannot find value `y` in this scope")),
            cell(error("Subprocess terminated with status: exit status: 99")),
            cell(error("cannot find value `model` in this scope")),
            cell(error("cannot find value `x` in this scope")),
            cell(error("mismatched types")),
        ]});
        let problems = check_outputs(&died, false);
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].contains("`y`") && problems[1].contains("Subprocess terminated"), "{problems:?}");
        assert!(problems[2].contains("mismatched types"), "{problems:?}");
        assert!(problems[3].starts_with("and 2 error(s) in later cells"), "{problems:?}");
    }

    #[test]
    fn two_figures_in_one_output_fail() {
        let both = json!([{"output_type": "execute_result", "data": {"image/png": "iVBOR", "text/html": "<svg></svg>", "text/plain": ""}}]);
        assert!(check_outputs(&nb(both), true)[0].contains("its own cell"));
        let verdict =
            json!([{"output_type": "execute_result", "data": {"text/html": "<b>PASS</b>", "text/plain": "PASS"}}]);
        assert!(check_outputs(&nb(verdict), false).is_empty());
    }
}
