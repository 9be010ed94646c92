//! What the kernel's rust-analyzer holds in memory, made smaller from outside evcxr.
//!
//! evcxr_jupyter keeps a rust-analyzer in its own process to learn the types of a cell's
//! variables. It reads the source of every crate in lab-support's dependency graph and of the
//! standard library, and it allocates with mimalloc. Measured on this machine, a kernel after the
//! `:dep` and load cells (the process's PSS; `cargo lab bench --kernel` reports it):
//!
//! | kernel | idle |
//! |---|---|
//! | no dependency at all | 0.51 GB |
//! | `:dep candle-core` alone | 1.02 GB |
//! | `:dep lab-support` | 1.10 GB |
//!
//! So candle's own graph (tokenizers, zip, gemm and pulp among it, which candle-core requires
//! unconditionally) sets the size, and lab-support's other dependencies add little: a probe crate
//! with all of them but image, indicatif and sha2 measured 1.09 GB against 1.11 GB with them. What
//! the launcher can change without forking evcxr or candle is the standard library it reads and how
//! mimalloc gives memory back:
//!
//! - `RUST_SRC_PATH`, which rust-analyzer reads before asking rustc for its sysroot, points to a
//!   copy of the toolchain's `library/` without what no notebook's types come from: the test and
//!   bench crates and folders, and the intrinsics of other processor families
//!   (`core::arch::aarch64`, `wasm32`, ...), 52 MB of source down to 38 MB. Cargo and rustc do not
//!   read the variable: builds are unchanged.
//! - mimalloc commits its arenas as it uses them (`MIMALLOC_ARENA_EAGER_COMMIT=0`) instead of
//!   whole when it creates them, its default on Linux. Its other settings changed nothing measurable
//!   (`MIMALLOC_PURGE_DELAY=0`: 0.955 GB against 0.951 GB).
//!
//! Each alone saves about 0.075 GB. Together, measured by `cargo lab bench --kernel`: evcxr_jupyter
//! idle 1.12 GB down to 0.99 GB, and the kernel's peak with cargo and rustc while a cell compiles
//! 1.51-1.55 GB down to 1.37-1.39 GB; cell times unchanged (docs/performance.md).

use crate::paths::Paths;
use crate::sys::process::output_of;
use crate::sys::{At, CliResult};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// mimalloc's settings for evcxr_jupyter (see the module's comment).
pub const MIMALLOC_ENV: [(&str, &str); 1] = [("MIMALLOC_ARENA_EAGER_COMMIT", "0")];
/// The variable rust-analyzer reads for the standard library's sources.
pub const RUST_SRC_ENV: &str = "RUST_SRC_PATH";
/// Files whose size and time say whether the toolchain's sources changed since the copy.
const WITNESSES: [&str; 3] = ["core/src/lib.rs", "alloc/src/lib.rs", "std/src/lib.rs"];

/// Where the trimmed copy lives: `.lab/rust-src/library`, with `.lab/rust-src/STAMP`.
fn copy_dir(paths: &Paths) -> PathBuf {
    paths.state.join("rust-src")
}

/// The toolchain's `library/` folder, as `rustc --print sysroot` finds it.
fn toolchain_library() -> Option<PathBuf> {
    let sysroot = output_of(Command::new("rustc").args(["--print", "sysroot"]))?;
    let library = Path::new(sysroot.trim()).join("lib/rustlib/src/rust/library");
    library.join("core/src/lib.rs").exists().then_some(library)
}

/// The stamp of `library`: its path, then the size and time of each witness file.
fn stamp_of(library: &Path) -> Option<String> {
    let mut stamp = format!("{}\n", library.display());
    for file in WITNESSES {
        let meta = std::fs::metadata(library.join(file)).ok()?;
        let mtime = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos();
        stamp.push_str(&format!("{file} {} {mtime}\n", meta.len()));
    }
    Some(stamp)
}

/// The core_arch folders to keep on this processor family; `None`: keep them all.
fn arch_folders() -> Option<&'static [&'static str]> {
    match std::env::consts::ARCH {
        "x86_64" => Some(&["x86", "x86_64"]),
        "x86" => Some(&["x86"]),
        "aarch64" => Some(&["aarch64", "arm_shared"]),
        "arm" => Some(&["arm", "arm_shared"]),
        _ => None,
    }
}

/// Whether the copy leaves out the folder `rel` (relative to `library/`).
fn left_out(rel: &Path) -> bool {
    let parts: Vec<&str> = rel.iter().filter_map(|p| p.to_str()).collect();
    let Some(last) = parts.last() else { return false };
    // Crates and folders of tests and benchmarks: in no crate's module tree outside `cfg(test)`.
    if matches!(*last, "tests" | "benches" | "alloctests" | "coretests") {
        return true;
    }
    match parts.as_slice() {
        // Of stdarch, core includes core_arch and std uses std_detect (older layouts keep it here).
        ["stdarch", "crates", name] => !matches!(*name, "core_arch" | "std_detect"),
        // Of portable-simd, core includes core_simd.
        ["portable-simd", "crates", name] => *name != "core_simd",
        // The intrinsics of other processor families: `core::arch` compiles in only this one's.
        ["stdarch", "crates", "core_arch", "src", arch] => arch_folders().is_some_and(|keep| !keep.contains(arch)),
        _ => false,
    }
}

/// Copies `from` into `to`, leaving out what `left_out` names; returns the bytes copied.
fn copy_trimmed(from: &Path, to: &Path, rel: &Path) -> CliResult<u64> {
    std::fs::create_dir_all(to).at(to)?;
    let mut bytes = 0;
    for entry in std::fs::read_dir(from).at(from)? {
        let entry = entry.at(from)?;
        let (path, name) = (entry.path(), entry.file_name());
        let kind = entry.file_type().at(&path)?;
        if kind.is_dir() {
            let rel = rel.join(&name);
            if !left_out(&rel) {
                bytes += copy_trimmed(&path, &to.join(&name), &rel)?;
            }
        } else if kind.is_file() {
            bytes += std::fs::copy(&path, to.join(&name)).at(&path)?;
        }
    }
    Ok(bytes)
}

/// `cargo lab up`'s step: the trimmed copy of the standard library's sources, made again when the
/// toolchain's sources change. Without rust-src it does nothing (evcxr then has none either).
pub fn ensure_sources(paths: &Paths) -> CliResult<String> {
    let Some(library) = toolchain_library() else {
        return Ok("no rust-src found; the kernel's analyzer reads what rustc finds".into());
    };
    let Some(stamp) = stamp_of(&library) else {
        return Ok(format!("cannot read {}; the kernel's analyzer reads it whole", library.display()));
    };
    let dir = copy_dir(paths);
    let stamp_file = dir.join("STAMP");
    if std::fs::read_to_string(&stamp_file).ok().as_deref() == Some(&stamp) && dir.join("library").exists() {
        return Ok("the standard library's sources for the kernel's analyzer: ready".into());
    }
    // Into a temporary folder, renamed when whole; the stamp last.
    let (partial, target) = (dir.join("library.partial"), dir.join("library"));
    let _ = std::fs::remove_file(&stamp_file);
    let _ = std::fs::remove_dir_all(&partial);
    let bytes = copy_trimmed(&library, &partial, Path::new(""))?;
    let _ = std::fs::remove_dir_all(&target);
    std::fs::rename(&partial, &target).at(&target)?;
    std::fs::write(&stamp_file, &stamp).at(&stamp_file)?;
    Ok(format!(
        "the standard library's sources for the kernel's analyzer: {:.0} MB copied into {}",
        bytes as f64 / 1e6,
        target.display()
    ))
}

/// The environment the launcher gives evcxr_jupyter: mimalloc's settings, and `RUST_SRC_PATH` when
/// the trimmed copy matches the toolchain's sources as they are now. A variable the user set is
/// left alone.
pub fn kernel_env(paths: &Paths) -> Vec<(&'static str, OsString)> {
    let mut env: Vec<(&'static str, OsString)> = MIMALLOC_ENV
        .iter()
        .filter(|(name, _)| std::env::var_os(name).is_none())
        .map(|(name, value)| (*name, OsString::from(value)))
        .collect();
    if std::env::var_os(RUST_SRC_ENV).is_none() {
        if let Some(copy) = current_copy(paths) {
            env.push((RUST_SRC_ENV, copy.into_os_string()));
        }
    }
    env
}

/// The trimmed copy, if its stamp matches the sources it was made from (no rustc call: a kernel
/// start stays quick).
fn current_copy(paths: &Paths) -> Option<PathBuf> {
    let dir = copy_dir(paths);
    let stamp = std::fs::read_to_string(dir.join("STAMP")).ok()?;
    let library = PathBuf::from(stamp.lines().next()?);
    let copy = dir.join("library");
    (stamp_of(&library)? == stamp && copy.join("core/src/lib.rs").exists()).then_some(copy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_leaves_out_tests_other_processors_and_other_stdarch_crates() {
        for out in [
            "coretests",
            "alloctests",
            "std/tests",
            "core/benches",
            "stdarch/crates/stdarch-gen-arm",
            "stdarch/crates/core_arch/src/wasm32",
            "portable-simd/crates/std_float",
        ] {
            if out.contains("wasm32") && arch_folders().is_none() {
                continue;
            }
            assert!(left_out(Path::new(out)), "{out} should be left out");
        }
        for kept in [
            "core",
            "core/src",
            "std/src/sys",
            "stdarch",
            "stdarch/crates/core_arch",
            "stdarch/crates/core_arch/src",
            "stdarch/crates/std_detect",
            "portable-simd/crates/core_simd",
            "backtrace/src",
        ] {
            assert!(!left_out(Path::new(kept)), "{kept} should be kept");
        }
        if let Some(keep) = arch_folders() {
            for arch in keep {
                assert!(!left_out(&Path::new("stdarch/crates/core_arch/src").join(arch)));
            }
        }
    }

    #[test]
    fn a_copy_is_used_only_while_its_sources_are_unchanged() {
        let root = std::env::temp_dir().join(format!("lab-analyzer-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let library = root.join("toolchain/library");
        for file in WITNESSES.iter().chain(["core/src/num.rs", "coretests/lib.rs"].iter()) {
            let path = library.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, "// source\n").unwrap();
        }
        let paths = Paths { root: root.clone(), venv: root.join(".venv"), state: root.join(".lab") };
        let dir = copy_dir(&paths);
        copy_trimmed(&library, &dir.join("library"), Path::new("")).unwrap();
        assert!(dir.join("library/core/src/num.rs").exists());
        assert!(!dir.join("library/coretests").exists());
        std::fs::write(dir.join("STAMP"), stamp_of(&library).unwrap()).unwrap();
        assert_eq!(current_copy(&paths), Some(dir.join("library")));
        // A toolchain update rewrites the sources: the copy is stale, the analyzer reads the real ones.
        std::fs::write(library.join("core/src/lib.rs"), "// a newer core\n").unwrap();
        assert_eq!(current_copy(&paths), None);
        let _ = std::fs::remove_dir_all(&root);
    }
}
