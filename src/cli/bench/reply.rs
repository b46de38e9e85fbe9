//! Reply parsers of `socklab bench`: given the bytes a server sent back, how many replies are
//! complete. Sans-IO and incremental: a reply may arrive in any number of pieces, several
//! replies may arrive in one read.
//!
//! - raw: every reply is exactly as long as the request (an echo);
//! - line: every `\n` ends one reply (echo of a line, or redis answering `+PONG\r\n`);
//! - frame: the files protocol (PROTOCOL.md, "Framed services"): a 4-byte little-endian header
//!   length, a JSON header whose `size` is the length of the body that follows, the body.

use serde::Deserialize;

use crate::frame::header::typed::{Val, walk_object};

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
    /// Reading a header of `len` bytes (those of it that came in earlier reads are held in
    /// [`FrameReplies::held`]).
    Header {
        /// Announced header length.
        len: usize,
    },
    /// Skipping `left` more body bytes; `ok` is the reply's verdict.
    Body {
        /// Body bytes still to come.
        left: u64,
        /// Whether the reply's header said `ok: true`.
        ok: bool,
    },
}

/// A frame-mode parser: where it is, and the part of a header split across reads. A header
/// that a read brings whole is read where it lies; nothing is allocated for a reply.
#[derive(Debug)]
pub struct FrameReplies {
    /// Where the parser is.
    state: FrameState,
    /// The first part of a header split across reads (empty otherwise); its buffer is kept.
    held: Vec<u8>,
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
    Frame(FrameReplies),
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
        ReplyParser::Frame(FrameReplies {
            state: FrameState::Length {
                bytes: [0; 4],
                have: 0,
            },
            held: Vec::new(),
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
            ReplyParser::Frame(frames) => {
                while !input.is_empty() {
                    input = feed_frame(frames, input, &mut done)?;
                }
                // A reply with an empty body is complete as soon as its header is.
                finish_empty_body(&mut frames.state, &mut done);
            }
        }
        Ok(done)
    }
}

/// Advances a frame parser over a prefix of `input`; returns the rest.
fn feed_frame<'a>(
    frames: &mut FrameReplies,
    input: &'a [u8],
    done: &mut Completed,
) -> Result<&'a [u8], ReplyError> {
    let state = &mut frames.state;
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
                *state = FrameState::Header { len: ulen };
            }
            Ok(rest)
        }
        FrameState::Header { len } => {
            let len = *len;
            let held = &mut frames.held;
            let (header, rest) = if held.is_empty() && input.len() >= len {
                input.split_at(len)
            } else {
                let take = len.saturating_sub(held.len()).min(input.len());
                let (head, rest) = input.split_at(take);
                held.extend_from_slice(head);
                if held.len() < len {
                    return Ok(rest);
                }
                (held.as_slice(), rest)
            };
            let (ok, size) = read_header(header)?;
            held.clear();
            *state = FrameState::Body { left: size, ok };
            finish_empty_body(state, done);
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

/// A response header's verdict (`ok`) and body length (`size`). The flat header of a
/// successful reply is read by the scanner of the server's own fast path (`frame::header`), with
/// no map and no allocation, so that a frame-mode run spends on its replies about what a raw one
/// does; any other header (an error's nested object, an escape, a duplicate or mistyped `ok` or
/// `size`) by serde_json, which also says what is wrong with it.
fn read_header(raw: &[u8]) -> Result<(bool, u64), ReplyError> {
    if let Some(found) = std::str::from_utf8(raw).ok().and_then(flat_header) {
        return Ok(found);
    }
    let header: ResponseHeader =
        serde_json::from_slice(raw).map_err(|e| ReplyError::Header(format!("{e}")))?;
    Ok((header.ok, header.size))
}

/// `ok` and `size` of a flat header, or `None` for the strict reading.
fn flat_header(raw: &str) -> Option<(bool, u64)> {
    let (mut ok, mut size) = (None, None);
    walk_object(raw, |key, val, text| {
        match (key, val) {
            ("ok", Val::Scalar) if ok.is_none() => ok = Some(text == "true"),
            ("size", Val::U64(n)) if size.is_none() => size = Some(n),
            ("ok" | "size", _) => return None,
            _ => {}
        }
        Some(())
    })?;
    Some((ok.unwrap_or(false), size.unwrap_or(0)))
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
    fn the_flat_reading_of_a_header_agrees_with_serde_json() {
        let strict = |raw: &str| {
            serde_json::from_str::<ResponseHeader>(raw)
                .map(|h| (h.ok, h.size))
                .ok()
        };
        for raw in [
            r#"{"ok":true,"cmd":"ping","size":0}"#,
            r#"{"ok":true,"cmd":"get","id":7,"size":123456789,"md5":"0cc175b9c0f1b6a831c399e269772661"}"#,
            r#"{"ok":false,"cmd":null,"error":{"code":"bad_request","message":"m"},"size":0}"#,
            r#" { "size" : 5 , "ok" : true } "#,
            r#"{"ok":true}"#,
            r#"{"size":3}"#,
            r#"{}"#,
            r#"{"ok":"true","size":0}"#,
            r#"{"ok":1,"size":0}"#,
            r#"{"ok":true,"size":-1}"#,
            r#"{"ok":true,"size":1.0}"#,
            r#"{"ok":true,"size":007}"#,
            r#"{"ok":true,"size":18446744073709551616}"#,
            r#"{"ok":true,"ok":false,"size":0}"#,
            r#"{"ok":true,"size":1,"size":2}"#,
            r#"{"ok":true,"cmd":"a\"b","size":2}"#,
            r#"{"ok":true,"size":0"#,
            r#"[true,0]"#,
            r#"{"ok":null,"size":null}"#,
        ] {
            assert_eq!(read_header(raw.as_bytes()).ok(), strict(raw), "{raw}");
        }
        // The replies of a run are read on the fast path.
        assert_eq!(
            flat_header(r#"{"ok":true,"cmd":"ping","size":0}"#),
            Some((true, 0))
        );
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
