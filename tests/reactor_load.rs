//! Load on the reactor: 1,000 concurrent TCP connections each echoing 64 KiB
//! of random bytes written in random-sized pieces, and fairness (a small
//! client's round trips stay prompt while another client blasts bulk data).
//!
//! The two tests share a lock so that they do not compete for the CI
//! machine's two cores.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use util::*;

static HEAVY: Mutex<()> = Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// One client connection of the concurrency test.
struct Client {
    stream: TcpStream,
    /// Whether the non-blocking connect has completed.
    connected: bool,
    /// Everything this client sends, and expects back.
    data: Vec<u8>,
    sent: usize,
    received: usize,
    done: bool,
}

#[test]
fn thousand_concurrent_connections_echo_64k_each() {
    const CONNS: usize = 1000;
    const SIZE: usize = 64 * 1024;
    let _guard = heavy();
    let limit = raise_nofile_limit();
    assert!(
        limit >= 2 * CONNS as u64 + 100,
        "RLIMIT_NOFILE hard limit {limit} is too low for this test"
    );

    let server = Server::start(serve_args(&[("echo", "127.0.0.1:0")], &[]));
    let addr = server.tcp("echo");
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);

    let mut poll = Poll::new().unwrap();
    let mut rng = Rng::new(0xC0FFEE);
    let mut clients: Vec<Client> = (0..CONNS)
        .map(|i| {
            let mut stream = TcpStream::connect(addr).unwrap();
            poll.registry()
                .register(
                    &mut stream,
                    Token(i),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .unwrap();
            Client {
                stream,
                connected: false,
                data: rng.bytes(SIZE),
                sent: 0,
                received: 0,
                done: false,
            }
        })
        .collect();

    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    let mut remaining = CONNS;
    while remaining > 0 {
        let now = Instant::now();
        if now >= deadline {
            let stuck: Vec<String> = clients
                .iter()
                .enumerate()
                .filter(|(_, c)| !c.done)
                .take(10)
                .map(|(i, c)| {
                    format!(
                        "#{i}: connected={} sent={} received={}",
                        c.connected, c.sent, c.received
                    )
                })
                .collect();
            panic!(
                "{remaining} of {CONNS} connections unfinished after {:?}; first ones: {stuck:#?}",
                now - started
            );
        }
        poll.poll(&mut events, Some(deadline - now))
            .or_else(|e| {
                if e.kind() == ErrorKind::Interrupted {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .unwrap();
        for ev in events.iter() {
            let i = ev.token().0;
            let c = &mut clients[i];
            if c.done {
                continue;
            }
            if !c.connected {
                match c.stream.take_error() {
                    Ok(None) => {}
                    Ok(Some(e)) | Err(e) => panic!("connection #{i}: connect failed: {e}"),
                }
                match c.stream.peer_addr() {
                    Ok(_) => c.connected = true,
                    Err(e) if e.kind() == ErrorKind::NotConnected => continue,
                    Err(e) => panic!("connection #{i}: {e}"),
                }
            }
            // Write in pieces of random size until the socket is full.
            while c.sent < SIZE {
                let n = rng.range(1, 8192).min(SIZE - c.sent);
                match c.stream.write(&c.data[c.sent..c.sent + n]) {
                    Ok(0) => panic!("connection #{i}: write returned 0"),
                    Ok(n) => c.sent += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => panic!(
                        "connection #{i}: write failed after {} bytes sent, {} received: {e}",
                        c.sent, c.received
                    ),
                }
            }
            // Read all that is there and check it against what was sent.
            loop {
                match c.stream.read(&mut buf) {
                    Ok(0) => panic!(
                        "connection #{i}: EOF after {} of {SIZE} bytes echoed ({} sent)",
                        c.received, c.sent
                    ),
                    Ok(n) => {
                        assert!(
                            c.received + n <= c.sent,
                            "connection #{i}: got more bytes back than were sent"
                        );
                        let want = &c.data[c.received..c.received + n];
                        if &buf[..n] != want {
                            assert_bytes_eq(
                                &buf[..n],
                                want,
                                &format!("connection #{i} at offset {}", c.received),
                            );
                        }
                        c.received += n;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => panic!(
                        "connection #{i}: read failed after {} of {SIZE} bytes echoed: {e}",
                        c.received
                    ),
                }
            }
            if c.received == SIZE {
                c.done = true;
                poll.registry().deregister(&mut c.stream).unwrap();
                // Free the descriptor and memory now.
                let _ = c.stream.shutdown(Shutdown::Both);
                c.data = Vec::new();
                remaining -= 1;
            }
        }
    }
    eprintln!(
        "{CONNS} connections x {SIZE} bytes echoed in {:?}",
        started.elapsed()
    );
    assert!(
        echo_works(addr, Duration::from_secs(10)),
        "server stopped serving after the load"
    );
}

/// One connection pushes bulk data (and reads it back in another thread)
/// while a second connection does 100 small round trips: each must come back
/// within 5 s and all of them before the bulk transfer is over.
///
/// The blaster talks to `upper`, which costs the server more per byte than
/// the client spends writing, so the server never catches up with it: a
/// reactor that drains one socket until `WouldBlock` (no per-turn budget)
/// would never get to the small client.
#[test]
fn small_client_is_served_while_another_blasts() {
    const CAP: u64 = 1 << 30; // the blaster stops at 1 GiB if nobody stops it earlier
    let _guard = heavy();
    let server = Server::start(serve_args(
        &[("echo", "127.0.0.1:0"), ("upper", "127.0.0.1:0")],
        &[],
    ));

    let blaster = server.connect("upper");
    let mut blast_reader = blaster.try_clone().unwrap();
    let mut blast_writer = blaster;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let writer_done = Arc::new(AtomicBool::new(false));

    let writer = {
        let (stop, sent, writer_done) = (stop.clone(), sent.clone(), writer_done.clone());
        thread::spawn(move || {
            let pat = pattern();
            let mut off = 0u64;
            while !stop.load(Ordering::Relaxed) && off < CAP {
                let start = (off % pat.len() as u64) as usize;
                let n = blast_writer.write(&pat[start..]).expect("blaster write");
                off += n as u64;
                sent.store(off, Ordering::Relaxed);
            }
            writer_done.store(true, Ordering::SeqCst);
            blast_writer.shutdown(Shutdown::Write).unwrap();
            off
        })
    };
    let reader = {
        let received = received.clone();
        thread::spawn(move || {
            let pat = upper(&pattern());
            let mut buf = vec![0u8; 256 * 1024];
            let mut off = 0u64;
            blast_reader
                .set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            loop {
                match blast_reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        assert!(
                            matches_pattern(&pat, off, &buf[..n]),
                            "blaster: echoed stream corrupt near offset {off}"
                        );
                        off += n as u64;
                        received.store(off, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => panic!("blaster read after {off} bytes: {e}"),
                }
            }
            off
        })
    };

    // Start measuring once the bulk transfer is under way.
    assert!(
        wait_until(Duration::from_secs(10), || received.load(Ordering::Relaxed)
            >= 1 << 20),
        "blaster did not get its first MiB back within 10 s"
    );

    let mut small = server.connect("echo");
    let mut worst = Duration::ZERO;
    let t0 = Instant::now();
    for i in 0..100u32 {
        let msg = format!("ping {i}\n");
        let t = Instant::now();
        small.write_all(msg.as_bytes()).unwrap();
        let (got, end) = read_bounded(&mut small, Some(msg.len()), Duration::from_secs(5));
        assert_eq!(
            end,
            End::Complete,
            "round trip {i} of the small client did not complete within 5 s (blaster sent {} MiB so far)",
            sent.load(Ordering::Relaxed) >> 20
        );
        assert_eq!(got, msg.as_bytes());
        worst = worst.max(t.elapsed());
    }
    let small_took = t0.elapsed();
    let blaster_still_running = !writer_done.load(Ordering::SeqCst);
    let during = received.load(Ordering::Relaxed);

    stop.store(true, Ordering::SeqCst);
    let total_sent = writer.join().expect("blaster writer");
    let total_received = reader.join().expect("blaster reader");
    eprintln!(
        "100 round trips in {small_took:?} (worst {worst:?}) while the blaster moved {} MiB; total {} MiB",
        during >> 20,
        total_sent >> 20
    );
    assert!(
        blaster_still_running,
        "the blaster finished all {CAP} bytes before the small client's 100 round trips were done ({small_took:?})"
    );
    assert_eq!(
        total_received, total_sent,
        "blaster: every byte sent must come back before EOF"
    );
}
