//! `socklab stats` against a real server: the echo service's counters move by exactly the
//! connections and bytes a test sends (in `--json` and in the table), with `--workers 2` they
//! are the sum over both workers, a server that requires
//! authentication answers with `--secret-file` and refuses without it, and an address nobody
//! listens on gives a non-zero exit and a message saying the connection was refused.

mod util;

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use util::{Server, TempDir};

/// Bound on every client run and every read.
const T: Duration = Duration::from_secs(10);

/// echo and files on ephemeral loopback ports, files keeping its data in `dir`.
fn server(dir: &TempDir, extra: &[&str]) -> Server {
    let data = dir.file("data");
    let mut more = vec!["--data-dir", data.as_str()];
    more.extend_from_slice(extra);
    let listeners = [("echo", "127.0.0.1:0"), ("files", "127.0.0.1:0")];
    Server::start(util::serve_args(&listeners, &more))
}

/// `socklab stats --addr FILES ARGS...` with SOCKLAB_SECRET removed from its environment.
fn stats(files: SocketAddr, args: &[&str]) -> Output {
    let mut cmd = Command::new(util::bin());
    cmd.arg("stats")
        .arg("--addr")
        .arg(files.to_string())
        .args(["--timeout", "5s"])
        .args(args)
        .env_remove("SOCKLAB_SECRET");
    util::run_bounded(cmd, T)
}

/// `socklab stats --json`, which must succeed, parsed.
fn stats_json(files: SocketAddr) -> Value {
    let out = stats(files, &["--json"]);
    assert!(
        out.status.success(),
        "stats --json failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stats --json printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// One counter of one service in a `stats` body.
fn counter(stats: &Value, service: &str, name: &str) -> u64 {
    stats["services"][service][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no services.{service}.{name} in {stats}"))
}

#[test]
fn echo_connections_move_the_accepted_count() {
    let dir = TempDir::new("stats-cli");
    let server = server(&dir, &[]);
    let files = server.tcp("files");
    let before = stats_json(files);
    let accepted0 = counter(&before, "echo", "connections_accepted");
    let received0 = counter(&before, "echo", "bytes_received");

    const CONNS: u64 = 5;
    let payload = b"hello, stats\n";
    for _ in 0..CONNS {
        let mut echo = server.connect("echo");
        let back = util::roundtrip(&mut echo, payload, T);
        assert_eq!(back, payload);
    }

    let after = stats_json(files);
    assert_eq!(
        counter(&after, "echo", "connections_accepted"),
        accepted0 + CONNS,
        "{after}"
    );
    assert_eq!(
        counter(&after, "echo", "bytes_received"),
        received0 + CONNS * payload.len() as u64,
        "{after}"
    );
    // The stats connections themselves are files connections.
    assert!(
        counter(&after, "files", "connections_accepted") >= 2,
        "{after}"
    );

    // The table: a header, then an echo row whose first number is the accepted count.
    let out = stats(files, &[]);
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8(out.stdout).unwrap();
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(&header[..3], ["service", "accepted", "open"], "{table}");
    let echo: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("echo "))
        .unwrap_or_else(|| panic!("no echo row in\n{table}"))
        .split_whitespace()
        .collect();
    assert_eq!(echo[1], (accepted0 + CONNS).to_string(), "{table}");
    // Services that counted nothing are left out.
    assert!(!table.lines().any(|l| l.starts_with("upper ")), "{table}");
}

#[test]
fn with_two_workers_the_counts_are_the_sum() {
    let dir = TempDir::new("stats-cli-workers");
    let server = server(&dir, &["--workers", "2"]);
    let files = server.tcp("files");
    const CONNS: u64 = 16;
    for _ in 0..CONNS {
        let mut echo = server.connect("echo");
        assert_eq!(util::roundtrip(&mut echo, b"x", T), b"x");
    }
    // Other workers report their counters every 100 ms at most: poll, bounded.
    let mut last = Value::Null;
    let summed = util::wait_until(T, || {
        last = stats_json(files);
        counter(&last, "echo", "connections_accepted") == CONNS
    });
    assert!(summed, "echo accepted never reached {CONNS}: {last}");
    assert_eq!(last["workers"], 2, "{last}");
    let out = stats(files, &[]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains(", 2 workers"), "{table}");
}

#[test]
fn authentication_follows_the_other_files_commands() {
    let dir = TempDir::new("stats-cli-auth");
    let secret = dir.file("secret");
    std::fs::write(&secret, "stats secret\n").unwrap();
    let server = server(
        &dir,
        &["--auth", "files", "--auth-secret-file", secret.as_str()],
    );
    let files = server.tcp("files");

    let ok = stats(files, &["--json", "--secret-file", secret.as_str()]);
    assert!(ok.status.success(), "{ok:?}");
    let body: Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert!(body["services"]["echo"].is_object(), "{body}");

    let refused = stats(files, &["--json"]);
    assert!(!refused.status.success(), "{refused:?}");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("secret"),
        "the error should say a secret is needed: {err}"
    );
}

#[test]
fn a_refused_connection_is_a_clear_error() {
    let addr = util::closed_port();
    let out = stats(addr, &["--json"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot connect to {addr}")) && err.contains("refused"),
        "{err}"
    );
}
