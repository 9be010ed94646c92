//! What `/proc` says about the machine's processes: their environments, memory, names and
//! command lines, and the machine's CPU time. Tests use these to find what a server left running.

/// Processes whose environment holds `needle` (`KEY=value`), with their environment.
pub fn processes_with(needle: &str) -> Vec<(i32, Vec<String>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(env) = std::fs::read(e.path().join("environ")) else { continue };
        let vars: Vec<String> = env.split(|b| *b == 0).map(|v| String::from_utf8_lossy(v).into_owned()).collect();
        if vars.iter().any(|v| v == needle) {
            out.push((pid, vars));
        }
    }
    out
}

/// A process's program name (`/proc/<pid>/comm`, with its newline; empty if it is gone).
pub fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default()
}

/// Kills (SIGKILL) every process whose environment holds `needle`; returns each one's pid and
/// program name, read just before.
pub fn kill_processes_with(needle: &str) -> Vec<(i32, String)> {
    let mut killed = Vec::new();
    for (pid, _) in processes_with(needle) {
        let name = comm(pid);
        // SAFETY: kill(2) with a pid read from /proc just now; at worst it is gone already.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        killed.push((pid, name.trim().to_string()));
    }
    killed
}

/// Memory (kB) of a process, from /proc: its proportional set size (shared pages divided among
/// the processes that share them, so that a sum over processes counts each page once).
pub fn pss_kb(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Pss:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// Busy and total jiffies of the whole machine, from /proc/stat.
pub fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// The processes whose command line contains `secret`, as "pid (program)".
pub fn command_lines_with(secret: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return vec![] };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().chars().all(|c| c.is_ascii_digit()))
        .filter_map(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            text.contains(secret)
                .then(|| format!("{} ({})", e.file_name().to_string_lossy(), text.split(' ').next().unwrap_or("")))
        })
        .collect()
}
