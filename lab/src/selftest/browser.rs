//! The browser test of `cargo lab test`: what a student sees, not only what the kernel returns.
//!
//! It starts JupyterLab with `cargo lab up --no-browser --port N`, opens a copy of each solution
//! notebook in [`NOTEBOOKS`] in Debian's Chromium driven by Playwright (`lab/browser-test/`),
//! does Run All, and checks the rendered page: images decoded, SVG plots drawn, no error output,
//! the check cells' PASS lines. Then it saves the notebook (File > Save Notebook) and checks the
//! saved outputs as a headless run's are checked (`jupyter::check_outputs`): `cargo lab test`
//! runs these notebooks here only, not headless too. A screenshot and the saved copy of each
//! notebook land in `target/browser-test/`. JupyterLab is shut down and the copy removed even when
//! the test fails.
//!
//! It installs what it needs: Chromium, and Node.js with npm, with apt-get when they are missing
//! (as root, as in CI), and Playwright with `npm ci` from the committed lockfile.

use crate::cmd::setup::{apt_install, npm_ci};
use crate::ipynb::{self, source_text};
use crate::jupyter::{check_outputs, FIGURES};
use crate::paths::Paths;
use crate::sys::child::{ChildServer, NotReady};
use crate::sys::http;
use crate::sys::process::is_root;
use crate::sys::{At, CliResult};
use serde_json::Value;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TEST_DIR: &str = "lab/browser-test";
/// The notebooks it runs: the proof, and the attack (last, so that it is the one restarted: at
/// 40 s a run, the quickest of those with figures and checks; 04, restarted until 2026-12-06, took
/// 104 s and 110 s).
pub const NOTEBOOKS: [&str; 2] = ["notebooks/solutions/06-certified.ipynb", "notebooks/solutions/03-adversarial.ipynb"];
/// Where the copy goes: inside JupyterLab's root (notebooks/), two levels deep like the original,
/// so its relative `:dep` path still works. Ignored by git and removed after the test.
const COPY_DIR: &str = "notebooks/browser-test";

/// What the browser test found.
pub struct BrowserReport {
    pub problems: Vec<String>,
    pub seconds: f64,
    pub screenshots: Vec<PathBuf>,
}

fn chromium() -> PathBuf {
    std::env::var_os("LAB_CHROMIUM").map(PathBuf::from).unwrap_or_else(|| "/usr/bin/chromium".into())
}

fn ensure_chromium() -> CliResult<()> {
    if chromium().exists() {
        return Ok(());
    }
    if !is_root() || std::env::var_os("LAB_CHROMIUM").is_some() {
        return Err(format!(
            "Chromium was not found at {}. Install it (Debian/Ubuntu: `sudo apt-get install chromium`) \
             or set LAB_CHROMIUM=/path/to/chromium, then run `cargo lab test` again",
            chromium().display()
        ));
    }
    apt_install(&["chromium", "fonts-dejavu-core"], "Debian's Chromium")
}

/// `npm ci` in the test's folder, again only when the lockfile changed; Node.js and npm from
/// Debian first when they are missing.
fn ensure_playwright(root: &Path) -> CliResult<()> {
    npm_ci(root, TEST_DIR, "Playwright for the browser test")
}

/// The copy as JupyterLab saved it, kept in `out`, checked like a notebook run headless.
fn check_saved(root: &Path, out: &Path, name: &str, saved: bool) -> Vec<String> {
    if !saved {
        return vec![format!("{name}: not saved, so its outputs were not checked")];
    }
    let copy = root.join(COPY_DIR).join(name);
    let executed = match ipynb::read(&copy) {
        Ok(nb) => nb,
        Err(e) => return vec![format!("{name}: cannot read the notebook JupyterLab saved: {e}")],
    };
    let kept = out.join(name);
    if let Err(e) = ipynb::write(&kept, &executed) {
        eprintln!("    could not keep a copy of {name} in {}: {e}", out.display());
    }
    check_outputs(&executed, false).into_iter().map(|p| format!("{name} (saved): {p}")).collect()
}

/// What the copied notebook should show once it has run.
struct Expected {
    /// Check cells, each printing a PASS line.
    checks: usize,
    /// Code cells in the notebook.
    code_cells: usize,
    /// Positions among the code cells of those whose last expression is a figure.
    figure_cells: Vec<usize>,
}

/// Whether a cell ends in a figure that the notebook should draw: its last expression (after the
/// last `;`) builds one of the lab's image or plot types. Tables and verdicts are text.
fn shows_figure(source: &str) -> bool {
    let source = source.trim_end();
    if source.ends_with(';') {
        return false;
    }
    let last = source.rsplit(';').next().unwrap_or(source);
    FIGURES.iter().filter(|f| !matches!(**f, "Table" | "Verdict")).any(|f| last.contains(&format!("{f}::")))
}

/// A copy of `notebook` with its outputs cleared, under [`COPY_DIR`]; returns what it should show.
fn copy_notebook(root: &Path, notebook: &str) -> CliResult<Expected> {
    let src = root.join(notebook);
    let text = std::fs::read_to_string(&src).at(&src)?;
    let mut nb: Value = serde_json::from_str(&text).at(&src)?;
    let mut expected = Expected { checks: 0, code_cells: 0, figure_cells: vec![] };
    for cell in nb["cells"].as_array_mut().into_iter().flatten() {
        if cell["cell_type"] == "code" {
            cell["outputs"] = Value::Array(vec![]);
            cell["execution_count"] = Value::Null;
            let source = source_text(cell);
            // A check cell is a call such as `check::craft(craft)`, which shows one PASS line; a
            // helper like `check::within_budget` inside other code shows none.
            expected.checks += usize::from(source.trim_start().starts_with("check::"));
            if shows_figure(&source) {
                expected.figure_cells.push(expected.code_cells);
            }
            expected.code_cells += 1;
        }
    }
    let dir = root.join(COPY_DIR);
    std::fs::create_dir_all(&dir).at(&dir)?;
    let dst = dir.join(src.file_name().unwrap_or_default());
    ipynb::write(&dst, &nb)?;
    Ok(expected)
}

/// JupyterLab started by `cargo lab up`, stopped on drop: politely through its API, then by signal
/// to its whole process group.
struct Jupyter {
    server: ChildServer,
    port: u16,
    token: String,
    copy_dir: PathBuf,
}

impl Jupyter {
    fn start(paths: &Paths, log: &Path) -> CliResult<Self> {
        let port = TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port on 127.0.0.1: {e}"))?
            .port();
        let token = format!("browser-test-{}-{port}", std::process::id());
        let log_file = std::fs::File::create(log).at(log)?;
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["lab", "up", "--no-browser", "--port", &port.to_string()])
            .current_dir(&paths.root)
            .env("LAB_TOKEN", &token)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().map_err(|e| e.to_string())?)
            .stderr(log_file);
        let server = ChildServer::spawn(&mut cmd).map_err(|e| format!("could not start `cargo lab up`: {e}"))?;
        let mut jupyter = Jupyter { server, port, token, copy_dir: paths.root.join(COPY_DIR) };
        // On a fresh machine `cargo lab up` first warms evcxr's build cache (a few minutes).
        let answers = || http::status(port, "GET", "/api/status", &jupyter.token) == Some(200);
        match jupyter.server.wait_ready(Duration::from_secs(900), Duration::from_millis(500), answers) {
            Ok(()) => Ok(jupyter),
            Err(NotReady::Exited(status)) => {
                Err(format!("`cargo lab up` stopped ({status}) before JupyterLab answered; its log: {}", log.display()))
            }
            Err(NotReady::TimedOut) => {
                Err(format!("JupyterLab did not answer on port {port} within 900 s; its log: {}", log.display()))
            }
        }
    }

    /// The notebook in a workspace of its own, reset: one notebook per page, so the checks of the
    /// page (prompts, PASS lines, images) see only that notebook, not one still open from before.
    fn url(&self, notebook: &str, workspace: &str) -> String {
        format!("http://127.0.0.1:{}/lab/workspaces/{workspace}/tree/{notebook}?reset&token={}", self.port, self.token)
    }
}

impl Drop for Jupyter {
    fn drop(&mut self) {
        // JupyterLab's own shutdown stops its kernels too.
        let _ = http::status(self.port, "POST", "/api/shutdown", &self.token);
        self.server.wait_exit(Duration::from_secs(20));
        if self.server.running() {
            self.server.signal_group("TERM");
            std::thread::sleep(Duration::from_secs(2));
            self.server.signal_group("KILL");
            self.server.wait();
        }
        let _ = std::fs::remove_dir_all(&self.copy_dir);
    }
}

/// Runs the browser test.
pub fn test(paths: &Paths) -> CliResult<BrowserReport> {
    ensure_chromium()?;
    ensure_playwright(&paths.root)?;
    let out = paths.root.join("target/browser-test");
    std::fs::create_dir_all(&out).at(&out)?;
    let start = Instant::now();
    let jupyter = Jupyter::start(paths, &out.join("jupyter.log"))?;
    let (mut problems, mut screenshots) = (Vec::new(), Vec::new());
    for notebook in NOTEBOOKS {
        let name = Path::new(notebook).file_name().and_then(|n| n.to_str()).unwrap_or(notebook).to_string();
        let screenshot = out.join(Path::new(&name).with_extension("png"));
        let _ = std::fs::remove_file(&screenshot);
        let expected = copy_notebook(&paths.root, notebook)?;
        let result = Command::new("node")
            .arg(paths.root.join(TEST_DIR).join("run-notebook.mjs"))
            .arg(jupyter.url(&format!("browser-test/{name}"), &name.replace('.', "-")))
            .arg(&screenshot)
            .arg(expected.checks.to_string())
            .arg(expected.code_cells.to_string())
            .arg(expected.figure_cells.iter().map(usize::to_string).collect::<Vec<_>>().join(","))
            // The last notebook is also restarted and run again, which takes the warm spare kernel.
            .args((notebook == NOTEBOOKS[NOTEBOOKS.len() - 1]).then_some("restart"))
            .env("LAB_CHROMIUM", chromium())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("could not run node: {e}"))?;
        let stdout = String::from_utf8_lossy(&result.stdout);
        let seen: Value = stdout.lines().rev().find_map(|l| serde_json::from_str(l).ok()).unwrap_or(Value::Null);
        let found: Vec<String> = seen["problems"]
            .as_array()
            .map(|a| a.iter().filter_map(|p| p.as_str().map(|p| format!("{name}: {p}"))).collect())
            .unwrap_or_default();
        if found.is_empty() && !result.status.success() {
            problems.push(format!(
                "{name}: the browser test failed ({}) without a report; its output: {stdout}",
                result.status
            ));
        } else if found.is_empty() {
            eprintln!(
                "    {name}: saw {} PNG image(s), {} SVG plot(s), a figure in each of the {} figure cells, {} PASS line(s); Run All took {} s{}; screenshot {}",
                seen["png_images"].as_array().map_or(0, Vec::len),
                seen["svg_images"].as_array().map_or(0, Vec::len) + seen["inline_svgs"].as_array().map_or(0, Vec::len),
                expected.figure_cells.len(),
                seen["pass_lines"],
                seen["run_seconds"],
                if seen["restart_run_seconds"].is_null() { String::new() } else { format!(", then Restart Kernel and Run All Cells {} s (the figures and lines above are after it)", seen["restart_run_seconds"]) },
                screenshot.display()
            );
        }
        problems.extend(found);
        problems.extend(check_saved(&paths.root, &out, &name, seen["saved"] == true));
        screenshots.push(screenshot);
    }
    drop(jupyter);
    // Whether the kernels came from the warm spare (informative: it depends on the spare having
    // finished its warm-up in time).
    let log = std::fs::read_to_string(out.join("jupyter.log")).unwrap_or_default();
    eprintln!("    kernels handed a warm spare in this test: {}", log.matches("lab spare kernel: handed over").count());
    Ok(BrowserReport { problems, seconds: start.elapsed().as_secs_f64(), screenshots })
}

#[cfg(test)]
mod tests {
    use super::shows_figure;

    #[test]
    fn figure_cells_are_those_ending_in_a_figure() {
        assert!(shows_figure("BarChart::probabilities(&model, &x, \"t\")?"));
        assert!(shows_figure("let g = grad(&x)?;\nImageGrid::new(\"t\", 2)\n    .image(&x, \"a\")?\n"));
        assert!(shows_figure("Challenge::new()?"));
        // A figure built on the way, but the cell shows a table or nothing.
        assert!(!shows_figure("let c = Challenge::new()?;\nlet mut t = Table::new(&[\"eps\"]);\nfor e in [1] {\n    t = t.row(vec![]);\n}\nt"));
        assert!(!shows_figure("LinePlot::new(\"t\").save(\"a.svg\")?;"));
        assert!(!shows_figure("check::challenge(solve)"));
    }
}
