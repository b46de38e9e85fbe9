//! The bodies of the codec fuzz targets, and the harness they share with the
//! property tests.
//!
//! `fuzz/fuzz_targets/*.rs` (cargo-fuzz, nightly) and `tests/frame_fuzz.rs`
//! (bounded random inputs under `cargo test`, stable) both call
//! [`fuzz_length`], [`fuzz_header`] and [`fuzz_lines`]. Each reads a
//! configuration and a chunking seed from the first bytes of its input,
//! decodes the rest whole, in seeded random pieces and one byte at a time
//! through a [`Leftover`], and panics if the three disagree, if the leftover
//! ever passes [`Decoder::max_buffered`], if a decoder stops making progress,
//! or if what was decoded does not rebuild the input it came from.
//! Not a stable API: hidden from the docs.

use serde_json::{Map, Value};

use super::{
    Decoder, Endian, HeaderBodyConfig, HeaderBodyDecoder, Leftover, LengthConfig, LengthDecoder,
    Line, LinesConfig, LinesDecoder, Part, Width,
};

/// An owned decoder item, with body chunks merged so that chunkings compare equal.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A length-prefixed payload.
    Frame(Vec<u8>),
    /// A header+body frame's header.
    Header {
        /// The header text.
        raw: String,
        /// Its fields.
        fields: Map<String, Value>,
        /// The announced body length.
        size: u64,
    },
    /// Body bytes (consecutive chunks merged).
    Body(Vec<u8>),
    /// End of a body.
    BodyEnd,
    /// A line's text.
    Line(Vec<u8>),
    /// An over-long line.
    TooLong {
        /// Where it started.
        offset: u64,
        /// The limit.
        limit: usize,
    },
}

/// The fast path (`header/typed.rs`) takes a header only when the strict path reads it the same
/// way: the same `cmd`, `filename`, `md5`, `size`, `filesize` and `id`, and nothing unusable.
pub fn check_paths_agree(raw: &str) {
    use super::header::{Val, parse_strict, parse_typed};
    let Some(req) = parse_typed(raw) else { return };
    let Some((map, bad)) = parse_strict(raw) else {
        panic!("the fast path took a header that is not an object: {raw:?}");
    };
    assert!(
        bad.is_empty(),
        "the fast path took unusable fields {bad:?}: {raw:?}"
    );
    let same = |name: &str, typed: &Option<Val<'_>>| match (typed, map.get(name)) {
        (None, None) => true,
        (Some(Val::Str(s)), Some(Value::String(t))) => s == t,
        (Some(Val::Null), Some(Value::Null)) => true,
        (Some(Val::U64(n)), Some(v)) => v.as_u64() == Some(*n),
        (Some(Val::Scalar), Some(v)) => {
            matches!(v, Value::Bool(_) | Value::Number(_)) && v.as_u64().is_none()
        }
        _ => false,
    };
    for (name, typed) in [
        ("cmd", &req.cmd),
        ("filename", &req.filename),
        ("md5", &req.md5),
    ] {
        assert!(same(name, typed), "`{name}` read differently: {raw:?}");
    }
    assert_eq!(
        req.size,
        map.get("size").and_then(Value::as_u64),
        "size: {raw:?}"
    );
    assert_eq!(
        req.filesize,
        map.get("filesize").and_then(Value::as_u64),
        "filesize: {raw:?}"
    );
    let id = req.id.map(|t| serde_json::from_str::<Value>(t).ok());
    assert_eq!(id, map.get("id").map(|v| Some(v.clone())), "id: {raw:?}");
}

/// Turns a decoder's item into [`Event`]s.
pub trait ToEvent {
    /// Appends `self` to `events`, merging body chunks.
    fn push_to(self, events: &mut Vec<Event>);
}

impl ToEvent for &[u8] {
    fn push_to(self, events: &mut Vec<Event>) {
        events.push(Event::Frame(self.to_vec()));
    }
}

impl ToEvent for Part<'_> {
    fn push_to(self, events: &mut Vec<Event>) {
        match self {
            Part::Header(h) => events.push(Event::Header {
                raw: {
                    check_paths_agree(h.raw);
                    h.raw.to_owned()
                },
                fields: h.map().into_owned(),
                size: h.size,
            }),
            Part::BodyChunk(chunk) => {
                assert!(!chunk.is_empty(), "empty body chunk");
                match events.last_mut() {
                    Some(Event::Body(body)) => body.extend_from_slice(chunk),
                    _ => events.push(Event::Body(chunk.to_vec())),
                }
            }
            Part::BodyEnd => events.push(Event::BodyEnd),
        }
    }
}

impl ToEvent for Line<'_> {
    fn push_to(self, events: &mut Vec<Event>) {
        events.push(match self {
            Line::Text(text) => Event::Line(text.to_vec()),
            Line::TooLong { offset, limit } => Event::TooLong { offset, limit },
        });
    }
}

/// What a decoder made of a whole stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The items, in order.
    pub events: Vec<Event>,
    /// The error that ended the stream, as `Debug` text.
    pub error: Option<String>,
    /// Bytes left unconsumed at the end (a partial item); 0 after an error.
    pub leftover: usize,
}

/// Feeds `stream` cut into pieces of the given lengths (the last piece takes
/// what remains) through `decoder` as a reactor would, checking after every
/// piece that the leftover stays within [`Decoder::max_buffered`].
pub fn drive<D>(
    mut decoder: D,
    stream: &[u8],
    piece_lengths: impl IntoIterator<Item = usize>,
) -> Outcome
where
    D: Decoder,
    for<'a> D::Item<'a>: ToEvent,
{
    let limit = decoder.max_buffered();
    let mut leftover = Leftover::new();
    let mut events = Vec::new();
    // Every item but a body's end consumes at least one byte, and a body's
    // end follows a header of at least five: more items means a decoder loop.
    let most_items = stream.len().saturating_mul(2).saturating_add(2);
    let mut items = 0usize;
    let mut rest = stream;
    let mut pieces = piece_lengths.into_iter();
    while !rest.is_empty() {
        let n = pieces.next().unwrap_or(rest.len()).clamp(1, rest.len());
        let (piece, tail) = rest.split_at(n);
        rest = tail;
        let fed = leftover.feed(&mut decoder, piece, |item| {
            items += 1;
            assert!(items <= most_items, "decoder makes no progress");
            item.push_to(&mut events);
        });
        if let Err(e) = fed {
            // What the leftover holds after an error is unspecified: not compared.
            return Outcome {
                events,
                error: Some(format!("{e:?}")),
                leftover: 0,
            };
        }
        assert!(
            leftover.len() <= limit,
            "leftover {} > max_buffered {limit}",
            leftover.len()
        );
    }
    Outcome {
        events,
        error: None,
        leftover: leftover.len(),
    }
}

/// Piece lengths from a seed: mostly short pieces, some long, some of one byte.
pub fn pieces(seed: u64, total: usize) -> Vec<usize> {
    let mut state = seed;
    let mut out = Vec::new();
    let mut sum = 0usize;
    while sum < total {
        let r = splitmix(&mut state);
        let n = match r % 4 {
            0 => 1,
            1 => (r >> 8) as usize % 8 + 1,
            2 => (r >> 8) as usize % 64 + 1,
            _ => (r >> 8) as usize % 2048 + 1,
        };
        out.push(n);
        sum = sum.saturating_add(n);
    }
    out
}

/// The splitmix64 generator: small, seedable, good enough to cut streams.
pub fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Decodes `stream` whole, in seeded pieces and byte by byte; asserts the
/// three agree and returns the outcome.
pub fn agree<D>(make: impl Fn() -> D, stream: &[u8], seed: u64) -> Outcome
where
    D: Decoder,
    for<'a> D::Item<'a>: ToEvent,
{
    let whole = drive(make(), stream, [stream.len()]);
    let cut = drive(make(), stream, pieces(seed, stream.len()));
    assert_eq!(whole, cut, "whole vs pieces (seed {seed})");
    let bytes = drive(make(), stream, std::iter::repeat(1));
    assert_eq!(whole, bytes, "whole vs bytes");
    whole
}

/// Splits a fuzz input into a configuration byte, a seed byte and the stream.
fn split(data: &[u8]) -> Option<(u8, u64, &[u8])> {
    let (&config, rest) = data.split_first()?;
    let (&seed, stream) = rest.split_first()?;
    Some((config, u64::from(seed), stream))
}

/// The length-prefixed decoder's configuration picked by a fuzz input's first byte.
pub fn length_config(byte: u8) -> LengthConfig {
    let max_frames = [0, 1, 7, 300, 65536, 8 << 20, usize::MAX, 3];
    LengthConfig {
        width: Width::ALL[usize::from(byte & 3)],
        endian: if byte & 4 == 0 {
            Endian::Little
        } else {
            Endian::Big
        },
        includes_prefix: byte & 8 != 0,
        max_frame: max_frames[usize::from(byte >> 4) % max_frames.len()],
    }
}

/// Fuzz target: the length-prefixed decoder. The frames decoded, encoded
/// again, must be the bytes they came from.
pub fn fuzz_length(data: &[u8]) {
    let Some((config, seed, stream)) = split(data) else {
        return;
    };
    let config = length_config(config);
    let outcome = agree(|| LengthDecoder::new(config), stream, seed);
    let mut encoded = Vec::new();
    for event in &outcome.events {
        let Event::Frame(payload) = event else {
            panic!("{event:?}")
        };
        assert!(payload.len() <= config.max_frame);
        config
            .encode(payload, &mut encoded)
            .expect("a decoded frame encodes");
    }
    assert_eq!(
        stream.get(..encoded.len()),
        Some(&encoded[..]),
        "frames do not rebuild the stream"
    );
    if outcome.error.is_none() {
        assert_eq!(encoded.len() + outcome.leftover, stream.len());
    }
}

/// The header+body decoder's configuration picked by a fuzz input's first byte.
pub fn header_config(byte: u8) -> HeaderBodyConfig {
    let max_headers = [1, 16, 64, 65536];
    HeaderBodyConfig {
        max_header: max_headers[usize::from(byte & 3)],
        accept_filesize: byte & 4 != 0,
        typed: byte & 8 != 0,
    }
}

/// Fuzz target: the header+body decoder. Headers and bodies laid end to end
/// again must be the bytes they came from, and each body its announced size.
pub fn fuzz_header(data: &[u8]) {
    let Some((config, seed, stream)) = split(data) else {
        return;
    };
    let config = header_config(config);
    let outcome = agree(|| HeaderBodyDecoder::new(config), stream, seed);
    let mut rebuilt = Vec::new();
    let mut expect_body: Option<u64> = None;
    for event in &outcome.events {
        match event {
            Event::Header { raw, size, fields } => {
                assert_eq!(expect_body, None, "header inside a frame");
                assert!(!raw.is_empty() && raw.len() <= config.max_header);
                assert!(
                    fields
                        .get("size")
                        .is_some_and(|s| s.as_u64() == Some(*size))
                        || fields.get("size").is_none()
                );
                rebuilt.extend_from_slice(&(raw.len() as u32).to_le_bytes());
                rebuilt.extend_from_slice(raw.as_bytes());
                expect_body = Some(*size);
            }
            Event::Body(body) => {
                let left = expect_body.and_then(|n| n.checked_sub(body.len() as u64));
                assert!(left.is_some(), "body longer than announced");
                expect_body = left;
                rebuilt.extend_from_slice(body);
            }
            Event::BodyEnd => {
                assert_eq!(expect_body, Some(0), "body end before the body's end");
                expect_body = None;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        stream.get(..rebuilt.len()),
        Some(&rebuilt[..]),
        "frames do not rebuild the stream"
    );
}

/// The lines decoder's configuration picked by a fuzz input's first byte.
pub fn lines_config(byte: u8) -> LinesConfig {
    let max_lines = [0, 1, 2, 5, 64, 4096];
    LinesConfig {
        max_line: max_lines[usize::from(byte) % max_lines.len()],
    }
}

/// Fuzz target: the lines decoder. Every line is within the limit and holds
/// no newline; over-long lines are reported once each, where they start.
pub fn fuzz_lines(data: &[u8]) {
    let Some((config, seed, stream)) = split(data) else {
        return;
    };
    let config = lines_config(config);
    let outcome = agree(|| LinesDecoder::new(config), stream, seed);
    let mut last_too_long = None;
    for event in &outcome.events {
        match event {
            Event::Line(text) => {
                assert!(text.len() <= config.max_line && !text.contains(&b'\n'));
            }
            Event::TooLong { offset, limit } => {
                assert_eq!(*limit, config.max_line);
                assert!(
                    last_too_long < Some(*offset),
                    "a too-long line reported twice"
                );
                let at = usize::try_from(*offset).expect("offset within the stream");
                assert!(
                    at == 0 || stream.get(at - 1) == Some(&b'\n'),
                    "a line starts after a newline"
                );
                last_too_long = Some(*offset);
            }
            other => panic!("{other:?}"),
        }
    }
    let newlines = stream.iter().filter(|b| **b == b'\n').count();
    assert!(outcome.events.len() <= newlines + 1);
}
