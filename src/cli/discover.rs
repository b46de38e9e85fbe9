//! `socklab discover`: broadcasts the discovery probe `SOCKLAB?` (PROTOCOL.md, "Discovery"),
//! collects every answer until the timeout, and prints each server with its services.

use std::fmt::Write as _;
use std::io::{self, ErrorKind};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;

use crate::service::discovery::{DEFAULT_PORT, DiscoveryInfo, PROBE};

/// Largest answer read: one UDP datagram.
const RECV_BUF: usize = 65_536;
/// Answers kept at most: a broadcast domain with more servers than this is not a lab, and the
/// cap keeps a flood of forged answers from growing memory without bound.
const MAX_SERVERS: usize = 1024;

/// `socklab discover`: find socklab servers on the local network.
#[derive(Debug, Args)]
pub struct DiscoverArgs {
    /// Where to send the probe: a broadcast address, or one server's address.
    #[arg(long, value_name = "ADDR", default_value = "255.255.255.255")]
    pub broadcast: IpAddr,
    /// The discovery port.
    #[arg(long, default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// How long to collect answers: 500ms, 2s… (a plain number is milliseconds).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = super::parse_duration_or_ms)]
    pub timeout: Duration,
}

/// One server that answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Where the answer came from.
    pub from: SocketAddr,
    /// What the server said about itself.
    pub info: DiscoveryInfo,
}

/// Runs `socklab discover`: exit 0 when at least one server answered.
pub fn run(args: &DiscoverArgs) -> ExitCode {
    match discover(args) {
        Ok(found) if found.is_empty() => {
            eprintln!("no server answered");
            ExitCode::FAILURE
        }
        Ok(found) => {
            print!("{}", table(&found));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("socklab discover: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Sends one probe and collects the answers that arrive before the timeout, one per source
/// address, in arrival order. Datagrams that are not a discovery answer are reported on stderr
/// and skipped.
pub fn discover(args: &DiscoverArgs) -> io::Result<Vec<Found>> {
    let local: SocketAddr = match args.broadcast {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    // std sets SO_BROADCAST itself; socket2 stays in sockopt.rs, as DESIGN.md asks.
    let socket = UdpSocket::bind(local)?;
    if args.broadcast.is_ipv4() {
        socket.set_broadcast(true)?;
    }
    socket.send_to(PROBE, (args.broadcast, args.port))?;

    let deadline = Instant::now() + args.timeout;
    let mut found: Vec<Found> = Vec::new();
    let mut buf = vec![0u8; RECV_BUF];
    while found.len() < MAX_SERVERS {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        socket.set_read_timeout(Some(left))?;
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            // An ICMP error for the probe (a unicast address with nothing listening): nobody
            // else will answer a unicast probe either.
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => break,
            Err(e) => return Err(e),
        };
        let Some(datagram) = buf.get(..n) else {
            continue;
        };
        match serde_json::from_slice::<DiscoveryInfo>(datagram) {
            Ok(info) => {
                // A server on several interfaces may hear a broadcast more than once.
                if !found.iter().any(|f| f.from == from) {
                    found.push(Found { from, info });
                }
            }
            Err(e) => eprintln!("ignoring a datagram from {from} that is not an answer: {e}"),
        }
    }
    Ok(found)
}

/// The servers as a table: a line per server (address, name, version), then a line per
/// service, indented.
pub fn table(found: &[Found]) -> String {
    let addr_w = found
        .iter()
        .map(|f| f.from.to_string().len())
        .chain(["SERVER".len()])
        .max()
        .unwrap_or(0);
    let name_w = found
        .iter()
        .map(|f| f.info.name.chars().count())
        .chain(["NAME".len()])
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(out, "{:addr_w$}  {:name_w$}  VERSION", "SERVER", "NAME");
    for f in found {
        let _ = writeln!(
            out,
            "{:addr_w$}  {:name_w$}  {}",
            f.from.to_string(),
            f.info.name,
            f.info.version
        );
        let svc_w = f
            .info
            .services
            .iter()
            .map(|s| s.service.chars().count())
            .max()
            .unwrap_or(0);
        let tr_w = f
            .info
            .services
            .iter()
            .map(|s| s.transport.chars().count())
            .max()
            .unwrap_or(0);
        for s in &f.info.services {
            let _ = writeln!(
                out,
                "    {:svc_w$}  {:tr_w$}  {}",
                s.service, s.transport, s.addr
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::discovery::{Discovery, ServiceEntry};

    fn info(name: &str) -> DiscoveryInfo {
        DiscoveryInfo {
            name: name.into(),
            version: "0.1.0".into(),
            services: vec![
                ServiceEntry {
                    service: "echo".into(),
                    transport: "tcp".into(),
                    addr: "127.0.0.1:7000".into(),
                },
                ServiceEntry {
                    service: "udp-echo".into(),
                    transport: "udp".into(),
                    addr: "127.0.0.1:7000".into(),
                },
            ],
        }
    }

    #[test]
    fn table_lists_servers_then_their_services() {
        let found = [Found {
            from: ([192, 0, 2, 7], 7099).into(),
            info: info("lab"),
        }];
        assert_eq!(
            table(&found),
            "SERVER          NAME  VERSION\n\
             192.0.2.7:7099  lab   0.1.0\n    \
             echo      tcp  127.0.0.1:7000\n    \
             udp-echo  udp  127.0.0.1:7000\n"
        );
    }

    /// A unicast probe on loopback to a socket answering with the discovery service.
    #[test]
    fn finds_a_server_on_loopback() {
        let server = UdpSocket::bind("127.0.0.1:0").expect("bind");
        server
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let port = server.local_addr().expect("addr").port();
        let answering = std::thread::spawn(move || {
            let mut d = Discovery::new(&info("loop"), 20).expect("encodes");
            let mut buf = [0u8; 64];
            let (n, from) = server.recv_from(&mut buf).expect("probe within 10 s");
            let mut reply = Vec::new();
            assert!(d.on_datagram(&buf[..n], None, Instant::now(), &mut reply));
            server.send_to(&reply, from).expect("send");
            // A stray non-answer must be skipped, not end the collection.
            server.send_to(b"not json", from).expect("send");
            server.local_addr().expect("addr")
        });
        let args = DiscoverArgs {
            broadcast: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port,
            timeout: Duration::from_millis(300),
        };
        let found = discover(&args).expect("discover");
        let server_addr = answering.join().expect("server thread");
        assert_eq!(
            found,
            vec![Found {
                from: server_addr,
                info: info("loop")
            }]
        );
    }

    #[test]
    fn nobody_there_is_an_empty_list() {
        // Bind then drop, so the port is (very likely) closed.
        let port = UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("addr")
            .port();
        let args = DiscoverArgs {
            broadcast: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port,
            timeout: Duration::from_millis(200),
        };
        let started = Instant::now();
        assert_eq!(discover(&args).expect("discover"), vec![]);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
