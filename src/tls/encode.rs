//! rustls's unbuffered API encodes into a slice the caller provides and says how much room it
//! needed when the slice was too small: these grow a `Vec` to fit.

use rustls::unbuffered::{EncodeError, EncryptError, InsufficientSizeError};

/// Appends to `out` what `encode` writes into a buffer large enough for it.
pub(crate) fn append_with<E>(
    out: &mut Vec<u8>,
    first_guess: usize,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, E>,
    too_small: impl Fn(&E) -> Option<usize>,
) -> Result<(), E> {
    let start = out.len();
    let mut room = first_guess;
    for _ in 0..2 {
        out.resize(start.saturating_add(room), 0);
        let target = out.get_mut(start..).unwrap_or_default();
        match encode(target) {
            Ok(n) => {
                out.truncate(start.saturating_add(n));
                return Ok(());
            }
            Err(e) => match too_small(&e) {
                Some(required) if required > room => room = required,
                _ => {
                    out.truncate(start);
                    return Err(e);
                }
            },
        }
    }
    out.truncate(start);
    // `encode` asked for more room than it said it needed: treated as its refusal.
    match encode(&mut []) {
        Err(e) => Err(e),
        Ok(_) => Ok(()),
    }
}

pub(crate) fn encode_too_small(e: &EncodeError) -> Option<usize> {
    match e {
        EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(*required_size)
        }
        _ => None,
    }
}

pub(crate) fn encrypt_too_small(e: &EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(*required_size)
        }
        _ => None,
    }
}
