//! `ServerTls` against rustls clients over socket pairs: both record keepers, the hand-over, and
//! records sealed by hand to send what no TLS library sends.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ServerConfig};

use super::ServerTls;

/// A server and a client configuration that trust each other.
fn configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    crate::tls::trusting_pair().unwrap()
}

/// Echoes through a `ServerTls` read into buffers of `cap` bytes, while a
/// blocking client sends `total` bytes in records of every size and reads them back.
/// Whether the records were ours at the end.
fn echo_through(cap: usize, total: usize) -> bool {
    echo_through_with(configs(), cap, total)
}

fn echo_through_with(
    (server_cfg, client_cfg): (Arc<ServerConfig>, Arc<ClientConfig>),
    cap: usize,
    total: usize,
) -> bool {
    let (a, b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    let mut server = ServerTls::server(a, server_cfg).unwrap();
    let data: Vec<u8> = (0..total).map(|i| (i * 7 + i / 251) as u8).collect();
    let expected = data.clone();
    let client = thread::spawn(move || {
        let name = ServerName::try_from("localhost").unwrap();
        let mut conn = ClientConnection::new(client_cfg, name).unwrap();
        let mut sock = b;
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut tls = rustls::Stream::new(&mut conn, &mut sock);
        let mut got = Vec::new();
        let mut sent = 0;
        let mut size = 1;
        let mut buf = vec![0u8; 70_000];
        while got.len() < data.len() {
            if sent < data.len() {
                let end = (sent + size).min(data.len());
                tls.write_all(&data[sent..end]).unwrap();
                sent = end;
                size = size * 3 % 40_000 + 1;
            }
            if sent == data.len() || got.len() + 200_000 < sent {
                let n = tls.read(&mut buf).unwrap();
                assert!(n > 0, "the server closed");
                got.extend_from_slice(&buf[..n]);
            }
        }
        got
    });
    // The server side: a poll-free loop that reads what comes and echoes it.
    let mut buf = vec![0u8; cap];
    let mut pending: Vec<u8> = Vec::new();
    let mut echoed = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while echoed < total {
        assert!(Instant::now() < deadline, "stuck at {echoed} of {total}");
        match server.read(&mut buf) {
            Ok(0) => panic!("end of input at {echoed}"),
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // Wait (bounded) for the socket to have bytes, as the reactor's poll would.
                let mut fd = libc::pollfd {
                    fd: std::os::fd::AsRawFd::as_raw_fd(&server.socket),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd, for the length given.
                unsafe { libc::poll(&mut fd, 1, 10) };
            }
            Err(e) => panic!("{e}"),
        }
        while !pending.is_empty() {
            match server.write(&pending) {
                Ok(n) => {
                    echoed += n;
                    pending.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        let _ = server.send_pending();
    }
    while server.wants_write() {
        let _ = server.send_pending();
    }
    assert!(client.join().unwrap() == expected, "the echo differs");
    server.record_layer().is_some()
}

/// Data and close_notify in one segment: the data comes out, the socket is not taken for
/// drained (no event will come for the end), and the next read is the end.
#[test]
fn a_close_notify_behind_the_data_is_not_lost() {
    let (server_cfg, client_cfg) = configs();
    let (a, b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    let mut server = ServerTls::server(a, server_cfg).unwrap();
    let client = thread::spawn(move || {
        let name = ServerName::try_from("localhost").unwrap();
        let mut conn = ClientConnection::new(client_cfg, name).unwrap();
        let mut sock = b;
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).unwrap();
        }
        conn.writer().write_all(b"last words").unwrap();
        conn.send_close_notify();
        let mut both = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut both).unwrap();
        }
        sock.write_all(&both).unwrap();
        sock
    });
    let mut buf = vec![0u8; 65536];
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "never saw the end; got {got:?}");
        match server.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got == b"last words" {
                    assert!(!server.drained(), "the end is still owed");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let _ = server.send_pending();
                thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(got, b"last words");
    drop(client.join().unwrap());
}

#[test]
fn plaintext_comes_out_whole_whatever_the_read_buffer() {
    for cap in [1, 7, 100, 5_000, 16_384, 17_000, 262_144] {
        assert!(
            echo_through(cap, 600_000),
            "TLS 1.3 records stayed with rustls"
        );
    }
}

#[test]
fn tls12_and_a_configuration_that_keeps_the_secrets_stay_with_rustls() {
    let tls12 = crate::tls::trusting_pair_of(&[&rustls::version::TLS12]).unwrap();
    assert!(
        !echo_through_with(tls12, 5_000, 300_000),
        "TLS 1.2 records are not ours"
    );
    let (server_cfg, client_cfg) = configs();
    let mut keeps = (*server_cfg).clone();
    keeps.enable_secret_extraction = false;
    assert!(!echo_through_with(
        (Arc::new(keeps), client_cfg),
        5_000,
        300_000
    ));
}

/// A client (rustls, non-blocking) and the server, in one thread.
struct Pair {
    server: ServerTls<UnixStream>,
    client: ClientConnection,
    sock: UnixStream,
    /// What the server read, and what the client read.
    server_got: Vec<u8>,
    client_got: Vec<u8>,
}

impl Pair {
    /// Connected, the handshake over.
    fn new() -> Pair {
        Pair::connect(|_| {})
    }

    /// Connected, with `after_handshake` run on the client as soon as its handshake is
    /// over, so that what it makes follows its Finished in the same flight.
    fn connect(after_handshake: impl FnOnce(&mut ClientConnection)) -> Pair {
        let (server_cfg, client_cfg) = configs();
        Pair::connect_with(server_cfg, client_cfg, after_handshake)
    }

    /// [`Pair::connect`] with these configurations.
    fn connect_with(
        server_cfg: Arc<ServerConfig>,
        client_cfg: Arc<ClientConfig>,
        after_handshake: impl FnOnce(&mut ClientConnection),
    ) -> Pair {
        let mut after_handshake = Some(after_handshake);
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut pair = Pair {
            server: ServerTls::server(a, server_cfg).unwrap(),
            client: ClientConnection::new(client_cfg, name).unwrap(),
            sock: b,
            server_got: Vec::new(),
            client_got: Vec::new(),
        };
        for _ in 0..10 {
            if !pair.client.is_handshaking()
                && let Some(f) = after_handshake.take()
            {
                f(&mut pair.client);
            }
            if pair.server.record_layer().is_some() && after_handshake.is_none() {
                return pair;
            }
            pair.pump().unwrap();
        }
        panic!("the handshake did not finish");
    }

    /// The client's records to the server, which reads them all; the server's to the
    /// client. The server's error, if it fails.
    fn pump(&mut self) -> std::io::Result<()> {
        while self.client.wants_write() {
            self.client.write_tls(&mut self.sock).unwrap();
        }
        let mut buf = vec![0u8; 65_536];
        let served = loop {
            match self.server.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => self.server_got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        let _ = self.server.send_pending();
        loop {
            match self.client.read_tls(&mut self.sock) {
                Ok(0) => break,
                Ok(_) => {
                    if let Err(e) = self.client.process_new_packets() {
                        return served.and(Err(std::io::Error::other(e)));
                    }
                    let mut plain = [0u8; 4096];
                    while let Ok(n @ 1..) = self.client.reader().read(&mut plain) {
                        self.client_got.extend_from_slice(&plain[..n]);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        served
    }

    /// The client's next bytes for the socket, as they would go.
    fn client_records(&mut self) -> Vec<u8> {
        let mut wire = Vec::new();
        while self.client.wants_write() {
            self.client.write_tls(&mut wire).unwrap();
        }
        wire
    }

    /// What the client's rustls said of the server's last records.
    fn client_error(&mut self) -> rustls::Error {
        // Already seen by `pump`, which read the socket after the server failed.
        if let Err(e) = self.client.process_new_packets() {
            return e;
        }
        loop {
            match self.client.read_tls(&mut self.sock) {
                Ok(0) => panic!("the server closed without an alert"),
                Ok(_) => {
                    if let Err(e) = self.client.process_new_packets() {
                        return e;
                    }
                }
                Err(e) => panic!("no alert came: {e}"),
            }
        }
    }
}

#[test]
fn an_altered_record_is_refused_with_bad_record_mac() {
    for at in [0usize, 5, 20] {
        let mut pair = Pair::new();
        pair.client.writer().write_all(b"to be altered").unwrap();
        let mut wire = pair.client_records();
        // Counted from the end: in the tag, in the ciphertext, in the header's length.
        let i = wire.len() - 1 - at;
        wire[i] ^= 0x40;
        pair.sock.write_all(&wire).unwrap();
        let err = pair.pump().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
        assert!(pair.server_got.is_empty());
        let alert = pair.client_error();
        assert!(
            matches!(
                alert,
                rustls::Error::AlertReceived(rustls::AlertDescription::BadRecordMac)
            ),
            "{alert:?}"
        );
    }
}

#[test]
fn key_updates_either_way_keep_the_echo_going() {
    let mut pair = Pair::new();
    // Ours after every 2 records (the confidentiality limit's path); the client's, asking
    // for ours too, every third message.
    pair.server
        .record_layer_mut()
        .unwrap()
        .replace_tx_key_every(2);
    let mut expected = Vec::new();
    for i in 0..12 {
        if i % 3 == 0 {
            pair.client.refresh_traffic_keys().unwrap();
        }
        let line = format!("line {i}\n");
        pair.client.writer().write_all(line.as_bytes()).unwrap();
        expected.extend_from_slice(line.as_bytes());
        pair.pump().unwrap();
        let got = std::mem::take(&mut pair.server_got);
        assert_eq!(pair.server.write(&got).unwrap(), got.len());
        pair.pump().unwrap();
    }
    assert_eq!(pair.server_got, b"");
    assert_eq!(
        String::from_utf8_lossy(&pair.client_got),
        String::from_utf8_lossy(&expected)
    );
}

/// A key update the client sends right behind its Finished reaches rustls with the
/// Finished: rustls holds its answer until its next write, which the hand-over would
/// lose (the client's next record from us would then not decrypt).
#[test]
fn a_key_update_behind_the_clients_finished_is_answered_after_the_hand_over() {
    for data_too in [false, true] {
        let mut pair = Pair::connect(|client| {
            client.refresh_traffic_keys().unwrap();
            if data_too {
                client.writer().write_all(b"early words").unwrap();
            }
        });
        pair.pump().unwrap();
        let expected: &[u8] = if data_too { b"early words" } else { b"" };
        assert_eq!(pair.server_got, expected);
        assert_eq!(pair.server.write(b"reply").unwrap(), 5);
        pair.pump().unwrap();
        assert_eq!(pair.client_got, b"reply");
    }
}

#[test]
fn a_run_of_key_update_requests_without_data_is_refused() {
    let mut pair = Pair::new();
    for _ in 0..32 {
        pair.client.refresh_traffic_keys().unwrap();
    }
    pair.pump().unwrap();
    pair.client
        .writer()
        .write_all(b"data resets the count")
        .unwrap();
    pair.pump().unwrap();
    assert_eq!(pair.server_got, b"data resets the count");
    // The client counts our answers the same way: data of ours resets its count.
    pair.server.write(b"ok").unwrap();
    for _ in 0..32 {
        pair.client.refresh_traffic_keys().unwrap();
    }
    pair.pump().unwrap();
    assert_eq!(pair.client_got, b"ok");
    pair.client.refresh_traffic_keys().unwrap();
    let err = pair.pump().unwrap_err();
    assert!(err.to_string().contains("key-update requests"), "{err}");
    let alert = pair.client_error();
    assert!(
        matches!(
            alert,
            rustls::Error::AlertReceived(rustls::AlertDescription::UnexpectedMessage)
        ),
        "{alert:?}"
    );
}

/// One direction of the client's records, sealed and opened by hand with the traffic
/// secrets rustls extracted from the client, to send what no TLS library sends.
struct ByHand {
    key: ring::aead::LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl ByHand {
    fn new((seq, secrets): (u64, rustls::ConnectionTrafficSecrets)) -> ByHand {
        let rustls::ConnectionTrafficSecrets::Aes256Gcm { key, iv } = secrets else {
            panic!("the test configurations negotiate AES-256-GCM");
        };
        let key = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, key.as_ref());
        ByHand {
            key: ring::aead::LessSafeKey::new(key.unwrap()),
            iv: iv.as_ref().try_into().unwrap(),
            seq,
        }
    }

    fn nonce(&mut self) -> ring::aead::Nonce {
        let n =
            rustls::crypto::cipher::Nonce::new(&rustls::crypto::cipher::Iv::new(self.iv), self.seq);
        self.seq += 1;
        ring::aead::Nonce::assume_unique_for_key(n.0)
    }

    /// A record carrying `inner` (content, content type, padding) as TLS 1.3 seals it.
    fn seal(&mut self, inner: &[u8]) -> Vec<u8> {
        let len = u16::try_from(inner.len() + 16).unwrap().to_be_bytes();
        let header = [23, 3, 3, len[0], len[1]];
        let mut body = inner.to_vec();
        let nonce = self.nonce();
        let aad = ring::aead::Aad::from(header);
        let tag = self.key.seal_in_place_separate_tag(nonce, aad, &mut body);
        let mut record = header.to_vec();
        record.extend_from_slice(&body);
        record.extend_from_slice(tag.unwrap().as_ref());
        record
    }

    /// Opens the one record in `record`: its inner plaintext, without the zeros that pad it
    /// (whole AES blocks, checked here).
    fn open(&mut self, record: &mut [u8]) -> Vec<u8> {
        let (header, body) = record.split_at_mut(5);
        let header: [u8; 5] = header.try_into().unwrap();
        let nonce = self.nonce();
        let aad = ring::aead::Aad::from(header);
        let mut inner = self.key.open_in_place(nonce, aad, body).unwrap().to_vec();
        assert_eq!(inner.len() % 16, 0, "the server's records are whole blocks");
        while inner.last() == Some(&0) {
            inner.pop();
        }
        inner
    }
}

/// The server after its hand-over, with the client's two directions by hand.
fn by_hand() -> (ServerTls<UnixStream>, UnixStream, ByHand, ByHand) {
    let (server_cfg, client_cfg) = configs();
    let mut client_cfg = (*client_cfg).clone();
    client_cfg.enable_secret_extraction = true;
    let mut pair = Pair::connect_with(server_cfg, Arc::new(client_cfg), |_| {});
    // Whatever the server sent last (its tickets) read by the client before its keys are
    // taken.
    pair.pump().unwrap();
    assert!(pair.server.record_layer().is_some() && !pair.client.is_handshaking());
    #[allow(deprecated)]
    let secrets = pair.client.dangerous_extract_secrets().unwrap();
    (
        pair.server,
        pair.sock,
        ByHand::new(secrets.tx),
        ByHand::new(secrets.rx),
    )
}

/// Sends `records` and reads until the server has something to say: what it read, or
/// its error.
fn send_by_hand(
    server: &mut ServerTls<UnixStream>,
    sock: &mut UnixStream,
    records: &[Vec<u8>],
) -> std::io::Result<Vec<u8>> {
    for r in records {
        sock.write_all(r).unwrap();
    }
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        match server.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(got),
            Err(e) => return Err(e),
        }
    }
}

#[test]
fn padding_empty_records_and_a_few_user_canceled_alerts_are_taken() {
    let (mut server, mut sock, mut tx, _) = by_hand();
    let mut padded = b"padded".to_vec();
    padded.push(23);
    padded.extend_from_slice(&[0; 200]);
    let records = [
        tx.seal(&padded),
        tx.seal(&[23]),
        tx.seal(b"after empty\x17"),
    ];
    let got = send_by_hand(&mut server, &mut sock, &records).unwrap();
    assert_eq!(got, b"paddedafter empty");
    let canceled: Vec<Vec<u8>> = (0..4).map(|_| tx.seal(&[1, 90, 21])).collect();
    let got = send_by_hand(&mut server, &mut sock, &canceled).unwrap();
    assert_eq!(got, b"");
    let fifth = [tx.seal(&[1, 90, 21])];
    let err = send_by_hand(&mut server, &mut sock, &fifth).unwrap_err();
    assert!(err.to_string().contains("warning alerts"), "{err}");
}

/// Each bad record on a fresh connection: the server refuses it, with the alert RFC 8446
/// names (read back with the client's keys), or without one for the client's own alert.
#[test]
fn bad_records_get_the_alert_rfc_8446_names() {
    const UNEXPECTED: u8 = 10;
    let mut oversized = vec![b'x'; 16_385];
    oversized.push(23);
    let cases: [(&str, Vec<u8>, Option<u8>); 9] = [
        ("no content type", vec![0; 10], Some(UNEXPECTED)),
        (
            "an unknown content type",
            b"zz\x63".to_vec(),
            Some(UNEXPECTED),
        ),
        ("2^14 + 1 bytes of content", oversized, Some(22)),
        (
            "a session ticket from a client",
            vec![4, 0, 0, 1, 0, 22],
            Some(UNEXPECTED),
        ),
        (
            "a key update cut short",
            vec![24, 0, 0, 22],
            Some(UNEXPECTED),
        ),
        ("a key update asking 2", vec![24, 0, 0, 1, 2, 22], Some(50)),
        ("an alert of one byte", vec![1, 21], Some(50)),
        (
            "a change_cipher_spec, protected",
            vec![1, 20],
            Some(UNEXPECTED),
        ),
        ("the client's handshake_failure", vec![2, 40, 21], None),
    ];
    for (what, inner, alert) in cases {
        let (mut server, mut sock, mut tx, mut rx) = by_hand();
        let record = [tx.seal(&inner)];
        let read = send_by_hand(&mut server, &mut sock, &record).map(|got| got.len());
        let err = read.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{what}: {err}");
        let mut answer = vec![0u8; 1024];
        match (sock.read(&mut answer), alert) {
            (Ok(n), Some(description)) => {
                let inner = rx.open(&mut answer[..n]);
                assert_eq!(inner, [2, description, 21], "{what}");
            }
            (Err(e), None) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            (other, _) => panic!("{what}: {other:?}"),
        }
    }
    // A record in clear after the handshake.
    let (mut server, mut sock, _, mut rx) = by_hand();
    let clear = [vec![20, 3, 3, 0, 1, 1]];
    send_by_hand(&mut server, &mut sock, &clear).unwrap_err();
    let mut answer = vec![0u8; 1024];
    let n = sock.read(&mut answer).unwrap();
    assert_eq!(rx.open(&mut answer[..n]), [2, UNEXPECTED, 21]);
}

#[test]
fn close_notify_either_way_on_our_records() {
    let mut pair = Pair::new();
    pair.client.writer().write_all(b"bye").unwrap();
    pair.client.send_close_notify();
    pair.pump().unwrap();
    assert_eq!(pair.server_got, b"bye");
    let mut buf = [0u8; 16];
    assert_eq!(
        pair.server.read(&mut buf).unwrap(),
        0,
        "the end is a read of 0"
    );
    pair.server.close_notify();
    pair.pump().unwrap();
    let mut plain = [0u8; 16];
    assert_eq!(
        pair.client.reader().read(&mut plain).unwrap(),
        0,
        "the client saw close_notify"
    );
}

/// Key-update requests make the server owe records; a peer that asks for them without reading
/// any would grow what waits for its socket without end (32 answers per byte of data it
/// sends). It is cut off once that passes the bound, holding no more than the bound meanwhile.
#[test]
fn a_peer_that_asks_for_key_updates_and_never_reads_is_cut_off() {
    let mut pair = Pair::new();
    let mut buf = vec![0u8; 65_536];
    for _ in 0..5_000 {
        pair.client.writer().write_all(b"x").unwrap();
        for _ in 0..32 {
            pair.client.refresh_traffic_keys().unwrap();
        }
        while pair.client.wants_write() {
            pair.client.write_tls(&mut pair.sock).unwrap();
        }
        loop {
            match pair.server.read(&mut buf) {
                Ok(n) => assert!(n > 0, "the server saw an end"),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    assert!(e.to_string().contains("does not read"), "{e}");
                    return;
                }
            }
        }
        assert!(pair.server.held_bytes() <= 512 * 1024);
    }
    panic!("the server kept owing records to a peer that reads none");
}

/// What the server seals is whole AES blocks (the content type and zeros after the data: ring
/// seals those faster), at most 16 KiB less a byte of data a record, and reads back as sent.
#[test]
fn our_records_are_padded_to_whole_blocks_and_read_back_as_sent() {
    let (mut server, mut sock, _, mut rx) = by_hand();
    for size in [1usize, 14, 15, 16, 100, 16_382, 16_383, 16_384, 40_000] {
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8 + 1).collect();
        assert_eq!(server.write(&data).unwrap(), size);
        let mut wire = vec![0u8; 65_536];
        let mut n = 0;
        let mut got = Vec::new();
        let mut records = 0;
        while got.len() < size {
            n += sock.read(&mut wire[n..]).unwrap();
            // Every whole record that has come.
            while n >= 5 {
                let len = usize::from(u16::from_be_bytes([wire[3], wire[4]]));
                if n < 5 + len {
                    break;
                }
                assert_eq!(len % 16, 0, "{size}: a record of {len} sealed bytes");
                let mut inner = rx.open(&mut wire[..5 + len]);
                assert_eq!(inner.pop(), Some(23), "{size}: application data");
                assert!(
                    inner.len() <= 16_383,
                    "{size}: {} bytes in a record",
                    inner.len()
                );
                got.extend_from_slice(&inner);
                records += 1;
                wire.copy_within(5 + len..n, 0);
                n -= 5 + len;
            }
        }
        assert_eq!(got, data, "{size}");
        assert_eq!(records, size.div_ceil(16_383), "{size}");
    }
}
