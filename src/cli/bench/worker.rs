//! One load-generating thread of `socklab bench`: its own mio `Poll` and its share of the
//! connections.
//!
//! Closed loop (no `--rate`): every connection keeps `depth` requests in flight; each reply
//! sends the next request at once, and latency runs from that send to the reply.
//! Open loop (`--rate`): the thread's requests are scheduled at fixed times, dealt round-robin
//! over its connections; a request goes out when it is due and its connection has fewer than
//! `depth` in flight, and latency runs from the *scheduled* time, so a slow server cannot hide
//! its stalls by slowing the generator down (coordinated omission).
//!
//! A connection the server closes (or resets) is counted as an error and reconnected, unless
//! it never got a single reply since it was opened (then the server refuses service: fatal).
//! A connection with requests in flight and no bytes moving for `timeout` is fatal too, so a
//! stuck server ends the run with an error instead of a hang.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::{Events, Interest, Poll, Registry, Token};

use super::BenchError;
use super::reply::ReplyParser;
use crate::addr::ListenAddr;
use crate::client::{NoAnswer, Stall};
use crate::service::auth::Secret;
use crate::sys::timerfd::TimerFd;
use crate::tls::client::ClientTls;

use super::stream::{BenchStream, open};

/// The highest latency the histogram tells apart (longer ones are recorded as this): 100 s.
const MAX_LATENCY_NS: u64 = 100_000_000_000;

/// How often, at least, the loop wakes up to check the clock, the timeouts and the stop flag.
const TICK: Duration = Duration::from_millis(50);

/// Bytes read from a socket at a time.
const READ_BUF: usize = 64 * 1024;

/// The token of the rate timer (connections use their index).
const TIMER: Token = Token(usize::MAX);

/// What kind of replies to expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// Replies as long as the request.
    Raw,
    /// One reply per `\n`.
    Line,
    /// Files-protocol frames.
    Frame,
}

/// What one thread does: the same for every thread but its connection count and rate.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The server.
    pub addr: ListenAddr,
    /// The bytes of one request.
    pub request: Vec<u8>,
    /// How replies are delimited.
    pub kind: ReplyKind,
    /// Connections this thread opens.
    pub conns: usize,
    /// Requests in flight per connection at most.
    pub depth: usize,
    /// This thread's share of the open-loop request rate (requests per second), if any.
    pub rate: Option<f64>,
    /// Time before the measured window.
    pub warmup: Duration,
    /// Length of the measured window.
    pub duration: Duration,
    /// Longest wait for progress on a connection with requests in flight.
    pub timeout: Duration,
    /// The secret for a server that asks for authentication.
    pub secret: Option<Secret>,
    /// Whether the server challenges, once the first connection (of any thread) learned it:
    /// later connections then wait their whole timeout for the challenge, or not at all.
    pub challenges: Arc<OnceLock<bool>>,
    /// Each request on a connection of its own: connect, request, reply, close (TCP_CRR).
    pub new_conn_per_request: bool,
    /// Speak TLS (with --new-conn-per-request, a full handshake per request).
    pub tls: Option<ClientTls>,
    /// Whether the server chose TLS 1.2, once the first TLS connection learned it: later
    /// connections then go to rustls's buffered connection directly.
    pub tls12: Arc<OnceLock<bool>>,
}

/// State shared by the threads and the main thread.
#[derive(Debug)]
pub struct Shared {
    /// Set to make every thread stop (a fatal error elsewhere, or the end).
    pub stop: AtomicBool,
    /// Replies received so far by all threads, warm-up included (for the progress line).
    pub replies: AtomicU64,
    /// Every thread and the main thread meet here once all connections are open.
    pub start: Barrier,
    /// Ctrl-C: the window ends now, and what was measured is reported.
    pub interrupted: AtomicBool,
}

/// What one thread measured in its window.
#[derive(Debug)]
pub struct Outcome {
    /// Latency of every reply received in the window, in nanoseconds.
    pub hist: Histogram<u64>,
    /// Replies received in the window.
    pub requests: u64,
    /// Request bytes written in the window.
    pub bytes_out: u64,
    /// Reply bytes read in the window.
    pub bytes_in: u64,
    /// Connections the server closed or reset (warm-up included).
    pub connection_errors: u64,
    /// Replies that say the request failed (frame mode `"ok": false`), warm-up included.
    pub error_replies: u64,
    /// Connections opened again after a failure.
    pub reconnects: u64,
    /// Connections opened for a request each (`--new-conn-per-request`), in the window.
    pub connects: u64,
    /// The window as it was measured: shorter than planned when interrupted.
    pub window: Duration,
}

/// A connected stream: the socket, or TLS over it.
type Stream = BenchStream;

/// One connection and its requests.
#[derive(Debug)]
struct Conn {
    /// The socket.
    stream: Stream,
    /// Request bytes not yet written start at `out_pos`.
    out: Vec<u8>,
    /// How much of `out` has been written.
    out_pos: usize,
    /// Send (or, with --rate, scheduled) times of the requests awaiting replies, oldest first.
    in_flight: VecDeque<Instant>,
    /// Requests issued on this connection since the start (its place in the rate schedule).
    issued: u64,
    /// Parser of the replies.
    parser: ReplyParser,
    /// Last time bytes moved, or a request was issued on an idle connection.
    last_progress: Instant,
    /// Whether a reply came since the connection was opened.
    answered: bool,
    /// Bytes written on this connection.
    sent: u64,
    /// Bytes read on this connection.
    received: u64,
}

impl Conn {
    /// A fresh connection state around `stream`.
    fn new(stream: Stream, plan: &Plan, now: Instant, issued: u64) -> Conn {
        Conn {
            stream,
            out: Vec::new(),
            out_pos: 0,
            in_flight: VecDeque::with_capacity(plan.depth),
            issued,
            parser: new_parser(plan),
            last_progress: now,
            answered: false,
            sent: 0,
            received: 0,
        }
    }

    /// It has had a reply and owes none: with a connection per request, its work is done.
    fn answered_all(&self) -> bool {
        self.answered && self.in_flight.is_empty()
    }
}

/// A parser for the plan's replies.
fn new_parser(plan: &Plan) -> ReplyParser {
    match plan.kind {
        ReplyKind::Raw => ReplyParser::raw(plan.request.len() as u64),
        ReplyKind::Line => ReplyParser::line(),
        ReplyKind::Frame => ReplyParser::frame(),
    }
}

/// Why a connection stopped working.
enum ConnFailure {
    /// The server closed it (end of file) or reset it: reconnect.
    Lost(String),
    /// Something that ends the whole run.
    Fatal(BenchError),
}

/// The state of one thread.
struct Worker<'a> {
    /// What to do.
    plan: &'a Plan,
    /// Shared flags and counters.
    shared: &'a Shared,
    /// This thread's poll.
    poll: Poll,
    /// The connections; a connection's index is its token.
    conns: Vec<Conn>,
    /// Read buffer shared by the connections.
    buf: Vec<u8>,
    /// What has been measured.
    out: Outcome,
    /// Start of the warm-up (and of the rate schedule).
    t0: Instant,
    /// Start of the measured window.
    win_start: Instant,
    /// End of the measured window (and of the run).
    win_end: Instant,
    /// With --rate: how many of the thread's scheduled requests have been released.
    released: u64,
    /// Replies not yet added to the shared progress counter.
    unreported: u64,
    /// With --rate: the timer that wakes the poll when the next request is due (a poll
    /// timeout is rounded up to whole milliseconds, which would add up to 1 ms to every
    /// latency measured from a scheduled time).
    timer: Option<TimerFd>,
}

/// Runs one thread: connects, meets the others at the barrier, loads the server until the
/// window ends or `shared.stop` is set. A fatal error sets `shared.stop` for the others.
pub fn run(plan: &Plan, shared: &Shared) -> Result<Outcome, BenchError> {
    let prepared = prepare(plan);
    // Meet the others even after a failure, so that nobody waits forever.
    shared.start.wait();
    let result = prepared.and_then(|(poll, conns)| {
        if shared.stop.load(Ordering::Relaxed) {
            return Err(BenchError::Stopped);
        }
        let t0 = Instant::now();
        let win_start = t0.checked_add(plan.warmup).unwrap_or(t0);
        let win_end = win_start.checked_add(plan.duration).unwrap_or(win_start);
        let hist = Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3)
            .map_err(|e| BenchError::Histogram(e.to_string()))?;
        let timer = match plan.rate {
            Some(_) => Some(TimerFd::new(poll.registry(), TIMER).map_err(BenchError::Poll)?),
            None => None,
        };
        let mut w = Worker {
            plan,
            shared,
            poll,
            conns,
            buf: vec![0; READ_BUF],
            out: Outcome {
                hist,
                requests: 0,
                bytes_out: 0,
                bytes_in: 0,
                connection_errors: 0,
                error_replies: 0,
                reconnects: 0,
                connects: 0,
                window: Duration::ZERO,
            },
            t0,
            win_start,
            win_end,
            released: 0,
            unreported: 0,
            timer,
        };
        w.run()?;
        let end = Instant::now().min(w.win_end);
        w.out.window = end.saturating_duration_since(w.win_start);
        Ok(w.out)
    });
    if let Err(e) = &result
        && !matches!(e, BenchError::Stopped)
    {
        shared.stop.store(true, Ordering::Relaxed);
    }
    result
}

/// Opens this thread's poll and connections.
fn prepare(plan: &Plan) -> Result<(Poll, Vec<Conn>), BenchError> {
    let poll = Poll::new().map_err(BenchError::Poll)?;
    let mut conns = Vec::with_capacity(plan.conns);
    let now = Instant::now();
    for i in 0..plan.conns {
        let stream = open(plan, |source| BenchError::Connect {
            addr: plan.addr.to_string(),
            source,
        })?;
        let mut conn = Conn::new(stream, plan, now, 0);
        register(poll.registry(), &mut conn, i)?;
        conns.push(conn);
    }
    Ok((poll, conns))
}

/// Registers a connection for reads and writes under token `i`.
fn register(registry: &Registry, conn: &mut Conn, i: usize) -> Result<(), BenchError> {
    registry
        .register(
            &mut conn.stream,
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        )
        .map_err(BenchError::Poll)
}

impl Worker<'_> {
    /// The event loop.
    fn run(&mut self) -> Result<(), BenchError> {
        let mut events = Events::with_capacity(1024);
        let mut next_check = self.t0;
        loop {
            let now = Instant::now();
            if now >= self.win_end {
                break;
            }
            if self.shared.stop.load(Ordering::Relaxed) {
                return Err(BenchError::Stopped);
            }
            if self.shared.interrupted.load(Ordering::Relaxed) {
                break;
            }
            if now >= next_check {
                self.check_timeouts(now)?;
                self.report_progress();
                next_check = now.checked_add(TICK).unwrap_or(now);
            }
            let wait = self.win_end.saturating_duration_since(now).min(TICK);
            if let (Some(due), Some(timer)) = (self.next_release(), &self.timer) {
                timer
                    .arm_once(due.saturating_duration_since(now))
                    .map_err(BenchError::Poll)?;
            }
            match self.poll.poll(&mut events, Some(wait)) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(BenchError::Poll(e)),
            }
            let now = Instant::now();
            for event in events.iter() {
                if event.token() == TIMER {
                    if let Some(timer) = &self.timer {
                        timer.drain();
                    }
                    continue;
                }
                let i = event.token().0;
                let hup = event.is_read_closed() || event.is_error();
                let readable = event.is_readable() || hup;
                let result = self.service(i, readable, hup, now);
                self.settle(i, result, now)?;
            }
            self.release_due(now)?;
        }
        self.report_progress();
        Ok(())
    }

    /// Adds the replies counted since the last report to the shared progress counter.
    fn report_progress(&mut self) {
        if self.unreported > 0 {
            self.shared
                .replies
                .fetch_add(self.unreported, Ordering::Relaxed);
            self.unreported = 0;
        }
    }

    /// Turns a connection failure into a reconnect or a fatal error.
    fn settle(
        &mut self,
        i: usize,
        result: Result<(), ConnFailure>,
        now: Instant,
    ) -> Result<(), BenchError> {
        match result {
            Ok(()) => Ok(()),
            Err(ConnFailure::Fatal(e)) => Err(e),
            Err(ConnFailure::Lost(why)) => self.reconnect(i, why, now),
        }
    }

    /// Reads what a connection has, issues the requests it may send, and writes.
    fn service(
        &mut self,
        i: usize,
        readable: bool,
        hup: bool,
        now: Instant,
    ) -> Result<(), ConnFailure> {
        if readable {
            self.read(i, hup, now)?;
        }
        if self.plan.new_conn_per_request && self.conns.get(i).is_some_and(Conn::answered_all) {
            return self.renew(i, now);
        }
        self.issue(i, now);
        self.flush(i, now)
    }

    /// `--new-conn-per-request`: the reply came (at `replied`), so the connection is closed and
    /// a new one carries the next request; its latency counts from before the connect. The
    /// connect is counted when the reply was: one connect a request, also across the warm-up's
    /// end.
    fn renew(&mut self, i: usize, replied: Instant) -> Result<(), ConnFailure> {
        let started = Instant::now();
        let addr = self.plan.addr.to_string();
        let stream = open(self.plan, |source| BenchError::Connect {
            addr: addr.clone(),
            source,
        })
        .map_err(ConnFailure::Fatal)?;
        let Some(conn) = self.conns.get_mut(i) else {
            return Ok(());
        };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        *conn = Conn::new(stream, self.plan, started, 0);
        register(self.poll.registry(), conn, i).map_err(ConnFailure::Fatal)?;
        if replied >= self.win_start {
            self.out.connects = self.out.connects.saturating_add(1);
        }
        self.issue(i, started);
        self.flush(i, started)
    }

    /// Reads until the socket would block or a read comes back short, completing replies. A
    /// short read emptied the socket, and a later byte raises a new edge, so the read that would
    /// only say WouldBlock is skipped (as the server does; it would cost the load generator a
    /// system call per reply). After a hang-up the reads go on to the end of input.
    fn read(&mut self, i: usize, hup: bool, now: Instant) -> Result<(), ConnFailure> {
        let in_window = now >= self.win_start;
        let Some(conn) = self.conns.get_mut(i) else {
            return Ok(());
        };
        loop {
            let n = match conn.stream.read(&mut self.buf) {
                // A server may close a connection once it has answered (HTTP/1.0 does);
                // with a connection per request that is its end, not a loss.
                Ok(0) if self.plan.new_conn_per_request && conn.answered_all() => return Ok(()),
                Ok(0) => return Err(ConnFailure::Lost("the server closed the connection".into())),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(ConnFailure::Lost(e.to_string())),
            };
            conn.last_progress = now;
            conn.received = conn.received.saturating_add(n as u64);
            let bytes = self.buf.get(..n).unwrap_or_default();
            let done = conn.parser.feed(bytes).map_err(|e| {
                ConnFailure::Fatal(BenchError::Protocol {
                    addr: self.plan.addr.to_string(),
                    reason: e.to_string(),
                })
            })?;
            if done.replies > 0 {
                conn.answered = true;
            }
            self.out.error_replies = self.out.error_replies.saturating_add(done.failed);
            self.unreported = self.unreported.saturating_add(done.replies);
            if in_window {
                self.out.bytes_in = self.out.bytes_in.saturating_add(n as u64);
            }
            for _ in 0..done.replies {
                let Some(sent) = conn.in_flight.pop_front() else {
                    return Err(ConnFailure::Fatal(BenchError::Protocol {
                        addr: self.plan.addr.to_string(),
                        reason: "more replies than requests".into(),
                    }));
                };
                if in_window {
                    let ns = u64::try_from(now.saturating_duration_since(sent).as_nanos())
                        .unwrap_or(u64::MAX);
                    self.out.hist.saturating_record(ns);
                    self.out.requests = self.out.requests.saturating_add(1);
                }
            }
            if n < self.buf.len() && !hup && conn.stream.short_read_drains() {
                return Ok(());
            }
        }
    }

    /// Queues the requests connection `i` may send now: up to `depth` in flight, and with
    /// --rate only those already due.
    fn issue(&mut self, i: usize, now: Instant) {
        let plan = self.plan;
        let nconns = self.conns.len() as u64;
        let released = self.released;
        let t0 = self.t0;
        let Some(conn) = self.conns.get_mut(i) else {
            return;
        };
        let room = plan.depth.saturating_sub(conn.in_flight.len());
        if room == 0 {
            return;
        }
        if conn.in_flight.is_empty() {
            conn.last_progress = now;
        }
        match plan.rate {
            None => {
                for _ in 0..room {
                    conn.out.extend_from_slice(&plan.request);
                    conn.in_flight.push_back(now);
                }
                conn.issued = conn.issued.saturating_add(room as u64);
            }
            Some(rate) => {
                let due = due_for(i as u64, nconns, released);
                let mut room = room as u64;
                while room > 0 && conn.issued < due {
                    // Request `issued` of connection `i` is number issued*nconns + i of the
                    // thread's schedule.
                    let seq = conn.issued.saturating_mul(nconns).saturating_add(i as u64);
                    let at = t0
                        .checked_add(Duration::from_secs_f64(seq as f64 / rate))
                        .unwrap_or(now)
                        .min(now);
                    conn.out.extend_from_slice(&plan.request);
                    conn.in_flight.push_back(at);
                    conn.issued = conn.issued.saturating_add(1);
                    room = room.saturating_sub(1);
                }
            }
        }
    }

    /// Writes what connection `i` has queued, until done or the socket would block.
    fn flush(&mut self, i: usize, now: Instant) -> Result<(), ConnFailure> {
        let in_window = now >= self.win_start;
        let Some(conn) = self.conns.get_mut(i) else {
            return Ok(());
        };
        conn.stream
            .send_pending()
            .map_err(|e| ConnFailure::Lost(e.to_string()))?;
        while let Some(rest) = conn.out.get(conn.out_pos..).filter(|r| !r.is_empty()) {
            match conn.stream.write(rest) {
                Ok(0) => return Err(ConnFailure::Lost("the server stopped reading".into())),
                Ok(n) => {
                    conn.out_pos = conn.out_pos.saturating_add(n);
                    conn.last_progress = now;
                    conn.sent = conn.sent.saturating_add(n as u64);
                    if in_window {
                        self.out.bytes_out = self.out.bytes_out.saturating_add(n as u64);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(ConnFailure::Lost(e.to_string())),
            }
        }
        conn.out.clear();
        conn.out_pos = 0;
        Ok(())
    }

    /// With --rate: the time the next unreleased request of the schedule is due.
    fn next_release(&self) -> Option<Instant> {
        let rate = self.plan.rate?;
        self.t0
            .checked_add(Duration::from_secs_f64(self.released as f64 / rate))
    }

    /// With --rate: releases the requests that have become due and sends them.
    fn release_due(&mut self, now: Instant) -> Result<(), BenchError> {
        let Some(rate) = self.plan.rate else {
            return Ok(());
        };
        let elapsed = now.saturating_duration_since(self.t0).as_secs_f64();
        // Requests 0..=floor(elapsed * rate) are due.
        let due = ((elapsed * rate).floor() as u64).saturating_add(1);
        if due <= self.released {
            return Ok(());
        }
        let from = self.released;
        self.released = due;
        let nconns = self.conns.len() as u64;
        // Every connection that got one of the newly due requests (each at most once).
        let count = due.saturating_sub(from).min(nconns);
        for k in 0..count {
            let i = usize::try_from(from.saturating_add(k) % nconns.max(1)).unwrap_or(0);
            let result = self.issue_and_flush(i, now);
            self.settle(i, result, now)?;
        }
        Ok(())
    }

    /// Issues what connection `i` may send and writes it.
    fn issue_and_flush(&mut self, i: usize, now: Instant) -> Result<(), ConnFailure> {
        self.issue(i, now);
        self.flush(i, now)
    }

    /// Fails the run if a connection with requests in flight has not moved for `timeout`.
    fn check_timeouts(&self, now: Instant) -> Result<(), BenchError> {
        for conn in &self.conns {
            let unwritten = conn.out_pos < conn.out.len();
            let waiting = !conn.in_flight.is_empty() || unwritten;
            if waiting && now.saturating_duration_since(conn.last_progress) > self.plan.timeout {
                return Err(BenchError::Timeout {
                    silence: NoAnswer {
                        peer: self.plan.addr.to_string(),
                        // Requests it does not read are the first thing it owes.
                        stall: if unwritten {
                            Stall::Take
                        } else {
                            Stall::Answer
                        },
                        timeout: self.plan.timeout,
                        sent: conn.sent,
                        received: conn.received,
                    },
                    in_flight: conn.in_flight.len(),
                });
            }
        }
        Ok(())
    }

    /// Replaces connection `i`, which the server closed, by a new one; fatal if it had never
    /// been answered or if the new one cannot be opened.
    fn reconnect(&mut self, i: usize, why: String, now: Instant) -> Result<(), BenchError> {
        let addr = self.plan.addr.to_string();
        let Some(conn) = self.conns.get_mut(i) else {
            return Ok(());
        };
        if !conn.answered {
            return Err(BenchError::Refused { addr, why });
        }
        self.out.connection_errors = self.out.connection_errors.saturating_add(1);
        // Deregistering a socket that is about to be closed cannot matter if it fails.
        let _ = self.poll.registry().deregister(&mut conn.stream);
        let stream = open(self.plan, |source| BenchError::Reconnect {
            addr,
            why,
            source,
        })?;
        // Requests lost with the old connection keep their places in the rate schedule.
        *conn = Conn::new(stream, self.plan, now, conn.issued);
        self.out.reconnects = self.out.reconnects.saturating_add(1);
        register(self.poll.registry(), conn, i)
    }
}

/// How many of the first `released` requests of a schedule dealt round-robin over `nconns`
/// connections go to connection `i`.
fn due_for(i: u64, nconns: u64, released: u64) -> u64 {
    if released <= i || nconns == 0 {
        return 0;
    }
    (released.saturating_sub(i).saturating_sub(1) / nconns).saturating_add(1)
}

#[cfg(test)]
mod tests {
    use super::due_for;

    #[test]
    fn round_robin_shares_add_up() {
        for nconns in 1..6u64 {
            for released in 0..30u64 {
                let sum: u64 = (0..nconns).map(|i| due_for(i, nconns, released)).sum();
                assert_eq!(sum, released, "nconns {nconns} released {released}");
            }
        }
    }
}
