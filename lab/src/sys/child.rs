//! The one supervisor of a child server (JupyterLab, JupyterHub, `cargo lab up`): started in a
//! process group of its own, waited for until it answers, and never left behind.
//!
//! How a server is asked to stop differs (JupyterLab's `/api/shutdown`, JupyterHub's API and
//! SIGTERM), so each owner writes its own `stop` from the pieces here: `wait_exit`, then
//! `signal_group` or `kill` for what did not listen. Dropped while the server still runs (an
//! owner's own stop did not end it), the whole group is killed.

use super::process::in_own_group;
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus};
use std::time::{Duration, Instant};

/// A running child server, the leader of its own process group.
pub struct ChildServer {
    child: Child,
}

/// Why `wait_ready` gave up.
pub enum NotReady {
    /// The server stopped first, with this status.
    Exited(ExitStatus),
    /// It did not answer within the limit.
    TimedOut,
}

impl ChildServer {
    /// Starts `cmd` as the leader of a new process group.
    pub fn spawn(cmd: &mut Command) -> std::io::Result<ChildServer> {
        in_own_group(cmd).spawn().map(|child| ChildServer { child })
    }

    /// Its exit status, once it has stopped.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Asks `ready` every `poll` until it says yes; gives up when the server stops or after `limit`.
    pub fn wait_ready(
        &mut self,
        limit: Duration,
        poll: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), NotReady> {
        let start = Instant::now();
        loop {
            if ready() {
                return Ok(());
            }
            if let Some(status) = self.exited() {
                return Err(NotReady::Exited(status));
            }
            if start.elapsed() > limit {
                return Err(NotReady::TimedOut);
            }
            std::thread::sleep(poll);
        }
    }

    /// Waits at most `limit` for it to stop, looking every 200 ms.
    pub fn wait_exit(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline && self.running() {
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Sends `signal` (`TERM`, `KILL`) to its whole process group, with kill(1).
    pub fn signal_group(&self, signal: &str) {
        let _ = Command::new("kill").args([&format!("-{signal}"), "--", &format!("-{}", self.child.id())]).status();
    }

    /// Sends `signal` to the leader alone.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// SIGKILL to the leader alone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
    }

    /// Waits for the leader to end (and reaps it).
    pub fn wait(&mut self) {
        let _ = self.child.wait();
    }

    /// Its piped standard output and error, to read from other threads.
    pub fn take_output(&mut self) -> (Option<ChildStdout>, Option<ChildStderr>) {
        (self.child.stdout.take(), self.child.stderr.take())
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        if self.running() {
            self.signal_group("KILL");
            self.wait();
        }
    }
}
