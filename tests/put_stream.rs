//! `socklab put` from a pipe, `-` (stdin), `/dev/stdin` and a FIFO against a real server: the
//! size is learned by reading (the client spools to an unlinked temporary file, hashing as it
//! goes), the stored bytes and md5 are the ones sent, and the printed size is right. `put -`
//! without `--as` is refused with a clear message.

mod util;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::Duration;

use util::{Server, TempDir};

const BOUND: Duration = Duration::from_secs(20);

fn start(dir: &TempDir) -> (Server, String) {
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let server = Server::start(util::serve_args(
        &[("files", "127.0.0.1:0")],
        &["--data-dir", data.to_str().unwrap()],
    ));
    let addr = server.tcp("files").to_string();
    (server, addr)
}

/// Waits (bounded) for `child`, reading its stdout and stderr.
fn finish(child: std::process::Child, what: &str) -> Output {
    util::finish_child(child, BOUND, what)
}

/// `socklab ARGS` with `input` written to its stdin through a pipe.
fn run_piped(args: &[&str], input: &[u8]) -> Output {
    let mut cmd = Command::new(util::bin());
    cmd.args(args);
    util::run_with_input(cmd, input, BOUND)
}

/// A payload of `n` bytes that is not all one byte.
fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// The md5 of `bytes`, by `md5sum` (an outside opinion).
fn md5sum(bytes: &[u8]) -> String {
    let mut child = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("md5sum");
    let mut stdin = child.stdin.take().unwrap();
    let input = bytes.to_vec();
    let w = thread::spawn(move || stdin.write_all(&input).unwrap());
    let out = child.wait_with_output().unwrap();
    w.join().unwrap();
    String::from_utf8(out.stdout).unwrap()[..32].to_owned()
}

/// Checks the printed line, and that `get` returns exactly `want` under `name`.
#[track_caller]
fn assert_stored(out: &Output, addr: &str, name: &str, want: &[u8], dir: &TempDir) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "put {name}: {}: {stderr}", out.status);
    let md5 = md5sum(want);
    let line = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        line.trim_end(),
        format!("stored {name}: {} bytes, md5 {md5}", want.len())
    );
    let dest = dir.path().join(format!("got-{name}"));
    let got = run_piped(
        &["get", name, "--addr", addr, "-o", dest.to_str().unwrap()],
        b"",
    );
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        want,
        "stored bytes of {name}"
    );
}

#[test]
fn put_dash_reads_stdin() {
    let dir = TempDir::new("put-dash");
    let (_server, addr) = start(&dir);
    let out = run_piped(&["put", "-", "--as", "p.txt", "--addr", &addr], b"data\n");
    assert_stored(&out, &addr, "p.txt", b"data\n", &dir);
    // Larger than one read, and than the pipe's buffer.
    let big = payload(3 * 1024 * 1024 + 17);
    let out = run_piped(&["put", "-", "--as", "big.bin", "--addr", &addr], &big);
    assert_stored(&out, &addr, "big.bin", &big, &dir);
    // Nothing at all is an empty file, said so.
    let out = run_piped(&["put", "-", "--as", "empty", "--addr", &addr], b"");
    assert_stored(&out, &addr, "empty", b"", &dir);
}

#[test]
fn put_dev_stdin_reads_the_pipe() {
    let dir = TempDir::new("put-devstdin");
    let (_server, addr) = start(&dir);
    let out = run_piped(
        &["put", "/dev/stdin", "--as", "p.txt", "--addr", &addr],
        b"data\n",
    );
    assert_stored(&out, &addr, "p.txt", b"data\n", &dir);
}

#[test]
fn put_reads_a_fifo() {
    let dir = TempDir::new("put-fifo");
    let (_server, addr) = start(&dir);
    let fifo = dir.path().join("fifo");
    let st = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(st.success());
    let want = payload(200_000);
    let child = Command::new(util::bin())
        .args(["put", fifo.to_str().unwrap(), "--addr", &addr])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (path, bytes) = (fifo.clone(), want.clone());
    // Opening a FIFO for writing blocks until the reader opens it: the client does.
    let writer = thread::spawn(move || {
        let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.write_all(&bytes).unwrap();
    });
    let out = finish(child, "put FIFO");
    writer.join().unwrap();
    assert_stored(&out, &addr, "fifo", &want, &dir);
}

#[test]
fn put_dash_without_as_is_refused() {
    let dir = TempDir::new("put-dash-noname");
    let (_server, addr) = start(&dir);
    let out = run_piped(&["put", "-", "--addr", &addr], b"data\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("put -") && stderr.contains("--as NAME"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

/// The client's connection reaches the server through this relay, which appends to `grow`
/// after accepting it (the client has fixed the size it announces by then) and only then
/// relays, so the file grows while it is sent, however fast the machine — provided the file
/// is larger than what the socket buffers can take before anyone reads (else the client can
/// send it all and look at its size again before the relay has appended: it failed so, 1 in
/// about 30 runs, with 1 MiB).
fn relay_growing(server: &str, grow: std::path::PathBuf) -> (String, thread::JoinHandle<()>) {
    use std::net::{Shutdown, TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = server.to_owned();
    let relay = thread::spawn(move || {
        let (client, _) = listener.accept().unwrap();
        let mut f = std::fs::OpenOptions::new().append(true).open(grow).unwrap();
        f.write_all(&[b'x'; 64 * 1024]).unwrap();
        let upstream = TcpStream::connect(server).unwrap();
        for s in [&client, &upstream] {
            s.set_read_timeout(Some(BOUND)).unwrap();
        }
        let (mut c_in, mut u_out) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
        let up = thread::spawn(move || {
            let _ = std::io::copy(&mut c_in, &mut u_out);
            let _ = u_out.shutdown(Shutdown::Write);
        });
        let (mut u_in, mut c_out) = (upstream, client);
        let _ = std::io::copy(&mut u_in, &mut c_out);
        let _ = c_out.shutdown(Shutdown::Write);
        up.join().unwrap();
    });
    (addr, relay)
}

#[test]
fn a_regular_file_that_grows_while_sent_is_an_error() {
    let dir = TempDir::new("put-grows");
    let (_server, addr) = start(&dir);
    let path = dir.path().join("growing.log");
    // More than loopback's buffers take unread (net.ipv4.tcp_wmem and tcp_rmem maxima: 4 MiB
    // and 32 MiB here).
    std::fs::write(&path, payload(64 << 20)).unwrap();
    let (relay_addr, relay) = relay_growing(&addr, path.clone());
    let out = run_piped(&["put", path.to_str().unwrap(), "--addr", &relay_addr], b"");
    relay.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("changed size while being uploaded"),
        "{stderr}"
    );
}

/// `get NAME -o DIR/` (or an existing directory without the slash) writes DIR/NAME, as `cp`
/// does, instead of failing with "Is a directory".
#[test]
fn get_into_a_directory_writes_the_name_there() {
    let dir = TempDir::new("get-dir");
    let (_server, addr) = start(&dir);
    let put = run_piped(
        &["put", "-", "--as", "in-dir.txt", "--addr", &addr],
        b"into a dir\n",
    );
    assert!(put.status.success(), "{put:?}");
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    for target in [
        format!("{}/", out_dir.display()),
        out_dir.display().to_string(),
    ] {
        let _ = std::fs::remove_file(out_dir.join("in-dir.txt"));
        let got = run_piped(&["get", "in-dir.txt", "--addr", &addr, "-o", &target], b"");
        assert!(got.status.success(), "-o {target}: {got:?}");
        assert_eq!(
            std::fs::read(out_dir.join("in-dir.txt")).unwrap(),
            b"into a dir\n",
            "-o {target}"
        );
    }
}
