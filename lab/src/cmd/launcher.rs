//! `lab kernel`: what Jupyter starts for the lab's `rust` kernel, in front of evcxr_jupyter.
//!
//! evcxr compiles every cell with cargo in a build folder of its own. By default that folder is a
//! fresh temporary one per kernel, so every kernel start rebuilt lab-support and linked candle
//! again (16-21 s before the first cell answered), and evcxr's shared `:cache`, which was meant to
//! save that, raced when two kernels started together ("Failed to wrap rustc", then "cannot find
//! type `Classifier`" in every cell).
//!
//! The launcher gives each running kernel a build folder that outlives it, a *slot* under
//! `.lab/kernels/`, held with a file lock for the kernel's whole life: the next kernel in that
//! slot finds cargo's own `target/` there, and cargo's fingerprints decide what to rebuild (a
//! changed lab-support is rebuilt; nothing else is). Two kernels never share a slot, so nothing
//! races, and evcxr's `:cache` is not used at all. A slot that has never been used starts as a
//! copy of `seed/`, which `cargo lab up` builds once; the lab's `Cargo.lock` pins the versions,
//! the same ones its tests use.
//!
//! The lock is an `flock` on `slot-N.lock`, on a descriptor that evcxr_jupyter inherits when the
//! launcher replaces itself with it (`exec`): the kernel holds it until its process ends, however
//! it ends, and the system lets it go then.

use crate::paths::Paths;
use crate::sys::CliResult;
use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// How many kernels may run at once on one machine (one slot each).
pub const SLOTS: usize = 32;
/// Set (to `seed`) by `cargo lab up` to build the seed itself.
pub const SLOT_ENV: &str = "LAB_KERNEL_SLOT";

/// The folder that holds the slots (and the seed).
pub fn slots_dir(paths: &Paths) -> PathBuf {
    paths.state.join("kernels")
}

/// Where this user's kernels keep their slots: `.lab/kernels/` for the user who set the lab up,
/// `~/.cache/lab-kernels/` for anyone who cannot write there (a student of a hub that gives every
/// student a Unix user of their own): a slot holds the code of every cell its kernels ran.
fn own_slots_dir(paths: &Paths) -> PathBuf {
    let shared = slots_dir(paths);
    if writable(&shared) {
        return shared;
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".cache/lab-kernels"),
        None => shared,
    }
}

fn writable(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return false };
    // SAFETY: a valid C string; access only reads it.
    !dir.exists() || unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0
}

/// The seed every new slot is copied from.
pub fn seed_dir(paths: &Paths) -> PathBuf {
    slots_dir(paths).join("seed")
}

/// Takes a slot and becomes evcxr_jupyter; returns only on failure.
pub fn launch(evcxr: &Path, connection_file: &str) -> CliResult<()> {
    let paths = Paths::new();
    let dir = own_slots_dir(&paths);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let (slot, lock) = match std::env::var(SLOT_ENV).ok().as_deref() {
        Some("seed") => {
            let lock = try_lock(&slots_dir(&paths).join("seed.lock"), libc::LOCK_EX)?.ok_or("the seed is locked")?;
            (seed_dir(&paths), lock)
        }
        _ => free_slot(&dir)?,
    };
    prepare(&paths, &slot)?;
    // The descriptor must survive `exec`: evcxr_jupyter holds the lock from here on.
    unsafe {
        let fd = lock.as_raw_fd();
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
            return Err(format!("cannot keep the lock on {}: {}", slot.display(), std::io::Error::last_os_error()));
        }
    }
    eprintln!("lab kernel: building in {}", slot.display());
    let mut command = Command::new(evcxr);
    command.arg("--control_file").arg(connection_file).env("EVCXR_TMPDIR", &slot);
    // Less for its rust-analyzer to hold (see `analyzer`).
    command.envs(super::analyzer::kernel_env(&paths));
    let cargo_home = paths.kernel_cargo_home();
    if cargo_home.join("registry").exists() {
        command.env("CARGO_HOME", &cargo_home);
    }
    // `cargo run` adds the workspace's target folder (or CARGO_TARGET_DIR) to the path.
    let mut targets = vec![paths.root.join("target")];
    targets.extend(std::env::var_os("CARGO_TARGET_DIR").map(|d| paths.root.join(d)));
    match library_path(&slot, std::env::var_os(LIBRARY_PATH_ENV), &targets) {
        Some(dirs) => command.env(LIBRARY_PATH_ENV, dirs),
        None => command.env_remove(LIBRARY_PATH_ENV),
    };
    let error = command.exec();
    drop(lock);
    Err(format!("cannot start {}: {error}", evcxr.display()))
}

/// Where the system looks first for the shared libraries a cell needs.
const LIBRARY_PATH_ENV: &str = "LD_LIBRARY_PATH";
/// lab-support as the Rust dylib each cell links against (see lab-support's Cargo.toml).
const LAB_SUPPORT_DYLIB: &str = "liblab_support.so";

/// The library search path for a kernel in `slot`: the slot's own build of lab-support first,
/// and no folder under `targets` or that holds another build of it.
///
/// A cell is a shared object that needs `liblab_support.so`, and the system looks in
/// `LD_LIBRARY_PATH` before the folder the cell names. `cargo run`, which runs `cargo lab up` and
/// `cargo lab test`, puts the workspace's `target/release/deps` there, and that folder holds the
/// `lab-model` build of lab-support (other features, other symbols): measured, with it first every
/// cell that used lab-support failed to load ("dlopen failed") and the kernel's process died.
/// Folders under `targets` are left out even while they hold no lab-support yet: a later `cargo
/// lab train` or `cargo lab test` would put one there.
fn library_path(slot: &Path, inherited: Option<std::ffi::OsString>, targets: &[PathBuf]) -> Option<std::ffi::OsString> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    // evcxr builds into `target/<host triple>/debug`; a slot copied from the seed already has it.
    if let Ok(entries) = std::fs::read_dir(slot.join("target")) {
        dirs.extend(
            entries
                .flatten()
                .map(|e| e.path().join("debug").join("deps"))
                .filter(|d| d.join(LAB_SUPPORT_DYLIB).exists()),
        );
    }
    let inherited = inherited.unwrap_or_default();
    let keep = |d: &PathBuf| {
        !d.as_os_str().is_empty() && !d.join(LAB_SUPPORT_DYLIB).exists() && !targets.iter().any(|t| d.starts_with(t))
    };
    dirs.extend(std::env::split_paths(&inherited).filter(keep));
    if dirs.is_empty() {
        return None;
    }
    // A folder whose name the path cannot hold (one with a `:`): leave the path as it was.
    std::env::join_paths(dirs).ok().or(Some(inherited))
}

/// The first slot no running kernel holds, locked.
fn free_slot(dir: &Path) -> CliResult<(PathBuf, File)> {
    for n in 0..SLOTS {
        if let Some(lock) = try_lock(&dir.join(format!("slot-{n}.lock")), libc::LOCK_EX | libc::LOCK_NB)? {
            return Ok((dir.join(format!("slot-{n}")), lock));
        }
    }
    Err(format!(
        "{SLOTS} lab kernels are already running on this machine (each holds a slot in {}); shut \
         some down (Kernel > Shut Down Kernel in JupyterLab) and start this one again",
        dir.display()
    ))
}

/// Locks `path` (`flock` operation `mode`); `None` if another process holds it and `mode` has
/// `LOCK_NB`.
fn try_lock(path: &Path, mode: libc::c_int) -> CliResult<Option<File>> {
    // A shared lock needs only reading: a student's kernel takes one on the instructor's seed.
    let shared = mode & libc::LOCK_SH != 0 && path.exists();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .create(!shared)
        .truncate(false)
        .write(!shared)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    if unsafe { libc::flock(file.as_raw_fd(), mode) } == 0 {
        return Ok(Some(file));
    }
    let error = std::io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(None)
    } else {
        Err(format!("cannot lock {}: {error}", path.display()))
    }
}

/// A slot ready for evcxr: copied from the seed the first time, and again after `cargo lab up`
/// rebuilt the seed, with the lab's `Cargo.lock`.
fn prepare(paths: &Paths, slot: &Path) -> CliResult<()> {
    let seed = seed_dir(paths);
    // A slot built with another cargo home would rebuild every dependency: the seed is quicker.
    let stale = |dir: &Path| built_with(dir).as_deref() != Some(paths.kernel_cargo_home().as_path());
    let from_seed = slot != seed && seed.join("target").exists() && !stale(&seed);
    // So would a slot copied from an older seed when a dependency's version or features changed
    // (measured: four hub students' kernels, each rebuilding gemm and candle in its slot, did not
    // finish `:dep` in 300 s).
    let older = seed_key(slot) != seed_key(&seed);
    // lab-support is a dylib whose file name carries no hash: builds of it for two paths (a
    // `lab-support` link that pointed to another checkout) share one `liblab_support.so`, and cargo
    // may take the other's file for this one's (measured: a kernel whose lab-support read the data
    // of a checkout since deleted). A slot that holds two builds is not trusted.
    let mixed = lab_support_builds(slot) > 1;
    if from_seed && slot.join("target").exists() && (stale(slot) || older || mixed) {
        let why = if older {
            "an older build of the seed"
        } else if mixed {
            "two builds of lab-support, which share one library file"
        } else {
            "another cargo home"
        };
        eprintln!("lab kernel: {} was built with {why}; copying the seed again", slot.display());
        let _ = std::fs::remove_dir_all(slot);
    }
    if !slot.join("target").exists() && from_seed {
        // Not while `cargo lab up` is building the seed (it holds the lock for that).
        let Some(_seed_lock) = try_lock(&slots_dir(paths).join("seed.lock"), libc::LOCK_SH | libc::LOCK_NB)? else {
            eprintln!(
                "lab kernel: the seed is being built by `cargo lab up`; this kernel builds its slot from the start"
            );
            return finish(paths, slot);
        };
        // Into a temporary folder, renamed when whole: a copy cut short is never taken for a slot.
        let partial = slot.with_extension("partial");
        let _ = std::fs::remove_dir_all(&partial);
        let _ = std::fs::remove_dir_all(slot);
        // `cp -a` keeps the files' times, which cargo's fingerprints compare.
        let copied = Command::new("cp").arg("-a").arg(&seed).arg(&partial).status();
        match copied {
            Ok(status) if status.success() => {
                std::fs::rename(&partial, slot)
                    .map_err(|e| format!("cannot rename {} to {}: {e}", partial.display(), slot.display()))?;
            }
            // A slot can still be built from nothing; it takes minutes instead of seconds.
            _ => {
                let _ = std::fs::remove_dir_all(&partial);
                eprintln!("lab kernel: could not copy {}; this kernel builds its slot from the start", seed.display());
            }
        }
    }
    finish(paths, slot)
}

/// The file in a slot that names the cargo home its builds used.
const BUILT_WITH: &str = ".lab-cargo-home";

/// The file in the seed that names the build it holds (the key `cargo lab up` keeps it by); a
/// slot copied from the seed carries it along.
pub const SEED_KEY: &str = ".lab-seed-key";

/// How many lab-supports (package paths) a slot holds builds of: cargo's fingerprint folders for
/// it, one per path, profile and dependency set, each naming its path's hash. Not the folders
/// themselves: evcxr runs `cargo check` when its analyzer cannot tell a variable's type, which
/// adds a folder for the same path (another profile, no library file).
fn lab_support_builds(slot: &Path) -> usize {
    let Ok(targets) = std::fs::read_dir(slot.join("target")) else { return 0 };
    let paths: std::collections::HashSet<String> = targets
        .flatten()
        .filter_map(|t| std::fs::read_dir(t.path().join("debug/.fingerprint")).ok())
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("lab-support-"))
        .map(|e| {
            let json = std::fs::read_to_string(e.path().join("lib-lab_support.json")).unwrap_or_default();
            // A folder cargo's format does not match counts as a path of its own.
            serde_json::from_str::<serde_json::Value>(&json)
                .ok()
                .and_then(|v| v["path"].as_u64())
                .map_or_else(|| e.file_name().to_string_lossy().into_owned(), |p| p.to_string())
        })
        .collect();
    paths.len()
}

fn seed_key(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join(SEED_KEY)).ok()
}

fn built_with(slot: &Path) -> Option<PathBuf> {
    std::fs::read_to_string(slot.join(BUILT_WITH)).ok().map(|s| PathBuf::from(s.trim_end()))
}

fn finish(paths: &Paths, slot: &Path) -> CliResult<()> {
    std::fs::create_dir_all(slot).map_err(|e| format!("cannot create {}: {e}", slot.display()))?;
    if slot != seed_dir(paths) {
        // A slot holds the code of every cell its kernels ran: its user's alone. (The seed, which
        // holds only the `:dep` cell, is what other users' slots are copied from.)
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(slot, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot restrict {}: {e}", slot.display()))?;
    }
    if paths.kernel_cargo_home().join("registry").exists() {
        let marker = slot.join(BUILT_WITH);
        std::fs::write(&marker, paths.kernel_cargo_home().display().to_string())
            .map_err(|e| format!("cannot write {}: {e}", marker.display()))?;
    }
    // The lab's own versions (candle, image, ...), the ones its tests use, resolved without asking
    // the registry. Copied at every start, so a `git pull` that changes them is followed.
    std::fs::copy(paths.root.join("Cargo.lock"), slot.join("Cargo.lock"))
        .map_err(|e| format!("cannot copy Cargo.lock into {}: {e}", slot.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_finds_its_own_slots_lab_support_and_no_other() {
        let root = std::env::temp_dir().join(format!("lab-launcher-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let slot = root.join("slot-0");
        let own = slot.join("target/x86_64-unknown-linux-gnu/debug/deps");
        let stray = root.join("workspace/target/release/deps");
        let other = root.join("cuda/lib");
        for dir in [&own, &stray, &other] {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(own.join(LAB_SUPPORT_DYLIB), "").unwrap();
        std::fs::write(stray.join(LAB_SUPPORT_DYLIB), "").unwrap();
        let workspace_debug = root.join("workspace/target/debug");
        std::fs::create_dir_all(&workspace_debug).unwrap();
        let targets = [root.join("workspace/target")];
        let inherited = std::env::join_paths([&stray, &other, &workspace_debug]).unwrap();
        let path = library_path(&slot, Some(inherited), &targets).unwrap();
        assert_eq!(std::env::split_paths(&path).collect::<Vec<_>>(), vec![own.clone(), other.clone()]);
        // A stray build elsewhere is left out too, by what it holds.
        let inherited = std::env::join_paths([&stray, &other]).unwrap();
        let path = library_path(&slot, Some(inherited), &[]).unwrap();
        assert_eq!(std::env::split_paths(&path).collect::<Vec<_>>(), vec![own.clone(), other.clone()]);
        // Before the slot's first build: only the inherited folders without a lab-support.
        let fresh = root.join("slot-1");
        let inherited = std::env::join_paths([&stray, &workspace_debug]).unwrap();
        assert_eq!(library_path(&fresh, Some(inherited), &targets), None);
        assert_eq!(library_path(&fresh, None, &targets), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// A slot copied from an older seed is copied again; one from the current seed keeps what its
    /// kernels built.
    #[test]
    fn a_slot_from_an_older_seed_or_with_two_lab_supports_is_copied_again_and_a_current_one_kept() {
        let root = std::env::temp_dir().join(format!("lab-slot-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let paths = Paths { venv: root.join(".venv"), state: root.join(".lab"), root: root.clone() };
        let home = paths.kernel_cargo_home();
        std::fs::create_dir_all(home.join("registry")).unwrap();
        std::fs::write(root.join("Cargo.lock"), "# lock").unwrap();
        let (seed, slot) = (seed_dir(&paths), slots_dir(&paths).join("slot-0"));
        for (dir, key, build) in [(&seed, "new seed", "new"), (&slot, "old seed", "old")] {
            std::fs::create_dir_all(dir.join("target")).unwrap();
            std::fs::write(dir.join("target/build"), build).unwrap();
            std::fs::write(dir.join(BUILT_WITH), home.display().to_string()).unwrap();
            std::fs::write(dir.join(SEED_KEY), key).unwrap();
        }
        let read = |p: &str| std::fs::read_to_string(slot.join(p)).unwrap();
        prepare(&paths, &slot).unwrap();
        assert_eq!((read("target/build"), read(SEED_KEY)), ("new".into(), "new seed".into()));
        assert_eq!(read("Cargo.lock"), "# lock");
        std::fs::write(slot.join("target/cell"), "a kernel's own build").unwrap();
        let fingerprints = slot.join("target/x86_64-unknown-linux-gnu/debug/.fingerprint");
        let build = |folder: &str, path: u64, profile: u64| {
            std::fs::create_dir_all(fingerprints.join(folder)).unwrap();
            let json = format!("{{\"rustc\":1,\"features\":\"[]\",\"path\":{path},\"profile\":{profile}}}");
            std::fs::write(fingerprints.join(folder).join("lib-lab_support.json"), json).unwrap();
        };
        build("lab-support-1111", 30826, 165);
        // The same path checked (`cargo check`, another profile): kept.
        build("lab-support-3333", 30826, 716);
        prepare(&paths, &slot).unwrap();
        assert!(slot.join("target/cell").exists(), "a slot of the current seed was copied again");
        // A build of lab-support for another path beside the first: copied again.
        build("lab-support-2222", 16695, 165);
        prepare(&paths, &slot).unwrap();
        assert!(!slot.join("target/cell").exists(), "a slot with two builds of lab-support was kept");
        assert_eq!(read("target/build"), "new");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
