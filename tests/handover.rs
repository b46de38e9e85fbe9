//! Hand-over of the listeners to a new process (issue 18, deliverable 2), with the real binary:
//! `serve --upgrade-from`, `socklab reload`, SIGUSR2, `--workers 2`, and the bad inputs of the
//! control socket (a second hand-over while one is under way, a successor that dies before it
//! is ready, a path already taken, garbage, a peer that sends no descriptors).
//!
//! Where a test plays one side of the control protocol itself (a successor that dies before it
//! is ready, an old process that sends garbage), it speaks over a real Unix socket with real
//! SCM_RIGHTS messages.

mod util;

#[path = "handover_support/mod.rs"]
mod handover_support;

use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use handover_support::*;
use util::*;

#[test]
fn upgrade_under_connections_refuses_nothing_and_old_connections_finish_on_the_old_process() {
    let dir = TempDir::new("handover-up");
    let mut old = Server::start(args(&dir, &["--shutdown-grace", "20s"]));
    assert_serving(&old, &dir, "the old process");
    let echo = old.tcp("echo");
    let inodes = listening_inodes(echo.port());
    assert_eq!(inodes.len(), 1, "{inodes:?}");
    let mut kept = old.connect("echo");
    assert_eq!(roundtrip(&mut kept, b"before", T), b"before");
    let prober = Prober::start(echo);
    let mut a = args(&dir, &[]);
    a.extend(["--upgrade-from".to_owned(), dir.file("control.sock")]);
    let new = Server::start(a);
    let new_pid = Pid(new.pid());
    assert_eq!(new.tcp("echo"), echo, "the successor serves the same port");
    for l in &new.listeners {
        assert_eq!(
            l.opts.get("inherited").map(String::as_str),
            Some("handover"),
            "bound anew instead of taken over: {l:?}"
        );
    }
    // The old process drains: its kept connection ends cleanly, then it exits.
    let (_, end) = read_to_end_timeout(&mut kept, T);
    assert_eq!(end, End::Eof, "the old process's connection ends cleanly");
    assert!(old.wait_exit(T).is_some_and(|s| s.success()), "old exits 0");
    let (ok, refused, failed, why) = prober.finish();
    eprintln!("prober: {ok} answered, {refused} refused, {failed} failed: {why:?}");
    assert_eq!(refused, 0, "connections refused during the hand-over");
    assert!(ok > 0, "the prober got nothing through");
    assert_serving(&new, &dir, "the successor");
    assert_eq!(
        listening_inodes(echo.port()),
        inodes,
        "the very same socket"
    );
    assert_eq!(serving_pid(&control(&dir)), new_pid.0);
    assert!(
        dir.path().join("echo.sock").exists(),
        "unix socket file kept"
    );
}

#[test]
fn reload_starts_the_successor_and_prints_its_pid() {
    let dir = TempDir::new("handover-reload");
    let mut old = Server::start(args(&dir, &[]));
    let out = run_socklab(
        ["reload", "--control", dir.file("control.sock").as_str()],
        Duration::from_secs(40),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "reload failed: {stdout} {stderr}");
    let pid: i32 = stdout
        .split_whitespace()
        .find_map(|w| w.strip_prefix("pid=").and_then(|p| p.parse().ok()))
        .unwrap_or_else(|| panic!("no pid= in {stdout:?}"));
    let _new = Pid(pid);
    assert_ne!(pid, old.pid());
    assert!(old.wait_exit(T).is_some_and(|s| s.success()), "old exits 0");
    assert!(alive(pid), "the successor runs");
    assert_eq!(serving_pid(&control(&dir)), pid);
    assert!(
        echo_roundtrip(old.tcp("echo")).is_ok(),
        "the port is served"
    );
    // The successor can itself be upgraded: the control socket came along.
    let out = run_socklab(
        ["reload", "--control", dir.file("control.sock").as_str()],
        Duration::from_secs(40),
    );
    assert!(out.status.success(), "second reload: {out:?}");
    let third = serving_pid(&control(&dir));
    let _third = Pid(third);
    assert_ne!(third, pid);
    assert!(wait_until(T, || !alive(pid)), "the second server exits");
    assert!(
        echo_roundtrip(old.tcp("echo")).is_ok(),
        "the port is served"
    );
}

#[test]
fn sigusr2_reloads_like_the_command() {
    let dir = TempDir::new("handover-usr2");
    let mut old = Server::start(args(&dir, &[]));
    old.signal(libc::SIGUSR2);
    assert!(
        old.wait_exit(Duration::from_secs(30))
            .is_some_and(|s| s.success())
    );
    let pid = serving_pid(&control(&dir));
    let _new = Pid(pid);
    assert_ne!(pid, old.pid());
    let readies = old.stdout_lines().iter().filter(|l| *l == "ready").count();
    assert_eq!(
        readies, 2,
        "the successor printed its own listening lines and ready"
    );
    assert!(echo_roundtrip(old.tcp("echo")).is_ok());
}

#[test]
fn a_second_upgrade_or_reload_while_one_is_under_way_is_refused() {
    let dir = TempDir::new("handover-twice");
    let mut old = Server::start(args(&dir, &[]));
    let (first, lines, fds) = fake_successor(&control(&dir));
    assert_eq!(lines.last().map(String::as_str), Some("end"), "{lines:?}");
    assert!(!fds.is_empty(), "descriptors came with the listeners");
    let mut a = args(&dir, &[]);
    a.extend(["--upgrade-from".to_owned(), dir.file("control.sock")]);
    let (status, stderr) = expect_start_failure(serve_cmd(a), "a hand-over is under way");
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("already in progress"), "{stderr}");
    let out = run_socklab(
        ["reload", "--control", dir.file("control.sock").as_str()],
        Duration::from_secs(20),
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "reload succeeded: {out:?}");
    assert!(err.contains("already in progress"), "{err}");
    drop((first, fds));
    old.assert_alive("after the refused hand-overs");
    assert_serving(&old, &dir, "after the refused hand-overs");
}

#[test]
fn a_successor_that_dies_before_ready_leaves_the_old_one_serving() {
    let dir = TempDir::new("handover-dies");
    let mut old = Server::start(args(&dir, &[]));
    // It took every descriptor, closed them all and went away without `ready`.
    let (s, lines, fds) = fake_successor(&control(&dir));
    assert_eq!(
        fds.len(),
        lines.iter().filter(|l| l.starts_with("listener ")).count()
    );
    drop((s, fds));
    assert!(old.wait_stderr_contains("hand-over", T), "{}", old.stderr());
    old.assert_alive("after the successor died");
    assert_serving(&old, &dir, "after the successor died");
    // A real successor killed before it is ready: it holds the listeners and is stuck reading
    // its configuration from a FIFO nobody writes.
    let fifo = dir.path().join("stuck.toml");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let mut a = args(&dir, &["--config", fifo.to_str().unwrap()]);
    a.extend(["--upgrade-from".to_owned(), dir.file("control.sock")]);
    let mut stuck = serve_cmd(a)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let sent = |s: &Server| s.stderr().matches("sent the listeners").count();
    assert!(wait_until(T, || sent(&old) == 2), "{}", old.stderr());
    stuck.kill().unwrap();
    stuck.wait().unwrap();
    assert!(
        wait_until(T, || old.stderr().matches("still serving").count() >= 2),
        "the old process noticed: {}",
        old.stderr()
    );
    old.assert_alive("after the successor was killed");
    assert_serving(&old, &dir, "after the successor was killed");
    // A real successor that fails after connecting (its configuration file is missing).
    let mut a = args(&dir, &["--config", "/nonexistent/socklab.toml"]);
    a.extend(["--upgrade-from".to_owned(), dir.file("control.sock")]);
    let (status, stderr) = expect_start_failure(serve_cmd(a), "its config file is missing");
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        old.wait_stderr_contains("/nonexistent/socklab.toml", T),
        "the old process says why: {}",
        old.stderr()
    );
    old.assert_alive("after the failed successor");
    assert_serving(&old, &dir, "after the failed successor");
    // And a hand-over still works afterwards.
    let out = run_socklab(
        ["reload", "--control", dir.file("control.sock").as_str()],
        Duration::from_secs(40),
    );
    assert!(out.status.success(), "{out:?}");
    let _new = Pid(serving_pid(&control(&dir)));
    assert!(old.wait_exit(T).is_some());
}

#[test]
fn reload_with_a_broken_configuration_says_why_and_keeps_serving() {
    let dir = TempDir::new("handover-badconf");
    let conf = dir.file("socklab.toml");
    std::fs::write(&conf, "[limits]\nmax_conns = 100\n").unwrap();
    let mut old = Server::start(args(&dir, &["--config", conf.as_str()]));
    std::fs::write(&conf, "[limits]\nmax_conns = 0\n").unwrap();
    let out = run_socklab(
        ["reload", "--control", dir.file("control.sock").as_str()],
        Duration::from_secs(40),
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "reload succeeded: {out:?}");
    assert!(err.contains("max_conns"), "reload says why: {err}");
    old.assert_alive("after the failed reload");
    assert_serving(&old, &dir, "after the failed reload");
    assert_eq!(serving_pid(&control(&dir)), old.pid());
}

#[test]
fn a_stale_control_socket_file_is_replaced() {
    let dir = TempDir::new("handover-stale");
    drop(UnixListener::bind(control(&dir)).unwrap());
    assert!(control(&dir).exists(), "the stale file is there");
    let old = Server::start(args(&dir, &[]));
    assert_eq!(serving_pid(&control(&dir)), old.pid());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(control(&dir)).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "control socket mode {mode:o}");
}

#[test]
fn sigterm_still_closes_the_ports_and_removes_the_control_socket() {
    let dir = TempDir::new("handover-term");
    let mut old = Server::start(args(&dir, &["--shutdown-grace", "20s", "--sndbuf", "4096"]));
    let echo = old.tcp("echo");
    // A client that sends and never reads keeps the server draining while the port is probed;
    // its receive buffer is tiny, so the echo stays queued in the server.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect_timeout(&echo.into(), T).unwrap();
    let mut kept: TcpStream = sock.into();
    kept.set_nonblocking(true).unwrap();
    let (_, stop) = write_until_blocked(&mut kept, &mut Rng::new(7), 16 << 20, T / 20);
    assert!(matches!(stop, WriteStop::Blocked), "setup: {stop:?}");
    old.signal(libc::SIGTERM);
    let refused = || {
        matches!(TcpStream::connect_timeout(&echo, T),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
    };
    assert!(wait_until(T, refused), "the port still takes connections");
    old.assert_alive("draining");
    assert!(
        wait_until(T, || !control(&dir).exists()),
        "the control socket file is removed"
    );
    drop(kept);
    assert!(old.wait_exit(T).is_some_and(|s| s.success()));
}

#[test]
fn a_control_path_held_by_a_live_listener_is_refused() {
    let dir = TempDir::new("handover-live");
    let held = UnixListener::bind(control(&dir)).unwrap();
    let (status, stderr) =
        expect_start_failure(serve_cmd(args(&dir, &[])), "the control path is taken");
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("control socket"), "{stderr}");
    assert!(stderr.contains("in use"), "{stderr}");
    held.set_nonblocking(true).unwrap();
    assert!(
        control(&dir).exists(),
        "the other listener's file is left alone"
    );
    // Nothing was taken from it: a client still reaches it.
    let _c = UnixStream::connect(control(&dir)).unwrap();
    assert!(
        held.accept().is_ok(),
        "the live listener still gets its clients"
    );
}

#[test]
fn control_connections_with_garbage_or_silence_are_answered_and_closed() {
    let dir = TempDir::new("handover-garbage");
    let mut old = Server::start(args(&dir, &[]));
    let path = control(&dir);
    let answer = ask(&path, b"GET / HTTP/1.1\r\n\r\n");
    assert!(answer.starts_with("error "), "{answer:?}");
    let answer = ask(&path, &[0xffu8; 4000]);
    assert!(answer.starts_with("error "), "{answer:?}");
    let answer = ask(&path, b"ready\n");
    assert!(
        answer.starts_with("error "),
        "ready before upgrade: {answer:?}"
    );
    // Silence: answered with an error and closed, well within the test's bound.
    let mut quiet = UnixStream::connect(&path).unwrap();
    quiet.set_read_timeout(Some(T)).unwrap();
    let (got, end) = read_to_end_timeout(&mut quiet, T);
    assert_eq!(end, End::Eof, "a silent control connection is closed");
    assert!(
        String::from_utf8_lossy(&got).starts_with("error "),
        "{got:?}"
    );
    // Descriptors sent to the old process are not taken: they are closed.
    let (a, b) = UnixStream::pair().unwrap();
    send_fd(
        &UnixStream::connect(&path).unwrap(),
        b"bogus\n",
        a.as_raw_fd(),
    );
    drop(a);
    let mut b = b;
    b.set_read_timeout(Some(T)).unwrap();
    let (_, end) = read_to_end_timeout(&mut b, T);
    assert_eq!(
        end,
        End::Eof,
        "the passed descriptor was closed by the server"
    );
    old.assert_alive("after garbage on the control socket");
    assert_serving(&old, &dir, "after garbage on the control socket");
}

#[test]
fn upgrade_from_a_peer_that_sends_garbage_or_no_descriptors_stops_the_start() {
    let cases: [(&str, &'static [u8], &str); 3] = [
        (
            "no-fds",
            b"listeners 1\nlistener echo tcp 127.0.0.1:7\nend\n",
            "descriptor",
        ),
        (
            "garbage",
            b"HTTP/1.1 200 OK\r\n\r\n",
            "not a socklab control",
        ),
        ("silent-close", b"", "closed"),
    ];
    for (tag, reply, want) in cases {
        let dir = TempDir::new(&format!("handover-fake-{tag}"));
        let path = dir.path().join("old.sock");
        let fake = fake_old(&path, reply);
        let mut a = serve_args(&[("echo", "127.0.0.1:0")], &[]);
        a.extend(["--upgrade-from".to_owned(), path.display().to_string()]);
        let (status, stderr) = expect_start_failure(serve_cmd(a), tag);
        assert_eq!(status.code(), Some(2), "{tag}: {stderr}");
        assert!(stderr.contains(want), "{tag}: {stderr}");
        fake.join().unwrap();
    }
}

#[test]
fn with_two_workers_every_workers_listener_is_handed_over() {
    let dir = TempDir::new("handover-workers");
    let base = serve_args(
        &[("echo", "127.0.0.1:0"), ("udp-echo", "127.0.0.1:0")],
        &[
            "--control",
            dir.file("control.sock").as_str(),
            "--workers",
            "2",
            "--shutdown-grace",
            "20s",
        ],
    );
    let mut old = Server::start(base.clone());
    let echo = old.tcp("echo");
    let listening = |port: u16| {
        tcp_table()
            .iter()
            .filter(|e| e.state == 0x0A && e.local.port() == port)
            .count()
    };
    assert_eq!(listening(echo.port()), 2, "one listener per worker");
    let inodes = listening_inodes(echo.port());
    let mut kept = old.connect("echo");
    assert_eq!(roundtrip(&mut kept, b"x", T), b"x");
    let prober = Prober::start(echo);
    let mut a = base.clone();
    a.extend(["--upgrade-from".to_owned(), dir.file("control.sock")]);
    let new = Server::start(a);
    let _new = Pid(new.pid());
    // The old process is still draining `kept`: were a socket bound anew, there would be more.
    assert_eq!(
        listening(echo.port()),
        2,
        "the successor serves the old sockets, not new ones"
    );
    for _ in 0..50 {
        echo_roundtrip(echo).unwrap_or_else(|e| panic!("during the drain: {e}"));
    }
    drop(kept);
    assert!(old.wait_exit(T).is_some_and(|s| s.success()), "old exits 0");
    let (ok, refused, failed, why) = prober.finish();
    eprintln!("prober: {ok} answered, {refused} refused, {failed} failed: {why:?}");
    assert_eq!(refused, 0, "connections refused during the hand-over");
    assert_eq!(
        listening_inodes(echo.port()),
        inodes,
        "both of the old workers' sockets, and only they, live on in the successor"
    );
    for _ in 0..50 {
        echo_roundtrip(echo).unwrap_or_else(|e| panic!("after the old one left: {e}"));
    }
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(T)).unwrap();
    assert_eq!(
        udp_ask(&udp, new.udp("udp-echo"), b"u").as_deref(),
        Some(&b"u"[..])
    );
}

#[test]
fn with_files_the_control_socket_defaults_to_the_data_directory_out_of_files_reach() {
    let dir = TempDir::new("handover-default");
    let data = dir.path().join("not-yet"); // created by the server
    let data_arg = data.display().to_string();
    let old = Server::start(serve_args(
        &[("files", "127.0.0.1:0")],
        &["--data-dir", data_arg.as_str()],
    ));
    let path = data.join(".socklab-control.sock");
    assert_eq!(serving_pid(&path), old.pid());
    let files = old.tcp("files").to_string();
    let out = run_socklab(["ls", "--json", "--addr", files.as_str()], T);
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    assert!(!listing.contains("control"), "files lists it: {listing}");
    let out = run_socklab(
        [
            "get",
            ".socklab-control.sock",
            "-o",
            "-",
            "--addr",
            files.as_str(),
        ],
        T,
    );
    assert!(!out.status.success(), "files hands it out: {out:?}");
    // Without files there is no data directory to hold one, and none is made.
    let none = Server::start(serve_args(&[("echo", "127.0.0.1:0")], &[]));
    none.signal(libc::SIGUSR2);
    assert!(
        none.wait_stderr_contains("no control socket", T),
        "SIGUSR2 without a control socket says so: {}",
        none.stderr()
    );
}

#[test]
fn a_successor_with_fewer_workers_serves_every_old_socket() {
    let dir = TempDir::new("handover-fewer");
    let base = |workers: &str| {
        serve_args(
            &[("echo", "127.0.0.1:0")],
            &[
                "--control",
                dir.file("control.sock").as_str(),
                "--workers",
                workers,
            ],
        )
    };
    let mut old = Server::start(base("2"));
    let echo = old.tcp("echo");
    let inodes = listening_inodes(echo.port());
    assert_eq!(inodes.len(), 2, "one socket per worker: {inodes:?}");
    let mut a = base("1");
    a.extend(["--upgrade-from".to_owned(), dir.file("control.sock")]);
    let new = Server::start(a);
    let _new = Pid(new.pid());
    assert!(old.wait_exit(T).is_some_and(|s| s.success()), "old exits 0");
    assert_eq!(
        listening_inodes(echo.port()),
        inodes,
        "both old sockets live on in the one worker"
    );
    // The kernel spreads connections over both sockets: each must be served.
    for i in 0..40 {
        echo_roundtrip(echo).unwrap_or_else(|e| panic!("connection {i}: {e}"));
    }
}
