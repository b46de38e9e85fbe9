//! One chat room over three hosts (issue 19, "a real multi-host test"): three `socklab serve`
//! and one `redis-server`, each in a network namespace of its own, joined by veth pairs to a
//! bridge in a fifth namespace where HAProxy (`mode tcp`, `send-proxy-v2`) fronts each host.
//! The test reaches the bridge through one more veth pair, so its members connect through
//! HAProxy like clients of a real deployment.
//!
//! Members on every host; a line from each reaches every other member exactly once; `/who` and
//! nick uniqueness hold across hosts; Redis is killed and restarted and the room comes back with
//! its notices; one host is killed and its members vanish from `/who` within the presence TTL.
//!
//! Needs root and `ip` (as CI has); elsewhere it says why and returns. Under CI it may not skip.

mod util;

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use util::chatbus::{Member, Redis};
use util::netns::ip;
use util::{Server, TempDir};

const T: Duration = Duration::from_secs(10);
/// The test network (a benchmarking range, inside namespaces this test makes).
const NET: &str = "198.18.19";
const LB_IP: &str = "198.18.19.1";
const REDIS_IP: &str = "198.18.19.2";
const TEST_IP: &str = "198.18.19.100";
const HOSTS: [&str; 3] = ["h1", "h2", "h3"];

fn host_ip(i: usize) -> String {
    format!("{NET}.{}", 11 + i)
}

/// The namespaces and links; removed on drop (a namespace's removal takes its veth ends).
struct Net {
    /// The bridge's namespace, where HAProxy runs.
    lb: String,
    /// Redis's, then each host's.
    others: Vec<String>,
    /// The test's own veth end, in this (the root) namespace.
    test_dev: String,
}

impl Net {
    fn ns(&self, name: &str) -> &str {
        let i = match name {
            "redis" => 0,
            h => 1 + HOSTS.iter().position(|x| *x == h).expect("a host"),
        };
        &self.others[i]
    }

    fn create() -> Result<Net, String> {
        let id = std::process::id() % 100_000;
        let lb = format!("sllb{id}");
        let mut net = Net {
            lb: lb.clone(),
            others: Vec::new(),
            test_dev: format!("slt{id}"),
        };
        ip(&["netns", "add", &lb])?;
        ip(&["-n", &lb, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            &lb,
            "addr",
            "add",
            &format!("{LB_IP}/24"),
            "dev",
            "br0",
        ])?;
        ip(&["-n", &lb, "link", "set", "br0", "up"])?;
        ip(&["-n", &lb, "link", "set", "lo", "up"])?;
        let mut legs: Vec<(String, String)> = vec![("redis".into(), REDIS_IP.into())];
        for (i, h) in HOSTS.iter().enumerate() {
            legs.push(((*h).into(), host_ip(i)));
        }
        for (k, (name, addr)) in legs.iter().enumerate() {
            let ns = format!("sl{name}{id}");
            ip(&["netns", "add", &ns])?;
            net.others.push(ns.clone());
            let (inner, outer) = (format!("sli{id}x{k}"), format!("slo{id}x{k}"));
            ip(&[
                "link", "add", &inner, "type", "veth", "peer", "name", &outer,
            ])?;
            ip(&["link", "set", &inner, "netns", &ns])?;
            ip(&["link", "set", &outer, "netns", &lb])?;
            ip(&["-n", &lb, "link", "set", &outer, "master", "br0"])?;
            ip(&["-n", &lb, "link", "set", &outer, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                &inner,
            ])?;
            ip(&["-n", &ns, "link", "set", &inner, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        // The test's leg: one end here, the other on the bridge.
        let outer = format!("slto{id}");
        ip(&[
            "link",
            "add",
            &net.test_dev,
            "type",
            "veth",
            "peer",
            "name",
            &outer,
        ])?;
        ip(&["link", "set", &outer, "netns", &lb])?;
        ip(&["-n", &lb, "link", "set", &outer, "master", "br0"])?;
        ip(&["-n", &lb, "link", "set", &outer, "up"])?;
        ip(&[
            "addr",
            "add",
            &format!("{TEST_IP}/24"),
            "dev",
            &net.test_dev,
        ])?;
        ip(&["link", "set", &net.test_dev, "up"])?;
        Ok(net)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.others.iter().chain([&self.lb]) {
            let _ = ip(&["netns", "del", ns]);
        }
        let _ = ip(&["link", "del", &self.test_dev]);
    }
}

/// HAProxy in the bridge's namespace: `LB_IP:7100+i` → host i, with send-proxy-v2.
struct Haproxy(Child);

impl Haproxy {
    fn start(net: &Net, dir: &TempDir) -> Haproxy {
        let mut cfg = String::from(
            "global\n  maxconn 1000\ndefaults\n  mode tcp\n  timeout connect 5s\n  \
             timeout client 60s\n  timeout server 60s\n",
        );
        for i in 0..HOSTS.len() {
            cfg.push_str(&format!(
                "frontend fe{i}\n  bind {LB_IP}:{}\n  default_backend be{i}\n\
                 backend be{i}\n  server s{i} {}:7070 send-proxy-v2\n",
                7100 + i,
                host_ip(i)
            ));
        }
        let path = dir.file("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let program = if std::path::Path::new("/usr/sbin/haproxy").exists() {
            "/usr/sbin/haproxy"
        } else {
            "haproxy"
        };
        let child = Command::new("ip")
            .args(["netns", "exec", &net.lb, program, "-db", "-f", &path])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy (.ci/run installs it)");
        for i in 0..HOSTS.len() {
            let front = front(i);
            let up = util::wait_until(T, || TcpStream::connect_timeout(&front, T).is_ok());
            assert!(up, "haproxy does not listen on {front}");
        }
        Haproxy(child)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn front(i: usize) -> SocketAddr {
    format!("{LB_IP}:{}", 7100 + i).parse().unwrap()
}

/// Host `i`: chat behind the PROXY protocol, on the bus.
fn start_host(net: &Net, i: usize) -> Server {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", net.ns(HOSTS[i]), util::bin(), "serve"]);
    let chat = format!("{}:7070", host_ip(i));
    let metrics = format!("{}:9107", host_ip(i));
    let bus = format!("{REDIS_IP}:6379");
    cmd.args(util::serve_args(
        &[("chat", chat.as_str()), ("metrics", metrics.as_str())],
        &[
            "--proxy-protocol",
            "chat=v2",
            "--chat-bus",
            &bus,
            "--chat-bus-node",
            HOSTS[i],
            "--chat-bus-presence-ttl",
            "2s",
        ],
    ));
    Server::start_cmd(cmd)
}

fn bus_up(server: &Server) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect_timeout(&server.tcp("metrics"), T) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(T));
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.lines()
        .any(|l| l.starts_with("socklab_chat_bus_up{") && l.ends_with(" 1"))
}

#[test]
fn one_room_over_three_hosts_behind_haproxy() {
    let net = match Net::create() {
        Ok(net) => net,
        Err(why) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run this test (as root, with ip): {why}"
            );
            eprintln!("SKIPPED: network namespaces cannot be made here: {why}");
            return;
        }
    };
    let dir = TempDir::new("multihost");
    let mut redis = Redis::in_netns(Some(net.ns("redis")), REDIS_IP, 6379);
    let mut hosts: Vec<Server> = (0..HOSTS.len()).map(|i| start_host(&net, i)).collect();
    for h in &hosts {
        assert!(
            util::wait_until(T, || bus_up(h)),
            "bus not up: {}",
            h.stderr()
        );
    }
    let _haproxy = Haproxy::start(&net, &dir);

    // Two members per host, through HAProxy; each named after its host. The hosts' chat
    // listeners take only connections that begin with a PROXY v2 header: that these members
    // are served at all is HAProxy's send-proxy-v2 at work.
    let mut members: Vec<(usize, Member, String)> = Vec::new();
    for (i, host) in HOSTS.iter().enumerate() {
        for k in 0..2 {
            let name = format!("{host}m{k}");
            let mut m = Member::connect(front(i), &name);
            let guest = m.welcome(T);
            assert!(guest.starts_with(&format!("guest-{host}-")), "{guest}");
            m.send(&format!("/nick {name}"));
            m.until(T, |l| l == format!("* {guest} is now {name}"));
            members.push((i, m, name));
        }
    }
    let everyone: Vec<String> = {
        let mut v: Vec<String> = members.iter().map(|(_, _, n)| n.clone()).collect();
        v.sort();
        v
    };
    // /who on every member lists all six (presence crosses hosts).
    for (_, m, _) in &mut members {
        let ok = util::wait_until(T, || m.sync(T).1 == everyone);
        assert!(ok, "{}: /who never listed everyone", m.name);
    }

    // A line from each member reaches every other member exactly once.
    for (_, m, name) in &mut members {
        m.send(&format!("line from {name}"));
    }
    for (_, m, me) in &mut members {
        let want: Vec<String> = everyone
            .iter()
            .filter(|n| *n != me)
            .map(|n| format!("{n} line from {n}"))
            .collect();
        let deadline = Instant::now() + T;
        while !want.iter().all(|w| m.log.contains(w)) && Instant::now() < deadline {
            let _ = m.sync(T);
        }
        for w in &want {
            let n = m.log.iter().filter(|l| *l == w).count();
            assert_eq!(n, 1, "{me}: {w:?} read {n} times: {:?}", m.log);
        }
        let own = format!("{me} line from {me}");
        assert!(!m.log.contains(&own), "{me} got its own line back");
    }

    // A nick held on one host is refused on another.
    members[0].1.send("/nick carol");
    members[0].1.until(T, |l| l == "* h1m0 is now carol");
    members[5].1.until(T, |l| l == "* h1m0 is now carol");
    members[5].1.send("/nick carol");
    members[5]
        .1
        .until(T, |l| l == "* error: nick carol is taken");

    // Redis dies and comes back: every member is told both.
    redis.kill();
    for (_, m, _) in &mut members {
        m.until(T, |l| l == "* bus lost: local members only");
    }
    redis.start();
    for (_, m, _) in &mut members {
        m.until(T, |l| l == "* bus restored");
    }
    members[2].1.send("after the outage");
    members[4].1.until(T, |l| l == "h2m0 after the outage");

    // Host h3 dies: its members vanish from the others' /who within the presence TTL.
    let killed = Instant::now();
    hosts[2].signal(libc::SIGKILL);
    let _ = hosts[2].wait_exit(T);
    for (_, m, _) in members.iter_mut().filter(|(i, _, _)| *i != 2) {
        m.until(T, |l| l == "* h3m0 left" || l == "* h3m1 left");
        let ok = util::wait_until(T, || {
            let who = m.sync(T).1;
            !who.iter().any(|n| n.starts_with("h3"))
        });
        assert!(ok, "{}: h3's members stayed in /who", m.name);
    }
    // TTL 2 s, heartbeats and checks every 2/3 s, plus the restored bus settling.
    assert!(
        killed.elapsed() < Duration::from_secs(6),
        "{:?}",
        killed.elapsed()
    );
    drop(hosts);
}
