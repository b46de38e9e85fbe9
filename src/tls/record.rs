//! TLS 1.3's record layer after the handshake, ours (RFC 8446 §5), sans-IO: rustls keeps the
//! handshake and the key schedule (its kernel-connection API hands over the traffic secrets
//! and derives new ones on a key update); records are opened and sealed here with ring's AEAD,
//! in place in the caller's buffers. rustls's own path copies each record's plaintext into a
//! fresh `Vec` and keeps its state behind several boxes; this keeps one box per connection and
//! allocates nothing per record (BENCHMARKS.md, TLS). What it seals is padded to whole AES
//! blocks (`padded_len`). The server's connections use it (`server_stream`), and so do
//! `bench`'s (`client_records`).
//!
//! What a peer may send once the handshake is over, and what becomes of it (to a client, also
//! the server's session tickets, whole, ahead of anything else in their record: handed to
//! rustls):
//! application data (delivered; empty records too), a `KeyUpdate` (new receiving keys; when it
//! asks for ours, a `KeyUpdate` of ours goes out first, at most 32 such requests between two
//! application-data records, as BoringSSL and rustls allow), `close_notify` (the end),
//! `user_canceled` (ignored, at most 4 times). Anything else is an error, answered by the
//! fatal alert RFC 8446 names for it: a record that does not authenticate (`bad_record_mac`),
//! one too long (`record_overflow`), a malformed alert or key update (`decode_error`), any other
//! content or handshake message, or a handshake message split across records
//! (`unexpected_message`); an alert of the peer's other than the two above ends the connection
//! without an answer. Our sending key is replaced (a `KeyUpdate` of ours) before it has sealed
//! as many records as its cipher's confidentiality limit allows.

use std::fmt;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::client::ClientConnectionData;
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{ConnectionTrafficSecrets, SupportedCipherSuite};

/// A record's header: content type, legacy version (2 bytes), length (2 bytes).
pub(crate) const HEADER_LEN: usize = 5;
/// The AEAD tag of every TLS 1.3 cipher suite.
const TAG_LEN: usize = 16;
/// The most plaintext one record carries (2^14).
const MAX_PLAINTEXT: usize = 16_384;
/// The most a record's encrypted part may be (2^14 + 256).
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
/// The most data one record of ours carries: one byte short of 2^14, so that with its content
/// type the sealed part is whole AES blocks (see `padded_len`).
pub(crate) const MAX_RECORD_DATA: usize = MAX_PLAINTEXT - 1;
/// The AES block: ring seals whole blocks faster than a partial last one (`padded_len`).
const BLOCK: usize = 16;
/// A sealed record's length beyond its plaintext, at most: header, inner content type,
/// padding, tag.
const RECORD_OVERHEAD: usize = HEADER_LEN + BLOCK + TAG_LEN;

/// Content types (RFC 8446 §5.1).
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;

/// The handshake messages a peer may send after the handshake: a server's tickets (to a
/// client) and a key update (either way).
const NEW_SESSION_TICKET: u8 = 4;
const KEY_UPDATE: u8 = 24;

/// Alert descriptions (RFC 8446 §6).
const CLOSE_NOTIFY: u8 = 0;
const UNEXPECTED_MESSAGE: u8 = 10;
const BAD_RECORD_MAC: u8 = 20;
const RECORD_OVERFLOW: u8 = 22;
const DECODE_ERROR: u8 = 50;
const INTERNAL_ERROR: u8 = 80;
const USER_CANCELED: u8 = 90;

/// Key-update requests allowed between two application-data records (BoringSSL's
/// `kMaxKeyUpdates`, rustls's too).
const KEY_UPDATE_REQUESTS: u8 = 32;
/// `user_canceled` alerts allowed on a connection (rustls allows 4 warning alerts).
const WARNING_ALERTS: u8 = 4;
/// How many records before the confidentiality limit our sending key is replaced.
const LIMIT_MARGIN: u64 = 1024;

/// Why a record, or the connection, cannot go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RecordError {
    /// The record did not authenticate: altered, or not sealed with the key it should be.
    BadRecordMac,
    /// A record longer than TLS allows.
    Overflow,
    /// A record or message that is not what its type says it is.
    Decode(&'static str),
    /// A record or message that may not come now.
    Unexpected(&'static str),
    /// The peer's alert (its description), which ends the connection.
    PeerAlert(u8),
    /// rustls could not derive new keys, or ring could not take them.
    Keys(String),
    /// A sequence number ran out (2^64 records on one key).
    SequenceExhausted,
}

impl RecordError {
    /// The fatal alert that tells the peer why, when one is owed.
    pub(crate) fn alert(&self) -> Option<u8> {
        match self {
            RecordError::BadRecordMac => Some(BAD_RECORD_MAC),
            RecordError::Overflow => Some(RECORD_OVERFLOW),
            RecordError::Decode(_) => Some(DECODE_ERROR),
            RecordError::Unexpected(_) => Some(UNEXPECTED_MESSAGE),
            RecordError::Keys(_) | RecordError::SequenceExhausted => Some(INTERNAL_ERROR),
            RecordError::PeerAlert(_) => None,
        }
    }
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::BadRecordMac => f.write_str("a TLS record failed to authenticate"),
            RecordError::Overflow => f.write_str("a TLS record longer than 2^14 + 256 bytes"),
            RecordError::Decode(what) => write!(f, "a malformed TLS {what}"),
            RecordError::Unexpected(what) => write!(f, "an unexpected TLS {what}"),
            RecordError::PeerAlert(d) => write!(f, "the peer sent TLS alert {d}"),
            RecordError::Keys(why) => write!(f, "TLS keys: {why}"),
            RecordError::SequenceExhausted => f.write_str("a TLS record sequence ran out"),
        }
    }
}

impl std::error::Error for RecordError {}

/// What an opened record brought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Opened {
    /// Application data: its place in the area opened (`RecordLayer::open_at`).
    Data(std::ops::Range<usize>),
    /// The peer's close_notify: its input has ended.
    End,
    /// Nothing for the caller (a key update, user_canceled).
    Nothing,
}

/// The length of the record at the start of `ciphertext`, header included, once it has all
/// come (`Ok(None)` until then); an error for a header no TLS 1.3 record has.
pub(crate) fn record_len(ciphertext: &[u8]) -> Result<Option<usize>, RecordError> {
    let Some(&[typ, major, _, hi, lo]) = ciphertext.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    if major != 3 {
        return Err(RecordError::Decode("record version"));
    }
    if typ != APPLICATION_DATA {
        // After the handshake every record is protected, so its outer type is application data.
        return Err(RecordError::Unexpected("unprotected record"));
    }
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if len > MAX_CIPHERTEXT {
        return Err(RecordError::Overflow);
    }
    if len <= TAG_LEN {
        return Err(RecordError::Decode("record (shorter than its tag)"));
    }
    let total = HEADER_LEN + len;
    Ok((ciphertext.len() >= total).then_some(total))
}

/// One direction's key, its IV and the next record's sequence number.
struct Keys {
    key: LessSafeKey,
    iv: [u8; aead::NONCE_LEN],
    seq: u64,
}

impl Keys {
    fn new(seq: u64, secrets: &ConnectionTrafficSecrets) -> Result<Keys, RecordError> {
        let (algorithm, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            _ => return Err(RecordError::Keys("a cipher this record layer lacks".into())),
        };
        let key = UnboundKey::new(algorithm, key.as_ref())
            .map_err(|_| RecordError::Keys("ring refused the key".into()))?;
        let iv = <[u8; aead::NONCE_LEN]>::try_from(iv.as_ref())
            .map_err(|_| RecordError::Keys("an IV of the wrong length".into()))?;
        Ok(Keys {
            key: LessSafeKey::new(key),
            iv,
            seq,
        })
    }

    /// The keys rustls derived for a key update.
    fn next(
        derived: Result<(u64, ConnectionTrafficSecrets), rustls::Error>,
    ) -> Result<Keys, RecordError> {
        let (seq, secrets) = derived.map_err(|e| RecordError::Keys(e.to_string()))?;
        Keys::new(seq, &secrets)
    }

    /// The next record's nonce (the IV XOR the sequence number, RFC 8446 §5.3), and the
    /// sequence moved on.
    fn next_nonce(&mut self) -> Result<Nonce, RecordError> {
        let mut nonce = self.iv;
        for (n, s) in nonce.iter_mut().rev().zip(self.seq.to_le_bytes()) {
            *n ^= s;
        }
        self.seq = self
            .seq
            .checked_add(1)
            .ok_or(RecordError::SequenceExhausted)?;
        Ok(Nonce::assume_unique_for_key(nonce))
    }
}

/// rustls's side of a connection whose records are ours: it derives the next traffic secrets
/// on a key update, and a client's takes the server's session tickets.
pub(crate) enum Kernel {
    Server(KernelConnection<ServerConnectionData>),
    Client(KernelConnection<ClientConnectionData>),
}

impl From<KernelConnection<ServerConnectionData>> for Kernel {
    fn from(k: KernelConnection<ServerConnectionData>) -> Kernel {
        Kernel::Server(k)
    }
}

impl From<KernelConnection<ClientConnectionData>> for Kernel {
    fn from(k: KernelConnection<ClientConnectionData>) -> Kernel {
        Kernel::Client(k)
    }
}

impl Kernel {
    fn negotiated_cipher_suite(&self) -> SupportedCipherSuite {
        match self {
            Kernel::Server(k) => k.negotiated_cipher_suite(),
            Kernel::Client(k) => k.negotiated_cipher_suite(),
        }
    }

    fn update_rx_secret(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Kernel::Server(k) => k.update_rx_secret(),
            Kernel::Client(k) => k.update_rx_secret(),
        }
    }

    fn update_tx_secret(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Kernel::Server(k) => k.update_tx_secret(),
            Kernel::Client(k) => k.update_tx_secret(),
        }
    }

    /// Takes the session tickets at the front of `content` (a client's kernel only) and
    /// returns what follows them.
    fn take_tickets<'a>(&mut self, mut content: &'a [u8]) -> Result<&'a [u8], RecordError> {
        let Kernel::Client(kernel) = self else {
            return Ok(content);
        };
        while let [NEW_SESSION_TICKET, a, b, c, rest @ ..] = content {
            let len = usize::try_from(u32::from_be_bytes([0, *a, *b, *c]))
                .map_err(|_| RecordError::Decode("session ticket"))?;
            let (ticket, after) = rest.split_at_checked(len).ok_or(RecordError::Unexpected(
                "session ticket split across records",
            ))?;
            kernel
                .handle_new_session_ticket(ticket)
                .map_err(|_| RecordError::Decode("session ticket"))?;
            content = after;
        }
        Ok(content)
    }
}

/// The record layer of one TLS 1.3 connection after its handshake.
pub(crate) struct RecordLayer {
    /// rustls's side (rarely touched, so kept out of the lines every record reads).
    kernel: Box<Kernel>,
    rx: Keys,
    tx: Keys,
    /// Records a sending key may seal before it is replaced.
    tx_limit: u64,
    key_update_requests_left: u8,
    warning_alerts_left: u8,
}

impl fmt::Debug for RecordLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordLayer")
            .field("rx_seq", &self.rx.seq)
            .field("tx_seq", &self.tx.seq)
            .finish_non_exhaustive()
    }
}

impl RecordLayer {
    /// The record layer of a connection rustls has handed over, with its secrets.
    pub(crate) fn new(
        kernel: impl Into<Kernel>,
        rx: (u64, ConnectionTrafficSecrets),
        tx: (u64, ConnectionTrafficSecrets),
    ) -> Result<RecordLayer, RecordError> {
        let kernel = kernel.into();
        let limit = match kernel.negotiated_cipher_suite() {
            SupportedCipherSuite::Tls13(suite) => suite.common.confidentiality_limit,
            _ => return Err(RecordError::Keys("not a TLS 1.3 cipher suite".into())),
        };
        Ok(RecordLayer {
            rx: Keys::new(rx.0, &rx.1)?,
            tx: Keys::new(tx.0, &tx.1)?,
            kernel: Box::new(kernel),
            tx_limit: limit.saturating_sub(LIMIT_MARGIN).max(1),
            key_update_requests_left: KEY_UPDATE_REQUESTS,
            warning_alerts_left: WARNING_ALERTS,
        })
    }

    /// Replaces the sending key after every `records` records (the confidentiality limit's
    /// path, which a test cannot wait 2^24 records for).
    #[cfg(test)]
    pub(crate) fn replace_tx_key_every(&mut self, records: u64) {
        self.tx_limit = records;
    }

    /// Opens `record` (one whole record, as [`record_len`] measured it) in place, its content
    /// moved to the record's start. What the peer is owed in answer (our key update) is sealed
    /// onto `owed`.
    pub(crate) fn open(
        &mut self,
        record: &mut [u8],
        owed: &mut Vec<u8>,
    ) -> Result<Opened, RecordError> {
        self.open_at(record, 0, owed)
    }

    /// Opens the record that starts at `header_at` in `area` and runs to its end, its content
    /// written from the start of `area` (over what came before the record: plaintext of
    /// earlier records lands right after the plaintext before it, with no copy).
    pub(crate) fn open_at(
        &mut self,
        area: &mut [u8],
        header_at: usize,
        owed: &mut Vec<u8>,
    ) -> Result<Opened, RecordError> {
        let header = *area
            .get(header_at..)
            .and_then(|r| r.first_chunk::<HEADER_LEN>())
            .ok_or(RecordError::Decode("record (shorter than its header)"))?;
        let nonce = self.rx.next_nonce()?;
        let sealed_at = header_at.saturating_add(HEADER_LEN);
        let inner = self
            .rx
            .key
            .open_within(nonce, Aad::from(header), area, sealed_at..)
            .map_err(|_| RecordError::BadRecordMac)?;
        // The content type is the last byte that is not zero padding.
        let Some(type_at) = inner.iter().rposition(|&b| b != 0) else {
            return Err(RecordError::Unexpected("record with no content type"));
        };
        if inner.len() > MAX_PLAINTEXT + 1 {
            return Err(RecordError::Overflow);
        }
        let (content, typ) = inner.split_at(type_at);
        match typ.first().copied() {
            Some(APPLICATION_DATA) => {
                self.key_update_requests_left = KEY_UPDATE_REQUESTS;
                Ok(Opened::Data(0..content.len()))
            }
            Some(ALERT) => self.on_alert(content),
            Some(HANDSHAKE) => {
                let rest = self.kernel.take_tickets(content)?;
                // A record of tickets only; an empty one is refused below.
                if rest.is_empty() && !content.is_empty() {
                    return Ok(Opened::Nothing);
                }
                let request = key_update_request(rest)?;
                self.on_key_update(request, owed)?;
                Ok(Opened::Nothing)
            }
            _ => Err(RecordError::Unexpected("content type")),
        }
    }

    fn on_alert(&mut self, content: &[u8]) -> Result<Opened, RecordError> {
        let &[_level, description] = content else {
            return Err(RecordError::Decode("alert"));
        };
        match description {
            CLOSE_NOTIFY => Ok(Opened::End),
            USER_CANCELED if self.warning_alerts_left > 0 => {
                self.warning_alerts_left -= 1;
                Ok(Opened::Nothing)
            }
            USER_CANCELED => Err(RecordError::Unexpected("run of warning alerts")),
            other => Err(RecordError::PeerAlert(other)),
        }
    }

    /// New receiving keys; when the peer asks for ours too, a key update of ours, sealed with
    /// the key it replaces.
    fn on_key_update(&mut self, requested: bool, owed: &mut Vec<u8>) -> Result<(), RecordError> {
        if requested {
            self.key_update_requests_left = self
                .key_update_requests_left
                .checked_sub(1)
                .ok_or(RecordError::Unexpected("run of key-update requests"))?;
            self.replace_tx_key(owed)?;
        }
        self.rx = Keys::next(self.kernel.update_rx_secret())?;
        Ok(())
    }

    /// Tells the peer (a key update that does not ask for its own) and takes the next
    /// sending key.
    fn replace_tx_key(&mut self, out: &mut Vec<u8>) -> Result<(), RecordError> {
        self.seal_one(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0], out)?;
        self.tx = Keys::next(self.kernel.update_tx_secret())?;
        Ok(())
    }

    /// Seals `plain` as application data onto `out`, in as few records as it fits (one per
    /// 16 KiB less a byte).
    pub(crate) fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        out.reserve(
            plain.len().saturating_add(
                (plain.len() / MAX_RECORD_DATA + 1).saturating_mul(RECORD_OVERHEAD),
            ),
        );
        for chunk in plain.chunks(MAX_RECORD_DATA) {
            self.seal_one(APPLICATION_DATA, chunk, out)?;
        }
        Ok(())
    }

    /// Seals the alert `description` onto `out` (`close_notify` is a warning, the rest fatal).
    pub(crate) fn seal_alert(&mut self, description: u8, out: &mut Vec<u8>) {
        let level = if description == CLOSE_NOTIFY { 1 } else { 2 };
        // Failing here means the keys ran out: the connection ends without its alert.
        let _ = self.seal_one(ALERT, &[level, description], out);
    }

    /// Seals `close_notify` onto `out`.
    pub(crate) fn seal_close_notify(&mut self, out: &mut Vec<u8>) {
        self.seal_alert(CLOSE_NOTIFY, out);
    }

    /// Seals one record of `typ` carrying `content` (at most `MAX_RECORD_DATA` bytes) onto
    /// `out`, its inner plaintext padded with zeros to whole AES blocks (`padded_len`).
    fn seal_one(&mut self, typ: u8, content: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        if self.tx.seq >= self.tx_limit && typ != HANDSHAKE {
            self.replace_tx_key(out)?;
        }
        let inner_len = padded_len(content.len());
        let len = u16::try_from(inner_len + TAG_LEN).map_err(|_| RecordError::Overflow)?;
        let [hi, lo] = len.to_be_bytes();
        let header = [APPLICATION_DATA, 3, 3, hi, lo];
        let start = out.len();
        out.extend_from_slice(&header);
        out.extend_from_slice(content);
        out.push(typ);
        out.resize(start + HEADER_LEN + inner_len, 0);
        let nonce = self.tx.next_nonce();
        let sealed = match nonce {
            Ok(nonce) => {
                let body = out.get_mut(start + HEADER_LEN..).unwrap_or_default();
                self.tx
                    .key
                    .seal_in_place_separate_tag(nonce, Aad::from(header), body)
                    .map_err(|_| RecordError::Keys("ring refused to seal".into()))
            }
            Err(e) => Err(e),
        };
        match sealed {
            Ok(tag) => {
                out.extend_from_slice(tag.as_ref());
                Ok(())
            }
            Err(e) => {
                out.truncate(start);
                Err(e)
            }
        }
    }
}

/// The length of a record's inner plaintext carrying `content` bytes: the content, its type
/// byte and the zeros (RFC 8446 §5.4 lets a sender pad) that make it whole AES blocks, as long
/// as that stays within 2^14 + 1 bytes. ring seals a record that ends in a partial block 20–40
/// ns slower (a second pass for the last block: `cargo bench --bench tls_records --
/// tls_aead_alone`); the padding costs at most 15 bytes on the wire.
fn padded_len(content: usize) -> usize {
    let inner = content.saturating_add(1);
    let padded = inner.div_ceil(BLOCK).saturating_mul(BLOCK);
    if padded <= MAX_PLAINTEXT + 1 {
        padded
    } else {
        inner
    }
}

/// Reads the one handshake message a record may carry here: a whole `KeyUpdate` that ends the
/// record (RFC 8446 §5.1: no handshake message may span a key change). Whether it asks for
/// ours too.
fn key_update_request(content: &[u8]) -> Result<bool, RecordError> {
    match content {
        [KEY_UPDATE, 0, 0, 1, 0] => Ok(false),
        [KEY_UPDATE, 0, 0, 1, 1] => Ok(true),
        [KEY_UPDATE, 0, 0, 1, _] => Err(RecordError::Decode("key update")),
        [KEY_UPDATE, ..] if content.len() < 5 => {
            Err(RecordError::Unexpected("key update split across records"))
        }
        [KEY_UPDATE, 0, 0, 1, _, ..] => Err(RecordError::Unexpected(
            "handshake message behind a key update",
        )),
        [KEY_UPDATE, ..] => Err(RecordError::Decode("key update")),
        _ => Err(RecordError::Unexpected("handshake message")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_measured_once_its_header_and_body_have_come() {
        let mut record = vec![23, 3, 3, 0, 17];
        for cut in 0..HEADER_LEN {
            assert_eq!(record_len(&record[..cut]), Ok(None));
        }
        assert_eq!(record_len(&record), Ok(None));
        record.extend_from_slice(&[0; 16]);
        assert_eq!(record_len(&record), Ok(None));
        record.push(0);
        assert_eq!(record_len(&record), Ok(Some(22)));
        record.extend_from_slice(b"the next record");
        assert_eq!(record_len(&record), Ok(Some(22)));
        // The longest a record may be, and one byte more.
        assert_eq!(record_len(&[23, 3, 3, 0x41, 0x00]), Ok(None));
        assert_eq!(
            record_len(&[23, 3, 3, 0x41, 0x01]),
            Err(RecordError::Overflow)
        );
    }

    #[test]
    fn headers_no_protected_record_has_are_refused() {
        for (header, alert) in [
            ([22, 3, 1, 0, 40], UNEXPECTED_MESSAGE), // a handshake record in clear
            ([21, 3, 3, 0, 2], UNEXPECTED_MESSAGE),  // an alert in clear
            ([20, 3, 3, 0, 1], UNEXPECTED_MESSAGE),  // change_cipher_spec
            ([b'G', b'E', b'T', b' ', b'/'], DECODE_ERROR),
            ([23, 3, 3, 0, 16], DECODE_ERROR), // no room for a content type
            ([23, 3, 3, 0, 0], DECODE_ERROR),
            ([23, 2, 0, 0, 40], DECODE_ERROR),
            ([23, 3, 3, 0xff, 0xff], RECORD_OVERFLOW),
        ] {
            let e = record_len(&header).unwrap_err();
            assert_eq!(e.alert(), Some(alert), "{header:?}: {e}");
        }
    }

    #[test]
    fn only_a_whole_key_update_ending_its_record_is_taken() {
        assert_eq!(key_update_request(&[24, 0, 0, 1, 0]), Ok(false));
        assert_eq!(key_update_request(&[24, 0, 0, 1, 1]), Ok(true));
        for (content, alert) in [
            (&[24, 0, 0, 1, 2][..], DECODE_ERROR),
            (&[24, 0, 0, 2, 0, 0], DECODE_ERROR),
            (&[24, 0, 0, 1], UNEXPECTED_MESSAGE),
            (&[24], UNEXPECTED_MESSAGE),
            (&[24, 0, 0, 1, 0, 24, 0, 0, 1, 0], UNEXPECTED_MESSAGE),
            (&[4, 0, 0, 0], UNEXPECTED_MESSAGE), // a NewSessionTicket from a client
            (&[1, 0, 0, 0], UNEXPECTED_MESSAGE), // a ClientHello: renegotiation
            (&[], UNEXPECTED_MESSAGE),
        ] {
            let e = key_update_request(content).unwrap_err();
            assert_eq!(e.alert(), Some(alert), "{content:?}: {e}");
        }
    }

    #[test]
    fn nonces_are_the_iv_xor_the_sequence_as_rustls_makes_them() {
        let iv = [7u8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0xff];
        let secrets = ConnectionTrafficSecrets::Aes256Gcm {
            key: rustls::crypto::cipher::AeadKey::from([9u8; 32]),
            iv: rustls::crypto::cipher::Iv::new(iv),
        };
        for seq in [0, 1, 255, 256, 0x0102_0304_0506_0708, u64::MAX - 1] {
            let mut keys = Keys::new(seq, &secrets).unwrap();
            let nonce = keys.next_nonce().unwrap();
            let expected =
                rustls::crypto::cipher::Nonce::new(&rustls::crypto::cipher::Iv::new(iv), seq);
            assert_eq!(nonce.as_ref(), &expected.0, "seq {seq}");
            assert_eq!(keys.seq, seq + 1);
        }
        let mut last = Keys::new(u64::MAX, &secrets).unwrap();
        assert!(matches!(
            last.next_nonce(),
            Err(RecordError::SequenceExhausted)
        ));
    }
}
