//! `socklab bench`: a load generator on mio, to measure socklab (and other servers, under the
//! same settings) from the outside.
//!
//! It opens `--conns` connections (TCP or `unix:PATH`) spread over `--threads` threads, each
//! thread with its own mio `Poll`, keeps `--depth` requests in flight on each (closed loop) or
//! sends them on a fixed schedule (`--rate`, open loop: latency from the scheduled time), and
//! after `--warmup` measures for `--duration`: requests/s, MB/s, latency percentiles from an
//! HDR histogram (per request, send to reply), errors and reconnects, the CPU time the
//! generator used, and with `--server-pid` the server's CPU time per request.
//!
//! Modes: `raw` (a `--size` payload; a reply is as many bytes back), `line` (one line per
//! request, one `\n`-terminated line per reply: also redis's inline `PING`), `frame` (files
//! protocol `ping` or `echo` frames).
//!
//! The run is bounded: it ends after warm-up plus duration, and a server that closes a
//! connection it never answered, cannot be reconnected to, or leaves a connection without
//! progress for `--timeout` ends it at once with an error (exit 1). A run that completes with
//! connection errors or error replies prints its results, then exits 1 too.

mod reply;
mod report;
mod stream;
mod udp;
mod window;

use window::{Window, watch};
mod worker;

use std::io;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::addr::ListenAddr;
use report::{print_report, saturated};
use worker::{Outcome, Plan, ReplyKind, Shared};

/// How requests and replies look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A fixed-size payload (`--size`); the reply is that many bytes back (echo).
    Raw,
    /// One line per request (`--line TEXT` + CRLF, else `--size` bytes ending in `\n`); one
    /// reply per `\n` received (echo, or redis answering `+PONG` to an inline `PING`).
    Line,
    /// Files-protocol frames (`--frame-cmd`).
    Frame,
    /// Datagrams (`--size`, or `--line TEXT` to a server that answers with something else,
    /// such as time) to a UDP or unixgram address: loss, reordering and duplicates counted.
    Udp,
}

/// The files command sent in frame mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FrameCmd {
    /// `{"cmd":"ping"}`, no body.
    Ping,
    /// `{"cmd":"echo","size":N}` and a `--size` body, which comes back.
    Echo,
}

/// `socklab bench`: load a server and measure it.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The server: HOST:PORT (TCP) or unix:PATH.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7000")]
    pub addr: ListenAddr,
    /// Connections to open (spread over the threads).
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub conns: u32,
    /// Requests kept in flight per connection (pipelining); with --rate, the most in flight.
    #[arg(long, value_name = "D", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub depth: u32,
    /// How long to measure, after the warm-up.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// How long to load the server before measuring.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Open loop: send this many requests per second in all, on a fixed schedule, and measure
    /// latency from each request's scheduled time (no coordinated omission).
    #[arg(long, value_name = "R", value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// What requests and replies look like.
    #[arg(long, value_enum, default_value_t = Mode::Raw)]
    pub mode: Mode,
    /// In frame mode: the files command to send.
    #[arg(long, value_enum, default_value_t = FrameCmd::Ping)]
    pub frame_cmd: FrameCmd,
    /// Payload size: raw mode's request, line mode's line (newline included), frame echo's body.
    #[arg(long, value_name = "BYTES", default_value = "64", value_parser = parse_bytes)]
    pub size: usize,
    /// In line mode: send this text followed by CRLF as every request (e.g. PING for redis)
    /// instead of a --size line.
    #[arg(long, value_name = "TEXT")]
    pub line: Option<String>,
    /// Load-generating threads, each with its own poll and share of the connections.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: u32,
    /// A connection with requests in flight and no bytes moving for this long is an error
    /// that ends the run (also the connect timeout).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Also measure this process's CPU time (/proc/PID/stat) over the window: the server's
    /// CPU time per request.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Each request on a connection of its own: connect, send, read the reply, close (netperf's
    /// TCP_CRR); latency counts from the connect. Needs --depth 1 and no --rate.
    #[arg(long)]
    pub new_conn_per_request: bool,
    /// Print replies/s every this long while the run goes (on stderr), as iperf3 does.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub interval: Option<Duration>,
    /// File holding the shared secret, for a server that asks for authentication (else the
    /// SOCKLAB_SECRET environment variable, if set).
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub tls: crate::tls::client::TlsArgs,
}

/// Why `socklab bench` failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0} is not a stream address (use HOST:PORT or unix:PATH)")]
    NotStream(String),
    #[error(transparent)]
    Auth(#[from] crate::client::AuthError),
    #[error(transparent)]
    Tls(#[from] crate::tls::client::TlsClientError),
    #[error("--tls is for stream modes (raw, line, frame), not udp")]
    TlsOverUdp,
    #[error("--duration must be more than zero")]
    ZeroDuration,
    #[error("--timeout must be more than zero")]
    ZeroTimeout,
    #[error("--line must not contain CR or LF")]
    LineBreak,
    #[error("--size must be at least 1 in {0} mode")]
    ZeroSize(&'static str),
    #[error("--line is only for --mode line and --mode udp")]
    LineOutsideLineMode,
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("cannot reconnect to {addr} after a connection failed ({why}): {source}")]
    Reconnect {
        addr: String,
        why: String,
        source: io::Error,
    },
    #[error("{addr} dropped a connection before answering any request on it: {why}")]
    Refused { addr: String, why: String },
    #[error(
        "{silence}, with {in_flight} {} in flight on that connection (--timeout)",
        if *.in_flight == 1 { "request" } else { "requests" }
    )]
    Timeout {
        silence: crate::client::NoAnswer,
        in_flight: usize,
    },
    #[error("{addr} sent something that is not a reply: {reason}")]
    Protocol { addr: String, reason: String },
    #[error("poll failed: {0}")]
    Poll(io::Error),
    #[error("cannot start a load thread: {0}")]
    Spawn(io::Error),
    #[error("a load thread panicked")]
    Panicked,
    #[error("histogram: {0}")]
    Histogram(String),
    #[error("stopped because another thread failed")]
    Stopped,
    #[error("interrupted during the warm-up: nothing was measured")]
    InterruptedEarly,
    #[error(
        "--new-conn-per-request sends one request per connection: it needs --depth 1 and no --rate"
    )]
    CrrShape,
    #[error("cannot read the CPU time of process {pid}: {reason}")]
    ServerCpu { pid: u32, reason: String },
    #[error(
        "{connection_errors} connection errors and {error_replies} error replies during the run"
    )]
    Errors {
        connection_errors: u64,
        error_replies: u64,
    },
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p99_9: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Latency {
    /// The percentiles of a histogram of nanoseconds, in microseconds.
    fn of(hist: &Histogram<u64>) -> Latency {
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            p50: us(hist.value_at_quantile(0.5)),
            p90: us(hist.value_at_quantile(0.9)),
            p99: us(hist.value_at_quantile(0.99)),
            p99_9: us(hist.value_at_quantile(0.999)),
            max: us(hist.max()),
            mean: hist.mean() / 1000.0,
        }
    }
}

/// The result of a run (the `--json` object).
#[derive(Debug, Serialize)]
pub struct Report {
    /// The server address.
    pub addr: String,
    /// `raw`, `line` or `frame`.
    pub mode: Mode,
    /// In frame mode, the command sent.
    pub frame_cmd: Option<FrameCmd>,
    /// Bytes of one request on the wire.
    pub request_bytes: usize,
    /// Connections.
    pub conns: u32,
    /// Requests in flight per connection (at most, with a rate).
    pub depth: u32,
    /// Load threads.
    pub threads: u32,
    /// Open-loop request rate asked for, if any.
    pub rate: Option<f64>,
    /// Warm-up, seconds.
    pub warmup_s: f64,
    /// Measured window, seconds (as measured).
    pub duration_s: f64,
    /// Replies received in the window.
    pub requests: u64,
    /// `requests / duration_s`.
    pub requests_per_s: f64,
    /// Request bytes written in the window.
    pub bytes_sent: u64,
    /// Reply bytes read in the window.
    pub bytes_received: u64,
    /// Bytes moved both ways per second, in millions.
    pub mb_per_s: f64,
    /// Per-request latency (send, or scheduled send with --rate, to reply), microseconds.
    pub latency_us: Latency,
    /// `connection_errors + error_replies`.
    pub errors: u64,
    /// Connections the server closed or reset during the run.
    pub connection_errors: u64,
    /// Replies that say the request failed (frame mode `"ok": false`).
    pub error_replies: u64,
    /// Connections opened again after a failure.
    pub reconnects: u64,
    /// CPU time (user + system) the load generator used in the window, seconds.
    pub cpu_s: f64,
    /// That as a percentage of one core.
    pub cpu_percent: f64,
    /// True when the load threads were busy at least 90 % of the window: the load generator,
    /// not the server, may be what bounds requests/s (compare CPU time per request instead).
    pub generator_saturated: bool,
    /// With --server-pid: the server process.
    pub server_pid: Option<u32>,
    /// With --server-pid: its CPU time (utime + stime) in the window, seconds.
    pub server_cpu_s: Option<f64>,
    /// With --server-pid: its CPU time per request, microseconds.
    pub server_cpu_per_request_us: Option<f64>,
    /// With --server-pid: the user part of it (the server's own work; the rest is the
    /// kernel's, in its system calls), microseconds a request.
    pub server_user_cpu_per_request_us: Option<f64>,
    /// With --server-pid: the system part, microseconds a request.
    pub server_sys_cpu_per_request_us: Option<f64>,
    /// Ctrl-C ended the window early: the figures are of the time measured until then.
    pub interrupted: bool,
    /// With --new-conn-per-request: connections opened in the window, and per second.
    pub connects: u64,
    pub connects_per_s: f64,
}

/// Runs `socklab bench`: prints the report; exit 1 on any failure or error during the run.
pub fn run(args: &BenchArgs) -> ExitCode {
    if args.mode == Mode::Udp && args.tls.tls {
        eprintln!("socklab bench: {}", BenchError::TlsOverUdp);
        return ExitCode::from(2);
    }
    if args.mode == Mode::Udp {
        return match udp::bench(args) {
            Ok(report) => {
                udp::print(args, &report);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("socklab bench: {e}");
                // What the command line asked cannot be done: a usage error.
                let usage = matches!(
                    e,
                    udp::UdpError::StreamAddr(_)
                        | udp::UdpError::TooLarge(_)
                        | udp::UdpError::TooSmall(_)
                );
                ExitCode::from(if usage { 2 } else { 1 })
            }
        };
    }
    match bench(args) {
        Ok(report) => {
            print_report(args, &report);
            if report.errors > 0 {
                let e = BenchError::Errors {
                    connection_errors: report.connection_errors,
                    error_replies: report.error_replies,
                };
                eprintln!("socklab bench: {e}");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("socklab bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Parses a duration such as 5s or 500ms.
fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration such as 5s, 1m or 500ms: {e}"))
}

/// Parses a size such as 64, 4KiB or 1MiB.
fn parse_bytes(s: &str) -> Result<usize, String> {
    let n = parse_size::Config::new()
        .with_binary()
        .parse_size(s)
        .map_err(|e| format!("`{s}` is not a size such as 64, 4KiB or 1MiB: {e}"))?;
    usize::try_from(n).map_err(|_| format!("`{s}` is too large"))
}

/// Parses a positive, finite request rate.
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "`{s}` is not a positive number of requests per second"
        )),
    }
}

/// The bytes of one request, and how its replies are delimited.
fn request(args: &BenchArgs) -> Result<(Vec<u8>, ReplyKind), BenchError> {
    if args.line.is_some() && args.mode != Mode::Line {
        return Err(BenchError::LineOutsideLineMode);
    }
    match args.mode {
        // `run` takes UDP runs to `udp.rs` before any stream request is made.
        Mode::Udp => Err(BenchError::NotStream(args.addr.to_string())),
        Mode::Raw => {
            if args.size == 0 {
                return Err(BenchError::ZeroSize("raw"));
            }
            // A recognisable, printable pattern.
            let req = (0..args.size)
                .map(|i| b'a'.saturating_add(u8::try_from(i % 26).unwrap_or(0)))
                .collect();
            Ok((req, ReplyKind::Raw))
        }
        Mode::Line => {
            let req = match &args.line {
                Some(text) => {
                    if text.contains(['\r', '\n']) {
                        return Err(BenchError::LineBreak);
                    }
                    let mut r = text.clone().into_bytes();
                    r.extend_from_slice(b"\r\n");
                    r
                }
                None => {
                    if args.size == 0 {
                        return Err(BenchError::ZeroSize("line"));
                    }
                    let mut r = vec![b'x'; args.size.saturating_sub(1)];
                    r.push(b'\n');
                    r
                }
            };
            Ok((req, ReplyKind::Line))
        }
        Mode::Frame => {
            let (header, body) = match args.frame_cmd {
                FrameCmd::Ping => (r#"{"cmd":"ping"}"#.to_owned(), 0),
                FrameCmd::Echo => (
                    format!(r#"{{"cmd":"echo","size":{}}}"#, args.size),
                    args.size,
                ),
            };
            let len = u32::try_from(header.len()).unwrap_or(u32::MAX);
            let mut req = len.to_le_bytes().to_vec();
            req.extend_from_slice(header.as_bytes());
            req.resize(req.len().saturating_add(body), b'b');
            Ok((req, ReplyKind::Frame))
        }
    }
}

/// Runs the load and gathers the report.
pub fn bench(args: &BenchArgs) -> Result<Report, BenchError> {
    if matches!(args.addr, ListenAddr::Unixgram(_)) {
        return Err(BenchError::NotStream(args.addr.to_string()));
    }
    if args.duration.is_zero() {
        return Err(BenchError::ZeroDuration);
    }
    if args.timeout.is_zero() {
        return Err(BenchError::ZeroTimeout);
    }
    if args.new_conn_per_request && (args.depth > 1 || args.rate.is_some()) {
        return Err(BenchError::CrrShape);
    }
    let (request, kind) = request(args)?;
    // 1,000 connections need more descriptors than the usual soft limit of 1,024.
    if let Err(e) = crate::sockopt::raise_fd_limit() {
        eprintln!("socklab bench: cannot raise the open-file limit: {e}");
    }
    let threads = args.threads.min(args.conns).max(1);
    let secret = crate::client::client_secret(args.secret_file.as_deref())?;
    let tls = args.tls.client(&args.addr)?;
    // Every connection a full handshake, as --new-conn-per-request promises to measure.
    let tls = tls.map(|t| t.for_bench());
    let challenges = Arc::new(std::sync::OnceLock::new());
    let tls12 = Arc::new(std::sync::OnceLock::new());
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        replies: AtomicU64::new(0),
        start: Barrier::new(usize::try_from(threads).unwrap_or(1).saturating_add(1)),
        interrupted: AtomicBool::new(false),
    });
    let mut handles = Vec::new();
    for t in 0..threads {
        // An even share of the connections; the first threads take the remainder.
        let conns = args.conns / threads + u32::from(t < args.conns % threads);
        let plan = Plan {
            addr: args.addr.clone(),
            request: request.clone(),
            kind,
            conns: usize::try_from(conns).unwrap_or(1),
            depth: usize::try_from(args.depth).unwrap_or(1),
            rate: args
                .rate
                .map(|r| r * f64::from(conns) / f64::from(args.conns)),
            warmup: args.warmup,
            duration: args.duration,
            timeout: args.timeout,
            secret: secret.clone(),
            challenges: Arc::clone(&challenges),
            new_conn_per_request: args.new_conn_per_request,
            tls: tls.clone(),
            tls12: Arc::clone(&tls12),
        };
        let shared_t = Arc::clone(&shared);
        let spawned = thread::Builder::new()
            .name(format!("bench-{t}"))
            .spawn(move || worker::run(&plan, &shared_t));
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                // The barrier counts on every thread: release the ones started, then fail.
                shared.stop.store(true, Ordering::Relaxed);
                for _ in handles.len()..usize::try_from(threads).unwrap_or(0) {
                    let s = Arc::clone(&shared);
                    thread::spawn(move || s.start.wait());
                }
                shared.start.wait();
                for h in handles {
                    let _ = h.join();
                }
                return Err(BenchError::Spawn(e));
            }
        }
    }
    let window = watch(args, &shared, &handles);
    // The threads end by themselves at the end of the window; after a failure here, at once.
    if window.is_err() {
        shared.stop.store(true, Ordering::Relaxed);
    }
    let mut outcomes = Vec::new();
    let mut first_error = None;
    for h in handles {
        match h.join() {
            Ok(Ok(o)) => outcomes.push(o),
            Ok(Err(e)) => {
                // Prefer the cause over the "stopped because another thread failed" echoes.
                if first_error.is_none() || matches!(first_error, Some(BenchError::Stopped)) {
                    first_error = Some(e);
                }
            }
            Err(_) => first_error = Some(BenchError::Panicked),
        }
    }
    // A thread's error is the cause; a failed CPU snapshot (a dead server) only a consequence.
    if let Some(e) = first_error {
        return Err(e);
    }
    summarise(args, &request, threads, &outcomes, &window?)
}

/// Merges the threads' outcomes into the report.
fn summarise(
    args: &BenchArgs,
    request: &[u8],
    threads: u32,
    outcomes: &[Outcome],
    window: &Window,
) -> Result<Report, BenchError> {
    let mut hist: Histogram<u64> = Histogram::new_with_bounds(1, 100_000_000_000, 3)
        .map_err(|e| BenchError::Histogram(e.to_string()))?;
    let (mut requests, mut bytes_sent, mut bytes_received) = (0u64, 0u64, 0u64);
    let (mut connection_errors, mut error_replies, mut reconnects) = (0u64, 0u64, 0u64);
    for o in outcomes {
        hist.add(&o.hist)
            .map_err(|e| BenchError::Histogram(e.to_string()))?;
        requests = requests.saturating_add(o.requests);
        bytes_sent = bytes_sent.saturating_add(o.bytes_out);
        bytes_received = bytes_received.saturating_add(o.bytes_in);
        connection_errors = connection_errors.saturating_add(o.connection_errors);
        error_replies = error_replies.saturating_add(o.error_replies);
        reconnects = reconnects.saturating_add(o.reconnects);
    }
    // The threads' windows are exactly --duration long; the main thread's snapshots are within
    // a few milliseconds of them.
    let interrupted = outcomes.iter().any(|o| o.window < args.duration);
    let duration_s = if interrupted {
        let measured = outcomes.iter().map(|o| o.window).max().unwrap_or_default();
        if measured.is_zero() {
            return Err(BenchError::InterruptedEarly);
        }
        measured.as_secs_f64()
    } else {
        args.duration.as_secs_f64()
    };
    let connects: u64 = outcomes.iter().map(|o| o.connects).sum();
    let cpu_percent = if window.wall_s > 0.0 {
        window.cpu_s / window.wall_s * 100.0
    } else {
        0.0
    };
    let per_request_us = |cpu_s: f64| {
        if requests > 0 {
            cpu_s * 1e6 / requests as f64
        } else {
            0.0
        }
    };
    Ok(Report {
        addr: args.addr.to_string(),
        mode: args.mode,
        frame_cmd: (args.mode == Mode::Frame).then_some(args.frame_cmd),
        request_bytes: request.len(),
        conns: args.conns,
        depth: args.depth,
        threads,
        rate: args.rate,
        warmup_s: args.warmup.as_secs_f64(),
        duration_s,
        requests,
        requests_per_s: requests as f64 / duration_s,
        bytes_sent,
        bytes_received,
        mb_per_s: bytes_sent.saturating_add(bytes_received) as f64 / duration_s / 1e6,
        latency_us: Latency::of(&hist),
        errors: connection_errors.saturating_add(error_replies),
        connection_errors,
        error_replies,
        reconnects,
        cpu_s: window.cpu_s,
        cpu_percent,
        generator_saturated: saturated(cpu_percent, threads),
        server_pid: args.server_pid,
        server_cpu_s: window.server_cpu.map(|c| c.total_s()),
        server_cpu_per_request_us: window.server_cpu.map(|c| per_request_us(c.total_s())),
        server_user_cpu_per_request_us: window.server_cpu.map(|c| per_request_us(c.user_s)),
        server_sys_cpu_per_request_us: window.server_cpu.map(|c| per_request_us(c.sys_s)),
        interrupted,
        connects,
        connects_per_s: connects as f64 / duration_s,
    })
}
