//! The restart part of `cargo lab bench --kernel`: `cargo lab up`'s JupyterLab with its warm spare
//! kernel (the spare test's harness), a first kernel, then restarts, timed cell by cell.

use super::{median, round};
use crate::selftest::spare::{run, Lab, Ran};
use crate::sys::CliResult;
use serde_json::json;

/// The restart part of `cargo lab bench --kernel`: a kernel, then `restarts` restarts with a warm
/// spare, the same cells each time. Prints one JSON line per figure.
pub fn bench(cells: &[&str], restarts: usize) -> CliResult<()> {
    let mut lab = Lab::start()?;
    let check = |outputs: &[Ran], run: usize| -> CliResult<()> {
        match outputs.iter().find(|c| c.failed) {
            Some(c) => Err(format!(
                "a benchmark cell failed (restart {run}): {}",
                c.text.chars().take(300).collect::<String>()
            )),
            None => Ok(()),
        }
    };
    eprintln!("==> `cargo lab up`'s JupyterLab: its first spare, then the first kernel");
    let warm = lab.wait_warm()?;
    println!("{}", json!({"figure": "spare_warm_up_s", "seconds": round(warm), "note": "from the server's start"}));
    println!("{}", json!({"figure": "spare_idle_memory_gb", "gb": round(lab.spare_memory_gb())}));
    let mut kernel = lab.open()?;
    let first = run(&mut kernel, cells)?;
    check(&first, 0)?;
    println!(
        "{}",
        json!({"figure": "dep_cell_first_kernel_s", "seconds": round(first[0].seconds), "goal": 3.0, "note": "the next spare starts 10 s after the kernel"})
    );
    println!(
        "{}",
        json!({"figure": "load_cell_first_kernel_s", "seconds": round(first[1].seconds), "goal": 1.5, "note": "the next spare starts 10 s after the kernel"})
    );
    let mut small: Vec<f64> = first[2..].iter().map(|t| t.seconds).collect();
    small.sort_by(f64::total_cmp);
    println!(
        "{}",
        json!({"figure": "small_cell_median_first_kernel_s", "seconds": round(median(&small)), "goal": 0.5})
    );
    println!(
        "{}",
        json!({"figure": "small_cell_max_first_kernel_s", "seconds": round(small[small.len() - 1]), "goal": 1.5})
    );
    lab.wait_warm()?;
    for r in 1..=restarts {
        eprintln!("==> restart {r} of {restarts}, with a warm spare");
        let (k, restart) = lab.restart(kernel)?;
        kernel = k;
        let times = run(&mut kernel, cells)?;
        check(&times, r)?;
        let mut small: Vec<f64> = times[2..].iter().map(|t| t.seconds).collect();
        small.sort_by(f64::total_cmp);
        println!("{}", json!({"figure": "restart_s", "restart": r, "seconds": round(restart)}));
        println!(
            "{}",
            json!({"figure": "dep_cell_after_restart_s", "restart": r, "seconds": round(times[0].seconds), "goal": 3.0})
        );
        println!(
            "{}",
            json!({"figure": "load_cell_after_restart_s", "restart": r, "seconds": round(times[1].seconds), "goal": 1.5})
        );
        println!(
            "{}",
            json!({"figure": "small_cell_median_after_restart_s", "restart": r, "seconds": round(median(&small)), "goal": 0.5})
        );
        println!(
            "{}",
            json!({"figure": "small_cell_max_after_restart_s", "restart": r, "seconds": round(small[small.len() - 1]), "goal": 1.5})
        );
        if r < restarts {
            lab.wait_warm()?;
        }
    }
    kernel.close();
    let left = lab.stop();
    if !left.is_empty() {
        return Err(format!("still running after JupyterLab stopped (killed now): {}", left.join(", ")));
    }
    Ok(())
}
