//! The PROXY protocol on stream listeners (behind a load balancer): the header's source
//! address stands for the client's (here seen through `--max-conns-per-ip`, which counts by
//! it), bytes after the header reach the service untouched, and every bad header closes its
//! connection while everyone else is served. Real sockets; HAProxy itself, with
//! `send-proxy-v2`, in the last test.

mod util;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use socket2::{Domain, Socket, Type};

use util::{End, Server, TempDir, read_bounded, roundtrip, serve_args};

const T: Duration = Duration::from_secs(10);

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

fn v2(command: u8, family: u8, addrs: &[u8]) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.push(command);
    h.push(family);
    h.extend_from_slice(&u16::try_from(addrs.len()).unwrap().to_be_bytes());
    h.extend_from_slice(addrs);
    h
}

/// A v2 header for TCP over IPv4 from `client`:4242 to 198.51.100.1:80.
fn v2_from(client: [u8; 4]) -> Vec<u8> {
    let mut a = client.to_vec();
    a.extend_from_slice(&[198, 51, 100, 1, 0x10, 0x92, 0, 80]);
    v2(0x21, 0x11, &a)
}

fn v1_from(client: &str) -> Vec<u8> {
    format!("PROXY TCP4 {client} 198.51.100.1 4242 80\r\n").into_bytes()
}

/// echo on 127.0.0.1:0 expecting `versions`, at most one connection per client address.
fn server(versions: &str, extra: &[&str]) -> Server {
    let flag = format!("echo={versions}");
    let mut args = vec![
        "--proxy-protocol",
        flag.as_str(),
        "--max-conns-per-ip",
        "1",
        "--handshake-timeout",
        "1s",
    ];
    args.extend_from_slice(extra);
    Server::start(serve_args(&[("echo", "127.0.0.1:0")], &args))
}

fn connect(to: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&to, T).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.set_write_timeout(Some(T)).unwrap();
    s
}

/// Sends `first` and says how the connection then ends: closed by the server, or still open
/// (a byte probe comes back).
fn after(server: &Server, first: &[u8]) -> End {
    let mut s = connect(server.tcp("echo"));
    s.write_all(first).unwrap();
    let (got, end) = read_bounded(&mut s, None, Duration::from_secs(5));
    assert!(
        got.is_empty(),
        "nothing is answered to a bad header: {got:?}"
    );
    end
}

#[track_caller]
fn assert_others_served(server: &Server, client: [u8; 4]) {
    let mut s = connect(server.tcp("echo"));
    let mut first = v2_from(client);
    first.extend_from_slice(b"hello");
    s.write_all(&first).unwrap();
    let (got, end) = read_bounded(&mut s, Some(5), T);
    assert_eq!(
        (got.as_slice(), end),
        (&b"hello"[..], End::Complete),
        "a good client after a bad one\n{}",
        server.stderr()
    );
}

#[test]
fn the_header_names_the_client_and_its_bytes_follow_untouched() {
    let server = server("v1-or-v2", &[]);
    let echo = server.tcp("echo");
    // The header and the first bytes in one segment: nothing of either is lost or mixed.
    let mut a = connect(echo);
    let mut first = v2_from([192, 0, 2, 7]);
    first.extend_from_slice(b"first bytes");
    a.write_all(&first).unwrap();
    let (got, _) = read_bounded(&mut a, Some(11), T);
    assert_eq!(got, b"first bytes");
    // v1 as well, header alone first.
    let mut b = connect(echo);
    b.write_all(&v1_from("192.0.2.8")).unwrap();
    assert_eq!(roundtrip(&mut b, b"v1 bytes", T), b"v1 bytes");
    // One connection per client address: a second from 192.0.2.7 is refused although every
    // connection comes from 127.0.0.1, which the limit would otherwise have counted.
    let mut again = connect(echo);
    again.write_all(&v2_from([192, 0, 2, 7])).unwrap();
    let (_, end) = read_bounded(&mut again, None, T);
    assert!(end.closed(), "a second connection of 192.0.2.7: {end:?}");
    assert_eq!(roundtrip(&mut a, b"still", T), b"still");
    assert_eq!(roundtrip(&mut b, b"still", T), b"still");
}

#[test]
fn a_second_header_is_the_clients_data() {
    let server = server("v1-or-v2", &[]);
    let mut s = connect(server.tcp("echo"));
    s.write_all(&v1_from("192.0.2.7")).unwrap();
    let again = v1_from("203.0.113.9");
    assert_eq!(roundtrip(&mut s, &again, T), again);
}

#[test]
fn a_header_on_a_listener_that_expects_none_is_data() {
    let server = Server::start(serve_args(&[("echo", "127.0.0.1:0")], &[]));
    let mut s = connect(server.tcp("echo"));
    let h = v1_from("192.0.2.7");
    assert_eq!(roundtrip(&mut s, &h, T), h);
}

#[test]
fn no_header_closes_the_connection() {
    let server = server("v1-or-v2", &[]);
    assert!(after(&server, b"hello\n").closed());
    assert!(
        server.wait_stderr_contains("on a PROXY protocol listener", T),
        "the close is logged:\n{}",
        server.stderr()
    );
    assert_others_served(&server, [192, 0, 2, 1]);
}

#[test]
fn a_truncated_header_is_closed_at_its_deadline() {
    let server = server("v1-or-v2", &[]);
    let h = v2_from([192, 0, 2, 7]);
    let start = std::time::Instant::now();
    assert!(after(&server, &h[..20]).closed());
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "closed after {:?} (the handshake timeout is 1 s)",
        start.elapsed()
    );
    let v1 = v1_from("192.0.2.7");
    assert!(after(&server, &v1[..20]).closed());
    assert_others_served(&server, [192, 0, 2, 1]);
}

#[test]
fn a_too_long_header_is_closed() {
    let server = server("v1-or-v2", &[]);
    let mut long = b"PROXY TCP4 ".to_vec();
    long.resize(300, b'1');
    assert!(after(&server, &long).closed());
    let mut big = V2_SIGNATURE.to_vec();
    big.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
    assert!(after(&server, &big).closed());
    assert_others_served(&server, [192, 0, 2, 1]);
}

#[test]
fn the_wrong_version_is_closed() {
    let v2_only = server("v2", &[]);
    assert!(after(&v2_only, &v1_from("192.0.2.7")).closed());
    assert_others_served(&v2_only, [192, 0, 2, 1]);
    let v1_only = server("v1", &[]);
    assert!(after(&v1_only, &v2_from([192, 0, 2, 7])).closed());
    let mut s = connect(v1_only.tcp("echo"));
    s.write_all(&v1_from("192.0.2.1")).unwrap();
    assert_eq!(roundtrip(&mut s, b"ok", T), b"ok");
}

#[test]
fn an_unknown_address_family_is_closed() {
    let server = server("v1-or-v2", &[]);
    assert!(after(&server, &v2(0x21, 0x41, &[0; 12])).closed());
    assert!(after(&server, b"PROXY UDP9 1.2.3.4 5.6.7.8 1 2\r\n").closed());
    assert_others_served(&server, [192, 0, 2, 1]);
}

#[test]
fn waiting_connections_count_against_max_conns() {
    let server = server("v1-or-v2", &["--max-conns", "2"]);
    let echo = server.tcp("echo");
    // Two connections that have sent nothing yet hold both slots...
    let _a = connect(echo);
    let _b = connect(echo);
    let mut c = connect(echo);
    c.write_all(&v2_from([192, 0, 2, 9])).unwrap();
    let (_, end) = read_bounded(&mut c, None, T);
    assert!(end.closed(), "a third connection at --max-conns 2: {end:?}");
    // ...until their header deadline frees them.
    assert!(
        util::wait_until(T, || {
            let mut s = connect(echo);
            let mut first = v2_from([192, 0, 2, 10]);
            first.extend_from_slice(b"x");
            s.write_all(&first).is_ok()
                && read_bounded(&mut s, Some(1), Duration::from_secs(2)).0 == b"x"
        }),
        "served once the silent connections were closed"
    );
}

/// A connection from `from` (a loopback address of its own) to `to`.
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::new(IpAddr::V4(from), 0).into())
        .unwrap();
    s.connect_timeout(&to.into(), T).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(T)).unwrap();
    s
}

/// HAProxy in `mode tcp` with `send-proxy-v2` in front of echo: every connection reaches the
/// server from HAProxy's address, yet the per-address limit (1) counts the clients'.
#[test]
fn behind_haproxy_the_clients_addresses_are_seen() {
    let server = server("v2", &[]);
    let dir = TempDir::new("proxy-haproxy");
    let port = util::closed_port().port();
    let cfg = format!(
        "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  \
         timeout server 30s\nfrontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n\
         backend be\n  server s1 {} send-proxy-v2\n",
        server.tcp("echo")
    );
    let cfg_path = dir.file("haproxy.cfg");
    std::fs::write(&cfg_path, cfg).unwrap();
    // Debian puts it in /usr/sbin, which a user's PATH may lack.
    let program = if std::path::Path::new("/usr/sbin/haproxy").exists() {
        "/usr/sbin/haproxy"
    } else {
        "haproxy"
    };
    let haproxy = Command::new(program)
        .args(["-db", "-f", &cfg_path])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut haproxy = match haproxy {
        Ok(c) => c,
        Err(e) => panic!("haproxy must be installed for this test (.ci/run installs it): {e}"),
    };
    let front: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let up = util::wait_until(T, || TcpStream::connect_timeout(&front, T).is_ok());
    let result = std::panic::catch_unwind(|| {
        assert!(up, "haproxy did not listen on {front}");
        let mut a = connect_from(Ipv4Addr::new(127, 0, 0, 2), front);
        assert_eq!(roundtrip(&mut a, b"from .2", T), b"from .2");
        let mut b = connect_from(Ipv4Addr::new(127, 0, 0, 3), front);
        assert_eq!(roundtrip(&mut b, b"from .3", T), b"from .3");
        // A second client of 127.0.0.2 is over its own limit.
        let mut again = connect_from(Ipv4Addr::new(127, 0, 0, 2), front);
        let _ = again.write_all(b"x");
        let (got, end) = read_bounded(&mut again, None, T);
        assert!(
            got.is_empty() && end.closed(),
            "a second client of 127.0.0.2: {got:?} {end:?}"
        );
        assert_eq!(roundtrip(&mut a, b"still", T), b"still");
    });
    let _ = haproxy.kill();
    let _ = haproxy.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// A connection accepted before SIGTERM is owed its answer even if its PROXY header was not
/// whole yet: the header completes during the drain, the request is answered, then a clean end.
#[test]
fn a_header_half_sent_at_sigterm_is_still_served() {
    let mut server = server("v1-or-v2", &["--shutdown-grace", "10s"]);
    let mut s = connect(server.tcp("echo"));
    let h = v2_from([192, 0, 2, 7]);
    s.write_all(&h[..10]).unwrap();
    // The server has accepted it (its header waits): a second connection's round trip, served
    // after the first was accepted on the same listener, says so.
    assert_others_served(&server, [192, 0, 2, 1]);
    server.signal(libc::SIGTERM);
    assert!(
        server.wait_stderr_contains("shutting down", T),
        "no shutdown line:\n{}",
        server.stderr()
    );
    let mut rest = h[10..].to_vec();
    rest.extend_from_slice(b"late");
    s.write_all(&rest).unwrap();
    let (got, end) = read_bounded(&mut s, None, T);
    assert_eq!(
        (got.as_slice(), end),
        (&b"late"[..], End::Eof),
        "\n{}",
        server.stderr()
    );
    assert!(server.wait_exit(T).is_some_and(|st| st.success()));
}
