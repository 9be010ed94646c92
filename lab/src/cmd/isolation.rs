//! A hub run as root gives every student a Unix user of their own, as The Littlest JupyterHub
//! does: `jupyter-<name>`, with a home only they can read, `/home/jupyter-<name>/`. What their
//! servers and kernels run must then be reachable by them, and what is not theirs must not be:
//!
//! - **What they run.** The instructor's toolchain and Python usually sit under `/root` (mode 0700
//!   on Debian), which no other user can enter. `prepare` puts copies under `.lab/hub-runtime/`
//!   (hard links where the file system allows: no second 2 GB on disk): the toolchain rustc reports
//!   (`toolchain/`, run directly, without rustup), the Python the venv was made from (`python/`),
//!   evcxr_jupyter (`bin/`), and `venv/`, a venv over that Python whose site-packages, JupyterLab
//!   and server settings are the project venv's own (links), with a `rust` kernel spec naming the
//!   copy of evcxr. Kernels build with the lab's own cargo home (`.lab/cargo/`, see
//!   `Paths::kernel_cargo_home`), in slots of their own under `~/.cache/lab-kernels/`, each copied from
//!   the instructor's seed.
//! - **What they must not read.** The repository's folders and `.lab/`'s are closed to other users
//!   (mode 0700 or 0600) except what a student's server needs (`PUBLIC` and `PUBLIC_STATE`): the
//!   solutions, `course/` (the gradebook, the submissions), `.git`, `target/` (executed solutions),
//!   the hub's own files and the instructor's kernel slots among them. An allow-list, so that a
//!   folder added later is closed too. Homes are 0700.

use crate::paths::Paths;
use crate::sys::process::{output_of, run};
use crate::sys::{At, CliResult};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository's top-level entries a student's server reads: lab-support's sources (the
/// notebooks `:dep` them) and the workspace manifest and lock cargo reads with them, the datasets
/// and weights, the project venv's packages, `.lab/` (filtered by `PUBLIC_STATE`).
const PUBLIC: [&str; 6] = ["lab-support", "data", "Cargo.toml", "Cargo.lock", ".venv", ".lab"];
/// What of `.lab/` a student's server reads: the kernel launcher, evcxr's settings, the trimmed
/// standard library sources, the kernels' cargo home, the seed (and its lock), the runtime copies.
const PUBLIC_STATE: [&str; 6] = ["bin", "evcxr", "rust-src", "cargo", "kernels", "hub-runtime"];
/// What of `.lab/kernels/` they read: the seed, its lock and the kernels' cargo settings; not the
/// instructor's slots.
const PUBLIC_KERNELS: [&str; 3] = ["seed", "seed.lock", ".cargo"];

/// A student's Unix user.
pub fn unix_name(student: &str) -> String {
    format!("jupyter-{student}")
}

/// What a hub's spawner needs to start a student's server under their own user.
pub struct Runtime {
    /// `.lab/hub-runtime/`.
    pub dir: PathBuf,
}

impl Runtime {
    pub fn python(&self) -> PathBuf {
        self.dir.join("venv/bin/python3")
    }
    pub fn venv(&self) -> PathBuf {
        self.dir.join("venv")
    }
    /// PATH for a student's server: the runtime venv, the toolchain, the system.
    pub fn path(&self) -> String {
        format!(
            "{}:{}:/usr/local/bin:/usr/bin:/bin",
            self.dir.join("venv/bin").display(),
            self.dir.join("toolchain/bin").display()
        )
    }
    /// LD_LIBRARY_PATH: libpython for the copied Python (its RUNPATH names the original), the
    /// standard library's shared object for the cells (rustc's relative rpath in a cell points one
    /// folder off when the toolchain is not under the root folder; measured: "dlopen failed").
    pub fn library_path(&self) -> String {
        format!("{}:{}", self.dir.join("python/lib").display(), self.dir.join("toolchain/lib").display())
    }
}

/// Everything a hub of isolated students needs before it starts: the runtime copies, the closed
/// folders, and a Unix user and home for each of `students`. Returns the runtime and each
/// student's home.
pub fn prepare(paths: &Paths, students: &[String]) -> CliResult<(Runtime, Vec<PathBuf>)> {
    reachable(&paths.root)?;
    let runtime = make_runtime(paths)?;
    close_private(paths)?;
    let mut homes = Vec::new();
    for s in students {
        homes.push(ensure_user(&unix_name(s))?);
    }
    Ok((runtime, homes))
}

/// Every folder above the repository must let other users pass.
fn reachable(root: &Path) -> CliResult<()> {
    for dir in root.ancestors() {
        let mode = std::fs::metadata(dir).at(dir)?.permissions().mode();
        if mode & 0o001 == 0 {
            return Err(format!(
                "students' servers could not reach the lab: {} is closed to other users (mode {:o}). Put \
                 the repository where other users can pass through (for example /srv/lab; /root is \
                 private on most systems), then run `cargo lab up` there",
                dir.display(),
                mode & 0o777
            ));
        }
    }
    Ok(())
}

/// Hard links of `from` at `to` (see `setup::link_tree`), kept while `stamp` (what it was made
/// from) is unchanged.
fn link_copy(from: &Path, to: &Path, stamp: &str) -> CliResult<()> {
    let stamp_file = to.with_extension("stamp");
    if to.exists() && std::fs::read_to_string(&stamp_file).ok().as_deref() == Some(stamp) {
        return Ok(());
    }
    let _ = std::fs::remove_dir_all(to);
    super::setup::link_tree(from, to)?;
    std::fs::write(&stamp_file, stamp).at(&stamp_file)
}

fn make_runtime(paths: &Paths) -> CliResult<Runtime> {
    let dir = paths.state.join("hub-runtime");
    std::fs::create_dir_all(&dir).at(&dir)?;
    // The toolchain the lab's builds use.
    let sysroot = output_of(Command::new("rustc").args(["--print", "sysroot"]))
        .ok_or("`rustc --print sysroot` failed: is Rust installed?")?;
    let sysroot = PathBuf::from(sysroot.trim());
    let version = output_of(Command::new("rustc").arg("-vV")).unwrap_or_default();
    link_copy(&sysroot, &dir.join("toolchain"), &format!("{}\n{version}", sysroot.display()))?;
    // The Python the project venv was made from (`home` in its pyvenv.cfg is its bin folder).
    let cfg = std::fs::read_to_string(paths.venv.join("pyvenv.cfg")).at(&paths.venv)?;
    let home = cfg
        .lines()
        .find_map(|l| l.strip_prefix("home").map(|v| v.trim_start_matches([' ', '=']).trim().to_string()))
        .ok_or_else(|| format!("{} names no home", paths.venv.join("pyvenv.cfg").display()))?;
    let prefix = Path::new(&home).parent().ok_or("the venv's Python has no prefix")?.to_path_buf();
    let version_line = cfg.lines().find(|l| l.starts_with("version")).unwrap_or_default().to_string();
    link_copy(&prefix, &dir.join("python"), &format!("{}\n{version_line}", prefix.display()))?;
    // evcxr_jupyter, as the kernel spec names it.
    let spec_file = paths.kernel_dir().join("kernel.json");
    let mut spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&spec_file).at(&spec_file)?).map_err(|e| e.to_string())?;
    let evcxr = PathBuf::from(spec["argv"][3].as_str().ok_or("the rust kernel spec names no evcxr_jupyter")?);
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).at(&bin)?;
    let evcxr_copy = bin.join("evcxr_jupyter");
    let _ = std::fs::remove_file(&evcxr_copy);
    if std::fs::hard_link(&evcxr, &evcxr_copy).is_err() {
        std::fs::copy(&evcxr, &evcxr_copy)
            .map_err(|e| format!("{} to {}: {e}", evcxr.display(), evcxr_copy.display()))?;
    }
    // The runtime venv: the copied Python, the project venv's packages and Jupyter data.
    let venv = dir.join("venv");
    let _ = std::fs::remove_dir_all(&venv);
    let python_name = Path::new(
        cfg.lines()
            .find_map(|l| l.strip_prefix("executable"))
            .unwrap_or("= python3")
            .trim_start_matches([' ', '='])
            .trim(),
    )
    .file_name()
    .map(|n| n.to_string_lossy().into_owned())
    .unwrap_or_else(|| "python3".into());
    let site = std::fs::read_dir(paths.venv.join("lib"))
        .at(&paths.venv)?
        .flatten()
        .map(|e| e.file_name())
        .find(|n| n.to_string_lossy().starts_with("python"))
        .ok_or("the project venv has no lib/python3.*")?;
    let venv_bin = venv.join("bin");
    let venv_lib = venv.join("lib").join(&site);
    let kernels = venv.join("share/jupyter/kernels/rust");
    for d in [&venv_bin, &venv_lib, &kernels] {
        std::fs::create_dir_all(d).at(d)?;
    }
    let symlink = |from: &Path, to: &Path| std::os::unix::fs::symlink(from, to).at(to);
    std::fs::write(
        venv.join("pyvenv.cfg"),
        format!("home = {}\ninclude-system-site-packages = false\n{version_line}\n", dir.join("python/bin").display()),
    )
    .at(&venv)?;
    symlink(&dir.join("python/bin").join(&python_name), &venv_bin.join("python3"))?;
    symlink(Path::new("python3"), &venv_bin.join("python"))?;
    symlink(&paths.venv.join("lib").join(&site).join("site-packages"), &venv_lib.join("site-packages"))?;
    symlink(&paths.venv.join("etc"), &venv.join("etc"))?;
    for entry in std::fs::read_dir(paths.venv.join("share/jupyter")).at(&paths.venv)?.flatten() {
        if entry.file_name() != "kernels" {
            symlink(&entry.path(), &venv.join("share/jupyter").join(entry.file_name()))?;
        }
    }
    spec["argv"][3] = serde_json::json!(evcxr_copy);
    std::fs::write(kernels.join("kernel.json"), serde_json::to_string_pretty(&spec).map_err(|e| e.to_string())?)
        .at(&kernels)?;
    // Crate sources keep the modes of their archives (some are 0600); the seed's incremental
    // lock files are 0600; weights written by `cargo lab train` are 0600 (written whole, then
    // renamed). Students read all of them, and the rest of what `PUBLIC` names.
    let public = PUBLIC.iter().filter(|p| !p.starts_with('.')).map(|p| paths.root.join(p));
    for d in public.chain([paths.kernel_cargo_home(), super::launcher::seed_dir(paths)]) {
        if d.exists() {
            run(Command::new("chmod").arg("-R").arg("a+rX").arg(&d), &format!("opening {} to students", d.display()))?;
        }
    }
    Ok(Runtime { dir })
}

/// Closes to other users everything in `dir` that `public` does not name.
fn close_all_but(dir: &Path, public: &[&str]) -> CliResult<()> {
    for entry in std::fs::read_dir(dir).at(dir)?.flatten() {
        let name = entry.file_name();
        if public.iter().any(|p| name == *p) {
            continue;
        }
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).at(&path)?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & !0o077)).at(&path)?;
        }
    }
    Ok(())
}

fn close_private(paths: &Paths) -> CliResult<()> {
    close_all_but(&paths.root, &PUBLIC)?;
    close_all_but(&paths.state, &PUBLIC_STATE)?;
    let kernels = super::launcher::slots_dir(paths);
    if kernels.exists() {
        close_all_but(&kernels, &PUBLIC_KERNELS)?;
    }
    Ok(())
}

/// The Unix user `name` (made if missing, with a home in /home), its home: owned by it, mode 0700.
fn ensure_user(name: &str) -> CliResult<PathBuf> {
    if passwd(name).is_err() {
        run(
            Command::new("useradd").args(["--create-home", "--shell", "/bin/bash", "--user-group", name]),
            &format!("creating the Unix user {name}"),
        )?;
    }
    let home = PathBuf::from(&passwd(name)?[5]);
    if !home.is_absolute() || home == Path::new("/") {
        return Err(format!("the Unix user {name} has no home of its own ({})", home.display()));
    }
    std::fs::create_dir_all(&home).at(&home)?;
    run(Command::new("chown").arg(format!("{name}:")).arg(&home), &format!("giving {} to {name}", home.display()))?;
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).at(&home)?;
    Ok(home)
}

/// Puts `notebooks` (name and bytes) into `home/notebooks/` and a `home/lab-support` link to
/// `lab_support`, each only if nothing of that name is there (a student's work is never
/// overwritten; a `lab-support` link to elsewhere is the lab's and is replaced), all owned by the
/// Unix user `owner` (without one, as the user running this: a hub without root). The student owns
/// `home` and could put a symbolic link where this writes, so
/// every step goes through a descriptor of the folder above, with `O_NOFOLLOW` and `O_EXCL`:
/// nothing the student made is followed, and no path is looked up twice.
pub fn install(home: &Path, owner: Option<&str>, notebooks: &[(String, Vec<u8>)], lab_support: &Path) -> CliResult<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::io::FromRawFd;
    // An id of -1 leaves a file's owner as it is (chown(2)).
    let (uid, gid) = match owner {
        Some(name) => ids(name)?,
        None => (libc::uid_t::MAX, libc::gid_t::MAX),
    };
    let owner = owner.unwrap_or("this user");
    let c = |s: &[u8]| CString::new(s).map_err(|_| format!("a NUL byte in {}", String::from_utf8_lossy(s)));
    let error = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    let dir_flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY (the libc calls below): valid C strings and descriptors opened here; every descriptor
    // is owned by a `File`, which closes it.
    let home_fd = unsafe { libc::open(c(home.as_os_str().as_bytes())?.as_ptr(), dir_flags) };
    if home_fd < 0 {
        return Err(error(&format!("opening {}", home.display())));
    }
    let home_dir = unsafe { std::fs::File::from_raw_fd(home_fd) };
    let nbs = c(b"notebooks")?;
    if unsafe { libc::mkdirat(home_fd, nbs.as_ptr(), 0o755) } == 0 {
        unsafe { libc::fchownat(home_fd, nbs.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) };
    }
    let nbs_fd = unsafe { libc::openat(home_fd, nbs.as_ptr(), dir_flags) };
    if nbs_fd < 0 {
        eprintln!(
            "warning: {} is not a folder ({}); {owner}'s notebooks were not copied there",
            home.join("notebooks").display(),
            std::io::Error::last_os_error()
        );
    } else {
        let nbs_dir = unsafe { std::fs::File::from_raw_fd(nbs_fd) };
        for (name, bytes) in notebooks {
            let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
            let fd = unsafe { libc::openat(nbs_fd, c(name.as_bytes())?.as_ptr(), flags, 0o644 as libc::c_uint) };
            if fd < 0 {
                // There already (the student's own copy, or something they put there): left alone.
                continue;
            }
            let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
            std::io::Write::write_all(&mut file, bytes).map_err(|e| format!("writing {name} for {owner}: {e}"))?;
            if unsafe { libc::fchown(fd, uid, gid) } != 0 {
                return Err(error(&format!("giving {name} to {owner}")));
            }
        }
        drop(nbs_dir);
    }
    let link = c(b"lab-support")?;
    let target = lab_support.as_os_str().as_bytes();
    // A link to another checkout (the lab moved, or another clone's hub made this home) is
    // replaced: the notebooks would build that lab-support while the spare kernel loaded this one,
    // and the first cell built against the second could not load ("dlopen failed"). A folder of
    // that name is the student's own and stays.
    let mut old = vec![0u8; 4096];
    let n = unsafe { libc::readlinkat(home_fd, link.as_ptr(), old.as_mut_ptr().cast(), old.len()) };
    if n >= 0 && &old[..n as usize] != target {
        // What the student's link named is theirs to choose: shown quoted, never as raw bytes.
        let was = String::from_utf8_lossy(&old[..n as usize]).into_owned();
        if unsafe { libc::unlinkat(home_fd, link.as_ptr(), 0) } == 0 {
            eprintln!(
                "note: {} pointed to {was:?}; it now points to {}",
                home.join("lab-support").display(),
                lab_support.display()
            );
        } else {
            // Changed meanwhile (a folder now): the hub goes on for everyone else.
            eprintln!(
                "warning: could not replace {} (it pointed to {was:?}): {}",
                home.join("lab-support").display(),
                std::io::Error::last_os_error()
            );
        }
    }
    if unsafe { libc::symlinkat(c(target)?.as_ptr(), home_fd, link.as_ptr()) } == 0 {
        unsafe { libc::fchownat(home_fd, link.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) };
    }
    drop(home_dir);
    Ok(())
}

/// The seven fields of the Unix user `name`'s entry in the system's user list.
fn passwd(name: &str) -> CliResult<Vec<String>> {
    let entry =
        output_of(Command::new("getent").args(["passwd", name])).ok_or_else(|| format!("no Unix user {name}"))?;
    let fields: Vec<String> = entry.trim().split(':').map(String::from).collect();
    if fields.len() == 7 {
        Ok(fields)
    } else {
        Err(format!("cannot read the Unix user {name} from {entry:?}"))
    }
}

/// The user and group ids of the Unix user `name`.
fn ids(name: &str) -> CliResult<(libc::uid_t, libc::gid_t)> {
    let fields = passwd(name)?;
    match (fields[2].parse(), fields[3].parse()) {
        (Ok(uid), Ok(gid)) => Ok((uid, gid)),
        _ => Err(format!("cannot read the ids of the Unix user {name} from {fields:?}")),
    }
}

/// Gives `path` (and what is under it) to the Unix user `name`.
pub fn give(path: &Path, name: &str) -> CliResult<()> {
    run(
        Command::new("chown").args(["-R", "-h"]).arg(format!("{name}:")).arg(path),
        &format!("giving {} to {name}", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A student owns their home and can plant symbolic links where the hub writes: a link where a
    /// notebook would go, dangling into a folder of the instructor's, and a `notebooks` that is a
    /// link to such a folder. Nothing may be written through either, and a notebook already there
    /// (the student's work) stays as it is.
    #[test]
    fn install_follows_no_link_a_student_planted_and_overwrites_nothing() {
        let me = output_of(Command::new("id").arg("-un")).unwrap().trim().to_string();
        let root = std::env::temp_dir().join(format!("lab-install-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (home, outside) = (root.join("home"), root.join("outside"));
        std::fs::create_dir_all(home.join("notebooks")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(outside.join("a.ipynb"), home.join("notebooks/a.ipynb")).unwrap();
        std::fs::write(home.join("notebooks/b.ipynb"), "the student's work").unwrap();
        let files = [("a.ipynb", "A"), ("b.ipynb", "B"), ("c.ipynb", "C")]
            .map(|(n, t)| (n.to_string(), t.as_bytes().to_vec()))
            .to_vec();
        install(&home, Some(&me), &files, Path::new("/nowhere/lab-support")).unwrap();
        assert!(!outside.join("a.ipynb").exists(), "wrote through the student's link");
        assert_eq!(std::fs::read_to_string(home.join("notebooks/b.ipynb")).unwrap(), "the student's work");
        assert_eq!(std::fs::read_to_string(home.join("notebooks/c.ipynb")).unwrap(), "C");
        assert_eq!(std::fs::read_link(home.join("lab-support")).unwrap(), Path::new("/nowhere/lab-support"));
        // The lab moved (CI's clone of a checkout whose hub made these homes): the link follows it.
        install(&home, Some(&me), &files, Path::new("/moved/lab-support")).unwrap();
        assert_eq!(std::fs::read_link(home.join("lab-support")).unwrap(), Path::new("/moved/lab-support"));
        assert_eq!(std::fs::read_to_string(home.join("notebooks/c.ipynb")).unwrap(), "C");
        // `notebooks` itself a link: nothing is copied, and the hub goes on.
        let second = root.join("home2");
        std::fs::create_dir_all(&second).unwrap();
        std::os::unix::fs::symlink(&outside, second.join("notebooks")).unwrap();
        install(&second, Some(&me), &files, Path::new("/nowhere/lab-support")).unwrap();
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "wrote into the folder the link names");
        // A `lab-support` folder of the student's own stays.
        let third = root.join("home3");
        std::fs::create_dir_all(third.join("lab-support/src")).unwrap();
        install(&third, Some(&me), &files, Path::new("/moved/lab-support")).unwrap();
        assert!(third.join("lab-support/src").is_dir(), "the student's own lab-support folder was replaced");
        // Without an owner (a hub without root): the same, as the user running it.
        let fourth = root.join("home4");
        std::fs::create_dir_all(&fourth).unwrap();
        install(&fourth, None, &files, Path::new("/moved/lab-support")).unwrap();
        assert_eq!(std::fs::read_to_string(fourth.join("notebooks/c.ipynb")).unwrap(), "C");
        assert_eq!(std::fs::read_link(fourth.join("lab-support")).unwrap(), Path::new("/moved/lab-support"));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
