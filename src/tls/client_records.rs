//! The client side of a TLS 1.3 connection on our own record layer (`record`), for `bench`:
//! rustls's unbuffered API runs the handshake over a blocking socket, then hands the traffic
//! secrets over and the records are opened and sealed here, in place, as the server does
//! (rustls's buffered connection copies every record's plaintext twice and allocates per
//! record: a load generator doing that offers a TLS server less load than a plaintext one,
//! and a server offered less load spends more per request, BENCHMARKS.md, TLS). A server that
//! negotiates TLS 1.2 gets rustls's buffered connection instead (`stream`).
//!
//! [`RecordStream::read`] hands out the plaintext of the records it holds and reads the socket
//! only when it holds none; [`RecordStream::drained`] says when a short read emptied the
//! socket, since no readiness event will come for records already read. [`RecordStream::write`]
//! seals into the connection's own buffer and takes no more while sealed records wait for the
//! socket (`WouldBlock`).

use std::io::{self, ErrorKind, Read, Write};
use std::ops::Range;
use std::time::Duration;

use rustls::ProtocolVersion;
use rustls::client::UnbufferedClientConnection;
use rustls::unbuffered::{ConnectionState, UnbufferedStatus};

use super::encode::{append_with, encode_too_small};
use super::record::{self, Opened, RecordError, RecordLayer};
use crate::client::Timed;
use crate::net::{StdStream, write_until_blocked};

/// The longest record TLS allows, header included.
const MAX_RECORD: usize = record::HEADER_LEN + 16_384 + 256;
/// The ciphertext a connection holds at most: two whole records.
const INBOX: usize = 2 * MAX_RECORD;
/// The most plaintext one `write` seals (four records).
const MOST_PER_WRITE: usize = 4 * record::MAX_RECORD_DATA;
/// The most a handshake may bring before it ends (a certificate chain, the server's first
/// application data).
const HANDSHAKE_INBOX: usize = 8 * MAX_RECORD;

/// How a handshake ended.
pub(crate) enum Handshaken<S> {
    /// TLS 1.3: the records are ours from here on.
    Tls13(Box<RecordStream<S>>),
    /// The server chose TLS 1.2, which this record layer does not speak.
    Tls12,
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, format!("TLS: {e}"))
}

fn closed_in_handshake() -> io::Error {
    io::Error::new(
        ErrorKind::UnexpectedEof,
        "the server closed the connection during the TLS handshake",
    )
}

/// Runs `conn`'s handshake over the blocking `socket` (its timeouts bound it); `conn`'s
/// configuration must allow secret extraction. A rustls error comes back inside the
/// `io::Error`, for `client::handshake_error` to put in words.
pub(crate) fn handshake<S: Read + Write>(
    mut conn: UnbufferedClientConnection,
    mut socket: S,
) -> io::Result<Handshaken<S>> {
    let mut inbox = Vec::new();
    let mut outgoing = Vec::new();
    let mut plaintext = Vec::new();
    loop {
        let UnbufferedStatus { mut discard, state } = conn.process_tls_records(&mut inbox);
        let (mut blocked, mut done) = (false, false);
        match state.map_err(|e| io::Error::new(ErrorKind::InvalidData, e))? {
            ConnectionState::EncodeTlsData(mut message) => append_with(
                &mut outgoing,
                4096,
                |out| message.encode(out),
                encode_too_small,
            )
            .map_err(invalid)?,
            ConnectionState::TransmitTlsData(transmit) => {
                socket.write_all(&outgoing)?;
                outgoing.clear();
                transmit.done();
            }
            ConnectionState::BlockedHandshake => blocked = true,
            ConnectionState::ReadTraffic(mut records) => {
                while let Some(r) = records.next_record() {
                    let r = r.map_err(|e| io::Error::new(ErrorKind::InvalidData, e))?;
                    discard = discard.saturating_add(r.discard);
                    plaintext.extend_from_slice(r.payload);
                }
            }
            ConnectionState::WriteTraffic(_) => done = true,
            ConnectionState::PeerClosed | ConnectionState::Closed => {
                return Err(closed_in_handshake());
            }
            _ => return Err(invalid("a state the client handshake does not expect")),
        }
        inbox.drain(..discard.min(inbox.len()));
        if plaintext.len().saturating_add(inbox.len()) > HANDSHAKE_INBOX {
            return Err(invalid("more than 128 KiB before the handshake ended"));
        }
        if done {
            break;
        }
        if blocked && read_more(&mut socket, &mut inbox)? == 0 {
            return Err(closed_in_handshake());
        }
    }
    if conn.protocol_version() != Some(ProtocolVersion::TLSv1_3) {
        return Ok(Handshaken::Tls12);
    }
    let layer = conn
        .dangerous_into_kernel_connection()
        .map_err(invalid)
        .and_then(|(secrets, kernel)| {
            RecordLayer::new(kernel, secrets.rx, secrets.tx).map_err(invalid)
        })?;
    Ok(Handshaken::Tls13(Box::new(RecordStream::new(
        socket, layer, &plaintext, &inbox,
    ))))
}

/// Appends what one read of `socket` brings to `inbox`; its count.
fn read_more(socket: &mut impl Read, inbox: &mut Vec<u8>) -> io::Result<usize> {
    let filled = inbox.len();
    inbox.resize(filled.saturating_add(MAX_RECORD), 0);
    let read = loop {
        match socket.read(inbox.get_mut(filled..).unwrap_or_default()) {
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            other => break other,
        }
    };
    inbox.truncate(filled.saturating_add(*read.as_ref().unwrap_or(&0)));
    read
}

/// A TLS 1.3 client connection on our record layer over the socket `S`.
pub(crate) struct RecordStream<S> {
    /// The socket the records travel on.
    pub(crate) socket: S,
    layer: Box<RecordLayer>,
    /// Records read: opened ones (their plaintext at `plain`) before `next`, unopened ones
    /// from `next` to `filled`.
    inbox: Box<[u8]>,
    filled: usize,
    next: usize,
    /// Plaintext not yet handed out.
    plain: Range<usize>,
    /// Sealed records, sent up to `sent`.
    unsent: Vec<u8>,
    sent: usize,
    /// See [`RecordStream::drained`].
    drained: bool,
    /// The server's close_notify came.
    ended: bool,
    /// The socket's end came.
    eof: bool,
    /// A blocking socket: a read that brings no plaintext reads again.
    blocking: bool,
}

impl<S> std::fmt::Debug for RecordStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordStream")
            .field("layer", &self.layer)
            .field("held", &self.filled.saturating_sub(self.next))
            .field("unsent", &self.unsent.len().saturating_sub(self.sent))
            .finish_non_exhaustive()
    }
}

impl<S> RecordStream<S> {
    /// The connection over a blocking `socket` after its handshake: `plaintext` came with the
    /// handshake, `ciphertext` (records after it) was read with it.
    fn new(socket: S, layer: RecordLayer, plaintext: &[u8], ciphertext: &[u8]) -> Self {
        let mut inbox = vec![0; INBOX.max(plaintext.len() + ciphertext.len())].into_boxed_slice();
        let held = plaintext.len() + ciphertext.len();
        if let Some(front) = inbox.get_mut(..held) {
            let (p, c) = front.split_at_mut(plaintext.len());
            p.copy_from_slice(plaintext);
            c.copy_from_slice(ciphertext);
        }
        RecordStream {
            socket,
            layer: Box::new(layer),
            inbox,
            filled: held,
            next: plaintext.len(),
            plain: 0..plaintext.len(),
            unsent: Vec::new(),
            sent: 0,
            drained: false,
            ended: false,
            eof: false,
            blocking: true,
        }
    }

    /// The same connection over another socket (the blocking one, made non-blocking).
    pub(crate) fn map_socket<T>(
        self,
        to: impl FnOnce(S) -> io::Result<T>,
    ) -> io::Result<RecordStream<T>> {
        Ok(RecordStream {
            socket: to(self.socket)?,
            layer: self.layer,
            inbox: self.inbox,
            filled: self.filled,
            next: self.next,
            plain: self.plain,
            unsent: self.unsent,
            sent: self.sent,
            drained: self.drained,
            ended: self.ended,
            eof: self.eof,
            blocking: false,
        })
    }

    /// The last read emptied the socket and left no record or plaintext here: a later byte
    /// raises a new readiness edge.
    pub(crate) fn drained(&self) -> bool {
        self.drained
    }

    /// Moves the plaintext held to `out`; how much.
    fn hand_out(&mut self, out: &mut [u8]) -> usize {
        let n = self.plain.len().min(out.len());
        let from = self.plain.start;
        if let (Some(to), Some(from)) = (out.get_mut(..n), self.inbox.get(from..from + n)) {
            to.copy_from_slice(from);
        }
        self.plain.start += n;
        n
    }
}

impl<S: Read + Write> RecordStream<S> {
    /// Plaintext for `out`: what is held, else what the socket brings. `Ok(0)` is the end of
    /// input: the server's close_notify, or its TCP end without one (a truncation, which
    /// leaves a partial reply unanswered as a plain FIN would). A record that fails to open
    /// is an error, after its alert is sent.
    pub(crate) fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.drained = false;
        let mut done = 0;
        let mut socket_empty = false;
        loop {
            done += self.hand_out(out.get_mut(done..).unwrap_or_default());
            if done == out.len() || self.ended || self.eof {
                return Ok(done);
            }
            if self.open_next()? {
                continue;
            }
            if socket_empty {
                self.drained = true;
                return if done > 0 {
                    Ok(done)
                } else {
                    Err(ErrorKind::WouldBlock.into())
                };
            }
            // A blocking socket would wait for more than the caller asked.
            if self.blocking && done > 0 {
                return Ok(done);
            }
            match self.fill() {
                Ok((0, _)) => self.eof = true,
                Ok((n, room)) => socket_empty = !self.blocking && n < room,
                Err(e) if e.kind() == ErrorKind::WouldBlock && done > 0 => {
                    self.drained = true;
                    return Ok(done);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Opens the next record if it has all come; whether it had.
    fn open_next(&mut self) -> io::Result<bool> {
        let at = self.next;
        let rest = self.inbox.get(at..self.filled).unwrap_or_default();
        let len = match record::record_len(rest) {
            Ok(Some(len)) => len,
            Ok(None) => return Ok(false),
            Err(e) => return Err(self.fail(e)),
        };
        let end = at.saturating_add(len);
        let record = self.inbox.get_mut(at..end).unwrap_or_default();
        let opened = self.layer.open(record, &mut self.unsent);
        self.next = end;
        match opened {
            Ok(Opened::Data(r)) => self.plain = at + r.start..at + r.end,
            Ok(Opened::End) => self.ended = true,
            Ok(Opened::Nothing) => self.send_what_fits()?,
            Err(e) => return Err(self.fail(e)),
        }
        Ok(true)
    }

    /// Reads the socket into the room after what is held (moving what is held to the front
    /// first, once its plaintext is all handed out): the count and the room it had.
    fn fill(&mut self) -> io::Result<(usize, usize)> {
        if self.plain.is_empty() && self.next > 0 {
            self.inbox.copy_within(self.next..self.filled, 0);
            self.filled -= self.next;
            self.next = 0;
            self.plain = 0..0;
        }
        let room = self.inbox.get_mut(self.filled..).unwrap_or_default();
        let len = room.len();
        if len == 0 {
            return Err(invalid("a record longer than the inbox"));
        }
        loop {
            match self.socket.read(room) {
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
                Ok(n) => {
                    self.filled += n;
                    return Ok((n, len));
                }
            }
        }
    }

    /// Sends the alert `e` owes the server, if the socket takes it; the error in words.
    fn fail(&mut self, e: RecordError) -> io::Error {
        if let Some(alert) = e.alert() {
            self.layer.seal_alert(alert, &mut self.unsent);
            let _ = self.send_pending();
        }
        invalid(e)
    }

    /// Writes sealed records until none wait (`Ok`) or the socket would block (the error).
    pub(crate) fn send_pending(&mut self) -> io::Result<usize> {
        let rest = self.unsent.get(self.sent..).unwrap_or_default();
        let n = write_until_blocked(&mut self.socket, rest)?;
        self.sent += n;
        if self.sent < self.unsent.len() {
            return Err(ErrorKind::WouldBlock.into());
        }
        self.unsent.clear();
        self.sent = 0;
        Ok(n)
    }

    /// Sealed records that would block are left for the next writable event.
    pub(crate) fn send_what_fits(&mut self) -> io::Result<()> {
        match self.send_pending() {
            Err(e) if e.kind() != ErrorKind::WouldBlock => Err(e),
            _ => Ok(()),
        }
    }

    /// Seals `buf` (up to four records' worth) and writes what the socket takes; refuses
    /// (`WouldBlock`) while earlier records still wait for it.
    pub(crate) fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.send_pending()?;
        let take = buf.get(..MOST_PER_WRITE).unwrap_or(buf);
        if let Err(e) = self.layer.seal(take, &mut self.unsent) {
            return Err(self.fail(e));
        }
        self.send_what_fits()?;
        Ok(take.len())
    }
}

impl<S: Read + Write> Read for RecordStream<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        RecordStream::read(self, buf)
    }
}

impl<S: Read + Write> Write for RecordStream<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        RecordStream::write(self, buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_pending().map(|_| ())
    }
}

impl Timed for RecordStream<StdStream> {
    fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.socket.set_read_timeout(timeout)
    }

    fn set_write_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.socket.set_write_timeout(timeout)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;
    use std::sync::Arc;
    use std::thread;

    use rustls::{ServerConnection, StreamOwned};

    use super::*;

    /// A client of `versions` on an unbuffered connection to a rustls server (buffered,
    /// blocking) that runs `serve` on its side of a socket pair.
    fn pair(
        versions: &[&'static rustls::SupportedProtocolVersion],
        serve: impl FnOnce(StreamOwned<ServerConnection, UnixStream>) + Send + 'static,
    ) -> (Handshaken<UnixStream>, thread::JoinHandle<()>) {
        let (server_config, client_config) = crate::tls::trusting_pair_of(versions).unwrap();
        let (ours, theirs) = UnixStream::pair().unwrap();
        for s in [&ours, &theirs] {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        }
        let server = thread::spawn(move || {
            let mut conn = ServerConnection::new(server_config).unwrap();
            let mut sock = theirs;
            while conn.is_handshaking() {
                conn.complete_io(&mut sock).unwrap();
            }
            serve(StreamOwned::new(conn, sock));
        });
        let mut config = (*client_config).clone();
        config.enable_secret_extraction = true;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = UnbufferedClientConnection::new(Arc::new(config), name).unwrap();
        (handshake(conn, ours).unwrap(), server)
    }

    fn own(h: Handshaken<UnixStream>) -> Box<RecordStream<UnixStream>> {
        match h {
            Handshaken::Tls13(s) => s,
            Handshaken::Tls12 => panic!("TLS 1.2 negotiated"),
        }
    }

    #[test]
    fn records_go_both_ways_through_tickets_and_key_updates_to_close_notify() {
        let big: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let expected = big.clone();
        let (h, server) = pair(rustls::DEFAULT_VERSIONS, move |mut tls| {
            let mut hello = [0u8; 5];
            tls.read_exact(&mut hello).unwrap();
            tls.write_all(&hello.to_ascii_uppercase()).unwrap();
            // New sending keys of the server's, announced by a KeyUpdate that asks for ours.
            tls.conn.refresh_traffic_keys().unwrap();
            tls.write_all(b"after the key update").unwrap();
            let mut back = vec![0u8; expected.len()];
            tls.read_exact(&mut back).unwrap();
            assert!(back == expected, "the server got other bytes");
            tls.write_all(&back).unwrap();
            tls.conn.send_close_notify();
            tls.flush().unwrap();
        });
        let mut client = own(h);
        client.write_all(b"hello").unwrap();
        let mut got = [0u8; 5];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"HELLO");
        let mut got = [0u8; 20];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"after the key update");
        client.write_all(&big).unwrap();
        let mut back = vec![0u8; big.len()];
        client.read_exact(&mut back).unwrap();
        assert!(back == big, "the echo differs");
        // close_notify: the end of input.
        assert_eq!(client.read(&mut [0u8; 16]).unwrap(), 0);
        server.join().unwrap();
    }

    #[test]
    fn a_blocking_read_returns_what_has_come_without_waiting_to_fill_the_buffer() {
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let (h, server) = pair(rustls::DEFAULT_VERSIONS, move |mut tls| {
            tls.write_all(b"a challenge").unwrap();
            // The connection stays open, silent, until the client has read.
            let _ = done_rx.recv_timeout(Duration::from_secs(10));
        });
        let mut client = own(h);
        let timeout = Duration::from_secs(5);
        client.socket.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = [0u8; 4096];
        let started = std::time::Instant::now();
        let n = client.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"a challenge");
        // Not at the socket's timeout, which would also hand over what had come.
        assert!(started.elapsed() < timeout, "{:?}", started.elapsed());
        done_tx.send(()).unwrap();
        server.join().unwrap();
    }

    #[test]
    fn a_server_that_chooses_tls12_is_left_to_rustls() {
        let (h, server) = pair(&[&rustls::version::TLS12], |_| {});
        assert!(matches!(h, Handshaken::Tls12));
        server.join().unwrap();
    }

    #[test]
    fn a_record_that_does_not_authenticate_is_an_error_and_its_alert_goes_out() {
        let (h, server) = pair(rustls::DEFAULT_VERSIONS, |mut tls| {
            while tls.conn.wants_write() {
                tls.conn.write_tls(&mut tls.sock).unwrap();
            }
            // An application-data record no key sealed.
            let mut forged = vec![23, 3, 3, 0, 40];
            forged.extend_from_slice(&[0x5a; 40]);
            tls.sock.write_all(&forged).unwrap();
            // The client's answer: a bad_record_mac alert.
            let mut alert = [0u8; 1];
            let e = tls.read(&mut alert).unwrap_err();
            assert!(e.to_string().contains("BadRecordMac"), "{e}");
        });
        let mut client = own(h);
        let e = client.read(&mut [0u8; 64]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidData);
        assert!(e.to_string().contains("authenticate"), "{e}");
        server.join().unwrap();
    }
}
