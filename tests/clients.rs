//! The client commands against a real server: `socklab upper`/`echo` over TCP, unix and UDP,
//! and `socklab chat` from a pipe and under a real pseudo-terminal (tmux).
//!
//! The tmux test needs `tmux` on PATH (CI installs it with apt-get); without it the test says
//! why and passes without checking anything.

mod util;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpStream, UdpSocket};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use util::tmux::{Tmux, have_tmux};
use util::{Server, TempDir};

const T: Duration = Duration::from_secs(10);

/// A server with exactly these `(service, addr)` listeners (every other service off).
fn server(listeners: &[(&str, &str)]) -> Server {
    Server::start(util::serve_args(listeners, &[]))
}

fn socklab(args: &[&str]) -> Command {
    let mut cmd = Command::new(util::bin());
    cmd.args(args);
    cmd
}

/// Waits (bounded) for `child` to exit; kills it and panics if it does not.
fn wait(child: &mut Child, timeout: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Runs `socklab ARGS` with `input` on stdin (then closed); bounded.
fn run_with_stdin(args: &[&str], input: &[u8]) -> Output {
    util::run_with_input(socklab(args), input, T)
}

#[track_caller]
fn assert_ok(out: &Output, want: &str) {
    assert!(
        out.status.success(),
        "exit {}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);
}

#[test]
fn upper_over_tcp_and_unix() {
    let dir = TempDir::new("cli-upper");
    let unix = format!("unix:{}", dir.file("upper.sock"));
    let server = server(&[("upper", "127.0.0.1:0"), ("upper", &unix)]);
    let tcp = server.tcp("upper").to_string();

    let out = run_with_stdin(&["upper", "--addr", &tcp], b"abc");
    assert_ok(&out, "ABC");
    let out = run_with_stdin(&["upper", "--addr", &unix], b"abc");
    assert_ok(&out, "ABC");

    // Every answer arrives before the command exits, however much there is.
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| b"abcXyz\n-"[(i % 8) as usize])
        .collect();
    let out = run_with_stdin(&["upper", "--addr", &tcp], &big);
    assert!(out.status.success());
    util::assert_bytes_eq(&out.stdout, &util::upper(&big), "upper of 3 MB");

    // Nothing to send: nothing back, still a success.
    let out = run_with_stdin(&["upper", "--addr", &unix], b"");
    assert_ok(&out, "");
}

#[test]
fn echo_over_tcp_and_udp() {
    let server = server(&[("echo", "127.0.0.1:0"), ("udp-echo", "127.0.0.1:0")]);
    let tcp = server.tcp("echo").to_string();
    let udp = server.udp("udp-echo").to_string();

    let out = run_with_stdin(&["echo", "--addr", &tcp], b"same\nbytes\xff");
    assert!(out.status.success());
    assert_eq!(out.stdout, b"same\nbytes\xff");

    let out = run_with_stdin(&["echo", "--udp", "--addr", &udp], b"hello\n\nworld");
    assert_ok(&out, "hello\n\nworld\n");
}

#[test]
fn a_missing_udp_reply_is_an_error() {
    // A socket that receives and never answers.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let out = run_with_stdin(
        &["echo", "--udp", "--addr", &addr, "--timeout", "200ms"],
        b"anyone?\n",
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no reply"), "{stderr}");
}

/// A `socklab chat` child with stdin and stdout piped; its stdout lines arrive on a channel.
struct PipeChat {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl PipeChat {
    fn start(args: &[&str]) -> PipeChat {
        let mut child = socklab(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        PipeChat {
            child,
            stdin,
            lines,
        }
    }

    fn line(&self) -> String {
        self.lines
            .recv_timeout(T)
            .expect("a line from socklab chat")
    }

    fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }
}

impl Drop for PipeChat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain member: a TCP connection read line by line.
struct Member {
    r: BufReader<TcpStream>,
    nick: String,
}

impl Member {
    fn join(addr: std::net::SocketAddr) -> Member {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        let mut m = Member {
            r: BufReader::new(s),
            nick: String::new(),
        };
        let welcome = m.line();
        m.nick = welcome.strip_prefix("* welcome ").unwrap().to_string();
        m
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.r
            .read_line(&mut line)
            .expect("a line within the timeout");
        assert!(line.ends_with('\n'), "connection ended: {line:?}");
        line.pop();
        line
    }

    fn send(&mut self, line: &str) {
        self.r
            .get_mut()
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
    }
}

#[test]
fn chat_from_a_pipe_sends_prints_and_quits() {
    let server = server(&[("chat", "127.0.0.1:0")]);
    let addr = server.tcp("chat");
    let mut client = PipeChat::start(&["chat", "--addr", &addr.to_string()]);
    let welcome = client.line();
    let nick = welcome.strip_prefix("* welcome ").unwrap().to_string();

    let mut other = Member::join(addr);
    assert_eq!(client.line(), format!("* {} joined", other.nick));
    other.send("hi, pipe");
    assert_eq!(client.line(), format!("{} hi, pipe", other.nick));
    client.type_line("hello from the pipe");
    assert_eq!(other.line(), format!("{nick} hello from the pipe"));
    client.type_line("/me waves");
    assert_eq!(other.line(), format!("* {nick} waves"));

    client.type_line("/quit");
    let status = wait(&mut client.child, T, "socklab chat after /quit");
    assert!(status.success(), "{status}");
    assert_eq!(other.line(), format!("* {nick} left"));
}

#[test]
fn chat_from_a_pipe_ends_when_the_server_closes() {
    let server = server(&[("chat", "127.0.0.1:0")]);
    let mut client = PipeChat::start(&["chat", "--addr", &server.tcp("chat").to_string()]);
    assert!(client.line().starts_with("* welcome "));
    drop(server);
    assert_eq!(client.line(), "* connection closed");
    let status = wait(&mut client.child, T, "socklab chat after the server went");
    // The server was killed: the connection may end with a reset rather than an EOF.
    assert!(status.code().is_some(), "{status}");
}

#[test]
fn udp_chat_from_a_pipe() {
    let server = server(&[("udp-chat", "127.0.0.1:0")]);
    let addr = server.udp("udp-chat");
    let mut client = PipeChat::start(&["chat", "--udp", "--addr", &addr.to_string()]);
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.connect(addr).unwrap();
    peer.set_read_timeout(Some(T)).unwrap();
    let mut buf = [0u8; 2048];

    // The peer speaks first so the server knows it; then the client's line reaches it.
    peer.send(b"peer here").unwrap();
    client.type_line("client here");
    let n = peer.recv(&mut buf).unwrap();
    let got = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(got.ends_with("] client here"), "{got:?}");
    let client_addr = got[1..got.find(']').unwrap()].to_string();
    // And the peer's next one reaches the client, printed as relayed.
    peer.send(b"hello client").unwrap();
    let me = peer.local_addr().unwrap();
    assert_eq!(client.line(), format!("[{me}] hello client"));
    assert!(client_addr.starts_with("127.0.0.1:"), "{client_addr}");

    // /quit ends it without being relayed; the end of stdin would too.
    client.type_line("/quit");
    let status = wait(&mut client.child, T, "socklab chat --udp after /quit");
    assert!(status.success(), "{status}");
}

#[test]
fn chat_on_a_terminal_keeps_the_typed_line_intact() {
    if !have_tmux() {
        eprintln!("skipped: `tmux` is not on PATH (install it: apt-get install tmux)");
        return;
    }
    let server = server(&[("chat", "127.0.0.1:0")]);
    let addr = server.tcp("chat");
    let dir = TempDir::new("cli-tmux");
    // Keep the pane after the client exits, to read the screen.
    let conf = dir.file("tmux.conf");
    std::fs::write(&conf, "set -g remain-on-exit on\n").unwrap();
    // The shell records the client's exit status (tmux's own pane status can be missing when
    // the terminal closes before tmux reaps the process).
    let status_file = dir.file("status");
    let command = format!(
        "'{}' chat --addr {addr}; echo $? > '{status_file}.tmp' && mv '{status_file}.tmp' '{status_file}'",
        util::bin()
    );
    let tmux = Tmux::start("chat", Some(&conf), 120, 30, &command);

    let screen = tmux.wait_screen("the welcome", T, |s| {
        s.iter().any(|l| l.starts_with("* welcome "))
    });
    let nick = screen
        .iter()
        .find_map(|l| l.strip_prefix("* welcome "))
        .unwrap()
        .to_string();
    let mut other = Member::join(addr);
    let joined = format!("* {} joined", other.nick);
    tmux.wait_screen("the join", T, |s| s.contains(&joined));

    // Type half a line, and see it on the prompt before anything comes in.
    tmux.keys("hello, half a li");
    tmux.wait_screen("the partial input", T, |s| {
        s.last().is_some_and(|l| l == "> hello, half a li")
    });
    other.send("a message while you type");
    let incoming = format!("{} a message while you type", other.nick);
    let screen = tmux.wait_screen("the incoming line above the intact prompt", T, |s| {
        let n = s.len();
        n >= 2 && s[n - 2] == incoming && s[n - 1] == "> hello, half a li"
    });
    assert_eq!(
        screen.iter().filter(|l| l.contains("hello, half")).count(),
        1,
        "the partial input is drawn once:\n{}",
        screen.join("\n")
    );

    // Finish the line: the other member gets all of it.
    tmux.keys("ne");
    tmux.enter();
    assert_eq!(other.line(), format!("{nick} hello, half a line"));

    // /quit ends the client with status 0.
    tmux.keys("/quit");
    tmux.enter();
    assert_eq!(other.line(), format!("* {nick} left"));
    let mut status = String::new();
    let exited = util::wait_until(T, || {
        status = std::fs::read_to_string(&status_file).unwrap_or_default();
        !status.is_empty()
    });
    assert!(
        exited,
        "the client did not exit:\n{}",
        tmux.screen().join("\n")
    );
    assert_eq!(
        status.trim(),
        "0",
        "the client's exit status; screen:\n{}",
        tmux.screen().join("\n")
    );
}
