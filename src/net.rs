//! A TCP or Unix-domain stream, whichever an address named: one generic enum, with `Read`,
//! `Write`, `AsRawFd` and (for mio sockets) mio's `Source` written once, and an alias for each
//! flavour: [`StdStream`] for the blocking clients, [`MioStream`] for the reactor and the bench.
//! And the one loop that writes to a non-blocking socket until it would block.
//! A leaf: it knows neither the server nor the clients.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use mio::event::Source;
use mio::{Interest, Registry, Token};

/// A connected stream: TCP, or a Unix-domain stream socket.
#[derive(Debug)]
pub(crate) enum TcpOrUnix<T, U> {
    /// A TCP stream.
    Tcp(T),
    /// A Unix-domain stream socket.
    Unix(U),
}

/// A blocking stream of the standard library (the client commands).
pub(crate) type StdStream = TcpOrUnix<std::net::TcpStream, std::os::unix::net::UnixStream>;

/// A non-blocking stream in a mio poll (the reactor's connections, the bench's).
pub(crate) type MioStream = TcpOrUnix<mio::net::TcpStream, mio::net::UnixStream>;

impl StdStream {
    /// A second handle on the same socket (for a reader and a writer thread).
    pub(crate) fn try_clone(&self) -> io::Result<StdStream> {
        match self {
            TcpOrUnix::Tcp(s) => s.try_clone().map(TcpOrUnix::Tcp),
            TcpOrUnix::Unix(s) => s.try_clone().map(TcpOrUnix::Unix),
        }
    }

    /// Sets the read timeout (`SO_RCVTIMEO`; zero is raised to a millisecond).
    pub(crate) fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        let t = Some(timeout.max(Duration::from_millis(1)));
        match self {
            TcpOrUnix::Tcp(s) => s.set_read_timeout(t),
            TcpOrUnix::Unix(s) => s.set_read_timeout(t),
        }
    }

    /// Sets the write timeout (`SO_SNDTIMEO`; zero is raised to a millisecond).
    pub(crate) fn set_write_timeout(&self, timeout: Duration) -> io::Result<()> {
        let t = Some(timeout.max(Duration::from_millis(1)));
        match self {
            TcpOrUnix::Tcp(s) => s.set_write_timeout(t),
            TcpOrUnix::Unix(s) => s.set_write_timeout(t),
        }
    }

    /// Shuts down one or both directions.
    pub(crate) fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            TcpOrUnix::Tcp(s) => s.shutdown(how),
            TcpOrUnix::Unix(s) => s.shutdown(how),
        }
    }
}

impl<T: AsRawFd, U: AsRawFd> AsRawFd for TcpOrUnix<T, U> {
    #[inline]
    fn as_raw_fd(&self) -> RawFd {
        match self {
            TcpOrUnix::Tcp(s) => s.as_raw_fd(),
            TcpOrUnix::Unix(s) => s.as_raw_fd(),
        }
    }
}

impl<T: Read, U: Read> Read for TcpOrUnix<T, U> {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            TcpOrUnix::Tcp(s) => s.read(buf),
            TcpOrUnix::Unix(s) => s.read(buf),
        }
    }
}

impl<T: Write, U: Write> Write for TcpOrUnix<T, U> {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            TcpOrUnix::Tcp(s) => s.write(buf),
            TcpOrUnix::Unix(s) => s.write(buf),
        }
    }

    /// Sockets have no user-space buffer: nothing to flush.
    #[inline]
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<T: Source, U: Source> Source for TcpOrUnix<T, U> {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            TcpOrUnix::Tcp(s) => s.register(r, t, i),
            TcpOrUnix::Unix(s) => s.register(r, t, i),
        }
    }

    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            TcpOrUnix::Tcp(s) => s.reregister(r, t, i),
            TcpOrUnix::Unix(s) => s.reregister(r, t, i),
        }
    }

    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            TcpOrUnix::Tcp(s) => s.deregister(r),
            TcpOrUnix::Unix(s) => s.deregister(r),
        }
    }
}

/// Writes `bytes` until all are taken or the writer would block; returns how many it took. A
/// write of 0 is an error (`WriteZero`), an interrupted one is tried again. What the reactor
/// writes straight to a socket, a connection's pending output and a TLS connection's unsent
/// records all go out through this. Inlined into each: out of line it cost a files ping 20–28
/// instructions more at 1,000 x 1 (callgrind), on the path of every reply.
#[inline(always)]
pub(crate) fn write_until_blocked(w: &mut impl Write, bytes: &[u8]) -> io::Result<usize> {
    let mut taken = 0usize;
    while let Some(rest) = bytes.get(taken..).filter(|r| !r.is_empty()) {
        match w.write(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => taken = taken.saturating_add(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(taken)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_flavours_read_write_and_name_their_descriptor() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (fa, fb) = (a.as_raw_fd(), b.as_raw_fd());
        let mut a: StdStream = TcpOrUnix::Unix(a);
        b.set_nonblocking(true).unwrap();
        let mut b: MioStream = TcpOrUnix::Unix(mio::net::UnixStream::from_std(b));
        assert_eq!((a.as_raw_fd(), b.as_raw_fd()), (fa, fb));
        a.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        let poll = mio::Poll::new().unwrap();
        poll.registry()
            .register(&mut b, Token(1), Interest::READABLE)
            .unwrap();
        poll.registry().deregister(&mut b).unwrap();
    }
}
