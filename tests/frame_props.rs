//! Property tests for the codecs of `socklab::frame`: a valid stream of frames
//! cut into pieces anywhere (every single cut position, random cuts, one byte
//! at a time) decodes to exactly the frames it was made of, for every codec
//! and configuration; any byte string in any chunking decodes to frames or an
//! error, without a panic, and the reactor's leftover buffer (simulated here
//! independently of `frame::Leftover`) never passes the decoder's limit.

use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use socklab::frame::fuzz::{Event, ToEvent};
use socklab::frame::{
    Decoded, Decoder, Endian, HeaderBodyConfig, HeaderBodyDecoder, LengthConfig, LengthDecoder,
    LinesConfig, LinesDecoder, Width, encode_line,
};

/// What a simulated reactor got out of a stream.
#[derive(Debug, PartialEq)]
struct Got {
    /// Items, body chunks merged.
    events: Vec<Event>,
    /// The error that ended the stream, if any (as `Debug` text).
    error: Option<String>,
}

/// Feeds `stream` in pieces of the given lengths as the reactor does: each
/// piece lands in a scratch buffer, the decoder runs on leftover ++ piece (or
/// on the scratch alone when there is no leftover), and only the unconsumed
/// tail is kept. Asserts the tail never passes `max_buffered`.
fn reactor<D>(mut decoder: D, stream: &[u8], pieces: &[usize]) -> Got
where
    D: Decoder,
    for<'a> D::Item<'a>: ToEvent,
{
    let limit = decoder.max_buffered();
    let mut leftover: Vec<u8> = Vec::new();
    let mut scratch: Vec<u8> = Vec::new();
    let mut events = Vec::new();
    let mut rest = stream;
    let mut pieces = pieces.iter().copied();
    let mut calls = 0usize;
    while !rest.is_empty() {
        let n = pieces.next().unwrap_or(rest.len()).clamp(1, rest.len());
        let (piece, tail) = rest.split_at(n);
        rest = tail;
        scratch.clear();
        scratch.extend_from_slice(piece);
        let input: &[u8] = if leftover.is_empty() {
            &scratch
        } else {
            leftover.extend_from_slice(&scratch);
            &leftover
        };
        let mut pos = 0;
        let result = loop {
            calls += 1;
            assert!(calls < 4 * stream.len() + 16, "decoder makes no progress");
            match decoder.decode(&input[pos..]) {
                Ok(Decoded::Incomplete) => break Ok(()),
                Ok(Decoded::Item { item, consumed }) => {
                    assert!(consumed <= input.len() - pos);
                    item.push_to(&mut events);
                    pos += consumed;
                }
                Ok(Decoded::Skipped { consumed }) => {
                    assert!(consumed >= 1 && consumed <= input.len() - pos);
                    pos += consumed;
                }
                Err(e) => break Err(format!("{e:?}")),
            }
        };
        let tail = input[pos..].to_vec();
        leftover = tail;
        if let Err(e) = result {
            return Got {
                events,
                error: Some(e),
            };
        }
        assert!(
            leftover.len() <= limit,
            "leftover {} > max_buffered {limit}",
            leftover.len()
        );
    }
    Got {
        events,
        error: None,
    }
}

/// Checks that `stream` gives `expected` fed whole, cut at every position, in
/// the given random pieces, and one byte at a time.
fn every_chunking<D>(make: impl Fn() -> D, stream: &[u8], pieces: &[usize], expected: &[Event])
where
    D: Decoder,
    for<'a> D::Item<'a>: ToEvent,
{
    let want = Got {
        events: expected.to_vec(),
        error: None,
    };
    assert_eq!(reactor(make(), stream, &[]), want, "whole");
    for cut in 1..stream.len() {
        assert_eq!(reactor(make(), stream, &[cut]), want, "cut at {cut}");
    }
    assert_eq!(reactor(make(), stream, pieces), want, "pieces {pieces:?}");
    assert_eq!(
        reactor(make(), stream, &vec![1; stream.len()]),
        want,
        "one byte at a time"
    );
}

/// Every length-prefixed configuration, with a limit of `max_frame`.
fn length_configs(max_frame: usize) -> Vec<LengthConfig> {
    let mut configs = Vec::new();
    for width in Width::ALL {
        for endian in [Endian::Big, Endian::Little] {
            for includes_prefix in [false, true] {
                configs.push(LengthConfig {
                    width,
                    endian,
                    includes_prefix,
                    max_frame,
                });
            }
        }
    }
    configs
}

/// Piece lengths for random chunkings: one byte up to a few TCP segments.
fn pieces() -> impl Strategy<Value = Vec<usize>> {
    vec(prop_oneof![Just(1usize), 1usize..16, 1usize..3000], 0..64)
}

/// Payloads of 0 to 200 bytes (200 is the limit used, and fits a one-byte
/// inclusive length), mostly short.
fn payloads() -> impl Strategy<Value = Vec<Vec<u8>>> {
    vec(
        prop_oneof![vec(any::<u8>(), 0..8), vec(any::<u8>(), 0..=200)],
        0..8,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn length_frames_survive_any_chunking(frames in payloads(), pieces in pieces()) {
        for config in length_configs(200) {
            let mut stream = Vec::new();
            for f in &frames {
                config.encode(f, &mut stream).unwrap();
            }
            let expected: Vec<Event> = frames.iter().map(|f| Event::Frame(f.clone())).collect();
            every_chunking(|| LengthDecoder::new(config), &stream, &pieces, &expected);
        }
    }

    #[test]
    fn header_body_frames_survive_any_chunking(frames in vec(files_frame(), 0..6), pieces in pieces()) {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for (header, body, style) in &frames {
            push_files_frame(&mut stream, &mut expected, header, body, *style);
        }
        every_chunking(HeaderBodyDecoder::default, &stream, &pieces, &expected);
    }

    #[test]
    fn lines_survive_any_chunking(
        lines in vec((prop_oneof![vec(line_byte(), 0..8), vec(line_byte(), 0..80)], any::<bool>()), 0..12),
        max_line in prop_oneof![Just(0usize), Just(1), Just(5), Just(16), Just(64)],
        pieces in pieces(),
    ) {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for (text, crlf) in &lines {
            let mut text = text.clone();
            while !*crlf && text.last() == Some(&b'\r') {
                // A `\r` before a bare `\n` is an ending, not text.
                text.pop();
            }
            let offset = stream.len() as u64;
            stream.extend_from_slice(&text);
            stream.extend_from_slice(if *crlf { b"\r\n" } else { b"\n" });
            expected.push(if text.len() > max_line {
                Event::TooLong { offset, limit: max_line }
            } else {
                Event::Line(text)
            });
        }
        every_chunking(|| LinesDecoder::new(LinesConfig { max_line }), &stream, &pieces, &expected);
    }

    #[test]
    fn any_bytes_length(stream in garbage(), pieces in pieces(), max in prop_oneof![Just(0usize), Just(3), Just(300), Just(usize::MAX)]) {
        for config in length_configs(max) {
            let whole = reactor(LengthDecoder::new(config), &stream, &[]);
            prop_assert_eq!(&reactor(LengthDecoder::new(config), &stream, &pieces), &whole);
            prop_assert_eq!(&reactor(LengthDecoder::new(config), &stream, &vec![1; stream.len()]), &whole);
        }
    }

    #[test]
    fn any_bytes_header_body(stream in garbage_frames(), pieces in pieces(), max_header in prop_oneof![Just(1usize), Just(20), Just(65536)], accept_filesize in any::<bool>()) {
        let make = || HeaderBodyDecoder::new(HeaderBodyConfig { max_header, accept_filesize, typed: accept_filesize });
        let whole = reactor(make(), &stream, &[]);
        prop_assert_eq!(&reactor(make(), &stream, &pieces), &whole);
        prop_assert_eq!(&reactor(make(), &stream, &vec![1; stream.len()]), &whole);
    }

    #[test]
    fn any_bytes_lines(stream in vec(prop_oneof![Just(b'\n'), Just(b'\r'), any::<u8>()], 0..600), pieces in pieces(), max_line in 0usize..40) {
        let make = || LinesDecoder::new(LinesConfig { max_line });
        let whole = reactor(make(), &stream, &[]);
        prop_assert_eq!(&reactor(make(), &stream, &pieces), &whole);
        prop_assert_eq!(&reactor(make(), &stream, &vec![1; stream.len()]), &whole);
    }
}

/// Bytes likely to sit in a line: some `\r`, never `\n`.
fn line_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        Just(b'\r'),
        Just(b'a'),
        any::<u8>().prop_filter("no newline", |b| *b != b'\n')
    ]
}

/// Random bytes with plenty of small numbers, so lengths are often plausible.
fn garbage() -> impl Strategy<Value = Vec<u8>> {
    vec(prop_oneof![0u8..4, any::<u8>()], 0..700)
}

/// Valid files frames with random bytes spliced in: gets past the prefix and
/// JSON checks often enough to exercise every error.
fn garbage_frames() -> impl Strategy<Value = Vec<u8>> {
    (
        vec(files_frame(), 0..4),
        vec((any::<prop::sample::Index>(), vec(any::<u8>(), 0..6)), 0..3),
    )
        .prop_map(|(frames, splices)| {
            let mut stream = Vec::new();
            let mut ignored = Vec::new();
            for (header, body, style) in &frames {
                push_files_frame(&mut stream, &mut ignored, header, body, *style);
            }
            for (at, bytes) in splices {
                let at = at.index(stream.len() + 1);
                stream.splice(at..at, bytes);
            }
            stream
        })
}

/// How a frame's body length is written.
#[derive(Debug, Clone, Copy)]
enum SizeStyle {
    /// `"size": N` via `encode_header`.
    Size,
    /// `"filesize": N`, as the classic upload client does.
    Filesize,
    /// Both, equal, pretty-printed.
    BothPretty,
}

/// A header's other fields, a body, and how its size is written.
fn files_frame() -> impl Strategy<Value = (Map<String, Value>, Vec<u8>, SizeStyle)> {
    let id = prop_oneof![
        Just(None),
        Just(Some(json!(7))),
        Just(Some(json!({"req": [1, "x"]})))
    ];
    let body = prop_oneof![vec(any::<u8>(), 0..4), vec(any::<u8>(), 0..400)];
    let style = prop_oneof![
        Just(SizeStyle::Size),
        Just(SizeStyle::Filesize),
        Just(SizeStyle::BothPretty)
    ];
    (
        prop_oneof![Just("put"), Just("ping"), Just("échô")],
        "[a-z.]{0,20}",
        id,
        body,
        style,
    )
        .prop_map(|(cmd, filename, id, body, style)| {
            let mut fields = Map::new();
            fields.insert("cmd".into(), json!(cmd));
            fields.insert("filename".into(), json!(filename));
            if let Some(id) = id {
                fields.insert("id".into(), id);
            }
            (fields, body, style)
        })
}

/// Appends a files frame to `stream` and what decoding it gives to `expected`.
fn push_files_frame(
    stream: &mut Vec<u8>,
    expected: &mut Vec<Event>,
    fields: &Map<String, Value>,
    body: &[u8],
    style: SizeStyle,
) {
    let size = body.len() as u64;
    let start = stream.len();
    match style {
        SizeStyle::Size => socklab::frame::encode_header(fields, size, stream).unwrap(),
        SizeStyle::Filesize | SizeStyle::BothPretty => {
            let mut fields = fields.clone();
            fields.insert("filesize".into(), json!(size));
            let text = if let SizeStyle::BothPretty = style {
                fields.insert("size".into(), json!(size));
                serde_json::to_string_pretty(&fields).unwrap()
            } else {
                serde_json::to_string(&fields).unwrap()
            };
            stream.extend_from_slice(&(text.len() as u32).to_le_bytes());
            stream.extend_from_slice(text.as_bytes());
        }
    }
    let raw = String::from_utf8(stream[start + 4..].to_vec()).unwrap();
    let parsed: Map<String, Value> = serde_json::from_str(&raw).unwrap();
    expected.push(Event::Header {
        raw,
        fields: parsed,
        size,
    });
    stream.extend_from_slice(body);
    if !body.is_empty() {
        expected.push(Event::Body(body.to_vec()));
    }
    expected.push(Event::BodyEnd);
}

#[test]
fn huge_body_is_streamed_in_constant_memory() {
    // A 64 MiB body in 1,460-byte segments: the leftover never holds body bytes.
    let mut stream = Vec::new();
    socklab::frame::encode_header(&json!({"cmd": "put"}), 64 << 20, &mut stream).unwrap();
    let header_len = stream.len();
    let mut decoder = HeaderBodyDecoder::default();
    let mut leftover = socklab::frame::Leftover::new();
    let segment = vec![0x5a_u8; 1460];
    let mut body = 0u64;
    let mut most_kept = 0;
    leftover.feed(&mut decoder, &stream, |_| {}).unwrap();
    while body < 64 << 20 {
        let n = segment.len().min(((64 << 20) - body) as usize);
        leftover
            .feed(&mut decoder, &segment[..n], |part| {
                if let socklab::frame::Part::BodyChunk(c) = part {
                    body += c.len() as u64;
                }
            })
            .unwrap();
        most_kept = most_kept.max(leftover.len());
    }
    assert_eq!((body, most_kept, header_len > 4), (64 << 20, 0, true));
}

#[test]
fn lines_encoded_are_lines_decoded() {
    let mut stream = Vec::new();
    for text in [&b"* welcome guest-1"[..], b"", b"bob hi\r there"] {
        encode_line(text, &mut stream).unwrap();
    }
    let got = reactor(LinesDecoder::default(), &stream, &[3, 5]);
    assert_eq!(
        got.events,
        [
            Event::Line(b"* welcome guest-1".to_vec()),
            Event::Line(vec![]),
            Event::Line(b"bob hi\r there".to_vec())
        ]
    );
}

#[test]
fn the_simulated_reactor_catches_a_decoder_that_buffers_too_much() {
    // A decoder that lies about its limit must fail the bound check: the
    // property above can fail.
    struct Liar(LengthDecoder);
    impl Decoder for Liar {
        type Item<'a> = &'a [u8];
        type Error = socklab::frame::LengthError;
        fn decode<'a>(&mut self, input: &'a [u8]) -> Result<Decoded<&'a [u8]>, Self::Error> {
            self.0.decode(input)
        }
        fn max_buffered(&self) -> usize {
            4
        }
    }
    let mut stream = Vec::new();
    LengthConfig::default()
        .encode(b"hello", &mut stream)
        .unwrap();
    let caught =
        std::panic::catch_unwind(|| reactor(Liar(LengthDecoder::default()), &stream, &[6]));
    assert!(caught.is_err());
}
