//! Signals and shutdown: SIGCHLD reaps `exec`'s children; the first SIGINT or SIGTERM starts
//! the drain; a second one exits at once.
//!
//! The drain loses nothing a client sent before the signal. The listeners and datagram
//! sockets close and the socket files go first, so nothing new comes in. Each connection then
//! answers the bytes it has read and as many more as its socket's receive queue held at the
//! signal (FIONREAD), read as usual (budget, backpressure); a `files` body under way (an
//! upload) is read to its end if it comes within the grace. The drain drives every connection
//! once itself: no new edge will come for bytes already queued. A connection that owes nothing
//! more gets its service's goodbye (a chat member is told), then its write side is shut down and
//! it reads and discards until the peer's end or the linger deadline, so the peer sees a clean
//! end rather than a reset. Commands get SIGTERM at the signal and SIGKILL at the grace, when
//! whatever is still open is cut. Drained and cut connections are counted and logged at exit.

use std::io::{self, Read};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mio::Token;
use signal_hook_mio::v1_0::Signals;

use super::conn::Conn;
use super::stream::update_interest;
use super::timer::TimerKind;
use super::{Entry, Reactor};
use crate::kind::ServiceKind;
use crate::service::Awaiting;

/// How long a drained connection waits, its write side shut down, for the peer's end before it
/// is closed anyway (never past the grace).
const LINGER: Duration = Duration::from_secs(2);

/// What shutting down needs.
pub(super) struct Shutdown {
    /// SIGINT, SIGTERM and SIGCHLD, delivered through a pipe registered in the poll.
    signals: Signals,
    /// Unix socket files this server created, removed when it stops.
    pub(super) owned_paths: Vec<PathBuf>,
    /// Set once shutdown begins: the moment the server exits even if output is still pending.
    pub(super) deadline: Option<Instant>,
}

/// A connection's part in the drain (`Conn::drain`, set at the signal).
#[derive(Debug, Default)]
pub(crate) struct Drain {
    /// Bytes of its receive queue at the signal not read yet. Reading stops when none are left
    /// and no body under way waits for its end.
    pub(crate) left: usize,
    /// Its service said goodbye: nothing may be written after it.
    pub(crate) said_bye: bool,
    /// Its write side is shut down: reads only discard, until the peer's end or the deadline.
    pub(crate) lingering: bool,
    /// A chat member that owes nothing more, whose goodbye waits until no other member here
    /// still reads what its queue held at the signal: those lines are owed to this one too.
    pub(crate) bye_waits: bool,
}

impl Shutdown {
    /// Not shutting down.
    pub(super) fn new(signals: Signals) -> Shutdown {
        Shutdown {
            signals,
            owned_paths: Vec::new(),
            deadline: None,
        }
    }

    fn remove_socket_files(&mut self) {
        for path in self.owned_paths.drain(..) {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), "cannot remove socket file: {e}");
            }
        }
    }
}

/// How many more bytes a connection may read from its socket: unlimited until shutdown; then
/// what its queue held at the signal, or the rest of a body under way if that is more.
pub(super) fn read_allowance(c: &Conn) -> usize {
    let Some(d) = &c.drain else {
        return usize::MAX;
    };
    if d.said_bye {
        return 0;
    }
    let body = usize::try_from(c.service.drain_wants()).unwrap_or(usize::MAX);
    // Bytes already read but held are part of the body's rest.
    d.left.max(body.saturating_sub(c.input.len()))
}

/// Whether a connection closed during the drain owed its client nothing more.
fn owes_nothing(c: &Conn) -> bool {
    c.drain.as_ref().is_some_and(|d| d.lingering)
        || (!c.owes_output()
            && !c.service.has_output()
            && c.service.awaiting() == Awaiting::Nothing
            && c.service.drain_wants() == 0)
}

impl Reactor {
    pub(super) fn on_signals(&mut self) {
        let mut got: Vec<i32> = self.shutdown.signals.pending().collect();
        if got.contains(&libc::SIGCHLD) {
            self.reap_children();
            got.retain(|s| *s != libc::SIGCHLD);
        }
        if got.contains(&libc::SIGUSR2) {
            got.retain(|s| *s != libc::SIGUSR2);
            self.reload_signal();
        }
        if got.contains(&libc::SIGHUP) {
            got.retain(|s| *s != libc::SIGHUP);
            self.reload_tls();
        }
        if got.is_empty() {
            return;
        }
        if self.shutdown.deadline.is_some() {
            tracing::warn!("second signal: exiting without waiting for pending output");
            self.shutdown.deadline = Some(self.core.now);
            return;
        }
        self.begin_shutdown();
    }

    /// The one way into shutdown (a signal, or a successor that took the listeners over):
    /// stops accepting, removes the socket files, sends running commands SIGTERM, and starts
    /// draining every connection. Called again, it does nothing.
    pub(super) fn begin_shutdown(&mut self) {
        if self.shutdown.deadline.is_some() {
            return;
        }
        crate::sys::notify::stopping();
        let grace = self.config.limits.shutdown_grace;
        tracing::info!(
            open = self.admission.open,
            "shutting down: no new connections; answering what was sent, for at most {}",
            humantime::format_duration(grace)
        );
        let deadline = self.core.now + grace;
        self.shutdown.deadline = Some(deadline);
        self.core.timers.push(deadline, TimerKind::ShutdownGrace);
        let mut conns = Vec::new();
        let mut others = Vec::new();
        for (token, entry) in self.core.sources.iter() {
            match entry {
                Entry::Conn(_) => conns.push(token),
                Entry::Listener(_) | Entry::Dgram(_) => others.push(token),
                // Accepted before the signal: served once their PROXY header is whole
                // (`accept/proxied.rs`), or closed at its deadline.
                Entry::Preamble(_) | Entry::Pipe(_) => {}
            }
        }
        for token in others {
            // Dropping closes the socket, which also takes it out of the poll.
            drop(self.core.sources.remove(token));
        }
        self.shutdown.remove_socket_files();
        // A command may end cleanly now; it and everything it started are killed at the
        // grace if it has not (and whatever is left at exit by `sys::contain::at_exit`).
        for running in self.children.running.values() {
            crate::sys::contain::kill_group(running.pgid, libc::SIGTERM);
        }
        // Every connection's share first, then the drives: a chat member's goodbye waits for
        // the others still reading (`end_drain`), which it can only see once all are marked.
        for token in &conns {
            self.mark_drain(*token);
        }
        for token in conns {
            // Readable: no new event will announce the bytes already queued.
            self.drive_conn(token, true, true);
        }
    }

    /// Drains one connection admitted after the drain began: it is answered what its socket
    /// holds now, then ends.
    pub(super) fn start_drain(&mut self, token: Token) {
        self.mark_drain(token);
        // Readable: no new event will announce the bytes already queued.
        self.drive_conn(token, true, true);
    }

    /// A connection's share of the drain: what its socket holds now is answered, no more.
    fn mark_drain(&mut self, token: Token) {
        if let Some(Entry::Conn(c)) = self.core.sources.get_mut(token) {
            let left = c.transport.queued_input().unwrap_or_else(|e| {
                tracing::debug!("FIONREAD: {e}; reading nothing more");
                0
            });
            c.drain = Some(Box::new(Drain {
                left,
                ..Drain::default()
            }));
        }
    }

    /// A draining connection owes nothing more (`stream.rs` found it finished): its service
    /// says goodbye (a chat member once no other member here has queued lines left to read),
    /// and once that is written the write side is shut down and it lingers.
    pub(super) fn end_drain(&mut self, token: Token) {
        let is_member = matches!(self.core.sources.get(token),
            Some(Entry::Conn(c)) if c.kind == ServiceKind::Chat
                && c.drain.as_ref().is_some_and(|d| !d.said_bye));
        if is_member && self.chat_still_reading(token) {
            if let Some(Entry::Conn(c)) = self.core.sources.get_mut(token)
                && let Some(d) = c.drain.as_mut()
            {
                d.bye_waits = true;
            }
            return;
        }
        self.say_bye(token);
        if is_member {
            self.release_chat_byes();
        }
    }

    /// Whether a chat member here other than `except` still has bytes of its queue at the
    /// signal to read: lines that go to every member.
    fn chat_still_reading(&self, except: Token) -> bool {
        self.core.sources.iter().any(|(t, e)| {
            t != except
                && matches!(e, Entry::Conn(c) if c.kind == ServiceKind::Chat
                    && !c.dead
                    && c.drain.as_ref().is_some_and(|d| !d.said_bye && !d.bye_waits)
                    && read_allowance(c) > 0)
        })
    }

    /// Says the waiting chat goodbyes once no member here reads any more (called when one
    /// finishes and when connections close during the drain).
    pub(super) fn release_chat_byes(&mut self) {
        if self.shutdown.deadline.is_none() || self.chat_still_reading(Token(usize::MAX)) {
            return;
        }
        let waiting: Vec<Token> = self
            .core
            .sources
            .iter()
            .filter(|(_, e)| {
                matches!(e, Entry::Conn(c)
                if c.drain.as_ref().is_some_and(|d| d.bye_waits))
            })
            .map(|(t, _)| t)
            .collect();
        for token in waiting {
            if let Some(Entry::Conn(c)) = self.core.sources.get_mut(token)
                && let Some(d) = c.drain.as_mut()
            {
                d.bye_waits = false;
            }
            self.say_bye(token);
        }
    }

    fn say_bye(&mut self, token: Token) {
        let Some(Entry::Conn(c)) = self.core.sources.get_mut(token) else {
            return;
        };
        let Some(d) = c.drain.as_mut() else {
            return;
        };
        if !d.said_bye {
            d.said_bye = true;
            c.service.on_shutdown(c.out.tail());
            let written = c.out.write_to(&mut c.transport);
            let counters = self.svc.counters.service(c.kind);
            counters.bytes_sent = counters
                .bytes_sent
                .saturating_add(written.as_ref().map_or(0, |n| *n as u64));
            if written.is_err() {
                c.dead = true;
                self.core.to_close.push(token);
                return;
            }
            if c.owes_output() {
                // The drive that writes the rest of it comes back here.
                if update_interest(&self.core.poll, c, token).is_err() {
                    c.dead = true;
                    self.core.to_close.push(token);
                }
                return;
            }
        }
        self.start_linger(token);
    }

    /// Shuts the connection's write side down (the peer reads to a clean end) and reads and
    /// discards until the peer's end or the linger deadline: closing with unread input would
    /// send a reset, which can destroy replies the peer has not read yet.
    fn start_linger(&mut self, token: Token) {
        let Some(Entry::Conn(c)) = self.core.sources.get_mut(token) else {
            return;
        };
        let Some(d) = c.drain.as_mut() else {
            return;
        };
        d.lingering = true;
        if let Err(e) = c.transport.shutdown_write() {
            tracing::debug!(service = %c.kind, "cannot half-close: {e}");
            c.dead = true;
            self.core.to_close.push(token);
            return;
        }
        let mut at = self.core.now + LINGER;
        if let Some(deadline) = self.shutdown.deadline {
            at = at.min(deadline);
        }
        self.core.timers.push(at, TimerKind::Linger(token));
        if update_interest(&self.core.poll, c, token).is_err() {
            c.dead = true;
            self.core.to_close.push(token);
            return;
        }
        self.linger_read(token);
    }

    /// Reads and discards what a lingering connection's peer sends, within the read budget;
    /// its end (or an error) closes the connection.
    pub(super) fn linger_read(&mut self, token: Token) {
        let Some(Entry::Conn(c)) = self.core.sources.get_mut(token) else {
            return;
        };
        if c.dead {
            return;
        }
        let mut budget = self.config.limits.read_budget;
        let ended = loop {
            if budget == 0 {
                if !c.queued {
                    c.queued = true;
                    self.core.ready.push(token);
                }
                return;
            }
            let want = budget.min(self.bufs.scratch.len());
            let Some(buf) = self.bufs.scratch.get_mut(..want) else {
                return;
            };
            match c.transport.read(buf) {
                Ok(0) => break true,
                Ok(n) => budget = budget.saturating_sub(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(service = %c.kind, "lingering: {e}");
                    break true;
                }
            }
        };
        if ended {
            c.dead = true;
            self.core.to_close.push(token);
        }
    }

    /// The linger deadline of a drained connection: close it whatever its peer does.
    pub(super) fn linger_over(&mut self, token: Token) {
        if let Some(Entry::Conn(c)) = self.core.sources.get_mut(token)
            && !c.dead
            && c.drain.as_ref().is_some_and(|d| d.lingering)
        {
            c.dead = true;
            self.core.to_close.push(token);
        }
    }

    /// Counts a connection closed during shutdown: drained when it owed nothing more, cut
    /// otherwise. Nothing before shutdown.
    pub(super) fn count_drain_close(&mut self, c: &Conn) {
        if self.shutdown.deadline.is_none() {
            return;
        }
        let counters = self.svc.counters.service(c.kind);
        if owes_nothing(c) {
            counters.drained = counters.drained.saturating_add(1);
        } else {
            counters.cut = counters.cut.saturating_add(1);
        }
    }

    /// The loop is about to return after a shutdown: every connection closed, or the grace
    /// over. Commands still running are killed, connections still open are counted (cut unless
    /// they were only lingering), and the counts are logged.
    pub(super) fn finish_shutdown(&mut self) {
        self.bus_farewell();
        // Orphans they leave are killed at exit (`sys::contain::at_exit`).
        for running in self.children.running.values() {
            let _ = running.kill();
        }
        for (_, entry) in self.core.sources.iter() {
            if let Entry::Conn(c) = entry {
                let counters = self.svc.counters.service(c.kind);
                if c.drain.as_ref().is_some_and(|d| d.lingering) {
                    counters.drained = counters.drained.saturating_add(1);
                } else {
                    counters.cut = counters.cut.saturating_add(1);
                }
            }
        }
        let (drained, cut) = self
            .svc
            .counters
            .services
            .iter()
            .fold((0u64, 0u64), |(d, k), s| {
                (d.saturating_add(s.drained), k.saturating_add(s.cut))
            });
        tracing::info!(
            worker = self.svc.peers.worker,
            "shutdown: {drained} connection(s) drained, {cut} cut at the grace"
        );
    }
}

impl Drop for Reactor {
    fn drop(&mut self) {
        self.shutdown.remove_socket_files();
    }
}
