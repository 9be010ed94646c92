//! `cargo lab bench --kernel`: what a student waits for in the notebook kernel, measured.
//!
//! A small notebook runs in a fresh kernel, twice, one kernel after the other: the `:dep` cell
//! that loads lab-support, the cell that loads the model and the test set, then small cells (a
//! `let`, one prediction, a formatted string, a bar chart). Then, three times, two kernels start
//! at the same moment on the first cells, as two notebooks opened together would. Each figure is printed
//! as one JSON line; times are the kernel's own, from the executed notebook's timing metadata
//! (from the cell's start to its end, as Jupyter saw them).

pub mod restarts;

use crate::cmd::setup::ensure;
use crate::jupyter::{check_outputs, execute_cells};
use crate::paths::Paths;
use crate::selftest::spare::{DEP, LOAD};
use crate::sys::CliResult;
use serde_json::{json, Value};

/// Pairs of kernels started together.
const PAIRS: usize = 3;
const SMALL: [&str; 4] = [
    "let a = 1 + 2;\na",
    "let (x, label) = test.get(0)?;\nmodel.predict(&x)?[0].class",
    "format!(\"{} test digits, the first is a {label}\", test.len())",
    "BarChart::probabilities(&model, &x, \"digit #0\")?",
];

/// Runs the kernel benchmark and prints its JSON lines.
pub fn bench() -> CliResult<()> {
    let paths = Paths::new();
    ensure(&paths, true)?;
    let mut cells = vec![DEP, LOAD];
    cells.extend(SMALL);
    for run in 1..=2 {
        eprintln!("==> a fresh kernel, run {run} of 2");
        let (executed, ok) = execute_cells(&paths, "kernel-bench", &cells)?;
        let problems = check_outputs(&executed, false);
        if !ok || !problems.is_empty() {
            return Err(format!("the benchmark notebook failed in run {run}:\n{}", problems.join("\n")));
        }
        let times = cell_seconds(&executed)?;
        let mut small = times[2..].to_vec();
        small.sort_by(f64::total_cmp);
        println!("{}", json!({"figure": "dep_cell_s", "run": run, "seconds": round(times[0]), "goal": 3.0}));
        println!("{}", json!({"figure": "load_cell_s", "run": run, "seconds": round(times[1]), "goal": 1.5}));
        println!(
            "{}",
            json!({"figure": "small_cell_median_s", "run": run, "seconds": round(median(&small)), "goal": 0.5})
        );
        println!(
            "{}",
            json!({"figure": "small_cell_max_s", "run": run, "seconds": round(small[small.len() - 1]), "goal": 1.5})
        );
    }
    restarts::bench(&cells, 2)?;
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
