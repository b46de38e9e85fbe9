//! The server's process keeps one thread: log lines leave through a relay process, and the disk
//! thread starts with the first upload. Lines reach stderr, the last ones before the server's
//! exit included; a stderr nobody reads costs dropped lines, never a stalled loop.

mod util;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, ChildStderr, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::Duration;

use socklab::addr::ListenAddr;
use socklab::client::{FilesClient, request};
use util::{Server, wait_until};

const WAIT: Duration = Duration::from_secs(10);

fn threads(pid: i32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
        .map(|s| s.trim().to_string())
        .collect()
}

fn echo_once(addr: std::net::SocketAddr) {
    let mut s = TcpStream::connect(addr).unwrap();
    let back = util::roundtrip(&mut s, b"hello\n", WAIT);
    assert_eq!(back, b"hello\n");
}

/// Every stderr line of `child`, as it comes, from a thread.
fn stderr_lines(stderr: ChildStderr) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits (bounded) for `ready` on stdout and returns the echo address.
fn echo_addr(child: &mut Child) -> std::net::SocketAddr {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut addr = None;
    loop {
        let line = rx.recv_timeout(WAIT).expect("the server printed `ready`");
        if line == "ready" {
            return addr.expect("an echo listener");
        }
        if let Some(l) = util::Listener::parse(&line)
            && l.service == "echo"
        {
            addr = Some(l.addr.parse().unwrap());
        }
    }
}

#[test]
fn the_server_has_one_thread_until_an_upload_starts_the_hashing_and_disk_threads() {
    let dir = util::TempDir::new("log-relay");
    let data_dir = dir.path().display().to_string();
    let server = Server::start(util::serve_args(
        &[("echo", "127.0.0.1:0"), ("files", "127.0.0.1:0")],
        &["--data-dir", data_dir.as_str(), "-v"],
    ));
    echo_once(server.tcp("echo"));
    let addr = ListenAddr::Inet(server.tcp("files"));
    let mut c = FilesClient::connect(&addr, None, WAIT).unwrap();
    c.call(&request("ping")).unwrap();
    assert_eq!(threads(server.pid()), ["socklab"], "before any disk work");

    let body = b"0123456789abcdef";
    let mut put = request("put");
    put.insert("filename".into(), "f".into());
    put.insert("size".into(), body.len().into());
    c.send_request(&put, body.len() as u64).unwrap();
    c.send_body(body).unwrap();
    c.read_response().unwrap().into_result().unwrap();
    let mut seen = Vec::new();
    assert!(
        wait_until(WAIT, || {
            seen = threads(server.pid());
            seen.len() == 3
        }),
        "after an upload: {seen:?}"
    );
    for helper in ["socklab-hash", "socklab-disk"] {
        assert!(seen.iter().any(|t| t == helper), "{helper}: {seen:?}");
    }
}

#[test]
fn log_lines_reach_stderr_and_the_relay_leaves_with_the_server() {
    let mut cmd = util::serve_cmd(util::serve_args(&[("echo", "127.0.0.1:0")], &["-v"]));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let lines = stderr_lines(child.stderr.take().unwrap());
    let addr = echo_addr(&mut child);
    echo_once(addr);
    let mut got = Vec::new();
    let mut wait_for = |needle: &str| {
        let found = wait_until(WAIT, || {
            got.extend(lines.try_iter());
            got.iter().any(|l: &String| l.contains(needle))
        });
        assert!(found, "no line with {needle:?} in {got:#?}");
    };
    // A debug line of the loop, written while the server runs.
    wait_for("closing: done");
    // SAFETY: kill(2) only sends a signal, to the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = util::wait_child(&mut child, WAIT).expect("the server exits on SIGTERM");
    assert!(status.success(), "{status}");
    // The line logged just before exit is out, and stderr ends: the relay holds it no longer.
    let mut rest = Vec::new();
    let ended = wait_until(WAIT, || {
        loop {
            match lines.try_recv() {
                Ok(l) => rest.push(l),
                Err(mpsc::TryRecvError::Empty) => return false,
                Err(mpsc::TryRecvError::Disconnected) => return true,
            }
        }
    });
    assert!(ended, "stderr still open {WAIT:?} after the server exited");
    assert!(
        rest.iter().chain(&got).any(|l| l.contains("exiting")),
        "the last line is missing: {rest:#?}"
    );
}

#[test]
fn a_stderr_nobody_reads_drops_lines_and_never_holds_up_the_loop() {
    let mut cmd = util::serve_cmd(util::serve_args(&[("echo", "127.0.0.1:0")], &["-vv"]));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let addr = echo_addr(&mut child);
    // Every connection logs two lines (~90 bytes each). Nobody reads stderr, so the test's
    // pipe (64 KiB) and then the relay's (1 MiB) fill up after some 6,000 connections; a
    // server that waited for stderr would stop answering there.
    let mut s = TcpStream::connect(addr).unwrap();
    for i in 0..12_000 {
        echo_once(addr);
        if i % 1000 == 0 {
            assert_eq!(
                util::roundtrip(&mut s, b"still here\n", WAIT),
                b"still here\n"
            );
        }
    }
    // Now read it: lines were dropped, and the next line that got through says how many.
    let lines = stderr_lines(stderr);
    let mut got = Vec::new();
    let mut n = 0;
    let found = wait_until(WAIT, || {
        echo_once(addr);
        n += 1;
        got.extend(lines.try_iter());
        got.iter().any(|l| l.contains("log line(s) dropped"))
    });
    assert!(
        found,
        "no drop notice after {n} more connections; last lines: {:#?}",
        got.iter().rev().take(5).collect::<Vec<_>>()
    );
    s.write_all(b"bye\n").unwrap();
    let _ = child.kill();
    let _ = child.wait();
}
