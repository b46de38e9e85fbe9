//! Discovery with a real broadcast: two network namespaces joined by a veth pair, the server in
//! one and `socklab discover` in the other sending `SOCKLAB?` to the subnet's broadcast
//! address. Where namespaces cannot be made (not root, no `ip`), the test says why and returns.
//! Also over loopback: other payloads are ignored and the answer rate is bounded.

mod util;

use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

use util::Server;
use util::netns::ip;

/// The server's side of the test network (the project's own test hosts, inside namespaces
/// this test creates).
const SERVER_IP: &str = "198.18.7.1";
const CLIENT_IP: &str = "198.18.7.2";
const BROADCAST: &str = "198.18.7.255";

/// Two namespaces and the veth pair between them, removed on drop.
struct TestNet {
    server_ns: String,
    client_ns: String,
}

impl TestNet {
    fn create() -> Result<TestNet, String> {
        let id = std::process::id();
        let net = TestNet {
            server_ns: format!("slsrv{id}"),
            client_ns: format!("slcli{id}"),
        };
        let (s, c) = (net.server_ns.as_str(), net.client_ns.as_str());
        let (vs, vc) = (format!("vs{id}"), format!("vc{id}"));
        ip(&["netns", "add", s])?;
        ip(&["netns", "add", c])?;
        ip(&["link", "add", &vs, "type", "veth", "peer", "name", &vc])?;
        ip(&["link", "set", &vs, "netns", s])?;
        ip(&["link", "set", &vc, "netns", c])?;
        let s_cidr = format!("{SERVER_IP}/24");
        let c_cidr = format!("{CLIENT_IP}/24");
        ip(&[
            "-n", s, "addr", "add", &s_cidr, "brd", BROADCAST, "dev", &vs,
        ])?;
        ip(&[
            "-n", c, "addr", "add", &c_cidr, "brd", BROADCAST, "dev", &vc,
        ])?;
        for (ns, dev) in [(s, vs.as_str()), (c, vc.as_str())] {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end inside it, and so the pair.
        let _ = ip(&["netns", "del", &self.server_ns]);
        let _ = ip(&["netns", "del", &self.client_ns]);
    }
}

#[test]
fn discover_finds_the_server_by_broadcast_across_namespaces() {
    let net = match TestNet::create() {
        Ok(net) => net,
        Err(why) => {
            eprintln!("SKIPPED: network namespaces cannot be made here: {why}");
            return;
        }
    };
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &net.server_ns, util::bin(), "serve"]);
    let echo_at = format!("{SERVER_IP}:0");
    let listeners = [("echo", echo_at.as_str()), ("discovery", "0.0.0.0:7099")];
    cmd.args(util::serve_args(&listeners, &[]));
    let server = Server::start_cmd(cmd);
    let echo_addr = server.tcp("echo").to_string();

    let out = Command::new("ip")
        .args(["netns", "exec", &net.client_ns, util::bin(), "discover"])
        .args(["--broadcast", BROADCAST, "--timeout", "2000"])
        .output()
        .expect("run socklab discover");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "discover failed: {stdout}\n{}\nserver: {}",
        String::from_utf8_lossy(&out.stderr),
        server.stderr()
    );
    assert!(
        stdout.contains(&format!("{SERVER_IP}:7099")),
        "the answer comes from the server's address: {stdout}"
    );
    assert!(
        stdout.contains("echo") && stdout.contains(&echo_addr),
        "the answer lists the echo service at {echo_addr}: {stdout}"
    );
    drop(server);
    drop(net);
}

fn discovery_server(extra: &[&str]) -> Server {
    let listeners = [("discovery", "127.0.0.1:0"), ("time", "127.0.0.1:0")];
    Server::start(util::serve_args(&listeners, extra))
}

use util::udp_ask as ask;

#[test]
fn only_the_exact_probe_is_answered_and_the_rate_is_bounded() {
    let server = discovery_server(&["--discovery-rate", "5"]);
    let addr = server.udp("discovery");
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    for other in [&b"SOCKLAB"[..], b"SOCKLAB?x", b"socklab?", b"", b"\xff\xfe"] {
        assert_eq!(ask(&sock, addr, other), None, "{other:?} must be ignored");
    }
    let answer = ask(&sock, addr, b"SOCKLAB?").expect("the probe is answered");
    let v: serde_json::Value = serde_json::from_slice(&answer).expect("JSON");
    assert!(v["name"].is_string() && v["version"].is_string());
    let services = v["services"].as_array().expect("services");
    assert!(
        services
            .iter()
            .any(|s| s["service"] == "time" && s["transport"] == "udp"),
        "{v}"
    );
    // A flood: at most the burst (5) more answers come back within the second.
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    for _ in 0..50 {
        sock.send_to(b"SOCKLAB?", addr).unwrap();
    }
    let mut answered = 0;
    let mut buf = [0u8; 65536];
    while sock.recv_from(&mut buf).is_ok() {
        answered += 1;
    }
    assert!(
        answered <= 6,
        "at most the rate's burst is answered, got {answered}"
    );
    assert!(answered >= 1, "some probes of the flood are answered");
}
