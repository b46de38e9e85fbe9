//! Length-prefixed frames: a length field of 1, 2, 4 or 8 bytes, big- or
//! little-endian, optionally counting its own bytes, then that many bytes of
//! payload.
//!
//! The default ([`LengthConfig::default`]) is PROTOCOL.md's prefix: 4 bytes
//! little-endian, the bytes of Python's `struct.pack('i', n)`, not counting
//! itself. Whether a length is acceptable is decided from the prefix alone,
//! before any byte of the payload has to be kept.

use super::{Decoded, Decoder};

/// How many bytes the length field takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Width {
    /// One byte (lengths up to 255).
    One,
    /// Two bytes (lengths up to 65,535).
    Two,
    /// Four bytes.
    Four,
    /// Eight bytes.
    Eight,
}

impl Width {
    /// Every width, for tests and benches that cover them all.
    pub const ALL: [Width; 4] = [Width::One, Width::Two, Width::Four, Width::Eight];

    /// The number of bytes of the field.
    pub const fn bytes(self) -> usize {
        match self {
            Width::One => 1,
            Width::Two => 2,
            Width::Four => 4,
            Width::Eight => 8,
        }
    }

    /// The largest value the field can hold.
    pub const fn max_value(self) -> u64 {
        match self {
            Width::One => u8::MAX as u64,
            Width::Two => u16::MAX as u64,
            Width::Four => u32::MAX as u64,
            Width::Eight => u64::MAX,
        }
    }
}

/// The byte order of the length field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endian {
    /// Most significant byte first (network order).
    Big,
    /// Least significant byte first (x86, ARM, Python's `struct.pack('i')`).
    Little,
}

/// The shape of a length-prefixed stream and its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LengthConfig {
    /// Size of the length field.
    pub width: Width,
    /// Byte order of the length field.
    pub endian: Endian,
    /// Whether the length counts the field's own bytes (then a length smaller
    /// than the field is an error).
    pub includes_prefix: bool,
    /// The largest payload accepted, in bytes, not counting the prefix.
    pub max_frame: usize,
}

impl Default for LengthConfig {
    /// PROTOCOL.md's prefix: 4 bytes little-endian, exclusive, with the same
    /// 8 MiB limit as tokio-util's `LengthDelimitedCodec`.
    fn default() -> Self {
        LengthConfig {
            width: Width::Four,
            endian: Endian::Little,
            includes_prefix: false,
            max_frame: 8 * 1024 * 1024,
        }
    }
}

/// Why a length-prefixed stream cannot be decoded any further.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LengthError {
    /// The payload the prefix announces is over the configured maximum.
    #[error("frame at byte {offset}: payload length {length} exceeds the maximum of {max} bytes")]
    TooLong {
        /// Stream offset of the frame's first byte.
        offset: u64,
        /// The payload length the prefix announces (prefix bytes excluded).
        length: u64,
        /// The configured maximum.
        max: usize,
    },
    /// An inclusive length smaller than the prefix that it counts.
    #[error("frame at byte {offset}: length {length} is smaller than its own {width}-byte prefix")]
    ShorterThanPrefix {
        /// Stream offset of the frame's first byte.
        offset: u64,
        /// The value of the length field.
        length: u64,
        /// Size of the length field in bytes.
        width: usize,
    },
}

/// Why a payload cannot be framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LengthEncodeError {
    /// The payload is over the configured maximum.
    #[error("payload of {length} bytes exceeds the maximum of {max} bytes")]
    TooLong {
        /// The payload's length.
        length: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The length (with the prefix, if counted) does not fit in the field.
    #[error("length {length} does not fit in a {width}-byte field")]
    DoesNotFit {
        /// The payload's length.
        length: usize,
        /// Size of the length field in bytes.
        width: usize,
    },
}

impl LengthConfig {
    /// The value of the length field at the start of `input`, if all of it is there.
    fn read_field(&self, input: &[u8]) -> Option<u64> {
        fn arr<const N: usize>(input: &[u8]) -> Option<[u8; N]> {
            input.get(..N)?.try_into().ok()
        }
        Some(match (self.width, self.endian) {
            (Width::One, _) => u64::from(*input.first()?),
            (Width::Two, Endian::Big) => u64::from(u16::from_be_bytes(arr(input)?)),
            (Width::Two, Endian::Little) => u64::from(u16::from_le_bytes(arr(input)?)),
            (Width::Four, Endian::Big) => u64::from(u32::from_be_bytes(arr(input)?)),
            (Width::Four, Endian::Little) => u64::from(u32::from_le_bytes(arr(input)?)),
            (Width::Eight, Endian::Big) => u64::from_be_bytes(arr(input)?),
            (Width::Eight, Endian::Little) => u64::from_le_bytes(arr(input)?),
        })
    }

    /// Appends the length field for a payload of `len` bytes to `out`, so that
    /// a large payload can follow without being copied into a frame first.
    pub fn encode_prefix(&self, len: usize, out: &mut Vec<u8>) -> Result<(), LengthEncodeError> {
        if len > self.max_frame {
            return Err(LengthEncodeError::TooLong {
                length: len,
                max: self.max_frame,
            });
        }
        let width = self.width.bytes();
        let does_not_fit = LengthEncodeError::DoesNotFit { length: len, width };
        let field = if self.includes_prefix {
            len.checked_add(width)
        } else {
            Some(len)
        };
        let field = field
            .and_then(|f| u64::try_from(f).ok())
            .filter(|f| *f <= self.width.max_value())
            .ok_or(does_not_fit)?;
        // The filter above makes every narrowing below lossless.
        match (self.width, self.endian) {
            (Width::One, _) => out.push(field as u8),
            (Width::Two, Endian::Big) => out.extend_from_slice(&(field as u16).to_be_bytes()),
            (Width::Two, Endian::Little) => out.extend_from_slice(&(field as u16).to_le_bytes()),
            (Width::Four, Endian::Big) => out.extend_from_slice(&(field as u32).to_be_bytes()),
            (Width::Four, Endian::Little) => out.extend_from_slice(&(field as u32).to_le_bytes()),
            (Width::Eight, Endian::Big) => out.extend_from_slice(&field.to_be_bytes()),
            (Width::Eight, Endian::Little) => out.extend_from_slice(&field.to_le_bytes()),
        }
        Ok(())
    }

    /// Appends one whole frame (prefix, then `payload`) to `out`.
    pub fn encode(&self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), LengthEncodeError> {
        self.encode_prefix(payload.len(), out)?;
        out.extend_from_slice(payload);
        Ok(())
    }
}

/// Decodes length-prefixed frames; each item is one whole payload, borrowed
/// from the input.
#[derive(Debug, Clone)]
pub struct LengthDecoder {
    /// The stream's shape and limit.
    config: LengthConfig,
    /// Bytes consumed so far, so errors can say where the bad frame starts.
    offset: u64,
    /// The whole length (prefix and payload) of a frame whose prefix has been read but whose
    /// payload has not all arrived; 0 otherwise. See [`Decoder::needs`].
    want: usize,
}

impl Default for LengthDecoder {
    fn default() -> Self {
        LengthDecoder::new(LengthConfig::default())
    }
}

impl LengthDecoder {
    /// A decoder at the start of a stream.
    pub fn new(config: LengthConfig) -> Self {
        LengthDecoder {
            config,
            offset: 0,
            want: 0,
        }
    }

    /// The configuration this decoder was made with.
    pub fn config(&self) -> &LengthConfig {
        &self.config
    }

    /// Decodes at most one frame from the start of `input`; see [`Decoder`].
    #[inline]
    pub fn decode<'a>(&mut self, input: &'a [u8]) -> Result<Decoded<&'a [u8]>, LengthError> {
        let Some(field) = self.config.read_field(input) else {
            return Ok(Decoded::Incomplete);
        };
        let width = self.config.width.bytes();
        let length = if self.config.includes_prefix {
            // usize -> u64 is lossless on every platform Rust supports.
            field
                .checked_sub(width as u64)
                .ok_or(LengthError::ShorterThanPrefix {
                    offset: self.offset,
                    length: field,
                    width,
                })?
        } else {
            field
        };
        let too_long = LengthError::TooLong {
            offset: self.offset,
            length,
            max: self.config.max_frame,
        };
        let payload_len = usize::try_from(length)
            .ok()
            .filter(|len| *len <= self.config.max_frame)
            .ok_or(too_long)?;
        let total = payload_len.checked_add(width).ok_or(too_long)?;
        match input.get(width..total) {
            Some(payload) => {
                self.offset = self.offset.saturating_add(total as u64);
                self.want = 0;
                Ok(Decoded::Item {
                    item: payload,
                    consumed: total,
                })
            }
            None => {
                self.want = total;
                Ok(Decoded::Incomplete)
            }
        }
    }

    /// See [`Decoder::max_buffered`]: one prefix and one largest payload.
    pub fn max_buffered(&self) -> usize {
        self.config
            .width
            .bytes()
            .saturating_add(self.config.max_frame)
    }
}

impl Decoder for LengthDecoder {
    type Item<'a> = &'a [u8];
    type Error = LengthError;

    #[inline]
    fn decode<'a>(&mut self, input: &'a [u8]) -> Result<Decoded<&'a [u8]>, LengthError> {
        LengthDecoder::decode(self, input)
    }

    fn max_buffered(&self) -> usize {
        LengthDecoder::max_buffered(self)
    }

    fn needs(&self) -> usize {
        self.want
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(width: Width, endian: Endian, includes_prefix: bool, max_frame: usize) -> LengthConfig {
        LengthConfig {
            width,
            endian,
            includes_prefix,
            max_frame,
        }
    }

    #[test]
    fn default_is_python_struct_pack_i() {
        // struct.pack('i', 5) == b'\x05\x00\x00\x00'
        let mut d = LengthDecoder::default();
        let input = b"\x05\x00\x00\x00hello\x01";
        assert_eq!(
            d.decode(input),
            Ok(Decoded::Item {
                item: &b"hello"[..],
                consumed: 9
            })
        );
        let mut out = Vec::new();
        LengthConfig::default().encode(b"hello", &mut out).unwrap();
        assert_eq!(out, b"\x05\x00\x00\x00hello");
    }

    #[test]
    fn every_width_and_order() {
        let cases: [(Width, Endian, &[u8]); 8] = [
            (Width::One, Endian::Big, b"\x03abc"),
            (Width::One, Endian::Little, b"\x03abc"),
            (Width::Two, Endian::Big, b"\x00\x03abc"),
            (Width::Two, Endian::Little, b"\x03\x00abc"),
            (Width::Four, Endian::Big, b"\x00\x00\x00\x03abc"),
            (Width::Four, Endian::Little, b"\x03\x00\x00\x00abc"),
            (
                Width::Eight,
                Endian::Big,
                b"\x00\x00\x00\x00\x00\x00\x00\x03abc",
            ),
            (
                Width::Eight,
                Endian::Little,
                b"\x03\x00\x00\x00\x00\x00\x00\x00abc",
            ),
        ];
        for (width, endian, bytes) in cases {
            let c = cfg(width, endian, false, 100);
            let mut d = LengthDecoder::new(c);
            assert_eq!(
                d.decode(bytes),
                Ok(Decoded::Item {
                    item: &b"abc"[..],
                    consumed: bytes.len()
                })
            );
            let mut out = Vec::new();
            c.encode(b"abc", &mut out).unwrap();
            assert_eq!(out, bytes, "{width:?} {endian:?}");
        }
    }

    #[test]
    fn inclusive_length_counts_the_prefix() {
        let c = cfg(Width::Two, Endian::Big, true, 100);
        let mut d = LengthDecoder::new(c);
        assert_eq!(
            d.decode(b"\x00\x05abc"),
            Ok(Decoded::Item {
                item: &b"abc"[..],
                consumed: 5
            })
        );
        assert_eq!(
            d.decode(b"\x00\x02"),
            Ok(Decoded::Item {
                item: &b""[..],
                consumed: 2
            })
        );
        let mut out = Vec::new();
        c.encode(b"abc", &mut out).unwrap();
        assert_eq!(out, b"\x00\x05abc");
    }

    #[test]
    fn partial_input_is_incomplete_and_consumes_nothing() {
        let mut d = LengthDecoder::default();
        let frame = b"\x03\x00\x00\x00abc";
        for end in 0..frame.len() {
            assert_eq!(d.decode(&frame[..end]), Ok(Decoded::Incomplete), "{end}");
        }
        assert_eq!(
            d.decode(b"\x00\x00\x00\x00"),
            Ok(Decoded::Item {
                item: &b""[..],
                consumed: 4
            })
        );
    }

    #[test]
    fn too_long_is_decided_from_the_prefix_alone() {
        let mut d = LengthDecoder::new(cfg(Width::Four, Endian::Little, false, 10));
        assert_eq!(d.decode(b"\x0a\x00\x00\x00"), Ok(Decoded::Incomplete));
        assert_eq!(
            d.decode(b"\x0b\x00\x00\x00"),
            Err(LengthError::TooLong {
                offset: 0,
                length: 11,
                max: 10
            })
        );
        // The offset is the bad frame's place in the stream.
        let mut d = LengthDecoder::new(cfg(Width::One, Endian::Big, false, 10));
        assert_eq!(
            d.decode(b"\x01x"),
            Ok(Decoded::Item {
                item: &b"x"[..],
                consumed: 2
            })
        );
        assert_eq!(
            d.decode(b"\xff"),
            Err(LengthError::TooLong {
                offset: 2,
                length: 255,
                max: 10
            })
        );
        // With no limit to speak of, a length whose frame would not fit in usize.
        let mut d = LengthDecoder::new(cfg(Width::Eight, Endian::Big, false, usize::MAX));
        let got = d.decode(&[0xff; 8]);
        assert!(
            matches!(got, Err(LengthError::TooLong { offset: 0, .. })),
            "{got:?}"
        );
        // Counting the prefix, the same bytes make a frame of exactly u64::MAX bytes.
        let mut d = LengthDecoder::new(cfg(Width::Eight, Endian::Big, true, usize::MAX));
        assert_eq!(d.decode(&[0xff; 8]), Ok(Decoded::Incomplete));
    }

    #[test]
    fn inclusive_length_shorter_than_prefix() {
        let mut d = LengthDecoder::new(cfg(Width::Four, Endian::Big, true, 10));
        assert_eq!(
            d.decode(b"\x00\x00\x00\x03"),
            Err(LengthError::ShorterThanPrefix {
                offset: 0,
                length: 3,
                width: 4
            })
        );
        let msg = d.decode(b"\x00\x00\x00\x03").unwrap_err().to_string();
        assert_eq!(
            msg,
            "frame at byte 0: length 3 is smaller than its own 4-byte prefix"
        );
    }

    #[test]
    fn encode_errors() {
        let c = cfg(Width::One, Endian::Big, false, 1000);
        let mut out = Vec::new();
        assert_eq!(
            c.encode(&[0; 256], &mut out),
            Err(LengthEncodeError::DoesNotFit {
                length: 256,
                width: 1
            })
        );
        let c = cfg(Width::One, Endian::Big, true, 1000);
        assert_eq!(
            c.encode(&[0; 255], &mut out),
            Err(LengthEncodeError::DoesNotFit {
                length: 255,
                width: 1
            })
        );
        let c = cfg(Width::Four, Endian::Big, false, 3);
        assert_eq!(
            c.encode(b"abcd", &mut out),
            Err(LengthEncodeError::TooLong { length: 4, max: 3 })
        );
        assert!(out.is_empty());
    }

    #[test]
    fn max_buffered_is_prefix_plus_max_frame() {
        assert_eq!(
            LengthDecoder::new(cfg(Width::Two, Endian::Big, false, 10)).max_buffered(),
            12
        );
        assert_eq!(
            LengthDecoder::new(cfg(Width::Eight, Endian::Big, false, usize::MAX)).max_buffered(),
            usize::MAX
        );
    }
}
