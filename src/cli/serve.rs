//! `socklab serve`: builds the configuration from flags, binds every listener, prints one line
//! per listener and `ready`, then runs the reactor until SIGINT or SIGTERM.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::addr::ListenAddr;
use std::path::PathBuf;

use crate::config::{
    FilesSettings, Limits, ListenerConfig, ServerConfig, ServiceKind, SocketOptions,
};
use crate::service::DatagramSettings;
use crate::service::auth::Secret;
use crate::service::exec::{ExecPolicy, resolve_program};
use crate::service::files::FilesConfig;
use crate::sockopt;

fn parse_bytes(s: &str) -> Result<usize, String> {
    let n = parse_size::Config::new()
        .with_binary()
        .parse_size(s)
        .map_err(|e| format!("`{s}` is not a size such as 65536, 64KiB or 1MiB: {e}"))?;
    usize::try_from(n).map_err(|_| format!("`{s}` is too large"))
}

fn parse_stream_service(s: &str) -> Result<ServiceKind, String> {
    ServiceKind::ALL
        .into_iter()
        .find(|k| k.name() == s && k.is_stream())
        .ok_or_else(|| format!("`{s}` is not a stream service (echo, upper, files, chat, metrics)"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration such as 300s, 1m or 500ms: {e}"))
}

/// Run the socklab server.
///
/// With no arguments: echo (TCP 127.0.0.1:7000), upper (TCP 127.0.0.1:7001), udp-echo (UDP
/// 127.0.0.1:7000) and udp-upper (UDP 127.0.0.1:7001). Prints one `listening` line per socket
/// with the options the kernel set, then `ready`. SIGINT or SIGTERM stops it: no new
/// connections, pending output is flushed for --shutdown-grace, exit 0.
#[derive(Debug, Args)]
#[command(next_line_help = false)]
pub struct ServeArgs {
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
    /// Discovery probes answered per second at most, so it cannot amplify a flood.
    #[arg(long, value_name = "N", default_value_t = 20, help_heading = "Limits")]
    discovery_rate: u32,

    /// Where files keeps its files (created if missing).
    #[arg(
        long,
        value_name = "DIR",
        default_value = "./socklab-data",
        help_heading = "Files"
    )]
    data_dir: PathBuf,
    /// Largest upload files accepts (too_large beyond); unlimited when not given.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes, help_heading = "Files")]
    max_upload: Option<usize>,
    /// Allow files' `exec` to run this program (repeatable). A name is looked up on PATH once,
    /// at start-up; a request's argv[0] must be the name or the resolved path exactly. No
    /// shell is involved. Without any, exec is disabled.
    #[arg(long, value_name = "PROGRAM", help_heading = "Exec")]
    exec_allow: Vec<String>,
    /// Longest a command may run (a request's timeout_ms can only shorten it); then its
    /// process group is killed.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration, help_heading = "Exec")]
    exec_timeout: Duration,
    /// Output kept per stream (stdout, stderr) of a command; the rest is discarded.
    #[arg(long, value_name = "BYTES", default_value = "1MiB", value_parser = parse_bytes, help_heading = "Exec")]
    exec_max_output: usize,
    /// Commands running at once at most; past it, too_busy.
    #[arg(long, value_name = "N", default_value_t = 16, help_heading = "Exec")]
    exec_max_procs: usize,
    /// Working directory of commands [default: the data directory].
    #[arg(long, value_name = "DIR", help_heading = "Exec")]
    exec_workdir: Option<PathBuf>,
    /// Largest frame header files accepts (bad_frame beyond).
    #[arg(long, value_name = "BYTES", default_value = "64KiB", value_parser = parse_bytes, help_heading = "Files")]
    max_header: usize,

    /// Require the HMAC-SHA256 challenge-response on this service's stream listeners
    /// (repeatable: --auth files --auth upper).
    #[arg(long = "auth", value_name = "SERVICE", value_parser = parse_stream_service, help_heading = "Authentication")]
    auth: Vec<ServiceKind>,
    /// File holding the shared secret (one trailing newline is dropped). Without it the
    /// secret comes from the SOCKLAB_SECRET environment variable; never from a flag.
    #[arg(long, value_name = "PATH", help_heading = "Authentication")]
    auth_secret_file: Option<PathBuf>,
    /// How long a client has to answer the challenge.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration, help_heading = "Authentication")]
    auth_timeout: Duration,

    /// Open connections at most; one more is accepted and closed at once (and counted).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 10_000,
        help_heading = "Limits"
    )]
    max_conns: usize,
    /// Close a connection after this long with no bytes moving either way (0 = never).
    #[arg(long, value_name = "DURATION", default_value = "300s", value_parser = parse_duration, help_heading = "Limits")]
    idle_timeout: Duration,
    /// After SIGINT/SIGTERM, how long pending output may take to drain before exiting.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration, help_heading = "Limits")]
    shutdown_grace: Duration,
    /// Stop reading from a connection while its pending output is at least this (backpressure).
    #[arg(long, value_name = "BYTES", default_value = "256KiB", value_parser = parse_bytes, help_heading = "Limits")]
    pending_pause: usize,
    /// Disconnect a connection whose pending output passes this. At or above it,
    /// --pending-pause never pauses: clients that do not read are cut off instead.
    #[arg(long, value_name = "BYTES", default_value = "1MiB", value_parser = parse_bytes, help_heading = "Limits")]
    max_pending: usize,
    /// Disconnect a chat member whose pending output passes this (it does not read).
    #[arg(long, value_name = "BYTES", default_value = "1MiB", value_parser = parse_bytes, help_heading = "Limits")]
    chat_max_pending: usize,
    /// How long udp-chat remembers a sender that has gone silent.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration, help_heading = "Limits")]
    udp_chat_expiry: Duration,
    /// Bytes read from one connection per turn of the loop before the others get theirs.
    #[arg(long, value_name = "BYTES", default_value = "256KiB", value_parser = parse_bytes, help_heading = "Limits")]
    read_budget: usize,

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
    /// Listen backlog (the kernel caps it at net.core.somaxconn).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1024,
        help_heading = "Socket options"
    )]
    backlog: i32,
    /// Set SO_BROADCAST on UDP sockets.
    #[arg(long, help_heading = "Socket options")]
    broadcast: bool,

    /// Reactor threads, each with its own listeners bound with SO_REUSEPORT so the kernel
    /// spreads connections (and UDP senders) across them. udp-chat and discovery run on the
    /// first worker only; chat rooms span them all.
    #[arg(long, value_name = "N", default_value_t = 1, help_heading = "Workers")]
    workers: usize,

    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, help_heading = "Logging")]
    verbose: u8,
    /// Less log output (-q warnings only, -qq errors only).
    #[arg(short, long, action = clap::ArgAction::Count, help_heading = "Logging")]
    quiet: u8,
}

impl ServeArgs {
    /// The configuration these flags describe.
    pub fn to_config(&self) -> ServerConfig {
        let mut listeners = Vec::new();
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
                continue;
            }
            let auth = self.auth.contains(&service);
            if addrs.is_empty() {
                listeners.push(ListenerConfig {
                    service,
                    addr: service.default_addr(),
                    auth,
                    sockopts: None,
                });
            }
            for addr in addrs {
                listeners.push(ListenerConfig {
                    service,
                    addr: addr.clone(),
                    auth,
                    sockopts: None,
                });
            }
        }
        ServerConfig {
            listeners,
            sockopts: SocketOptions {
                reuseaddr: !self.no_reuseaddr,
                reuseport: self.reuseport,
                nodelay: !self.no_nodelay,
                rcvbuf: self.rcvbuf,
                sndbuf: self.sndbuf,
                backlog: self.backlog,
                broadcast: self.broadcast,
            },
            limits: Limits {
                max_conns: self.max_conns,
                idle_timeout: Some(self.idle_timeout).filter(|d| !d.is_zero()),
                shutdown_grace: self.shutdown_grace,
                pending_pause: self.pending_pause,
                max_pending: self.max_pending,
                read_budget: self.read_budget,
                chat_max_pending: self.chat_max_pending,
                ..Limits::default()
            },
            files: FilesSettings {
                data_dir: self.data_dir.clone(),
                config: FilesConfig {
                    max_header: self.max_header,
                    max_upload: self.max_upload.map(|n| n as u64),
                    exec: None,
                },
            },
            auth_timeout: self.auth_timeout,
            datagram: DatagramSettings {
                udp_chat_expiry: self.udp_chat_expiry,
                discovery_rate: self.discovery_rate,
                ..DatagramSettings::default()
            },
            workers: self.workers,
        }
    }
}

/// Runs the server; the exit code is 0 after a signal-initiated shutdown.
pub fn run(args: ServeArgs) -> ExitCode {
    let _log_guard = crate::cli::init_logging(args.verbose, args.quiet);
    let config = args.to_config();
    if let Err(e) = config.validate() {
        tracing::error!("{e}");
        return ExitCode::from(2);
    }
    match sockopt::raise_fd_limit() {
        Ok((old, new)) if old != new => {
            tracing::debug!("raised the open-file limit from {old} to {new}")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
    let mut config = config;
    if !args.exec_allow.is_empty() {
        let mut allow = Vec::new();
        for name in &args.exec_allow {
            match resolve_program(name) {
                Ok(path) => allow.push((name.clone(), path)),
                Err(e) => {
                    tracing::error!("{e}");
                    return ExitCode::from(2);
                }
            }
        }
        config.files.config.exec = Some(ExecPolicy {
            allow,
            timeout: args.exec_timeout,
            max_output: args.exec_max_output,
            max_procs: args.exec_max_procs.max(1),
            workdir: args
                .exec_workdir
                .clone()
                .unwrap_or_else(|| config.files.data_dir.clone()),
        });
    }
    let secret = if args.auth.is_empty() {
        None
    } else {
        match Secret::from_file_or_env(args.auth_secret_file.as_deref()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::from(2);
            }
        }
    };
    let printed = |bound: &[crate::reactor::BoundListener]| {
        // Tests and scripts read these lines to learn the ports they got; a closed stdout
        // must not stop the server.
        let mut out = std::io::stdout().lock();
        for b in bound {
            let _ = writeln!(out, "{b}");
        }
        let _ = writeln!(out, "ready");
        let _ = out.flush();
    };
    match crate::reactor::workers::serve(config, secret, printed) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
