//! The `time` service over real UDP: the default format, custom formats, and every kind of bad
//! payload PROTOCOL.md names, each answered with `error: ` and the service answering after.

mod util;

use std::net::UdpSocket;
use std::time::Duration;

use util::Server;

fn time_server() -> Server {
    Server::start(util::serve_args(&[("time", "127.0.0.1:0")], &[]))
}

#[test]
fn time_answers_formats_and_errors_and_keeps_answering() {
    let server = time_server();
    let addr = server.udp("time");
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let text = |payload: &[u8]| {
        String::from_utf8(util::udp_ask(&sock, addr, payload).expect("an answer")).expect("UTF-8")
    };
    let default = text(b"");
    assert_eq!(default.len(), 19, "{default}");
    assert_eq!(&default[4..5], "-");
    assert_eq!(&default[13..14], ":");
    let blank = text(b"  \t");
    assert_eq!(
        blank.len(),
        19,
        "white space means the default format: {blank}"
    );
    assert_eq!(&blank[..10], &default[..10], "same date");
    assert_eq!(text(b"%%"), "%");
    assert_eq!(text(b"%Y").len(), 4);
    let long_c = "%c".repeat(5000);
    let long_output = "%c".repeat(120);
    for bad in [
        &b"%Q"[..],
        b"%",
        b"%-",
        b"%E",
        b"%5Y",
        b"%#z",
        b"a\0b",
        b"\xff\xfe",
        long_c.as_bytes(),
        long_output.as_bytes(),
    ] {
        let got = text(bad);
        assert!(got.starts_with("error: "), "{bad:?} -> {got}");
    }
    // Still answering.
    assert_eq!(text(b"%%"), "%");
}
