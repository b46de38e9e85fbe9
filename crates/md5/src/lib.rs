//! MD5 (RFC 1321) for socklab's file checksums: every byte a `put` uploads is hashed on the
//! server, so a `put` can go no faster than this.
//!
//! Ours rather than the `md-5` crate's because of one measured fault: rustc reassociates each
//! step's `a + F(b, c, d) + m + K` so that the constant is added *after* the round function,
//! which puts one more add on the chain of dependent instructions that bounds MD5 (64 steps a
//! block, each waiting on the one before). `md-5` 0.10 (with and without its `asm` feature) and
//! 0.11 hash a cached 1 GiB file in 1.87-2.0 s on the machine the benchmarks ran on, GNU
//! md5sum in 1.63 s. Here the round constants are read through [`core::hint::black_box`], which
//! the compiler cannot fold, so `m + K` is summed off the chain and each step's dependent path
//! is the round function, one add, the rotate and the add of `b`: 1.57-1.60 s.

#![forbid(unsafe_code)]

/// The state after every input block processed so far, with the bytes of a block begun.
#[derive(Debug, Clone)]
pub struct Md5 {
    state: [u32; 4],
    /// Bytes hashed so far (MD5 appends the length modulo 2^64).
    len: u64,
    block: [u8; 64],
    /// How many bytes of `block` are filled: always under 64.
    filled: usize,
}

impl Default for Md5 {
    fn default() -> Self {
        Md5::new()
    }
}

impl Md5 {
    /// The hash of nothing yet.
    pub fn new() -> Md5 {
        Md5 {
            state: [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476],
            len: 0,
            block: [0; 64],
            filled: 0,
        }
    }

    /// Adds `data`.
    pub fn update(&mut self, mut data: &[u8]) {
        self.len = self.len.wrapping_add(data.len() as u64);
        if self.filled > 0 {
            let take = (64 - self.filled).min(data.len());
            let (head, rest) = data.split_at(take);
            if let Some(to) = self.block.get_mut(self.filled..self.filled + take) {
                to.copy_from_slice(head);
            }
            self.filled += take;
            data = rest;
            if self.filled < 64 {
                return;
            }
            compress(&mut self.state, &self.block);
            self.filled = 0;
        }
        let blocks = data.chunks_exact(64);
        let tail = blocks.remainder();
        for block in blocks {
            if let Ok(block) = <&[u8; 64]>::try_from(block) {
                compress(&mut self.state, block);
            }
        }
        if let Some(to) = self.block.get_mut(..tail.len()) {
            to.copy_from_slice(tail);
        }
        self.filled = tail.len();
    }

    /// The digest: the padding (a one bit, zeros, the length in bits) is hashed last.
    pub fn finalize(mut self) -> [u8; 16] {
        let bits = self.len.wrapping_mul(8);
        let mut pad = [0u8; 64];
        pad[0] = 0x80;
        // Pad to 56 bytes past a block boundary, then the 8 bytes of the length.
        let zeros = (119 - self.filled) % 64;
        let pad = pad.get(..zeros + 1).unwrap_or(&pad);
        self.update(pad);
        self.update(&bits.to_le_bytes());
        debug_assert_eq!(self.filled, 0);
        let mut digest = [0u8; 16];
        for (out, word) in digest.chunks_exact_mut(4).zip(self.state) {
            out.copy_from_slice(&word.to_le_bytes());
        }
        digest
    }

    /// The digest of `data`.
    pub fn digest(data: &[u8]) -> [u8; 16] {
        let mut h = Md5::new();
        h.update(data);
        h.finalize()
    }
}

/// The round constants: `floor(abs(sin(i + 1)) * 2^32)`.
#[rustfmt::skip]
const K: [u32; 64] = [
    0xd76a_a478, 0xe8c7_b756, 0x2420_70db, 0xc1bd_ceee, 0xf57c_0faf, 0x4787_c62a, 0xa830_4613,
    0xfd46_9501, 0x6980_98d8, 0x8b44_f7af, 0xffff_5bb1, 0x895c_d7be, 0x6b90_1122, 0xfd98_7193,
    0xa679_438e, 0x49b4_0821, 0xf61e_2562, 0xc040_b340, 0x265e_5a51, 0xe9b6_c7aa, 0xd62f_105d,
    0x0244_1453, 0xd8a1_e681, 0xe7d3_fbc8, 0x21e1_cde6, 0xc337_07d6, 0xf4d5_0d87, 0x455a_14ed,
    0xa9e3_e905, 0xfcef_a3f8, 0x676f_02d9, 0x8d2a_4c8a, 0xfffa_3942, 0x8771_f681, 0x6d9d_6122,
    0xfde5_380c, 0xa4be_ea44, 0x4bde_cfa9, 0xf6bb_4b60, 0xbebf_bc70, 0x289b_7ec6, 0xeaa1_27fa,
    0xd4ef_3085, 0x0488_1d05, 0xd9d4_d039, 0xe6db_99e5, 0x1fa2_7cf8, 0xc4ac_5665, 0xf429_2244,
    0x432a_ff97, 0xab94_23a7, 0xfc93_a039, 0x655b_59c3, 0x8f0c_cc92, 0xffef_f47d, 0x8584_5dd1,
    0x6fa8_7e4f, 0xfe2c_e6e0, 0xa301_4314, 0x4e08_11a1, 0xf753_7e82, 0xbd3a_f235, 0x2ad7_d2bb,
    0xeb86_d391,
];

// One step: `a = b + ((a + (m + k) + f(b, c, d)) <<< s)`, with the terms that do not wait on
// `b` (the newest word) summed first: `m + k`, then `early`, the part of `f` without `b`; `late`,
// the part with it, comes last.
macro_rules! step {
    ($a:ident, $b:ident, $m:expr, $k:expr, $s:expr, early: $early:expr, late: $late:expr) => {
        $a = $a
            .wrapping_add($m.wrapping_add($k))
            .wrapping_add($early)
            .wrapping_add($late)
            .rotate_left($s)
            .wrapping_add($b)
    };
}
// The four rounds' functions. Round 2's `(b & d) | (c & !d)` is the sum of its two disjoint
// halves, so that `c & !d` joins the early terms.
macro_rules! f {
    ($a:ident, $b:ident, $c:ident, $d:ident, $m:expr, $k:expr, $s:expr) => {
        step!($a, $b, $m, $k, $s, early: 0, late: (($c ^ $d) & $b) ^ $d)
    };
}
macro_rules! g {
    ($a:ident, $b:ident, $c:ident, $d:ident, $m:expr, $k:expr, $s:expr) => {
        step!($a, $b, $m, $k, $s, early: $c & !$d, late: $b & $d)
    };
}
macro_rules! h {
    ($a:ident, $b:ident, $c:ident, $d:ident, $m:expr, $k:expr, $s:expr) => {
        step!($a, $b, $m, $k, $s, early: 0, late: $b ^ ($c ^ $d))
    };
}
macro_rules! i {
    ($a:ident, $b:ident, $c:ident, $d:ident, $m:expr, $k:expr, $s:expr) => {
        step!($a, $b, $m, $k, $s, early: 0, late: $c ^ ($b | !$d))
    };
}

/// Hashes one 64-byte block into `state`.
#[rustfmt::skip]
fn compress(state: &mut [u32; 4], block: &[u8; 64]) {
    let mut m = [0u32; 16];
    for (word, bytes) in m.iter_mut().zip(block.as_chunks::<4>().0) {
        *word = u32::from_le_bytes(*bytes);
    }
    // Opaque to the optimiser: it cannot move the constants to the end of each step's sum.
    let k: &[u32; 64] = core::hint::black_box(&K);
    let [mut a, mut b, mut c, mut d] = *state;
    f!(a, b, c, d, m[0], k[0], 7);    f!(d, a, b, c, m[1], k[1], 12);
    f!(c, d, a, b, m[2], k[2], 17);   f!(b, c, d, a, m[3], k[3], 22);
    f!(a, b, c, d, m[4], k[4], 7);    f!(d, a, b, c, m[5], k[5], 12);
    f!(c, d, a, b, m[6], k[6], 17);   f!(b, c, d, a, m[7], k[7], 22);
    f!(a, b, c, d, m[8], k[8], 7);    f!(d, a, b, c, m[9], k[9], 12);
    f!(c, d, a, b, m[10], k[10], 17); f!(b, c, d, a, m[11], k[11], 22);
    f!(a, b, c, d, m[12], k[12], 7);  f!(d, a, b, c, m[13], k[13], 12);
    f!(c, d, a, b, m[14], k[14], 17); f!(b, c, d, a, m[15], k[15], 22);

    g!(a, b, c, d, m[1], k[16], 5);   g!(d, a, b, c, m[6], k[17], 9);
    g!(c, d, a, b, m[11], k[18], 14); g!(b, c, d, a, m[0], k[19], 20);
    g!(a, b, c, d, m[5], k[20], 5);   g!(d, a, b, c, m[10], k[21], 9);
    g!(c, d, a, b, m[15], k[22], 14); g!(b, c, d, a, m[4], k[23], 20);
    g!(a, b, c, d, m[9], k[24], 5);   g!(d, a, b, c, m[14], k[25], 9);
    g!(c, d, a, b, m[3], k[26], 14);  g!(b, c, d, a, m[8], k[27], 20);
    g!(a, b, c, d, m[13], k[28], 5);  g!(d, a, b, c, m[2], k[29], 9);
    g!(c, d, a, b, m[7], k[30], 14);  g!(b, c, d, a, m[12], k[31], 20);

    h!(a, b, c, d, m[5], k[32], 4);   h!(d, a, b, c, m[8], k[33], 11);
    h!(c, d, a, b, m[11], k[34], 16); h!(b, c, d, a, m[14], k[35], 23);
    h!(a, b, c, d, m[1], k[36], 4);   h!(d, a, b, c, m[4], k[37], 11);
    h!(c, d, a, b, m[7], k[38], 16);  h!(b, c, d, a, m[10], k[39], 23);
    h!(a, b, c, d, m[13], k[40], 4);  h!(d, a, b, c, m[0], k[41], 11);
    h!(c, d, a, b, m[3], k[42], 16);  h!(b, c, d, a, m[6], k[43], 23);
    h!(a, b, c, d, m[9], k[44], 4);   h!(d, a, b, c, m[12], k[45], 11);
    h!(c, d, a, b, m[15], k[46], 16); h!(b, c, d, a, m[2], k[47], 23);

    i!(a, b, c, d, m[0], k[48], 6);   i!(d, a, b, c, m[7], k[49], 10);
    i!(c, d, a, b, m[14], k[50], 15); i!(b, c, d, a, m[5], k[51], 21);
    i!(a, b, c, d, m[12], k[52], 6);  i!(d, a, b, c, m[3], k[53], 10);
    i!(c, d, a, b, m[10], k[54], 15); i!(b, c, d, a, m[1], k[55], 21);
    i!(a, b, c, d, m[8], k[56], 6);   i!(d, a, b, c, m[15], k[57], 10);
    i!(c, d, a, b, m[6], k[58], 15);  i!(b, c, d, a, m[13], k[59], 21);
    i!(a, b, c, d, m[4], k[60], 6);   i!(d, a, b, c, m[11], k[61], 10);
    i!(c, d, a, b, m[2], k[62], 15);  i!(b, c, d, a, m[9], k[63], 21);

    for (s, v) in state.iter_mut().zip([a, b, c, d]) {
        *s = s.wrapping_add(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use md5::Digest;
    use proptest::prelude::*;

    fn hex(d: [u8; 16]) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn the_rfc_1321_test_suite() {
        let suite = [
            ("", "d41d8cd98f00b204e9800998ecf8427e"),
            ("a", "0cc175b9c0f1b6a831c399e269772661"),
            ("abc", "900150983cd24fb0d6963f7d28e17f72"),
            ("message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
            (
                "abcdefghijklmnopqrstuvwxyz",
                "c3fcd3d76192e4007dfb496cca67e13b",
            ),
            (
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
                "d174ab98d277d9f5a5611c2c9f419d9f",
            ),
            (
                "12345678901234567890123456789012345678901234567890123456789012345678901234567890",
                "57edf4a22be3c955ac49da2e2107b67a",
            ),
        ];
        for (input, want) in suite {
            assert_eq!(hex(Md5::digest(input.as_bytes())), want, "{input:?}");
        }
    }

    #[test]
    fn every_length_around_the_padding_boundaries_matches_md_5() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in 0..data.len() {
            let input = data.get(..len).unwrap_or_default();
            assert_eq!(
                Md5::digest(input),
                <[u8; 16]>::from(md5::Md5::digest(input)),
                "length {len}"
            );
        }
    }

    proptest! {
        #[test]
        fn any_bytes_in_any_pieces_match_md_5(
            data in proptest::collection::vec(any::<u8>(), 0..5000),
            cuts in proptest::collection::vec(0usize..5000, 0..8),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort_unstable();
            let mut h = Md5::new();
            let mut at = 0;
            for cut in cuts.into_iter().chain([data.len()]) {
                h.update(data.get(at..cut).unwrap_or_default());
                at = cut;
            }
            prop_assert_eq!(h.finalize(), <[u8; 16]>::from(md5::Md5::digest(&data)));
        }
    }
}
