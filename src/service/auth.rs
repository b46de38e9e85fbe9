//! The HMAC-SHA256 challenge-response of PROTOCOL.md, "Authentication": the server sends 32
//! random bytes, the client answers `HMAC-SHA256(secret, challenge)`, and the service starts
//! only if the answer matches (compared in constant time). Sans-IO: bytes in, a verdict out.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Bytes in a challenge and in a response.
pub const CHALLENGE_LEN: usize = 32;

/// The environment variable that may hold the secret.
pub const SECRET_ENV: &str = "SOCKLAB_SECRET";

/// The shared secret. Its bytes are never printed: `Debug` shows only its length.
#[derive(Clone)]
pub struct Secret(Arc<[u8]>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// Why no secret could be had.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read the secret file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the secret from {from} is empty; put at least one byte in it")]
    Empty { from: String },
    #[error(
        "authentication needs a secret: give --auth-secret-file PATH or set {SECRET_ENV} (never on the command line)"
    )]
    Missing,
}

impl Secret {
    /// The secret from raw bytes, with one trailing `\n` or `\r\n` removed.
    pub fn from_bytes(mut bytes: Vec<u8>, from: &str) -> Result<Self, SecretError> {
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
        }
        if bytes.is_empty() {
            return Err(SecretError::Empty {
                from: from.to_owned(),
            });
        }
        Ok(Secret(bytes.into()))
    }

    /// Reads the secret from a file.
    pub fn from_file(path: &Path) -> Result<Self, SecretError> {
        let bytes = std::fs::read(path).map_err(|source| SecretError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Secret::from_bytes(bytes, &path.display().to_string())
    }

    /// The secret from `--auth-secret-file` if given, else from `SOCKLAB_SECRET`.
    pub fn from_file_or_env(path: Option<&Path>) -> Result<Self, SecretError> {
        if let Some(path) = path {
            return Secret::from_file(path);
        }
        match std::env::var_os(SECRET_ENV) {
            Some(v) => Secret::from_bytes(v.into_encoded_bytes(), SECRET_ENV),
            None => Err(SecretError::Missing),
        }
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
        match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC accepts keys of every length"),
        }
    }

    /// The response a client sends to `challenge`.
    pub fn respond(&self, challenge: &[u8]) -> [u8; CHALLENGE_LEN] {
        let mut mac = self.mac();
        mac.update(challenge);
        mac.finalize().into_bytes().into()
    }
}

/// 32 bytes from the operating system's random source.
pub fn new_challenge() -> std::io::Result<[u8; CHALLENGE_LEN]> {
    let mut c = [0u8; CHALLENGE_LEN];
    getrandom::fill(&mut c).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(c)
}

/// What the gate decided about the bytes it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthStep {
    /// Fewer than 32 bytes so far; all of them consumed.
    NeedMore,
    /// The response matched; `consumed` bytes belonged to it, the rest to the service.
    Passed { consumed: usize },
    /// The response did not match.
    Failed,
}

/// One connection's handshake, server side.
pub struct AuthGate {
    /// The challenge sent to the client.
    challenge: [u8; CHALLENGE_LEN],
    /// The secret to check against.
    secret: Secret,
    /// The response bytes received so far.
    got: [u8; CHALLENGE_LEN],
    /// How many of `got` are filled.
    have: usize,
}

impl fmt::Debug for AuthGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthGate({}/{CHALLENGE_LEN} bytes)", self.have)
    }
}

impl AuthGate {
    /// A gate for one connection, with the challenge it must send first.
    pub fn new(secret: Secret, challenge: [u8; CHALLENGE_LEN]) -> Self {
        AuthGate {
            challenge,
            secret,
            got: [0; CHALLENGE_LEN],
            have: 0,
        }
    }

    /// The bytes to send on connect.
    pub fn challenge(&self) -> &[u8; CHALLENGE_LEN] {
        &self.challenge
    }

    /// Feeds bytes from the client.
    pub fn on_input(&mut self, input: &[u8]) -> AuthStep {
        let want = CHALLENGE_LEN.saturating_sub(self.have);
        let take = want.min(input.len());
        if let (Some(dst), Some(src)) = (
            self.got.get_mut(self.have..self.have + take),
            input.get(..take),
        ) {
            dst.copy_from_slice(src);
        }
        self.have += take;
        if self.have < CHALLENGE_LEN {
            return AuthStep::NeedMore;
        }
        let mut mac = self.secret.mac();
        mac.update(&self.challenge);
        // verify_slice compares in constant time.
        match mac.verify_slice(&self.got) {
            Ok(()) => AuthStep::Passed { consumed: take },
            Err(_) => AuthStep::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        Secret::from_bytes(b"s3cret\n".to_vec(), "test").unwrap()
    }

    #[test]
    fn the_right_response_passes_in_any_chunking() {
        let s = secret();
        let challenge = new_challenge().unwrap();
        let answer = s.respond(&challenge);
        let mut stream = answer.to_vec();
        stream.extend_from_slice(b"PING");
        for cut in 0..=stream.len() {
            let mut gate = AuthGate::new(s.clone(), challenge);
            let (a, b) = stream.split_at(cut);
            let first = gate.on_input(a);
            if cut < CHALLENGE_LEN {
                assert_eq!(first, AuthStep::NeedMore);
                assert_eq!(
                    gate.on_input(b),
                    AuthStep::Passed {
                        consumed: CHALLENGE_LEN - cut
                    }
                );
            } else {
                assert_eq!(first, AuthStep::Passed { consumed: 32 });
            }
        }
    }

    #[test]
    fn a_wrong_response_fails() {
        let s = secret();
        let challenge = [7u8; 32];
        let mut answer = s.respond(&challenge);
        answer[31] ^= 1;
        let mut gate = AuthGate::new(s.clone(), challenge);
        assert_eq!(gate.on_input(&answer), AuthStep::Failed);
        let other = Secret::from_bytes(b"other".to_vec(), "t").unwrap();
        let mut gate = AuthGate::new(s, challenge);
        assert_eq!(gate.on_input(&other.respond(&challenge)), AuthStep::Failed);
    }

    #[test]
    fn known_answer() {
        // HMAC-SHA256 test case 2 of RFC 4231.
        let s = Secret::from_bytes(b"Jefe".to_vec(), "t").unwrap();
        let out = s.respond(b"what do ya want for nothing?");
        let hex: String = out.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn secrets_lose_one_line_ending_and_must_not_be_empty() {
        assert_eq!(
            &*Secret::from_bytes(b"a\r\n".to_vec(), "t").unwrap().0,
            b"a"
        );
        assert_eq!(
            &*Secret::from_bytes(b"a\n\n".to_vec(), "t").unwrap().0,
            b"a\n"
        );
        assert!(matches!(
            Secret::from_bytes(b"\n".to_vec(), "t"),
            Err(SecretError::Empty { .. })
        ));
        assert!(!format!("{:?}", secret()).contains("s3cret"));
    }
}
