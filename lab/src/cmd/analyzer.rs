//! What the kernel's rust-analyzer holds in memory, made smaller from outside evcxr.
//!
//! evcxr_jupyter keeps a rust-analyzer in its own process to learn the types of a cell's
//! variables. Left alone, it reads the source of every crate in lab-support's dependency graph
//! and of the standard library, and it allocates with mimalloc. Measured on this machine, a kernel
//! after the `:dep` and load cells (the process's PSS; `cargo lab bench --kernel` reports it):
//!
//! | kernel | idle |
//! |---|---|
//! | no dependency at all | 0.51 GB |
//! | `:dep candle-core` alone | 1.02 GB |
//! | `:dep lab-support` | 1.10 GB |
//!
//! rust-analyzer builds a name table for every crate of the graph it is given, whether a cell can
//! name the crate or not, so the graph sets the size. What the launcher changes, without forking
//! evcxr or candle:
//!
//! - **The graph the analyzer sees** (`analyzer_graph`). rust-analyzer learns the graph from
//!   `cargo metadata`, run by `$CARGO_HOME/bin/cargo` when that exists (before `CARGO` and `PATH`).
//!   The launcher makes the kernels' own cargo home, `.lab/cargo`, their `CARGO_HOME`, and `cargo lab
//!   up` puts there `bin/cargo`, a link to this tool (`.lab/bin/lab`). Nothing else runs it: evcxr
//!   and cargo find cargo through rustup or `PATH`. It runs the real cargo and leaves out of its
//!   answer what no variable's type can come from: proc-macro crates (evcxr gives its analyzer no proc-macro server, so they expand to
//!   nothing anyway), crates that only build scripts use, and the crates lab-support's manifest
//!   lists under `[package.metadata.lab] analyzer-skips`, with what only they pull in: the matrix
//!   products and threads inside candle and lab-support, candle's tokenizer and archive support,
//!   image decoding, compression, hashing, progress bars, system bindings, and what candle uses
//!   inside (serialisation, random numbers, byte casts, hash tables, locks). evcxr builds with its
//!   own cargo, so builds see the whole graph: only what the analyzer reads changes, 169 crates down
//!   to 12. A crate a notebook `:dep`s itself is kept whole, with all it needs, skipped crates
//!   included: the skips hold only below lab-support.
//! - **`RUST_SRC_PATH`**, which rust-analyzer reads before asking rustc for its sysroot, points to a
//!   copy of the toolchain's `library/` without what no notebook's types come from: the test and
//!   bench crates and folders, the processors' intrinsics (`core::arch`), the runtime's crates
//!   beside core, alloc and std, and the items of thirteen modules (`STUBBED`), 52 MB of source
//!   down to 13 MB. Cargo and rustc do not read the variable: builds are unchanged.
//! - mimalloc commits its arenas as it uses them (`MIMALLOC_ARENA_EAGER_COMMIT=0`) instead of
//!   whole when it creates them, its default on Linux. Its other settings changed nothing measurable
//!   (`MIMALLOC_PURGE_DELAY=0`: 0.955 GB against 0.951 GB).
//!
//! Measured by `cargo lab bench --kernel` (docs/performance.md has the table): with the trimmed
//! sources (then keeping this processor's intrinsics) and mimalloc's setting alone, a kernel after
//! its first cells held 1.04-1.06 GB and peaked at 1.41 GB while a cell compiled; with the narrowed
//! graph, 0.58-0.61 GB and 0.94 GB; without the intrinsics too, 0.50-0.55 GB and 0.81-0.85 GB;
//! with 12 crates of the graph instead of 49 and the standard library trimmed further,
//! 0.33-0.34 GB and 0.63 GB (6 December 2026).

use crate::paths::Paths;
use crate::sys::process::output_of;
use crate::sys::{At, CliResult};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

/// mimalloc's settings for evcxr_jupyter (see the module's comment).
pub const MIMALLOC_ENV: [(&str, &str); 1] = [("MIMALLOC_ARENA_EAGER_COMMIT", "0")];
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
/// 0.024 GB of it `Wrapping`, `Saturating` and the big integers). What they cost a student: a `let` that holds one of those
/// types needs its type written out (`let w: Wrapping<u8> = ...`), since the analyzer cannot name it.
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
const STUB_TEXT: &str = "// Left out of the lab kernel's copy for its analyzer (lab/src/cmd/analyzer.rs).\n";

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

/// The environment the launcher gives evcxr_jupyter: mimalloc's settings, `RUST_SRC_PATH` when
/// the trimmed copy matches the toolchain's sources as they are now (a variable the user set is
/// left alone), and the real cargo for the link that narrows the analyzer's graph, when `cargo lab
/// up` made it (the launcher makes `.lab/cargo` the cargo home, where rust-analyzer finds it).
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
    if cargo_link(paths).exists() {
        env.push((REAL_CARGO_ENV, real_cargo()));
    }
    env
}

/// The cargo the link runs: one named before, else the one `cargo run` names in `CARGO` for this
/// tool (unless that is this tool itself), else `cargo` on `PATH`.
fn real_cargo() -> OsString {
    if let Some(named) = std::env::var_os(REAL_CARGO_ENV) {
        return named;
    }
    let me = std::env::current_exe().and_then(std::fs::canonicalize).ok();
    std::env::var_os("CARGO").filter(|cargo| std::fs::canonicalize(cargo).ok() != me).unwrap_or_else(|| "cargo".into())
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

/// The name this tool answers to when the kernel's rust-analyzer runs it as cargo.
const CARGO_NAME: &str = "cargo";
/// The real cargo, for the link to run (the launcher sets it).
const REAL_CARGO_ENV: &str = "LAB_REAL_CARGO";
/// Set for the real cargo the link runs: a link that finds itself as the real cargo stops there.
const AS_CARGO_ENV: &str = "LAB_RUNNING_AS_CARGO";
/// When set, the link appends a line per `cargo metadata` it narrows to this file (the kernel
/// analyzer test reads it).
pub const CARGO_LOG_ENV: &str = "LAB_CARGO_LOG";
/// Where a crate's manifest lists the crates the analyzer is not given:
/// `[package.metadata.lab] analyzer-skips = [...]`.
const SKIPS_KEY: &str = "analyzer-skips";

/// `.lab/cargo/bin/cargo`, the link to this tool that the kernel's rust-analyzer runs as cargo.
pub fn cargo_link(paths: &Paths) -> PathBuf {
    paths.kernel_cargo_home().join("bin").join(CARGO_NAME)
}

/// Makes the link, to the launcher's copy that `cargo lab up` puts in `.lab/bin/lab`. Relative,
/// so that it names the copy of the checkout it is in.
pub fn ensure_cargo_link(paths: &Paths) -> CliResult<()> {
    let (link, to) = (cargo_link(paths), Path::new("../../bin/lab"));
    if std::fs::read_link(&link).is_ok_and(|now| now == to) {
        return Ok(());
    }
    let dir = link.parent().unwrap_or(&paths.state);
    std::fs::create_dir_all(dir).at(dir)?;
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(to, &link).at(&link)
}

/// Whether this process was started through the link, as cargo.
pub fn started_as_cargo() -> bool {
    std::env::args_os().next().is_some_and(|arg0| Path::new(&arg0).file_name() == Some(OsStr::new(CARGO_NAME)))
}

/// Runs the real cargo with this process's arguments. `cargo metadata`'s answer comes back through
/// `analyzer_graph`; anything else is cargo's own, and so is any answer this cannot read.
pub fn act_as_cargo() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let real = std::env::var_os(REAL_CARGO_ENV).unwrap_or_else(|| "cargo".into());
    if std::env::var_os(AS_CARGO_ENV).is_some() {
        eprintln!(
            "lab, run as cargo: {} is this link again, not cargo; set {REAL_CARGO_ENV} to cargo's path",
            Path::new(&real).display()
        );
        return ExitCode::FAILURE;
    }
    let mut command = Command::new(&real);
    command.args(&args).env(AS_CARGO_ENV, "1");
    let subcommand = args.iter().find(|a| !a.to_string_lossy().starts_with('-'));
    if subcommand.is_none_or(|s| s != "metadata") {
        let error = command.exec();
        eprintln!("lab, run as cargo: cannot start {}: {error}", Path::new(&real).display());
        return ExitCode::FAILURE;
    }
    let output = match command.stderr(Stdio::inherit()).output() {
        Ok(output) => output,
        Err(error) => {
            eprintln!("lab, run as cargo: cannot start {}: {error}", Path::new(&real).display());
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = output.stdout;
    if output.status.success() {
        if let Ok(mut metadata) = serde_json::from_slice::<Value>(&stdout) {
            if let Some((kept, of)) = analyzer_graph(&mut metadata) {
                if let Some(log) = std::env::var_os(CARGO_LOG_ENV) {
                    let line = format!("metadata: {kept} of {of} crates\n");
                    let file = std::fs::OpenOptions::new().create(true).append(true).open(log);
                    let _ = file.and_then(|mut f| f.write_all(line.as_bytes()));
                }
            }
            stdout = metadata.to_string().into_bytes();
        }
    }
    let _ = std::io::stdout().write_all(&stdout);
    ExitCode::from(output.status.code().unwrap_or(1).clamp(0, 255) as u8)
}

/// Narrows `cargo metadata`'s answer for a kernel's crate to what a variable's type can come from
/// (see the module's comment): the crates reachable from the root by normal dependencies, not
/// through a proc-macro crate, nor, below a package whose manifest lists `analyzer-skips`
/// (lab-support), through a crate listed there. A notebook's own `:dep` is kept with all it needs,
/// skipped crates included (`:dep rand_distr` keeps `rand`, whose traits its types implement),
/// since only below lab-support are the skips known to hold no notebook's types. An answer with no
/// root (the standard library's workspace, or `--no-deps`) is left whole. Returns how many
/// packages it kept, of how many, when it narrowed.
pub fn analyzer_graph(metadata: &mut Value) -> Option<(usize, usize)> {
    let root = metadata["resolve"]["root"].as_str()?.to_string();
    let packages = metadata["packages"].as_array()?;
    let nodes = metadata["resolve"]["nodes"].as_array()?;
    let total = packages.len();
    let skips: HashSet<&str> = packages
        .iter()
        .filter_map(|p| p["metadata"]["lab"][SKIPS_KEY].as_array())
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let by_id: HashMap<&str, &Value> = packages.iter().filter_map(|p| Some((p["id"].as_str()?, p))).collect();
    let proc_macro = |p: &Value| {
        p["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t["kind"].as_array().into_iter().flatten().any(|k| k == "proc-macro"))
    };
    let node_of: HashMap<&str, &Value> = nodes.iter().filter_map(|n| Some((n["id"].as_str()?, n))).collect();
    let lists_skips = |id: &str| by_id.get(id).is_some_and(|p| p["metadata"]["lab"][SKIPS_KEY].is_array());
    // First what the root needs outside the packages that list skips, then what those need, less
    // the skips: a crate reached both ways is kept with all it needs.
    let mut keep: HashSet<String> = HashSet::new();
    let mut below_skips: Vec<String> = Vec::new();
    for filtered in [false, true] {
        let mut todo = if filtered { std::mem::take(&mut below_skips) } else { vec![root.clone()] };
        let mut seen: HashSet<String> = HashSet::new();
        while let Some(id) = todo.pop() {
            if !seen.insert(id.clone()) || (filtered && keep.contains(&id) && !lists_skips(&id)) {
                continue;
            }
            keep.insert(id.clone());
            if !filtered && lists_skips(&id) {
                below_skips.push(id);
                continue;
            }
            for dep in node_of.get(id.as_str()).and_then(|n| n["deps"].as_array()).into_iter().flatten() {
                let Some(package) = dep["pkg"].as_str().and_then(|pkg| by_id.get(pkg)) else { continue };
                // Without dep_kinds (cargo before 1.41), every dependency counts as a normal one.
                let normal = dep["dep_kinds"].as_array().is_none_or(|kinds| kinds.iter().any(|k| k["kind"].is_null()));
                let skipped = filtered && package["name"].as_str().is_some_and(|name| skips.contains(name));
                if normal && !skipped && !proc_macro(package) {
                    todo.extend(package["id"].as_str().map(str::to_string));
                }
            }
        }
    }
    let kept = |v: &Value, key: &str| v[key].as_str().is_some_and(|id| keep.contains(id));
    if let Some(packages) = metadata["packages"].as_array_mut() {
        packages.retain(|p| kept(p, "id"));
    }
    if let Some(nodes) = metadata["resolve"]["nodes"].as_array_mut() {
        nodes.retain(|n| kept(n, "id"));
        for node in nodes {
            if let Some(deps) = node["deps"].as_array_mut() {
                deps.retain(|d| kept(d, "pkg"));
            }
            if let Some(ids) = node["dependencies"].as_array_mut() {
                ids.retain(|id| id.as_str().is_some_and(|id| keep.contains(id)));
            }
        }
    }
    Some((keep.len(), total))
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

    /// A `cargo metadata` answer: packages as (name, proc-macro, skips), edges as (from, to, kind).
    fn metadata(packages: &[(&str, bool, &[&str])], edges: &[(&str, &str, Option<&str>)]) -> Value {
        let id = |name: &str| format!("{name} 1.0.0");
        let packages: Vec<Value> = packages
            .iter()
            .map(|(name, proc_macro, skips)| {
                serde_json::json!({
                    "id": id(name), "name": name,
                    "targets": [{"kind": [if *proc_macro { "proc-macro" } else { "lib" }]}],
                    "metadata": if skips.is_empty() { Value::Null } else { serde_json::json!({"lab": {SKIPS_KEY: skips}}) },
                })
            })
            .collect();
        let nodes: Vec<Value> = packages
            .iter()
            .map(|p| {
                let from = p["name"].as_str().unwrap();
                let out: Vec<_> = edges.iter().filter(|e| e.0 == from).collect();
                serde_json::json!({
                    "id": p["id"],
                    "dependencies": out.iter().map(|e| id(e.1)).collect::<Vec<_>>(),
                    "deps": out.iter().map(|e| serde_json::json!({
                        "name": e.1, "pkg": id(e.1), "dep_kinds": [{"kind": e.2, "target": null}],
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        serde_json::json!({"packages": packages, "resolve": {"root": id("ctx"), "nodes": nodes}})
    }

    fn names(metadata: &Value) -> Vec<&str> {
        let mut names: Vec<&str> =
            metadata["packages"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
        names.sort();
        names
    }

    #[test]
    fn the_analyzer_sees_no_proc_macro_build_only_or_skipped_crate_but_a_notebooks_own_dep() {
        let mut m = metadata(
            &[
                ("ctx", false, &[]),
                ("lab-support", false, &["gemm", "image"]),
                ("candle-core", false, &[]),
                ("half", false, &[]),
                ("thiserror", false, &[]),
                ("thiserror-impl", true, &[]),
                ("gemm", false, &[]),
                ("pulp", false, &[]),
                ("cc", false, &[]),
                ("image", false, &[]),
                ("png", false, &[]),
            ],
            &[
                ("ctx", "lab-support", None),
                // A notebook's own `:dep image`: kept, with what it needs, though lab-support skips it.
                ("ctx", "image", None),
                ("lab-support", "candle-core", None),
                ("lab-support", "gemm", None),
                ("lab-support", "image", None),
                ("lab-support", "cc", Some("build")),
                ("candle-core", "gemm", None),
                ("candle-core", "half", None),
                ("candle-core", "thiserror", None),
                ("thiserror", "thiserror-impl", None),
                ("gemm", "pulp", None),
                ("image", "png", None),
            ],
        );
        assert_eq!(analyzer_graph(&mut m), Some((7, 11)));
        assert_eq!(names(&m), ["candle-core", "ctx", "half", "image", "lab-support", "png", "thiserror"]);
        let node = |name: &str| {
            m["resolve"]["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|n| n["id"] == format!("{name} 1.0.0"))
                .unwrap()
                .clone()
        };
        assert_eq!(node("lab-support")["dependencies"], serde_json::json!(["candle-core 1.0.0", "image 1.0.0"]));
        assert_eq!(node("candle-core")["deps"].as_array().unwrap().len(), 2);
        assert_eq!(node("thiserror")["deps"], serde_json::json!([]));
        assert_eq!(m["resolve"]["nodes"].as_array().unwrap().len(), 7);

        // Without the notebook's own dependency, image goes too.
        let mut m = metadata(
            &[("ctx", false, &[]), ("lab-support", false, &["image"]), ("image", false, &[]), ("png", false, &[])],
            &[("ctx", "lab-support", None), ("lab-support", "image", None), ("image", "png", None)],
        );
        analyzer_graph(&mut m);
        assert_eq!(names(&m), ["ctx", "lab-support"]);
    }

    #[test]
    fn a_notebooks_own_dep_keeps_the_skipped_crates_it_needs_and_lab_supports_stay_out() {
        let mut m = metadata(
            &[
                ("ctx", false, &[]),
                ("lab-support", false, &["rand", "serde"]),
                ("candle-core", false, &[]),
                ("rand", false, &[]),
                ("rand_core", false, &[]),
                ("serde", false, &[]),
                ("rand_distr", false, &[]),
            ],
            &[
                ("ctx", "lab-support", None),
                // A notebook's own `:dep rand_distr`, whose types implement `rand`'s traits.
                ("ctx", "rand_distr", None),
                ("rand_distr", "rand", None),
                ("rand", "rand_core", None),
                ("lab-support", "candle-core", None),
                ("candle-core", "rand", None),
                ("candle-core", "serde", None),
            ],
        );
        assert_eq!(analyzer_graph(&mut m), Some((6, 7)));
        assert_eq!(names(&m), ["candle-core", "ctx", "lab-support", "rand", "rand_core", "rand_distr"]);
        // Without the notebook's own `:dep`, lab-support's skips hold: rand, and what only it needs.
        let mut m = metadata(
            &[
                ("ctx", false, &[]),
                ("lab-support", false, &["rand", "serde"]),
                ("candle-core", false, &[]),
                ("rand", false, &[]),
                ("rand_core", false, &[]),
                ("serde", false, &[]),
            ],
            &[
                ("ctx", "lab-support", None),
                ("rand", "rand_core", None),
                ("lab-support", "candle-core", None),
                ("candle-core", "rand", None),
                ("candle-core", "serde", None),
            ],
        );
        assert_eq!(analyzer_graph(&mut m), Some((3, 6)));
        assert_eq!(names(&m), ["candle-core", "ctx", "lab-support"]);
    }

    #[test]
    fn an_answer_without_a_root_is_left_whole() {
        let mut m =
            metadata(&[("std", false, &[]), ("core", false, &[]), ("macros", true, &[])], &[("std", "macros", None)]);
        m["resolve"]["root"] = Value::Null;
        let before = m.clone();
        assert_eq!(analyzer_graph(&mut m), None);
        assert_eq!(m, before);
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
