//! Child processes of `exec`: spawned without a shell in a process group of their own, with
//! stdin from /dev/null, a cleared environment, and stdout and stderr on non-blocking pipes
//! that the poll watches like any socket. Reaped on SIGCHLD; killed as a group at the timeout
//! or when the client goes away.

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use mio::unix::pipe::Receiver;
use mio::{Interest, Token};

use super::timer::TimerKind;
use super::{Entry, Reactor};
use crate::service::Event;
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

/// SIGTERM to every process of the group: at shutdown a command may still end cleanly.
pub fn term_group(pgid: i32) {
    if pgid <= 1 {
        return;
    }
    // SAFETY: kill only sends a signal; a negative pid names the group we created.
    unsafe {
        libc::kill(-pgid, libc::SIGTERM);
    }
}

/// How long a killed command's pipes may stay open (held by something that escaped its
/// process group) before the server stops waiting for them.
const EXEC_PIPE_GRACE: Duration = Duration::from_secs(1);

/// How long a command's pipes may stay open after it exited before the reply goes anyway.
const EXEC_EXIT_GRACE: Duration = Duration::from_millis(200);

/// Commands of `exec` under way.
#[derive(Debug, Default)]
pub(super) struct Children {
    /// By number.
    pub(super) running: HashMap<u64, Running>,
    /// The number of the next command.
    next: u64,
}

/// One end of a child's stdout or stderr pipe.
#[derive(Debug)]
pub(super) struct Pipe {
    /// The pipe.
    pub(super) rx: mio::unix::pipe::Receiver,
    /// The command it belongs to.
    pub(super) child: u64,
    /// stderr (else stdout).
    pub(super) stderr: bool,
    /// On the ready list already.
    pub(super) queued: bool,
}

impl Reactor {
    /// Starts a command for `conn`, or answers at once why it cannot run.
    pub(super) fn start_exec(&mut self, conn: Token, req: ExecRequest) {
        let Some(policy) = self
            .shared
            .files
            .as_ref()
            .and_then(|f| f.config.exec.clone())
        else {
            return;
        };
        if self.children.running.len() >= policy.max_procs {
            self.exec_answer(conn, &Ending::TooBusy(self.children.running.len()), None);
            return;
        }
        let (child, out, err) = match spawn(&req, &policy.workdir) {
            Ok(parts) => parts,
            Err(e) => {
                tracing::warn!(program = %req.program.display(), "exec cannot start: {e}");
                self.exec_answer(conn, &Ending::SpawnFailed(e.to_string()), None);
                return;
            }
        };
        let id = self.children.next;
        self.children.next = self.children.next.wrapping_add(1);
        let pgid = child_pgid(&child);
        let mut running = Running {
            conn,
            child,
            pgid,
            stdout: Capture::default(),
            stderr: Capture::default(),
            pipes: Vec::new(),
            exited: None,
            timed_out: false,
            started: self.core.now,
        };
        for (rx, stderr) in [(out, false), (err, true)] {
            let pipe = Entry::Pipe(Pipe {
                rx,
                child: id,
                stderr,
                queued: false,
            });
            let Some(token) = self.core.sources.insert(pipe) else {
                continue;
            };
            if let Some(Entry::Pipe(p)) = self.core.sources.get_mut(token)
                && self
                    .core
                    .poll
                    .registry()
                    .register(&mut p.rx, token, Interest::READABLE)
                    .is_ok()
            {
                running.pipes.push(token);
            } else {
                drop(self.core.sources.remove(token));
            }
        }
        tracing::debug!(program = %req.program.display(), pid = pgid, "exec started");
        self.children.running.insert(id, running);
        self.core
            .timers
            .push(self.core.now + req.timeout, TimerKind::ExecDeadline(id));
        // A child may exit before its SIGCHLD is watched for this id: look now.
        self.reap_children();
    }

    /// Reads a child's pipe until it would block, its end, or the budget.
    pub(super) fn read_pipe(&mut self, token: Token) {
        let max_output = self
            .shared
            .files
            .as_ref()
            .and_then(|f| f.config.exec.as_ref())
            .map_or(0, |p| p.max_output);
        let Some(Entry::Pipe(p)) = self.core.sources.get_mut(token) else {
            return;
        };
        let id = p.child;
        let mut budget = self.config.limits.read_budget;
        let mut eof = false;
        loop {
            if budget == 0 {
                if !p.queued {
                    p.queued = true;
                    self.core.ready.push(token);
                }
                break;
            }
            match (&p.rx).read(&mut self.bufs.scratch) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    let data = self.bufs.scratch.get(..n).unwrap_or_default();
                    if let Some(r) = self.children.running.get_mut(&id) {
                        let capture = if p.stderr {
                            &mut r.stderr
                        } else {
                            &mut r.stdout
                        };
                        capture.take(data, max_output);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        if eof {
            drop(self.core.sources.remove(token));
            if let Some(r) = self.children.running.get_mut(&id) {
                r.pipes.retain(|t| *t != token);
            }
            self.finish_child(id);
        }
    }

    /// Collects the exit status of every child that has ended.
    pub(super) fn reap_children(&mut self) {
        let ids: Vec<u64> = self.children.running.keys().copied().collect();
        for id in ids {
            if let Some(r) = self.children.running.get_mut(&id)
                && r.exited.is_none()
                && let Ok(Some(status)) = r.child.try_wait()
            {
                r.exited = Some(status);
                // Whatever it left in its group (a background child holding a pipe) dies now;
                // the pipes get a short grace to drain, then the reply goes with what was read.
                r.kill();
                self.core.timers.push(
                    self.core.now + EXEC_EXIT_GRACE,
                    TimerKind::ExecPipeGrace(id),
                );
                self.finish_child(id);
            }
        }
    }

    /// Answers a command's connection once the child is reaped and its pipes are drained.
    fn finish_child(&mut self, id: u64) {
        if !self
            .children
            .running
            .get(&id)
            .is_some_and(Running::finished)
        {
            return;
        }
        let Some(r) = self.children.running.remove(&id) else {
            return;
        };
        tracing::debug!(
            pid = r.pgid,
            ms = r.started.elapsed().as_millis() as u64,
            "exec finished"
        );
        self.exec_answer(r.conn, &r.ending(), Some((&r.stdout, &r.stderr)));
    }

    /// Writes an `exec` response to `conn`, if it is still there.
    fn exec_answer(&mut self, conn: Token, ending: &Ending, output: Option<(&Capture, &Capture)>) {
        let empty = Capture::default();
        let (out, err) = output.unwrap_or((&empty, &empty));
        if let Some(Entry::Conn(c)) = self.core.sources.get_mut(conn)
            && !c.dead
        {
            let done = Event::ExecDone {
                ending,
                stdout: out,
                stderr: err,
            };
            c.service.on_event(done, c.out.tail(), &mut self.svc.ctx());
            // Resumes input paused while the command ran (`resume_held_input`).
            self.drive_conn(conn, false, true);
        }
    }

    /// The command ran past its timeout: kill its group. If something it started escaped the
    /// group and still holds a pipe, the pipes are given up a little later.
    pub(super) fn exec_deadline(&mut self, id: u64) {
        if let Some(r) = self.children.running.get_mut(&id)
            && r.exited.is_none()
        {
            r.timed_out = true;
            r.kill();
            self.core.timers.push(
                self.core.now + EXEC_PIPE_GRACE,
                TimerKind::ExecPipeGrace(id),
            );
        }
    }

    /// Stops waiting for the pipes of a killed command.
    pub(super) fn exec_pipe_grace(&mut self, id: u64) {
        let Some(r) = self.children.running.get_mut(&id) else {
            return;
        };
        for token in std::mem::take(&mut r.pipes) {
            drop(self.core.sources.remove(token));
        }
        self.finish_child(id);
    }
}
