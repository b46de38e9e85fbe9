//! Every client command against a server that never answers: a fake server in the test takes
//! the connection (TCP or unix), reads and throws away whatever comes, and never sends a byte;
//! for the datagram clients a UDP socket that receives and never replies. Each client, run
//! with `--timeout 1s`, must say in plain words that the server did not answer within 1s (not
//! the EAGAIN of a socket timeout, "Resource temporarily unavailable (os error 11)"), exit with
//! its usual failure code, and do so in bounded time. A server that stops reading gets the same
//! treatment for writes: "did not take the request within 1s".

mod util;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use util::TempDir;

/// The longest any client may take to give up on a silent server.
const BOUND: Duration = Duration::from_secs(15);

/// Exit code of every client for a failed operation, but `exec`.
const FAILED: i32 = 1;

/// Exit code of `socklab exec` for a failure of its own (as ssh).
const EXEC_FAILED: i32 = 255;

/// What the silent server does with the bytes it is sent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reads {
    /// Reads and discards them; reports how many came on each connection at its end of
    /// input (the client exited, or half-closed: the connection is then held open).
    Discard,
    /// Never reads: the client's writes stall once the socket buffers are full.
    Never,
}

/// A stream server that accepts connections and never writes a byte.
struct Silent {
    /// The address for `--addr`: `HOST:PORT` or `unix:PATH`.
    addr: String,
    /// Bytes received on each connection (in `Reads::Discard` mode), at its end of input.
    totals: Receiver<u64>,
    stop: Arc<AtomicBool>,
    /// Connections kept open (never closed by the server) until it goes.
    held: Held,
    /// Wakes the accepting thread up to see `stop`.
    wake: Box<dyn Fn() + Send>,
    acceptor: Option<thread::JoinHandle<()>>,
    _dir: Option<TempDir>,
}

impl Silent {
    fn tcp(reads: Reads) -> Silent {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, held, tx) = (Arc::default(), Held::default(), mpsc::channel());
        let accept = move || listener.accept().map(|(s, _)| s);
        let acceptor = accept_loop(accept, reads, &stop, &held, tx.0);
        Silent {
            addr: addr.to_string(),
            totals: tx.1,
            stop,
            held,
            wake: Box::new(move || drop(TcpStream::connect(addr))),
            acceptor: Some(acceptor),
            _dir: None,
        }
    }

    fn unix(reads: Reads) -> Silent {
        let dir = TempDir::new("silent");
        let path = dir.path().join("silent.sock");
        let listener = UnixListener::bind(&path).expect("bind unix");
        let (stop, held, tx) = (Arc::default(), Held::default(), mpsc::channel());
        let accept = move || listener.accept().map(|(s, _)| s);
        let acceptor = accept_loop(accept, reads, &stop, &held, tx.0);
        let addr = format!("unix:{}", path.display());
        Silent {
            addr,
            totals: tx.1,
            stop,
            held,
            wake: Box::new(move || drop(UnixStream::connect(&path))),
            acceptor: Some(acceptor),
            _dir: Some(dir),
        }
    }

    /// How many bytes the first connection brought (its input ends when the client exits).
    fn first_total(&self) -> u64 {
        self.totals
            .recv_timeout(BOUND)
            .expect("the silent server's connection did not end")
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        (self.wake)();
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        if let Ok(mut held) = self.held.lock() {
            held.clear();
        }
    }
}

/// Connections the silent server keeps open.
type Held = Arc<Mutex<Vec<Box<dyn Send>>>>;

/// Accepts until `stop`. Each connection is read to its end of input on a thread of its own
/// (its byte count then goes to `totals`) or not read at all, and in both cases held open
/// until the server goes: the server never closes first.
fn accept_loop<S: Read + Send + 'static>(
    mut accept: impl FnMut() -> std::io::Result<S> + Send + 'static,
    reads: Reads,
    stop: &Arc<AtomicBool>,
    held: &Held,
    totals: Sender<u64>,
) -> thread::JoinHandle<()> {
    let (stop, held) = (Arc::clone(stop), Arc::clone(held));
    thread::spawn(move || {
        while let Ok(mut s) = accept() {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let keep = |s: S, held: &Held| {
                if let Ok(mut held) = held.lock() {
                    held.push(Box::new(s));
                }
            };
            match reads {
                Reads::Never => keep(s, &held),
                Reads::Discard => {
                    let (totals, held) = (totals.clone(), Arc::clone(&held));
                    thread::spawn(move || {
                        let mut buf = vec![0u8; 64 * 1024];
                        let mut total = 0u64;
                        // Ends when the client half-closes, exits or resets.
                        while let Ok(n @ 1..) = s.read(&mut buf) {
                            total += n as u64;
                        }
                        let _ = totals.send(total);
                        keep(s, &held);
                    });
                }
            }
        }
    })
}

/// A UDP socket that receives and never replies.
fn silent_udp() -> (UdpSocket, String) {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    let addr = sock.local_addr().expect("local addr").to_string();
    (sock, addr)
}

/// Runs `socklab ARGS` with stdin closed; returns its output and how long it took.
fn run(args: &[&str]) -> (Output, Duration) {
    let t0 = Instant::now();
    let out = util::run_socklab(args, BOUND);
    (out, t0.elapsed())
}

/// Runs `socklab ARGS` with `input` on stdin, which stays open until the command exits when
/// `keep_open`; bounded by `BOUND`.
fn run_with_stdin(args: &[&str], input: &[u8], keep_open: bool) -> (Output, Duration) {
    let t0 = Instant::now();
    let mut child = Command::new(util::bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn socklab");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    // A thread: a client that stops reading stdin must not block the test.
    let writer = thread::spawn(move || {
        let _ = stdin.write_all(&input);
        keep_open.then_some(stdin)
    });
    let out = util::drain(child.stdout.take());
    let err = util::drain(child.stderr.take());
    let Some(status) = util::wait_child(&mut child, BOUND) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("socklab {args:?} did not exit within {BOUND:?}");
    };
    drop(writer.join().expect("stdin writer"));
    let out = Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    };
    (out, t0.elapsed())
}

/// The client waited for the timeout, then said the server did not `what` within 1s, exited
/// with `code`, and never showed the raw EAGAIN; returns its stderr.
#[track_caller]
fn assert_gave_up(run: (Output, Duration), code: i32, what: &str) -> String {
    let (out, took) = run;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit status; stderr: {stderr}"
    );
    let want = format!("did not {what} within 1s");
    assert!(stderr.contains(&want), "no `{want}` in: {stderr}");
    for raw in ["os error 11", "Resource temporarily unavailable"] {
        assert!(
            !stderr.contains(raw),
            "the raw error `{raw}` leaked: {stderr}"
        );
    }
    assert!(
        took >= Duration::from_secs(1),
        "gave up after {took:?}, before the 1s timeout: {stderr}"
    );
    assert!(took < BOUND, "took {took:?}: {stderr}");
    stderr
}

#[track_caller]
fn assert_no_answer(run: (Output, Duration), code: i32) -> String {
    assert_gave_up(run, code, "answer")
}

/// A small file to upload, in its own directory.
fn small_file(dir: &TempDir) -> String {
    let path = dir.file("small.bin");
    std::fs::write(&path, vec![7u8; 1000]).expect("write the file");
    path
}

// ---------------------------------------------------------------------------------------------
// The files clients (the shared framed client): the request goes out, no response comes.

#[test]
fn put_says_the_server_did_not_answer_and_how_much_was_sent() {
    let server = Silent::tcp(Reads::Discard);
    let dir = TempDir::new("timeouts-put");
    let file = small_file(&dir);
    let stderr = assert_no_answer(
        run(&["put", &file, "--addr", &server.addr, "--timeout", "1s"]),
        FAILED,
    );
    let sent = server.first_total();
    assert!(sent > 1000, "the header and the 1000-byte body: {sent}");
    assert!(
        stderr.contains(&format!("({sent} bytes sent)")),
        "the message should give the {sent} bytes sent: {stderr}"
    );
    assert!(stderr.starts_with("socklab put: "), "{stderr}");
    assert!(
        stderr.contains(&server.addr),
        "the server's address: {stderr}"
    );
}

#[test]
fn put_to_a_server_that_stops_reading_says_it_did_not_take_the_request() {
    let server = Silent::unix(Reads::Never);
    let dir = TempDir::new("timeouts-put-stall");
    let file = dir.file("big.bin");
    // Far more than the socket buffers of a unix stream hold.
    std::fs::write(&file, vec![1u8; 16 << 20]).expect("write the file");
    let stderr = assert_gave_up(
        run(&["put", &file, "--addr", &server.addr, "--timeout", "1s"]),
        FAILED,
        "take the request",
    );
    assert!(stderr.contains("bytes sent)"), "{stderr}");
}

/// A secret against a server that sends no challenge is no error by itself (a server without
/// auth just works, tests/client_auth.rs): the client waits a bounded time for a challenge,
/// sends its request, and then says the server did not answer.
#[test]
fn put_with_a_secret_to_a_silent_server_says_it_did_not_answer() {
    let server = Silent::tcp(Reads::Discard);
    let dir = TempDir::new("timeouts-put-auth");
    let file = small_file(&dir);
    let secret = dir.file("secret");
    std::fs::write(&secret, "a secret\n").expect("write the secret");
    let stderr = assert_no_answer(
        run(&[
            "put",
            &file,
            "--addr",
            &server.addr,
            "--timeout",
            "1s",
            "--secret-file",
            &secret,
        ]),
        FAILED,
    );
    assert!(stderr.contains("did not answer within 1s"), "{stderr}");
}

#[test]
fn get_says_the_server_did_not_answer() {
    let server = Silent::tcp(Reads::Discard);
    let dir = TempDir::new("timeouts-get");
    let dest = dir.file("got");
    let stderr = assert_no_answer(
        run(&[
            "get",
            "x.bin",
            "-o",
            &dest,
            "--addr",
            &server.addr,
            "--timeout",
            "1s",
        ]),
        FAILED,
    );
    assert!(stderr.contains("bytes sent)"), "{stderr}");
    assert!(!std::path::Path::new(&dest).exists(), "nothing written");
}

#[test]
fn ls_over_unix_says_the_server_did_not_answer() {
    let server = Silent::unix(Reads::Discard);
    let stderr = assert_no_answer(
        run(&["ls", "--addr", &server.addr, "--timeout", "1s"]),
        FAILED,
    );
    assert!(stderr.contains(&server.addr), "{stderr}");
}

#[test]
fn stat_says_the_server_did_not_answer() {
    let server = Silent::tcp(Reads::Discard);
    assert_no_answer(
        run(&["stat", "x.bin", "--addr", &server.addr, "--timeout", "1s"]),
        FAILED,
    );
}

#[test]
fn ping_says_the_server_did_not_answer() {
    let server = Silent::tcp(Reads::Discard);
    assert_no_answer(
        run(&["ping", "--addr", &server.addr, "--timeout", "1s"]),
        FAILED,
    );
}

#[test]
fn stats_says_the_server_did_not_answer() {
    let server = Silent::tcp(Reads::Discard);
    assert_no_answer(
        run(&["stats", "--addr", &server.addr, "--timeout", "1s"]),
        FAILED,
    );
}

#[test]
fn exec_says_the_server_did_not_answer_and_exits_255() {
    let server = Silent::tcp(Reads::Discard);
    assert_no_answer(
        run(&[
            "exec",
            "--addr",
            &server.addr,
            "--timeout",
            "1s",
            "--",
            "true",
        ]),
        EXEC_FAILED,
    );
}

// ---------------------------------------------------------------------------------------------
// The byte-stream clients.

#[test]
fn echo_says_the_server_did_not_answer_what_was_sent() {
    let server = Silent::tcp(Reads::Discard);
    let stderr = assert_no_answer(
        run_with_stdin(
            &["echo", "--addr", &server.addr, "--timeout", "1s"],
            b"hello\n",
            false,
        ),
        FAILED,
    );
    assert!(stderr.contains("(6 bytes sent)"), "{stderr}");
    assert!(stderr.starts_with("socklab echo: "), "{stderr}");
}

#[test]
fn upper_over_unix_with_stdin_still_open_says_the_server_did_not_answer() {
    let server = Silent::unix(Reads::Discard);
    let stderr = assert_no_answer(
        run_with_stdin(
            &["upper", "--addr", &server.addr, "--timeout", "1s"],
            b"abc",
            true,
        ),
        FAILED,
    );
    assert!(stderr.contains("(3 bytes sent)"), "{stderr}");
}

#[test]
fn upper_to_a_server_that_stops_reading_says_it_did_not_take_the_request() {
    let server = Silent::unix(Reads::Never);
    let input = vec![b'a'; 16 << 20];
    let stderr = assert_gave_up(
        run_with_stdin(
            &["upper", "--addr", &server.addr, "--timeout", "1s"],
            &input,
            true,
        ),
        FAILED,
        "take the request",
    );
    assert!(stderr.contains("bytes sent)"), "{stderr}");
}

#[test]
fn echo_over_udp_says_which_line_got_no_reply() {
    let (_sock, addr) = silent_udp();
    let stderr = assert_no_answer(
        run_with_stdin(
            &["echo", "--udp", "--addr", &addr, "--timeout", "1s"],
            b"anyone?\n",
            false,
        ),
        FAILED,
    );
    assert!(stderr.contains("no reply to line 1"), "{stderr}");
    assert!(stderr.contains("(7 bytes sent)"), "{stderr}");
}

#[test]
fn time_says_the_server_did_not_answer() {
    let (sock, addr) = silent_udp();
    let stderr = assert_no_answer(
        run(&["time", "%H", "--addr", &addr, "--timeout", "1s"]),
        FAILED,
    );
    assert!(stderr.contains("(2 bytes sent)"), "{stderr}");
    // The request did reach the socket that never answered.
    sock.set_read_timeout(Some(BOUND)).expect("read timeout");
    let mut buf = [0u8; 64];
    let n = sock.recv(&mut buf).expect("the request datagram");
    assert_eq!(&buf[..n], b"%H");
}

// ---------------------------------------------------------------------------------------------
// The chat client: the server greets every member, so no welcome is no answer.

#[test]
fn chat_says_the_server_sent_no_welcome() {
    let server = Silent::tcp(Reads::Discard);
    let stderr = assert_no_answer(
        run_with_stdin(
            &["chat", "--addr", &server.addr, "--timeout", "1s"],
            b"",
            true,
        ),
        FAILED,
    );
    assert!(stderr.starts_with("socklab chat: "), "{stderr}");
}

#[test]
fn chat_over_unix_that_quits_at_once_still_says_the_server_never_answered() {
    let server = Silent::unix(Reads::Discard);
    let stderr = assert_no_answer(
        run_with_stdin(
            &["chat", "--addr", &server.addr, "--timeout", "1s"],
            b"hello\n",
            false,
        ),
        FAILED,
    );
    // `hello` and `/quit`, each with its newline.
    assert!(stderr.contains("(12 bytes sent)"), "{stderr}");
}

/// udp-chat never answers the sender (PROTOCOL.md, "Datagram chat"): a silent socket is an
/// empty room, not a failure, and no socket timeout is ever shown.
#[test]
fn chat_over_udp_has_no_answer_to_wait_for() {
    let (_sock, addr) = silent_udp();
    let (out, took) = run_with_stdin(
        &["chat", "--udp", "--addr", &addr, "--timeout", "1s"],
        b"anyone?\n",
        false,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("os error 11"), "{stderr}");
    assert!(took < BOUND);
}

// ---------------------------------------------------------------------------------------------
// bench: its own no-progress timeout, in the same words.

#[test]
fn bench_says_the_server_did_not_answer() {
    let server = Silent::tcp(Reads::Discard);
    let stderr = assert_no_answer(
        run(&[
            "bench",
            "--addr",
            &server.addr,
            "--conns",
            "1",
            "--duration",
            "10s",
            "--warmup",
            "0s",
            "--timeout",
            "1s",
        ]),
        FAILED,
    );
    assert!(
        stderr.contains("(64 bytes sent), with 1 request in flight"),
        "{stderr}"
    );
}

#[test]
fn bench_to_a_server_that_stops_reading_says_it_did_not_take_the_request() {
    let server = Silent::unix(Reads::Never);
    assert_gave_up(
        run(&[
            "bench",
            "--addr",
            &server.addr,
            "--conns",
            "1",
            "--depth",
            "64",
            "--size",
            "1MiB",
            "--duration",
            "10s",
            "--warmup",
            "0s",
            "--timeout",
            "1s",
        ]),
        FAILED,
        "take the request",
    );
}
