//! Where the lab's files are: the repository, its project venv (`.venv/`) and its local state
//! (`.lab/`), and the environment every Jupyter process of the lab runs with.

use std::path::PathBuf;
use std::process::Command;

/// Set to 1 in JupyterLab's environment, the lab's kernel provisioner keeps a warm spare kernel.
pub const SPARE_ENV: &str = "LAB_SPARE_KERNEL";

/// The repository root (this crate's parent folder).
pub fn repo_root() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    root.canonicalize().unwrap_or(root)
}

/// Where the lab keeps its local state.
pub struct Paths {
    pub root: PathBuf,
    pub venv: PathBuf,
    /// Project-local state: evcxr's config, stamps, logs.
    pub state: PathBuf,
}

impl Paths {
    pub fn new() -> Self {
        let root = repo_root();
        Paths { venv: root.join(".venv"), state: root.join(".lab"), root }
    }

    pub fn venv_bin(&self, name: &str) -> PathBuf {
        self.venv.join("bin").join(name)
    }

    pub fn kernel_dir(&self) -> PathBuf {
        self.venv.join("share/jupyter/kernels/rust")
    }

    /// The cargo home every kernel builds with, `.lab/cargo/`: its registry is a copy (hard links
    /// where the file system allows) of the user's, made by `cargo lab up`, and its `config.toml` holds
    /// the kernels' cargo settings. Cargo's fingerprints of registry crates name the folder they were
    /// compiled from, so a kernel that built with another cargo home rebuilds candle and every other
    /// dependency (minutes): every kernel, the seed's and a hub student's under their own Unix user
    /// (who cannot reach the instructor's home), uses this one.
    pub fn kernel_cargo_home(&self) -> PathBuf {
        self.state.join("cargo")
    }

    pub fn evcxr_config(&self) -> PathBuf {
        self.state.join("evcxr")
    }

    /// The environment every Jupyter process of the lab runs with.
    pub fn jupyter_env(&self, cmd: &mut Command) {
        // The venv's kernels come before a user's own `rust` kernel, if they have one.
        cmd.env("JUPYTER_PREFER_ENV_PATH", "1").env("VIRTUAL_ENV", &self.venv);
        // Spare kernels only where a command asks for them (`cargo lab up`, `cargo lab hub`), never
        // in `jupyter execute` or nbgrader because a shell happened to export the variable.
        cmd.env_remove(SPARE_ENV);
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![self.venv.join("bin")];
        dirs.extend(std::env::split_paths(&path));
        if let Ok(joined) = std::env::join_paths(dirs) {
            cmd.env("PATH", joined);
        }
    }
}
