//! Reply parsers of `socklab bench`: given the bytes a server sent back, how many replies are
//! complete. Sans-IO and incremental: a reply may arrive in any number of pieces, several
//! replies may arrive in one read.
//!
//! - raw: every reply is exactly as long as the request (an echo);
//! - line: every `\n` ends one reply (echo of a line, or redis answering `+PONG\r\n`);
//! - frame: the files protocol (PROTOCOL.md, "Framed services"): a 4-byte little-endian header
//!   length, a JSON header whose `size` is the length of the body that follows, the body.

use serde::Deserialize;

/// The largest response header accepted in frame mode (the server's default limit).
pub const MAX_FRAME_HEADER: usize = 64 * 1024;

/// What one batch of bytes completed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Completed {
    /// Replies completed (successful or not).
    pub replies: u64,
    /// Of those, replies that say the request failed (frame mode: `"ok": false`).
    pub failed: u64,
}

/// Why the bytes from the server cannot be replies.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplyError {
    #[error("the server sent a frame header length of {0} bytes (1..={MAX_FRAME_HEADER} expected)")]
    HeaderLength(u32),
    #[error("the server sent a frame header that is not a JSON object with ok and size: {0}")]
    Header(String),
}

/// The fields of a response header that matter here.
#[derive(Debug, Deserialize)]
struct ResponseHeader {
    /// Whether the request succeeded.
    #[serde(default)]
    ok: bool,
    /// Length of the body that follows.
    #[serde(default)]
    size: u64,
}

/// Where a frame-mode parser is inside the current reply.
#[derive(Debug)]
pub enum FrameState {
    /// Reading the 4-byte header length; holds the bytes seen so far.
    Length {
        /// The length bytes received so far.
        bytes: [u8; 4],
        /// How many of them.
        have: usize,
    },
    /// Reading a header of `len` bytes into `buf`.
    Header {
        /// Announced header length.
        len: usize,
        /// Header bytes received so far.
        buf: Vec<u8>,
    },
    /// Skipping `left` more body bytes; `ok` is the reply's verdict.
    Body {
        /// Body bytes still to come.
        left: u64,
        /// Whether the reply's header said `ok: true`.
        ok: bool,
    },
}

/// An incremental reply parser for one connection.
#[derive(Debug)]
pub enum ReplyParser {
    /// Fixed-size replies.
    Raw {
        /// Length of one reply.
        size: u64,
        /// Bytes of the current, incomplete reply received so far.
        got: u64,
    },
    /// One reply per `\n`.
    Line,
    /// Files-protocol response frames.
    Frame(FrameState),
}

impl ReplyParser {
    /// A parser for fixed-size replies of `size` bytes (at least 1).
    pub fn raw(size: u64) -> Self {
        ReplyParser::Raw {
            size: size.max(1),
            got: 0,
        }
    }

    /// A parser for line replies.
    pub fn line() -> Self {
        ReplyParser::Line
    }

    /// A parser for files-protocol response frames.
    pub fn frame() -> Self {
        ReplyParser::Frame(FrameState::Length {
            bytes: [0; 4],
            have: 0,
        })
    }

    /// Feeds the next bytes from the server; returns the replies they complete.
    pub fn feed(&mut self, mut input: &[u8]) -> Result<Completed, ReplyError> {
        let mut done = Completed::default();
        match self {
            ReplyParser::Raw { size, got } => {
                let total = got.saturating_add(input.len() as u64);
                done.replies = total / *size;
                *got = total % *size;
            }
            ReplyParser::Line => {
                done.replies = memchr::memchr_iter(b'\n', input).count() as u64;
            }
            ReplyParser::Frame(state) => {
                while !input.is_empty() {
                    input = feed_frame(state, input, &mut done)?;
                }
                // A reply with an empty body is complete as soon as its header is.
                finish_empty_body(state, &mut done);
            }
        }
        Ok(done)
    }
}

/// Advances a frame parser over a prefix of `input`; returns the rest.
fn feed_frame<'a>(
    state: &mut FrameState,
    input: &'a [u8],
    done: &mut Completed,
) -> Result<&'a [u8], ReplyError> {
    match state {
        FrameState::Length { bytes, have } => {
            let want = 4usize.saturating_sub(*have);
            let take = want.min(input.len());
            let (head, rest) = input.split_at(take);
            for (slot, b) in bytes.iter_mut().skip(*have).zip(head) {
                *slot = *b;
            }
            *have = have.saturating_add(take);
            if *have >= 4 {
                let len = u32::from_le_bytes(*bytes);
                let ulen = usize::try_from(len).unwrap_or(usize::MAX);
                if ulen == 0 || ulen > MAX_FRAME_HEADER {
                    return Err(ReplyError::HeaderLength(len));
                }
                *state = FrameState::Header {
                    len: ulen,
                    buf: Vec::with_capacity(ulen.min(256)),
                };
            }
            Ok(rest)
        }
        FrameState::Header { len, buf } => {
            let want = len.saturating_sub(buf.len());
            let take = want.min(input.len());
            let (head, rest) = input.split_at(take);
            buf.extend_from_slice(head);
            if buf.len() >= *len {
                let header: ResponseHeader =
                    serde_json::from_slice(buf).map_err(|e| ReplyError::Header(format!("{e}")))?;
                *state = FrameState::Body {
                    left: header.size,
                    ok: header.ok,
                };
                finish_empty_body(state, done);
            }
            Ok(rest)
        }
        FrameState::Body { left, .. } => {
            let take = usize::try_from(*left)
                .unwrap_or(usize::MAX)
                .min(input.len());
            *left = left.saturating_sub(take as u64);
            finish_empty_body(state, done);
            Ok(input.get(take..).unwrap_or_default())
        }
    }
}

/// Completes the current reply if its body has been read entirely.
fn finish_empty_body(state: &mut FrameState, done: &mut Completed) {
    if let FrameState::Body { left: 0, ok } = *state {
        done.replies = done.replies.saturating_add(1);
        if !ok {
            done.failed = done.failed.saturating_add(1);
        }
        *state = FrameState::Length {
            bytes: [0; 4],
            have: 0,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(header: &str, body: &[u8]) -> Vec<u8> {
        let mut v = (header.len() as u32).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn raw_counts_whole_replies_across_reads() {
        let mut p = ReplyParser::raw(4);
        assert_eq!(p.feed(b"abc").unwrap().replies, 0);
        assert_eq!(p.feed(b"dabcdab").unwrap().replies, 2);
        assert_eq!(p.feed(b"cd").unwrap().replies, 1);
    }

    #[test]
    fn line_counts_newlines() {
        let mut p = ReplyParser::line();
        assert_eq!(p.feed(b"+PONG\r\n+PO").unwrap().replies, 1);
        assert_eq!(p.feed(b"NG\r\n+PONG\r\n").unwrap().replies, 2);
    }

    #[test]
    fn frames_split_anywhere_are_counted_once_each() {
        let mut stream = frame(r#"{"ok":true,"cmd":"ping","size":0}"#, b"");
        stream.extend(frame(r#"{"ok":true,"cmd":"echo","size":3}"#, b"xyz"));
        stream.extend(frame(
            r#"{"ok":false,"cmd":null,"error":{"code":"bad_request","message":"m"}}"#,
            b"",
        ));
        for cut in 0..stream.len() {
            for cut2 in cut..stream.len() {
                let mut p = ReplyParser::frame();
                let mut total = Completed::default();
                for piece in [&stream[..cut], &stream[cut..cut2], &stream[cut2..]] {
                    let d = p.feed(piece).unwrap();
                    total.replies += d.replies;
                    total.failed += d.failed;
                }
                assert_eq!(
                    total,
                    Completed {
                        replies: 3,
                        failed: 1
                    },
                    "cuts {cut} {cut2}"
                );
            }
        }
    }

    #[test]
    fn bad_frames_are_errors() {
        let mut p = ReplyParser::frame();
        assert_eq!(p.feed(&[0, 0, 0, 0]), Err(ReplyError::HeaderLength(0)));
        let mut p = ReplyParser::frame();
        assert!(p.feed(&frame("[1]", b"")).is_err());
        let mut p = ReplyParser::frame();
        assert!(p.feed(&u32::MAX.to_le_bytes()).is_err());
    }
}
