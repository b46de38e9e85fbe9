//! The authentication handshake every stream client runs (PROTOCOL.md, "Authentication"):
//! wait briefly for the server's first bytes, answer a challenge with the secret, or hand the
//! service's own first bytes back; and where a client's secret comes from. Over any blocking
//! stream with timeouts ([`Timed`]): a socket, or TLS over one.

use std::io::{self, Read, Write};
use std::time::Duration;

use super::is_timeout;
use crate::service::auth::{CHALLENGE_LEN, SECRET_ENV, Secret, SecretError};
use crate::tls::client::ClientStream;

/// A blocking stream whose reads and writes can be given a timeout: a socket, or TLS over one.
pub(crate) trait Timed: Read + Write {
    /// Sets the read timeout of the socket underneath.
    fn set_read_timeout(&self, timeout: Duration) -> io::Result<()>;
    /// Sets its write timeout.
    fn set_write_timeout(&self, timeout: Duration) -> io::Result<()>;
}

impl Timed for crate::net::StdStream {
    fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        crate::net::StdStream::set_read_timeout(self, timeout)
    }
    fn set_write_timeout(&self, timeout: Duration) -> io::Result<()> {
        crate::net::StdStream::set_write_timeout(self, timeout)
    }
}

impl Timed for ClientStream {
    fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        ClientStream::set_read_timeout(self, timeout)
    }
    fn set_write_timeout(&self, timeout: Duration) -> io::Result<()> {
        ClientStream::set_write_timeout(self, timeout)
    }
}

/// How long a stream client (not the files client) without a secret waits for a challenge
/// before it sends anything: the
/// server sends its challenge as it accepts, and a server without authentication sends
/// nothing first, so silence for this long means the service itself is talking to us.
pub const CHALLENGE_WAIT: Duration = Duration::from_millis(250);

/// How long a client with a secret waits for the challenge (at most its `--timeout`): a
/// server without authentication costs it this much once per connection, and then just works.
pub const CHALLENGE_WAIT_WITH_SECRET: Duration = Duration::from_secs(1);

/// Why the authentication handshake (PROTOCOL.md, "Authentication") did not let us in.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the server at {peer} asks for authentication: give --secret-file or {SECRET_ENV}")]
    Needed { peer: String },
    #[error(
        "the server at {peer} refused the authentication (closed the connection after the answer to its challenge): the secret differs from the server's"
    )]
    Refused { peer: String },
    #[error("authentication with the server at {peer} failed: {source}")]
    Io { peer: String, source: io::Error },
    #[error(transparent)]
    Secret(#[from] SecretError),
}

/// The client's secret: the `--secret-file` if given, else `SOCKLAB_SECRET` if set, else none.
pub fn client_secret(path: Option<&std::path::Path>) -> Result<Option<Secret>, AuthError> {
    if path.is_none() && std::env::var_os(SECRET_ENV).is_none() {
        return Ok(None);
    }
    Ok(Some(Secret::from_file_or_env(path)?))
}

/// How a connection opened.
#[derive(Debug, Default)]
pub struct Opening {
    /// The server sent a challenge and got our answer (it may still refuse it: it then closes
    /// the connection, a `files` listener after an `auth_failed` frame).
    pub authenticated: bool,
    /// Bytes of the service's own that came before we sent anything (chat's welcome).
    pub early: Vec<u8>,
    /// Bytes we sent (the answer).
    pub sent: u64,
}

/// The client side of the handshake, for every stream client: waits for the server's first
/// bytes, up to [`CHALLENGE_WAIT_WITH_SECRET`] (with a secret) or [`CHALLENGE_WAIT`] (without)
/// and never past `timeout`. 32 bytes that do not start with `greeting` (the service's own
/// first words, such as chat's `* welcome `; empty for services that never speak first) are
/// a challenge: answered with the secret, or [`AuthError::Needed`] without one. Anything else,
/// or silence, is the service: its bytes are handed back in [`Opening::early`]. Leaves the
/// stream's read timeout changed; the caller sets its own.
pub(crate) fn handshake(
    stream: &mut impl Timed,
    peer: &str,
    secret: Option<&Secret>,
    timeout: Duration,
    greeting: &[u8],
) -> Result<Opening, AuthError> {
    handshake_within(
        stream,
        peer,
        secret,
        challenge_wait(secret, timeout),
        greeting,
    )
}

/// How long [`handshake`] waits for a challenge.
pub(crate) fn challenge_wait(secret: Option<&Secret>, timeout: Duration) -> Duration {
    match secret {
        Some(_) => CHALLENGE_WAIT_WITH_SECRET,
        None => CHALLENGE_WAIT,
    }
    .min(timeout)
}

/// [`handshake`] with the wait for the challenge given (a client that opens many connections
/// learns from the first whether the server challenges, and then waits its whole timeout for
/// each challenge, or not at all).
pub(crate) fn handshake_within(
    stream: &mut impl Timed,
    peer: &str,
    secret: Option<&Secret>,
    wait: Duration,
    greeting: &[u8],
) -> Result<Opening, AuthError> {
    let io_err = |source| AuthError::Io {
        peer: peer.to_owned(),
        source,
    };
    let first = read_first(stream, wait, greeting).map_err(io_err)?;
    let is_greeting = !greeting.is_empty() && first.starts_with(greeting);
    if first.len() < CHALLENGE_LEN || is_greeting {
        return Ok(Opening {
            early: first,
            ..Opening::default()
        });
    }
    let Some(secret) = secret else {
        return Err(AuthError::Needed {
            peer: peer.to_owned(),
        });
    };
    stream
        .set_write_timeout(wait.max(CHALLENGE_WAIT_WITH_SECRET))
        .map_err(io_err)?;
    stream.write_all(&secret.respond(&first)).map_err(io_err)?;
    Ok(Opening {
        authenticated: true,
        early: Vec::new(),
        sent: CHALLENGE_LEN as u64,
    })
}

/// Reads up to [`CHALLENGE_LEN`] bytes, until `wait` passes, the end of the stream, or the
/// bytes start with `greeting` (when not empty).
fn read_first(stream: &mut impl Timed, wait: Duration, greeting: &[u8]) -> io::Result<Vec<u8>> {
    let deadline = std::time::Instant::now() + wait;
    let mut got = [0u8; CHALLENGE_LEN];
    let mut have = 0;
    while have < CHALLENGE_LEN {
        if !greeting.is_empty() && got.get(..have).is_some_and(|g| g.starts_with(greeting)) {
            break;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        stream.set_read_timeout(left)?;
        match stream.read(got.get_mut(have..).unwrap_or_default()) {
            Ok(0) => break,
            Ok(n) => have += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(got.get(..have).unwrap_or_default().to_vec())
}
