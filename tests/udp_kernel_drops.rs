//! The kernel's receive-queue drops of the server's UDP sockets (issue 21, part 2): a udp-echo
//! with a small receive buffer, the server stopped (SIGSTOP) while a burst arrives, so the
//! kernel must drop what does not fit; once it runs again, metrics (and `stats`, the same
//! counters) show the drops, per service, and the echo still answers.

mod util;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::Duration;

use util::Server;

const T: Duration = Duration::from_secs(10);

fn kernel_drops(server: &Server) -> u64 {
    let mut s = TcpStream::connect(server.tcp("metrics")).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    let series = "socklab_datagrams_kernel_dropped_total{service=\"udp-echo\",worker=\"0\"} ";
    body.lines()
        .find_map(|l| l.strip_prefix(series))
        .unwrap_or_else(|| panic!("no {series} in\n{body}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn datagrams_the_kernel_dropped_are_counted() {
    let mut server = Server::start(util::serve_args(
        &[("udp-echo", "127.0.0.1:0"), ("metrics", "127.0.0.1:0")],
        &["--rcvbuf", "4096"],
    ));
    assert_eq!(kernel_drops(&server), 0, "nothing dropped yet");
    let echo = server.udp("udp-echo");
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(T)).unwrap();
    server.signal(libc::SIGSTOP);
    let burst = vec![b'x'; 1000];
    for _ in 0..500 {
        client.send_to(&burst, echo).unwrap();
    }
    server.signal(libc::SIGCONT);
    let mut dropped = 0;
    let counted = util::wait_until(T, || {
        dropped = kernel_drops(&server);
        dropped > 0
    });
    assert!(counted, "the kernel's drops never showed");
    assert!(dropped < 500, "some datagrams fit: {dropped}");
    // The echo still answers.
    let fresh = UdpSocket::bind("127.0.0.1:0").unwrap();
    fresh.set_read_timeout(Some(T)).unwrap();
    assert_eq!(
        util::udp_ask(&fresh, echo, b"still there"),
        Some(b"still there".to_vec())
    );
    server.assert_alive("after the burst");
}
