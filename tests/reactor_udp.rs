//! `udp-echo` and `udp-upper` over UDP and Unix datagram sockets: one reply
//! datagram per request, to the sender; an empty datagram gets an empty reply;
//! over unixgram the client binds its own path to be answered.

mod util;

use std::net::UdpSocket;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use util::*;

const T: Duration = Duration::from_secs(5);

fn udp_client() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s
}

/// Sends one datagram and returns the one reply (panics on timeout).
fn udp_ask(s: &UdpSocket, to: std::net::SocketAddr, payload: &[u8]) -> Vec<u8> {
    s.send_to(payload, to).unwrap();
    let mut buf = vec![0u8; 65536];
    let (n, from) = s.recv_from(&mut buf).unwrap_or_else(|e| {
        panic!(
            "no reply from {to} within {T:?} to {} bytes: {e}",
            payload.len()
        )
    });
    assert_eq!(from, to, "reply must come from the service's own address");
    buf.truncate(n);
    buf
}

fn udp_server() -> Server {
    Server::start(serve_args(
        &[("udp-echo", "127.0.0.1:0"), ("udp-upper", "127.0.0.1:0")],
        &[],
    ))
}

#[test]
fn udp_echo_replies_each_datagram() {
    let server = udp_server();
    let to = server.udp("udp-echo");
    let c = udp_client();
    assert_eq!(udp_ask(&c, to, b"hello"), b"hello");
    let all: Vec<u8> = (0..=255u8).collect();
    assert_eq!(udp_ask(&c, to, &all), all);
    let big = Rng::new(10).bytes(1200);
    assert_eq!(udp_ask(&c, to, &big), big);
}

#[test]
fn udp_echo_empty_datagram_gets_empty_reply() {
    let server = udp_server();
    let c = udp_client();
    for service in ["udp-echo", "udp-upper"] {
        let to = server.udp(service);
        assert_eq!(udp_ask(&c, to, b""), b"", "{service}: empty request");
        // And the service still answers normally afterwards.
        assert_eq!(
            udp_ask(&c, to, b"x"),
            if service == "udp-echo" { b"x" } else { b"X" }
        );
    }
}

#[test]
fn udp_upper_maps_ascii_only() {
    let server = udp_server();
    let to = server.udp("udp-upper");
    let c = udp_client();
    assert_eq!(udp_ask(&c, to, b"abc xyz ABC 09!"), b"ABC XYZ ABC 09!");
    let text = "grüße, naïve café ω 🦀";
    assert_eq!(
        String::from_utf8(udp_ask(&c, to, text.as_bytes())).unwrap(),
        "GRüßE, NAïVE CAFé ω 🦀"
    );
    let all: Vec<u8> = (0..=255u8).collect();
    assert_eq!(udp_ask(&c, to, &all), upper(&all));
}

#[test]
fn udp_replies_go_to_each_sender() {
    let server = udp_server();
    let to = server.udp("udp-echo");
    let a = udp_client();
    let b = udp_client();
    a.send_to(b"from a", to).unwrap();
    b.send_to(b"from b", to).unwrap();
    let mut buf = [0u8; 64];
    let n = a.recv(&mut buf).expect("reply to a");
    assert_eq!(&buf[..n], b"from a");
    let n = b.recv(&mut buf).expect("reply to b");
    assert_eq!(&buf[..n], b"from b");
}

fn unixgram_server(dir: &TempDir) -> Server {
    let echo = format!("unixgram:{}", dir.file("echo.dgram"));
    let upper = format!("unixgram:{}", dir.file("upper.dgram"));
    Server::start(serve_args(
        &[("udp-echo", &echo), ("udp-upper", &upper)],
        &[],
    ))
}

fn unixgram_client(dir: &TempDir, name: &str) -> UnixDatagram {
    let s = UnixDatagram::bind(dir.path().join(name)).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s
}

fn unixgram_ask(s: &UnixDatagram, to: &std::path::Path, payload: &[u8]) -> Vec<u8> {
    s.send_to(payload, to).unwrap();
    let mut buf = vec![0u8; 65536];
    let n = s
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no reply from {to:?} within {T:?}: {e}"));
    buf.truncate(n);
    buf
}

#[test]
fn unixgram_echo_and_upper() {
    let dir = TempDir::new("ugram");
    let server = unixgram_server(&dir);
    let echo = server.unixgram("udp-echo");
    let up = server.unixgram("udp-upper");
    assert_eq!(echo, dir.path().join("echo.dgram"));
    assert_eq!(up, dir.path().join("upper.dgram"));
    let c = unixgram_client(&dir, "client.dgram");
    assert_eq!(unixgram_ask(&c, &echo, b"hello unix"), b"hello unix");
    let data = Rng::new(11).bytes(2000);
    assert_eq!(unixgram_ask(&c, &echo, &data), data);
    assert_eq!(
        String::from_utf8(unixgram_ask(&c, &up, "héllo wörld".as_bytes())).unwrap(),
        "HéLLO WöRLD"
    );
    let all: Vec<u8> = (0..=255u8).collect();
    assert_eq!(unixgram_ask(&c, &up, &all), upper(&all));
}

#[test]
fn unixgram_empty_datagram_gets_empty_reply() {
    let dir = TempDir::new("ugram-empty");
    let server = unixgram_server(&dir);
    let c = unixgram_client(&dir, "client.dgram");
    for service in ["udp-echo", "udp-upper"] {
        let to = server.unixgram(service);
        assert_eq!(unixgram_ask(&c, &to, b""), b"", "{service}: empty request");
        assert_eq!(unixgram_ask(&c, &to, b"q").to_ascii_lowercase(), b"q");
    }
}

/// A client that did not bind a path cannot be answered; the server must
/// survive that and keep serving bound clients.
#[test]
fn unixgram_unbound_client_does_not_hurt_the_server() {
    let dir = TempDir::new("ugram-unbound");
    let mut server = unixgram_server(&dir);
    let echo = server.unixgram("udp-echo");
    let anon = UnixDatagram::unbound().unwrap();
    for _ in 0..10 {
        anon.send_to(b"nobody to answer", &echo).unwrap();
    }
    let c = unixgram_client(&dir, "bound.dgram");
    assert_eq!(unixgram_ask(&c, &echo, b"still there?"), b"still there?");
    server.assert_alive("after datagrams from an unbound client");
}
