//! Hand-over of the listening sockets to a new process (nginx's binary upgrade, HAProxy's
//! `expose-fd listeners`): the protocol is in docs/PROTOCOL.md, "Control socket".
//!
//! The old side: every reactor records a duplicate of each socket it serves (`remember`), so
//! that the first worker, which owns the control socket (`control.rs`), can send every worker's
//! sockets; a successor asks for them, and once it says `ready` every worker stops taking the
//! old sockets out of its poll and calls `begin_shutdown`. The sockets themselves never close:
//! the successor holds the same ones, with their accept queues.
//!
//! The new side (`successor.rs`): `serve --upgrade-from PATH` receives them before binding;
//! `claim` gives each configured listener the first received socket of the same service,
//! transport and address (a configured port 0 takes any port of that address), moved rather
//! than duplicated, so that with `--workers N` each worker takes one of the old workers'
//! sockets; the first worker serves those left over (an old process with more workers). What
//! no listener matches is closed once every worker is bound.

mod control;
mod lifecycle;
mod open;
pub(crate) mod successor;

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Mutex;

pub(crate) use control::{Control, conn_slot};
pub(crate) use open::{open_control, record_exe};

use super::accept::ListenSocket;
use super::dgram::DgramSocket;
use super::{Entry, Reactor};
use crate::addr::ListenAddr;
use crate::config::ListenerConfig;

/// One socket as the protocol names it: `listener SERVICE TRANSPORT ADDR`.
#[derive(Debug)]
pub(crate) struct Described {
    /// The service name (`echo`, `udp-echo`, …), or `control` for the control socket.
    pub(crate) service: String,
    /// `tcp`, `udp`, `unix` or `unixgram`.
    pub(crate) transport: &'static str,
    /// `127.0.0.1:7000`, or a socket file's path.
    pub(crate) addr: String,
    pub(crate) fd: OwnedFd,
}

/// The sockets every worker of this process serves (duplicates), for a hand-over.
static SERVED: Mutex<Vec<Described>> = Mutex::new(Vec::new());

/// The sockets received from the old process, until the listeners claim them.
static RECEIVED: Mutex<Vec<Described>> = Mutex::new(Vec::new());

fn lock(m: &Mutex<Vec<Described>>) -> std::sync::MutexGuard<'_, Vec<Described>> {
    // A panic while the lock was held leaves a list that is still whole.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Makes the sockets received from the old process available to `claim`.
pub(crate) fn install(received: Vec<Described>) {
    lock(&RECEIVED).extend(received);
}

/// The received socket for this listener, if one matches: same service, transport and address
/// (a configured port 0 matches any port of the same address).
pub(crate) fn claim(l: &ListenerConfig) -> Option<OwnedFd> {
    let mut received = lock(&RECEIVED);
    let i = received.iter().position(|d| matches(d, l))?;
    Some(received.swap_remove(i).fd)
}

/// The received control socket, if it was bound at `path`.
pub(crate) fn claim_control(path: &std::path::Path) -> Option<OwnedFd> {
    let mut received = lock(&RECEIVED);
    let i = received
        .iter()
        .position(|d| d.service == "control" && std::path::Path::new(&d.addr) == path)?;
    Some(received.swap_remove(i).fd)
}

/// Closes what no listener claimed (a listener the new configuration dropped), saying so.
pub(crate) fn close_unclaimed() {
    for d in lock(&RECEIVED).drain(..) {
        tracing::warn!(
            "the old process's {} {} {} is not configured here: closed",
            d.service,
            d.transport,
            d.addr
        );
    }
}

fn matches(d: &Described, l: &ListenerConfig) -> bool {
    if d.service != l.service.name() {
        return false;
    }
    match &l.addr {
        ListenAddr::Inet(want) => {
            let transport = if l.service.is_stream() { "tcp" } else { "udp" };
            let Ok(got) = d.addr.parse::<std::net::SocketAddr>() else {
                return false;
            };
            d.transport == transport
                && (got == *want || (want.port() == 0 && got.ip() == want.ip()))
        }
        ListenAddr::Unix(p) => {
            d.transport == "unix" && std::path::Path::new(&d.addr) == p.as_path()
        }
        ListenAddr::Unixgram(p) => {
            d.transport == "unixgram" && std::path::Path::new(&d.addr) == p.as_path()
        }
    }
}

/// Forgets every recorded socket: at shutdown, so that the duplicates do not keep a port
/// taking connections that nobody will accept.
pub(crate) fn forget_served() {
    lock(&SERVED).clear();
}

/// Duplicates of every socket served, for sending; the recorded ones stay.
fn served_copies() -> std::io::Result<Vec<Described>> {
    lock(&SERVED)
        .iter()
        .map(|d| {
            Ok(Described {
                service: d.service.clone(),
                transport: d.transport,
                addr: d.addr.clone(),
                fd: d.fd.try_clone()?,
            })
        })
        .collect()
}

impl Reactor {
    /// Records a duplicate of every listener and datagram socket of this reactor, for a later
    /// hand-over. Called once its sockets are bound.
    pub(super) fn remember_served(&self) -> std::io::Result<()> {
        let mut served = Vec::new();
        for (_, entry) in self.core.sources.iter() {
            let (kind, transport, addr, fd) = match entry {
                Entry::Listener(l) => match &l.socket {
                    ListenSocket::Tcp(s) => (l.kind, "tcp", inet(s.local_addr()), s.as_raw_fd()),
                    ListenSocket::Unix(s) => (
                        l.kind,
                        "unix",
                        s.local_addr()
                            .ok()
                            .and_then(|a| a.as_pathname().map(|p| p.display().to_string())),
                        s.as_raw_fd(),
                    ),
                },
                Entry::Dgram(d) => match &d.socket {
                    DgramSocket::Udp(s) => (d.kind, "udp", inet(s.local_addr()), s.as_raw_fd()),
                    DgramSocket::Unix(s) => (
                        d.kind,
                        "unixgram",
                        s.local_addr()
                            .ok()
                            .and_then(|a| a.as_pathname().map(|p| p.display().to_string())),
                        s.as_raw_fd(),
                    ),
                },
                Entry::Conn(_) | Entry::Pipe(_) | Entry::Preamble(_) => continue,
            };
            let Some(addr) = addr.filter(|a| !a.contains('\n')) else {
                tracing::warn!(service = %kind, "a {transport} socket without an address cannot be handed over");
                continue;
            };
            // SAFETY: `fd` is open for as long as `self` holds the socket; it is only duplicated.
            let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            served.push(Described {
                service: kind.name().to_owned(),
                transport,
                addr,
                fd: borrowed.try_clone_to_owned()?,
            });
        }
        lock(&SERVED).extend(served);
        Ok(())
    }

    /// Serves, beside its own, the received sockets no worker took that match one of its
    /// listeners: an old process with more workers than this one had one per worker, and a
    /// socket closed here would lose the connections queued on it. Called on the first worker
    /// once every worker is bound.
    pub(in crate::reactor) fn adopt_leftovers(&mut self) {
        let listeners = self.config.listeners.clone();
        for (i, l) in listeners.iter().enumerate() {
            while let Some(fd) = claim(l) {
                let copy = fd.try_clone();
                let tls = self.admission.tls.of(i);
                match (
                    self.adopt_one(l, fd, super::inherit::Source::Handover, tls),
                    copy,
                ) {
                    (Ok(b), Ok(copy)) => {
                        tracing::info!("also serving the old process's {b}");
                        let addr = b
                            .addr
                            .split_once(':')
                            .filter(|_| !matches!(l.addr, ListenAddr::Inet(_)));
                        lock(&SERVED).push(Described {
                            service: b.service.name().to_owned(),
                            transport: b.transport,
                            addr: addr.map_or(b.addr.clone(), |(_, p)| p.to_owned()),
                            fd: copy,
                        });
                    }
                    (Ok(_), Err(e)) => {
                        tracing::warn!("cannot record a socket for the next hand-over: {e}")
                    }
                    (Err(e), _) => tracing::warn!("cannot serve a socket of the old process: {e}"),
                }
            }
        }
    }

    /// The successor serves every socket now: this worker takes them out of its poll (the
    /// sockets stay open in the successor, so a plain close would leave them registered
    /// here), leaves the socket files to the successor, and drains as at SIGTERM.
    pub(super) fn stop_after_handover(&mut self) {
        if self.shutdown.deadline.is_some() {
            return;
        }
        let registry = self.core.poll.registry();
        for (_, entry) in self.core.sources.iter() {
            let gone = match entry {
                Entry::Listener(l) => match &l.socket {
                    ListenSocket::Tcp(s) => registry.deregister(&mut SourceRef(s.as_raw_fd())),
                    ListenSocket::Unix(s) => registry.deregister(&mut SourceRef(s.as_raw_fd())),
                },
                Entry::Dgram(d) => match &d.socket {
                    DgramSocket::Udp(s) => registry.deregister(&mut SourceRef(s.as_raw_fd())),
                    DgramSocket::Unix(s) => registry.deregister(&mut SourceRef(s.as_raw_fd())),
                },
                Entry::Conn(_) | Entry::Pipe(_) | Entry::Preamble(_) => Ok(()),
            };
            if let Err(e) = gone {
                tracing::debug!("cannot take a handed-over socket out of the poll: {e}");
            }
        }
        self.shutdown.owned_paths.clear();
        self.begin_shutdown();
    }
}

/// A raw descriptor as a mio source, for deregistering a socket the slab owns.
struct SourceRef(std::os::fd::RawFd);

impl mio::event::Source for SourceRef {
    fn register(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> std::io::Result<()> {
        mio::unix::SourceFd(&self.0).register(registry, token, interests)
    }

    fn reregister(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> std::io::Result<()> {
        mio::unix::SourceFd(&self.0).reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &mio::Registry) -> std::io::Result<()> {
        mio::unix::SourceFd(&self.0).deregister(registry)
    }
}

fn inet(a: std::io::Result<std::net::SocketAddr>) -> Option<String> {
    a.ok().map(|a| a.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::ServiceKind;

    fn described(service: &str, transport: &'static str, addr: &str) -> Described {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        Described {
            service: service.into(),
            transport,
            addr: addr.into(),
            fd: a.into(),
        }
    }

    fn listener(service: ServiceKind, addr: &str) -> ListenerConfig {
        ListenerConfig {
            service,
            addr: addr.parse().unwrap(),
            auth: false,
            sockopts: None,
            max_conns_per_ip: None,
            proxy_protocol: None,
            tls: None,
        }
    }

    #[test]
    fn a_socket_matches_by_service_transport_and_address() {
        let tcp = described("echo", "tcp", "127.0.0.1:7000");
        assert!(matches(
            &tcp,
            &listener(ServiceKind::Echo, "127.0.0.1:7000")
        ));
        assert!(
            matches(&tcp, &listener(ServiceKind::Echo, "127.0.0.1:0")),
            "port 0: any"
        );
        assert!(!matches(
            &tcp,
            &listener(ServiceKind::Echo, "127.0.0.1:7001")
        ));
        assert!(!matches(&tcp, &listener(ServiceKind::Echo, "127.0.0.2:0")));
        assert!(!matches(
            &tcp,
            &listener(ServiceKind::Upper, "127.0.0.1:7000")
        ));
        assert!(!matches(
            &tcp,
            &listener(ServiceKind::UdpEcho, "127.0.0.1:7000")
        ));
        let udp = described("udp-echo", "udp", "127.0.0.1:7000");
        assert!(matches(
            &udp,
            &listener(ServiceKind::UdpEcho, "127.0.0.1:0")
        ));
        let unix = described("echo", "unix", "/tmp/e.sock");
        assert!(matches(
            &unix,
            &listener(ServiceKind::Echo, "unix:/tmp/e.sock")
        ));
        assert!(!matches(
            &unix,
            &listener(ServiceKind::Echo, "unix:/tmp/f.sock")
        ));
        let gram = described("udp-echo", "unixgram", "/tmp/e.dgram");
        assert!(matches(
            &gram,
            &listener(ServiceKind::UdpEcho, "unixgram:/tmp/e.dgram")
        ));
        assert!(!matches(
            &gram,
            &listener(ServiceKind::UdpEcho, "unix:/tmp/e.dgram")
        ));
    }
}
