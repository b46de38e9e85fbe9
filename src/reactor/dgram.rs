//! A datagram endpoint (UDP or Unix datagram): receive a request, hand it to the service, send
//! the reply to the sender. Replies that the kernel cannot take yet wait in a bounded queue.

use std::collections::VecDeque;
use std::io;
use std::time::Instant;

use mio::event::Source;
use mio::net::{UdpSocket, UnixDatagram};
use mio::{Interest, Poll, Registry, Token};

use super::{Entry, Reactor};
use crate::config::Limits;
use crate::kind::ServiceKind;
use crate::service::{DatagramService, Peer};

/// A bound datagram socket.
#[derive(Debug)]
pub enum DgramSocket {
    Udp(UdpSocket),
    Unix(UnixDatagram),
}

/// The outcome of one receive.
pub enum Received {
    /// A datagram of this length, from a peer that can be answered.
    From(usize, Peer),
    /// A datagram from an unbound Unix socket: it has no address to answer to.
    Unanswerable(usize),
}

impl DgramSocket {
    /// Receives one datagram into `buf`.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        match self {
            DgramSocket::Udp(s) => s
                .recv_from(buf)
                .map(|(n, a)| Received::From(n, Peer::Inet(a))),
            DgramSocket::Unix(s) => {
                let (n, a) = s.recv_from(buf)?;
                Ok(match a.as_pathname() {
                    Some(p) => Received::From(n, Peer::Unix(p.to_owned())),
                    None => Received::Unanswerable(n),
                })
            }
        }
    }

    /// Sends one datagram to `peer`.
    pub fn send(&self, buf: &[u8], peer: &Peer) -> io::Result<usize> {
        match (self, peer) {
            (DgramSocket::Udp(s), Peer::Inet(a)) => s.send_to(buf, *a),
            (DgramSocket::Unix(s), Peer::Unix(p)) => s.send_to(buf, p),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "peer address of the wrong family",
            )),
        }
    }
}

impl Source for DgramSocket {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            DgramSocket::Udp(s) => s.register(r, t, i),
            DgramSocket::Unix(s) => s.register(r, t, i),
        }
    }

    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            DgramSocket::Udp(s) => s.reregister(r, t, i),
            DgramSocket::Unix(s) => s.reregister(r, t, i),
        }
    }

    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            DgramSocket::Udp(s) => s.deregister(r),
            DgramSocket::Unix(s) => s.deregister(r),
        }
    }
}

/// One datagram socket and its service.
#[derive(Debug)]
pub struct DgramEndpoint {
    /// The socket.
    pub socket: DgramSocket,
    /// Which service it runs.
    pub kind: ServiceKind,
    /// The service's state.
    pub service: DatagramService,
    /// Replies waiting for the kernel's send buffer, oldest first.
    pub queue: VecDeque<(Peer, Vec<u8>)>,
    /// Registered for WRITABLE too (only while the queue is not empty).
    pub writable: bool,
    /// On the ready list already.
    pub queued: bool,
}

/// Whether a send error concerns only that one datagram (the peer went away, the datagram was
/// too large) rather than the socket: such a reply is dropped and the socket keeps serving.
pub fn is_per_datagram_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNREFUSED
                | libc::ENOENT
                | libc::EMSGSIZE
                | libc::EHOSTUNREACH
                | libc::ENETUNREACH
                | libc::EACCES
                | libc::EPERM
                | libc::EADDRNOTAVAIL
                | libc::ENOTCONN
                | libc::EINVAL
                | libc::ENOBUFS
        )
    )
}

/// Counts of one drive of a datagram socket.
#[derive(Debug, Default)]
struct DgramStats {
    received: u64,
    sent: u64,
    dropped: u64,
    bytes_in: usize,
    bytes_out: usize,
}

/// Sends the queued replies until the kernel's buffer is full again.
fn flush_datagrams(d: &mut DgramEndpoint, stats: &mut DgramStats) {
    while let Some((peer, buf)) = d.queue.front() {
        match d.socket.send(buf, peer) {
            Ok(n) => {
                stats.sent += 1;
                stats.bytes_out += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                stats.dropped += 1;
                tracing::debug!(service = %d.kind, "reply dropped: {e}");
            }
        }
        d.queue.pop_front();
    }
}

/// Sends a reply at once, or queues it (bounded) when the kernel's buffer is full.
fn send_or_queue(
    d: &mut DgramEndpoint,
    peer: Peer,
    reply: &[u8],
    limits: &Limits,
    stats: &mut DgramStats,
) {
    if d.queue.is_empty() {
        loop {
            match d.socket.send(reply, &peer) {
                Ok(n) => {
                    stats.sent += 1;
                    stats.bytes_out += n;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    stats.dropped += 1;
                    if !is_per_datagram_error(&e) {
                        tracing::warn!(service = %d.kind, "send failed: {e}");
                    }
                    return;
                }
            }
        }
    }
    if d.queue.len() < limits.max_queued_datagrams {
        d.queue.push_back((peer, reply.to_vec()));
    } else {
        stats.dropped += 1;
    }
}

impl Reactor {
    /// Sends queued replies, then receives and answers datagrams up to the budget.
    pub(super) fn drive_dgram(&mut self, token: Token, readable: bool, _writable: bool) {
        let limits = &self.config.limits;
        let Some(Entry::Dgram(d)) = self.core.sources.get_mut(token) else {
            return;
        };
        let kind = d.kind;
        let mut stats = DgramStats::default();
        flush_datagrams(d, &mut stats);
        let more = readable
            && receive_datagrams(
                d,
                &mut self.bufs.scratch,
                &mut self.bufs.reply,
                &mut self.bufs.targets,
                limits,
                self.core.now,
                &mut stats,
            );
        set_writable_interest(&self.core.poll, d, token);
        if more && !d.queued {
            d.queued = true;
            self.core.ready.push(token);
        }
        let c = self.svc.counters.service(kind);
        c.datagrams_received = c.datagrams_received.saturating_add(stats.received);
        c.datagrams_sent = c.datagrams_sent.saturating_add(stats.sent);
        c.datagrams_dropped = c.datagrams_dropped.saturating_add(stats.dropped);
        c.bytes_received = c.bytes_received.saturating_add(stats.bytes_in as u64);
        c.bytes_sent = c.bytes_sent.saturating_add(stats.bytes_out as u64);
    }
}

/// Receives and answers datagrams until the socket would block or the budget is spent; returns
/// whether the budget ran out (datagrams may be left).
fn receive_datagrams(
    d: &mut DgramEndpoint,
    scratch: &mut [u8],
    reply: &mut Vec<u8>,
    targets: &mut Vec<Peer>,
    limits: &Limits,
    now: Instant,
    stats: &mut DgramStats,
) -> bool {
    let kind = d.kind;
    // Read once per batch, for the services that answer with the time of day.
    let mut wall = None;
    let mut budget = limits.datagram_budget;
    loop {
        if budget == 0 {
            return true;
        }
        budget -= 1;
        match d.socket.recv(scratch) {
            Ok(Received::From(n, peer)) => {
                stats.received += 1;
                stats.bytes_in += n;
                let payload = scratch.get(..n).unwrap_or_default();
                if wall.is_none() && d.service.needs_wall_clock() {
                    wall = Some(chrono::Local::now());
                }
                let taken =
                    d.service
                        .on_datagram(&peer, payload, now, wall.as_ref(), reply, targets);
                if !taken {
                    stats.dropped += 1;
                }
                for target in targets.drain(..) {
                    send_or_queue(d, target, reply, limits, stats);
                }
            }
            Ok(Received::Unanswerable(n)) => {
                stats.received += 1;
                stats.bytes_in += n;
                stats.dropped += 1;
                tracing::debug!(
                    service = %kind,
                    "datagram from an unbound unix socket: no address to answer"
                );
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // An ICMP error for an earlier reply surfaces here; it is about that peer.
            Err(e) if is_per_datagram_error(&e) => {
                tracing::debug!(service = %kind, "receive: {e}")
            }
            Err(e) => {
                tracing::warn!(service = %kind, "receive failed: {e}");
                return false;
            }
        }
    }
}

/// Registers the socket for WRITABLE too while replies wait in its queue, and only then.
fn set_writable_interest(poll: &Poll, d: &mut DgramEndpoint, token: Token) {
    let want_writable = !d.queue.is_empty();
    if want_writable != d.writable {
        let interest = if want_writable {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        match poll.registry().reregister(&mut d.socket, token, interest) {
            Ok(()) => d.writable = want_writable,
            Err(e) => tracing::warn!(service = %d.kind, "cannot update interest: {e}"),
        }
    }
}

/// How often the kernel's drops are read while nobody asks (a single worker's `stats` and
/// metrics answer from the counters as they are).
const KERNEL_DROPS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl Reactor {
    /// Reads the kernel's drops now and again, while this worker has UDP sockets.
    pub(super) fn kernel_drops_tick(&mut self) {
        if refresh_kernel_drops(&self.core.sources, &mut self.svc.counters) {
            let at = self.core.now + KERNEL_DROPS_EVERY;
            self.core
                .timers
                .push(at, super::timer::TimerKind::KernelDrops);
        }
    }
}

/// Reads the kernel's receive-queue drops of every UDP socket of this worker into its
/// counters (one read of /proc/net/udp{,6}): when counters are gathered, and every second.
/// Returns whether the worker has UDP sockets at all.
pub(super) fn refresh_kernel_drops(
    sources: &super::token::Sources<super::Entry>,
    counters: &mut crate::metrics::Counters,
) -> bool {
    use std::os::fd::AsRawFd;
    let mut sockets = Vec::new();
    for (_, entry) in sources.iter() {
        if let super::Entry::Dgram(d) = entry
            && let DgramSocket::Udp(s) = &d.socket
        {
            sockets.push((d.kind, s.as_raw_fd()));
        }
    }
    if sockets.is_empty() {
        return false;
    }
    let drops = crate::sys::udp_drops::read();
    let mut by_kind: Vec<(crate::kind::ServiceKind, u64)> = Vec::new();
    for (kind, fd) in sockets {
        let n = crate::sys::udp_drops::inode_of(fd)
            .and_then(|i| drops.get(&i).copied())
            .unwrap_or(0);
        match by_kind.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, sum)) => *sum = sum.saturating_add(n),
            None => by_kind.push((kind, n)),
        }
    }
    for (kind, n) in by_kind {
        counters.service(kind).kernel_dropped = n;
    }
    true
}
