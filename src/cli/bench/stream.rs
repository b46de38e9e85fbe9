//! A bench connection's stream: the socket, or TLS over it, and how one opens (`open`). The
//! TLS handshake (and the HMAC challenge, inside TLS) run blocking when the connection opens,
//! as the plain challenge does; then the session goes on non-blocking over the mio socket, so
//! the load generator's loop stays one poll for every connection: TLS 1.3 on our own record
//! layer (`tls::client_records`), TLS 1.2 on rustls's buffered connection (`tls::stream`).

use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream as StdTcpStream;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::time::Duration;

use mio::event::Source;
use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};
use rustls::ClientConnection;

use super::BenchError;
use super::worker::Plan;
use crate::addr::ListenAddr;
use crate::client::{Timed, challenge_wait, handshake_within};
use crate::net::{MioStream, StdStream};
use crate::tls::client::{ClientTls, handshake_error};
use crate::tls::client_records::{self, Handshaken, RecordStream};
use crate::tls::stream::TlsStream;

/// A connection of the load generator.
#[derive(Debug)]
pub(super) enum BenchStream {
    /// The socket.
    Plain(MioStream),
    /// TLS 1.2 over it, on rustls's buffered connection.
    Tls(Box<TlsStream<MioStream>>),
    /// TLS 1.3 over it, on our record layer.
    Own(Box<RecordStream<MioStream>>),
}

impl BenchStream {
    /// A short read means the socket is empty (for TLS, when rustls says so too: it may hold
    /// plaintext).
    pub(super) fn short_read_drains(&self) -> bool {
        match self {
            BenchStream::Plain(_) => true,
            BenchStream::Tls(t) => t.drained(),
            BenchStream::Own(t) => t.drained(),
        }
    }

    /// Writes the records TLS has waiting; `WouldBlock` is not an error here.
    pub(super) fn send_pending(&mut self) -> io::Result<()> {
        match self {
            BenchStream::Tls(t) => t.send_what_fits(),
            BenchStream::Own(t) => t.send_what_fits(),
            BenchStream::Plain(_) => Ok(()),
        }
    }
}

impl Read for BenchStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            BenchStream::Plain(s) => s.read(buf),
            BenchStream::Tls(t) => t.read(buf),
            BenchStream::Own(t) => t.read(buf),
        }
    }
}

impl Write for BenchStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            BenchStream::Plain(s) => s.write(buf),
            BenchStream::Tls(t) => t.write(buf),
            BenchStream::Own(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Source for BenchStream {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            BenchStream::Plain(s) => s.register(r, t, i),
            BenchStream::Tls(tls) => tls.socket.register(r, t, i),
            BenchStream::Own(own) => own.socket.register(r, t, i),
        }
    }

    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            BenchStream::Plain(s) => s.reregister(r, t, i),
            BenchStream::Tls(tls) => tls.socket.reregister(r, t, i),
            BenchStream::Own(own) => own.socket.reregister(r, t, i),
        }
    }

    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            BenchStream::Plain(s) => s.deregister(r),
            BenchStream::Tls(tls) => tls.socket.deregister(r),
            BenchStream::Own(own) => own.socket.deregister(r),
        }
    }
}

/// Connects (blocking, bounded by `timeout` for TCP), runs the TLS handshake when asked,
/// answers the server's challenge if it sends one, and makes the socket non-blocking.
pub(super) fn open(
    plan: &Plan,
    why: impl FnOnce(io::Error) -> BenchError,
) -> Result<BenchStream, BenchError> {
    let s = connect(&plan.addr, plan.timeout).map_err(why)?;
    let mut session = match &plan.tls {
        Some(tls) => start_tls(plan, tls, s)?,
        None => Session::Plain(s),
    };
    let secret = plan.secret.as_ref();
    let wait = match plan.challenges.get() {
        Some(true) => plan.timeout,
        Some(false) => Duration::ZERO,
        None => challenge_wait(secret, plan.timeout),
    };
    if !wait.is_zero() {
        let peer = plan.addr.to_string();
        let opening = match &mut session {
            Session::Plain(s) => handshake_within(s, &peer, secret, wait, b"")?,
            Session::Rustls(socket, conn) => {
                let mut tls = BlockingTls { conn, socket };
                handshake_within(&mut tls, &peer, secret, wait, b"")?
            }
            Session::Own(stream) => handshake_within(&mut **stream, &peer, secret, wait, b"")?,
        };
        let _ = plan.challenges.set(opening.authenticated);
    }
    Ok(match session {
        Session::Plain(s) => BenchStream::Plain(nonblocking(s).map_err(BenchError::Poll)?),
        Session::Rustls(s, conn) => BenchStream::Tls(Box::new(TlsStream::client(
            nonblocking(s).map_err(BenchError::Poll)?,
            *conn,
        ))),
        Session::Own(stream) => BenchStream::Own(Box::new(
            stream.map_socket(nonblocking).map_err(BenchError::Poll)?,
        )),
    })
}

/// A connection while it opens (blocking).
enum Session {
    Plain(StdStream),
    /// TLS 1.2, on rustls's buffered connection.
    Rustls(StdStream, Box<ClientConnection>),
    /// TLS 1.3, on our record layer.
    Own(Box<RecordStream<StdStream>>),
}

/// Runs the TLS handshake on `s`: on our record layer, unless the server chose TLS 1.2 (then
/// again, on a new connection, with rustls's buffered one, as every later connection does).
fn start_tls(plan: &Plan, tls: &ClientTls, mut s: StdStream) -> Result<Session, BenchError> {
    let tls_err = |source| BenchError::Connect {
        addr: plan.addr.to_string(),
        source,
    };
    let timeouts = |s: &StdStream| {
        s.set_read_timeout(plan.timeout)?;
        s.set_write_timeout(plan.timeout)
    };
    timeouts(&s).map_err(tls_err)?;
    if plan.tls12.get() != Some(&true) {
        let conn = tls.unbuffered().map_err(tls_err)?;
        match client_records::handshake(conn, s).map_err(|e| tls_err(handshake_error(e)))? {
            Handshaken::Tls13(stream) => return Ok(Session::Own(stream)),
            Handshaken::Tls12 => {
                let _ = plan.tls12.set(true);
            }
        }
        s = connect(&plan.addr, plan.timeout).map_err(tls_err)?;
        timeouts(&s).map_err(tls_err)?;
    }
    let conn = tls.handshake(&mut s).map_err(tls_err)?;
    Ok(Session::Rustls(s, Box::new(conn)))
}

/// The socket made non-blocking, for the generator's poll.
fn nonblocking(s: StdStream) -> io::Result<MioStream> {
    Ok(match s {
        StdStream::Tcp(s) => {
            s.set_nonblocking(true)?;
            MioStream::Tcp(TcpStream::from_std(s))
        }
        StdStream::Unix(s) => {
            s.set_nonblocking(true)?;
            MioStream::Unix(UnixStream::from_std(s))
        }
    })
}

/// Connects (blocking, bounded by `timeout` for TCP).
fn connect(addr: &ListenAddr, timeout: Duration) -> io::Result<StdStream> {
    match addr {
        ListenAddr::Inet(a) => {
            let s = StdTcpStream::connect_timeout(a, timeout)?;
            s.set_nodelay(true)?;
            Ok(StdStream::Tcp(s))
        }
        ListenAddr::Unix(p) => Ok(StdStream::Unix(StdUnixStream::connect(p)?)),
        ListenAddr::Unixgram(_) => Err(io::Error::new(
            ErrorKind::InvalidInput,
            "a unixgram address is not a stream",
        )),
    }
}

/// A TLS session over a blocking socket, for the challenge that may follow the handshake.
pub(super) struct BlockingTls<'a> {
    pub(super) conn: &'a mut ClientConnection,
    pub(super) socket: &'a mut StdStream,
}

impl Read for BlockingTls<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        rustls::Stream::new(&mut *self.conn, &mut *self.socket).read(buf)
    }
}

impl Write for BlockingTls<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        rustls::Stream::new(&mut *self.conn, &mut *self.socket).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        rustls::Stream::new(&mut *self.conn, &mut *self.socket).flush()
    }
}

impl Timed for BlockingTls<'_> {
    fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.socket.set_read_timeout(timeout)
    }

    fn set_write_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.socket.set_write_timeout(timeout)
    }
}
