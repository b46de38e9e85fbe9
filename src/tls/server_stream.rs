//! The server side of a TLS connection over a non-blocking socket, on rustls's unbuffered API:
//! the reactor's TLS transport. rustls keeps the handshake and the keys (the records too, until
//! a TLS 1.3 handshake is over: below); the bytes live here, and only while they wait. An idle
//! connection holds no buffer at all (the buffered `ServerConnection` keeps a 4 KiB record
//! buffer for good once it has read), which is what brings an idle TLS connection under 5 KB.
//!
//! Ciphertext is read into the caller's buffer or one of the thread's (one reactor a thread)
//! and decrypted there; what a connection keeps between reads is only the start of a record
//! that has not all come ([`ServerTls::partial`]), plaintext that did not fit the caller's
//! buffer, and records the socket would not take yet. Replies are encrypted straight into the
//! thread's output buffer, as few records as the bytes allow (one per 16 KiB), and written from
//! there.
//!
//! Once a TLS 1.3 handshake is over, rustls hands the traffic secrets over (its kernel-connection
//! API) and the records are ours ([`super::record`]): read into the caller's own buffer and
//! opened there, each record's plaintext written over the ciphertext before it (no copy; the
//! thread's buffer serves a caller's buffer too small for a record), and sealed straight into
//! the thread's output buffer, with no allocation per record; rustls keeps only what derives
//! the next keys. TLS 1.2, and a configuration without secret extraction, stay with rustls
//! throughout.
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

use rustls::ServerConfig;
use rustls::server::UnbufferedServerConnection;

use super::record::{self, Opened, RecordError, RecordLayer};

mod rustls_records;
#[cfg(test)]
mod tests;
mod unsent;

use unsent::Unsent;

/// The most ciphertext a connection keeps while a record (or a handshake message spread over
/// records) is incomplete: rustls's own limit on a handshake message (64 KiB) plus one
/// largest record. A peer that sends more without completing anything is refused.
const MAX_PARTIAL: usize = 0xffff + 18_437;

/// The least room a read of the socket asks for (a small caller's buffer is read through the
/// thread's own, its plaintext beyond the caller's held).
const MIN_READ: usize = 4096;

/// The most plaintext one `write` encrypts (8 records of ours, 16 KiB less a byte each).
const MAX_WRITE: usize = 8 * record::MAX_RECORD_DATA;

/// The most encrypted bytes a connection keeps for its socket: one `write`'s records and
/// their overhead, plus what the peer's own requests make it owe (our answers to its key
/// updates, 32 per record of data). A peer that asks for more without reading is cut off.
const MAX_UNSENT: usize = 256 * 1024;

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
            .field("unsent", &self.unsent.pending())
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
    /// layer's keys), for the reactor's prefetch (`reactor/prefetch.rs`).
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

    /// Bytes this connection keeps between calls (the fuzz target and a test bound them).
    #[cfg(any(test, feature = "fuzzing"))]
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
            let (n, want, done) = self.read_records(buf, incoming)?;
            let short = n < want;
            // Replies the handshake owes: sent now if the socket takes them.
            match self.unsent.send(&mut self.socket) {
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                _ => {}
            }
            if self.unsent.pending() > MAX_UNSENT {
                return Err(invalid(
                    "the TLS peer does not read the records it asks the server for",
                ));
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

    /// Reads the socket once, after the partial record, and opens the whole records that
    /// makes. Once the records are ours and `buf` has room, in `buf` itself: each record's
    /// plaintext is written where the ciphertext before it was, with no copy. Else in the
    /// thread's `incoming`, the plaintext copied to `buf`. Returns the bytes read, the room
    /// they were read into, and what opening came to; the start of a record is kept.
    fn read_records(
        &mut self,
        buf: &mut [u8],
        incoming: &mut Vec<u8>,
    ) -> io::Result<(usize, usize, Processed)> {
        let kept = self.partial.len();
        if matches!(self.conn, Records::Own(_)) && buf.len() >= kept.saturating_add(MIN_READ) {
            let want = buf.len().saturating_sub(kept);
            let n = self.fill(buf, kept, want)?;
            let run = buf.get_mut(..kept.saturating_add(n)).unwrap_or_default();
            let done = self.open_in_place(run)?;
            self.keep_rest(run.get(done.consumed..).unwrap_or_default())?;
            return Ok((n, want, done));
        }
        // As much new ciphertext as `buf` could take as plaintext (a record's plaintext is
        // shorter than the record), and at least a few KiB, so that a small `buf` does not
        // mean a read a byte (plaintext beyond `buf` is held and handed out next).
        let want = buf.len().saturating_sub(kept).max(MIN_READ);
        let need = kept.saturating_add(want);
        if incoming.len() < need {
            incoming.resize(need, 0);
        }
        let n = self.fill(incoming, kept, want)?;
        let run = incoming
            .get_mut(..kept.saturating_add(n))
            .unwrap_or_default();
        let done = self.process(run, buf)?;
        self.keep_rest(run.get(done.consumed..).unwrap_or_default())?;
        Ok((n, want, done))
    }

    /// Puts the partial record at the start of `area` and reads the socket into the `want`
    /// bytes after it.
    fn fill(&mut self, area: &mut [u8], kept: usize, want: usize) -> io::Result<usize> {
        if let Some(front) = area.get_mut(..kept) {
            front.copy_from_slice(&self.partial);
        }
        let Some(space) = area.get_mut(kept..kept.saturating_add(want)) else {
            return Err(io::ErrorKind::OutOfMemory.into());
        };
        loop {
            match self.socket.read(space) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Keeps `rest`, the start of a record (or handshake message) whose end has not come.
    fn keep_rest(&mut self, rest: &[u8]) -> io::Result<()> {
        if rest.len() > MAX_PARTIAL {
            return Err(invalid("a TLS message larger than any this server accepts"));
        }
        self.partial.clear();
        if rest.is_empty() {
            self.partial = Vec::new();
        } else {
            self.partial.extend_from_slice(rest);
        }
        Ok(())
    }

    /// Opens the whole records of `run` with our record layer, each record's plaintext moved
    /// down to follow the one before it: `done.plain` bytes of plaintext at `run`'s start.
    fn open_in_place(&mut self, run: &mut [u8]) -> io::Result<Processed> {
        let mut done = Processed::default();
        let Records::Own(layer) = &mut self.conn else {
            return Ok(done);
        };
        match open_records_in_place(layer, run, &mut done, &mut self.unsent) {
            Ok(end) => {
                self.peer_closed |= end;
                Ok(done)
            }
            Err(e) => Err(refuse(layer, e, &mut self.unsent, &mut self.socket)),
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
            Err(e) => Err(refuse(layer, e, &mut self.unsent, &mut self.socket)),
        }
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
            self.encrypt_with_rustls(plain, outgoing)?;
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
        self.queue_close_notify_with_rustls();
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

/// [`open_records`] without the copy: each record of `run` is opened where it lies, its
/// plaintext written from `done.plain`, right after the plaintext before it.
fn open_records_in_place(
    layer: &mut RecordLayer,
    run: &mut [u8],
    done: &mut Processed,
    unsent: &mut Unsent,
) -> Result<bool, RecordError> {
    loop {
        let rest = run.get(done.consumed..).unwrap_or_default();
        let Some(len) = record::record_len(rest)? else {
            return Ok(false);
        };
        let end = done.consumed.saturating_add(len);
        let Some(area) = run.get_mut(done.plain..end) else {
            return Ok(false);
        };
        let header_at = done.consumed.saturating_sub(done.plain);
        let opened = layer.open_at(area, header_at, &mut unsent.bytes)?;
        done.consumed = end;
        match opened {
            Opened::Data(range) => done.plain = done.plain.saturating_add(range.len()),
            Opened::End => return Ok(true),
            Opened::Nothing => {}
        }
    }
}

/// The connection's end for a record our layer refused: the alert it earns, sent if the
/// socket takes it, and the error for the caller.
fn refuse<S: Write>(
    layer: &mut RecordLayer,
    e: RecordError,
    unsent: &mut Unsent,
    socket: &mut S,
) -> io::Error {
    if let Some(alert) = e.alert() {
        layer.seal_alert(alert, &mut unsent.bytes);
    }
    let _ = unsent.send(socket);
    invalid(e)
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
