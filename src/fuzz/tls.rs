//! The reactor's TLS server stream (`tls::server_stream`: rustls's unbuffered API with our own
//! buffers, then our own TLS 1.3 record layer; and TLS 1.2 and TLS 1.3 kept in rustls) against a
//! real rustls client, over an in-memory socket whose reads and writes the
//! input sizes: records cut anywhere, bytes flipped or injected, key updates, close_notify and
//! a bare end in any order. Nothing may panic (a misuse of the unbuffered contract, such as
//! handing rustls fewer bytes than it has not discarded, panics inside rustls), the bytes a
//! connection keeps stay bounded, and without tampering the server reads exactly what the
//! client wrote, in order, and the client reads what the server wrote.

use std::io::{self, Read, Write};
use std::sync::{Arc, OnceLock};

use arbitrary::{Arbitrary, Unstructured};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ServerConfig};

use crate::tls::server_stream::ServerTls;

/// One step.
#[derive(Debug, Arbitrary)]
enum Op {
    /// Up to this many bytes of the client's records reach the server's socket (records are
    /// cut wherever this says).
    ClientSends(u16),
    /// The server reads into a buffer this large (at least 1).
    ServerReads(u16),
    /// What the server's socket took reaches the client, which processes it.
    ClientReceives,
    /// The client sends application data.
    ClientWrites(Vec<u8>),
    /// The server writes application data.
    ServerWrites(Vec<u8>),
    /// The server's socket takes at most this many bytes from now on (0: would block).
    SocketRoom(u16),
    /// The server sends what waits for the socket.
    ServerSendsPending,
    /// The client asks for new keys (TLS 1.3 KeyUpdate).
    ClientKeyUpdate,
    /// The client says close_notify.
    ClientCloseNotify,
    /// The client's TCP end.
    ClientFin,
    /// The server says close_notify.
    ServerCloseNotify,
    /// A byte on the way to the server is flipped.
    Flip { at: u16, xor: u8 },
    /// Bytes of the input's choosing reach the server.
    Inject(Vec<u8>),
}

/// A socket in memory: what the peer sent, and what the server wrote.
#[derive(Debug, Default)]
struct Pipe {
    inbound: Vec<u8>,
    fin: bool,
    outbound: Vec<u8>,
    room: usize,
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.inbound.is_empty() {
            return match self.fin {
                true => Ok(0),
                false => Err(io::ErrorKind::WouldBlock.into()),
            };
        }
        let n = buf.len().min(self.inbound.len());
        buf[..n].copy_from_slice(&self.inbound[..n]);
        self.inbound.drain(..n);
        Ok(n)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.room == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.room);
        self.outbound.extend_from_slice(&buf[..n]);
        self.room -= n;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The server's record keepers under test, each a server and a client configuration that
/// trust each other, made once: TLS 1.3 on our record layer (`tls/record.rs`), TLS 1.3 kept
/// in rustls (secret extraction off), TLS 1.2 (rustls's).
fn configs() -> &'static [(Arc<ServerConfig>, Arc<ClientConfig>); 3] {
    static CONFIGS: OnceLock<[(Arc<ServerConfig>, Arc<ClientConfig>); 3]> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let ours = crate::tls::trusting_pair().expect("test configurations");
        let mut keeps = (*ours.0).clone();
        keeps.enable_secret_extraction = false;
        let rustls13 = (Arc::new(keeps), Arc::clone(&ours.1));
        let tls12 =
            crate::tls::trusting_pair_of(&[&rustls::version::TLS12]).expect("test configurations");
        [ours, rustls13, tls12]
    })
}

/// The most a connection may hold between calls: a handshake message and a record (partial),
/// plus the plaintext of one read (held), plus records for the socket (what `ServerWrites`
/// can add, bounded by the input's size).
const HOLD_BOUND: usize = 0xffff + 18_437 + 512 * 1024;

pub fn fuzz_tls_server(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(keeper) = u.choose(configs()) else {
        return;
    };
    let (server_config, client_config) = keeper;
    let Ok(ops) = Vec::<Op>::arbitrary(&mut u) else {
        return;
    };
    let Ok(name) = ServerName::try_from("localhost") else {
        return;
    };
    let Ok(mut client) = ClientConnection::new(Arc::clone(client_config), name) else {
        return;
    };
    let pipe = Pipe {
        room: usize::MAX,
        ..Pipe::default()
    };
    let Ok(mut server) = ServerTls::server(pipe, Arc::clone(server_config)) else {
        return;
    };
    let (mut sent, mut got) = (Vec::new(), Vec::new());
    let (mut written, mut heard) = (Vec::new(), Vec::new());
    // The client's records on their way to the server's socket. `tampered`: bytes flipped
    // or injected, or a handshake the client abandoned, after which the server may refuse.
    let mut in_flight = Vec::new();
    let mut tampered = false;
    let mut closed = false;
    let mut client_closed = false;
    let mut key_updates = 0u32;
    let mut client_failed = false;
    let mut server_failed: Option<String> = None;
    for op in ops {
        match op {
            Op::ClientSends(max) => {
                while client.wants_write() {
                    if client.write_tls(&mut in_flight).is_err() {
                        break;
                    }
                }
                let n = usize::from(max).min(in_flight.len());
                server.socket.inbound.extend(in_flight.drain(..n));
            }
            Op::ServerReads(cap) => {
                // rustls debug-asserts that no fatal alert follows its close_notify, which a
                // bad record read after it would send (release builds send the alert): not
                // under test.
                if server_failed.is_some() || (closed && tampered) {
                    continue;
                }
                let mut buf = vec![0u8; usize::from(cap).max(1)];
                match server.read(&mut buf) {
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => server_failed = Some(format!("read: {e}")),
                }
            }
            // The same debug assertion on the client's side.
            Op::ClientReceives if client_closed && tampered => {}
            Op::ClientReceives => {
                let bytes = std::mem::take(&mut server.socket.outbound);
                let mut rest = &bytes[..];
                while !rest.is_empty() && !client_failed {
                    match client.read_tls(&mut rest) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    if client.process_new_packets().is_err() {
                        client_failed = true;
                    }
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = client.reader().read(&mut buf) {
                        heard.extend_from_slice(&buf[..n]);
                    }
                }
            }
            Op::ClientWrites(bytes) => {
                if client.writer().write_all(&bytes).is_ok() {
                    sent.extend_from_slice(&bytes);
                }
            }
            Op::ServerWrites(bytes) => {
                if server_failed.is_some() {
                    continue;
                }
                match server.write(&bytes) {
                    Ok(n) => written.extend_from_slice(&bytes[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => server_failed = Some(format!("write: {e}")),
                }
            }
            Op::SocketRoom(room) => server.socket.room = usize::from(room),
            Op::ServerSendsPending => {
                let _ = server.send_pending();
            }
            Op::ClientKeyUpdate => {
                // A flood of them is refused (rustls: TooManyKeyUpdateRequests), rightly.
                key_updates += 1;
                tampered |= key_updates > 8;
                let _ = client.refresh_traffic_keys();
            }
            Op::ClientCloseNotify => {
                // Before the handshake ends, an unauthenticated close_notify is the client
                // giving up: the server refuses the connection, rightly.
                tampered |= client.is_handshaking();
                client.send_close_notify();
                client_closed = true;
            }
            Op::ClientFin => server.socket.fin = true,
            Op::ServerCloseNotify => {
                server.close_notify();
                closed = true;
            }
            Op::Flip { at, xor } => {
                let len = server.socket.inbound.len();
                if len > 0 && xor != 0 {
                    server.socket.inbound[usize::from(at) % len] ^= xor;
                    tampered = true;
                }
            }
            Op::Inject(bytes) => {
                tampered |= !bytes.is_empty();
                server.socket.inbound.extend_from_slice(&bytes);
            }
        }
        assert!(
            server.held_bytes() <= HOLD_BOUND + data.len(),
            "the connection holds {} bytes",
            server.held_bytes()
        );
        if !tampered {
            assert!(sent.starts_with(&got), "the server read what was not sent");
            assert!(
                server_failed.is_none(),
                "an untampered connection failed: {server_failed:?}"
            );
        }
        if !tampered && !client_failed {
            assert!(
                written.starts_with(&heard),
                "the client heard what was not written"
            );
        }
    }
}
