//! `cargo lab hub`: one server for a room. A real JupyterHub (from PyPI, in the project venv) with
//! JupyterHub's configurable-http-proxy (from npm, `lab/hub/`), on 127.0.0.1 unless told otherwise.
//!
//! - Students log in with their name (from the list the instructor gives) and the room's password,
//!   JupyterHub's own `SharedPasswordAuthenticator`. The password is generated once into
//!   `.lab/hub/password` (mode 0600); it reaches the hub through its environment, never a command
//!   line. So does the token of the `lab` service, which this tool uses to manage the hub.
//! - Each student's server is JupyterLab with the lab's `rust` kernel, in a home of their own,
//!   `.lab/hub/home/<name>/`, holding their copy of the student notebooks (written once, never
//!   overwritten) and a `lab-support` link (the notebooks load `../lab-support`).
//! - All servers run as the instructor's Unix user (JupyterHub's `SimpleLocalProcessSpawner`): one
//!   server for a room trusts the room, as docs/instructors.md says.

use crate::notebooks::{check_outputs, source_text};
use crate::setup::{random_token, Paths};
use crate::CliResult;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PROXY_DIR: &str = "lab/hub";

/// `npm ci` for the proxy, once per lockfile.
fn ensure_proxy(paths: &Paths) -> CliResult<PathBuf> {
    crate::browser::npm_ci(&paths.root, PROXY_DIR, "JupyterHub's proxy")?;
    Ok(paths.root.join(PROXY_DIR).join("node_modules/.bin/configurable-http-proxy"))
}

/// A user name JupyterHub and a folder name both accept.
fn check_name(name: &str) -> CliResult<()> {
    let ok = !name.is_empty() && name.len() <= 32 && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok && !name.starts_with('-') {
        Ok(())
    } else {
        Err(format!("{name:?} is not a usable user name: use 1-32 lowercase letters, digits, '-' or '_'"))
    }
}

/// What a hub needs: where it keeps its state, who may log in, where it listens.
pub struct HubSetup {
    pub dir: PathBuf,
    pub users: Vec<String>,
    pub ip: String,
    pub port: u16,
}

/// A running hub, stopped on drop (the hub stops its users' servers; whatever is left of this hub
/// is killed).
pub struct Hub {
    child: Child,
    pub port: u16,
    token: String,
    id: String,
    pub password: String,
}

fn write_private(path: &Path, text: &str) -> CliResult<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(text.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))
}

/// The room's password: `dir/password`, made once.
fn password(dir: &Path) -> CliResult<String> {
    let file = dir.join("password");
    if let Ok(p) = std::fs::read_to_string(&file) {
        if p.trim().len() >= 8 {
            return Ok(p.trim().to_string());
        }
    }
    let p = random_token()?[..12].to_string();
    write_private(&file, &format!("{p}\n"))?;
    Ok(p)
}

/// A user's home: the student notebooks (only those not there yet) and the lab-support link.
fn prepare_home(paths: &Paths, home: &Path) -> CliResult<()> {
    let nbs = home.join("notebooks");
    std::fs::create_dir_all(&nbs).map_err(|e| format!("{}: {e}", nbs.display()))?;
    for (_, student) in crate::student::pairs(&paths.root)? {
        let to = nbs.join(student.file_name().unwrap_or_default());
        if !to.exists() {
            std::fs::copy(&student, &to).map_err(|e| format!("{} to {}: {e}", student.display(), to.display()))?;
        }
    }
    let link = home.join("lab-support");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink(paths.root.join("lab-support"), &link).map_err(|e| format!("{}: {e}", link.display()))?;
    }
    Ok(())
}

/// jupyterhub_config.py: secrets come from the environment, everything else is written here.
fn config(paths: &Paths, setup: &HubSetup, proxy: &Path) -> String {
    let py = |s: &str| format!("{s:?}");
    let list = |v: &[String]| format!("[{}]", v.iter().map(|s| py(s)).collect::<Vec<_>>().join(", "));
    let home = |v: &str| std::env::var(v).ok();
    let cargo_home = home("CARGO_HOME").unwrap_or_else(|| format!("{}/.cargo", home("HOME").unwrap_or_default()));
    let rustup_home = home("RUSTUP_HOME").unwrap_or_else(|| format!("{}/.rustup", home("HOME").unwrap_or_default()));
    let root_args = if crate::browser::is_root() { "[\"--allow-root\"]" } else { "[]" };
    format!(
        r#"# Written by `cargo lab hub` at every start; edit lab/src/hub.rs instead.
import os
c = get_config()
c.JupyterHub.bind_url = "http://{ip}:{port}"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{hub_port}"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_port}"
c.ConfigurableHTTPProxy.command = [{proxy}]
c.JupyterHub.db_url = "sqlite:///" + {db}
c.JupyterHub.cookie_secret_file = {cookie}
c.JupyterHub.pid_file = {pid}

c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = os.environ["LAB_HUB_PASSWORD"]
c.Authenticator.allowed_users = set({users})

# The lab tool's own service: creates users and starts and stops servers for `cargo lab hub`.
c.JupyterHub.services = [{{"name": "lab", "api_token": os.environ["LAB_HUB_TOKEN"]}}]
c.JupyterHub.load_roles = [{{
    "name": "lab-service",
    "scopes": ["admin:users", "admin:servers", "access:servers", "tokens"],
    "services": ["lab"],
}}]

c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = {homes} + "/{{username}}"
c.Spawner.cmd = [{singleuser}]
c.Spawner.args = {root_args}
c.Spawner.default_url = "/lab/tree/notebooks"
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120
# The user's servers find the venv's `rust` kernel first, and cargo and rustup where the
# instructor has them (HOME is the student's home).
c.Spawner.environment = {{
    "JUPYTER_PREFER_ENV_PATH": "1",
    "VIRTUAL_ENV": {venv},
    "CARGO_HOME": {cargo_home},
    "RUSTUP_HOME": {rustup_home},
    "LAB_HUB_ID": os.environ["LAB_HUB_ID"],
    # A warm spare kernel per server (lab/kernel-pool/) only when the instructor asks for one
    # (LAB_SPARE_KERNEL=1 cargo lab hub): it holds about one more kernel's memory per student.
    "LAB_SPARE_KERNEL": "{spare}",
}}
"#,
        ip = setup.ip,
        port = setup.port,
        hub_port = setup.port + 1,
        proxy_port = setup.port + 2,
        proxy = py(&proxy.display().to_string()),
        db = py(&setup.dir.join("jupyterhub.sqlite").display().to_string()),
        cookie = py(&setup.dir.join("jupyterhub_cookie_secret").display().to_string()),
        pid = py(&setup.dir.join("jupyterhub.pid").display().to_string()),
        users = list(&setup.users),
        homes = py(&setup.dir.join("home").display().to_string()),
        singleuser = py(&paths.venv_bin("jupyterhub-singleuser").display().to_string()),
        venv = py(&paths.venv.display().to_string()),
        cargo_home = py(&cargo_home),
        rustup_home = py(&rustup_home),
        spare = if std::env::var(crate::server::SPARE_ENV).as_deref() == Ok("1") { "1" } else { "0" },
    )
}

impl Hub {
    /// Starts JupyterHub for `setup.users` and waits until its API answers. Its output goes to `log`.
    pub fn start(paths: &Paths, setup: &HubSetup, log: &Path) -> CliResult<Hub> {
        crate::course::ensure_classroom(paths)?;
        let proxy = ensure_proxy(paths)?;
        crate::setup::ensure(paths, true)?;
        if setup.users.is_empty() {
            return Err("no users: give their names with --users alice,bob,carol".into());
        }
        for u in &setup.users {
            check_name(u)?;
        }
        std::fs::create_dir_all(setup.dir.join("home")).map_err(|e| format!("{}: {e}", setup.dir.display()))?;
        for u in &setup.users {
            prepare_home(paths, &setup.dir.join("home").join(u))?;
        }
        for port in [setup.port, setup.port + 1, setup.port + 2] {
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
                return Err(format!("port {port} on 127.0.0.1 is busy (the hub needs {0}, {1} and {2}): stop what uses it, or choose another with --port", setup.port, setup.port + 1, setup.port + 2));
            }
        }
        let config_file = setup.dir.join("jupyterhub_config.py");
        std::fs::write(&config_file, config(paths, setup, &proxy)).map_err(|e| format!("{}: {e}", config_file.display()))?;
        let password = password(&setup.dir)?;
        let token = random_token()?;
        let id = random_token()?[..16].to_string();
        let log_file = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut cmd = Command::new(paths.venv_bin("jupyterhub"));
        cmd.arg("-f").arg(&config_file).current_dir(&setup.dir);
        paths.jupyter_env(&mut cmd);
        cmd.env("LAB_HUB_PASSWORD", &password)
            .env("LAB_HUB_TOKEN", &token)
            .env("LAB_HUB_ID", &id)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().map_err(|e| e.to_string())?)
            .stderr(log_file);
        // Its own process group: a Ctrl-C on the terminal is for `cargo lab hub` to handle.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().map_err(|e| format!("could not start jupyterhub: {e}"))?;
        let mut hub = Hub { child, port: setup.port, token, id, password };
        let start = Instant::now();
        loop {
            if let Ok((200, _)) = hub.api("GET", "/hub/api/", None) {
                return Ok(hub);
            }
            if let Ok(Some(status)) = hub.child.try_wait() {
                return Err(format!("jupyterhub stopped ({status}) before it answered; see {}", log.display()));
            }
            if start.elapsed() > Duration::from_secs(60) {
                return Err(format!("jupyterhub did not answer within 60 s; see {}", log.display()));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// A request to the hub's REST API as the lab service.
    pub fn api(&self, method: &str, path: &str, body: Option<&Value>) -> CliResult<(u16, Value)> {
        request(self.port, method, path, Some(&self.token), body)
    }

    /// Waits until `user`'s server is ready.
    fn wait_ready(&self, user: &str, limit: Duration) -> CliResult<()> {
        let start = Instant::now();
        while start.elapsed() < limit {
            let (_, info) = self.api("GET", &format!("/hub/api/users/{user}"), None)?;
            if info["servers"][""]["ready"] == true {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Err(format!("{user}'s server was not ready within {} s", limit.as_secs()))
    }
}

impl Hub {
    /// Stops every user's server through the API (each server shuts its kernels down), then the
    /// hub, and kills whatever of it is still running; returns what had to be killed.
    pub fn stop(&mut self) -> Vec<String> {
        if let Ok((_, users)) = self.api("GET", "/hub/api/users", None) {
            for u in users.as_array().into_iter().flatten().filter_map(|u| u["name"].as_str()) {
                // Each kernel first, the way JupyterLab shuts one down: a single-user server stopped
                // by the hub exits without shutting its kernels down, and evcxr does not notice
                // (measured: every kernel was left running).
                if let Ok((200, kernels)) = self.api("GET", &format!("/user/{u}/api/kernels"), None) {
                    for k in kernels.as_array().into_iter().flatten().filter_map(|k| k["id"].as_str()) {
                        let _ = self.api("DELETE", &format!("/user/{u}/api/kernels/{k}"), None);
                    }
                }
                let _ = self.api("DELETE", &format!("/hub/api/users/{u}/server"), None);
            }
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(30) {
                let running = self.api("GET", "/hub/api/users", None).map(|(_, v)| v.as_array().into_iter().flatten().any(|u| !u["servers"].as_object().is_none_or(|m| m.is_empty()))).unwrap_or(false);
                if !running {
                    break;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        // The hub stops every user server when it gets SIGTERM (JupyterHub's cleanup_servers).
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Anything of this hub still running (a server or kernel the hub lost track of).
        let left = processes_with(&format!("LAB_HUB_ID={}", self.id));
        let mut killed = Vec::new();
        for (pid, _) in &left {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            // SAFETY: kill(2) with a pid read from /proc just now; at worst it is gone already.
            unsafe {
                libc::kill(*pid, libc::SIGKILL);
            }
            killed.push(format!("{} ({pid})", comm.trim()));
        }
        killed
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One HTTP/1.1 request to 127.0.0.1:`port`: the status and the JSON body (Null if none).
pub fn request(port: u16, method: &str, path: &str, token: Option<&str>, body: Option<&Value>) -> CliResult<(u16, Value)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("127.0.0.1:{port}: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token.map(|t| format!("Authorization: token {t}\r\n")).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| format!("{method} {path}: {e}"))?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| format!("{method} {path}: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text.split_once("\r\n\r\n").ok_or_else(|| format!("{method} {path}: no HTTP answer"))?;
    let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).ok_or_else(|| format!("{method} {path}: bad status line"))?;
    let chunked = head.lines().any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.to_ascii_lowercase().contains("chunked"));
    let payload = if chunked { dechunk(rest) } else { rest.to_string() };
    Ok((status, serde_json::from_str(&payload).unwrap_or(Value::Null)))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Processes whose environment holds `needle` (`KEY=value`), with their environment.
pub fn processes_with(needle: &str) -> Vec<(i32, Vec<String>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(env) = std::fs::read(e.path().join("environ")) else { continue };
        let vars: Vec<String> = env.split(|b| *b == 0).map(|v| String::from_utf8_lossy(v).into_owned()).collect();
        if vars.iter().any(|v| v == needle) {
            out.push((pid, vars));
        }
    }
    out
}

/// `cargo lab hub`: starts the hub for a room and keeps it running until Ctrl-C.
pub fn serve(users: Vec<String>, ip: String, port: u16) -> CliResult<()> {
    let paths = Paths::new();
    if ip != "127.0.0.1" {
        eprintln!("warning: the hub listens on {ip}: anyone who can reach this machine and knows the room's password gets a server. Put it behind HTTPS (a reverse proxy) before a real class.");
    }
    let setup = HubSetup { dir: paths.state.join("hub"), users, ip, port };
    let log = setup.dir.join("jupyterhub.log");
    std::fs::create_dir_all(&setup.dir).map_err(|e| format!("{}: {e}", setup.dir.display()))?;
    let mut hub = Hub::start(&paths, &setup, &log)?;
    println!("JupyterHub for {} students: http://{}:{port}/", setup.users.len(), setup.ip);
    println!("They log in with their name ({}) and the room's password, which is in {} (not printed here).", setup.users.join(", "), setup.dir.join("password").display());
    println!("Their notebooks: {}/home/<name>/notebooks/. The hub's log: {}. Ctrl-C stops the hub and every server.", setup.dir.display(), log.display());
    // Ctrl-C is ours alone (the hub runs in a process group of its own): `stop` then shuts every
    // kernel and server down in order, which JupyterHub's own SIGINT handling would not.
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_interrupt as *const () as libc::sighandler_t);
    }
    while !INTERRUPTED.load(Ordering::SeqCst) {
        if let Ok(Some(status)) = hub.child.try_wait() {
            return Err(format!("jupyterhub stopped ({status}); see {}", log.display()));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    eprintln!("\nstopping every kernel, every server and the hub ...");
    let killed = hub.stop();
    if !killed.is_empty() {
        eprintln!("(killed what was still running: {})", killed.join(", "));
    }
    Ok(())
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// How long one read of a kernel's websocket waits before `RemoteKernel::execute` looks at its
/// deadline again.
const POLL: Duration = Duration::from_secs(5);
/// What a Jupyter server with the lab's extension logs when its kernels get the lab's kernel
/// manager (lab/kernel-pool/lab_kernel_pool.py), which keeps evcxr alive through Jupyter's nudge.
pub const LAB_KERNEL_MANAGER_LINE: &str = "lab kernel pool: kernels are managed by LabKernelManager";
/// The longest a test waits for one cell: with four kernels at once on two cores, all of
/// notebook 03 takes about 120 s.
pub const CELL_LIMIT: Duration = Duration::from_secs(300);

/// A kernel of a Jupyter server, driven over its websocket as JupyterLab does. `base` is the
/// server's URL prefix: `/user/<name>` behind the hub, empty for `cargo lab up`'s JupyterLab.
pub struct RemoteKernel {
    ws: tungstenite::WebSocket<TcpStream>,
    session: String,
    pub id: String,
}

impl RemoteKernel {
    /// Opens a notebook session (the kernel starts in the notebook's folder) and its channels.
    pub fn open(port: u16, base: &str, token: &str, notebook: &str) -> CliResult<RemoteKernel> {
        let body = json!({"path": notebook, "type": "notebook", "name": "", "kernel": {"name": "rust"}});
        let (status, session) = request(port, "POST", &format!("{base}/api/sessions"), Some(token), Some(&body))?;
        let kernel = session["kernel"]["id"].as_str().ok_or_else(|| format!("{base}: no kernel from POST /api/sessions ({status}): {session}"))?;
        RemoteKernel::connect(port, base, token, kernel)
    }

    /// Opens the channels of a running kernel (after a restart too, as JupyterLab reconnects then).
    pub fn connect(port: u16, base: &str, token: &str, kernel: &str) -> CliResult<RemoteKernel> {
        let session_id = random_token()?;
        let url = format!("ws://127.0.0.1:{port}{base}/api/kernels/{kernel}/channels?session_id={session_id}");
        use tungstenite::client::IntoClientRequest;
        let mut req = url.as_str().into_client_request().map_err(|e| e.to_string())?;
        req.headers_mut().insert("Authorization", format!("token {token}").parse().map_err(|_| "bad token".to_string())?);
        let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        // The server answers once the kernel has answered its nudge: seconds when kernels start
        // together.
        stream.set_read_timeout(Some(Duration::from_secs(120))).map_err(|e| e.to_string())?;
        let (ws, _) = tungstenite::client(req, stream).map_err(|e| format!("{base}: kernel websocket: {e}"))?;
        // Then short reads, so that `execute` can keep its own deadline: the server pings every
        // 30 s, so a read timeout alone would never fire while a lost cell waited forever.
        ws.get_ref().set_read_timeout(Some(POLL)).map_err(|e| e.to_string())?;
        Ok(RemoteKernel { ws, session: session_id, id: kernel.to_string() })
    }

    pub fn close(mut self) {
        let _ = self.ws.close(None);
    }

    /// Runs one cell and returns its outputs in notebook form, and its execution count. Fails if
    /// the kernel dies or restarts meanwhile (its answer would never come), or if the cell has not
    /// finished within `limit`.
    pub fn execute(&mut self, code: &str, limit: Duration) -> CliResult<(Vec<Value>, Value)> {
        let start = Instant::now();
        let msg_id = random_token()?;
        let msg = json!({
            "header": {"msg_id": msg_id, "username": "lab", "session": self.session, "msg_type": "execute_request", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": false, "store_history": true, "user_expressions": {}, "allow_stdin": false, "stop_on_error": true},
        });
        self.ws.send(tungstenite::Message::text(msg.to_string())).map_err(|e| format!("sending a cell: {e}"))?;
        let (mut outputs, mut count, mut idle, mut replied) = (Vec::new(), Value::Null, false, false);
        let first_line = code.lines().find(|l| !l.trim().is_empty()).unwrap_or("").chars().take(80).collect::<String>();
        while !(idle && replied) {
            if start.elapsed() > limit {
                return Err(format!("the cell starting `{first_line}` had not finished after {} s ({} outputs so far)", limit.as_secs(), outputs.len()));
            }
            let frame = match self.ws.read() {
                Ok(frame) => frame,
                Err(tungstenite::Error::Io(e)) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
                Err(e) => return Err(format!("reading the kernel's answer: {e}")),
            };
            let Ok(text) = frame.to_text() else { continue };
            let Ok(m) = serde_json::from_str::<Value>(text) else { continue };
            // The server's word that the kernel's process ended: it has no parent message.
            if m["header"]["msg_type"] == "status" && matches!(m["content"]["execution_state"].as_str(), Some("restarting" | "autorestarting" | "dead")) {
                return Err(format!("the kernel's process died during the cell starting `{first_line}` (the server says {})", m["content"]["execution_state"]));
            }
            if m["parent_header"]["msg_id"] != msg_id.as_str() {
                continue;
            }
            let c = &m["content"];
            match (m["channel"].as_str(), m["header"]["msg_type"].as_str()) {
                (Some("shell"), Some("execute_reply")) => {
                    replied = true;
                    count = c["execution_count"].clone();
                }
                (Some("iopub"), Some("status")) if c["execution_state"] == "idle" => idle = true,
                (Some("iopub"), Some("stream")) => outputs.push(json!({"output_type": "stream", "name": c["name"], "text": c["text"]})),
                (Some("iopub"), Some(kind @ ("display_data" | "execute_result"))) => {
                    let mut o = json!({"output_type": kind, "data": c["data"], "metadata": c["metadata"]});
                    if kind == "execute_result" {
                        o["execution_count"] = c["execution_count"].clone();
                    }
                    outputs.push(o);
                }
                (Some("iopub"), Some("error")) => outputs.push(json!({"output_type": "error", "ename": c["ename"], "evalue": c["evalue"], "traceback": c["traceback"]})),
                _ => {}
            }
        }
        Ok((outputs, count))
    }
}

/// One user's run of a notebook through the hub: the executed notebook and its wall time.
fn run_through_hub(port: u16, user: &str, token: &str, notebook_rel: &str, nb: &Value) -> CliResult<(Value, f64)> {
    let start = Instant::now();
    let mut kernel = RemoteKernel::open(port, &format!("/user/{user}"), token, notebook_rel)?;
    let mut executed = nb.clone();
    for cell in executed["cells"].as_array_mut().into_iter().flatten().filter(|c| c["cell_type"] == "code") {
        let (outputs, count) = kernel.execute(&source_text(cell), CELL_LIMIT)?;
        cell["outputs"] = Value::Array(outputs);
        cell["execution_count"] = count;
    }
    kernel.close();
    Ok((executed, start.elapsed().as_secs_f64()))
}

/// The last `n` lines of a text file (empty if it cannot be read).
pub fn tail(file: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Memory (kB) of a process, from /proc: its proportional set size (shared pages divided among
/// the processes that share them, so that a sum over processes counts each page once).
pub fn pss_kb(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Pss:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// Busy and total jiffies of the whole machine, from /proc/stat.
fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Users in the hub test.
pub const TEST_USERS: usize = 4;
/// The notebook every test user runs.
const TEST_NOTEBOOK: &str = "03-adversarial";

/// The hub test: a hub for four students; each logs in through the hub's API with the room's
/// password, starts their server and runs notebook 03 (the student version, filled in from the
/// solution) there, all at once. Every check must pass. Memory per kernel, time per notebook and
/// CPU go to the log (`target/hub-test.log`) and the summary.
pub fn test(paths: &Paths) -> CliResult<Vec<String>> {
    let log = paths.root.join("target/hub-test.log");
    // CI shows only what the test prints: the hub's log goes with any error.
    run_test(paths, &log).map_err(|e| format!("{e}\nthe hub's last lines ({}):\n{}", log.display(), tail(&log, 40)))
}

fn run_test(paths: &Paths, log: &Path) -> CliResult<Vec<String>> {
    let dir = paths.root.join("target/hub-test");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let users: Vec<String> = (1..=TEST_USERS).map(|i| format!("student{i}")).collect();
    // Three free ports in a row.
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    let port = (0..50)
        .filter_map(|_| std::net::TcpListener::bind(("127.0.0.1", 0)).and_then(|l| l.local_addr()).ok().map(|a| a.port()))
        .find(|&p| p < 65000 && free(p + 1) && free(p + 2))
        .ok_or("no three free ports in a row on 127.0.0.1")?;
    let hub = Hub::start(paths, &HubSetup { dir: dir.clone(), users: users.clone(), ip: "127.0.0.1".into(), port }, log)?;
    let mut problems = Vec::new();
    let solution = crate::notebooks::read_json(&paths.root.join(format!("notebooks/solutions/{TEST_NOTEBOOK}.ipynb")))?;
    let student = crate::notebooks::read_json(&paths.root.join(format!("notebooks/{TEST_NOTEBOOK}.ipynb")))?;
    let filled = crate::course::filled_in(&student, &solution)?;
    // Log in (the hub's token API with name and password, as a script of a student would) and start.
    let mut tokens = HashMap::new();
    for u in &users {
        let body = json!({"auth": {"username": u, "password": hub.password}, "note": "cargo lab test (hub)", "expires_in": 3600});
        let (status, answer) = request(hub.port, "POST", &format!("/hub/api/users/{u}/tokens"), None, Some(&body))?;
        let token = answer["token"].as_str().ok_or_else(|| format!("{u} could not log in ({status}): {answer}"))?.to_string();
        let (wrong, _) = request(hub.port, "POST", &format!("/hub/api/users/{u}/tokens"), None, Some(&json!({"auth": {"username": u, "password": "not-the-password"}})))?;
        if wrong / 100 == 2 {
            problems.push(format!("{u} logged in with a wrong password ({wrong})"));
        }
        let (status, answer) = request(hub.port, "POST", &format!("/hub/api/users/{u}/server"), Some(&token), None)?;
        if status / 100 != 2 {
            return Err(format!("{u}'s server did not start ({status}): {answer}"));
        }
        crate::course::write_notebook(&dir.join("home").join(u).join(format!("notebooks/{TEST_NOTEBOOK}.ipynb")), &filled)?;
        tokens.insert(u.clone(), token);
    }
    let (outsider, _) = request(hub.port, "POST", "/hub/api/users/mallory/tokens", None, Some(&json!({"auth": {"username": "mallory", "password": hub.password}})))?;
    if outsider / 100 == 2 {
        problems.push(format!("a user not on the list logged in ({outsider})"));
    }
    for u in &users {
        hub.wait_ready(u, Duration::from_secs(120))?;
    }
    // Sample memory while the notebooks run: per user, the kernel's processes (evcxr and what it
    // runs: cargo, rustc, the process that runs the cells) and the user's server apart.
    let done = Arc::new(AtomicBool::new(false));
    let peaks: Arc<Mutex<HashMap<String, (u64, u64)>>> = Arc::default();
    let sampler = {
        let (done, peaks, id) = (done.clone(), peaks.clone(), hub.id.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                let mut now: HashMap<String, (u64, u64)> = HashMap::new();
                for (pid, env) in processes_with(&format!("LAB_HUB_ID={id}")) {
                    let Some(user) = env.iter().find_map(|v| v.strip_prefix("JUPYTERHUB_USER=")) else { continue };
                    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                    let entry = now.entry(user.to_string()).or_default();
                    if comm.starts_with("python") || comm.starts_with("jupyterhub-sing") {
                        entry.1 += pss_kb(pid);
                    } else {
                        entry.0 += pss_kb(pid);
                    }
                }
                let mut p = peaks.lock().unwrap_or_else(|e| e.into_inner());
                for (u, (k, s)) in now {
                    let e = p.entry(u).or_default();
                    *e = (e.0.max(k), e.1.max(s));
                }
                drop(p);
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    let cpu_before = cpu_jiffies();
    let wall = Instant::now();
    let runs: Vec<_> = users
        .iter()
        .map(|u| {
            let (u, token, port, filled) = (u.clone(), tokens[u].clone(), hub.port, filled.clone());
            std::thread::spawn(move || (u.clone(), run_through_hub(port, &u, &token, &format!("notebooks/{TEST_NOTEBOOK}.ipynb"), &filled)))
        })
        .collect();
    let mut seconds = Vec::new();
    for r in runs {
        let (u, outcome) = r.join().map_err(|_| "a notebook thread panicked".to_string())?;
        match outcome {
            Ok((executed, s)) => {
                let out = dir.join(format!("{u}-{TEST_NOTEBOOK}.ipynb"));
                crate::course::write_notebook(&out, &executed)?;
                let passes = executed["cells"].as_array().into_iter().flatten().filter(|c| c["metadata"]["nbgrader"]["grade"] == true).count();
                let shown: usize = executed["cells"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|c| c["metadata"]["nbgrader"]["grade"] == true && c["outputs"].to_string().contains("PASS ·"))
                    .count();
                if passes == 0 || shown != passes {
                    problems.push(format!("{u}: {shown} of {passes} checks passed"));
                }
                problems.extend(check_outputs(&executed, false).into_iter().map(|p| format!("{u}: {p}")));
                seconds.push((u, s));
            }
            Err(e) => problems.push(format!("{u}: {e}")),
        }
    }
    let managed = std::fs::read_to_string(log).unwrap_or_default().matches(LAB_KERNEL_MANAGER_LINE).count();
    if managed < users.len() {
        problems.push(format!("{managed} of {} servers said \"{LAB_KERNEL_MANAGER_LINE}\": their kernels may die when a notebook connects (lab/kernel-pool/)", users.len()));
    }
    if !problems.is_empty() {
        problems.push(format!("the hub's last lines ({}):\n{}", log.display(), tail(&log, 40)));
    }
    let wall = wall.elapsed().as_secs_f64();
    let cpu_after = cpu_jiffies();
    done.store(true, Ordering::SeqCst);
    let _ = sampler.join();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let busy = (cpu_after.0 - cpu_before.0) as f64 / ticks;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let peaks = peaks.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut report = format!("hub test: {} students ran {TEST_NOTEBOOK} at once on {cores} cores, {wall:.0} s wall, {busy:.0} core-seconds busy ({:.0} per student)\n", users.len(), busy / users.len() as f64);
    for (u, s) in &seconds {
        let (k, srv) = peaks.get(u).copied().unwrap_or_default();
        report.push_str(&format!("  {u}: notebook {s:.0} s; peak memory: kernel {} MB, server {} MB\n", k / 1024, srv / 1024));
    }
    eprint!("{report}");
    let mut hub = hub;
    let stopping = Instant::now();
    let left = hub.stop();
    eprintln!("  the hub and every server stopped in {:.0} s", stopping.elapsed().as_secs_f64());
    if !left.is_empty() {
        problems.push(format!("still running after the hub stopped, killed: {}", left.join(", ")));
    }
    // After the hub has exited: it writes the same file.
    let mut log_file = std::fs::OpenOptions::new().append(true).open(log).map_err(|e| e.to_string())?;
    let _ = writeln!(log_file, "\n==== cargo lab test (hub) ====\n{report}");
    let _ = writeln!(log_file, "{}", json!({"users": users.len(), "cores": cores, "wall_s": wall, "busy_core_s": busy, "notebook_s": seconds.iter().map(|(_, s)| *s).collect::<Vec<_>>(), "kernel_peak_mb": peaks.values().map(|p| p.0 / 1024).collect::<Vec<_>>(), "server_peak_mb": peaks.values().map(|p| p.1 / 1024).collect::<Vec<_>>()}));
    Ok(problems)
}
