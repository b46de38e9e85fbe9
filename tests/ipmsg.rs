//! `socklab ipmsg` against a stand-in IP Messenger client: a UDP socket in the test that
//! decodes the datagram, checks its fields and answers with a receipt (or stays silent).
//!
//! Every wait is bounded: socket reads have timeouts, and the command's exit is awaited on a
//! channel with a deadline.

use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Longest any step may take before the test fails.
const BOUND: Duration = Duration::from_secs(20);

/// Starts `socklab ipmsg ARGS...` and returns a receiver for its output.
fn spawn_ipmsg(args: &[&str]) -> mpsc::Receiver<std::io::Result<Output>> {
    let child = Command::new(env!("CARGO_BIN_EXE_socklab"))
        .arg("ipmsg")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn socklab");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    rx
}

/// Waits for the command's output, at most BOUND.
fn finish(rx: &mpsc::Receiver<std::io::Result<Output>>) -> Output {
    rx.recv_timeout(BOUND)
        .expect("socklab ipmsg exits within the bound")
        .expect("wait for socklab ipmsg")
}

/// A stand-in client on an ephemeral loopback port.
fn receiver() -> (UdpSocket, SocketAddr) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.set_read_timeout(Some(BOUND)).expect("timeout");
    let addr = socket.local_addr().expect("addr");
    (socket, addr)
}

/// The six fields of a datagram decoded from `encoding`.
fn fields(datagram: &[u8], encoding: &'static encoding_rs::Encoding) -> Vec<String> {
    let (text, had_errors) = encoding.decode_without_bom_handling(datagram);
    assert!(!had_errors, "{datagram:?} is not valid {}", encoding.name());
    text.splitn(6, ':').map(str::to_owned).collect()
}

/// Receives one datagram, checks it, and answers with a receipt for its packet number in
/// `encoding`. Returns the fields it got.
fn answer_one(socket: &UdpSocket, encoding: &'static encoding_rs::Encoding) -> Vec<String> {
    let mut buf = [0u8; 9000];
    let (n, from) = socket
        .recv_from(&mut buf)
        .expect("a datagram within the bound");
    let f = fields(&buf[..n], encoding);
    assert_eq!(f.len(), 6, "{f:?}");
    let receipt = format!("1:{}:recv:主机:33:{}", 7, f[1]);
    let (bytes, _, unmappable) = encoding.encode(&receipt);
    assert!(!unmappable);
    socket.send_to(&bytes, from).expect("send receipt");
    f
}

fn assert_sent_message(f: &[String], text: &str) {
    assert_eq!(f[0], "1", "version");
    let packet_no: u64 = f[1].parse().expect("numeric packet number");
    assert!(packet_no > 0);
    assert_eq!(f[2], "tester", "user");
    assert!(!f[3].is_empty(), "host");
    assert_eq!(f[4], "288", "IPMSG_SENDMSG | IPMSG_SENDCHECKOPT");
    assert_eq!(f[5], text);
}

#[test]
fn gbk_message_gets_its_receipt() {
    let (socket, addr) = receiver();
    let text = "hello：世界 a:b";
    let rx = spawn_ipmsg(&[
        &addr.to_string(),
        text,
        "--encoding",
        "gbk",
        "--user",
        "tester",
        "--timeout",
        "10000",
    ]);
    let f = answer_one(&socket, encoding_rs::GBK);
    assert_sent_message(&f, text);
    let out = finish(&rx);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout.trim(), format!("receipt received from {addr}"));
    // Exactly one datagram: nothing more arrives once the command has finished.
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    assert!(socket.recv_from(&mut buf).is_err(), "a second datagram");
}

#[test]
fn utf8_message_gets_its_receipt() {
    let (socket, addr) = receiver();
    let text = "hello：世界 a:b 😀";
    let rx = spawn_ipmsg(&[
        &addr.to_string(),
        text,
        "--user",
        "tester",
        "--timeout",
        "10000",
    ]);
    let f = answer_one(&socket, encoding_rs::UTF_8);
    assert_sent_message(&f, text);
    let out = finish(&rx);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("receipt received from {addr}")
    );
}

#[test]
fn silent_receiver_means_exit_1_after_the_timeout() {
    let (socket, addr) = receiver();
    let started = Instant::now();
    let rx = spawn_ipmsg(&[&addr.to_string(), "anyone?", "--timeout", "300"]);
    // The datagram arrives; no receipt is sent.
    let mut buf = [0u8; 9000];
    socket
        .recv_from(&mut buf)
        .expect("a datagram within the bound");
    let out = finish(&rx);
    let elapsed = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "no receipt within 300 ms"
    );
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
}

#[test]
fn receipt_for_another_packet_is_ignored() {
    let (socket, addr) = receiver();
    let rx = spawn_ipmsg(&[&addr.to_string(), "hi", "--timeout", "500"]);
    let mut buf = [0u8; 9000];
    let (n, from) = socket
        .recv_from(&mut buf)
        .expect("a datagram within the bound");
    let f = fields(&buf[..n], encoding_rs::UTF_8);
    let other: u64 = f[1].parse::<u64>().expect("number").wrapping_add(1);
    socket
        .send_to(format!("1:7:recv:host:33:{other}").as_bytes(), from)
        .expect("send");
    let out = finish(&rx);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "no receipt within 500 ms"
    );
}

#[test]
fn unencodable_text_sends_nothing() {
    let (socket, addr) = receiver();
    let rx = spawn_ipmsg(&[&addr.to_string(), "😀", "--encoding", "gbk"]);
    let out = finish(&rx);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("GBK cannot encode"));
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    assert!(socket.recv_from(&mut buf).is_err(), "nothing is sent");
}
