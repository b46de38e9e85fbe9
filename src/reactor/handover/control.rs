//! The control socket of a running server, in the first worker's poll like any socket: `status`,
//! `reload` (start a successor, answer when it is ready or has failed) and `upgrade` (a
//! successor takes every listening socket). One command per connection; a connection that
//! sends garbage is answered `error …` and closed, one that sends nothing is closed after
//! `COMMAND_TIMEOUT`. Nothing here blocks: sockets are non-blocking and the successor's
//! start is a fork and exec.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Token};

use super::super::Reactor;
use super::super::timer::TimerKind;
use super::super::token::{CONTROL, CONTROL_CONNS};
use super::{Described, served_copies};
use crate::sys::fdpass::{self, PeerCred};

/// Control connections open at once; more are told `error busy` and closed.
pub(crate) const MAX_CONNS: usize = 8;
/// Longest command line.
const MAX_LINE: usize = 1024;
/// How long a connection may take to send its command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a successor may take from receiving the listeners (or being started) to `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The control socket and its connections (the first worker's; empty elsewhere).
#[derive(Default)]
pub(crate) struct Control {
    listener: Option<ControlListener>,
    conns: Vec<Option<ControlConn>>,
    /// A successor this server started (`reload`, SIGUSR2), until it is ready or has failed.
    spawned: Option<Spawned>,
    /// The connection of the successor that holds the listeners, waiting for its `ready`.
    upgrading: Option<Upgrading>,
    /// Successors that failed and were killed, reaped at SIGCHLD.
    failed: Vec<Child>,
}

struct ControlListener {
    socket: UnixListener,
    path: PathBuf,
    /// Removed at exit unless a successor took it over.
    remove_file: bool,
}

struct Spawned {
    child: Child,
    /// Until when it may take to be ready.
    deadline: Instant,
}

struct Upgrading {
    slot: usize,
    pid: i32,
    /// What the successor said went wrong (`failed …`), for the report.
    why: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the command line.
    Command,
    /// A successor that has the listeners; waiting for `ready`.
    Upgrade,
    /// Asked `reload`; answered when the successor is ready or has failed.
    Reload,
    /// Answered: closes once the answer is written.
    Closing,
}

struct ControlConn {
    stream: UnixStream,
    peer: PeerCred,
    input: Vec<u8>,
    output: Vec<u8>,
    state: State,
    deadline: Instant,
}

/// The token of control connection `slot`.
fn conn_token(slot: usize) -> Token {
    Token(CONTROL_CONNS.0 - slot)
}

/// The slot a control connection's token names.
pub(crate) fn conn_slot(token: Token) -> Option<usize> {
    let slot = CONTROL_CONNS.0.checked_sub(token.0)?;
    (slot < MAX_CONNS).then_some(slot)
}

impl Control {
    /// Whether a hand-over is under way (a successor started or holding the listeners).
    fn busy(&self) -> Option<String> {
        if let Some(u) = &self.upgrading {
            return Some(format!(
                "a hand-over is already in progress (successor pid {})",
                u.pid
            ));
        }
        self.spawned.as_ref().map(|s| {
            format!(
                "a hand-over is already in progress (successor pid {} is starting)",
                s.child.id()
            )
        })
    }
}

impl Drop for ControlListener {
    fn drop(&mut self) {
        if self.remove_file {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Reactor {
    /// Takes the control socket opened at start-up into this reactor's poll (the first
    /// reactor bound gets it).
    pub(in crate::reactor) fn install_control(&mut self) -> io::Result<()> {
        let Some(opened) = super::open::take_opened() else {
            return Ok(());
        };
        let mut socket = UnixListener::from_std(opened.listener);
        self.core
            .poll
            .registry()
            .register(&mut socket, CONTROL, Interest::READABLE)?;
        self.control.conns = (0..MAX_CONNS).map(|_| None).collect();
        self.control.listener = Some(ControlListener {
            socket,
            path: opened.path,
            remove_file: true,
        });
        Ok(())
    }

    /// An event of the control socket or one of its connections.
    pub(in crate::reactor) fn on_control(&mut self, token: Token) {
        if token == CONTROL {
            self.accept_control();
        } else if let Some(slot) = conn_slot(token) {
            self.drive_control(slot);
        }
    }

    fn accept_control(&mut self) {
        loop {
            let Some(l) = &self.control.listener else {
                return;
            };
            let (mut stream, _) = match l.socket.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("control socket: accept: {e}");
                    return;
                }
            };
            let peer = match fdpass::peer_cred(&stream) {
                Ok(p) if p.uid == fdpass::euid() => p,
                Ok(p) => {
                    tracing::warn!(uid = p.uid, pid = p.pid, "control socket: refused a peer of another user");
                    continue;
                }
                Err(e) => {
                    tracing::warn!("control socket: SO_PEERCRED: {e}");
                    continue;
                }
            };
            let Some(slot) = self.control.conns.iter().position(Option::is_none) else {
                let _ = stream.write(b"error busy: too many control connections\n");
                continue;
            };
            let token = conn_token(slot);
            let interest = Interest::READABLE | Interest::WRITABLE;
            if let Err(e) = self.core.poll.registry().register(&mut stream, token, interest) {
                tracing::warn!("control socket: cannot watch a connection: {e}");
                continue;
            }
            let deadline = self.core.now + COMMAND_TIMEOUT;
            self.core.timers.push(deadline, TimerKind::Control);
            self.control.conns[slot] = Some(ControlConn {
                stream,
                peer,
                input: Vec::new(),
                output: Vec::new(),
                state: State::Command,
                deadline,
            });
            self.drive_control(slot);
        }
    }

    /// Reads what the connection sent, acts on each whole line, writes the answers.
    fn drive_control(&mut self, slot: usize) {
        let eof = self.read_control(slot);
        while let Some(line) = self.next_line(slot) {
            self.on_line(slot, &line);
        }
        if eof {
            self.control_eof(slot);
        }
        self.flush_control(slot);
    }

    /// Reads until `WouldBlock`; true at end of input (or an error, or a line too long).
    fn read_control(&mut self, slot: usize) -> bool {
        let Some(Some(c)) = self.control.conns.get_mut(slot) else {
            return false;
        };
        let mut buf = [0u8; 512];
        loop {
            // Descriptors sent here are not wanted: a plain read makes the kernel close them.
            match c.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(n) => {
                    if c.input.len() + n > MAX_LINE {
                        c.input.clear();
                        answer(c, &format!("error command line longer than {MAX_LINE} bytes"));
                        return false;
                    }
                    c.input.extend_from_slice(buf.get(..n).unwrap_or_default());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
    }

    fn next_line(&mut self, slot: usize) -> Option<String> {
        let c = self.control.conns.get_mut(slot)?.as_mut()?;
        if c.state == State::Closing {
            c.input.clear();
            return None;
        }
        let end = c.input.iter().position(|b| *b == b'\n')?;
        let line: Vec<u8> = c.input.drain(..=end).collect();
        let text = String::from_utf8_lossy(&line);
        Some(text.trim_end_matches(['\n', '\r']).to_owned())
    }

    fn on_line(&mut self, slot: usize, line: &str) {
        let Some(Some(c)) = self.control.conns.get(slot) else {
            return;
        };
        let state = c.state;
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match (state, word) {
            (State::Command, "status") => {
                let state = if self.control.busy().is_some() { "handing-over" } else { "serving" };
                let text = format!("ok pid={} state={state}", std::process::id());
                self.answer(slot, &text);
            }
            (State::Command, "reload") => self.reload(Some(slot)),
            (State::Command, "upgrade") => self.send_listeners(slot),
            (State::Upgrade, "ready") => self.handover_done(slot, rest == "control"),
            (State::Upgrade, "failed") => {
                if let Some(u) = &mut self.control.upgrading {
                    u.why = Some(rest.chars().take(MAX_LINE).collect());
                }
            }
            (State::Command, "ready" | "failed") => {
                self.answer(slot, "error no hand-over on this connection: send upgrade first")
            }
            _ => {
                let shown: String = line.chars().take(40).collect();
                self.answer(
                    slot,
                    &format!("error unknown command {shown:?} (expected status, reload or upgrade)"),
                );
                if state == State::Upgrade {
                    self.handover_failed("the successor sent an unknown command".into());
                }
            }
        }
    }

    /// Answers `text` and closes once it is written.
    fn answer(&mut self, slot: usize, text: &str) {
        if let Some(Some(c)) = self.control.conns.get_mut(slot) {
            answer(c, text);
        }
    }

    fn control_eof(&mut self, slot: usize) {
        let upgrading = self.control.upgrading.as_ref().is_some_and(|u| u.slot == slot);
        if upgrading {
            let (pid, why) = match &self.control.upgrading {
                Some(u) => (u.pid, u.why.clone()),
                None => (0, None),
            };
            let why = why.unwrap_or_else(|| {
                "closed the control connection before it was ready".to_owned()
            });
            self.handover_failed(format!("successor pid {pid}: {why}"));
        }
        self.close_control(slot);
    }

    fn flush_control(&mut self, slot: usize) {
        let Some(Some(c)) = self.control.conns.get_mut(slot) else {
            return;
        };
        while !c.output.is_empty() {
            match c.stream.write(&c.output) {
                Ok(0) => break,
                Ok(n) => {
                    c.output.drain(..n.min(c.output.len()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        if c.state == State::Closing {
            self.close_control(slot);
        }
    }

    fn close_control(&mut self, slot: usize) {
        if let Some(mut c) = self.control.conns.get_mut(slot).and_then(Option::take) {
            let _ = self.core.poll.registry().deregister(&mut c.stream);
        }
        if self.control.upgrading.as_ref().is_some_and(|u| u.slot == slot) {
            self.handover_failed("the successor's control connection closed".into());
        }
    }

    /// `upgrade`: sends every socket of every worker, and the control socket, then `end`.
    fn send_listeners(&mut self, slot: usize) {
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
            tracing::warn!(pid, "hand-over: cannot send the listeners: {e}; still serving");
            answer(c, &format!("error cannot send the listeners: {e}"));
            return;
        }
        c.state = State::Upgrade;
        c.deadline = self.core.now + READY_TIMEOUT;
        self.core.timers.push(c.deadline, TimerKind::Control);
        tracing::info!(pid, sockets = all.len(), "hand-over: sent the listeners; waiting for the successor to be ready");
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
            Some("no control socket (--control): a successor could not reach this server".to_owned())
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
        let path = self.control.listener.as_ref().map(|l| l.path.clone()).unwrap_or_default();
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
                let why = format!("cannot start the successor {}: {e}", super::open::exe().display());
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
    fn handover_done(&mut self, slot: usize, kept_control: bool) {
        let pid = self.control.upgrading.take().map(|u| u.pid).unwrap_or_default();
        self.control.spawned = None;
        self.answer(slot, "bye");
        self.flush_control(slot);
        self.tell_waiters(&format!("ok pid={pid}"));
        tracing::info!(pid, "hand-over: the successor is ready; draining and exiting");
        if let Some(mut l) = self.control.listener.take() {
            l.remove_file = !kept_control;
            let _ = self.core.poll.registry().deregister(&mut l.socket);
        }
        super::forget_served();
        self.tell_workers_handed_over();
        self.stop_after_handover();
    }

    /// The hand-over did not happen: this server goes on serving, and says why.
    fn handover_failed(&mut self, why: String) {
        let upgrading = self.control.upgrading.take();
        let spawned = self.control.spawned.take();
        if upgrading.is_none() && spawned.is_none() {
            return;
        }
        tracing::warn!("hand-over failed: {why}; still serving");
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
            let waiting = matches!(self.control.conns.get(slot), Some(Some(c)) if c.state == State::Reload);
            if waiting {
                self.answer(slot, text);
                self.flush_control(slot);
            }
        }
    }

    /// At SIGCHLD: a started successor that exited before it was ready has failed.
    pub(in crate::reactor) fn check_successor(&mut self) {
        self.control.failed.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
        let Some(s) = &mut self.control.spawned else {
            return;
        };
        let Ok(Some(status)) = s.child.try_wait() else {
            return;
        };
        // What it said before exiting (`failed …`) is the better reason: read it first.
        if let Some(slot) = self.control.upgrading.as_ref().map(|u| u.slot) {
            self.drive_control(slot);
        }
        if self.control.spawned.is_some() {
            let pid = self.control.spawned.as_ref().map_or(0, |s| s.child.id());
            self.handover_failed(format!("successor pid {pid} exited ({status}) before it was ready"));
        }
    }

    /// A control deadline may have passed: silent connections, a successor not ready in time.
    pub(in crate::reactor) fn control_timers(&mut self) {
        let now = self.core.now;
        if self.control.spawned.as_ref().is_some_and(|s| s.deadline <= now) {
            self.handover_failed(format!("the successor was not ready within {READY_TIMEOUT:?}"));
        }
        for slot in 0..self.control.conns.len() {
            let Some(Some(c)) = self.control.conns.get(slot) else {
                continue;
            };
            if c.deadline > now {
                continue;
            }
            match c.state {
                State::Command => self.answer(slot, &format!("error no command within {COMMAND_TIMEOUT:?}")),
                State::Upgrade => self.handover_failed(format!(
                    "successor pid {} was not ready within {READY_TIMEOUT:?}",
                    c.peer.pid
                )),
                State::Reload | State::Closing => self.close_control(slot),
            }
            self.flush_control(slot);
        }
    }

    /// Shutting down: the control socket closes (its file removed unless a successor has it),
    /// and the recorded duplicates of the listeners go, so the ports stop taking connections.
    pub(in crate::reactor) fn control_at_shutdown(&mut self) {
        if let Some(mut l) = self.control.listener.take() {
            let _ = self.core.poll.registry().deregister(&mut l.socket);
        }
        super::forget_served();
    }
}

/// Queues `text` as the last line of this connection.
fn answer(c: &mut ControlConn, text: &str) {
    c.output.extend_from_slice(text.as_bytes());
    c.output.push(b'\n');
    c.state = State::Closing;
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
    Command::new(super::open::exe())
        .args(args)
        .arg("--upgrade-from")
        .arg(control)
        .stdin(Stdio::null())
        .spawn()
}
