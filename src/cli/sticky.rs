//! `socklab sticky`: the sticky-packet (粘包) lesson as a live demonstration.
//!
//! N small messages (`msg-000 hello`, ...) go back to back, one write each, to the raw `echo`
//! service; the reads of the echo show how TCP merged and split them: a byte stream keeps no
//! message boundaries. Then the same messages go as `files` `echo` frames (4-byte
//! little-endian header length, JSON header with `size`, body), and the sans-IO frame decoder
//! recovers every one intact however the reads fall. `--nodelay off` turns Nagle's algorithm
//! on for the client, which merges small writes further.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;

use clap::{Args, ValueEnum};

use crate::addr::ListenAddr;
use crate::cli::tune::TuneError;
use crate::cli::tune::server::Server;
use crate::cli::tune::wire::{self, ClientOptions};
use crate::client::{AuthError, client_secret, handshake};
use crate::frame::{Leftover, Part};
use crate::net::StdStream;
use crate::service::auth::Secret;
use crate::tls::client::{ClientStream, ClientTls, TlsArgs};

/// On or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    /// On.
    On,
    /// Off.
    Off,
}

/// Show the sticky-packet problem live: message boundaries lost over raw echo, kept by frames.
#[derive(Debug, Args)]
pub struct StickyArgs {
    /// How many messages to send.
    #[arg(long, short = 'n', value_name = "N", default_value_t = 20)]
    pub count: usize,
    /// The echo service to use [default: start a server of our own on loopback].
    #[arg(long, alias = "echo-addr", value_name = "ADDR")]
    pub addr: Option<SocketAddr>,
    /// The files service to use [default: start a server of our own on loopback].
    #[arg(long, value_name = "ADDR")]
    pub files_addr: Option<SocketAddr>,
    /// The client's TCP_NODELAY (off: Nagle's algorithm merges small writes).
    #[arg(long, value_enum, default_value = "on")]
    pub nodelay: Switch,
    /// Bytes asked for per read (a tutorial's `recv(1024)`; try 16 to see messages split).
    #[arg(long, value_name = "BYTES", default_value_t = 1024)]
    pub read_size: usize,
    /// File holding the shared secret, for servers that ask for authentication (else the
    /// SOCKLAB_SECRET environment variable, if set).
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<std::path::PathBuf>,
    /// TLS to the servers named by --addr and --files-addr (the server of our own is plain):
    /// records change nothing of the lesson, the plaintext still arrives as a stream.
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// Why the demonstration failed.
#[derive(Debug, thiserror::Error)]
pub enum StickyError {
    /// Starting or talking to a server.
    #[error(transparent)]
    Tune(#[from] TuneError),
    /// Starting a server.
    #[error(transparent)]
    Server(#[from] crate::cli::tune::server::ServerError),
    /// Not every message came back intact through frames.
    /// The authentication handshake.
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Tls(#[from] crate::tls::client::TlsClientError),
    #[error("--tls needs --addr and --files-addr: the server sticky starts itself is plain")]
    TlsNeedsAddr,
    #[error("only {intact} of {count} messages came back intact through frames")]
    NotIntact {
        /// Intact ones.
        intact: usize,
        /// Sent.
        count: usize,
    },
}

/// Runs `socklab sticky`.
pub fn run(args: &StickyArgs) -> ExitCode {
    match demo(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ StickyError::TlsNeedsAddr) => {
            eprintln!("socklab sticky: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("socklab sticky: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A connection of the demonstration: the stream (TLS or not) and its TCP socket, whose
/// options are shown.
struct Link {
    stream: ClientStream,
    tcp: TcpStream,
}

/// Connects (with TLS when asked), and answers the server's challenge if it sends one.
fn connect(
    addr: SocketAddr,
    nodelay: bool,
    secret: Option<&Secret>,
    tls: Option<&ClientTls>,
) -> Result<Link, StickyError> {
    let tcp = wire::connect(addr, nodelay)?;
    let socket = tcp.try_clone().map_err(TuneError::io("clone the socket"))?;
    let mut s = match tls {
        Some(tls) => tls
            .connect(StdStream::Tcp(socket))
            .map_err(TuneError::io(format!("TLS to {addr}")))?,
        None => ClientStream::Plain(StdStream::Tcp(socket)),
    };
    let opening = handshake(&mut s, &addr.to_string(), secret, wire::IO_TIMEOUT, b"")?;
    s.set_read_timeout(wire::IO_TIMEOUT)
        .map_err(TuneError::io("set socket options"))?;
    if !opening.early.is_empty() {
        return Err(TuneError::Protocol(format!(
            "{addr} sent {} bytes before any request",
            opening.early.len()
        ))
        .into());
    }
    Ok(Link { stream: s, tcp })
}

/// Writes all of `data`.
fn write_all(s: &mut impl Write, data: &[u8]) -> Result<(), TuneError> {
    s.write_all(data).map_err(TuneError::io("write"))
}

/// The messages sent.
fn messages(count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| format!("msg-{i:03} hello").into_bytes())
        .collect()
}

/// Text for a chunk of bytes, shortened when long.
fn show(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    if s.chars().count() > 100 {
        let head: String = s.chars().take(100).collect();
        format!("{head:?}...")
    } else {
        format!("{s:?}")
    }
}

/// The demonstration.
fn demo(args: &StickyArgs) -> Result<(), StickyError> {
    let nodelay = args.nodelay == Switch::On;
    if args.tls.tls && (args.addr.is_none() || args.files_addr.is_none()) {
        return Err(StickyError::TlsNeedsAddr);
    }
    let count = args.count.max(1);
    let read_size = args.read_size.max(1);
    let mut own = Vec::new();
    if args.addr.is_none() {
        own.push("echo");
    }
    if args.files_addr.is_none() {
        own.push("files");
    }
    let server = if own.is_empty() {
        None
    } else {
        Some(Server::start(&own, &[])?)
    };
    let pick =
        |given: Option<SocketAddr>, service: &str| -> Result<(SocketAddr, String), StickyError> {
            match (given, &server) {
                (Some(a), _) => Ok((a, "existing server: options unknown".into())),
                (None, Some(s)) => {
                    let l = s.listener(service)?;
                    Ok((l.addr, l.options_text.clone()))
                }
                (None, None) => Err(TuneError::Protocol("no server".into()).into()),
            }
        };
    let (echo_addr, echo_opts) = pick(args.addr, "echo")?;
    let (files_addr, files_opts) = pick(args.files_addr, "files")?;
    let secret = client_secret(args.secret_file.as_deref())?;
    let echo_tls = args.tls.client(&ListenAddr::Inet(echo_addr))?;
    let files_tls = args.tls.client(&ListenAddr::Inet(files_addr))?;
    // Connected (and authenticated) before anything is printed: a server that asks for a
    // secret we do not have is an error on its own.
    let mut s = connect(echo_addr, nodelay, secret.as_ref(), echo_tls.as_ref())?;
    println!("server echo  {echo_addr}: {echo_opts}");
    println!("server files {files_addr}: {files_opts}");
    let msgs = messages(count);
    let total: usize = msgs.iter().map(Vec::len).sum();

    println!();
    println!("== raw echo: {count} messages, one write each, back to back ==");
    println!("client: {}", ClientOptions::of(&s.tcp)?);
    for m in &msgs {
        write_all(&mut s.stream, m)?;
    }
    let reads = read_total(&mut s.stream, total, read_size)?;
    drop(s);
    // Where each message starts and ends in the stream.
    let mut bounds = Vec::with_capacity(count);
    let mut at = 0;
    for m in &msgs {
        bounds.push((at, at + m.len()));
        at += m.len();
    }
    let mut start = 0;
    let mut histogram: std::collections::BTreeMap<String, usize> = Default::default();
    for (i, r) in reads.iter().enumerate() {
        let end = start + r.len();
        let whole = bounds
            .iter()
            .filter(|(a, b)| *a >= start && *b <= end)
            .count();
        let parts = bounds
            .iter()
            .filter(|(a, b)| *a < end && *b > start && !(*a >= start && *b <= end))
            .count();
        let what = match (whole, parts) {
            (w, 0) => format!("{w} whole message(s)"),
            (w, p) => format!("{w} whole message(s) and {p} piece(s) of split ones"),
        };
        println!(
            "read {:>3}: {:>5} bytes  {what}  {}",
            i + 1,
            r.len(),
            show(r)
        );
        *histogram.entry(what).or_default() += 1;
        start = end;
    }
    println!(
        "raw echo: {count} messages in {count} writes came back in {} reads",
        reads.len()
    );
    for (what, n) in &histogram {
        println!("  {n} read(s) carried {what}");
    }
    if reads.len() == count && histogram.len() == 1 && histogram.contains_key("1 whole message(s)")
    {
        println!(
            "This time every read happened to carry one message, but nothing in the bytes says where one ends: the boundaries are lost all the same."
        );
    } else {
        println!(
            "Message boundaries lost: the reads do not line up with the writes, and nothing in the bytes says where `msg-007 hello` ends and the next begins."
        );
    }

    println!();
    println!(
        "== files echo frames: the same {count} messages, one frame (header + body) per write =="
    );
    let mut s = connect(files_addr, nodelay, secret.as_ref(), files_tls.as_ref())?;
    println!("client: {}", ClientOptions::of(&s.tcp)?);
    for (i, m) in msgs.iter().enumerate() {
        let mut frame = wire::echo_frame_header(m.len(), Some(i as u64))?;
        frame.extend_from_slice(m);
        write_all(&mut s.stream, &frame)?;
    }
    let intact = read_frames(&mut s.stream, &msgs, read_size)?;
    println!(
        "frames: {intact} of {count} messages recovered intact by the frame decoder, however the reads fell"
    );

    println!();
    println!("why:");
    println!(
        "  TCP carries a byte stream: the sender's kernel may put several writes in one segment, split a write over segments, and the receiver's read returns whatever has arrived, up to the size asked for. So one read can hold many messages (they \"stick\") or part of one."
    );
    if nodelay {
        println!(
            "  client TCP_NODELAY is on: each small write leaves at once in its own segment, yet the echo server reads several at a time and writes them back together, so the reads here still merge them. Run with --nodelay off to see Nagle's algorithm merge them on the way out too."
        );
    } else {
        println!(
            "  client TCP_NODELAY is off: Nagle's algorithm holds a small write while earlier data is unacknowledged, so after the first message the rest are collected and leave together in one segment when the ACK comes: fewer, bigger reads."
        );
    }
    println!(
        "  The cure is framing: each message says how long it is (here a 4-byte length, a JSON header with `size`, then the body), and the reader decodes frames out of whatever the reads bring, keeping the unfinished tail for the next read."
    );
    if let Some(s) = server {
        s.stop();
    }
    if intact == count {
        Ok(())
    } else {
        Err(StickyError::NotIntact { intact, count })
    }
}

/// Reads until `total` bytes came, `read_size` at most per read; returns each read's bytes.
fn read_total(
    s: &mut impl Read,
    total: usize,
    read_size: usize,
) -> Result<Vec<Vec<u8>>, TuneError> {
    let mut reads = Vec::new();
    let mut got = 0;
    let mut buf = vec![0u8; read_size];
    while got < total {
        let n = s.read(&mut buf).map_err(TuneError::io("read the echo"))?;
        if n == 0 {
            return Err(TuneError::Protocol(format!(
                "echo closed after {got} of {total} bytes"
            )));
        }
        reads.push(buf.get(..n).unwrap_or_default().to_vec());
        got += n;
    }
    Ok(reads)
}

/// Reads the response frames of `msgs`, printing each read and each frame; returns how many
/// bodies equal their message.
fn read_frames(s: &mut impl Read, msgs: &[Vec<u8>], read_size: usize) -> Result<usize, TuneError> {
    let mut dec = wire::response_decoder();
    // Holds the start of a frame that a read cut off, until the next read completes it.
    let mut pending = Leftover::new();
    let mut buf = vec![0u8; read_size];
    let mut header = String::new();
    let mut body = Vec::new();
    let mut frames = 0;
    let mut intact = 0;
    let mut reads = 0;
    while frames < msgs.len() {
        let n = s.read(&mut buf).map_err(TuneError::io("read frames"))?;
        if n == 0 {
            return Err(TuneError::Protocol(format!(
                "files closed after {frames} of {} frames",
                msgs.len()
            )));
        }
        reads += 1;
        println!("read {reads:>3}: {n:>5} bytes");
        let chunk = buf.get(..n).unwrap_or_default();
        pending
            .feed(&mut dec, chunk, |part| match part {
                Part::Header(h) => {
                    header = h.raw.to_string();
                    body.clear();
                }
                Part::BodyChunk(c) => body.extend_from_slice(c),
                Part::BodyEnd => {
                    let ok = msgs.get(frames) == Some(&body);
                    intact += usize::from(ok);
                    println!(
                        "    frame {frames:>3}: header {header}  body {}  {}",
                        show(&body),
                        if ok { "intact" } else { "DIFFERS" }
                    );
                    frames += 1;
                }
            })
            .map_err(|e| TuneError::Protocol(format!("bad response frame: {e}")))?;
        if !pending.is_empty() || dec.body_remaining() > 0 {
            println!("    (the start of the next frame is kept for the next read)");
        }
    }
    println!("{} frames arrived in {reads} reads", msgs.len());
    Ok(intact)
}
