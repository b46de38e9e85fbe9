//! One stream connection's path: write what is pending, produce a long response (sendfile for
//! a file), hand held and newly read input to the authentication gate and the service, write
//! its replies straight away, and settle what the connection waits for next. Every byte goes
//! through the connection's `Transport` (`transport.rs`), never a socket directly. `drive`
//! and its steps are the hot path of every request; the unit tests (`stream/tests.rs`) and the
//! `conn_path` fuzz target (`stream/fuzz.rs`) drive them through a scripted transport
//! (`stream/sim.rs`).

use std::io::{self, Read};
use std::time::Instant;

use mio::{Interest, Poll, Token};

use super::conn::Conn;
use super::shutdown::read_allowance;
use super::timer::TimerKind;
use super::{Entry, Reactor, ServiceState};
use crate::config::Limits;
use crate::service::{Awaiting, Event, Output};

use input::absorb;

/// Largest slice of a long response produced in one call.
const PRODUCE_CHUNK: usize = 64 * 1024;

/// What one drive of a connection decided.
#[derive(Debug)]
enum Verdict {
    /// Keep it; `more` says its budget ran out with input possibly left.
    Open { more: bool },
    /// Close it, for this reason (logged at debug level).
    Close(CloseReason),
}

/// Why a connection is closed.
#[derive(Debug)]
enum CloseReason {
    /// The peer shut down its side and everything owed to it was written.
    Finished,
    /// An I/O error on the socket (usually a reset by the peer).
    Io(io::Error),
    /// Pending output passed `--max-pending`.
    SlowReader { pending: usize },
    /// A held partial request passed `--max-input`.
    InputTooLarge { held: usize },
    /// A long response could not be completed (a file shrank while being sent).
    Broken,
    /// The client hung up while its command was running.
    PeerGone,
}

/// What one drive of one connection moved, and whether it left work for the ready list.
#[derive(Debug, Default)]
struct Tally {
    /// Bytes read from the socket.
    received: usize,
    /// Bytes written to the socket.
    sent: usize,
    /// Work is left that no new event will announce: serve the connection again next turn.
    more: bool,
    /// Reading stopped at the pause mark with the socket not known to be empty. If the output
    /// then drains below the mark within the same drive, no event will say so: read next turn.
    held_back: bool,
}

/// The reactor's shared buffers and counters, lent to one drive of one connection.
struct TurnIo<'a> {
    /// The read buffer.
    scratch: &'a mut [u8],
    /// Service output before it is known whether the socket takes it all.
    reply: &'a mut Vec<u8>,
    /// Counters, chat room and disk queue.
    svc: &'a mut ServiceState,
}

impl Reactor {
    /// Writes what is pending, reads what the budget allows, and settles the connection's
    /// registration, ready-list place or closing.
    pub(super) fn drive_conn(&mut self, token: Token, readable: bool, writable: bool) {
        let limits = &self.config.limits;
        let Some(Entry::Conn(c)) = self.core.sources.get_mut(token) else {
            return;
        };
        if c.dead {
            return;
        }
        if c.drain.as_ref().is_some_and(|d| d.lingering) {
            self.linger_read(token);
            return;
        }
        let mut io = TurnIo {
            scratch: &mut self.bufs.scratch,
            reply: &mut self.bufs.reply,
            svc: &mut self.svc,
        };
        let (verdict, received, sent) =
            drive(c, readable, writable, &mut io, limits, self.core.now);
        let kind = c.kind;
        if let Some(action) = c.service.poll_action() {
            self.run_actions(token, action);
        }
        if !self.svc.others.is_empty() {
            self.deliver_to_others(token);
        }
        let counters = self.svc.counters.service(kind);
        counters.bytes_received = counters.bytes_received.saturating_add(received as u64);
        counters.bytes_sent = counters.bytes_sent.saturating_add(sent as u64);
        let Some(Entry::Conn(c)) = self.core.sources.get_mut(token) else {
            return;
        };
        match verdict {
            // Drained (not ended by the peer): goodbye, half-close, linger (`shutdown.rs`).
            Verdict::Close(CloseReason::Finished) if c.drain.is_some() && !c.read_closed => {
                self.end_drain(token);
            }
            Verdict::Close(reason) => {
                reason.log(kind);
                if c.transport.is_handshaking() {
                    let counters = self.svc.counters.service(kind);
                    counters.rejected_tls = counters.rejected_tls.saturating_add(1);
                }
                c.dead = true;
                self.core.to_close.push(token);
            }
            Verdict::Open { more } => self.keep_open(token, more),
        }
    }

    /// A connection stays open: its request deadline is armed if a request began, its poll
    /// interest follows what it waits for, and it goes on the ready list if work is left.
    fn keep_open(&mut self, token: Token, more: bool) {
        let Some(Entry::Conn(c)) = self.core.sources.get_mut(token) else {
            return;
        };
        if let (Some(since), Some(limit), false) = (
            c.request_since,
            self.config.limits.request_timeout,
            c.request_timer,
        ) {
            c.request_timer = true;
            self.core
                .timers
                .push(since + limit, TimerKind::Request(token));
        }
        if let Err(e) = update_interest(&self.core.poll, c, token) {
            tracing::warn!(service = %c.kind, "cannot update a connection's interest: {e}");
            c.dead = true;
            self.core.to_close.push(token);
            return;
        }
        if more && !c.queued {
            c.queued = true;
            self.core.ready.push(token);
        }
    }
}

impl CloseReason {
    /// Says why a connection of `kind` closes: what a client did wrong at info level, the
    /// ordinary ends at debug level.
    fn log(&self, kind: crate::kind::ServiceKind) {
        match self {
            CloseReason::SlowReader { pending } => tracing::info!(
                service = %kind,
                pending,
                "disconnecting a client that does not read its replies (--max-pending)"
            ),
            CloseReason::InputTooLarge { held } => tracing::info!(
                service = %kind,
                held,
                "disconnecting a client whose partial request is too large (--max-input)"
            ),
            CloseReason::Io(e) => tracing::debug!(service = %kind, "closing: {e}"),
            CloseReason::Finished => tracing::debug!(service = %kind, "closing: done"),
            CloseReason::Broken => {
                tracing::debug!(service = %kind, "closing: response cannot be completed")
            }
            CloseReason::PeerGone => tracing::info!(
                service = %kind,
                "the client left while its command ran; killing the command"
            ),
        }
    }
}

/// One drive of one connection: write what is pending, let the service produce more of a long
/// response while the socket keeps up, let a service that was paused decode what it holds, then
/// read while the budget lasts and the output is under the pause mark, feeding the service and
/// writing its replies straight away. Returns the verdict and the bytes received and sent.
fn drive(
    c: &mut Conn,
    readable: bool,
    writable: bool,
    io: &mut TurnIo<'_>,
    limits: &Limits,
    now: Instant,
) -> (Verdict, usize, usize) {
    let mut t = Tally::default();
    let verdict = match drive_steps(c, readable, writable, io, limits, &mut t) {
        Ok(()) => settle(c, limits, &mut t, now),
        Err(reason) => Verdict::Close(reason),
    };
    (verdict, t.received, t.sent)
}

/// The I/O of one drive, in order; an error closes the connection.
fn drive_steps(
    c: &mut Conn,
    readable: bool,
    writable: bool,
    io: &mut TurnIo<'_>,
    limits: &Limits,
    t: &mut Tally,
) -> Result<(), CloseReason> {
    if c.hup_seen && c.service.awaiting() == Awaiting::Exec {
        // The client hung up while its command runs: nobody is left to read the answer, so
        // the command is killed (as a shell's child gets SIGHUP).
        return Err(CloseReason::PeerGone);
    }
    if writable {
        flush(c, t)?;
    }
    produce_long_response(c, io, limits, t)?;
    resume_held_input(c, io, limits, t)?;
    read_socket(c, readable, io, limits, t)?;
    flush(c, t)
}

/// Writes pending output until the socket would block: the connection's, and what waits
/// inside its transport (encrypted records).
fn flush(c: &mut Conn, t: &mut Tally) -> Result<(), CloseReason> {
    if !c.out.is_empty() {
        t.sent += c.out.write_to(&mut c.transport).map_err(CloseReason::Io)?;
    }
    if c.transport.wants_write() {
        c.transport.send_pending().map_err(CloseReason::Io)?;
    }
    Ok(())
}

/// Long responses (a file being sent, a file being hashed): at most a budget of disk work per
/// turn, and only while the socket drains, so one transfer cannot stall the others.
fn produce_long_response(
    c: &mut Conn,
    io: &mut TurnIo<'_>,
    limits: &Limits,
    t: &mut Tally,
) -> Result<(), CloseReason> {
    let mut disk_budget = limits.read_budget;
    while c.service.has_output() && c.out.pending() < limits.pending_pause {
        if disk_budget == 0 {
            t.more = true;
            break;
        }
        let chunk = disk_budget.min(PRODUCE_CHUNK);
        // sendfile only with nothing of ours queued before the file's bytes.
        let sendfile = c.out.is_empty();
        match c
            .service
            .next_output(c.out.tail(), chunk, sendfile, &mut io.svc.counters)
        {
            Output::None => break,
            Output::Produced => {
                disk_budget = disk_budget.saturating_sub(chunk);
                flush(c, t)?;
            }
            Output::SendFile { fd, offset, left } => {
                let count = usize::try_from(left).map_or(disk_budget, |l| l.min(disk_budget));
                match send_file(c, io, fd, offset, count)? {
                    Some(n) => {
                        t.sent += n;
                        disk_budget = disk_budget.saturating_sub(n);
                    }
                    None => break,
                }
            }
            Output::Broken => return Err(CloseReason::Broken),
        }
    }
    Ok(())
}

/// Sends up to `count` bytes of a file from the page cache to the socket without passing
/// through us, and tells the service what went. `Some(n)`: go on (`n` may be 0 after an
/// interrupt, or when sendfile is refused and the body goes through `out` from now on);
/// `None`: the socket is full.
fn send_file(
    c: &mut Conn,
    io: &mut TurnIo<'_>,
    fd: std::os::fd::RawFd,
    offset: u64,
    count: usize,
) -> Result<Option<usize>, CloseReason> {
    let (event, sent) = match c.transport.send_file(fd, offset, count) {
        // A transport that changes the bytes (TLS): copy through `out`.
        None => (Event::SendFileRefused, 0),
        Some(Ok(0)) => return Err(CloseReason::Broken),
        Some(Ok(n)) => (Event::FileSent(n as u64), n),
        Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
        Some(Err(e)) if e.kind() == io::ErrorKind::Interrupted => return Ok(Some(0)),
        // This pair of descriptors cannot do sendfile: copy through `out`.
        Some(Err(e)) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {
            (Event::SendFileRefused, 0)
        }
        Some(Err(e)) => return Err(CloseReason::Io(e)),
    };
    c.service.on_event(event, c.out.tail(), &mut io.svc.ctx());
    Ok(Some(sent))
}

/// A service that took no input at the end of the last drive (a long response, upload bytes in
/// flight to the disk, a commit, an exec) and takes it now decodes what it already holds before
/// the socket is read: requests waiting in `input`, and its decoder's own state (a body whose
/// last byte came with the pause still owes its end). No new edge will come for bytes already
/// read, so nothing else would ever hand them over.
fn resume_held_input(
    c: &mut Conn,
    io: &mut TurnIo<'_>,
    limits: &Limits,
    t: &mut Tally,
) -> Result<(), CloseReason> {
    let held = c.service_paused || !c.input.is_empty();
    if held && c.gate.is_none() && c.service.accepts_input() {
        c.service_paused = false;
        t.sent += absorb(c, &[], io, limits)?;
        t.more |= c.service.has_output();
    }
    Ok(())
}

/// Reads while the budget lasts, the output is under the pause mark and the service takes
/// input, handing each read to the service and writing its replies straight away.
fn read_socket(
    c: &mut Conn,
    readable: bool,
    io: &mut TurnIo<'_>,
    limits: &Limits,
    t: &mut Tally,
) -> Result<(), CloseReason> {
    // Paused reading (pending output over --pending-pause, or a service that took no input)
    // left bytes in the socket that no new edge will announce: read them without an event.
    let was_paused = c.read_paused;
    let mut budget = limits.read_budget;
    while (readable || was_paused)
        && !c.read_closed
        && c.out.pending() < limits.pending_pause
        && c.service.accepts_input()
    {
        if budget == 0 {
            t.more = true;
            break;
        }
        // At shutdown: what the socket held at the signal, or the rest of a body under way.
        let allowed = read_allowance(c);
        if allowed == 0 {
            break;
        }
        let want = io.scratch.len().min(budget).min(allowed);
        let Some(buf) = io.scratch.get_mut(..want) else {
            break;
        };
        let n = match c.transport.read(buf) {
            Ok(0) => {
                c.read_closed = true;
                break;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                queue_emptied(c);
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CloseReason::Io(e)),
        };
        if let Some(d) = &mut c.drain {
            d.left = d.left.saturating_sub(n);
        }
        let short = n < want && c.transport.short_read_drains();
        if short {
            queue_emptied(c);
        }
        budget = budget.saturating_sub(n);
        t.received += n;
        // A short read emptied the socket's queue: any byte that arrives later raises a new
        // edge, so the read that would only say WouldBlock is skipped. Not when the peer's FIN
        // may be queued behind the data: that edge has been spent already.
        let drained = short && !c.hup_seen;
        // Copy out of the scratch buffer's borrow: `absorb` needs `io` whole.
        let (scratch, rest) = (std::mem::take(&mut io.scratch), &mut *io);
        let r = absorb(c, scratch.get(..n).unwrap_or_default(), rest, limits);
        io.scratch = scratch;
        t.sent += r?;
        if c.out.pending() > limits.max_pending {
            let pending = c.out.pending();
            return Err(CloseReason::SlowReader { pending });
        }
        if c.service.has_output() {
            // A long response started: produce it before reading on.
            t.more = true;
            break;
        }
        if drained {
            break;
        }
    }
    t.held_back = (readable || was_paused)
        && !c.read_closed
        && c.out.pending() >= limits.pending_pause
        && c.service.accepts_input();
    Ok(())
}

/// After the I/O of a drive: records activity, decides whether reading pauses, and whether the
/// connection is finished.
fn settle(c: &mut Conn, limits: &Limits, t: &mut Tally, now: Instant) -> Verdict {
    if t.received > 0 || t.sent > 0 {
        c.last_active = now;
    }
    let was_paused = c.read_paused;
    // Reading is suspended while output is backed up (backpressure) and while the service is
    // busy with a long response, a commit, disk writes or a command (so its responses stay in
    // order and memory stays bounded). The service's own pause is remembered apart from reading,
    // because a peer that has finished sending may still have a request held to decode.
    c.service_paused = !c.service.accepts_input();
    c.read_paused = !c.read_closed && (c.out.pending() >= limits.pending_pause || c.service_paused);
    // A long response copied through `out` stopped at the pause mark, and the drive's last flush
    // then wrote it all: the writable edge its blocked write armed is dropped once interest
    // falls back to reading, so production goes on from the ready list (sendfile waits for its
    // own edge instead).
    if c.service.has_output()
        && !c.service.sending_file()
        && c.out.pending() < limits.pending_pause
        && !c.transport.wants_write()
    {
        t.more = true;
    }
    if (was_paused || t.held_back) && !c.read_paused && !c.read_closed {
        // Resumed, or stopped at the pause mark by output that the last flush drained: read on
        // the next turn, since the socket's data arrived while reading was held.
        t.more = true;
    }
    track_request(c, t.received > 0, now);
    // A drain that stopped reading leaves a partial request unanswerable: it is not waited for.
    let drain_read = c.drain.is_some() && read_allowance(c) == 0;
    // A paused service that will take input again is awaiting the disk or producing a
    // response, so it is not idle: a peer that left right after its last byte still has its
    // upload decoded, committed and answered. A partial request held once the peer has
    // finished sending does not count: the service has seen it all and asked for more, which
    // will never come (and a paused service is not idle).
    let idle =
        !c.owes_output() && !c.service.has_output() && c.service.awaiting() == Awaiting::Nothing;
    if (c.read_closed || drain_read) && idle {
        return Verdict::Close(CloseReason::Finished);
    }
    Verdict::Open { more: t.more }
}

/// The socket's receive queue was seen empty: the bytes it held at a shutdown signal are all
/// read (the queue is read in order), so the drain waits for no more of them.
fn queue_emptied(c: &mut Conn) {
    if let Some(d) = &mut c.drain {
        d.left = 0;
    }
}

/// Starts or stops the clock of `--request-timeout`: it runs while a request is part-way in
/// and the server waits for the client's bytes, not while the server holds reading back
/// (backpressure, a service busy with the disk or a command).
fn track_request(c: &mut Conn, received: bool, now: Instant) {
    let mid = match &c.gate {
        // The gate holds a partial authentication response from its first byte on.
        Some(_) => c.request_since.is_some() || received,
        None => c.service.mid_request(c.input.len()),
    };
    if !mid || c.read_paused || c.service_paused {
        c.request_since = None;
    } else if c.request_since.is_none() {
        c.request_since = Some(now);
    }
}

/// Stops taking input from a connection: what is pending is still written, then it closes.
pub(super) fn stop_input(c: &mut Conn) {
    c.read_closed = true;
    c.input.clear();
}

/// Re-registers a connection when what it should wait for has changed (one syscall only then).
pub(super) fn update_interest(poll: &Poll, c: &mut Conn, token: Token) -> io::Result<()> {
    let want = wanted_interest(c);
    if c.interest != Some(want) {
        poll.registry().reregister(&mut c.transport, token, want)?;
        c.interest = Some(want);
    }
    Ok(())
}

/// What a connection should be registered for: READABLE while it may read, WRITABLE only while
/// output is pending (so an idle connection is never woken for writability).
fn wanted_interest(c: &Conn) -> Interest {
    let read = !c.read_closed && !c.read_paused;
    // A file going out by sendfile waits for writability with nothing in `out`.
    let write = c.owes_output() || c.service.sending_file();
    match (read, write) {
        (true, true) => Interest::READABLE | Interest::WRITABLE,
        (false, true) => Interest::WRITABLE,
        // With nothing to write, READABLE stays even when no read is wanted: a hang-up must
        // still be heard (a client that leaves while its command runs), and READABLE carries it.
        (true, false) | (false, false) => Interest::READABLE,
    }
}

#[cfg(feature = "fuzzing")]
pub(crate) mod fuzz;
mod input;
#[cfg(any(test, feature = "fuzzing"))]
mod sim;
#[cfg(test)]
mod tests;
