//! Experiment `time-wait`: connection churn and who is left holding TIME_WAIT.
//!
//! Against a fresh echo server each time (so the counts of one case do not mix with the
//! next's), N connections each connect, exchange a few bytes and close:
//!
//! - `client closes (FIN)`: the client closes first: its side of each connection waits in
//!   TIME_WAIT for 60 s, the server's side is gone.
//! - `client SO_LINGER 0 (RST)`: the client closes with linger 0: a RST instead of a FIN, and
//!   no TIME_WAIT anywhere (and any unsent data is thrown away).
//!
//! The TIME_WAIT counts are what `ss -tan state time-wait` shows for the churn's own
//! connections: the server's port and the client ports the churn used (ss itself when it is
//! installed, else the same count from /proc/net/tcp); older TIME_WAIT sockets towards an
//! earlier server that had the same port number do not count. Then the "reuse"
//! part (the churned sockets had SO_REUSEADDR on, which their TIME_WAIT keeps): binding a
//! new client socket to a local port still in TIME_WAIT fails without SO_REUSEADDR
//! (EADDRINUSE) and succeeds with it (both sockets must have it), and connecting from it to the same server
//! (the same four-tuple as the connection in TIME_WAIT) shows what net.ipv4.tcp_tw_reuse allows.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Instant;

use socket2::{Domain, Socket, Type};

use super::server::Server;
use super::{Ctx, Section, Table, TuneError, chart, wire};

/// One case of churn.
struct Churn {
    /// What was done.
    what: &'static str,
    /// Connections opened and closed.
    conns: usize,
    /// Connections per second, connect to close.
    rate: f64,
    /// TIME_WAIT sockets on the client's side (remote port = the server's).
    tw_client: usize,
    /// TIME_WAIT sockets on the server's side (local port = the server's).
    tw_server: usize,
    /// Where the counts came from (`ss` or `/proc/net/tcp`).
    source: &'static str,
}

/// Runs the experiment.
pub fn run(ctx: &Ctx, sec: &mut Section) -> Result<(), TuneError> {
    if ctx.addr.is_some() {
        return Err(TuneError::NeedsOwnServer);
    }
    let n = if ctx.quick { 50 } else { 500 };
    let mut cases = Vec::new();
    let mut reuse_rows: Vec<Vec<String>> = Vec::new();
    for (what, linger0) in [
        ("client closes (FIN)", false),
        ("client SO_LINGER 0 (RST)", true),
    ] {
        let server = Server::start(&["echo"], &[])?;
        let addr = server.addr("echo")?;
        let start = Instant::now();
        let mut client_ports = HashSet::with_capacity(n);
        let outcome = (|| -> Result<(), TuneError> {
            for _ in 0..n {
                let mut s = connect_reusable(addr)?;
                if let Ok(local) = s.local_addr() {
                    client_ports.insert(local.port());
                }
                wire::write_all(&mut s, b"churn")?;
                let mut back = Vec::new();
                wire::read_exact(&mut s, 5, &mut back)?;
                if linger0 {
                    socket2::SockRef::from(&s)
                        .set_linger(Some(std::time::Duration::ZERO))
                        .map_err(TuneError::io("set SO_LINGER 0"))?;
                }
                drop(s);
            }
            Ok(())
        })();
        let secs = start.elapsed().as_secs_f64();
        let (tw_client, tw_server, source) = time_wait(addr.port(), &client_ports);
        // Reuse, while this server still listens: a local port left in TIME_WAIT by one more
        // FIN-closed connection, from a port that no other socket used (on a busy machine an
        // ephemeral port often also names older TIME_WAIT connections to other servers, made
        // without SO_REUSEADDR, and those refuse the rebind whatever this one sets).
        if !linger0 && outcome.is_ok() {
            reuse_rows = match time_wait_port_of_its_own(addr) {
                Ok(port) => rebind_rows(port, addr),
                Err(e) => vec![vec![
                    "a local port in TIME_WAIT of its own".into(),
                    e.to_string(),
                ]],
            };
        }
        server.stop();
        outcome?;
        cases.push(Churn {
            what,
            conns: n,
            rate: if secs > 0.0 { n as f64 / secs } else { 0.0 },
            tw_client,
            tw_server,
            source,
        });
    }
    let mut table = Table::new(&[
        "close",
        "connections",
        "conn/s",
        "TIME_WAIT client side",
        "TIME_WAIT server side",
        "counted by",
    ]);
    for c in &cases {
        table.row(vec![
            c.what.to_string(),
            c.conns.to_string(),
            format!("{:.0}", c.rate),
            c.tw_client.to_string(),
            c.tw_server.to_string(),
            c.source.to_string(),
        ]);
    }
    sec.table(table);
    let mut reuse = Table::new(&["rebind a local port in TIME_WAIT", "result"]);
    for r in reuse_rows {
        reuse.row(r);
    }
    sec.table(reuse);
    sec.say("The side that closes first keeps TIME_WAIT for 60 s (fixed in Linux): a client that closes first keeps it itself, one socket (and one ephemeral port towards that server) per connection, which is what limits a churning client to about ports/60 connections per second to one server address. SO_LINGER 0 closes with a RST instead: no TIME_WAIT, but the peer sees a reset and unsent data is lost. SO_REUSEADDR lets a new socket bind a port that TIME_WAIT connections still name, when the old socket had it too (the churned ones here did); net.ipv4.tcp_tw_reuse (2: loopback only, the default) lets a connect reuse a TIME_WAIT four-tuple when timestamps tell the connections apart.");
    let fin = cases.first();
    let rst = cases.get(1);
    let title = match (fin, rst) {
        (Some(f), Some(r)) => format!(
            "{} closes: FIN leaves {} TIME_WAIT on the client, {} on the server; SO_LINGER 0 leaves {}",
            f.conns,
            f.tw_client,
            f.tw_server,
            r.tw_client + r.tw_server
        ),
        _ => "Connection churn and TIME_WAIT".to_string(),
    };
    sec.suggest("Let clients close first (the server then holds no TIME_WAIT); a client that churns connections to one address should reuse them (keep-alive, pooling) rather than rely on SO_LINGER 0, which turns every close into a reset.");
    let labels: Vec<String> = cases.iter().map(|c| c.what.to_string()).collect();
    let svg = chart::bars(
        &ctx.out,
        "time-wait.svg",
        &chart::Spec {
            title: &title,
            x_desc: "how the client closed",
            y_desc: "TIME_WAIT sockets after the churn (count)",
            labels: &labels,
            empty_note: "no connection was made",
            missing: "",
        },
        &[
            chart::Series {
                name: "TIME_WAIT on the client side".into(),
                values: cases.iter().map(|c| c.tw_client as f64).collect(),
            },
            chart::Series {
                name: "TIME_WAIT on the server side".into(),
                values: cases.iter().map(|c| c.tw_server as f64).collect(),
            },
        ],
    )?;
    sec.chart(svg);
    Ok(())
}

/// The rows of the rebind table for `port`: without SO_REUSEADDR, then with it.
fn rebind_rows(port: u16, addr: SocketAddr) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for reuseaddr in [false, true] {
        let (bind, connect) = rebind(port, reuseaddr, addr);
        rows.push(vec![
            format!(
                "bind 127.0.0.1:{port}, SO_REUSEADDR {}",
                super::on_off(reuseaddr)
            ),
            bind,
        ]);
        if let Some(c) = connect {
            rows.push(vec![format!("then connect to {addr} (same four-tuple)"), c]);
        }
    }
    rows
}

/// A local port that no socket holds (a bind without SO_REUSEADDR succeeds on it), then one
/// connection to `addr` from it with SO_REUSEADDR on, closed first by this side: the port is in
/// TIME_WAIT for that connection only.
fn time_wait_port_of_its_own(addr: SocketAddr) -> Result<u16, TuneError> {
    let mut last = None;
    for _ in 0..20 {
        let probe = Socket::new(Domain::IPV4, Type::STREAM, None)
            .map_err(TuneError::io("create a socket"))?;
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        probe
            .bind(&any.into())
            .map_err(TuneError::io("bind a free local port"))?;
        let port = probe
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .map(|a| a.port())
            .unwrap_or(0);
        drop(probe);
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None)
            .map_err(TuneError::io("create a socket"))?;
        sock.set_reuse_address(true)
            .map_err(TuneError::io("set SO_REUSEADDR"))?;
        let local = SocketAddr::from(([127, 0, 0, 1], port));
        // Another program may take the port between the probe and this bind: the next one.
        if let Err(e) = sock.bind(&local.into()) {
            last = Some(e);
            continue;
        }
        sock.connect_timeout(&addr.into(), wire::IO_TIMEOUT)
            .map_err(TuneError::io(format!("connect to {addr} from port {port}")))?;
        let mut s: TcpStream = sock.into();
        s.set_read_timeout(Some(wire::IO_TIMEOUT))
            .map_err(TuneError::io("set timeouts"))?;
        wire::write_all(&mut s, b"churn")?;
        let mut back = Vec::new();
        wire::read_exact(&mut s, 5, &mut back)?;
        drop(s);
        return Ok(port);
    }
    Err(TuneError::io("bind a port of its own")(
        last.unwrap_or_else(|| std::io::Error::other("no free port")),
    ))
}

/// Connects to `addr` from a socket with SO_REUSEADDR on: a TIME_WAIT socket keeps its
/// SO_REUSEADDR, and a new bind over it succeeds only when both sockets have it.
fn connect_reusable(addr: SocketAddr) -> Result<TcpStream, TuneError> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)
        .map_err(TuneError::io("create a socket"))?;
    sock.set_reuse_address(true)
        .map_err(TuneError::io("set SO_REUSEADDR"))?;
    sock.connect_timeout(&addr.into(), wire::IO_TIMEOUT)
        .map_err(TuneError::io(format!("connect to {addr}")))?;
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(wire::IO_TIMEOUT))
        .and_then(|()| s.set_write_timeout(Some(wire::IO_TIMEOUT)))
        .map_err(TuneError::io("set timeouts"))?;
    Ok(s)
}

/// Binds a new socket to 127.0.0.1:`port` (in TIME_WAIT) with or without SO_REUSEADDR, and
/// when that works, connects it to `server`; returns what each step gave.
fn rebind(port: u16, reuseaddr: bool, server: SocketAddr) -> (String, Option<String>) {
    let sock = match Socket::new(Domain::IPV4, Type::STREAM, None) {
        Ok(s) => s,
        Err(e) => return (format!("socket failed: {e}"), None),
    };
    if let Err(e) = sock.set_reuse_address(reuseaddr) {
        return (format!("SO_REUSEADDR failed: {e}"), None);
    }
    let local = SocketAddr::from(([127, 0, 0, 1], port));
    if let Err(e) = sock.bind(&local.into()) {
        return (format!("bind failed: {e}"), None);
    }
    let connect = match sock.connect_timeout(&server.into(), wire::IO_TIMEOUT) {
        Ok(()) => {
            let s: TcpStream = sock.into();
            drop(s);
            "connected (tcp_tw_reuse let the TIME_WAIT four-tuple be reused)".to_string()
        }
        Err(e) => format!("connect failed: {e}"),
    };
    ("bound".to_string(), Some(connect))
}

/// TIME_WAIT sockets of the connections between `clients` (local ports) and the server's
/// `port`: on the client's side (local port in `clients`, remote `port`) and on the server's
/// (local `port`, remote in `clients`), and where the counts came from: `ss -tan state
/// time-wait`, or /proc/net/tcp when ss is missing.
pub fn time_wait(port: u16, clients: &HashSet<u16>) -> (usize, usize, &'static str) {
    let from_ss = Command::new("ss")
        .args(["-Htan", "state", "time-wait"])
        .output()
        .ok()
        .filter(|out| out.status.success());
    match from_ss {
        Some(out) => {
            // With a state filter ss prints: Recv-Q Send-Q Local Peer.
            let text = String::from_utf8_lossy(&out.stdout);
            let pairs = text.lines().filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                Some((port_of(f.get(2)?, 10)?, port_of(f.get(3)?, 10)?))
            });
            let (c, s) = count_pairs(pairs, port, clients);
            (c, s, "ss -tan state time-wait")
        }
        None => {
            let (c, s) = count_pairs(proc_time_wait(), port, clients);
            (c, s, "/proc/net/tcp")
        }
    }
}

/// The port at the end of an address as ss (decimal) or /proc/net/tcp (hexadecimal) writes it.
fn port_of(address: &str, radix: u32) -> Option<u16> {
    address
        .rsplit_once(':')
        .and_then(|(_, p)| u16::from_str_radix(p, radix).ok())
}

/// (client side, server side) among TIME_WAIT sockets given as (local port, remote port).
fn count_pairs(
    pairs: impl IntoIterator<Item = (u16, u16)>,
    port: u16,
    clients: &HashSet<u16>,
) -> (usize, usize) {
    let (mut client, mut server) = (0, 0);
    for (local, remote) in pairs {
        if remote == port && clients.contains(&local) {
            client += 1;
        }
        if local == port && clients.contains(&remote) {
            server += 1;
        }
    }
    (client, server)
}

/// The TIME_WAIT sockets of /proc/net/tcp and tcp6, as (local port, remote port).
pub(super) fn proc_time_wait() -> Vec<(u16, u16)> {
    const TIME_WAIT: &str = "06";
    let mut pairs = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(remote), Some(state)) = (f.get(1), f.get(2), f.get(3)) else {
                continue;
            };
            if *state != TIME_WAIT {
                continue;
            }
            if let (Some(l), Some(r)) = (port_of(local, 16), port_of(remote, 16)) {
                pairs.push((l, r));
            }
        }
    }
    pairs
}
