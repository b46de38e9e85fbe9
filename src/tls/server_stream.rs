//! The server side of a TLS connection over a non-blocking socket, on rustls's unbuffered API:
//! the reactor's TLS transport. rustls keeps the handshake and the keys (the records too, until
//! a TLS 1.3 handshake is over: below); the bytes live here, and only while they wait. An idle
//! connection holds no buffer at all (the buffered `ServerConnection` keeps a 4 KiB record
//! buffer for good once it has read), which is what brings an idle TLS connection under 5 KB.
//!
//! Ciphertext is read into a buffer of the thread's (one reactor a thread) and decrypted there;
//! what a connection keeps between reads is only the start of a record that has not all come
//! ([`ServerTls::partial`]), plaintext that did not fit the caller's buffer, and records the
//! socket would not take yet. Replies are encrypted straight into the thread's output buffer,
//! as few records as the bytes allow (one per 16 KiB), and written from there.
//!
//! Once a TLS 1.3 handshake is over, rustls hands the traffic secrets over (its kernel-connection
//! API) and the records are ours ([`super::record`]): opened in place in the thread's buffer and
//! sealed straight into its output buffer, with no allocation per record; rustls keeps only
//! what derives the next keys. TLS 1.2, and a configuration without secret extraction, stay
//! with rustls throughout.
//!
//! The contract with the connection path is [`crate::tls::stream::TlsStream`]'s: `read` gives
//! plaintext (`Ok(0)` at the end: close_notify, or a TCP end without one, a truncation), a
//! short read counts as draining the socket only when nothing decrypted is held
//! ([`ServerTls::drained`]), and encrypted bytes waiting for the socket make
//! [`ServerTls::wants_write`] true; `write` refuses (`WouldBlock`) while they wait, and before
//! the handshake has finished, so unsent replies stay in the connection's own buffer, which the
//! pause and `--max-pending` limits count.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::sync::Arc;

use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError,
    UnbufferedStatus, WriteTraffic,
};
use rustls::{ProtocolVersion, ServerConfig};

use super::record::{self, Opened, RecordError, RecordLayer};

/// The most ciphertext a connection keeps while a record (or a handshake message spread over
/// records) is incomplete: rustls's own limit on a handshake message (64 KiB) plus one
/// largest record. A peer that sends more without completing anything is refused.
const MAX_PARTIAL: usize = 0xffff + 18_437;

/// The most plaintext one `write` encrypts (8 records of 16 KiB).
const MAX_WRITE: usize = 128 * 1024;

/// Room for a record's header, content type and tag, per 16 KiB record (TLS 1.2 GCM needs
/// 29 bytes, 1.3 needs 22); `encrypt` says when more is needed.
const RECORD_OVERHEAD: usize = 64;

/// The thread's buffers, shared by its connections one call at a time.
#[derive(Default)]
struct Scratch {
    /// Ciphertext being decrypted: a connection's partial record, then what the socket gave.
    incoming: Vec<u8>,
    /// Records being encrypted, before the socket takes them.
    outgoing: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Runs `f` with the thread's buffers (fresh ones in the impossible case that a call is
/// already using them).
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => f(&mut scratch),
        Err(_) => f(&mut Scratch::default()),
    })
}

/// Encrypted bytes the socket has not taken yet.
#[derive(Debug, Default)]
struct Unsent {
    bytes: Vec<u8>,
    /// How many of `bytes` have gone.
    at: usize,
}

impl Unsent {
    fn is_empty(&self) -> bool {
        self.at >= self.bytes.len()
    }

    /// Writes until none wait (`Ok`) or the socket would block (the error); the buffer is
    /// released once it is empty.
    fn send(&mut self, socket: &mut impl Write) -> io::Result<usize> {
        let mut sent = 0usize;
        while let Some(rest) = self.bytes.get(self.at..).filter(|r| !r.is_empty()) {
            match socket.write(rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.at = self.at.saturating_add(n);
                    sent = sent.saturating_add(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.bytes = Vec::new();
        self.at = 0;
        Ok(sent)
    }

    /// Writes what waits, then `records`, as far as the socket takes them; keeps the rest.
    fn send_or_keep(&mut self, records: &[u8], socket: &mut impl Write) -> io::Result<()> {
        match self.send(socket) {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
            _ => {}
        }
        let mut taken = 0usize;
        if self.is_empty() {
            while let Some(rest) = records.get(taken..).filter(|r| !r.is_empty()) {
                match socket.write(rest) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => taken = taken.saturating_add(n),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
        self.bytes
            .extend_from_slice(records.get(taken..).unwrap_or_default());
        Ok(())
    }
}

/// Appends to `out` what `encode` writes into a buffer large enough for it.
fn append_with<E>(
    out: &mut Vec<u8>,
    first_guess: usize,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, E>,
    too_small: impl Fn(&E) -> Option<usize>,
) -> Result<(), E> {
    let start = out.len();
    let mut room = first_guess;
    for _ in 0..2 {
        out.resize(start.saturating_add(room), 0);
        let target = out.get_mut(start..).unwrap_or_default();
        match encode(target) {
            Ok(n) => {
                out.truncate(start.saturating_add(n));
                return Ok(());
            }
            Err(e) => match too_small(&e) {
                Some(required) if required > room => room = required,
                _ => {
                    out.truncate(start);
                    return Err(e);
                }
            },
        }
    }
    out.truncate(start);
    // `encode` asked for more room than it said it needed: treated as its refusal.
    match encode(&mut []) {
        Err(e) => Err(e),
        Ok(_) => Ok(()),
    }
}

fn encode_too_small(e: &EncodeError) -> Option<usize> {
    match e {
        EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(*required_size)
        }
        _ => None,
    }
}

fn encrypt_too_small(e: &EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(*required_size)
        }
        _ => None,
    }
}

/// Appends to `unsent` the message rustls owes the peer (a handshake message, a ticket, an
/// alert).
fn queue(
    unsent: &mut Vec<u8>,
    message: &mut EncodeTlsData<'_, ServerConnectionData>,
) -> io::Result<()> {
    append_with(unsent, 4096, |out| message.encode(out), encode_too_small).map_err(invalid)
}

/// Hands the payload of every record a `ReadTraffic` or `ReadEarlyData` state holds to
/// `$deliver`, adding what each says to discard to `$discard` (the states are two types with
/// the same method).
macro_rules! take_records {
    ($records:ident, $discard:ident, |$payload:ident| $deliver:block) => {{
        while let Some(record) = $records.next_record() {
            let record = record.map_err(invalid)?;
            $discard = $discard.saturating_add(record.discard);
            let $payload = record.payload;
            $deliver
        }
    }};
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// What processing a run of ciphertext came to.
#[derive(Debug, Default)]
struct Processed {
    /// Bytes of it that rustls is done with.
    consumed: usize,
    /// Plaintext bytes written to the caller's buffer.
    plain: usize,
}

/// Who opens and seals a connection's records.
enum Records {
    /// rustls: through the handshake, and for good on TLS 1.2 (and where the configuration
    /// keeps the secrets in rustls).
    Rustls(Box<UnbufferedServerConnection>),
    /// Ours (`tls/record.rs`), on TLS 1.3 once the handshake is over.
    Own(Box<RecordLayer>),
    /// Neither: the hand-over failed, and so has the connection.
    Gone,
}

impl Records {
    fn is_handshaking(&self) -> bool {
        match self {
            Records::Rustls(conn) => conn.is_handshaking(),
            Records::Own(_) | Records::Gone => false,
        }
    }
}

/// A TLS server connection over the non-blocking socket `S`.
pub(crate) struct ServerTls<S> {
    /// The socket the records travel on.
    pub(crate) socket: S,
    /// The records' keeper: rustls (the handshake, the keys, the record sequence), then ours.
    conn: Records,
    /// TLS 1.3 records are to be ours after the handshake (the configuration lets rustls hand
    /// over the secrets).
    own_records: bool,
    /// The start of a record (or handshake message) whose rest has not come.
    partial: Vec<u8>,
    /// Plaintext decrypted that did not fit the caller's buffer: handed out first.
    held: Vec<u8>,
    /// Encrypted records waiting for the socket.
    unsent: Unsent,
    /// The peer's input has ended (close_notify): owed as a read of 0.
    peer_closed: bool,
    /// The last read emptied the socket and holds nothing decrypted.
    drained: bool,
    /// rustls refused the peer (its alert is sent): nothing more is asked of rustls, whose
    /// view of the undiscarded bytes no longer matches ours.
    failed: bool,
}

impl<S: std::fmt::Debug> std::fmt::Debug for ServerTls<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("socket", &self.socket)
            .field("handshaking", &self.conn.is_handshaking())
            .field("own_records", &matches!(self.conn, Records::Own(_)))
            .field("partial", &self.partial.len())
            .field("held", &self.held.len())
            .field(
                "unsent",
                &self.unsent.bytes.len().saturating_sub(self.unsent.at),
            )
            .field("peer_closed", &self.peer_closed)
            .finish()
    }
}

impl<S: Read + Write> ServerTls<S> {
    /// The server side of an accepted connection that has yet to send its ClientHello.
    pub(crate) fn server(socket: S, config: Arc<ServerConfig>) -> io::Result<ServerTls<S>> {
        let own_records = config.enable_secret_extraction;
        let conn = UnbufferedServerConnection::new(config).map_err(io::Error::other)?;
        Ok(ServerTls {
            socket,
            conn: Records::Rustls(Box::new(conn)),
            own_records,
            partial: Vec::new(),
            held: Vec::new(),
            unsent: Unsent::default(),
            peer_closed: false,
            drained: false,
            failed: false,
        })
    }

    /// The state behind the connection's own box that its next record touches (our record
    /// layer's keys), for the reactor's prefetch.
    pub(crate) fn record_layer(&self) -> Option<&RecordLayer> {
        match &self.conn {
            Records::Own(layer) => Some(layer),
            Records::Rustls(_) | Records::Gone => None,
        }
    }

    #[cfg(test)]
    fn record_layer_mut(&mut self) -> Option<&mut RecordLayer> {
        match &mut self.conn {
            Records::Own(layer) => Some(layer),
            Records::Rustls(_) | Records::Gone => None,
        }
    }

    /// The handshake has not finished.
    pub(crate) fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Encrypted bytes wait for the socket.
    pub(crate) fn wants_write(&self) -> bool {
        !self.unsent.is_empty()
    }

    /// Writes encrypted bytes until none wait (`Ok`) or the socket would block (the error).
    pub(crate) fn send_pending(&mut self) -> io::Result<usize> {
        self.unsent.send(&mut self.socket)
    }

    /// Bytes this connection keeps between calls (the fuzz target bounds them).
    #[cfg(feature = "fuzzing")]
    pub(crate) fn held_bytes(&self) -> usize {
        self.partial
            .len()
            .saturating_add(self.held.len())
            .saturating_add(self.unsent.bytes.len())
    }

    /// The last read emptied the socket and left nothing decrypted here: a later byte raises a
    /// new readiness edge, so the read that would only say `WouldBlock` can be skipped.
    pub(crate) fn drained(&self) -> bool {
        self.drained
    }

    /// Plaintext for `buf`: what is held, else what the socket brings. `Ok(0)` is the end of
    /// input: the peer's close_notify, or its TCP end without one (a truncation, which leaves
    /// any partial request unanswered as a plain FIN would). A record that fails to decrypt
    /// or a handshake that fails is an error, after its alert is sent.
    pub(crate) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.drained = false;
        if !self.held.is_empty() {
            return Ok(self.hand_out_held(buf));
        }
        if self.failed {
            return Err(invalid("the TLS connection has failed"));
        }
        if self.peer_closed || buf.is_empty() {
            return Ok(0);
        }
        let r = with_scratch(|scratch| self.read_with(buf, &mut scratch.incoming));
        if matches!(&r, Err(e) if e.kind() == io::ErrorKind::InvalidData) {
            self.failed = true;
        }
        r
    }

    fn hand_out_held(&mut self, buf: &mut [u8]) -> usize {
        let n = self.held.len().min(buf.len());
        if let (Some(to), Some(from)) = (buf.get_mut(..n), self.held.get(..n)) {
            to.copy_from_slice(from);
        }
        self.held.drain(..n);
        if self.held.is_empty() {
            self.held = Vec::new();
        }
        n
    }

    fn read_with(&mut self, buf: &mut [u8], incoming: &mut Vec<u8>) -> io::Result<usize> {
        loop {
            // The partial record first, then as much new ciphertext as `buf` could take as
            // plaintext (a record's plaintext is shorter than the record).
            let kept = self.partial.len();
            // At least a few KiB, so that a small `buf` does not mean a read a byte (plaintext
            // beyond `buf` is held and handed out next).
            let want = buf.len().saturating_sub(kept).max(4096);
            let need = kept.saturating_add(want);
            if incoming.len() < need {
                incoming.resize(need, 0);
            }
            if let Some(front) = incoming.get_mut(..kept) {
                front.copy_from_slice(&self.partial);
            }
            let Some(space) = incoming.get_mut(kept..need) else {
                return Err(io::ErrorKind::OutOfMemory.into());
            };
            // With many connections taking turns the keys have left the cache by this one's
            // next record: they are fetched while the kernel copies the record in.
            if let Records::Own(layer) = &self.conn {
                crate::reactor::prefetch::object(&**layer);
            }
            let n = loop {
                match self.socket.read(space) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            };
            let short = n < want;
            let filled = kept.saturating_add(n);
            let run = incoming.get_mut(..filled).unwrap_or_default();
            let done = self.process(run, buf)?;
            let rest = run.get(done.consumed..).unwrap_or_default();
            if rest.len() > MAX_PARTIAL {
                return Err(invalid("a TLS message larger than any this server accepts"));
            }
            self.partial.clear();
            if rest.is_empty() {
                self.partial = Vec::new();
            } else {
                self.partial.extend_from_slice(rest);
            }
            // Replies the handshake owes: sent now if the socket takes them.
            match self.unsent.send(&mut self.socket) {
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                _ => {}
            }
            // The peer's end (close_notify) is owed as a read of 0, which no event will ask
            // for: the socket does not count as drained until it has been read.
            self.drained = short && self.held.is_empty() && !self.peer_closed;
            if done.plain > 0 || self.peer_closed {
                return Ok(done.plain);
            }
            if n == 0 {
                tracing::debug!("TLS peer closed without close_notify");
                return Ok(0);
            }
            // No plaintext yet: a handshake message, a partial record, a key update.
            if short {
                return Err(io::ErrorKind::WouldBlock.into());
            }
        }
    }

    /// Opens the whole records of `run` (ciphertext): plaintext goes to `buf` (what does not
    /// fit, to `held`), what the peer is owed goes to `unsent`. A TLS 1.3 connection whose
    /// handshake this finishes hands its records over to us.
    fn process(&mut self, run: &mut [u8], buf: &mut [u8]) -> io::Result<Processed> {
        let mut done = Processed::default();
        if let Records::Rustls(conn) = &self.conn {
            let handshaking = conn.is_handshaking();
            done = self.process_rustls(run, buf, done)?;
            if self.take_over_records() {
                // What followed the handshake's last record is ours.
            } else if handshaking && !self.conn.is_handshaking() {
                // A handshake that ended without a hand-over (TLS 1.2): rustls, which was
                // given one record at a time, takes the rest.
                return self.process_rustls(run, buf, done);
            } else {
                return Ok(done);
            }
        }
        let Records::Own(layer) = &mut self.conn else {
            return Ok(done);
        };
        match open_records(layer, run, buf, &mut done, &mut self.held, &mut self.unsent) {
            Ok(end) => {
                self.peer_closed |= end;
                Ok(done)
            }
            Err(e) => {
                if let Some(alert) = e.alert() {
                    layer.seal_alert(alert, &mut self.unsent.bytes);
                }
                let _ = self.unsent.send(&mut self.socket);
                Err(invalid(e))
            }
        }
    }

    /// Takes the records over from rustls once a TLS 1.3 handshake is over and everything
    /// rustls owed the peer (the session tickets) has been handed to `unsent`. A hand-over
    /// that fails leaves neither (rustls's connection is spent): the connection fails.
    fn take_over_records(&mut self) -> bool {
        let Records::Rustls(conn) = &self.conn else {
            return false;
        };
        if !self.own_records
            || self.failed
            || self.peer_closed
            || conn.is_handshaking()
            || conn.wants_write()
            || conn.protocol_version() != Some(ProtocolVersion::TLSv1_3)
        {
            return false;
        }
        let Records::Rustls(conn) = std::mem::replace(&mut self.conn, Records::Gone) else {
            return false;
        };
        let layer = (*conn)
            .dangerous_into_kernel_connection()
            .map_err(|e| RecordError::Keys(e.to_string()))
            .and_then(|(secrets, kernel)| RecordLayer::new(kernel, secrets.rx, secrets.tx));
        match layer {
            Ok(layer) => {
                self.conn = Records::Own(Box::new(layer));
                true
            }
            Err(e) => {
                tracing::warn!("TLS records could not be taken over from rustls: {e}");
                self.failed = true;
                false
            }
        }
    }

    /// Hands `run` (ciphertext, from what `done` has consumed) to rustls until it needs more:
    /// plaintext goes to `buf` (what does not fit, to `held`), what the handshake says goes to
    /// `unsent`. While a handshake whose records are to be handed over runs, rustls is given
    /// one more record at a time, so that it has seen nothing past the handshake's last record
    /// when the handshake is over: rustls holds its answer to a key update until its next
    /// write, and would take it along into the hand-over.
    fn process_rustls(
        &mut self,
        run: &mut [u8],
        buf: &mut [u8],
        mut done: Processed,
    ) -> io::Result<Processed> {
        let one_by_one = self.own_records && self.conn.is_handshaking();
        let mut fed = match one_by_one {
            true => record_end(run, done.consumed),
            false => run.len(),
        };
        // Each state is one step (a record, a message to encode); the bound is far above what
        // one run of ciphertext can need and keeps a bug from spinning the loop.
        for _ in 0..100_000 {
            let rest = run
                .get_mut(done.consumed..fed.max(done.consumed))
                .unwrap_or_default();
            let Records::Rustls(conn) = &mut self.conn else {
                return Ok(done);
            };
            let UnbufferedStatus { mut discard, state } = conn.process_tls_records(rest);
            let state = match state {
                Ok(state) => state,
                Err(e) => {
                    done.consumed = done.consumed.saturating_add(discard);
                    let rest = run.get_mut(done.consumed..).unwrap_or_default();
                    self.send_alert(rest);
                    return Err(invalid(e));
                }
            };
            let go_on = match state {
                ConnectionState::ReadTraffic(mut records) => {
                    take_records!(records, discard, |payload| {
                        done.plain = deliver(payload, buf, done.plain, &mut self.held);
                    });
                    true
                }
                ConnectionState::ReadEarlyData(mut records) => {
                    take_records!(records, discard, |payload| {
                        done.plain = deliver(payload, buf, done.plain, &mut self.held);
                    });
                    true
                }
                ConnectionState::EncodeTlsData(mut message) => {
                    queue(&mut self.unsent.bytes, &mut message)?;
                    true
                }
                ConnectionState::TransmitTlsData(transmit) => {
                    // Handed to `unsent`, which the caller sends as the socket allows.
                    transmit.done();
                    true
                }
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    self.peer_closed = true;
                    false
                }
                // Needs more bytes (BlockedHandshake), or all is read (WriteTraffic): the
                // next record, while the handshake runs and one is there.
                _ => {
                    let more = one_by_one && conn.is_handshaking() && fed < run.len();
                    if more {
                        fed = record_end(run, fed);
                    }
                    more
                }
            };
            done.consumed = done.consumed.saturating_add(discard);
            if !go_on {
                return Ok(done);
            }
        }
        Err(invalid("TLS records kept the connection busy"))
    }

    /// After a failure, the alert rustls queued saying why, if the socket takes it. `rest` is
    /// the ciphertext rustls has not discarded (it may still refer to it). Only what rustls
    /// has queued is asked for: asked for more, it would decode `rest` again.
    fn send_alert(&mut self, rest: &mut [u8]) {
        for _ in 0..4 {
            let Records::Rustls(conn) = &mut self.conn else {
                break;
            };
            if !conn.wants_write() {
                break;
            }
            let status = conn.process_tls_records(rest);
            let Ok(ConnectionState::EncodeTlsData(mut message)) = status.state else {
                break;
            };
            if queue(&mut self.unsent.bytes, &mut message).is_err() {
                break;
            }
        }
        let _ = self.unsent.send(&mut self.socket);
    }

    /// Runs `f` with rustls's permission to encrypt, after encoding what it owes first
    /// (session tickets, a key update); `None` while the handshake runs or once the
    /// connection has closed. rustls sees the partial record it has not discarded.
    fn with_write_traffic<R>(
        &mut self,
        f: impl FnOnce(&mut WriteTraffic<'_, ServerConnectionData>) -> R,
    ) -> io::Result<Option<R>> {
        if self.failed {
            return Ok(None);
        }
        let mut partial = std::mem::take(&mut self.partial);
        let mut consumed = 0usize;
        let r = self.write_traffic_over(&mut partial, &mut consumed, f);
        self.failed |= r.is_err();
        partial.drain(..consumed.min(partial.len()));
        if !partial.is_empty() {
            self.partial = partial;
        }
        r
    }

    fn write_traffic_over<R>(
        &mut self,
        partial: &mut [u8],
        consumed: &mut usize,
        f: impl FnOnce(&mut WriteTraffic<'_, ServerConnectionData>) -> R,
    ) -> io::Result<Option<R>> {
        let mut f = Some(f);
        for _ in 0..64 {
            let run = partial.get_mut(*consumed..).unwrap_or_default();
            let Records::Rustls(conn) = &mut self.conn else {
                return Ok(None);
            };
            let UnbufferedStatus { mut discard, state } = conn.process_tls_records(run);
            let result = match state.map_err(invalid)? {
                ConnectionState::EncodeTlsData(mut message) => {
                    queue(&mut self.unsent.bytes, &mut message)?;
                    None
                }
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    None
                }
                ConnectionState::PeerClosed => {
                    self.peer_closed = true;
                    None
                }
                // Not expected here (the read path takes every whole record), but kept.
                ConnectionState::ReadTraffic(mut records) => {
                    take_records!(records, discard, |payload| {
                        self.held.extend_from_slice(payload);
                    });
                    None
                }
                ConnectionState::WriteTraffic(mut traffic) => {
                    Some(f.take().map(|f| f(&mut traffic)))
                }
                _ => Some(None),
            };
            *consumed = consumed.saturating_add(discard);
            if let Some(r) = result {
                return Ok(r);
            }
        }
        Ok(None)
    }

    /// Encrypts `buf` (up to 128 KiB of it) and writes what the socket takes; refuses
    /// (`WouldBlock`) while earlier records still wait for it and while the handshake runs.
    pub(crate) fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.unsent.send(&mut self.socket)?;
        if buf.is_empty() {
            return Ok(0);
        }
        if self.conn.is_handshaking() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let plain = buf.get(..buf.len().min(MAX_WRITE)).unwrap_or(buf);
        with_scratch(|scratch| {
            let outgoing = &mut scratch.outgoing;
            outgoing.clear();
            if let Records::Own(layer) = &mut self.conn {
                if self.failed {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                if let Err(e) = layer.seal(plain, outgoing) {
                    self.failed = true;
                    return Err(invalid(e));
                }
                self.unsent.send_or_keep(outgoing, &mut self.socket)?;
                return Ok(plain.len());
            }
            let guess = plain
                .len()
                .saturating_add((plain.len() / 16_384).saturating_add(1) * RECORD_OVERHEAD);
            let encrypted = self.with_write_traffic(|traffic| {
                append_with(
                    outgoing,
                    guess,
                    |out| traffic.encrypt(plain, out),
                    encrypt_too_small,
                )
            })?;
            match encrypted {
                Some(Ok(())) => {}
                Some(Err(e)) => return Err(invalid(e)),
                None => return Err(io::ErrorKind::WouldBlock.into()),
            }
            self.unsent.send_or_keep(outgoing, &mut self.socket)?;
            Ok(plain.len())
        })
    }

    /// The orderly end: close_notify, written if the socket takes it.
    pub(crate) fn close_notify(&mut self) {
        if let Records::Own(layer) = &mut self.conn {
            if !self.failed {
                layer.seal_close_notify(&mut self.unsent.bytes);
            }
            let _ = self.unsent.send(&mut self.socket);
            return;
        }
        let mut alert = Vec::new();
        let queued = self.with_write_traffic(|traffic| {
            append_with(
                &mut alert,
                64,
                |out| traffic.queue_close_notify(out),
                encrypt_too_small,
            )
        });
        if let Ok(Some(Ok(()))) = queued {
            self.unsent.bytes.extend_from_slice(&alert);
        }
        let _ = self.unsent.send(&mut self.socket);
    }
}

/// Where the record that starts at `from` in `run` ends: the end of `run` if it has not all
/// come (or its header is not there).
fn record_end(run: &[u8], from: usize) -> usize {
    let header = run
        .get(from..)
        .and_then(|r| r.first_chunk::<{ record::HEADER_LEN }>());
    let Some(&[_, _, _, hi, lo]) = header else {
        return run.len();
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    from.saturating_add(record::HEADER_LEN)
        .saturating_add(len)
        .min(run.len())
}

/// Opens the whole records at the start of `run` with our record layer, adding to `done` what
/// they brought (plaintext to `buf`, the rest of it to `held`) and what they took; answers the
/// peer is owed (a key update) go to `unsent`. `Ok(true)` once the peer's close_notify has come
/// (what follows it is not read).
fn open_records(
    layer: &mut RecordLayer,
    run: &mut [u8],
    buf: &mut [u8],
    done: &mut Processed,
    held: &mut Vec<u8>,
    unsent: &mut Unsent,
) -> Result<bool, RecordError> {
    loop {
        let rest = run.get_mut(done.consumed..).unwrap_or_default();
        let Some(len) = record::record_len(rest)? else {
            return Ok(false);
        };
        let Some(record) = rest.get_mut(..len) else {
            return Ok(false);
        };
        let opened = layer.open(record, &mut unsent.bytes)?;
        done.consumed = done.consumed.saturating_add(len);
        match opened {
            Opened::Data(range) => {
                let payload = record.get(range).unwrap_or_default();
                done.plain = deliver(payload, buf, done.plain, held);
            }
            Opened::End => return Ok(true),
            Opened::Nothing => {}
        }
    }
}

/// Copies `payload` into `buf` from `at`; what does not fit goes to `held`. Returns the new end
/// of the plaintext in `buf`.
fn deliver(payload: &[u8], buf: &mut [u8], at: usize, held: &mut Vec<u8>) -> usize {
    if !held.is_empty() {
        held.extend_from_slice(payload);
        return at;
    }
    let room = buf.len().saturating_sub(at);
    let n = room.min(payload.len());
    if let (Some(to), Some(from)) = (buf.get_mut(at..at.saturating_add(n)), payload.get(..n)) {
        to.copy_from_slice(from);
    }
    held.extend_from_slice(payload.get(n..).unwrap_or_default());
    at.saturating_add(n)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::sync::Arc;
    use std::thread;
    use std::time::{Duration, Instant};

    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, ServerConfig};

    use super::ServerTls;

    /// A server and a client configuration that trust each other.
    fn configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        crate::tls::trusting_pair().unwrap()
    }

    /// Echoes through a `ServerTls` read into buffers of `cap` bytes, while a
    /// blocking client sends `total` bytes in records of every size and reads them back.
    /// Whether the records were ours at the end.
    fn echo_through(cap: usize, total: usize) -> bool {
        echo_through_with(configs(), cap, total)
    }

    fn echo_through_with(
        (server_cfg, client_cfg): (Arc<ServerConfig>, Arc<ClientConfig>),
        cap: usize,
        total: usize,
    ) -> bool {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut server = ServerTls::server(a, server_cfg).unwrap();
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
        server.record_layer().is_some()
    }

    /// Data and close_notify in one segment: the data comes out, the socket is not taken for
    /// drained (no event will come for the end), and the next read is the end.
    #[test]
    fn a_close_notify_behind_the_data_is_not_lost() {
        let (server_cfg, client_cfg) = configs();
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut server = ServerTls::server(a, server_cfg).unwrap();
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
            assert!(
                echo_through(cap, 600_000),
                "TLS 1.3 records stayed with rustls"
            );
        }
    }

    #[test]
    fn tls12_and_a_configuration_that_keeps_the_secrets_stay_with_rustls() {
        let tls12 = crate::tls::trusting_pair_of(&[&rustls::version::TLS12]).unwrap();
        assert!(
            !echo_through_with(tls12, 5_000, 300_000),
            "TLS 1.2 records are not ours"
        );
        let (server_cfg, client_cfg) = configs();
        let mut keeps = (*server_cfg).clone();
        keeps.enable_secret_extraction = false;
        assert!(!echo_through_with(
            (Arc::new(keeps), client_cfg),
            5_000,
            300_000
        ));
    }

    /// A client (rustls, non-blocking) and the server, in one thread.
    struct Pair {
        server: ServerTls<UnixStream>,
        client: ClientConnection,
        sock: UnixStream,
        /// What the server read, and what the client read.
        server_got: Vec<u8>,
        client_got: Vec<u8>,
    }

    impl Pair {
        /// Connected, the handshake over.
        fn new() -> Pair {
            Pair::connect(|_| {})
        }

        /// Connected, with `after_handshake` run on the client as soon as its handshake is
        /// over, so that what it makes follows its Finished in the same flight.
        fn connect(after_handshake: impl FnOnce(&mut ClientConnection)) -> Pair {
            let mut after_handshake = Some(after_handshake);
            let (server_cfg, client_cfg) = configs();
            let (a, b) = UnixStream::pair().unwrap();
            a.set_nonblocking(true).unwrap();
            b.set_nonblocking(true).unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            let mut pair = Pair {
                server: ServerTls::server(a, server_cfg).unwrap(),
                client: ClientConnection::new(client_cfg, name).unwrap(),
                sock: b,
                server_got: Vec::new(),
                client_got: Vec::new(),
            };
            for _ in 0..10 {
                if !pair.client.is_handshaking()
                    && let Some(f) = after_handshake.take()
                {
                    f(&mut pair.client);
                }
                if pair.server.record_layer().is_some() && after_handshake.is_none() {
                    return pair;
                }
                pair.pump().unwrap();
            }
            panic!("the handshake did not finish");
        }

        /// The client's records to the server, which reads them all; the server's to the
        /// client. The server's error, if it fails.
        fn pump(&mut self) -> std::io::Result<()> {
            while self.client.wants_write() {
                self.client.write_tls(&mut self.sock).unwrap();
            }
            let mut buf = vec![0u8; 65_536];
            let served = loop {
                match self.server.read(&mut buf) {
                    Ok(0) => break Ok(()),
                    Ok(n) => self.server_got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break Ok(()),
                    Err(e) => break Err(e),
                }
            };
            let _ = self.server.send_pending();
            loop {
                match self.client.read_tls(&mut self.sock) {
                    Ok(0) => break,
                    Ok(_) => {
                        if let Err(e) = self.client.process_new_packets() {
                            return served.and(Err(std::io::Error::other(e)));
                        }
                        let mut plain = [0u8; 4096];
                        while let Ok(n @ 1..) = self.client.reader().read(&mut plain) {
                            self.client_got.extend_from_slice(&plain[..n]);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("{e}"),
                }
            }
            served
        }

        /// The client's next bytes for the socket, as they would go.
        fn client_records(&mut self) -> Vec<u8> {
            let mut wire = Vec::new();
            while self.client.wants_write() {
                self.client.write_tls(&mut wire).unwrap();
            }
            wire
        }

        /// What the client's rustls said of the server's last records.
        fn client_error(&mut self) -> rustls::Error {
            // Already seen by `pump`, which read the socket after the server failed.
            if let Err(e) = self.client.process_new_packets() {
                return e;
            }
            loop {
                match self.client.read_tls(&mut self.sock) {
                    Ok(0) => panic!("the server closed without an alert"),
                    Ok(_) => {
                        if let Err(e) = self.client.process_new_packets() {
                            return e;
                        }
                    }
                    Err(e) => panic!("no alert came: {e}"),
                }
            }
        }
    }

    #[test]
    fn an_altered_record_is_refused_with_bad_record_mac() {
        for at in [0usize, 5, 20] {
            let mut pair = Pair::new();
            pair.client.writer().write_all(b"to be altered").unwrap();
            let mut wire = pair.client_records();
            // Counted from the end: in the tag, in the ciphertext, in the header's length.
            let i = wire.len() - 1 - at;
            wire[i] ^= 0x40;
            pair.sock.write_all(&wire).unwrap();
            let err = pair.pump().unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
            assert!(pair.server_got.is_empty());
            let alert = pair.client_error();
            assert!(
                matches!(
                    alert,
                    rustls::Error::AlertReceived(rustls::AlertDescription::BadRecordMac)
                ),
                "{alert:?}"
            );
        }
    }

    #[test]
    fn key_updates_either_way_keep_the_echo_going() {
        let mut pair = Pair::new();
        // Ours after every 2 records (the confidentiality limit's path); the client's, asking
        // for ours too, every third message.
        pair.server
            .record_layer_mut()
            .unwrap()
            .replace_tx_key_every(2);
        let mut expected = Vec::new();
        for i in 0..12 {
            if i % 3 == 0 {
                pair.client.refresh_traffic_keys().unwrap();
            }
            let line = format!("line {i}\n");
            pair.client.writer().write_all(line.as_bytes()).unwrap();
            expected.extend_from_slice(line.as_bytes());
            pair.pump().unwrap();
            let got = std::mem::take(&mut pair.server_got);
            assert_eq!(pair.server.write(&got).unwrap(), got.len());
            pair.pump().unwrap();
        }
        assert_eq!(pair.server_got, b"");
        assert_eq!(
            String::from_utf8_lossy(&pair.client_got),
            String::from_utf8_lossy(&expected)
        );
    }

    /// A key update the client sends right behind its Finished reaches rustls with the
    /// Finished: rustls holds its answer until its next write, which the hand-over would
    /// lose (the client's next record from us would then not decrypt).
    #[test]
    fn a_key_update_behind_the_clients_finished_is_answered_after_the_hand_over() {
        for data_too in [false, true] {
            let mut pair = Pair::connect(|client| {
                client.refresh_traffic_keys().unwrap();
                if data_too {
                    client.writer().write_all(b"early words").unwrap();
                }
            });
            pair.pump().unwrap();
            let expected: &[u8] = if data_too { b"early words" } else { b"" };
            assert_eq!(pair.server_got, expected);
            assert_eq!(pair.server.write(b"reply").unwrap(), 5);
            pair.pump().unwrap();
            assert_eq!(pair.client_got, b"reply");
        }
    }

    #[test]
    fn a_run_of_key_update_requests_without_data_is_refused() {
        let mut pair = Pair::new();
        for _ in 0..32 {
            pair.client.refresh_traffic_keys().unwrap();
        }
        pair.pump().unwrap();
        pair.client
            .writer()
            .write_all(b"data resets the count")
            .unwrap();
        pair.pump().unwrap();
        assert_eq!(pair.server_got, b"data resets the count");
        // The client counts our answers the same way: data of ours resets its count.
        pair.server.write(b"ok").unwrap();
        for _ in 0..32 {
            pair.client.refresh_traffic_keys().unwrap();
        }
        pair.pump().unwrap();
        assert_eq!(pair.client_got, b"ok");
        pair.client.refresh_traffic_keys().unwrap();
        let err = pair.pump().unwrap_err();
        assert!(err.to_string().contains("key-update requests"), "{err}");
        let alert = pair.client_error();
        assert!(
            matches!(
                alert,
                rustls::Error::AlertReceived(rustls::AlertDescription::UnexpectedMessage)
            ),
            "{alert:?}"
        );
    }

    /// One direction of the client's records, sealed and opened by hand with the traffic
    /// secrets rustls extracted from the client, to send what no TLS library sends.
    struct ByHand {
        key: ring::aead::LessSafeKey,
        iv: [u8; 12],
        seq: u64,
    }

    impl ByHand {
        fn new((seq, secrets): (u64, rustls::ConnectionTrafficSecrets)) -> ByHand {
            let rustls::ConnectionTrafficSecrets::Aes256Gcm { key, iv } = secrets else {
                panic!("the test configurations negotiate AES-256-GCM");
            };
            let key = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, key.as_ref());
            ByHand {
                key: ring::aead::LessSafeKey::new(key.unwrap()),
                iv: iv.as_ref().try_into().unwrap(),
                seq,
            }
        }

        fn nonce(&mut self) -> ring::aead::Nonce {
            let n = rustls::crypto::cipher::Nonce::new(
                &rustls::crypto::cipher::Iv::new(self.iv),
                self.seq,
            );
            self.seq += 1;
            ring::aead::Nonce::assume_unique_for_key(n.0)
        }

        /// A record carrying `inner` (content, content type, padding) as TLS 1.3 seals it.
        fn seal(&mut self, inner: &[u8]) -> Vec<u8> {
            let len = u16::try_from(inner.len() + 16).unwrap().to_be_bytes();
            let header = [23, 3, 3, len[0], len[1]];
            let mut body = inner.to_vec();
            let nonce = self.nonce();
            let aad = ring::aead::Aad::from(header);
            let tag = self.key.seal_in_place_separate_tag(nonce, aad, &mut body);
            let mut record = header.to_vec();
            record.extend_from_slice(&body);
            record.extend_from_slice(tag.unwrap().as_ref());
            record
        }

        /// Opens the one record in `record`: its inner plaintext.
        fn open(&mut self, record: &mut [u8]) -> Vec<u8> {
            let (header, body) = record.split_at_mut(5);
            let header: [u8; 5] = header.try_into().unwrap();
            let nonce = self.nonce();
            let aad = ring::aead::Aad::from(header);
            self.key.open_in_place(nonce, aad, body).unwrap().to_vec()
        }
    }

    /// The server after its hand-over, with the client's two directions by hand.
    fn by_hand() -> (ServerTls<UnixStream>, UnixStream, ByHand, ByHand) {
        let (server_cfg, client_cfg) = configs();
        let mut client_cfg = (*client_cfg).clone();
        client_cfg.enable_secret_extraction = true;
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut pair = Pair {
            server: ServerTls::server(a, server_cfg).unwrap(),
            client: ClientConnection::new(Arc::new(client_cfg), name).unwrap(),
            sock: b,
            server_got: Vec::new(),
            client_got: Vec::new(),
        };
        for _ in 0..10 {
            pair.pump().unwrap();
        }
        assert!(pair.server.record_layer().is_some() && !pair.client.is_handshaking());
        #[allow(deprecated)]
        let secrets = pair.client.dangerous_extract_secrets().unwrap();
        (
            pair.server,
            pair.sock,
            ByHand::new(secrets.tx),
            ByHand::new(secrets.rx),
        )
    }

    /// Sends `records` and reads until the server has something to say: what it read, or
    /// its error.
    fn send_by_hand(
        server: &mut ServerTls<UnixStream>,
        sock: &mut UnixStream,
        records: &[Vec<u8>],
    ) -> std::io::Result<Vec<u8>> {
        for r in records {
            sock.write_all(r).unwrap();
        }
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65_536];
        loop {
            match server.read(&mut buf) {
                Ok(0) => return Ok(got),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(got),
                Err(e) => return Err(e),
            }
        }
    }

    #[test]
    fn padding_empty_records_and_a_few_user_canceled_alerts_are_taken() {
        let (mut server, mut sock, mut tx, _) = by_hand();
        let mut padded = b"padded".to_vec();
        padded.push(23);
        padded.extend_from_slice(&[0; 200]);
        let records = [
            tx.seal(&padded),
            tx.seal(&[23]),
            tx.seal(b"after empty\x17"),
        ];
        let got = send_by_hand(&mut server, &mut sock, &records).unwrap();
        assert_eq!(got, b"paddedafter empty");
        let canceled: Vec<Vec<u8>> = (0..4).map(|_| tx.seal(&[1, 90, 21])).collect();
        let got = send_by_hand(&mut server, &mut sock, &canceled).unwrap();
        assert_eq!(got, b"");
        let fifth = [tx.seal(&[1, 90, 21])];
        let err = send_by_hand(&mut server, &mut sock, &fifth).unwrap_err();
        assert!(err.to_string().contains("warning alerts"), "{err}");
    }

    /// Each bad record on a fresh connection: the server refuses it, with the alert RFC 8446
    /// names (read back with the client's keys), or without one for the client's own alert.
    #[test]
    fn bad_records_get_the_alert_rfc_8446_names() {
        const UNEXPECTED: u8 = 10;
        let mut oversized = vec![b'x'; 16_385];
        oversized.push(23);
        let cases: [(&str, Vec<u8>, Option<u8>); 9] = [
            ("no content type", vec![0; 10], Some(UNEXPECTED)),
            (
                "an unknown content type",
                b"zz\x63".to_vec(),
                Some(UNEXPECTED),
            ),
            ("2^14 + 1 bytes of content", oversized, Some(22)),
            (
                "a session ticket from a client",
                vec![4, 0, 0, 1, 0, 22],
                Some(UNEXPECTED),
            ),
            (
                "a key update cut short",
                vec![24, 0, 0, 22],
                Some(UNEXPECTED),
            ),
            ("a key update asking 2", vec![24, 0, 0, 1, 2, 22], Some(50)),
            ("an alert of one byte", vec![1, 21], Some(50)),
            (
                "a change_cipher_spec, protected",
                vec![1, 20],
                Some(UNEXPECTED),
            ),
            ("the client's handshake_failure", vec![2, 40, 21], None),
        ];
        for (what, inner, alert) in cases {
            let (mut server, mut sock, mut tx, mut rx) = by_hand();
            let record = [tx.seal(&inner)];
            let read = send_by_hand(&mut server, &mut sock, &record).map(|got| got.len());
            let err = read.unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{what}: {err}");
            let mut answer = vec![0u8; 1024];
            match (sock.read(&mut answer), alert) {
                (Ok(n), Some(description)) => {
                    let inner = rx.open(&mut answer[..n]);
                    assert_eq!(inner, [2, description, 21], "{what}");
                }
                (Err(e), None) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                (other, _) => panic!("{what}: {other:?}"),
            }
        }
        // A record in clear after the handshake.
        let (mut server, mut sock, _, mut rx) = by_hand();
        let clear = [vec![20, 3, 3, 0, 1, 1]];
        send_by_hand(&mut server, &mut sock, &clear).unwrap_err();
        let mut answer = vec![0u8; 1024];
        let n = sock.read(&mut answer).unwrap();
        assert_eq!(rx.open(&mut answer[..n]), [2, UNEXPECTED, 21]);
    }

    #[test]
    fn close_notify_either_way_on_our_records() {
        let mut pair = Pair::new();
        pair.client.writer().write_all(b"bye").unwrap();
        pair.client.send_close_notify();
        pair.pump().unwrap();
        assert_eq!(pair.server_got, b"bye");
        let mut buf = [0u8; 16];
        assert_eq!(
            pair.server.read(&mut buf).unwrap(),
            0,
            "the end is a read of 0"
        );
        pair.server.close_notify();
        pair.pump().unwrap();
        let mut plain = [0u8; 16];
        assert_eq!(
            pair.client.reader().read(&mut plain).unwrap(),
            0,
            "the client saw close_notify"
        );
    }
}
