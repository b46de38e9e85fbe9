//! The `metrics` service over real HTTP: `GET /metrics` in the Prometheus text format with every
//! family PROTOCOL.md lists, counters that move as traffic flows, 404 for other paths, and a
//! malformed request answered 400 and closed. Where `promtool` is installed, it checks the
//! format too.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use util::Server;

fn server() -> Server {
    let listeners = [("metrics", "127.0.0.1:0"), ("echo", "127.0.0.1:0")];
    Server::start(util::serve_args(&listeners, &[]))
}

/// One request on a fresh connection (`Connection: close`), the whole response back.
fn http(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn scrape(addr: SocketAddr) -> String {
    let resp = http(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    let (head, body) = resp.split_once("\r\n\r\n").expect("head and body");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("Content-Length")
        .parse()
        .unwrap();
    assert_eq!(len, body.len(), "Content-Length matches the body");
    body.to_owned()
}

fn value(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no series {series} in\n{body}"))
}

#[test]
fn counters_move_with_traffic_and_every_family_is_there() {
    let server = server();
    let metrics = server.tcp("metrics");
    let before = scrape(metrics);
    for family in [
        "socklab_connections_accepted_total",
        "socklab_connections_open",
        "socklab_connections_rejected_total",
        "socklab_bytes_received_total",
        "socklab_bytes_sent_total",
        "socklab_datagrams_received_total",
        "socklab_datagrams_sent_total",
        "socklab_frames_total",
        "socklab_shutdown_connections_total",
        "socklab_loop_iterations_total",
        "socklab_loop_busy_seconds_total",
    ] {
        assert!(before.contains(&format!("# HELP {family} ")), "{family}");
        assert!(before.contains(&format!("# TYPE {family} ")), "{family}");
    }
    let accepted = r#"socklab_connections_accepted_total{service="echo",worker="0"}"#;
    let received = r#"socklab_bytes_received_total{service="echo",worker="0"}"#;
    assert_eq!(value(&before, accepted), 0.0);

    let mut echo = TcpStream::connect(server.tcp("echo")).unwrap();
    echo.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    echo.write_all(&[7u8; 1000]).unwrap();
    let mut back = [0u8; 1000];
    echo.read_exact(&mut back).unwrap();

    let after = scrape(metrics);
    assert_eq!(value(&after, accepted), 1.0);
    assert_eq!(value(&after, received), 1000.0);
    let iterations = r#"socklab_loop_iterations_total{worker="0"}"#;
    assert!(value(&after, iterations) > value(&before, iterations));

    util::promtool_check(&after);
}

#[test]
fn other_paths_are_404_and_bad_requests_400_then_closed() {
    let server = server();
    let metrics = server.tcp("metrics");
    let resp = http(
        metrics,
        "GET /nothing-here HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 404 "), "{resp}");
    let resp = http(
        metrics,
        "POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
    );
    assert!(resp.starts_with("HTTP/1.1 400 "), "{resp}");
    // read_to_string returning at all means the server closed the connection.
    let resp = http(metrics, "\x01\x02 not http\r\n\r\n");
    assert!(resp.starts_with("HTTP/1.1 400 "), "{resp}");
    let resp = http(
        metrics,
        &format!("GET /{} HTTP/1.1\r\n", "a".repeat(10_000)),
    );
    assert!(resp.starts_with("HTTP/1.1 431 "), "{resp}");
    // Still serving.
    scrape(metrics);
}
