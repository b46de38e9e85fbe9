//! `--workers N`: connections land on more than one worker (seen in the per-worker metrics),
//! a chat room spans the workers, `stats` adds every worker up, `--max-conns` bounds the
//! whole process, and SIGTERM stops them all.

mod util;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use socklab::addr::ListenAddr;
use socklab::client::{FilesClient, request};
use util::{Server, wait_until};

const WAIT: Duration = Duration::from_secs(10);

fn server(workers: usize, listeners: &[(&str, &str)], extra: &[&str]) -> Server {
    let n = workers.to_string();
    let mut args = vec!["--workers", n.as_str()];
    args.extend_from_slice(extra);
    Server::start(util::serve_args(listeners, &args))
}

fn scrape(addr: SocketAddr) -> String {
    try_scrape(addr).expect("a metrics response")
}

/// The metrics body, or `None` when the connection was refused or closed without one.
fn try_scrape(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(WAIT)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (_, body) = resp.split_once("\r\n\r\n")?;
    Some(body.to_owned())
}

/// The value of `family{service="S",worker="W"}` for every worker, by worker.
fn per_worker(body: &str, family: &str, service: &str) -> BTreeMap<String, u64> {
    let prefix = format!("{family}{{service=\"{service}\",worker=\"");
    body.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (worker, value) = rest.split_once("\"} ")?;
            Some((worker.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

fn echo_once(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"ping").unwrap();
    let mut back = [0u8; 4];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ping");
    s
}

#[test]
fn connections_spread_over_the_workers_and_metrics_show_each() {
    let server = server(
        2,
        &[("echo", "127.0.0.1:0"), ("metrics", "127.0.0.1:0")],
        &[],
    );
    let (echo, metrics) = (server.tcp("echo"), server.tcp("metrics"));
    // The kernel hashes each connection's ports: 64 connections all on one of two workers
    // would happen with probability 2^-63.
    let conns: Vec<TcpStream> = (0..64).map(|_| echo_once(echo)).collect();
    let mut seen = BTreeMap::new();
    let spread = wait_until(WAIT, || {
        seen = per_worker(&scrape(metrics), "socklab_connections_open", "echo");
        seen.values().sum::<u64>() == 64
    });
    assert!(spread, "open echo connections by worker: {seen:?}");
    assert_eq!(seen.len(), 2, "one series per worker: {seen:?}");
    // Each family is declared once, with every worker's series under it.
    util::promtool_check(&scrape(metrics));
    assert!(
        seen.values().all(|n| *n > 0),
        "both workers serve connections: {seen:?}"
    );
    drop(conns);
}

struct Member {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Member {
    fn join(addr: SocketAddr) -> Member {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut m = Member {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        };
        let welcome = m.line();
        assert!(welcome.starts_with("* welcome guest-"), "{welcome}");
        m
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.reader.read_line(&mut l).unwrap();
        l.trim_end().to_owned()
    }

    /// Reads lines until one matches, returning it; every wait is bounded by the timeout.
    fn until(&mut self, what: impl Fn(&str) -> bool) -> String {
        loop {
            let l = self.line();
            assert!(!l.is_empty(), "the server closed before the expected line");
            if what(&l) {
                return l;
            }
        }
    }

    fn say(&mut self, text: &str) {
        self.writer
            .write_all(format!("{text}\n").as_bytes())
            .unwrap();
    }
}

#[test]
fn a_chat_room_spans_the_workers() {
    let server = server(
        2,
        &[("chat", "127.0.0.1:0"), ("metrics", "127.0.0.1:0")],
        &[],
    );
    let (chat, metrics) = (server.tcp("chat"), server.tcp("metrics"));
    let mut members: Vec<Member> = (0..16).map(|_| Member::join(chat)).collect();
    let mut seen = BTreeMap::new();
    let both = wait_until(WAIT, || {
        seen = per_worker(&scrape(metrics), "socklab_connections_open", "chat");
        seen.values().sum::<u64>() == 16
    });
    assert!(both, "chat members by worker: {seen:?}");
    assert!(
        seen.values().all(|n| *n > 0),
        "members on both workers (2^-15 odds of a false failure): {seen:?}"
    );
    // Nicks are unique across workers, and /who lists every member wherever it is.
    let first = &mut members[0];
    first.say("/nick alice");
    first.until(|l| l == "* guest-1 is now alice" || l.ends_with(" is now alice"));
    let second = &mut members[1];
    second.say("/nick alice");
    second.until(|l| l == "* error: nick alice is taken");
    second.say("/who");
    let who = second.until(|l| l.starts_with("* members: "));
    assert_eq!(who.matches(", ").count(), 15, "{who}");
    assert!(who.contains("alice"), "{who}");
    // A line from one member reaches all fifteen others, on either worker.
    members[0].say("hello from alice");
    for (i, m) in members.iter_mut().enumerate().skip(1) {
        let got = m.until(|l| l.starts_with("alice "));
        assert_eq!(got, "alice hello from alice", "member {i}");
    }
}

fn files_stats(addr: SocketAddr) -> serde_json::Value {
    let mut c = FilesClient::connect(&ListenAddr::Inet(addr), None, WAIT).unwrap();
    let (_, body) = c.call(&request("stats")).unwrap();
    serde_json::from_slice(&body).unwrap()
}

#[test]
fn stats_add_up_every_worker() {
    let server = server(2, &[("echo", "127.0.0.1:0"), ("files", "127.0.0.1:0")], &[]);
    let echo = server.tcp("echo");
    let conns: Vec<TcpStream> = (0..20).map(|_| echo_once(echo)).collect();
    let files = server.tcp("files");
    // Exact when asked: every connection has had its echo, so every one is counted at once.
    let last = files_stats(files);
    assert_eq!(last["services"]["echo"]["connections_open"], 20, "{last}");
    assert_eq!(last["workers"], 2, "{last}");
    assert_eq!(last["services"]["echo"]["connections_accepted"], 20);
    drop(conns);
}

#[test]
fn max_conns_bounds_the_whole_process() {
    let server = server(
        2,
        &[("echo", "127.0.0.1:0"), ("metrics", "127.0.0.1:0")],
        // No per-address limit: every connection comes from 127.0.0.1.
        &["--max-conns", "10", "--max-conns-per-ip", "0"],
    );
    let (echo, metrics) = (server.tcp("echo"), server.tcp("metrics"));
    let mut open = Vec::new();
    for _ in 0..10 {
        open.push(echo_once(echo));
    }
    // Past the limit a connection is accepted and closed at once, whichever worker takes it.
    for _ in 0..10 {
        let mut s = TcpStream::connect(echo).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let _ = s.write_all(b"x");
        let mut buf = [0u8; 1];
        assert!(
            matches!(s.read(&mut buf), Ok(0) | Err(_)),
            "a connection past --max-conns 10 is closed"
        );
    }
    // The metrics connection counts too: make room for it.
    drop(open.pop());
    let mut rejected = BTreeMap::new();
    let counted = wait_until(WAIT, || {
        let Some(body) = try_scrape(metrics) else {
            return false;
        };
        rejected = body
            .lines()
            .filter(|l| {
                l.starts_with("socklab_connections_rejected_total{service=\"echo\"")
                    && l.contains("reason=\"max_conns\"")
            })
            .filter_map(|l| Some((l.to_owned(), l.rsplit(' ').next()?.parse::<u64>().ok()?)))
            .collect();
        rejected.values().sum::<u64>() == 10
    });
    assert!(counted, "rejections: {rejected:?}");
    drop(open);
}

#[test]
fn sigterm_stops_every_worker() {
    let mut server = server(4, &[("echo", "127.0.0.1:0")], &[]);
    let echo = server.tcp("echo");
    let conns: Vec<TcpStream> = (0..16).map(|_| echo_once(echo)).collect();
    drop(conns);
    let pid = server.pid();
    let threads = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert!(threads() >= 4, "four reactor threads");
    server.signal(libc::SIGTERM);
    let status = server
        .wait_exit(WAIT)
        .expect("the server exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn udp_senders_spread_over_the_workers_and_unix_listeners_still_serve() {
    let dir = std::env::temp_dir().join(format!("socklab-workers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("echo.sock");
    let unix = format!("unix:{}", path.display());
    let server = server(
        2,
        &[
            ("udp-echo", "127.0.0.1:0"),
            ("echo", unix.as_str()),
            ("metrics", "127.0.0.1:0"),
        ],
        &[],
    );
    let (udp, metrics) = (server.udp("udp-echo"), server.tcp("metrics"));
    for i in 0..64 {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(WAIT)).unwrap();
        let payload = format!("datagram {i}");
        let back = util::udp_ask(&sock, udp, payload.as_bytes());
        assert_eq!(back.as_deref(), Some(payload.as_bytes()), "datagram {i}");
    }
    let mut seen = BTreeMap::new();
    let counted = wait_until(WAIT, || {
        seen = per_worker(
            &scrape(metrics),
            "socklab_datagrams_received_total",
            "udp-echo",
        );
        seen.values().sum::<u64>() >= 64
    });
    assert!(counted, "datagrams by worker: {seen:?}");
    assert!(
        seen.len() == 2 && seen.values().all(|n| *n > 0),
        "both workers receive datagrams: {seen:?}"
    );
    // A Unix path has one socket, on the first worker; it serves as with one worker.
    let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"over unix").unwrap();
    let mut back = [0u8; 9];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"over unix");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn uploads_in_flight_on_every_worker_at_once_all_land() {
    let dir = std::env::temp_dir().join(format!("socklab-workers-files-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data_dir = dir.display().to_string();
    let server = server(
        2,
        &[("files", "127.0.0.1:0"), ("metrics", "127.0.0.1:0")],
        &["--data-dir", data_dir.as_str()],
    );
    let (files, metrics) = (server.tcp("files"), server.tcp("metrics"));
    let body = b"0123456789abcdef";
    // Every upload is begun before any ends, so every worker holds a temporary at once.
    let mut clients = Vec::new();
    for i in 0..16 {
        let mut c = FilesClient::connect(&ListenAddr::Inet(files), None, WAIT).unwrap();
        let mut put = request("put");
        put.insert("filename".into(), format!("f{i}").into());
        put.insert("size".into(), body.len().into());
        c.send_request(&put, body.len() as u64).unwrap();
        c.send_body(&body[..8]).unwrap();
        clients.push(c);
    }
    let mut seen = BTreeMap::new();
    let spread = wait_until(WAIT, || {
        seen = per_worker(&scrape(metrics), "socklab_connections_open", "files");
        seen.values().sum::<u64>() == 16
    });
    assert!(
        spread && seen.values().all(|n| *n > 0),
        "uploads by worker: {seen:?}"
    );
    for (i, c) in clients.iter_mut().enumerate() {
        c.send_body(&body[8..]).unwrap();
        let resp = c.read_response().unwrap();
        let resp = resp
            .into_result()
            .unwrap_or_else(|e| panic!("upload {i}: {e}"));
        assert_eq!(resp.u64("filesize"), Some(body.len() as u64), "upload {i}");
    }
    for i in 0..16 {
        assert_eq!(std::fs::read(dir.join(format!("f{i}"))).unwrap(), body);
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
