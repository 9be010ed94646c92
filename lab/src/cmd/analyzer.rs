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
//!   trimmed copy of the standard library's sources (`rust_src`): 13 MB of source instead of 52 MB.
//!   Cargo and rustc do not read the variable: builds are unchanged.
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

use super::rust_src::{current_copy, RUST_SRC_ENV};
use crate::paths::Paths;
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
        // Below the skip lists, what the first pass kept has been walked whole already.
        let mut seen: HashSet<String> =
            if filtered { keep.iter().filter(|id| !lists_skips(id)).cloned().collect() } else { HashSet::new() };
        while let Some(id) = todo.pop() {
            if !seen.insert(id.clone()) {
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
        let packages: &[(&str, bool, &[&str])] = &[
            ("ctx", false, &[]),
            ("lab-support", false, &["rand", "serde"]),
            ("candle-core", false, &[]),
            ("rand", false, &[]),
            ("rand_core", false, &[]),
            ("serde", false, &[]),
            ("rand_distr", false, &[]),
        ];
        let lab_support = [
            ("ctx", "lab-support", None),
            ("lab-support", "candle-core", None),
            ("candle-core", "rand", None),
            ("candle-core", "serde", None),
            ("rand", "rand_core", None),
        ];
        // Without a `:dep` of the notebook's own, lab-support's skips hold: rand, and what only it needs.
        let mut m = metadata(packages, &lab_support);
        assert_eq!(analyzer_graph(&mut m), Some((3, 7)));
        assert_eq!(names(&m), ["candle-core", "ctx", "lab-support"]);
        // A notebook's own `:dep rand_distr`, whose types implement `rand`'s traits: rand is kept.
        let own = [("ctx", "rand_distr", None), ("rand_distr", "rand", None)];
        let mut m = metadata(packages, &[&lab_support[..], &own[..]].concat());
        assert_eq!(analyzer_graph(&mut m), Some((6, 7)));
        assert_eq!(names(&m), ["candle-core", "ctx", "lab-support", "rand", "rand_core", "rand_distr"]);
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
}
