//! HMAC-SHA256 challenge-response authentication over real sockets (PROTOCOL.md,
//! "Authentication"): success over TCP and a unix socket, then normal `files` service;
//! `auth_failed` then EOF for a wrong digest, a replayed digest, silence past
//! `--auth-timeout`, and a frame sent before the handshake; the secret from a file (trailing
//! newline dropped) and from `SOCKLAB_SECRET`; start-up refused for `files` on a non-loopback
//! address without `--auth files`, and for `--auth` without a usable secret; `--auth upper`
//! gating the upper service, and authentication staying per service.

mod util;

#[path = "files_support/mod.rs"]
mod files_support;

use std::ffi::OsString;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use files_support::*;
use serde_json::json;

/// The secret as the server should use it (the file holds it with a trailing newline).
const SECRET: &[u8] = b"correct horse battery staple";

/// Writes `contents` to `name` in the scratch root; returns its path.
fn secret_file(scratch: &Scratch, name: &str, contents: &[u8]) -> PathBuf {
    let p = scratch.root.path().join(name);
    std::fs::write(&p, contents).unwrap();
    p
}

/// `files` on `listeners` with `--auth files` and the secret from a file ending in `\n`.
fn start_auth(scratch: &Scratch, listeners: &[&str], extra: &[&str]) -> util::Server {
    let mut secret = SECRET.to_vec();
    secret.push(b'\n');
    let path = secret_file(scratch, "secret", &secret);
    let mut args = vec![
        "--auth",
        "files",
        "--auth-secret-file",
        path.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    util::Server::start_cmd(files_cmd(listeners, &scratch.data(), &args))
}

/// Reads the challenge and checks it is 32 bytes.
fn challenge<S: util::Stream + ?Sized>(s: &mut S) -> Vec<u8> {
    read_n(s, 32, T)
        .unwrap_or_else(|(got, end)| panic!("no 32-byte challenge: {got:?} then {end:?}"))
}

/// Checks that a failed handshake ends with an `auth_failed` frame (cmd null) then EOF.
#[track_caller]
fn assert_auth_failed<S: util::Stream + ?Sized>(s: &mut S, what: &str) {
    let r = try_read_response(s, T).unwrap_or_else(|e| panic!("{what}: no auth_failed frame: {e}"));
    r.assert_error("auth_failed", None);
    assert_closed(s, what);
}

#[test]
fn the_right_digest_opens_the_service_over_tcp_and_unix() {
    let scratch = Scratch::new("auth-ok");
    let sock = scratch.root.file("files.sock");
    let server = start_auth(&scratch, &["127.0.0.1:0", &format!("unix:{sock}")], &[]);

    let mut s = connect(&server);
    let c1 = handshake(&mut s, SECRET);
    assert_usable(&mut s, "a successful handshake over TCP");
    put_ok(&mut s, "authed", b"after auth");

    let mut u = UnixStream::connect(server.unix("files")).expect("connect to the unix listener");
    u.set_read_timeout(Some(T)).unwrap();
    u.set_write_timeout(Some(T)).unwrap();
    let c2 = handshake(&mut u, SECRET);
    assert_usable(&mut u, "a successful handshake over a unix socket");
    let r = call(&mut u, json!({"cmd": "get", "filename": "authed"}), b"");
    r.assert_ok("get");
    assert_eq!(r.body, b"after auth");

    assert_ne!(c1, c2, "two connections got the same challenge");

    // The digest and the first request in one write.
    let mut s = connect(&server);
    let c = challenge(&mut s);
    let mut bytes = hmac_sha256(SECRET, &c).to_vec();
    bytes.extend(request(json!({"cmd": "ping", "id": "same write"}), b""));
    send(&mut s, &bytes);
    let r = read_response(&mut s);
    r.assert_ok("ping");
    assert_eq!(r.get("id"), &json!("same write"));
}

#[test]
fn a_wrong_or_replayed_digest_gets_auth_failed_then_eof() {
    let scratch = Scratch::new("auth-wrong");
    let server = start_auth(&scratch, &["127.0.0.1:0"], &[]);

    let mut s = connect(&server);
    let c = challenge(&mut s);
    send(&mut s, &hmac_sha256(b"not the secret", &c));
    assert_auth_failed(&mut s, "a digest made with another secret");

    // The secret with its newline is another secret: the file's newline was dropped.
    let mut s = connect(&server);
    let c = challenge(&mut s);
    let mut with_newline = SECRET.to_vec();
    with_newline.push(b'\n');
    send(&mut s, &hmac_sha256(&with_newline, &c));
    assert_auth_failed(&mut s, "a digest made with the secret plus its newline");

    let mut s = connect(&server);
    challenge(&mut s);
    send(&mut s, &[0u8; 32]);
    assert_auth_failed(&mut s, "32 zero bytes");

    // Replay: the right digest for another connection's challenge.
    let mut a = connect(&server);
    let ca = challenge(&mut a);
    let mut b = connect(&server);
    challenge(&mut b);
    send(&mut b, &hmac_sha256(SECRET, &ca));
    assert_auth_failed(&mut b, "a digest of another connection's challenge");
    send(&mut a, &hmac_sha256(SECRET, &ca));
    assert_usable(&mut a, "the digest on its own connection");
}

#[test]
fn silence_past_the_auth_timeout_gets_auth_failed_then_eof() {
    let scratch = Scratch::new("auth-timeout");
    let server = start_auth(&scratch, &["127.0.0.1:0"], &["--auth-timeout", "1s"]);

    for (what, partial) in [("silence", 0usize), ("half a digest", 16)] {
        let mut s = connect(&server);
        let c = challenge(&mut s);
        let t0 = Instant::now();
        send(&mut s, &hmac_sha256(SECRET, &c)[..partial]);
        let r = try_read_response(&mut s, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{what}: no auth_failed within 5 s of a 1 s timeout: {e}"));
        let waited = t0.elapsed();
        r.assert_error("auth_failed", None);
        assert!(
            waited >= Duration::from_millis(800) && waited <= Duration::from_millis(3500),
            "{what}: auth_failed came {waited:?} after the challenge; the timeout is 1 s"
        );
        assert_closed(&mut s, what);
    }
}

#[test]
fn a_frame_sent_before_the_handshake_fails_it() {
    let scratch = Scratch::new("auth-early");
    let server = start_auth(&scratch, &["127.0.0.1:0"], &[]);
    let mut s = connect(&server);
    // A ping frame of exactly 32 bytes, sent without waiting for the challenge: it is taken as
    // the response (and nothing is left unread when the server closes).
    let early = frame_raw(&ping_header_of_len(28), b"");
    assert_eq!(early.len(), 32);
    let t0 = Instant::now();
    send(&mut s, &early);
    challenge(&mut s);
    let r = try_read_response(&mut s, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("no auth_failed within 3 s (the auth timeout is 5 s): {e}"));
    r.assert_error("auth_failed", None);
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert_closed(&mut s, "a frame sent before the handshake");
    assert!(
        scratch.data_names().is_empty(),
        "{:?}",
        scratch.data_names()
    );
}

#[test]
fn the_secret_may_come_from_socklab_secret() {
    let scratch = Scratch::new("auth-env");
    let mut cmd = files_cmd(&["127.0.0.1:0"], &scratch.data(), &["--auth", "files"]);
    cmd.env("SOCKLAB_SECRET", "from the environment\r\n");
    let server = util::Server::start_cmd(cmd);
    let mut s = connect(&server);
    handshake(&mut s, b"from the environment");
    assert_usable(&mut s, "a handshake with the secret from SOCKLAB_SECRET");

    let mut s = connect(&server);
    handshake(&mut s, b"from the environment\r\n");
    assert_auth_failed(&mut s, "the secret with its CRLF");
    drop(server);

    // A secret file wins over the environment.
    let path = secret_file(&scratch, "file-secret", b"from the file\n");
    let mut cmd = files_cmd(
        &["127.0.0.1:0"],
        &scratch.data(),
        &[
            "--auth",
            "files",
            "--auth-secret-file",
            path.to_str().unwrap(),
        ],
    );
    cmd.env("SOCKLAB_SECRET", "from the environment");
    let server = util::Server::start_cmd(cmd);
    let mut s = connect(&server);
    handshake(&mut s, b"from the file");
    assert_usable(&mut s, "a handshake with the secret from the file");
}

#[test]
fn start_up_is_refused_without_authentication_or_without_a_secret() {
    let scratch = Scratch::new("auth-refuse");
    let data = scratch.data();

    let (status, stderr) = util::expect_start_failure(
        files_cmd(&["0.0.0.0:0"], &data, &[]),
        "files listens on 0.0.0.0 without --auth files",
    );
    assert!(!status.success(), "{status}");
    assert!(
        stderr.to_lowercase().contains("authentication"),
        "the refusal should say authentication is required:\n{stderr}"
    );

    // Unix listener plus a public one: still refused.
    let sock = scratch.root.file("refused.sock");
    let (status, _) = util::expect_start_failure(
        files_cmd(&[&format!("unix:{sock}"), "0.0.0.0:0"], &data, &[]),
        "one files listener is on 0.0.0.0 without --auth files",
    );
    assert!(!status.success());

    let (status, stderr) = util::expect_start_failure(
        files_cmd(&["127.0.0.1:0"], &data, &["--auth", "files"]),
        "--auth files was given without a secret",
    );
    assert!(!status.success(), "{status}");
    assert!(
        stderr.to_lowercase().contains("secret"),
        "the refusal should say a secret is missing:\n{stderr}"
    );

    for (what, contents) in [
        ("an empty secret file", &b""[..]),
        ("a secret file of one newline", b"\n"),
    ] {
        let path = secret_file(&scratch, "empty-secret", contents);
        let (status, stderr) = util::expect_start_failure(
            files_cmd(
                &["127.0.0.1:0"],
                &data,
                &[
                    "--auth",
                    "files",
                    "--auth-secret-file",
                    path.to_str().unwrap(),
                ],
            ),
            what,
        );
        assert!(!status.success(), "{what}: {status}");
        assert!(stderr.to_lowercase().contains("empty"), "{what}:\n{stderr}");
    }

    let mut cmd = files_cmd(&["127.0.0.1:0"], &data, &["--auth", "files"]);
    cmd.env("SOCKLAB_SECRET", "");
    let (status, _) = util::expect_start_failure(cmd, "SOCKLAB_SECRET is empty");
    assert!(!status.success());

    let missing = scratch.root.file("no-such-secret");
    let (status, _) = util::expect_start_failure(
        files_cmd(
            &["127.0.0.1:0"],
            &data,
            &["--auth", "files", "--auth-secret-file", &missing],
        ),
        "the secret file does not exist",
    );
    assert!(!status.success());

    // Controls: a unix socket needs no authentication; 0.0.0.0 with it starts and serves.
    let server = util::Server::start_cmd(files_cmd(&[&format!("unix:{sock}")], &data, &[]));
    let mut u = UnixStream::connect(server.unix("files")).unwrap();
    u.set_read_timeout(Some(T)).unwrap();
    assert_usable(&mut u, "connecting to an unauthenticated unix listener");
    drop(server);

    let server = start_auth(&scratch, &["0.0.0.0:0"], &[]);
    let port = server.tcp("files").port();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    handshake(&mut s, SECRET);
    assert_usable(&mut s, "a handshake on a 0.0.0.0 listener");
}

/// Arguments that start only `upper` and `files` on 127.0.0.1, then `extra`.
fn upper_and_files_args(scratch: &Scratch, extra: &[&str]) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    for service in util::all_services() {
        if service != "files" && service != "upper" {
            args.push(format!("--no-{service}").into());
        }
    }
    for a in [
        "--upper",
        "127.0.0.1:0",
        "--files",
        "127.0.0.1:0",
        "--data-dir",
    ] {
        args.push(a.into());
    }
    args.push(scratch.data().into());
    args.extend(extra.iter().map(OsString::from));
    args
}

#[test]
fn auth_upper_gates_the_upper_service_only() {
    let scratch = Scratch::new("auth-upper");
    let path = secret_file(&scratch, "secret", b"upper secret\n");
    let mut cmd = util::serve_cmd(upper_and_files_args(
        &scratch,
        &[
            "--auth",
            "upper",
            "--auth-secret-file",
            path.to_str().unwrap(),
        ],
    ));
    cmd.env_remove("SOCKLAB_SECRET");
    let server = util::Server::start_cmd(cmd);

    let mut s = server.connect("upper");
    handshake(&mut s, b"upper secret");
    let got = util::roundtrip(&mut s, b"hello, World 123", T);
    assert_eq!(got, b"HELLO, WORLD 123", "upper after the handshake");

    // A wrong digest: upper closes without a word.
    let mut s = server.connect("upper");
    let c = challenge(&mut s);
    send(&mut s, &hmac_sha256(b"other", &c));
    let (got, end) = util::read_to_end_timeout(&mut s, T);
    assert!(
        end.closed(),
        "a failed handshake on upper must close; got {end:?}"
    );
    assert!(
        got.is_empty(),
        "upper sends nothing after a failed handshake (no frame): {got:?}"
    );

    // files is not gated: no challenge, a ping answers straight away.
    let mut f = connect(&server);
    assert_usable(&mut f, "connecting to files when only upper requires auth");
}
