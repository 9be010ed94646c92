//! Starting JupyterLab for `cargo lab up`, so that nobody else on the machine can use it.
//!
//! - The token goes to JupyterLab through its environment (`JUPYTER_TOKEN`), never on its command
//!   line: every user of a shared machine can read any process's command line (`ps`), and the
//!   token lets them run code as the student.
//! - The URL is printed only once JupyterLab listens, with the port it really bound: JupyterLab
//!   writes `jpserver-<pid>.json` into its runtime folder (`.lab/runtime/`, private to the user)
//!   after binding, and that file is where the port comes from, so `--port 0` works and a busy
//!   port gives an error instead of a URL that leads nowhere.

use crate::paths::{Paths, SPARE_ENV};
use crate::sys::hex::random_token;
use crate::sys::http;
use crate::sys::process::is_root;
use crate::sys::{At, CliResult};
use serde_json::Value;
use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// How long JupyterLab may take to bind its port.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// Starts JupyterLab on 127.0.0.1 and waits until it stops.
pub fn serve(paths: &Paths, port: u16, no_browser: bool) -> CliResult<()> {
    // LAB_TOKEN fixes the token (the tests use it); otherwise a fresh random one.
    let token = match std::env::var("LAB_TOKEN") {
        Ok(t) if !t.is_empty() => t,
        _ => random_token()?,
    };
    check_port_free(port)?;
    let runtime = private_dir(&paths.state.join("runtime"))?;
    let mut cmd = Command::new(paths.venv_bin("jupyter"));
    cmd.arg("lab")
        .arg("--ServerApp.ip=127.0.0.1")
        .arg(format!("--ServerApp.port={port}"))
        .arg("--ServerApp.port_retries=0")
        .arg(format!("--ServerApp.root_dir={}", paths.root.join("notebooks").display()))
        .env("JUPYTER_TOKEN", &token)
        .env("JUPYTER_RUNTIME_DIR", &runtime);
    if no_browser {
        cmd.arg("--no-browser");
    }
    // Jupyter refuses to start as root (a container, a CI box) unless told that it is meant.
    if is_root() {
        cmd.arg("--allow-root");
    }
    paths.jupyter_env(&mut cmd);
    // A warm spare kernel, so that a kernel start or restart answers at once (lab/kernel-pool/).
    // It holds about one more kernel's memory; LAB_SPARE_KERNEL=0 turns it off.
    let spares = std::env::var(SPARE_ENV).as_deref() != Ok("0");
    cmd.env(SPARE_ENV, if spares { "1" } else { "0" });
    let mut child = cmd.spawn().map_err(|e| format!("could not start JupyterLab: {e}"))?;
    // Ctrl-C reaches JupyterLab too, which asks whether to shut down; this process waits for it
    // instead of dying and leaving JupyterLab behind on the terminal.
    ignore_interrupts();
    let bound = match wait_for_port(&mut child, &runtime, &token) {
        Ok(p) => p,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    println!("\nJupyterLab: http://127.0.0.1:{bound}/lab?token={token}\n(stop it with Ctrl-C)\n");
    if spares {
        println!("A spare kernel warms up in the background (now, and after each kernel start), so that the next kernel start or restart in the same folder answers at once; it holds about one more kernel's memory (LAB_SPARE_KERNEL=0 turns it off).\n");
    }
    let status = child.wait().map_err(|e| format!("waiting for JupyterLab: {e}"))?;
    if !status.success() && status.code().is_some() {
        return Err(format!("JupyterLab stopped with {status}; see its output above"));
    }
    Ok(())
}

/// A clear error now, rather than JupyterLab's own after a few seconds, when the port is taken.
fn check_port_free(port: u16) -> CliResult<()> {
    if port == 0 {
        return Ok(());
    }
    match TcpListener::bind(("127.0.0.1", port)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AddrInUse => Err(format!(
            "port {port} on 127.0.0.1 is already in use (another JupyterLab?). Pick another with \
             `cargo lab up --port 8890`, or `--port 0` for any free one"
        )),
        Err(e) => Err(format!("cannot use port {port} on 127.0.0.1: {e}")),
    }
}

/// Creates `dir` readable by its owner only: JupyterLab's runtime files hold the token.
fn private_dir(dir: &Path) -> CliResult<std::path::PathBuf> {
    std::fs::create_dir_all(dir).at(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).at(dir)?;
    }
    Ok(dir.to_path_buf())
}

/// Waits for JupyterLab's `jpserver-<pid>.json`, then for JupyterLab to answer on the port it
/// records, and returns that port.
///
/// Only a file written after JupyterLab started counts: a JupyterLab that was killed leaves its
/// file behind, and on a busy machine a new one can get the same pid. And the file is written
/// before JupyterLab serves, so the URL is printed only once a request with the token succeeds.
fn wait_for_port(child: &mut Child, runtime: &Path, token: &str) -> CliResult<u16> {
    let info = runtime.join(format!("jpserver-{}.json", child.id()));
    let started = std::time::SystemTime::now() - Duration::from_secs(1);
    let start = Instant::now();
    let mut port = None;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "JupyterLab stopped ({status}) before it listened; its own message is above. If it says the \
                 port is in use, pick another with `cargo lab up --port 8890`"
            ));
        }
        if port.is_none() {
            let fresh = std::fs::metadata(&info).and_then(|m| m.modified()).is_ok_and(|t| t >= started);
            port = fresh
                .then(|| std::fs::read_to_string(&info).ok())
                .flatten()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .and_then(|v| v["port"].as_u64())
                .and_then(|p| u16::try_from(p).ok())
                .filter(|&p| p != 0);
        }
        if let Some(p) = port {
            if http::status(p, "GET", "/api/status", token) == Some(200) {
                return Ok(p);
            }
        }
        if start.elapsed() > START_TIMEOUT {
            return Err(format!(
                "JupyterLab did not start listening within {} s; its output is above",
                START_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(unix)]
fn ignore_interrupts() {
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
}

#[cfg(not(unix))]
fn ignore_interrupts() {}
