//! The byte-stream client commands: `socklab echo` and `socklab upper` (PROTOCOL.md,
//! "Byte-stream services" and "Datagram services").
//!
//! Over TCP or a unix socket, a writer thread copies stdin to the socket and then half-closes
//! it, while the main thread copies the socket to stdout until the server closes: the server
//! sends everything still pending after the half-close, so every answer has arrived when the
//! command exits. Over UDP (`--udp`) each stdin line is one datagram and each reply is printed
//! on its own line; a reply that does not come within `--timeout` is an error.
//!
//! [`Conn`] (a connected TCP or unix stream) is shared with the `chat` command.

use std::io::{self, BufRead, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use clap::Args;

use crate::addr::ListenAddr;

/// The largest payload of one UDP datagram over IPv4.
pub const MAX_DATAGRAM: usize = 65_507;

/// `socklab echo`: send stdin to the echo service, print what comes back.
#[derive(Debug, Args)]
pub struct EchoArgs {
    /// The echo service: HOST:PORT or unix:PATH (HOST:PORT of udp-echo with --udp).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7000")]
    addr: ListenAddr,
    #[command(flatten)]
    common: Common,
}

/// `socklab upper`: send stdin to the upper service, print what comes back.
#[derive(Debug, Args)]
pub struct UpperArgs {
    /// The upper service: HOST:PORT or unix:PATH (HOST:PORT of udp-upper with --udp).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7001")]
    addr: ListenAddr,
    #[command(flatten)]
    common: Common,
}

/// Options shared by `echo` and `upper`.
#[derive(Debug, Args)]
struct Common {
    /// Use the datagram service: each stdin line is one datagram, each reply one line.
    #[arg(long)]
    udp: bool,
    /// With --udp: how long to wait for each reply before giving up (exit 1).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// Why a client command failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("{0} is not a stream address (use HOST:PORT or unix:PATH)")]
    NotStream(String),
    #[error("{0} is not a UDP address (--udp takes HOST:PORT)")]
    NotUdp(String),
    #[error("cannot open a UDP socket: {0}")]
    Bind(io::Error),
    #[error("reading stdin failed: {0}")]
    Stdin(io::Error),
    #[error("writing stdout failed: {0}")]
    Stdout(io::Error),
    #[error("sending to the server failed: {0}")]
    Send(io::Error),
    #[error("receiving from the server failed: {0}")]
    Receive(io::Error),
    #[error("the server closed the connection before all of stdin was sent")]
    ClosedEarly,
    #[error("line {line} is {len} bytes; a datagram carries at most {MAX_DATAGRAM}")]
    LineTooLong { line: u64, len: usize },
    #[error("no reply to line {line} within {timeout:?}")]
    NoReply { line: u64, timeout: Duration },
    #[error("the writer thread panicked")]
    WriterPanicked,
}

/// A connected TCP or unix stream.
#[derive(Debug)]
pub enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    /// Connects to a stream address (`HOST:PORT` or `unix:PATH`).
    pub fn connect(addr: &ListenAddr) -> Result<Conn, StreamError> {
        let failed = |source| StreamError::Connect {
            addr: addr.to_string(),
            source,
        };
        match addr {
            ListenAddr::Inet(a) => TcpStream::connect(a).map(Conn::Tcp).map_err(failed),
            ListenAddr::Unix(p) => UnixStream::connect(p).map(Conn::Unix).map_err(failed),
            ListenAddr::Unixgram(_) => Err(StreamError::NotStream(addr.to_string())),
        }
    }

    /// A second handle on the same socket (for a reader and a writer thread).
    pub fn try_clone(&self) -> io::Result<Conn> {
        match self {
            Conn::Tcp(s) => s.try_clone().map(Conn::Tcp),
            Conn::Unix(s) => s.try_clone().map(Conn::Unix),
        }
    }

    /// Shuts down one or both directions.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.shutdown(how),
            Conn::Unix(s) => s.shutdown(how),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A UDP socket bound to an ephemeral port of `server`'s address family and connected to it
/// (so only the server's datagrams are received).
pub fn udp_socket(server: SocketAddr) -> Result<UdpSocket, StreamError> {
    let local: SocketAddr = if server.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(local).map_err(StreamError::Bind)?;
    sock.connect(server)
        .map_err(|source| StreamError::Connect {
            addr: server.to_string(),
            source,
        })?;
    Ok(sock)
}

/// `socklab echo`.
pub fn run_echo(args: &EchoArgs) -> ExitCode {
    report(run(&args.addr, &args.common))
}

/// `socklab upper`.
pub fn run_upper(args: &UpperArgs) -> ExitCode {
    report(run(&args.addr, &args.common))
}

fn report(result: Result<(), StreamError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("socklab: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(addr: &ListenAddr, common: &Common) -> Result<(), StreamError> {
    if common.udp {
        let ListenAddr::Inet(server) = addr else {
            return Err(StreamError::NotUdp(addr.to_string()));
        };
        return run_udp(*server, common.timeout);
    }
    run_stream(addr)
}

fn run_stream(addr: &ListenAddr) -> Result<(), StreamError> {
    let mut conn = Conn::connect(addr)?;
    let mut to_server = conn.try_clone().map_err(StreamError::Send)?;
    // Set once all of stdin went out, just before the half-close: if the server closes while
    // it is still unset, it closed early, and the writer may be blocked on stdin for good.
    let input_done = Arc::new(AtomicBool::new(false));
    let writer = {
        let input_done = input_done.clone();
        thread::spawn(move || -> Result<(), StreamError> {
            let mut stdin = io::stdin().lock();
            copy(
                &mut stdin,
                &mut to_server,
                StreamError::Stdin,
                StreamError::Send,
            )?;
            input_done.store(true, Ordering::SeqCst);
            to_server
                .shutdown(Shutdown::Write)
                .map_err(StreamError::Send)
        })
    };
    let mut stdout = io::stdout().lock();
    let read = copy(
        &mut conn,
        &mut stdout,
        StreamError::Receive,
        StreamError::Stdout,
    );
    stdout.flush().map_err(StreamError::Stdout)?;
    read?;
    if !input_done.load(Ordering::SeqCst) {
        return Err(StreamError::ClosedEarly);
    }
    writer.join().map_err(|_| StreamError::WriterPanicked)?
}

/// Copies `from` to `to` until end of file, telling read errors from write errors.
fn copy(
    from: &mut impl Read,
    to: &mut impl Write,
    read_err: fn(io::Error) -> StreamError,
    write_err: fn(io::Error) -> StreamError,
) -> Result<(), StreamError> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_err(e)),
        };
        let chunk = buf.get(..n).unwrap_or_default();
        to.write_all(chunk).map_err(write_err)?;
        to.flush().map_err(write_err)?;
    }
}

fn run_udp(server: SocketAddr, timeout: Duration) -> Result<(), StreamError> {
    let sock = udp_socket(server)?;
    // A zero timeout would mean "block forever" to the socket; wait at least a millisecond.
    sock.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
        .map_err(StreamError::Bind)?;
    let mut stdin = io::stdin().lock();
    let mut stdout = io::stdout().lock();
    let mut line = Vec::new();
    let mut reply = vec![0u8; 64 * 1024];
    let mut number = 0u64;
    loop {
        line.clear();
        // Read at most one byte past the limit and its newline: enough to know a line is too
        // long without holding all of it.
        let limit = (MAX_DATAGRAM + 2) as u64;
        let n = (&mut stdin)
            .take(limit)
            .read_until(b'\n', &mut line)
            .map_err(StreamError::Stdin)?;
        if n == 0 {
            return Ok(());
        }
        number = number.saturating_add(1);
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        if line.len() > MAX_DATAGRAM {
            return Err(StreamError::LineTooLong {
                line: number,
                len: line.len(),
            });
        }
        sock.send(&line).map_err(StreamError::Send)?;
        let got = match sock.recv(&mut reply) {
            Ok(got) => got,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(StreamError::NoReply {
                    line: number,
                    timeout,
                });
            }
            Err(e) => return Err(StreamError::Receive(e)),
        };
        let answer = reply.get(..got).unwrap_or_default();
        stdout.write_all(answer).map_err(StreamError::Stdout)?;
        stdout.write_all(b"\n").map_err(StreamError::Stdout)?;
        stdout.flush().map_err(StreamError::Stdout)?;
    }
}
