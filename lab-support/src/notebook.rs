//! How lab-support behaves inside the notebooks' Rust kernel (evcxr): short panic reports,
//! progress lines for long work, values that show themselves, and calling a student's function
//! without letting its `todo!()` or panic crash the caller.
//!
//! evcxr runs every cell in a child process with `RUST_BACKTRACE=1` forced, so a `todo!()` that a
//! student has not written yet, or any other panic, prints a backtrace of a dozen frames through
//! evcxr's generated `src/lib.rs` that says nothing to a student. The hook installed here prints
//! the message and the line of the student's own cell that panicked, nothing else (set
//! `LAB_BACKTRACE=1` in the kernel's environment to get the backtrace back).
//!
//! There is no start-up hook for a crate in evcxr, so lab-support installs it the first time a
//! notebook loads anything (a model, a dataset, the approximator). A panic hook lives in the
//! standard library, which every cell shares, so it stays for the kernel's whole life; evcxr
//! never unloads a cell's code, so the hook's code stays valid. Outside evcxr (tests, programs)
//! nothing changes.

use std::panic::{catch_unwind, AssertUnwindSafe, PanicHookInfo};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Set by evcxr in the process that runs the cells.
const EVCXR: &str = "EVCXR_IS_RUNTIME";
/// Set once the hook is in place. In the environment, not a static: the cells share one
/// lab-support (its dylib), but a cell built against the rlib has a copy with its own statics,
/// and the process environment is the one thing every copy sees.
const INSTALLED: &str = "LAB_SUPPORT_PANIC_HOOK";
/// Set once the note about lost variables has been shown.
const NOTE_SHOWN: &str = "LAB_SUPPORT_LOST_VARIABLES_NOTE";

/// True inside the notebooks' kernel.
pub fn in_notebook() -> bool {
    std::env::var_os(EVCXR).is_some()
}

/// Installs the short panic report, once per kernel; does nothing outside a notebook.
pub fn init() {
    if !in_notebook() || std::env::var_os(INSTALLED).is_some() {
        return;
    }
    std::env::set_var(INSTALLED, "1");
    // Errors from candle carry a captured backtrace in their text when backtraces are on; they
    // are only meant for panics here.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    if std::env::var_os("LAB_BACKTRACE").is_some_and(|v| v != "0") {
        return;
    }
    std::panic::set_hook(Box::new(|info| {
        eprintln!("{}", panic_report(info));
        // evcxr sends stderr to the notebook line by line from another thread, to whichever cell
        // is running when a line arrives: without a pause, the report's last lines can reach the
        // notebook after this cell has finished and land in the next cell, or nowhere.
        std::thread::sleep(std::time::Duration::from_millis(100));
    }));
}

/// The note evcxr's behaviour calls for after a cell stops early, shown once per kernel.
///
/// When a cell stops at an error or a panic, evcxr keeps none of the variables that cell was
/// creating, so every later cell that uses them fails with "cannot find value": the real cause is
/// the first error, not those.
pub fn lost_variables_note() -> Option<&'static str> {
    if !in_notebook() || std::env::var_os(NOTE_SHOWN).is_some() {
        return None;
    }
    std::env::set_var(NOTE_SHOWN, "1");
    // One line: evcxr forwards a line at a time, and a cell that stopped at an error finishes
    // at once, so a second line may arrive after it and be lost.
    Some(
        " (This cell stopped here, so the variables it was creating do not exist: later cells that \
         use them will say `cannot find value`. Fix this cell and run it again, then go on.)",
    )
}

fn panic_report(info: &PanicHookInfo<'_>) -> String {
    let message = info
        .payload()
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| info.payload().downcast_ref::<&str>().copied())
        .unwrap_or("a panic without a message");
    let mut report = message.to_string();
    if let Some(location) = info.location() {
        match cell_line(location.file(), location.line()) {
            Some(line) => report.push_str(&format!("\n    in your code: {}", line.trim())),
            // Not the cell's own code: a library (lab-support, candle, std) panicked.
            None if location.file() != "src/lib.rs" => {
                report.push_str(&format!("\n    at {}:{}", location.file(), location.line()))
            }
            None => {}
        }
    }
    if let Some(note) = lost_variables_note() {
        report.push('\n');
        report.push_str(note.trim_start());
    }
    report
}

/// The text of line `line` of the running cell, when `file` is the cell's generated source.
///
/// evcxr compiles each cell as a crate whose source is `<dir>/src/lib.rs` and loads it from
/// `<dir>/target/.../libcode_<n>.so`; the process's memory map says where that is.
fn cell_line(file: &str, line: u32) -> Option<String> {
    if file != "src/lib.rs" {
        return None;
    }
    let source = std::fs::read_to_string(cell_crate_dir()?.join("src/lib.rs")).ok()?;
    let text = source.lines().nth(line.checked_sub(1)? as usize)?;
    (!text.trim().is_empty()).then(|| text.to_string())
}

fn cell_crate_dir() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let so = maps
        .lines()
        .rev()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("/libcode_") && p.ends_with(".so"))?;
    let (dir, _) = so.split_once("/target/")?;
    Some(PathBuf::from(dir))
}

/// A cell's last value, shown the way evcxr shows it (its `Debug` text), in one compilation
/// instead of two.
///
/// evcxr compiles a cell that ends in a value first with `value.evcxr_display()`, for the types
/// that draw themselves (the lab's figures and checks), and when that does not compile, a second
/// time with the value's `Debug` text: every `a`, `x.len()` or `prediction.class` at the end of a
/// cell cost a failed build, about 0.2 s of the student's wait. With this trait in the prelude,
/// every `Debug` value has an `evcxr_display` that sends that same text, and the first build
/// works. A type's own `evcxr_display` (a figure's) still comes first: an inherent method wins
/// over a trait's.
pub trait ShowValue {
    /// Sends the value's `Debug` text to the notebook, as evcxr's own fallback would.
    fn evcxr_display(&self);
}

impl<T: std::fmt::Debug + ?Sized> ShowValue for T {
    fn evcxr_display(&self) {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "EVCXR_BEGIN_CONTENT text/plain\n{self:?}\nEVCXR_END_CONTENT\n");
        let _ = out.flush();
    }
}

/// Progress of long work, shown in a notebook as a few lines while it runs, the way a Python
/// student sees a progress bar: nothing for work done within 2 s, then a line at most every 10% of
/// the work (and at least 1 s apart), then one line at the end.
///
/// Lines, not one updating line: evcxr sends a cell's output to the notebook a whole line at a
/// time, so a line rewritten in place with `\r` would only appear when the work is done. Outside
/// a notebook (tests, programs) it prints nothing.
///
/// ```
/// use lab_support::notebook::Progress;
/// let mut progress = Progress::new("training 6 networks", 6);
/// for seed in 0..6 {
///     // ... train one network ...
///     progress.update(seed + 1);
/// }
/// progress.finish();
/// ```
pub struct Progress {
    label: String,
    total: usize,
    start: Instant,
    last_line: Option<(Instant, usize)>,
    show: bool,
}

/// Work shorter than this shows no progress at all.
const QUIET_FOR: Duration = Duration::from_secs(2);

impl Progress {
    /// Progress of `total` units of work, named `label`.
    pub fn new(label: impl Into<String>, total: usize) -> Self {
        Progress {
            label: label.into(),
            total: total.max(1),
            start: Instant::now(),
            last_line: None,
            show: in_notebook(),
        }
    }

    /// Records that `done` units are finished, printing a line when one is due.
    pub fn update(&mut self, done: usize) {
        let now = Instant::now();
        if let Some(line) = self.line_due(now, done) {
            self.last_line = Some((now, done));
            if self.show {
                println!("{line}");
            }
        }
    }

    /// Prints the closing line, if any progress was shown.
    pub fn finish(self) {
        if self.show && self.last_line.is_some() {
            println!("{}: done in {:.0} s", self.label, self.start.elapsed().as_secs_f64());
        }
    }

    /// The line to print at `now` with `done` units finished, if one is due.
    fn line_due(&self, now: Instant, done: usize) -> Option<String> {
        let elapsed = now.duration_since(self.start);
        if elapsed < QUIET_FOR || done == 0 || done >= self.total {
            return None;
        }
        if let Some((at, was)) = self.last_line {
            if now.duration_since(at) < Duration::from_secs(1) || (done - was.min(done)) * 10 < self.total {
                return None;
            }
        }
        let left = elapsed.as_secs_f64() * (self.total - done) as f64 / done as f64;
        Some(format!(
            "{}: {:.0}% after {:.0} s, about {:.0} s to go",
            self.label,
            100.0 * done as f64 / self.total as f64,
            elapsed.as_secs_f64(),
            left.ceil()
        ))
    }
}

/// The outcome of calling a student's function.
pub enum StudentCall<T> {
    /// It returned (maybe an `Err`).
    Returned(T),
    /// It hit a `todo!()`; the message is the todo's text.
    Todo(String),
    /// It panicked for another reason.
    Panicked(String),
}

/// Calls `f`, catching a panic without printing it: a `todo!()` or a bug in a student's code
/// must not crash the check that runs it.
pub fn call_student<T>(f: impl FnOnce() -> T) -> StudentCall<T> {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let outcome = catch_unwind(AssertUnwindSafe(f));
    std::panic::set_hook(previous);
    match outcome {
        Ok(v) => StudentCall::Returned(v),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic without a message".into());
            match msg.strip_prefix("not yet implemented") {
                Some(rest) => StudentCall::Todo(rest.trim_start_matches(':').trim().to_string()),
                None => StudentCall::Panicked(msg),
            }
        }
    }
}

thread_local! {
    /// The library functions called while a check watches a student's function (see
    /// [`watch_library_calls`]); `None` when no check is watching.
    static LIBRARY_CALLS: std::cell::RefCell<Option<Vec<&'static str>>> = const { std::cell::RefCell::new(None) };
    /// How many marked lab functions the current call is inside.
    static LIBRARY_DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A marked lab function's run: while it lasts, the lab functions it calls are not noted.
pub(crate) struct LibraryCall(());

impl Drop for LibraryCall {
    fn drop(&mut self) {
        LIBRARY_DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// Notes that the lab's function `name` runs, for a check that is watching a student's function:
/// the lab's functions that can do a TODO's whole job call it first thing and keep the guard for
/// their whole run (`let _call = library_call("pgd");`). Only the outermost one is noted: `fgsm`
/// is one step of `pgd` and says `fgsm`, not `pgd`. Costs two thread-local reads when nothing
/// watches.
pub(crate) fn library_call(name: &'static str) -> LibraryCall {
    LIBRARY_DEPTH.with(|d| {
        if d.get() == 0 {
            LIBRARY_CALLS.with(|calls| {
                if let Some(calls) = calls.borrow_mut().as_mut() {
                    if !calls.contains(&name) {
                        calls.push(name);
                    }
                }
            });
        }
        d.set(d.get() + 1);
    });
    LibraryCall(())
}

/// Runs `f` and returns, with its value, the names of the lab's functions it called (those that
/// note themselves with [`library_call`]), in the order of their first call. A student's function
/// runs on the check's thread, so a thread-local sees exactly its calls, also while tests run
/// side by side.
pub(crate) fn watch_library_calls<T>(f: impl FnOnce() -> T) -> (T, Vec<&'static str>) {
    let outer = LIBRARY_CALLS.with(|calls| calls.borrow_mut().replace(Vec::new()));
    let depth = LIBRARY_DEPTH.with(|d| d.replace(0));
    // A panic inside `f` is caught by the caller's `call_student`, inside this call: `f` itself
    // does not unwind past here.
    let value = f();
    LIBRARY_DEPTH.with(|d| d.set(depth));
    let seen = LIBRARY_CALLS.with(|calls| std::mem::replace(&mut *calls.borrow_mut(), outer)).unwrap_or_default();
    (value, seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_cells_own_source_is_quoted() {
        assert_eq!(cell_line("src/model.rs", 3), None);
        assert_eq!(cell_line("/home/x/.cargo/registry/src/candle-core/src/tensor.rs", 10), None);
    }

    #[test]
    fn outside_a_notebook_nothing_is_installed() {
        assert!(!in_notebook(), "tests do not run inside evcxr");
        init();
        assert!(std::env::var_os(INSTALLED).is_none());
        assert!(lost_variables_note().is_none());
    }

    #[test]
    fn progress_is_quiet_at_first_then_a_line_every_tenth() {
        let p = Progress::new("work", 100);
        let t0 = p.start;
        assert_eq!(p.line_due(t0 + Duration::from_millis(1500), 50), None, "quiet for the first 2 s");
        let first = p.line_due(t0 + Duration::from_secs(3), 30).expect("a line after 2 s");
        assert_eq!(first, "work: 30% after 3 s, about 7 s to go");
        let mut p = p;
        p.last_line = Some((t0 + Duration::from_secs(3), 30));
        assert_eq!(p.line_due(t0 + Duration::from_secs(5), 35), None, "less than a tenth more");
        assert_eq!(p.line_due(t0 + Duration::from_millis(3500), 45), None, "less than a second later");
        assert!(p.line_due(t0 + Duration::from_secs(5), 40).is_some());
        assert_eq!(p.line_due(t0 + Duration::from_secs(9), 100), None, "the end is finish()'s line");
    }

    #[test]
    fn a_watch_sees_the_library_calls_made_inside_it_and_only_those() {
        drop(library_call("before"));
        let ((), seen) = watch_library_calls(|| {
            drop(library_call("simba"));
            drop(library_call("pgd"));
            drop(library_call("simba"));
        });
        assert_eq!(seen, ["simba", "pgd"]);
        let ((), seen) = watch_library_calls(|| {
            let _fgsm = library_call("fgsm");
            drop(library_call("pgd"));
        });
        assert_eq!(seen, ["fgsm"], "only the outermost lab function is noted");
        let (_, seen) = watch_library_calls(|| {
            call_student(|| -> () {
                let _pgd = library_call("pgd");
                todo!()
            })
        });
        assert_eq!(seen, ["pgd"]);
        let ((), seen) = watch_library_calls(|| drop(library_call("after a panic")));
        assert_eq!(seen, ["after a panic"], "a panic unwinding through a marked function leaves no depth behind");
        drop(library_call("after"));
        let ((), seen) = watch_library_calls(|| {
            let ((), inner) = watch_library_calls(|| drop(library_call("inner")));
            assert_eq!(inner, ["inner"]);
            drop(library_call("outer"));
        });
        assert_eq!(seen, ["outer"], "an inner watch keeps its calls and gives the outer one back");
    }
}
