//! The client side of the two protocols the experiments speak: raw bytes to `echo`, and
//! `files` `echo` frames (4-byte little-endian header length, JSON header, body) decoded with
//! the sans-IO [`HeaderBodyDecoder`]. Every read and write has a timeout.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{Value, json};
use socket2::SockRef;

use crate::frame::{Decoded, HeaderBodyConfig, HeaderBodyDecoder, Part, encode_header};

use super::TuneError;

/// How long one connect, read or write may take.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects with a timeout and sets read and write timeouts and TCP_NODELAY.
pub fn connect(addr: SocketAddr, nodelay: bool) -> Result<TcpStream, TuneError> {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .map_err(TuneError::io(format!("connect to {addr}")))?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| s.set_write_timeout(Some(IO_TIMEOUT)))
        .and_then(|()| s.set_nodelay(nodelay))
        .map_err(TuneError::io("set socket options"))?;
    Ok(s)
}

/// The client socket's options in effect, read back with getsockopt.
#[derive(Debug, Clone, Copy)]
pub struct ClientOptions {
    /// TCP_NODELAY.
    pub nodelay: bool,
    /// SO_SNDBUF as the kernel set it.
    pub sndbuf: usize,
    /// SO_RCVBUF as the kernel set it.
    pub rcvbuf: usize,
}

impl ClientOptions {
    /// Reads them from `s`.
    pub fn of(s: &TcpStream) -> Result<ClientOptions, TuneError> {
        let r = SockRef::from(s);
        let err = TuneError::io("getsockopt on the client socket");
        let read = || -> std::io::Result<ClientOptions> {
            Ok(ClientOptions {
                nodelay: r.tcp_nodelay()?,
                sndbuf: r.send_buffer_size()?,
                rcvbuf: r.recv_buffer_size()?,
            })
        };
        read().map_err(err)
    }
}

impl std::fmt::Display for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "nodelay={} sndbuf={} rcvbuf={}",
            if self.nodelay { "on" } else { "off" },
            self.sndbuf,
            self.rcvbuf
        )
    }
}

/// The prefix and header of a `files` `echo` request for a body of `len` bytes, with `id`.
pub fn echo_frame_header(len: usize, id: Option<u64>) -> Result<Vec<u8>, TuneError> {
    let mut out = Vec::new();
    let header = match id {
        Some(id) => json!({"cmd": "echo", "id": id}),
        None => json!({"cmd": "echo"}),
    };
    encode_header(&header, len as u64, &mut out).map_err(|e| TuneError::Protocol(e.to_string()))?;
    Ok(out)
}

/// Reads one whole response frame from `s`: keeps unconsumed input in `buf` (bytes of the
/// next frame stay there), returns the header's text and the body. The response must say
/// `"ok": true`.
pub fn read_frame(
    s: &mut TcpStream,
    dec: &mut HeaderBodyDecoder,
    buf: &mut Vec<u8>,
    body: &mut Vec<u8>,
) -> Result<String, TuneError> {
    body.clear();
    let mut header = None;
    let mut scratch = [0u8; 64 * 1024];
    loop {
        let mut off = 0;
        let mut done = false;
        while !done {
            let answer = dec
                .decode(buf.get(off..).unwrap_or_default())
                .map_err(|e| TuneError::Protocol(format!("bad response frame: {e}")))?;
            match answer {
                Decoded::Incomplete => break,
                Decoded::Skipped { consumed } => off += consumed,
                Decoded::Item { item, consumed } => {
                    off += consumed;
                    match item {
                        Part::Header(h) => {
                            if h.map().get("ok") != Some(&Value::Bool(true)) {
                                return Err(TuneError::Protocol(format!(
                                    "the server answered {}",
                                    h.raw
                                )));
                            }
                            header = Some(h.raw.to_string());
                        }
                        Part::BodyChunk(c) => body.extend_from_slice(c),
                        Part::BodyEnd => done = true,
                    }
                }
            }
        }
        buf.drain(..off.min(buf.len()));
        if done {
            return header.ok_or_else(|| TuneError::Protocol("a body without a header".into()));
        }
        let n = s
            .read(&mut scratch)
            .map_err(TuneError::io("read a response frame"))?;
        if n == 0 {
            return Err(TuneError::Protocol(
                "the server closed the connection mid-frame".into(),
            ));
        }
        buf.extend_from_slice(scratch.get(..n).unwrap_or_default());
    }
}

/// A decoder for the server's responses.
pub fn response_decoder() -> HeaderBodyDecoder {
    HeaderBodyDecoder::new(HeaderBodyConfig::responses())
}

/// Writes all of `data` (one write call where the kernel takes it all).
pub fn write_all(s: &mut TcpStream, data: &[u8]) -> Result<(), TuneError> {
    s.write_all(data).map_err(TuneError::io("write"))
}

/// Reads exactly `n` bytes into `buf` (cleared first).
pub fn read_exact(s: &mut TcpStream, n: usize, buf: &mut Vec<u8>) -> Result<(), TuneError> {
    buf.clear();
    buf.resize(n, 0);
    s.read_exact(buf).map_err(TuneError::io("read the echo"))
}

/// The server's counters: one `files` `stats` request on a fresh connection to `files`,
/// its JSON body parsed.
pub fn stats(files: SocketAddr) -> Result<Value, TuneError> {
    let mut s = connect(files, true)?;
    let mut req = Vec::new();
    encode_header(&json!({"cmd": "stats"}), 0, &mut req)
        .map_err(|e| TuneError::Protocol(e.to_string()))?;
    write_all(&mut s, &req)?;
    let mut dec = response_decoder();
    let (mut pending, mut body) = (Vec::new(), Vec::new());
    read_frame(&mut s, &mut dec, &mut pending, &mut body)?;
    serde_json::from_slice(&body)
        .map_err(|e| TuneError::Protocol(format!("the server's stats are not JSON: {e}")))
}

/// A counter of one service in a `stats` body (or in one worker's part of it), 0 when the
/// body does not have it (a worker's part leaves out services that counted nothing).
pub fn counter(stats: &Value, service: &str, name: &str) -> u64 {
    stats
        .get("services")
        .and_then(|s| s.get(service))
        .and_then(|s| s.get(name))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}
