//! The server's counters, kept per service by the reactor that owns them. The Prometheus
//! exposition and the `stats` command read them.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::kind::ServiceKind;

/// Counters of one service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ServiceCounters {
    /// Connections accepted and kept.
    pub(crate) accepted: u64,
    /// Connections open now.
    pub(crate) open: u64,
    /// Connections closed at once because `--max-conns` were open.
    pub(crate) rejected_max_conns: u64,
    /// Connections shed because the process ran out of file descriptors.
    pub(crate) rejected_fd_limit: u64,
    /// Bytes read from clients.
    pub(crate) bytes_received: u64,
    /// Bytes written to clients.
    pub(crate) bytes_sent: u64,
    /// Datagrams received.
    pub(crate) datagrams_received: u64,
    /// Datagrams sent.
    pub(crate) datagrams_sent: u64,
    /// Replies dropped: the send queue was full or the peer could not be reached.
    pub(crate) datagrams_dropped: u64,
    /// Datagrams the kernel dropped because a UDP socket's receive queue was full (its
    /// `drops`, read when counters are asked for).
    pub(crate) kernel_dropped: u64,
    /// Connections closed because authentication failed or timed out.
    pub(crate) rejected_auth: u64,
    /// Connections closed at once because their address held `--max-conns-per-ip` already.
    pub(crate) rejected_per_ip: u64,
    /// Connections closed on a PROXY protocol listener without a valid header in time.
    pub(crate) rejected_proxy: u64,
    /// TLS connections closed before their handshake finished: it failed (a bad or refused
    /// ClientHello, a client certificate the CA did not sign), timed out, or was abandoned.
    pub(crate) rejected_tls: u64,
    /// Connections closed during shutdown with every reply they were owed written.
    pub(crate) drained: u64,
    /// Connections closed during shutdown still owed something: at the grace, or on an error.
    pub(crate) cut: u64,
}

/// The addresses that held the most connections when the process was last at `--max-conns`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Busiest {
    /// When.
    pub(crate) at: Instant,
    /// Addresses and their open connections, most first.
    pub(crate) addrs: Vec<(IpAddr, usize)>,
}

/// A per-service metric family: name, type, help, and how to read it.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ServiceCounters) -> u64,
);

/// Frames answered, by command and outcome: a short list searched from its most recent
/// entry, since one request costs one bump and a connection asks the same thing again and
/// again (a `BTreeMap` lookup cost the `files` ping about 10 ns in 490, perf).
#[derive(Debug, Clone, Default)]
pub(crate) struct FrameCounts(Vec<((&'static str, &'static str), u64)>);

impl FrameCounts {
    pub(crate) fn bump(&mut self, cmd: &'static str, outcome: &'static str, n: u64) {
        let same = |a: &str, b: &str| std::ptr::eq(a, b) || a == b;
        let hit = self
            .0
            .iter_mut()
            .rev()
            .find(|((c, o), _)| same(c, cmd) && same(o, outcome));
        match hit {
            Some((_, count)) => *count = count.saturating_add(n),
            None => self.0.push(((cmd, outcome), n)),
        }
    }

    /// Every frame counted, whatever its command and outcome.
    pub(crate) fn total(&self) -> u64 {
        self.0.iter().map(|(_, n)| *n).fold(0, u64::saturating_add)
    }

    /// Every count, sorted by command and outcome.
    pub(crate) fn sorted(&self) -> Vec<((&'static str, &'static str), u64)> {
        let mut all = self.0.clone();
        all.sort_unstable();
        all
    }
}

/// Every counter of one reactor.
#[derive(Debug, Clone, Default)]
pub(crate) struct Counters {
    /// Indexed by the position of the service in `ServiceKind::ALL`.
    pub(crate) services: [ServiceCounters; ServiceKind::ALL.len()],
    /// Turns of the event loop.
    pub(crate) loop_iterations: u64,
    /// Time spent outside the poll.
    pub(crate) loop_busy: Duration,
    /// Frames answered, by command and outcome (`ok` or the error code).
    pub(crate) frames: FrameCounts,
    /// Who held the most connections the last time this worker refused one at `--max-conns`.
    pub(crate) busiest: Option<Busiest>,
    /// Other workers that did not answer this one's `stats` or metrics request in time.
    pub(crate) stats_missing: u64,
    /// The chat bus's counters, when the room spans hosts (`[chat.bus]`).
    pub(crate) bus: Option<crate::service::redis_bus::BusCounters>,
}

impl Counters {
    /// The counters of one service.
    pub(crate) fn service(&mut self, kind: ServiceKind) -> &mut ServiceCounters {
        let i = ServiceKind::ALL
            .iter()
            .position(|k| *k == kind)
            .unwrap_or_default();
        // `i` is a position in ALL, and `services` has ALL.len() entries.
        &mut self.services[i]
    }

    /// Counts one answered frame.
    pub(crate) fn frame(&mut self, cmd: &'static str, outcome: &'static str) {
        self.frames.bump(cmd, outcome, 1);
    }

    /// Adds `other`'s counts to these (`stats` with several workers reports the sum).
    pub(crate) fn add(&mut self, other: &Counters) {
        for (mine, theirs) in self.services.iter_mut().zip(&other.services) {
            mine.add(theirs);
        }
        self.loop_iterations = self.loop_iterations.saturating_add(other.loop_iterations);
        self.loop_busy = self.loop_busy.saturating_add(other.loop_busy);
        self.stats_missing = self.stats_missing.saturating_add(other.stats_missing);
        if let Some(theirs) = &other.bus {
            self.bus.get_or_insert_default().add(theirs);
        }
        for ((cmd, outcome), n) in other.frames.sorted() {
            self.frames.bump(cmd, outcome, n);
        }
        // The table behind it spans the process: the latest worker's view is the one to show.
        if other.busiest.as_ref().map(|b| b.at) > self.busiest.as_ref().map(|b| b.at) {
            self.busiest.clone_from(&other.busiest);
        }
    }
}

impl ServiceCounters {
    fn add(&mut self, o: &ServiceCounters) {
        let pairs = [
            (&mut self.accepted, o.accepted),
            (&mut self.open, o.open),
            (&mut self.rejected_max_conns, o.rejected_max_conns),
            (&mut self.rejected_fd_limit, o.rejected_fd_limit),
            (&mut self.bytes_received, o.bytes_received),
            (&mut self.bytes_sent, o.bytes_sent),
            (&mut self.datagrams_received, o.datagrams_received),
            (&mut self.datagrams_sent, o.datagrams_sent),
            (&mut self.datagrams_dropped, o.datagrams_dropped),
            (&mut self.kernel_dropped, o.kernel_dropped),
            (&mut self.rejected_auth, o.rejected_auth),
            (&mut self.rejected_per_ip, o.rejected_per_ip),
            (&mut self.rejected_proxy, o.rejected_proxy),
            (&mut self.rejected_tls, o.rejected_tls),
            (&mut self.drained, o.drained),
            (&mut self.cut, o.cut),
        ];
        for (mine, theirs) in pairs {
            *mine = mine.saturating_add(theirs);
        }
    }
}

/// What a service knows of the workers: which one it runs on, and how many there are.
#[derive(Debug, Default)]
pub(crate) struct Peers {
    /// This reactor's worker number.
    pub(crate) worker: usize,
    /// Workers in the process (0 or 1: this one alone).
    pub(crate) workers: usize,
}

impl Peers {
    /// No other worker: `stats` and metrics are answered at once from this one's counters.
    pub(crate) fn alone(&self) -> bool {
        self.workers <= 1
    }
}

/// Every worker's counters as gathered for one `stats` or metrics request: this worker's own
/// and each other's as it answered (`reactor/workers.rs`), and the workers that did not answer
/// in time.
#[derive(Debug, Default)]
pub struct Gathered {
    /// Workers in the process.
    pub(crate) workers: usize,
    /// The counters of every worker that answered, this one included, by worker number.
    pub(crate) answered: Vec<(usize, Counters)>,
    /// Workers that did not answer in time, by number: their counters are not in the sums.
    pub(crate) missing: Vec<usize>,
    /// The process's memory and descriptors when the counters were gathered.
    pub(crate) process: crate::sys::process::ProcessStats,
}

impl Gathered {
    /// One worker alone: its own counters are everything.
    pub(crate) fn alone(worker: usize, own: &Counters) -> Gathered {
        Gathered {
            workers: 1,
            answered: vec![(worker, own.clone())],
            missing: Vec::new(),
            process: Default::default(),
        }
    }

    /// The `stats` body: every answering worker's counters added up, how many workers there
    /// are, which did not answer, and each worker's own counters.
    pub(crate) fn stats_json(&self) -> Value {
        let mut total = Counters::default();
        for (_, c) in &self.answered {
            total.add(c);
        }
        let per_worker: Vec<Value> = self
            .answered
            .iter()
            .map(|(w, c)| {
                let mut v = c.to_json_sparse();
                if let Some(map) = v.as_object_mut() {
                    map.insert("worker".into(), json!(w));
                }
                v
            })
            .collect();
        let mut v = total.to_json();
        if let Some(map) = v.as_object_mut() {
            map.insert("workers".into(), json!(self.workers.max(1)));
            map.insert("missing_workers".into(), json!(self.missing));
            map.insert("per_worker".into(), Value::Array(per_worker));
        }
        v
    }

    /// Every answering worker's series, and whether each worker answered.
    pub(crate) fn prometheus(&self) -> String {
        let all: Vec<(usize, &Counters)> = self.answered.iter().map(|(w, c)| (*w, c)).collect();
        let mut s = prometheus(&all);
        let name = "socklab_worker_answered";
        use std::fmt::Write;
        let _ = writeln!(
            s,
            "# HELP {name} Whether the worker's counters are in this scrape (0: it did not \
             answer in time).\n# TYPE {name} gauge"
        );
        for w in 0..self.workers.max(1) {
            let up = u8::from(!self.missing.contains(&w));
            let _ = writeln!(s, "{name}{{worker=\"{w}\"}} {up}");
        }
        s
    }
}

/// Every worker's counters in the Prometheus text exposition format: each family's `# HELP`
/// and `# TYPE` once, then one series per worker (label `worker`).
pub(crate) fn prometheus(workers: &[(usize, &Counters)]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let per_service: [Family; 8] = [
        (
            "socklab_connections_accepted_total",
            "counter",
            "Connections accepted.",
            |c| c.accepted,
        ),
        (
            "socklab_connections_open",
            "gauge",
            "Connections open now.",
            |c| c.open,
        ),
        (
            "socklab_bytes_received_total",
            "counter",
            "Bytes read from clients.",
            |c| c.bytes_received,
        ),
        (
            "socklab_bytes_sent_total",
            "counter",
            "Bytes written to clients.",
            |c| c.bytes_sent,
        ),
        (
            "socklab_datagrams_received_total",
            "counter",
            "Datagrams received.",
            |c| c.datagrams_received,
        ),
        (
            "socklab_datagrams_sent_total",
            "counter",
            "Datagrams sent.",
            |c| c.datagrams_sent,
        ),
        (
            "socklab_datagrams_dropped_total",
            "counter",
            "Replies dropped (queue full or peer unreachable), and datagrams udp-chat ignored (empty or not UTF-8).",
            |c| c.datagrams_dropped,
        ),
        (
            "socklab_datagrams_kernel_dropped_total",
            "counter",
            "Datagrams the kernel dropped because the UDP socket's receive queue was full (/proc/net/udp drops).",
            |c| c.kernel_dropped,
        ),
    ];
    for (name, kind, help, get) in per_service {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (w, counters) in workers {
            for (k, c) in ServiceKind::ALL.iter().zip(&counters.services) {
                let _ = writeln!(s, "{name}{{service=\"{k}\",worker=\"{w}\"}} {}", get(c));
            }
        }
    }
    let name = "socklab_connections_rejected_total";
    let _ = writeln!(
        s,
        "# HELP {name} Connections refused, by reason.\n# TYPE {name} counter"
    );
    for (w, counters) in workers {
        for (k, c) in ServiceKind::ALL.iter().zip(&counters.services) {
            for (reason, n) in [
                ("max_conns", c.rejected_max_conns),
                ("fd_limit", c.rejected_fd_limit),
                ("auth", c.rejected_auth),
                ("per_ip", c.rejected_per_ip),
                ("proxy", c.rejected_proxy),
                ("tls", c.rejected_tls),
            ] {
                let _ = writeln!(
                    s,
                    "{name}{{service=\"{k}\",worker=\"{w}\",reason=\"{reason}\"}} {n}"
                );
            }
        }
    }
    let name = "socklab_shutdown_connections_total";
    let _ = writeln!(
        s,
        "# HELP {name} Connections closed during shutdown: drained (every reply written) or \
         cut (still owed something at the grace).\n# TYPE {name} counter"
    );
    for (w, counters) in workers {
        for (k, c) in ServiceKind::ALL.iter().zip(&counters.services) {
            for (outcome, n) in [("drained", c.drained), ("cut", c.cut)] {
                let _ = writeln!(
                    s,
                    "{name}{{service=\"{k}\",worker=\"{w}\",outcome=\"{outcome}\"}} {n}"
                );
            }
        }
    }
    let name = "socklab_frames_total";
    let _ = writeln!(
        s,
        "# HELP {name} Frames answered, by command and outcome.\n# TYPE {name} counter"
    );
    for (w, counters) in workers {
        for ((cmd, outcome), n) in counters.frames.sorted() {
            let _ = writeln!(
                s,
                "{name}{{cmd=\"{cmd}\",outcome=\"{outcome}\",worker=\"{w}\"}} {n}"
            );
        }
    }
    let name = "socklab_busiest_address_connections";
    let _ = writeln!(
        s,
        "# HELP {name} Connections held by the addresses holding the most, when the worker last \
         refused one at --max-conns.\n# TYPE {name} gauge"
    );
    for (w, counters) in workers {
        for (addr, n) in counters.busiest.iter().flat_map(|b| &b.addrs) {
            let _ = writeln!(s, "{name}{{addr=\"{addr}\",worker=\"{w}\"}} {n}");
        }
    }
    let name = "socklab_loop_iterations_total";
    let _ = writeln!(
        s,
        "# HELP {name} Turns of the event loop.\n# TYPE {name} counter"
    );
    for (w, c) in workers {
        let _ = writeln!(s, "{name}{{worker=\"{w}\"}} {}", c.loop_iterations);
    }
    let name = "socklab_loop_busy_seconds_total";
    let _ = writeln!(
        s,
        "# HELP {name} Time spent outside the poll.\n# TYPE {name} counter"
    );
    for (w, c) in workers {
        let _ = writeln!(s, "{name}{{worker=\"{w}\"}} {}", c.loop_busy.as_secs_f64());
    }
    let name = "socklab_stats_missing_replies_total";
    let _ = writeln!(
        s,
        "# HELP {name} Other workers that did not answer a stats or metrics request in time.\n\
         # TYPE {name} counter"
    );
    for (w, c) in workers {
        let _ = writeln!(s, "{name}{{worker=\"{w}\"}} {}", c.stats_missing);
    }
    bus_prometheus(&mut s, workers);
    s
}

/// The chat bus's series, when it is configured.
fn bus_prometheus(s: &mut String, workers: &[(usize, &Counters)]) {
    use crate::service::redis_bus::BusCounters;
    use std::fmt::Write;
    type BusFamily = (
        &'static str,
        &'static str,
        &'static str,
        fn(&BusCounters) -> u64,
    );
    let families: [BusFamily; 7] = [
        (
            "socklab_chat_bus_up",
            "gauge",
            "1 while the worker's Redis connection is up and subscribed.",
            |b| b.up,
        ),
        (
            "socklab_chat_bus_published_total",
            "counter",
            "Chat events Redis took from this host.",
            |b| b.published,
        ),
        (
            "socklab_chat_bus_received_total",
            "counter",
            "Chat events from other hosts delivered here.",
            |b| b.received,
        ),
        (
            "socklab_chat_bus_rejected_total",
            "counter",
            "Messages on the channel that were not socklab's format or broke its rules (ignored).",
            |b| b.rejected,
        ),
        (
            "socklab_chat_bus_dropped_total",
            "counter",
            "Chat events never confirmed by Redis (past the backlog while down, or in flight when the connection was lost).",
            |b| b.dropped,
        ),
        (
            "socklab_chat_bus_reconnects_total",
            "counter",
            "Connections to Redis made again after a loss.",
            |b| b.reconnects,
        ),
        (
            "socklab_chat_bus_errors_total",
            "counter",
            "Errors Redis answered to the bus's commands.",
            |b| b.errors,
        ),
    ];
    if workers.iter().all(|(_, c)| c.bus.is_none()) {
        return;
    }
    for (name, kind, help, read) in families {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (w, c) in workers {
            if let Some(b) = &c.bus {
                let _ = writeln!(s, "{name}{{worker=\"{w}\"}} {}", read(b));
            }
        }
    }
}

impl Counters {
    /// Every counter as one JSON object (the `stats` command's body).
    pub(crate) fn to_json(&self) -> Value {
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
                    "rejected_per_ip": c.rejected_per_ip,
                    "rejected_proxy": c.rejected_proxy,
                    "rejected_tls": c.rejected_tls,
                    "bytes_received": c.bytes_received,
                    "bytes_sent": c.bytes_sent,
                    "datagrams_received": c.datagrams_received,
                    "datagrams_sent": c.datagrams_sent,
                    "datagrams_dropped": c.datagrams_dropped,
                    "datagrams_kernel_dropped": c.kernel_dropped,
                    "connections_drained": c.drained,
                    "connections_cut": c.cut,
                }),
            );
        }
        let frames: Vec<Value> = self
            .frames
            .sorted()
            .into_iter()
            .map(|((cmd, outcome), n)| json!({"cmd": cmd, "outcome": outcome, "count": n}))
            .collect();
        let busiest: Vec<Value> = self
            .busiest
            .iter()
            .flat_map(|b| &b.addrs)
            .map(|(addr, n)| json!({"addr": addr.to_string(), "connections": n}))
            .collect();
        json!({
            "services": services,
            "frames": frames,
            "busiest_addresses": busiest,
            "loop_iterations": self.loop_iterations,
            "loop_busy_seconds": self.loop_busy.as_secs_f64(),
            "stats_missing_replies": self.stats_missing,
            "chat_bus": self.bus.map(|b| json!({
                "up": b.up,
                "published": b.published,
                "received": b.received,
                "rejected": b.rejected,
                "dropped": b.dropped,
                "reconnects": b.reconnects,
                "errors": b.errors,
            })),
        })
    }

    /// `to_json` without the services that counted nothing (a worker's part of `stats`).
    fn to_json_sparse(&self) -> Value {
        let mut v = self.to_json();
        if let Some(services) = v.get_mut("services").and_then(Value::as_object_mut) {
            services.retain(|_, c| {
                c.as_object()
                    .is_some_and(|c| c.values().any(|n| n.as_u64().is_some_and(|n| n > 0)))
            });
        }
        v
    }
}
