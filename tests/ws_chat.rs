//! The chat room over WebSocket (`/chat` on the metrics listener, issue 22 part 2), against a
//! real server: a browser-like client and a TCP member (`nc`-style) in the same room both ways,
//! and each bad input of the issue with the RFC's answer, none of which disturbs the others.
//! Then two headless Chromium pages (`/chat.html`) and a TCP member talk to each other.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use util::Server;

fn server(extra: &[&str]) -> Server {
    let listeners = [("metrics", "127.0.0.1:0"), ("chat", "127.0.0.1:0")];
    Server::start(util::serve_args(&listeners, extra))
}

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Sends a handshake with `headers` (each ending in CRLF) and returns the response head.
fn handshake(addr: SocketAddr, headers: &str) -> (TcpStream, String) {
    handshake_on(TcpStream::connect(addr).unwrap(), headers)
}

fn handshake_on(mut s: TcpStream, headers: &str) -> (TcpStream, String) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /chat HTTP/1.1\r\nHost: t\r\n{headers}\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    (s, String::from_utf8_lossy(&head).into_owned())
}

fn good_headers() -> String {
    format!(
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n"
    )
}

/// A WebSocket member: the handshake done.
fn member(addr: SocketAddr) -> TcpStream {
    member_on(TcpStream::connect(addr).unwrap())
}

/// A WebSocket member whose socket holds little: it fills as soon as it stops reading.
fn small_member(addr: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).unwrap();
    member_on(sock.into())
}

fn member_on(s: TcpStream) -> TcpStream {
    let (s, head) = handshake_on(s, &good_headers());
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{head}"
    );
    s
}

/// A masked client frame.
fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut f = vec![b0];
    match payload.len() {
        n @ 0..=125 => f.push(0x80 | n as u8),
        n @ 126..=0xFFFF => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    f
}

/// The next server frame: opcode and payload.
fn next_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).expect("a frame header");
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).unwrap();
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).unwrap();
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).unwrap();
    (h[0] & 0x0f, payload)
}

/// Reads text frames until one contains `needle` (bounded).
fn text_until(s: &mut TcpStream, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no text with {needle:?}");
        let (op, payload) = next_frame(s);
        let text = String::from_utf8_lossy(&payload).into_owned();
        if op == 1 && text.contains(needle) {
            return text;
        }
    }
}

/// The close code the server sends next, skipping text frames.
fn close_code(s: &mut TcpStream) -> u16 {
    loop {
        let (op, payload) = next_frame(s);
        if op == 8 {
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}

/// A TCP chat member, past its welcome.
fn tcp_member(addr: SocketAddr) -> BufReader<TcpStream> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s);
    tcp_until(&mut r, "* welcome");
    r
}

fn tcp_until(r: &mut BufReader<TcpStream>, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no line with {needle:?}");
        let mut line = String::new();
        assert!(
            r.read_line(&mut line).unwrap() > 0,
            "closed before {needle:?}"
        );
        if line.contains(needle) {
            return line;
        }
    }
}

fn say(r: &mut BufReader<TcpStream>, line: &str) {
    r.get_mut()
        .write_all(format!("{line}\n").as_bytes())
        .unwrap();
}

#[test]
fn a_websocket_member_and_a_tcp_member_share_the_room() {
    let server = server(&[]);
    let (metrics, chat) = (server.tcp("metrics"), server.tcp("chat"));
    let mut tcp = tcp_member(chat);
    say(&mut tcp, "/nick nc-user");
    tcp_until(&mut tcp, "nc-user");
    let mut ws = member(metrics);
    text_until(&mut ws, "* welcome");
    tcp_until(&mut tcp, "joined");
    ws.write_all(&frame(0x81, b"/nick browser")).unwrap();
    text_until(&mut ws, "browser");
    ws.write_all(&frame(0x81, b"hello from the browser"))
        .unwrap();
    assert!(tcp_until(&mut tcp, "hello from the browser").starts_with("browser "));
    say(&mut tcp, "hello from nc");
    assert_eq!(
        text_until(&mut ws, "hello from nc"),
        "nc-user hello from nc"
    );
    ws.write_all(&frame(0x81, b"/who")).unwrap();
    let who = text_until(&mut ws, "* members:");
    assert!(who.contains("browser") && who.contains("nc-user"), "{who}");
    // Pings are answered with their payload; /quit closes with 1000.
    ws.write_all(&frame(0x89, b"are you there")).unwrap();
    loop {
        let (op, payload) = next_frame(&mut ws);
        if op == 0xA {
            assert_eq!(payload, b"are you there");
            break;
        }
    }
    ws.write_all(&frame(0x81, b"/quit")).unwrap();
    assert_eq!(close_code(&mut ws), 1000);
    tcp_until(&mut tcp, "browser left");
}

#[test]
fn bad_handshakes_get_the_rfcs_status() {
    let server = server(&[]);
    let metrics = server.tcp("metrics");
    let cases = [
        (
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n",
            "400",
        ),
        (
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: c2hvcnQ=\r\n",
            "400",
        ),
        (
            &*format!(
                "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: {KEY}\r\n"
            ),
            "426",
        ),
        (
            &*format!("Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n"),
            "426",
        ),
    ];
    for (headers, status) in cases {
        let (_, head) = handshake(metrics, headers);
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status} ")),
            "{headers}: {head}"
        );
    }
    let (_, head) = handshake(
        metrics,
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 9\r\nSec-WebSocket-Key: x\r\n",
    );
    assert!(head.contains("Sec-WebSocket-Version: 13"), "{head}");
    // Still serving handshakes.
    member(metrics);
}

#[test]
fn each_bad_frame_gets_its_close_code_and_nobody_else_notices() {
    let server = server(&[]);
    let (metrics, chat) = (server.tcp("metrics"), server.tcp("chat"));
    let mut tcp = tcp_member(chat);
    let mut endless = frame(0x01, &[b'a'; 1000]);
    for _ in 0..10 {
        endless.extend(frame(0x00, &[b'a'; 1000]));
    }
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked", vec![0x81, 0x02, b'h', b'i'], 1002),
        ("oversized", frame(0x81, &[b'a'; 5000]), 1009),
        ("fragments without end", endless, 1009),
        ("reserved bits", frame(0xC1, b"x"), 1002),
        ("unknown opcode", frame(0x83, b"x"), 1002),
        ("invalid UTF-8", frame(0x81, &[0xc3, 0x28]), 1007),
        ("bad close code", frame(0x88, &1005u16.to_be_bytes()), 1002),
        ("binary", frame(0x82, b"\x00\x01"), 1003),
    ];
    for (what, bytes, code) in cases {
        let mut ws = member(metrics);
        text_until(&mut ws, "* welcome");
        ws.write_all(&bytes).unwrap();
        assert_eq!(close_code(&mut ws), code, "{what}");
        // The server closes its side after the close frame.
        let mut rest = Vec::new();
        let _ = ws.read_to_end(&mut rest);
        // The TCP member still talks.
        say(&mut tcp, &format!("after {what}"));
        say(&mut tcp, "/who");
        tcp_until(&mut tcp, "* members:");
    }
}

#[test]
fn a_ping_flood_and_a_browser_that_never_reads_are_cut_off_alone() {
    // Small kernel buffers, so what a member does not read waits in the server, where the
    // limits are.
    let server = server(&["--chat-max-pending", "64KiB", "--sndbuf", "16KiB"]);
    let (metrics, chat) = (server.tcp("metrics"), server.tcp("chat"));
    let mut tcp = tcp_member(chat);
    // A member that never reads while the room is busy.
    let mut stuck = small_member(metrics);
    // A ping flood, never reading its pongs.
    let mut flood = small_member(metrics);
    let pings: Vec<u8> = (0..20_000)
        .flat_map(|_| frame(0x89, &[b'p'; 100]))
        .collect();
    let flooder = std::thread::spawn(move || {
        let _ = flood.write_all(&pings);
        flood
    });
    let line = "x".repeat(1000);
    for _ in 0..2000 {
        say(&mut tcp, &line);
    }
    // The stuck member and the flooder are gone; the TCP member is served.
    let mut who = String::new();
    assert!(
        util::wait_until(Duration::from_secs(10), || {
            say(&mut tcp, "/who");
            who = tcp_until(&mut tcp, "* members:");
            who.matches("guest-").count() == 1
        }),
        "{who}"
    );
    let mut buf = [0u8; 65536];
    stuck
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut closed = false;
    for _ in 0..1000 {
        match stuck.read(&mut buf) {
            Ok(0) | Err(_) => {
                closed = true;
                break;
            }
            Ok(_) => {}
        }
    }
    assert!(closed, "the member that never read was cut off");
    let _ = flooder.join();
    // A new member still joins and is welcomed.
    let mut fresh = member(metrics);
    text_until(&mut fresh, "* welcome");
}

/// Two headless Chromium pages on `/chat.html` and a TCP member: each hears the others.
#[test]
fn two_browser_tabs_and_a_tcp_member_chat() {
    let server = server(&[]);
    let (metrics, chat) = (server.tcp("metrics"), server.tcp("chat"));
    let mut tcp = tcp_member(chat);
    say(&mut tcp, "/nick terminal");
    tcp_until(&mut tcp, "terminal");
    let addr = chat;
    let tcp_side = std::thread::spawn(move || {
        let a = tcp_until(&mut tcp, "hello from tab-a");
        let b = tcp_until(&mut tcp, "hello from tab-b");
        say(&mut tcp, "hello tabs, from the terminal");
        // Keep the member until the pages have read it.
        tcp_until(&mut tcp, "done-b");
        (a, b, addr)
    });
    let out = util::browser::node(
        TABS,
        &[&format!("http://{metrics}/chat.html")],
        Duration::from_secs(90),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (a, b, _) = tcp_side.join().unwrap();
    assert!(a.starts_with("tab-a ") && b.starts_with("tab-b "), "{a}{b}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    for tab in ["a", "b"] {
        let log = v[tab].as_str().unwrap();
        assert!(
            log.contains("terminal hello tabs, from the terminal"),
            "{tab}: {log}"
        );
    }
    assert!(
        v["a"].as_str().unwrap().contains("tab-b hello from tab-b"),
        "{v}"
    );
}

/// The browser's part: two pages, each names itself and speaks, then waits (bounded) for
/// the terminal's line; prints both logs.
const TABS: &str = r#"
const { chromium } = require('playwright-core');
(async () => {
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM, args: ['--no-sandbox'] });
  const open = async (name) => {
    const page = await browser.newPage();
    await page.goto(process.argv[2]);
    await page.waitForFunction(() => document.getElementById('log').textContent.includes('* welcome'), null, { timeout: 15000 });
    await page.fill('#line', '/nick ' + name);
    await page.press('#line', 'Enter');
    await page.waitForFunction((n) => document.getElementById('log').textContent.includes('is now ' + n) || document.getElementById('log').textContent.includes(n), name, { timeout: 15000 });
    return page;
  };
  const a = await open('tab-a');
  const b = await open('tab-b');
  await a.fill('#line', 'hello from tab-a'); await a.press('#line', 'Enter');
  await b.waitForFunction(() => document.getElementById('log').textContent.includes('hello from tab-a'), null, { timeout: 15000 });
  await b.fill('#line', 'hello from tab-b'); await b.press('#line', 'Enter');
  await a.waitForFunction(() => document.getElementById('log').textContent.includes('hello from tab-b'), null, { timeout: 15000 });
  for (const p of [a, b]) {
    await p.waitForFunction(() => document.getElementById('log').textContent.includes('from the terminal'), null, { timeout: 15000 });
  }
  await b.fill('#line', 'done-b'); await b.press('#line', 'Enter');
  const log = (p) => p.evaluate(() => Array.from(document.querySelectorAll('#log div')).map(d => d.textContent).join('\n'));
  console.log(JSON.stringify({ a: await log(a), b: await log(b) }));
  await browser.close();
})().catch(e => { console.error(String(e)); process.exit(1); });
"#;

/// A chat that asks for authentication: a browser's way in is a TLS client certificate on the
/// metrics listener; without one (a plain metrics listener) the handshake is refused with 403.
#[test]
fn an_authenticating_chat_takes_websocket_members_with_client_certificates_only() {
    use util::tls::{Certs, PY_PRELUDE, python_ok};
    let certs = Certs::new("ws-auth");
    let secret = certs.path("secret");
    std::fs::write(&secret, "s3cret").unwrap();
    let secret = secret.display().to_string();
    // Plain metrics: 403.
    let plain = server(&["--auth", "chat", "--auth-secret-file", &secret]);
    let (_, head) = handshake(plain.tcp("metrics"), &good_headers());
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    // Metrics with TLS client certificates: 101, and the member is welcomed.
    let tls = server(&[
        "--auth",
        "chat",
        "--auth-secret-file",
        &secret,
        "--tls",
        "metrics",
        "--tls-cert",
        &certs.s("server.pem"),
        "--tls-key",
        &certs.s("server.key"),
        "--tls-client-ca",
        &certs.s("ca.pem"),
    ]);
    let script = format!(
        "{PY_PRELUDE}{}",
        r#"
s = connect(context(sys.argv[1], sys.argv[3], sys.argv[4]), int(sys.argv[2]))
s.sendall(('GET /chat HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n'
           'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n').encode())
got = recv_until(s, b'welcome')
print(got.split(b'\r\n')[0].decode(), 'welcome' if b'* welcome' in got else 'no welcome')
"#
    );
    let port = tls.tcp("metrics").port().to_string();
    let out = python_ok(
        &script,
        &[
            &certs.s("ca.pem"),
            &port,
            &certs.s("client.pem"),
            &certs.s("client.key"),
        ],
        Duration::from_secs(30),
    );
    assert_eq!(out.trim(), "HTTP/1.1 101 Switching Protocols welcome");
}
