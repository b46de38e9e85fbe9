//! The `socklab` command line: one file per subcommand.

pub mod bench;
pub mod cert;
pub mod chat;
pub mod discover;
pub mod docs;
pub mod exec;
pub mod files;
pub mod ipmsg;
pub mod log_relay;
pub mod reload;
pub mod serve;
pub mod stats;
pub mod sticky;
pub mod stream;
pub mod time;
pub mod tune;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// socklab: a high-concurrency socket server on one hand-written mio reactor, and the tools
/// to measure it.
#[derive(Debug, Parser)]
#[command(
    name = "socklab",
    version,
    about,
    after_help = "Exit status: 0 success; 1 a failure at run time; 2 a usage or configuration \
                  error, an address in use included. `socklab exec` exits with its command's \
                  status (124 at its timeout, 255 for an error of its own)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (echo, upper, udp-echo, udp-upper, files on their default addresses).
    Serve(Box<crate::config::flags::ServeArgs>),
    /// Ask the running server to start its successor and hand it every listening socket.
    Reload(reload::ReloadArgs),
    /// Upload a file to the files service (md5 checked).
    Put(files::PutArgs),
    /// Download a file from the files service (md5 checked, written atomically).
    Get(files::GetArgs),
    /// List the files stored by the files service.
    Ls(files::LsArgs),
    /// Show one stored file's size, md5 and modification time.
    Stat(files::StatArgs),
    /// Time one round trip to the files service.
    Ping(files::PingArgs),
    /// Show the server's counters per service (the files service's `stats` command).
    Stats(stats::StatsArgs),
    /// Run an allowed program on the server (files' exec) and exit with its exit code.
    Exec(exec::ExecArgs),
    /// Ask the time service for the server's time in a strftime format.
    Time(time::TimeArgs),
    /// Find socklab servers on the local network by broadcast.
    Discover(discover::DiscoverArgs),
    /// Send one message to an IP Messenger (FeiQ) client and wait for its receipt.
    Ipmsg(ipmsg::IpmsgArgs),
    /// Chat with the chat room (full duplex; --udp for udp-chat).
    Chat(chat::ChatArgs),
    /// Send stdin to the echo service and print what comes back (--udp: one datagram a line).
    Echo(stream::EchoArgs),
    /// Send stdin to the upper service and print what comes back (--udp: one datagram a line).
    Upper(stream::UpperArgs),
    /// Load a server with many connections and measure requests/s, latency and CPU time.
    Bench(bench::BenchArgs),
    /// Experiments showing what each socket option does (tables and SVG charts).
    Tune(tune::TuneArgs),
    /// The sticky-packet lesson, live: raw echo loses message boundaries, frames keep them.
    Sticky(sticky::StickyArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell) to stdout.
    Completions(docs::CompletionsArgs),
    /// Print the man page (roff) to stdout: `socklab man | man -l -`.
    Man(docs::ManArgs),
    /// Write a test certificate authority and a server and a client certificate it signs
    /// (ca.pem, server.pem, client.pem and their keys) into a directory, for trying TLS.
    Cert(cert::CertArgs),
}

/// Parses the command line and runs the subcommand; the exit code says how it went.
/// Parses a duration flag: humantime (`500ms`, `2s`, `1m`), or a plain number of milliseconds
/// (what these flags took before they took units).
pub(crate) fn parse_duration_or_ms(s: &str) -> Result<std::time::Duration, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse()
            .map(std::time::Duration::from_millis)
            .map_err(|_| format!("`{s}` is too many milliseconds"));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration such as 500ms, 2s or 1m: {e}"))
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Reload(a) => reload::run(&a),
        Command::Put(a) => files::report("put", files::put(&a)),
        Command::Get(a) => files::report("get", files::get(&a)),
        Command::Ls(a) => files::report("ls", files::ls(&a)),
        Command::Stat(a) => files::report("stat", files::stat(&a)),
        Command::Ping(a) => files::report("ping", files::ping(&a)),
        Command::Stats(a) => stats::run(&a),
        Command::Exec(a) => exec::run(&a),
        Command::Time(a) => time::run(&a),
        Command::Discover(a) => discover::run(&a),
        Command::Ipmsg(a) => ipmsg::run(&a),
        Command::Chat(a) => chat::run(&a),
        Command::Echo(a) => stream::run_echo(&a),
        Command::Upper(a) => stream::run_upper(&a),
        Command::Bench(a) => bench::run(&a),
        Command::Tune(a) => tune::run(&a),
        Command::Sticky(a) => sticky::run(&a),
        Command::Completions(a) => docs::completions(&a),
        Command::Man(a) => docs::man(&a),
        Command::Cert(a) => cert::cert(&a),
    }
}

/// Sends tracing output to stderr: RUST_LOG when set, else `info` moved by `-v` and `-q`.
/// Lines never block the event loop: they go through a relay process (`log_relay`), or, when
/// it cannot be started, through a background thread; either drops lines when stderr does not
/// keep up. Keep the guard alive until exit: dropping it lets the queued lines out.
pub fn init_logging(verbose: u8, quiet: u8) -> LogGuard {
    use tracing_subscriber::EnvFilter;
    let level = match i16::from(verbose) - i16::from(quiet) {
        i16::MIN..=-2 => "error",
        -1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_target(false);
    // A second initialisation (tests calling in twice) is harmless; its error is ignored.
    match log_relay::LogRelay::start() {
        Ok(relay) => {
            let _ = fmt.with_writer(relay.writer()).try_init();
            LogGuard::Relay(relay)
        }
        Err(e) => {
            let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
            let _ = fmt.with_writer(writer).try_init();
            tracing::warn!("cannot start the log relay process ({e}); logging from a thread");
            LogGuard::Thread(guard)
        }
    }
}

/// Keeps the log path open; dropping it lets the queued lines out.
#[derive(Debug)]
pub enum LogGuard {
    /// Lines go through the relay process.
    Relay(log_relay::LogRelay),
    /// Lines go through tracing-appender's thread.
    Thread(tracing_appender::non_blocking::WorkerGuard),
}

#[cfg(test)]
mod duration_flags {
    use super::parse_duration_or_ms;
    use std::time::Duration;

    #[test]
    fn durations_take_units_and_plain_numbers_stay_milliseconds() {
        assert_eq!(
            parse_duration_or_ms("1500"),
            Ok(Duration::from_millis(1500))
        );
        assert_eq!(parse_duration_or_ms("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(
            parse_duration_or_ms("250ms"),
            Ok(Duration::from_millis(250))
        );
        assert_eq!(parse_duration_or_ms("1m"), Ok(Duration::from_secs(60)));
        for bad in ["", "-5", "2 parsecs", "99999999999999999999999"] {
            assert!(parse_duration_or_ms(bad).is_err(), "{bad}");
        }
    }
}
