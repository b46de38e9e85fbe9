//! Accepting stream connections: a listener is drained until `WouldBlock` or its budget for
//! the turn; each new connection is admitted against `--max-conns-per-ip` (its source address,
//! `per_addr.rs`) and `--max-conns` (both counted across workers), given its service (and the authentication challenge when its listener asks for one) and
//! registered. Out of descriptors, a reserve descriptor is given up so that the backlog can be
//! accepted and closed rather than left waiting on a connection nobody will serve.

use std::fs::File;
use std::io::{self, Write};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, UnixListener};
use mio::{Interest, Token};

use super::conn::{Conn, StreamSocket};
use super::timer::TimerKind;
use super::transport::{TlsSocket, Transport};
use super::workers::OpenConns;
use super::{Entry, Reactor};
use crate::frame::proxy::ProxyVersions;
use crate::kind::ServiceKind;
use crate::metrics::Busiest;
use crate::service::auth::{AuthGate, Secret, new_challenge};
use crate::service::{Event, StreamService};
use crate::sockopt;
use crate::tls::server::{ListenerTls, TlsSet};

pub(super) use per_addr::PerAddr;

mod per_addr;
pub(super) mod proxied;

/// Addresses named in the `--max-conns` warning and kept for `stats` and metrics.
const BUSIEST: usize = 5;

/// How long a listener rests after an accept error that retrying at once cannot fix.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// At most one warning of a kind per this interval; the rest are counted into the next one.
const WARN_INTERVAL: Duration = Duration::from_secs(1);

/// A listening socket.
#[derive(Debug)]
pub(super) enum ListenSocket {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl ListenSocket {
    /// A connection, and its source address when it has one (TCP).
    fn accept(&self) -> io::Result<(StreamSocket, Option<IpAddr>)> {
        match self {
            ListenSocket::Tcp(l) => l
                .accept()
                .map(|(s, a)| (StreamSocket::Tcp(s), Some(per_addr::source_of(a)))),
            ListenSocket::Unix(l) => l.accept().map(|(s, _)| (StreamSocket::Unix(s), None)),
        }
    }
}

/// A listener and the service its connections get.
#[derive(Debug)]
pub(super) struct Listener {
    /// The socket.
    pub(super) socket: ListenSocket,
    /// The service of the connections it accepts.
    pub(super) kind: ServiceKind,
    /// Its clients must pass the HMAC challenge first.
    pub(super) auth: bool,
    /// TCP_NODELAY for the connections it accepts.
    pub(super) nodelay: bool,
    /// Connections one source address may hold when this listener accepts (`None`: no limit).
    pub(super) per_ip: Option<usize>,
    /// Its connections begin with a PROXY protocol header of these versions.
    pub(super) proxy: Option<ProxyVersions>,
    /// Its connections speak TLS (after the PROXY header, if any).
    pub(super) tls: Option<Arc<ListenerTls>>,
    /// On the ready list already.
    pub(super) queued: bool,
}

/// What admitting a connection needs besides the slab: the connection counts, the reserve
/// descriptor, the warnings' rate limits, the authentication secret.
pub(super) struct Admission {
    /// Stream connections open in every worker, against `--max-conns`.
    pub(super) conns: OpenConns,
    /// Stream connections open in every worker by source address, against
    /// `--max-conns-per-ip`.
    pub(super) per_addr: PerAddr,
    /// Stream connections open now.
    pub(super) open: usize,
    /// Connections of PROXY protocol listeners waiting for their header (`proxied.rs`).
    pub(super) waiting: usize,
    /// A descriptor held in reserve: closed to accept-and-shed connections at EMFILE.
    reserve_fd: Option<File>,
    /// Warnings for `--max-conns` rejections.
    warn_max_conns: RateLimited,
    /// Warnings for descriptor exhaustion.
    warn_fds: RateLimited,
    /// Warnings for `--max-conns-per-ip` refusals.
    warn_per_ip: RateLimited,
    /// Notes of connections closed at `--request-timeout`.
    pub(super) warn_slow: RateLimited,
    /// Warnings for connections closed without a valid PROXY protocol header.
    pub(super) warn_proxy: RateLimited,
    /// The authentication secret, when a listener asks for authentication.
    secret: Option<Secret>,
    /// The TLS listeners' configurations (reloaded on SIGHUP by the first worker).
    pub(super) tls: TlsSet,
}

impl Admission {
    /// Nothing open yet, and the reserve descriptor taken.
    pub(super) fn new(secret: Option<Secret>, tls: TlsSet) -> Admission {
        Admission {
            conns: OpenConns::default(),
            per_addr: PerAddr::default(),
            open: 0,
            waiting: 0,
            reserve_fd: File::open("/dev/null").ok(),
            warn_max_conns: RateLimited::default(),
            warn_fds: RateLimited::default(),
            warn_per_ip: RateLimited::default(),
            warn_slow: RateLimited::default(),
            warn_proxy: RateLimited::default(),
            secret,
            tls,
        }
    }

    /// A connection admitted with source address `ip` is gone: both counts drop.
    pub(super) fn release(&self, ip: Option<IpAddr>) {
        self.conns.close();
        if let Some(ip) = ip {
            self.per_addr.close(ip);
        }
    }
}

/// Logs a warning at most once per interval, counting what it held back.
#[derive(Debug, Default)]
pub(super) struct RateLimited {
    /// When the next warning may be logged.
    next: Option<Instant>,
    /// Events since the last warning.
    held: u64,
}

impl RateLimited {
    /// Counts `n` events; returns the total to report when a warning is due.
    pub(super) fn hit(&mut self, now: Instant, n: u64) -> Option<u64> {
        self.held = self.held.saturating_add(n);
        match self.next {
            Some(next) if now < next => None,
            _ => {
                self.next = Some(now + WARN_INTERVAL);
                Some(std::mem::take(&mut self.held))
            }
        }
    }
}

/// A new connection's transport: TLS when its listener has it; `None` when TLS cannot start.
fn transport_for(
    socket: StreamSocket,
    tls: Option<Arc<ListenerTls>>,
    kind: ServiceKind,
) -> Option<Transport> {
    let Some(tls) = tls else {
        return Some(Transport::Plain(socket));
    };
    match TlsSocket::server(socket, Arc::clone(&tls.config)) {
        Ok(t) => Some(Transport::Tls(Box::new(t))),
        Err(e) => {
            tracing::warn!(service = %kind, "cannot start a TLS connection: {e}");
            None
        }
    }
}

fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Accept errors that concern one connection that died in the backlog, not the listener.
fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::EPROTO
                | libc::EPERM
                | libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH
        )
    )
}

impl Reactor {
    /// Accepts until the backlog is empty or the listener's budget for this turn is spent.
    pub(super) fn accept_all(&mut self, token: Token) {
        let mut budget = self.config.limits.accept_budget;
        loop {
            let Some(Entry::Listener(l)) = self.core.sources.get_mut(token) else {
                return;
            };
            if budget == 0 {
                if !l.queued {
                    l.queued = true;
                    self.core.ready.push(token);
                }
                return;
            }
            budget -= 1;
            let (kind, auth, nodelay, per_ip) = (l.kind, l.auth, l.nodelay, l.per_ip);
            let (proxy, tls) = (l.proxy, l.tls.clone());
            match l.socket.accept() {
                Ok((mut socket, ip)) => match proxy {
                    // The balancer's address says nothing of the client: the header will.
                    Some(versions) => {
                        if self.has_room(&mut socket, None, kind, auth, None) {
                            let accepted = proxied::Accepted {
                                kind,
                                auth,
                                nodelay,
                                per_ip,
                                versions,
                                tls,
                            };
                            self.await_proxy_header(socket, ip, accepted);
                        }
                    }
                    None => {
                        if self.has_room(&mut socket, ip, kind, auth, per_ip) {
                            self.admit(socket, ip, kind, auth, nodelay, tls);
                        }
                    }
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_transient_accept_error(&e) => {
                    tracing::debug!(service = %kind, "accept: {e}");
                }
                Err(e) if is_fd_exhaustion(&e) => {
                    self.shed_backlog(token, kind, &e);
                    return;
                }
                Err(e) => {
                    tracing::error!(service = %kind, "accept failed: {e}; retrying shortly");
                    self.core
                        .timers
                        .push(self.core.now + ACCEPT_RETRY, TimerKind::AcceptRetry(token));
                    return;
                }
            }
        }
    }

    /// Out of descriptors: an edge-triggered listener that merely stopped here would never hear
    /// of the connections already queued. So the reserve descriptor is closed to make room,
    /// and the backlog is accepted and closed one by one: those clients learn at once that
    /// there is no room, instead of waiting on a connection nobody will serve.
    fn shed_backlog(&mut self, token: Token, kind: ServiceKind, cause: &io::Error) {
        let Some(Entry::Listener(l)) = self.core.sources.get(token) else {
            return;
        };
        let mut shed = 0u64;
        let mut drained = false;
        if self.admission.reserve_fd.take().is_some() {
            loop {
                match l.socket.accept() {
                    Ok(socket) => {
                        drop(socket);
                        shed += 1;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        drained = true;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if is_transient_accept_error(&e) => {}
                    Err(_) => break,
                }
            }
            self.admission.reserve_fd = File::open("/dev/null").ok();
        }
        let c = self.svc.counters.service(kind);
        c.rejected_fd_limit = c.rejected_fd_limit.saturating_add(shed);
        if let Some(total) = self.admission.warn_fds.hit(self.core.now, shed.max(1)) {
            tracing::warn!(
                service = %kind,
                open = self.admission.open,
                "out of file descriptors ({cause}): shed {total} connection(s); raise the limit \
                 (ulimit -n) or lower --max-conns"
            );
        }
        if !drained || self.admission.reserve_fd.is_none() {
            // The backlog may still hold connections, and no new edge is promised: look again
            // shortly rather than spin on accept, which fails at the limit even when empty.
            self.core
                .timers
                .push(self.core.now + ACCEPT_RETRY, TimerKind::AcceptRetry(token));
        }
    }

    /// Counts a new connection against `--max-conns-per-ip` and `--max-conns`; one over either
    /// is refused, closed at once and counted (`false`). A connection refused for its address
    /// is told why by its service where that is cheap: one write of a few bytes to a socket
    /// that has just been accepted, whose send buffer is empty.
    fn has_room(
        &mut self,
        socket: &mut StreamSocket,
        ip: Option<IpAddr>,
        kind: ServiceKind,
        auth: bool,
        per_ip: Option<usize>,
    ) -> bool {
        if self.shutdown.deadline.is_some() {
            self.refuse_max_conns(kind);
            return false;
        }
        if let Some(ip) = ip
            && !self.admission.per_addr.try_open(ip, per_ip)
        {
            // An authenticating client waits for a challenge: anything else would mislead it.
            if !auth {
                let mut why = Vec::new();
                StreamService::refusal(kind, &mut why);
                if !why.is_empty() && socket.write(&why).is_err() {
                    tracing::debug!("cannot tell a refused connection why");
                }
            }
            let c = self.svc.counters.service(kind);
            c.rejected_per_ip = c.rejected_per_ip.saturating_add(1);
            if let Some(total) = self.admission.warn_per_ip.hit(self.core.now, 1) {
                tracing::warn!(
                    service = %kind,
                    "per-address limit reached (--max-conns-per-ip {}) by {ip}: closed {total} \
                     new connection(s)",
                    per_ip.unwrap_or_default()
                );
            }
            return false;
        }
        if !self.admission.conns.try_open(self.config.limits.max_conns) {
            if let Some(ip) = ip {
                self.admission.per_addr.close(ip);
            }
            self.refuse_max_conns(kind);
            return false;
        }
        true
    }

    /// Counts a connection refused at `--max-conns`; at most once a second, says so with the
    /// addresses holding the most connections, which `stats` and metrics then show too.
    fn refuse_max_conns(&mut self, kind: ServiceKind) {
        let c = self.svc.counters.service(kind);
        c.rejected_max_conns = c.rejected_max_conns.saturating_add(1);
        let Some(total) = self.admission.warn_max_conns.hit(self.core.now, 1) else {
            return;
        };
        let busiest = self.admission.per_addr.busiest(BUSIEST);
        let named: Vec<String> = busiest.iter().map(|(a, n)| format!("{a} ({n})")).collect();
        tracing::warn!(
            service = %kind,
            "connection limit reached (--max-conns {}): closed {total} new connection(s); \
             busiest addresses: {}",
            self.config.limits.max_conns,
            if named.is_empty() { "none (unix sockets)".to_owned() } else { named.join(", ") }
        );
        self.svc.counters.busiest = Some(Busiest {
            at: self.core.now,
            addrs: busiest,
        });
    }

    /// Takes in one accepted connection, counted already (`has_room`).
    fn admit(
        &mut self,
        socket: StreamSocket,
        ip: Option<IpAddr>,
        kind: ServiceKind,
        auth: bool,
        nodelay: bool,
        tls: Option<Arc<ListenerTls>>,
    ) -> Option<Token> {
        let limits = &self.config.limits;
        if let StreamSocket::Tcp(s) = &socket
            && let Err(e) = sockopt::set_nodelay(s, nodelay)
        {
            tracing::debug!("cannot set TCP_NODELAY on an accepted connection: {e}");
        }
        let Some(service) = StreamService::for_kind(kind, &self.shared) else {
            self.admission.release(ip);
            return None;
        };
        let idle = super::idle_limit(limits, false);
        // A verified client certificate is the handshake's to require: nothing reaches the
        // service before it has passed.
        let cert_authenticated = tls.as_ref().is_some_and(|t| t.verifies_clients());
        let Some(transport) = transport_for(socket, tls, kind) else {
            self.admission.release(ip);
            return None;
        };
        let handshaking = transport.is_handshaking();
        let mut conn = Conn::new(transport, kind, service, self.core.now);
        conn.peer_ip = ip;
        if auth {
            let (Some(secret), Ok(challenge)) = (&self.admission.secret, new_challenge()) else {
                tracing::error!(service = %kind, "cannot make an authentication challenge");
                self.admission.release(ip);
                return None;
            };
            let gate = AuthGate::new(secret.clone(), challenge);
            conn.out.extend(gate.challenge());
            conn.gate = Some(Box::new(gate));
        }
        let token = self.watch(conn, kind)?;
        self.admission.open += 1;
        let c = self.svc.counters.service(kind);
        c.accepted = c.accepted.saturating_add(1);
        c.open = c.open.saturating_add(1);
        if let Some(idle) = idle {
            self.core
                .timers
                .push(self.core.now + idle, TimerKind::Idle(token));
        }
        if handshaking {
            let deadline = self.core.now + self.config.limits.tls_handshake_timeout;
            self.core
                .timers
                .push(deadline, TimerKind::TlsHandshake(token));
        }
        if auth {
            let deadline = self.core.now + self.config.auth_timeout;
            self.core
                .timers
                .push(deadline, TimerKind::AuthTimeout(token));
            // The challenge goes out now, before anything is read.
            self.drive_conn(token, false, true);
        } else if let Some(Entry::Conn(c)) = self.core.sources.get_mut(token) {
            let mut ctx = self.svc.ctx();
            let opened = Event::Opened {
                id: c.id,
                authenticated: cert_authenticated,
            };
            c.served = c.service.served_on_open();
            c.service.on_event(opened, c.out.tail(), &mut ctx);
            self.drive_conn(token, false, true);
            if !self.svc.others.is_empty() {
                self.deliver_to_others(token);
            }
        }
        Some(token)
    }

    /// Puts a new connection in the slab and the poll; on failure it is closed (and no longer
    /// counted against `--max-conns`).
    fn watch(&mut self, conn: Conn, kind: ServiceKind) -> Option<Token> {
        let ip = conn.peer_ip;
        let Some(token) = self.core.sources.insert(Entry::Conn(conn)) else {
            self.admission.release(ip);
            return None;
        };
        let registered = match self.core.sources.get_mut(token) {
            Some(Entry::Conn(c)) => {
                c.id = token.0 as u64;
                let registry = self.core.poll.registry();
                registry
                    .register(&mut c.transport, token, Interest::READABLE)
                    .map(|()| {
                        c.interest = Some(Interest::READABLE);
                    })
            }
            _ => Ok(()),
        };
        if let Err(e) = registered {
            tracing::warn!(service = %kind, "cannot watch a new connection: {e}");
            drop(self.core.sources.remove(token));
            self.admission.release(ip);
            return None;
        }
        Some(token)
    }
}
