//! The restart part of `cargo lab bench --kernel`: `cargo lab up`'s JupyterLab with its warm spare
//! (the spare test's harness), as a student uses it: a notebook opened `OPEN_AFTER` after `cargo lab
//! up` printed its address, then restarts, each `RESTART_AFTER` after the previous kernel started,
//! without waiting for the spare. The later restarts run with one core kept busy by another
//! thread, as a machine shared with other work is. Every run's cells are timed, and the kernel's
//! idle memory read.

use super::{labelled, median, print_memory, round, sorted, MEMORY};
use crate::selftest::spare::{run, Lab, Ran};
use crate::sys::CliResult;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// When the first notebook opens, after `cargo lab up` printed its address.
const OPEN_AFTER: Duration = Duration::from_secs(25);
/// When each restart comes, after the previous kernel started.
const RESTART_AFTER: Duration = Duration::from_secs(20);
/// Restarts on an idle machine, then with one core busy.
const RESTARTS_IDLE: usize = 2;
const RESTARTS_BUSY: usize = 2;
/// The first two cells (`:dep`, loading the model) of a warm kernel, together.
const WARM_GOAL_S: f64 = 1.5;

/// A thread that keeps one core busy until dropped.
struct BusyCore(Arc<AtomicBool>, Option<std::thread::JoinHandle<()>>);

impl BusyCore {
    fn start() -> BusyCore {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut x: u64 = 1;
            while !flag.load(Ordering::Relaxed) {
                for _ in 0..100_000 {
                    x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
                }
            }
        });
        BusyCore(stop, Some(handle))
    }
}

impl Drop for BusyCore {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        if let Some(h) = self.1.take() {
            let _ = h.join();
        }
    }
}

/// Prints one run's figures: its first two cells together (the goal), then each, the small cells,
/// and the kernel's idle memory (the last cell is `MEMORY`).
fn report(ran: &[Ran], labels: serde_json::Value) -> CliResult<()> {
    if let Some(c) = ran.iter().find(|c| c.failed) {
        return Err(format!("a benchmark cell failed ({labels}): {}", c.text.chars().take(300).collect::<String>()));
    }
    let (cells, memory) = ran.split_at(ran.len() - 1);
    let small = sorted(cells[2..].iter().map(|t| t.seconds));
    let first_two = cells[0].seconds + cells[1].seconds;
    let line = json!({
        "figure": "first_two_cells_s", "seconds": round(first_two), "goal": WARM_GOAL_S,
        "dep_cell_s": round(cells[0].seconds), "load_cell_s": round(cells[1].seconds),
        "small_cell_median_s": round(median(&small)), "small_cell_max_s": round(small[small.len() - 1]),
    });
    println!("{}", labelled(line, &labels));
    print_memory(&memory[0].text, labels)
}

/// The restart part of `cargo lab bench --kernel`. Prints one JSON line per figure.
pub fn bench(cells: &[&str]) -> CliResult<()> {
    let mut cells = cells.to_vec();
    cells.push(MEMORY);
    let mut lab = Lab::start()?;
    let up = Instant::now();
    eprintln!("==> a notebook opened {} s after `cargo lab up`", OPEN_AFTER.as_secs());
    std::thread::sleep(OPEN_AFTER.saturating_sub(up.elapsed()));
    let asked = Instant::now();
    let mut kernel = lab.open()?;
    let open_s = asked.elapsed().as_secs_f64();
    let mut started = Instant::now();
    let first = run(&mut kernel, &cells)?;
    report(&first, json!({"run": "first kernel", "opened_after_up_s": OPEN_AFTER.as_secs(), "open_s": round(open_s)}))?;
    let mut times = Vec::new();
    for r in 1..=RESTARTS_IDLE + RESTARTS_BUSY {
        let busy = (r > RESTARTS_IDLE).then(BusyCore::start);
        let load = if busy.is_some() { "one core busy" } else { "idle" };
        eprintln!("==> restart {r}, {} s after the previous kernel started ({load})", RESTART_AFTER.as_secs());
        std::thread::sleep(RESTART_AFTER.saturating_sub(started.elapsed()));
        let (k, restart_s) = lab.restart(kernel)?;
        kernel = k;
        started = Instant::now();
        let ran = run(&mut kernel, &cells)?;
        times.push(ran[0].seconds + ran[1].seconds);
        report(&ran, json!({"run": format!("restart {r}"), "machine": load, "restart_s": round(restart_s)}))?;
        drop(busy);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{}",
        json!({"figure": "first_two_cells_after_restart_max_s", "seconds": round(times[times.len() - 1]), "median_s": round(median(&times)), "goal": WARM_GOAL_S, "restarts": times.len()})
    );
    kernel.close();
    let left = lab.stop();
    if !left.is_empty() {
        return Err(format!("still running after JupyterLab stopped (killed now): {}", left.join(", ")));
    }
    Ok(())
}
