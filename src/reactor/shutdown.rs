//! Signals and shutdown: SIGCHLD reaps `exec`'s children; the first SIGINT or SIGTERM stops
//! accepting and receiving, removes the socket files and lets connections drain for the grace
//! period; a second one exits at once.

use std::path::PathBuf;
use std::time::Instant;

use signal_hook_mio::v1_0::Signals;

use super::timer::TimerKind;
use super::{Entry, Reactor};

/// What shutting down needs.
pub(super) struct Shutdown {
    /// SIGINT, SIGTERM and SIGCHLD, delivered through a pipe registered in the poll.
    signals: Signals,
    /// Unix socket files this server created, removed when it stops.
    pub(super) owned_paths: Vec<PathBuf>,
    /// Set once shutdown begins: the moment the server exits even if output is still pending.
    pub(super) deadline: Option<Instant>,
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

    /// Stops accepting and receiving, removes the socket files, and lets connections drain.
    pub(super) fn begin_shutdown(&mut self) {
        crate::sys::notify::stopping();
        let grace = self.config.limits.shutdown_grace;
        tracing::info!(
            open = self.admission.open,
            "shutting down: no new connections; pending output has {}",
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
                Entry::Listener(_) | Entry::Dgram(_) | Entry::Preamble(_) => others.push(token),
                Entry::Pipe(_) => {}
            }
        }
        for token in others {
            // Dropping closes the socket, which also takes it out of the poll.
            drop(self.core.sources.remove(token));
        }
        self.shutdown.remove_socket_files();
        // Running commands are killed; their connections get the answer and then close.
        // Orphans they leave are killed at exit (`sys::contain::at_exit`).
        for running in self.children.running.values() {
            let _ = running.kill();
        }
        for token in conns {
            if let Some(Entry::Conn(c)) = self.core.sources.get_mut(token) {
                c.read_closed = true;
            }
            self.drive_conn(token, false, true);
        }
    }
}

impl Drop for Reactor {
    fn drop(&mut self) {
        self.shutdown.remove_socket_files();
    }
}
