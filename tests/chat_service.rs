//! The `chat` service over real sockets (PROTOCOL.md, "Line service: chat"): three members
//! over TCP and one over the unix socket; messages, nick rules, `/who`, `/me`, `/quit`, bad
//! lines, and a member that never reads being cut off while the others keep chatting.
//!
//! "Nothing arrived" is never checked by waiting: a member sends `/who` and the next line it
//! reads must be the `* members:` answer, since the server writes a member's lines in order.

// Members are numbered in these tests (who sends, who reads): index loops say it plainest.
#![allow(clippy::needless_range_loop)]

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use util::{End, Server, TempDir};

const T: Duration = Duration::from_secs(10);

/// `serve` arguments for chat on TCP and `unix:<dir>/chat.sock`, every other service off.
fn chat_args(dir: &TempDir, extra: &[&str]) -> Vec<String> {
    let mut args = Vec::new();
    for service in util::all_services() {
        if service != "chat" {
            args.push(format!("--no-{service}"));
        }
    }
    args.push("--chat".into());
    args.push("127.0.0.1:0".into());
    args.push("--chat".into());
    args.push(format!("unix:{}", dir.file("chat.sock")));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn start(dir: &TempDir, extra: &[&str]) -> Server {
    Server::start(chat_args(dir, extra))
}

/// A TCP or unix stream.
enum Sock {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Sock {
    fn try_clone(&self) -> Sock {
        match self {
            Sock::Tcp(s) => Sock::Tcp(s.try_clone().unwrap()),
            Sock::Unix(s) => Sock::Unix(s.try_clone().unwrap()),
        }
    }
}

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.read(buf),
            Sock::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.write(buf),
            Sock::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for Sock {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Sock::Tcp(s) => s.as_raw_fd(),
            Sock::Unix(s) => s.as_raw_fd(),
        }
    }
}

impl util::Stream for Sock {
    fn set_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            Sock::Tcp(s) => s.set_read_timeout(t),
            Sock::Unix(s) => s.set_read_timeout(t),
        }
    }
}

/// One chat member: a connection and what it read but did not take yet.
struct Member {
    s: Sock,
    buf: Vec<u8>,
    nick: String,
}

impl Member {
    fn tcp(addr: SocketAddr) -> Member {
        Self::join(Sock::Tcp(TcpStream::connect(addr).unwrap()))
    }

    fn unix(path: &Path) -> Member {
        Self::join(Sock::Unix(UnixStream::connect(path).unwrap()))
    }

    fn join(s: Sock) -> Member {
        let mut m = Member {
            s,
            buf: Vec::new(),
            nick: String::new(),
        };
        let welcome = m.line();
        m.nick = welcome
            .strip_prefix("* welcome ")
            .unwrap_or_else(|| panic!("not a welcome: {welcome:?}"))
            .to_string();
        m
    }

    fn send(&mut self, line: &str) {
        self.send_bytes(format!("{line}\n").as_bytes());
    }

    fn send_bytes(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    /// The next line (without its newline), within `T`.
    fn line(&mut self) -> String {
        let deadline = Instant::now() + T;
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return String::from_utf8(line[..line.len() - 1].to_vec()).unwrap();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no line within {T:?}; have {:?}", self.buf);
            let (got, end) = util::read_bounded(&mut self.s, Some(1), left);
            self.buf.extend_from_slice(&got);
            assert!(
                end == End::Complete,
                "{} waiting for a line: {end:?} after {:?}",
                self.nick,
                String::from_utf8_lossy(&self.buf)
            );
        }
    }

    #[track_caller]
    fn expect(&mut self, want: &str) {
        let got = self.line();
        assert_eq!(got, want, "{} read the wrong line", self.nick);
    }

    /// Asserts nothing is queued for this member: its `/who` answer is the next line.
    #[track_caller]
    fn expect_quiet(&mut self) {
        self.send("/who");
        let got = self.line();
        assert!(
            got.starts_with("* members: "),
            "{} had an unexpected line queued: {got:?}",
            self.nick
        );
    }

    /// Reads until the server closes; returns what came before.
    fn expect_closed(&mut self) -> String {
        let (rest, end) = util::read_to_end_timeout(&mut self.s, T);
        assert!(
            end.closed(),
            "{}: connection not closed: {end:?}",
            self.nick
        );
        self.buf.extend_from_slice(&rest);
        String::from_utf8_lossy(&std::mem::take(&mut self.buf)).into_owned()
    }
}

/// Three TCP members and one unix member, each having seen the others join.
fn room(server: &Server) -> Vec<Member> {
    let tcp = server.tcp("chat");
    let path = server.unix("chat");
    let mut members: Vec<Member> = Vec::new();
    for i in 0..4 {
        let m = if i == 3 {
            Member::unix(&path)
        } else {
            Member::tcp(tcp)
        };
        for old in &mut members {
            old.expect(&format!("* {} joined", m.nick));
        }
        members.push(m);
    }
    members
}

#[test]
fn messages_reach_the_others_and_not_the_sender() {
    let dir = TempDir::new("chat-msg");
    let server = start(&dir, &[]);
    let mut m = room(&server);
    let nicks: Vec<String> = m.iter().map(|m| m.nick.clone()).collect();
    let mut nick_set = nicks.clone();
    nick_set.sort();
    nick_set.dedup();
    assert_eq!(nick_set.len(), 4, "nicks are unique: {nicks:?}");

    for from in 0..4 {
        let text = format!("hello from {from} é\r");
        m[from].send(&text);
        for to in 0..4 {
            if to != from {
                m[to].expect(&format!("{} hello from {from} é", nicks[from]));
            }
        }
        m[from].expect_quiet();
    }
    // An empty line is ignored.
    m[0].send("");
    m[0].send("after empty");
    for to in 1..4 {
        m[to].expect(&format!("{} after empty", nicks[0]));
    }
    m[0].expect_quiet();

    // /who lists everyone, sorted.
    m[3].send("/who");
    let mut sorted = nicks.clone();
    sorted.sort();
    m[3].expect(&format!("* members: {}", sorted.join(", ")));

    // /me goes to the others only.
    m[1].send("/me waves");
    for to in [0, 2, 3] {
        m[to].expect(&format!("* {} waves", nicks[1]));
    }
    m[1].expect_quiet();
    m[1].send("/me");
    assert!(m[1].line().starts_with("* error:"));
    m[1].send("/dance");
    assert!(m[1].line().starts_with("* error:"));
    for i in 0..4 {
        m[i].expect_quiet();
    }
}

#[test]
fn nick_rules() {
    let dir = TempDir::new("chat-nick");
    let server = start(&dir, &[]);
    let mut m = room(&server);
    let old = m[0].nick.clone();

    m[0].send("/nick alice_01-x");
    for i in 0..4 {
        m[i].expect(&format!("* {old} is now alice_01-x"));
    }
    m[0].nick = "alice_01-x".into();
    let max = "N".repeat(32);
    m[3].send(&format!("/nick {max}"));
    let old3 = m[3].nick.clone();
    for i in 0..4 {
        m[i].expect(&format!("* {old3} is now {max}"));
    }
    m[3].nick = max.clone();

    // Taken, invalid characters, too long, empty: an error to the member alone.
    let too_long = "x".repeat(33);
    for bad in [
        "/nick alice_01-x".to_string(),
        "/nick ALICE 01".to_string(),
        "/nick al!ce".to_string(),
        "/nick élise".to_string(),
        format!("/nick {too_long}"),
        "/nick ".to_string(),
        "/nick".to_string(),
    ] {
        m[1].send(&bad);
        let got = m[1].line();
        assert!(got.starts_with("* error: "), "{bad:?} got {got:?}");
    }
    for i in 0..4 {
        m[i].expect_quiet();
    }

    // Messages use the new nick, and /who shows it.
    m[0].send("renamed");
    for i in 1..4 {
        m[i].expect("alice_01-x renamed");
    }
    m[2].send("/who");
    let mut all: Vec<String> = m.iter().map(|m| m.nick.clone()).collect();
    all.sort();
    m[2].expect(&format!("* members: {}", all.join(", ")));
}

#[test]
fn quit_closes_the_quitter_and_the_others_are_told() {
    let dir = TempDir::new("chat-quit");
    let server = start(&dir, &[]);
    let mut m = room(&server);
    let gone = m[3].nick.clone();
    // The unix member quits; what it sent after /quit is not read.
    m[3].send_bytes(b"/quit\nnot read\n");
    let rest = m[3].expect_closed();
    assert_eq!(rest, "", "the quitter was sent {rest:?}");
    for i in 0..3 {
        m[i].expect(&format!("* {gone} left"));
        m[i].expect_quiet();
    }
    // A member that just disconnects is announced too.
    let m2 = m.remove(2);
    let gone = m2.nick.clone();
    drop(m2);
    m[0].expect(&format!("* {gone} left"));
    m[1].expect(&format!("* {gone} left"));
    m[0].send("still here");
    let said = format!("{} still here", m[0].nick);
    m[1].expect(&said);
}

#[test]
fn bad_lines_are_errors_and_the_member_stays() {
    let dir = TempDir::new("chat-bad");
    let server = start(&dir, &[]);
    let mut m = room(&server);

    let mut long = vec![b'y'; 5000];
    long.push(b'\n');
    m[1].send_bytes(&long);
    let got = m[1].line();
    assert!(got.starts_with("* error: "), "5000-byte line: {got:?}");

    m[1].send_bytes(b"caf\xe9 latin-1\n");
    let got = m[1].line();
    assert!(got.starts_with("* error: "), "not UTF-8: {got:?}");

    // A line of exactly 4096 bytes is fine.
    let max = "z".repeat(4096);
    m[1].send(&max);
    let nick = m[1].nick.clone();
    for i in [0, 2, 3] {
        m[i].expect(&format!("{nick} {max}"));
    }

    // The member is still in the room and nothing of the bad lines went out.
    m[1].send("fine again");
    for i in [0, 2, 3] {
        m[i].expect(&format!("{nick} fine again"));
        m[i].expect_quiet();
    }
    m[1].expect_quiet();
}

/// A member whose every line is collected by a thread.
struct Reader {
    lines: Arc<Mutex<Vec<String>>>,
    writer: Sock,
    nick: String,
}

impl Reader {
    fn new(m: Member) -> Reader {
        assert!(m.buf.is_empty());
        let lines = Arc::new(Mutex::new(Vec::new()));
        let writer = m.s.try_clone();
        let mut s = m.s;
        let sink = lines.clone();
        thread::spawn(move || {
            util::Stream::set_timeout(&s, None).unwrap();
            let mut pending = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                pending.extend_from_slice(&buf[..n]);
                while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=pos).collect();
                    let line = String::from_utf8(line[..line.len() - 1].to_vec()).unwrap();
                    sink.lock().unwrap().push(line);
                }
            }
        });
        Reader {
            lines,
            writer,
            nick: m.nick,
        }
    }

    fn has(&self, line: &str) -> bool {
        self.lines.lock().unwrap().iter().any(|l| l == line)
    }
}

fn message(i: usize) -> String {
    // About 1000 bytes, numbered, so order and completeness can be checked.
    let filler: String = (0..990)
        .map(|k| (b'a' + ((i + k) % 26) as u8) as char)
        .collect();
    format!("m{i:06} {filler}")
}

#[test]
fn a_member_that_never_reads_is_dropped_and_the_others_get_everything() {
    let dir = TempDir::new("chat-slow");
    let server = start(&dir, &["--chat-max-pending", "64KiB"]);
    let mut m = room(&server);

    // The member that never reads: a small receive buffer, set before connecting.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&server.tcp("chat").into()).unwrap();
    let mut slow: TcpStream = sock.into();
    // The join line everybody reads now names it.
    let slow_nick = {
        let line = m[0].line();
        line.strip_prefix("* ")
            .and_then(|l| l.strip_suffix(" joined"))
            .unwrap_or_else(|| panic!("not a join: {line:?}"))
            .to_string()
    };
    for old in &mut m[1..] {
        old.expect(&format!("* {slow_nick} joined"));
    }

    let mut sender = m.remove(0);
    let mut readers: Vec<Reader> = m.into_iter().map(Reader::new).collect();
    let sender_nick = sender.nick.clone();
    let left_line = format!("* {slow_nick} left");

    // Send in batches of about 32 KiB, each read by every reader before the next goes, so the
    // readers' pending output stays well below the limit while the slow member's grows.
    let mut sent = 0usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !readers.iter().all(|r| r.has(&left_line)) {
        assert!(
            Instant::now() < deadline && sent < 200_000,
            "the slow member was not dropped after {sent} messages"
        );
        let mut batch = String::new();
        for i in sent..sent + 32 {
            batch.push_str(&message(i));
            batch.push('\n');
        }
        sender.send_bytes(batch.as_bytes());
        sent += 32;
        let want = format!("{sender_nick} {}", message(sent - 1));
        for r in &readers {
            assert!(
                util::wait_until(T, || r.has(&want)),
                "{} did not get message {}",
                r.nick,
                sent - 1
            );
        }
    }
    // The sender is told too, and that is all it reads.
    sender.expect(&left_line);
    sender.expect_quiet();

    // The others keep chatting.
    let after = format!("{} after the drop", readers[0].nick);
    readers[0].writer.write_all(b"after the drop\n").unwrap();
    sender.expect(&after);
    for r in &readers[1..] {
        assert!(
            util::wait_until(T, || r.has(&after)),
            "{} missed it",
            r.nick
        );
    }

    // Every reader got every message, complete and in order, and the leave notice once.
    let expected: Vec<String> = (0..sent)
        .map(|i| format!("{sender_nick} {}", message(i)))
        .collect();
    for (k, r) in readers.iter().enumerate() {
        let lines = r.lines.lock().unwrap().clone();
        let mut msgs: Vec<String> = lines.iter().filter(|l| **l != left_line).cloned().collect();
        if k > 0 {
            assert_eq!(msgs.pop().as_ref(), Some(&after), "{}: last line", r.nick);
        }
        assert_eq!(msgs.len(), expected.len(), "{}: message count", r.nick);
        for (i, (got, want)) in msgs.iter().zip(&expected).enumerate() {
            assert_eq!(got, want, "{}: message {i}", r.nick);
        }
        assert_eq!(
            lines.iter().filter(|l| **l == left_line).count(),
            1,
            "{}: the leave notice",
            r.nick
        );
    }

    // The slow member was cut off: after what the kernel still held, its stream ends; what it
    // got is its welcome and then a strict prefix of the messages.
    let (got, end) = util::read_to_end_timeout(&mut slow, T);
    assert!(end.closed(), "the slow member's connection: {end:?}");
    let welcome = format!("* welcome {slow_nick}\n");
    assert!(
        got.starts_with(welcome.as_bytes()),
        "{:?}",
        &got[..got.len().min(80)]
    );
    let body = &got[welcome.len()..];
    let all: String = expected.iter().map(|l| format!("{l}\n")).collect();
    assert!(
        all.as_bytes().starts_with(body),
        "the slow member's {} bytes are not a prefix of the messages",
        body.len()
    );
    assert!(body.len() < all.len(), "the slow member got everything");
}
