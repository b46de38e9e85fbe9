//! `socklab bench --mode udp` against real UDP peers (issue 21, part 1): socklab's udp-echo
//! over UDP and unixgram, the time service (replies counted), open loop; a peer that drops
//! every other datagram and one that never answers (loss reported, the run ends by itself);
//! and the addresses and sizes that cannot work (a TCP-only port, a unix stream path, a
//! datagram over 65,507 bytes).

mod util;

use std::net::UdpSocket;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use serde_json::Value;
use util::{Server, TempDir};

const T: Duration = Duration::from_secs(30);

fn bench(args: &[&str]) -> Output {
    let mut cmd = Command::new(util::bin());
    cmd.args(["bench", "--mode", "udp", "--warmup", "200ms"])
        .args(args);
    util::run_with_input(cmd, b"", T)
}

fn report(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

fn n(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}"))
}

#[test]
fn udp_echo_time_and_unixgram_are_measured() {
    let dir = TempDir::new("bench-udp");
    let gram = format!("unixgram:{}", dir.file("echo.sock"));
    let server = Server::start(util::serve_args(
        &[
            ("udp-echo", "127.0.0.1:0"),
            ("udp-echo", gram.as_str()),
            ("time", "127.0.0.1:0"),
        ],
        &[],
    ));
    let udp = server.udp("udp-echo").to_string();
    let closed = report(&bench(&[
        "--addr",
        &udp,
        "--conns",
        "4",
        "--depth",
        "8",
        "--duration",
        "1s",
        "--json",
    ]));
    assert!(n(&closed, "replies") > 0, "{closed}");
    for key in ["lost", "reordered", "duplicates"] {
        assert_eq!(n(&closed, key), 0, "{key} over loopback: {closed}");
    }
    assert_eq!(closed["count_only"], false);

    let open = report(&bench(&[
        "--addr",
        &udp,
        "--rate",
        "2000",
        "--duration",
        "1s",
        "--json",
    ]));
    assert!(n(&open, "replies") > 0 && n(&open, "lost") == 0, "{open}");
    // The schedule, not the server, sets the pace: no more than the rate asked (and a margin).
    assert!(n(&open, "sent") <= 2600, "{open}");

    let time = server.udp("time").to_string();
    let t = report(&bench(&[
        "--addr",
        &time,
        "--line",
        "%H:%M:%S",
        "--duration",
        "500ms",
        "--json",
    ]));
    assert!(n(&t, "replies") > 0, "{t}");
    assert_eq!(t["count_only"], true);

    let g = report(&bench(&["--addr", &gram, "--duration", "500ms", "--json"]));
    assert!(n(&g, "replies") > 0 && n(&g, "lost") == 0, "{g}");
}

/// A UDP peer that answers every `every`-th datagram (0: never), until dropped.
struct Peer {
    addr: String,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Peer {
    fn start(every: u64) -> Peer {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = sock.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut buf = [0u8; 65536];
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                if let Ok((len, from)) = sock.recv_from(&mut buf) {
                    i += 1;
                    if every > 0 && i.is_multiple_of(every) {
                        let _ = sock.send_to(&buf[..len], from);
                    }
                }
            }
        });
        Peer {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn loss_is_reported_and_a_silent_server_ends_the_run_with_an_error() {
    let halves = Peer::start(2);
    let r = report(&bench(&[
        "--addr",
        &halves.addr,
        "--timeout",
        "100ms",
        "--duration",
        "1s",
        "--json",
    ]));
    assert!(n(&r, "replies") > 0 && n(&r, "lost") > 0, "{r}");
    let pct = r["loss_percent"].as_f64().unwrap();
    assert!((20.0..=80.0).contains(&pct), "about half lost: {r}");

    let silent = Peer::start(0);
    let out = bench(&[
        "--addr",
        &silent.addr,
        "--timeout",
        "100ms",
        "--duration",
        "500ms",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no reply at all") && err.contains("datagrams lost"),
        "{err}"
    );
}

#[test]
fn addresses_and_sizes_that_cannot_work_are_clear_errors() {
    // A TCP-only port: the kernel's port-unreachable ends the run at once.
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = bench(&[
        "--addr",
        &tcp.local_addr().unwrap().to_string(),
        "--duration",
        "5s",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nothing answers UDP"), "{err}");

    // Usage errors, before any socket is opened.
    let dir = TempDir::new("bench-udp-bad");
    let stream = format!("unix:{}", dir.file("s.sock"));
    for (args, says) in [
        (vec!["--addr", stream.as_str()], "is a stream address"),
        (vec!["--size", "70000"], "larger than a UDP datagram"),
        (vec!["--size", "4"], "too small"),
    ] {
        let out = bench(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with("socklab bench: ") && err.contains(says),
            "{args:?}: {err}"
        );
    }
}
