//! The standard library's sources for the kernel's rust-analyzer: a trimmed copy of the
//! toolchain's `library/`, which `cargo lab up` makes in `.lab/rust-src/` and the launcher names in
//! `RUST_SRC_PATH` (see `analyzer` for why the analyzer's reading sets a kernel's memory).
//!
//! rust-analyzer reads `RUST_SRC_PATH` before asking rustc for its sysroot; cargo and rustc do not
//! read it, so builds are unchanged. The copy leaves out what no notebook's types come from: the
//! test and bench crates and folders, the processors' intrinsics (`core::arch`), the runtime's
//! crates beside core, alloc and std, and the items of thirteen modules (`STUBBED`), 52 MB of
//! source down to 13 MB. Measured on a kernel with no `:dep` (evcxr's process, after a few small
//! cells of std code): 0.28 GB with the copy of 5 December (tests and intrinsics left out), 0.263
//! GB without the runtime's crates too, 0.233 GB with the stubs too; with core alone, 0.21 GB.

use crate::paths::Paths;
use crate::sys::process::output_of;
use crate::sys::{At, CliResult};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The variable rust-analyzer reads for the standard library's sources.
pub const RUST_SRC_ENV: &str = "RUST_SRC_PATH";
/// Names the rules of `left_out`: a copy made under other rules is made again.
const TRIM_RULES: &str = "2026-12-06, no intrinsics, no runtime crates, 13 stubs";
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
    let mut stamp = format!("{}\ntrimmed as of {TRIM_RULES}\n", library.display());
    for file in WITNESSES {
        let meta = std::fs::metadata(library.join(file)).ok()?;
        let mtime = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos();
        stamp.push_str(&format!("{file} {} {mtime}\n", meta.len()));
    }
    Some(stamp)
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
        // The runtime's crates beside core, alloc and std: the test harness, proc_macro, panic
        // strategies, unwinding, profiling, CPU feature detection, backtraces (std's `#[path]`
        // module), portable SIMD (core's), the compiler's builtins, start-up objects, Windows
        // bindings, the sysroot's own manifest crate. rust-analyzer adds `test` to every crate and
        // std's others as std's dependencies; no notebook's type comes from them. 0.016 GB per
        // kernel (measured on a kernel with no `:dep`: 0.279 GB to 0.263 GB).
        ["test" | "proc_macro" | "panic_abort" | "panic_unwind" | "unwind" | "profiler_builtins" | "std_detect"
        | "backtrace" | "portable-simd" | "compiler-builtins" | "rtstartup" | "windows_link" | "sysroot"] => true,
        // Of stdarch, core includes core_arch (std_detect is left out with the runtime's crates).
        ["stdarch", "crates", name] => *name != "core_arch",
        // The processors' intrinsics, this one's too (`core::arch::x86_64::_mm_add_ps` and the
        // like): 8 MB of macro-made functions that no notebook calls. The analyzer's name table for
        // them cost 0.08 GB per kernel, and 0.1 s of every small cell.
        ["stdarch", "crates", "core_arch", "src", _] => true,
        // JSON data on the intrinsics, no source.
        ["stdarch", "intrinsics_data"] => true,
        _ => false,
    }
}

/// Files the copy keeps empty (relative to `library/`): their modules stay, without items. Each is
/// a part of core or std whose items no notebook's variable holds, and which the analyzer would
/// otherwise expand and index for every kernel: IP addresses, the unstable `f16` and `f128`,
/// `Wrapping` and `Saturating` integers, the big integers behind float formatting, portable-SIMD
/// intrinsics, C variadics, async iterators, the Unicode tables behind `char`'s methods (the
/// methods' signatures stay). Measured on a kernel with no `:dep`: 0.03 GB (0.263 GB to 0.233 GB;
/// 0.024 GB of it `Wrapping`, `Saturating` and the big integers). What they cost a student: a
/// `let` that holds one of those types needs its type written out (`let w: Wrapping<u8> = ...`),
/// since the analyzer cannot name it.
const STUBBED: [&str; 13] = [
    "core/src/net/mod.rs",
    "std/src/net/mod.rs",
    "core/src/num/f16.rs",
    "core/src/num/f128.rs",
    "std/src/num/f16.rs",
    "std/src/num/f128.rs",
    "core/src/num/wrapping.rs",
    "core/src/num/saturating.rs",
    "core/src/num/bignum.rs",
    "core/src/intrinsics/simd.rs",
    "core/src/ffi/va_list.rs",
    "core/src/async_iter/mod.rs",
    "core/src/unicode/unicode_data.rs",
];

/// What the copy writes in place of a `STUBBED` file.
const STUB_TEXT: &str = "// Left out of the lab kernel's copy for its analyzer (lab/src/cmd/rust_src.rs).\n";

/// Copies `from` into `to`, leaving out what `left_out` names and emptying what `STUBBED` names;
/// returns the bytes copied.
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
            let rel = rel.join(&name);
            if STUBBED.iter().any(|stub| Path::new(stub) == rel) {
                std::fs::write(to.join(&name), STUB_TEXT).at(&to.join(&name))?;
            } else {
                bytes += std::fs::copy(&path, to.join(&name)).at(&path)?;
            }
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

/// The trimmed copy, if its stamp matches the sources it was made from (no rustc call: a kernel
/// start stays quick).
pub fn current_copy(paths: &Paths) -> Option<PathBuf> {
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
    fn the_copy_leaves_out_tests_intrinsics_and_the_runtimes_other_crates() {
        for out in [
            "coretests",
            "alloctests",
            "std/tests",
            "core/benches",
            "stdarch/crates/stdarch-gen-arm",
            "stdarch/crates/core_arch/src/wasm32",
            "stdarch/crates/core_arch/src/x86",
            "stdarch/crates/core_arch/src/x86_64",
            "stdarch/intrinsics_data",
            "stdarch/crates/std_detect",
            "portable-simd",
            "test",
            "proc_macro",
            "backtrace",
            "std_detect",
            "unwind",
        ] {
            assert!(left_out(Path::new(out)), "{out} should be left out");
        }
        for kept in [
            "core",
            "core/src",
            "std/src/sys",
            "stdarch",
            "stdarch/crates/core_arch",
            "stdarch/crates/core_arch/src",
            "alloc",
            "std/src/sys/pal/unix",
            "core/src/num",
            "core/src/test",
        ] {
            assert!(!left_out(Path::new(kept)), "{kept} should be kept");
        }
    }

    #[test]
    fn the_copy_empties_the_stubbed_files_and_keeps_the_others_whole() {
        let dir = std::env::temp_dir().join(format!("lab-analyzer-copy-{}", std::process::id()));
        let (from, to) = (dir.join("from"), dir.join("to"));
        let _ = std::fs::remove_dir_all(&dir);
        for (file, text) in [
            ("core/src/lib.rs", "pub mod net;"),
            ("core/src/net/mod.rs", "pub struct Ipv4Addr;"),
            ("core/src/option.rs", "pub enum Option<T> { None, Some(T) }"),
            ("test/src/lib.rs", "pub fn test_main() {}"),
        ] {
            std::fs::create_dir_all(from.join(file).parent().unwrap()).unwrap();
            std::fs::write(from.join(file), text).unwrap();
        }
        let bytes = copy_trimmed(&from, &to, Path::new("")).unwrap();
        let read = |file: &str| std::fs::read_to_string(to.join(file)).ok();
        assert_eq!(read("core/src/lib.rs").as_deref(), Some("pub mod net;"));
        assert_eq!(read("core/src/option.rs").as_deref(), Some("pub enum Option<T> { None, Some(T) }"));
        assert_eq!(read("core/src/net/mod.rs").as_deref(), Some(STUB_TEXT), "a stubbed file is kept, empty");
        assert_eq!(read("test/src/lib.rs"), None, "the test crate is left out");
        assert_eq!(bytes, ("pub mod net;".len() + "pub enum Option<T> { None, Some(T) }".len()) as u64);
        let _ = std::fs::remove_dir_all(&dir);
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
