//! The cargo-fuzz targets of `fuzz/` run as bounded, seeded random-input tests
//! on stable Rust: the same bodies (`socklab::frame::fuzz::fuzz_*`), fed a few
//! thousand inputs each, half random bytes and half valid streams with random
//! damage, so a run takes seconds and is the same every time.

use serde_json::json;
use socklab::frame::fuzz::{
    fuzz_header, fuzz_length, fuzz_lines, header_config, length_config, splitmix,
};

/// Inputs per target.
const RUNS: u64 = 4000;

/// A small random generator over splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        splitmix(&mut self.0)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// An input: a configuration byte, a chunking seed byte, then `stream`.
fn input(config: u8, rng: &mut Rng, stream: Vec<u8>) -> Vec<u8> {
    let mut data = vec![config, rng.next() as u8];
    data.extend(stream);
    data
}

/// Flips, inserts and cuts a few bytes of `stream`.
fn damage(rng: &mut Rng, mut stream: Vec<u8>) -> Vec<u8> {
    for _ in 0..rng.below(4) {
        match rng.below(3) {
            0 if !stream.is_empty() => {
                let at = rng.below(stream.len());
                stream[at] ^= 1 << rng.below(8);
            }
            1 => {
                let at = rng.below(stream.len() + 1);
                let n = rng.below(5);
                let extra = rng.bytes(n);
                stream.splice(at..at, extra);
            }
            _ => stream.truncate(rng.below(stream.len() + 1)),
        }
    }
    stream
}

#[test]
fn fuzz_length_bounded() {
    let mut rng = Rng(1);
    for run in 0..RUNS {
        let config = rng.next() as u8;
        let stream = if run % 2 == 0 {
            let n = rng.below(600);
            rng.bytes(n)
        } else {
            let c = length_config(config);
            let mut stream = Vec::new();
            for _ in 0..rng.below(6) {
                let n = rng.below(c.max_frame.min(300) + 1);
                let payload = rng.bytes(n);
                // A payload the width cannot express is skipped: the target only decodes.
                let _ = c.encode(&payload, &mut stream);
            }
            damage(&mut rng, stream)
        };
        fuzz_length(&input(config, &mut rng, stream));
    }
}

#[test]
fn fuzz_header_bounded() {
    let mut rng = Rng(2);
    for run in 0..RUNS {
        let config = rng.next() as u8;
        let stream = if run % 2 == 0 {
            let n = rng.below(600);
            rng.bytes(n)
        } else {
            let c = header_config(config);
            let mut stream = Vec::new();
            for _ in 0..rng.below(5) {
                let n = rng.below(200);
                let body = rng.bytes(n);
                let header = json!({"cmd": "put", "id": rng.below(10), "filesize": body.len()});
                if c.encode_header(&header, body.len() as u64, &mut stream)
                    .is_ok()
                {
                    stream.extend_from_slice(&body);
                }
            }
            damage(&mut rng, stream)
        };
        fuzz_header(&input(config, &mut rng, stream));
    }
}

#[test]
fn fuzz_lines_bounded() {
    let mut rng = Rng(3);
    for _ in 0..RUNS {
        let config = rng.next() as u8;
        let n = rng.below(800);
        let stream = (0..n)
            .map(|_| match rng.below(8) {
                0 => b'\n',
                1 => b'\r',
                2 => rng.next() as u8,
                _ => b'a',
            })
            .collect();
        fuzz_lines(&input(config, &mut rng, stream));
    }
}

#[test]
fn outcomes_that_differ_compare_unequal() {
    // The targets' checks compare outcomes; make sure two different decodings
    // of one stream do not compare equal, or those checks could never fail.
    use socklab::frame::fuzz::drive;
    use socklab::frame::{LinesConfig, LinesDecoder};
    let stream = b"abc\n";
    let a = drive(LinesDecoder::new(LinesConfig { max_line: 1 }), stream, [4]);
    let b = drive(
        LinesDecoder::new(LinesConfig { max_line: 8 }),
        stream,
        [1, 1, 1, 1],
    );
    assert_ne!(a, b);
}
