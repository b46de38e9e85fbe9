//! TLS on the stream listeners, with real peers: `openssl s_client` and Python's `ssl` module
//! talk to TLS echo, chat and files (the lessons' upload client, wrapped in an SSL context and
//! otherwise unchanged); client certificates from the listener's CA are required when it names
//! one and a certificate from another CA is refused; SIGHUP swaps the served certificate for new
//! connections and a failed reload keeps the old one; a certificate outside its dates stops the
//! start with exit 2.

mod util;

use std::time::Duration;

use util::tls::*;
use util::{Server, expect_start_failure, serve_cmd};

const BOUND: Duration = Duration::from_secs(30);

fn port(server: &Server, service: &str) -> u16 {
    server.tcp(service).port()
}

#[test]
fn the_listing_says_tls_on_with_the_certificates_subject_and_expiry() {
    let certs = Certs::new("listing");
    let server = tls_server(&certs, &["echo"], &[]);
    let l = server.listener("echo", "tcp");
    assert_eq!(l.opt("tls"), "on");
    assert_eq!(l.opt("cert_subject"), "CN=localhost");
    assert!(l.opt("cert_expires").ends_with('Z'), "{l:?}");
}

/// Runs `openssl s_client` as a child of Python, which writes a line, waits for it to come
/// back, and then ends the client; prints what the client said.
const DRIVE_S_CLIENT: &str = r#"
import subprocess, select
ca, port, version = sys.argv[1], sys.argv[2], sys.argv[3]
p = subprocess.Popen(['openssl', 's_client', '-connect', '127.0.0.1:' + port, '-CAfile', ca,
                      '-servername', 'localhost', '-verify_return_error', version, '-quiet'],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
p.stdin.write(b'hello over tls\n'); p.stdin.flush()
got, deadline = b'', time.time() + 10
while b'hello over tls' not in got and time.time() < deadline:
    r, _, _ = select.select([p.stdout], [], [], 0.5)
    if r:
        chunk = os.read(p.stdout.fileno(), 4096)
        if not chunk:
            break
        got += chunk
p.kill(); err = p.communicate()[1]
print(json.dumps({'out': got.decode(errors='replace'), 'err': err.decode(errors='replace')}))
"#;

#[test]
fn openssl_s_client_gets_its_line_echoed_over_tls_13_and_12() {
    assert!(have("openssl"), "openssl is needed (.ci/run installs it)");
    let certs = Certs::new("s_client");
    let server = tls_server(&certs, &["echo"], &[]);
    let p = port(&server, "echo").to_string();
    let script = format!("{PY_PRELUDE}{DRIVE_S_CLIENT}");
    for version in ["-tls1_3", "-tls1_2"] {
        let out = python_ok(&script, &[&certs.s("ca.pem"), &p, version], BOUND);
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        let (stdout, stderr) = (v["out"].as_str().unwrap(), v["err"].as_str().unwrap());
        assert!(
            stdout.contains("hello over tls"),
            "{version}: stdout {stdout:?} stderr {stderr}"
        );
        assert!(stderr.contains("verify return:1"), "{stderr}");
    }
}

#[test]
fn python_ssl_chat_members_hear_each_other() {
    let certs = Certs::new("chat");
    let server = tls_server(&certs, &["chat"], &[]);
    let script = format!(
        "{PY_PRELUDE}{}",
        r#"
ctx = context(sys.argv[1])
a = connect(ctx, int(sys.argv[2])); recv_until(a, b'\n')
b = connect(ctx, int(sys.argv[2])); recv_until(b, b'\n')
a.sendall(b'/nick alice\n'); recv_until(a, b'alice')
b.sendall(b'/nick bob\n'); recv_until(b, b'bob')
a.sendall(b'hi bob, this is encrypted\n')
print(recv_until(b, b'this is encrypted').decode())
a.close(); b.close()
"#
    );
    let p = port(&server, "chat").to_string();
    let out = python_ok(&script, &[&certs.s("ca.pem"), &p], BOUND);
    assert!(out.contains("alice") && out.contains("hi bob"), "{out}");
}

/// The lessons' upload client, its socket wrapped in an SSL context: nothing else changes.
const LESSON_UPLOAD: &str = r#"
ctx = context(sys.argv[1])
port, path = int(sys.argv[2]), sys.argv[3]
name = os.path.basename(path)
size = os.path.getsize(path)
sock = connect(ctx, port, timeout=20)
header = json.dumps({'cmd': 'put', 'filename': name, 'filesize': size}).encode('utf-8')
sock.send(struct.pack('i', len(header)))
sock.send(header)
with open(path, 'rb') as f:
    while True:
        data = f.read(1024)
        if not data:
            break
        sock.sendall(data)
def recv_exact(n):
    buf = b''
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise SystemExit('connection closed after %d of %d bytes' % (len(buf), n))
        buf += chunk
    return buf
h = struct.unpack('i', recv_exact(4))[0]
response = json.loads(recv_exact(h).decode('utf-8'))
recv_exact(response.get('size', 0))
# The same connection fetches it back: a body that cannot go by sendfile.
req = json.dumps({'cmd': 'get', 'filename': name}).encode()
sock.sendall(struct.pack('i', len(req)) + req)
h = struct.unpack('i', recv_exact(4))[0]
got = json.loads(recv_exact(h).decode('utf-8'))
body = recv_exact(got['size'])
sock.close()
file_md5 = hashlib.md5(open(path, 'rb').read()).hexdigest()
print(json.dumps({'put': response, 'get': got, 'md5': hashlib.md5(body).hexdigest(), 'file_md5': file_md5}))
"#;

#[test]
fn the_lessons_upload_client_in_an_ssl_context_stores_a_file_and_gets_it_back() {
    let certs = Certs::new("files");
    let data = certs.path("data");
    let server = tls_server(
        &certs,
        &["files"],
        &["--data-dir", &data.display().to_string()],
    );
    let file = certs.path("upload.bin");
    let bytes: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(&file, &bytes).unwrap();
    let script = format!("{PY_PRELUDE}{LESSON_UPLOAD}");
    let p = port(&server, "files").to_string();
    let out = python_ok(
        &script,
        &[&certs.s("ca.pem"), &p, &file.display().to_string()],
        BOUND,
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let md5 = v["file_md5"].as_str().unwrap();
    assert_eq!(v["put"]["ok"], true, "{v}");
    assert_eq!(v["put"]["md5"], md5, "{v}");
    assert_eq!(v["get"]["size"], bytes.len() as u64, "{v}");
    assert_eq!(v["md5"], md5, "the body fetched over TLS: {v}");
    assert_eq!(std::fs::read(data.join("upload.bin")).unwrap(), bytes);
}

const CERT_CLIENT: &str = r#"
cert = sys.argv[3] if len(sys.argv) > 3 and sys.argv[3] else None
key = sys.argv[4] if len(sys.argv) > 4 and sys.argv[4] else None
ctx = context(sys.argv[1], cert, key)
try:
    s = connect(ctx, int(sys.argv[2]))
    s.sendall(b'ping\n')
    print('echoed' if b'ping' in recv_until(s, b'\n') else 'wrong')
except (ssl.SSLError, ConnectionError, SystemExit, OSError) as e:
    print('refused: %s' % e)
"#;

#[test]
fn a_listener_with_a_client_ca_serves_only_clients_with_its_certificates() {
    let certs = Certs::new("client-ca");
    let (other, other_key) = certs.self_signed("other", 2020, 2090, "not the socklab CA");
    let server = tls_server(&certs, &["echo"], &["--tls-client-ca", &certs.s("ca.pem")]);
    let p = port(&server, "echo").to_string();
    let script = format!("{PY_PRELUDE}{CERT_CLIENT}");
    let ca = certs.s("ca.pem");
    let good = python_ok(
        &script,
        &[&ca, &p, &certs.s("client.pem"), &certs.s("client.key")],
        BOUND,
    );
    assert_eq!(good.trim(), "echoed");
    let none = python_ok(&script, &[&ca, &p], BOUND);
    assert!(none.starts_with("refused"), "no certificate: {none}");
    let wrong = python_ok(&script, &[&ca, &p, &other, &other_key], BOUND);
    assert!(wrong.starts_with("refused"), "another CA's: {wrong}");
    // Still serving the right ones.
    let again = python_ok(
        &script,
        &[&ca, &p, &certs.s("client.pem"), &certs.s("client.key")],
        BOUND,
    );
    assert_eq!(again.trim(), "echoed");
}

/// Prints the SHA-256 of the certificate the server presents (not verified: the test swaps
/// it for one signed by nobody).
const PEER_CERT: &str = r#"
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=10))
print(hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest())
s.sendall(b'still\n'); recv_until(s, b'still')
s.close()
"#;

#[test]
fn sighup_reloads_the_certificate_for_new_connections_and_a_bad_reload_keeps_the_old() {
    let certs = Certs::new("reload");
    let (cert, key) = (certs.path("live.pem"), certs.path("live.key"));
    std::fs::copy(certs.path("server.pem"), &cert).unwrap();
    std::fs::copy(certs.path("server.key"), &key).unwrap();
    let mut args = tls_serve_args(&certs, &["echo"], &[]);
    let n = args.len();
    args[n - 3] = cert.display().to_string();
    args[n - 1] = key.display().to_string();
    let server = Server::start(args);
    let p = port(&server, "echo").to_string();
    let script = format!("{PY_PRELUDE}{PEER_CERT}");
    let before = python_ok(&script, &[&p], BOUND);

    // A connection open across the reload keeps working.
    let (new_cert, new_key) = certs.self_signed("next", 2020, 2090, "the next one");
    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    server.signal(libc::SIGHUP);
    assert!(
        server.wait_stderr_contains("TLS certificate reloaded", Duration::from_secs(10)),
        "{}",
        server.stderr()
    );
    let after = python_ok(&script, &[&p], BOUND);
    assert_ne!(before, after, "the new certificate is served after SIGHUP");

    // A key that does not match: the reload fails, the last good pair stays.
    std::fs::copy(certs.path("server.key"), &key).unwrap();
    server.signal(libc::SIGHUP);
    assert!(
        server.wait_stderr_contains("not reloaded", Duration::from_secs(10)),
        "{}",
        server.stderr()
    );
    assert!(
        server.stderr().contains("does not belong"),
        "{}",
        server.stderr()
    );
    let kept = python_ok(&script, &[&p], BOUND);
    assert_eq!(after, kept, "a failed reload keeps the certificate served");
}

#[test]
fn a_certificate_outside_its_dates_stops_the_start_with_exit_2() {
    let certs = Certs::new("dates");
    for (name, from, until, why) in [
        ("expired", 2001, 2002, "expired at 2002-01-01"),
        ("future", 2090, 2091, "not valid before 2090-01-01"),
    ] {
        let (c, k) = certs.self_signed(name, from, until, name);
        let mut args = tls_serve_args(&certs, &["echo"], &[]);
        let n = args.len();
        args[n - 3] = c;
        args[n - 1] = k;
        let (status, stderr) = expect_start_failure(serve_cmd(args), why);
        assert_eq!(status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains(why), "{name}: {stderr}");
    }
    // A missing key file is named.
    let mut args = tls_serve_args(&certs, &["echo"], &[]);
    let n = args.len();
    args[n - 1] = certs.s("absent.key");
    let (status, stderr) = expect_start_failure(serve_cmd(args), "absent.key");
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("absent.key"), "{stderr}");
}

#[test]
fn tls_flags_need_a_certificate_and_datagram_services_refuse_tls() {
    let (status, stderr) = expect_start_failure(serve_cmd(["--tls", "echo"]), "--tls-cert");
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("--tls-cert"), "{stderr}");
    let certs = Certs::new("flags");
    let args = [
        "--tls",
        "udp-echo",
        "--tls-cert",
        &certs.s("server.pem"),
        "--tls-key",
        &certs.s("server.key"),
    ];
    let (status, stderr) = expect_start_failure(serve_cmd(args), "udp-echo");
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("udp-echo"), "{stderr}");
}
