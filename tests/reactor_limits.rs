//! The reactor's limits over real sockets: backpressure (a client that does
//! not read is paused, not dropped, and loses nothing), the hard pending-output
//! limit, the bound on a held partial request (`--max-input`), `--max-conns`,
//! `--idle-timeout`, and running out of file descriptors (EMFILE) without
//! crashing, spinning or stalling.

mod util;

use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use util::*;

const T: Duration = Duration::from_secs(10);

/// Small kernel buffers keep the amount a client can write before it blocks
/// far below 16 MiB, so "writes block" can only mean "the server paused".
const SMALL_BUFS: [&str; 4] = ["--rcvbuf", "64KiB", "--sndbuf", "64KiB"];

fn prompt_echoes(server: &Server, n: usize, what: &str) {
    let mut b = server.connect("echo");
    for i in 0..n {
        let msg = format!("{what} {i}");
        let (got, end) = {
            b.write_all(msg.as_bytes()).unwrap();
            read_bounded(&mut b, Some(msg.len()), Duration::from_secs(2))
        };
        assert_eq!(
            end,
            End::Complete,
            "{what}: echo {i} of another client did not come back within 2 s"
        );
        assert_eq!(got, msg.as_bytes());
    }
}

#[test]
fn client_that_does_not_read_is_paused_not_dropped() {
    let server = Server::start(serve_args(&[("echo", "127.0.0.1:0")], &SMALL_BUFS));
    let mut a = server.connect("echo");
    a.set_nonblocking(true).unwrap();
    let (sent, stop) = write_until_blocked(
        &mut a,
        &mut Rng::new(30),
        16 << 20,
        Duration::from_millis(500),
    );
    match stop {
        WriteStop::Blocked => {}
        WriteStop::Cap => panic!(
            "wrote 16 MiB without ever blocking: the server does not stop reading from a client that does not read"
        ),
        WriteStop::Failed(e) => panic!(
            "write failed after {} bytes ({e}): the server dropped a client that was only slow to read (default limits must pause it)",
            sent.len()
        ),
    }
    eprintln!("non-reading client blocked after {} KiB", sent.len() >> 10);

    // The paused client does not hold anybody else up.
    prompt_echoes(&server, 20, "while a client is paused");

    // Now it reads, and gets every byte back in order.
    a.set_nonblocking(false).unwrap();
    let (got, end) = read_bounded(&mut a, Some(sent.len()), Duration::from_secs(30));
    assert_bytes_eq(&got, &sent, "echo to the paused client once it reads");
    assert_eq!(end, End::Complete);
    // And the connection is still good.
    assert_eq!(roundtrip(&mut a, b"after", T), b"after");
}

#[test]
fn client_that_does_not_read_is_dropped_past_max_pending() {
    let mut extra = vec!["--pending-pause", "8MiB", "--max-pending", "1MiB"];
    extra.extend(SMALL_BUFS);
    let mut server = Server::start(serve_args(&[("echo", "127.0.0.1:0")], &extra));
    let mut c = server.connect("echo");
    c.set_nonblocking(true).unwrap();
    let (sent, stop) = write_until_blocked(
        &mut c,
        &mut Rng::new(31),
        64 << 20,
        Duration::from_millis(500),
    );
    match &stop {
        WriteStop::Failed(e) => assert!(
            matches!(
                e.kind(),
                ErrorKind::BrokenPipe | ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
            ),
            "unexpected write error after {} bytes: {e}",
            sent.len()
        ),
        WriteStop::Cap => panic!(
            "wrote 64 MiB to a client that never reads and was not disconnected (--max-pending 1MiB)"
        ),
        WriteStop::Blocked => {}
    }
    // Whatever it reads now must be a prefix of what it sent, ended by the server.
    c.set_nonblocking(false).unwrap();
    let (got, end) = read_bounded(&mut c, Some(sent.len()), T);
    assert_bytes_eq(&got, &sent[..got.len()], "echo before the disconnect");
    assert!(
        end.closed(),
        "client with > 1 MiB pending output (stopped writing: {stop:?}, sent {} KiB) was not disconnected: read ended with {end:?} after {} KiB",
        sent.len() >> 10,
        got.len() >> 10
    );
    eprintln!(
        "disconnected: sent {} KiB, got {} KiB back, write stop {stop:?}, read end {end:?}",
        sent.len() >> 10,
        got.len() >> 10
    );
    server.assert_alive("after dropping a slow client");
    prompt_echoes(&server, 20, "after a client was dropped");
}

/// A `files` request frame whose header (`{"cmd":"ping"}` padded with spaces) is `h` bytes.
fn padded_ping(h: usize) -> Vec<u8> {
    let json = br#"{"cmd":"ping"}"#;
    let mut frame = u32::try_from(h).unwrap().to_le_bytes().to_vec();
    frame.extend_from_slice(&json[..json.len() - 1]);
    frame.resize(4 + h - 1, b' ');
    frame.push(b'}');
    frame
}

/// Reads one response frame's header (4-byte little-endian length, then JSON) as text.
fn read_response_header(c: &mut TcpStream) -> String {
    let (prefix, end) = read_bounded(c, Some(4), T);
    assert_eq!(end, End::Complete, "no response prefix: {end:?}");
    let h = u32::from_le_bytes(prefix.try_into().unwrap()) as usize;
    let (json, end) = read_bounded(c, Some(h), T);
    assert_eq!(end, End::Complete, "no response header: {end:?}");
    String::from_utf8(json).unwrap()
}

#[test]
fn partial_request_past_max_input_closes_that_connection_only() {
    let data = TempDir::new("max-input");
    let dir = data.path().to_str().unwrap().to_owned();
    let extra = ["--max-input", "1KiB", "--data-dir", &dir];
    let mut server = Server::start(serve_args(&[("files", "127.0.0.1:0")], &extra));

    // A client holding a partial request under the bound is kept and answered.
    let small = padded_ping(600);
    let mut ok = server.connect("files");
    ok.write_all(&small[..300]).unwrap();

    // One whose partial request passes it is disconnected (the header's announced 8000
    // bytes are under --max-header: only --max-input stops it).
    let big = padded_ping(8000);
    let mut over = server.connect("files");
    over.write_all(&big[..4000]).unwrap();
    let (got, end) = read_bounded(&mut over, None, T);
    assert!(
        end.closed() && got.is_empty(),
        "a 4000-byte partial request under --max-input 1KiB was not closed: read {} bytes, {end:?}",
        got.len()
    );

    server.assert_alive("after closing a connection past --max-input");
    ok.write_all(&small[300..]).unwrap();
    let reply = read_response_header(&mut ok);
    assert!(reply.contains(r#""ok":true"#), "{reply}");
}

#[test]
fn the_output_bound_does_not_bound_a_partial_request() {
    let data = TempDir::new("max-pending-input");
    let dir = data.path().to_str().unwrap().to_owned();
    let extra = ["--max-pending", "2KiB", "--data-dir", &dir];
    let server = Server::start(serve_args(&[("files", "127.0.0.1:0")], &extra));
    let big = padded_ping(8000);
    let mut c = server.connect("files");
    c.write_all(&big[..4000]).unwrap();
    thread::sleep(Duration::from_millis(100));
    c.write_all(&big[4000..]).unwrap();
    let reply = read_response_header(&mut c);
    assert!(reply.contains(r#""ok":true"#), "{reply}");
}

#[test]
fn max_conns_closes_extra_connections_and_recovers() {
    let server = Server::start(serve_args(
        &[("echo", "127.0.0.1:0")],
        // No per-address limit: every connection comes from 127.0.0.1.
        &["--max-conns", "5", "--max-conns-per-ip", "0"],
    ));
    let mut held: Vec<TcpStream> = (0..5)
        .map(|i| {
            let mut c = server.connect("echo");
            let msg = format!("conn {i}");
            assert_eq!(
                roundtrip(&mut c, msg.as_bytes(), T),
                msg.as_bytes(),
                "connection {i} within the limit"
            );
            c
        })
        .collect();

    let mut sixth = server.connect("echo");
    let r = probe(&mut sixth, Duration::from_secs(5));
    assert!(
        r.closed(),
        "6th connection past --max-conns 5: want EOF/reset without echo, got {r:?}"
    );
    assert!(
        server.wait_stderr_contains("max-conns", Duration::from_secs(5)),
        "stderr should mention max-conns:\n{}",
        server.stderr()
    );

    for (i, c) in held.iter_mut().enumerate() {
        assert_eq!(roundtrip(c, b"still", T), b"still", "held connection {i}");
    }

    drop(held.pop());
    let mut tries = 0;
    let mut kept = None;
    let served = wait_until(Duration::from_secs(10), || {
        tries += 1;
        let mut c = server.connect("echo");
        if probe(&mut c, Duration::from_secs(2)) == End::Complete {
            kept = Some(c);
            true
        } else {
            false
        }
    });
    assert!(
        served,
        "after closing one of 5 connections, no new connection was served within 10 s ({tries} tries)"
    );
    let mut kept = kept.unwrap();
    assert_eq!(roundtrip(&mut kept, b"five", T), b"five");
    // The limit still holds with 4 + 1 open.
    let mut over = server.connect("echo");
    let r = probe(&mut over, Duration::from_secs(5));
    assert!(r.closed(), "limit not enforced after recovery: got {r:?}");
}

#[test]
fn idle_connections_are_closed_active_ones_kept() {
    let server = Server::start(serve_args(
        &[("echo", "127.0.0.1:0")],
        &["--idle-timeout", "1s"],
    ));

    let mut idle = server.connect("echo");
    let idle_thread = thread::spawn(move || {
        let t0 = Instant::now();
        let (got, end) = read_to_end_timeout(&mut idle, T);
        (got, end, t0.elapsed())
    });

    let mut active = server.connect("echo");
    let t0 = Instant::now();
    let mut n = 0;
    while t0.elapsed() < Duration::from_secs(3) {
        let msg = format!("tick {n}");
        let (got, end) = {
            active
                .write_all(msg.as_bytes())
                .expect("active connection write");
            read_bounded(&mut active, Some(msg.len()), Duration::from_secs(2))
        };
        assert_eq!(
            end,
            End::Complete,
            "active connection (one message every 200 ms) lost after {:?}",
            t0.elapsed()
        );
        assert_eq!(got, msg.as_bytes());
        n += 1;
        // Pacing of the traffic, not a wait for a condition.
        thread::sleep(Duration::from_millis(200));
    }

    let (got, end, after) = idle_thread.join().unwrap();
    assert!(got.is_empty(), "idle connection received {got:?}");
    assert!(
        end.closed(),
        "idle connection not closed within {T:?} with --idle-timeout 1s: {end:?}"
    );
    assert!(
        after >= Duration::from_millis(900),
        "idle connection closed after only {after:?}, before the 1 s timeout"
    );
    eprintln!("idle connection closed after {after:?}; active one did {n} round trips");
}

/// Nothing but the deadline wakes this server: the poll sleeps without a timeout and the
/// alarm (a timerfd) must ring for the idle check. A reactor that lost its alarm would never
/// close the connection.
#[test]
fn an_idle_timeout_fires_on_a_server_with_nothing_else_to_do() {
    let server = Server::start(serve_args(
        &[("echo", "127.0.0.1:0")],
        &["--idle-timeout", "1s"],
    ));
    let mut idle = server.connect("echo");
    let t0 = Instant::now();
    let (got, end) = read_to_end_timeout(&mut idle, Duration::from_secs(5));
    let after = t0.elapsed();
    assert!(got.is_empty(), "idle connection received {got:?}");
    assert!(
        end.closed(),
        "the only connection, idle, was not closed within 5 s of a 1 s idle timeout: {end:?}"
    );
    assert!(
        after >= Duration::from_millis(900),
        "idle connection closed after only {after:?}, before the 1 s timeout"
    );
}

/// Started with a soft RLIMIT_NOFILE of 256 under a higher hard limit, the
/// server raises its soft limit to the hard one, and so serves 300 clients.
#[test]
fn server_raises_its_own_nofile_limit() {
    const CONNS: usize = 300;
    raise_nofile_limit();
    let mut server = Server::start_cmd(serve_cmd_with_ulimit(
        "-S -n 256",
        serve_args(&[("echo", "127.0.0.1:0")], &[]),
    ));
    let (soft, hard) = nofile_limits(server.pid());
    assert_eq!(
        soft, hard,
        "server's soft RLIMIT_NOFILE should be raised to the hard limit"
    );
    if hard != "unlimited" && hard.parse::<usize>().unwrap() < CONNS + 100 {
        eprintln!("hard limit {hard} too low to check {CONNS} connections; skipped that part");
        return;
    }
    let mut conns: Vec<TcpStream> = (0..CONNS).map(|_| server.connect("echo")).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        let r = probe(c, T);
        assert_eq!(
            r,
            End::Complete,
            "connection {i} of {CONNS} (soft limit was 256) not served"
        );
    }
    server.assert_alive("with 300 connections");
}

/// Run under `ulimit -n 40`: the server must shed what it cannot accept, not
/// crash, spin or stall, and serve again once descriptors are free.
#[test]
fn out_of_file_descriptors_sheds_without_spinning_and_recovers() {
    const HOLD: usize = 60;
    let mut server = Server::start_cmd(serve_cmd_with_nofile(
        40,
        serve_args(&[("echo", "127.0.0.1:0")], &[]),
    ));
    let addr = server.tcp("echo");
    let pid = server.pid();

    let mut conns: Vec<TcpStream> = (0..HOLD)
        .map(|i| {
            TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("connect #{i}: {e}"))
        })
        .collect();
    for c in &mut conns {
        let _ = c.write_all(b"p");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut echoed, mut shed, mut silent) = (0, 0, 0);
    for c in &mut conns {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(20));
        match read_bounded(c, Some(1), left) {
            (_, End::Complete) => echoed += 1,
            (_, End::Eof | End::Reset) => shed += 1,
            (_, End::TimedOut) => silent += 1,
        }
    }
    eprintln!(
        "of {HOLD} connections under ulimit -n 40: {echoed} echoed, {shed} shed, {silent} silent"
    );
    server.assert_alive("while out of file descriptors");
    assert!(echoed >= 1, "no connection was served at all");
    assert!(
        echoed <= 40,
        "{echoed} connections served with only 40 descriptors?"
    );
    assert!(
        shed >= 1,
        "no connection beyond the descriptor limit was shed (closed): {echoed} echoed, {silent} silent"
    );
    assert!(
        server.wait_stderr_contains("file descriptors", Duration::from_secs(5)),
        "stderr should mention file descriptors:\n{}",
        server.stderr()
    );

    // No busy loop while the excess is pending: CPU time over a 2 s window.
    let cpu0 = cpu_time(pid);
    thread::sleep(Duration::from_secs(2));
    let cpu1 = cpu_time(pid);
    assert!(
        cpu1 - cpu0 <= Duration::from_millis(500),
        "server used {:?} of CPU in 2 s while out of descriptors: it is spinning",
        cpu1 - cpu0
    );
    server.assert_alive("after the CPU window");

    // Free everything; new connections must be served again.
    drop(conns);
    assert!(
        wait_until(T, || echo_works(addr, Duration::from_secs(1))),
        "no new connection served within {T:?} after descriptors were freed"
    );
    let mut again: Vec<TcpStream> = (0..20).map(|_| server.connect("echo")).collect();
    for (i, c) in again.iter_mut().enumerate() {
        let msg = format!("again {i}");
        let (got, end) = {
            c.write_all(msg.as_bytes()).unwrap();
            read_bounded(c, Some(msg.len()), T)
        };
        assert_eq!(
            end,
            End::Complete,
            "connection {i} of 20 after recovery not served"
        );
        assert_eq!(got, msg.as_bytes());
    }
    server.assert_alive("after recovery");
}
