//! The hub test of `cargo lab test`: a real JupyterHub (`cmd::hub`) for a room of students who
//! log in, start their servers and run a notebook at once, with memory, time and CPU measured.

use super::grading::filled_in;
use super::{CELL_LIMIT, LAB_KERNEL_MANAGER_LINE};
use crate::cmd::hub::{Hub, HubSetup, CULL_AFTER_S};
use crate::ipynb::{self, source_text};
use crate::jupyter::{check_outputs, RemoteKernel};
use crate::paths::Paths;
use crate::sys::http::request;
use crate::sys::procfs::{comm, cpu_jiffies, processes_with, pss_kb};
use crate::sys::text::tail;
use crate::sys::{At, CliResult};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Users in the hub test (`labtest1`, ...: not names a real class would use, since as root each is
/// a Unix user, `jupyter-labtest1`, whose notebook 03 the test overwrites).
pub const TEST_USERS: usize = 4;
/// The notebook every test user runs.
const TEST_NOTEBOOK: &str = "03-adversarial";

/// The hub test: a hub for four students; each logs in through the hub's API with the room's
/// password, starts their server and runs notebook 03 (the student version, filled in from the
/// solution) there, all at once. Every check must pass. Memory per kernel, time per notebook and
/// CPU go to the log (`target/hub-test.log`) and the summary.
pub fn test(paths: &Paths) -> CliResult<Vec<String>> {
    let log = paths.root.join("target/hub-test.log");
    // CI shows only what the test prints: the hub's log goes with any error.
    run_test(paths, &log).map_err(|e| format!("{e}\nthe hub's last lines ({}):\n{}", log.display(), tail(&log, 40)))
}

fn run_test(paths: &Paths, log: &Path) -> CliResult<Vec<String>> {
    let dir = paths.root.join("target/hub-test");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).at(&dir)?;
    let users: Vec<String> = (1..=TEST_USERS).map(|i| format!("labtest{i}")).collect();
    // Three free ports in a row.
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    let port = (0..50)
        .filter_map(|_| {
            std::net::TcpListener::bind(("127.0.0.1", 0)).and_then(|l| l.local_addr()).ok().map(|a| a.port())
        })
        .find(|&p| p < 65000 && free(p + 1) && free(p + 2))
        .ok_or("no three free ports in a row on 127.0.0.1")?;
    let setup =
        HubSetup { dir: dir.clone(), users: users.clone(), ip: "127.0.0.1".into(), port, cull_after: CULL_AFTER_S };
    let hub = Hub::start(paths, &setup, log)?;
    let mut problems = Vec::new();
    let solution = ipynb::read(&paths.root.join(format!("notebooks/solutions/{TEST_NOTEBOOK}.ipynb")))?;
    let student = ipynb::read(&paths.root.join(format!("notebooks/{TEST_NOTEBOOK}.ipynb")))?;
    let filled = filled_in(&student, &solution)?;
    // Log in (the hub's token API with name and password, as a script of a student would; the
    // first login sets the password) and start.
    let login = |user: &str, password: &str| {
        let body = json!({"auth": {"username": user, "password": password}, "note": "cargo lab test (hub)", "expires_in": 3600});
        request(hub.port, "POST", &format!("/hub/api/users/{user}/tokens"), None, Some(&body))
    };
    let password_of = |u: &str| format!("{u}-{}", &hub.id[..8]);
    let mut tokens = HashMap::new();
    for u in &users {
        let (status, answer) = login(u, &password_of(u))?;
        let token =
            answer["token"].as_str().ok_or_else(|| format!("{u} could not log in ({status}): {answer}"))?.to_string();
        let (status, answer) = request(hub.port, "POST", &format!("/hub/api/users/{u}/server"), Some(&token), None)?;
        if status / 100 != 2 {
            return Err(format!("{u}'s server did not start ({status}): {answer}"));
        }
        let notebook = hub.homes[u].join(format!("notebooks/{TEST_NOTEBOOK}.ipynb"));
        ipynb::write(&notebook, &filled)?;
        if hub.isolated {
            crate::cmd::isolation::give(&notebook, &crate::cmd::isolation::unix_name(u))?;
        }
        tokens.insert(u.clone(), token);
    }
    // Now that each has a password: nobody gets in with a wrong one, another student's, or the
    // admin's, nor as a name not on the list.
    let (a, b) = (&users[0], &users[1]);
    for (user, password, what) in [
        (a.as_str(), "not-the-password".to_string(), format!("{a} logged in with a wrong password")),
        (a.as_str(), password_of(b), format!("{b}'s password logged in as {a}")),
        (b.as_str(), password_of(a), format!("{a}'s password logged in as {b}")),
        (b.as_str(), hub.password.clone(), format!("the admin's password logged in as {b}")),
        ("mallory", password_of("mallory"), "a user not on the list logged in".to_string()),
    ] {
        let (status, _) = login(user, &password)?;
        if status / 100 == 2 {
            problems.push(format!("{what} ({status})"));
        }
    }
    for u in &users {
        hub.wait_ready(u, Duration::from_secs(120))?;
    }
    // Sample memory while the notebooks run: per user, the kernel's processes (evcxr and what it
    // runs: cargo, rustc, the process that runs the cells) and the user's server apart.
    let done = Arc::new(AtomicBool::new(false));
    let peaks: Arc<Mutex<HashMap<String, (u64, u64)>>> = Arc::default();
    // And the whole room's: the most all students' processes held at one moment.
    let room_peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (done, peaks, id, room_peak) = (done.clone(), peaks.clone(), hub.id.clone(), room_peak.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                let mut now: HashMap<String, (u64, u64)> = HashMap::new();
                for (pid, env) in processes_with(&format!("LAB_HUB_ID={id}")) {
                    let Some(user) = env.iter().find_map(|v| v.strip_prefix("JUPYTERHUB_USER=")) else { continue };
                    let comm = comm(pid);
                    let entry = now.entry(user.to_string()).or_default();
                    if comm.starts_with("python") || comm.starts_with("jupyterhub-sing") {
                        entry.1 += pss_kb(pid);
                    } else {
                        entry.0 += pss_kb(pid);
                    }
                }
                room_peak.fetch_max(now.values().map(|(k, s)| k + s).sum(), Ordering::SeqCst);
                let mut p = peaks.lock().unwrap_or_else(|e| e.into_inner());
                for (u, (k, s)) in now {
                    let e = p.entry(u).or_default();
                    *e = (e.0.max(k), e.1.max(s));
                }
                drop(p);
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    let cpu_before = cpu_jiffies();
    let wall = Instant::now();
    let runs: Vec<_> = users
        .iter()
        .map(|u| {
            let (u, token, port, filled) = (u.clone(), tokens[u].clone(), hub.port, filled.clone());
            std::thread::spawn(move || {
                (u.clone(), run_through_hub(port, &u, &token, &format!("notebooks/{TEST_NOTEBOOK}.ipynb"), &filled))
            })
        })
        .collect();
    let mut seconds = Vec::new();
    for r in runs {
        let (u, outcome) = r.join().map_err(|_| "a notebook thread panicked".to_string())?;
        match outcome {
            Ok((executed, s)) => {
                let out = dir.join(format!("{u}-{TEST_NOTEBOOK}.ipynb"));
                ipynb::write(&out, &executed)?;
                let passes = executed["cells"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|c| c["metadata"]["nbgrader"]["grade"] == true)
                    .count();
                let shown: usize = executed["cells"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|c| {
                        c["metadata"]["nbgrader"]["grade"] == true && c["outputs"].to_string().contains("PASS ·")
                    })
                    .count();
                if passes == 0 || shown != passes {
                    problems.push(format!("{u}: {shown} of {passes} checks passed"));
                }
                problems.extend(check_outputs(&executed, false).into_iter().map(|p| format!("{u}: {p}")));
                seconds.push((u, s));
            }
            Err(e) => problems.push(format!("{u}: {e}")),
        }
    }
    // First: CI may show only the start and the end of a long list.
    if let Some(why) = super::explain_dlopen(&problems) {
        problems.insert(0, why);
    }
    if hub.isolated {
        problems.extend(isolation_check(paths, &dir, &hub, &users, &tokens[&users[0]]).err());
    } else {
        eprintln!("  not root: the students' servers run as this user, isolation not tested");
    }
    let hub_log = std::fs::read_to_string(log).unwrap_or_default();
    let managed = hub_log.matches(LAB_KERNEL_MANAGER_LINE).count();
    if managed < users.len() {
        problems.push(format!("{managed} of {} servers said \"{LAB_KERNEL_MANAGER_LINE}\": their kernels may die when a notebook connects (lab/kernel-pool/)", users.len()));
    }
    if !problems.is_empty() {
        problems.push(format!("the hub's last lines ({}):\n{}", log.display(), tail(log, 40)));
    }
    let wall = wall.elapsed().as_secs_f64();
    let cpu_after = cpu_jiffies();
    done.store(true, Ordering::SeqCst);
    let _ = sampler.join();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let busy = (cpu_after.0 - cpu_before.0) as f64 / ticks;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let peaks = peaks.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut report = format!("hub test: {} students ran {TEST_NOTEBOOK} at once on {cores} cores, {wall:.0} s wall, {busy:.0} core-seconds busy ({:.0} per student)\n", users.len(), busy / users.len() as f64);
    for (u, s) in &seconds {
        let (k, srv) = peaks.get(u).copied().unwrap_or_default();
        report.push_str(&format!(
            "  {u}: notebook {s:.0} s; peak memory: kernel {} MB, server {} MB\n",
            k / 1024,
            srv / 1024
        ));
    }
    report.push_str(&format!(
        "  kernel starts that got a warm spare: {} of {}\n",
        hub_log.matches("lab spare kernel: handed over a warm kernel").count(),
        users.len()
    ));
    let room_mb = room_peak.load(Ordering::SeqCst) / 1024;
    report.push_str(&format!(
        "  the room at its peak (every student's kernels and server at one moment): {room_mb} MB, {} MB per student\n",
        room_mb / users.len().max(1) as u64
    ));
    eprint!("{report}");
    let mut hub = hub;
    let stopping = Instant::now();
    let left = hub.stop();
    eprintln!("  the hub and every server stopped in {:.0} s", stopping.elapsed().as_secs_f64());
    if !left.is_empty() {
        problems.push(format!("still running after the hub stopped, killed: {}", left.join(", ")));
    }
    // After the hub has exited: it writes the same file.
    let mut log_file = std::fs::OpenOptions::new().append(true).open(log).map_err(|e| e.to_string())?;
    let _ = writeln!(log_file, "\n==== cargo lab test (hub) ====\n{report}");
    let _ = writeln!(
        log_file,
        "{}",
        json!({"users": users.len(), "cores": cores, "wall_s": wall, "busy_core_s": busy, "notebook_s": seconds.iter().map(|(_, s)| *s).collect::<Vec<_>>(), "kernel_peak_mb": peaks.values().map(|p| p.0 / 1024).collect::<Vec<_>>(), "server_peak_mb": peaks.values().map(|p| p.1 / 1024).collect::<Vec<_>>(), "room_peak_mb": room_mb})
    );
    Ok(problems)
}

/// In the first student's kernel, a Rust cell reads their own notebook, the second student's, a
/// solution notebook and the hub's admin password: only the first may succeed, the others must
/// fail with "Permission denied". And every file under `data/` must be readable (a notebook loads them).
fn isolation_check(paths: &Paths, dir: &Path, hub: &Hub, users: &[String], token: &str) -> CliResult<()> {
    let notebook = format!("notebooks/{TEST_NOTEBOOK}.ipynb");
    let own = hub.homes[&users[0]].join(&notebook);
    let closed = [
        hub.homes[&users[1]].join(&notebook),
        paths.root.join("notebooks/solutions").join(format!("{TEST_NOTEBOOK}.ipynb")),
        // Always there, unlike the gradebook of a clone that has not graded yet.
        dir.join("password"),
    ];
    let mut cell = std::iter::once(&own)
        .chain(&closed)
        .map(|p| format!("println!(\"{{}}\", match std::fs::read({p:?}) {{ Ok(b) => format!(\"read {{}} bytes\", b.len()), Err(e) => e.to_string() }});\n", p = p.display().to_string()))
        .collect::<String>();
    // And every file a notebook may load (weights written by `cargo lab train` are 0600).
    cell.push_str(&format!(
        "fn unreadable(d: &std::path::Path) -> usize {{ std::fs::read_dir(d).map(|es| es.flatten().map(|e| {{ let p = e.path(); if p.is_dir() {{ unreadable(&p) }} else {{ std::fs::File::open(&p).is_err() as usize }} }}).sum()).unwrap_or(1_000_000) }}\nprintln!(\"unreadable in data: {{}}\", unreadable(std::path::Path::new({:?})));\n",
        paths.root.join("data").display().to_string()
    ));
    let mut kernel = RemoteKernel::open(hub.port, &format!("/user/{}", users[0]), token, &notebook)?;
    let (outputs, _) = kernel.execute(&cell, CELL_LIMIT)?;
    kernel.close();
    let text = outputs
        .iter()
        .filter_map(|o| {
            o["text"]
                .as_str()
                .map(String::from)
                .or_else(|| o["text"].as_array().map(|a| a.iter().filter_map(|l| l.as_str()).collect()))
        })
        .collect::<String>();
    let lines: Vec<&str> = text.lines().collect();
    let ok = lines.len() == 5
        && lines[0].starts_with("read ")
        && lines[1..4].iter().all(|l| l.contains("Permission denied"))
        && lines[4] == "unreadable in data: 0";
    eprintln!(
        "  isolation: {}'s kernel read its own notebook and data/, and was refused the rest: {}",
        users[0],
        if ok { "yes" } else { "NO" }
    );
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{}'s kernel, reading {}, {} and {}: expected its own notebook readable, \"Permission denied\" for \
             the other student's notebook, the solution and the admin's password, and every file of data/ \
             readable; it printed:\n{text}",
            users[0],
            own.display(),
            closed[0].display(),
            closed[1..].iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ))
    }
}

/// One user's run of a notebook through the hub: the executed notebook and its wall time.
fn run_through_hub(port: u16, user: &str, token: &str, notebook_rel: &str, nb: &Value) -> CliResult<(Value, f64)> {
    let start = Instant::now();
    let mut kernel = RemoteKernel::open(port, &format!("/user/{user}"), token, notebook_rel)?;
    let mut executed = nb.clone();
    for cell in executed["cells"].as_array_mut().into_iter().flatten().filter(|c| c["cell_type"] == "code") {
        let (outputs, count) = kernel.execute(&source_text(cell), CELL_LIMIT)?;
        cell["outputs"] = Value::Array(outputs);
        cell["execution_count"] = count;
    }
    kernel.close();
    Ok((executed, start.elapsed().as_secs_f64()))
}
