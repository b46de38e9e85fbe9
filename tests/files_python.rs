//! The classic Python upload client of the socket tutorials against `files`: a script that
//! sends `struct.pack('i', len(header))`, a JSON header with `filesize`, then the file in
//! 1024-byte pieces, and reads the response frame. The test then checks over its own socket
//! that `list` shows the file with the right size and md5, and `get` returns its bytes.
//! Skipped, with a message, only when `python3` is not on PATH.

mod util;

#[path = "files_support/mod.rs"]
mod files_support;

use std::process::{Command, Stdio};
use std::time::Duration;

use files_support::*;
use serde_json::{Value, json};

/// The lesson's client, unchanged in spirit: header length with struct.pack('i'), the header,
/// then the file 1024 bytes at a time with sock.send.
const CLIENT: &str = r#"
import json
import os
import socket
import struct
import sys

host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
name = os.path.basename(path)
size = os.path.getsize(path)

sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.settimeout(20)
sock.connect((host, port))

header = json.dumps({'cmd': 'put', 'filename': name, 'filesize': size}).encode('utf-8')
sock.send(struct.pack('i', len(header)))
sock.send(header)
with open(path, 'rb') as f:
    while True:
        data = f.read(1024)
        if not data:
            break
        sock.send(data)

def recv_exact(n):
    buf = b''
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise SystemExit('connection closed after %d of %d bytes' % (len(buf), n))
        buf += chunk
    return buf

h = struct.unpack('i', recv_exact(4))[0]
response = json.loads(recv_exact(h).decode('utf-8'))
recv_exact(response.get('size', 0))
sock.close()
print(json.dumps(response))
"#;

#[test]
fn the_classic_python_upload_client_is_understood() {
    if !on_path("python3") {
        eprintln!("SKIPPED the_classic_python_upload_client_is_understood: python3 is not on PATH");
        return;
    }
    let scratch = Scratch::new("python");
    let server = start(&scratch, &[]);
    let addr = server.tcp("files");

    let script = scratch.root.path().join("upload_client.py");
    std::fs::write(&script, CLIENT).unwrap();
    // Not a multiple of 1024, so the last piece is short.
    let data = util::Rng::new(0x5059).bytes(200 * 1024 + 123);
    let file = scratch.root.path().join("lesson.bin");
    std::fs::write(&file, &data).unwrap();
    let want = md5_hex(&data);

    let mut child = Command::new("python3")
        .arg(&script)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3");
    let finished = util::wait_until(Duration::from_secs(30), || {
        child.try_wait().expect("try_wait").is_some()
    });
    if !finished {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("python3 output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        finished,
        "the python client did not finish within 30 s\n{stderr}"
    );
    assert!(
        out.status.success(),
        "the python client failed with {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status
    );
    let response: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("the client printed {stdout:?}: {e}"));
    assert_eq!(response["ok"], json!(true), "{response}");
    assert_eq!(response["cmd"], json!("put"), "{response}");
    assert_eq!(response["filename"], json!("lesson.bin"), "{response}");
    assert_eq!(response["filesize"], json!(data.len()), "{response}");
    assert_eq!(response["md5"], json!(want), "{response}");

    let mut s = connect(&server);
    let r = call(&mut s, json!({"cmd": "list"}), b"");
    r.assert_ok("list");
    let list: Value = serde_json::from_slice(&r.body).expect("list body is JSON");
    assert_eq!(
        list,
        json!([{"name": "lesson.bin", "size": data.len(), "md5": want}]),
        "list after the python upload"
    );
    let r = call(&mut s, json!({"cmd": "get", "filename": "lesson.bin"}), b"");
    r.assert_ok("get");
    assert_eq!(r.get("md5"), &json!(want));
    assert!(
        r.body == data,
        "the stored bytes differ from the file uploaded"
    );
}
