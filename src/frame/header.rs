//! Header+body frames: the `files` frames of PROTOCOL.md ("Frames").
//!
//! ```text
//! | H: 4 bytes little-endian | header: H bytes, UTF-8 JSON object | body: size bytes |
//! ```
//!
//! [`HeaderBodyDecoder`] yields, for each frame, one [`Part::Header`] (the
//! parsed JSON object and the body length it announces), then zero or more
//! [`Part::BodyChunk`]s (as much of the body as the input holds, borrowed from
//! it, never copied), then exactly one [`Part::BodyEnd`] (consuming nothing),
//! also for an empty body. Body bytes are never kept by the caller, so a
//! header that announces a terabyte costs no more memory than one that
//! announces a byte: [`Decoder::max_buffered`] is the prefix plus the largest
//! header.
//!
//! A malformed frame (bad `H`, a header that is not UTF-8 JSON, not an object,
//! or with a bad `size`) is a [`HeaderError`]; when the header was a JSON
//! object the error carries the request's `id` ([`HeaderError::request_id`])
//! so the `bad_frame` response can copy it. A header that is a JSON object
//! with a usable `size` but some other unusable field (a duplicate key, a
//! number out of range: see `strict`) is a [`Header`] with its `problem` set,
//! so that the frame's end is known and the service can refuse the request
//! alone.
//!
//! [`encode_header`] writes a response (or request) header with its `size`
//! set, so that the body can be appended (or written from a file) separately.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::{Map, Value};

use super::{Decoded, Decoder};

mod strict;
pub(crate) mod typed;

pub use strict::{BadField, BadReason};
pub use typed::{Request, Val};

/// The fast path alone: `raw` as a typed request, or `None` (the strict path decides). Public
/// for the framing benches.
pub fn parse_typed(raw: &str) -> Option<Request<'_>> {
    typed::parse(raw)
}

/// The strict path alone: `raw` as a map of its fields (and the unusable ones), as every header
/// was read before the fast path. Public for the framing benches.
pub fn parse_strict(raw: &str) -> Option<(Map<String, Value>, Vec<BadField>)> {
    match strict::parse(raw) {
        Ok(strict::Parsed::Object { fields, bad }) => Some((fields, bad)),
        _ => None,
    }
}

/// Bytes of the `H` field.
const PREFIX: usize = 4;

/// Limits and dialect of a header+body stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderBodyConfig {
    /// Largest header accepted, in bytes (`H`); PROTOCOL.md's default is 64 KiB.
    pub max_header: usize,
    /// Whether `filesize` may stand in for `size`: true for requests (the
    /// classic upload client sends it), false for responses, where `filesize`
    /// is the length of a file that is *not* the body.
    pub accept_filesize: bool,
    /// Whether plain headers take the fast path into a typed `Request` (`typed.rs`): true for
    /// requests; false for responses, whose every field a client reads from the map anyway
    /// (the fast path would only make it parse each header twice).
    pub typed: bool,
}

impl Default for HeaderBodyConfig {
    /// The server's side: requests, 64 KiB headers.
    fn default() -> Self {
        HeaderBodyConfig {
            max_header: 64 * 1024,
            accept_filesize: true,
            typed: true,
        }
    }
}

impl HeaderBodyConfig {
    /// The client's side: responses, where `filesize` does not announce a body.
    pub fn responses() -> Self {
        HeaderBodyConfig {
            accept_filesize: false,
            typed: false,
            ..HeaderBodyConfig::default()
        }
    }

    /// The largest `H` that is accepted (`H` itself is a `u32`).
    fn max_h(&self) -> usize {
        self.max_header.min(u32::MAX as usize)
    }

    /// Appends a frame's prefix and header to `out`: `header`'s fields with
    /// `"size": body_len` added at the end. The `body_len` bytes of body are
    /// for the caller to append (or to write from a file) afterwards, so a
    /// large body is never copied into a frame.
    ///
    /// `header` must serialize as a map or struct (a `serde_json::Value`
    /// object, a `#[derive(Serialize)]` struct) and must not have a `size`
    /// field of its own. On error `out` is left as it was.
    pub fn encode_header<T: Serialize + ?Sized>(
        &self,
        header: &T,
        body_len: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), HeaderEncodeError> {
        /// The caller's fields followed by `size`.
        #[derive(Serialize)]
        struct WithSize<'t, T: ?Sized> {
            /// The caller's fields.
            #[serde(flatten)]
            fields: &'t T,
            /// The body length.
            size: u64,
        }
        let start = out.len();
        out.extend_from_slice(&[0; PREFIX]);
        if let Err(e) = serde_json::to_writer(
            &mut *out,
            &WithSize {
                fields: header,
                size: body_len,
            },
        ) {
            out.truncate(start);
            return Err(HeaderEncodeError::NotAnObject {
                message: e.to_string(),
            });
        }
        let h = out.len().saturating_sub(start).saturating_sub(PREFIX);
        let field = u32::try_from(h).ok().filter(|_| h <= self.max_h());
        match (field, out.get_mut(start..start.saturating_add(PREFIX))) {
            (Some(field), Some(slot)) => {
                slot.copy_from_slice(&field.to_le_bytes());
                Ok(())
            }
            _ => {
                out.truncate(start);
                Err(HeaderEncodeError::TooLong {
                    length: h,
                    max: self.max_h(),
                })
            }
        }
    }
}

/// [`HeaderBodyConfig::encode_header`] with the default 64 KiB limit.
pub fn encode_header<T: Serialize + ?Sized>(
    header: &T,
    body_len: u64,
    out: &mut Vec<u8>,
) -> Result<(), HeaderEncodeError> {
    HeaderBodyConfig::default().encode_header(header, body_len, out)
}

/// Why a header cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderEncodeError {
    /// The value does not serialize as a JSON object (or its serializer failed).
    #[error("header does not serialize as a JSON object: {message}")]
    NotAnObject {
        /// serde_json's explanation.
        message: String,
    },
    /// The serialized header is longer than the limit.
    #[error("header of {length} bytes exceeds the maximum of {max}")]
    TooLong {
        /// Length of the serialized header.
        length: usize,
        /// The limit it passed.
        max: usize,
    },
}

/// A frame's parsed header.
#[derive(Debug, Clone, PartialEq)]
pub struct Header<'a> {
    /// The header's text as it came, borrowed from the input, for a service
    /// that wants to deserialize it into a typed struct borrowing `&'a str`s.
    pub raw: &'a str,
    /// The header's fields.
    pub fields: Fields<'a>,
    /// The body length: `size`, or `filesize` where accepted; 0 if neither.
    pub size: u64,
    /// The first field that is present but unusable (a duplicate key, a number out of range),
    /// which is then left out of `fields`: the frame's end is known, the request is not.
    pub problem: Option<Box<BadField>>,
}

/// A header's fields: typed and borrowed (the fast path, `typed.rs`), or the whole map (the
/// strict path, taken by every header the fast path is not sure of).
#[derive(Debug, Clone, PartialEq)]
pub enum Fields<'a> {
    Typed(Request<'a>),
    Map(Map<String, Value>),
}

/// A field as a request reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field<'h> {
    Missing,
    Null,
    Str(&'h str),
    /// Present, and neither a string nor `null`.
    Other,
}

impl<'a> Header<'a> {
    /// The request's `id` as JSON text, to be copied into its response: the text that came
    /// (fast path) or the value written again (strict path).
    pub fn id_json(&self) -> Option<Cow<'a, str>> {
        match &self.fields {
            Fields::Typed(r) => r.id.map(Cow::Borrowed),
            Fields::Map(m) => m
                .get("id")
                .and_then(|v| serde_json::to_string(v).ok())
                .map(Cow::Owned),
        }
    }

    /// The request's `id` as a value (for tests and logs; responses copy `id_json`).
    pub fn id_value(&self) -> Option<Value> {
        self.id_json().and_then(|id| serde_json::from_str(&id).ok())
    }

    /// The `cmd` field, when it is a string.
    pub fn cmd(&self) -> Option<&str> {
        match self.field("cmd") {
            Field::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A top-level field that a request reads as a string: `cmd`, `filename`, `md5`.
    pub fn field(&self, name: &str) -> Field<'_> {
        match &self.fields {
            Fields::Typed(r) => {
                let v = match name {
                    "cmd" => &r.cmd,
                    "filename" => &r.filename,
                    "md5" => &r.md5,
                    // The fast path keeps no other field a request reads as a string.
                    _ => return Field::Missing,
                };
                match v {
                    None => Field::Missing,
                    Some(Val::Str(s)) => Field::Str(s),
                    Some(Val::Null) => Field::Null,
                    Some(Val::U64(_) | Val::Scalar) => Field::Other,
                }
            }
            Fields::Map(m) => match m.get(name) {
                None => Field::Missing,
                Some(Value::Null) => Field::Null,
                Some(Value::String(s)) => Field::Str(s),
                Some(_) => Field::Other,
            },
        }
    }

    /// Every field as a map (the strict path's, or the header parsed again): for the rare
    /// request that reads more than the fast path keeps (`exec`).
    pub fn map(&self) -> Cow<'_, Map<String, Value>> {
        match &self.fields {
            Fields::Map(m) => Cow::Borrowed(m),
            Fields::Typed(_) => match strict::parse(self.raw) {
                Ok(strict::Parsed::Object { fields, .. }) => Cow::Owned(fields),
                _ => Cow::Owned(Map::new()),
            },
        }
    }

    /// Deserializes the header text again into a typed value that may borrow
    /// from the input.
    pub fn parse<T: serde::Deserialize<'a>>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.raw)
    }
}

/// One item of a header+body stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Part<'a> {
    /// A frame's header; its body follows.
    Header(Header<'a>),
    /// The next bytes of the body (never empty), borrowed from the input.
    BodyChunk(&'a [u8]),
    /// The body is complete (consumes nothing); the next frame may follow.
    BodyEnd,
}

/// A header's bytes as text. `str::from_utf8` checks a short header a byte at a time (its
/// word-at-a-time path needs 16 aligned bytes): 1.6 % of a `files` ping's server CPU (perf).
/// An ASCII header, which is what clients send but for non-ASCII file names, passes a
/// word-at-a-time check instead; any other is validated in full.
fn header_text(raw: &[u8]) -> Result<&str, std::str::Utf8Error> {
    if raw.is_ascii() {
        // SAFETY: every ASCII byte string is valid UTF-8.
        Ok(unsafe { std::str::from_utf8_unchecked(raw) })
    } else {
        std::str::from_utf8(raw)
    }
}

/// Why a header+body stream cannot be decoded any further (a `bad_frame`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HeaderError {
    /// `H` is 0.
    #[error("frame at byte {offset}: header length 0 (must be 1 to {max})")]
    EmptyHeader {
        /// Stream offset of the frame's first byte.
        offset: u64,
        /// The configured maximum header length.
        max: usize,
    },
    /// `H` is over the limit.
    #[error("frame at byte {offset}: header length {length} exceeds the maximum of {max}")]
    HeaderTooLong {
        /// Stream offset of the frame's first byte.
        offset: u64,
        /// The value of `H`.
        length: u32,
        /// The configured maximum header length.
        max: usize,
    },
    /// The header is not UTF-8.
    #[error(
        "frame at byte {offset}: header is not UTF-8 (bad byte at header offset {valid_up_to})"
    )]
    NotUtf8 {
        /// Stream offset of the frame's first byte.
        offset: u64,
        /// Offset in the header of the first byte that is not valid UTF-8.
        valid_up_to: usize,
    },
    /// The header is not JSON.
    #[error("frame at byte {offset}: header is not JSON: {message}")]
    BadJson {
        /// Stream offset of the frame's first byte.
        offset: u64,
        /// 1-based line of the header where parsing failed.
        line: usize,
        /// 1-based column of the header where parsing failed.
        column: usize,
        /// serde_json's explanation (it includes line and column).
        message: String,
    },
    /// The header is JSON but not an object.
    #[error("frame at byte {offset}: header is a JSON {found}, not an object")]
    NotObject {
        /// Stream offset of the frame's first byte.
        offset: u64,
        /// What it is instead: "array", "string", "number", "boolean" or "null".
        found: &'static str,
    },
    /// `size` (or `filesize`) is present but not a non-negative integer that fits in a u64.
    #[error("frame at byte {offset}: `{field}` is not a non-negative integer: {value}")]
    BadSize {
        /// Stream offset of the frame's first byte.
        offset: u64,
        /// `"size"` or `"filesize"`.
        field: &'static str,
        /// The value found.
        value: Value,
        /// The request's `id`, if it has one.
        id: Option<Value>,
    },
    /// `size` (or `filesize`) is present but unusable (a duplicate key, a number out of
    /// range): the body's length, and so the frame's end, cannot be known.
    #[error("frame at byte {offset}: {problem}, so the body's length is unknown")]
    UnknownSize {
        /// Stream offset of the frame's first byte.
        offset: u64,
        /// What is wrong with the field.
        problem: BadField,
        /// The request's `id`, if it has a usable one.
        id: Option<Value>,
    },
    /// `size` and `filesize` are both present and differ.
    #[error("frame at byte {offset}: `size` {size} and `filesize` {filesize} differ")]
    SizeConflict {
        /// Stream offset of the frame's first byte.
        offset: u64,
        /// The `size` field.
        size: u64,
        /// The `filesize` field.
        filesize: u64,
        /// The request's `id`, if it has one.
        id: Option<Value>,
    },
}

impl HeaderError {
    /// The `id` of the request whose header was a JSON object but malformed,
    /// for the `bad_frame` response.
    pub fn request_id(&self) -> Option<&Value> {
        match self {
            HeaderError::BadSize { id, .. }
            | HeaderError::SizeConflict { id, .. }
            | HeaderError::UnknownSize { id, .. } => id.as_ref(),
            _ => None,
        }
    }

    /// Stream offset of the bad frame's first byte.
    pub fn offset(&self) -> u64 {
        match self {
            HeaderError::EmptyHeader { offset, .. }
            | HeaderError::HeaderTooLong { offset, .. }
            | HeaderError::NotUtf8 { offset, .. }
            | HeaderError::BadJson { offset, .. }
            | HeaderError::NotObject { offset, .. }
            | HeaderError::BadSize { offset, .. }
            | HeaderError::SizeConflict { offset, .. }
            | HeaderError::UnknownSize { offset, .. } => *offset,
        }
    }
}

/// Where the decoder is in the current frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for a prefix and header.
    Header,
    /// Inside a body with this many bytes still to come (never 0).
    Body {
        /// Bytes of body not yet handed out.
        remaining: u64,
    },
    /// The body is complete; [`Part::BodyEnd`] is next.
    End,
}

/// Decodes header+body frames; see the module documentation.
#[derive(Debug, Clone)]
pub struct HeaderBodyDecoder {
    /// Limits and dialect.
    config: HeaderBodyConfig,
    /// Where we are in the current frame.
    state: State,
    /// Bytes consumed so far, so errors can say where the bad frame starts.
    offset: u64,
    /// Stream offset of the current frame's first byte.
    frame_start: u64,
}

impl Default for HeaderBodyDecoder {
    fn default() -> Self {
        HeaderBodyDecoder::new(HeaderBodyConfig::default())
    }
}

impl HeaderBodyDecoder {
    /// A decoder at the start of a stream.
    pub fn new(config: HeaderBodyConfig) -> Self {
        HeaderBodyDecoder {
            config,
            state: State::Header,
            offset: 0,
            frame_start: 0,
        }
    }

    /// The configuration this decoder was made with.
    pub fn config(&self) -> &HeaderBodyConfig {
        &self.config
    }

    /// Body bytes of the current frame still to come (0 between frames).
    pub fn body_remaining(&self) -> u64 {
        match self.state {
            State::Body { remaining } => remaining,
            State::Header | State::End => 0,
        }
    }

    /// Decodes at most one part from the start of `input`; see [`Decoder`].
    #[inline]
    pub fn decode<'a>(&mut self, input: &'a [u8]) -> Result<Decoded<Part<'a>>, HeaderError> {
        match self.state {
            State::Header => self.decode_header(input),
            State::Body { remaining } => {
                if input.is_empty() {
                    return Ok(Decoded::Incomplete);
                }
                let n = usize::try_from(remaining).map_or(input.len(), |r| r.min(input.len()));
                let Some(chunk) = input.get(..n) else {
                    return Ok(Decoded::Incomplete);
                };
                // n <= remaining, so this never goes below zero.
                let left = remaining.saturating_sub(n as u64);
                self.state = if left == 0 {
                    State::End
                } else {
                    State::Body { remaining: left }
                };
                self.offset = self.offset.saturating_add(n as u64);
                Ok(Decoded::Item {
                    item: Part::BodyChunk(chunk),
                    consumed: n,
                })
            }
            State::End => {
                self.state = State::Header;
                Ok(Decoded::Item {
                    item: Part::BodyEnd,
                    consumed: 0,
                })
            }
        }
    }

    /// The [`State::Header`] case of [`HeaderBodyDecoder::decode`].
    fn decode_header<'a>(&mut self, input: &'a [u8]) -> Result<Decoded<Part<'a>>, HeaderError> {
        let offset = self.offset;
        let Some(prefix) = input
            .get(..PREFIX)
            .and_then(|p| <[u8; PREFIX]>::try_from(p).ok())
        else {
            return Ok(Decoded::Incomplete);
        };
        let length = u32::from_le_bytes(prefix);
        let max = self.config.max_h();
        if length == 0 {
            return Err(HeaderError::EmptyHeader { offset, max });
        }
        // A `let … else` rather than `ok_or`: the error is only built when it is returned (built
        // eagerly, it was also dropped on every header: a call, on the path of every request).
        let Some(end) = usize::try_from(length)
            .ok()
            .filter(|h| *h <= max)
            .and_then(|h| h.checked_add(PREFIX))
        else {
            return Err(HeaderError::HeaderTooLong {
                offset,
                length,
                max,
            });
        };
        let Some(raw) = input.get(PREFIX..end) else {
            return Ok(Decoded::Incomplete);
        };
        let raw = header_text(raw).map_err(|e| HeaderError::NotUtf8 {
            offset,
            valid_up_to: e.valid_up_to(),
        })?;
        if self.config.typed
            && let Some(req) = typed::parse(raw)
        {
            let size = match (
                req.size,
                req.filesize.filter(|_| self.config.accept_filesize),
            ) {
                (None, None) => 0,
                (Some(n), None) | (None, Some(n)) => n,
                (Some(a), Some(b)) if a == b => a,
                // They differ: the strict path says so, with the request's id.
                (Some(_), Some(_)) => return self.strict_header(raw, offset, end),
            };
            return Ok(self.header_item(raw, Fields::Typed(req), size, None, offset, end));
        }
        self.strict_header(raw, offset, end)
    }

    /// A header the fast path was not sure of, read by the strict path.
    fn strict_header<'a>(
        &mut self,
        raw: &'a str,
        offset: u64,
        end: usize,
    ) -> Result<Decoded<Part<'a>>, HeaderError> {
        let parsed = strict::parse(raw).map_err(|e| HeaderError::BadJson {
            offset,
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })?;
        let (fields, bad) = match parsed {
            strict::Parsed::Object { fields, bad } => (fields, bad),
            strict::Parsed::Other(found) => return Err(HeaderError::NotObject { offset, found }),
        };
        let accept_filesize = self.config.accept_filesize;
        if let Some(problem) = bad
            .iter()
            .find(|b| b.key == "size" || (accept_filesize && b.key == "filesize"))
        {
            return Err(HeaderError::UnknownSize {
                offset,
                problem: problem.clone(),
                id: fields.get("id").cloned(),
            });
        }
        let size = body_size(&fields, accept_filesize, offset)?;
        let problem = bad.into_iter().next().map(Box::new);
        Ok(self.header_item(raw, Fields::Map(fields), size, problem, offset, end))
    }

    /// The header is read: the body of `size` bytes follows.
    fn header_item<'a>(
        &mut self,
        raw: &'a str,
        fields: Fields<'a>,
        size: u64,
        problem: Option<Box<BadField>>,
        offset: u64,
        end: usize,
    ) -> Decoded<Part<'a>> {
        self.frame_start = offset;
        self.offset = offset.saturating_add(end as u64);
        self.state = if size == 0 {
            State::End
        } else {
            State::Body { remaining: size }
        };
        Decoded::Item {
            item: Part::Header(Header {
                raw,
                fields,
                size,
                problem,
            }),
            consumed: end,
        }
    }

    /// Stream offset of the first byte of the frame being decoded (or last decoded).
    pub fn frame_start(&self) -> u64 {
        self.frame_start
    }

    /// See [`Decoder::max_buffered`]: one prefix and one largest header; body
    /// bytes are always consumed as they arrive.
    pub fn max_buffered(&self) -> usize {
        PREFIX.saturating_add(self.config.max_h())
    }
}

impl Decoder for HeaderBodyDecoder {
    type Item<'a> = Part<'a>;
    type Error = HeaderError;

    #[inline]
    fn decode<'a>(&mut self, input: &'a [u8]) -> Result<Decoded<Part<'a>>, HeaderError> {
        HeaderBodyDecoder::decode(self, input)
    }

    fn max_buffered(&self) -> usize {
        HeaderBodyDecoder::max_buffered(self)
    }
}

/// The body length a header announces (PROTOCOL.md: `size`, or in requests
/// `filesize`; both present must agree; absent means 0).
fn body_size(
    fields: &Map<String, Value>,
    accept_filesize: bool,
    offset: u64,
) -> Result<u64, HeaderError> {
    let id = || fields.get("id").cloned();
    let read = |field: &'static str, value: &Value| {
        value.as_u64().ok_or_else(|| HeaderError::BadSize {
            offset,
            field,
            value: value.clone(),
            id: id(),
        })
    };
    let size = fields.get("size");
    let filesize = if accept_filesize {
        fields.get("filesize")
    } else {
        None
    };
    match (size, filesize) {
        (None, None) => Ok(0),
        (Some(size), None) => read("size", size),
        (None, Some(filesize)) => read("filesize", filesize),
        (Some(size), Some(filesize)) => {
            let (size, filesize) = (read("size", size)?, read("filesize", filesize)?);
            if size == filesize {
                Ok(size)
            } else {
                Err(HeaderError::SizeConflict {
                    offset,
                    size,
                    filesize,
                    id: id(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests;
