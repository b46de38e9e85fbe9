//! Criterion benches of the `frame` codecs, against tokio-util's codecs and a
//! plain memcpy, fed whole or in 1,460-byte segments the way the reactor does
//! (decode on the segment itself when there is no leftover, else append the
//! segment to the leftover and decode there).
//!
//! Run: `cargo bench --bench framing -- --warm-up-time 1 --measurement-time 2`.
//! Results and targets: BENCHMARKS.md, "Framing".

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use socklab::frame::{
    Decoded, HeaderBodyDecoder, Leftover, LengthConfig, LengthDecoder, Line, LinesConfig,
    LinesDecoder, Part, encode_line,
};
use tokio_util::codec::{Decoder as _, LengthDelimitedCodec, LinesCodec};

/// One TCP segment's payload on a 1,500-byte MTU.
const SEGMENT: usize = 1460;

/// Body sizes of the length-prefixed benches.
const SIZES: [usize; 4] = [16, 256, 4096, 1 << 20];

/// The frame limit of both decoders, set explicitly so they stay equal.
const MAX_FRAME: usize = 8 << 20;

/// A stream of about 1 MiB (at least 4 frames) of `size`-byte frames; returns
/// it with its frame count.
fn length_stream(size: usize) -> (Vec<u8>, u64) {
    let count = ((1 << 20) / size).max(4);
    let config = LengthConfig {
        max_frame: MAX_FRAME,
        ..LengthConfig::default()
    };
    let mut stream = Vec::new();
    let body: Vec<u8> = (0..size).map(|i| i as u8).collect();
    for _ in 0..count {
        config.encode(&body, &mut stream).unwrap();
    }
    (stream, count as u64)
}

/// socklab's length decoder straight over the whole input.
fn ours_whole(stream: &[u8]) -> usize {
    let mut d = LengthDecoder::new(LengthConfig {
        max_frame: MAX_FRAME,
        ..LengthConfig::default()
    });
    let mut pos = 0;
    let mut sum = 0;
    while let Ok(Decoded::Item { item, consumed }) = d.decode(&stream[pos..]) {
        sum += black_box(item).len();
        pos += consumed;
    }
    sum
}

/// socklab's length decoder fed segment by segment through a leftover.
fn ours_segments(stream: &[u8], leftover: &mut Leftover) -> usize {
    let mut d = LengthDecoder::new(LengthConfig {
        max_frame: MAX_FRAME,
        ..LengthConfig::default()
    });
    let mut sum = 0;
    for segment in stream.chunks(SEGMENT) {
        leftover
            .feed(&mut d, segment, |frame| sum += black_box(frame).len())
            .unwrap();
    }
    sum
}

/// tokio-util's codec for the same frames: 4-byte little-endian length.
fn tokio_length() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .little_endian()
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

/// tokio-util's codec over a buffer that already holds everything.
fn tokio_whole(mut buf: BytesMut) -> usize {
    let mut codec = tokio_length();
    let mut sum = 0;
    while let Some(frame) = codec.decode(&mut buf).unwrap() {
        sum += black_box(frame).len();
    }
    sum
}

/// tokio-util's codec with the segments appended to its buffer one by one.
fn tokio_segments(stream: &[u8]) -> usize {
    let mut codec = tokio_length();
    let mut buf = BytesMut::new();
    let mut sum = 0;
    for segment in stream.chunks(SEGMENT) {
        buf.extend_from_slice(segment);
        while let Some(frame) = codec.decode(&mut buf).unwrap() {
            sum += black_box(frame).len();
        }
    }
    sum
}

fn length(c: &mut Criterion) {
    for unit in ["frames", "bytes"] {
        let mut group = c.benchmark_group(format!("length/{unit}"));
        for size in SIZES {
            let (stream, count) = length_stream(size);
            group.throughput(if unit == "frames" {
                Throughput::Elements(count)
            } else {
                Throughput::Bytes(stream.len() as u64)
            });
            group.bench_with_input(BenchmarkId::new("socklab_whole", size), &stream, |b, s| {
                b.iter(|| ours_whole(black_box(s)))
            });
            let mut leftover = Leftover::new();
            group.bench_with_input(
                BenchmarkId::new("socklab_segments", size),
                &stream,
                |b, s| b.iter(|| ours_segments(black_box(s), &mut leftover)),
            );
            group.bench_with_input(BenchmarkId::new("tokio_whole", size), &stream, |b, s| {
                b.iter_batched(
                    || BytesMut::from(&s[..]),
                    tokio_whole,
                    BatchSize::LargeInput,
                )
            });
            group.bench_with_input(BenchmarkId::new("tokio_segments", size), &stream, |b, s| {
                b.iter(|| tokio_segments(black_box(s)))
            });
            // The copying a reactor with a scratch buffer cannot avoid: each
            // segment appended to a buffer that is emptied once per frame.
            let mut hot: Vec<u8> = Vec::with_capacity(size + SEGMENT + 8);
            group.bench_with_input(
                BenchmarkId::new("memcpy_segments", size),
                &stream,
                |b, s| {
                    b.iter(|| {
                        for segment in s.chunks(SEGMENT) {
                            if hot.len() >= size {
                                hot.clear();
                            }
                            hot.extend_from_slice(black_box(segment));
                        }
                        black_box(&hot);
                    })
                },
            );
            let mut dst = vec![0u8; stream.len()];
            group.bench_with_input(BenchmarkId::new("memcpy", size), &stream, |b, s| {
                b.iter(|| {
                    dst.copy_from_slice(black_box(s));
                    black_box(&dst);
                })
            });
        }
        group.finish();
    }
}

/// A `put` header as the classic upload client sends it (about 100 bytes).
fn put_header(body: usize) -> String {
    format!(
        r#"{{"cmd":"put","filename":"report-2024-11-22.csv","filesize":{body},"md5":"d41d8cd98f00b204e9800998ecf8427e"}}"#
    )
}

/// Count of `put` frames in the header+body stream.
const PUTS: usize = 4096;

/// Body bytes of each `put` frame.
const PUT_BODY: usize = 16;

/// `PUTS` `put` frames with 16-byte bodies.
fn put_stream() -> Vec<u8> {
    frame_stream(&put_header(PUT_BODY), PUT_BODY)
}

/// `PUTS` frames of `header` with `body` bytes of body each.
fn frame_stream(header: &str, body: usize) -> Vec<u8> {
    let mut stream = Vec::new();
    for _ in 0..PUTS {
        stream.extend_from_slice(&(header.len() as u32).to_le_bytes());
        stream.extend_from_slice(header.as_bytes());
        stream.extend(std::iter::repeat_n(0x42u8, body));
    }
    stream
}

/// The header+body decoder over `stream`, whole and fed in `SEGMENT`-byte pieces.
fn bench_decoder(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    stream: &[u8],
    (whole, segments): (&str, &str),
) {
    group.bench_function(whole, |b| {
        b.iter(|| {
            let mut d = HeaderBodyDecoder::default();
            let (mut pos, mut sum) = (0, 0);
            while let Ok(Decoded::Item { item, consumed }) = d.decode(&stream[pos..]) {
                sum += weigh(item);
                pos += consumed;
            }
            black_box(sum)
        })
    });
    let mut leftover = Leftover::new();
    group.bench_function(segments, |b| {
        b.iter(|| {
            let mut d = HeaderBodyDecoder::default();
            let mut sum = 0;
            for segment in stream.chunks(SEGMENT) {
                leftover
                    .feed(&mut d, segment, |part| sum += weigh(part))
                    .unwrap();
            }
            black_box(sum)
        })
    });
}

/// Sums what a part carries, so that nothing is optimized away.
fn weigh(part: Part<'_>) -> usize {
    match part {
        Part::Header(h) => usize::from(h.cmd().is_some()) + h.size as usize,
        Part::BodyChunk(c) => c.len(),
        Part::BodyEnd => 1,
    }
}

fn header_body(c: &mut Criterion) {
    let stream = put_stream();
    let header = put_header(PUT_BODY);
    assert!((95..=110).contains(&header.len()), "{}", header.len());
    let mut group = c.benchmark_group("header_body/frames");
    group.throughput(Throughput::Elements(PUTS as u64));
    bench_decoder(&mut group, &stream, ("socklab_whole", "socklab_segments"));
    // The same header bytes, where they sit in the stream, parsed with nothing else done.
    let frame_len = 4 + header.len() + PUT_BODY;
    let headers: Vec<&[u8]> = stream
        .chunks(frame_len)
        .map(|f| &f[4..4 + header.len()])
        .collect();
    group.bench_function("serde_json_header_alone", |b| {
        b.iter(|| {
            let mut sum = 0;
            for h in &headers {
                let v: serde_json::Value = serde_json::from_slice(black_box(h)).unwrap();
                sum += v.as_object().map_or(0, |o| o.len());
            }
            black_box(sum)
        })
    });
    group.finish();
}

/// Lines in the lines benches (1 MiB).
const LINES: usize = 16384;

/// `LINES` lines of 64 bytes each: 63 of text and `\n`.
fn line_stream() -> Vec<u8> {
    let text: Vec<u8> = (0..63).map(|i| b'a' + (i % 26) as u8).collect();
    let mut stream = Vec::new();
    for _ in 0..LINES {
        encode_line(&text, &mut stream).unwrap();
    }
    stream
}

fn lines(c: &mut Criterion) {
    let stream = line_stream();
    let weigh = |line: Line<'_>| match line {
        Line::Text(t) => t.len(),
        Line::TooLong { .. } => 0,
    };
    let mut group = c.benchmark_group("lines/lines");
    group.throughput(Throughput::Elements(LINES as u64));
    group.bench_function("socklab_whole", |b| {
        b.iter(|| {
            let mut d = LinesDecoder::new(LinesConfig::default());
            let (mut pos, mut sum) = (0, 0);
            while let Decoded::Item { item, consumed } = d.decode(&stream[pos..]) {
                sum += weigh(black_box(item));
                pos += consumed;
            }
            black_box(sum)
        })
    });
    let mut leftover = Leftover::new();
    group.bench_function("socklab_segments", |b| {
        b.iter(|| {
            let mut d = LinesDecoder::new(LinesConfig::default());
            let mut sum = 0;
            for segment in stream.chunks(SEGMENT) {
                leftover
                    .feed(&mut d, segment, |line| sum += weigh(black_box(line)))
                    .unwrap();
            }
            black_box(sum)
        })
    });
    group.bench_function("tokio_whole", |b| {
        b.iter_batched(
            || BytesMut::from(&stream[..]),
            |mut buf| {
                let mut codec = LinesCodec::new_with_max_length(4096);
                let mut sum = 0;
                while let Some(line) = codec.decode(&mut buf).unwrap() {
                    sum += black_box(line).len();
                }
                sum
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("tokio_segments", |b| {
        b.iter(|| {
            let mut codec = LinesCodec::new_with_max_length(4096);
            let mut buf = BytesMut::new();
            let mut sum = 0;
            for segment in stream.chunks(SEGMENT) {
                buf.extend_from_slice(segment);
                while let Some(line) = codec.decode(&mut buf).unwrap() {
                    sum += black_box(line).len();
                }
            }
            black_box(sum)
        })
    });
    group.finish();
}

/// One header's decode, three ways, on the same bytes (issue 20): the typed fast path, the
/// strict map (every header before it), and `serde_json::from_slice::<Value>` (the naive way);
/// and the decoder over a stream of such frames, whole and in 1,460-byte segments.
fn header_decode(c: &mut Criterion) {
    for (name, header) in [
        ("put", put_header(PUT_BODY)),
        ("ping", r#"{"cmd":"ping"}"#.to_owned()),
    ] {
        let body = if name == "put" { PUT_BODY } else { 0 };
        let stream = frame_stream(&header, body);
        let mut group = c.benchmark_group(format!("header_decode/{name}_{}B", header.len()));
        group.throughput(Throughput::Elements(1));
        group.bench_function("typed", |b| {
            b.iter(|| {
                let r = socklab::frame::header::parse_typed(black_box(&header)).unwrap();
                black_box(r.size.unwrap_or(0) + u64::from(r.cmd.is_some()))
            })
        });
        group.bench_function("strict_map", |b| {
            b.iter(|| {
                let (m, _) = socklab::frame::header::parse_strict(black_box(&header)).unwrap();
                black_box(m.len())
            })
        });
        group.bench_function("serde_json_value", |b| {
            b.iter(|| {
                let v: serde_json::Value =
                    serde_json::from_slice(black_box(header.as_bytes())).unwrap();
                black_box(v.as_object().map_or(0, |o| o.len()))
            })
        });
        group.throughput(Throughput::Elements(PUTS as u64));
        bench_decoder(&mut group, &stream, ("decoder_whole", "decoder_segments"));
        group.finish();
    }
}

criterion_group!(benches, length, header_body, header_decode, lines);
criterion_main!(benches);
