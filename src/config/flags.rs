//! The flags of `socklab serve` (clap's `Args`), and how they apply over the configuration file
//! or the built-in defaults: a flag given overrides, a flag left out changes nothing. The
//! struct lives here, beside the merge that reads every field of it, rather than in
//! `cli::serve` (which only runs the result), so that configuration never imports the CLI.

use crate::frame::proxy::ProxyVersions;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::ServerConfig;
use super::bus::{BusAddr, ChatBus, check_channel, check_node};
use super::file::{ServeSettings, set};
use super::values::{LogLevel, parse_bytes, parse_duration};
use crate::addr::ListenAddr;
use crate::kind::ServiceKind;

fn parse_stream_service(s: &str) -> Result<ServiceKind, String> {
    ServiceKind::from_name(s)
        .filter(|k| k.is_stream())
        .ok_or_else(|| format!("`{s}` is not a stream service (echo, upper, files, chat, metrics)"))
}

fn parse_proxy_protocol(s: &str) -> Result<(ServiceKind, ProxyVersions), String> {
    let (service, versions) = match s.split_once('=') {
        Some((service, versions)) => (service, versions.parse()?),
        None => (s, ProxyVersions::Either),
    };
    Ok((parse_stream_service(service)?, versions))
}

/// Run the socklab server.
///
/// With no arguments: echo (TCP 127.0.0.1:7000), upper (TCP 127.0.0.1:7001), udp-echo (UDP
/// 127.0.0.1:7000) and udp-upper (UDP 127.0.0.1:7001). Prints one `listening` line per socket
/// with the options the kernel set, then `ready`. SIGINT or SIGTERM drains it: no new
/// connections, what was sent before the signal is answered within --shutdown-grace, exit 0.
#[derive(Debug, Args)]
#[command(next_line_help = false)]
pub struct ServeArgs {
    /// Read the configuration from this TOML file (every key is in socklab.example.toml);
    /// flags given on the command line override it.
    #[arg(long, value_name = "FILE", help_heading = "Configuration")]
    pub(crate) config: Option<PathBuf>,
    /// Print the effective configuration (defaults, --config file and flags) as TOML that
    /// --config reads back, and exit without starting.
    #[arg(long, help_heading = "Configuration")]
    pub(crate) print_config: bool,
    /// Address of the echo service: HOST:PORT (TCP) or unix:PATH. Repeatable [default: 127.0.0.1:7000]
    #[arg(long = "echo", value_name = "ADDR", help_heading = "Services")]
    echo: Vec<ListenAddr>,
    /// Do not start echo.
    #[arg(long, conflicts_with = "echo", help_heading = "Services")]
    no_echo: bool,
    /// Address of the upper service: HOST:PORT (TCP) or unix:PATH. Repeatable [default: 127.0.0.1:7001]
    #[arg(long = "upper", value_name = "ADDR", help_heading = "Services")]
    upper: Vec<ListenAddr>,
    /// Do not start upper.
    #[arg(long, conflicts_with = "upper", help_heading = "Services")]
    no_upper: bool,
    /// Address of udp-echo: HOST:PORT (UDP) or unixgram:PATH. Repeatable [default: 127.0.0.1:7000]
    #[arg(long = "udp-echo", value_name = "ADDR", help_heading = "Services")]
    udp_echo: Vec<ListenAddr>,
    /// Do not start udp-echo.
    #[arg(long, conflicts_with = "udp_echo", help_heading = "Services")]
    no_udp_echo: bool,
    /// Address of udp-upper: HOST:PORT (UDP) or unixgram:PATH. Repeatable [default: 127.0.0.1:7001]
    #[arg(long = "udp-upper", value_name = "ADDR", help_heading = "Services")]
    udp_upper: Vec<ListenAddr>,
    /// Do not start udp-upper.
    #[arg(long, conflicts_with = "udp_upper", help_heading = "Services")]
    no_udp_upper: bool,
    /// Address of files (framed put/get/list): HOST:PORT (TCP) or unix:PATH. Repeatable [default: 127.0.0.1:7080]
    #[arg(long = "files", value_name = "ADDR", help_heading = "Services")]
    files: Vec<ListenAddr>,
    /// Do not start files.
    #[arg(long, conflicts_with = "files", help_heading = "Services")]
    no_files: bool,
    /// Address of chat (lines): HOST:PORT (TCP) or unix:PATH. Repeatable [default: 127.0.0.1:7070]
    #[arg(long = "chat", value_name = "ADDR", help_heading = "Services")]
    chat: Vec<ListenAddr>,
    /// Do not start chat.
    #[arg(long, conflicts_with = "chat", help_heading = "Services")]
    no_chat: bool,
    /// Address of udp-chat: HOST:PORT (UDP). Repeatable [default: 127.0.0.1:7070]
    #[arg(long = "udp-chat", value_name = "ADDR", help_heading = "Services")]
    udp_chat: Vec<ListenAddr>,
    /// Do not start udp-chat.
    #[arg(long, conflicts_with = "udp_chat", help_heading = "Services")]
    no_udp_chat: bool,
    /// Address of time (strftime over UDP): HOST:PORT. Repeatable [default: 127.0.0.1:7013]
    #[arg(long = "time", value_name = "ADDR", help_heading = "Services")]
    time: Vec<ListenAddr>,
    /// Do not start time.
    #[arg(long, conflicts_with = "time", help_heading = "Services")]
    no_time: bool,
    /// Address of discovery (answers SOCKLAB? broadcasts): HOST:PORT. Repeatable
    /// [default: 0.0.0.0:7099, every interface, so that broadcasts reach it]
    #[arg(long = "discovery", value_name = "ADDR", help_heading = "Services")]
    discovery: Vec<ListenAddr>,
    /// Do not start discovery.
    #[arg(long, conflicts_with = "discovery", help_heading = "Services")]
    no_discovery: bool,
    /// Address of metrics (Prometheus text at GET /metrics): HOST:PORT or unix:PATH.
    /// Repeatable [default: 127.0.0.1:9107]
    #[arg(long = "metrics", value_name = "ADDR", help_heading = "Services")]
    metrics: Vec<ListenAddr>,
    /// Do not start metrics.
    #[arg(long, conflicts_with = "metrics", help_heading = "Services")]
    no_metrics: bool,
    /// Discovery probes answered per second at most, so it cannot amplify a flood. [default: 20]
    #[arg(long, value_name = "N", help_heading = "Limits")]
    discovery_rate: Option<u32>,

    /// The control socket (`socklab reload`, `serve --upgrade-from`), mode 0600.
    /// [default: DATA_DIR/.socklab-control.sock when files runs; else none]
    #[arg(long, value_name = "PATH", help_heading = "Hand-over")]
    control: Option<PathBuf>,
    /// Take every listening socket from the server whose control socket is PATH (binding
    /// none of them anew), then tell it to drain and exit.
    #[arg(long, value_name = "PATH", help_heading = "Hand-over")]
    pub(crate) upgrade_from: Option<PathBuf>,

    /// Where files keeps its files (created if missing). [default: ./socklab-data]
    #[arg(long, value_name = "DIR", help_heading = "Files")]
    data_dir: Option<PathBuf>,
    /// Largest upload files accepts (too_large beyond); unlimited when not given.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes, help_heading = "Files")]
    max_upload: Option<usize>,
    /// Upload bytes received and not yet written to disk, per connection, past which files
    /// stops reading that connection until the disk catches up. [default: 8MiB]
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes, help_heading = "Files")]
    upload_in_flight: Option<usize>,
    /// Allow files' `exec` to run this program (repeatable). A name is looked up on PATH once,
    /// at start-up; a request's argv[0] must be the name or the resolved path exactly. No
    /// shell is involved. Without any, exec is disabled.
    #[arg(long, value_name = "PROGRAM", help_heading = "Exec")]
    exec_allow: Vec<String>,
    /// Longest a command may run (a request's timeout_ms can only shorten it); then its
    /// process group is killed. [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Exec")]
    exec_timeout: Option<Duration>,
    /// Output kept per stream (stdout, stderr) of a command; the rest is discarded. [default: 1MiB]
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes, help_heading = "Exec")]
    exec_max_output: Option<usize>,
    /// Commands running at once at most; past it, too_busy. [default: 16]
    #[arg(long, value_name = "N", help_heading = "Exec")]
    exec_max_procs: Option<usize>,
    /// Working directory of commands [default: the data directory].
    #[arg(long, value_name = "DIR", help_heading = "Exec")]
    exec_workdir: Option<PathBuf>,
    /// How every descendant of a command is killed with it: `cgroup` (a cgroup v2 per command,
    /// killed with cgroup.kill), `subreaper` (the server adopts orphans and kills those that
    /// left their command's process group), or `auto` (cgroup where writable, else
    /// subreaper, said in the log). [default: subreaper: joining a cgroup can hold the event loop
    /// for hundreds of milliseconds under load]
    #[arg(long, value_name = "HOW", help_heading = "Exec")]
    exec_containment: Option<crate::sys::contain::Mode>,
    /// Largest frame header files accepts (bad_frame beyond). [default: 64KiB]
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes, help_heading = "Files")]
    max_header: Option<usize>,

    /// This service's stream listeners sit behind a load balancer that sends a PROXY protocol
    /// header first (HAProxy's send-proxy / send-proxy-v2): SERVICE or SERVICE=VERSION, VERSION
    /// v1, v2 or v1-or-v2 (the default). Its source address is then the client's everywhere;
    /// a connection without a valid header is closed (repeatable).
    #[arg(long = "proxy-protocol", value_name = "SERVICE[=VERSION]", value_parser = parse_proxy_protocol, help_heading = "Load balancers")]
    proxy_protocol: Vec<(ServiceKind, ProxyVersions)>,

    /// Serve TLS on this service's stream listeners, with --tls-cert and --tls-key
    /// (repeatable: --tls files --tls chat).
    #[arg(long = "tls", value_name = "SERVICE", value_parser = parse_stream_service, requires_all = ["tls_cert", "tls_key"], help_heading = "TLS")]
    tls: Vec<ServiceKind>,
    /// The certificate (PEM; the server's first, then any chain) of the --tls services.
    #[arg(long, value_name = "PATH", requires = "tls", help_heading = "TLS")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "PATH", requires = "tls", help_heading = "TLS")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM) on the --tls services; a verified
    /// certificate counts as authentication (with --auth as well, both must pass).
    #[arg(long, value_name = "PATH", requires = "tls", help_heading = "TLS")]
    tls_client_ca: Option<PathBuf>,
    /// Close a TLS connection whose handshake has not finished this long after it was
    /// accepted. [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "TLS")]
    tls_handshake_timeout: Option<Duration>,

    /// Require the HMAC-SHA256 challenge-response on this service's stream listeners
    /// (repeatable: --auth files --auth upper).
    #[arg(long = "auth", value_name = "SERVICE", value_parser = parse_stream_service, help_heading = "Authentication")]
    auth: Vec<ServiceKind>,
    /// File holding the shared secret (one trailing newline is dropped). Without it the
    /// secret comes from the SOCKLAB_SECRET environment variable; never from a flag.
    #[arg(long, value_name = "PATH", help_heading = "Authentication")]
    auth_secret_file: Option<PathBuf>,
    /// How long a client has to answer the challenge. [default: 5s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Authentication")]
    auth_timeout: Option<Duration>,

    /// Open connections at most; one more is accepted and closed at once (and counted).
    /// [default: 10000]
    #[arg(long, value_name = "N", help_heading = "Limits")]
    max_conns: Option<usize>,
    /// Close a connection after this long with no bytes moving either way (0 = never).
    /// [default: 300s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Limits")]
    idle_timeout: Option<Duration>,
    /// Close a connection whose request (frame header, chat line, HTTP request head,
    /// authentication response) is not whole this long after its first byte (0 = never).
    /// Bodies are covered by --idle-timeout. [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Limits")]
    request_timeout: Option<Duration>,
    /// The idle timeout of a connection that has not yet authenticated or sent a complete
    /// request (0 = only --idle-timeout). [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Limits")]
    handshake_timeout: Option<Duration>,
    /// Connections open at once from one source address, in the whole process; one more is
    /// closed at accept (and counted). 0 = no limit. [default: a tenth of --max-conns]
    #[arg(long, value_name = "N", help_heading = "Limits")]
    max_conns_per_ip: Option<usize>,
    /// After SIGINT/SIGTERM, how long the drain may take (answers, uploads under way,
    /// commands) before commands are killed, connections cut and the server exits.
    /// [default: 5s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Limits")]
    shutdown_grace: Option<Duration>,
    /// Stop reading from a connection while its pending output is at least this
    /// (backpressure). [default: 256KiB]
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes, help_heading = "Limits")]
    pending_pause: Option<usize>,
    /// Disconnect a connection whose pending output passes this. At or above it,
    /// --pending-pause never pauses: clients that do not read are cut off instead. [default: 1MiB]
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes, help_heading = "Limits")]
    max_pending: Option<usize>,
    /// Disconnect a connection whose partial request (input read but not yet consumed by its
    /// service) passes this. [default: 1MiB]
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes, help_heading = "Limits")]
    max_input: Option<usize>,
    /// Disconnect a chat member whose pending output passes this (it does not read).
    /// [default: 1MiB]
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes, help_heading = "Limits")]
    chat_max_pending: Option<usize>,
    /// How long udp-chat remembers a sender that has gone silent. [default: 10m]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Limits")]
    udp_chat_expiry: Option<Duration>,
    /// Bytes read from one connection per turn of the loop before the others get theirs.
    /// [default: 256KiB]
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes, help_heading = "Limits")]
    read_budget: Option<usize>,

    /// Do not set SO_REUSEADDR on TCP listeners (a restart then fails while old connections
    /// sit in TIME_WAIT).
    #[arg(long, help_heading = "Socket options")]
    no_reuseaddr: bool,
    /// Set SO_REUSEPORT on TCP and UDP sockets, so several servers can share a port.
    #[arg(long, help_heading = "Socket options")]
    reuseport: bool,
    /// Do not set TCP_NODELAY on accepted connections (Nagle's algorithm comes back).
    #[arg(long, help_heading = "Socket options")]
    no_nodelay: bool,
    /// SO_RCVBUF to ask for (the kernel doubles it; the value set is shown at start-up).
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes, help_heading = "Socket options")]
    rcvbuf: Option<usize>,
    /// SO_SNDBUF to ask for (the kernel doubles it; the value set is shown at start-up).
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes, help_heading = "Socket options")]
    sndbuf: Option<usize>,
    /// Listen backlog (the kernel caps it at net.core.somaxconn). [default: 1024]
    #[arg(long, value_name = "N", help_heading = "Socket options")]
    backlog: Option<i32>,
    /// Set SO_BROADCAST on UDP sockets.
    #[arg(long, help_heading = "Socket options")]
    broadcast: bool,

    /// Reactor threads, each with its own listeners bound with SO_REUSEPORT so the kernel
    /// spreads connections (and UDP senders) across them. udp-chat, discovery and unix:/unixgram:
    /// listeners run on the first worker only; chat rooms span them all. [default: 1]
    #[arg(long, value_name = "N", help_heading = "Workers")]
    workers: Option<usize>,

    /// Join the chat rooms of other hosts through this Redis server (6 or later): HOST:PORT or
    /// unix:PATH. Lines, actions, joins, leaves and renames cross hosts; nicks are unique
    /// across them; `/who` lists everyone.
    #[arg(long, value_name = "ADDR", help_heading = "Chat bus")]
    chat_bus: Option<BusAddr>,
    /// A file holding the Redis password (AUTH). [default: none]
    #[arg(long, value_name = "PATH", help_heading = "Chat bus")]
    chat_bus_password_file: Option<PathBuf>,
    /// The Pub/Sub channel of the room. [default: socklab:chat]
    #[arg(long, value_name = "NAME", value_parser = parse_channel, help_heading = "Chat bus")]
    chat_bus_channel: Option<String>,
    /// This host's name on the bus, unique per host (1-12 of A-Z a-z 0-9 _ -); it tags default
    /// nicks (guest-NODE-N). [default: six random characters]
    #[arg(long, value_name = "NAME", value_parser = parse_node, help_heading = "Chat bus")]
    chat_bus_node: Option<String>,
    /// How long another host's member stays listed without being heard of, and how long a nick
    /// claim lasts unless refreshed. [default: 15s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Chat bus")]
    chat_bus_presence_ttl: Option<Duration>,

    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, help_heading = "Logging")]
    verbose: u8,
    /// Less log output (-q warnings only, -qq errors only).
    #[arg(short, long, action = clap::ArgAction::Count, help_heading = "Logging")]
    quiet: u8,
}

fn parse_node(s: &str) -> Result<String, String> {
    check_node(s).map(|()| s.to_owned())
}

fn parse_channel(s: &str) -> Result<String, String> {
    check_channel(s).map(|()| s.to_owned())
}

impl ServeArgs {
    /// The `--chat-bus*` flags over the file's `[chat.bus]`.
    fn apply_bus(&self, server: &mut ServerConfig) {
        if let Some(addr) = &self.chat_bus {
            match server.chat_bus.as_mut() {
                Some(bus) => bus.addr = addr.clone(),
                None => server.chat_bus = Some(ChatBus::new(addr.clone())),
            }
        }
        let Some(bus) = server.chat_bus.as_mut() else {
            return;
        };
        if self.chat_bus_password_file.is_some() {
            bus.password_file = self.chat_bus_password_file.clone();
        }
        set(&mut bus.settings.channel, self.chat_bus_channel.clone());
        set(&mut bus.settings.node, self.chat_bus_node.clone());
        if let Some(d) = self.chat_bus_presence_ttl {
            bus.settings.presence_ttl = d.max(Duration::from_secs(1));
        }
    }

    /// The configuration these flags describe, over the built-in defaults (no file; exec off).
    pub fn to_config(&self) -> ServerConfig {
        let mut settings = ServeSettings::default();
        self.apply(&mut settings);
        settings.server
    }

    /// Overrides `settings` with every flag given on the command line; flags left out change
    /// nothing, so that a file's values stand.
    pub fn apply(&self, settings: &mut ServeSettings) {
        let services = [
            (ServiceKind::Echo, &self.echo, self.no_echo),
            (ServiceKind::Upper, &self.upper, self.no_upper),
            (ServiceKind::UdpEcho, &self.udp_echo, self.no_udp_echo),
            (ServiceKind::UdpUpper, &self.udp_upper, self.no_udp_upper),
            (ServiceKind::Files, &self.files, self.no_files),
            (ServiceKind::Chat, &self.chat, self.no_chat),
            (ServiceKind::UdpChat, &self.udp_chat, self.no_udp_chat),
            (ServiceKind::Time, &self.time, self.no_time),
            (ServiceKind::Discovery, &self.discovery, self.no_discovery),
            (ServiceKind::Metrics, &self.metrics, self.no_metrics),
        ];
        for (service, addrs, off) in services {
            if off {
                settings.set_service(service, &[]);
            } else if !addrs.is_empty() {
                settings.set_service(service, addrs);
            }
        }
        for &service in &self.auth {
            settings.require_auth(service);
        }
        for &(service, versions) in &self.proxy_protocol {
            settings.require_proxy_protocol(service, versions);
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            let files = crate::config::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            };
            for &service in &self.tls {
                settings.require_tls(service, &files);
            }
        }

        if self.no_reuseaddr {
            settings.socket_option(|o| o.reuseaddr = false);
        }
        if self.reuseport {
            settings.socket_option(|o| o.reuseport = true);
        }
        if self.no_nodelay {
            settings.socket_option(|o| o.nodelay = false);
        }
        if let Some(n) = self.rcvbuf {
            settings.socket_option(|o| o.rcvbuf = Some(n));
        }
        if let Some(n) = self.sndbuf {
            settings.socket_option(|o| o.sndbuf = Some(n));
        }
        if let Some(n) = self.backlog {
            settings.socket_option(|o| o.backlog = n);
        }
        if self.broadcast {
            settings.socket_option(|o| o.broadcast = true);
        }

        let s = &mut settings.server;
        let limits = &mut s.limits;
        set(&mut limits.max_conns, self.max_conns);
        if let Some(d) = self.idle_timeout {
            limits.idle_timeout = Some(d).filter(|d| !d.is_zero());
        }
        if let Some(d) = self.request_timeout {
            limits.request_timeout = Some(d).filter(|d| !d.is_zero());
        }
        if let Some(d) = self.handshake_timeout {
            limits.handshake_timeout = Some(d).filter(|d| !d.is_zero());
        }
        set(
            &mut limits.tls_handshake_timeout,
            self.tls_handshake_timeout,
        );
        if self.max_conns_per_ip.is_some() {
            limits.max_conns_per_ip = self.max_conns_per_ip;
        }
        set(&mut limits.shutdown_grace, self.shutdown_grace);
        set(&mut limits.pending_pause, self.pending_pause);
        set(&mut limits.max_pending, self.max_pending);
        set(&mut limits.max_input, self.max_input);
        set(&mut limits.read_budget, self.read_budget);
        set(&mut limits.chat_max_pending, self.chat_max_pending);
        set(&mut s.datagram.udp_chat_expiry, self.udp_chat_expiry);
        set(&mut s.datagram.discovery_rate, self.discovery_rate);
        set(&mut s.files.data_dir, self.data_dir.clone());
        if let Some(n) = self.max_upload {
            s.files.config.max_upload = Some(n as u64);
        }
        set(&mut s.files.config.max_header, self.max_header);
        if let Some(n) = self.upload_in_flight {
            s.files.config.upload_in_flight = n as u64;
        }
        set(&mut s.auth_timeout, self.auth_timeout);
        set(&mut s.workers, self.workers);

        if !self.exec_allow.is_empty() {
            settings.set_exec_allow(self.exec_allow.clone());
        }
        let exec = &mut settings.exec;
        set(&mut exec.timeout, self.exec_timeout);
        set(&mut exec.max_output, self.exec_max_output);
        set(&mut exec.containment, self.exec_containment);
        // The flag has always taken 0 as 1; the file, which is new, refuses it.
        set(&mut exec.max_procs, self.exec_max_procs.map(|n| n.max(1)));
        if self.exec_workdir.is_some() {
            exec.workdir = self.exec_workdir.clone();
        }
        if self.auth_secret_file.is_some() {
            settings.secret_file = self.auth_secret_file.clone();
        }
        if self.control.is_some() {
            settings.control = self.control.clone();
        }
        self.apply_bus(&mut settings.server);
        if self.verbose > 0 || self.quiet > 0 {
            let offset = settings.log.offset() + i16::from(self.verbose) - i16::from(self.quiet);
            settings.log = LogLevel::from_offset(offset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::file::{Effective, parse};
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn args(flags: &[&str]) -> ServeArgs {
        let argv = std::iter::once("serve").chain(flags.iter().copied());
        match Cli::try_parse_from(argv) {
            Ok(cli) => cli.serve,
            Err(e) => panic!("{flags:?}: {e}"),
        }
    }

    /// The file, then the flags, as `run` combines them.
    fn effective(file: &str, flags: &[&str]) -> Effective {
        let mut settings = parse(file, "test.toml").unwrap_or_else(|e| panic!("{e}"));
        args(flags).apply(&mut settings);
        settings.finish().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_defaults_in_the_help_are_the_defaults() {
        let stated = args(&[
            "--discovery-rate=20",
            "--data-dir=./socklab-data",
            "--exec-timeout=10s",
            "--exec-max-output=1MiB",
            "--exec-max-procs=16",
            "--max-header=64KiB",
            "--auth-timeout=5s",
            "--max-conns=10000",
            "--idle-timeout=300s",
            "--shutdown-grace=5s",
            "--pending-pause=256KiB",
            "--max-pending=1MiB",
            "--max-input=1MiB",
            "--chat-max-pending=1MiB",
            "--udp-chat-expiry=10m",
            "--read-budget=256KiB",
            "--backlog=1024",
            "--workers=1",
        ]);
        let mut with_stated = ServeSettings::default();
        stated.apply(&mut with_stated);
        let with_stated = with_stated.finish().unwrap();
        assert_eq!(with_stated, ServeSettings::default().finish().unwrap());
        assert_eq!(args(&[]).to_config(), ServeSettings::default().server);
    }

    #[test]
    fn flags_left_out_leave_the_file_alone() {
        let file = "[limits]\nmax_conns = 7\n[socket]\nnodelay = false\n";
        let e = effective(file, &[]);
        assert_eq!(e.server.limits.max_conns, 7);
        assert!(!e.server.sockopts.nodelay);
        let e = effective(file, &["--max-conns", "9", "--backlog", "64"]);
        assert_eq!(e.server.limits.max_conns, 9);
        assert_eq!(e.server.sockopts.backlog, 64);
        assert!(
            !e.server.sockopts.nodelay,
            "the file's nodelay = false stays"
        );
    }

    #[test]
    fn the_input_bound_is_a_setting_of_its_own() {
        let e = effective("[limits]\nmax_input = \"64KiB\"\n", &[]);
        assert_eq!(e.server.limits.max_input, 64 << 10);
        assert_eq!(
            e.server.limits.max_pending,
            1 << 20,
            "the output bound stays"
        );
        let e = effective(
            "[limits]\nmax_input = \"64KiB\"\n",
            &["--max-input", "2MiB"],
        );
        assert_eq!(e.server.limits.max_input, 2 << 20);
        let e = effective("", &["--max-pending", "4KiB"]);
        assert_eq!(e.server.limits.max_input, 1 << 20, "the input bound stays");
        let mut zero = ServeSettings::default();
        args(&["--max-input", "0"]).apply(&mut zero);
        let e = zero.finish().expect_err("--max-input 0 accepted");
        assert!(e.to_string().contains("--max-input"), "{e}");
        let bad = Cli::try_parse_from(["serve", "--max-input", "lots"]);
        assert!(bad.is_err(), "--max-input lots accepted");
    }

    /// Each listener as `service addr auth`.
    fn listed(e: &Effective) -> Vec<String> {
        e.server
            .listeners
            .iter()
            .map(|l| format!("{} {} {}", l.service, l.addr, l.auth))
            .collect()
    }

    #[test]
    fn file_listeners_are_exact_and_flags_replace_per_service() {
        let file = r#"
[[listener]]
service = "echo"
addr = "127.0.0.1:1"
[listener.socket]
nodelay = false

[[listener]]
service = "files"
addr = "0.0.0.0:2"
auth = true

[[listener]]
service = "upper"
addr = "127.0.0.1:3"
"#;
        let e = effective(file, &[]);
        let got = listed(&e);
        assert_eq!(
            got,
            [
                "echo 127.0.0.1:1 false",
                "files 0.0.0.0:2 true",
                "upper 127.0.0.1:3 false"
            ]
        );
        let echo = &e.server.listeners[0];
        assert!(!e.server.sockopts_of(echo).nodelay);
        assert!(e.server.sockopts_of(&e.server.listeners[2]).nodelay);

        let e = effective(
            file,
            &[
                "--files",
                "0.0.0.0:4",
                "--no-upper",
                "--chat",
                "127.0.0.1:5",
                "--auth",
                "echo",
            ],
        );
        let got = listed(&e);
        assert_eq!(
            got,
            [
                "echo 127.0.0.1:1 true",
                // The replacement keeps the authentication of the listener it replaces.
                "files 0.0.0.0:4 true",
                "chat 127.0.0.1:5 false"
            ]
        );
    }

    #[test]
    fn socket_flags_reach_per_listener_options_too() {
        let file = "[[listener]]\nservice = \"echo\"\naddr = \"127.0.0.1:1\"\n\
                    [listener.socket]\nnodelay = true\nbacklog = 8\n";
        let e = effective(file, &["--no-nodelay"]);
        let l = &e.server.listeners[0];
        let o = e.server.sockopts_of(l);
        assert_eq!((o.nodelay, o.backlog), (false, 8));
        assert!(!e.server.sockopts.nodelay);
    }

    #[test]
    fn print_config_reads_back_to_the_same_configuration() {
        let file = r#"
workers = 3
data_dir = "/tmp/socklab-rt"
log = "warn"
[limits]
idle_timeout = "0s"
pending_pause = 1000
read_budget = "1536KiB"
[socket]
rcvbuf = "128KiB"
[auth]
secret_file = "/tmp/secret"
timeout = "2500ms"
[files]
max_upload = "3GiB"
[exec]
allow = ["sh"]
max_output = 0
[[listener]]
service = "echo"
addr = "127.0.0.1:1"
[listener.socket]
nodelay = false
rcvbuf = "kernel"
[[listener]]
service = "udp-echo"
addr = "unixgram:/tmp/socklab-rt.sock"
[[listener]]
service = "files"
addr = "unix:/tmp/socklab-rt-files.sock"
auth = true
"#;
        for flags in [
            &[][..],
            &[
                "--no-nodelay",
                "--sndbuf",
                "96KiB",
                "--max-conns",
                "12",
                "-v",
            ][..],
            &[
                "--upper",
                "127.0.0.1:9",
                "--no-echo",
                "--exec-allow",
                "env",
                "-qqq",
            ][..],
        ] {
            let first = effective(file, flags);
            let printed = first.to_toml().unwrap();
            let again = parse(&printed, "printed")
                .unwrap_or_else(|e| panic!("{e}\n{printed}"))
                .finish()
                .unwrap_or_else(|e| panic!("{e}\n{printed}"));
            assert_eq!(again, first, "{flags:?}:\n{printed}");
            assert_eq!(again.to_toml().unwrap(), printed);
        }
        let e = effective(file, &[]);
        assert_eq!(e.server.sockopts_of(&e.server.listeners[0]).rcvbuf, None);
        assert_eq!(e.server.sockopts.rcvbuf, Some(128 * 1024));
        assert_eq!(e.server.limits.idle_timeout, None);
        assert_eq!(e.log, LogLevel::Warn);
        assert_eq!(effective(file, &["-v"]).log, LogLevel::Info);
    }
}
