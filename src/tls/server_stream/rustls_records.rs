//! The part of a TLS server connection rustls drives: the handshake, TLS 1.2 (and TLS 1.3 where
//! the configuration keeps the secrets) through rustls's unbuffered API, and the hand-over of
//! a TLS 1.3 connection's records to ours once its handshake is over.

use std::io::{self, Read, Write};

use rustls::ProtocolVersion;
use rustls::server::ServerConnectionData;
use rustls::unbuffered::{ConnectionState, EncodeTlsData, UnbufferedStatus, WriteTraffic};

use super::{Processed, Records, ServerTls, deliver, invalid, record_end};
use crate::tls::encode::{append_with, encode_too_small, encrypt_too_small};
use crate::tls::record::{RecordError, RecordLayer};

/// Room for a record's header, content type and tag, per 16 KiB record (TLS 1.2 GCM needs
/// 29 bytes, 1.3 needs 22); `encrypt` says when more is needed.
const RECORD_OVERHEAD: usize = 64;

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

impl<S: Read + Write> ServerTls<S> {
    /// Takes the records over from rustls once a TLS 1.3 handshake is over and everything
    /// rustls owed the peer (the session tickets) has been handed to `unsent`. A hand-over
    /// that fails leaves neither (rustls's connection is spent): the connection fails.
    pub(super) fn take_over_records(&mut self) -> bool {
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
    pub(super) fn process_rustls(
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

    /// Encrypts `plain` with rustls onto `outgoing`; `WouldBlock` while rustls may not.
    pub(super) fn encrypt_with_rustls(
        &mut self,
        plain: &[u8],
        outgoing: &mut Vec<u8>,
    ) -> io::Result<()> {
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
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(invalid(e)),
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    /// rustls's close_notify, onto `unsent`.
    pub(super) fn queue_close_notify_with_rustls(&mut self) {
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
    }
}
