//! A non-blocking TLS stream: rustls's connection over a non-blocking socket, driven by
//! readiness like the socket itself (rustls's `tlsserver-mio` example is the shape). The
//! reactor's TLS transport is one over an accepted connection (server side); `bench` drives
//! its TLS connections with it too (client side, after a blocking handshake).
//!
//! `read` hands out plaintext that rustls has decrypted, and only when it holds none reads
//! the socket, decrypts and sends what the handshake owes the peer. `write` encrypts into
//! rustls's buffer and writes it out; while encrypted bytes are still waiting for the socket it
//! takes no more plaintext (`WouldBlock`), so the connection's own output buffer, which the
//! pause and `--max-pending` limits count, stays where replies wait. Two things differ from a
//! plain socket and the connection path asks for them: a short read does not mean the
//! socket is empty (rustls may hold decrypted bytes, and no event will come for them), and
//! output can wait inside the transport ([`TlsSocket::wants_write`]).

use std::io::{self, Read, Write};
use std::sync::Arc;

use rustls::{ClientConnection, Connection, ServerConfig, ServerConnection};

/// A TLS connection over a non-blocking socket `S`.
#[derive(Debug)]
pub(crate) struct TlsStream<S> {
    /// The socket the records travel on.
    pub(crate) socket: S,
    /// rustls's state: the handshake, the keys, the records in and out.
    session: Connection,
}

impl<S: Read + Write> TlsStream<S> {
    /// The server side of an accepted connection that has yet to send its ClientHello.
    pub(crate) fn server(socket: S, config: Arc<ServerConfig>) -> io::Result<TlsStream<S>> {
        let session = ServerConnection::new(config).map_err(io::Error::other)?;
        Ok(TlsStream {
            socket,
            session: Connection::Server(session),
        })
    }

    /// The client side of a connection whose handshake has been run (blocking) on `socket`.
    pub(crate) fn client(socket: S, session: ClientConnection) -> TlsStream<S> {
        TlsStream {
            socket,
            session: Connection::Client(session),
        }
    }

    /// The handshake has not finished.
    pub(crate) fn is_handshaking(&self) -> bool {
        self.session.is_handshaking()
    }

    /// Encrypted bytes wait for the socket.
    pub(crate) fn wants_write(&self) -> bool {
        self.session.wants_write()
    }

    /// Writes encrypted bytes until none wait (`Ok`) or the socket would block (the error).
    pub(crate) fn send_pending(&mut self) -> io::Result<usize> {
        let mut sent = 0;
        while self.session.wants_write() {
            match self.session.write_tls(&mut self.socket) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(sent)
    }

    /// Encrypted bytes that would block are left for the next writable event.
    fn send_what_fits(&mut self) -> io::Result<()> {
        match self.send_pending() {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
            _ => Ok(()),
        }
    }

    /// Plaintext for `buf`: what rustls holds, else what the socket brings. `Ok(0)` is the end
    /// of input: the peer's close_notify, or its TCP end without one (a truncation, which
    /// leaves any partial request unanswered as a plain FIN would). A record that fails to
    /// decrypt or a handshake that fails is an error, after its alert is sent.
    pub(crate) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.session.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    tracing::debug!("TLS peer closed without close_notify");
                    return Ok(0);
                }
                Err(e) => return Err(e),
            }
            match self.session.read_tls(&mut self.socket) {
                Ok(0) => {}
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if let Err(e) = self.session.process_new_packets() {
                // The alert that says why goes out if the socket takes it.
                let _ = self.send_pending();
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            // Handshake flights, and the answers to key updates, go out now.
            self.send_what_fits()?;
        }
    }

    /// Encrypts `buf` and writes what the socket takes; refuses (`WouldBlock`) while earlier
    /// records still wait for it, so unsent output stays in the connection's buffer.
    pub(crate) fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.send_pending()?;
        let n = self.session.writer().write(buf)?;
        self.send_what_fits()?;
        if n == 0 && !buf.is_empty() {
            // rustls's buffer is full (only before the handshake ends): wait for the socket.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    /// The orderly end: close_notify, written if the socket takes it.
    pub(crate) fn close_notify(&mut self) {
        self.session.send_close_notify();
        let _ = self.send_pending();
    }
}
