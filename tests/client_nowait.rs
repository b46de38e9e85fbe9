//! The files commands without a secret send their request at once (no wait for a challenge
//! that a server without authentication never sends): a plain TCP listener here that never
//! speaks first must see the request promptly after it accepts, and its pong gets printed.

mod util;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The longest anything here may take.
const BOUND: Duration = Duration::from_secs(20);

/// How soon after the accept the request's first byte must arrive. The client used to wait
/// `CHALLENGE_WAIT` (250 ms) for a challenge before sending; with no wait, the first byte
/// follows the connect by well under a millisecond. 200 ms leaves room for a loaded machine
/// while still failing on any wait of 250 ms.
const PROMPT: Duration = Duration::from_millis(200);

#[test]
fn ping_without_a_secret_sends_before_the_server_says_anything() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut child = Command::new(util::bin())
        .args(["ping", "--addr", &addr])
        .env_remove("SOCKLAB_SECRET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut conn = None;
    let accepted = util::wait_until(BOUND, || match listener.accept() {
        Ok((s, _)) => {
            conn = Some(s);
            true
        }
        Err(_) => false,
    });
    assert!(accepted, "socklab ping never connected");
    let mut conn = conn.unwrap();
    let at = Instant::now();
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(BOUND)).unwrap();
    let mut prefix = [0u8; 4];
    conn.read_exact(&mut prefix).unwrap();
    let waited = at.elapsed();
    let h = u32::from_le_bytes(prefix) as usize;
    assert!(h < 1024, "header length {h}");
    let mut header = vec![0u8; h];
    conn.read_exact(&mut header).unwrap();
    let header: serde_json::Value = serde_json::from_slice(&header).unwrap();
    assert_eq!(header["cmd"], "ping", "{header}");
    let pong = br#"{"ok":true,"size":0}"#;
    let mut frame = (pong.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(pong);
    conn.write_all(&frame).unwrap();
    let status = util::wait_child(&mut child, BOUND).expect("socklab ping did not exit");
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "exit {status}: {stderr}");
    assert!(
        stdout.starts_with(&format!("pong from {addr} in ")),
        "{stdout:?}"
    );
    assert!(
        waited < PROMPT,
        "the request came {waited:?} after the accept: the client waited for a challenge"
    );
}
