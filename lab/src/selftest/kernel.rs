//! The kernel test of `cargo lab test`: what a student sees when things go wrong, in a real evcxr
//! kernel, where evcxr's own behaviour (RUST_BACKTRACE forced on, a Debug fallback for a cell
//! whose last line moves a variable, a cell's variables lost after an error) meets lab-support's
//! answers to it (`lab_support::kernel`, the figures' Debug).

use crate::ipynb::{join_text, output_text};
use crate::jupyter::outputs::verdict_line;
use crate::jupyter::{check_outputs, execute_cells};
use crate::paths::Paths;
use crate::sys::text::tail;
use crate::sys::{At, CliResult};
use serde_json::Value;

const CELLS: [&str; 8] = [
    ":dep lab-support = { path = \"../lab-support\" }\nuse lab_support::prelude::*;",
    "let model = Classifier::pretrained()?;",
    // A TODO not written yet, called from a later cell.
    "fn unfinished(x: u32) -> u32 {\n    todo!(\"double x\")\n}",
    "let y = unfinished(2);",
    // The last line moves a variable defined in the same cell.
    "let v = vec![(1.0, 1.0), (2.0, 3.0)];\nLinePlot::new(\"moved\").line(\"a\", v)",
    // A candle error from the student's own tensor code, inside a check. (A `?` error at a cell's
    // top level is printed by evcxr on stderr just before the cell ends, and that line can reach
    // the notebook too late to be kept: its text is evcxr's to deliver, not ours to test.)
    "check::descent_step(|x: &Tensor, g: &Tensor, _s: f64| Ok((x - g.flatten_all()?)?))",
    // A lab-support error's text (printed, not `?`-returned: see the candle cell's comment).
    "println!(\"{}\", photo(\"cat.png\").unwrap_err());",
    // Long work (several seconds) shows a few progress lines.
    "epsilon_sweep(&model, &mnist::test()?.take(500)?, Norm::Linf, &[0.1, 0.2, 0.3], 40)?.len()",
];

/// Runs the cells and returns what is wrong with what they showed.
pub fn test(paths: &Paths) -> CliResult<Vec<String>> {
    let (nb, _) = execute_cells(paths, "kernel-test", &CELLS)?;
    let cells = nb["cells"].as_array().cloned().unwrap_or_default();
    let stderr = |i: usize| -> String {
        cells
            .get(i)
            .and_then(|c| c["outputs"].as_array())
            .into_iter()
            .flatten()
            .filter(|o| o["name"] == "stderr")
            .map(output_text)
            .collect()
    };
    let html = |i: usize| -> String {
        let outputs = cells.get(i).and_then(|c| c["outputs"].as_array()).cloned().unwrap_or_default();
        outputs.iter().map(|o| join_text(&o["data"]["text/html"])).collect()
    };
    let mut problems = Vec::new();
    let everything: String = (0..CELLS.len()).map(stderr).collect();
    if everything.contains("stack backtrace") || everything.contains("evcxr::") || everything.contains("   0: ") {
        problems.push(format!(
            "a backtrace reached the notebook: {}",
            everything.lines().take(8).collect::<Vec<_>>().join(" | ")
        ));
    }
    let todo = stderr(3);
    if !todo.contains("not yet implemented: double x") || !todo.contains("in your code: todo!(\"double x\")") {
        problems.push(format!("a todo!() panic should show its message and the student's line, it showed: {todo:?}"));
    }
    if !html(4).contains("<svg") {
        let shown: String =
            cells.get(4).map(|c| c["outputs"].to_string()).unwrap_or_default().chars().take(300).collect();
        problems.push(format!("a figure whose cell moved a variable was not drawn; the cell showed {shown}"));
    }
    // A verdict's words are in its HTML (its plain text is the points nbgrader reads).
    let candle: String = cells
        .get(5)
        .and_then(|c| c["outputs"].as_array())
        .into_iter()
        .flatten()
        .map(|o| verdict_line(o).unwrap_or_else(|| output_text(o)))
        .collect();
    if !candle.contains("tensor error: shape mismatch") || candle.contains("backtrace") || candle.lines().count() > 2 {
        problems.push(format!("a candle error inside a check should be one plain verdict line, it was: {candle:?}"));
    }
    let note = "variables it was creating do not exist";
    if everything.matches(note).count() != 1 {
        problems.push(format!(
            "the note on lost variables should appear exactly once, it appeared {} time(s)",
            everything.matches(note).count()
        ));
    }
    let photo_error: String =
        cells.get(6).and_then(|c| c["outputs"].as_array()).into_iter().flatten().map(output_text).collect();
    if !photo_error.contains("rocket.jpg") {
        problems.push(format!("an unknown photo should list the photos, it said: {photo_error:?}"));
    }
    let stdout: String = cells
        .get(7)
        .and_then(|c| c["outputs"].as_array())
        .into_iter()
        .flatten()
        .filter(|o| o["name"] == "stdout")
        .map(output_text)
        .collect();
    let lines = stdout.lines().filter(|l| l.contains("% after")).count();
    if lines == 0 || lines > 10 || !stdout.contains("done in") {
        problems.push(format!(
            "a sweep of several seconds should show a few progress lines and a closing one, it showed: {stdout:?}"
        ));
    }
    if nb["cells"][0]["outputs"].as_array().is_some_and(|o| o.iter().any(|o| o["output_type"] == "error"))
        || !matches!(nb["cells"][1]["execution_count"], Value::Number(_))
    {
        problems.push("the kernel did not load lab-support".into());
    }
    Ok(problems)
}

/// The kernel's rust-analyzer is given the narrowed crate graph (`cmd::analyzer`): `cargo metadata`
/// through the link `.lab/cargo/bin/cargo`, on the seed's manifest, keeps what notebooks' types
/// come from and drops what they cannot; a kernel's analyzer runs the link (it logs each graph it
/// narrows); and the kernel still infers the types of variables made from candle's API (a `let`
/// whose type it cannot infer is an error in evcxr).
pub fn analyzer(paths: &Paths) -> CliResult<Vec<String>> {
    use crate::cmd::analyzer::{cargo_link, kernel_env, CARGO_LOG_ENV};
    let link = cargo_link(paths);
    let manifest = crate::cmd::launcher::seed_dir(paths).join("Cargo.toml");
    let output = std::process::Command::new(&link)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(&manifest)
        .env("CARGO_HOME", paths.kernel_cargo_home())
        .envs(kernel_env(paths))
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", link.display()))?;
    let metadata: Value = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("{} metadata gave no JSON ({e}), exit {}", link.display(), output.status))?;
    let names: Vec<&str> =
        metadata["packages"].as_array().into_iter().flatten().filter_map(|p| p["name"].as_str()).collect();
    let mut problems = Vec::new();
    for kept in ["lab-support", "candle-core", "candle-nn", "half", "plotters"] {
        if !names.contains(&kept) {
            problems.push(format!("the analyzer's graph lost {kept}, whose types notebooks hold"));
        }
    }
    // Skipped crates (gemm, serde, rand, zerocopy, tokenizers), crates only skipped ones pull in
    // (rand_chacha, pulp), a proc-macro crate.
    for dropped in ["gemm", "serde", "rand", "zerocopy", "tokenizers", "rand_chacha", "pulp", "thiserror-impl"] {
        if names.contains(&dropped) {
            problems.push(format!("the analyzer's graph still holds {dropped} ({} crates)", names.len()));
        }
    }
    let log = paths.root.join("target/kernel-test/cargo-link.log");
    std::fs::create_dir_all(log.parent().unwrap_or(&paths.root)).at(&log)?;
    let _ = std::fs::remove_file(&log);
    let cells = [
        CELLS[0],
        "let device = Device::Cpu;\nlet t = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &device)?;\nlet rows = t.to_vec2::<f32>()?;\nlet maybe = t.sum_all();\nlet dtype = t.dtype();",
        r#"format!("{} {} {:?} {}", rows.len(), maybe?.to_scalar::<f32>()?, dtype, t.dims().len())"#,
    ];
    let log_text = log.display().to_string();
    let (nb, ok) =
        crate::jupyter::nbclient::execute_cells_with(paths, "kernel-analyzer", &cells, &[(CARGO_LOG_ENV, &log_text)])?;
    let shown: String = nb["cells"][2]["outputs"].as_array().into_iter().flatten().map(output_text).collect();
    let found = check_outputs(&nb, false);
    if !ok || !found.is_empty() || shown.trim().trim_matches('"') != "2 10 F32 2" {
        problems.push(format!("a kernel's variables from candle's API: {shown:?}; {}", found.join("; ")));
    }
    let narrowed = std::fs::read_to_string(&log).unwrap_or_default();
    if !narrowed.lines().any(|l| l.starts_with("metadata: ")) {
        problems.push(format!("the kernel's analyzer did not run {} (its log is empty)", link.display()));
    }
    Ok(problems)
}

/// Two kernels started at the same moment, `rounds` times: each must load lab-support and answer
/// a cell that uses it. (With evcxr's shared `:cache`, one kernel in two failed here.)
pub fn concurrent(paths: &Paths) -> CliResult<Vec<String>> {
    const ROUNDS: usize = 3;
    let cells =
        [CELLS[0], "let model = Classifier::pretrained()?;\nmodel.predict(&mnist::test()?.get(0)?.0)?[0].class"];
    let mut problems = Vec::new();
    for round in 1..=ROUNDS {
        let both: Vec<CliResult<(Value, bool)>> = std::thread::scope(|s| {
            let handles: Vec<_> = ["kernel-pair-a", "kernel-pair-b"]
                .iter()
                .map(|name| s.spawn(move || execute_cells(paths, name, &cells)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("a test thread panicked".into()))).collect()
        });
        for (k, outcome) in both.into_iter().enumerate() {
            let (nb, ok) = outcome?;
            let shown: String = nb["cells"][1]["outputs"].as_array().into_iter().flatten().map(output_text).collect();
            let found: Vec<String> = check_outputs(&nb, false).iter().map(|p| p.chars().take(200).collect()).collect();
            if !ok || !found.is_empty() || shown.trim() != "7" {
                problems.push(format!(
                    "round {round}, kernel {}: expected the first test digit's class, 7; it showed {shown:?}; {}",
                    k + 1,
                    found.join("; ")
                ));
            }
        }
    }
    Ok(problems)
}

/// A path crate changed between two kernels is rebuilt by the second, never served stale from
/// its slot. The crate is a small one of the test's own, loaded beside lab-support in the same
/// slot, so the check costs seconds: cargo's fingerprints in the slot decide for every path
/// crate alike, lab-support included (`cargo lab up` rebuilds the seed the same way). Like
/// lab-support, it is also a dylib, so the second kernel must load the new shared library.
pub fn pickup(paths: &Paths) -> CliResult<Vec<String>> {
    let dir = paths.root.join("target/kernel-test/pickup");
    std::fs::create_dir_all(dir.join("src")).at(&dir)?;
    std::fs::write(dir.join("Cargo.toml"), "[package]\nname = \"pickup\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[lib]\ncrate-type = [\"rlib\", \"dylib\"]\n\n[workspace]\n")
        .at(&dir)?;
    let dep = format!(":dep pickup = {{ path = {:?} }}", dir.display().to_string());
    let mut problems = Vec::new();
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    for version in [format!("first {stamp}"), format!("second {stamp}")] {
        std::fs::write(dir.join("src/lib.rs"), format!("pub fn version() -> &'static str {{ {version:?} }}\n"))
            .at(&dir)?;
        let cells = [CELLS[0], &dep, "pickup::version()"];
        let (nb, ok) = execute_cells(paths, "kernel-pickup", &cells)?;
        let shown: String = nb["cells"][2]["outputs"].as_array().into_iter().flatten().map(output_text).collect();
        if !ok || shown.trim() != format!("{version:?}") {
            problems.push(format!("a kernel started after the crate changed to {version:?} showed {shown:?}"));
        }
    }
    Ok(problems)
}

/// A control channel closed right after a request, as jupyter_server's nudge closes its own when
/// a notebook connects, leaves a fresh kernel alive under the lab's kernel manager
/// (`lab/kernel-pool/check_control.py` says how; evcxr_jupyter alone exits then).
pub fn control(paths: &Paths) -> CliResult<Vec<String>> {
    const LIMIT: std::time::Duration = std::time::Duration::from_secs(600);
    let script = paths.root.join("lab/kernel-pool/check_control.py");
    let log = paths.root.join("target/kernel-control-test.log");
    let out = std::fs::File::create(&log).at(&log)?;
    let mut cmd = std::process::Command::new(paths.venv_bin("python"));
    cmd.arg(&script).arg(paths.root.join("notebooks")).current_dir(&paths.root);
    paths.jupyter_env(&mut cmd);
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut child =
        cmd.stdout(out).stderr(err).spawn().map_err(|e| format!("could not run {}: {e}", script.display()))?;
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(status);
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let mut problems: Vec<String> = text.lines().filter(|l| l.starts_with("round ")).map(String::from).collect();
    match status {
        None => problems.push(format!(
            "{} had not finished after {} s (log: {})",
            script.display(),
            LIMIT.as_secs(),
            log.display()
        )),
        Some(s) if !s.success() && problems.is_empty() => {
            problems.push(format!("{} failed ({s}); its last lines:\n{}", script.display(), tail(&log, 15)))
        }
        _ => {}
    }
    Ok(problems)
}
