//! A stream connection: its transport (the socket, `transport.rs`), the leftover of a partial
//! request, its pending output, its service and the flags the reactor steers it by.

use std::io::{self, Write};
use std::net::IpAddr;
use std::time::Instant;

use mio::Interest;

use super::shutdown::Drain;
use super::transport::Transport;

use crate::frame::Leftover;
use crate::kind::ServiceKind;
use crate::net::write_until_blocked;
use crate::service::StreamService;
use crate::service::auth::AuthGate;

/// An accepted TCP or Unix stream.
pub(crate) type StreamSocket = crate::net::MioStream;

/// Output waiting for the socket to accept it, written from `pos` on.
#[derive(Debug, Default)]
pub struct OutBuf {
    /// Bytes queued; those before `pos` are already written.
    buf: Vec<u8>,
    /// How much of `buf` the socket has taken.
    pos: usize,
}

/// Capacity an empty output buffer may keep; beyond it the memory is returned, so that idle
/// connections hold no buffer.
const KEEP_CAPACITY: usize = 4096;

impl OutBuf {
    /// Bytes not yet written.
    pub fn pending(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.pending() == 0
    }

    /// The buffer to append replies to. Written bytes at the front are dropped first when they
    /// are the larger part, so the buffer does not grow with everything ever sent.
    pub fn tail(&mut self) -> &mut Vec<u8> {
        if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        &mut self.buf
    }

    /// Appends bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.tail().extend_from_slice(bytes);
    }

    /// Writes until the output is empty or the socket would block; returns the bytes written.
    pub fn write_to(&mut self, w: &mut impl Write) -> io::Result<usize> {
        let written = write_until_blocked(w, self.buf.get(self.pos..).unwrap_or_default())?;
        self.pos = self.pos.saturating_add(written);
        if self.is_empty() {
            self.release();
        }
        Ok(written)
    }

    fn release(&mut self) {
        self.pos = 0;
        if self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
    }
}

/// One accepted stream connection.
#[derive(Debug)]
pub struct Conn {
    /// What its bytes pass through: the socket, plain today. Registered in the poll.
    pub(crate) transport: Transport,
    /// The connection's id (its token's value): names it as a chat member.
    pub id: u64,
    /// Which service the listener that accepted it runs (for logs and counters).
    pub kind: ServiceKind,
    /// The service's state for this connection.
    pub service: StreamService,
    /// The authentication handshake, until it passes; boxed so that connections without
    /// authentication do not pay for it.
    pub gate: Option<Box<AuthGate>>,
    /// The unconsumed tail of the input (a partial request); empty, and unallocated, otherwise.
    pub input: Leftover,
    /// Replies the socket has not taken yet.
    pub out: OutBuf,
    /// What the connection is registered for in the poll now.
    pub interest: Option<Interest>,
    /// The peer shut down its write side (a read returned 0): finish writing, then close.
    pub read_closed: bool,
    /// Reading stopped: pending output reached the pause mark, or the service took no input.
    pub read_paused: bool,
    /// The service took no input at the end of the last drive (a long response, upload bytes
    /// in flight, a commit, a command): when it takes input again, it first decodes what it
    /// holds, since no new event will come for bytes already read.
    pub service_paused: bool,
    /// On the ready list already.
    pub queued: bool,
    /// An event said the peer hung up or the socket has an error: read until 0 or an error
    /// rather than stopping at a short read.
    pub hup_seen: bool,
    /// Marked for closing after this event walk; no more I/O.
    pub dead: bool,
    /// Last time bytes moved either way, for the idle timeout.
    pub last_active: Instant,
    /// The peer's address (TCP only): counted against `--max-conns-per-ip` while open.
    pub peer_ip: Option<IpAddr>,
    /// When the first byte of the request now part-way in arrived (`--request-timeout`); `None`
    /// between requests, and while the server, not the client, holds things up.
    pub request_since: Option<Instant>,
    /// A request timer for this connection is in the heap (at most one is).
    pub request_timer: bool,
    /// It has passed the handshake and sent a complete request (or is a chat member): the idle
    /// timeout applies rather than `--handshake-timeout`.
    pub served: bool,
    /// It was told it is idle and is being closed: the next idle check closes it outright.
    pub idle_closing: bool,
    /// Its part in the drain, from the shutdown signal on (`shutdown.rs`); boxed, so that
    /// connections pay for it only then.
    pub(crate) drain: Option<Box<Drain>>,
}

impl Conn {
    /// A fresh connection.
    pub(crate) fn new(
        transport: Transport,
        kind: ServiceKind,
        service: StreamService,
        now: Instant,
    ) -> Self {
        Conn {
            transport,
            id: 0,
            kind,
            service,
            gate: None,
            input: Leftover::new(),
            out: OutBuf::default(),
            interest: None,
            read_closed: false,
            read_paused: false,
            service_paused: false,
            queued: false,
            hup_seen: false,
            dead: false,
            last_active: now,
            peer_ip: None,
            request_since: None,
            request_timer: false,
            served: false,
            idle_closing: false,
            drain: None,
        }
    }

    /// Output is waiting for the socket: replies in `out`, or records inside the transport.
    pub(crate) fn owes_output(&self) -> bool {
        !self.out.is_empty() || self.transport.wants_write()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `chunk` bytes per call and blocks after `budget` bytes.
    struct Trickle {
        got: Vec<u8>,
        chunk: usize,
        budget: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.chunk).min(self.budget);
            self.got.extend_from_slice(&buf[..n]);
            self.budget -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn partial_writes_keep_order_and_memory_is_released() {
        let mut out = OutBuf::default();
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        out.extend(&data);
        let mut w = Trickle {
            got: Vec::new(),
            chunk: 777,
            budget: 30_000,
        };
        assert_eq!(out.write_to(&mut w).unwrap(), 30_000);
        assert_eq!(out.pending(), 70_000);
        out.extend(b"tail");
        w.budget = usize::MAX;
        assert_eq!(out.write_to(&mut w).unwrap(), 70_004);
        assert!(out.is_empty());
        assert_eq!(&w.got[..100_000], &data[..]);
        assert_eq!(&w.got[100_000..], b"tail");
        assert_eq!(out.buf.capacity(), 0, "an empty buffer returns its memory");
    }

    #[test]
    fn appending_drops_written_front() {
        let mut out = OutBuf::default();
        out.extend(&[1; 1000]);
        let mut w = Trickle {
            got: Vec::new(),
            chunk: 600,
            budget: 600,
        };
        out.write_to(&mut w).unwrap();
        out.extend(&[2; 10]);
        assert_eq!(out.pos, 0);
        assert_eq!(out.pending(), 410);
    }

    #[test]
    fn direct_writes_stop_at_would_block() {
        let mut w = Trickle {
            got: Vec::new(),
            chunk: 10,
            budget: 25,
        };
        assert_eq!(write_until_blocked(&mut w, &[7; 100]).unwrap(), 25);
        assert_eq!(w.got, vec![7; 25]);
    }
}
