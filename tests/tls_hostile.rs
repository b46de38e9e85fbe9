//! Bad input at a TLS listener, each its own test; after each, a well-behaved TLS client is
//! still served and the failed connections are counted (`rejected_tls` in the metrics):
//! plaintext and an HTTP request; a truncated and a garbage ClientHello; a handshake that
//! stalls after its first byte (closed at `--tls-handshake-timeout`); 1,000 handshakes
//! abandoned half-way; an upload whose client vanishes without close_notify (nothing is
//! stored); renegotiation and key-update requests.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use util::tls::*;
use util::{Server, wait_until};

const BOUND: Duration = Duration::from_secs(60);

/// A TLS echo server with a plain metrics listener beside it, and a short handshake deadline.
fn echo_server(certs: &Certs, extra: &[&str]) -> Server {
    let mut args = tls_serve_args(certs, &["echo"], &["--metrics", "127.0.0.1:0"]);
    // tls_serve_args turned metrics off; the later flag wins.
    args.retain(|a| a != "--no-metrics");
    args.extend(["--tls-handshake-timeout", "700ms"].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    Server::start(args)
}

/// The echo listener's `rejected_tls` count, read from the metrics.
fn rejected_tls(server: &Server) -> u64 {
    let mut s = TcpStream::connect(server.tcp("metrics")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.lines()
        .filter(|l| {
            l.starts_with("socklab_connections_rejected_total{service=\"echo\"")
                && l.contains("reason=\"tls\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A well-behaved client: connects, verifies, gets a line echoed.
fn good_client_is_served(certs: &Certs, server: &Server) {
    let script = format!(
        "{PY_PRELUDE}{}",
        r#"
s = connect(context(sys.argv[1]), int(sys.argv[2]))
s.sendall(b'still served\n')
recv_until(s, b'still served')
print('ok')
"#
    );
    let port = server.tcp("echo").port().to_string();
    assert_eq!(
        python_ok(&script, &[&certs.s("ca.pem"), &port], BOUND).trim(),
        "ok"
    );
}

/// Reads until the server closes (true) or `within` passes (false).
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

/// A real ClientHello for localhost, from Python's ssl module (memory BIOs, no socket).
fn client_hello() -> Vec<u8> {
    let script = r#"
import ssl, sys
ctx = ssl.create_default_context()
inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
obj = ctx.wrap_bio(inc, out, server_hostname='localhost')
try:
    obj.do_handshake()
except ssl.SSLWantReadError:
    pass
sys.stdout.buffer.write(out.read())
"#;
    let out = python(script, &[], BOUND);
    assert!(out.status.success() && out.stdout.len() > 100, "{out:?}");
    out.stdout
}

#[test]
fn plaintext_and_an_http_request_are_refused_and_others_served() {
    let certs = Certs::new("plaintext");
    let server = echo_server(&certs, &[]);
    for bytes in [
        &b"hello, is this echo?\n"[..],
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(server.tcp("echo")).unwrap();
        s.write_all(bytes).unwrap();
        assert!(closed_within(&mut s, Duration::from_secs(5)), "{bytes:?}");
    }
    assert!(wait_until(Duration::from_secs(5), || rejected_tls(&server) >= 2));
    good_client_is_served(&certs, &server);
}

#[test]
fn a_truncated_and_a_garbage_client_hello_are_closed() {
    let certs = Certs::new("hello");
    let server = echo_server(&certs, &[]);
    let hello = client_hello();
    // Half a ClientHello, then the client's end.
    let mut s = TcpStream::connect(server.tcp("echo")).unwrap();
    s.write_all(&hello[..hello.len() / 2]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(5)));
    // A handshake record header around garbage.
    let mut garbage = vec![0x16, 0x03, 0x01, 0x01, 0x00];
    garbage.extend((0..256u32).map(|i| (i.wrapping_mul(197) ^ 0x5a) as u8));
    let mut s = TcpStream::connect(server.tcp("echo")).unwrap();
    s.write_all(&garbage).unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(5)));
    // A record claiming more than TLS allows.
    let mut s = TcpStream::connect(server.tcp("echo")).unwrap();
    s.write_all(&[0x16, 0x03, 0x03, 0xff, 0xff, 0x01]).unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(5)));
    assert!(wait_until(Duration::from_secs(5), || rejected_tls(&server) >= 3));
    good_client_is_served(&certs, &server);
}

#[test]
fn a_handshake_that_stalls_after_its_first_byte_is_closed_at_the_deadline() {
    let certs = Certs::new("stall");
    let server = echo_server(&certs, &[]);
    let hello = client_hello();
    let mut s = TcpStream::connect(server.tcp("echo")).unwrap();
    let started = Instant::now();
    s.write_all(&hello[..1]).unwrap();
    // Others are served while it stalls.
    good_client_is_served(&certs, &server);
    assert!(closed_within(&mut s, Duration::from_secs(10)));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(600),
        "closed after {took:?}, before the 700ms deadline"
    );
    assert!(wait_until(Duration::from_secs(5), || rejected_tls(&server) >= 1));
}

#[test]
fn a_thousand_handshakes_abandoned_half_way_lock_nobody_out() {
    let certs = Certs::new("abandon");
    let server = echo_server(&certs, &["--max-conns-per-ip", "0"]);
    let hello = client_hello();
    let half = &hello[..hello.len() / 2];
    let mut held = Vec::new();
    util::raise_nofile_limit();
    for _ in 0..1000 {
        let mut s = TcpStream::connect(server.tcp("echo")).unwrap();
        s.write_all(half).unwrap();
        held.push(s);
    }
    // While they hang, and after the deadline has closed them all.
    good_client_is_served(&certs, &server);
    assert!(
        wait_until(Duration::from_secs(20), || rejected_tls(&server) >= 1000),
        "rejected_tls = {}",
        rejected_tls(&server)
    );
    drop(held);
    good_client_is_served(&certs, &server);
}

#[test]
fn an_upload_cut_without_close_notify_stores_nothing() {
    let certs = Certs::new("truncate");
    let data = certs.path("data");
    let mut server = tls_server(
        &certs,
        &["files"],
        &["--data-dir", &data.display().to_string()],
    );
    let script = format!(
        "{PY_PRELUDE}{}",
        r#"
s = connect(context(sys.argv[1]), int(sys.argv[2]))
header = json.dumps({'cmd': 'put', 'filename': 'half.bin', 'filesize': 1000000}).encode()
s.sendall(struct.pack('i', len(header)) + header)
s.sendall(b'x' * 500000)
# Close the socket under the TLS layer: no close_notify, a truncation.
raw = socket.socket(fileno=os.dup(s.fileno()))
s.close(); raw.shutdown(socket.SHUT_RDWR); raw.close()
print('cut')
"#
    );
    let port = server.tcp("files").port().to_string();
    assert_eq!(
        python_ok(&script, &[&certs.s("ca.pem"), &port], BOUND).trim(),
        "cut"
    );
    // The temporary goes; nothing named half.bin ever appears.
    let stored = || -> Vec<String> {
        std::fs::read_dir(&data)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with(".socklab-control"))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(
        wait_until(Duration::from_secs(10), || stored().is_empty()),
        "left in the data directory: {:?}",
        stored()
    );
    server.assert_alive("after a truncated upload");
}

/// `openssl s_client` in its interactive mode, driven by Python: sends each line, waiting
/// after each for its needle (or the connection's end) in the client's output.
const DRIVE_INTERACTIVE: &str = r#"
import subprocess, select
ca, port, version = sys.argv[1], sys.argv[2], sys.argv[3]
steps = json.loads(sys.argv[4])
p = subprocess.Popen(['openssl', 's_client', '-connect', '127.0.0.1:' + port, '-CAfile', ca,
                      '-servername', 'localhost', version],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
got = b''
def wait_for(needle, secs=10):
    global got
    deadline = time.time() + secs
    while needle.encode() not in got and time.time() < deadline:
        r, _, _ = select.select([p.stdout], [], [], 0.2)
        if r:
            chunk = os.read(p.stdout.fileno(), 4096)
            if not chunk:
                return False
            got += chunk
    return needle.encode() in got
results = [wait_for('---\n')]
for line, needle in steps:
    p.stdin.write((line + '\n').encode()); p.stdin.flush()
    results.append(wait_for(needle))
p.kill(); p.wait()
print(json.dumps({'results': results, 'out': got.decode(errors='replace')[-3000:]}))
"#;

#[test]
fn key_updates_are_answered_and_renegotiation_is_refused_without_harm() {
    assert!(have("openssl"), "openssl is needed (.ci/run installs it)");
    let certs = Certs::new("keyupdate");
    let server = echo_server(&certs, &[]);
    let port = server.tcp("echo").port().to_string();
    let script = format!("{PY_PRELUDE}{DRIVE_INTERACTIVE}");
    // TLS 1.3: a key update that asks for ours too, then the echo goes on.
    let steps = r#"[["before update", "before update\n"], ["K", "KEYUPDATE"], ["after update", "after update\n"]]"#;
    let out = python_ok(
        &script,
        &[&certs.s("ca.pem"), &port, "-tls1_3", steps],
        BOUND,
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        v["results"],
        serde_json::json!([true, true, true, true]),
        "{}",
        v["out"]
    );
    // TLS 1.2: renegotiation is refused (rustls never renegotiates); whatever the client
    // makes of that, the server goes on serving.
    let steps = r#"[["R", "RENEGOTIATING"]]"#;
    let out = python_ok(
        &script,
        &[&certs.s("ca.pem"), &port, "-tls1_2", steps],
        BOUND,
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["results"][0], true, "{}", v["out"]);
    good_client_is_served(&certs, &server);
}
