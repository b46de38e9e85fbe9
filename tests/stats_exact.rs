//! `stats` and the metrics are exact the moment they are asked, whichever worker answers: with
//! `--workers 2`, 200 echo connections (one round trip each, then closed) are all counted by a
//! scrape and a `socklab stats --json` sent right after the last one, with no wait in between,
//! and the per-worker split adds up to the total; `workers` is 2 as soon as the server listens.

mod util;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use util::{Server, TempDir};

/// Bound on every read and every client run.
const T: Duration = Duration::from_secs(10);

/// Connections per round.
const CONNS: u64 = 200;

/// Bytes each connection echoes.
const PAYLOAD: &[u8] = b"exact-counts";

fn server(dir: &TempDir) -> Server {
    let data = dir.file("data");
    let listeners = [
        ("echo", "127.0.0.1:0"),
        ("files", "127.0.0.1:0"),
        ("metrics", "127.0.0.1:0"),
    ];
    Server::start(util::serve_args(
        &listeners,
        &["--workers", "2", "--data-dir", data.as_str()],
    ))
}

/// `socklab stats --json` against `files`, parsed.
fn stats_json(files: SocketAddr) -> Value {
    let mut cmd = Command::new(util::bin());
    cmd.args(["stats", "--json", "--timeout", "5s", "--addr"])
        .arg(files.to_string())
        .env_remove("SOCKLAB_SECRET");
    let out = util::run_bounded(cmd, T);
    assert!(
        out.status.success(),
        "stats --json failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// The metrics body of one `GET /metrics`.
fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    let (_, body) = resp.split_once("\r\n\r\n").expect("head and body");
    body.to_owned()
}

/// `family{service="S",worker="W"} V` for every worker, by worker.
fn per_worker(body: &str, family: &str, service: &str) -> BTreeMap<u64, u64> {
    let prefix = format!("{family}{{service=\"{service}\",worker=\"");
    body.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (worker, value) = rest.split_once("\"} ")?;
            Some((worker.parse().ok()?, value.trim().parse().ok()?))
        })
        .collect()
}

/// One connection, one round trip, closed.
fn echo_once(addr: SocketAddr) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(PAYLOAD).unwrap();
    let mut back = vec![0u8; PAYLOAD.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, PAYLOAD);
}

/// The echo counter `name` of each worker in a `stats` body's `per_worker`.
fn stats_per_worker(stats: &Value, name: &str) -> BTreeMap<u64, u64> {
    let workers = stats["per_worker"]
        .as_array()
        .unwrap_or_else(|| panic!("no per_worker array: {stats}"));
    workers
        .iter()
        .map(|w| {
            let n = w["worker"].as_u64().expect("worker number");
            (n, w["services"]["echo"][name].as_u64().unwrap_or(0))
        })
        .collect()
}

#[test]
fn workers_is_n_right_after_the_listening_line() {
    let dir = TempDir::new("stats-exact-start");
    let server = server(&dir);
    let stats = stats_json(server.tcp("files"));
    assert_eq!(stats["workers"], 2, "{stats}");
    assert_eq!(stats["missing_workers"], serde_json::json!([]), "{stats}");
    let body = scrape(server.tcp("metrics"));
    let accepted = per_worker(&body, "socklab_connections_accepted_total", "echo");
    assert_eq!(
        accepted.keys().copied().collect::<Vec<_>>(),
        [0, 1],
        "both workers' series in the first scrape:\n{body}"
    );
    for w in 0..2 {
        let up = format!("socklab_worker_answered{{worker=\"{w}\"}} 1");
        assert!(body.lines().any(|l| l == up), "{up} in\n{body}");
    }
    util::promtool_check(&body);
}

#[test]
fn counts_are_exact_right_after_traffic() {
    let dir = TempDir::new("stats-exact");
    let server = server(&dir);
    let (echo, files, metrics) = (
        server.tcp("echo"),
        server.tcp("files"),
        server.tcp("metrics"),
    );
    let bytes = PAYLOAD.len() as u64;
    for round in 1..=3u64 {
        for _ in 0..CONNS {
            echo_once(echo);
        }
        let want = round * CONNS;
        // No wait: the scrape and the stats go out the moment the last echo came back.
        let body = scrape(metrics);
        let accepted = per_worker(&body, "socklab_connections_accepted_total", "echo");
        let received = per_worker(&body, "socklab_bytes_received_total", "echo");
        let sent = per_worker(&body, "socklab_bytes_sent_total", "echo");
        assert_eq!(
            accepted.values().sum::<u64>(),
            want,
            "round {round}: accepted by worker {accepted:?}"
        );
        assert_eq!(received.values().sum::<u64>(), want * bytes, "{received:?}");
        assert_eq!(sent.values().sum::<u64>(), want * bytes, "{sent:?}");
        assert!(
            accepted.len() == 2 && accepted.values().all(|n| *n > 0),
            "both workers took connections (2^-199 odds of a false failure): {accepted:?}"
        );

        let stats = stats_json(files);
        let echo_stats = &stats["services"]["echo"];
        assert_eq!(echo_stats["connections_accepted"], want, "{stats}");
        assert_eq!(echo_stats["bytes_received"], want * bytes, "{stats}");
        assert_eq!(echo_stats["bytes_sent"], want * bytes, "{stats}");
        assert_eq!(stats["workers"], 2, "{stats}");
        assert_eq!(stats["missing_workers"], serde_json::json!([]), "{stats}");
        // No echo traffic between the two: the split is the scrape's, and adds up.
        let split = stats_per_worker(&stats, "connections_accepted");
        assert_eq!(split, accepted, "per-worker split of stats vs metrics");
        assert_eq!(split.values().sum::<u64>(), want);
        let split = stats_per_worker(&stats, "bytes_received");
        assert_eq!(split, received);
    }
}

#[test]
fn pipelined_scrapes_on_one_connection_are_each_answered_in_order() {
    let dir = TempDir::new("stats-exact-pipe");
    let server = server(&dir);
    let mut s = TcpStream::connect(server.tcp("metrics")).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let get = "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n";
    let last = "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    s.write_all(format!("{get}{get}GET /nothing HTTP/1.1\r\nHost: t\r\n\r\n{last}").as_bytes())
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let statuses: Vec<&str> = resp
        .split("HTTP/1.1 ")
        .skip(1)
        .map(|r| r.split("\r\n").next().unwrap_or(""))
        .collect();
    assert_eq!(
        statuses,
        ["200 OK", "200 OK", "404 Not Found", "200 OK"],
        "{resp}"
    );
    assert_eq!(
        resp.matches("socklab_worker_answered{worker=\"1\"} 1")
            .count(),
        3
    );
}
