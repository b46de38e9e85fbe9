//! Connections on a listener behind a load balancer begin with a PROXY protocol header
//! (`frame::proxy`). Until it is whole the connection waits here, outside the services: its
//! bytes are peeked at (MSG_PEEK), not read, so nothing of the client's own is taken early and
//! no buffer is held per connection; then exactly the header is read, and the connection is
//! admitted as any other, with the client's address in place of the balancer's — for
//! `--max-conns-per-ip`, the log and the counters alike. Bounded: in size
//! (`frame::proxy::MAX_HEADER`), in time (`PROXY_HEADER_TIMEOUT`, or the handshake timeout if
//! shorter), and in number (a waiting connection counts against `--max-conns`).

use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::{Interest, Token};

use super::super::conn::StreamSocket;
use super::super::timer::TimerKind;
use super::super::{Entry, Reactor};
use crate::frame::proxy::{self, Parsed, ProxyError, ProxyVersions};
use crate::kind::ServiceKind;
use crate::net::TcpOrUnix;

/// How long a load balancer may take to send the whole header.
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// What the listener said about a connection that waits for its header.
#[derive(Debug, Clone)]
pub(in crate::reactor) struct Accepted {
    pub(in crate::reactor) kind: ServiceKind,
    pub(in crate::reactor) auth: bool,
    pub(in crate::reactor) nodelay: bool,
    pub(in crate::reactor) per_ip: Option<usize>,
    pub(in crate::reactor) versions: ProxyVersions,
    /// TLS follows the header.
    pub(in crate::reactor) tls: Option<std::sync::Arc<crate::tls::server::ListenerTls>>,
}

/// A connection waiting for its PROXY protocol header.
#[derive(Debug)]
pub(in crate::reactor) struct Preamble {
    socket: StreamSocket,
    accepted: Accepted,
    /// The balancer's address (the socket's peer), for the log.
    balancer: Option<IpAddr>,
    /// The header must be whole by then.
    deadline: Instant,
    /// How long it was given.
    wait: Duration,
}

/// Why a waiting connection was closed.
#[derive(Debug, thiserror::Error)]
enum PreambleError {
    #[error("{0}")]
    Header(#[from] ProxyError),
    #[error("closed before its PROXY protocol header was whole")]
    Closed,
    #[error("no whole PROXY protocol header within {0:?}")]
    TimedOut(Duration),
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl Reactor {
    /// Keeps a connection accepted on a PROXY protocol listener (counted against `--max-conns`
    /// already) until its header is whole.
    pub(in crate::reactor) fn await_proxy_header(
        &mut self,
        socket: StreamSocket,
        balancer: Option<IpAddr>,
        accepted: Accepted,
    ) {
        let wait = self
            .config
            .limits
            .handshake_timeout
            .map_or(PROXY_HEADER_TIMEOUT, |t| t.min(PROXY_HEADER_TIMEOUT));
        let deadline = self.core.now + wait;
        let kind = accepted.kind;
        let preamble = Preamble {
            socket,
            accepted,
            balancer,
            deadline,
            wait,
        };
        let Some(token) = self.core.sources.insert(Entry::Preamble(preamble)) else {
            self.admission.conns.close();
            return;
        };
        self.admission.waiting += 1;
        let registry = self.core.poll.registry();
        let registered = match self.core.sources.get_mut(token) {
            Some(Entry::Preamble(p)) => match &mut p.socket {
                TcpOrUnix::Tcp(s) => registry.register(s, token, Interest::READABLE),
                TcpOrUnix::Unix(s) => registry.register(s, token, Interest::READABLE),
            },
            _ => Ok(()),
        };
        if let Err(e) = registered {
            tracing::warn!(service = %kind, "cannot watch a new connection: {e}");
            drop(self.take_preamble(token));
            self.admission.conns.close();
            return;
        }
        self.core
            .timers
            .push(deadline, TimerKind::ProxyHeader(token));
        // The header may have come with the connection: no new edge would announce it.
        self.read_proxy_header(token);
    }

    /// Looks at what a waiting connection has sent; admits it once its header is whole.
    pub(in crate::reactor) fn read_proxy_header(&mut self, token: Token) {
        let Some(Entry::Preamble(p)) = self.core.sources.get_mut(token) else {
            return;
        };
        let window = self
            .bufs
            .scratch
            .get_mut(..proxy::MAX_HEADER)
            .unwrap_or_default();
        let parsed = match peek(&p.socket, window) {
            Ok(0) => Err(PreambleError::Closed),
            Ok(n) => proxy::parse(window.get(..n).unwrap_or_default(), p.accepted.versions)
                .map_err(PreambleError::from),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Parsed::Incomplete),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Parsed::Incomplete),
            Err(e) => Err(PreambleError::Io(e)),
        };
        match parsed {
            Ok(Parsed::Incomplete) => {}
            Ok(Parsed::Done { len, source }) => self.header_done(token, len, source),
            Err(e) => self.refuse_preamble(token, &e),
        }
    }

    /// A waiting connection's time is up.
    pub(in crate::reactor) fn proxy_header_deadline(&mut self, token: Token) {
        if let Some(Entry::Preamble(p)) = self.core.sources.get(token)
            && p.deadline <= self.core.now
        {
            let wait = p.wait;
            self.refuse_preamble(token, &PreambleError::TimedOut(wait));
        }
    }

    /// Reads the header off the socket and admits the connection as its client's.
    fn header_done(&mut self, token: Token, len: usize, source: Option<std::net::SocketAddr>) {
        let Some(mut p) = self.take_preamble(token) else {
            return;
        };
        let deregistered = match &mut p.socket {
            TcpOrUnix::Tcp(s) => self.core.poll.registry().deregister(s),
            TcpOrUnix::Unix(s) => self.core.poll.registry().deregister(s),
        };
        let consumed = deregistered.and_then(|()| {
            let header = self.bufs.scratch.get_mut(..len).unwrap_or_default();
            consume(&mut p.socket, header)
        });
        if let Err(e) = consumed {
            self.admission.conns.close();
            tracing::debug!(service = %p.accepted.kind, "closing before admission: {e}");
            return;
        }
        let client = source.map(super::per_addr::source_of).or(p.balancer);
        let a = p.accepted;
        tracing::debug!(service = %a.kind, balancer = ?p.balancer, client = ?client, "PROXY protocol header");
        if self.shutdown.deadline.is_some() {
            // Accepted before shutdown began: owed an answer whatever the per-address count
            // (it keeps the place in --max-conns it took at accept).
            if let Some(ip) = client {
                self.admission.per_addr.try_open(ip, None);
            }
            if let Some(token) = self.admit(p.socket, client, a.kind, a.auth, a.nodelay, a.tls) {
                self.start_drain(token);
            }
            return;
        }
        // Counted as waiting; counted anew with its client's address.
        self.admission.conns.close();
        if self.has_room(&mut p.socket, client, a.kind, a.auth, a.per_ip) {
            self.admit(p.socket, client, a.kind, a.auth, a.nodelay, a.tls);
        }
    }

    /// Takes a waiting connection out of the slab, and out of the count the loop's exit at
    /// shutdown waits on.
    fn take_preamble(&mut self, token: Token) -> Option<Preamble> {
        match self.core.sources.get(token) {
            Some(Entry::Preamble(_)) => {}
            _ => return None,
        }
        self.admission.waiting = self.admission.waiting.saturating_sub(1);
        match self.core.sources.remove(token) {
            Some(Entry::Preamble(p)) => Some(p),
            _ => None,
        }
    }

    /// Closes a waiting connection and says why (at most one warning a second).
    fn refuse_preamble(&mut self, token: Token, why: &PreambleError) {
        let Some(p) = self.take_preamble(token) else {
            return;
        };
        self.admission.conns.close();
        let kind = p.accepted.kind;
        let c = self.svc.counters.service(kind);
        c.rejected_proxy = c.rejected_proxy.saturating_add(1);
        if let Some(total) = self.admission.warn_proxy.hit(self.core.now, 1) {
            let from = p
                .balancer
                .map_or_else(|| "a unix peer".to_owned(), |ip| ip.to_string());
            tracing::warn!(
                service = %kind,
                "closed a connection from {from} on a PROXY protocol listener: {why} \
                 ({total} such connection(s) closed since the last warning)"
            );
        }
    }
}

/// What the socket holds, left in place.
fn peek(socket: &StreamSocket, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: recv writes at most `buf.len()` bytes into `buf`.
    let n = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Reads exactly `header.len()` bytes, which a peek has shown to be there.
fn consume(socket: &mut StreamSocket, header: &mut [u8]) -> io::Result<()> {
    io::Read::read_exact(socket, header)
}
