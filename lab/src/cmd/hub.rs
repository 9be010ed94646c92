//! `cargo lab hub`: one server for a room. A real JupyterHub (from PyPI, in the project venv) with
//! JupyterHub's configurable-http-proxy (from npm, `lab/hub/`), on 127.0.0.1 unless told otherwise.
//!
//! - Each student logs in with their name (from the list the instructor gives) and a password of
//!   their own, set at their first login: JupyterHub's `FirstUseAuthenticator`, as The Littlest
//!   JupyterHub uses. The instructor is the hub's admin, `instructor`, whose password this tool
//!   generates once into `.lab/hub/password` (mode 0600); it reaches the hub through its
//!   environment, never a command line. So does the token of the `lab` service, which this tool
//!   uses to manage the hub.
//! - As root (a lab server, CI), each student's server runs as a Unix user of their own,
//!   `jupyter-<name>`, in a home only they can read, and cannot read the solutions, `course/` or
//!   another student's home (`isolation`). Without root every server runs as the instructor's user,
//!   which the tool says at start, and listening beyond 127.0.0.1 then needs `--shared-unix-user`.
//! - Each server is JupyterLab with the lab's `rust` kernel; the home holds the student's copy of
//!   the student notebooks (written once, never overwritten) and a `lab-support` link (the notebooks
//!   load `../lab-support`).
//! - Servers idle for `--cull-after` seconds (default an hour) are stopped by
//!   jupyterhub-idle-culler, so their memory comes back; the student's files stay.

use super::isolation::Runtime;
use crate::paths::{Paths, SPARE_ENV};
use crate::sys::child::{ChildServer, NotReady};
use crate::sys::hex::random_token;
use crate::sys::http::request;
use crate::sys::process::is_root;
use crate::sys::procfs::kill_processes_with;
use crate::sys::{At, CliResult};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const PROXY_DIR: &str = "lab/hub";

/// `npm ci` for the proxy, once per lockfile.
fn ensure_proxy(paths: &Paths) -> CliResult<PathBuf> {
    super::setup::npm_ci(&paths.root, PROXY_DIR, "JupyterHub's proxy")?;
    Ok(paths.root.join(PROXY_DIR).join("node_modules/.bin/configurable-http-proxy"))
}

/// A user name JupyterHub and a folder name both accept.
fn check_name(name: &str) -> CliResult<()> {
    // 24: a Unix user name holds 32 characters, and the student's is `jupyter-<name>`.
    let ok = !name.is_empty()
        && name.len() <= 24
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok && !name.starts_with('-') {
        Ok(())
    } else {
        Err(format!("{name:?} is not a usable user name: use 1-24 lowercase letters, digits, '-' or '_'"))
    }
}

/// The hub's admin (the instructor), who may log in beside the students.
pub const ADMIN: &str = "instructor";
/// Servers idle this long are stopped, unless the instructor says otherwise (`--cull-after`).
pub const CULL_AFTER_S: u64 = 3600;

/// What a hub needs: where it keeps its state, who may log in, where it listens.
pub struct HubSetup {
    pub dir: PathBuf,
    pub users: Vec<String>,
    pub ip: String,
    pub port: u16,
    /// Seconds of inactivity after which a server is stopped; 0 never.
    pub cull_after: u64,
}

/// A running hub, stopped on drop (the hub stops its users' servers; whatever is left of this hub
/// is killed).
pub struct Hub {
    server: ChildServer,
    pub port: u16,
    token: String,
    /// Marks every process of this hub (`LAB_HUB_ID=<id>` in its environment).
    pub id: String,
    /// The admin's (`ADMIN`) password.
    pub password: String,
    /// Each user's home, by hub user name.
    pub homes: std::collections::HashMap<String, PathBuf>,
    /// Whether each student's server runs as a Unix user of their own.
    pub isolated: bool,
}

fn write_private(path: &Path, text: &str) -> CliResult<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).at(path)?;
    f.write_all(text.as_bytes()).at(path)
}

/// The admin's password: `dir/password`, made once.
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

/// A user's home: the student notebooks (only those not there yet) and the lab-support link (made
/// again when it points to another checkout), made as `owner`'s (their Unix user) where there is
/// one, by `isolation::install` (the student owns the home, so nothing there is followed).
fn prepare_home(paths: &Paths, home: &Path, owner: Option<&str>) -> CliResult<()> {
    let mut notebooks = Vec::new();
    for (_, student) in super::student::pairs(&paths.root)? {
        let name = student.file_name().unwrap_or_default().to_string_lossy().into_owned();
        notebooks.push((name, std::fs::read(&student).at(&student)?));
    }
    if owner.is_none() {
        std::fs::create_dir_all(home).at(home)?;
    }
    super::isolation::install(home, owner, &notebooks, &paths.root.join("lab-support"))
}

/// jupyterhub_config.py: secrets come from the environment, everything else is written here.
fn config(paths: &Paths, setup: &HubSetup, proxy: &Path, runtime: Option<&Runtime>) -> String {
    let py = |s: &str| format!("{s:?}");
    let list = |v: &[String]| format!("[{}]", v.iter().map(|s| py(s)).collect::<Vec<_>>().join(", "));
    let home = |v: &str| std::env::var(v).ok();
    // A warm spare kernel per server unless the instructor turns them off (LAB_SPARE_KERNEL=0).
    // Without a Unix user per student, every kernel takes one of this checkout's slots: a spare
    // each would leave a room of more than half of them without kernels, unless asked for.
    let shared_slots = runtime.is_none() && setup.users.len() * 2 > super::launcher::SLOTS;
    let spare = match std::env::var(SPARE_ENV).as_deref() {
        Ok("0") => "0",
        Ok("1") => "1",
        _ if shared_slots => {
            eprintln!(
                "note: no spare kernels: {} students with a spare each would need {} kernel slots, and without root they share this checkout's {} (LAB_SPARE_KERNEL=1 asks for spares anyway)",
                setup.users.len(),
                setup.users.len() * 2,
                super::launcher::SLOTS
            );
            "0"
        }
        _ => "1",
    };
    let spawner = match runtime {
        // Each student a Unix user of their own (see `isolation`), started from the runtime copies.
        Some(rt) => format!(
            r#"import pwd
from jupyterhub.spawner import LocalProcessSpawner, set_user_setuid

class LabSpawner(LocalProcessSpawner):
    """A student's server as their own Unix user, jupyter-<name> (as The Littlest JupyterHub names them)."""
    def make_preexec_fn(self, name):
        return set_user_setuid("jupyter-" + name)

    def user_env(self, env):
        unix = pwd.getpwnam("jupyter-" + self.user.name)
        env.update(USER=unix.pw_name, HOME=unix.pw_dir, SHELL=unix.pw_shell)
        return env

c.JupyterHub.spawner_class = LabSpawner
c.Spawner.cmd = [{python}, "-m", "jupyterhub.singleuser"]
c.Spawner.environment = {{
    "PATH": {path},
    "LD_LIBRARY_PATH": {library_path},
    "VIRTUAL_ENV": {venv},
    "JUPYTER_PREFER_ENV_PATH": "1",
    {rust_src}"LAB_HUB_ID": os.environ["LAB_HUB_ID"],
    "LAB_SPARE_KERNEL": "{spare}",
}}
"#,
            python = py(&rt.python().display().to_string()),
            path = py(&rt.path()),
            library_path = py(&rt.library_path()),
            venv = py(&rt.venv().display().to_string()),
            // The instructor's check that the trimmed sources are current (see `analyzer`) reads the
            // toolchain's own, which a student cannot: it is made here.
            rust_src = super::analyzer::kernel_env(paths)
                .into_iter()
                .filter(|(k, _)| *k == super::rust_src::RUST_SRC_ENV)
                .map(|(k, v)| format!("{}: {}, ", py(k), py(&v.to_string_lossy())))
                .collect::<String>(),
        ),
        None => {
            let cargo_home =
                home("CARGO_HOME").unwrap_or_else(|| format!("{}/.cargo", home("HOME").unwrap_or_default()));
            let rustup_home =
                home("RUSTUP_HOME").unwrap_or_else(|| format!("{}/.rustup", home("HOME").unwrap_or_default()));
            let root_args = if is_root() { "[\"--allow-root\"]" } else { "[]" };
            format!(
                r#"c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = {homes} + "/{{username}}"
c.Spawner.cmd = [{singleuser}]
c.Spawner.args = {root_args}
# The user's servers find the venv's `rust` kernel first, and cargo and rustup where the
# instructor has them (HOME is the student's home).
c.Spawner.environment = {{
    "JUPYTER_PREFER_ENV_PATH": "1",
    "VIRTUAL_ENV": {venv},
    "CARGO_HOME": {cargo_home},
    "RUSTUP_HOME": {rustup_home},
    "LAB_HUB_ID": os.environ["LAB_HUB_ID"],
    "LAB_SPARE_KERNEL": "{spare}",
}}
"#,
                homes = py(&setup.dir.join("home").display().to_string()),
                singleuser = py(&paths.venv_bin("jupyterhub-singleuser").display().to_string()),
                venv = py(&paths.venv.display().to_string()),
                cargo_home = py(&cargo_home),
                rustup_home = py(&rustup_home),
            )
        }
    };
    let culler = if setup.cull_after == 0 {
        String::new()
    } else {
        format!(
            r#"# Servers idle for {cull} s are stopped (their files stay), so a room's memory comes back.
c.JupyterHub.services.append({{
    "name": "idle-culler",
    "command": [sys.executable, "-m", "jupyterhub_idle_culler", "--timeout={cull}", "--cull-every={every}"],
    # Marked, so that `cargo lab hub` stops it before the hub: a SIGINT from the hub that lands
    # while it fetches is swallowed, and the hub then waited on it (measured: 30 s, then killed).
    "environment": {{"LAB_HUB_ID": os.environ["LAB_HUB_ID"], "LAB_HUB_CULLER": os.environ["LAB_HUB_ID"]}},
}})
c.JupyterHub.load_roles.append({{
    "name": "idle-culler",
    "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
    "services": ["idle-culler"],
}})
"#,
            cull = setup.cull_after,
            every = (setup.cull_after / 2).clamp(1, 600),
        )
    };
    let mut users = setup.users.clone();
    users.push(ADMIN.to_string());
    format!(
        r#"# Written by `cargo lab hub` at every start; edit lab/src/cmd/hub.rs instead.
import dbm, os, sys
import bcrypt
c = get_config()
c.JupyterHub.bind_url = "http://{ip}:{port}"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{hub_port}"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_port}"
c.ConfigurableHTTPProxy.command = [{proxy}]
c.JupyterHub.db_url = "sqlite:///" + {db}
c.JupyterHub.cookie_secret_file = {cookie}
c.JupyterHub.pid_file = {pid}

# Each student sets their own password at their first login (FirstUseAuthenticator, as The
# Littlest JupyterHub does); the admin's is set here, from the password this tool made.
c.JupyterHub.authenticator_class = "firstuseauthenticator.FirstUseAuthenticator"
c.FirstUseAuthenticator.dbm_path = {dbm}
c.FirstUseAuthenticator.create_users = False
c.FirstUseAuthenticator.min_password_length = 8
c.Authenticator.allowed_users = set({users})
c.Authenticator.admin_users = {{"{admin}"}}
with dbm.open({dbm}, "c", 0o600) as db:
    if b"{admin}" not in db:
        db[b"{admin}"] = bcrypt.hashpw(os.environ["LAB_HUB_PASSWORD"].encode(), bcrypt.gensalt())

# The lab tool's own service: creates users and starts and stops servers for `cargo lab hub`.
c.JupyterHub.services = [{{"name": "lab", "api_token": os.environ["LAB_HUB_TOKEN"]}}]
c.JupyterHub.load_roles = [{{
    "name": "lab-service",
    "scopes": ["admin:users", "admin:servers", "access:servers", "tokens"],
    "services": ["lab"],
}}]
{culler}
c.Spawner.default_url = "/lab/tree/notebooks"
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120
# A warm spare kernel per server (lab/kernel-pool/) unless the instructor turns them off
# (LAB_SPARE_KERNEL=0 cargo lab hub): it holds about one more idle kernel's memory per student.
{spawner}"#,
        ip = setup.ip,
        port = setup.port,
        hub_port = setup.port + 1,
        proxy_port = setup.port + 2,
        proxy = py(&proxy.display().to_string()),
        db = py(&setup.dir.join("jupyterhub.sqlite").display().to_string()),
        cookie = py(&setup.dir.join("jupyterhub_cookie_secret").display().to_string()),
        pid = py(&setup.dir.join("jupyterhub.pid").display().to_string()),
        dbm = py(&setup.dir.join("passwords.dbm").display().to_string()),
        users = list(&users),
        admin = ADMIN,
    )
}

impl Hub {
    /// Starts JupyterHub for `setup.users` and waits until its API answers. Its output goes to `log`.
    pub fn start(paths: &Paths, setup: &HubSetup, log: &Path) -> CliResult<Hub> {
        super::course::ensure_classroom(paths)?;
        let proxy = ensure_proxy(paths)?;
        super::setup::ensure(paths, true)?;
        if setup.users.is_empty() {
            return Err("no users: give their names with --users alice,bob,carol".into());
        }
        for u in &setup.users {
            check_name(u)?;
            if u == ADMIN {
                return Err(format!("{ADMIN:?} is the hub's admin (you): give the students other names"));
            }
        }
        let mut everyone = setup.users.clone();
        everyone.push(ADMIN.to_string());
        let (runtime, homes) = if is_root() {
            let (rt, homes) = super::isolation::prepare(paths, &everyone)?;
            (Some(rt), homes)
        } else {
            (None, everyone.iter().map(|u| setup.dir.join("home").join(u)).collect())
        };
        for (u, home) in everyone.iter().zip(&homes) {
            let owner = runtime.as_ref().map(|_| super::isolation::unix_name(u));
            prepare_home(paths, home, owner.as_deref())?;
        }
        // The hub's own files (its database, the passwords' hashes, the cookie secret): its alone.
        std::fs::set_permissions(&setup.dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).at(&setup.dir)?;
        for port in [setup.port, setup.port + 1, setup.port + 2] {
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
                return Err(format!("port {port} on 127.0.0.1 is busy (the hub needs {0}, {1} and {2}): stop what uses it, or choose another with --port", setup.port, setup.port + 1, setup.port + 2));
            }
        }
        let config_file = setup.dir.join("jupyterhub_config.py");
        std::fs::write(&config_file, config(paths, setup, &proxy, runtime.as_ref())).at(&config_file)?;
        let password = password(&setup.dir)?;
        let token = random_token()?;
        let id = random_token()?[..16].to_string();
        let log_file = std::fs::File::create(log).at(log)?;
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
        let server = ChildServer::spawn(&mut cmd).map_err(|e| format!("could not start jupyterhub: {e}"))?;
        let homes = everyone.into_iter().zip(homes).collect();
        let mut hub = Hub { server, port: setup.port, token, id, password, homes, isolated: runtime.is_some() };
        let answers = || matches!(request(hub.port, "GET", "/hub/api/", Some(&hub.token), None), Ok((200, _)));
        match hub.server.wait_ready(Duration::from_secs(60), Duration::from_millis(300), answers) {
            Ok(()) => Ok(hub),
            Err(NotReady::Exited(status)) => {
                Err(format!("jupyterhub stopped ({status}) before it answered; see {}", log.display()))
            }
            Err(NotReady::TimedOut) => Err(format!("jupyterhub did not answer within 60 s; see {}", log.display())),
        }
    }

    /// A request to the hub's REST API as the lab service.
    pub fn api(&self, method: &str, path: &str, body: Option<&Value>) -> CliResult<(u16, Value)> {
        request(self.port, method, path, Some(&self.token), body)
    }

    /// Waits until `user`'s server is ready.
    pub fn wait_ready(&self, user: &str, limit: Duration) -> CliResult<()> {
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
                let running = self
                    .api("GET", "/hub/api/users", None)
                    .map(|(_, v)| {
                        v.as_array()
                            .into_iter()
                            .flatten()
                            .any(|u| !u["servers"].as_object().is_none_or(|m| m.is_empty()))
                    })
                    .unwrap_or(false);
                if !running {
                    break;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        // The culler first (see its entry in the config); it keeps no state.
        kill_processes_with(&format!("LAB_HUB_CULLER={}", self.id));
        // The hub stops every user server when it gets SIGTERM (JupyterHub's cleanup_servers).
        self.server.signal(libc::SIGTERM);
        self.server.wait_exit(Duration::from_secs(30));
        self.server.kill();
        self.server.wait();
        // Anything of this hub still running (a server or kernel the hub lost track of).
        kill_processes_with(&format!("LAB_HUB_ID={}", self.id))
            .into_iter()
            .map(|(pid, name)| format!("{name} ({pid})"))
            .collect()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `cargo lab hub`: starts the hub for a room and keeps it running until Ctrl-C.
pub fn serve(users: Vec<String>, ip: String, port: u16, cull_after: u64, shared_unix_user: bool) -> CliResult<()> {
    let paths = Paths::new();
    if !is_root() {
        if ip != "127.0.0.1" && !shared_unix_user {
            return Err(format!(
                "not run as root, every student's server would run as your Unix user, so any student could \
                 read and change the others' notebooks, the solutions and course/. Run it as root (each \
                 student then gets a Unix user of their own), or keep it on 127.0.0.1, or pass \
                 --shared-unix-user to listen on {ip} anyway"
            ));
        }
        eprintln!(
            "warning: not run as root, so not isolated: every student's server runs as your Unix user, and a \
             student's code can read and change the other students' notebooks, the solutions and course/. \
             Run `cargo lab hub` as root to give each student a Unix user of their own."
        );
    }
    if ip != "127.0.0.1" {
        eprintln!("warning: the hub listens on {ip}: put it behind HTTPS (a reverse proxy) before a real class; passwords cross the network.");
    }
    let setup = HubSetup { dir: paths.state.join("hub"), users, ip, port, cull_after };
    let log = setup.dir.join("jupyterhub.log");
    std::fs::create_dir_all(&setup.dir).at(&setup.dir)?;
    let mut hub = Hub::start(&paths, &setup, &log)?;
    println!("JupyterHub for {} students: http://{}:{port}/", setup.users.len(), setup.ip);
    println!(
        "Each student ({}) logs in with their name and chooses a password at their first login; you log in \
         as {ADMIN:?} with the password in {} (not printed here).",
        setup.users.join(", "),
        setup.dir.join("password").display()
    );
    let where_ = if hub.isolated {
        "/home/jupyter-<name>/notebooks/, each their own Unix user's".to_string()
    } else {
        format!("{}/home/<name>/notebooks/", setup.dir.display())
    };
    println!("Their notebooks: {where_}. The hub's log: {}. Ctrl-C stops the hub and every server.", log.display());
    if cull_after > 0 {
        println!(
            "A server idle for {cull_after} s is stopped (its files stay; the student starts it again by logging in)."
        );
    }
    // Ctrl-C is ours alone (the hub runs in a process group of its own): `stop` then shuts every
    // kernel and server down in order, which JupyterHub's own SIGINT handling would not.
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_interrupt as *const () as libc::sighandler_t);
    }
    while !INTERRUPTED.load(Ordering::SeqCst) {
        if let Some(status) = hub.server.exited() {
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
