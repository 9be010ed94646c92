//! `cargo lab bench --kernel`: what a student waits for in the notebook kernel, and what it holds
//! in memory, measured.
//!
//! A small notebook runs in a fresh kernel, twice, one kernel after the other: the `:dep` cell
//! that loads lab-support, the cell that loads the model and the test set, then small cells (a
//! `let`, one prediction, a formatted string, a bar chart), then six cells that need only the
//! standard library (`PLAIN`), then a cell that reads the kernel's memory (`MEMORY`). After each of
//! these runs a kernel with no `:dep` runs the same six cells, its peer on the same machine at
//! nearly the same moment. Meanwhile the kernel's processes (evcxr_jupyter, cargo, rustc, the process
//! that runs the cells) are sampled for their peak. Then restarts in `cargo lab up`'s JupyterLab
//! (`restarts`). Then, three times, two kernels start at the same moment on the first cells, as
//! two notebooks opened together would. Each figure is printed as one JSON line; times are the
//! kernel's own, from the executed notebook's timing metadata (from the cell's start to its end,
//! as Jupyter saw them); memory is PSS (shared pages divided among the processes sharing them).

pub mod restarts;

use crate::cmd::setup::ensure;
use crate::jupyter::nbclient::execute_cells_with;
use crate::jupyter::{check_outputs, execute_cells};
use crate::paths::Paths;
use crate::selftest::spare::{DEP, LOAD};
use crate::sys::hex::random_token;
use crate::sys::procfs::{comm, processes_with, pss_kb};
use crate::sys::CliResult;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Pairs of kernels started together.
const PAIRS: usize = 3;
const SMALL: [&str; 4] = [
    "let a = 1 + 2;\na",
    "let (x, label) = test.get(0)?;\nmodel.predict(&x)?[0].class",
    "format!(\"{} test digits, the first is a {label}\", test.len())",
    "BarChart::probabilities(&model, &x, \"digit #0\")?",
];

/// Cells that need only the standard library. Each fresh kernel runs them after the small cells,
/// and a kernel with no `:dep` runs them alone, one after the other: the ratio of their medians is
/// what the lab's kernel adds to the same cell (lab-support's dependency graph, whose 169 packages
/// cargo checks and whose metadata rustc reads for every cell, and what its earlier cells left),
/// whatever this shared machine's speed is at the time. Measured on 6
/// December 2026, the same small cells took 0.31-0.39 s, then 0.45-0.67 s an hour later, a model's
/// forward pass inside them 1.5-1.8 times slower too.
const PLAIN: [&str; 6] = [
    "let p1 = 1 + 2;\np1",
    "let p2 = p1 * 2;\np2",
    "let p3 = vec![p1, p2];\np3.len()",
    "let p4 = format!(\"{p1} {p2}\");\np4",
    "let p5 = p3.iter().sum::<i32>();\np5",
    "let p6 = p4.len() + p5 as usize;\np6",
];

/// A cell that reports the kernel's memory as it idles (it only reads `/proc`): the PSS of
/// evcxr_jupyter (this cell's parent, with its rust-analyzer) and of the process that runs the
/// cells (it holds the datasets), in kB.
pub const MEMORY: &str = "{\n    let pss = |pid: u32| std::fs::read_to_string(format!(\"/proc/{pid}/smaps_rollup\")).ok().and_then(|s| s.lines().find(|l| l.starts_with(\"Pss:\")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())).unwrap_or(0);\n    format!(\"kernel memory kB: {} {}\", pss(std::os::unix::process::parent_id()), pss(std::process::id()))\n}";
/// Memory goals (GB, PSS) of issue 27: a kernel idle after its first cells, and at its peak with
/// cargo and rustc while a cell compiles.
const IDLE_GOAL_GB: f64 = 0.6;
const PEAK_GOAL_GB: f64 = 1.0;
/// Issue 27's goals for the small cells: their median, and the slowest one (seconds).
const SMALL_MEDIAN_GOAL_S: f64 = 0.4;
const SMALL_MAX_GOAL_S: f64 = 1.0;

/// The two numbers `MEMORY` printed (evcxr_jupyter's and the cell runner's PSS, kB), from its text.
pub fn memory_of(text: &str) -> Option<(u64, u64)> {
    let rest = text.split("kernel memory kB: ").nth(1)?;
    let mut numbers = rest.split(|c: char| !c.is_ascii_digit()).filter(|n| !n.is_empty());
    Some((numbers.next()?.parse().ok()?, numbers.next()?.parse().ok()?))
}

/// Prints the idle memory figures of one kernel from `MEMORY`'s text.
pub fn print_memory(text: &str, labels: Value) -> CliResult<()> {
    let (evcxr, runner) = memory_of(text).ok_or_else(|| format!("the memory cell printed no figures: {text}"))?;
    let gb = |kb: u64| round(kb as f64 / 1e6);
    let line = json!({"figure": "kernel_idle_gb", "gb": gb(evcxr + runner), "evcxr_gb": gb(evcxr), "cell_runner_gb": gb(runner), "goal": IDLE_GOAL_GB});
    println!("{}", labelled(line, &labels));
    Ok(())
}

/// A figure's JSON line with the run's labels (`{"run": ...}`) added.
pub fn labelled(mut line: Value, labels: &Value) -> Value {
    if let (Some(line), Some(labels)) = (line.as_object_mut(), labels.as_object()) {
        line.extend(labels.clone());
    }
    line
}

/// Runs `PLAIN` in a kernel with no `:dep` and prints both kernels' median for those cells, and
/// their ratio (`lab_plain`: the lab kernel's times for them, from the run just made). As in the
/// lab's kernel, the plain cells are not the kernel's first (a `let` runs before them) and its
/// processes are sampled for memory meanwhile, which costs the machine the same.
fn compare_plain(paths: &Paths, run: usize, lab_plain: &[f64], marker: &str, token: &str) -> CliResult<()> {
    eprintln!("==> the same plain cells in a kernel with no `:dep`, run {run} of 2");
    let mut cells = vec!["let p0 = 0;\np0"];
    cells.extend(PLAIN);
    let (outcome, _) =
        peak_while(marker, || execute_cells_with(paths, "kernel-bench-plain", &cells, &[("LAB_BENCH_KERNEL", token)]));
    let (executed, ok) = outcome?;
    let problems = check_outputs(&executed, false);
    if !ok || !problems.is_empty() {
        return Err(format!("the plain benchmark notebook failed in run {run}:\n{}", problems.join("\n")));
    }
    let bare_times = cell_seconds(&executed)?;
    let bare_plain = bare_times.get(1..).unwrap_or_default();
    let (lab, bare) = (median(&sorted(lab_plain.iter().copied())), median(&sorted(bare_plain.iter().copied())));
    println!(
        "{}",
        json!({"figure": "plain_cell_median_s", "run": run, "lab_kernel_s": round(lab), "no_dep_kernel_s": round(bare), "ratio": round(lab / bare), "note": "the same std-only cells, in the lab's kernel after its small cells and in a kernel with no :dep after one cell, one kernel after the other"})
    );
    Ok(())
}

/// The peak PSS (kB) of the processes whose environment holds `marker`, but Jupyter's own
/// (`jupyter execute`, Python), sampled every 100 ms while `work` runs.
fn peak_while<T>(marker: &str, work: impl FnOnce() -> T) -> (T, u64) {
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (done, marker) = (done.clone(), marker.to_string());
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(Ordering::SeqCst) {
                let now: u64 = processes_with(&marker)
                    .into_iter()
                    .filter(|(pid, _)| {
                        let name = comm(*pid);
                        !name.starts_with("python") && !name.starts_with("jupyter")
                    })
                    .map(|(pid, _)| pss_kb(pid))
                    .sum();
                peak = peak.max(now);
                std::thread::sleep(Duration::from_millis(100));
            }
            peak
        })
    };
    let out = work();
    done.store(true, Ordering::SeqCst);
    (out, sampler.join().unwrap_or(0))
}

/// Runs the kernel benchmark and prints its JSON lines.
pub fn bench() -> CliResult<()> {
    let paths = Paths::new();
    ensure(&paths, true)?;
    let mut cells = vec![DEP, LOAD];
    cells.extend(SMALL);
    let token = random_token()?;
    let marker = format!("LAB_BENCH_KERNEL={token}");
    for run in 1..=2 {
        eprintln!("==> a fresh kernel, run {run} of 2");
        let mut with_memory = cells.clone();
        with_memory.extend(PLAIN);
        with_memory.push(MEMORY);
        let (outcome, peak_kb) = peak_while(&marker, || {
            execute_cells_with(&paths, "kernel-bench", &with_memory, &[("LAB_BENCH_KERNEL", &token)])
        });
        let (executed, ok) = outcome?;
        let problems = check_outputs(&executed, false);
        if !ok || !problems.is_empty() {
            return Err(format!("the benchmark notebook failed in run {run}:\n{}", problems.join("\n")));
        }
        let memory_text =
            executed["cells"].as_array().and_then(|c| c.last()).map(|c| c["outputs"].to_string()).unwrap_or_default();
        print_memory(&memory_text, json!({"run": run}))?;
        println!(
            "{}",
            json!({"figure": "kernel_peak_gb", "run": run, "gb": round(peak_kb as f64 / 1e6), "goal": PEAK_GOAL_GB, "note": "evcxr_jupyter, cargo, rustc and the cell runner, sampled every 0.1 s"})
        );
        let all_times = cell_seconds(&executed)?;
        let plain = all_times.get(cells.len()..cells.len() + PLAIN.len()).ok_or("the benchmark notebook lost cells")?;
        compare_plain(&paths, run, plain, &marker, &token)?;
        // Neither the plain cells nor the memory cell: they are no student's cells.
        let times = &all_times[..cells.len()];
        let small = sorted(times[2..].iter().copied());
        println!("{}", json!({"figure": "dep_cell_s", "run": run, "seconds": round(times[0]), "goal": 3.0}));
        println!("{}", json!({"figure": "load_cell_s", "run": run, "seconds": round(times[1]), "goal": 1.5}));
        println!(
            "{}",
            json!({"figure": "small_cell_median_s", "run": run, "seconds": round(median(&small)), "goal": SMALL_MEDIAN_GOAL_S})
        );
        println!(
            "{}",
            json!({"figure": "small_cell_max_s", "run": run, "seconds": round(small[small.len() - 1]), "goal": SMALL_MAX_GOAL_S})
        );
    }
    restarts::bench(&cells)?;
    for pair in 1..=PAIRS {
        eprintln!("==> two kernels started at the same moment, {pair} of {PAIRS}");
        let both: Vec<CliResult<(Value, bool)>> = std::thread::scope(|s| {
            let handles: Vec<_> = ["kernel-bench-a", "kernel-bench-b"]
                .iter()
                .map(|name| {
                    let (paths, cells) = (&paths, &cells);
                    s.spawn(move || execute_cells(paths, name, &cells[..3]))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err("a benchmark thread panicked".into())))
                .collect()
        });
        for (k, outcome) in both.into_iter().enumerate() {
            let (executed, ok) = outcome?;
            // The first line of each problem: a failed build's message is pages of cargo's JSON.
            let problems: Vec<String> =
                check_outputs(&executed, false).iter().map(|p| p.chars().take(160).collect()).collect();
            let dep = cell_seconds(&executed).ok().and_then(|t| t.first().copied()).map(round);
            println!(
                "{}",
                json!({"figure": "concurrent_start", "pair": pair, "kernel": k + 1, "ok": ok && problems.is_empty(), "dep_cell_s": dep, "problems": problems})
            );
        }
    }
    Ok(())
}

pub fn round(s: f64) -> f64 {
    (s * 100.0).round() / 100.0
}

/// `times`, sorted (for `median` and the slowest, its last).
pub fn sorted(times: impl IntoIterator<Item = f64>) -> Vec<f64> {
    let mut v: Vec<f64> = times.into_iter().collect();
    v.sort_by(f64::total_cmp);
    v
}

pub fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Each code cell's time from `iopub.status.busy` to `iopub.status.idle`, as nbclient records it.
fn cell_seconds(nb: &Value) -> CliResult<Vec<f64>> {
    let cells = nb["cells"].as_array().ok_or("the executed notebook has no cells")?;
    cells
        .iter()
        .filter(|c| c["cell_type"] == "code")
        .map(|c| {
            let e = &c["metadata"]["execution"];
            let at = |key: &str| {
                e[key]
                    .as_str()
                    .and_then(seconds_of_day)
                    .ok_or_else(|| format!("a cell has no `{key}` time: was it run?"))
            };
            let (busy, idle) = (at("iopub.status.busy")?, at("iopub.status.idle")?);
            Ok(if idle >= busy { idle - busy } else { idle + 86_400.0 - busy })
        })
        .collect()
}

/// Seconds since midnight of a timestamp such as `2026-11-25T14:44:12.345678Z`.
fn seconds_of_day(stamp: &str) -> Option<f64> {
    let time = stamp.split('T').nth(1)?.trim_end_matches('Z');
    let time = time.split('+').next()?;
    let mut parts = time.split(':');
    let (h, m, s): (f64, f64, f64) =
        (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
    Some(h * 3600.0 + m * 60.0 + s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_cell_is_read_from_its_text() {
        // As the executed notebook holds it: an execute_result whose text is a quoted string.
        let outputs =
            r#"[{"data":{"text/plain":"\"kernel memory kB: 951234 45678\""},"output_type":"execute_result"}]"#;
        assert_eq!(memory_of(outputs), Some((951_234, 45_678)));
        assert_eq!(memory_of("kernel memory kB: 12"), None);
        assert_eq!(memory_of("no figures"), None);
    }

    #[test]
    fn cell_times_come_from_the_timing_metadata() {
        assert_eq!(seconds_of_day("2026-11-25T01:02:03.5Z"), Some(3723.5));
        assert_eq!(seconds_of_day("2026-11-25T01:02:03.5+00:00"), Some(3723.5));
        assert_eq!(seconds_of_day("not a time"), None);
        let nb = json!({"cells": [
            {"cell_type": "markdown", "metadata": {}},
            {"cell_type": "code", "metadata": {"execution": {"iopub.status.busy": "2026-11-25T23:59:59.0Z", "iopub.status.idle": "2026-11-26T00:00:01.5Z"}}},
        ]});
        assert_eq!(cell_seconds(&nb).unwrap(), vec![2.5]);
        assert!(cell_seconds(&json!({"cells": [{"cell_type": "code", "metadata": {}}]})).is_err());
    }
}
