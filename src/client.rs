//! A blocking client of the `files` service, for the `socklab put/get/ls/stat/ping` commands:
//! connect (TCP or unix), answer the authentication challenge, send request frames, read
//! response headers with the same decoder the server uses, and stream bodies.
//!
//! Also [`NoAnswer`], the one error every client command (files, stream, chat, time, bench)
//! gives when the server does not answer within its `--timeout`, and [`is_timeout`], which
//! tells a socket timeout from other I/O errors. The authentication handshake every stream
//! client runs is `handshake.rs`.

use std::fmt;
use std::io::{self, Read, Write};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::addr::ListenAddr;
use crate::frame::header::{HeaderBodyConfig, HeaderBodyDecoder, Part, encode_header};
use crate::frame::{Decoded, HeaderError};
use crate::service::auth::{CHALLENGE_LEN, Secret};
use crate::tls::client::{ClientStream, ClientTls};

mod handshake;

pub use handshake::{
    AuthError, CHALLENGE_WAIT, CHALLENGE_WAIT_WITH_SECRET, Opening, client_secret,
};
pub(crate) use handshake::{Timed, challenge_wait, handshake, handshake_within};

/// What a client was waiting for when its timeout ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stall {
    /// An answer: a read timed out (`SO_RCVTIMEO`), or a deadline of the client's own passed.
    Answer,
    /// Room to send: a write timed out (`SO_SNDTIMEO`), the server stopped reading.
    Take,
}

/// The server did not answer (or did not take what was sent) within the client's timeout.
///
/// A read or write on a socket with a timeout fails with `EAGAIN` ("Resource temporarily
/// unavailable"), which says nothing to the user; every client says this instead:
/// `the server at 127.0.0.1:7080 did not answer within 30s (1073741875 bytes sent)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoAnswer {
    /// The server's address, as the user gave it.
    pub peer: String,
    /// What the client was waiting for.
    pub stall: Stall,
    /// How long it waited (the `--timeout`).
    pub timeout: Duration,
    /// Bytes sent to the server so far (on this connection, or this socket for UDP).
    pub sent: u64,
    /// Bytes received from the server so far.
    pub received: u64,
}

impl fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.stall {
            Stall::Answer => "answer",
            Stall::Take => "take the request",
        };
        write!(
            f,
            "the server at {} did not {what} within {}",
            self.peer,
            humantime::format_duration(self.timeout)
        )?;
        let bytes = |n: u64| if n == 1 { "byte" } else { "bytes" };
        match (self.sent, self.received) {
            (0, 0) => Ok(()),
            (s, 0) => write!(f, " ({s} {} sent)", bytes(s)),
            (s, r) => write!(f, " ({s} {} sent, {r} received)", bytes(s)),
        }
    }
}

impl std::error::Error for NoAnswer {}

/// Whether `e` is what a socket read or write returns when its timeout (`SO_RCVTIMEO`,
/// `SO_SNDTIMEO`) runs out: `WouldBlock` (EAGAIN) on Linux, `TimedOut` on some systems.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// What went wrong talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("{0} is not a stream address (use HOST:PORT or unix:PATH)")]
    NotStream(String),
    #[error("connection to the server failed: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    NoAnswer(NoAnswer),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("the server sent a malformed frame: {0}")]
    BadFrame(#[from] HeaderError),
    #[error("the server sent something that is not a frame ({0})")]
    NotAFrame(HeaderError),
    #[error(
        "the server at {peer} sent {bytes} bytes before any request, neither a challenge nor a frame: is it a files service?"
    )]
    SpokeFirst { peer: String, bytes: usize },
    #[error("the server closed the connection{0}")]
    Closed(String),
    #[error("server error {code}: {message}")]
    Server { code: String, message: String },
    #[error(transparent)]
    Tls(#[from] crate::tls::client::TlsClientError),
    #[error("the server at {0} speaks TLS: add --tls (and --ca PATH for a private CA)")]
    SpeaksTls(String),
}

/// The start of a TLS record (an alert or a handshake, TLS 1.0 to 1.3): what a TLS server
/// answers a client that does not speak it. No files response starts so: its length would
/// be over 50 MB.
pub(crate) fn looks_like_tls_record(first: &[u8]) -> bool {
    matches!(first, [0x15 | 0x16, 0x03, 0x01..=0x04, ..])
}

/// A response header.
#[derive(Debug, Clone)]
pub struct Response {
    /// Every field of the header.
    pub fields: Map<String, Value>,
    /// The length of the body that follows.
    pub size: u64,
}

impl Response {
    /// The response as an error when `ok` is not true.
    pub fn into_result(self) -> Result<Response, ClientError> {
        if self.fields.get("ok") == Some(&Value::Bool(true)) {
            return Ok(self);
        }
        let err = self.fields.get("error");
        let text = |k: &str| {
            err.and_then(|e| e.get(k))
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned()
        };
        Err(ClientError::Server {
            code: text("code"),
            message: text("message"),
        })
    }

    /// A string field.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.fields.get(key).and_then(Value::as_str)
    }

    /// An integer field.
    pub fn u64(&self, key: &str) -> Option<u64> {
        self.fields.get(key).and_then(Value::as_u64)
    }
}

/// A connection to a `files` listener.
#[derive(Debug)]
pub struct FilesClient {
    /// The connection: the socket, or TLS over it.
    stream: ClientStream,
    /// Validates response headers exactly as the server validates requests.
    decoder: HeaderBodyDecoder,
    /// Scratch space for one header frame.
    buf: Vec<u8>,
    /// The server's address, for messages.
    peer: String,
    /// The read and write timeout of the socket.
    timeout: Duration,
    /// Bytes written to the socket so far.
    sent: u64,
    /// Bytes read from the socket so far.
    received: u64,
    /// Whether the server asked for authentication and got the answer.
    authenticated: bool,
    /// Connected without a secret and without waiting for a challenge, and no response read
    /// yet: what comes first may be a challenge rather than a frame (see [`FilesClient::connect`]).
    unverified: bool,
}

impl FilesClient {
    /// Connects, and answers the challenge when a secret is given; without one it does not
    /// wait for a challenge (the first response tells, see [`FilesClient::read_response`]).
    /// Reads and writes that make no progress for `timeout` fail with [`ClientError::NoAnswer`].
    pub fn connect(
        addr: &ListenAddr,
        secret: Option<&Secret>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        Self::connect_tls(addr, secret, None, timeout)
    }

    /// [`FilesClient::connect`], speaking TLS when `tls` is given: the handshake, and the
    /// server's certificate, are checked before anything else is sent.
    pub fn connect_tls(
        addr: &ListenAddr,
        secret: Option<&Secret>,
        tls: Option<&ClientTls>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        if let ListenAddr::Unixgram(_) = addr {
            return Err(ClientError::NotStream(addr.to_string()));
        }
        let stream = crate::tls::client::connect(addr, tls, timeout).map_err(|source| {
            ClientError::Connect {
                addr: addr.to_string(),
                source,
            }
        })?;
        let mut client = FilesClient {
            stream,
            decoder: HeaderBodyDecoder::new(HeaderBodyConfig::responses()),
            buf: Vec::new(),
            peer: addr.to_string(),
            timeout,
            sent: 0,
            received: 0,
            authenticated: false,
            unverified: secret.is_none(),
        };
        if secret.is_none() {
            // Scripts run these commands in loops: waiting for a challenge on every run costs
            // CHALLENGE_WAIT each. Send at once; a challenge shows up where the response
            // should be, and read_response / the send errors tell it from a frame.
            return Ok(client);
        }
        let opening = handshake(&mut client.stream, &client.peer, secret, timeout, b"")?;
        client.authenticated = opening.authenticated;
        client.sent = opening.sent;
        client.received = opening.early.len() as u64;
        client.stream.set_read_timeout(timeout)?;
        client.stream.set_write_timeout(timeout)?;
        if !opening.early.is_empty() {
            // files never speaks first: what came is no frame of ours.
            return Err(ClientError::SpokeFirst {
                peer: client.peer,
                bytes: opening.early.len(),
            });
        }
        Ok(client)
    }

    /// Waits at least `at_least` for what the server sends next (a command that may run that
    /// long before it answers); never shortens the timeout it was opened with.
    pub fn wait_at_least(&mut self, at_least: Duration) -> io::Result<()> {
        if at_least > self.timeout {
            self.timeout = at_least;
            self.stream.set_read_timeout(at_least)?;
        }
        Ok(())
    }

    /// The error for a socket timeout while waiting for `stall`.
    fn no_answer(&self, stall: Stall) -> ClientError {
        ClientError::NoAnswer(NoAnswer {
            peer: self.peer.clone(),
            stall,
            timeout: self.timeout,
            sent: self.sent,
            received: self.received,
        })
    }

    /// One read, counted; a timeout is [`ClientError::NoAnswer`], 0 is the end of the stream.
    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, ClientError> {
        loop {
            match self.stream.read(buf) {
                Ok(n) => {
                    self.received = self.received.saturating_add(n as u64);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => return Err(self.no_answer(Stall::Answer)),
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn read_exact(&mut self, mut buf: &mut [u8]) -> Result<(), ClientError> {
        while !buf.is_empty() {
            match self.read_some(buf)? {
                0 if self.authenticated && self.received == 0 => {
                    return Err(AuthError::Refused {
                        peer: self.peer.clone(),
                    }
                    .into());
                }
                0 => return Err(ClientError::Closed(String::new())),
                n => buf = std::mem::take(&mut buf).get_mut(n..).unwrap_or_default(),
            }
        }
        Ok(())
    }

    /// Writes all of `bytes`, counted; a timeout is [`ClientError::NoAnswer`].
    fn write_all(&mut self, mut bytes: &[u8]) -> Result<(), ClientError> {
        while !bytes.is_empty() {
            match self.stream.write(bytes) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
                Ok(n) => {
                    self.sent = self.sent.saturating_add(n as u64);
                    bytes = bytes.get(n..).unwrap_or_default();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => return Err(self.no_answer(Stall::Take)),
                Err(e) => return Err(self.diagnose_send_error(e)),
            }
        }
        Ok(())
    }

    /// The error for a failed send: the server may have closed on us for a reason it sent
    /// first (a challenge we did not answer, an error frame), which says more than EPIPE.
    /// Reads what came, bounded in time ([`CHALLENGE_WAIT`]) and size ([`DIAGNOSE_MAX`]).
    fn diagnose_send_error(&mut self, e: io::Error) -> ClientError {
        let mut got = Vec::new();
        let _ = self
            .stream
            .set_read_timeout(CHALLENGE_WAIT.min(self.timeout));
        let mut chunk = [0u8; 1024];
        while got.len() < DIAGNOSE_MAX {
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            }
        }
        self.received = self.received.saturating_add(got.len() as u64);
        let mut decoder = HeaderBodyDecoder::new(HeaderBodyConfig::responses());
        match decoder.decode(&got) {
            Ok(Decoded::Item {
                item: Part::Header(h),
                ..
            }) => {
                let resp = Response {
                    fields: h.map().into_owned(),
                    size: h.size,
                };
                if let Err(server) = resp.into_result() {
                    return server;
                }
            }
            _ if self.unverified && got.len() >= CHALLENGE_LEN => return self.needed(),
            _ => {}
        }
        e.into()
    }

    /// [`AuthError::Needed`] for this server.
    fn needed(&self) -> ClientError {
        AuthError::Needed {
            peer: self.peer.clone(),
        }
        .into()
    }

    /// After the first 4 bytes of what should be a response turned out no frame (their length
    /// is out of range) on an unverified connection: reads up to a challenge's length, briefly
    /// (a challenge comes whole, at accept); whether it was one.
    fn rest_of_challenge(&mut self) -> bool {
        let mut rest = [0u8; CHALLENGE_LEN - 4];
        let mut have = 0;
        let _ = self
            .stream
            .set_read_timeout(CHALLENGE_WAIT.min(self.timeout));
        let closed = loop {
            let Some(buf) = rest.get_mut(have..).filter(|b| !b.is_empty()) else {
                break false;
            };
            match self.stream.read(buf) {
                Ok(0) => break true,
                Ok(n) => have += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break !is_timeout(&e),
            }
        };
        let _ = self.stream.set_read_timeout(self.timeout);
        self.received = self.received.saturating_add(have as u64);
        have == rest.len() || closed
    }

    /// Sends a request header announcing `body_len` bytes of body (to be sent with
    /// [`FilesClient::send_body`]). A `size` already in `header` is replaced by `body_len`:
    /// the server refuses a header with a key twice (PROTOCOL.md, "Frames").
    pub fn send_request(
        &mut self,
        header: &Map<String, Value>,
        body_len: u64,
    ) -> Result<(), ClientError> {
        let mut frame = Vec::new();
        let without_size;
        let header = if header.contains_key("size") {
            let mut h = header.clone();
            h.remove("size");
            without_size = h;
            &without_size
        } else {
            header
        };
        encode_header(header, body_len, &mut frame).map_err(io::Error::other)?;
        self.write_all(&frame)
    }

    /// Sends body bytes.
    pub fn send_body(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.write_all(bytes)
    }

    /// Sends up to `len` bytes of `file` from `offset` as body bytes with sendfile(2), so they go
    /// from the page cache to the socket without a copy through this process; returns how many
    /// went (fewer only where the file ends first). A timeout is [`ClientError::NoAnswer`].
    pub fn send_file_body(
        &mut self,
        file: &std::fs::File,
        offset: u64,
        len: u64,
    ) -> Result<u64, ClientError> {
        use std::os::fd::AsRawFd;
        let socket = match &self.stream {
            ClientStream::Plain(s) => s.as_raw_fd(),
            // TLS encrypts every byte here: the file is read and written through it.
            ClientStream::Tls(_) => return self.copy_file_body(file, offset, len),
        };
        let mut off = libc::off_t::try_from(offset).map_err(io::Error::other)?;
        let mut done = 0u64;
        while done < len {
            let want = usize::try_from(len - done).map_or(1 << 30, |l| l.min(1 << 30));
            // SAFETY: both descriptors are open for the call (borrowed), and `off` is a local
            // the call may write.
            let n = unsafe { libc::sendfile(socket, file.as_raw_fd(), &mut off, want) };
            match usize::try_from(n) {
                Ok(0) => break,
                Ok(n) => {
                    self.sent = self.sent.saturating_add(n as u64);
                    done = done.saturating_add(n as u64);
                }
                Err(_) => {
                    let e = io::Error::last_os_error();
                    match e.kind() {
                        io::ErrorKind::Interrupted => {}
                        _ if is_timeout(&e) => return Err(self.no_answer(Stall::Take)),
                        _ => return Err(self.diagnose_send_error(e)),
                    }
                }
            }
        }
        Ok(done)
    }

    /// [`FilesClient::send_file_body`] by reading and writing, for a stream that changes the
    /// bytes (TLS).
    fn copy_file_body(
        &mut self,
        file: &std::fs::File,
        offset: u64,
        len: u64,
    ) -> Result<u64, ClientError> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; 256 * 1024];
        let mut done = 0u64;
        while done < len {
            let want = usize::try_from(len - done).map_or(buf.len(), |l| l.min(buf.len()));
            let chunk = buf.get_mut(..want).unwrap_or_default();
            let n = file.read_at(chunk, offset.saturating_add(done))?;
            if n == 0 {
                break;
            }
            self.write_all(chunk.get(..n).unwrap_or_default())?;
            done = done.saturating_add(n as u64);
        }
        Ok(done)
    }

    /// Reads one response header; its body (if any) must be read next. On a connection
    /// without a secret, the first one may be a challenge instead: 32 bytes that are no frame
    /// (or bytes that are no frame and then the end), which is [`AuthError::Needed`].
    pub fn read_response(&mut self) -> Result<Response, ClientError> {
        let r = self.read_response_frame();
        let unverified = std::mem::take(&mut self.unverified);
        match r {
            Err(ClientError::NotAFrame(_) | ClientError::BadFrame(_))
                if unverified && self.received >= CHALLENGE_LEN as u64 =>
            {
                Err(self.needed())
            }
            Err(ClientError::Closed(_)) if unverified && self.received > 0 => Err(self.needed()),
            Err(ClientError::Io(e))
                if unverified
                    && self.received > 0
                    && e.kind() == io::ErrorKind::ConnectionReset =>
            {
                Err(self.needed())
            }
            r => r,
        }
    }

    fn read_response_frame(&mut self) -> Result<Response, ClientError> {
        let mut prefix = [0u8; 4];
        self.read_exact(&mut prefix)?;
        let h = u32::from_le_bytes(prefix) as usize;
        let max = self.decoder.config().max_header;
        if self.unverified && !self.stream.is_tls() && looks_like_tls_record(&prefix) {
            return Err(ClientError::SpeaksTls(self.peer.clone()));
        }
        if (h == 0 || h > max) && self.unverified && self.rest_of_challenge() {
            return Err(self.needed());
        }
        if h == 0 || h > max {
            // Let the decoder say what is wrong with it.
            self.buf.clear();
            self.buf.extend_from_slice(&prefix);
        } else {
            self.buf.resize(4 + h, 0);
            self.buf[..4].copy_from_slice(&prefix);
            let mut header = std::mem::take(&mut self.buf);
            let r = self.read_exact(&mut header[4..]);
            self.buf = header;
            r?;
        }
        let decoded = self.decoder.decode(&self.buf).map_err(|e| match e {
            HeaderError::HeaderTooLong { .. } | HeaderError::EmptyHeader { .. } => {
                ClientError::NotAFrame(e)
            }
            e => ClientError::BadFrame(e),
        })?;
        match decoded {
            Decoded::Item {
                item: Part::Header(h),
                ..
            } => {
                let resp = Response {
                    fields: h.map().into_owned(),
                    size: h.size,
                };
                // The decoder now expects the body; this client reads the body itself.
                self.decoder = HeaderBodyDecoder::new(HeaderBodyConfig::responses());
                Ok(resp)
            }
            _ => Err(ClientError::Closed(" in the middle of a frame".into())),
        }
    }

    /// Reads the next `buf.len()` body bytes (or fewer at the end of the stream: 0 is an error).
    pub fn read_body(&mut self, buf: &mut [u8]) -> Result<usize, ClientError> {
        match self.read_some(buf)? {
            0 if !buf.is_empty() => Err(ClientError::Closed(" in the middle of a body".into())),
            n => Ok(n),
        }
    }

    /// Reads a whole (small) body.
    pub fn read_small_body(&mut self, size: u64) -> Result<Vec<u8>, ClientError> {
        let n = usize::try_from(size).map_err(io::Error::other)?;
        let mut body = vec![0; n];
        self.read_exact(&mut body)?;
        Ok(body)
    }

    /// Sends a request without a body and reads its response and (small) body.
    pub fn call(
        &mut self,
        header: &Map<String, Value>,
    ) -> Result<(Response, Vec<u8>), ClientError> {
        self.send_request(header, 0)?;
        let resp = self.read_response()?;
        let body = self.read_small_body(resp.size)?;
        Ok((resp.into_result()?, body))
    }
}

/// A request header with `cmd` set.
pub fn request(cmd: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("cmd".into(), cmd.into());
    m
}

/// At most this much of what a server sent before it closed is read to say why a send failed.
const DIAGNOSE_MAX: usize = 4096;
