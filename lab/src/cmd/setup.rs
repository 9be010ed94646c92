//! `cargo lab up`: everything a fresh machine needs, each step skipped once done.
//!
//! 1. a Python venv in `.venv/` with JupyterLab and nbclient (pinned in
//!    `lab/requirements-jupyter.txt`) and the lab's kernel provisioner (`lab/kernel-pool/`);
//! 2. evcxr_jupyter 0.22, the Rust kernel, through `cargo install` (once per machine);
//! 3. rust-src, which evcxr's completions need, and its trimmed copy for the kernel's analyzer
//!    (see `analyzer`);
//! 4. the `rust` kernel spec, written into the venv only, never the user's global Jupyter;
//! 5. the kernels' build seed (see `launcher`), built by running the first cell of a notebook,
//!    so that a student's first `:dep lab-support` takes seconds.

use crate::paths::Paths;
use crate::sys::process::{is_root, output_of, run};
use crate::sys::{At, CliResult};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

pub const EVCXR_VERSION: &str = "0.22.0";
const REQUIREMENTS: &str = "lab/requirements-jupyter.txt";
/// The lab's kernel provisioner (a warm spare kernel), a small Python package of its own.
const KERNEL_POOL: &str = "lab/kernel-pool";

fn step(n: usize, total: usize, what: &str) {
    eprintln!("==> [{n}/{total}] {what}");
}

pub fn ensure(paths: &Paths, warm: bool) -> CliResult<()> {
    let total = if warm { 5 } else { 4 };
    let start = Instant::now();
    std::fs::create_dir_all(&paths.state).map_err(|e| format!("cannot create {}: {e}", paths.state.display()))?;
    ensure_venv(paths, 1, total)?;
    let evcxr = ensure_evcxr(2, total)?;
    ensure_rust_src(paths, 3, total);
    write_kernel(paths, &evcxr, 4, total)?;
    if warm {
        warm_cache(paths, 5, total)?;
    }
    eprintln!("==> setup done in {:.0} s", start.elapsed().as_secs_f64());
    Ok(())
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

pub fn ensure_venv(paths: &Paths, n: usize, total: usize) -> CliResult<()> {
    let mut requirements =
        std::fs::read_to_string(paths.root.join(REQUIREMENTS)).map_err(|e| format!("{REQUIREMENTS}: {e}"))?;
    // The provisioner's own files are part of what the stamp stands for: a change reinstalls it.
    for file in ["pyproject.toml", "lab_kernel_pool.py", "lab_kernel_manager.py", "lab_grading.py"]
        .map(|f| paths.root.join(KERNEL_POOL).join(f))
    {
        requirements.push_str(&format!("\n# {}\n", file.display()));
        requirements.push_str(&String::from_utf8_lossy(&std::fs::read(&file).unwrap_or_default()));
    }
    let stamp = paths.venv.join(".lab-requirements");
    if paths.venv_bin("python").exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&requirements) {
        step(n, total, "Python venv with JupyterLab: ready");
        return Ok(());
    }
    let py = python();
    let version = output_of(Command::new(&py).arg("--version")).ok_or_else(|| {
        format!(
            "Python 3 was not found (tried `{py}`). Install Python 3.9 or newer with venv and pip \
             (Debian/Ubuntu: `sudo apt-get install python3 python3-venv python3-pip`; macOS: \
             `brew install python`), or set PYTHON=/path/to/python3, then run `cargo lab up` again"
        )
    })?;
    if !version.trim().starts_with("Python 3") {
        return Err(format!("`{py}` is {}, the lab needs Python 3. Set PYTHON=/path/to/python3", version.trim()));
    }
    if !paths.venv_bin("python").exists() {
        step(n, total, &format!("Creating the project venv in .venv/ with {}", version.trim()));
        let ok = Command::new(&py).args(["-m", "venv"]).arg(&paths.venv).status().map(|s| s.success()).unwrap_or(false);
        if !ok || !paths.venv_bin("pip").exists() {
            let _ = std::fs::remove_dir_all(&paths.venv);
            return Err(format!(
                "`{py} -m venv` could not create a venv with pip. Install Python's venv and pip \
                 modules (Debian/Ubuntu: `sudo apt-get install python3-venv python3-pip`), then \
                 run `cargo lab up` again"
            ));
        }
    }
    step(n, total, "Installing JupyterLab, nbclient and the lab's kernel provisioner into .venv/ (about 30 s, once)");
    run(
        Command::new(paths.venv_bin("pip"))
            .args(["install", "--disable-pip-version-check", "-q", "-r"])
            .arg(paths.root.join(REQUIREMENTS)),
        "pip install",
    )?;
    run(
        Command::new(paths.venv_bin("pip"))
            .args(["install", "--disable-pip-version-check", "-q", "--no-deps", "--force-reinstall"])
            .arg(paths.root.join(KERNEL_POOL)),
        "pip install lab/kernel-pool",
    )?;
    std::fs::write(&stamp, requirements).at(&stamp)
}

/// Finds evcxr_jupyter of the right version, installing it with cargo if needed.
fn ensure_evcxr(n: usize, total: usize) -> CliResult<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let binary = cargo_home().join("bin").join("evcxr_jupyter");
    // evcxr_jupyter has no --version; cargo's own list of installed crates says which one it is.
    let installed = || {
        output_of(Command::new(&cargo).args(["install", "--list"]))
            .is_some_and(|list| list.contains(&format!("evcxr_jupyter v{EVCXR_VERSION}:")))
            && binary.exists()
    };
    if installed() {
        step(n, total, &format!("Rust kernel evcxr_jupyter {EVCXR_VERSION}: ready"));
        return Ok(binary);
    }
    step(
        n,
        total,
        &format!("Installing the Rust kernel, evcxr_jupyter {EVCXR_VERSION} (about 7 minutes, once per machine)"),
    );
    run(
        Command::new(&cargo).args(["install", "evcxr_jupyter", "--locked", "--force", "--version", EVCXR_VERSION]),
        "cargo install evcxr_jupyter",
    )?;
    if !installed() {
        return Err(format!("cargo installed evcxr_jupyter, but {} is not there", binary.display()));
    }
    Ok(binary)
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from(".cargo"))
}

fn ensure_rust_src(paths: &Paths, n: usize, total: usize) {
    let installed = output_of(Command::new("rustup").args(["component", "list", "--installed"]));
    match installed {
        Some(list) if list.lines().any(|l| l.starts_with("rust-src")) => step(n, total, "rust-src: ready"),
        Some(_) => {
            step(n, total, "Adding rust-src (for code completion in notebooks)");
            if run(Command::new("rustup").args(["component", "add", "rust-src"]), "rustup component add rust-src")
                .is_err()
            {
                eprintln!("    warning: rust-src could not be added; notebooks run, but without completions");
            }
        }
        None => step(n, total, "rust-src: rustup not found, skipped (only code completion needs it)"),
    }
    match super::rust_src::ensure_sources(paths) {
        Ok(what) => eprintln!("    {what}"),
        // The kernel works without the copy; it holds more memory.
        Err(e) => {
            eprintln!("    warning: no trimmed copy of the standard library's sources ({e}); kernels read it whole")
        }
    }
}

/// Cargo settings for the kernel's builds. evcxr compiles every cell and every dependency in
/// cargo's dev profile with debug assertions on, so candle's and the lab's inner loops check
/// themselves as they run: measured in the kernel, notebook 05's checklist took 15.1 s with them
/// and 10.5 s without. Overflow checks stay on, so an integer overflow in a student's cell still
/// panics instead of wrapping.
const KERNEL_CARGO_ENV: [(&str, &str); 1] = [("CARGO_PROFILE_DEV_DEBUG_ASSERTIONS", "false")];

/// See `write_kernel`.
const KERNEL_CARGO_CONFIG: &str = "# Written by `cargo lab up`: the notebook kernels' builds (see the lab tool's launcher).\n[profile.dev.package.ctx]\nopt-level = 0\n";

fn write_kernel(paths: &Paths, evcxr: &Path, n: usize, total: usize) -> CliResult<()> {
    step(n, total, "Registering the `rust` kernel in .venv/ (not in your global Jupyter)");
    let dir = paths.kernel_dir();
    std::fs::create_dir_all(&dir).at(&dir)?;
    let config = paths.evcxr_config();
    std::fs::create_dir_all(&config).at(&config)?;
    // Nothing at kernel start: builds are kept in the launcher's slots (see `launcher`), not in
    // evcxr's `:cache`, which races between kernels and rebuilt lab-support every time.
    std::fs::write(config.join("init.evcxr"), "").at(&config)?;
    let launcher = install_launcher(paths)?;
    // Cargo reads this for every build in a slot (it looks in the folders above a crate): the
    // crate evcxr makes of each cell, `ctx`, compiles without optimization. Measured on the
    // kernel benchmark's small cells, a cell's rustc took 0.43 s at evcxr's level 2 and 0.25 s at
    // 0; lab-support, candle and every other dependency stay optimized, which is where a
    // notebook's heavy work runs (notebook 05 ran in 68 s with this and the launcher, 91 s before).
    let cargo_config = super::launcher::slots_dir(paths).join(".cargo");
    std::fs::create_dir_all(&cargo_config).at(&cargo_config)?;
    std::fs::write(cargo_config.join("config.toml"), KERNEL_CARGO_CONFIG).at(&cargo_config)?;
    kernel_cargo_home(paths)?;
    let kernel = serde_json::json!({
        "argv": [launcher, "kernel", "--evcxr", evcxr, "{connection_file}"],
        "display_name": "Rust (lab)",
        "language": "rust",
        "interrupt_mode": "message",
        // evcxr forces RUST_BACKTRACE=1 on the process that runs cells, so setting it here does
        // nothing; lab-support's panic hook keeps panics short (see `lab_support::kernel`).
        // RUST_LIB_BACKTRACE=0 keeps candle's errors from carrying a backtrace in their text.
        "env": { "EVCXR_CONFIG_DIR": config, "RUST_LIB_BACKTRACE": "0", "LAB_SUPPORT_DIR": paths.root.join("lab-support") },
        // A warm spare kernel where the server asks for one (LAB_SPARE_KERNEL=1, which `cargo lab
        // hub` and `cargo lab up` set): see lab/kernel-pool/lab_kernel_pool.py.
        "metadata": { "kernel_provisioner": { "provisioner_name": "lab-spare" } },
    });
    let mut kernel = kernel;
    for (name, value) in KERNEL_CARGO_ENV {
        kernel["env"][name] = serde_json::json!(value);
    }
    let text = serde_json::to_string_pretty(&kernel).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("kernel.json"), text).at(&dir)?;
    // The provisioner's server extension, which makes the first spare as a server starts (it does
    // nothing unless spares are on; see lab/kernel-pool/).
    let server_config = paths.venv.join("etc/jupyter/jupyter_server_config.d");
    std::fs::create_dir_all(&server_config).at(&server_config)?;
    let extension = serde_json::json!({ "ServerApp": { "jpserver_extensions": { "lab_kernel_pool": true } } });
    std::fs::write(server_config.join("lab_kernel_pool.json"), extension.to_string()).at(&server_config)?;
    // JupyterLab defaults for this venv only: a lab room is often offline, so no news prompt and
    // no update check.
    let settings = paths.venv.join("share/jupyter/lab/settings");
    std::fs::create_dir_all(&settings).at(&settings)?;
    let overrides = serde_json::json!({
        "@jupyterlab/apputils-extension:notification": { "fetchNews": "false", "checkForUpdates": false },
    });
    std::fs::write(settings.join("overrides.json"), overrides.to_string()).at(&settings)
}

/// The kernels' own cargo home (see `Paths::kernel_cargo_home`): the user's registry, hard-linked
/// (copied where `.lab/` is on another file system), and a `config.toml` with the user's cargo
/// settings and the kernels' own (the slots' `.cargo/config.toml` is not above a slot outside
/// `.lab/kernels/`). Crates the copy lacks, cargo downloads into it when the seed is built.
fn kernel_cargo_home(paths: &Paths) -> CliResult<()> {
    let home = paths.kernel_cargo_home();
    std::fs::create_dir_all(&home).at(&home)?;
    let registry = home.join("registry");
    let users = cargo_home().join("registry");
    if !registry.exists() && users.exists() {
        link_tree(&users, &registry)?;
    }
    let mut config = String::new();
    for name in ["config.toml", "config"] {
        if let Ok(text) = std::fs::read_to_string(cargo_home().join(name)) {
            config = format!("# From {}:\n{text}\n", cargo_home().join(name).display());
            break;
        }
    }
    config.push_str(KERNEL_CARGO_CONFIG);
    let file = home.join("config.toml");
    if std::fs::read_to_string(&file).ok().as_deref() != Some(config.as_str()) {
        std::fs::write(&file, config).at(&file)?;
    }
    Ok(())
}

/// Hard links of the tree `from` at `to` (a copy where links cannot cross file systems), made in
/// a folder beside it and renamed when whole: a copy cut short never takes the name.
pub fn link_tree(from: &Path, to: &Path) -> CliResult<()> {
    let partial = to.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    let linked = Command::new("cp").arg("-al").arg(from).arg(&partial).stderr(Stdio::null()).status();
    if !linked.is_ok_and(|s| s.success()) {
        let _ = std::fs::remove_dir_all(&partial);
        run(Command::new("cp").arg("-a").arg(from).arg(&partial), &format!("copying {}", from.display()))?;
    }
    std::fs::rename(&partial, to).at(to)
}

/// A copy of this tool for the kernel spec to start, out of cargo's reach: a rebuild or a `cargo
/// clean` must not pull it from under a running kernel. Copied then renamed, since a kernel may be
/// running the old one. And `.lab/cargo/bin/cargo`, a link to it that the kernel's analyzer runs
/// (see `analyzer`).
fn install_launcher(paths: &Paths) -> CliResult<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the lab tool's own binary: {e}"))?;
    let bin = paths.state.join("bin");
    std::fs::create_dir_all(&bin).map_err(|e| format!("cannot create {}: {e}", bin.display()))?;
    let (target, partial) = (bin.join("lab"), bin.join("lab.partial"));
    std::fs::copy(&exe, &partial)
        .map_err(|e| format!("cannot copy {} to {}: {e}", exe.display(), partial.display()))?;
    std::fs::rename(&partial, &target).map_err(|e| format!("cannot rename {}: {e}", partial.display()))?;
    super::analyzer::ensure_cargo_link(paths)?;
    Ok(target)
}

fn warm_cache(paths: &Paths, n: usize, total: usize) -> CliResult<()> {
    let seed = super::launcher::seed_dir(paths);
    // What the seed's build depends on: evcxr, the kernel's cargo settings, the locked versions,
    // the workspace's manifest (its dependencies' features), lab-support's manifest and sources.
    let mut key = format!(
        "{EVCXR_VERSION}\n{KERNEL_CARGO_ENV:?}\n{}\n{}",
        paths.kernel_cargo_home().display(),
        std::fs::read_to_string(paths.root.join("Cargo.lock")).unwrap_or_default()
    );
    let crate_dir = paths.root.join("lab-support");
    let manifests = [paths.root.join("Cargo.toml"), crate_dir.join("Cargo.toml")];
    for file in manifests.into_iter().chain(files_under(&crate_dir.join("src"))) {
        key.push_str(&format!("\n{}\n", file.display()));
        key.push_str(&String::from_utf8_lossy(&std::fs::read(&file).unwrap_or_default()));
    }
    let key = crate::sys::hex::sha256_hex(key.as_bytes());
    // Kept in the seed, where kernels (a hub student's among them) compare their slot's copy.
    let stamp = seed.join(super::launcher::SEED_KEY);
    if seed.join("target").exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&key) {
        step(n, total, "kernel build seed: ready");
        return Ok(());
    }
    let what = if seed.join("target").exists() {
        "lab-support changed: rebuilding it for notebooks (about 20 s)"
    } else {
        "Compiling candle and lab-support for notebooks (about 3 minutes, once)"
    };
    step(n, total, what);
    let start = Instant::now();
    let cells =
        [":dep lab-support = { path = \"../lab-support\" }\nuse lab_support::prelude::*;\nprintln!(\"ready\");"];
    let report = crate::jupyter::run_cells(paths, &cells, &[(super::launcher::SLOT_ENV, "seed")])?;
    if !report.problems.is_empty() {
        return Err(format!("building the kernel's seed failed:\n{}", report.problems.join("\n")));
    }
    eprintln!("    built in {:.0} s", start.elapsed().as_secs_f64());
    std::fs::write(&stamp, key).at(&stamp)
}

/// Every file under `dir`, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return files };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// `cargo lab up`.
pub fn up(no_browser: bool, port: u16, setup_only: bool) -> CliResult<()> {
    let paths = Paths::new();
    ensure(&paths, true)?;
    if setup_only {
        return Ok(());
    }
    super::server::serve(&paths, port, no_browser)
}

/// Installs Debian packages for the browser test; only as root (as in CI), never through sudo.
pub fn apt_install(packages: &[&str], what: &str) -> CliResult<()> {
    eprintln!("==> Installing {what} for the browser test (apt-get install {}, once)", packages.join(" "));
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive").stdout(Stdio::null());
        cmd
    };
    run(&mut apt(&["update", "-q"]), "apt-get update")?;
    let install: Vec<&str> =
        ["install", "-y", "-q", "--no-install-recommends"].iter().chain(packages).copied().collect();
    run(&mut apt(&install), &format!("apt-get install {}", packages.join(" ")))
}

/// `npm ci` in `rel_dir` (with its committed lockfile), again only when the lockfile changed;
/// Node.js and npm from Debian first when they are missing (as root only).
pub fn npm_ci(root: &Path, rel_dir: &str, what: &str) -> CliResult<()> {
    let dir = root.join(rel_dir);
    let lock = std::fs::read_to_string(dir.join("package-lock.json"))
        .map_err(|e| format!("{rel_dir}/package-lock.json: {e}"))?;
    let stamp = dir.join("node_modules/.lab-lock");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(lock.as_str()) {
        return Ok(());
    }
    let has = |tool: &str| output_of(Command::new(tool).arg("--version")).is_some();
    if !has("node") || !has("npm") {
        if !is_root() {
            return Err(format!(
                "Node.js and npm were not found; {what} needs them. Install them \
                 (Debian/Ubuntu: `sudo apt-get install nodejs npm`), then try again"
            ));
        }
        apt_install(&["nodejs", "npm"], "Node.js and npm")?;
    }
    // playwright-core 1.64 declares `"engines": {"node": ">=20"}`; Debian 12's own nodejs is 18.
    let version = output_of(Command::new("node").arg("--version")).unwrap_or_default();
    let major: u32 = version.trim().trim_start_matches('v').split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0);
    if major < 20 {
        return Err(format!(
            "Node.js {} is too old for {what}: it needs Node.js 20 or newer. Install a newer \
             Node.js (for example from your distribution's backports or NodeSource), then try again",
            version.trim()
        ));
    }
    eprintln!("==> Installing {what} (npm ci in {rel_dir})");
    run(Command::new("npm").args(["ci", "--no-audit", "--no-fund", "--loglevel=error"]).current_dir(&dir), "npm ci")?;
    std::fs::write(&stamp, lock).at(&stamp)
}
