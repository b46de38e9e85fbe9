//! The client side of a TLS connection over a non-blocking socket, after a blocking
//! handshake: `bench`'s TLS 1.2 connections (its TLS 1.3 ones: `client_records`). rustls's
//! buffered connection, driven by readiness like the socket itself (rustls's `tlsserver-mio`
//! example is the shape). The server side, which must hold nothing while idle, is
//! `server_stream` (rustls's unbuffered API).
//!
//! `read` hands out plaintext that rustls has decrypted, and only when it holds none reads
//! the socket, decrypts and sends what rustls owes the peer. `write` encrypts into rustls's
//! buffer and writes it out; while encrypted bytes are still waiting for the socket it takes
//! no more plaintext (`WouldBlock`). A short read does not mean the socket is empty (rustls may
//! hold decrypted bytes, and no event will come for them): [`TlsStream::drained`] says.

use std::io::{self, Read, Write};

use rustls::ClientConnection;

/// A TLS connection over a non-blocking socket `S`.
#[derive(Debug)]
pub(crate) struct TlsStream<S> {
    /// The socket the records travel on.
    pub(crate) socket: S,
    /// rustls's state: the handshake, the keys, the records in and out.
    session: ClientConnection,
    /// See [`TlsStream::drained`].
    drained: bool,
}

impl<S: Read + Write> TlsStream<S> {
    /// The client side of a connection whose handshake has been run (blocking) on `socket`.
    pub(crate) fn client(socket: S, session: ClientConnection) -> TlsStream<S> {
        TlsStream {
            socket,
            session,
            drained: false,
        }
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
    pub(crate) fn send_what_fits(&mut self) -> io::Result<()> {
        match self.send_pending() {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
            _ => Ok(()),
        }
    }

    /// Plaintext for `buf`: what rustls holds, else what the socket brings. `Ok(0)` is the end
    /// of input: the peer's close_notify, or its TCP end without one (a truncation, which
    /// leaves any partial request unanswered as a plain FIN would). A record that fails to
    /// decrypt or a handshake that fails is an error, after its alert is sent.
    ///
    /// The ciphertext is read into `buf` itself, as much as it holds in one call (rustls's own
    /// reads take 4 KiB at a time), handed to rustls, and the plaintext moved to the front of
    /// `buf`: a record's plaintext is shorter than the record, so it fits where the record was
    /// (what does not, from a record begun in an earlier read, stays with rustls and comes
    /// first next time).
    pub(crate) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.drained = false;
        match self.session.reader().read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(self.truncated()),
            Err(e) => return Err(e),
        }
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let n = match self.socket.read(buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let short = n < buf.len();
            let (out, held, ended) = self.decrypt_in_place(buf, n)?;
            self.send_what_fits()?;
            // The peer's end (close_notify) is owed as a read of 0, which no event will ask
            // for: the socket does not count as drained until it has been read.
            self.drained = short && !held && !ended;
            if out > 0 || n == 0 || held || ended {
                return Ok(out);
            }
            // No plaintext yet: a handshake message, a partial record, a key update.
            if short {
                return Err(io::ErrorKind::WouldBlock.into());
            }
        }
    }

    /// The socket's end without close_notify: the end of input all the same.
    fn truncated(&self) -> usize {
        tracing::debug!("TLS peer closed without close_notify");
        0
    }

    /// Hands the `n` bytes of ciphertext at the front of `buf` to rustls and moves their
    /// plaintext to the front of `buf`; returns its length, whether plaintext may still be
    /// held by rustls (it did not all fit), and whether the peer's input has ended
    /// (close_notify, or the socket's end). `n == 0` is the socket's end.
    fn decrypt_in_place(&mut self, buf: &mut [u8], n: usize) -> io::Result<(usize, bool, bool)> {
        let (mut fed, mut out) = (0, 0);
        let (mut held, mut ended) = (false, false);
        loop {
            let mut rest = buf.get(fed..n).unwrap_or_default();
            if n > 0 && rest.is_empty() {
                break;
            }
            let took = self.session.read_tls(&mut rest)?;
            fed = fed.saturating_add(took);
            if let Err(e) = self.session.process_new_packets() {
                // The alert that says why goes out if the socket takes it.
                let _ = self.send_pending();
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            held = false;
            loop {
                let Some(room) = buf.get_mut(out..fed).filter(|r| !r.is_empty()) else {
                    held = true;
                    break;
                };
                match self.session.reader().read(room) {
                    Ok(0) => {
                        ended = true;
                        break;
                    }
                    Ok(m) => out = out.saturating_add(m),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        ended = true;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            if n == 0 || took == 0 {
                break;
            }
        }
        Ok((out, held, ended))
    }

    /// The last read emptied the socket and left no plaintext inside rustls: a later byte
    /// raises a new readiness edge, so the read that would only say `WouldBlock` can be
    /// skipped.
    pub(crate) fn drained(&self) -> bool {
        self.drained
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
}
