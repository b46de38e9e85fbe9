//! `echo` and `upper` over TCP against a real `socklab serve`: every byte back
//! in order, ASCII-only upper-casing with UTF-8 passed through, and half-close
//! (the server delivers everything still pending, then closes).

mod util;

use std::io::Write;
use std::net::Shutdown;
use std::thread;
use std::time::Duration;

use util::*;

const T: Duration = Duration::from_secs(10);

fn tcp_server() -> Server {
    Server::start(serve_args(
        &[("echo", "127.0.0.1:0"), ("upper", "127.0.0.1:0")],
        &[],
    ))
}

fn all_bytes() -> Vec<u8> {
    (0..=255u8).collect()
}

#[test]
fn tcp_echo_returns_every_byte_value() {
    let server = tcp_server();
    let mut c = server.connect("echo");
    let data = all_bytes().repeat(4);
    let got = roundtrip(&mut c, &data, T);
    assert_bytes_eq(&got, &data, "echo of all byte values");
    // The connection stays usable for more exchanges.
    let got = roundtrip(&mut c, b"again\n", T);
    assert_eq!(got, b"again\n");
}

#[test]
fn tcp_echo_many_small_writes_in_order() {
    let server = tcp_server();
    let mut c = server.connect("echo");
    let mut rng = Rng::new(1);
    let data = rng.bytes(200_000);
    let mut reader = c.try_clone().unwrap();
    let expect = data.clone();
    let h = thread::spawn(move || read_exact_timeout(&mut reader, expect.len(), T));
    let mut off = 0;
    while off < data.len() {
        let n = rng.range(1, 700).min(data.len() - off);
        c.write_all(&data[off..off + n]).unwrap();
        off += n;
    }
    let got = h.join().unwrap();
    assert_bytes_eq(&got, &data, "echo of 200 kB in small writes");
}

#[test]
fn tcp_upper_maps_ascii_only() {
    let server = tcp_server();
    let mut c = server.connect("upper");
    let got = roundtrip(&mut c, b"hello, World! 123 az AZ `{@[", T);
    assert_eq!(got, b"HELLO, WORLD! 123 AZ AZ `{@[".to_vec());

    // UTF-8: only the ASCII letters change; é, ß, ж, ÿ and emoji pass unchanged.
    let text = "héllo wörld ß жук ÿ 🦀 straße";
    let got = roundtrip(&mut c, text.as_bytes(), T);
    assert_eq!(
        String::from_utf8(got).expect("upper broke UTF-8"),
        "HéLLO WöRLD ß жук ÿ 🦀 STRAßE"
    );

    // Every byte value: exactly a-z change.
    let data = all_bytes();
    let got = roundtrip(&mut c, &data, T);
    assert_bytes_eq(&got, &upper(&data), "upper of all byte values");
}

#[test]
fn tcp_upper_large_random_stream() {
    let server = tcp_server();
    let mut c = server.connect("upper");
    let data = Rng::new(2).bytes(300_000);
    let mut reader = c.try_clone().unwrap();
    let n = data.len();
    let h = thread::spawn(move || read_exact_timeout(&mut reader, n, T));
    c.write_all(&data).unwrap();
    let got = h.join().unwrap();
    assert_bytes_eq(&got, &upper(&data), "upper of 300 kB random bytes");
}

#[test]
fn half_close_small_message_then_eof() {
    let server = tcp_server();
    for service in ["echo", "upper"] {
        let mut c = server.connect(service);
        c.write_all(b"bye now").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let (got, end) = read_to_end_timeout(&mut c, T);
        let want: &[u8] = if service == "echo" {
            b"bye now"
        } else {
            b"BYE NOW"
        };
        assert_eq!(got, want, "{service}: bytes before EOF");
        assert_eq!(
            end,
            End::Eof,
            "{service}: after half-close the server must close cleanly"
        );
    }
}

#[test]
fn half_close_streamed_megabyte_then_eof() {
    let server = tcp_server();
    let c = server.connect("echo");
    let data = Rng::new(3).bytes(1 << 20);
    let mut writer = c.try_clone().unwrap();
    let to_send = data.clone();
    let h = thread::spawn(move || {
        let mut rng = Rng::new(4);
        let mut off = 0;
        while off < to_send.len() {
            let n = rng.range(1, 16384).min(to_send.len() - off);
            writer.write_all(&to_send[off..off + n]).unwrap();
            off += n;
        }
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut c = c;
    let (got, end) = read_to_end_timeout(&mut c, Duration::from_secs(30));
    h.join().unwrap();
    assert_bytes_eq(&got, &data, "echo of 1 MiB before EOF");
    assert_eq!(end, End::Eof, "stream must end with EOF after all bytes");
}

/// The client half-closes while most of its echo is still queued in the
/// server (tiny socket buffers on both sides keep it there); the server must
/// deliver all of it before closing.
#[test]
fn half_close_delivers_pending_output_then_eof() {
    let server = Server::start(serve_args(
        &[("echo", "127.0.0.1:0")],
        &["--sndbuf", "4096"],
    ));
    let addr = server.tcp("echo");
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect_timeout(&addr.into(), T).unwrap();
    let mut c: std::net::TcpStream = sock.into();
    c.set_write_timeout(Some(T)).unwrap();

    // 200 KiB stays below the default pending-pause (256 KiB), so the server
    // reads all of it; with ~16 KiB of socket buffers, most is pending in the server.
    let data = Rng::new(5).bytes(200 * 1024);
    c.write_all(&data).unwrap();
    c.shutdown(Shutdown::Write).unwrap();

    let (got, end) = read_to_end_timeout(&mut c, Duration::from_secs(20));
    assert_bytes_eq(&got, &data, "echo delivered after half-close");
    assert_eq!(end, End::Eof);
    server_still_serves(&server);
}

fn server_still_serves(server: &Server) {
    assert!(
        echo_works(server.tcp("echo"), T),
        "server stopped serving new connections"
    );
}
