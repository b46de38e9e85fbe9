//! Strict parsing of hostile input over real sockets (issue 16, "strict parsing" and "UDP"):
//! duplicate keys and out-of-range numbers in a `files` header are `bad_request` with the
//! connection kept; the metrics endpoint answers smuggling shapes (two `Content-Length`s,
//! `Transfer-Encoding`, bare LF, obs-fold, a malformed request line) with 400 and closes, and
//! serves HEAD, a query string and 405 as RFC 9112 says; udp-chat neither relays nor forgets to
//! count empty and non-UTF-8 datagrams; discovery keeps answering others while one source
//! floods it.

mod util;

#[path = "files_support/mod.rs"]
mod files_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use files_support::*;
use serde_json::{Value, json};
use util::Server;

const T: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- files headers

#[test]
fn duplicate_keys_are_bad_request_and_the_connection_stays() {
    let scratch = Scratch::new("strict-dup");
    let server = start(&scratch, &[]);
    let mut s = connect(&server);

    // Last-wins would run `put`; first-wins would run `ping`: neither may happen.
    let h = br#"{"cmd":"ping","cmd":"put","filename":"dup.txt","size":0,"id":1}"#;
    send(&mut s, &frame_raw(h, b""));
    let r = read_response(&mut s);
    r.assert_error("bad_request", None);
    assert!(r.message().contains("cmd"), "{:?}", r.h);
    assert_eq!(r.get("id"), &json!(1), "a good id is still copied");
    assert_usable(&mut s, "duplicate cmd keys");
    assert!(
        scratch.data_names().is_empty(),
        "nothing stored: {:?}",
        scratch.data_names()
    );

    // A body announced by a header with a duplicate key is skipped, not read as a frame.
    let h = br#"{"cmd":"echo","cmd":"echo","size":3,"id":2}"#;
    send(&mut s, &frame_raw(h, b"abc"));
    read_response(&mut s).assert_error("bad_request", None);
    assert_usable(&mut s, "duplicate keys with a body");

    // Nested: a duplicate inside `id` makes `id` itself unusable (echoed as null).
    let h = br#"{"cmd":"ping","id":{"a":1,"a":2}}"#;
    send(&mut s, &frame_raw(h, b""));
    let r = read_response(&mut s);
    r.assert_error("bad_request", None);
    assert_eq!(r.get("id"), &Value::Null);
    assert_usable(&mut s, "a duplicate key inside id");

    // A duplicate `size` leaves the body's length unknown: the frame boundary is lost.
    let h = br#"{"cmd":"echo","size":1,"size":2}"#;
    send(&mut s, &frame_raw(h, b"xy"));
    read_response(&mut s).assert_error("bad_frame", None);
    assert_closed(&mut s, "a duplicate size");
}

#[test]
fn out_of_range_numbers_are_bad_request_and_the_connection_stays() {
    let scratch = Scratch::new("strict-num");
    let server = start(&scratch, &[]);
    let mut s = connect(&server);

    let huge = "7".repeat(5000);
    let h = format!(r#"{{"cmd":"ping","id":{huge}}}"#);
    send(&mut s, &frame_raw(h.as_bytes(), b""));
    let r = read_response(&mut s);
    r.assert_error("bad_request", None);
    assert_eq!(
        r.get("id"),
        &Value::Null,
        "an unusable id is echoed as null"
    );
    assert_usable(&mut s, "a 5,000-digit id");

    for (h, what) in [
        (r#"{"cmd":"ping","id":5,"x":1e999}"#.to_owned(), "1e999"),
        (
            format!(r#"{{"cmd":"ping","id":5,"x":[-{huge}]}}"#),
            "nested",
        ),
        (
            r#"{"cmd":"ping","id":5,"x":{"y":-1e400}}"#.to_owned(),
            "-1e400",
        ),
    ] {
        send(&mut s, &frame_raw(h.as_bytes(), b""));
        let r = read_response(&mut s);
        r.assert_error("bad_request", None);
        assert_eq!(r.get("id"), &json!(5), "{what}");
        assert_usable(&mut s, what);
    }

    // An out-of-range size: the body's length cannot be known, so the frame is bad.
    send(&mut s, &frame_raw(br#"{"cmd":"echo","size":1e999}"#, b""));
    read_response(&mut s).assert_error("bad_frame", None);
    assert_closed(&mut s, "an out-of-range size");
}

// ---------------------------------------------------------------- metrics HTTP

fn metrics_server(extra_listeners: &[(&str, &str)]) -> Server {
    let mut listeners = vec![("metrics", "127.0.0.1:0")];
    listeners.extend_from_slice(extra_listeners);
    Server::start(util::serve_args(&listeners, &[]))
}

/// Sends `request` on a fresh connection and reads until the server closes it (panics if it
/// does not within [`T`]).
fn http_closed(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(request).unwrap();
    let (got, end) = util::read_to_end_timeout(&mut s, T);
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(end.closed(), "the server did not close after: {text}");
    text
}

/// One response's head (status line and fields) and body, read off a kept-alive connection.
struct HttpResp {
    status: String,
    fields: Vec<(String, String)>,
    body: Vec<u8>,
}

impl HttpResp {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn content_length(&self) -> usize {
        self.field("Content-Length")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no Content-Length: {:?}", self.fields))
    }
}

/// Reads one response; its body as long as `Content-Length` says unless `head_only`.
fn read_http(s: &mut TcpStream, head_only: bool) -> HttpResp {
    s.set_read_timeout(Some(T)).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("a response head");
        head.push(byte[0]);
    }
    let text = String::from_utf8(head).unwrap();
    let mut lines = text.trim_end().split("\r\n");
    let status = lines.next().unwrap_or_default().to_owned();
    let fields = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
    let mut resp = HttpResp {
        status,
        fields,
        body: Vec::new(),
    };
    if !head_only {
        resp.body = vec![0u8; resp.content_length()];
        s.read_exact(&mut resp.body).expect("the body");
    }
    resp
}

#[test]
fn http_smuggling_shapes_are_400_and_closed() {
    let server = metrics_server(&[]);
    let addr = server.tcp("metrics");
    for (req, what) in [
        (
            &b"GET /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\n"[..],
            "two different Content-Length",
        ),
        (
            b"GET /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
            "a duplicate Content-Length",
        ),
        (
            b"GET /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 0, 0\r\n\r\n",
            "a Content-Length list",
        ),
        (
            b"GET /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: +0\r\n\r\n",
            "a signed Content-Length",
        ),
        (
            b"GET /metrics HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "Transfer-Encoding",
        ),
        (
            b"GET /metrics HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: identity\r\nContent-Length: 0\r\n\r\n",
            "Transfer-Encoding with Content-Length",
        ),
        (
            b"GET /metrics HTTP/1.1\nHost: t\n\n",
            "bare LF line ends",
        ),
        (
            b"GET /metrics HTTP/1.1\r\nHost: t\nX: y\r\n\r\n",
            "one bare LF",
        ),
        (
            b"GET /metrics HTTP/1.1\r\nHost: t\r\nX-Folded: a\r\n b\r\n\r\n",
            "obs-fold",
        ),
        (b"GET  /metrics HTTP/1.1\r\nHost: t\r\n\r\n", "two spaces"),
        (
            b"GET /metrics HTTP/1.1 x\r\nHost: t\r\n\r\n",
            "a request line with four parts",
        ),
        (b"GET /metrics\r\nHost: t\r\n\r\n", "no version"),
        (b"GET /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 without Host"),
        (
            b"GET /metrics HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "two Host fields",
        ),
    ] {
        let resp = http_closed(addr, req);
        assert!(
            resp.starts_with("HTTP/1.1 400 "),
            "{what}: expected 400, got {resp}"
        );
    }
    // Still serving.
    let resp = http_closed(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
}

#[test]
fn http_head_query_and_405_keep_the_connection() {
    let server = metrics_server(&[]);
    let mut s = TcpStream::connect(server.tcp("metrics")).unwrap();

    // HEAD: GET's head with its Content-Length, no body; the next response follows at once.
    s.write_all(b"HEAD /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let head = read_http(&mut s, true);
    assert!(head.status.starts_with("HTTP/1.1 200 "), "{}", head.status);
    assert!(head.content_length() > 100, "{:?}", head.fields);

    // A query string on /metrics is ignored.
    s.write_all(b"GET /metrics?name[]=x&y=1 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let get = read_http(&mut s, false);
    assert!(get.status.starts_with("HTTP/1.1 200 "), "{}", get.status);
    let body = String::from_utf8(get.body.clone()).unwrap();
    assert!(
        body.contains("# TYPE socklab_frames_total counter"),
        "{body}"
    );
    // The HEAD answer had the length a GET then had: only the metrics' own counters moved.
    let diff = get.content_length().abs_diff(head.content_length());
    assert!(
        diff < 16,
        "HEAD {} vs GET {}",
        head.content_length(),
        get.content_length()
    );

    for method in ["POST", "PUT", "DELETE", "OPTIONS", "get"] {
        s.write_all(format!("{method} /metrics HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .unwrap();
        let r = read_http(&mut s, false);
        assert!(
            r.status.starts_with("HTTP/1.1 405 "),
            "{method}: {}",
            r.status
        );
        assert_eq!(r.field("Allow"), Some("GET, HEAD"), "{method}");
    }
    // HEAD of another path: a 404 head, no body.
    s.write_all(b"HEAD /other HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let r = read_http(&mut s, true);
    assert!(r.status.starts_with("HTTP/1.1 404 "), "{}", r.status);
    // The connection is still in step: a last GET is answered whole.
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let r = read_http(&mut s, false);
    assert!(r.status.starts_with("HTTP/1.1 200 "), "{}", r.status);
    let (rest, end) = util::read_to_end_timeout(&mut s, T);
    assert!(end.closed() && rest.is_empty(), "{rest:?}");
}

// ---------------------------------------------------------------- udp-chat

fn scrape(addr: SocketAddr) -> String {
    let resp = http_closed(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    resp.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

fn series(body: &str, name: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no series {name} in\n{body}"))
}

#[test]
fn udp_chat_ignores_and_counts_empty_and_non_utf8_datagrams() {
    let server = metrics_server(&[("udp-chat", "127.0.0.1:0")]);
    let chat = server.udp("udp-chat");
    let metrics = server.tcp("metrics");
    let dropped = r#"socklab_datagrams_dropped_total{service="udp-chat",worker="0"}"#;
    assert_eq!(series(&scrape(metrics), dropped), 0);

    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    for s in [&a, &b] {
        s.connect(chat).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
    }
    let mut buf = [0u8; 65536];
    // b becomes a member; a hears that, so it is a member too.
    a.send(b"a here").unwrap();
    b.send(b"b here").unwrap();
    let n = a.recv(&mut buf).unwrap();
    assert_eq!(
        &buf[..n],
        format!("[{}] b here", b.local_addr().unwrap()).as_bytes()
    );

    a.send(b"").unwrap();
    a.send(b"\xff\xfe not utf-8").unwrap();
    a.send(b"\n").unwrap();
    a.send(b"after").unwrap();
    // The server handles a's datagrams in order: b's first datagram must be "after".
    let n = b.recv(&mut buf).unwrap();
    let want = format!("[{}] after", a.local_addr().unwrap());
    assert_eq!(String::from_utf8_lossy(&buf[..n]), want);
    assert_eq!(
        series(&scrape(metrics), dropped),
        3,
        "the three ignored are counted"
    );
}

// ---------------------------------------------------------------- discovery

#[test]
fn a_flood_from_one_source_leaves_the_others_answered() {
    let server = Server::start(util::serve_args(
        &[("discovery", "127.0.0.1:0")],
        &["--discovery-rate", "20"],
    ));
    let addr = server.udp("discovery");
    let flooder = UdpSocket::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    flooder
        .set_read_timeout(Some(Duration::from_millis(10)))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flood_answers = Arc::new(AtomicUsize::new(0));
    let flood = {
        let (stop, answers) = (stop.clone(), flood_answers.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Bursts of probes, far past the rate, reading what comes back between them.
                for _ in 0..50 {
                    let _ = flooder.send_to(b"SOCKLAB?", addr);
                    sent += 1;
                }
                while flooder.recv_from(&mut buf).is_ok() {
                    answers.fetch_add(1, Ordering::Relaxed);
                }
            }
            sent
        })
    };
    // Once the flood has been answered (the server is taking it), it has drained the burst.
    assert!(
        util::wait_until(T, || flood_answers.load(Ordering::Relaxed) > 0),
        "the flood's first probes are answered"
    );
    std::thread::sleep(Duration::from_millis(200));

    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    probe
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let started = Instant::now();
    let mut answered = 0;
    for i in 0..4 {
        match util::udp_ask(&probe, addr, b"SOCKLAB?") {
            Some(a) if a.starts_with(b"{") => answered += 1,
            other => eprintln!("probe {i} from 127.0.0.1 unanswered: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::Relaxed);
    let sent = flood.join().unwrap();
    let flood_answered = flood_answers.load(Ordering::Relaxed);
    assert_eq!(
        answered, 4,
        "every probe from 127.0.0.1 is answered during a flood of {sent} probes from 127.0.0.2"
    );
    // The flooder got at most its own share: well under the global 20/s.
    let secs = started.elapsed().as_secs_f64() + 1.5;
    assert!(
        (flood_answered as f64) < 20.0 * secs,
        "the flooder got {flood_answered} answers in about {secs:.1} s"
    );
}
