//! Binding: the listeners and datagram sockets of every configured service, registered in
//! the poll before anything is served, and what the server reports about them at start-up.

use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

use mio::net::{TcpListener, UdpSocket, UnixDatagram, UnixListener};
use mio::{Interest, Poll, Token, Waker};
use signal_hook_mio::v1_0::Signals;

use super::accept::{Admission, ListenSocket, Listener};
use super::alarm::Alarm;
use super::child::Children;
use super::dgram::{DgramEndpoint, DgramSocket};
use super::inherit;
use super::shutdown::Shutdown;
use super::timer::{TimerKind, Timers};
use super::token::{ALARM, SIGNAL, Sources, WAKER};
use super::workers::Links;
use super::{Buffers, Core, Entry, Reactor, ServiceState};
use crate::addr::ListenAddr;
use crate::config::{ListenerConfig, ServerConfig};
use crate::kind::ServiceKind;
use crate::service::auth::Secret;
use crate::service::discovery::{Discovery, DiscoveryInfo, ServiceEntry};
use crate::service::files::FilesShared;
use crate::service::status_page::ListenerSummary;
use crate::service::store::Store;
use crate::service::{DatagramService, Shared};
use crate::sockopt::{self, BindError, OptionsInEffect};
use crate::tls::files::CertInfo;
use crate::tls::server::{ListenerTls, TlsSet};

/// Size of the one read buffer the reactor shares between all sockets. Large enough for any
/// UDP datagram; longer Unix datagrams are cut to it.
const SCRATCH_SIZE: usize = 256 * 1024;

/// One bound socket, as `socklab serve` reports it at start-up.
#[derive(Debug, Clone)]
pub struct BoundListener {
    /// The service it runs.
    pub service: ServiceKind,
    /// `tcp`, `udp`, `unix` or `unixgram`.
    pub transport: &'static str,
    /// The bound address in command-line form (the real port when 0 was asked for).
    pub addr: String,
    /// The socket options in effect, read back from the kernel.
    pub options: OptionsInEffect,
    /// Who passed the socket when it was inherited rather than bound (`systemd`).
    pub inherited: Option<&'static str>,
    /// Clients must authenticate first (the listener's `auth`).
    pub auth: bool,
    /// The programs `exec` may run, by their configured names (files, when exec is on).
    pub exec: Vec<String>,
    /// The certificate a TLS listener serves.
    pub tls: Option<CertInfo>,
}

impl BoundListener {
    /// What the status page lists of it.
    fn summary(&self) -> ListenerSummary {
        ListenerSummary {
            service: self.service,
            transport: self.transport,
            addr: self.addr.clone(),
            tls: self.tls.is_some(),
            auth: self.auth,
        }
    }
}

impl fmt::Display for BoundListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "listening {} {} {} {}",
            self.service, self.transport, self.addr, self.options
        )?;
        if self.auth {
            write!(f, " auth=on")?;
        }
        if !self.exec.is_empty() {
            write!(f, " exec={}", self.exec.join(","))?;
        }
        if let Some(cert) = &self.tls {
            // Space-free, so the line still splits into words: `CN=a b` is `CN=a%20b`.
            let subject = cert.subject.replace('%', "%25").replace(' ', "%20");
            write!(
                f,
                " tls=on cert_expires={} cert_subject={subject}",
                cert.not_after
            )?;
        }
        match self.inherited {
            Some(by) => write!(f, " inherited={by}"),
            None => Ok(()),
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{source}; choose another address with --{service} ADDR (or --no-{service})")]
    Bind {
        service: ServiceKind,
        source: BindError,
    },
    #[error("cannot create the event loop: {0}")]
    Poll(io::Error),
    #[error("cannot watch {what}: {source}")]
    Register { what: String, source: io::Error },
    #[error("cannot install the SIGINT/SIGTERM handlers: {0}")]
    Signals(io::Error),
    #[error("cannot use the data directory {dir}: {source}; choose another with --data-dir")]
    DataDir { dir: String, source: io::Error },
    #[error("{0} requires authentication but no secret was given")]
    NoSecret(ServiceKind),
}

/// How an inherited unix socket is shown: its real path, else the configured one.
fn unix_shown(
    kind: &str,
    real: Option<std::os::unix::net::SocketAddr>,
    configured: &ListenAddr,
) -> String {
    match real.as_ref().and_then(|a| a.as_pathname()) {
        Some(p) => format!("{kind}:{}", p.display()),
        None => configured.to_string(),
    }
}

/// This machine's name, for discovery answers.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "socklab".to_owned())
}

/// What the stream services share: the `files` data directory, opened (and cleared of the
/// temporaries an interrupted run left) when `files` is served.
fn open_shared(config: &ServerConfig) -> Result<Shared, StartError> {
    let mut shared = Shared::default();
    if config
        .listeners
        .iter()
        .any(|l| l.service == ServiceKind::Files)
    {
        let dir = &config.files.data_dir;
        let (store, removed) = Store::open(dir).map_err(|source| StartError::DataDir {
            dir: dir.display().to_string(),
            source,
        })?;
        if removed > 0 {
            tracing::info!(
                removed,
                dir = %dir.display(),
                "removed temporaries left by an interrupted run"
            );
        }
        shared.files = Some(Arc::new(FilesShared::new(
            store,
            config.files.config.clone(),
        )));
    }
    Ok(shared)
}

/// The signals the loop hears, through a pipe in its poll. SIGCHLD tells the loop to reap
/// `exec`'s children; SIGUSR2 starts a successor (`handover/`); SIGHUP reloads the TLS
/// certificates, when there are any (otherwise it keeps its default, the end of the process,
/// as before TLS).
fn watch_signals(poll: &Poll, tls: &TlsSet) -> Result<Signals, StartError> {
    let mut wanted = vec![libc::SIGINT, libc::SIGTERM, libc::SIGCHLD, libc::SIGUSR2];
    if !tls.is_empty() {
        wanted.push(libc::SIGHUP);
    }
    let mut signals = Signals::new(wanted).map_err(StartError::Signals)?;
    poll.registry()
        .register(&mut signals, SIGNAL, Interest::READABLE)
        .map_err(StartError::Signals)?;
    Ok(signals)
}

impl Reactor {
    /// Binds every configured listener and registers it. Nothing is served until `run`.
    pub fn bind(
        config: ServerConfig,
        secret: Option<Secret>,
        tls: TlsSet,
    ) -> Result<(Reactor, Vec<BoundListener>), StartError> {
        let shared = open_shared(&config)?;
        if let Some(l) = config.listeners.iter().find(|l| l.auth)
            && secret.is_none()
        {
            return Err(StartError::NoSecret(l.service));
        }
        let poll = Poll::new().map_err(StartError::Poll)?;
        let signals = watch_signals(&poll, &tls)?;
        let waker = Waker::new(poll.registry(), WAKER).map_err(|source| StartError::Register {
            what: "the waker".into(),
            source,
        })?;
        let alarm = Alarm::new(poll.registry(), ALARM).map_err(|source| StartError::Register {
            what: "the alarm timerfd".into(),
            source,
        })?;
        let mut reactor = Reactor {
            core: Core {
                poll,
                sources: Sources::default(),
                ready: Vec::new(),
                to_close: Vec::new(),
                timers: Timers::default(),
                alarm,
                now: Instant::now(),
            },
            bufs: Buffers {
                scratch: vec![0; SCRATCH_SIZE],
                reply: Vec::new(),
                targets: Vec::new(),
            },
            config,
            svc: ServiceState::default(),
            shared,
            admission: Admission::new(secret, tls),
            children: Children::default(),
            disk: None,
            links: Links::new(Arc::new(waker)),
            shutdown: Shutdown::new(signals),
            control: Default::default(),
            bus: None,
        };
        reactor.room_on_bus();
        let mut bound = Vec::new();
        let listeners = reactor.config.listeners.clone();
        let claims = inherit::claim(&listeners).map_err(|source| StartError::Register {
            what: "an inherited descriptor".into(),
            source,
        })?;
        for (i, (l, claim)) in listeners.iter().zip(claims).enumerate() {
            // On an error, dropping `reactor` removes the socket files bound so far.
            let tls = reactor.admission.tls.of(i);
            bound.push(reactor.serve_one(l, claim, tls)?);
        }
        reactor.set_discovery_answer(&bound);
        reactor.shared.listeners = Arc::new(bound.iter().map(BoundListener::summary).collect());
        let control_err = |source| StartError::Register {
            what: "the control socket".into(),
            source,
        };
        reactor.remember_served().map_err(control_err)?;
        reactor.install_control().map_err(control_err)?;
        reactor.watchdog();
        Ok((reactor, bound))
    }

    /// Binds `l`, or serves it on the descriptor claimed for it; says what it serves.
    fn serve_one(
        &mut self,
        l: &ListenerConfig,
        claim: Option<(OwnedFd, inherit::Source)>,
        tls: Option<Arc<ListenerTls>>,
    ) -> Result<BoundListener, StartError> {
        let info = tls.as_ref().map(|t| t.info());
        let mut b = match claim {
            Some((fd, by)) => self.adopt_one(l, fd, by, tls)?,
            None => self.bind_one(l, tls)?,
        };
        b.auth = l.auth;
        b.tls = info;
        if l.service == ServiceKind::Files
            && let Some(exec) = &self.config.files.config.exec
        {
            b.exec = exec.allow.iter().map(|(name, _)| name.clone()).collect();
        }
        Ok(b)
    }

    /// `WATCHDOG=1` now and again at the interval (half of `WATCHDOG_USEC`), from the timers:
    /// a loop that stops turning stops the pings, and systemd restarts the service.
    pub(super) fn watchdog(&mut self) {
        if let Some(every) = crate::sys::notify::watchdog_interval() {
            crate::sys::notify::notify("WATCHDOG=1");
            let now = Instant::now();
            self.core.timers.push(now + every, TimerKind::Watchdog);
        }
    }

    fn bind_one(
        &mut self,
        conf: &ListenerConfig,
        tls: Option<Arc<ListenerTls>>,
    ) -> Result<BoundListener, StartError> {
        let (service, addr) = (conf.service, &conf.addr);
        let o = self.config.sockopts_of(conf).clone();
        let o = &o;
        let bind_err = |source| StartError::Bind { service, source };
        let local = |r: io::Result<std::net::SocketAddr>| {
            r.map(|a| a.to_string())
                .unwrap_or_else(|_| addr.to_string())
        };
        let (entry, transport, shown, options) = match (addr, service.is_stream()) {
            (ListenAddr::Inet(a), true) => {
                let (l, opts) = sockopt::tcp_listener(*a, o).map_err(bind_err)?;
                let shown = local(l.local_addr());
                let socket = ListenSocket::Tcp(TcpListener::from_std(l));
                (
                    self.listener(socket, conf, o.nodelay, tls),
                    "tcp",
                    shown,
                    opts,
                )
            }
            (ListenAddr::Inet(a), false) => {
                let (s, opts) = sockopt::udp_socket(*a, o).map_err(bind_err)?;
                let shown = local(s.local_addr());
                let socket = DgramSocket::Udp(UdpSocket::from_std(s));
                (self.endpoint(socket, service), "udp", shown, opts)
            }
            (ListenAddr::Unix(p), _) => {
                let (l, opts) = sockopt::unix_listener(p, o).map_err(bind_err)?;
                self.shutdown.owned_paths.push(p.clone());
                let socket = ListenSocket::Unix(UnixListener::from_std(l));
                (
                    self.listener(socket, conf, false, tls),
                    "unix",
                    addr.to_string(),
                    opts,
                )
            }
            (ListenAddr::Unixgram(p), _) => {
                let (s, opts) = sockopt::unix_datagram(p, o).map_err(bind_err)?;
                self.shutdown.owned_paths.push(p.clone());
                let socket = DgramSocket::Unix(UnixDatagram::from_std(s));
                (
                    self.endpoint(socket, service),
                    "unixgram",
                    addr.to_string(),
                    opts,
                )
            }
        };
        self.register(entry, addr)?;
        Ok(BoundListener {
            service,
            transport,
            addr: shown,
            options,
            inherited: None,
            auth: false,
            exec: Vec::new(),
            tls: None,
        })
    }

    /// Serves a listener on a descriptor this process inherited (checked at start-up by
    /// `inherit::install`) instead of binding one. Its socket file, if any, is not ours to
    /// remove at shutdown (the passer owns it), except after a hand-over.
    pub(super) fn adopt_one(
        &mut self,
        conf: &ListenerConfig,
        fd: OwnedFd,
        by: inherit::Source,
        tls: Option<Arc<ListenerTls>>,
    ) -> Result<BoundListener, StartError> {
        let (service, addr) = (conf.service, &conf.addr);
        let nodelay = self.config.sockopts_of(conf).nodelay;
        let io_err = |source| StartError::Register {
            what: format!("the inherited {service} socket"),
            source,
        };
        if by == inherit::Source::Handover
            && let ListenAddr::Unix(p) | ListenAddr::Unixgram(p) = addr
        {
            // Handed over: the old process leaves the file to this one, which removes it.
            self.shutdown.owned_paths.push(p.clone());
        }
        let inet = matches!(addr, ListenAddr::Inet(_));
        let options = sockopt::inherited_effect(&fd, inet, service.is_stream()).map_err(io_err)?;
        let (entry, transport, shown) = match (addr, service.is_stream()) {
            (ListenAddr::Inet(_), true) => {
                let l = std::net::TcpListener::from(fd);
                let shown = l.local_addr().map_err(io_err)?.to_string();
                let socket = ListenSocket::Tcp(TcpListener::from_std(l));
                (self.listener(socket, conf, nodelay, tls), "tcp", shown)
            }
            (ListenAddr::Inet(_), false) => {
                let s = std::net::UdpSocket::from(fd);
                let shown = s.local_addr().map_err(io_err)?.to_string();
                let socket = DgramSocket::Udp(UdpSocket::from_std(s));
                (self.endpoint(socket, service), "udp", shown)
            }
            (ListenAddr::Unix(_), _) => {
                let l = std::os::unix::net::UnixListener::from(fd);
                let shown = unix_shown("unix", l.local_addr().ok(), addr);
                let socket = ListenSocket::Unix(UnixListener::from_std(l));
                (self.listener(socket, conf, false, tls), "unix", shown)
            }
            (ListenAddr::Unixgram(_), _) => {
                let s = std::os::unix::net::UnixDatagram::from(fd);
                let shown = unix_shown("unixgram", s.local_addr().ok(), addr);
                let socket = DgramSocket::Unix(UnixDatagram::from_std(s));
                (self.endpoint(socket, service), "unixgram", shown)
            }
        };
        self.register(entry, addr)?;
        Ok(BoundListener {
            service,
            transport,
            addr: shown,
            options,
            inherited: Some(by.name()),
            auth: false,
            exec: Vec::new(),
            tls: None,
        })
    }

    /// Puts a listener or datagram socket in the slab and the poll.
    fn register(&mut self, entry: Entry, addr: &ListenAddr) -> Result<(), StartError> {
        let register_err = |source| StartError::Register {
            what: addr.to_string(),
            source,
        };
        let token =
            self.core.sources.insert(entry).ok_or_else(|| {
                register_err(io::Error::new(io::ErrorKind::OutOfMemory, "slab full"))
            })?;
        let registry = self.core.poll.registry();
        let registered = match self.core.sources.get_mut(token) {
            Some(Entry::Listener(l)) => match &mut l.socket {
                ListenSocket::Tcp(s) => registry.register(s, token, Interest::READABLE),
                ListenSocket::Unix(s) => registry.register(s, token, Interest::READABLE),
            },
            Some(Entry::Dgram(d)) => registry.register(&mut d.socket, token, Interest::READABLE),
            _ => Ok(()),
        };
        registered.map_err(register_err)
    }

    /// Gives every discovery socket the list of what this server serves, now that it is bound.
    fn set_discovery_answer(&mut self, bound: &[BoundListener]) {
        let info = DiscoveryInfo {
            name: hostname(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            services: bound
                .iter()
                .filter(|b| b.service != ServiceKind::Discovery)
                .map(|b| ServiceEntry {
                    service: b.service.name().to_owned(),
                    transport: b.transport.to_owned(),
                    addr: b.addr.clone(),
                })
                .collect(),
        };
        let tokens: Vec<Token> = self.core.sources.iter().map(|(t, _)| t).collect();
        for token in tokens {
            if let Some(Entry::Dgram(d)) = self.core.sources.get_mut(token)
                && let DatagramService::Discovery(disc) = &mut d.service
            {
                match Discovery::new(&info, self.config.datagram.discovery_rate) {
                    Ok(new) => **disc = new,
                    Err(e) => tracing::warn!("discovery cannot describe this server: {e}"),
                }
            }
        }
    }

    fn listener(
        &self,
        socket: ListenSocket,
        l: &ListenerConfig,
        nodelay: bool,
        tls: Option<Arc<ListenerTls>>,
    ) -> Entry {
        Entry::Listener(Listener {
            socket,
            kind: l.service,
            auth: l.auth,
            nodelay,
            per_ip: self.config.limits.per_ip_limit(l.max_conns_per_ip),
            proxy: l.proxy_protocol,
            tls,
            queued: false,
        })
    }

    fn endpoint(&self, socket: DgramSocket, kind: ServiceKind) -> Entry {
        let service = DatagramService::for_kind(kind, &self.config.datagram);
        match service {
            Some(service) => Entry::Dgram(DgramEndpoint {
                socket,
                kind,
                service,
                queue: Default::default(),
                writable: false,
                queued: false,
            }),
            // `ServerConfig::validate` keeps stream kinds off datagram sockets; should one get
            // here anyway, echo is the harmless answer.
            None => Entry::Dgram(DgramEndpoint {
                socket,
                kind,
                service: DatagramService::Echo(crate::service::echo::Echo),
                queue: Default::default(),
                writable: false,
                queued: false,
            }),
        }
    }
}
