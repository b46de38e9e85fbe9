//! The control socket of a running server, in the first worker's poll like any socket: `status`,
//! `reload` (start a successor, answer when it is ready or has failed) and `upgrade` (a
//! successor takes every listening socket). One command per connection; a connection that
//! sends garbage is answered `error …` and closed, one that sends nothing is closed after
//! `COMMAND_TIMEOUT`. Nothing here blocks: sockets are non-blocking and the successor's
//! start is a fork and exec.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Token};

use super::super::Reactor;
use super::super::timer::TimerKind;
use super::super::token::{CONTROL, CONTROL_CONNS};
use crate::sys::fdpass::{self, PeerCred};

/// Control connections open at once; more are told `error busy` and closed.
pub(crate) const MAX_CONNS: usize = 8;
/// Longest command line.
const MAX_LINE: usize = 1024;
/// How long a connection may take to send its command.
pub(super) const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a successor may take from receiving the listeners (or being started) to `ready`.
pub(super) const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The control socket and its connections (the first worker's; empty elsewhere).
#[derive(Default)]
pub(crate) struct Control {
    pub(super) listener: Option<ControlListener>,
    pub(super) conns: Vec<Option<ControlConn>>,
    /// A successor this server started (`reload`, SIGUSR2), until it is ready or has failed.
    pub(super) spawned: Option<Spawned>,
    /// The connection of the successor that holds the listeners, waiting for its `ready`.
    pub(super) upgrading: Option<Upgrading>,
    /// Successors that failed and were killed, reaped at SIGCHLD.
    pub(super) failed: Vec<Child>,
}

pub(super) struct ControlListener {
    pub(super) socket: UnixListener,
    pub(super) path: PathBuf,
    /// Removed at exit unless a successor took it over.
    pub(super) remove_file: bool,
}

pub(super) struct Spawned {
    pub(super) child: Child,
    /// Until when it may take to be ready.
    pub(super) deadline: Instant,
}

pub(super) struct Upgrading {
    pub(super) slot: usize,
    pub(super) pid: i32,
    /// What the successor said went wrong (`failed …`), for the report.
    pub(super) why: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// Waiting for the command line.
    Command,
    /// A successor that has the listeners; waiting for `ready`.
    Upgrade,
    /// Asked `reload`; answered when the successor is ready or has failed.
    Reload,
    /// Answered: closes once the answer is written.
    Closing,
}

pub(super) struct ControlConn {
    pub(super) stream: UnixStream,
    pub(super) peer: PeerCred,
    pub(super) input: Vec<u8>,
    pub(super) output: Vec<u8>,
    pub(super) state: State,
    pub(super) deadline: Instant,
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
    pub(super) fn busy(&self) -> Option<String> {
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
                    tracing::warn!(
                        uid = p.uid,
                        pid = p.pid,
                        "control socket: refused a peer of another user"
                    );
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
            if let Err(e) = self
                .core
                .poll
                .registry()
                .register(&mut stream, token, interest)
            {
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
    pub(super) fn drive_control(&mut self, slot: usize) {
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
                // Past the answer, input is read only to be discarded, so that closing does
                // not turn into a reset that could destroy the answer on its way.
                Ok(_) if c.state == State::Closing => {}
                Ok(n) => {
                    if c.input.len() + n > MAX_LINE {
                        c.input.clear();
                        answer(
                            c,
                            &format!("error command line longer than {MAX_LINE} bytes"),
                        );
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
                let state = if self.control.busy().is_some() {
                    "handing-over"
                } else {
                    "serving"
                };
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
            (State::Command, "ready" | "failed") => self.answer(
                slot,
                "error no hand-over on this connection: send upgrade first",
            ),
            _ => {
                let shown: String = line.chars().take(40).collect();
                self.answer(
                    slot,
                    &format!(
                        "error unknown command {shown:?} (expected status, reload or upgrade)"
                    ),
                );
                if state == State::Upgrade {
                    self.handover_failed("the successor sent an unknown command".into());
                }
            }
        }
    }

    /// Answers `text` and closes once it is written.
    pub(super) fn answer(&mut self, slot: usize, text: &str) {
        if let Some(Some(c)) = self.control.conns.get_mut(slot) {
            answer(c, text);
        }
    }

    fn control_eof(&mut self, slot: usize) {
        let upgrading = self
            .control
            .upgrading
            .as_ref()
            .is_some_and(|u| u.slot == slot);
        if upgrading {
            let (pid, why) = match &self.control.upgrading {
                Some(u) => (u.pid, u.why.clone()),
                None => (0, None),
            };
            let why = why
                .unwrap_or_else(|| "closed the control connection before it was ready".to_owned());
            self.handover_failed(format!("successor pid {pid}: {why}"));
        }
        self.close_control(slot);
    }

    pub(super) fn flush_control(&mut self, slot: usize) {
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

    pub(super) fn close_control(&mut self, slot: usize) {
        if let Some(mut c) = self.control.conns.get_mut(slot).and_then(Option::take) {
            let _ = self.core.poll.registry().deregister(&mut c.stream);
        }
        if self
            .control
            .upgrading
            .as_ref()
            .is_some_and(|u| u.slot == slot)
        {
            self.handover_failed("the successor's control connection closed".into());
        }
    }

    /// A control deadline may have passed: silent connections, a successor not ready in time.
    pub(in crate::reactor) fn control_timers(&mut self) {
        let now = self.core.now;
        if self
            .control
            .spawned
            .as_ref()
            .is_some_and(|s| s.deadline <= now)
        {
            self.handover_failed(format!(
                "the successor was not ready within {READY_TIMEOUT:?}"
            ));
        }
        for slot in 0..self.control.conns.len() {
            let Some(Some(c)) = self.control.conns.get(slot) else {
                continue;
            };
            if c.deadline > now {
                continue;
            }
            match c.state {
                State::Command => self.answer(
                    slot,
                    &format!("error no command within {COMMAND_TIMEOUT:?}"),
                ),
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
pub(super) fn answer(c: &mut ControlConn, text: &str) {
    c.output.extend_from_slice(text.as_bytes());
    c.output.push(b'\n');
    c.state = State::Closing;
}
