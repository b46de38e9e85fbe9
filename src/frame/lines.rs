//! Lines: text ending with `\n` or `\r\n` (the `\r` dropped), at most
//! [`LinesConfig::max_line`] bytes not counting the ending (chat: 4096).
//!
//! An over-long line is reported once, as [`Line::TooLong`], as soon as it is
//! known to be too long (or when its newline arrives, whichever is first); the
//! rest of it up to its newline is then thrown away as it arrives
//! ([`Decoded::Skipped`]), never buffered. The decoder remembers how far it
//! already looked for a newline, so a line arriving in many pieces is scanned
//! once. Lines are bytes: whether they are UTF-8 is for the service to say.

use super::{Decoded, Decoder};

/// The limit of a lines stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinesConfig {
    /// Longest line accepted, in bytes, not counting `\n` or `\r\n`.
    pub max_line: usize,
}

impl Default for LinesConfig {
    /// PROTOCOL.md's chat limit: 4096 bytes.
    fn default() -> Self {
        LinesConfig { max_line: 4096 }
    }
}

/// One item of a lines stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line<'a> {
    /// A line without its ending, borrowed from the input (maybe empty).
    Text(&'a [u8]),
    /// A line longer than the limit; it is dropped, and this is said once.
    TooLong {
        /// Stream offset of the line's first byte.
        offset: u64,
        /// The configured limit it passed.
        limit: usize,
    },
}

/// Why a line cannot be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LineEncodeError {
    /// The text holds a `\n`, which would end the line early.
    #[error("line contains a newline at byte {offset}")]
    ContainsNewline {
        /// Offset of the first `\n` in the text.
        offset: usize,
    },
}

/// Appends `text` and `\n` to `out`. A `\r` at the end of `text` would be
/// read back as part of a `\r\n` ending and dropped; it is the caller's to avoid.
pub fn encode_line(text: &[u8], out: &mut Vec<u8>) -> Result<(), LineEncodeError> {
    if let Some(offset) = memchr::memchr(b'\n', text) {
        return Err(LineEncodeError::ContainsNewline { offset });
    }
    out.reserve(text.len().saturating_add(1));
    out.extend_from_slice(text);
    out.push(b'\n');
    Ok(())
}

/// Decodes lines; see the module documentation.
#[derive(Debug, Clone)]
pub struct LinesDecoder {
    /// The limit.
    max_line: usize,
    /// Bytes at the start of the unconsumed input already known to hold no
    /// `\n`, so that the next call scans only what is new.
    scanned: usize,
    /// Whether we are throwing away the rest of an over-long line.
    skipping: bool,
    /// Bytes consumed so far, so a too-long line can say where it started.
    offset: u64,
}

impl Default for LinesDecoder {
    fn default() -> Self {
        LinesDecoder::new(LinesConfig::default())
    }
}

impl LinesDecoder {
    /// A decoder at the start of a stream.
    pub fn new(config: LinesConfig) -> Self {
        LinesDecoder {
            max_line: config.max_line,
            scanned: 0,
            skipping: false,
            offset: 0,
        }
    }

    /// Decodes at most one line from the start of `input`; see [`Decoder`].
    /// It cannot fail: an over-long line is an item, not an error.
    #[inline]
    pub fn decode<'a>(&mut self, input: &'a [u8]) -> Decoded<Line<'a>> {
        if self.skipping {
            if input.is_empty() {
                return Decoded::Incomplete;
            }
            let consumed = match memchr::memchr(b'\n', input) {
                Some(i) => {
                    self.skipping = false;
                    i.saturating_add(1)
                }
                None => input.len(),
            };
            self.offset = self.offset.saturating_add(consumed as u64);
            return Decoded::Skipped { consumed };
        }
        // A line's `\n` is at most at max_line + 1 (content, then `\r`), so no
        // more than that is ever scanned before the line is known to be too long.
        let window = input.len().min(self.max_line.saturating_add(2));
        let start = self.scanned.min(window);
        let found = input
            .get(start..window)
            .and_then(|w| memchr::memchr(b'\n', w));
        let line_offset = self.offset;
        let too_long = Line::TooLong {
            offset: line_offset,
            limit: self.max_line,
        };
        let consumed = match found {
            Some(j) => {
                let newline = start.saturating_add(j);
                let mut end = newline;
                if let Some(before) = newline.checked_sub(1)
                    && input.get(before) == Some(&b'\r')
                {
                    end = before;
                }
                let consumed = newline.saturating_add(1);
                self.scanned = 0;
                self.offset = self.offset.saturating_add(consumed as u64);
                return match input.get(..end) {
                    Some(text) if end <= self.max_line => Decoded::Item {
                        item: Line::Text(text),
                        consumed,
                    },
                    _ => Decoded::Item {
                        item: too_long,
                        consumed,
                    },
                };
            }
            None => {
                // Only content of exactly max_line bytes followed by a `\r`
                // may still turn out valid at max_line + 1 bytes.
                let could_fit = input.len() <= self.max_line
                    || (input.len() == self.max_line.saturating_add(1)
                        && input.last() == Some(&b'\r'));
                if could_fit {
                    self.scanned = window;
                    return Decoded::Incomplete;
                }
                // Too long: drop what is here, up to the newline if it is here too.
                match input
                    .get(window..)
                    .and_then(|rest| memchr::memchr(b'\n', rest))
                {
                    Some(k) => window.saturating_add(k).saturating_add(1),
                    None => {
                        self.skipping = true;
                        input.len()
                    }
                }
            }
        };
        self.scanned = 0;
        self.offset = self.offset.saturating_add(consumed as u64);
        Decoded::Item {
            item: too_long,
            consumed,
        }
    }

    /// Whether the decoder is throwing away the rest of an over-long line: part-way through a
    /// line whose bytes it consumes as they come.
    pub fn skipping(&self) -> bool {
        self.skipping
    }

    /// See [`Decoder::max_buffered`]: one longest line and the `\r` of its ending.
    pub fn max_buffered(&self) -> usize {
        self.max_line.saturating_add(1)
    }
}

impl Decoder for LinesDecoder {
    type Item<'a> = Line<'a>;
    type Error = std::convert::Infallible;

    #[inline]
    fn decode<'a>(&mut self, input: &'a [u8]) -> Result<Decoded<Line<'a>>, Self::Error> {
        Ok(LinesDecoder::decode(self, input))
    }

    fn max_buffered(&self) -> usize {
        LinesDecoder::max_buffered(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &[u8], consumed: usize) -> Decoded<Line<'_>> {
        Decoded::Item {
            item: Line::Text(s),
            consumed,
        }
    }

    fn small(max_line: usize) -> LinesDecoder {
        LinesDecoder::new(LinesConfig { max_line })
    }

    #[test]
    fn lf_and_crlf() {
        let mut d = LinesDecoder::default();
        let input = b"hi\r\nthere\n\n\r\nx\ry\n";
        assert_eq!(d.decode(input), text(b"hi", 4));
        assert_eq!(d.decode(&input[4..]), text(b"there", 6));
        assert_eq!(d.decode(&input[10..]), text(b"", 1));
        assert_eq!(d.decode(&input[11..]), text(b"", 2));
        // A `\r` that does not end the line stays.
        assert_eq!(d.decode(&input[13..]), text(b"x\ry", 4));
        assert_eq!(d.decode(b""), Decoded::Incomplete);
    }

    #[test]
    fn partial_line_consumes_nothing_and_is_scanned_once() {
        let mut d = LinesDecoder::default();
        assert_eq!(d.decode(b"hel"), Decoded::Incomplete);
        assert_eq!(d.scanned, 3);
        assert_eq!(d.decode(b"hello"), Decoded::Incomplete);
        assert_eq!(d.scanned, 5);
        assert_eq!(d.decode(b"hello\r"), Decoded::Incomplete);
        assert_eq!(d.decode(b"hello\r\nnext"), text(b"hello", 7));
        assert_eq!(d.scanned, 0);
    }

    #[test]
    fn longest_line_fits_with_either_ending() {
        let mut d = small(4);
        assert_eq!(d.max_buffered(), 5);
        assert_eq!(d.decode(b"abcd"), Decoded::Incomplete);
        assert_eq!(d.decode(b"abcd\r"), Decoded::Incomplete);
        assert_eq!(d.decode(b"abcd\r\n"), text(b"abcd", 6));
        assert_eq!(d.decode(b"abcd\n"), text(b"abcd", 5));
    }

    #[test]
    fn over_long_line_with_its_newline_is_reported_and_dropped() {
        let mut d = small(4);
        assert_eq!(
            d.decode(b"abcde\nok\n"),
            Decoded::Item {
                item: Line::TooLong {
                    offset: 0,
                    limit: 4
                },
                consumed: 6
            }
        );
        assert_eq!(d.decode(b"ok\n"), text(b"ok", 3));
        // Content of 5 bytes: `abcd\r` before `\r\n`.
        assert_eq!(
            d.decode(b"abcd\r\r\n"),
            Decoded::Item {
                item: Line::TooLong {
                    offset: 9,
                    limit: 4
                },
                consumed: 7
            }
        );
        // The newline beyond the scanning window is found too.
        assert_eq!(
            d.decode(b"abcdefghij\nz\n"),
            Decoded::Item {
                item: Line::TooLong {
                    offset: 16,
                    limit: 4
                },
                consumed: 11
            }
        );
        assert_eq!(d.decode(b"z\n"), text(b"z", 2));
    }

    #[test]
    fn over_long_line_in_pieces_is_reported_once_and_skipped_unbuffered() {
        let mut d = small(4);
        assert_eq!(d.decode(b"abcd"), Decoded::Incomplete);
        // Five bytes and no `\r` last: too long already.
        assert_eq!(
            d.decode(b"abcde"),
            Decoded::Item {
                item: Line::TooLong {
                    offset: 0,
                    limit: 4
                },
                consumed: 5
            }
        );
        assert_eq!(d.decode(b""), Decoded::Incomplete);
        assert_eq!(d.decode(b"fgh"), Decoded::Skipped { consumed: 3 });
        assert_eq!(d.decode(b"ij\nok\n"), Decoded::Skipped { consumed: 3 });
        assert_eq!(d.decode(b"ok\n"), text(b"ok", 3));
        // `abcd\r` then something other than `\n`.
        assert_eq!(d.decode(b"abcd\r"), Decoded::Incomplete);
        assert_eq!(
            d.decode(b"abcd\rx"),
            Decoded::Item {
                item: Line::TooLong {
                    offset: 14,
                    limit: 4
                },
                consumed: 6
            }
        );
        assert_eq!(d.decode(b"\n"), Decoded::Skipped { consumed: 1 });
    }

    #[test]
    fn zero_limit_takes_only_empty_lines() {
        let mut d = small(0);
        assert_eq!(d.decode(b"\r"), Decoded::Incomplete);
        assert_eq!(d.decode(b"\r\n"), text(b"", 2));
        assert_eq!(
            d.decode(b"a"),
            Decoded::Item {
                item: Line::TooLong {
                    offset: 2,
                    limit: 0
                },
                consumed: 1
            }
        );
    }

    #[test]
    fn encode() {
        let mut out = b"* welcome guest-1\n".to_vec();
        encode_line(b"bob hi", &mut out).unwrap();
        assert_eq!(out, b"* welcome guest-1\nbob hi\n");
        assert_eq!(
            encode_line(b"a\nb", &mut out),
            Err(LineEncodeError::ContainsNewline { offset: 1 })
        );
        assert_eq!(
            LineEncodeError::ContainsNewline { offset: 1 }.to_string(),
            "line contains a newline at byte 1"
        );
        assert_eq!(out.len(), 25);
    }
}
