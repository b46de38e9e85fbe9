//! Unix stream sockets: `echo` and `upper` over `unix:PATH`, half-close, a
//! stale socket file replaced silently, a live one refused with `already in
//! use` (and left alone), and the file removed on clean shutdown.

mod util;

use std::io::Write;
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use util::*;

const T: Duration = Duration::from_secs(10);

fn connect(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {path:?}: {e}"));
    s.set_read_timeout(Some(T)).unwrap();
    s.set_write_timeout(Some(T)).unwrap();
    s
}

fn unix_server(dir: &TempDir) -> Server {
    let echo = format!("unix:{}", dir.file("echo.sock"));
    let upper = format!("unix:{}", dir.file("upper.sock"));
    Server::start(serve_args(&[("echo", &echo), ("upper", &upper)], &[]))
}

#[test]
fn unix_echo_and_upper() {
    let dir = TempDir::new("unix");
    let server = unix_server(&dir);
    assert_eq!(server.unix("echo"), dir.path().join("echo.sock"));
    assert_eq!(server.unix("upper"), dir.path().join("upper.sock"));

    let mut e = connect(&server.unix("echo"));
    let data = Rng::new(20).bytes(100_000);
    let mut reader = e.try_clone().unwrap();
    let n = data.len();
    let h = std::thread::spawn(move || read_exact_timeout(&mut reader, n, T));
    e.write_all(&data).unwrap();
    assert_bytes_eq(&h.join().unwrap(), &data, "unix echo");

    let mut u = connect(&server.unix("upper"));
    let got = roundtrip(&mut u, "mixed Case ünïcödé ok".as_bytes(), T);
    assert_eq!(String::from_utf8(got).unwrap(), "MIXED CASE üNïCöDé OK");
    let all: Vec<u8> = (0..=255u8).collect();
    assert_eq!(roundtrip(&mut u, &all, T), upper(&all));
}

#[test]
fn unix_half_close_then_eof() {
    let dir = TempDir::new("unix-half");
    let server = unix_server(&dir);
    let mut c = connect(&server.unix("upper"));
    c.write_all(b"last words").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let (got, end) = read_to_end_timeout(&mut c, T);
    assert_eq!(got, b"LAST WORDS");
    assert_eq!(end, End::Eof);
}

#[test]
fn stale_socket_file_is_replaced_and_removed_on_shutdown() {
    let dir = TempDir::new("unix-stale");
    let path = dir.path().join("stale.sock");
    // A socket file nobody accepts on: bound, then the listener dropped.
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists(), "test setup: stale socket file should exist");
    // Another test thread forking a server while the listener was open leaves a copy of its
    // descriptor in the child until that child execs (close-on-exec), so the socket can
    // accept for a moment after the drop: wait for the refusal rather than expect it at once.
    assert!(
        wait_until(T, || UnixStream::connect(&path).is_err()),
        "test setup: stale socket should refuse connections"
    );

    let mut server = Server::start(serve_args(
        &[("echo", &format!("unix:{}", path.display()))],
        &[],
    ));
    let mut c = connect(&server.unix("echo"));
    assert_eq!(roundtrip(&mut c, b"fresh", T), b"fresh");
    drop(c);

    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM: want exit 0, got {status:?}"
    );
    assert!(
        !path.exists(),
        "socket file {path:?} left behind after clean shutdown"
    );
}

#[test]
fn live_socket_path_is_refused_and_left_alone() {
    let dir = TempDir::new("unix-live");
    let path = dir.path().join("live.sock");
    let listener = UnixListener::bind(&path).unwrap();

    let (status, stderr) = expect_start_failure(
        serve_cmd(serve_args(
            &[("echo", &format!("unix:{}", path.display()))],
            &[],
        )),
        "another listener is live on the unix socket path",
    );
    assert!(!status.success(), "want non-zero exit, got {status}");
    assert!(
        stderr.contains("already in use"),
        "stderr should say `already in use`:\n{stderr}"
    );
    assert!(path.exists(), "the live socket file {path:?} was deleted");

    // And the original listener still works through that path. First drop
    // whatever the server's probe left in the backlog.
    listener.set_nonblocking(true).unwrap();
    while listener.accept().is_ok() {}
    listener.set_nonblocking(false).unwrap();
    let mut c = connect(&path);
    let (mut s, _) = listener.accept().unwrap();
    c.write_all(b"mine").unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    assert_eq!(read_exact_timeout(&mut s, 4, T), b"mine");
}
