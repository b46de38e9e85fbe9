//! The transport: what a connection's bytes pass through between its socket and its service.
//! It owns reading, writing and shutting down; the connection path (`stream.rs`) and the loop
//! see only it, and register it with the poll as the socket it stands for.
//!
//! Plain: the bytes go to and from the socket as they are, and file bodies may skip the
//! process altogether (sendfile). TLS (`crate::tls::server_stream`): it decrypts in `read`, encrypts in `write`,
//! sends its close alert in `shutdown`, and answers `None` to [`Transport::send_file`], so the
//! service copies file bodies through the connection's output instead. The connection path
//! asks two things of every transport that only TLS answers differently: whether a short read
//! emptied the socket ([`Transport::short_read_drains`]) and whether output waits inside it
//! ([`Transport::wants_write`]). No service changes for it.
//!
//! The TLS variant is boxed: a plain connection pays one discriminant for it.
//! Unit tests and the `conn_path` fuzz target (feature `fuzzing`) add a scripted socket
//! (`script`), so the connection path can be driven without a network; other builds never see
//! it.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};

use mio::event::Source;
use mio::{Interest, Registry, Token};

use super::conn::StreamSocket;

/// The reactor's TLS connection: rustls over an accepted socket (`tls/server_stream.rs`).
pub(crate) type TlsSocket = crate::tls::server_stream::ServerTls<StreamSocket>;

/// What a connection's bytes pass through.
#[derive(Debug)]
pub(crate) enum Transport {
    /// The socket itself.
    Plain(StreamSocket),
    /// TLS over the socket.
    Tls(Box<TlsSocket>),
    /// A socket played by a unit test or a fuzz target (`script`).
    #[cfg(any(test, feature = "fuzzing"))]
    Scripted(Box<script::Script>),
}

impl Transport {
    /// sendfile(2) from `file` at `offset` to the connection: at most `count` bytes. `None`
    /// when this transport cannot take bytes that bypass it (it changes them): the caller then
    /// copies them through its output.
    #[inline]
    pub(crate) fn send_file(
        &self,
        file: RawFd,
        offset: u64,
        count: usize,
    ) -> Option<io::Result<usize>> {
        match self {
            Transport::Plain(socket) => Some(send_file(socket.as_raw_fd(), file, offset, count)),
            Transport::Tls(_) => None,
            #[cfg(any(test, feature = "fuzzing"))]
            Transport::Scripted(_) => None,
        }
    }

    /// Brings what the transport keeps behind a pointer into the cache (`reactor/prefetch.rs`):
    /// a TLS connection's state.
    #[inline]
    pub(crate) fn prefetch(&self) {
        if let Transport::Tls(t) = self {
            super::prefetch::object(&**t);
            if let Some(layer) = t.record_layer() {
                super::prefetch::object(layer);
            }
        }
    }

    /// Bytes waiting in the socket's receive queue now (FIONREAD, the same as SIOCINQ): what
    /// the peer sent that nobody has read. Shutdown reads this much more before it stops.
    pub(crate) fn queued_input(&self) -> io::Result<usize> {
        match self {
            Transport::Plain(socket) => queued_input(socket.as_raw_fd()),
            // Ciphertext: at least as many bytes as the plaintext they carry.
            Transport::Tls(t) => queued_input(t.socket.as_raw_fd()),
            #[cfg(any(test, feature = "fuzzing"))]
            Transport::Scripted(s) => Ok(s.inbound.len()),
        }
    }

    /// A read shorter than asked means the socket's queue is empty, so a later byte raises a
    /// new edge. For TLS, only when its last read of the socket was short and rustls holds no
    /// decrypted bytes (no event would announce them).
    #[inline]
    pub(crate) fn short_read_drains(&self) -> bool {
        match self {
            Transport::Tls(t) => t.drained(),
            _ => true,
        }
    }

    /// Output the transport took but the socket has not (encrypted records): the connection
    /// is not done, and waits for writability, until it has gone.
    #[inline]
    pub(crate) fn wants_write(&self) -> bool {
        match self {
            Transport::Tls(t) => t.wants_write(),
            _ => false,
        }
    }

    /// Writes what waits inside the transport; `WouldBlock` is not an error here.
    pub(crate) fn send_pending(&mut self) -> io::Result<usize> {
        match self {
            Transport::Tls(t) => match t.send_pending() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                r => r,
            },
            _ => Ok(0),
        }
    }

    /// The TLS handshake is still under way.
    pub(crate) fn is_handshaking(&self) -> bool {
        match self {
            Transport::Tls(t) => t.is_handshaking(),
            _ => false,
        }
    }

    /// Shuts down the sending side (a FIN after what was written): the peer reads to a clean
    /// end, while this side can still read what it sends meanwhile. TLS says close_notify
    /// first, so the end is not taken for a truncation.
    pub(crate) fn shutdown_write(&mut self) -> io::Result<()> {
        let fd = match self {
            Transport::Plain(socket) => socket.as_raw_fd(),
            Transport::Tls(t) => {
                t.close_notify();
                t.socket.as_raw_fd()
            }
            #[cfg(any(test, feature = "fuzzing"))]
            Transport::Scripted(s) => {
                s.write_shut = true;
                return Ok(());
            }
        };
        // SAFETY: shutdown(2) on a descriptor the socket owns, with a valid `how`.
        match unsafe { libc::shutdown(fd, libc::SHUT_WR) } {
            0 => Ok(()),
            _ => Err(io::Error::last_os_error()),
        }
    }

    /// Ends the connection before its descriptor is closed. The plain transport reads and drops
    /// what the peer sent but nobody will read, so that closing sends a FIN rather than a
    /// reset that could destroy the replies still in flight to it; bounded, so a peer that
    /// keeps sending gets the reset.
    pub(crate) fn shutdown(&mut self, scratch: &mut [u8]) {
        if let Transport::Tls(t) = self {
            // Say the end is orderly, then drop unread records undecrypted.
            t.close_notify();
            for _ in 0..4 {
                match t.socket.read(scratch) {
                    Ok(n) if n > 0 => {}
                    _ => break,
                }
            }
            return;
        }
        for _ in 0..4 {
            match self.read(scratch) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        #[cfg(any(test, feature = "fuzzing"))]
        if let Transport::Scripted(s) = self {
            s.shut = true;
        }
    }
}

impl Read for Transport {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(socket) => socket.read(buf),
            Transport::Tls(t) => {
                // With many connections taking turns a connection's keys have left the cache
                // by its next record, and there is seldom a next event for the walk to
                // prefetch them with: they are fetched while the kernel copies the record in.
                if let Some(layer) = t.record_layer() {
                    super::prefetch::object(layer);
                }
                t.read(buf)
            }
            #[cfg(any(test, feature = "fuzzing"))]
            Transport::Scripted(s) => s.read(buf),
        }
    }
}

impl Write for Transport {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(socket) => socket.write(buf),
            Transport::Tls(t) => t.write(buf),
            #[cfg(any(test, feature = "fuzzing"))]
            Transport::Scripted(s) => s.write(buf),
        }
    }

    /// What waits inside the transport is written by [`Transport::send_pending`].
    #[inline]
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Registered in the poll as the socket underneath (a scripted one is not in any poll).
impl Source for Transport {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Transport::Plain(socket) => socket.register(r, t, i),
            Transport::Tls(tls) => tls.socket.register(r, t, i),
            #[cfg(any(test, feature = "fuzzing"))]
            Transport::Scripted(_) => Ok(()),
        }
    }

    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Transport::Plain(socket) => socket.reregister(r, t, i),
            Transport::Tls(tls) => tls.socket.reregister(r, t, i),
            #[cfg(any(test, feature = "fuzzing"))]
            Transport::Scripted(_) => Ok(()),
        }
    }

    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            Transport::Plain(socket) => socket.deregister(r),
            Transport::Tls(tls) => tls.socket.deregister(r),
            #[cfg(any(test, feature = "fuzzing"))]
            Transport::Scripted(_) => Ok(()),
        }
    }
}

/// FIONREAD on `socket`: the bytes in its receive queue.
fn queued_input(socket: RawFd) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which points to a local.
    let r = unsafe { libc::ioctl(socket, libc::FIONREAD, &mut n) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    usize::try_from(n).map_err(io::Error::other)
}

/// sendfile(2) from `file` at `offset` to `socket`: at most `count` bytes.
fn send_file(socket: RawFd, file: RawFd, offset: u64, count: usize) -> io::Result<usize> {
    let mut off = libc::off_t::try_from(offset).map_err(io::Error::other)?;
    // SAFETY: both descriptors are open for the duration of the call (the socket is borrowed
    // from its transport, the file is owned by the connection's service), and `off` is a local
    // the call may write.
    let n = unsafe { libc::sendfile(socket, file, &mut off, count) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod script {
    //! A socket played by a test: the peer's bytes arrive when the test says, a read returns
    //! at most what the next of `read_caps` allows, a write takes what room the peer left (at
    //! most `write_cap`, and the next of `write_caps`, a call), and any call can be made to
    //! fail with `Interrupted` first. `WouldBlock` and short reads follow from what has
    //! arrived. Reading or writing after shutdown panics: a closed connection must not.

    use std::collections::VecDeque;
    use std::io;

    /// The state of a scripted socket, as its peer (the test) sees it.
    #[derive(Debug, Default)]
    pub(crate) struct Script {
        /// Bytes that arrived from the peer and were not read yet.
        pub(crate) inbound: VecDeque<u8>,
        /// The peer shut down its sending side: once `inbound` is empty, reads return 0.
        pub(crate) fin: bool,
        /// Bytes the peer will take before a write says `WouldBlock`.
        pub(crate) room: usize,
        /// At most this many bytes per write call.
        pub(crate) write_cap: usize,
        /// Room the peer makes right after a write said `WouldBlock`, within the same drive
        /// (it reads while the server goes on): the writable edge is then owed, and lost if
        /// the connection stops asking for writability before the next poll.
        pub(crate) room_after_block: usize,
        /// For each coming read, at most this many bytes (0 counts as 1); then no cap.
        pub(crate) read_caps: VecDeque<usize>,
        /// For each coming write, at most this many bytes (0 counts as 1); then `write_cap`.
        pub(crate) write_caps: VecDeque<usize>,
        /// For each coming call (read or write), whether it fails with `Interrupted` first.
        pub(crate) interrupts: VecDeque<bool>,
        /// Everything written, in order: what the client received.
        pub(crate) sent: Vec<u8>,
        /// A read said `WouldBlock` since the test last cleared this.
        pub(crate) read_blocked: bool,
        /// A write said `WouldBlock` since the test last cleared this.
        pub(crate) write_blocked: bool,
        /// The transport was shut down (the connection closed).
        pub(crate) shut: bool,
        /// The sending side was shut down (a half-close): no write may follow.
        pub(crate) write_shut: bool,
    }

    impl Script {
        /// A socket whose peer takes everything, `write_cap` bytes a call.
        pub(crate) fn new(write_cap: usize) -> Script {
            Script {
                room: usize::MAX,
                write_cap,
                ..Script::default()
            }
        }

        fn interrupted(&mut self) -> bool {
            self.interrupts.pop_front().unwrap_or(false)
        }

        pub(super) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            assert!(!self.shut, "read after shutdown");
            if self.interrupted() {
                return Err(io::ErrorKind::Interrupted.into());
            }
            if self.inbound.is_empty() {
                if self.fin {
                    return Ok(0);
                }
                self.read_blocked = true;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let cap = self.read_caps.pop_front().map_or(usize::MAX, |c| c.max(1));
            let n = buf.len().min(self.inbound.len()).min(cap);
            for (b, byte) in buf.iter_mut().zip(self.inbound.drain(..n)) {
                *b = byte;
            }
            Ok(n)
        }

        pub(super) fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            assert!(!self.shut && !self.write_shut, "write after shutdown");
            if self.interrupted() {
                return Err(io::ErrorKind::Interrupted.into());
            }
            if self.room == 0 {
                self.write_blocked = true;
                self.room = std::mem::take(&mut self.room_after_block);
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let cap = self.write_caps.pop_front().unwrap_or(self.write_cap);
            let n = buf.len().min(self.room).min(cap.max(1));
            self.sent.extend_from_slice(&buf[..n]);
            self.room -= n;
            Ok(n)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::script::Script;
    use super::*;

    #[test]
    fn a_plain_transport_moves_bytes_and_sends_files() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut t = Transport::Plain(StreamSocket::Unix(mio::net::UnixStream::from_std(a)));
        let mut peer = b;
        assert_eq!(t.write(b"hello").unwrap(), 5);
        let mut got = [0u8; 5];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        let path = std::env::temp_dir().join(format!("socklab-sendfile-{}", std::process::id()));
        std::fs::write(&path, b"0123456789").unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let n = t.send_file(file.as_raw_fd(), 3, 4).unwrap().unwrap();
        assert_eq!(n, 4);
        let mut got = [0u8; 4];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"3456");
        std::fs::remove_file(path).unwrap();
        peer.write_all(b"unread").unwrap();
        t.shutdown(&mut [0u8; 64]);
        let mut buf = [0u8; 1];
        assert!(matches!(t.read(&mut buf), Err(e) if e.kind() == io::ErrorKind::WouldBlock));
    }

    #[test]
    fn a_scripted_transport_refuses_sendfile_and_drops_unread_input_at_shutdown() {
        let mut s = Script::new(2);
        s.inbound.extend(b"left over");
        s.interrupts.push_back(true);
        let mut t = Transport::Scripted(Box::new(s));
        assert!(t.send_file(0, 0, 1).is_none());
        assert!(matches!(t.write(b"abc"), Err(e) if e.kind() == io::ErrorKind::Interrupted));
        assert_eq!(t.write(b"abc").unwrap(), 2, "at most write_cap a call");
        t.shutdown(&mut [0u8; 4]);
        let Transport::Scripted(s) = t else {
            unreachable!()
        };
        assert!(s.shut && s.inbound.is_empty() && s.read_blocked);
        assert_eq!(s.sent, b"ab");
    }
}
