//! Instant checks for the notebooks' TODO cells.
//!
//! Each check runs your function on fixed inputs, compares it with the reference implementation
//! (and, for gradients, with finite differences), and answers with one line: a pass, or a fail
//! that says what was expected, what came back and the most likely cause. A check never panics
//! on a wrong answer, and a function still holding `todo!()` gets a friendly reminder instead of a
//! crash; the kernel keeps all its variables.
//!
//! ```
//! use lab_support::prelude::*;
//! fn step(x: &Tensor, grad: &Tensor, step_size: f64) -> Result<Tensor> {
//!     clamp_pixels(&(x - (grad * step_size)?)?)
//! }
//! assert!(check::descent_step(step).passed());
//! # Ok::<(), LabError>(())
//! ```

mod nb01;
mod nb03;
mod nb04;
mod nb05;
mod nb06;
#[cfg(test)]
mod tests;

pub use nb01::train_step;
pub use nb03::{
    challenge, craft, descent_step, input_grad, judge_challenge, untargeted_l2, within_budget, Challenge,
    CHALLENGE_CALLS, CHALLENGE_EPS, CHALLENGE_INDEX, CHALLENGE_TARGET,
};
pub use nb04::{adversarial_step, check_trainable, Trainable};
pub use nb05::{bpda_attack, quantized_model, simba_attack, BpdaTerms, BPDA_CHECK, SIMBA_CHECK, SIMBA_DIGITS};
pub use nb06::{certify_smoothed, ibp_margins, interval_linear, SmoothingTerms, SMOOTHING_CHECK, SMOOTHING_DIGITS};

use crate::error::{LabError, Result};
use crate::notebook::{call_student, StudentCall};
use candle_core::{DType, Tensor};
use std::fmt;

/// The reference answers the checks compare with stay inside this crate, so no notebook reaches
/// them, through `check::`, a method, the prelude or the documentation. Each block below must
/// fail to compile:
///
/// ```compile_fail
/// let _ = lab_support::check::reference_craft;
/// ```
/// ```compile_fail
/// let _ = lab_support::check::reference_untargeted_l2;
/// ```
/// ```compile_fail
/// let _ = lab_support::check::reference_adversarial_step;
/// ```
/// ```compile_fail
/// let _ = lab_support::approx::Mlp::reference_step;
/// ```
#[allow(dead_code)]
const REFERENCES_STAY_INSIDE: () = ();

/// The MIME type of a verdict's own part of its output (JupyterLab shows the HTML part).
pub const VERDICT_MIME: &str = "application/vnd.lab.verdict+json";

/// What a check concluded. In a notebook it shows as one line.
#[derive(Clone, PartialEq)]
pub struct Verdict {
    /// Which TODO it checks, such as "TODO 1 (input gradient)".
    pub todo: &'static str,
    pub outcome: Outcome,
    pub message: String,
}

/// Pass, fail, or not written yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail,
    NotDone,
}

impl Verdict {
    fn pass(todo: &'static str, message: impl Into<String>) -> Self {
        Verdict { todo, outcome: Outcome::Pass, message: message.into() }
    }

    fn fail(todo: &'static str, expected: impl fmt::Display, got: impl fmt::Display, cause: impl fmt::Display) -> Self {
        Verdict {
            todo,
            outcome: Outcome::Fail,
            message: format!("expected {expected}, got {got}. Likely cause: {cause}"),
        }
    }

    /// True if the check passed.
    pub fn passed(&self) -> bool {
        self.outcome == Outcome::Pass
    }

    /// Shows the verdict in a notebook cell: coloured in HTML, which JupyterLab shows, and as the
    /// cell's `text/plain`, which is what an autograder reads.
    pub fn evcxr_display(&self) {
        let mut out = String::new();
        for (mime, content) in self.contents() {
            out.push_str(&format!("EVCXR_BEGIN_CONTENT {mime}\n{content}\nEVCXR_END_CONTENT\n"));
        }
        print!("{out}");
    }

    /// What the verdict shows, by MIME type. The `text/plain` of a check that did not pass is
    /// `0`: nbgrader scores a grade cell by its first result, and reads a number there as the
    /// points earned (`nbgrader.utils.determine_grade`), so a FAIL or NOT DONE is 0 points on the
    /// same output that shows it. A PASS's line is no number, which nbgrader reads as full marks.
    /// Nothing goes to stderr: evcxr forwards stderr on a thread of its own, where a line can
    /// arrive after the cell's end, and a grade must not hang on that race. The third part,
    /// [`VERDICT_MIME`], marks the output as a verdict for the lab's grading, which puts it first
    /// in its cell (lab/kernel-pool/lab_grading.py): whatever else the cell printed, and in
    /// whatever order evcxr delivered it, the verdict the student saw is the grade.
    pub fn contents(&self) -> [(&'static str, String); 3] {
        let (color, outcome) = match self.outcome {
            Outcome::Pass => ("#1a7f37", "pass"),
            Outcome::Fail => ("#cf222e", "fail"),
            Outcome::NotDone => ("#9a6700", "not done"),
        };
        let html = format!(
            "<div style=\"border-left:4px solid {color};padding:4px 10px;font-family:sans-serif\"><b style=\"color:{color}\">{}</b> {}</div>",
            escape_html(&self.headline()),
            escape_html(&self.message)
        );
        let plain = if self.passed() { self.to_string() } else { "0".to_string() };
        let json = format!(
            "{{\"outcome\": \"{outcome}\", \"todo\": {}, \"message\": {}}}",
            json_string(self.todo),
            json_string(&self.message)
        );
        [("text/html", html), ("text/plain", plain), (VERDICT_MIME, json)]
    }

    fn headline(&self) -> String {
        match self.outcome {
            Outcome::Pass => format!("PASS · {}:", self.todo),
            Outcome::Fail => format!("FAIL · {}:", self.todo),
            Outcome::NotDone => format!("NOT DONE · {}:", self.todo),
        }
    }
}

impl fmt::Debug for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::plot::debug_figure(f, "Verdict", &self.to_string(), || self.evcxr_display())
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.headline(), self.message)
    }
}

/// `s` as a JSON string, quotes included.
fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Why a check stopped before its last line: its verdict is already known (the student's function
/// hit a `todo!()`, panicked, returned an `Err` or something plainly wrong), or the check itself
/// could not run (a missing data file, say).
enum Stop {
    Verdict(Verdict),
    Broken(LabError),
}

impl From<LabError> for Stop {
    fn from(e: LabError) -> Self {
        Stop::Broken(e)
    }
}

impl From<candle_core::Error> for Stop {
    fn from(e: candle_core::Error) -> Self {
        Stop::Broken(e.into())
    }
}

/// What a check's body returns: `?` on the student's call ([`run_student`]) or on the lab's own
/// work ends the check with the right verdict.
type Checking<T> = std::result::Result<T, Stop>;

/// Runs a check's body and turns how it stopped into the one verdict it shows.
fn check(todo: &'static str, body: impl FnOnce() -> Checking<Verdict>) -> Verdict {
    match body() {
        Ok(verdict) | Err(Stop::Verdict(verdict)) => verdict,
        Err(Stop::Broken(e)) => Verdict {
            todo,
            outcome: Outcome::Fail,
            message: format!("the check itself could not run: {}", e.message()),
        },
    }
}

/// Runs a student's function: its value, or (through `?`) the verdict on its todo, panic or `Err`.
fn run_student<T>(todo: &'static str, f: impl FnOnce() -> Result<T>) -> Checking<T> {
    run_own(todo, &[], f)
}

/// [`run_student`] for a TODO the student must write themselves: a FAIL if their function called
/// one of `whole_job`, the lab's functions that do the TODO's whole job (`input_gradient` for a
/// TODO that asks for the input gradient).
fn run_own<T>(todo: &'static str, whole_job: &[&'static str], f: impl FnOnce() -> Result<T>) -> Checking<T> {
    run_without(todo, whole_job, &[], f)
}

/// The lab's functions that read a model's gradient: off limits to a score-only attack.
const WHITE_BOX: [&str; 6] = ["input_gradient", "fgsm", "pgd", "apgd", "bpda_pgd", "targeted_descent"];

/// [`run_own`] that also fails a function that called one of `white_box`, the lab's functions a
/// score-only attack may not use.
fn run_without<T>(
    todo: &'static str,
    whole_job: &[&'static str],
    white_box: &[&'static str],
    f: impl FnOnce() -> Result<T>,
) -> Checking<T> {
    let (call, called) = crate::notebook::watch_library_calls(|| call_student(f));
    let refuse = |message: String| Err(Stop::Verdict(Verdict { todo, outcome: Outcome::Fail, message }));
    if let Some(name) = called.iter().find(|name| whole_job.contains(name)) {
        return refuse(format!(
            "this TODO asks you to write it yourself; `{name}` is what you are building, and your function called it."
        ));
    }
    if let Some(name) = called.iter().find(|name| white_box.contains(name)) {
        return refuse(format!(
            "a score-only attack sees nothing but the black box's answers, and your function called `{name}`, which reads the model's gradient: ask `black_box.probabilities` instead."
        ));
    }
    let verdict = match call {
        StudentCall::Returned(Ok(v)) => return Ok(v),
        StudentCall::Returned(Err(e)) => {
            Verdict::fail(todo, "a value", format!("an error: {}", e.message()), cause_of_error(&e.message()))
        }
        StudentCall::Todo(msg) => Verdict {
            todo,
            outcome: Outcome::NotDone,
            message: format!(
                "replace the `todo!()` with your code{}, run that cell, then run this check again.",
                if msg.is_empty() { String::new() } else { format!(" ({msg})") }
            ),
        },
        StudentCall::Panicked(msg) => Verdict::fail(todo, "a value", format!("a panic: {msg}"), cause_of_error(&msg)),
    };
    Err(Stop::Verdict(verdict))
}

fn cause_of_error(msg: &str) -> &'static str {
    if msg.contains("None") || msg.contains("no gradient") {
        "the gradient is None: it did not reach your input. Make the input a `Var` (`Var::from_tensor`) and ask `grads.get(x.as_tensor())`; and compute the loss from logits with log-softmax or cross-entropy, because `softmax_last_dim` has no backward pass"
    } else if msg.contains("reads pixels in [0, 1]") {
        "a pixel left [0, 1]: clamp every candidate (`.clamp(0.0, 1.0)` on a pixel, `clamp_pixels` on a tensor) before you ask the model about it"
    } else if msg.contains("query budget") {
        "the black box refused: its query budget was spent. Stop as soon as its answer is wrong, ask one query per candidate, and count the first query (of the clean digit) too"
    } else if msg.contains("strictly between 0 and 1") {
        "`normal_quantile` got a probability of exactly 0 or 1, the empirical `k / n` when every vote agrees: pass it the lower confidence bound, `clopper_pearson_lower(k, n, alpha)?`, which stays below 1"
    } else if msg.contains("shape") {
        "a shape mismatch: keep the batch shape [1, 1, 28, 28] all the way through"
    } else if msg.contains("dtype") {
        "a dtype mismatch: class indices are u32, pixels f32"
    } else {
        "read the error above; the reference steps are in the notebook's text"
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_dtype(DType::F32)?.to_scalar::<f32>()?)
}

fn max_abs(a: &Tensor) -> Result<f32> {
    Ok(a.abs()?.flatten_all()?.max(0)?.to_dtype(DType::F32)?.to_scalar::<f32>()?)
}

fn dot(a: &Tensor, b: &Tensor) -> Result<f64> {
    Ok((a.flatten_all()?.to_dtype(DType::F64)? * b.flatten_all()?.to_dtype(DType::F64)?)?
        .sum_all()?
        .to_scalar::<f64>()?)
}

/// Cosine similarity of two tensors, and the ratio of their lengths.
fn compare(got: &Tensor, want: &Tensor) -> Result<(f64, f64)> {
    let (gg, ww, gw) = (dot(got, got)?, dot(want, want)?, dot(got, want)?);
    Ok((gw / (gg.sqrt() * ww.sqrt()).max(1e-30), (gg / ww.max(1e-30)).sqrt()))
}

/// A FAIL when the student's tensor differs from `like` in shape or element type: the comparisons
/// that follow need both to match (a tensor of f64 cannot be subtracted from one of f32).
fn mismatch(todo: &'static str, got: &Tensor, like: &Tensor, what: &str, shape_fix: &str) -> Option<Verdict> {
    if got.dims() != like.dims() {
        return Some(Verdict::fail(
            todo,
            format!("{what} of shape {:?}", like.dims()),
            format!("shape {:?}", got.dims()),
            shape_fix,
        ));
    }
    if got.dtype() != like.dtype() {
        return Some(Verdict::fail(
            todo,
            format!("{what} of {:?} values, like the image", like.dtype()),
            format!("{:?} values", got.dtype()),
            format!(
                "a conversion crept in: convert back with `.to_dtype(DType::{:?})?` before returning",
                like.dtype()
            ),
        ));
    }
    None
}

/// "an" before a class name read aloud with a vowel ("an 8"), "a" otherwise.
pub fn article(class: u32) -> &'static str {
    if class == 8 {
        "an"
    } else {
        "a"
    }
}
