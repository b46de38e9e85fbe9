//! Graceful drain on SIGTERM, over real sockets against the real binary: requests already in
//! the server's socket buffers at the signal are all answered, then each client sees a clean
//! end of stream (no reset); an upload in progress finishes within `--shutdown-grace`, and one
//! that stalls is cut at the grace and leaves no temporary; chat members are told
//! `* server shutting down`; `exec` children get SIGTERM before SIGKILL; a second signal exits
//! at once; the drained and cut connections are counted in `stats` and logged at exit.
//!
//! "Requests in the socket buffers at the signal" is made exact by stopping the server
//! (SIGSTOP) while the clients write, checking in /proc/net/tcp that every byte waits in the
//! server's receive queues, then sending SIGTERM and SIGCONT. A small `--read-budget` makes
//! the server take several turns per connection, so the signal is seen with input still queued.

mod util;

#[path = "files_support/mod.rs"]
mod files_support;

#[path = "exec_support/mod.rs"]
mod exec_support;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use exec_support::{ExecServer, Setup};
use files_support::{Scratch, md5_hex, read_response, send, temporaries};
use serde_json::{Value, json};
use util::{End, Server};

const T: Duration = Duration::from_secs(20);

/// Clients of the pipelined tests, and requests each writes before the signal.
const CLIENTS: usize = 100;
const REQUESTS: usize = 1000;

/// The state letter of process `pid` (`T` when stopped), from /proc/PID/stat.
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.get(stat.rfind(')')? + 2..)?.chars().next()
}

/// Stops the server (SIGSTOP) and waits, bounded, until it is stopped.
fn stop(server: &Server) {
    server.signal(libc::SIGSTOP);
    assert!(
        util::wait_until(T, || proc_state(server.pid()) == Some('T')),
        "the server did not stop within {T:?}"
    );
}

/// Waits, bounded, until the server's side of each client holds `queued` unread bytes: every
/// request sits in the kernel, none was read by the server.
fn wait_queued(server_addr: SocketAddr, clients: &[TcpStream], queued: u64) {
    let all_queued = util::wait_until(T, || {
        clients.iter().all(|c| {
            let local = c.local_addr().unwrap();
            util::tcp_entry(server_addr, local).is_some_and(|e| e.rx_queue == queued)
        })
    });
    assert!(
        all_queued,
        "setup: not every request waits in the server's receive queues: {:?}",
        clients
            .iter()
            .filter_map(|c| util::tcp_entry(server_addr, c.local_addr().unwrap()))
            .filter(|e| e.rx_queue != queued)
            .take(5)
            .collect::<Vec<_>>()
    );
}

/// SIGTERM while stopped, then SIGCONT: the server wakes with the signal and every byte queued.
fn term_while_stopped(server: &Server) {
    server.signal(libc::SIGTERM);
    server.signal(libc::SIGCONT);
}

/// Waits for a clean exit (status 0) within `bound`.
#[track_caller]
fn assert_exits_cleanly(server: &mut Server, bound: Duration) {
    let status = server.wait_exit(bound);
    assert!(
        status.is_some_and(|s| s.success()),
        "want exit 0 within {bound:?}, got {status:?}\n--- stderr ---\n{}",
        server.stderr()
    );
}

/// The lines echo client `n` sends while the server is stopped.
fn echo_lines(n: usize) -> Vec<u8> {
    let lines: String = (0..REQUESTS)
        .map(|i| format!("ping {n:03} {i:04}\n"))
        .collect();
    lines.into_bytes()
}

/// 100 echo clients over TCP (and 10 over a Unix socket) each hold 1,000 lines in the server's
/// receive queue at SIGTERM: every line comes back, then end of stream, never a reset.
#[test]
fn every_pipelined_echo_request_in_the_socket_buffers_is_answered() {
    let dir = util::TempDir::new("drain-echo");
    let sock = dir.file("echo.sock");
    let mut server = Server::start(util::serve_args(
        &[("echo", "127.0.0.1:0"), ("echo", &format!("unix:{sock}"))],
        &["--read-budget", "4096", "--shutdown-grace", "20s"],
    ));
    let addr = server.tcp("echo");
    let mut clients: Vec<TcpStream> = (0..CLIENTS).map(|_| server.connect("echo")).collect();
    let mut unix: Vec<UnixStream> = (0..10)
        .map(|_| UnixStream::connect(&sock).expect("connect to the unix socket"))
        .collect();
    // Accepted before the stop: a connection still in the backlog goes with the listener.
    for c in &mut clients {
        assert_eq!(util::roundtrip(c, b"+", T), b"+");
    }
    for c in &mut unix {
        assert_eq!(util::roundtrip(c, b"+", T), b"+");
    }
    stop(&server);
    for (n, c) in clients.iter_mut().enumerate() {
        c.write_all(&echo_lines(n)).expect("write while stopped");
    }
    // A Unix stream write lands in the server's receive queue itself.
    for (n, c) in unix.iter_mut().enumerate() {
        c.write_all(&echo_lines(CLIENTS + n))
            .expect("write while stopped");
    }
    wait_queued(addr, &clients, echo_lines(0).len() as u64);
    term_while_stopped(&server);
    for (n, c) in clients.iter_mut().enumerate() {
        let (got, end) = util::read_to_end_timeout(c, T);
        util::assert_bytes_eq(&got, &echo_lines(n), &format!("client {n}: replies"));
        assert_eq!(end, End::Eof, "client {n}: a clean end, not a reset");
    }
    for (n, c) in unix.iter_mut().enumerate() {
        let (got, end) = util::read_to_end_timeout(c, T);
        let want = echo_lines(CLIENTS + n);
        util::assert_bytes_eq(&got, &want, &format!("unix client {n}: replies"));
        assert_eq!(end, End::Eof, "unix client {n}: a clean end, not a reset");
    }
    assert_exits_cleanly(&mut server, T);
}

/// The same with `--workers 2` and framed `files` pings: each worker drains its own.
#[test]
fn every_pipelined_ping_is_answered_with_two_workers() {
    let scratch = Scratch::new("drain-ping");
    let mut server = files_support::start(
        &scratch,
        &[
            "--workers",
            "2",
            "--read-budget",
            "4096",
            "--shutdown-grace",
            "20s",
        ],
    );
    let addr = server.tcp("files");
    let mut clients: Vec<TcpStream> = (0..CLIENTS).map(|_| server.connect("files")).collect();
    for c in &mut clients {
        files_support::call(c, json!({"cmd": "ping"}), b"").assert_ok("ping");
    }
    stop(&server);
    let mut queued = 0;
    for c in &mut clients {
        let frames: Vec<u8> = (0..REQUESTS)
            .flat_map(|i| files_support::request(json!({"cmd": "ping", "id": i}), b""))
            .collect();
        queued = frames.len() as u64;
        send(c, &frames);
    }
    wait_queued(addr, &clients, queued);
    term_while_stopped(&server);
    for (n, c) in clients.iter_mut().enumerate() {
        for i in 0..REQUESTS {
            let r = files_support::try_read_response(c, T).unwrap_or_else(|e| {
                panic!("client {n}: reply {i} of {REQUESTS} after SIGTERM: {e}")
            });
            r.assert_ok("ping");
            assert_eq!(r.get("id"), &json!(i), "client {n}: replies in order");
        }
        let (rest, end) = util::read_to_end_timeout(c, T);
        assert!(
            rest.is_empty(),
            "client {n}: {} bytes after the replies",
            rest.len()
        );
        assert_eq!(end, End::Eof, "client {n}: a clean end, not a reset");
    }
    assert_exits_cleanly(&mut server, T);
}

/// A `put` header and the first `first` bytes of `body`, sent; waits until the server has
/// read them (its temporary exists and its receive queue is empty).
fn begin_put(
    server: &Server,
    scratch: &Scratch,
    name: &str,
    body: &[u8],
    first: usize,
) -> TcpStream {
    let mut s = server.connect("files");
    let header = json!({"cmd": "put", "filename": name, "size": body.len(), "md5": md5_hex(body)});
    send(&mut s, &files_support::frame(&header, b""));
    send(&mut s, &body[..first]);
    let (local, addr) = (s.local_addr().unwrap(), server.tcp("files"));
    let read = util::wait_until(T, || {
        !temporaries(&scratch.data()).is_empty()
            && util::tcp_entry(addr, local).is_some_and(|e| e.rx_queue == 0)
    });
    assert!(
        read,
        "setup: the server did not take the upload's first bytes"
    );
    s
}

/// An upload half sent at SIGTERM finishes when the rest comes within the grace: it is stored
/// with its md5 and answered, then the connection ends cleanly.
#[test]
fn an_upload_in_progress_finishes_within_the_grace() {
    let scratch = Scratch::new("drain-put");
    let mut server = files_support::start(&scratch, &["--shutdown-grace", "20s"]);
    let body = util::Rng::new(7).bytes(3 << 20);
    let mut s = begin_put(&server, &scratch, "late.bin", &body, 1 << 20);
    server.signal(libc::SIGTERM);
    assert!(
        server.wait_stderr_contains("shutting down", T),
        "setup: the server did not log its shutdown"
    );
    send(&mut s, &body[1 << 20..]);
    let r = read_response(&mut s);
    r.assert_ok("put");
    assert_eq!(r.get("md5"), &json!(md5_hex(&body)), "{:?}", r.h);
    let (rest, end) = util::read_to_end_timeout(&mut s, T);
    assert!(
        rest.is_empty() && end == End::Eof,
        "after the answer: {rest:?} {end:?}"
    );
    assert_exits_cleanly(&mut server, T);
    let stored = std::fs::read(scratch.data().join("late.bin")).expect("the upload is stored");
    assert_eq!(md5_hex(&stored), md5_hex(&body), "stored bytes");
    assert_eq!(scratch.data_names(), ["late.bin"], "no temporary is left");
}

/// An upload that stalls is waited for until the grace, then cut, and leaves no temporary;
/// idle connections are drained at once; the exit log counts both.
#[test]
fn a_stalled_upload_is_cut_at_the_grace_and_counted() {
    let scratch = Scratch::new("drain-stall");
    let mut server = files_support::start(&scratch, &["--shutdown-grace", "2s"]);
    let mut idle: Vec<TcpStream> = (0..2).map(|_| server.connect("files")).collect();
    for c in &mut idle {
        files_support::call(c, json!({"cmd": "ping"}), b"").assert_ok("ping");
    }
    let body = util::Rng::new(8).bytes(2 << 20);
    let stalled = begin_put(&server, &scratch, "stalled.bin", &body, 1 << 20);
    let t0 = Instant::now();
    server.signal(libc::SIGTERM);
    for c in &mut idle {
        let (rest, end) = util::read_to_end_timeout(c, T);
        assert!(
            rest.is_empty() && end == End::Eof,
            "idle client: {rest:?} {end:?}"
        );
    }
    drop(idle);
    assert_exits_cleanly(&mut server, T);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(1800),
        "the server exited {took:?} after SIGTERM: the stalled upload had 2 s to finish"
    );
    assert!(
        scratch.data_names().is_empty(),
        "left: {:?}",
        scratch.data_names()
    );
    let stderr = server.stderr();
    assert!(
        stderr.contains("2 connection(s) drained, 1 cut at the grace"),
        "the exit log counts the drained and cut connections:\n{stderr}"
    );
    drop(stalled);
}

/// The first signal starts the drain (a stalled upload keeps the server waiting); the second
/// one exits at once, leaving no temporary.
#[test]
fn a_second_signal_exits_at_once() {
    let scratch = Scratch::new("drain-twice");
    let mut server = files_support::start(&scratch, &["--shutdown-grace", "60s"]);
    let body = util::Rng::new(9).bytes(2 << 20);
    let stalled = begin_put(&server, &scratch, "stalled.bin", &body, 1 << 20);
    server.signal(libc::SIGTERM);
    assert!(server.wait_stderr_contains("shutting down", T));
    // Bounded on purpose: the server must still be draining, not gone.
    assert_eq!(
        server.wait_exit(Duration::from_millis(500)),
        None,
        "the first signal must drain (the upload may still finish), not exit"
    );
    let t0 = Instant::now();
    server.signal(libc::SIGTERM);
    assert_exits_cleanly(&mut server, Duration::from_secs(5));
    eprintln!("exited {:?} after the second signal", t0.elapsed());
    assert!(
        scratch.data_names().is_empty(),
        "left: {:?}",
        scratch.data_names()
    );
    drop(stalled);
}

/// Reads lines until the end of stream; returns them and how the stream ended.
fn read_lines_to_end(s: &mut TcpStream) -> (Vec<String>, End) {
    let (bytes, end) = util::read_to_end_timeout(s, T);
    let text = String::from_utf8(bytes).expect("chat sends UTF-8");
    (text.lines().map(str::to_owned).collect(), end)
}

/// Connects `n` chat members and waits, bounded, until each has joined (`/who` answered).
fn chat_members(server: &Server, n: usize) -> Vec<TcpStream> {
    let mut members: Vec<TcpStream> = (0..n).map(|_| server.connect("chat")).collect();
    for m in &mut members {
        send(m, b"/who\n");
        let mut seen = String::new();
        let joined = util::wait_until(T, || {
            let (got, _) = util::read_bounded(m, None, Duration::from_millis(20));
            seen.push_str(&String::from_utf8_lossy(&got));
            seen.contains("* members:")
        });
        assert!(joined, "setup: no `/who` answer: {seen:?}");
    }
    members
}

/// Every chat member's last line is `* server shutting down`, then a clean end of stream.
#[test]
fn chat_members_are_told_the_server_is_shutting_down() {
    let mut server = Server::start(util::serve_args(&[("chat", "127.0.0.1:0")], &[]));
    let mut members = chat_members(&server, 3);
    server.signal(libc::SIGTERM);
    for (n, m) in members.iter_mut().enumerate() {
        let (lines, end) = read_lines_to_end(m);
        assert_eq!(
            lines.last().map(String::as_str),
            Some("* server shutting down"),
            "member {n}: the last line before the end: {lines:?}"
        );
        assert_eq!(end, End::Eof, "member {n}: a clean end, not a reset");
    }
    assert_exits_cleanly(&mut server, T);
}

/// Chat lines waiting in the server's receive queue at the signal are read, so each goes to
/// every other member before their goodbye, even to a member that had nothing to read and
/// while the sender's queue takes the drain several turns (a small `--read-budget`).
#[test]
fn chat_lines_queued_at_the_signal_reach_every_member_before_the_goodbye() {
    let mut server = Server::start(util::serve_args(
        &[("chat", "127.0.0.1:0")],
        &["--read-budget", "64"],
    ));
    let mut members = chat_members(&server, 3);
    stop(&server);
    let lines: String = (0..100).map(|i| format!("queued line {i:03}\n")).collect();
    for m in members.iter_mut().skip(1) {
        send(m, lines.as_bytes());
    }
    wait_queued(server.tcp("chat"), &members[1..], lines.len() as u64);
    term_while_stopped(&server);
    for (n, m) in members.iter_mut().enumerate() {
        let (got, end) = read_lines_to_end(m);
        let bye = got.iter().position(|l| l == "* server shutting down");
        let queued = got.iter().filter(|l| l.contains(" queued line ")).count();
        // Member 0 gets both senders' 100 lines, each sender the other's.
        let want = if n == 0 { 200 } else { 100 };
        assert_eq!(queued, want, "member {n}: the queued lines: {got:?}");
        assert_eq!(bye, Some(got.len() - 1), "member {n}: the goodbye last");
        assert_eq!(end, End::Eof, "member {n}: a clean end, not a reset");
    }
    assert_exits_cleanly(&mut server, T);
}

/// A running command gets SIGTERM first: it traps it, says so and exits, and that is its
/// answer; then the connection ends cleanly.
#[test]
fn exec_children_get_sigterm_before_sigkill() {
    let mut es = ExecServer::start(
        "drain-term",
        Setup {
            allow: &["sh"],
            auth: true,
            extra: &["--shutdown-grace", "20s"],
            ..Setup::default()
        },
    );
    let mut s = es.authed();
    // The file says the trap is set: a SIGTERM before it would end the shell at once.
    let script = "trap 'echo got TERM; exit 3' TERM; echo started; : > trap-set; \
                  while :; do sleep 0.05; done";
    send(
        &mut s,
        &exec_support::exec_frame(&["sh", "-c", script], Some(30_000), json!({})),
    );
    let marker = es.scratch.data().join("trap-set");
    assert!(
        util::wait_until(T, || marker.exists()),
        "the command never set its trap"
    );
    es.server.signal(libc::SIGTERM);
    let r = exec_support::read_within(&mut s, T, &es.server);
    let outcome = exec_support::ok_outcome(&r);
    assert_eq!(
        (
            outcome.exit_code,
            String::from_utf8_lossy(&outcome.stdout).as_ref()
        ),
        (Some(3), "started\ngot TERM\n"),
        "the command's answer after SIGTERM: {:?}",
        r.h
    );
    let (rest, end) = util::read_to_end_timeout(&mut s, T);
    assert!(
        rest.is_empty() && end == End::Eof,
        "after the answer: {rest:?} {end:?}"
    );
    assert_exits_cleanly(&mut es.server, T);
}

/// Sockets the process `pid` holds open.
fn open_sockets(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter(|l| l.to_string_lossy().starts_with("socket:"))
                .count()
        })
        .unwrap_or(0)
}

/// `stats` answered during the drain counts the connections drained so far (a `stats`
/// request queued behind a running command is answered once the command ends).
#[test]
fn stats_during_the_drain_counts_drained_connections() {
    let mut es = ExecServer::start(
        "drain-stats",
        Setup {
            allow: &["sh"],
            auth: true,
            echo: true,
            extra: &["--shutdown-grace", "20s"],
        },
    );
    let mut echoes: Vec<TcpStream> = (0..2).map(|_| es.server.connect("echo")).collect();
    for e in &mut echoes {
        assert_eq!(util::roundtrip(e, b"e", T), b"e");
    }
    let mut s = es.authed();
    let script = "trap '' TERM; : > trap-set; while [ ! -e go ]; do sleep 0.05; done; echo went";
    send(
        &mut s,
        &exec_support::exec_frame(&["sh", "-c", script], Some(30_000), json!({})),
    );
    send(
        &mut s,
        &files_support::request(json!({"cmd": "stats", "id": "drain"}), b""),
    );
    // The file says the trap is set: a SIGTERM before it would end the shell at once.
    let marker = es.scratch.data().join("trap-set");
    assert!(
        util::wait_until(T, || marker.exists()),
        "the command never set its trap"
    );
    let before = open_sockets(es.pid());
    es.server.signal(libc::SIGTERM);
    for e in &mut echoes {
        let (rest, end) = util::read_to_end_timeout(e, T);
        assert!(
            rest.is_empty() && end == End::Eof,
            "echo client: {rest:?} {end:?}"
        );
    }
    drop(echoes);
    // Two listeners and the two echo connections closed.
    let pid = es.pid();
    assert!(
        util::wait_until(T, || open_sockets(pid) + 4 <= before),
        "the server did not close its listeners and echo connections: {} of {before} sockets open",
        open_sockets(pid)
    );
    std::fs::write(es.scratch.data().join("go"), b"").unwrap();
    let r = exec_support::read_within(&mut s, T, &es.server);
    assert_eq!(exec_support::ok_outcome(&r).stdout, b"went\n");
    let r = exec_support::read_within(&mut s, T, &es.server);
    r.assert_ok("stats");
    let stats: Value = serde_json::from_slice(&r.body).expect("stats body is JSON");
    let echo = &stats["services"]["echo"];
    assert_eq!(
        (&echo["connections_drained"], &echo["connections_cut"]),
        (&json!(2), &json!(0)),
        "stats during the drain: {echo}"
    );
    let (rest, end) = util::read_to_end_timeout(&mut s, T);
    assert!(
        rest.is_empty() && end == End::Eof,
        "after the answers: {rest:?} {end:?}"
    );
    assert_exits_cleanly(&mut es.server, T);
    let stderr = es.server.stderr();
    assert!(
        stderr.contains("3 connection(s) drained, 0 cut at the grace"),
        "the exit log counts every drained connection:\n{stderr}"
    );
}
