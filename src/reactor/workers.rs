//! `--workers N`: N reactors on N threads. Each binds its own listeners with SO_REUSEPORT,
//! so the kernel spreads connections (and UDP senders) across them. They share nothing but
//! what must cross them: chat lines and counter reports go through channels, each followed by
//! a wake of the receiving reactor's `mio::Waker`; the `--max-conns` count is one atomic; the
//! chat room's nick table is one (see `ChatRoom`); so is the `files` store, whose temporaries
//! are numbered in one sequence.
//!
//! What runs on the first worker only: udp-chat and discovery (their state spans clients, and
//! a broadcast must be answered once), and Unix-socket listeners (a path has one socket).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::time::{Duration, Instant};

use mio::Waker;

use super::{BoundListener, Reactor, StartError};
use crate::addr::ListenAddr;
use crate::config::{ListenerConfig, ServerConfig};
use crate::kind::ServiceKind;
use crate::metrics::Counters;
use crate::service::auth::Secret;

/// How stale another worker's counters may be in `stats` and metrics.
const REPORT_EVERY: Duration = Duration::from_millis(100);

/// Messages read per wake before the loop turns again (the rest wait for the next turn).
const INBOX_BUDGET: usize = 1024;

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("cannot start worker {worker}: {source}")]
    Spawn { worker: usize, source: io::Error },
    #[error("the event loop of worker {worker} failed: {source}")]
    Loop { worker: usize, source: io::Error },
    #[error("worker {worker} panicked")]
    Panicked { worker: usize },
}

/// What one worker tells the others.
enum WorkerMsg {
    /// Lines for every chat member (formatted once by the member's worker).
    Chat(Arc<[u8]>),
    /// A worker's counters as of now.
    Counters {
        worker: usize,
        counters: Box<Counters>,
    },
}

/// One other worker: where to send, and how to wake it.
struct PeerLink {
    tx: Sender<WorkerMsg>,
    waker: Arc<Waker>,
}

/// A reactor's channels to the other workers.
struct Link {
    inbox: Receiver<WorkerMsg>,
    peers: Vec<PeerLink>,
    /// When the counters were last reported, and the loop turn they were taken at.
    last_report: Option<(Instant, u64)>,
    /// A report is owed (counters changed within REPORT_EVERY of the last one) by then.
    report_due: Option<Instant>,
}

impl Link {
    fn send(&self, msg: impl Fn() -> WorkerMsg) {
        for p in &self.peers {
            // A worker that has stopped (shutdown) no longer reads; nothing is lost that
            // anyone could still read.
            if p.tx.send(msg()).is_ok()
                && let Err(e) = p.waker.wake()
            {
                tracing::warn!("cannot wake another worker: {e}");
            }
        }
    }
}

/// What reaches this reactor from other threads: the waker, and the channels to the other
/// workers.
pub(super) struct Links {
    /// Wakes the poll from other threads: the disk thread, the other workers.
    pub(super) waker: Arc<Waker>,
    /// The channels to the other workers (none with one worker).
    workers: Option<Link>,
}

impl Links {
    /// No other worker yet.
    pub(super) fn new(waker: Arc<Waker>) -> Links {
        Links {
            waker,
            workers: None,
        }
    }
}

/// Stream connections open across every worker, so `--max-conns` bounds the process.
#[derive(Debug, Clone, Default)]
pub(super) struct OpenConns(Arc<AtomicUsize>);

impl OpenConns {
    /// Counts one more connection unless `max` are open already.
    pub(super) fn try_open(&self, max: usize) -> bool {
        self.0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n.saturating_add(1))
            })
            .is_ok()
    }

    /// Counts one connection closed.
    pub(super) fn close(&self) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(1))
            });
    }
}

impl Reactor {
    /// Sends chat lines to every other worker's members.
    pub(super) fn forward_chat(&self, bytes: &[u8]) {
        if let Some(link) = &self.links.workers {
            let shared: Arc<[u8]> = Arc::from(bytes);
            link.send(|| WorkerMsg::Chat(Arc::clone(&shared)));
        }
    }

    /// Takes what the other workers sent: chat lines for this worker's members, counters.
    pub(super) fn read_inbox(&mut self) {
        for _ in 0..INBOX_BUDGET {
            let Some(link) = &self.links.workers else {
                return;
            };
            match link.inbox.try_recv() {
                Ok(WorkerMsg::Chat(bytes)) => self.deliver_chat(&bytes, None),
                Ok(WorkerMsg::Counters { worker, counters }) => {
                    self.svc.peers.update(worker, *counters)
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            }
        }
        // More are waiting: come back after everyone else's turn.
        if let Err(e) = self.links.waker.wake() {
            tracing::warn!("cannot wake this worker: {e}");
        }
    }

    /// Reports this worker's counters to the others at most every REPORT_EVERY, and once
    /// more after the last change, so an idle worker's report is never staler than that.
    pub(super) fn report_counters(&mut self) {
        let Some(link) = &mut self.links.workers else {
            return;
        };
        let turn = self.svc.counters.loop_iterations;
        if let Some((at, reported)) = link.last_report {
            if reported == turn {
                return;
            }
            let due = at + REPORT_EVERY;
            if self.core.now < due {
                link.report_due = Some(due);
                return;
            }
        }
        let (worker, counters) = (self.svc.peers.worker, &self.svc.counters);
        link.send(|| WorkerMsg::Counters {
            worker,
            counters: Box::new(counters.clone()),
        });
        link.last_report = Some((self.core.now, turn));
        link.report_due = None;
    }

    /// When a counter report is owed, for the poll timeout.
    pub(super) fn report_due(&self) -> Option<Instant> {
        self.links.workers.as_ref().and_then(|l| l.report_due)
    }
}

/// What every worker after the first binds: the first worker's inet listeners on the ports
/// it got (so `:0` means the same port everywhere), without the first-worker-only services.
fn config_for_other_workers(first: &ServerConfig, bound: &[BoundListener]) -> ServerConfig {
    let listeners = first
        .listeners
        .iter()
        .zip(bound)
        .filter(|(l, _)| !matches!(l.service, ServiceKind::UdpChat | ServiceKind::Discovery))
        .filter_map(|(l, b)| {
            let ListenAddr::Inet(_) = l.addr else {
                return None;
            };
            let addr: SocketAddr = b.addr.parse().ok()?;
            Some(ListenerConfig {
                addr: ListenAddr::Inet(addr),
                ..l.clone()
            })
        })
        .collect();
    ServerConfig {
        listeners,
        ..first.clone()
    }
}

/// With several workers every inet socket needs SO_REUSEPORT, whatever the flags said.
fn with_reuseport(mut config: ServerConfig) -> ServerConfig {
    config.sockopts.reuseport = true;
    for o in config
        .listeners
        .iter_mut()
        .filter_map(|l| l.sockopts.as_mut())
    {
        o.reuseport = true;
    }
    config
}

/// Binds every worker's listeners, calls `on_bound` with what the first worker bound (once,
/// before any connection is served), then runs every worker until SIGINT or SIGTERM, which
/// each worker hears, stops them all.
pub fn serve(
    config: ServerConfig,
    secret: Option<Secret>,
    on_bound: impl FnOnce(&[BoundListener]),
) -> Result<(), ServeError> {
    let workers = config.workers.max(1);
    let config = if workers > 1 {
        with_reuseport(config)
    } else {
        config
    };
    let (first, bound) = Reactor::bind(config.clone(), secret.clone())?;
    let mut reactors = vec![first];
    if workers > 1 {
        let others = config_for_other_workers(&config, &bound);
        for _ in 1..workers {
            reactors.push(Reactor::bind(others.clone(), secret.clone())?.0);
        }
        link(&mut reactors);
    }
    on_bound(&bound);
    let mut rest = reactors.split_off(1);
    let mut handles = Vec::new();
    for (i, mut reactor) in rest.drain(..).enumerate() {
        let worker = i + 1;
        let handle = std::thread::Builder::new()
            .name(format!("socklab-worker-{worker}"))
            .spawn(move || reactor.run())
            .map_err(|source| ServeError::Spawn { worker, source })?;
        handles.push((worker, handle));
    }
    let mut result = match reactors.pop() {
        Some(mut first) => first
            .run()
            .map_err(|source| ServeError::Loop { worker: 0, source }),
        None => Ok(()),
    };
    for (worker, handle) in handles {
        let joined = match handle.join() {
            Ok(r) => r.map_err(|source| ServeError::Loop { worker, source }),
            Err(_) => Err(ServeError::Panicked { worker }),
        };
        if result.is_ok() {
            result = joined;
        }
    }
    result
}

/// Connects every reactor to every other: a channel each, the others' wakers, one chat
/// nick table, one connection count.
fn link(reactors: &mut [Reactor]) {
    let (txs, rxs): (Vec<_>, Vec<_>) = reactors.iter().map(|_| mpsc::channel()).unzip();
    let wakers: Vec<Arc<Waker>> = reactors
        .iter()
        .map(|r| Arc::clone(&r.links.waker))
        .collect();
    let Some((first, _)) = reactors.split_first() else {
        return;
    };
    let room = first.svc.room.share();
    let conns = first.admission.conns.clone();
    let per_addr = first.admission.per_addr.clone();
    // One store for every worker: its temporaries are numbered in one sequence.
    let shared = first.shared.clone();
    for (i, (reactor, inbox)) in reactors.iter_mut().zip(rxs).enumerate() {
        let peers = txs
            .iter()
            .zip(&wakers)
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, (tx, waker))| PeerLink {
                tx: tx.clone(),
                waker: Arc::clone(waker),
            })
            .collect();
        reactor.links.workers = Some(Link {
            inbox,
            peers,
            last_report: None,
            report_due: None,
        });
        reactor.svc.peers.worker = i;
        if i > 0 {
            reactor.svc.room = room.share();
            reactor.admission.conns = conns.clone();
            reactor.admission.per_addr = per_addr.clone();
            reactor.shared = shared.clone();
        }
    }
}
