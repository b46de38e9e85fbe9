//! Sans-IO codecs: length-prefixed, header+body (`files` frames) and lines.
//!
//! Map of the module:
//! - [`length`]: frames behind a length field of 1, 2, 4 or 8 bytes, either
//!   byte order, optionally counting its own bytes ([`LengthDecoder`],
//!   [`LengthConfig::encode`]). The default is PROTOCOL.md's prefix: 4 bytes,
//!   little-endian.
//! - [`header`]: the `files` frames of PROTOCOL.md (4-byte little-endian `H`,
//!   `H` bytes of JSON object, `size` bytes of body). The body is streamed in
//!   chunks borrowed from the caller's input, never held whole
//!   ([`HeaderBodyDecoder`], [`encode_header`]).
//! - [`lines`]: `\n` or `\r\n` terminated lines with a maximum length; an
//!   over-long line is reported once and skipped without being buffered
//!   ([`LinesDecoder`], [`encode_line`]).
//! - [`proxy`]: the PROXY protocol header (v1, v2) a load balancer sends first.
//! - [`websocket`]: RFC 6455 frames (server side): the handshake's key, client frames
//!   into messages with the RFC's close codes for every violation, server frames out.
//! - [`leftover`]: a connection's leftover input ([`Leftover`]): the buffer
//!   the reactor keeps each stream connection's partial request in, and
//!   [`Leftover::feed`], the reference way to drive any [`Decoder`] over a
//!   stream that arrives in pieces.
//! - `fuzz` (hidden): the bodies of the fuzz targets, shared by `fuzz/` and
//!   `tests/frame_fuzz.rs`.
//!
//! # How a decoder is driven
//!
//! [`Leftover::feed`] calls [`Decoder::decode`] on the leftover followed by
//! the new bytes (or on the new bytes themselves when nothing is left over),
//! again and again, advancing by each answer's `consumed`, until the answer is
//! [`Decoded::Incomplete`]; then it keeps only the unconsumed tail, which is
//! never longer than [`Decoder::max_buffered`]. The tests, the fuzz targets
//! and the benches drive the codecs that way.
//!
//! The reactor reads into one scratch buffer per reactor and keeps each
//! connection's partial request in a [`Leftover`] the same way (the service
//! runs on the scratch slice when nothing is left over, and only the
//! unconsumed tail is copied); but there the services drive their own
//! decoders, and the leftover is bounded by the server's `--max-input`
//! setting, not by [`Decoder::max_buffered`].
//!
//! Decoders never copy input, never allocate per byte, and remember how far
//! they already looked, so a frame that arrives in N pieces costs O(its size)
//! in total. Nothing in here touches a socket or a clock, and no input can make
//! it panic.

pub mod header;
pub mod leftover;
pub mod length;
pub mod lines;
pub mod proxy;
pub(crate) mod resp;
pub mod websocket;

#[doc(hidden)]
pub mod fuzz;

pub use header::{
    Header, HeaderBodyConfig, HeaderBodyDecoder, HeaderEncodeError, HeaderError, Part,
    encode_header,
};
pub use leftover::Leftover;
pub use length::{Endian, LengthConfig, LengthDecoder, LengthEncodeError, LengthError, Width};
pub use lines::{Line, LineEncodeError, LinesConfig, LinesDecoder, encode_line};

/// One answer of a decoder to one call of [`Decoder::decode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<T> {
    /// The input holds no complete item. Nothing is consumed: call again with
    /// the same bytes followed by more. The decoder may remember how far it
    /// already looked, counted from the start of the input it was given.
    Incomplete,
    /// An item, and how many bytes from the start of the input it used. The
    /// caller drops those bytes before the next call. `consumed` is 0 only for
    /// items that carry no bytes (such as [`Part::BodyEnd`]); the decoder's
    /// state moved on, so the next call answers something else.
    Item {
        /// What was decoded; it may borrow from the input.
        item: T,
        /// How many bytes of the input the item used (at most the input's length).
        consumed: usize,
    },
    /// Bytes thrown away with nothing to hand on (the rest of an over-long
    /// line, already reported once). The caller drops them and calls again.
    Skipped {
        /// How many bytes of the input to drop (at least 1).
        consumed: usize,
    },
}

impl<T> Decoded<T> {
    /// How many bytes of the input this answer used.
    pub fn consumed(&self) -> usize {
        match self {
            Decoded::Incomplete => 0,
            Decoded::Item { consumed, .. } | Decoded::Skipped { consumed } => *consumed,
        }
    }
}

/// An incremental, sans-IO decoder over a byte stream.
///
/// The contract: `decode` is called on the unconsumed input (bytes dropped as
/// each answer says, new bytes appended at the end). An error is final for the
/// stream: the decoder's state is left as it was, so calling again answers the
/// same error, and the connection should be closed.
pub trait Decoder {
    /// What the decoder yields; it may borrow from the input.
    type Item<'a>;
    /// Why the stream cannot be decoded any further.
    type Error: std::error::Error + 'static;

    /// Decodes at most one item from the start of `input`.
    fn decode<'a>(&mut self, input: &'a [u8]) -> Result<Decoded<Self::Item<'a>>, Self::Error>;

    /// The most unconsumed input the caller may ever have to keep between two
    /// calls (after an [`Decoded::Incomplete`]): the size its leftover buffer
    /// must be allowed to reach, and never needs to pass.
    fn max_buffered(&self) -> usize;

    /// After an [`Decoded::Incomplete`], how many bytes the unconsumed input must hold before
    /// `decode` can yield anything (a frame whose length is known); 0 when the decoder cannot
    /// say. A hint: a caller that waits for that many bytes saves the calls that could only
    /// answer `Incomplete`. (Not a size to allocate: it comes from the peer.)
    fn needs(&self) -> usize {
        0
    }
}

/// Any decoder's error, for callers that hold decoders of several kinds.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FrameError {
    /// From the length-prefixed decoder.
    #[error(transparent)]
    Length(#[from] LengthError),
    /// From the header+body decoder.
    #[error(transparent)]
    Header(#[from] HeaderError),
}
