//! The server's event loop: the only server code that imports mio.
//!
//! One `Poll`, one `Sources` slab of listeners, connections and datagram sockets. A turn of
//! the loop is: poll (the only blocking call) → walk the events, draining each ready socket
//! until `WouldBlock` or its budget → serve the ready list (sockets that still had work when
//! their budget ran out: no new edge will come for them) → fire due timers → close what was
//! marked dead during the walk. The poll sleeps, with no timeout, until an event: the alarm's
//! timerfd (`alarm.rs`) rings for the earliest timer. It does not sleep at all while the ready
//! list holds something.

pub mod alarm;
pub mod child;
pub mod conn;
pub mod dgram;
pub mod disk;
pub mod timer;
pub mod token;
pub mod workers;

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, UdpSocket, UnixDatagram, UnixListener};
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook_mio::v1_0::Signals;

use crate::addr::ListenAddr;
use crate::config::{Limits, ListenerConfig, ServerConfig, ServiceKind};
use crate::metrics::{Counters, Peers};
use crate::service::auth::{AuthGate, AuthStep, Secret, new_challenge};
use crate::service::chat::ChatRoom;
use crate::service::discovery::{Discovery, DiscoveryInfo, ServiceEntry};
use crate::service::exec::{Capture, Ending, ExecRequest};
use crate::service::files::{DiskDone, DiskJob, FilesShared};
use crate::service::store::Store;
use crate::service::{Ctx, DatagramService, Peer, Shared, Step, StreamService};
use crate::sockopt::{self, BindError, OptionsInEffect};

use alarm::Alarm;
use child::Running;
use conn::{Conn, StreamSocket, write_direct};
use dgram::{DgramEndpoint, DgramSocket, Received, is_per_datagram_error};
use disk::DiskThread;
use timer::{TimerKind, Timers};
use token::{ALARM, SIGNAL, Sources, WAKER};
use workers::{Link, OpenConns};

/// Size of the one read buffer the reactor shares between all sockets. Large enough for any
/// UDP datagram; longer Unix datagrams are cut to it.
const SCRATCH_SIZE: usize = 256 * 1024;

/// How long a listener rests after an accept error that retrying at once cannot fix.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// At most one warning of a kind per this interval; the rest are counted into the next one.
const WARN_INTERVAL: Duration = Duration::from_secs(1);

/// How long a killed command's pipes may stay open (held by something that escaped its
/// process group) before the server stops waiting for them.
const EXEC_PIPE_GRACE: Duration = Duration::from_secs(1);

/// A listening socket.
#[derive(Debug)]
enum ListenSocket {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl ListenSocket {
    fn accept(&self) -> io::Result<StreamSocket> {
        match self {
            ListenSocket::Tcp(l) => l.accept().map(|(s, _)| StreamSocket::Tcp(s)),
            ListenSocket::Unix(l) => l.accept().map(|(s, _)| StreamSocket::Unix(s)),
        }
    }
}

/// A listener and the service its connections get.
#[derive(Debug)]
struct Listener {
    /// The socket.
    socket: ListenSocket,
    /// The service of the connections it accepts.
    kind: ServiceKind,
    /// Its clients must pass the HMAC challenge first.
    auth: bool,
    /// TCP_NODELAY for the connections it accepts.
    nodelay: bool,
    /// On the ready list already.
    queued: bool,
}

/// One end of a child's stdout or stderr pipe.
#[derive(Debug)]
struct Pipe {
    /// The pipe.
    rx: mio::unix::pipe::Receiver,
    /// The command it belongs to.
    child: u64,
    /// stderr (else stdout).
    stderr: bool,
    /// On the ready list already.
    queued: bool,
}

/// Everything that lives in the slab.
#[derive(Debug)]
enum Entry {
    Listener(Listener),
    Conn(Conn),
    Dgram(DgramEndpoint),
    Pipe(Pipe),
}

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
}

impl fmt::Display for BoundListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "listening {} {} {} {}",
            self.service, self.transport, self.addr, self.options
        )
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

/// Logs a warning at most once per interval, counting what it held back.
#[derive(Debug, Default)]
struct RateLimited {
    /// When the next warning may be logged.
    next: Option<Instant>,
    /// Events since the last warning.
    held: u64,
}

impl RateLimited {
    /// Counts `n` events; returns the total to report when a warning is due.
    fn hit(&mut self, now: Instant, n: u64) -> Option<u64> {
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
    /// A partial request grew past what any request may hold.
    InputTooLarge { held: usize },
    /// A long response could not be completed (a file shrank while being sent).
    Broken,
    /// The client hung up while its command was running.
    PeerGone,
}

/// The single-threaded server.
pub struct Reactor {
    /// The poll: its `poll` is the only blocking call on this thread.
    poll: Poll,
    /// Wakes the poll from other threads: the disk thread, the other workers.
    waker: Arc<Waker>,
    /// The channels to the other workers (none with one worker).
    link: Option<Link>,
    /// Stream connections open in every worker, against `--max-conns`.
    conns: OpenConns,
    /// Every socket the server owns.
    sources: Sources<Entry>,
    /// SIGINT and SIGTERM, delivered through a pipe registered in the poll.
    signals: Signals,
    /// Idle checks, accept retries, the shutdown deadline.
    timers: Timers,
    /// Rings for the earliest of those (and the counter report), so the poll sleeps with no
    /// timeout of its own.
    alarm: Alarm,
    /// Sources whose budget ran out with work left; served before the next sleep.
    ready: Vec<Token>,
    /// Connections to close once the event walk is over.
    to_close: Vec<Token>,
    /// The one read buffer for every socket: idle connections hold none of their own.
    scratch: Vec<u8>,
    /// Service output before it is known whether the socket takes it all.
    reply: Vec<u8>,
    /// Limits and options.
    config: ServerConfig,
    /// Stream connections open now.
    open_conns: usize,
    /// A descriptor held in reserve: closed to accept-and-shed connections at EMFILE.
    reserve_fd: Option<File>,
    /// Unix socket files this server created, removed when it stops.
    owned_paths: Vec<PathBuf>,
    /// Set once shutdown begins: the moment the server exits even if output is still pending.
    shutdown_deadline: Option<Instant>,
    /// The time of the current turn, read once after each poll.
    now: Instant,
    /// What the stream services may touch besides their own connection.
    svc: ServiceState,
    /// Warnings for `--max-conns` rejections.
    warn_max_conns: RateLimited,
    /// Warnings for descriptor exhaustion.
    warn_fds: RateLimited,
    /// What the stream services share (the `files` data directory).
    shared: Shared,
    /// The authentication secret, when a listener asks for authentication.
    secret: Option<Secret>,
    /// Where the current datagram's reply goes.
    targets: Vec<Peer>,
    /// The thread that does upload writes and commits (only when `files` runs).
    disk: Option<DiskThread<DiskDone>>,
    /// Commands of `exec` under way, by number.
    children: HashMap<u64, Running>,
    /// The number of the next command.
    next_child: u64,
}

/// This machine's name, for discovery answers.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "socklab".to_owned())
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
    /// Binds every configured listener and registers it. Nothing is served until `run`.
    pub fn bind(
        config: ServerConfig,
        secret: Option<Secret>,
    ) -> Result<(Reactor, Vec<BoundListener>), StartError> {
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
        if let Some(l) = config.listeners.iter().find(|l| l.auth)
            && secret.is_none()
        {
            return Err(StartError::NoSecret(l.service));
        }
        let poll = Poll::new().map_err(StartError::Poll)?;
        // SIGCHLD tells the loop to reap `exec`'s children.
        let mut signals = Signals::new([libc::SIGINT, libc::SIGTERM, libc::SIGCHLD])
            .map_err(StartError::Signals)?;
        poll.registry()
            .register(&mut signals, SIGNAL, Interest::READABLE)
            .map_err(StartError::Signals)?;
        let waker = Waker::new(poll.registry(), WAKER).map_err(|source| StartError::Register {
            what: "the waker".into(),
            source,
        })?;
        let alarm = Alarm::new(poll.registry(), ALARM).map_err(|source| StartError::Register {
            what: "the alarm timerfd".into(),
            source,
        })?;
        let mut reactor = Reactor {
            poll,
            waker: Arc::new(waker),
            link: None,
            conns: OpenConns::default(),
            sources: Sources::default(),
            signals,
            timers: Timers::default(),
            alarm,
            ready: Vec::new(),
            to_close: Vec::new(),
            scratch: vec![0; SCRATCH_SIZE],
            reply: Vec::new(),
            config,
            open_conns: 0,
            reserve_fd: File::open("/dev/null").ok(),
            owned_paths: Vec::new(),
            shutdown_deadline: None,
            now: Instant::now(),
            svc: ServiceState::default(),
            warn_max_conns: RateLimited::default(),
            warn_fds: RateLimited::default(),
            shared,
            secret,
            targets: Vec::new(),
            disk: None,
            children: HashMap::new(),
            next_child: 0,
        };
        let mut bound = Vec::new();
        for l in reactor.config.listeners.clone() {
            // On an error, dropping `reactor` removes the socket files bound so far.
            bound.push(reactor.bind_one(&l)?);
        }
        reactor.set_discovery_answer(&bound);
        Ok((reactor, bound))
    }

    fn bind_one(&mut self, l: &ListenerConfig) -> Result<BoundListener, StartError> {
        let (service, addr, auth) = (l.service, &l.addr, l.auth);
        let o = self.config.sockopts_of(l).clone();
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
                    self.listener(socket, service, auth, o.nodelay),
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
                self.owned_paths.push(p.clone());
                let socket = ListenSocket::Unix(UnixListener::from_std(l));
                (
                    self.listener(socket, service, auth, false),
                    "unix",
                    addr.to_string(),
                    opts,
                )
            }
            (ListenAddr::Unixgram(p), _) => {
                let (s, opts) = sockopt::unix_datagram(p, o).map_err(bind_err)?;
                self.owned_paths.push(p.clone());
                let socket = DgramSocket::Unix(UnixDatagram::from_std(s));
                (
                    self.endpoint(socket, service),
                    "unixgram",
                    addr.to_string(),
                    opts,
                )
            }
        };
        let register_err = |source| StartError::Register {
            what: addr.to_string(),
            source,
        };
        let token = self
            .sources
            .insert(entry)
            .ok_or_else(|| register_err(io::Error::new(io::ErrorKind::OutOfMemory, "slab full")))?;
        let registry = self.poll.registry();
        let registered = match self.sources.get_mut(token) {
            Some(Entry::Listener(l)) => match &mut l.socket {
                ListenSocket::Tcp(s) => registry.register(s, token, Interest::READABLE),
                ListenSocket::Unix(s) => registry.register(s, token, Interest::READABLE),
            },
            Some(Entry::Dgram(d)) => registry.register(&mut d.socket, token, Interest::READABLE),
            _ => Ok(()),
        };
        registered.map_err(register_err)?;
        Ok(BoundListener {
            service,
            transport,
            addr: shown,
            options,
        })
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
        let tokens: Vec<Token> = self.sources.iter().map(|(t, _)| t).collect();
        for token in tokens {
            if let Some(Entry::Dgram(d)) = self.sources.get_mut(token)
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
        kind: ServiceKind,
        auth: bool,
        nodelay: bool,
    ) -> Entry {
        Entry::Listener(Listener {
            socket,
            kind,
            auth,
            nodelay,
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

    /// The counters so far.
    pub fn counters(&self) -> &Counters {
        &self.svc.counters
    }

    /// Runs until SIGINT or SIGTERM, then drains pending output for the grace period.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        // When the last turn ended: what the next deadline is compared with before sleeping.
        let mut turn_end = Instant::now();
        loop {
            let timeout = if self.ready.is_empty() {
                self.set_alarm(turn_end)
            } else {
                Some(Duration::ZERO)
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            self.now = Instant::now();
            self.svc.counters.loop_iterations = self.svc.counters.loop_iterations.saturating_add(1);
            for ev in events.iter() {
                // Errors and hang-ups are delivered to both sides, so the read or write that
                // follows sees them and the connection is closed through the normal path.
                let hup = ev.is_read_closed() || ev.is_error();
                let readable = ev.is_readable() || hup;
                let writable = ev.is_writable() || ev.is_write_closed() || ev.is_error();
                if hup && let Some(Entry::Conn(c)) = self.sources.get_mut(ev.token()) {
                    c.hup_seen = true;
                }
                self.dispatch(ev.token(), readable, writable);
            }
            self.serve_ready();
            self.fire_timers();
            self.close_dead();
            turn_end = Instant::now();
            self.svc.counters.loop_busy += turn_end.saturating_duration_since(self.now);
            self.report_counters();
            if let Some(deadline) = self.shutdown_deadline {
                if self.open_conns == 0 {
                    tracing::info!("every connection is closed; exiting");
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    tracing::warn!(
                        open = self.open_conns,
                        "shutdown grace period over; closing the connections left"
                    );
                    return Ok(());
                }
            }
        }
    }

    /// Arms the alarm for the earliest deadline (a timer or the counter report) and returns
    /// the poll timeout: none, or zero when that deadline had passed by the end of the turn.
    fn set_alarm(&mut self, turn_end: Instant) -> Option<Duration> {
        let next = match (self.timers.next_deadline(), self.report_due()) {
            (Some(t), Some(r)) => Some(t.min(r)),
            (t, r) => t.or(r),
        };
        let deadline = next?;
        if deadline <= turn_end {
            return Some(Duration::ZERO);
        }
        match self.alarm.ring_by(deadline, Instant::now) {
            Ok(()) => None,
            Err(e) => {
                // Not expected (the arguments are valid); the poll's own timeout still works.
                tracing::warn!("cannot arm the alarm timerfd: {e}");
                Some(deadline.saturating_duration_since(Instant::now()))
            }
        }
    }

    fn dispatch(&mut self, token: Token, readable: bool, writable: bool) {
        if token == SIGNAL {
            self.on_signals();
            return;
        }
        if token == WAKER {
            self.collect_disk_results();
            self.read_inbox();
            return;
        }
        if token == ALARM {
            // What is due fires after the event walk, as on any turn.
            self.alarm.rang();
            return;
        }
        match self.sources.get(token) {
            Some(Entry::Listener(_)) => self.accept_all(token),
            Some(Entry::Conn(_)) => self.drive_conn(token, readable, writable),
            Some(Entry::Dgram(_)) => self.drive_dgram(token, readable, writable),
            Some(Entry::Pipe(_)) => self.read_pipe(token),
            // A stale event for a source closed earlier: its slot is empty or reused.
            None => {}
        }
    }

    /// Serves the sources whose budget ran out last turn. Those that run out again go on the
    /// list for the next turn, so one busy socket cannot keep this loop from sleeping or
    /// others from their turn.
    fn serve_ready(&mut self) {
        let ready = std::mem::take(&mut self.ready);
        for token in ready {
            match self.sources.get_mut(token) {
                Some(Entry::Listener(l)) => {
                    l.queued = false;
                    self.accept_all(token);
                }
                Some(Entry::Conn(c)) => {
                    c.queued = false;
                    self.drive_conn(token, true, true);
                }
                Some(Entry::Dgram(d)) => {
                    d.queued = false;
                    self.drive_dgram(token, true, true);
                }
                Some(Entry::Pipe(p)) => {
                    p.queued = false;
                    self.read_pipe(token);
                }
                None => {}
            }
        }
    }

    fn on_signals(&mut self) {
        let mut got: Vec<i32> = self.signals.pending().collect();
        if got.contains(&libc::SIGCHLD) {
            self.reap_children();
            got.retain(|s| *s != libc::SIGCHLD);
        }
        if got.is_empty() {
            return;
        }
        if self.shutdown_deadline.is_some() {
            tracing::warn!("second signal: exiting without waiting for pending output");
            self.shutdown_deadline = Some(self.now);
            return;
        }
        self.begin_shutdown();
    }

    /// Stops accepting and receiving, removes the socket files, and lets connections drain.
    fn begin_shutdown(&mut self) {
        let grace = self.config.limits.shutdown_grace;
        tracing::info!(
            open = self.open_conns,
            "shutting down: no new connections; pending output has {}",
            humantime::format_duration(grace)
        );
        let deadline = self.now + grace;
        self.shutdown_deadline = Some(deadline);
        self.timers.push(deadline, TimerKind::ShutdownGrace);
        let mut conns = Vec::new();
        let mut others = Vec::new();
        for (token, entry) in self.sources.iter() {
            match entry {
                Entry::Conn(_) => conns.push(token),
                Entry::Listener(_) | Entry::Dgram(_) => others.push(token),
                Entry::Pipe(_) => {}
            }
        }
        for token in others {
            // Dropping closes the socket, which also takes it out of the poll.
            drop(self.sources.remove(token));
        }
        self.remove_socket_files();
        // Running commands are killed; their connections get the answer and then close.
        for running in self.children.values() {
            running.kill();
        }
        for token in conns {
            if let Some(Entry::Conn(c)) = self.sources.get_mut(token) {
                c.read_closed = true;
            }
            self.drive_conn(token, false, true);
        }
    }

    fn remove_socket_files(&mut self) {
        for path in self.owned_paths.drain(..) {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), "cannot remove socket file: {e}");
            }
        }
    }

    /// Accepts until the backlog is empty or the listener's budget for this turn is spent.
    fn accept_all(&mut self, token: Token) {
        let mut budget = self.config.limits.accept_budget;
        loop {
            let Some(Entry::Listener(l)) = self.sources.get_mut(token) else {
                return;
            };
            if budget == 0 {
                if !l.queued {
                    l.queued = true;
                    self.ready.push(token);
                }
                return;
            }
            budget -= 1;
            let (kind, auth, nodelay) = (l.kind, l.auth, l.nodelay);
            match l.socket.accept() {
                Ok(socket) => self.admit(socket, kind, auth, nodelay),
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
                    self.timers
                        .push(self.now + ACCEPT_RETRY, TimerKind::AcceptRetry(token));
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
        let Some(Entry::Listener(l)) = self.sources.get(token) else {
            return;
        };
        let mut shed = 0u64;
        let mut drained = false;
        if self.reserve_fd.take().is_some() {
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
            self.reserve_fd = File::open("/dev/null").ok();
        }
        let c = self.svc.counters.service(kind);
        c.rejected_fd_limit = c.rejected_fd_limit.saturating_add(shed);
        if let Some(total) = self.warn_fds.hit(self.now, shed.max(1)) {
            tracing::warn!(
                service = %kind,
                open = self.open_conns,
                "out of file descriptors ({cause}): shed {total} connection(s); raise the limit \
                 (ulimit -n) or lower --max-conns"
            );
        }
        if !drained || self.reserve_fd.is_none() {
            // The backlog may still hold connections, and no new edge is promised: look again
            // shortly rather than spin on accept, which fails at the limit even when empty.
            self.timers
                .push(self.now + ACCEPT_RETRY, TimerKind::AcceptRetry(token));
        }
    }

    /// Takes in one accepted connection, or closes it at once when `--max-conns` are open.
    fn admit(&mut self, socket: StreamSocket, kind: ServiceKind, auth: bool, nodelay: bool) {
        let limits = &self.config.limits;
        if self.shutdown_deadline.is_some() || !self.conns.try_open(limits.max_conns) {
            drop(socket);
            let c = self.svc.counters.service(kind);
            c.rejected_max_conns = c.rejected_max_conns.saturating_add(1);
            if let Some(total) = self.warn_max_conns.hit(self.now, 1) {
                tracing::warn!(
                    service = %kind,
                    "connection limit reached (--max-conns {}): closed {total} new connection(s)",
                    limits.max_conns
                );
            }
            return;
        }
        if let StreamSocket::Tcp(s) = &socket
            && let Err(e) = sockopt::set_nodelay(s, nodelay)
        {
            tracing::debug!("cannot set TCP_NODELAY on an accepted connection: {e}");
        }
        let Some(service) = StreamService::for_kind(kind, &self.shared) else {
            self.conns.close();
            return;
        };
        let idle = limits.idle_timeout;
        let mut conn = Conn::new(socket, kind, service, self.now);
        if auth {
            let (Some(secret), Ok(challenge)) = (&self.secret, new_challenge()) else {
                tracing::error!(service = %kind, "cannot make an authentication challenge");
                self.conns.close();
                return;
            };
            let gate = AuthGate::new(secret.clone(), challenge);
            conn.out.extend(gate.challenge());
            conn.gate = Some(Box::new(gate));
        }
        let Some(token) = self.sources.insert(Entry::Conn(conn)) else {
            self.conns.close();
            return;
        };
        let registered = match self.sources.get_mut(token) {
            Some(Entry::Conn(c)) => {
                c.id = token.0 as u64;
                let registry = self.poll.registry();
                registry
                    .register(&mut c.socket, token, Interest::READABLE)
                    .map(|()| {
                        c.interest = Some(Interest::READABLE);
                    })
            }
            _ => Ok(()),
        };
        if let Err(e) = registered {
            tracing::warn!(service = %kind, "cannot watch a new connection: {e}");
            drop(self.sources.remove(token));
            self.conns.close();
            return;
        }
        self.open_conns += 1;
        let c = self.svc.counters.service(kind);
        c.accepted = c.accepted.saturating_add(1);
        c.open = c.open.saturating_add(1);
        if let Some(idle) = idle {
            self.timers.push(self.now + idle, TimerKind::Idle(token));
        }
        if auth {
            let deadline = self.now + self.config.auth_timeout;
            self.timers.push(deadline, TimerKind::AuthTimeout(token));
            // The challenge goes out now, before anything is read.
            self.drive_conn(token, false, true);
        } else if let Some(Entry::Conn(c)) = self.sources.get_mut(token) {
            let mut ctx = self.svc.ctx();
            c.service.on_open(c.id, false, c.out.tail(), &mut ctx);
            self.drive_conn(token, false, true);
            if !self.svc.others.is_empty() {
                self.deliver_to_others(token);
            }
        }
    }

    /// Starts a command for `conn`, or answers at once why it cannot run.
    fn start_exec(&mut self, conn: Token, req: ExecRequest) {
        let Some(policy) = self
            .shared
            .files
            .as_ref()
            .and_then(|f| f.config.exec.clone())
        else {
            return;
        };
        if self.children.len() >= policy.max_procs {
            self.exec_answer(conn, &Ending::TooBusy(self.children.len()), None);
            return;
        }
        let (child, out, err) = match child::spawn(&req, &policy.workdir) {
            Ok(parts) => parts,
            Err(e) => {
                tracing::warn!(program = %req.program.display(), "exec cannot start: {e}");
                self.exec_answer(conn, &Ending::SpawnFailed(e.to_string()), None);
                return;
            }
        };
        let id = self.next_child;
        self.next_child = self.next_child.wrapping_add(1);
        let pgid = child::child_pgid(&child);
        let mut running = Running {
            conn,
            child,
            pgid,
            stdout: Capture::default(),
            stderr: Capture::default(),
            pipes: Vec::new(),
            exited: None,
            timed_out: false,
            started: self.now,
        };
        for (rx, stderr) in [(out, false), (err, true)] {
            let pipe = Entry::Pipe(Pipe {
                rx,
                child: id,
                stderr,
                queued: false,
            });
            let Some(token) = self.sources.insert(pipe) else {
                continue;
            };
            if let Some(Entry::Pipe(p)) = self.sources.get_mut(token)
                && self
                    .poll
                    .registry()
                    .register(&mut p.rx, token, Interest::READABLE)
                    .is_ok()
            {
                running.pipes.push(token);
            } else {
                drop(self.sources.remove(token));
            }
        }
        tracing::debug!(program = %req.program.display(), pid = pgid, "exec started");
        self.children.insert(id, running);
        self.timers
            .push(self.now + req.timeout, TimerKind::ExecDeadline(id));
        // A child may exit before its SIGCHLD is watched for this id: look now.
        self.reap_children();
    }

    /// Reads a child's pipe until it would block, its end, or the budget.
    fn read_pipe(&mut self, token: Token) {
        let max_output = self
            .shared
            .files
            .as_ref()
            .and_then(|f| f.config.exec.as_ref())
            .map_or(0, |p| p.max_output);
        let Some(Entry::Pipe(p)) = self.sources.get_mut(token) else {
            return;
        };
        let id = p.child;
        let mut budget = self.config.limits.read_budget;
        let mut eof = false;
        loop {
            if budget == 0 {
                if !p.queued {
                    p.queued = true;
                    self.ready.push(token);
                }
                break;
            }
            match (&p.rx).read(&mut self.scratch) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    let data = self.scratch.get(..n).unwrap_or_default();
                    if let Some(r) = self.children.get_mut(&id) {
                        let capture = if p.stderr {
                            &mut r.stderr
                        } else {
                            &mut r.stdout
                        };
                        capture.take(data, max_output);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        if eof {
            drop(self.sources.remove(token));
            if let Some(r) = self.children.get_mut(&id) {
                r.pipes.retain(|t| *t != token);
            }
            self.finish_child(id);
        }
    }

    /// Collects the exit status of every child that has ended.
    fn reap_children(&mut self) {
        let ids: Vec<u64> = self.children.keys().copied().collect();
        for id in ids {
            if let Some(r) = self.children.get_mut(&id)
                && r.exited.is_none()
                && let Ok(Some(status)) = r.child.try_wait()
            {
                r.exited = Some(status);
                self.finish_child(id);
            }
        }
    }

    /// Answers a command's connection once the child is reaped and its pipes are drained.
    fn finish_child(&mut self, id: u64) {
        if !self.children.get(&id).is_some_and(Running::finished) {
            return;
        }
        let Some(r) = self.children.remove(&id) else {
            return;
        };
        tracing::debug!(
            pid = r.pgid,
            ms = r.started.elapsed().as_millis() as u64,
            "exec finished"
        );
        self.exec_answer(r.conn, &r.ending(), Some((&r.stdout, &r.stderr)));
    }

    /// Writes an `exec` response to `conn`, if it is still there.
    fn exec_answer(&mut self, conn: Token, ending: &Ending, output: Option<(&Capture, &Capture)>) {
        let empty = Capture::default();
        let (out, err) = output.unwrap_or((&empty, &empty));
        if let Some(Entry::Conn(c)) = self.sources.get_mut(conn)
            && !c.dead
        {
            c.service
                .on_exec_done(ending, out, err, c.out.tail(), &mut self.svc.counters);
            // Resumes input paused while the command ran (`resume_held_input`).
            self.drive_conn(conn, false, true);
        }
    }

    /// The command ran past its timeout: kill its group. If something it started escaped the
    /// group and still holds a pipe, the pipes are given up a little later.
    fn exec_deadline(&mut self, id: u64) {
        if let Some(r) = self.children.get_mut(&id)
            && r.exited.is_none()
        {
            r.timed_out = true;
            r.kill();
            self.timers
                .push(self.now + EXEC_PIPE_GRACE, TimerKind::ExecPipeGrace(id));
        }
    }

    /// Stops waiting for the pipes of a killed command.
    fn exec_pipe_grace(&mut self, id: u64) {
        let Some(r) = self.children.get_mut(&id) else {
            return;
        };
        for token in std::mem::take(&mut r.pipes) {
            drop(self.sources.remove(token));
        }
        self.finish_child(id);
    }

    /// Hands the disk work a connection queued to the disk thread, in order. The thread starts
    /// with the first job: until then the process has one thread, and a process with one thread
    /// pays no atomic reference count on the descriptor of every read and write (the kernel's
    /// `fdget`) and no cancellation bookkeeping in libc's `send` and `recv`.
    fn submit_disk_jobs(&mut self, token: Token) {
        let jobs = std::mem::take(&mut self.svc.disk);
        if self.disk.is_none() {
            match DiskThread::start(Arc::clone(&self.waker)) {
                Ok(disk) => self.disk = Some(disk),
                Err(e) => {
                    tracing::error!("cannot start the disk thread: {e}; closing the connection");
                    if let Some(Entry::Conn(c)) = self.sources.get_mut(token) {
                        c.dead = true;
                        self.to_close.push(token);
                    }
                    return;
                }
            }
        }
        if let Some(disk) = &self.disk {
            for job in jobs {
                disk.submit(token, job);
            }
        }
    }

    /// Gives each connection the results of its disk work, and drives it: a `put` response
    /// may be ready, or reading may resume.
    fn collect_disk_results(&mut self) {
        let mut touched = Vec::new();
        while let Some((token, done)) = self.disk.as_ref().and_then(DiskThread::try_done) {
            if let Some(Entry::Conn(c)) = self.sources.get_mut(token) {
                c.service
                    .on_disk_done(done, c.out.tail(), &mut self.svc.counters);
                if !touched.contains(&token) {
                    touched.push(token);
                }
            }
        }
        for token in touched {
            // Resumes input paused by upload bytes in flight or a commit (`resume_held_input`).
            self.drive_conn(token, false, true);
        }
    }

    /// Delivers the chat lines a member of this worker produced: to the other members here,
    /// and to every other worker's.
    fn deliver_to_others(&mut self, from: Token) {
        let bytes = std::mem::take(&mut self.svc.others);
        self.deliver_chat(&bytes, Some(from));
        self.forward_chat(&bytes);
        // Hand the buffer back so its capacity is reused.
        self.svc.others = bytes;
        self.svc.others.clear();
    }

    /// Writes what is pending, reads what the budget allows, and settles the connection's
    /// registration, ready-list place or closing.
    fn drive_conn(&mut self, token: Token, readable: bool, writable: bool) {
        let limits = &self.config.limits;
        let Some(Entry::Conn(c)) = self.sources.get_mut(token) else {
            return;
        };
        if c.dead {
            return;
        }
        let mut io = TurnIo {
            scratch: &mut self.scratch,
            reply: &mut self.reply,
            svc: &mut self.svc,
        };
        let (verdict, received, sent) = drive(c, readable, writable, &mut io, limits, self.now);
        let kind = c.kind;
        let exec = c.service.take_exec();
        if !self.svc.disk.is_empty() {
            self.submit_disk_jobs(token);
        }
        if let Some(req) = exec {
            self.start_exec(token, req);
        }
        if !self.svc.others.is_empty() {
            self.deliver_to_others(token);
        }
        let counters = self.svc.counters.service(kind);
        counters.bytes_received = counters.bytes_received.saturating_add(received as u64);
        counters.bytes_sent = counters.bytes_sent.saturating_add(sent as u64);
        let Some(Entry::Conn(c)) = self.sources.get_mut(token) else {
            return;
        };
        match verdict {
            Verdict::Close(reason) => {
                match &reason {
                    CloseReason::SlowReader { pending } => tracing::info!(
                        service = %kind,
                        pending,
                        "disconnecting a client that does not read its replies (--max-pending)"
                    ),
                    CloseReason::InputTooLarge { held } => tracing::info!(
                        service = %kind,
                        held,
                        "disconnecting a client whose partial request is too large"
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
                c.dead = true;
                self.to_close.push(token);
            }
            Verdict::Open { more } => {
                if let Err(e) = update_interest(&self.poll, c, token) {
                    tracing::warn!(service = %kind, "cannot update a connection's interest: {e}");
                    c.dead = true;
                    self.to_close.push(token);
                    return;
                }
                if more && !c.queued {
                    c.queued = true;
                    self.ready.push(token);
                }
            }
        }
    }

    /// Sends queued replies, then receives and answers datagrams up to the budget.
    fn drive_dgram(&mut self, token: Token, readable: bool, _writable: bool) {
        let limits = &self.config.limits;
        let Some(Entry::Dgram(d)) = self.sources.get_mut(token) else {
            return;
        };
        let kind = d.kind;
        let mut stats = DgramStats::default();
        flush_datagrams(d, &mut stats);
        let mut more = false;
        if readable {
            // Read once per batch, for the services that answer with the time of day.
            let mut wall = None;
            let mut budget = limits.datagram_budget;
            loop {
                if budget == 0 {
                    more = true;
                    break;
                }
                budget -= 1;
                match d.socket.recv(&mut self.scratch) {
                    Ok(Received::From(n, peer)) => {
                        stats.received += 1;
                        stats.bytes_in += n;
                        let payload = self.scratch.get(..n).unwrap_or_default();
                        let targets = &mut self.targets;
                        if wall.is_none() && d.service.needs_wall_clock() {
                            wall = Some(chrono::Local::now());
                        }
                        d.service.on_datagram(
                            &peer,
                            payload,
                            self.now,
                            wall.as_ref(),
                            &mut self.reply,
                            targets,
                        );
                        for target in targets.drain(..) {
                            send_or_queue(d, target, &self.reply, limits, &mut stats);
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
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // An ICMP error for an earlier reply surfaces here; it is about that peer.
                    Err(e) if is_per_datagram_error(&e) => {
                        tracing::debug!(service = %kind, "receive: {e}")
                    }
                    Err(e) => {
                        tracing::warn!(service = %kind, "receive failed: {e}");
                        break;
                    }
                }
            }
        }
        let want_writable = !d.queue.is_empty();
        if want_writable != d.writable {
            let interest = if want_writable {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            match self
                .poll
                .registry()
                .reregister(&mut d.socket, token, interest)
            {
                Ok(()) => d.writable = want_writable,
                Err(e) => tracing::warn!(service = %kind, "cannot update interest: {e}"),
            }
        }
        if more && !d.queued {
            d.queued = true;
            self.ready.push(token);
        }
        let c = self.svc.counters.service(kind);
        c.datagrams_received = c.datagrams_received.saturating_add(stats.received);
        c.datagrams_sent = c.datagrams_sent.saturating_add(stats.sent);
        c.datagrams_dropped = c.datagrams_dropped.saturating_add(stats.dropped);
        c.bytes_received = c.bytes_received.saturating_add(stats.bytes_in as u64);
        c.bytes_sent = c.bytes_sent.saturating_add(stats.bytes_out as u64);
    }

    fn fire_timers(&mut self) {
        while let Some(kind) = self.timers.pop_due(self.now) {
            match kind {
                TimerKind::Idle(token) => self.check_idle(token),
                TimerKind::AuthTimeout(token) => self.check_auth(token),
                TimerKind::ExecDeadline(id) => self.exec_deadline(id),
                TimerKind::ExecPipeGrace(id) => self.exec_pipe_grace(id),
                TimerKind::AcceptRetry(token) => self.accept_all(token),
                TimerKind::ShutdownGrace => {}
            }
        }
        // Entries of closed connections wait in the heap until due; compact when they
        // outnumber the live ones, so churn cannot grow the heap.
        if self.timers.len() > 2 * self.sources.len() + 1024 {
            let sources = &self.sources;
            self.timers.retain(|k| match k {
                TimerKind::Idle(t) | TimerKind::AcceptRetry(t) | TimerKind::AuthTimeout(t) => {
                    sources.get(*t).is_some()
                }
                TimerKind::ShutdownGrace
                | TimerKind::ExecDeadline(_)
                | TimerKind::ExecPipeGrace(_) => true,
            });
        }
    }

    /// A client that has not answered the challenge in time fails it.
    fn check_auth(&mut self, token: Token) {
        let Some(Entry::Conn(c)) = self.sources.get_mut(token) else {
            return;
        };
        if c.dead || c.gate.is_none() {
            return;
        }
        tracing::info!(service = %c.kind, "authentication timed out (--auth-timeout)");
        c.gate = None;
        c.service
            .on_auth_failed(c.out.tail(), &mut self.svc.counters);
        stop_input(c);
        let c = self.svc.counters.service(c.kind);
        c.rejected_auth = c.rejected_auth.saturating_add(1);
        self.drive_conn(token, false, true);
    }

    fn check_idle(&mut self, token: Token) {
        let Some(idle) = self.config.limits.idle_timeout else {
            return;
        };
        let Some(Entry::Conn(c)) = self.sources.get_mut(token) else {
            return;
        };
        if c.dead {
            return;
        }
        let due = c.last_active + idle;
        if due <= self.now {
            tracing::debug!(service = %c.kind, "closing an idle connection (--idle-timeout)");
            c.dead = true;
            self.to_close.push(token);
        } else {
            self.timers.push(due, TimerKind::Idle(token));
        }
    }

    /// Closes the connections marked during the walk: their slots are freed only now, so no
    /// event of this batch can land on a successor.
    fn close_dead(&mut self) {
        // Leave notices can drop further members that do not read: repeat until none is left.
        while !self.to_close.is_empty() {
            for token in std::mem::take(&mut self.to_close) {
                if let Some(Entry::Conn(mut c)) = self.sources.remove(token) {
                    // A command of a client that left is killed; it is still reaped.
                    for r in self.children.values().filter(|r| r.conn == token) {
                        r.kill();
                    }
                    discard_unread(&mut c.socket, &mut self.scratch);
                    self.open_conns = self.open_conns.saturating_sub(1);
                    self.conns.close();
                    let counters = self.svc.counters.service(c.kind);
                    counters.open = counters.open.saturating_sub(1);
                    let mut ctx = self.svc.ctx();
                    c.service.on_close(&mut ctx);
                    if !self.svc.others.is_empty() {
                        self.deliver_to_others(token);
                    }
                }
            }
        }
    }
}

impl Drop for Reactor {
    fn drop(&mut self) {
        self.remove_socket_files();
    }
}

/// Re-registers a connection when what it should wait for has changed (one syscall only then).
fn update_interest(poll: &Poll, c: &mut Conn, token: Token) -> io::Result<()> {
    let want = wanted_interest(c);
    if c.interest != Some(want) {
        poll.registry().reregister(&mut c.socket, token, want)?;
        c.interest = Some(want);
    }
    Ok(())
}

/// What a connection should be registered for: READABLE while it may read, WRITABLE only while
/// output is pending (so an idle connection is never woken for writability).
fn wanted_interest(c: &Conn) -> Interest {
    let read = !c.read_closed && !c.read_paused;
    // A file going out by sendfile waits for writability with nothing in `out`.
    let write = !c.out.is_empty() || c.service.file_range().is_some();
    match (read, write) {
        (true, true) => Interest::READABLE | Interest::WRITABLE,
        (false, true) => Interest::WRITABLE,
        // With nothing to write, READABLE stays even when no read is wanted: a hang-up must
        // still be heard (a client that leaves while its command runs), and READABLE carries it.
        (true, false) | (false, false) => Interest::READABLE,
    }
}

/// Reads and drops what the peer sent but nobody will read, so that closing sends a FIN
/// rather than a reset that could destroy the replies still in flight to it. Bounded: a
/// peer that keeps sending gets the reset.
fn discard_unread(socket: &mut StreamSocket, scratch: &mut [u8]) {
    for _ in 0..4 {
        match socket.read(scratch) {
            Ok(n) if n > 0 => {}
            _ => return,
        }
    }
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

/// What the stream services may touch besides their own connection, lent to them as a `Ctx`.
#[derive(Default)]
struct ServiceState {
    /// Counters the services update (frames) and report (`stats`).
    counters: Counters,
    /// The chat room of this reactor.
    room: ChatRoom,
    /// Chat lines a member produced for the others, delivered after its drive.
    others: Vec<u8>,
    /// Disk work queued by the connection being driven, submitted after its drive.
    disk: Vec<DiskJob>,
    /// The other workers' counters, as each last reported them.
    peers: Peers,
}

impl ServiceState {
    /// What a service may touch, borrowed from this state.
    fn ctx(&mut self) -> Ctx<'_> {
        Ctx {
            counters: &mut self.counters,
            room: &mut self.room,
            others: &mut self.others,
            disk: &mut self.disk,
            peers: &self.peers,
        }
    }
}

/// Largest slice of a long response produced in one call.
const PRODUCE_CHUNK: usize = 64 * 1024;

/// What one drive of one connection moved, and whether it left work for the ready list.
#[derive(Debug, Default)]
struct Tally {
    /// Bytes read from the socket.
    received: usize,
    /// Bytes written to the socket.
    sent: usize,
    /// Work is left that no new event will announce: serve the connection again next turn.
    more: bool,
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
    if c.hup_seen && c.service.awaiting_exec() {
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

/// Writes pending output until the socket would block.
fn flush(c: &mut Conn, t: &mut Tally) -> Result<(), CloseReason> {
    if !c.out.is_empty() {
        t.sent += c.out.write_to(&mut c.socket).map_err(CloseReason::Io)?;
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
        if c.out.is_empty()
            && let Some((fd, offset, left)) = c.service.file_range()
        {
            // The file goes from the page cache to the socket without passing through us.
            let count = usize::try_from(left).map_or(disk_budget, |l| l.min(disk_budget));
            match send_file(&c.socket, fd, offset, count) {
                Ok(0) => return Err(CloseReason::Broken),
                Ok(n) => {
                    t.sent += n;
                    disk_budget = disk_budget.saturating_sub(n);
                    c.service.file_sent(n as u64);
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {
                    // This pair of descriptors cannot do sendfile: copy through `out`.
                    c.service.no_sendfile();
                    continue;
                }
                Err(e) => return Err(CloseReason::Io(e)),
            }
        }
        let chunk = disk_budget.min(PRODUCE_CHUNK);
        disk_budget = disk_budget.saturating_sub(chunk);
        if !c.service.produce(c.out.tail(), chunk, &mut io.svc.counters) {
            return Err(CloseReason::Broken);
        }
        flush(c, t)?;
    }
    Ok(())
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
        let want = io.scratch.len().min(budget);
        let Some(buf) = io.scratch.get_mut(..want) else {
            break;
        };
        let n = match c.socket.read(buf) {
            Ok(0) => {
                c.read_closed = true;
                break;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CloseReason::Io(e)),
        };
        budget = budget.saturating_sub(n);
        t.received += n;
        // A short read emptied the socket's queue: any byte that arrives later raises a new
        // edge, so the read that would only say WouldBlock is skipped. Not when the peer's FIN
        // may be queued behind the data: that edge has been spent already.
        let drained = n < want && !c.hup_seen;
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
    if was_paused && !c.read_paused && !c.read_closed {
        // Resumed: read on the next turn, since the socket's data arrived while paused.
        t.more = true;
    }
    let input_done = c.input.is_empty() || c.service_paused;
    // A paused service that will take input again is awaiting the disk or producing a
    // response, so it is not idle: a peer that left right after its last byte still has its
    // upload decoded, committed and answered.
    let idle = c.out.is_empty() && !c.service.has_output() && !c.service.awaiting_disk();
    if c.read_closed && idle && input_done {
        return Verdict::Close(CloseReason::Finished);
    }
    Verdict::Open { more: t.more }
}

/// sendfile(2) from `fd` at `offset` to the socket: at most `count` bytes.
fn send_file(socket: &StreamSocket, fd: RawFd, offset: u64, count: usize) -> io::Result<usize> {
    let mut off = libc::off_t::try_from(offset).map_err(io::Error::other)?;
    // SAFETY: both descriptors are open for the duration of the call (the socket is borrowed,
    // the file is owned by the connection's service), and `off` is a local the call may write.
    let n = unsafe { libc::sendfile(socket.as_raw_fd(), fd, &mut off, count) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Stops taking input from a connection: what is pending is still written, then it closes.
fn stop_input(c: &mut Conn) {
    c.read_closed = true;
    c.input = Vec::new();
}

/// Hands newly read bytes (or, with `data` empty, the held leftover) to the authentication
/// gate and then the service. When nothing is pending, the service writes into the shared reply
/// buffer and the socket gets it straight away; only what the socket does not take is copied
/// into the connection. Returns the bytes written.
fn absorb(
    c: &mut Conn,
    data: &[u8],
    io: &mut TurnIo<'_>,
    limits: &Limits,
) -> Result<usize, CloseReason> {
    let mut data = data;
    if let Some(gate) = &mut c.gate {
        match gate.on_input(data) {
            AuthStep::NeedMore => return Ok(0),
            AuthStep::Passed { consumed } => {
                c.gate = None;
                c.service
                    .on_open(c.id, true, c.out.tail(), &mut io.svc.ctx());
                data = data.get(consumed..).unwrap_or_default();
                if data.is_empty() {
                    return Ok(0);
                }
            }
            AuthStep::Failed => {
                c.gate = None;
                let counters = io.svc.counters.service(c.kind);
                counters.rejected_auth = counters.rejected_auth.saturating_add(1);
                c.service.on_auth_failed(c.out.tail(), &mut io.svc.counters);
                stop_input(c);
                return Ok(0);
            }
        }
    }
    let mut sent = 0;
    let step = if c.input.is_empty() {
        let step = if c.out.is_empty() {
            io.reply.clear();
            let mut ctx = io.svc.ctx();
            let step = c.service.on_input(data, io.reply, &mut ctx);
            sent = write_direct(&mut c.socket, io.reply).map_err(CloseReason::Io)?;
            c.out.extend(io.reply.get(sent..).unwrap_or_default());
            step
        } else {
            c.service.on_input(data, c.out.tail(), &mut io.svc.ctx())
        };
        c.input
            .extend_from_slice(data.get(step.consumed..).unwrap_or_default());
        step
    } else {
        c.input.extend_from_slice(data);
        let step = if c.service.accepts_input() {
            c.service
                .on_input(&c.input, c.out.tail(), &mut io.svc.ctx())
        } else {
            Step::default()
        };
        c.input.drain(..step.consumed.min(c.input.len()));
        if c.input.is_empty() {
            c.input = Vec::new();
        }
        step
    };
    if step.close {
        stop_input(c);
    }
    if c.input.len() > limits.max_pending {
        return Err(CloseReason::InputTooLarge {
            held: c.input.len(),
        });
    }
    Ok(sent)
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
