//! `cargo lab test`: the crate's tests and the format check, then every notebook executed
//! headless (`notebooks`), then the test groups, each of which `--notebook <group>` runs alone:
//! `kernel`, `spare`, `hub`, `grading`, `server` and `browser`.
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
        let start = Instant::now();
        let problems = lint_check(&paths)?;
        tally.record("lint check".into(), start.elapsed().as_secs_f64(), "", &problems);
    }
    // With the kernel's seed built: the kernels of the tests below copy it.
    ensure(&paths, true)?;
    let notebooks = notebooks::list_notebooks(&paths.root.join("notebooks"))?;
    for nb in notebooks.iter().filter(|nb| filter.is_none_or(|f| nb.to_string_lossy().contains(f))) {
        let name = nb.strip_prefix(&paths.root).unwrap_or(nb).display().to_string();
        eprintln!("==> notebook {name}");
        let report = notebooks::run_notebook(&paths, nb)?;
        tally.record(name, report.seconds, "", &report.problems);
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
                "grading test: nbgrader generate_assignment, then autograde a solved and an untouched {} twice, and a small assignment handed in 18 ways",
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
            let (seconds, problems) = timed(test).unwrap_or_else(|e| (0.0, vec![format!("could not run: {e}")]));
            tally.record(name.into(), seconds, extra, &problems);
        }
    }
    if filter.is_none_or(|f| f == "browser") {
        eprintln!("==> browser test: {} in JupyterLab, headless Chromium", browser::NOTEBOOKS.join(" and "));
        let report = browser::test(&paths)?;
        let shots: Vec<String> = report.screenshots.iter().map(|s| s.display().to_string()).collect();
        tally.record(
            "browser test".into(),
            report.seconds,
            &format!("; screenshots: {}", shots.join(", ")),
            &report.problems,
        );
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

/// The cargo that runs this tool (or the one on PATH), in the repository root.
fn cargo(paths: &Paths) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(&paths.root);
    cmd
}

/// Runs `cargo test` on the workspace and counts its results.
fn cargo_tests(paths: &Paths) -> CliResult<(usize, usize)> {
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
    Ok((passed, failed))
}

/// `cargo clippy -- -D warnings` on lab-support, lab-model and lab: any lint is a failure. It
/// builds in `target/debug`, so the running tool (`target/release/lab`) is left alone.
fn lint_check(paths: &Paths) -> CliResult<Vec<String>> {
    eprintln!("==> lint check: cargo clippy -D warnings on lab-support, lab-model and lab");
    let args = ["clippy", "-p", "lab-support", "-p", "lab-model", "-p", "lab", "--all-targets", "--", "-D", "warnings"];
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
