//! Child processes of `exec`: spawned without a shell in a process group of their own, with
//! stdin from /dev/null, a cleared environment, and stdout and stderr on non-blocking pipes
//! that the poll watches like any socket. Reaped on SIGCHLD; killed as a group at the timeout
//! or when the client goes away.

use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Instant;

use mio::Token;
use mio::unix::pipe::Receiver;

use crate::service::exec::{Capture, Ending, ExecRequest};

/// The environment a command gets: nothing of the server's but these.
const CHILD_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
const CHILD_LANG: &str = "C.UTF-8";

/// A command under way.
#[derive(Debug)]
pub struct Running {
    /// The connection that asked for it (it may have gone since).
    pub conn: Token,
    /// The process.
    pub child: Child,
    /// Its process group (its own pid), for killing it with everything it started.
    pub pgid: i32,
    /// What it wrote to stdout, up to the cap.
    pub stdout: Capture,
    /// What it wrote to stderr, up to the cap.
    pub stderr: Capture,
    /// The slab tokens of its pipes not yet at end of file.
    pub pipes: Vec<Token>,
    /// Its exit status, once reaped.
    pub exited: Option<ExitStatus>,
    /// It passed its timeout and was killed.
    pub timed_out: bool,
    /// When it started, for the log.
    pub started: Instant,
}

impl Running {
    /// Done when it is reaped and both pipes are at end of file.
    pub fn finished(&self) -> bool {
        self.exited.is_some() && self.pipes.is_empty()
    }

    /// How it ended.
    pub fn ending(&self) -> Ending {
        if self.timed_out {
            return Ending::TimedOut;
        }
        match self.exited {
            Some(s) => match (s.code(), s.signal()) {
                (Some(code), _) => Ending::Exited(code),
                (None, Some(sig)) => Ending::Signaled(sig),
                (None, None) => Ending::Exited(-1),
            },
            None => Ending::Exited(-1),
        }
    }

    /// Kills the whole process group.
    pub fn kill(&self) {
        kill_group(self.pgid);
    }
}

/// Starts `req` in `workdir`; returns the child and its two pipes, non-blocking.
pub fn spawn(req: &ExecRequest, workdir: &Path) -> io::Result<(Child, Receiver, Receiver)> {
    let mut cmd = Command::new(&req.program);
    cmd.arg0(&req.argv0)
        .args(&req.args)
        .env_clear()
        .env("PATH", CHILD_PATH)
        .env("LANG", CHILD_LANG)
        .current_dir(workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn()?;
    let pipes = (child.stdout.take(), child.stderr.take());
    let (Some(out), Some(err)) = pipes else {
        kill_group(child_pgid(&child));
        let _ = child.wait();
        return Err(io::Error::other("the child's pipes are missing"));
    };
    let (out, err) = (Receiver::from(out), Receiver::from(err));
    out.set_nonblocking(true)?;
    err.set_nonblocking(true)?;
    Ok((child, out, err))
}

/// The process group of a child started with `process_group(0)`: its pid.
pub fn child_pgid(child: &Child) -> i32 {
    i32::try_from(child.id()).unwrap_or(0)
}

/// SIGKILL to every process of the group.
pub fn kill_group(pgid: i32) {
    if pgid <= 1 {
        return;
    }
    // SAFETY: kill only sends a signal; a negative pid names the group we created.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}
