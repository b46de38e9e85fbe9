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
    /// See [`TlsStream::drained`].
    drained: bool,
}

impl<S: Read + Write> TlsStream<S> {
    /// The server side of an accepted connection that has yet to send its ClientHello.
    pub(crate) fn server(socket: S, config: Arc<ServerConfig>) -> io::Result<TlsStream<S>> {
        let session = ServerConnection::new(config).map_err(io::Error::other)?;
        Ok(TlsStream {
            socket,
            session: Connection::Server(session),
            drained: false,
        })
    }

    /// The client side of a connection whose handshake has been run (blocking) on `socket`.
    pub(crate) fn client(socket: S, session: ClientConnection) -> TlsStream<S> {
        TlsStream {
            socket,
            session: Connection::Client(session),
            drained: false,
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

    /// The orderly end: close_notify, written if the socket takes it.
    pub(crate) fn close_notify(&mut self) {
        self.session.send_close_notify();
        let _ = self.send_pending();
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::sync::Arc;
    use std::thread;
    use std::time::{Duration, Instant};

    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig};

    use super::TlsStream;

    /// A server and a client configuration that trust each other (a self-signed certificate
    /// for localhost).
    fn configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = CertificateDer::from(cert.der().to_vec());
        let provider = crate::tls::provider();
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![der.clone()],
                PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(der).unwrap();
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// Echoes through a server-side `TlsStream` read into buffers of `cap` bytes, while a
    /// blocking client sends `total` bytes in records of every size and reads them back.
    fn echo_through(cap: usize, total: usize) {
        let (server_cfg, client_cfg) = configs();
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut server = TlsStream::server(a, server_cfg).unwrap();
        let data: Vec<u8> = (0..total).map(|i| (i * 7 + i / 251) as u8).collect();
        let expected = data.clone();
        let client = thread::spawn(move || {
            let name = ServerName::try_from("localhost").unwrap();
            let mut conn = ClientConnection::new(client_cfg, name).unwrap();
            let mut sock = b;
            sock.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut tls = rustls::Stream::new(&mut conn, &mut sock);
            let mut got = Vec::new();
            let mut sent = 0;
            let mut size = 1;
            let mut buf = vec![0u8; 70_000];
            while got.len() < data.len() {
                if sent < data.len() {
                    let end = (sent + size).min(data.len());
                    tls.write_all(&data[sent..end]).unwrap();
                    sent = end;
                    size = size * 3 % 40_000 + 1;
                }
                if sent == data.len() || got.len() + 200_000 < sent {
                    let n = tls.read(&mut buf).unwrap();
                    assert!(n > 0, "the server closed");
                    got.extend_from_slice(&buf[..n]);
                }
            }
            got
        });
        // The server side: a poll-free loop that reads what comes and echoes it.
        let mut buf = vec![0u8; cap];
        let mut pending: Vec<u8> = Vec::new();
        let mut echoed = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while echoed < total {
            assert!(Instant::now() < deadline, "stuck at {echoed} of {total}");
            match server.read(&mut buf) {
                Ok(0) => panic!("end of input at {echoed}"),
                Ok(n) => pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // Wait (bounded) for the socket to have bytes, as the reactor's poll would.
                    let mut fd = libc::pollfd {
                        fd: std::os::fd::AsRawFd::as_raw_fd(&server.socket),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd, for the length given.
                    unsafe { libc::poll(&mut fd, 1, 10) };
                }
                Err(e) => panic!("{e}"),
            }
            while !pending.is_empty() {
                match server.write(&pending) {
                    Ok(n) => {
                        echoed += n;
                        pending.drain(..n);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("{e}"),
                }
            }
            let _ = server.send_pending();
        }
        while server.wants_write() {
            let _ = server.send_pending();
        }
        assert!(client.join().unwrap() == expected, "the echo differs");
    }

    /// Data and close_notify in one segment: the data comes out, the socket is not taken for
    /// drained (no event will come for the end), and the next read is the end.
    #[test]
    fn a_close_notify_behind_the_data_is_not_lost() {
        let (server_cfg, client_cfg) = configs();
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut server = TlsStream::server(a, server_cfg).unwrap();
        let client = thread::spawn(move || {
            let name = ServerName::try_from("localhost").unwrap();
            let mut conn = ClientConnection::new(client_cfg, name).unwrap();
            let mut sock = b;
            while conn.is_handshaking() {
                conn.complete_io(&mut sock).unwrap();
            }
            conn.writer().write_all(b"last words").unwrap();
            conn.send_close_notify();
            let mut both = Vec::new();
            while conn.wants_write() {
                conn.write_tls(&mut both).unwrap();
            }
            sock.write_all(&both).unwrap();
            sock
        });
        let mut buf = vec![0u8; 65536];
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "never saw the end; got {got:?}");
            match server.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got == b"last words" {
                        assert!(!server.drained(), "the end is still owed");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let _ = server.send_pending();
                    thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, b"last words");
        drop(client.join().unwrap());
    }

    #[test]
    fn plaintext_comes_out_whole_whatever_the_read_buffer() {
        for cap in [1, 7, 100, 5_000, 16_384, 17_000, 262_144] {
            echo_through(cap, 600_000);
        }
    }
}
