//! The server's counters, kept per service by the reactor that owns them. The Prometheus
//! exposition and the `stats` command read them.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

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
    /// Connections closed because authentication failed or timed out.
    pub rejected_auth: u64,
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
    /// Frames answered, by command and outcome (`ok` or the error code).
    pub frames: BTreeMap<(&'static str, &'static str), u64>,
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

    /// Counts one answered frame.
    pub fn frame(&mut self, cmd: &'static str, outcome: &'static str) {
        let n = self.frames.entry((cmd, outcome)).or_default();
        *n = n.saturating_add(1);
    }

    /// Every counter as one JSON object (the `stats` command's body).
    pub fn to_json(&self) -> Value {
        let mut services = serde_json::Map::new();
        for (kind, c) in ServiceKind::ALL.iter().zip(&self.services) {
            services.insert(
                kind.name().to_owned(),
                json!({
                    "connections_accepted": c.accepted,
                    "connections_open": c.open,
                    "rejected_max_conns": c.rejected_max_conns,
                    "rejected_fd_limit": c.rejected_fd_limit,
                    "rejected_auth": c.rejected_auth,
                    "bytes_received": c.bytes_received,
                    "bytes_sent": c.bytes_sent,
                    "datagrams_received": c.datagrams_received,
                    "datagrams_sent": c.datagrams_sent,
                    "datagrams_dropped": c.datagrams_dropped,
                }),
            );
        }
        let frames: Vec<Value> = self
            .frames
            .iter()
            .map(|((cmd, outcome), n)| json!({"cmd": cmd, "outcome": outcome, "count": n}))
            .collect();
        json!({
            "services": services,
            "frames": frames,
            "loop_iterations": self.loop_iterations,
            "loop_busy_seconds": self.loop_busy.as_secs_f64(),
        })
    }
}
