//! The warm spare kernel of `cargo lab up` (lab/kernel-pool/), tested and measured the way a
//! student meets it: JupyterLab started by `cargo lab up`, a notebook's kernel over its websocket,
//! a restart through the server's API, then the websocket again (JupyterLab reconnects after a
//! restart, since the kernel's ports may change).

use super::{CELL_LIMIT, LAB_KERNEL_MANAGER_LINE};
use crate::ipynb::output_text;
use crate::jupyter::RemoteKernel;
use crate::paths::{Paths, SPARE_ENV};
use crate::sys::child::ChildServer;
use crate::sys::hex::random_token;
use crate::sys::http::request;
use crate::sys::procfs::kill_processes_with;
use crate::sys::{At, CliResult};
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

pub const DEP: &str = ":dep lab-support = { path = \"../lab-support\" }\nuse lab_support::prelude::*;";
pub const LOAD: &str = "let model = Classifier::pretrained()?;\nlet test = mnist::test()?;";
/// The notebook path the sessions use: a kernel starts in its folder, `notebooks/`.
const SESSION_PATH: &str = "spare-test.ipynb";
/// What the provisioner logs once a spare has run its warm-up cells.
const WARM_LINE: &str = "lab spare kernel: warm";
/// A spare's warm-up, at most (the first one in a fresh slot copies the seed).
const WARM_LIMIT: Duration = Duration::from_secs(600);

/// JupyterLab as `cargo lab up` starts it, with every process it starts marked in its
/// environment, so that the test can find whatever is left after it stops.
pub struct Lab {
    server: ChildServer,
    port: u16,
    token: String,
    marker: String,
    log: Receiver<String>,
    /// Every line `cargo lab up` and JupyterLab printed so far.
    lines: Vec<String>,
}

impl Lab {
    pub fn start() -> CliResult<Lab> {
        let paths = Paths::new();
        let exe = std::env::current_exe().map_err(|e| format!("cannot find the lab tool itself: {e}"))?;
        let token = format!("spare-test-{}", random_token()?);
        let marker = format!("LAB_SPARE_TEST={}", random_token()?);
        let (key, value) = marker.split_once('=').expect("KEY=value");
        let mut cmd = Command::new(&exe);
        cmd.args(["up", "--no-browser", "--port", "0"])
            .current_dir(&paths.root)
            .env("LAB_TOKEN", &token)
            .env(key, value)
            .env_remove(SPARE_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut server = ChildServer::spawn(&mut cmd).map_err(|e| format!("could not run `cargo lab up`: {e}"))?;
        let (tx, log) = channel();
        let (stdout, stderr) = server.take_output();
        for stream in [stdout.map(|s| Box::new(s) as Box<dyn std::io::Read + Send>), stderr.map(|s| Box::new(s) as _)]
            .into_iter()
            .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        let mut lab = Lab { server, port: 0, token, marker, log, lines: Vec::new() };
        // `cargo lab up` prints this line once JupyterLab listens, with the port it bound (the
        // server's own log line may come earlier).
        let url = lab.wait_for("JupyterLab: http://127.0.0.1:", Duration::from_secs(900));
        let port =
            url.as_deref().and_then(|u| u.split("http://127.0.0.1:").nth(1)?.split('/').next()?.parse::<u16>().ok());
        match port {
            Some(p) if p != 0 => lab.port = p,
            _ => {
                let tail = lab.tail(10);
                lab.stop();
                return Err(format!("`cargo lab up --port 0` printed no URL; its last lines:\n{tail}"));
            }
        }
        Ok(lab)
    }

    /// The next line (from now on) that contains `needle`, waiting at most `limit`.
    pub fn wait_for(&mut self, needle: &str, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.log.recv_timeout(left.min(Duration::from_millis(500))) {
                Ok(line) => {
                    self.lines.push(line.clone());
                    if line.contains(needle) {
                        return Some(line);
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if self.server.exited().is_some() {
                        return None;
                    }
                }
                Err(_) => return None,
            }
        }
        None
    }

    /// The last `n` lines `cargo lab up` and JupyterLab printed.
    pub fn tail(&mut self, n: usize) -> String {
        while let Ok(line) = self.log.try_recv() {
            self.lines.push(line);
        }
        let state = match self.server.exited() {
            Some(status) => format!("`cargo lab up` has stopped ({status})"),
            None => "`cargo lab up` is running".to_string(),
        };
        let lines = self.lines.iter().rev().take(n).rev().cloned().collect::<Vec<_>>().join("\n");
        format!("{lines}\n({state})")
    }

    /// Waits for the spare's warm-up to end (fails with the log's last lines if it does not).
    pub fn wait_warm(&mut self) -> CliResult<f64> {
        let start = Instant::now();
        if self.wait_for(WARM_LINE, WARM_LIMIT).is_none() {
            let tail = self.tail(15);
            return Err(format!(
                "no spare kernel got warm within {} s; the server's last lines:\n{tail}",
                WARM_LIMIT.as_secs()
            ));
        }
        Ok(start.elapsed().as_secs_f64())
    }

    /// Restarts a kernel through the server's API, as JupyterLab's restart button does, and opens
    /// its channels again. Returns the new connection and the restart's time.
    pub fn restart(&self, kernel: RemoteKernel) -> CliResult<(RemoteKernel, f64)> {
        let id = kernel.id.clone();
        kernel.close();
        let start = Instant::now();
        let (status, answer) =
            request(self.port, "POST", &format!("/api/kernels/{id}/restart"), Some(&self.token), None)?;
        let seconds = start.elapsed().as_secs_f64();
        if status != 200 {
            return Err(format!("restarting the kernel answered {status}: {answer}"));
        }
        Ok((RemoteKernel::connect(self.port, "", &self.token, &id)?, seconds))
    }

    pub fn open(&self) -> CliResult<RemoteKernel> {
        RemoteKernel::open(self.port, "", &self.token, SESSION_PATH)
    }

    /// Stops JupyterLab through its API; returns what was still running afterwards (killed).
    pub fn stop(&mut self) -> Vec<String> {
        let _ = request(self.port, "POST", "/api/shutdown", Some(&self.token), None);
        self.server.wait_exit(Duration::from_secs(30));
        if self.server.running() {
            self.server.signal_group("KILL");
        }
        self.server.wait();
        // Kernels and spares run in sessions of their own: give them a moment, then look.
        std::thread::sleep(Duration::from_secs(2));
        kill_processes_with(&self.marker).into_iter().map(|(pid, name)| format!("{name} (pid {pid})")).collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.server.running() {
            self.stop();
        }
    }
}

/// One cell's outcome: its text (stdout, results, and errors' names and messages), whether it
/// failed (an error, or anything on stderr), and its wall time.
pub struct Ran {
    pub text: String,
    pub failed: bool,
    pub seconds: f64,
}

/// Runs cells in `kernel`, one after the other.
pub fn run(kernel: &mut RemoteKernel, cells: &[&str]) -> CliResult<Vec<Ran>> {
    cells
        .iter()
        .map(|code| {
            let start = Instant::now();
            let (outputs, _) = kernel.execute(code, CELL_LIMIT)?;
            let mut ran = Ran { text: String::new(), failed: false, seconds: start.elapsed().as_secs_f64() };
            for out in &outputs {
                if out["output_type"] == "error" || out["name"] == "stderr" {
                    ran.failed = true;
                }
                ran.text.push_str(&output_text(out));
                if out["output_type"] == "error" {
                    ran.text.push_str(&format!(
                        "{}: {}",
                        out["ename"].as_str().unwrap_or(""),
                        out["evalue"].as_str().unwrap_or("")
                    ));
                }
            }
            Ok(ran)
        })
        .collect()
}

/// The spare kernel test of `cargo lab test`: after a restart, the kernel JupyterLab gets is the
/// warm spare, it has none of the old kernel's variables nor the warm-up's, the lab's first cells
/// work in it; a kernel starts cold when lab-support changed; a restart while the spare is still
/// warming up waits for it; and once JupyterLab stops, no kernel or spare is left running.
pub fn test(paths: &Paths) -> CliResult<Vec<String>> {
    let mut problems = Vec::new();
    let mut lab = Lab::start()?;
    let outcome = (|| -> CliResult<Vec<String>> {
        let mut problems = Vec::new();
        // The server makes a spare for notebooks/ as soon as it starts: the first notebook gets it.
        let first_warm = lab.wait_warm()?;
        let mut kernel = lab.open()?;
        let before = run(&mut kernel, &["std::env::var(\"LAB_KERNEL_SPARE\").is_ok()", DEP, "let x = 40 + 2;\nx"])?;
        expect(&mut problems, "the first kernel being the server's spare", &before[0], |t| t.trim() == "true");
        expect(&mut problems, "the first kernel's `:dep` cell", &before[1], |t| t.trim().is_empty());
        expect(&mut problems, "the first kernel's `let x = 40 + 2; x`", &before[2], |t| t.trim() == "42");
        let warm = lab.wait_warm()?;
        let (mut kernel, restart) = lab.restart(kernel)?;
        let after = run(
            &mut kernel,
            &[
                "std::env::var(\"LAB_KERNEL_SPARE\").is_ok()",
                ":vars",
                "x",
                "lab_spare_model",
                "lab_spare_x",
                "Classifier::pretrained().is_ok()",
                DEP,
                LOAD,
                "test.len()",
                "let (x, label) = test.get(0)?;\nformat!(\"{} {}\", model.predict(&x)?[0].class, label)",
            ],
        )?;
        expect(&mut problems, "the restarted kernel being the warm spare", &after[0], |t| t.trim() == "true");
        // evcxr's list of the kernel's variables: none, though the warm-up made some (evcxr forgets
        // a variable only when a cell moves it: one of a `Copy` type outlives its `drop`).
        expect(&mut problems, "`:vars` in the kernel handed over (it should list no variable)", &after[1], |t| {
            t.trim().is_empty()
        });
        // These must fail: the old kernel's and the warm-up's variables are gone, and so is the
        // warm-up's use of the prelude (a notebook needs its own first cell, as in a cold kernel).
        for (cell, name, why) in [
            (&after[2], "x", "the old kernel's variable"),
            (&after[3], "lab_spare_model", "the warm-up's variable"),
            (&after[4], "lab_spare_x", "the warm-up's variable from its small cell"),
            (&after[5], "Classifier", "the prelude, before the notebook's `use`"),
        ] {
            if !cell.failed || !cell.text.contains(name) {
                problems.push(format!(
                    "`{name}` after the restart should not be known ({why}); the cell said {:?}",
                    cell.text.chars().take(300).collect::<String>()
                ));
            }
        }
        expect(&mut problems, "the `:dep` cell after the restart", &after[6], |t| t.trim().is_empty());
        expect(&mut problems, "the load cell after the restart", &after[7], |t| t.trim().is_empty());
        expect(&mut problems, "`test.len()` after the restart", &after[8], |t| t.trim() == "10000");
        expect(&mut problems, "the first test digit's prediction and label", &after[9], |t| {
            t.trim().trim_matches('"') == "7 7"
        });
        eprintln!(
            "    first spare warm {first_warm:.0} s after the server started; the next {warm:.0} s after the first kernel's cells; restart {restart:.1} s; then `:dep` {:.1} s, load {:.1} s",
            after[6].seconds, after[7].seconds
        );

        // lab-support changed after the spare read it (an instructor's edit, a `git pull`): its
        // rust-analyzer would answer from the old sources, so the next kernel must start cold. The
        // change is a newer time on one source file, put back at once so that no build notices.
        lab.wait_warm()?;
        let lib = paths.root.join("lab-support/src/lib.rs");
        let (mut kernel, _) = with_newer_time(&lib, || lab.restart(kernel))?;
        let cold = run(&mut kernel, &["std::env::var(\"LAB_KERNEL_SPARE\").is_ok()", DEP, "let y = 1 + 1;\ny"])?;
        expect(&mut problems, "the kernel after lab-support changed being a cold one, not the spare", &cold[0], |t| {
            t.trim() == "false"
        });
        expect(&mut problems, "the cold kernel's `:dep` cell", &cold[1], |t| t.trim().is_empty());
        expect(&mut problems, "the cold kernel's `let y = 1 + 1; y`", &cold[2], |t| t.trim() == "2");
        // A restart right away, while the next spare is still warming up: the launch waits for it
        // (lab_kernel_pool.py, `SPARE_WAIT`) rather than starting a cold kernel beside it.
        let (mut kernel, waited) = lab.restart(kernel)?;
        let soon = run(&mut kernel, &["std::env::var(\"LAB_KERNEL_SPARE\").is_ok()", DEP, "let z = 2 + 3;\nz"])?;
        expect(&mut problems, "a restart while the spare warms up getting that spare", &soon[0], |t| {
            t.trim() == "true"
        });
        expect(&mut problems, "the `:dep` cell after it", &soon[1], |t| t.trim().is_empty());
        expect(&mut problems, "its `let z = 2 + 3; z`", &soon[2], |t| t.trim() == "5");
        if !lab.tail(400).contains("waited") {
            problems.push("the server did not say that the launch waited for the spare warming up".into());
        }
        eprintln!("    a restart while the spare warmed up: {waited:.1} s, then `:dep` {:.1} s", soon[1].seconds);
        if !lab.tail(usize::MAX).contains(LAB_KERNEL_MANAGER_LINE) {
            problems.push(format!(
                "the server did not say \"{}\": its kernels may die when a notebook connects (lab/kernel-pool/)",
                LAB_KERNEL_MANAGER_LINE
            ));
        }
        if !lab.tail(400).contains("lab-support changed since the spare read it") {
            problems.push("the server did not say why it started the kernel cold (\"lab-support changed since the spare read it\")".into());
        }
        kernel.close();
        Ok(problems)
    })();
    match outcome {
        Ok(p) => problems.extend(p),
        Err(e) => problems.push(format!("{e}\nJupyterLab's last lines:\n{}", lab.tail(20))),
    }
    let left = lab.stop();
    if !left.is_empty() {
        problems.push(format!("still running after JupyterLab stopped (killed now): {}", left.join(", ")));
    }
    let log = paths.root.join("target/spare-test.log");
    let _ = std::fs::write(&log, lab.tail(usize::MAX));
    Ok(problems)
}

/// Runs `f` while `file` carries a newer modification time, then puts its own time back.
fn with_newer_time<T>(file: &std::path::Path, f: impl FnOnce() -> CliResult<T>) -> CliResult<T> {
    let open = || std::fs::OpenOptions::new().write(true).open(file).at(file);
    let handle = open()?;
    let before = handle.metadata().and_then(|m| m.modified()).at(file)?;
    handle.set_modified(std::time::SystemTime::now()).at(file)?;
    let result = f();
    handle.set_modified(before).map_err(|e| format!("{}: cannot put its time back: {e}", file.display()))?;
    result
}

/// A cell that must not fail and whose text must pass `ok`.
fn expect(problems: &mut Vec<String>, what: &str, cell: &Ran, ok: impl Fn(&str) -> bool) {
    if cell.failed || !ok(&cell.text) {
        let shown: String = cell.text.chars().take(300).collect();
        problems.push(format!("{what}: unexpected output {shown:?}"));
    }
}
