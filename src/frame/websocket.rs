//! WebSocket (RFC 6455), sans-IO, server side: the opening handshake's key check and answer,
//! client frames decoded into messages (unmasked, fragments joined, text checked as UTF-8,
//! control frames checked), and server frames encoded. Every violation is a [`WsError`] with
//! the close code the RFC gives it; the decoder never holds more than one message of
//! `max_message` bytes.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha1::{Digest, Sha1};

/// The GUID RFC 6455 section 1.3 appends to the client's key.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Opcodes.
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// Close codes (RFC 6455 section 7.4.1).
pub const CLOSE_NORMAL: u16 = 1000;
/// The endpoint is going away (a server shutting down).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// A protocol error.
pub const CLOSE_PROTOCOL: u16 = 1002;
/// Data it cannot accept (a binary message to a text-only service).
pub const CLOSE_UNSUPPORTED: u16 = 1003;
/// Text that is not UTF-8.
pub const CLOSE_INVALID_DATA: u16 = 1007;
/// A message too big to process.
pub const CLOSE_TOO_BIG: u16 = 1009;

/// Why a client's bytes end the connection, with the close code to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("a message of more than {max} bytes")]
    TooBig { max: usize },
    #[error("text that is not UTF-8")]
    InvalidUtf8,
}

impl WsError {
    /// The close code RFC 6455 gives this error.
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::Protocol(_) => CLOSE_PROTOCOL,
            WsError::TooBig { .. } => CLOSE_TOO_BIG,
            WsError::InvalidUtf8 => CLOSE_INVALID_DATA,
        }
    }
}

/// A whole message from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsMessage {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    /// The client's close: its code (if it gave one) and reason.
    Close(Option<u16>),
}

/// What one call to [`WsDecoder::decode`] found.
#[derive(Debug, PartialEq, Eq)]
pub struct WsStep {
    /// Input bytes used (a whole frame, or nothing).
    pub consumed: usize,
    /// The message that frame completed, if any (a fragment completes none).
    pub message: Option<WsMessage>,
}

/// Client frames into messages.
#[derive(Debug)]
pub struct WsDecoder {
    /// The largest message (and frame) accepted.
    max_message: usize,
    /// The fragments of a message under way, and its opcode.
    fragments: Option<(u8, Vec<u8>)>,
}

impl WsDecoder {
    /// A decoder that takes messages of at most `max_message` bytes.
    pub fn new(max_message: usize) -> WsDecoder {
        WsDecoder {
            max_message,
            fragments: None,
        }
    }

    /// The bytes a partial frame may need buffered at most: its header and payload.
    pub fn max_buffered(&self) -> usize {
        self.max_message.saturating_add(14)
    }

    /// Decodes the next frame of `input`: `Ok(None)` when it is not whole yet.
    pub fn decode(&mut self, input: &[u8]) -> Result<Option<WsStep>, WsError> {
        let Some(frame) = parse_frame(input, self.max_message)? else {
            return Ok(None);
        };
        let message = self.take(frame.fin, frame.opcode, frame.payload)?;
        Ok(Some(WsStep {
            consumed: frame.len,
            message,
        }))
    }

    /// Joins a frame into the message under way, or makes it one.
    fn take(
        &mut self,
        fin: bool,
        opcode: u8,
        payload: Vec<u8>,
    ) -> Result<Option<WsMessage>, WsError> {
        match opcode {
            PING | PONG | CLOSE => {
                if !fin {
                    return Err(WsError::Protocol("a fragmented control frame"));
                }
                Ok(Some(control(opcode, payload)?))
            }
            TEXT | BINARY => {
                if self.fragments.is_some() {
                    return Err(WsError::Protocol("a new message before the last one ended"));
                }
                if fin {
                    return data(opcode, payload).map(Some);
                }
                self.fragments = Some((opcode, payload));
                Ok(None)
            }
            CONTINUATION => {
                let Some((first, mut joined)) = self.fragments.take() else {
                    return Err(WsError::Protocol(
                        "a continuation with no message under way",
                    ));
                };
                if joined.len().saturating_add(payload.len()) > self.max_message {
                    return Err(WsError::TooBig {
                        max: self.max_message,
                    });
                }
                joined.extend_from_slice(&payload);
                if fin {
                    return data(first, joined).map(Some);
                }
                self.fragments = Some((first, joined));
                Ok(None)
            }
            _ => Err(WsError::Protocol("an unknown opcode")),
        }
    }
}

/// A whole data message.
fn data(opcode: u8, payload: Vec<u8>) -> Result<WsMessage, WsError> {
    if opcode == TEXT {
        String::from_utf8(payload)
            .map(WsMessage::Text)
            .map_err(|_| WsError::InvalidUtf8)
    } else {
        Ok(WsMessage::Binary(payload))
    }
}

/// A control frame, checked.
fn control(opcode: u8, payload: Vec<u8>) -> Result<WsMessage, WsError> {
    match opcode {
        PING => Ok(WsMessage::Ping(payload)),
        PONG => Ok(WsMessage::Pong),
        _ => match payload.as_slice() {
            [] => Ok(WsMessage::Close(None)),
            [_] => Err(WsError::Protocol("a close frame of one byte")),
            [hi, lo, reason @ ..] => {
                let code = u16::from_be_bytes([*hi, *lo]);
                if !valid_close_code(code) {
                    return Err(WsError::Protocol("a close code no endpoint may send"));
                }
                if std::str::from_utf8(reason).is_err() {
                    return Err(WsError::InvalidUtf8);
                }
                Ok(WsMessage::Close(Some(code)))
            }
        },
    }
}

/// Codes an endpoint may send in a close frame (RFC 6455 section 7.4, and the IANA registry).
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

/// One client frame: header checked, payload unmasked.
struct RawFrame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
    /// Bytes the frame took.
    len: usize,
}

/// Parses one frame from the front of `input`, or `None` when it is not whole.
fn parse_frame(input: &[u8], max_payload: usize) -> Result<Option<RawFrame>, WsError> {
    let (Some(&b0), Some(&b1)) = (input.first(), input.get(1)) else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(WsError::Protocol(
            "reserved bits set (no extension was agreed)",
        ));
    }
    let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0F);
    if b1 & 0x80 == 0 {
        return Err(WsError::Protocol("an unmasked frame from a client"));
    }
    let (len, mut at) = match b1 & 0x7F {
        126 => match input.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match input.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(b) => (u64::from_be_bytes(b), 10),
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if opcode >= CLOSE && len > 125 {
        return Err(WsError::Protocol("a control frame over 125 bytes"));
    }
    let len = usize::try_from(len)
        .ok()
        .filter(|&n| n <= max_payload)
        .ok_or(WsError::TooBig { max: max_payload })?;
    let Some(mask) = input.get(at..at + 4) else {
        return Ok(None);
    };
    let mask = [mask[0], mask[1], mask[2], mask[3]];
    at += 4;
    let Some(body) = input.get(at..at.saturating_add(len)) else {
        return Ok(None);
    };
    let payload = body
        .iter()
        .zip(mask.iter().cycle())
        .map(|(b, m)| b ^ m)
        .collect();
    Ok(Some(RawFrame {
        fin,
        opcode,
        payload,
        len: at + len,
    }))
}

/// Appends one unmasked server frame (FIN set).
fn encode(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    match payload.len() {
        n @ 0..=125 => out.push(n as u8),
        n @ 126..=0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// A text frame.
pub fn text(payload: &str, out: &mut Vec<u8>) {
    encode(TEXT, payload.as_bytes(), out);
}

/// A pong answering a ping with `payload`.
pub fn pong(payload: &[u8], out: &mut Vec<u8>) {
    encode(PONG, payload, out);
}

/// A close frame with `code` and a short reason.
pub fn close(code: u16, reason: &str, out: &mut Vec<u8>) {
    let mut payload = code.to_be_bytes().to_vec();
    // A control frame carries at most 125 bytes.
    let reason = reason.get(..reason.len().min(123)).unwrap_or_default();
    payload.extend_from_slice(reason.as_bytes());
    encode(CLOSE, &payload, out);
}

/// Each `\n`-terminated line of `lines` (a chat room's output) as one text frame, without its
/// line end; a last line without `\n` too. Bytes that are not UTF-8 are replaced.
pub fn text_lines(lines: &[u8], out: &mut Vec<u8>) {
    for line in lines.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if !line.is_empty() {
            text(&String::from_utf8_lossy(line), out);
        }
    }
}

/// The `Sec-WebSocket-Accept` answer to a client's `Sec-WebSocket-Key`, if the key is one: the
/// base64 of 16 bytes.
pub fn accept_key(key: &str) -> Option<String> {
    let key = key.trim();
    let raw = BASE64.decode(key).ok()?;
    if raw.len() != 16 {
        return None;
    }
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(GUID.as_bytes());
    Some(BASE64.encode(sha.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn client(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut f = vec![b0];
        match payload.len() {
            n @ 0..=125 => f.push(0x80 | n as u8),
            n @ 126..=0xFFFF => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        f
    }

    fn decode_all(d: &mut WsDecoder, mut input: &[u8]) -> Result<Vec<WsMessage>, WsError> {
        let mut out = Vec::new();
        while let Some(step) = d.decode(input)? {
            input = &input[step.consumed..];
            out.extend(step.message);
        }
        assert!(input.is_empty(), "left {input:?}");
        Ok(out)
    }

    #[test]
    fn the_rfcs_example_key_gets_its_answer() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ==").as_deref(),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
        assert_eq!(accept_key("short"), None);
        assert_eq!(accept_key("dGhlIHNhbXBsZQ=="), None, "10 bytes, not 16");
    }

    #[test]
    fn messages_come_whole_in_any_chunking() {
        let mut stream = client(0x81, "hello 世界".as_bytes());
        stream.extend(client(0x01, b"frag"));
        stream.extend(client(0x89, b"ping!"));
        stream.extend(client(0x80, b"mented"));
        stream.extend(client(0x82, &[0u8; 300]));
        stream.extend(client(0x88, &[0x03, 0xe8, b'b', b'y', b'e']));
        let want = vec![
            WsMessage::Text("hello 世界".into()),
            WsMessage::Ping(b"ping!".to_vec()),
            WsMessage::Text("fragmented".into()),
            WsMessage::Binary(vec![0; 300]),
            WsMessage::Close(Some(1000)),
        ];
        assert_eq!(
            decode_all(&mut WsDecoder::new(4096), &stream).unwrap(),
            want
        );
        // Byte by byte, through a buffer as the reactor keeps one.
        let mut d = WsDecoder::new(4096);
        let (mut buf, mut got) = (Vec::new(), Vec::new());
        for b in &stream {
            buf.push(*b);
            while let Some(step) = d.decode(&buf).unwrap() {
                buf.drain(..step.consumed);
                got.extend(step.message);
            }
        }
        assert_eq!(got, want);
    }

    #[test]
    fn each_violation_gets_its_close_code() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (
                vec![0x81, 0x05, b'h', b'e', b'l', b'l', b'o'],
                CLOSE_PROTOCOL,
            ), // unmasked
            (client(0xC1, b"x"), CLOSE_PROTOCOL),        // RSV1
            (client(0x83, b"x"), CLOSE_PROTOCOL),        // opcode 3
            (client(0x8B, b"x"), CLOSE_PROTOCOL),        // opcode 0xB
            (client(0x09, b"x"), CLOSE_PROTOCOL),        // fragmented ping
            (client(0x89, &[0u8; 126]), CLOSE_PROTOCOL), // long ping
            (client(0x80, b"x"), CLOSE_PROTOCOL),        // lone continuation
            (client(0x81, &[0xff, 0xfe]), CLOSE_INVALID_DATA), // not UTF-8
            (client(0x81, &[0u8; 5000]), CLOSE_TOO_BIG),
            (client(0x88, &[0x03]), CLOSE_PROTOCOL),
            (client(0x88, &1005u16.to_be_bytes()), CLOSE_PROTOCOL),
            (client(0x88, &999u16.to_be_bytes()), CLOSE_PROTOCOL),
            (client(0x88, &[0x03, 0xe8, 0xff]), CLOSE_INVALID_DATA),
        ];
        for (frame, code) in cases {
            let e = decode_all(&mut WsDecoder::new(4096), &frame).unwrap_err();
            assert_eq!(e.close_code(), code, "{frame:02x?}: {e}");
        }
        // A message started and a new one begun before it ended.
        let mut two = client(0x01, b"a");
        two.extend(client(0x81, b"b"));
        let e = decode_all(&mut WsDecoder::new(4096), &two).unwrap_err();
        assert_eq!(e.close_code(), CLOSE_PROTOCOL);
        // Fragments that never end pass the message limit, however small each is.
        let mut endless = client(0x01, &[b'a'; 100]);
        for _ in 0..100 {
            endless.extend(client(0x00, &[b'a'; 100]));
        }
        let e = decode_all(&mut WsDecoder::new(4096), &endless).unwrap_err();
        assert_eq!(e.close_code(), CLOSE_TOO_BIG);
        // A 64-bit length that no memory holds, before any of it arrived.
        let mut huge = vec![0x82, 0x80 | 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(
            WsDecoder::new(4096).decode(&huge),
            Err(WsError::TooBig { .. })
        ));
    }

    #[test]
    fn server_frames_encode_every_length() {
        for n in [0usize, 125, 126, 65535, 65536] {
            let mut out = Vec::new();
            text(&"x".repeat(n), &mut out);
            let header = match n {
                0..=125 => 2,
                126..=65535 => 4,
                _ => 10,
            };
            assert_eq!(out.len(), header + n, "{n}");
            assert_eq!(out[0], 0x81);
        }
        let mut out = Vec::new();
        text_lines(b"* welcome guest-1\r\nbob: hi\n", &mut out);
        assert_eq!(
            out,
            [
                &[0x81, 17][..],
                b"* welcome guest-1",
                &[0x81, 7],
                b"bob: hi"
            ]
            .concat()
        );
        let mut out = Vec::new();
        close(1009, &"r".repeat(300), &mut out);
        assert_eq!(out[1] as usize, 125, "a close frame stays a control frame");
    }
}
