//! The server's configuration: which services listen where, with which socket options and
//! limits ([`ServerConfig`], this file). Built from the built-in defaults, the TOML file
//! ([`file`], whose value types are in `values`) and the flags ([`flags`]), in that order, by
//! `cli::serve`; the reactor only reads it.

use std::path::PathBuf;
use std::time::Duration;

pub mod bus;
pub mod file;
pub mod flags;
pub mod tls;
mod values;

pub use tls::TlsFiles;

use crate::addr::ListenAddr;
use crate::kind::ServiceKind;
use crate::service::DatagramSettings;
use crate::service::files::FilesConfig;

/// The address from PROTOCOL.md on which `socklab serve` starts `service` when none is given.
pub fn default_addr(service: ServiceKind) -> ListenAddr {
    if service == ServiceKind::Discovery {
        // Broadcasts reach only a socket bound to every interface.
        return ListenAddr::Inet(std::net::SocketAddr::from(([0, 0, 0, 0], 7099)));
    }
    let port = match service {
        ServiceKind::Echo | ServiceKind::UdpEcho => 7000,
        ServiceKind::Upper | ServiceKind::UdpUpper => 7001,
        ServiceKind::Files => 7080,
        ServiceKind::Chat | ServiceKind::UdpChat => 7070,
        ServiceKind::Time => 7013,
        ServiceKind::Discovery => 7099,
        ServiceKind::Metrics => 9107,
    };
    ListenAddr::Inet(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
}

/// One listening socket: a service on an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub service: ServiceKind,
    pub addr: ListenAddr,
    /// Clients must pass the HMAC challenge-response before the service starts.
    pub auth: bool,
    /// Socket options of this listener alone; `ServerConfig::sockopts` when `None`.
    pub sockopts: Option<SocketOptions>,
    /// This listener's own `--max-conns-per-ip` (0: no limit); `Limits::max_conns_per_ip`
    /// when `None`.
    pub max_conns_per_ip: Option<usize>,
    /// Connections begin with a PROXY protocol header of these versions (behind a load
    /// balancer); its source address is the client's.
    pub proxy_protocol: Option<crate::frame::proxy::ProxyVersions>,
    /// TLS on this listener: its certificate, key and client CA (`[listener.tls]`).
    pub tls: Option<TlsFiles>,
}

impl ListenerConfig {
    /// Checks what one listener can get wrong on its own: the address kind against the service,
    /// authentication on a service that has no handshake, and `files` reachable without it.
    pub fn check(&self) -> Result<(), ConfigError> {
        let addr = self.addr.to_string();
        match (&self.addr, self.service.is_stream()) {
            (ListenAddr::Unixgram(_), true) => {
                return Err(ConfigError::StreamNeedsStreamAddr {
                    service: self.service,
                    addr,
                });
            }
            (ListenAddr::Unix(_), false) => {
                return Err(ConfigError::DatagramNeedsDatagramAddr {
                    service: self.service,
                    addr,
                });
            }
            _ => {}
        }
        let inet_only = matches!(
            self.service,
            ServiceKind::Time | ServiceKind::UdpChat | ServiceKind::Discovery
        );
        if inet_only && !matches!(self.addr, ListenAddr::Inet(_)) {
            return Err(ConfigError::UdpOnly {
                service: self.service,
                addr: self.addr.to_string(),
            });
        }
        let client_certs = self.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        if self.service == ServiceKind::Files
            && !self.auth
            && !client_certs
            && !self.addr.is_local()
        {
            return Err(ConfigError::NeedsAuth {
                service: self.service,
                addr: self.addr.to_string(),
            });
        }
        if self.auth && !self.service.is_stream() {
            return Err(ConfigError::AuthOnDatagram {
                service: self.service,
            });
        }
        if self.proxy_protocol.is_some() && !self.service.is_stream() {
            return Err(ConfigError::ProxyOnDatagram {
                service: self.service,
            });
        }
        if self.tls.is_some() && !self.service.is_stream() {
            return Err(ConfigError::TlsOnDatagram {
                service: self.service,
            });
        }
        Ok(())
    }
}

/// Socket options applied to every listener (and, for TCP_NODELAY, to accepted connections).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketOptions {
    /// SO_REUSEADDR on TCP listeners, so a restart is not refused while old connections sit in
    /// TIME_WAIT.
    pub reuseaddr: bool,
    /// SO_REUSEPORT on every inet socket, so several processes (or workers) can share a port.
    pub reuseport: bool,
    /// TCP_NODELAY on accepted connections: replies leave at once instead of waiting for Nagle.
    pub nodelay: bool,
    /// SO_RCVBUF to request, in bytes; the kernel's default when `None`.
    pub rcvbuf: Option<usize>,
    /// SO_SNDBUF to request, in bytes; the kernel's default when `None`.
    pub sndbuf: Option<usize>,
    /// The listen backlog asked of the kernel (which caps it at net.core.somaxconn).
    pub backlog: i32,
    /// SO_BROADCAST on UDP sockets.
    pub broadcast: bool,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            reuseaddr: true,
            reuseport: false,
            nodelay: true,
            rcvbuf: None,
            sndbuf: None,
            backlog: 1024,
            broadcast: false,
        }
    }
}

/// The bounds that keep one client from costing everyone else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Open stream connections at most; one past it is accepted and closed at once.
    pub max_conns: usize,
    /// A connection with no bytes moving either way for this long is closed; `None`: never.
    pub idle_timeout: Option<Duration>,
    /// A request whose first byte has arrived (a frame header, a chat line, an HTTP request
    /// head, an authentication response) must be whole within this, or the connection is
    /// closed; `None`: no deadline. Bodies are not covered: the idle timeout is theirs.
    pub request_timeout: Option<Duration>,
    /// The idle timeout, shorter, of a connection that has not yet passed authentication or
    /// sent a complete request; `None`: only the idle timeout.
    pub handshake_timeout: Option<Duration>,
    /// A TLS connection whose handshake has not finished this long after it was accepted is
    /// closed.
    pub tls_handshake_timeout: Duration,
    /// Connections open at once from one source address, in the whole process: `None` for
    /// the default (`max_conns / PER_IP_SHARE`), `Some(0)` for no limit.
    pub max_conns_per_ip: Option<usize>,
    /// After SIGINT/SIGTERM, how long the drain may take (answers, uploads under way,
    /// commands) before commands are killed, connections cut and the server exits.
    pub shutdown_grace: Duration,
    /// While a connection's pending output is at least this, the server stops reading from it.
    pub pending_pause: usize,
    /// A connection whose pending output passes this is disconnected.
    pub max_pending: usize,
    /// A connection whose held partial request (input read but not yet consumed by its service)
    /// passes this is disconnected.
    pub max_input: usize,
    /// Bytes read from one connection in one turn of the loop before others get their turn.
    pub read_budget: usize,
    /// Connections accepted from one listener in one turn before others get their turn.
    pub accept_budget: usize,
    /// Datagrams received on one socket in one turn before others get their turn.
    pub datagram_budget: usize,
    /// Replies queued on one datagram socket while the kernel's buffer is full; more are dropped.
    pub max_queued_datagrams: usize,
    /// A chat member whose pending output passes this is disconnected.
    pub chat_max_pending: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_conns: 10_000,
            idle_timeout: Some(Duration::from_secs(300)),
            request_timeout: Some(Duration::from_secs(10)),
            handshake_timeout: Some(Duration::from_secs(10)),
            tls_handshake_timeout: Duration::from_secs(10),
            max_conns_per_ip: None,
            shutdown_grace: Duration::from_secs(5),
            pending_pause: 256 * 1024,
            max_pending: 1024 * 1024,
            max_input: 1024 * 1024,
            read_budget: 256 * 1024,
            accept_budget: 256,
            datagram_budget: 256,
            max_queued_datagrams: 1024,
            chat_max_pending: 1024 * 1024,
        }
    }
}

/// The default `--max-conns-per-ip` is `max_conns` divided by this (at least 1): one address
/// can hold a tenth of the slots, so it takes ten to lock the others out.
pub const PER_IP_SHARE: usize = 10;

impl Limits {
    /// The connections one source address may hold on a listener whose own setting is
    /// `listener` (`None`: the global one): `None` is no limit.
    pub fn per_ip_limit(&self, listener: Option<usize>) -> Option<usize> {
        let n = listener
            .or(self.max_conns_per_ip)
            .unwrap_or_else(|| (self.max_conns / PER_IP_SHARE).max(1));
        (n > 0).then_some(n)
    }
}

/// Where `files` keeps its data, and its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilesSettings {
    /// The data directory (created if missing).
    pub data_dir: PathBuf,
    /// Header and upload limits.
    pub config: FilesConfig,
}

impl Default for FilesSettings {
    fn default() -> Self {
        FilesSettings {
            data_dir: PathBuf::from("./socklab-data"),
            config: FilesConfig::default(),
        }
    }
}

/// Everything the reactor needs to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub listeners: Vec<ListenerConfig>,
    pub sockopts: SocketOptions,
    pub limits: Limits,
    pub files: FilesSettings,
    /// How long a client has to answer the authentication challenge.
    pub auth_timeout: Duration,
    /// Settings of the datagram services.
    pub datagram: DatagramSettings,
    /// Reactors, one thread each, sharing the listening ports through SO_REUSEPORT.
    pub workers: usize,
    /// The chat room spans hosts through this Redis server (`[chat.bus]`).
    pub chat_bus: Option<bus::ChatBus>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listeners: Vec::new(),
            sockopts: SocketOptions::default(),
            limits: Limits::default(),
            files: FilesSettings::default(),
            auth_timeout: Duration::from_secs(5),
            datagram: DatagramSettings::default(),
            workers: 1,
            chat_bus: None,
        }
    }
}

/// The most reactor threads `--workers` may ask for.
pub const MAX_WORKERS: usize = 256;

/// A configuration that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "{service} is a stream service: give it HOST:PORT or unix:PATH, not `{addr}` (--{service} ADDR)"
    )]
    StreamNeedsStreamAddr { service: ServiceKind, addr: String },
    #[error(
        "{service} is a datagram service: give it HOST:PORT or unixgram:PATH, not `{addr}` (--{service} ADDR)"
    )]
    DatagramNeedsDatagramAddr { service: ServiceKind, addr: String },
    #[error("no service is left to start: every one was turned off")]
    NothingToServe,
    #[error("{what} must be at least 1")]
    Zero { what: &'static str },
    #[error(
        "{service} on {addr} would be reachable from other machines without authentication; \
         add --auth {service} (with --auth-secret-file PATH or SOCKLAB_SECRET), or listen on \
         127.0.0.1 or a unix socket"
    )]
    NeedsAuth { service: ServiceKind, addr: String },
    #[error("--workers {workers} is more than {MAX_WORKERS}")]
    TooManyWorkers { workers: usize },
    #[error("{service} runs over UDP only: give it HOST:PORT, not `{addr}`")]
    UdpOnly { service: ServiceKind, addr: String },
    #[error(
        "{service} is a datagram service and has no authentication handshake; only stream \
         services (echo, upper, files, chat, metrics) take auth"
    )]
    AuthOnDatagram { service: ServiceKind },
    #[error(
        "{service} is a datagram service: a PROXY protocol header precedes a stream's bytes; \
         only stream services (echo, upper, files, chat, metrics) take proxy_protocol"
    )]
    ProxyOnDatagram { service: ServiceKind },
    #[error(
        "{service} is a datagram service: TLS runs over streams; only stream services (echo, \
         upper, files, chat, metrics) take tls"
    )]
    TlsOnDatagram { service: ServiceKind },
    #[error("{what} must be longer than 0")]
    ZeroDuration { what: &'static str },
    #[error(
        "{what} is longer than the {} days a timeout may last",
        MAX_DURATION.as_secs() / 86_400
    )]
    TooLong { what: &'static str },
}

/// The longest duration a setting may have: far beyond any useful timeout, and far enough from
/// the clock's range that adding it to `Instant::now()` cannot overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

impl ServerConfig {
    /// The socket options `listener` is bound with.
    pub fn sockopts_of<'a>(&'a self, listener: &'a ListenerConfig) -> &'a SocketOptions {
        listener.sockopts.as_ref().unwrap_or(&self.sockopts)
    }

    /// Checks what the types cannot: address kinds against services, and non-zero limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listeners.is_empty() {
            return Err(ConfigError::NothingToServe);
        }
        for l in &self.listeners {
            l.check()?;
        }
        for o in self.listeners.iter().filter_map(|l| l.sockopts.as_ref()) {
            let per_listener = [
                ("backlog", usize::try_from(o.backlog).unwrap_or(0)),
                ("rcvbuf", o.rcvbuf.unwrap_or(1)),
                ("sndbuf", o.sndbuf.unwrap_or(1)),
            ];
            for (what, value) in per_listener {
                if value == 0 {
                    return Err(ConfigError::Zero { what });
                }
            }
        }
        let exec = self.files.config.exec.as_ref();
        let nonzero = [
            ("--max-conns", self.limits.max_conns),
            ("--max-pending", self.limits.max_pending),
            ("--max-input", self.limits.max_input),
            ("--pending-pause", self.limits.pending_pause),
            (
                "--backlog",
                usize::try_from(self.sockopts.backlog).unwrap_or(0),
            ),
            ("--rcvbuf", self.sockopts.rcvbuf.unwrap_or(1)),
            ("--workers", self.workers),
            ("--sndbuf", self.sockopts.sndbuf.unwrap_or(1)),
            // A budget of 0 would keep a connection on the ready list without ever serving it.
            ("--read-budget", self.limits.read_budget),
            ("limits.accept_budget", self.limits.accept_budget),
            ("limits.datagram_budget", self.limits.datagram_budget),
            // 0 would turn every chat member, every files request away.
            ("--chat-max-pending", self.limits.chat_max_pending),
            ("--max-header", self.files.config.max_header),
            (
                "limits.udp_chat_max_members",
                self.datagram.udp_chat_max_members,
            ),
            ("--exec-max-procs", exec.map_or(1, |e| e.max_procs)),
        ];
        for (what, value) in nonzero {
            if value == 0 {
                return Err(ConfigError::Zero { what });
            }
        }
        let durations = [
            ("--auth-timeout", Some(self.auth_timeout), true),
            ("--exec-timeout", exec.map(|e| e.timeout), true),
            ("--idle-timeout", self.limits.idle_timeout, false),
            ("--request-timeout", self.limits.request_timeout, false),
            ("--handshake-timeout", self.limits.handshake_timeout, false),
            (
                "--tls-handshake-timeout",
                Some(self.limits.tls_handshake_timeout),
                true,
            ),
            ("--shutdown-grace", Some(self.limits.shutdown_grace), false),
            (
                "--udp-chat-expiry",
                Some(self.datagram.udp_chat_expiry),
                false,
            ),
        ];
        for (what, value, nonzero) in durations {
            let Some(value) = value else { continue };
            if nonzero && value.is_zero() {
                return Err(ConfigError::ZeroDuration { what });
            }
            if value > MAX_DURATION {
                return Err(ConfigError::TooLong { what });
            }
        }
        if self.workers > MAX_WORKERS {
            return Err(ConfigError::TooManyWorkers {
                workers: self.workers,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(service: ServiceKind, addr: &str) -> ServerConfig {
        ServerConfig {
            listeners: vec![ListenerConfig {
                service,
                addr: addr.parse().unwrap(),
                auth: false,
                sockopts: None,
                max_conns_per_ip: None,
                proxy_protocol: None,
                tls: None,
            }],
            ..ServerConfig::default()
        }
    }

    #[test]
    fn address_kinds_must_match_the_service() {
        assert!(with(ServiceKind::Echo, "unix:/tmp/x").validate().is_ok());
        assert!(matches!(
            with(ServiceKind::Echo, "unixgram:/tmp/x").validate(),
            Err(ConfigError::StreamNeedsStreamAddr { .. })
        ));
        assert!(matches!(
            with(ServiceKind::UdpEcho, "unix:/tmp/x").validate(),
            Err(ConfigError::DatagramNeedsDatagramAddr { .. })
        ));
        assert!(
            with(ServiceKind::UdpUpper, "unixgram:/tmp/x")
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn files_off_loopback_needs_auth() {
        assert!(with(ServiceKind::Files, "127.0.0.1:0").validate().is_ok());
        assert!(with(ServiceKind::Files, "unix:/tmp/f").validate().is_ok());
        assert!(matches!(
            with(ServiceKind::Files, "0.0.0.0:7080").validate(),
            Err(ConfigError::NeedsAuth { .. })
        ));
        let mut c = with(ServiceKind::Files, "0.0.0.0:7080");
        c.listeners[0].auth = true;
        assert!(c.validate().is_ok());
    }

    #[test]
    fn datagram_services_take_no_auth() {
        let mut c = with(ServiceKind::UdpEcho, "127.0.0.1:0");
        c.listeners[0].auth = true;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::AuthOnDatagram { .. })
        ));
    }

    #[test]
    fn budgets_and_timeouts_that_cannot_work_are_refused() {
        let ok = with(ServiceKind::Echo, "127.0.0.1:0");
        assert!(ok.validate().is_ok());
        let mut c = ok.clone();
        c.limits.read_budget = 0;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Zero {
                what: "--read-budget"
            })
        ));
        let mut c = ok.clone();
        c.auth_timeout = Duration::ZERO;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::ZeroDuration { .. })
        ));
        let mut c = ok.clone();
        c.limits.idle_timeout = Some(MAX_DURATION + Duration::from_secs(1));
        assert!(matches!(c.validate(), Err(ConfigError::TooLong { .. })));
        let mut c = ok;
        c.limits.idle_timeout = Some(MAX_DURATION);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn the_per_address_limit_is_a_tenth_of_max_conns_unless_set() {
        let mut l = Limits::default();
        assert_eq!(l.per_ip_limit(None), Some(1000));
        assert_eq!(l.per_ip_limit(Some(7)), Some(7), "a listener's own");
        assert_eq!(l.per_ip_limit(Some(0)), None, "0: no limit");
        l.max_conns = 5;
        assert_eq!(l.per_ip_limit(None), Some(1), "at least 1");
        l.max_conns_per_ip = Some(0);
        assert_eq!(l.per_ip_limit(None), None);
        assert_eq!(
            l.per_ip_limit(Some(2)),
            Some(2),
            "the listener's beats the global"
        );
    }

    #[test]
    fn zero_limits_and_empty_configs_are_refused() {
        let mut c = with(ServiceKind::Echo, "127.0.0.1:0");
        c.limits.max_conns = 0;
        assert!(matches!(c.validate(), Err(ConfigError::Zero { .. })));
        assert!(matches!(
            ServerConfig::default().validate(),
            Err(ConfigError::NothingToServe)
        ));
    }
}
