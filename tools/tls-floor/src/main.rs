//! `tls-floor PLAIN_ADDR TLS_ADDR CERT KEY`: the floor under issue 26's TLS/plain targets, as
//! `tools/floor-echo.c` is the floor under socklab's plaintext echo. One thread, one
//! edge-triggered poll (mio), read until a short read, one send per read, no timers, no
//! limits, no logging: the least an echo server can do per request, twice — in plain text on
//! one listener, and on the other the least a TLS 1.3 server must add once its handshake is
//! over: open each record a read brought (ring's AES-GCM, in place), seal what they carried as
//! one record (padded to whole AES blocks, as socklab pads), send it. Whatever socklab spends
//! per request above this loop's two listeners is socklab's own.
//!
//! The handshake is rustls's (0.23, the ring provider, socklab's key-exchange order, TLS 1.3
//! only), fed one whole record at a time so that nothing after its last message is left
//! inside rustls; then rustls hands the traffic secrets over and the records are this
//! program's. It is a measuring tool, not a server: a send the kernel does not take whole, a
//! record that does not open, anything but application data after the handshake (an alert,
//! a key update) closes the connection, counted and printed at exit (with `socklab bench`'s
//! traffic none happens, and the counts show it). Prints `listening plain ADDR` and
//! `listening tls ADDR` once bound.

use std::io::{self, Read, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::{ConnectionTrafficSecrets, ServerConfig, ServerConnection};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use signal_hook::consts::{SIGINT, SIGTERM};

const PLAIN_LISTENER: Token = Token(usize::MAX - 1);
const TLS_LISTENER: Token = Token(usize::MAX - 2);

/// Bytes one `recv` asks for (floor-echo's buffer).
const READ: usize = 65536;
/// A record's header, and the AEAD tag every TLS 1.3 suite appends.
const HEADER: usize = 5;
const TAG: usize = 16;
/// The most data one record of ours carries (2^14 less the content-type byte).
const MAX_DATA: usize = 16_383;
const APPLICATION_DATA: u8 = 23;
/// The most handshake bytes a connection may hold before its handshake ends.
const MAX_HANDSHAKE: usize = 128 * 1024;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, plain, tls, cert, key] = args.as_slice() else {
        eprintln!("usage: tls-floor PLAIN_HOST:PORT TLS_HOST:PORT CERT.pem KEY.pem");
        return ExitCode::from(2);
    };
    let config = match config(cert, key) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tls-floor: {e}");
            return ExitCode::from(2);
        }
    };
    match serve(plain, tls, config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tls-floor: {e}");
            ExitCode::FAILURE
        }
    }
}

/// socklab's server configuration in the respects that cost per request: rustls's safe
/// defaults with the ring provider, X25519 first, secrets handed over after the handshake.
fn config(cert: &str, key: &str) -> Result<Arc<ServerConfig>, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{cert}: {e}"))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{key}: {e}"))?;
    #[allow(deprecated)]
    let mut provider = rustls::crypto::ring::default_provider();
    use rustls::crypto::ring::kx_group;
    provider.kx_groups = vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1];
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    config.enable_secret_extraction = true;
    Ok(Arc::new(config))
}

/// One direction's key, IV and next sequence number.
struct Keys {
    key: LessSafeKey,
    iv: [u8; aead::NONCE_LEN],
    seq: u64,
}

impl Keys {
    fn new((seq, secrets): (u64, ConnectionTrafficSecrets)) -> Result<Keys, String> {
        let (algorithm, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            _ => return Err("a cipher suite this floor lacks".into()),
        };
        let key = UnboundKey::new(algorithm, key.as_ref()).map_err(|_| "ring refused the key")?;
        let iv = <[u8; aead::NONCE_LEN]>::try_from(iv.as_ref()).map_err(|_| "a bad IV")?;
        Ok(Keys {
            key: LessSafeKey::new(key),
            iv,
            seq,
        })
    }

    /// The next record's nonce: the IV XOR the sequence number (RFC 8446 §5.3).
    fn next_nonce(&mut self) -> Nonce {
        let mut nonce = self.iv;
        for (n, s) in nonce.iter_mut().rev().zip(self.seq.to_le_bytes()) {
            *n ^= s;
        }
        self.seq = self.seq.wrapping_add(1);
        Nonce::assume_unique_for_key(nonce)
    }
}

/// A TLS connection after its handshake: its keys and the start of a record not all come.
struct Records {
    rx: Keys,
    tx: Keys,
    partial: Vec<u8>,
}

/// A TLS connection during its handshake: rustls, and what the socket gave it has not seen.
struct Handshake {
    conn: ServerConnection,
    unread: Vec<u8>,
}

enum State {
    Plain,
    Handshake(Box<Handshake>),
    Tls(Box<Records>),
}

struct Conn {
    stream: TcpStream,
    state: State,
}

/// Why connections were closed other than by their peer, printed at exit.
#[derive(Default)]
struct Counts {
    short_sends: u64,
    bad_records: u64,
    not_data: u64,
    handshakes_failed: u64,
}

/// The buffers every connection uses in turn.
struct Scratch {
    input: Vec<u8>,
    output: Vec<u8>,
}

fn serve(plain: &str, tls: &str, config: Arc<ServerConfig>) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut plain_listener = listen(plain)?;
    let mut tls_listener = listen(tls)?;
    println!("listening plain {}", plain_listener.local_addr()?);
    println!("listening tls {}", tls_listener.local_addr()?);
    io::stdout().flush()?;
    let registry = poll.registry();
    registry.register(&mut plain_listener, PLAIN_LISTENER, Interest::READABLE)?;
    registry.register(&mut tls_listener, TLS_LISTENER, Interest::READABLE)?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGTERM, SIGINT] {
        // A poll woken by the signal (EINTR) sees the flag and ends with the counts printed.
        signal_hook::flag::register(signal, stop.clone())?;
    }

    let mut conns: slab::Slab<Conn> = slab::Slab::new();
    let mut events = Events::with_capacity(1024);
    let mut scratch = Scratch {
        input: vec![0; READ + 2 * 16_640],
        output: Vec::with_capacity(READ + 64 * 1024),
    };
    let mut counts = Counts::default();
    while !stop.load(Ordering::Relaxed) {
        match poll.poll(&mut events, None) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for event in &events {
            match event.token() {
                PLAIN_LISTENER => accept(&plain_listener, &poll, &mut conns, None),
                TLS_LISTENER => accept(&tls_listener, &poll, &mut conns, Some(&config)),
                Token(key) => {
                    let Some(conn) = conns.get_mut(key) else {
                        continue;
                    };
                    if let Err(why) = serve_conn(conn, &mut scratch) {
                        why.count(&mut counts);
                        let _ = poll.registry().deregister(&mut conn.stream);
                        conns.remove(key);
                    }
                }
            }
        }
    }
    eprintln!(
        "tls-floor: {} short sends, {} records that did not open, {} records not application data, {} handshakes failed",
        counts.short_sends, counts.bad_records, counts.not_data, counts.handshakes_failed
    );
    Ok(())
}

fn listen(addr: &str) -> io::Result<TcpListener> {
    let addr = addr
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
    TcpListener::bind(addr)
}

fn accept(
    listener: &TcpListener,
    poll: &Poll,
    conns: &mut slab::Slab<Conn>,
    tls: Option<&Arc<ServerConfig>>,
) {
    while let Ok((mut stream, _)) = listener.accept() {
        let state = match tls {
            None => State::Plain,
            Some(config) => match ServerConnection::new(config.clone()) {
                Ok(conn) => State::Handshake(Box::new(Handshake {
                    conn,
                    unread: Vec::new(),
                })),
                Err(_) => continue,
            },
        };
        if stream.set_nodelay(true).is_err() {
            continue;
        }
        let entry = conns.vacant_entry();
        if poll
            .registry()
            .register(&mut stream, Token(entry.key()), Interest::READABLE)
            .is_err()
        {
            continue;
        }
        entry.insert(Conn { stream, state });
    }
}

/// Why a connection ends.
enum End {
    /// Its peer closed it, or the socket failed.
    Closed,
    ShortSend,
    BadRecord,
    NotData,
    Handshake,
}

impl End {
    fn count(self, counts: &mut Counts) {
        match self {
            End::Closed => {}
            End::ShortSend => counts.short_sends += 1,
            End::BadRecord => counts.bad_records += 1,
            End::NotData => counts.not_data += 1,
            End::Handshake => counts.handshakes_failed += 1,
        }
    }
}

fn serve_conn(conn: &mut Conn, scratch: &mut Scratch) -> Result<(), End> {
    match &mut conn.state {
        State::Plain => echo_plain(&mut conn.stream, &mut scratch.input),
        State::Tls(records) => echo_tls(&mut conn.stream, records, scratch),
        State::Handshake(hs) => {
            if !handshake(&mut conn.stream, hs)? {
                return Ok(());
            }
            let State::Handshake(hs) = std::mem::replace(&mut conn.state, State::Plain) else {
                return Err(End::Handshake);
            };
            let mut records = take_keys(*hs)?;
            // What came after the handshake's last record, and whatever the socket holds,
            // raise no new edge: served now.
            let served = echo_tls(&mut conn.stream, &mut records, scratch);
            conn.state = State::Tls(records);
            served
        }
    }
}

/// Receives into `buf` once: the bytes read, `Ok(None)` when the socket is empty.
fn recv(stream: &mut TcpStream, buf: &mut [u8]) -> Result<Option<usize>, End> {
    loop {
        match stream.read(buf) {
            Ok(0) => return Err(End::Closed),
            Ok(n) => return Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(_) => return Err(End::Closed),
        }
    }
}

/// Sends all of `bytes` in one call, or ends the connection (floor-echo's rule).
fn send(stream: &mut TcpStream, bytes: &[u8]) -> Result<(), End> {
    loop {
        match stream.write(bytes) {
            Ok(n) if n == bytes.len() => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(_) | Err(_) => return Err(End::ShortSend),
        }
    }
}

/// floor-echo's loop: what a read brought, sent back, until a short read.
fn echo_plain(stream: &mut TcpStream, input: &mut [u8]) -> Result<(), End> {
    let buf = input.get_mut(..READ).ok_or(End::Closed)?;
    while let Some(n) = recv(stream, buf)? {
        send(stream, buf.get(..n).ok_or(End::Closed)?)?;
        if n < READ {
            return Ok(());
        }
    }
    Ok(())
}

/// The length of the whole record at the start of `bytes`, header included, once it has all
/// come.
fn whole_record(bytes: &[u8]) -> Option<usize> {
    let &[_, _, _, hi, lo] = bytes.first_chunk::<HEADER>()?;
    let len = HEADER + usize::from(u16::from_be_bytes([hi, lo]));
    (bytes.len() >= len).then_some(len)
}

/// The TLS loop: each read's whole records opened in place (each one's data written right
/// after the data before it), the data sealed back as one record per 16 KiB and sent, until a
/// short read. The start of a record not all come waits in `partial`.
fn echo_tls(
    stream: &mut TcpStream,
    records: &mut Records,
    scratch: &mut Scratch,
) -> Result<(), End> {
    loop {
        let kept = records.partial.len();
        // Past the first read, `partial` is less than a record; what a client sent after its
        // Finished, before the handshake's end was seen, may be more.
        if scratch.input.len() < kept + READ {
            scratch.input.resize(kept + READ, 0);
        }
        let input = scratch.input.get_mut(..kept + READ).ok_or(End::Closed)?;
        input
            .get_mut(..kept)
            .ok_or(End::Closed)?
            .copy_from_slice(&records.partial);
        let read = match recv(stream, input.get_mut(kept..).ok_or(End::Closed)?)? {
            Some(n) => n,
            // The bytes kept from the handshake may hold whole records.
            None if kept > 0 => 0,
            None => return Ok(()),
        };
        let run = input.get_mut(..kept + read).ok_or(End::Closed)?;
        let (consumed, data) = open_records(&mut records.rx, run)?;
        records.partial.clear();
        records
            .partial
            .extend_from_slice(run.get(consumed..).unwrap_or_default());
        if data > 0 {
            scratch.output.clear();
            for chunk in run.get(..data).unwrap_or_default().chunks(MAX_DATA) {
                seal(&mut records.tx, chunk, &mut scratch.output)?;
            }
            send(stream, &scratch.output)?;
        }
        if read < READ {
            return Ok(());
        }
    }
}

/// Opens the whole records at the start of `run`: returns the bytes they took and the bytes
/// of data now at `run`'s start.
fn open_records(rx: &mut Keys, run: &mut [u8]) -> Result<(usize, usize), End> {
    let (mut consumed, mut data) = (0, 0);
    while let Some(len) = whole_record(run.get(consumed..).unwrap_or_default()) {
        let header = *run
            .get(consumed..)
            .and_then(|r| r.first_chunk::<HEADER>())
            .ok_or(End::BadRecord)?;
        let end = consumed + len;
        let area = run.get_mut(data..end).ok_or(End::BadRecord)?;
        let sealed_at = consumed - data + HEADER;
        let nonce = rx.next_nonce();
        let inner = rx
            .key
            .open_within(nonce, Aad::from(header), area, sealed_at..)
            .map_err(|_| End::BadRecord)?;
        let type_at = inner.iter().rposition(|&b| b != 0).ok_or(End::NotData)?;
        if inner.get(type_at) != Some(&APPLICATION_DATA) {
            return Err(End::NotData);
        }
        data += type_at;
        consumed = end;
    }
    Ok((consumed, data))
}

/// Seals `content` as one application-data record onto `out`, its inner plaintext padded to
/// whole AES blocks.
fn seal(tx: &mut Keys, content: &[u8], out: &mut Vec<u8>) -> Result<(), End> {
    let inner = (content.len() + 1).next_multiple_of(16);
    let len = u16::try_from(inner + TAG).map_err(|_| End::BadRecord)?;
    let [hi, lo] = len.to_be_bytes();
    let header = [APPLICATION_DATA, 3, 3, hi, lo];
    let start = out.len();
    out.extend_from_slice(&header);
    out.extend_from_slice(content);
    out.push(APPLICATION_DATA);
    out.resize(start + HEADER + inner, 0);
    let nonce = tx.next_nonce();
    let sealed = out.get_mut(start + HEADER..).ok_or(End::BadRecord)?;
    let tag = tx
        .key
        .seal_in_place_separate_tag(nonce, Aad::from(header), sealed)
        .map_err(|_| End::BadRecord)?;
    out.extend_from_slice(tag.as_ref());
    Ok(())
}

/// Drives the handshake with what the socket holds, one whole record at a time, and sends
/// rustls's answers; `Ok(true)` once it is over and its last flight (the session tickets with
/// it) is sent.
fn handshake(stream: &mut TcpStream, hs: &mut Handshake) -> Result<bool, End> {
    let mut chunk = [0u8; 16 * 1024];
    while let Some(n) = recv(stream, &mut chunk)? {
        hs.unread
            .extend_from_slice(chunk.get(..n).ok_or(End::Handshake)?);
        if hs.unread.len() > MAX_HANDSHAKE {
            return Err(End::Handshake);
        }
    }
    let mut fed = 0;
    while hs.conn.is_handshaking() {
        let Some(len) = whole_record(hs.unread.get(fed..).unwrap_or_default()) else {
            break;
        };
        let mut record = hs.unread.get(fed..fed + len).unwrap_or_default();
        while !record.is_empty() {
            hs.conn.read_tls(&mut record).map_err(|_| End::Handshake)?;
        }
        hs.conn.process_new_packets().map_err(|_| End::Handshake)?;
        fed += len;
    }
    hs.unread.drain(..fed);
    while hs.conn.wants_write() {
        match hs.conn.write_tls(stream) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // The handshake's flights are a few KiB, which a fresh socket takes whole.
            Err(_) => return Err(End::Handshake),
        }
    }
    Ok(!hs.conn.is_handshaking())
}

/// The records become ours: rustls hands over the traffic secrets and sequence numbers; what
/// followed the handshake's last record is the start of the records.
fn take_keys(hs: Handshake) -> Result<Box<Records>, End> {
    let secrets = hs
        .conn
        .dangerous_extract_secrets()
        .map_err(|_| End::Handshake)?;
    Ok(Box::new(Records {
        rx: Keys::new(secrets.rx).map_err(|_| End::Handshake)?,
        tx: Keys::new(secrets.tx).map_err(|_| End::Handshake)?,
        partial: hs.unread,
    }))
}
