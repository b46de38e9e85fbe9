//! What TLS costs a server per request before any of socklab's own code: rustls's unbuffered
//! server connection with the ring provider (the crates socklab's TLS transport is built on,
//! the same versions and cipher suite: TLS 1.3, AES-256-GCM) decrypting one record of a
//! request and encrypting one record of its reply, in memory, no sockets.
//!
//! Rows, per request and reply: plaintext 64 B (one request a record: the `1000x1` cell of
//! `tools/tls-bench.sh`) and 1,024 B (16 requests of 64 B in one record each way: its `50x16`
//! cell), on one connection (its keys and state stay in cache) and round-robin over 1,000
//! connections (each turn finds its connection's state out of the nearer caches, as a server
//! with 1,000 busy connections does) and, for 64 B, over 10,000 (their states outgrow the
//! caches altogether). The figures are the floor under the TLS/plain ratios of
//! BENCHMARKS.md: the server's CPU per plaintext request is measured there in the same units.
//!
//! Group `tls_server_stream`: the same cells served by socklab's own server side (its TLS 1.3
//! record layer, after rustls's handshake) over a stream in memory, read and write as the
//! reactor calls them: what the server's own code adds to the cipher.
//!
//! Group `tls_aead_alone`: ring's AEADs alone (AES-256-GCM, the suite above; AES-128-GCM and
//! ChaCha20-Poly1305, TLS 1.3's other two), one record opened and one sealed of 64 B and 1,024 B:
//! the cipher's share of those figures, which no record layer can go under.
//!
//! Run: `cargo bench --bench tls_records -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rustls::pki_types::ServerName;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::ConnectionState;
use rustls::{ClientConfig, ClientConnection, ServerConfig};

/// A server and a client configuration that trust each other, on socklab's provider (ring,
/// X25519 first; the key exchange is not measured here).
fn configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    socklab::tls_trusting_pair().unwrap()
}

/// A connection after its handshake: the client (buffered, which only makes records here) and
/// the server (unbuffered, as socklab's transport).
struct Pair {
    client: ClientConnection,
    server: UnbufferedServerConnection,
}

/// Runs the handshake in memory.
fn connect(server_config: &Arc<ServerConfig>, client_config: &Arc<ClientConfig>) -> Pair {
    let name = ServerName::try_from("localhost").unwrap();
    let mut client = ClientConnection::new(Arc::clone(client_config), name).unwrap();
    let mut server = UnbufferedServerConnection::new(Arc::clone(server_config)).unwrap();
    let mut to_server: Vec<u8> = Vec::new();
    for _ in 0..16 {
        while client.wants_write() {
            client.write_tls(&mut to_server).unwrap();
        }
        let mut to_client = Vec::new();
        let ready = serve_handshake(&mut server, &mut to_server, &mut to_client);
        client.read_tls(&mut to_client.as_slice()).unwrap();
        client.process_new_packets().unwrap();
        if ready && !client.is_handshaking() && to_server.is_empty() && !client.wants_write() {
            return Pair { client, server };
        }
    }
    panic!("the handshake did not finish");
}

/// One round of the server's side of the handshake; true once it may send application data.
fn serve_handshake(
    server: &mut UnbufferedServerConnection,
    incoming: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> bool {
    loop {
        let status = server.process_tls_records(incoming);
        let discard = status.discard;
        let ready = match status.state.unwrap() {
            ConnectionState::EncodeTlsData(mut message) => {
                let mut buf = vec![0u8; 16 * 1024];
                let n = message.encode(&mut buf).unwrap();
                out.extend_from_slice(&buf[..n]);
                None
            }
            ConnectionState::TransmitTlsData(transmit) => {
                transmit.done();
                None
            }
            ConnectionState::WriteTraffic(_) => Some(true),
            ConnectionState::BlockedHandshake => Some(false),
            other => panic!("unexpected state in the handshake: {other:?}"),
        };
        incoming.drain(..discard);
        if let Some(ready) = ready {
            return ready;
        }
    }
}

/// The server's work for one request: decrypts `record` (one whole record) and encrypts
/// `reply` into `out`. Returns the plaintext length, which must be the request's.
fn serve_one(
    server: &mut UnbufferedServerConnection,
    record: &mut [u8],
    reply: &[u8],
    out: &mut [u8],
) -> usize {
    let mut plain = 0;
    let mut at = 0;
    loop {
        let status = server.process_tls_records(&mut record[at..]);
        let mut discard = status.discard;
        match status.state.unwrap() {
            ConnectionState::ReadTraffic(mut records) => {
                while let Some(r) = records.next_record() {
                    let r = r.unwrap();
                    discard += r.discard;
                    plain += black_box(r.payload).len();
                }
            }
            ConnectionState::WriteTraffic(mut traffic) => {
                let n = traffic.encrypt(reply, out).unwrap();
                black_box(&out[..n]);
                return plain;
            }
            other => panic!("unexpected state: {other:?}"),
        }
        at += discard;
    }
}

/// Requests of `size` bytes on `conns` connections taken in turn: server time per request.
fn bench_requests(c: &mut Criterion) {
    let (server_config, client_config) = configs();
    let mut group = c.benchmark_group("tls_server_record");
    // 10,000 connections: their states together outgrow this machine's caches, as a busy
    // server's do between two turns of one connection (the kernel's own per-socket work takes
    // its share of the caches too); 64 B only, to keep the set-up short.
    let cells = [
        (64usize, 1usize),
        (64, 1000),
        (64, 10_000),
        (1024, 1),
        (1024, 1000),
    ];
    for (size, conns) in cells {
        let mut pairs: Vec<Pair> = (0..conns)
            .map(|_| connect(&server_config, &client_config))
            .collect();
        let request: Vec<u8> = (0..size).map(|i| i as u8).collect();
        let mut out = vec![0u8; size + 64];
        group.throughput(Throughput::Elements(1));
        let id = BenchmarkId::new(format!("{size}B"), format!("{conns}conns"));
        group.bench_function(id, |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                let mut left = iters;
                let mut records: Vec<Vec<u8>> = Vec::with_capacity(conns);
                while left > 0 {
                    // A round: one request on each connection, made by its client (not
                    // timed), then served in the same order (timed).
                    let round = usize::try_from(left).unwrap_or(usize::MAX).min(conns);
                    records.clear();
                    for pair in pairs.iter_mut().take(round) {
                        pair.client.writer().write_all(&request).unwrap();
                        let mut record = Vec::with_capacity(size + 64);
                        pair.client.write_tls(&mut record).unwrap();
                        records.push(record);
                    }
                    let start = Instant::now();
                    for (pair, record) in pairs.iter_mut().zip(records.iter_mut()) {
                        let n = serve_one(&mut pair.server, record, &request, &mut out);
                        debug_assert_eq!(n, size);
                    }
                    spent += start.elapsed();
                    left -= round as u64;
                }
                spent
            });
        });
    }
    group.finish();
}

/// A byte stream in memory: what the server reads comes from `inbound`, what it writes goes
/// to `outbound` (the socket's copies, without the kernel).
#[derive(Default)]
struct Memory {
    inbound: Vec<u8>,
    read_at: usize,
    outbound: Vec<u8>,
}

impl std::io::Read for Memory {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let rest = &self.inbound[self.read_at..];
        if rest.is_empty() {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.read_at += n;
        if self.read_at == self.inbound.len() {
            self.inbound.clear();
            self.read_at = 0;
        }
        Ok(n)
    }
}

impl std::io::Write for Memory {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.outbound.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A connection after its handshake with socklab's server side (its own TLS 1.3 records).
struct OursPair {
    client: ClientConnection,
    server: socklab::BenchServerTls<Memory>,
}

/// Runs the handshake in memory, as the reactor drives it: read until `WouldBlock`.
fn connect_ours(server_config: &Arc<ServerConfig>, client_config: &Arc<ClientConfig>) -> OursPair {
    let name = ServerName::try_from("localhost").unwrap();
    let mut client = ClientConnection::new(Arc::clone(client_config), name).unwrap();
    let mut server =
        socklab::BenchServerTls::new(Memory::default(), Arc::clone(server_config)).unwrap();
    let mut buf = vec![0u8; 16 * 1024];
    for _ in 0..16 {
        while client.wants_write() {
            client.write_tls(&mut server.socket().inbound).unwrap();
        }
        match server.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("no data is sent in the handshake: {other:?}"),
        }
        let out = std::mem::take(&mut server.socket().outbound);
        client.read_tls(&mut out.as_slice()).unwrap();
        client.process_new_packets().unwrap();
        if !client.is_handshaking() && !server.is_handshaking() && !client.wants_write() {
            assert!(server.records_are_ours(), "TLS 1.3 records are handed over");
            return OursPair { client, server };
        }
    }
    panic!("the handshake did not finish");
}

/// The same requests as `tls_server_record`, served by socklab's server side
/// (`tls/server_stream.rs` and its record layer, `tls/record.rs`) over a stream in memory:
/// one `read` (the record copied in, opened, its plaintext handed out) and one `write` (the
/// reply sealed into a record and written out) per request, as the reactor calls them.
fn bench_ours(c: &mut Criterion) {
    let (server_config, client_config) = configs();
    let mut group = c.benchmark_group("tls_server_stream");
    for (size, conns) in [(64usize, 1usize), (64, 1000), (1024, 1), (1024, 1000)] {
        let mut pairs: Vec<OursPair> = (0..conns)
            .map(|_| connect_ours(&server_config, &client_config))
            .collect();
        let request: Vec<u8> = (0..size).map(|i| i as u8).collect();
        let mut buf = vec![0u8; 16 * 1024];
        group.throughput(Throughput::Elements(1));
        let id = BenchmarkId::new(format!("{size}B"), format!("{conns}conns"));
        group.bench_function(id, |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let round = usize::try_from(left).unwrap_or(usize::MAX).min(conns);
                    for pair in pairs.iter_mut().take(round) {
                        pair.client.writer().write_all(&request).unwrap();
                        pair.client
                            .write_tls(&mut pair.server.socket().inbound)
                            .unwrap();
                    }
                    let start = Instant::now();
                    for pair in pairs.iter_mut().take(round) {
                        let n = pair.server.read(&mut buf).unwrap();
                        debug_assert_eq!(n, size);
                        pair.server.write(&buf[..n]).unwrap();
                        black_box(&pair.server.socket().outbound);
                        pair.server.socket().outbound.clear();
                    }
                    spent += start.elapsed();
                    left -= round as u64;
                }
                spent
            });
        });
    }
    group.finish();
}

/// The cipher alone, the floor under any record layer: ring's AEADs of TLS 1.3 (AES-256-GCM, the
/// suite above; AES-128-GCM; ChaCha20-Poly1305) opening one record of `size` bytes and sealing
/// one of the same size, on one key held in cache, as TLS 1.3 frames them (content type byte,
/// 5-byte header as associated data); and AES-256-GCM with the reply padded to whole blocks, as
/// socklab seals its records.
fn bench_aead_alone(c: &mut Criterion) {
    use ring::aead::{AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305};
    let mut group = c.benchmark_group("tls_aead_alone");
    for (name, algorithm) in [
        ("aes256gcm", &AES_256_GCM),
        ("aes128gcm", &AES_128_GCM),
        ("chacha20poly1305", &CHACHA20_POLY1305),
    ] {
        for size in [64usize, 1024] {
            open_and_seal(&mut group, name, algorithm, size, false);
        }
    }
    // The reply sealed as socklab seals it: padded to whole blocks (`tls/record.rs`).
    for size in [64usize, 1024] {
        open_and_seal(
            &mut group,
            "aes256gcm_padded_reply",
            &AES_256_GCM,
            size,
            true,
        );
    }
    group.finish();
}

fn open_and_seal(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    algorithm: &'static ring::aead::Algorithm,
    size: usize,
    padded_reply: bool,
) {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey};
    let key_bytes = vec![7u8; algorithm.key_len()];
    let key = LessSafeKey::new(UnboundKey::new(algorithm, &key_bytes).unwrap());
    let header = [23u8, 3, 3, 0, 0];
    let mut sealed = vec![0u8; size + 1];
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key([0; 12]),
            Aad::from(header),
            &mut sealed,
        )
        .unwrap();
    sealed.extend_from_slice(tag.as_ref());
    let mut record = sealed.clone();
    let reply_len = if padded_reply {
        (size + 1).div_ceil(16) * 16
    } else {
        size + 1
    };
    let mut reply = vec![0u8; reply_len];
    group.throughput(Throughput::Elements(1));
    let id = BenchmarkId::new(format!("open_and_seal_{name}"), format!("{size}B"));
    group.bench_function(id, |b| {
        b.iter(|| {
            record.copy_from_slice(&sealed);
            let plain = key
                .open_in_place(
                    Nonce::assume_unique_for_key([0; 12]),
                    Aad::from(header),
                    &mut record,
                )
                .unwrap();
            black_box(plain.len());
            let tag = key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key([1; 12]),
                    Aad::from(header),
                    &mut reply,
                )
                .unwrap();
            black_box(tag.as_ref().len());
        });
    });
}

criterion_group!(benches, bench_requests, bench_ours, bench_aead_alone);
criterion_main!(benches);
