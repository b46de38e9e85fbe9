//! `socklab time`: asks the `time` service for the server's local time in a strftime format
//! (PROTOCOL.md, "Datagram services") and prints the answer.

use std::io::{self, ErrorKind};
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;

use crate::client::{NoAnswer, Stall, is_timeout};

/// Largest reply read: the service never sends more than 1024 bytes, but a larger datagram
/// from something else must not be cut into something that looks like an answer.
const RECV_BUF: usize = 65_536;

/// `socklab time`: one request datagram, one answer.
#[derive(Debug, Args)]
pub struct TimeArgs {
    /// A strftime format (C locale), e.g. '%A %H:%M'; empty for `%Y-%m-%d %X`.
    #[arg(default_value = "")]
    pub format: String,
    /// The time service.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7013")]
    pub addr: String,
    /// Give up when no answer comes within this long.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Why `socklab time` failed.
#[derive(Debug, thiserror::Error)]
pub enum TimeClientError {
    #[error("cannot resolve {addr}: {source}")]
    Resolve { addr: String, source: io::Error },
    #[error("{addr} resolves to no address")]
    NoAddress { addr: String },
    #[error("the timeout must be more than zero")]
    ZeroTimeout,
    #[error(transparent)]
    NoAnswer(NoAnswer),
    #[error("no time service at {addr} (connection refused)")]
    Refused { addr: SocketAddr },
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Runs `socklab time`: prints the answer; exit 1 for an `error: ` answer (on stderr), a
/// timeout or any other failure.
pub fn run(args: &TimeArgs) -> ExitCode {
    match ask(args) {
        Ok(answer) => {
            let text = String::from_utf8_lossy(&answer);
            if answer.starts_with(b"error: ") {
                eprintln!("{text}");
                ExitCode::FAILURE
            } else {
                println!("{text}");
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("socklab time: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Sends the format and returns the answer datagram.
fn ask(args: &TimeArgs) -> Result<Vec<u8>, TimeClientError> {
    if args.timeout.is_zero() {
        return Err(TimeClientError::ZeroTimeout);
    }
    let addr = resolve(&args.addr)?;
    let local: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let socket = UdpSocket::bind(local)?;
    // Connected, so that only datagrams from the service are received.
    socket.connect(addr)?;
    let sent = socket.send(args.format.as_bytes())?;
    let deadline = Instant::now() + args.timeout;
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(TimeClientError::NoAnswer(NoAnswer {
                peer: addr.to_string(),
                stall: Stall::Answer,
                timeout: args.timeout,
                sent: sent as u64,
                received: 0,
            }));
        }
        socket.set_read_timeout(Some(left))?;
        match socket.recv(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // The read timeout: loop once more, which sees the deadline passed.
            Err(e) if is_timeout(&e) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                return Err(TimeClientError::Refused { addr });
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The first address `HOST:PORT` resolves to.
fn resolve(addr: &str) -> Result<SocketAddr, TimeClientError> {
    addr.to_socket_addrs()
        .map_err(|source| TimeClientError::Resolve {
            addr: addr.to_owned(),
            source,
        })?
        .next()
        .ok_or_else(|| TimeClientError::NoAddress {
            addr: addr.to_owned(),
        })
}
