//! The client commands over TLS, against a real TLS server: `put`, `get`, `ls`, `stat`,
//! `ping` and `stats` (files), `echo`, `upper` and `chat`, with `--tls --ca`; `exec` with a
//! client certificate as its only authentication; and the errors a user meets first: a plain
//! client at a TLS port, a certificate nobody told the client to trust, a wrong server name.

mod util;

use std::process::{Command, Output};
use std::time::Duration;

use util::tls::*;
use util::{bin, run_with_input};

const BOUND: Duration = Duration::from_secs(30);

fn socklab(args: &[&str], input: &[u8]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args);
    run_with_input(cmd, input, BOUND)
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failed(out: &Output, what: &str) -> String {
    assert_eq!(out.status.code(), Some(1), "{what}: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_files_commands_work_over_tls() {
    let certs = Certs::new("files-clients");
    let data = certs.path("data");
    let server = tls_server(
        &certs,
        &["files"],
        &["--data-dir", &data.display().to_string()],
    );
    let addr = server.tcp("files").to_string();
    let ca = certs.s("ca.pem");
    let tls = ["--addr", &addr, "--tls", "--ca", &ca];
    let src = certs.path("payload.bin");
    let bytes: Vec<u8> = (0..2_500_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&src, &bytes).unwrap();
    let src_s = src.display().to_string();
    let stored = ok(
        &socklab(&[&["put"], &tls[..], &[&src_s]].concat(), b""),
        "put",
    );
    assert!(stored.contains("2500000 bytes"), "{stored}");
    let out_dir = certs.path("got");
    std::fs::create_dir_all(&out_dir).unwrap();
    let dest = format!("{}/", out_dir.display());
    ok(
        &socklab(
            &[&["get"], &tls[..], &["payload.bin", "-o", &dest]].concat(),
            b"",
        ),
        "get",
    );
    assert_eq!(std::fs::read(out_dir.join("payload.bin")).unwrap(), bytes);
    let ls = ok(&socklab(&[&["ls"], &tls[..]].concat(), b""), "ls");
    assert!(ls.contains("payload.bin"), "{ls}");
    let stat = ok(
        &socklab(&[&["stat"], &tls[..], &["payload.bin"]].concat(), b""),
        "stat",
    );
    assert!(stat.contains("2500000"), "{stat}");
    let pong = ok(&socklab(&[&["ping"], &tls[..]].concat(), b""), "ping");
    assert!(pong.starts_with("pong"), "{pong}");
    let stats = ok(
        &socklab(&[&["stats", "--json"], &tls[..]].concat(), b""),
        "stats",
    );
    assert!(stats.contains("\"files\""), "{stats}");
}

#[test]
fn echo_upper_and_chat_work_over_tls() {
    let certs = Certs::new("stream-clients");
    let server = tls_server(&certs, &["echo", "upper", "chat"], &[]);
    let ca = certs.s("ca.pem");
    // More than any socket buffer holds: both threads share the session all the way.
    let input: Vec<u8> = (0..400_000u32)
        .flat_map(|i| format!("line {i}\n").into_bytes())
        .collect();
    let echo = server.tcp("echo").to_string();
    let out = socklab(&["echo", "--addr", &echo, "--tls", "--ca", &ca], &input);
    ok(&out, "echo");
    assert!(
        out.stdout == input,
        "echo over TLS returned {} of {} bytes",
        out.stdout.len(),
        input.len()
    );
    let upper = server.tcp("upper").to_string();
    let out = socklab(
        &["upper", "--addr", &upper, "--tls", "--ca", &ca],
        b"quiet, please\n",
    );
    assert_eq!(ok(&out, "upper"), "QUIET, PLEASE\n");
    let chat = server.tcp("chat").to_string();
    let out = socklab(
        &["chat", "--addr", &chat, "--tls", "--ca", &ca],
        b"/nick tlsuser\n/who\n",
    );
    let said = ok(&out, "chat");
    assert!(said.contains("tlsuser"), "{said}");
}

#[test]
fn a_client_certificate_is_the_authentication_exec_asks_for() {
    let certs = Certs::new("exec-cert");
    let data = certs.path("data");
    let server = tls_server(
        &certs,
        &["files"],
        &[
            "--data-dir",
            &data.display().to_string(),
            "--tls-client-ca",
            &certs.s("ca.pem"),
            "--exec-allow",
            "echo",
        ],
    );
    let addr = server.tcp("files").to_string();
    let ca = certs.s("ca.pem");
    let (cert, key) = (certs.s("client.pem"), certs.s("client.key"));
    let out = socklab(
        &[
            "exec",
            "--addr",
            &addr,
            "--tls",
            "--ca",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
            "echo",
            "by",
            "certificate",
        ],
        b"",
    );
    assert_eq!(
        ok(&out, "exec with a client certificate"),
        "by certificate\n"
    );
    // Without one the handshake itself fails.
    let out = socklab(
        &["exec", "--addr", &addr, "--tls", "--ca", &ca, "echo", "x"],
        b"",
    );
    assert!(!out.status.success() && out.stdout.is_empty(), "{out:?}");
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(why.contains("requires a client certificate"), "{why}");
}

#[test]
fn the_first_errors_a_user_meets_say_what_to_do() {
    let certs = Certs::new("client-errors");
    let data = certs.path("data");
    let server = tls_server(
        &certs,
        &["files", "echo"],
        &["--data-dir", &data.display().to_string()],
    );
    let addr = server.tcp("files").to_string();
    let why = failed(
        &socklab(&["ping", "--addr", &addr], b""),
        "plain ping at TLS",
    );
    assert!(why.contains("speaks TLS: add --tls"), "{why}");
    let why = failed(
        &socklab(&["ping", "--addr", &addr, "--tls"], b""),
        "untrusted",
    );
    assert!(why.contains("not trusted") && why.contains("--ca"), "{why}");
    let ca = certs.s("ca.pem");
    let why = failed(
        &socklab(
            &[
                "ping",
                "--addr",
                &addr,
                "--tls",
                "--ca",
                &ca,
                "--server-name",
                "example.org",
            ],
            b"",
        ),
        "wrong name",
    );
    assert!(
        why.contains("not trusted") && why.contains("--server-name"),
        "{why}"
    );
    let echo = server.tcp("echo").to_string();
    let why = failed(
        &socklab(
            &[
                "echo",
                "--addr",
                &echo,
                "--tls",
                "--ca",
                &certs.s("absent.pem"),
            ],
            b"x\n",
        ),
        "missing CA file",
    );
    assert!(why.contains("absent.pem"), "{why}");
}

fn bench_json(args: &[&str]) -> serde_json::Value {
    let out = socklab(
        &[&["bench", "--json", "--warmup", "0s"], args].concat(),
        b"",
    );
    let stdout = ok(&out, "bench");
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// `bench`'s arguments for 300 ms of framed requests to `files` over TLS.
fn frames_over_tls<'a>(files: &'a str, ca: &'a str) -> Vec<&'a str> {
    vec![
        "--addr",
        files,
        "--mode",
        "frame",
        "--tls",
        "--ca",
        ca,
        "--duration",
        "300ms",
    ]
}

#[test]
fn bench_measures_tls_on_kept_connections_and_with_a_handshake_per_request() {
    let certs = Certs::new("bench");
    let data = certs.path("data");
    let server = tls_server(
        &certs,
        &["echo", "files"],
        &["--data-dir", &data.display().to_string()],
    );
    let ca = certs.s("ca.pem");
    let echo = server.tcp("echo").to_string();
    let kept = bench_json(&[
        "--addr",
        &echo,
        "--tls",
        "--ca",
        &ca,
        "--conns",
        "4",
        "--depth",
        "8",
        "--size",
        "20000",
        "--duration",
        "500ms",
    ]);
    assert!(kept["requests"].as_u64().unwrap() > 0, "{kept}");
    assert_eq!(kept["errors"].as_u64(), Some(0), "{kept}");
    let crr = bench_json(&[
        "--addr",
        &echo,
        "--tls",
        "--ca",
        &ca,
        "--conns",
        "2",
        "--new-conn-per-request",
        "--duration",
        "500ms",
    ]);
    // Each request on its own connection: every reply counted in the window is followed by
    // the connect that carries the next request, counted with it.
    let connects = crr["connects"].as_u64().unwrap();
    assert!(
        connects > 0 && connects == crr["requests"].as_u64().unwrap(),
        "{crr}"
    );
    let files = server.tcp("files").to_string();
    let frames = bench_json(&frames_over_tls(&files, &ca));
    assert!(frames["requests"].as_u64().unwrap() > 0, "{frames}");
    // Over UDP there is no TLS: a usage error before anything is sent.
    let out = socklab(&["bench", "--mode", "udp", "--addr", &echo, "--tls"], b"");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not udp"),
        "{out:?}"
    );
}

#[test]
fn sticky_shows_the_lesson_over_tls_and_needs_a_tls_server_to_talk_to() {
    let certs = Certs::new("sticky");
    let data = certs.path("data");
    let server = tls_server(
        &certs,
        &["echo", "files"],
        &["--data-dir", &data.display().to_string()],
    );
    let (echo, files) = (
        server.tcp("echo").to_string(),
        server.tcp("files").to_string(),
    );
    let ca = certs.s("ca.pem");
    let out = socklab(
        &[
            "sticky",
            "--addr",
            &echo,
            "--files-addr",
            &files,
            "--tls",
            "--ca",
            &ca,
            "-n",
            "12",
        ],
        b"",
    );
    let said = ok(&out, "sticky --tls");
    assert!(
        said.contains("frames: 12 of 12 messages recovered intact"),
        "{said}"
    );
    let out = socklab(&["sticky", "--tls", "-n", "2"], b"");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--tls needs --addr"),
        "{out:?}"
    );
}

/// A TLS echo of Python's `ssl` (OpenSSL, which sends TLS 1.3 session tickets) that counts the
/// connections it served with a full handshake and with a resumed session, while `socklab
/// bench --new-conn-per-request` runs against it.
const HANDSHAKE_COUNTER: &str = r#"
import socket, ssl, sys, threading, subprocess, json
bench, cert, key, ca, version = sys.argv[1:6]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
if version == '1.2':
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
ls = socket.socket()
ls.bind(('127.0.0.1', 0))
ls.listen(64)
ls.settimeout(0.2)
port = ls.getsockname()[1]
counts = {'full': 0, 'resumed': 0, 'failed': 0}
done = threading.Event()
def serve():
    while not done.is_set():
        try:
            c, _ = ls.accept()
        except socket.timeout:
            continue
        c.settimeout(5)
        try:
            s = ctx.wrap_socket(c, server_side=True)
            got = b''
            while len(got) < 64:
                d = s.recv(64 - len(got))
                if not d:
                    break
                got += d
            s.sendall(got)
            counts['resumed' if s.session_reused else 'full'] += 1
            s.close()
        except (ssl.SSLError, OSError):
            counts['failed'] += 1
            c.close()
t = threading.Thread(target=serve)
t.start()
r = subprocess.run([bench, 'bench', '--json', '--warmup', '0s', '--duration', '300ms',
                    '--addr', '127.0.0.1:%d' % port, '--tls', '--ca', ca, '--conns', '1',
                    '--new-conn-per-request', '--size', '64'], capture_output=True, timeout=20)
done.set()
t.join()
counts['bench_exit'] = r.returncode
print(json.dumps(counts))
"#;

#[test]
fn bench_makes_a_full_handshake_for_every_new_connection_over_tls13_and_tls12() {
    let certs = Certs::new("bench-full-handshakes");
    // TLS 1.3 runs on bench's own record layer; TLS 1.2 on rustls's buffered connection.
    for version in ["1.3", "1.2"] {
        let out = python_ok(
            HANDSHAKE_COUNTER,
            &[
                bin(),
                &certs.s("server.pem"),
                &certs.s("server.key"),
                &certs.s("ca.pem"),
                version,
            ],
            BOUND,
        );
        let counts: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        // A session resumed from the server's tickets would skip the certificate, and the
        // server CPU a handshake costs would be measured without it.
        assert_eq!(counts["bench_exit"], 0, "TLS {version}: {counts}");
        assert_eq!(counts["resumed"], 0, "TLS {version}: {counts}");
        // The run's end may cut one connection off during its handshake.
        assert!(
            counts["failed"].as_u64().unwrap() <= 1,
            "TLS {version}: {counts}"
        );
        assert!(
            counts["full"].as_u64().unwrap() >= 2,
            "TLS {version}: {counts}"
        );
    }
}

#[test]
fn bench_answers_the_challenge_inside_tls_and_measures_the_authenticated_files_service() {
    let certs = Certs::new("bench-auth");
    let data = certs.path("data");
    let secret = certs.path("secret");
    std::fs::write(&secret, b"a secret for the bench\n").unwrap();
    let server = tls_server(
        &certs,
        &["files"],
        &[
            "--data-dir",
            &data.display().to_string(),
            "--auth",
            "files",
            "--auth-secret-file",
            &secret.display().to_string(),
        ],
    );
    let files = server.tcp("files").to_string();
    let ca = certs.s("ca.pem");
    let secret = secret.display().to_string();
    // Kept connections, then a connection (and a challenge) per request.
    for extra in [
        &["--conns", "4", "--depth", "4"][..],
        &["--new-conn-per-request"],
    ] {
        let args = [
            &frames_over_tls(&files, &ca)[..],
            &["--secret-file", &secret],
            extra,
        ]
        .concat();
        let r = bench_json(&args);
        assert!(r["requests"].as_u64().unwrap() > 0, "{extra:?}: {r}");
        assert_eq!(r["errors"].as_u64(), Some(0), "{extra:?}: {r}");
    }
    // Without the secret the server's challenge goes unanswered: an error, not a hang.
    let out = socklab(
        &[&["bench"][..], &frames_over_tls(&files, &ca)].concat(),
        b"",
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(why.contains("asks for authentication"), "{why}");
}
