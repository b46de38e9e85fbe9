//! The successor's life as the old process sees it: `reload` and SIGUSR2 start it, `upgrade`
//! sends it every socket, and its `ready` (this process drains and exits) or its failure (this
//! process goes on serving, and says why) ends the hand-over.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};

use mio::net::UnixStream;

use super::super::Reactor;
use super::super::timer::TimerKind;
use super::control::{COMMAND_TIMEOUT, READY_TIMEOUT, Spawned, State, Upgrading, answer};
use super::{Described, served_copies};
use crate::sys::contain::orphans;
use crate::sys::fdpass;

impl Reactor {
    /// `upgrade`: sends every socket of every worker, and the control socket, then `end`.
    pub(super) fn send_listeners(&mut self, slot: usize) {
        if let Some(why) = self.refusal(slot) {
            self.answer(slot, &format!("error {why}"));
            return;
        }
        let Some(Some(c)) = self.control.conns.get_mut(slot) else {
            return;
        };
        let mut all = match served_copies() {
            Ok(all) => all,
            Err(e) => {
                answer(c, &format!("error cannot duplicate the listeners: {e}"));
                return;
            }
        };
        if let Some(l) = &self.control.listener {
            // SAFETY: the listener is open while `self.control` holds it; only duplicated.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(l.socket.as_raw_fd()) };
            if let (Ok(fd), Some(addr)) = (fd.try_clone_to_owned(), l.path.to_str()) {
                all.push(Described {
                    service: "control".into(),
                    transport: "unix",
                    addr: addr.to_owned(),
                    fd,
                });
            }
        }
        let pid = c.peer.pid;
        if let Err(e) = send_all(&c.stream, &all) {
            tracing::warn!(
                pid,
                "hand-over: cannot send the listeners: {e}; still serving"
            );
            answer(c, &format!("error cannot send the listeners: {e}"));
            return;
        }
        crate::sys::notify::reloading();
        c.state = State::Upgrade;
        c.deadline = self.core.now + READY_TIMEOUT;
        self.core.timers.push(c.deadline, TimerKind::Control);
        tracing::info!(
            pid,
            sockets = all.len(),
            "hand-over: sent the listeners; waiting for the successor to be ready"
        );
        self.control.upgrading = Some(Upgrading {
            slot,
            pid,
            why: None,
        });
    }

    /// Why `upgrade` from this connection is refused, if it is.
    fn refusal(&self, slot: usize) -> Option<String> {
        if self.shutdown.deadline.is_some() {
            return Some("this server is shutting down".into());
        }
        let pid = self.control.conns.get(slot)?.as_ref()?.peer.pid;
        match &self.control.spawned {
            // The successor this server started is the one expected.
            Some(s) if s.child.id() as i32 == pid && self.control.upgrading.is_none() => None,
            _ => self.control.busy(),
        }
    }

    /// `reload` or SIGUSR2: starts a successor with this server's arguments plus
    /// `--upgrade-from`; `slot` (if any) is answered when it is ready or has failed.
    pub(in crate::reactor) fn reload(&mut self, slot: Option<usize>) {
        let refused = if self.shutdown.deadline.is_some() {
            Some("this server is shutting down".to_owned())
        } else if self.control.listener.is_none() {
            Some(
                "no control socket (--control): a successor could not reach this server".to_owned(),
            )
        } else {
            self.control.busy()
        };
        if let Some(why) = refused {
            tracing::warn!("reload refused: {why}");
            if let Some(slot) = slot {
                self.answer(slot, &format!("error {why}"));
            }
            return;
        }
        let path = self
            .control
            .listener
            .as_ref()
            .map(|l| l.path.clone())
            .unwrap_or_default();
        match spawn_successor(&path) {
            Ok(child) => {
                tracing::info!(pid = child.id(), "reload: started the successor");
                let deadline = self.core.now + READY_TIMEOUT;
                self.core.timers.push(deadline, TimerKind::Control);
                self.control.spawned = Some(Spawned { child, deadline });
                if let Some(Some(c)) = slot.and_then(|s| self.control.conns.get_mut(s)) {
                    c.state = State::Reload;
                    c.deadline = deadline + COMMAND_TIMEOUT;
                }
            }
            Err(e) => {
                let why = format!(
                    "cannot start the successor {}: {e}",
                    super::open::exe().display()
                );
                tracing::warn!("reload: {why}; still serving");
                if let Some(slot) = slot {
                    self.answer(slot, &format!("error {why}"));
                }
            }
        }
    }

    /// SIGUSR2: `reload`, by the worker that has the control socket.
    pub(in crate::reactor) fn reload_signal(&mut self) {
        if self.svc.peers.worker == 0 {
            self.reload(None);
        }
    }

    /// The successor is ready: it serves every socket now; this process drains and exits.
    pub(super) fn handover_done(&mut self, slot: usize, kept_control: bool) {
        let pid = self
            .control
            .upgrading
            .take()
            .map(|u| u.pid)
            .unwrap_or_default();
        self.control.spawned = None;
        self.answer(slot, "bye");
        self.flush_control(slot);
        self.tell_waiters(&format!("ok pid={pid}"));
        tracing::info!(
            pid,
            "hand-over: the successor is ready; draining and exiting"
        );
        crate::sys::notify::handed_over(pid);
        if let Some(mut l) = self.control.listener.take() {
            l.remove_file = !kept_control;
            let _ = self.core.poll.registry().deregister(&mut l.socket);
        }
        super::forget_served();
        self.tell_workers_handed_over();
        self.stop_after_handover();
    }

    /// The hand-over did not happen: this server goes on serving, and says why.
    pub(super) fn handover_failed(&mut self, why: String) {
        let upgrading = self.control.upgrading.take();
        let spawned = self.control.spawned.take();
        if upgrading.is_none() && spawned.is_none() {
            return;
        }
        tracing::warn!("hand-over failed: {why}; still serving");
        if upgrading.is_some() {
            crate::sys::notify::reload_failed(&why);
        }
        if let Some(mut s) = spawned {
            // A successor that is not ready in time is not left to serve beside this one.
            let _ = s.child.kill();
            self.control.failed.push(s.child);
        }
        if let Some(u) = upgrading
            && let Some(Some(c)) = self.control.conns.get_mut(u.slot)
        {
            answer(c, &format!("error {why}"));
        }
        self.tell_waiters(&format!("error {why}"));
    }

    fn tell_waiters(&mut self, text: &str) {
        for slot in 0..self.control.conns.len() {
            let waiting =
                matches!(self.control.conns.get(slot), Some(Some(c)) if c.state == State::Reload);
            if waiting {
                self.answer(slot, text);
                self.flush_control(slot);
            }
        }
    }

    /// At SIGCHLD: a started successor that exited before it was ready has failed.
    pub(in crate::reactor) fn check_successor(&mut self) {
        self.control.failed.retain_mut(|c| match c.try_wait() {
            Ok(None) => true,
            Ok(Some(_)) | Err(_) => {
                orphans::forget(c.id());
                false
            }
        });
        let Some(s) = &mut self.control.spawned else {
            return;
        };
        let Ok(Some(status)) = s.child.try_wait() else {
            return;
        };
        orphans::forget(s.child.id());
        // What it said before exiting (`failed …`) is the better reason: read it first.
        if let Some(slot) = self.control.upgrading.as_ref().map(|u| u.slot) {
            self.drive_control(slot);
        }
        if self.control.spawned.is_some() {
            let pid = self.control.spawned.as_ref().map_or(0, |s| s.child.id());
            self.handover_failed(format!(
                "successor pid {pid} exited ({status}) before it was ready"
            ));
        }
    }
}

/// Sends `listeners N`, one `listener …` line with its descriptor per socket, then `end`. The
/// whole of it is a few KiB, far below a Unix socket's buffer: a peer whose buffer is full
/// has not read its own request's answer and is dropped rather than waited for.
fn send_all(stream: &UnixStream, all: &[Described]) -> io::Result<()> {
    let mut head = format!("listeners {}\n", all.len()).into_bytes();
    write_all_now(stream, &mut head)?;
    for d in all {
        let line = format!("listener {} {} {}\n", d.service, d.transport, d.addr);
        let n = fdpass::send_with_fd(stream, line.as_bytes(), d.fd.as_raw_fd())?;
        let mut rest = line.into_bytes().split_off(n);
        write_all_now(stream, &mut rest)?;
    }
    write_all_now(stream, &mut b"end\n".to_vec())
}

fn write_all_now(mut stream: &UnixStream, buf: &mut Vec<u8>) -> io::Result<()> {
    while !buf.is_empty() {
        match stream.write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                buf.drain(..n.min(buf.len()));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Starts this binary again with this process's arguments, `--upgrade-from` replaced.
fn spawn_successor(control: &std::path::Path) -> io::Result<Child> {
    let mut args = Vec::new();
    let mut skip = false;
    for a in std::env::args_os().skip(1) {
        if std::mem::take(&mut skip) {
            continue;
        }
        if a == "--upgrade-from" {
            skip = true;
            continue;
        }
        if a.to_str().is_some_and(|s| s.starts_with("--upgrade-from=")) {
            continue;
        }
        args.push(a);
    }
    let mut cmd = Command::new(super::open::exe());
    cmd.envs(crate::sys::notify::successor_env())
        .args(args)
        .arg("--upgrade-from")
        .arg(control)
        .stdin(Stdio::null());
    // Registered, so that exec's containment neither reaps it nor takes it for an orphan.
    orphans::spawn_registered(orphans::Kind::Other, || cmd.spawn())
}
