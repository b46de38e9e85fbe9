//! The status page on the metrics listener (issue 22, part 1): `GET /` rendered by the server
//! with every listener and service, `/stats.json` as `stats --json` prints it, `/events`
//! sending a snapshot a second that follows the traffic, a viewer that never reads disturbing
//! nobody, and (in headless Chromium, which CI installs) the page's script updating it live.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;
use util::Server;

fn server(extra: &[&str]) -> Server {
    let listeners = [("metrics", "127.0.0.1:0"), ("echo", "127.0.0.1:0")];
    Server::start(util::serve_args(&listeners, extra))
}

/// One request on a fresh connection (`Connection: close`): the head and the body.
fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("a head and a body");
    (head.to_owned(), body.to_owned())
}

/// Sends `n` bytes through echo and reads them back.
fn echo_traffic(addr: SocketAddr, n: usize) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&vec![b'x'; n]).unwrap();
    let mut got = vec![0u8; n];
    s.read_exact(&mut got).unwrap();
}

/// The next server-sent event's JSON, within `within`.
fn next_event(r: &mut BufReader<TcpStream>, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        assert!(Instant::now() < deadline, "no event within {within:?}");
        let mut line = String::new();
        let n = r.read_line(&mut line).expect("read an event line");
        assert!(n > 0, "the stream ended");
        if let Some(json) = line.strip_prefix("data: ") {
            return serde_json::from_str(json.trim()).expect("an event's JSON");
        }
    }
}

/// Opens `/events` and returns the stream past its head.
fn events(addr: SocketAddr) -> BufReader<TcpStream> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /events HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(s);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line);
    }
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("Content-Type: text/event-stream"), "{head}");
    r
}

#[test]
fn the_page_is_rendered_by_the_server_with_every_listener_and_service() {
    let server = server(&[]);
    let (metrics, echo) = (server.tcp("metrics"), server.tcp("echo"));
    echo_traffic(echo, 1234);
    let (head, body) = get(metrics, "/");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("Content-Type: text/html"), "{head}");
    assert!(
        body.contains(&echo.to_string()),
        "the echo listener is listed"
    );
    assert!(body.contains(&metrics.to_string()), "and the metrics one");
    assert!(body.contains("data-service=\"echo\""));
    assert!(
        body.contains("<td data-col=\"bytes in\">1234</td>"),
        "echo's bytes, without any script: {body}"
    );
    assert!(body.contains("resident memory <b id=\"rss\">") && !body.contains("id=\"rss\">0 B"));
    assert!(!body.contains("src=\"http"), "nothing from the network");
}

/// The server's samples embedded in the page (`id="history"`): `[unix_ms, requests,
/// connections, bytes in, bytes out]` each, oldest first.
fn page_history(body: &str) -> Vec<[u64; 5]> {
    let start = body
        .find("<script type=\"application/json\" id=\"history\">")
        .expect("the page embeds its history");
    let rest = &body[start..];
    let json = &rest[rest.find('>').unwrap() + 1..rest.find("</script>").unwrap()];
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"))
}

/// Polls the page (bounded) until its history holds `n` samples, the last with at least
/// `bytes_in`; returns that history.
fn history_with(metrics: SocketAddr, n: usize, bytes_in: u64) -> Vec<[u64; 5]> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let h = page_history(&get(metrics, "/").1);
        if h.len() >= n && h.last().is_some_and(|s| s[3] >= bytes_in) {
            return h;
        }
        assert!(Instant::now() < deadline, "history never grew: {h:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_page_opens_on_the_minutes_before_it_with_one_or_two_workers() {
    for workers in ["1", "2"] {
        let server = server(&["--workers", workers]);
        let (metrics, echo) = (server.tcp("metrics"), server.tcp("echo"));
        echo_traffic(echo, 5000);
        // Sampled once a second whether anyone watches or not.
        let h = history_with(metrics, 3, 5000);
        for pair in h.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            assert!(b[0] > a[0], "time runs forward: {h:?}");
            assert!(
                (500..=3000).contains(&(b[0] - a[0])),
                "about a second apart: {h:?}"
            );
            for k in 1..5 {
                assert!(b[k] >= a[k], "totals never fall: {h:?}");
            }
        }
        let last = h.last().unwrap();
        // The echo's 5000 bytes each way, from every worker's counters; at least the echo
        // connection and one page request.
        assert!(
            last[3] >= 5000 && last[4] >= 5000,
            "{workers} workers: {h:?}"
        );
        assert!(last[2] >= 2, "{workers} workers: {h:?}");
    }
}

#[test]
fn stats_json_is_what_stats_json_prints() {
    let server = server(&["--workers", "2"]);
    let (head, body) = get(server.tcp("metrics"), "/stats.json");
    assert!(head.contains("Content-Type: application/json"), "{head}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["workers"], 2, "{v}");
    assert!(
        v["services"]["echo"]["connections_accepted"].is_u64(),
        "{v}"
    );
    assert_eq!(v["per_worker"].as_array().map(Vec::len), Some(2), "{v}");
}

#[test]
fn events_follow_the_traffic_a_snapshot_a_second() {
    let server = server(&[]);
    let (metrics, echo) = (server.tcp("metrics"), server.tcp("echo"));
    let mut r = events(metrics);
    let first = next_event(&mut r, Duration::from_secs(5));
    let before = first["services"]["echo"]["bytes_received"]
        .as_u64()
        .unwrap();
    assert!(
        first["process"]["open_fds"].as_u64().unwrap() > 3,
        "{first}"
    );
    assert_eq!(
        first["listeners"].as_array().map(Vec::len),
        Some(2),
        "{first}"
    );
    echo_traffic(echo, 5000);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let e = next_event(&mut r, Duration::from_secs(5));
        if e["services"]["echo"]["bytes_received"].as_u64().unwrap() >= before + 5000 {
            break;
        }
        assert!(Instant::now() < deadline, "the traffic never showed: {e}");
    }
}

#[test]
fn a_viewer_that_never_reads_disturbs_nobody() {
    let server = server(&[]);
    let (metrics, echo) = (server.tcp("metrics"), server.tcp("echo"));
    // A small receive buffer that fills after a few events, never read.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&metrics.into()).unwrap();
    let mut stuck: TcpStream = sock.into();
    stuck
        .write_all(b"GET /events HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    // Others keep being served on time, events included.
    let mut r = events(metrics);
    for _ in 0..3 {
        echo_traffic(echo, 100);
        next_event(&mut r, Duration::from_secs(3));
    }
    let (head, _) = get(metrics, "/stats.json");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    drop(stuck);
}

/// Headless Chromium (driven by playwright-core) opens the page while traffic flows: the
/// script's update counter climbs with the events, the tables follow the traffic, the charts
/// are drawn; a screenshot is kept in the build directory.
#[test]
fn chromium_shows_the_page_updating_live() {
    let server = server(&[]);
    let (metrics, echo) = (server.tcp("metrics"), server.tcp("echo"));
    let load = std::thread::spawn(move || {
        for _ in 0..40 {
            echo_traffic(echo, 10_000);
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    // Open the page once the server holds a few seconds of samples: its charts start there.
    history_with(metrics, 3, 1);
    let shot = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let out = util::browser::node(
        BROWSE,
        &[&format!("http://{metrics}/"), &shot.display().to_string()],
        Duration::from_secs(90),
    );
    load.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(v["updates"].as_u64().unwrap() >= 3, "{v}");
    assert!(
        v["echo_bytes_in"].as_u64().unwrap() > 0,
        "the table followed the traffic: {v}"
    );
    assert!(
        v["polylines"].as_u64().unwrap() >= 4,
        "both charts drawn: {v}"
    );
    // Each live update adds at most one point: the rest came with the page.
    let (points, updates) = (
        v["points_at_load"].as_u64().unwrap(),
        v["updates_at_load"].as_u64().unwrap(),
    );
    assert!(
        points >= updates + 2,
        "the charts did not open on the server's samples: {v}"
    );
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
}

/// The browser's part: open the page, wait (bounded) for three events, read the DOM.
const BROWSE: &str = r#"
const { chromium } = require('playwright-core');
(async () => {
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM, args: ['--no-sandbox'] });
  const page = await browser.newPage({ viewport: { width: 1000, height: 900 } });
  const failed = [];
  page.on('requestfailed', r => { if (!r.url().endsWith('/events')) failed.push(r.url()); });
  await page.goto(process.argv[2]);
  const atLoad = await page.evaluate(() => ({
    points: Number(document.body.getAttribute('data-chart-points')),
    updates: Number(document.getElementById('updates').textContent),
  }));
  await page.waitForFunction(() => Number(document.getElementById('updates').textContent) >= 3,
                             null, { timeout: 20000 });
  await page.waitForFunction(() => Number(document.querySelector('tr[data-service="echo"] td[data-col="bytes in"]').textContent) > 0,
                             null, { timeout: 20000 });
  const result = await page.evaluate(() => ({
    updates: Number(document.getElementById('updates').textContent),
    echo_bytes_in: Number(document.querySelector('tr[data-service="echo"] td[data-col="bytes in"]').textContent),
    polylines: document.querySelectorAll('polyline').length,
  }));
  result.failed_requests = failed;
  result.points_at_load = atLoad.points;
  result.updates_at_load = atLoad.updates;
  await page.screenshot({ path: process.argv[3], fullPage: true });
  console.log(JSON.stringify(result));
  await browser.close();
})().catch(e => { console.error(String(e)); process.exit(1); });
"#;
