//! The server's event loop: the only server code that imports mio.
//!
//! One `Poll`, one `Sources` slab of listeners, connections, datagram sockets and child pipes.
//! A turn of the loop is: poll (the only blocking call) → walk the events, draining each ready
//! socket until `WouldBlock` or its budget → serve the ready list (sockets that still had work
//! when their budget ran out: no new edge will come for them) → fire due timers → close what
//! was marked dead during the walk. The poll sleeps, with no timeout, until an event: the
//! alarm's timerfd (`alarm.rs`) rings for the earliest timer. It does not sleep at all while the
//! ready list holds something.
//!
//! This file is the loop; each part of the work it dispatches has a file of its own, with the
//! `impl Reactor` methods of that part:
//! - `bind.rs`: binding and registering the listeners, the start-up report.
//! - `accept.rs`: accepting, admission against `--max-conns`, the EMFILE reserve.
//! - `stream.rs`: one stream connection: read, absorb, write, sendfile, its interest.
//! - `transport.rs`: what a connection's bytes pass through (plain today; TLS would be a
//!   variant): read, write, sendfile when the bytes go unchanged, shutdown.
//! - `dgram.rs`: datagram sockets: receive, answer, the bounded reply queue.
//! - `child.rs`: `exec`'s children: spawning, their pipes, reaping, the answer.
//! - `disk.rs`: the hashing and disk threads and the jobs the connections hand them.
//! - `chat.rs`: chat lines to the other members of this worker.
//! - `bus.rs`: the chat bus's connection to Redis, when the room spans hosts.
//! - `workers.rs`: `--workers N`: the threads and what crosses between them.
//! - `shutdown.rs`: signals, shutdown and its grace period.
//! - `conn.rs`, `timer.rs`, `alarm.rs`, `token.rs`: a connection's state, the deadlines, the
//!   timerfd that rings for them, the slab and its generation-checked tokens.

mod accept;
pub mod alarm;
mod bind;
mod bus;
mod chat;
pub mod child;
pub mod conn;
pub mod dgram;
pub mod disk;
pub(crate) mod handover;
mod history;
pub(crate) mod inherit;
mod prefetch;
mod shutdown;
mod stream;
pub mod timer;
mod tls;
pub mod token;
mod transport;
mod wake;
pub mod workers;

pub use bind::{BoundListener, StartError};

use std::io;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};

use crate::config::ServerConfig;
use crate::metrics::{Counters, Peers};
use crate::service::chat::ChatRoom;
use crate::service::files::DiskDone;
use crate::service::status_page::history::History;
use crate::service::{Action, Ctx, Event, Peer, Shared};

use accept::{Admission, Listener};
use alarm::Alarm;
use child::{Children, Pipe};
use conn::Conn;
use dgram::DgramEndpoint;
use disk::DiskThreads;
use shutdown::Shutdown;
#[cfg(feature = "fuzzing")]
pub use stream::fuzz::fuzz_conn_path;
use stream::stop_input;
use timer::{TimerKind, Timers};
use token::{ALARM, BUS, CONTROL, SIGNAL, Sources, WAKER};
use workers::Links;

/// Everything that lives in the slab.
#[derive(Debug)]
enum Entry {
    Listener(Listener),
    Conn(Conn),
    Dgram(DgramEndpoint),
    Pipe(Pipe),
    /// A connection on a PROXY protocol listener waiting for its header (`accept/proxied.rs`).
    Preamble(accept::proxied::Preamble),
}

/// The single-threaded server. Its state is grouped by the part that owns it: every part may
/// touch `core` and read `config`; the others belong to the part named beside them.
pub struct Reactor {
    /// The poll, the slab, the lists and the clock of the turn, the timers.
    core: Core,
    /// The buffers one drive borrows (`stream.rs`, `dgram.rs`, `child.rs`).
    bufs: Buffers,
    /// Limits and options.
    config: ServerConfig,
    /// What the stream services may touch besides their own connection.
    svc: ServiceState,
    /// What the stream services share (the `files` data directory).
    shared: Shared,
    /// Connection counts, the EMFILE reserve, the secret (`accept.rs`).
    admission: Admission,
    /// Commands of `exec` under way (`child.rs`).
    children: Children,
    /// The threads that hash, write and commit uploads (only when `files` runs; `disk.rs`).
    disk: Option<DiskThreads<DiskDone>>,
    /// The waker and the channels to the other workers (`workers.rs`).
    links: Links,
    /// The signals and what shutting down needs (`shutdown.rs`).
    shutdown: Shutdown,
    /// The control socket: reload and hand-over of the listeners (`handover/`).
    control: handover::Control,
    /// The chat bus's connection to Redis (`bus.rs`), when the room spans hosts.
    bus: Option<bus::BusLink>,
}

/// What every part touches: the poll, the slab of sources, the lists and the clock of the
/// current turn, the timers.
struct Core {
    /// The poll: its `poll` is the only blocking call on this thread.
    poll: Poll,
    /// Every socket the server owns.
    sources: Sources<Entry>,
    /// Sources whose budget ran out with work left; served before the next sleep.
    ready: Vec<Token>,
    /// Connections to close once the event walk is over.
    to_close: Vec<Token>,
    /// Idle checks, accept retries, the shutdown deadline.
    timers: Timers,
    /// Rings for the earliest of those (and a counter gather's timeout), so the poll sleeps with no
    /// timeout of its own.
    alarm: Alarm,
    /// The time of the current turn, read once after each poll.
    now: Instant,
}

/// The reactor's buffers, lent to one drive at a time.
struct Buffers {
    /// The one read buffer for every socket: idle connections hold none of their own.
    scratch: Vec<u8>,
    /// Service output before it is known whether the socket takes it all.
    reply: Vec<u8>,
    /// Where the current datagram's reply goes.
    targets: Vec<Peer>,
}

impl Reactor {
    /// Runs until SIGINT or SIGTERM, then drains pending output for the grace period.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        // When the last turn ended: what the next deadline is compared with before sleeping.
        let mut turn_end = Instant::now();
        self.start_bus();
        self.kernel_drops_tick();
        self.history_tick();
        loop {
            let timeout = if self.core.ready.is_empty() {
                self.set_alarm(turn_end)
            } else {
                Some(Duration::ZERO)
            };
            match self.core.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            self.core.now = Instant::now();
            self.svc.counters.loop_iterations = self.svc.counters.loop_iterations.saturating_add(1);
            self.walk_events(&events);
            self.serve_ready();
            self.fire_timers();
            self.close_dead();
            self.pump_bus();
            turn_end = Instant::now();
            self.svc.counters.loop_busy += turn_end.saturating_duration_since(self.core.now);
            self.finish_gathers();
            if let Some(deadline) = self.shutdown.deadline {
                self.control_at_shutdown();
                if self.admission.open == 0 && self.admission.waiting == 0 {
                    tracing::info!("every connection is closed; exiting");
                    self.finish_shutdown();
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    tracing::warn!(
                        open = self.admission.open,
                        "shutdown grace period over; closing the connections left"
                    );
                    self.finish_shutdown();
                    return Ok(());
                }
            }
        }
    }

    /// Arms the alarm for the earliest deadline (a timer or a counter gather) and returns
    /// the poll timeout: none, or zero when that deadline had passed by the end of the turn.
    fn set_alarm(&mut self, turn_end: Instant) -> Option<Duration> {
        let next = match (self.core.timers.next_deadline(), self.gather_due()) {
            (Some(t), Some(r)) => Some(t.min(r)),
            (t, r) => t.or(r),
        };
        let deadline = next?;
        if deadline <= turn_end {
            return Some(Duration::ZERO);
        }
        match self.core.alarm.ring_by(deadline, Instant::now) {
            Ok(()) => None,
            Err(e) => {
                // Not expected (the arguments are valid); the poll's own timeout still works.
                tracing::warn!("cannot arm the alarm timerfd: {e}");
                Some(deadline.saturating_duration_since(Instant::now()))
            }
        }
    }

    /// Serves the poll's events in order, each connection's slot prefetched two events ahead
    /// and what it points to one event ahead (`prefetch.rs`).
    fn walk_events(&mut self, events: &Events) {
        let mut one_ahead = events.iter().skip(1);
        let mut two_ahead = events.iter().skip(2);
        if let Some(second) = events.iter().nth(1) {
            self.core.sources.prefetch(second.token());
        }
        for ev in events.iter() {
            if let Some(later) = two_ahead.next() {
                self.core.sources.prefetch(later.token());
            }
            if let Some(next) = one_ahead.next() {
                self.prefetch_source(next.token());
            }
            // Errors and hang-ups are delivered to both sides, so the read or write that
            // follows sees them and the connection is closed through the normal path.
            let hup = ev.is_read_closed() || ev.is_error();
            let readable = ev.is_readable() || hup;
            let writable = ev.is_writable() || ev.is_write_closed() || ev.is_error();
            if hup && let Some(Entry::Conn(c)) = self.core.sources.get_mut(ev.token()) {
                c.hup_seen = true;
            }
            self.dispatch(ev.token(), readable, writable);
        }
    }

    /// Brings the state the connection behind `token` points to into the cache while the
    /// event before it is served; its slot was asked for an event earlier (`prefetch.rs`).
    fn prefetch_source(&self, token: Token) {
        if let Some(Entry::Conn(c)) = self.core.sources.get(token) {
            c.transport.prefetch();
            prefetch::service(&c.service);
        }
    }

    fn dispatch(&mut self, token: Token, readable: bool, writable: bool) {
        if token == SIGNAL {
            self.on_signals();
            self.check_successor();
            return;
        }
        if token == WAKER {
            self.collect_disk_results();
            self.read_inbox();
            return;
        }
        if token == ALARM {
            // What is due fires after the event walk, as on any turn.
            self.core.alarm.rang();
            return;
        }
        match self.core.sources.get(token) {
            Some(Entry::Listener(_)) => self.accept_all(token),
            Some(Entry::Conn(_)) => self.drive_conn(token, readable, writable),
            Some(Entry::Dgram(_)) => self.drive_dgram(token, readable, writable),
            Some(Entry::Pipe(_)) => self.read_pipe(token),
            Some(Entry::Preamble(_)) => self.read_proxy_header(token),
            // The control socket's tokens are outside the slab's keys: looked for only here, so
            // that the events of the sockets that serve cost nothing more.
            None if token == CONTROL || handover::conn_slot(token).is_some() => {
                self.on_control(token)
            }
            None if token == BUS => self.drive_bus(),
            // A stale event for a source closed earlier: its slot is empty or reused.
            None => {}
        }
    }

    /// Serves the sources whose budget ran out last turn. Those that run out again go on the
    /// list for the next turn, so one busy socket cannot keep this loop from sleeping or
    /// others from their turn.
    fn serve_ready(&mut self) {
        let ready = std::mem::take(&mut self.core.ready);
        for token in ready {
            match self.core.sources.get_mut(token) {
                Some(Entry::Listener(l)) => {
                    l.queued = false;
                    self.accept_all(token);
                }
                Some(Entry::Conn(c)) => {
                    c.queued = false;
                    self.drive_conn(token, true, true);
                }
                Some(Entry::Dgram(d)) => {
                    d.queued = false;
                    self.drive_dgram(token, true, true);
                }
                Some(Entry::Pipe(p)) => {
                    p.queued = false;
                    self.read_pipe(token);
                }
                None if token == BUS => self.drive_bus(),
                Some(Entry::Preamble(_)) | None => {}
            }
        }
    }

    fn fire_timers(&mut self) {
        while let Some(kind) = self.core.timers.pop_due(self.core.now) {
            match kind {
                TimerKind::Idle(token) => self.check_idle(token),
                TimerKind::Request(token) => self.check_request(token),
                TimerKind::AuthTimeout(token) => self.check_auth(token),
                TimerKind::ExecDeadline(id) => self.exec_deadline(id),
                TimerKind::ExecPipeGrace(id) => self.exec_pipe_grace(id),
                TimerKind::OrphanSweep => crate::sys::contain::sweep_again(),
                TimerKind::AcceptRetry(token) => self.accept_all(token),
                TimerKind::ProxyHeader(token) => self.proxy_header_deadline(token),
                TimerKind::TlsHandshake(token) => self.tls_handshake_deadline(token),
                TimerKind::Wake(token) => self.wake_service(token),
                TimerKind::ShutdownGrace => {}
                TimerKind::Linger(token) => self.linger_over(token),
                TimerKind::Watchdog => self.watchdog(),
                TimerKind::Control => self.control_timers(),
                TimerKind::BusTick => self.bus_tick(),
                TimerKind::BusRetry => self.bus_retry(),
                TimerKind::BusDeadline(attempt) => self.bus_deadline(attempt),
                TimerKind::KernelDrops => self.kernel_drops_tick(),
                TimerKind::History => self.history_tick(),
            }
        }
        // Entries of closed connections wait in the heap until due; compact when they
        // outnumber the live ones, so churn cannot grow the heap.
        if self.core.timers.len() > 2 * self.core.sources.len() + 1024 {
            let sources = &self.core.sources;
            self.core.timers.retain(|k| match k {
                TimerKind::Idle(t)
                | TimerKind::Request(t)
                | TimerKind::AcceptRetry(t)
                | TimerKind::ProxyHeader(t)
                | TimerKind::TlsHandshake(t)
                | TimerKind::Wake(t)
                | TimerKind::AuthTimeout(t)
                | TimerKind::Linger(t) => sources.get(*t).is_some(),
                TimerKind::ShutdownGrace
                | TimerKind::Watchdog
                | TimerKind::Control
                | TimerKind::BusTick
                | TimerKind::BusRetry
                | TimerKind::BusDeadline(_)
                | TimerKind::KernelDrops
                | TimerKind::History
                | TimerKind::ExecDeadline(_)
                | TimerKind::ExecPipeGrace(_)
                | TimerKind::OrphanSweep => true,
            });
        }
    }

    /// A client that has not answered the challenge in time fails it.
    fn check_auth(&mut self, token: Token) {
        let Some(Entry::Conn(c)) = self.core.sources.get_mut(token) else {
            return;
        };
        if c.dead || c.gate.is_none() {
            return;
        }
        tracing::info!(service = %c.kind, "authentication timed out (--auth-timeout)");
        c.gate = None;
        c.service
            .on_event(Event::AuthFailed, c.out.tail(), &mut self.svc.ctx());
        stop_input(c);
        let c = self.svc.counters.service(c.kind);
        c.rejected_auth = c.rejected_auth.saturating_add(1);
        self.drive_conn(token, false, true);
    }

    /// Closes a connection idle past its timeout (`--handshake-timeout` until it has been
    /// served, then `--idle-timeout`). Its service may say why first (a chat member is told):
    /// then input stops, the goodbye is written, and the connection closes once it has gone,
    /// or at the next check, `IDLE_GOODBYE` later, whatever happened.
    fn check_idle(&mut self, token: Token) {
        let Some(Entry::Conn(c)) = self.core.sources.get_mut(token) else {
            return;
        };
        if c.dead {
            return;
        }
        let limit = idle_limit(&self.config.limits, c.served && c.gate.is_none());
        let Some(limit) = limit.filter(|_| !c.idle_closing) else {
            if c.idle_closing {
                c.dead = true;
                self.core.to_close.push(token);
            }
            return;
        };
        let due = c.last_active + limit;
        if due > self.core.now {
            self.core.timers.push(due, TimerKind::Idle(token));
            return;
        }
        let idle = self.core.now.saturating_duration_since(c.last_active);
        tracing::debug!(
            service = %c.kind,
            served = c.served,
            "closing an idle connection (--idle-timeout or --handshake-timeout)"
        );
        // A draining connection is told at its end, once (`shutdown.rs`).
        if c.gate.is_none() && c.drain.is_none() {
            c.service.on_idle_close(idle, c.out.tail());
        }
        if !c.owes_output() {
            c.dead = true;
            self.core.to_close.push(token);
            return;
        }
        c.idle_closing = true;
        stop_input(c);
        self.core
            .timers
            .push(self.core.now + IDLE_GOODBYE, TimerKind::Idle(token));
        self.drive_conn(token, false, true);
    }

    /// Closes a connection whose request has not arrived whole within `--request-timeout` of
    /// its first byte (a slowloris); a request that ended in time lets a later one run its own.
    fn check_request(&mut self, token: Token) {
        let Some(Entry::Conn(c)) = self.core.sources.get_mut(token) else {
            return;
        };
        c.request_timer = false;
        let (Some(limit), Some(since), false) =
            (self.config.limits.request_timeout, c.request_since, c.dead)
        else {
            return;
        };
        let due = since + limit;
        if due > self.core.now {
            c.request_timer = true;
            self.core.timers.push(due, TimerKind::Request(token));
            return;
        }
        let kind = c.kind;
        c.dead = true;
        self.core.to_close.push(token);
        if let Some(total) = self.admission.warn_slow.hit(self.core.now, 1) {
            tracing::info!(
                service = %kind,
                "closed {total} connection(s) whose request was not whole {}s after its first \
                 byte (--request-timeout)",
                limit.as_secs_f64()
            );
        }
    }

    /// Does the work a connection's service asked for, `first` and then the rest in the order
    /// asked (`poll_action`): disk jobs go to the disk threads, commands are started. Called
    /// after a drive whose service asked for something.
    fn run_actions(&mut self, token: Token, first: Action) {
        let mut next = Some(first);
        while let Some(action) = next {
            match action {
                Action::Disk(job) => self.submit_disk_job(token, job),
                Action::Exec(req) => self.start_exec(token, req),
                Action::Counters => self.gather_counters(token),
                Action::Wake(after) => {
                    let at = self.core.now + after;
                    self.core.timers.push(at, TimerKind::Wake(token));
                }
                Action::UpgradeToWsChat => self.upgrade_to_ws_chat(token),
            }
            next = match self.core.sources.get_mut(token) {
                Some(Entry::Conn(c)) if !c.dead => c.service.poll_action(),
                _ => None,
            };
        }
    }

    /// Closes the connections marked during the walk: their slots are freed only now, so no
    /// event of this batch can land on a successor.
    fn close_dead(&mut self) {
        // Leave notices can drop further members that do not read: repeat until none is left.
        while !self.core.to_close.is_empty() {
            for token in std::mem::take(&mut self.core.to_close) {
                if let Some(Entry::Conn(mut c)) = self.core.sources.remove(token) {
                    // A command of a client that left is killed; it is still reaped.
                    let mut sweep = false;
                    for r in self.children.running.values().filter(|r| r.conn == token) {
                        sweep |= r.kill();
                    }
                    if sweep {
                        self.sweep_later();
                    }
                    c.transport.shutdown(&mut self.bufs.scratch);
                    self.admission.open = self.admission.open.saturating_sub(1);
                    self.admission.release(c.peer_ip);
                    let counters = self.svc.counters.service(c.kind);
                    counters.open = counters.open.saturating_sub(1);
                    self.count_drain_close(&c);
                    let mut ctx = self.svc.ctx();
                    c.service.on_event(Event::Closing, c.out.tail(), &mut ctx);
                    if !self.svc.others.is_empty() {
                        self.deliver_to_others(token);
                    }
                }
            }
        }
        // A chat member that was still reading may have gone: the others' goodbyes wait no more.
        self.release_chat_byes();
    }
}

/// How long an idle connection's goodbye (a chat member's reason line) may take to go out
/// before the connection is closed anyway.
const IDLE_GOODBYE: Duration = Duration::from_secs(1);

/// The idle timeout of a connection: `--idle-timeout` once it has been `served`, before that
/// the shorter of it and `--handshake-timeout`; `None`: never.
fn idle_limit(limits: &crate::config::Limits, served: bool) -> Option<Duration> {
    match (served, limits.handshake_timeout, limits.idle_timeout) {
        (true, _, idle) => idle,
        (false, Some(h), Some(i)) => Some(h.min(i)),
        (false, h, i) => h.or(i),
    }
}

/// What the stream services may touch besides their own connection, lent to them as a `Ctx`.
#[derive(Default)]
struct ServiceState {
    /// Counters the services update (frames) and report (`stats`).
    counters: Counters,
    /// The chat room of this reactor.
    room: ChatRoom,
    /// Chat lines a member produced for the others, delivered after its drive.
    others: Vec<u8>,
    /// This worker's number and how many there are.
    peers: Peers,
    /// The status page's last five minutes of totals (with a metrics listener).
    history: History,
}

impl ServiceState {
    /// What a service may touch, borrowed from this state.
    fn ctx(&mut self) -> Ctx<'_> {
        Ctx {
            counters: &mut self.counters,
            room: &mut self.room,
            others: &mut self.others,
            peers: &self.peers,
            history: &self.history,
        }
    }
}
