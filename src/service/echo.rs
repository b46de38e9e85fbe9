//! `echo`: every byte back, in order, nothing added (PROTOCOL.md, "Byte-stream services").

use super::Consumed;

/// The echo service; it keeps no state.
#[derive(Debug, Default, Clone, Copy)]
pub struct Echo;

impl Echo {
    /// Appends `input` to `out`, whole.
    pub fn on_input(&mut self, input: &[u8], out: &mut Vec<u8>) -> Consumed {
        out.extend_from_slice(input);
        Consumed(input.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_every_byte() {
        let mut out = b"pending ".to_vec();
        let input: Vec<u8> = (0..=255).collect();
        assert_eq!(Echo.on_input(&input, &mut out), Consumed(256));
        assert_eq!(&out[..8], b"pending ");
        assert_eq!(&out[8..], &input[..]);
        assert_eq!(Echo.on_input(b"", &mut out), Consumed(0));
        assert_eq!(out.len(), 8 + 256);
    }
}
