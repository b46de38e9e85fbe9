//! `udp-chat` over real sockets (PROTOCOL.md, "Datagram chat"): every datagram is relayed to
//! every other sender heard from recently, as `[<ip>:<port>] <text>`, and a sender that stays
//! silent past `--udp-chat-expiry` hears nothing more.
//!
//! "Not received" is never checked by waiting: the server handles datagrams in order and a
//! datagram to a loopback socket is queued before `send_to` returns, so once a later datagram
//! arrives, an earlier one that was due would already be there.

mod util;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use util::Server;

const T: Duration = Duration::from_secs(10);

fn start(extra: &[&str]) -> Server {
    let mut args = Vec::new();
    for service in util::all_services() {
        if service != "udp-chat" {
            args.push(format!("--no-{service}"));
        }
    }
    args.push("--udp-chat".into());
    args.push("127.0.0.1:0".into());
    args.extend(extra.iter().map(|s| s.to_string()));
    Server::start(args)
}

struct Client {
    sock: UdpSocket,
    addr: SocketAddr,
}

impl Client {
    fn new(server: SocketAddr) -> Client {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.connect(server).unwrap();
        let addr = sock.local_addr().unwrap();
        Client { sock, addr }
    }

    fn send(&self, text: &str) {
        self.sock.send(text.as_bytes()).unwrap();
    }

    /// The next datagram within `timeout`, if any.
    fn recv_within(&self, timeout: Duration) -> Option<String> {
        self.sock.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = [0u8; 65536];
        match self.sock.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8(buf[..n].to_vec()).unwrap()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("recv: {e}"),
        }
    }

    #[track_caller]
    fn expect(&self, from: &Client, text: &str) {
        let got = self.recv_within(T).expect("no datagram");
        assert_eq!(got, format!("[{}] {text}", from.addr));
    }
}

#[test]
fn datagrams_reach_every_other_member_and_not_the_sender() {
    let server = start(&[]);
    let addr = server.udp("udp-chat");
    let a = Client::new(addr);
    let b = Client::new(addr);
    let c = Client::new(addr);

    // Each is remembered once it has sent something.
    a.send("a here");
    b.send("b here");
    a.expect(&b, "b here");
    c.send("c here");
    a.expect(&c, "c here");
    b.expect(&c, "c here");

    // One trailing newline is stripped; the sender gets nothing back.
    a.send("hello from a\n");
    b.expect(&a, "hello from a");
    c.expect(&a, "hello from a");
    b.send("from b");
    a.expect(&b, "from b");
    c.expect(&b, "from b");
    c.send("from c é");
    a.expect(&c, "from c é");
    b.expect(&c, "from c é");
    // a's next datagram is b's: neither its own "hello from a" nor anything else came first.
    b.send("marker");
    a.expect(&b, "marker");
    c.expect(&b, "marker");
}

#[test]
fn a_silent_member_is_forgotten_after_the_expiry() {
    let expiry = Duration::from_secs(1);
    let server = start(&["--udp-chat-expiry", "1s"]);
    let addr = server.udp("udp-chat");
    let a = Client::new(addr);
    let b = Client::new(addr);
    let c = Client::new(addr);
    a.send("a here");
    b.send("b here");
    a.expect(&b, "b here");
    c.send("c here");
    a.expect(&c, "c here");
    b.expect(&c, "c here");
    // a's last datagram: once b has it, the server has handled it, so a has been silent
    // since no later than now.
    a.send("a goes quiet");
    b.expect(&a, "a goes quiet");
    c.expect(&a, "a goes quiet");
    let quiet_since = Instant::now();

    // b and c keep talking (so they stay remembered) while a only listens; the rounds are
    // paced by a's short receive timeout.
    let mut a_heard = Vec::new();
    let mut round = 0;
    while quiet_since.elapsed() < expiry + Duration::from_millis(100) {
        b.send(&format!("tick {round}"));
        c.expect(&b, &format!("tick {round}"));
        c.send(&format!("tock {round}"));
        b.expect(&c, &format!("tock {round}"));
        while let Some(d) = a.recv_within(Duration::from_millis(50)) {
            a_heard.push(d);
        }
        round += 1;
    }
    assert!(
        a_heard.contains(&format!("[{}] tick 0", b.addr)),
        "before the expiry a still heard the others: {a_heard:?}"
    );

    // More than the expiry after a's last datagram: b's next one reaches c only.
    b.send("late");
    c.expect(&b, "late");
    // a speaks again and is remembered again; what it reads next is b's answer, not "late".
    a.send("back");
    b.expect(&a, "back");
    c.expect(&a, "back");
    b.send("welcome back");
    loop {
        let d = a.recv_within(T).expect("a hears b again");
        assert_ne!(
            d,
            format!("[{}] late", b.addr),
            "a expired yet got b's datagram"
        );
        if d == format!("[{}] welcome back", b.addr) {
            break;
        }
        // Only ticks and tocks sent before the expiry may still be queued.
        assert!(d.contains("] tick ") || d.contains("] tock "), "{d:?}");
    }
}
