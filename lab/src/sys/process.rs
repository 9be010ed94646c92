//! Running programs: to completion with the output on the terminal (`run`), for their output
//! (`output_of`), and in a process group of their own (`in_own_group`), so that a test can stop a
//! server and everything it started with one signal.

use super::CliResult;
use std::process::Command;

/// Runs `cmd` with its output on the terminal; fails unless it exits with success.
pub fn run(cmd: &mut Command, what: &str) -> CliResult<()> {
    let status = cmd.status().map_err(|e| format!("{what}: could not start {:?}: {e}", cmd.get_program()))?;
    if !status.success() {
        return Err(format!("{what} failed ({status}); see the output above"));
    }
    Ok(())
}

/// What `cmd` printed (stdout, then stderr), if it ran and succeeded.
pub fn output_of(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

/// Whether this tool runs as root (a container, a CI box).
pub fn is_root() -> bool {
    output_of(Command::new("id").arg("-u")).is_some_and(|uid| uid.trim() == "0")
}

/// Makes `cmd` start a process group of its own: a Ctrl-C on the terminal does not reach it, and
/// a signal to the group reaches everything it starts.
pub fn in_own_group(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0)
}
