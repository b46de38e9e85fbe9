//! Signals and shutdown: SIGCHLD reaps `exec`'s children; the first SIGINT or SIGTERM stops
//! accepting and receiving, removes the socket files and lets connections drain for the grace
//! period; a second one exits at once.

use super::timer::TimerKind;
use super::{Entry, Reactor};

impl Reactor {
    pub(super) fn on_signals(&mut self) {
        let mut got: Vec<i32> = self.signals.pending().collect();
        if got.contains(&libc::SIGCHLD) {
            self.reap_children();
            got.retain(|s| *s != libc::SIGCHLD);
        }
        if got.is_empty() {
            return;
        }
        if self.shutdown_deadline.is_some() {
            tracing::warn!("second signal: exiting without waiting for pending output");
            self.shutdown_deadline = Some(self.now);
            return;
        }
        self.begin_shutdown();
    }

    /// Stops accepting and receiving, removes the socket files, and lets connections drain.
    fn begin_shutdown(&mut self) {
        let grace = self.config.limits.shutdown_grace;
        tracing::info!(
            open = self.open_conns,
            "shutting down: no new connections; pending output has {}",
            humantime::format_duration(grace)
        );
        let deadline = self.now + grace;
        self.shutdown_deadline = Some(deadline);
        self.timers.push(deadline, TimerKind::ShutdownGrace);
        let mut conns = Vec::new();
        let mut others = Vec::new();
        for (token, entry) in self.sources.iter() {
            match entry {
                Entry::Conn(_) => conns.push(token),
                Entry::Listener(_) | Entry::Dgram(_) => others.push(token),
                Entry::Pipe(_) => {}
            }
        }
        for token in others {
            // Dropping closes the socket, which also takes it out of the poll.
            drop(self.sources.remove(token));
        }
        self.remove_socket_files();
        // Running commands are killed; their connections get the answer and then close.
        for running in self.children.values() {
            running.kill();
        }
        for token in conns {
            if let Some(Entry::Conn(c)) = self.sources.get_mut(token) {
                c.read_closed = true;
            }
            self.drive_conn(token, false, true);
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

impl Drop for Reactor {
    fn drop(&mut self) {
        self.remove_socket_files();
    }
}
