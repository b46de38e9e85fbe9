//! One connection and a small simulation of the loop around it, over a scripted transport
//! (`transport::script`): the unit tests (`tests.rs`) and the `conn_path` fuzz target
//! (`fuzz.rs`, feature `fuzzing`) drive `drive` through it.
//!
//! The simulation (`Sim`) plays what `drive_conn` and the loop do for one connection, minus the
//! poll: an event per arrival of the peer's bytes (edge-triggered: bytes that arrived while the
//! connection was not reading raise no second event), a writable event when the peer makes room
//! after a write said `WouldBlock`, the events a re-registration reports for what is ready, the
//! ready list, and the disk thread (its results are delivered when the caller says, then the
//! connection is driven as `collect_disk_results` does).

use std::collections::VecDeque;
use std::time::Instant;

use mio::Interest;

use super::{Conn, TurnIo, Verdict, drive, wanted_interest};
use crate::config::Limits;
use crate::kind::ServiceKind;
use crate::metrics::Gathered;
use crate::reactor::ServiceState;
use crate::reactor::transport::Transport;
use crate::reactor::transport::script::Script;
use crate::service::files::DiskJob;
use crate::service::{Action, Event, StreamService};

/// One connection and the loop around it.
pub(crate) struct Sim {
    pub(crate) c: Conn,
    pub(crate) svc: ServiceState,
    pub(crate) scratch: Vec<u8>,
    pub(crate) reply: Vec<u8>,
    pub(crate) limits: Limits,
    /// Disk jobs handed to the "disk thread", not run yet.
    pub(crate) disk: VecDeque<DiskJob>,
    /// Events waiting for the next turn: readable, writable.
    pub(crate) events: (bool, bool),
    /// Why the connection was closed, once it is.
    pub(crate) closed: Option<String>,
    /// Drives so far (a bound against a loop that never settles).
    pub(crate) drives: usize,
    /// Reading was paused at some point (backpressure or the service's pause).
    pub(crate) saw_pause: bool,
    /// The most output pending after any drive that left the connection open.
    pub(crate) max_pending: usize,
    /// The largest partial request held after any drive that left the connection open.
    pub(crate) max_input: usize,
}

impl Sim {
    /// A connection of `service`, opened as `admit` opens it (`Event::Opened`, then a drive).
    #[cfg(test)]
    pub(crate) fn new(
        service: StreamService,
        kind: ServiceKind,
        script: Script,
        scratch: usize,
    ) -> Sim {
        let limits = Limits {
            read_budget: 64,
            pending_pause: 128,
            ..Limits::default()
        };
        Sim::with_limits(service, kind, script, scratch, limits)
    }

    pub(crate) fn with_limits(
        mut service: StreamService,
        kind: ServiceKind,
        script: Script,
        scratch: usize,
        limits: Limits,
    ) -> Sim {
        let mut svc = ServiceState::default();
        let mut out = Vec::new();
        let opened = Event::Opened {
            id: 1,
            authenticated: false,
        };
        service.on_event(opened, &mut out, &mut svc.ctx());
        let mut c = Conn::new(
            Transport::Scripted(Box::new(script)),
            kind,
            service,
            Instant::now(),
        );
        c.out.extend(&out);
        c.interest = Some(Interest::READABLE);
        let mut sim = Sim {
            c,
            svc,
            scratch: vec![0; scratch],
            reply: Vec::new(),
            limits,
            disk: VecDeque::new(),
            events: (false, false),
            closed: None,
            drives: 0,
            saw_pause: false,
            max_pending: 0,
            max_input: 0,
        };
        sim.drive(false, true);
        sim
    }

    pub(crate) fn script(&mut self) -> &mut Script {
        match &mut self.c.transport {
            Transport::Scripted(s) => s,
            Transport::Plain(_) | Transport::Tls(_) => {
                unreachable!("a simulated connection has a scripted transport")
            }
        }
    }

    pub(crate) fn interest(&self) -> Interest {
        self.c.interest.unwrap_or(Interest::READABLE)
    }

    /// One drive, settled as `drive_conn` settles it.
    pub(crate) fn drive(&mut self, readable: bool, writable: bool) {
        if self.closed.is_some() {
            return;
        }
        self.drives += 1;
        assert!(self.drives < 1_000_000, "the connection never settles");
        let mut io = TurnIo {
            scratch: &mut self.scratch,
            reply: &mut self.reply,
            svc: &mut self.svc,
        };
        let now = Instant::now();
        let (verdict, _, _) = drive(&mut self.c, readable, writable, &mut io, &self.limits, now);
        // What `run_actions` does: disk jobs go to the "disk thread", counters are answered as
        // one worker's; nothing here runs a command.
        while let Some(action) = self.c.service.poll_action() {
            match action {
                Action::Disk(job) => self.disk.push_back(job),
                Action::Wake(_) | Action::UpgradeToWsChat => {}
                Action::Counters => {
                    let gathered = Gathered::alone(0, &self.svc.counters);
                    let event = Event::Counters(&gathered);
                    self.c
                        .service
                        .on_event(event, self.c.out.tail(), &mut self.svc.ctx());
                }
                other => panic!("an unexpected action: {other:?}"),
            }
        }
        // The reactor copies chat lines out to the other members; this one has none.
        self.svc.others.clear();
        self.saw_pause |= self.c.read_paused;
        match verdict {
            Verdict::Close(reason) => {
                self.closed = Some(format!("{reason:?}"));
                self.c.transport.shutdown(&mut self.scratch);
                // What the reactor's close does: the service hears it (a chat member leaves).
                let mut ctx = self.svc.ctx();
                self.c
                    .service
                    .on_event(Event::Closing, self.c.out.tail(), &mut ctx);
                self.svc.others.clear();
            }
            Verdict::Open { more } => {
                // What an open connection holds (a closing one is about to drop it).
                self.max_pending = self.max_pending.max(self.c.out.pending());
                self.max_input = self.max_input.max(self.c.input.len());
                let want = wanted_interest(&self.c);
                if self.c.interest != Some(want) {
                    // epoll_ctl(MOD) reports at once what is ready for the new interest.
                    self.c.interest = Some(want);
                    let s = self.script();
                    let readable = !s.inbound.is_empty() || s.fin;
                    let writable = s.room > 0;
                    self.events.0 |= want.is_readable() && readable;
                    self.events.1 |= want.is_writable() && writable;
                }
                if more && !self.c.queued {
                    self.c.queued = true;
                }
            }
        }
    }

    /// The peer's bytes arrive: one event, when the connection is registered for reading.
    pub(crate) fn arrive(&mut self, bytes: &[u8]) {
        self.script().inbound.extend(bytes);
        self.events.0 |= self.interest().is_readable();
    }

    /// The peer shuts down its sending side.
    pub(crate) fn fin(&mut self) {
        self.script().fin = true;
        self.events.0 |= self.interest().is_readable();
    }

    /// The peer reads `n` bytes: room for the connection's writes, and an event if a write
    /// had found none.
    pub(crate) fn make_room(&mut self, n: usize) {
        let s = self.script();
        s.room = s.room.saturating_add(n);
        let blocked = std::mem::take(&mut s.write_blocked);
        self.events.1 |= blocked && self.interest().is_writable();
    }

    /// The disk thread finishes `n` jobs, in order; then the connection is driven.
    pub(crate) fn disk_done(&mut self, n: usize) {
        let n = n.min(self.disk.len());
        if n == 0 || self.closed.is_some() {
            return;
        }
        for job in self.disk.drain(..n) {
            let done = job()();
            self.c.service.on_event(
                Event::DiskDone(done),
                self.c.out.tail(),
                &mut self.svc.ctx(),
            );
        }
        self.drive(false, true);
    }

    /// One turn of the loop: the pending events, then the ready list.
    pub(crate) fn turn(&mut self) {
        let (readable, writable) = std::mem::take(&mut self.events);
        if readable || writable {
            // An event carries the hang-up once the peer's FIN is there (EPOLLRDHUP).
            let hup = self.script().fin && self.interest().is_readable();
            if hup {
                self.c.hup_seen = true;
            }
            self.drive(readable || hup, writable);
        }
        if self.c.queued {
            self.c.queued = false;
            self.drive(true, true);
        }
    }

    /// Turns until no event is pending and nothing is on the ready list.
    pub(crate) fn settle(&mut self) {
        while self.closed.is_none() && (self.events != (false, false) || self.c.queued) {
            self.turn();
        }
    }

    /// The peer reads everything and the disk catches up, until nothing moves any more.
    pub(crate) fn finish(&mut self) {
        loop {
            self.settle();
            if self.closed.is_some() {
                return;
            }
            if !self.disk.is_empty() {
                let n = self.disk.len();
                self.disk_done(n);
            } else if self.script().write_blocked {
                self.make_room(usize::MAX);
            } else {
                return;
            }
        }
    }

    pub(crate) fn sent(&mut self) -> Vec<u8> {
        self.script().sent.clone()
    }
}
