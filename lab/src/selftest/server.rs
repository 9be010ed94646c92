//! The server test of `cargo lab test`: `cargo lab up`'s JupyterLab on a busy port and on
//! `--port 0`, and its token kept off every command line.

use crate::paths::Paths;
use crate::sys::child::ChildServer;
use crate::sys::hex::random_token;
use crate::sys::http;
use crate::sys::process::in_own_group;
use crate::sys::procfs::command_lines_with;
use crate::sys::CliResult;
use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

/// The server test of `cargo lab test`: `cargo lab up` on a busy port fails at once with a clear
/// message and prints no URL; on `--port 0` it prints the port it really bound, JupyterLab answers
/// there with the token, and no process on the machine has the token on its command line.
pub fn test(paths: &Paths) -> CliResult<Vec<String>> {
    let mut problems = Vec::new();
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the lab tool itself: {e}"))?;
    let token = format!("server-test-{}", random_token()?);
    let up = |port: u16| {
        let mut cmd = Command::new(&exe);
        cmd.args(["up", "--no-browser", "--port", &port.to_string()])
            .current_dir(&paths.root)
            .env("LAB_TOKEN", &token)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        in_own_group(&mut cmd);
        cmd
    };

    // A busy port.
    let busy = TcpListener::bind(("127.0.0.1", 0)).map_err(|e| format!("no free port: {e}"))?;
    let busy_port = busy.local_addr().map_err(|e| e.to_string())?.port();
    let out = up(busy_port).output().map_err(|e| format!("could not run the lab tool: {e}"))?;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() || !stderr.contains("already in use") || !stderr.contains("--port") {
        problems.push(format!(
            "on a busy port `cargo lab up` should fail, naming the port and --port; it said: {}",
            stderr.trim()
        ));
    }
    if stdout.contains("http://") {
        problems.push(format!("on a busy port `cargo lab up` printed a URL that leads nowhere: {}", stdout.trim()));
    }
    drop(busy);

    // Any free port: the printed URL must work.
    let mut child = ChildServer::spawn(&mut up(0)).map_err(|e| format!("could not run the lab tool: {e}"))?;
    let (stdout, stderr) = child.take_output();
    // Its stderr is read to the end on a thread of its own: a pipe closed early would fail the
    // tool's first line there (a broken pipe), and a full one would stall it.
    let stderr_text = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut err) = stderr {
            use std::io::Read;
            let _ = err.read_to_string(&mut text);
        }
        text
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout.into_iter().next().expect("piped")).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let url = rx.iter().find(|l| l.contains("http://127.0.0.1:"));
    match url.as_deref().and_then(|u| u.split("http://127.0.0.1:").nth(1)?.split('/').next()?.parse::<u16>().ok()) {
        None => {
            child.wait_exit(Duration::from_secs(5));
            child.signal_group("KILL");
            let said = stderr_text.join().unwrap_or_default();
            problems.push(format!(
                "`cargo lab up --port 0` printed no URL with a port: {url:?}; its last words: {}",
                crate::sys::text::last_lines(&said, 5)
            ));
            return Ok(problems);
        }
        Some(0) => problems.push("`cargo lab up --port 0` printed port 0".into()),
        Some(port) => {
            if http::status(port, "GET", "/api/status", &token) != Some(200) {
                problems.push(format!("JupyterLab does not answer with the token at the printed port {port}"));
            }
            if http::status(port, "GET", "/api/status", "wrong-token") == Some(200) {
                problems.push("JupyterLab answered without the right token".into());
            }
            problems.extend(
                command_lines_with(&token)
                    .into_iter()
                    .map(|p| format!("the token is on the command line of process {p}")),
            );
            let _ = http::status(port, "POST", "/api/shutdown", &token);
        }
    }
    child.wait_exit(Duration::from_secs(20));
    if child.running() {
        problems.push("JupyterLab did not stop after /api/shutdown".into());
        child.signal_group("KILL");
    }
    child.wait();
    Ok(problems)
}
