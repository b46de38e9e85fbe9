//! The server's counters, kept per service by the reactor that owns them. The Prometheus
//! exposition and the `stats` command read them.

use std::time::Duration;

use crate::config::ServiceKind;

/// Counters of one service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceCounters {
    /// Connections accepted and kept.
    pub accepted: u64,
    /// Connections open now.
    pub open: u64,
    /// Connections closed at once because `--max-conns` were open.
    pub rejected_max_conns: u64,
    /// Connections shed because the process ran out of file descriptors.
    pub rejected_fd_limit: u64,
    /// Bytes read from clients.
    pub bytes_received: u64,
    /// Bytes written to clients.
    pub bytes_sent: u64,
    /// Datagrams received.
    pub datagrams_received: u64,
    /// Datagrams sent.
    pub datagrams_sent: u64,
    /// Replies dropped: the send queue was full or the peer could not be reached.
    pub datagrams_dropped: u64,
}

/// Every counter of one reactor.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Indexed by the position of the service in `ServiceKind::ALL`.
    pub services: [ServiceCounters; ServiceKind::ALL.len()],
    /// Turns of the event loop.
    pub loop_iterations: u64,
    /// Time spent outside the poll.
    pub loop_busy: Duration,
}

impl Counters {
    /// The counters of one service.
    pub fn service(&mut self, kind: ServiceKind) -> &mut ServiceCounters {
        let i = ServiceKind::ALL
            .iter()
            .position(|k| *k == kind)
            .unwrap_or_default();
        // `i` is a position in ALL, and `services` has ALL.len() entries.
        &mut self.services[i]
    }
}
