//! A connection's leftover input: the bytes of a partial item, kept between two reads; and
//! [`Leftover::feed`], the reference loop that drives a [`Decoder`] over a stream arriving in
//! pieces. Idle connections hold no buffer: reads go into one scratch buffer per reactor, and
//! only the leftover of a partial item is copied into the connection.
//!
//! The reactor holds every stream connection's partial request in a `Leftover`, through the
//! byte-holding half of its API ([`append`](Leftover::append), [`consume`](Leftover::consume),
//! [`as_slice`](Leftover::as_slice), [`release`](Leftover::release)); its services drive their
//! own decoders on those bytes, and the server bounds them by its `--max-input` setting, not by
//! [`Decoder::max_buffered`]. [`Leftover::feed`] is the same pattern for a caller that drives a
//! decoder itself (the tests, the fuzz targets and the benches): when nothing is kept, the
//! decoder runs on the new bytes themselves and only the unconsumed tail is copied in;
//! otherwise the new bytes are appended and the decoder runs on the whole. Driven that way the
//! leftover never holds more than the decoder's [`Decoder::max_buffered`] bytes, and it holds
//! none between items.

use super::{Decoded, Decoder};

/// A connection's unconsumed input.
#[derive(Debug, Default, Clone)]
pub struct Leftover {
    /// Bytes received but not consumed by the decoder yet (a partial item).
    buf: Vec<u8>,
}

impl Leftover {
    /// An empty leftover; it allocates nothing until it must keep bytes.
    pub fn new() -> Self {
        Leftover { buf: Vec::new() }
    }

    /// The bytes kept.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf
    }

    /// How many bytes are kept.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Keeps `bytes` after those already kept. No room is reserved beyond them:
    /// a length announced by the peer must not make us allocate ahead of the
    /// bytes it really sent.
    #[inline]
    pub fn append(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Drops the first `n` bytes kept (all of them when `n` is larger).
    #[inline]
    pub fn consume(&mut self, n: usize) {
        // Most calls inside a large item consume nothing: skip the drain.
        if n > 0 {
            self.buf.drain(..n.min(self.buf.len()));
        }
    }

    /// Gives the memory back when nothing is kept, so that an idle connection
    /// holds no buffer.
    #[inline]
    pub fn release(&mut self) {
        if self.buf.is_empty() {
            self.buf = Vec::new();
        }
    }

    /// Drops everything kept and gives the memory back.
    pub fn clear(&mut self) {
        self.buf = Vec::new();
    }

    /// Feeds `chunk` (the bytes just read) through `decoder`, calling
    /// `on_item` for every item, in order, and keeps the unconsumed tail.
    ///
    /// On error the items before it have been handed on and the stream is
    /// over; what the leftover then holds is unspecified.
    #[inline]
    pub fn feed<D, F>(
        &mut self,
        decoder: &mut D,
        chunk: &[u8],
        mut on_item: F,
    ) -> Result<(), D::Error>
    where
        D: Decoder,
        F: for<'a> FnMut(D::Item<'a>),
    {
        if self.buf.is_empty() {
            let consumed = run(decoder, chunk, &mut on_item)?;
            self.append(chunk.get(consumed..).unwrap_or_default());
        } else if self.buf.len().saturating_add(chunk.len()) < decoder.needs() {
            // The frame is still short of the length its prefix announced: nothing to decode.
            self.append(chunk);
        } else {
            self.append(chunk);
            let consumed = run(decoder, &self.buf, &mut on_item)?;
            self.consume(consumed);
        }
        Ok(())
    }
}

/// Decodes items from `input` until the decoder needs more; returns how many
/// bytes were consumed.
#[inline]
fn run<D, F>(decoder: &mut D, input: &[u8], on_item: &mut F) -> Result<usize, D::Error>
where
    D: Decoder,
    F: for<'a> FnMut(D::Item<'a>),
{
    let mut pos = 0usize;
    loop {
        let rest = input.get(pos..).unwrap_or_default();
        match decoder.decode(rest)? {
            Decoded::Incomplete => return Ok(pos),
            Decoded::Item { item, consumed } => {
                on_item(item);
                pos = pos.saturating_add(consumed).min(input.len());
            }
            Decoded::Skipped { consumed } => pos = pos.saturating_add(consumed).min(input.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{LengthDecoder, Line, LinesDecoder};

    #[test]
    fn keeps_only_the_tail_and_empties_between_frames() {
        let mut d = LengthDecoder::default();
        let mut left = Leftover::new();
        let mut got: Vec<Vec<u8>> = Vec::new();
        left.feed(&mut d, b"\x02\x00\x00\x00ab\x03\x00", |f| {
            got.push(f.to_vec())
        })
        .unwrap();
        assert_eq!((got.len(), left.as_slice()), (1, &b"\x03\x00"[..]));
        left.feed(&mut d, b"\x00\x00c", |f| got.push(f.to_vec()))
            .unwrap();
        assert_eq!(left.len(), 5);
        left.feed(&mut d, b"de", |f| got.push(f.to_vec())).unwrap();
        assert!(left.is_empty());
        assert_eq!(got, [b"ab".to_vec(), b"cde".to_vec()]);
        left.release();
        assert_eq!(left.buf.capacity(), 0);
    }

    #[test]
    fn holds_bytes_for_a_caller_that_drives_its_own_decoder() {
        let mut left = Leftover::new();
        left.append(b"");
        assert_eq!(left.buf.capacity(), 0, "nothing kept, nothing allocated");
        left.append(b"abc");
        left.append(b"def");
        left.consume(0);
        assert_eq!(left.as_slice(), b"abcdef");
        left.consume(2);
        left.release();
        assert_eq!((left.as_slice(), left.len()), (&b"cdef"[..], 4));
        left.consume(99);
        assert!(left.is_empty());
        left.release();
        assert_eq!(left.buf.capacity(), 0);
        left.append(b"xy");
        left.clear();
        assert!(left.is_empty());
        assert_eq!(left.buf.capacity(), 0);
    }

    #[test]
    fn stops_at_the_first_error_after_the_items_before_it() {
        let mut d = LengthDecoder::new(crate::frame::LengthConfig {
            max_frame: 2,
            ..Default::default()
        });
        let mut got = 0;
        let e = Leftover::new().feed(&mut d, b"\x01\x00\x00\x00a\x09\x00\x00\x00", |_| got += 1);
        assert_eq!((got, e.is_err()), (1, true));
    }

    #[test]
    fn skipped_bytes_are_not_kept() {
        let mut d = LinesDecoder::new(crate::frame::LinesConfig { max_line: 2 });
        let mut left = Leftover::new();
        let mut got = Vec::new();
        left.feed(&mut d, b"abcdef", |l| got.push(l.to_owned_line()))
            .unwrap();
        left.feed(&mut d, b"ghi", |l| got.push(l.to_owned_line()))
            .unwrap();
        assert!(left.is_empty());
        left.feed(&mut d, b"j\nok\n", |l| got.push(l.to_owned_line()))
            .unwrap();
        assert_eq!(got, [None, Some(b"ok".to_vec())]);
    }

    trait ToOwnedLine {
        fn to_owned_line(&self) -> Option<Vec<u8>>;
    }
    impl ToOwnedLine for Line<'_> {
        fn to_owned_line(&self) -> Option<Vec<u8>> {
            match self {
                Line::Text(t) => Some(t.to_vec()),
                Line::TooLong { .. } => None,
            }
        }
    }
}
