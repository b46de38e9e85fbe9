//! Deadlines and fair admission against hostile clients, over real sockets: a request trickled
//! a byte at a time (a frame header, a chat line, an HTTP request head) is closed at
//! `--request-timeout`; a connection that never sends a complete request is closed at
//! `--handshake-timeout`; one source address cannot hold more than `--max-conns-per-ip`, so
//! that 5,000 connections from 127.0.0.2 leave a client of 127.0.0.1 served by echo, chat and
//! files; at `--max-conns` the log and `stats` say which addresses hold the most; an idle chat
//! member is told why it is closed.

mod files_support;
mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use socket2::{Domain, Socket, Type};

use util::{End, Server, TempDir, read_bounded, roundtrip, serve_args};

/// How long one answer may take.
const T: Duration = Duration::from_secs(10);

/// A connection to `to` from `from` (port chosen by the kernel), blocking, with timeouts.
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.bind(&SocketAddr::new(IpAddr::V4(from), 0).into())?;
    s.connect_timeout(&to.into(), Duration::from_secs(5))?;
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(T))?;
    s.set_write_timeout(Some(T))?;
    Ok(s)
}

/// How a trickle ended.
#[derive(Debug)]
enum Trickle {
    /// The server closed the connection this long after the first byte.
    Closed(Duration),
    /// Every byte went and the connection was still open `after` the first one.
    StillOpen { sent: usize, after: Duration },
}

/// Sends `bytes` one at a time, `every` apart, and watches for the server closing the
/// connection in between; gives up `give_up` after the first byte.
fn trickle(s: &mut TcpStream, bytes: &[u8], every: Duration, give_up: Duration) -> Trickle {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    for (i, b) in bytes.iter().enumerate() {
        if start.elapsed() >= give_up {
            return Trickle::StillOpen {
                sent: i,
                after: start.elapsed(),
            };
        }
        if s.write_all(&[*b]).is_err() {
            return Trickle::Closed(start.elapsed());
        }
        // The pause between bytes doubles as the watch for the close.
        let until = Instant::now() + every;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            s.set_read_timeout(Some(left)).unwrap();
            match s.read(&mut buf) {
                Ok(0) => return Trickle::Closed(start.elapsed()),
                // Whatever the service says (a welcome, a goodbye) is not a close.
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Trickle::Closed(start.elapsed()),
            }
        }
    }
    Trickle::StillOpen {
        sent: bytes.len(),
        after: start.elapsed(),
    }
}

/// A trickle of `bytes` at one a second must be closed at the 2 s request timeout: not
/// before it (the first bytes are not a crime), and well before the idle timeout.
#[track_caller]
fn assert_closed_at_request_timeout(s: &mut TcpStream, bytes: &[u8], what: &str) {
    match trickle(s, bytes, Duration::from_secs(1), Duration::from_secs(6)) {
        Trickle::Closed(after) => assert!(
            after >= Duration::from_millis(1500) && after < Duration::from_millis(4500),
            "{what}: closed {after:?} after the first byte; want about 2 s (--request-timeout 2s)"
        ),
        Trickle::StillOpen { sent, after } => panic!(
            "{what} trickled at 1 byte/s: want closed at 2 s, still open {after:?} after the \
             first byte ({sent} bytes sent)"
        ),
    }
}

/// Every slowloris test's server flags: 2 s per request, a long idle timeout and handshake
/// timeout, so that only the request deadline can close the connection.
const SLOW: [&str; 6] = [
    "--request-timeout",
    "2s",
    "--idle-timeout",
    "60s",
    "--handshake-timeout",
    "60s",
];

#[test]
fn a_frame_header_trickled_a_byte_a_second_is_closed_at_the_request_timeout() {
    let dir = TempDir::new("admission-frame");
    let data = dir.file("data");
    let mut extra = SLOW.to_vec();
    extra.extend(["--data-dir", &data]);
    let server = Server::start(serve_args(&[("files", "127.0.0.1:0")], &extra));
    let mut s = server.connect("files");
    // A complete request first: the deadline is per request, and this one is answered.
    let pong = files_support::call(&mut s, json!({"cmd": "ping"}), b"");
    pong.assert_ok("ping");
    let frame = files_support::request(json!({"cmd": "ping", "pad": "x".repeat(40)}), b"");
    assert_closed_at_request_timeout(&mut s, &frame, "a frame header");
    // Others are served.
    let mut other = server.connect("files");
    files_support::assert_usable(&mut other, "a slowloris was closed");
}

#[test]
fn a_chat_line_trickled_a_byte_a_second_is_closed_at_the_request_timeout() {
    let server = Server::start(serve_args(&[("chat", "127.0.0.1:0")], &SLOW));
    let mut s = server.connect("chat");
    let (welcome, _) = read_bounded(&mut s, Some(9), T);
    assert!(welcome.starts_with(b"* welcome"), "{welcome:?}");
    assert_closed_at_request_timeout(
        &mut s,
        b"a line that never ends, sent slowly",
        "a chat line",
    );
}

#[test]
fn an_http_request_trickled_a_byte_a_second_is_closed_at_the_request_timeout() {
    let server = Server::start(serve_args(&[("metrics", "127.0.0.1:0")], &SLOW));
    let mut s = server.connect("metrics");
    assert_closed_at_request_timeout(
        &mut s,
        b"GET /metrics HTTP/1.1\r\nHost: slow.example\r\n\r\n",
        "an HTTP request head",
    );
}

#[test]
fn a_connection_that_sends_nothing_is_closed_at_the_handshake_timeout() {
    let listeners = [("echo", "127.0.0.1:0"), ("files", "127.0.0.1:0")];
    let dir = TempDir::new("admission-handshake");
    let data = dir.file("data");
    let extra = [
        "--handshake-timeout",
        "1s",
        "--idle-timeout",
        "60s",
        "--auth",
        "files",
        "--auth-timeout",
        "60s",
        "--data-dir",
        &data,
    ];
    let mut cmd = util::serve_cmd(serve_args(&listeners, &extra));
    cmd.env("SOCKLAB_SECRET", "s3cret");
    let server = Server::start_cmd(cmd);
    let start = Instant::now();
    let mut silent = server.connect("echo");
    let mut unauthenticated = server.connect("files");
    // One that has been served keeps the (60 s) idle timeout.
    let mut served = server.connect("echo");
    assert_eq!(roundtrip(&mut served, b"hi", T), b"hi");

    let (got, end) = read_bounded(&mut silent, None, Duration::from_secs(5));
    assert!(
        end.closed() && got.is_empty(),
        "silent echo: {got:?} {end:?}"
    );
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(4),
        "a silent connection closed after {elapsed:?}; want about 1 s (--handshake-timeout 1s)"
    );
    // The challenge came, no answer went: closed at the handshake timeout too.
    let (got, end) = read_bounded(&mut unauthenticated, None, Duration::from_secs(5));
    assert!(end.closed(), "unauthenticated files: {end:?}");
    assert!(got.len() >= 32, "the challenge came first: {got:?}");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "an unauthenticated connection closed after {:?}",
        start.elapsed()
    );
    assert_eq!(
        roundtrip(&mut served, b"still", T),
        b"still",
        "a served connection is not held to the handshake timeout"
    );
}

/// The `stats` body from a fresh connection to `files`.
fn stats(server: &Server) -> Value {
    let mut s = server.connect("files");
    let r = files_support::call(&mut s, json!({"cmd": "stats"}), b"");
    r.assert_ok("stats");
    serde_json::from_slice(&r.body).expect("stats body is JSON")
}

#[test]
fn an_address_over_its_limit_is_refused_while_another_is_served() {
    let dir = TempDir::new("admission-per-ip");
    let data = dir.file("data");
    let listeners = [("echo", "127.0.0.1:0"), ("files", "127.0.0.1:0")];
    let extra = ["--max-conns-per-ip", "3", "--data-dir", &data];
    let server = Server::start(serve_args(&listeners, &extra));
    let echo = server.tcp("echo");
    let hog = Ipv4Addr::new(127, 0, 0, 2);
    let mut held: Vec<TcpStream> = (0..3)
        .map(|i| {
            let mut c = connect_from(hog, echo).unwrap();
            assert_eq!(
                roundtrip(&mut c, b"in", T),
                b"in",
                "connection {i} within the limit"
            );
            c
        })
        .collect();
    let mut over = connect_from(hog, echo).unwrap();
    let r = util::probe(&mut over, Duration::from_secs(5));
    assert!(
        r.closed(),
        "a 4th echo connection from 127.0.0.2: want closed, got {r:?}"
    );
    // files says why before closing.
    let mut over_files = connect_from(hog, server.tcp("files")).unwrap();
    let h = files_support::try_read_header(&mut over_files, T)
        .unwrap_or_else(|e| panic!("the refused files connection gets an error frame: {e}"));
    assert_eq!(h.get("ok"), Some(&json!(false)), "{h:?}");
    assert_eq!(h["error"]["code"], json!("too_busy"), "{h:?}");
    let (_, end) = read_bounded(&mut over_files, None, T);
    assert!(end.closed(), "then closed: {end:?}");

    // 127.0.0.1 is another address: served.
    let mut ok = server.connect("echo");
    assert_eq!(roundtrip(&mut ok, b"served", T), b"served");
    for c in &mut held {
        assert_eq!(roundtrip(c, b"still", T), b"still");
    }
    let st = stats(&server);
    assert_eq!(st["services"]["echo"]["rejected_per_ip"], json!(1), "{st}");
    assert_eq!(st["services"]["files"]["rejected_per_ip"], json!(1), "{st}");
    // A slot freed is a slot for the same address again.
    drop(held.pop());
    assert!(
        util::wait_until(T, || {
            connect_from(hog, echo)
                .map(|mut c| util::probe(&mut c, Duration::from_secs(2)) == End::Complete)
                .unwrap_or(false)
        }),
        "after one of its connections closed, 127.0.0.2 is admitted again"
    );
}

#[test]
fn a_listener_of_its_own_overrides_the_limit() {
    let dir = TempDir::new("admission-listener");
    let file = dir.path().join("s.toml");
    std::fs::write(
        &file,
        "[limits]\nmax_conns_per_ip = 1\n\n\
         [[listener]]\nservice = \"echo\"\naddr = \"127.0.0.1:0\"\n\n\
         [[listener]]\nservice = \"upper\"\naddr = \"127.0.0.1:0\"\nmax_conns_per_ip = 0\n",
    )
    .unwrap();
    let server = Server::start(["--config", file.to_str().unwrap()]);
    let mut first = server.connect("echo");
    assert_eq!(roundtrip(&mut first, b"a", T), b"a");
    let mut second = server.connect("echo");
    assert!(util::probe(&mut second, Duration::from_secs(5)).closed());
    // upper has no limit of its own: three more from the same address.
    let mut uppers: Vec<TcpStream> = (0..3).map(|_| server.connect("upper")).collect();
    for u in &mut uppers {
        assert_eq!(roundtrip(u, b"x", T), b"X");
    }
}

#[test]
fn at_max_conns_the_log_and_stats_name_the_busiest_addresses() {
    let dir = TempDir::new("admission-busiest");
    let data = dir.file("data");
    let listeners = [("echo", "127.0.0.1:0"), ("files", "127.0.0.1:0")];
    let extra = [
        "--max-conns",
        "6",
        "--max-conns-per-ip",
        "3",
        "--data-dir",
        &data,
    ];
    let server = Server::start(serve_args(&listeners, &extra));
    let echo = server.tcp("echo");
    let mut held = Vec::new();
    for (ip, n) in [
        (Ipv4Addr::new(127, 0, 0, 2), 3),
        (Ipv4Addr::new(127, 0, 0, 3), 2),
    ] {
        for _ in 0..n {
            let mut c = connect_from(ip, echo).unwrap();
            assert_eq!(roundtrip(&mut c, b"in", T), b"in");
            held.push(c);
        }
    }
    // The sixth slot goes to the stats connection (127.0.0.1); the seventh is over --max-conns.
    let mut st_conn = server.connect("files");
    let mut refused = connect_from(Ipv4Addr::new(127, 0, 0, 4), echo).unwrap();
    assert!(util::probe(&mut refused, Duration::from_secs(5)).closed());
    assert!(
        server.wait_stderr_contains("127.0.0.2 (3)", T),
        "the max-conns warning names the busiest address:\n{}",
        server.stderr()
    );
    let r = files_support::call(&mut st_conn, json!({"cmd": "stats"}), b"");
    let st: Value = serde_json::from_slice(&r.body).unwrap();
    let busiest = &st["busiest_addresses"];
    assert_eq!(
        busiest[0],
        json!({"addr": "127.0.0.2", "connections": 3}),
        "{st}"
    );
    assert_eq!(
        busiest[1],
        json!({"addr": "127.0.0.3", "connections": 2}),
        "{st}"
    );
}

#[test]
fn an_idle_chat_member_is_told_why_before_the_close() {
    let server = Server::start(serve_args(
        &[("chat", "127.0.0.1:0")],
        &["--idle-timeout", "1s"],
    ));
    let mut s = server.connect("chat");
    let (got, end) = read_bounded(&mut s, None, Duration::from_secs(6));
    let text = String::from_utf8_lossy(&got);
    assert!(end.closed(), "an idle member is closed: {text:?} {end:?}");
    assert!(
        text.lines().last() == Some("* idle for 1 s: closing"),
        "the last line says why: {text:?}"
    );
}

/// The brief's "must hold": 5,000 connections from 127.0.0.2 while 127.0.0.1 is served by
/// echo, chat and files. With `--max-conns 5000` and no per-address limit they would take every
/// slot; the default limit (a tenth of it) leaves room.
#[test]
fn five_thousand_connections_from_one_address_leave_the_others_served() {
    const HOGS: usize = 5000;
    let nofile = util::raise_nofile_limit();
    if nofile < (HOGS as u64) + 500 {
        panic!(
            "RLIMIT_NOFILE is {nofile}: this test needs {} descriptors",
            HOGS + 500
        );
    }
    let dir = TempDir::new("admission-hold");
    let data = dir.file("data");
    let listeners = [
        ("echo", "127.0.0.1:0"),
        ("chat", "127.0.0.1:0"),
        ("files", "127.0.0.1:0"),
    ];
    let extra = [
        "--max-conns",
        "5000",
        "--backlog",
        "4096",
        "--data-dir",
        &data,
    ];
    let server = Server::start(serve_args(&listeners, &extra));
    let (echo, chat, files) = (server.tcp("echo"), server.tcp("chat"), server.tcp("files"));
    let hog = Ipv4Addr::new(127, 0, 0, 2);
    let start = Instant::now();
    let targets = [echo, chat, files];
    let mut hogs = Vec::with_capacity(HOGS);
    for i in 0..HOGS {
        // The kernel completes the handshake before the server decides: each connect succeeds.
        let c = connect_from(hog, targets[i % 3]).unwrap_or_else(|e| panic!("hog {i}: {e}"));
        hogs.push(c);
    }
    eprintln!("{HOGS} connections from {hog} in {:?}", start.elapsed());

    let local = Ipv4Addr::LOCALHOST;
    let mut e = connect_from(local, echo).unwrap();
    assert_eq!(
        roundtrip(&mut e, b"served", T),
        b"served",
        "echo from 127.0.0.1"
    );
    let mut a = connect_from(local, chat).unwrap();
    let mut b = connect_from(local, chat).unwrap();
    let (wa, _) = read_bounded(&mut a, Some(9), T);
    assert_eq!(wa, b"* welcome", "chat from 127.0.0.1");
    b.write_all(b"hello from b\n").unwrap();
    let deadline = Instant::now() + T;
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("hello from b") {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "the chat line reached a: {:?}",
            String::from_utf8_lossy(&seen)
        );
        let (got, end) = read_bounded(&mut a, Some(1), left);
        assert_ne!(end, End::Eof, "{:?}", String::from_utf8_lossy(&seen));
        seen.extend(got);
    }
    let mut f = connect_from(local, files).unwrap();
    files_support::assert_usable(&mut f, "5000 connections from 127.0.0.2");

    let st = stats(&server);
    let open: u64 = ["echo", "chat", "files"]
        .iter()
        .map(|s| st["services"][s]["connections_open"].as_u64().unwrap())
        .sum();
    let refused: u64 = ["echo", "chat", "files"]
        .iter()
        .map(|s| st["services"][s]["rejected_per_ip"].as_u64().unwrap())
        .sum();
    // 500 for 127.0.0.2 (a tenth of 5000), and ours.
    assert!(open <= 500 + 5, "open {open}: {st}");
    assert!(refused >= (HOGS - 500) as u64, "refused {refused}: {st}");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "took {:?}",
        start.elapsed()
    );
    drop(hogs);
}

/// With `--workers 2` the kernel spreads one address's connections over both workers; the
/// limit still counts them together.
#[test]
fn the_per_address_limit_holds_for_the_process_not_each_worker() {
    let server = Server::start(serve_args(
        &[("echo", "127.0.0.1:0")],
        &["--workers", "2", "--max-conns-per-ip", "4"],
    ));
    let echo = server.tcp("echo");
    let hog = Ipv4Addr::new(127, 0, 0, 2);
    let mut served = Vec::new();
    let mut refused = 0;
    for _ in 0..12 {
        let mut c = connect_from(hog, echo).unwrap();
        match util::probe(&mut c, Duration::from_secs(5)) {
            End::Complete => served.push(c),
            end if end.closed() => refused += 1,
            end => panic!("neither served nor refused: {end:?}"),
        }
    }
    assert_eq!(
        served.len(),
        4,
        "served {} of 12, refused {refused}",
        served.len()
    );
    assert_eq!(refused, 8);
}

/// The deadline covers a request's header, not its body: an upload sent at a steady, slow rate
/// for longer than `--request-timeout` is stored (its pauses are covered by the idle timeout).
#[test]
fn a_body_sent_slowly_for_longer_than_the_request_timeout_is_stored() {
    let dir = TempDir::new("admission-body");
    let data = dir.file("data");
    let mut extra = vec!["--request-timeout", "1s"];
    extra.extend(["--data-dir", &data]);
    let server = Server::start(serve_args(&[("files", "127.0.0.1:0")], &extra));
    let mut s = server.connect("files");
    let body = vec![b'b'; 5 * 100];
    let req = files_support::request(json!({"cmd": "put", "filename": "slow.bin"}), &body);
    let (head, rest) = req.split_at(req.len() - body.len());
    files_support::send(&mut s, head);
    for chunk in rest.chunks(100) {
        // The pacing of the upload under test, not a wait for a condition.
        std::thread::sleep(Duration::from_millis(400));
        files_support::send(&mut s, chunk);
    }
    let r = files_support::read_response(&mut s);
    r.assert_ok("put");
    assert_eq!(r.get("filesize"), &json!(500), "{:?}", r.h);
}

/// The authentication response is a request too: trickled, it is closed at the deadline, long
/// before `--auth-timeout`.
#[test]
fn an_authentication_response_trickled_is_closed_at_the_request_timeout() {
    let extra = [
        "--request-timeout",
        "2s",
        "--auth-timeout",
        "60s",
        "--handshake-timeout",
        "60s",
        "--auth",
        "echo",
    ];
    let mut cmd = util::serve_cmd(serve_args(&[("echo", "127.0.0.1:0")], &extra));
    cmd.env("SOCKLAB_SECRET", "s3cret");
    let server = Server::start_cmd(cmd);
    let mut s = server.connect("echo");
    let challenge = util::read_exact_timeout(&mut s, 32, T);
    let answer = files_support::hmac_sha256(b"s3cret", &challenge);
    assert_closed_at_request_timeout(&mut s, &answer, "an authentication response");
}
