//! The server's life: start-up output (`listening` lines with the socket
//! options read back, then `ready`), start-up failures (`already in use`),
//! `--help`, SIGTERM/SIGINT (exit 0 within the grace period, clients see EOF,
//! pending output flushed, unix socket files removed), and restarting on the
//! same port with and without SO_REUSEADDR while the old connection sits in
//! TIME_WAIT.

mod util;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use util::*;

const T: Duration = Duration::from_secs(10);

fn v4(addr: SocketAddr) -> std::net::SocketAddrV4 {
    match addr {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(a) => panic!("expected IPv4, got {a}"),
    }
}

#[test]
fn sigterm_exits_zero_clients_see_eof_unix_files_removed() {
    let dir = TempDir::new("sigterm");
    let sock = dir.file("echo.sock");
    let dgram = dir.file("echo.dgram");
    let mut server = Server::start(serve_args(
        &[
            ("echo", "127.0.0.1:0"),
            ("echo", &format!("unix:{sock}")),
            ("udp-echo", &format!("unixgram:{dgram}")),
        ],
        &["--shutdown-grace", "2s"],
    ));
    let addr = server.tcp("echo");
    let mut tcp = server.connect("echo");
    assert_eq!(roundtrip(&mut tcp, b"tcp", T), b"tcp");
    let mut unix = UnixStream::connect(server.unix("echo")).unwrap();
    assert_eq!(roundtrip(&mut unix, b"unix", T), b"unix");
    assert!(std::path::Path::new(&sock).exists());
    assert!(std::path::Path::new(&dgram).exists());

    let t0 = Instant::now();
    server.signal(libc::SIGTERM);
    let (got, end) = read_to_end_timeout(&mut tcp, T);
    assert!(got.is_empty(), "tcp client got {got:?} after SIGTERM");
    assert_eq!(end, End::Eof, "tcp client should see EOF on shutdown");
    let (got, end) = read_to_end_timeout(&mut unix, T);
    assert!(got.is_empty(), "unix client got {got:?} after SIGTERM");
    assert_eq!(end, End::Eof, "unix client should see EOF on shutdown");

    let status = server.wait_exit(Duration::from_secs(2 + 5));
    let took = t0.elapsed();
    assert!(
        status.is_some(),
        "server still running {took:?} after SIGTERM (--shutdown-grace 2s)"
    );
    let status = status.unwrap();
    assert!(
        status.success(),
        "SIGTERM: want exit status 0, got {status}"
    );
    assert!(
        !std::path::Path::new(&sock).exists(),
        "unix socket file {sock} not removed"
    );
    assert!(
        !std::path::Path::new(&dgram).exists(),
        "unixgram socket file {dgram} not removed"
    );
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err(),
        "still accepting on {addr} after exit"
    );
}

#[test]
fn sigint_exits_zero() {
    let mut server = Server::start(serve_args(&[("echo", "127.0.0.1:0")], &[]));
    let mut c = server.connect("echo");
    assert_eq!(roundtrip(&mut c, b"x", T), b"x");
    server.signal(libc::SIGINT);
    let status = server.wait_exit(Duration::from_secs(5 + 5));
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGINT: want exit 0 within the default grace, got {status:?}"
    );
}

/// A client that never reads keeps output pending forever; the server must
/// still exit (status 0) once the grace period is over.
#[test]
fn sigterm_with_a_stuck_client_exits_after_the_grace_period() {
    let mut server = Server::start(serve_args(
        &[("echo", "127.0.0.1:0")],
        &[
            "--shutdown-grace",
            "1s",
            "--rcvbuf",
            "64KiB",
            "--sndbuf",
            "64KiB",
        ],
    ));
    let mut c = server.connect("echo");
    c.set_nonblocking(true).unwrap();
    let (sent, stop) = write_until_blocked(
        &mut c,
        &mut Rng::new(40),
        16 << 20,
        Duration::from_millis(500),
    );
    assert!(
        matches!(stop, WriteStop::Blocked),
        "setup: the non-reading client should have blocked, got {stop:?} after {} bytes",
        sent.len()
    );
    let t0 = Instant::now();
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(1 + 5));
    assert!(
        status.is_some(),
        "server still running {:?} after SIGTERM with --shutdown-grace 1s and a client that does not read",
        t0.elapsed()
    );
    let status = status.unwrap();
    assert!(
        status.success(),
        "want exit 0 after the grace period, got {status}"
    );
    eprintln!("exited {:?} after SIGTERM", t0.elapsed());
    drop(c);
}

/// Output still queued in the server at SIGTERM reaches a client that reads,
/// then EOF. Tiny socket buffers keep most of the echo queued in the server,
/// and the server has read all input before the signal (checked in
/// /proc/net/tcp), so the test is about the flush alone.
#[test]
fn sigterm_flushes_pending_output_to_a_reading_client() {
    const N: usize = 600 * 1024;
    let mut server = Server::start(serve_args(
        &[("echo", "127.0.0.1:0")],
        &[
            "--pending-pause",
            "8MiB",
            "--max-pending",
            "16MiB",
            "--sndbuf",
            "4096",
        ],
    ));
    let addr = server.tcp("echo");
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect_timeout(&addr.into(), T).unwrap();
    let mut c: TcpStream = sock.into();
    c.set_write_timeout(Some(T)).unwrap();
    let local = c.local_addr().unwrap();
    let data = Rng::new(41).bytes(N);
    c.write_all(&data)
        .expect("writing 600 KiB (the server should read it all)");

    // Wait until the server has read everything the client sent.
    let all_read = wait_until(T, || {
        let client = tcp_entry(local, addr);
        let server_side = tcp_entry(addr, local);
        matches!((client, server_side), (Some(c), Some(s)) if c.tx_queue == 0 && s.rx_queue == 0)
    });
    assert!(
        all_read,
        "setup: server did not read all input: client {:?}, server side {:?}",
        tcp_entry(local, addr),
        tcp_entry(addr, local)
    );

    server.signal(libc::SIGTERM);
    let (got, end) = read_to_end_timeout(&mut c, Duration::from_secs(20));
    assert_bytes_eq(&got, &data, "echo flushed after SIGTERM");
    assert_eq!(end, End::Eof, "after the flush the server closes cleanly");
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "want exit 0, got {status:?}"
    );
}

#[test]
fn restart_on_same_port_needs_reuseaddr_while_in_time_wait() {
    let mut first = Server::start(serve_args(&[("echo", "127.0.0.1:0")], &[]));
    let addr = first.tcp("echo");
    let port = addr.to_string();
    let mut c = first.connect("echo");
    assert_eq!(roundtrip(&mut c, b"before restart", T), b"before restart");

    // The server closes first, so its side of the connection ends in TIME_WAIT.
    first.signal(libc::SIGTERM);
    let (_, end) = read_to_end_timeout(&mut c, T);
    assert_eq!(end, End::Eof, "client should see EOF at shutdown");
    let status = first.wait_exit(T);
    assert!(
        status.is_some_and(|s| s.success()),
        "first server: want exit 0, got {status:?}"
    );
    drop(c);
    let in_time_wait = wait_until(Duration::from_secs(5), || {
        tcp_table()
            .iter()
            .any(|e| e.local == v4(addr) && e.state == TCP_TIME_WAIT)
    });
    assert!(
        in_time_wait,
        "setup: expected a TIME_WAIT socket on {addr} after the server closed first; sockets on that port: {:#?}",
        tcp_table()
            .into_iter()
            .filter(|e| e.local.port() == addr.port() || e.remote.port() == addr.port())
            .collect::<Vec<_>>()
    );

    let (status, stderr) = expect_start_failure(
        serve_cmd(serve_args(&[("echo", &port)], &["--no-reuseaddr"])),
        "--no-reuseaddr was given and the port has a connection in TIME_WAIT (is SO_REUSEADDR really off?)",
    );
    assert!(
        !status.success(),
        "--no-reuseaddr on a TIME_WAIT port: want non-zero exit, got {status}"
    );
    assert!(
        stderr.contains("already in use"),
        "stderr should say `already in use`:\n{stderr}"
    );

    let second = Server::start(serve_args(&[("echo", &port)], &[]));
    assert_eq!(
        second.tcp("echo"),
        addr,
        "restarted server should be on the same port"
    );
    assert_eq!(second.listener("echo", "tcp").opt("reuseaddr"), "on");
    assert!(echo_works(addr, T), "restarted server does not echo");
}

#[test]
fn second_server_on_same_tcp_port_fails() {
    let first = Server::start(serve_args(&[("echo", "127.0.0.1:0")], &[]));
    let addr = first.tcp("echo").to_string();
    let (status, stderr) = expect_start_failure(
        serve_cmd(serve_args(&[("echo", &addr)], &[])),
        "another server is listening on that TCP port",
    );
    assert_eq!(
        status.code(),
        Some(2),
        "an address in use is a configuration that cannot run: exit 2, got {status}"
    );
    assert!(
        stderr.contains("already in use"),
        "stderr should say `already in use`:\n{stderr}"
    );
    assert!(
        echo_works(first.tcp("echo"), T),
        "first server disturbed by the failed start"
    );
}

#[test]
fn second_server_on_same_udp_port_fails() {
    let first = Server::start(serve_args(&[("udp-echo", "127.0.0.1:0")], &[]));
    let addr = first.udp("udp-echo").to_string();
    let (status, stderr) = expect_start_failure(
        serve_cmd(serve_args(&[("udp-echo", &addr)], &[])),
        "another server has that UDP port",
    );
    assert!(!status.success(), "want non-zero exit, got {status}");
    assert!(
        stderr.contains("already in use"),
        "stderr should say `already in use`:\n{stderr}"
    );
}

#[test]
fn bad_arguments_fail_fast() {
    for (echo, extra) in [
        ("not-an-address", vec![]),
        ("127.0.0.1:0", vec!["--max-pending", "lots"]),
        ("127.0.0.1:0", vec!["--idle-timeout", "soon"]),
    ] {
        let args = serve_args(&[("echo", echo)], &extra);
        let (status, stderr) = expect_start_failure(serve_cmd(&args), "its arguments are invalid");
        assert!(
            !status.success(),
            "{args:?}: want non-zero exit, got {status}"
        );
        assert!(
            !stderr.trim().is_empty(),
            "{args:?}: stderr should explain the failure"
        );
    }
}

#[test]
fn help_lists_every_flag() {
    let mut cmd = serve_cmd(["--help"]);
    cmd.env("COLUMNS", "200");
    let Launch::Exited {
        status,
        stdout,
        stderr,
    } = Server::launch(cmd)
    else {
        panic!("`serve --help` printed `ready`");
    };
    assert!(
        status.success(),
        "`serve --help`: want exit 0, got {status}\n{stderr}"
    );
    let words: Vec<&str> = stdout
        .split(|c: char| {
            c.is_whitespace() || c == ',' || c == '[' || c == ']' || c == '=' || c == '<'
        })
        .collect();
    let flags = [
        "--echo",
        "--upper",
        "--udp-echo",
        "--udp-upper",
        "--no-echo",
        "--no-upper",
        "--no-udp-echo",
        "--no-udp-upper",
        "--max-conns",
        "--idle-timeout",
        "--shutdown-grace",
        "--pending-pause",
        "--max-pending",
        "--no-reuseaddr",
        "--reuseport",
        "--no-nodelay",
        "--rcvbuf",
        "--sndbuf",
        "--backlog",
        "--broadcast",
        "-v",
        "-q",
    ];
    let missing: Vec<&str> = flags.into_iter().filter(|f| !words.contains(f)).collect();
    assert!(
        missing.is_empty(),
        "`serve --help` does not list {missing:?}:\n{stdout}"
    );
}

#[test]
fn listening_lines_report_default_options() {
    let dir = TempDir::new("listen-default");
    let sock = dir.file("e.sock");
    let dgram = dir.file("e.dgram");
    let server = Server::start(serve_args(
        &[
            ("echo", "127.0.0.1:0"),
            ("echo", &format!("unix:{sock}")),
            ("upper", "127.0.0.1:0"),
            ("udp-echo", "127.0.0.1:0"),
            ("udp-echo", &format!("unixgram:{dgram}")),
            ("udp-upper", "127.0.0.1:0"),
        ],
        &[],
    ));
    // stdout: exactly one `listening` line per listener, then `ready`.
    let lines = server.stdout_lines();
    let ready = lines.iter().position(|l| l == "ready").unwrap();
    assert!(
        lines[..ready].iter().all(|l| l.starts_with("listening ")),
        "only `listening` lines may come before `ready`: {lines:#?}"
    );
    assert_eq!(
        server.listeners.len(),
        6,
        "one line per listener: {lines:#?}"
    );

    for service in ["echo", "upper"] {
        let l = server.listener(service, "tcp");
        assert_eq!(
            server.listeners_of(service, "tcp").len(),
            1,
            "--{service} replaces the default"
        );
        assert_eq!(l.opt("reuseaddr"), "on", "{l:?}");
        assert_eq!(l.opt("reuseport"), "off", "{l:?}");
        assert_eq!(l.opt("nodelay"), "on", "{l:?}");
        assert!(l.opt_u64("backlog") > 0, "{l:?}");
        assert!(l.opt_u64("rcvbuf") > 0, "{l:?}");
        assert!(l.opt_u64("sndbuf") > 0, "{l:?}");
        assert!(
            echo_works_or_upper(server.tcp(service)),
            "{service} over tcp"
        );
    }
    for service in ["udp-echo", "udp-upper"] {
        let l = server.listener(service, "udp");
        assert_eq!(l.opt("broadcast"), "off", "{l:?}");
        assert!(l.opt_u64("rcvbuf") > 0, "{l:?}");
        assert!(l.opt_u64("sndbuf") > 0, "{l:?}");
        let _ = server.udp(service);
    }
    assert_eq!(server.listener("echo", "unix").addr, format!("unix:{sock}"));
    assert_eq!(
        server.listener("udp-echo", "unixgram").addr,
        format!("unixgram:{dgram}")
    );
}

fn echo_works_or_upper(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, T) else {
        return false;
    };
    let got = roundtrip(&mut s, b"ok", T);
    got == b"ok" || got == b"OK"
}

#[test]
fn listening_lines_report_requested_options() {
    let server = Server::start(serve_args(
        &[("echo", "127.0.0.1:0"), ("udp-echo", "127.0.0.1:0")],
        &[
            "--no-nodelay",
            "--no-reuseaddr",
            "--reuseport",
            "--rcvbuf",
            "65536",
            "--sndbuf",
            "64KiB",
            "--backlog",
            "64",
            "--broadcast",
            "-q",
        ],
    ));
    let l = server.listener("echo", "tcp");
    assert_eq!(l.opt("nodelay"), "off", "--no-nodelay: {l:?}");
    assert_eq!(l.opt("reuseaddr"), "off", "--no-reuseaddr: {l:?}");
    assert_eq!(l.opt("reuseport"), "on", "--reuseport: {l:?}");
    assert_eq!(l.opt_u64("backlog"), 64, "--backlog 64: {l:?}");
    assert!(l.opt_u64("rcvbuf") >= 65536, "--rcvbuf 65536: {l:?}");
    assert!(l.opt_u64("sndbuf") >= 65536, "--sndbuf 64KiB: {l:?}");
    let u = server.listener("udp-echo", "udp");
    assert_eq!(u.opt("broadcast"), "on", "--broadcast: {u:?}");
    assert!(u.opt_u64("rcvbuf") >= 65536, "--rcvbuf 65536 on udp: {u:?}");
    assert!(u.opt_u64("sndbuf") >= 65536, "--sndbuf 64KiB on udp: {u:?}");
    assert!(
        echo_works(server.tcp("echo"), T),
        "echo with all options changed"
    );
}

#[test]
fn repeated_address_flags_add_listeners() {
    let server = Server::start(serve_args(
        &[("echo", "127.0.0.1:0"), ("echo", "127.0.0.1:0")],
        &["-v"],
    ));
    let echo = server.listeners_of("echo", "tcp");
    assert_eq!(
        echo.len(),
        2,
        "two --echo flags, two listeners: {:#?}",
        server.listeners
    );
    assert_ne!(echo[0].addr, echo[1].addr);
    for l in echo {
        let addr: SocketAddr = l.addr.parse().unwrap();
        assert!(echo_works(addr, T), "echo on {addr}");
    }
    assert!(
        server.listeners_of("upper", "tcp").is_empty(),
        "--no-upper: {:#?}",
        server.listeners
    );
}
