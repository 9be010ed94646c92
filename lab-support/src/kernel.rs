//! How lab-support behaves inside the notebooks' Rust kernel (evcxr): short panic reports.
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

use std::panic::PanicHookInfo;
use std::path::PathBuf;

/// Set by evcxr in the process that runs the cells.
const EVCXR: &str = "EVCXR_IS_RUNTIME";
/// Set once the hook is in place. Each cell links its own copy of lab-support, with its own
/// statics, so only the process environment is shared between them.
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
            None if location.file() != "src/lib.rs" => report.push_str(&format!("\n    at {}:{}", location.file(), location.line())),
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
    let so = maps.lines().rev().filter_map(|l| l.split_whitespace().nth(5)).find(|p| p.contains("/libcode_") && p.ends_with(".so"))?;
    let (dir, _) = so.split_once("/target/")?;
    Some(PathBuf::from(dir))
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
}
