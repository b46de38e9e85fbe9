//! What the coverage-guided fuzz targets in `fuzz/` found, each as a regression test over real
//! sockets against a real `socklab serve` (the unit tests beside the code hold the reduced
//! inputs). Each test names the target that found it.

mod util;

use std::io::Write;
use std::net::Shutdown;
use std::time::Duration;

use util::*;

/// Far below the idle timeout (300 s), which was all that closed these connections before.
const T: Duration = Duration::from_secs(5);

/// `conn_path`: a client that sends part of a request and then shuts down its sending side
/// can never complete it, yet the server kept the connection (and its slot) open until a
/// timeout; with `--request-timeout 0` that was the idle timeout. It closes at once now.
#[test]
fn a_partial_request_then_a_half_close_is_closed_at_once() {
    let dir = TempDir::new("fuzz-partial");
    let data = dir.file("data");
    let listeners = [
        ("chat", "127.0.0.1:0"),
        ("metrics", "127.0.0.1:0"),
        ("files", "127.0.0.1:0"),
    ];
    let extra = [
        "--data-dir",
        &data,
        "--request-timeout",
        "0",
        "--handshake-timeout",
        "0",
    ];
    let server = Server::start(serve_args(&listeners, &extra));
    let partials: [(&str, &[u8]); 3] = [
        ("chat", b"a line with no end"),
        ("metrics", b"GET /metr"),
        ("files", b"\x20\0\0\0{\"cmd\""),
    ];
    for (service, partial) in partials {
        let mut s = server.connect(service);
        s.write_all(partial).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let (_, end) = read_bounded(&mut s, None, T);
        assert!(end.closed(), "{service}: still open after {T:?} ({end:?})");
    }
}
