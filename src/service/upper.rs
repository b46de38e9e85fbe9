//! `upper`: like echo, with ASCII `a`–`z` mapped to `A`–`Z` and every other byte (UTF-8
//! continuation bytes included) unchanged (PROTOCOL.md, "Byte-stream services").

use super::Consumed;

/// The upper-case service; it keeps no state, since the mapping is per byte.
#[derive(Debug, Default, Clone, Copy)]
pub struct Upper;

impl Upper {
    /// Appends `input` upper-cased to `out`, whole.
    pub fn on_input(&mut self, input: &[u8], out: &mut Vec<u8>) -> Consumed {
        let start = out.len();
        out.extend_from_slice(input);
        // Upper-casing the copied slice in place lets the compiler vectorize it.
        if let Some(tail) = out.get_mut(start..) {
            tail.make_ascii_uppercase();
        }
        Consumed(input.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_only_ascii_lowercase() {
        let mut out = Vec::new();
        let input = "hello, Wörld! é z{`a\u{0}\u{ff}".as_bytes();
        assert_eq!(Upper.on_input(input, &mut out), Consumed(input.len()));
        assert_eq!(out, "HELLO, WöRLD! é Z{`A\u{0}\u{ff}".as_bytes());
    }

    #[test]
    fn every_byte_value() {
        let input: Vec<u8> = (0..=255).collect();
        let mut out = Vec::new();
        Upper.on_input(&input, &mut out);
        for (i, (&a, &b)) in input.iter().zip(&out).enumerate() {
            let want = if a.is_ascii_lowercase() { a - 32 } else { a };
            assert_eq!(b, want, "byte {i}");
        }
    }
}
