//! The byte-stream client commands: `socklab echo` and `socklab upper` (PROTOCOL.md,
//! "Byte-stream services" and "Datagram services").
//!
//! Over TCP or a unix socket, a writer thread copies stdin to the socket and then half-closes
//! it, while the main thread copies the socket to stdout until the server closes: the server
//! sends everything still pending after the half-close, so every answer has arrived when the
//! command exits. The server answers byte for byte, so while fewer bytes came back than went
//! out (or stdin has ended and the server has not closed yet) it owes an answer: no byte back
//! for `--timeout` then is an error, and so is a server that takes no byte for that long.
//! Over UDP (`--udp`) each stdin line is one datagram and each reply is printed on its own
//! line; a reply that does not come within `--timeout` is an error.
//!
//! `Conn` (a connected TCP or unix stream, or TLS over one: `tls/client.rs`) and its
//! `connect` are shared with the `chat` command. With `--tls`, both threads share the one TLS
//! session.

use std::io::{self, BufRead, Read, Write};
use std::net::{Shutdown, SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clap::Args;

use crate::addr::ListenAddr;
use crate::client::{AuthError, NoAnswer, Opening, Stall, client_secret, handshake, is_timeout};
use crate::tls::client::{ClientStream, TlsArgs};

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
    /// How long to wait for the server before giving up (exit 1): for each reply with --udp;
    /// else for the next byte back while an answer is owed, and for the server to take
    /// what is sent.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// File holding the shared secret, for a server that asks for authentication (else the
    /// SOCKLAB_SECRET environment variable, if set). Without one, a server that asks is an
    /// error (exit 1).
    #[arg(long, value_name = "PATH")]
    secret_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    tls: TlsArgs,
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
    #[error("no reply to line {line}: {silence}")]
    NoReply { line: u64, silence: NoAnswer },
    #[error(transparent)]
    NoAnswer(NoAnswer),
    #[error("the writer thread panicked")]
    WriterPanicked,
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Tls(#[from] crate::tls::client::TlsClientError),
}

/// A connected TCP or unix stream, or TLS over one.
pub(crate) type Conn = ClientStream;

/// Connects to a stream address (`HOST:PORT` or `unix:PATH`), with TLS when `tls` asks for it;
/// `timeout` bounds the connect and the TLS handshake.
pub(crate) fn connect(
    addr: &ListenAddr,
    tls: &TlsArgs,
    timeout: Duration,
) -> Result<Conn, StreamError> {
    if let ListenAddr::Unixgram(_) = addr {
        return Err(StreamError::NotStream(addr.to_string()));
    }
    let tls = tls.client(addr)?;
    crate::tls::client::connect(addr, tls.as_ref(), timeout).map_err(|source| {
        StreamError::Connect {
            addr: addr.to_string(),
            source,
        }
    })
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
    report("echo", run(&args.addr, &args.common))
}

/// `socklab upper`.
pub fn run_upper(args: &UpperArgs) -> ExitCode {
    report("upper", run(&args.addr, &args.common))
}

fn report(cmd: &str, result: Result<(), StreamError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("socklab {cmd}: {e}");
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
    let secret = client_secret(common.secret_file.as_deref())?;
    let mut conn = connect(addr, &common.tls, common.timeout)?;
    let opening = handshake(
        &mut conn,
        &addr.to_string(),
        secret.as_ref(),
        common.timeout,
        b"",
    )?;
    run_stream(conn, addr, common.timeout, opening)
}

/// How far a stream connection got, shared by the writer thread and the reader.
#[derive(Debug)]
struct Progress {
    /// The server's address, for messages.
    peer: String,
    /// How long the server may leave the client waiting.
    timeout: Duration,
    /// Bytes written to the server.
    sent: AtomicU64,
    /// Bytes received from it.
    received: AtomicU64,
    /// Set once all of stdin went out, just before the half-close: if the server closes while
    /// it is still unset, it closed early, and the writer may be blocked on stdin for good.
    input_done: AtomicBool,
    /// Set while the server takes no bytes: the writer's last write timed out (its socket
    /// timeout is a fraction of the timeout) and none succeeded since.
    write_blocked: AtomicBool,
}

impl Progress {
    fn no_answer(&self, stall: Stall) -> StreamError {
        StreamError::NoAnswer(NoAnswer {
            peer: self.peer.clone(),
            stall,
            timeout: self.timeout,
            sent: self.sent.load(Ordering::SeqCst),
            received: self.received.load(Ordering::SeqCst),
        })
    }

    /// What the server fails to do when it has not answered for the timeout: take bytes, if
    /// the writer is blocked, else answer.
    fn stall(&self) -> Stall {
        if self.write_blocked.load(Ordering::SeqCst) {
            Stall::Take
        } else {
            Stall::Answer
        }
    }

    /// Whether the server owes an answer: bytes not echoed yet, or the close after the end.
    fn owed(&self) -> bool {
        self.input_done.load(Ordering::SeqCst)
            || self.sent.load(Ordering::SeqCst) > self.received.load(Ordering::SeqCst)
    }
}

/// The writer's side of the socket, counting what the server takes. Its socket times out
/// after a fraction of the timeout, to tell the reader early that the server takes nothing;
/// a write fails only when nothing was taken for the whole timeout.
struct Counted {
    conn: Conn,
    progress: Arc<Progress>,
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let p = &self.progress;
        let began = Instant::now();
        loop {
            match self.conn.write(buf) {
                Ok(n) => {
                    p.write_blocked.store(false, Ordering::SeqCst);
                    p.sent.fetch_add(n as u64, Ordering::SeqCst);
                    return Ok(n);
                }
                Err(e) if is_timeout(&e) => {
                    p.write_blocked.store(true, Ordering::SeqCst);
                    if began.elapsed() >= p.timeout {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn run_stream(
    mut conn: Conn,
    addr: &ListenAddr,
    timeout: Duration,
    opening: Opening,
) -> Result<(), StreamError> {
    // Both directions wake up four times per timeout, to see whether an answer is owed and to
    // tell whether the server still takes bytes.
    let tick = timeout / 4;
    conn.set_read_timeout(tick).map_err(StreamError::Receive)?;
    conn.set_write_timeout(tick).map_err(StreamError::Send)?;
    let progress = Arc::new(Progress {
        peer: addr.to_string(),
        timeout,
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
        input_done: AtomicBool::new(false),
        write_blocked: AtomicBool::new(false),
    });
    let mut to_server = Counted {
        conn: conn.try_clone().map_err(StreamError::Send)?,
        progress: Arc::clone(&progress),
    };
    let writer = thread::spawn(move || -> Result<(), StreamError> {
        let progress = Arc::clone(&to_server.progress);
        let send_err = |e: io::Error| {
            if is_timeout(&e) {
                progress.no_answer(Stall::Take)
            } else {
                StreamError::Send(e)
            }
        };
        let mut stdin = io::stdin().lock();
        copy(&mut stdin, &mut to_server, StreamError::Stdin, send_err)?;
        progress.input_done.store(true, Ordering::SeqCst);
        to_server
            .conn
            .shutdown(Shutdown::Write)
            .map_err(StreamError::Send)
    });
    let mut stdout = io::stdout().lock();
    // What the server said before we sent anything, if it was not a challenge.
    stdout
        .write_all(&opening.early)
        .map_err(StreamError::Stdout)?;
    let read = relay_answers(&mut conn, &mut stdout, &progress);
    stdout.flush().map_err(StreamError::Stdout)?;
    let (sent, received) = (
        progress.sent.load(Ordering::SeqCst),
        progress.received.load(Ordering::SeqCst),
    );
    let reset =
        matches!(&read, Err(StreamError::Receive(e)) if e.kind() == io::ErrorKind::ConnectionReset);
    let cut = reset || sent > 0 || !progress.input_done.load(Ordering::SeqCst);
    if opening.authenticated && received == 0 && cut {
        // The service answers byte for byte: a close with nothing back after our answer to
        // the challenge is the server refusing it.
        return Err(AuthError::Refused {
            peer: addr.to_string(),
        }
        .into());
    }
    read?;
    if !progress.input_done.load(Ordering::SeqCst) {
        return Err(StreamError::ClosedEarly);
    }
    writer.join().map_err(|_| StreamError::WriterPanicked)?
}

/// Copies what the server sends to `to` until it closes; fails when the server owes an answer
/// and sends nothing for the timeout (the socket's read timeout is a fraction of it).
fn relay_answers(
    conn: &mut Conn,
    to: &mut impl Write,
    progress: &Progress,
) -> Result<(), StreamError> {
    let mut buf = vec![0u8; 64 * 1024];
    // Since when an answer has been owed with nothing received.
    let mut quiet_since: Option<Instant> = None;
    loop {
        let n = match conn.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if is_timeout(&e) => {
                if !progress.owed() {
                    quiet_since = None;
                    continue;
                }
                let now = Instant::now();
                let since = *quiet_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= progress.timeout {
                    return Err(progress.no_answer(progress.stall()));
                }
                continue;
            }
            Err(e) => return Err(StreamError::Receive(e)),
        };
        quiet_since = None;
        progress.received.fetch_add(n as u64, Ordering::SeqCst);
        let chunk = buf.get(..n).unwrap_or_default();
        to.write_all(chunk).map_err(StreamError::Stdout)?;
        to.flush().map_err(StreamError::Stdout)?;
    }
}

/// Copies `from` to `to` until end of file, telling read errors from write errors.
fn copy(
    from: &mut impl Read,
    to: &mut impl Write,
    read_err: impl Fn(io::Error) -> StreamError,
    write_err: impl Fn(io::Error) -> StreamError,
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
        to.write_all(chunk).map_err(&write_err)?;
        to.flush().map_err(&write_err)?;
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
    let (mut sent, mut received) = (0u64, 0u64);
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
        let n = sock.send(&line).map_err(StreamError::Send)?;
        sent = sent.saturating_add(n as u64);
        let got = match sock.recv(&mut reply) {
            Ok(got) => got,
            Err(e) if is_timeout(&e) => {
                return Err(StreamError::NoReply {
                    line: number,
                    silence: NoAnswer {
                        peer: server.to_string(),
                        stall: Stall::Answer,
                        timeout,
                        sent,
                        received,
                    },
                });
            }
            Err(e) => return Err(StreamError::Receive(e)),
        };
        received = received.saturating_add(got as u64);
        let answer = reply.get(..got).unwrap_or_default();
        stdout.write_all(answer).map_err(StreamError::Stdout)?;
        stdout.write_all(b"\n").map_err(StreamError::Stdout)?;
        stdout.flush().map_err(StreamError::Stdout)?;
    }
}
