//! `--workers N`: N reactors on N threads. Each binds its own listeners with SO_REUSEPORT,
//! so the kernel spreads connections (and UDP senders) across them. They share nothing but
//! what must cross them: chat lines and counter requests and answers go through channels, each
//! followed by a wake of the receiving reactor's `mio::Waker`; the `--max-conns` count is one atomic; the
//! chat room's nick table is one (see `ChatRoom`); so is the `files` store, whose temporaries
//! are numbered in one sequence.
//!
//! `stats` and metrics are exact when asked: the worker whose connection asks sends every other
//! worker a request, parks the connection (its service takes no input, as while a disk job
//! runs), and resumes it when every worker has answered from its own loop, or when
//! `GATHER_TIMEOUT` passes: the workers still silent are named missing in the answer and
//! counted. Nothing waits on the loop: the answers arrive through the inbox like chat lines.
//!
//! What runs on the first worker only: udp-chat and discovery (their state spans clients, and
//! a broadcast must be answered once), and Unix-socket listeners (a path has one socket).

use crate::tls::server::TlsSet;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::time::{Duration, Instant};

use mio::{Token, Waker};

use super::dgram::refresh_kernel_drops;
use super::token::HISTORY;
use super::{BoundListener, Entry, Reactor, StartError};
use crate::addr::ListenAddr;
use crate::config::{ListenerConfig, ServerConfig};
use crate::kind::ServiceKind;
use crate::metrics::{Counters, Gathered};
use crate::service::Event;
use crate::service::auth::Secret;

/// How long a `stats` or metrics request waits for the other workers' counters: a worker
/// silent that long (stuck in a long turn, or stopped) is reported missing.
const GATHER_TIMEOUT: Duration = Duration::from_millis(200);

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
    /// Worker `from` asks for this worker's counters, for its gather `id`; with `drops`, the
    /// kernel's drops read anew first (the status page's samples do not show them).
    CountersWanted { from: usize, id: u64, drops: bool },
    /// A worker's counters as of the moment it read the request, for gather `id`.
    Counters {
        worker: usize,
        id: u64,
        counters: Box<Counters>,
    },
    /// A successor serves every socket now: stop and drain (`handover/`).
    HandedOver,
}

/// One other worker: its number, where to send, and how to wake it.
struct PeerLink {
    worker: usize,
    tx: Sender<WorkerMsg>,
    waker: Arc<Waker>,
}

impl PeerLink {
    /// Sends and wakes; false when the worker has stopped (shutdown) and no longer reads.
    fn send(&self, msg: WorkerMsg) -> bool {
        if self.tx.send(msg).is_err() {
            return false;
        }
        if let Err(e) = self.waker.wake() {
            tracing::warn!("cannot wake another worker: {e}");
        }
        true
    }
}

/// One `stats` or metrics request waiting for the other workers' counters.
#[derive(Debug)]
pub(super) struct Gather {
    /// Names this gather in the answers.
    id: u64,
    /// The connection that asked.
    token: Token,
    /// When the workers still silent are given up on.
    deadline: Instant,
    /// The counters of the workers that answered, by worker number.
    answered: Vec<(usize, Counters)>,
    /// The workers not heard from yet.
    waiting: Vec<usize>,
}

impl Gather {
    /// Takes worker `worker`'s answer; an answer not waited for (twice, or unknown) is dropped.
    fn answer(&mut self, worker: usize, counters: Counters) {
        if let Some(i) = self.waiting.iter().position(|w| *w == worker) {
            self.waiting.swap_remove(i);
            self.answered.push((worker, counters));
        }
    }

    /// Every worker answered, or the time is up.
    fn is_done(&self, now: Instant) -> bool {
        self.waiting.is_empty() || now >= self.deadline
    }

    /// Every worker's counters, `own` (worker `worker`'s, as of now) among them; the silent
    /// ones named missing; the process's memory and descriptors read if `with_process`.
    fn finish(
        mut self,
        worker: usize,
        own: &Counters,
        workers: usize,
        with_process: bool,
    ) -> Gathered {
        self.answered.push((worker, own.clone()));
        self.answered.sort_by_key(|(w, _)| *w);
        self.waiting.sort_unstable();
        Gathered {
            workers,
            answered: self.answered,
            missing: self.waiting,
            process: if with_process {
                crate::sys::process::read()
            } else {
                Default::default()
            },
        }
    }
}

/// A reactor's channels to the other workers.
struct Link {
    inbox: Receiver<WorkerMsg>,
    peers: Vec<PeerLink>,
    /// This worker's number.
    worker: usize,
    /// Requests for counters under way: at most one per parked connection.
    gathers: Vec<Gather>,
    /// The id of the next gather.
    next_gather: u64,
}

impl Link {
    fn send(&self, msg: impl Fn() -> WorkerMsg) {
        for p in &self.peers {
            // A worker that has stopped (shutdown) no longer reads; nothing is lost that
            // anyone could still read.
            p.send(msg());
        }
    }

    /// Answers worker `from`'s gather `id` with `counters`.
    fn answer(&self, from: usize, id: u64, counters: &Counters) {
        if let Some(p) = self.peers.iter().find(|p| p.worker == from) {
            let worker = self.worker;
            let counters = Box::new(counters.clone());
            p.send(WorkerMsg::Counters {
                worker,
                id,
                counters,
            });
        }
    }

    /// The gathers that are done by `now`, taken out.
    fn take_done(&mut self, now: Instant) -> Vec<Gather> {
        let (done, left) = std::mem::take(&mut self.gathers)
            .into_iter()
            .partition(|g| g.is_done(now));
        self.gathers = left;
        done
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

    /// Tells every other worker that a successor serves their sockets now.
    pub(super) fn tell_workers_handed_over(&self) {
        if let Some(link) = &self.links.workers {
            link.send(|| WorkerMsg::HandedOver);
        }
    }

    /// Takes what the other workers sent: chat lines for this worker's members, requests for
    /// this worker's counters (answered at once), and answers to this worker's requests.
    pub(super) fn read_inbox(&mut self) {
        let mut answered = false;
        for _ in 0..INBOX_BUDGET {
            let Some(link) = &mut self.links.workers else {
                return;
            };
            match link.inbox.try_recv() {
                Ok(WorkerMsg::Chat(bytes)) => self.deliver_chat(&bytes, None),
                Ok(WorkerMsg::HandedOver) => self.stop_after_handover(),
                Ok(WorkerMsg::CountersWanted { from, id, drops }) => {
                    if drops {
                        refresh_kernel_drops(&self.core.sources, &mut self.svc.counters);
                    }
                    if let Some(link) = &mut self.links.workers {
                        link.answer(from, id, &self.svc.counters);
                    }
                }
                Ok(WorkerMsg::Counters {
                    worker,
                    id,
                    counters,
                }) => {
                    // An answer that comes after its gather ended (timed out) is dropped.
                    if let Some(g) = link.gathers.iter_mut().find(|g| g.id == id) {
                        g.answer(worker, *counters);
                        answered = true;
                    }
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => {
                    if answered {
                        self.finish_gathers();
                    }
                    return;
                }
            }
        }
        if answered {
            self.finish_gathers();
        }
        // More are waiting: come back after everyone else's turn.
        if let Err(e) = self.links.waker.wake() {
            tracing::warn!("cannot wake this worker: {e}");
        }
    }

    /// Asks every other worker for its counters, for the connection `token`, which waits
    /// (`Awaiting::Counters`) until they have answered or GATHER_TIMEOUT has passed. With every
    /// other worker stopped, it is answered at the end of this turn; with one worker (whose
    /// services answer alone, without asking), at once.
    pub(super) fn gather_counters(&mut self, token: Token) {
        // A history sample shows no drops (and the drops tick reads them every second anyway).
        let drops = token != HISTORY;
        if drops {
            refresh_kernel_drops(&self.core.sources, &mut self.svc.counters);
        }
        let now = self.core.now;
        let Some(link) = &mut self.links.workers else {
            // Called from the connection's own drive (`run_actions`): the response is left in
            // its output, which that drive registers for writing; no drive within a drive.
            let mut gathered = Gathered::alone(0, &self.svc.counters);
            if token == HISTORY {
                self.record_history(&gathered);
                return;
            }
            gathered.process = crate::sys::process::read();
            if let Some(Entry::Conn(c)) = self.core.sources.get_mut(token) {
                c.service.on_event(
                    Event::Counters(&gathered),
                    c.out.tail(),
                    &mut self.svc.ctx(),
                );
            }
            return;
        };
        let id = link.next_gather;
        link.next_gather = link.next_gather.wrapping_add(1);
        let from = link.worker;
        // A worker that has stopped cannot answer: it is missing at once, not after a wait.
        let mut missing = Vec::new();
        let mut waiting = Vec::new();
        for p in &link.peers {
            if p.send(WorkerMsg::CountersWanted { from, id, drops }) {
                waiting.push(p.worker);
            } else {
                missing.push(p.worker);
            }
        }
        let deadline = if waiting.is_empty() {
            now
        } else {
            now + GATHER_TIMEOUT
        };
        waiting.extend(missing);
        link.gathers.push(Gather {
            id,
            token,
            deadline,
            answered: Vec::new(),
            waiting,
        });
    }

    /// Answers the gathers that are complete or out of time (called at the end of each turn,
    /// and when answers come).
    pub(super) fn finish_gathers(&mut self) {
        let now = self.core.now;
        let Some(link) = &mut self.links.workers else {
            return;
        };
        let (worker, workers) = (link.worker, link.peers.len().saturating_add(1));
        for g in link.take_done(now) {
            let token = g.token;
            let silent = g.waiting.len() as u64;
            if token == HISTORY {
                // A sample needs no process figures, and a silent worker is warned of by the
                // scrapes and stats requests, not once a second.
                let gathered = g.finish(worker, &self.svc.counters, workers, false);
                self.record_history(&gathered);
                continue;
            }
            if silent > 0 {
                tracing::warn!(
                    missing = ?g.waiting,
                    "workers did not answer a stats request within {GATHER_TIMEOUT:?}"
                );
                let c = &mut self.svc.counters;
                c.stats_missing = c.stats_missing.saturating_add(silent);
            }
            let gathered = g.finish(worker, &self.svc.counters, workers, true);
            self.answer_gather(token, &gathered);
        }
    }

    /// Hands the gathered counters to the connection that asked (if it is still there) and
    /// drives it: its response goes out, and its held input is decoded (`resume_held_input`).
    fn answer_gather(&mut self, token: Token, gathered: &Gathered) {
        let Some(Entry::Conn(c)) = self.core.sources.get_mut(token) else {
            return;
        };
        c.service
            .on_event(Event::Counters(gathered), c.out.tail(), &mut self.svc.ctx());
        self.drive_conn(token, false, true);
    }

    /// When the earliest gather gives up on the workers still silent, for the poll timeout.
    pub(super) fn gather_due(&self) -> Option<Instant> {
        let link = self.links.workers.as_ref()?;
        link.gathers.iter().map(|g| g.deadline).min()
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
    tls: TlsSet,
    on_bound: impl FnOnce(&[BoundListener]),
) -> Result<(), ServeError> {
    let workers = config.workers.max(1);
    let config = if workers > 1 {
        with_reuseport(config)
    } else {
        config
    };
    let (first, bound) = Reactor::bind(config.clone(), secret.clone(), tls.clone())?;
    let mut reactors = vec![first];
    if workers > 1 {
        let others = config_for_other_workers(&config, &bound);
        for _ in 1..workers {
            let tls = tls.for_other_workers();
            reactors.push(Reactor::bind(others.clone(), secret.clone(), tls)?.0);
        }
        link(&mut reactors);
    }
    if let Some(first) = reactors.first_mut() {
        first.adopt_leftovers();
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
    let workers = reactors.len();
    let (txs, rxs): (Vec<_>, Vec<_>) = reactors.iter().map(|_| mpsc::channel()).unzip();
    let wakers: Vec<Arc<Waker>> = reactors
        .iter()
        .map(|r| Arc::clone(&r.links.waker))
        .collect();
    let Some((first, _)) = reactors.split_first() else {
        return;
    };
    let room = first.svc.room.share_for(0);
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
            .map(|(j, (tx, waker))| PeerLink {
                worker: j,
                tx: tx.clone(),
                waker: Arc::clone(waker),
            })
            .collect();
        reactor.links.workers = Some(Link {
            inbox,
            peers,
            worker: i,
            gathers: Vec::new(),
            next_gather: 0,
        });
        reactor.svc.peers.worker = i;
        reactor.svc.peers.workers = workers;
        if i > 0 {
            reactor.svc.room = room.share_for(u16::try_from(i).unwrap_or(u16::MAX));
            reactor.admission.conns = conns.clone();
            reactor.admission.per_addr = per_addr.clone();
            reactor.shared = shared.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gather(waiting: Vec<usize>, deadline: Instant) -> Gather {
        Gather {
            id: 7,
            token: Token(1),
            deadline,
            answered: Vec::new(),
            waiting,
        }
    }

    fn counters(accepted: u64) -> Counters {
        let mut c = Counters::default();
        c.service(ServiceKind::Echo).accepted = accepted;
        c
    }

    #[test]
    fn a_gather_is_done_when_every_worker_answered_and_sums_them_all() {
        let now = Instant::now();
        let mut g = gather(vec![2, 1], now + GATHER_TIMEOUT);
        g.answer(2, counters(5));
        assert!(!g.is_done(now), "worker 1 has not answered");
        // Twice, or from a worker not asked: dropped.
        g.answer(2, counters(100));
        g.answer(9, counters(100));
        g.answer(1, counters(3));
        assert!(g.is_done(now));
        let got = g.finish(0, &counters(2), 3, true);
        let workers: Vec<usize> = got.answered.iter().map(|(w, _)| *w).collect();
        assert_eq!(workers, [0, 1, 2], "in worker order, this one included");
        assert!(got.missing.is_empty());
        let json = got.stats_json();
        assert_eq!(json["services"]["echo"]["connections_accepted"], 10);
        assert_eq!(json["workers"], 3);
    }

    #[test]
    fn the_chat_bus_counters_add_up_in_stats_and_metrics() {
        use crate::service::redis_bus::BusCounters;
        let now = Instant::now();
        let mut g = gather(vec![1], now + GATHER_TIMEOUT);
        let with_bus = |published, up| {
            let mut c = counters(0);
            c.bus = Some(BusCounters {
                published,
                received: 2,
                rejected: 1,
                dropped: 3,
                reconnects: 1,
                errors: 0,
                up,
            });
            c
        };
        g.answer(1, with_bus(5, 1));
        let got = g.finish(0, &with_bus(7, 0), 2, true);
        let json = got.stats_json();
        let bus = &json["chat_bus"];
        assert_eq!(bus["published"], 12);
        assert_eq!(bus["received"], 4);
        assert_eq!(bus["dropped"], 6);
        assert_eq!(bus["reconnects"], 2);
        assert_eq!(bus["up"], 1, "one worker of two is up");
        let text = got.prometheus();
        for line in [
            "socklab_chat_bus_published_total{worker=\"0\"} 7",
            "socklab_chat_bus_published_total{worker=\"1\"} 5",
            "socklab_chat_bus_up{worker=\"0\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        // Without a bus: no `chat_bus` and no series.
        let plain = gather(vec![], now).finish(0, &counters(1), 1, true);
        assert!(plain.stats_json()["chat_bus"].is_null());
        assert!(!plain.prometheus().contains("chat_bus"));
    }

    #[test]
    fn a_silent_worker_is_missing_once_the_time_is_up() {
        let now = Instant::now();
        let mut g = gather(vec![1, 3, 2], now + GATHER_TIMEOUT);
        g.answer(3, counters(4));
        assert!(!g.is_done(now + GATHER_TIMEOUT / 2));
        assert!(g.is_done(now + GATHER_TIMEOUT));
        let got = g.finish(0, &counters(1), 4, true);
        assert_eq!(got.missing, [1, 2]);
        let json = got.stats_json();
        assert_eq!(json["missing_workers"], serde_json::json!([1, 2]));
        assert_eq!(json["workers"], 4);
        assert_eq!(json["services"]["echo"]["connections_accepted"], 5);
        let text = got.prometheus();
        for (w, up) in [(0, 1), (1, 0), (2, 0), (3, 1)] {
            let line = format!("socklab_worker_answered{{worker=\"{w}\"}} {up}");
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        // A missing worker has no series but the one that says so.
        let silent: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("worker=\"1\""))
            .collect();
        assert_eq!(silent, ["socklab_worker_answered{worker=\"1\"} 0"]);
    }

    #[test]
    fn done_gathers_are_taken_and_the_rest_kept() {
        let now = Instant::now();
        let (tx, inbox) = mpsc::channel();
        drop(tx);
        let mut link = Link {
            inbox,
            peers: Vec::new(),
            worker: 0,
            gathers: vec![
                gather(vec![1], now + GATHER_TIMEOUT),
                gather(Vec::new(), now + GATHER_TIMEOUT),
                gather(vec![1], now),
            ],
            next_gather: 0,
        };
        assert_eq!(link.take_done(now).len(), 2);
        assert_eq!(link.gathers.len(), 1);
    }
}
