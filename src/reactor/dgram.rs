//! A datagram endpoint (UDP or Unix datagram): receive a request, hand it to the service, send
//! the reply to the sender. Replies that the kernel cannot take yet wait in a bounded queue.

use std::collections::VecDeque;
use std::io;

use mio::event::Source;
use mio::net::{UdpSocket, UnixDatagram};
use mio::{Interest, Registry, Token};

use crate::config::ServiceKind;
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
