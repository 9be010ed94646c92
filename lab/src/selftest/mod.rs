//! `cargo lab test`: the crate's tests and the format check, then every notebook executed
//! headless (`notebooks`; those the browser test runs, there instead), then the test groups,
//! each of which `--notebook <group>` runs alone: `kernel`, `spare`, `hub`, `grading`, `server`
//! and `browser`.
//!
//! evcxr reports a panic or a `?` error as a cell that ran fine, so passing through nbclient
//! proves little. After each run we read the executed notebook and fail on any error output,
//! any panic or compiler-error text and any failed check line (`jupyter::outputs`).

pub mod browser;
pub mod grading;
pub mod hub;
pub mod kernel;
pub mod notebooks;
pub mod server;
pub mod spare;

use crate::cmd::setup::ensure;
use crate::paths::Paths;
use crate::sys::text::last_lines;
use crate::sys::CliResult;
use std::process::Command;
use std::time::{Duration, Instant};

/// What a Jupyter server with the lab's extension logs when its kernels get the lab's kernel
/// manager (lab/kernel-pool/lab_kernel_pool.py), which keeps evcxr alive through Jupyter's nudge.
pub const LAB_KERNEL_MANAGER_LINE: &str = "lab kernel pool: kernels are managed by LabKernelManager";
/// The longest a test waits for one cell: with four kernels at once on two cores, all of
/// notebook 03 takes about 120 s.
pub const CELL_LIMIT: Duration = Duration::from_secs(300);

/// One test group after the notebooks: it returns the problems it found.
type GroupTest = dyn Fn(&Paths) -> CliResult<Vec<String>>;

/// Passed and failed tests, and the names and first problems of the failed ones.
#[derive(Default)]
struct Tally {
    passed: usize,
    failed: usize,
    failures: Vec<(String, Vec<String>)>,
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
            // Repeated at the end: CI may show only the start and the end of a long output.
            let first = problems.iter().take(2).map(|p| p.chars().take(400).collect()).collect();
            self.failures.push((name, first));
        }
    }
}

/// `cargo lab test`.
pub fn test(filter: Option<&str>) -> CliResult<()> {
    let paths = Paths::new();
    let mut tally = Tally::default();
    let whole = Instant::now();
    // Where the time went, printed last: CI shows the end of the output.
    let mut phases: Vec<(&str, f64)> = Vec::new();
    let mut phase = |name: &'static str, since: Instant| match phases.iter_mut().find(|(n, _)| *n == name) {
        Some((_, s)) => *s += since.elapsed().as_secs_f64(),
        None => phases.push((name, since.elapsed().as_secs_f64())),
    };
    if filter.is_none() {
        let begun = Instant::now();
        let (p, f, names) = cargo_tests(&paths)?;
        tally.passed += p;
        tally.failed += f;
        if f > 0 {
            tally.failures.push((format!("{f} cargo test(s)"), names));
        }
        let start = Instant::now();
        let problems = format_check(&paths)?;
        tally.record("format check".into(), start.elapsed().as_secs_f64(), "", &problems);
        let start = Instant::now();
        let problems = lint_check(&paths)?;
        tally.record("lint check".into(), start.elapsed().as_secs_f64(), "", &problems);
        phase("cargo test, fmt, clippy", begun);
    }
    // With the kernel's seed built: the kernels of the tests below copy it.
    let start = Instant::now();
    ensure(&paths, true)?;
    phase("setup", start);
    let start = Instant::now();
    let mut selected = Vec::new();
    for nb in notebooks::list_notebooks(&paths.root.join("notebooks"))? {
        let name = nb.strip_prefix(&paths.root).unwrap_or(&nb).display().to_string();
        if !filter.is_none_or(|f| nb.to_string_lossy().contains(f)) {
            continue;
        }
        // The browser test runs these and checks what JupyterLab saved as this check does: once
        // is enough in a whole run (they took 44 s and 79 s here). Named alone, they run here.
        if filter.is_none() && browser::NOTEBOOKS.contains(&name.as_str()) {
            eprintln!("==> notebook {name}: run in the browser test, below");
            continue;
        }
        if filter.is_none() && name == grading::STUDENT_NOTEBOOK_GRADED {
            eprintln!("==> notebook {name}: run and checked in the grading test, below (the untouched submission)");
            continue;
        }
        selected.push((name, nb));
    }
    for (name, nb) in selected.iter() {
        eprintln!("==> notebook {name}");
        let mut report = notebooks::run_notebook(&paths, nb)?;
        if let Some(why) = explain_dlopen(&report.problems) {
            report.problems.insert(0, why);
        }
        tally.record(name.clone(), report.seconds, "", &report.problems);
    }
    if !selected.is_empty() {
        phase("notebooks", start);
    }
    let timed = |test: &GroupTest| -> CliResult<(f64, Vec<String>)> {
        let start = Instant::now();
        let problems = test(&paths)?;
        Ok((start.elapsed().as_secs_f64(), problems))
    };
    // The test groups after the notebooks: `--notebook <group>` runs one alone.
    let groups: [(&str, String, &str, &str, &GroupTest); 9] = [
        (
            "kernel",
            "kernel test: panics, errors and figures in a real evcxr kernel".into(),
            "kernel test",
            "",
            &kernel::test,
        ),
        (
            "kernel",
            "kernel test: the analyzer's narrowed crate graph, and the types a kernel infers with it".into(),
            "kernel analyzer test",
            "",
            &kernel::analyzer,
        ),
        (
            "kernel",
            "kernel test: two kernels started at the same moment, three times".into(),
            "concurrent kernels test",
            "",
            &kernel::concurrent,
        ),
        (
            "kernel",
            "kernel test: a path crate changed between two kernels is rebuilt".into(),
            "kernel pickup test",
            "",
            &kernel::pickup,
        ),
        (
            "kernel",
            "kernel test: a control channel closed early, as Jupyter's nudge does, leaves the kernel alive".into(),
            "kernel control test",
            " (log: target/kernel-control-test.log)",
            &kernel::control,
        ),
        (
            "spare",
            "spare kernel test: a restart in `cargo lab up`'s JupyterLab gets the warm spare, fresh and working".into(),
            "spare kernel test",
            " (log: target/spare-test.log)",
            &spare::test,
        ),
        (
            "hub",
            format!("hub test: {} students run notebook 03 at once through a real JupyterHub", hub::TEST_USERS),
            "hub test",
            " (log: target/hub-test.log)",
            &hub::test,
        ),
        (
            "grading",
            format!(
                "grading test: nbgrader generate_assignment, then autograde a solved and an untouched {}, and a small assignment handed in 18 ways",
                grading::TEST_ASSIGNMENT
            ),
            "grading test",
            "",
            &grading::test,
        ),
        (
            "server",
            "server test: `cargo lab up` on a busy port and on --port 0, the token kept off command lines".into(),
            "server test",
            "",
            &server::test,
        ),
    ];
    for (group, banner, name, extra, test) in groups {
        if filter.is_none_or(|f| f == group) {
            eprintln!("==> {banner}");
            // A test that could not run at all is one failure; the groups after it still run.
            let start = Instant::now();
            let (seconds, problems) = timed(test).unwrap_or_else(|e| (0.0, vec![format!("could not run: {e}")]));
            tally.record(name.into(), seconds, extra, &problems);
            phase(group, start);
        }
    }
    if filter.is_none_or(|f| f == "browser") {
        let start = Instant::now();
        eprintln!("==> browser test: {} in JupyterLab, headless Chromium", browser::NOTEBOOKS.join(" and "));
        let report = browser::test(&paths)?;
        let shots: Vec<String> = report.screenshots.iter().map(|s| s.display().to_string()).collect();
        tally.record(
            "browser test".into(),
            report.seconds,
            &format!("; screenshots: {}", shots.join(", ")),
            &report.problems,
        );
        phase("browser", start);
    }
    println!();
    let minutes = |s: f64| format!("{}:{:02}", (s / 60.0) as u64, s as u64 % 60);
    let spent: Vec<String> = phases.iter().map(|(n, s)| format!("{n} {}", minutes(*s))).collect();
    println!("time (min:s): {}; in all {}", spent.join(", "), minutes(whole.elapsed().as_secs_f64()));
    if !tally.failures.is_empty() {
        println!("failed: {}", tally.failures.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", "));
        for (name, first) in &tally.failures {
            println!("  {name}, first problems:");
            for p in first {
                println!("    {p}");
            }
        }
    }
    println!("{} passed, {} failed", tally.passed, tally.failed);
    if tally.failed > 0 {
        return Err(format!("{} test(s) failed", tally.failed));
    }
    Ok(())
}

/// The cargo that runs this tool (or the one on PATH), in the repository root.
fn cargo(paths: &Paths) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(&paths.root);
    cmd
}

/// Runs `cargo test` on the workspace and counts its results.
fn cargo_tests(paths: &Paths) -> CliResult<(usize, usize, Vec<String>)> {
    eprintln!("==> cargo test (lab-support and the lab tool)");
    let out = cargo(paths)
        .args(["test", "--release", "--workspace"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("could not run cargo test: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    let (mut passed, mut failed) = (0, 0);
    for line in stdout.lines().filter(|l| l.starts_with("test result:")) {
        let count = |word: &str| {
            line.split(';')
                .find(|p| p.trim_end().ends_with(word))
                .and_then(|p| p.split_whitespace().rev().nth(1)?.parse::<usize>().ok())
                .unwrap_or(0)
        };
        passed += count("passed");
        failed += count("failed");
    }
    if !out.status.success() && failed == 0 {
        return Err("cargo test failed before running the tests (a build error?); see above".into());
    }
    let names = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("test ")?.strip_suffix(" ... FAILED"))
        .map(|n| format!("{n} failed (its output is above)"))
        .collect();
    Ok((passed, failed, names))
}

/// `cargo clippy -- -D warnings` on lab-support, lab-model and lab: any lint is a failure. It only
/// checks (no linking), so the running tool (`target/release/lab`) is left alone.
fn lint_check(paths: &Paths) -> CliResult<Vec<String>> {
    eprintln!("==> lint check: cargo clippy -D warnings on lab-support, lab-model and lab");
    // `--release`, the profile `cargo test` just built: clippy then reuses its build scripts and
    // proc-macros. Measured on a new clone after `cargo test`: 72 s, against 229 s in the dev
    // profile (which builds them again, at the opt-level 3 the workspace gives dependencies).
    let args = [
        "clippy",
        "--release",
        "-p",
        "lab-support",
        "-p",
        "lab-model",
        "-p",
        "lab",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ];
    let out = cargo(paths).args(args).output().map_err(|e| format!("could not run cargo clippy: {e}"))?;
    if out.status.success() {
        return Ok(vec![]);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error") || l.starts_with("warning") || l.contains("--> "))
        .take(12)
        .collect();
    Ok(vec![format!("`cargo {}` failed:\n{}", args.join(" "), lints.join("\n"))])
}

/// `cargo fmt --check` on the crates that follow the house format (rustfmt.toml): lab-support,
/// lab-model and the `lab` tool.
fn format_check(paths: &Paths) -> CliResult<Vec<String>> {
    eprintln!("==> format check: cargo fmt --check on lab-support, lab-model and lab");
    let out = cargo(paths)
        .args(["fmt", "--check", "-p", "lab-support", "-p", "lab-model", "-p", "lab"])
        .output()
        .map_err(|e| format!("could not run cargo fmt: {e}"))?;
    if out.status.success() {
        return Ok(vec![]);
    }
    let diff = String::from_utf8_lossy(&out.stdout);
    let files: Vec<&str> = diff.lines().filter_map(|l| l.strip_prefix("Diff in ")).collect();
    Ok(vec![format!(
        "not formatted (run `cargo fmt -p lab-support -p lab-model -p lab`): {}{}",
        files.join(", "),
        last_lines(&String::from_utf8_lossy(&out.stderr), 3)
    )])
}

/// When a cell failed with evcxr's "dlopen failed" (which drops the system's reason), what the
/// failed cell's build folder says about it: when lab-support's shared library and the cell's were
/// written, the builds of lab-support the folder holds (two means it was rebuilt with other
/// settings, replacing the file a running kernel had loaded), and whether the cell's library loads
/// in a new process, with the loader's own message if not.
pub fn explain_dlopen(problems: &[String]) -> Option<String> {
    let text = problems.iter().find(|p| p.contains("dlopen failed"))?;
    let so = text.split("LOAD_AND_RUN ").nth(1)?.split_whitespace().next()?;
    let so = std::path::Path::new(so);
    let debug = so.parent()?;
    let now = std::time::SystemTime::now();
    let age = |p: &std::path::Path| match std::fs::metadata(p).and_then(|m| m.modified()) {
        Ok(t) => format!("written {:.0} s ago", now.duration_since(t).unwrap_or_default().as_secs_f64()),
        Err(e) => format!("not readable: {e}"),
    };
    let lab = debug.join("deps").join("liblab_support.so");
    let builds: Vec<String> = std::fs::read_dir(debug.join(".fingerprint"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("lab-support-"))
        .map(|e| format!("{} ({})", e.file_name().to_string_lossy(), age(&e.path())))
        .collect();
    let load = Command::new("python3")
        .args(["-c", "import ctypes, sys; ctypes.CDLL(sys.argv[1]); print('loads')"])
        .arg(so)
        .env("LD_LIBRARY_PATH", debug.join("deps"))
        .output();
    let load = match load {
        Ok(out) if out.status.success() => "it loads in a new process".to_string(),
        Ok(out) => format!("in a new process: {}", last_lines(&String::from_utf8_lossy(&out.stderr), 1).trim()),
        Err(e) => format!("could not try it in a new process: {e}"),
    };
    Some(format!(
        "about the dlopen failure: {} {}; {} {}; lab-support's builds in that folder: {}; {load}",
        so.display(),
        age(so),
        lab.display(),
        age(&lab),
        if builds.is_empty() { "none found".to_string() } else { builds.join(", ") }
    ))
}

#[cfg(test)]
mod tests {
    use super::explain_dlopen;

    #[test]
    fn a_dlopen_failure_is_explained_from_the_cells_build_folder() {
        let root = std::env::temp_dir().join(format!("lab-dlopen-test-{}", std::process::id()));
        let debug = root.join("slot-0/target/x86_64-unknown-linux-gnu/debug");
        std::fs::create_dir_all(debug.join("deps")).unwrap();
        std::fs::create_dir_all(debug.join(".fingerprint/lab-support-1111")).unwrap();
        std::fs::create_dir_all(debug.join(".fingerprint/lab-support-2222")).unwrap();
        std::fs::create_dir_all(debug.join(".fingerprint/candle-core-3333")).unwrap();
        let so = debug.join("libcode_6.so");
        std::fs::write(&so, "not a shared library").unwrap();
        let problem = format!(
            "labtest1: cell 3 (`let model`): stderr: While processing instruction `Ok(\"LOAD_AND_RUN {} run_user_code_5\")`, got error: Message(\"dlopen failed\")",
            so.display()
        );
        assert_eq!(explain_dlopen(&["cell 2: error output: cannot find value `x`".into()]), None);
        let text = explain_dlopen(&["other".into(), problem]).unwrap();
        assert!(text.contains("libcode_6.so written"), "{text}");
        assert!(text.contains("liblab_support.so not readable"), "{text}");
        assert!(text.contains("lab-support-1111") && text.contains("lab-support-2222"), "{text}");
        assert!(!text.contains("candle-core"), "{text}");
        assert!(text.contains("in a new process: ") && !text.contains("it loads"), "{text}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
