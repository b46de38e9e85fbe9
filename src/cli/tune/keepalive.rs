//! Experiment `keepalive`: how long a dead peer goes unnoticed.
//!
//! An echo server runs in a network namespace of its own, joined to this one by a veth pair.
//! Connections are made to it with different options, each proven by an echo; then the link
//! is cut (the namespace's end of the veth is set down: packets vanish, nobody sends a RST or
//! an ICMP error, as when a host loses power or a NAT forgets the flow) and each connection
//! waits, within a bounded window, for the kernel to report the peer gone:
//!
//! - idle, no options: nothing is sent, so nothing can fail: never noticed.
//! - idle, TCP keepalive (SO_KEEPALIVE with TCP_KEEPIDLE/KEEPINTVL/KEEPCNT): probes after the
//!   idle time, then ETIMEDOUT after the unanswered probes.
//! - data unacknowledged, no options: retransmissions back off for about 15 minutes
//!   (net.ipv4.tcp_retries2) before ETIMEDOUT: not noticed within the window.
//! - data unacknowledged, TCP_USER_TIMEOUT: ETIMEDOUT once data has gone unacknowledged for it.
//!
//! Needs root (`ip netns`, veth); otherwise it is skipped with a message.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use socket2::{SockRef, TcpKeepalive};

use super::server::Server;
use super::{Ctx, Section, Table, TuneError, chart, wire};

/// A network namespace and its veth pair, removed when dropped.
struct Netns {
    /// The namespace's name.
    name: String,
    /// The veth end in this namespace.
    outer: String,
    /// The veth end in the namespace.
    inner: String,
}

/// Runs `ip ARGS`; the error says which command failed and why.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// Creates the namespace and the pair: `outer` 10.231.N.1/24 here, `inner` 10.231.N.2/24
    /// there; returns it and the server's address.
    fn create() -> Result<(Netns, std::net::Ipv4Addr), String> {
        let id = std::process::id() % 100_000;
        let net = (std::process::id() % 250) as u8;
        let ns = Netns {
            name: format!("socklab-ka-{id}"),
            outer: format!("slka{id}a"),
            inner: format!("slka{id}b"),
        };
        let (here, there) = (format!("10.231.{net}.1/24"), format!("10.231.{net}.2/24"));
        ip(&["netns", "add", &ns.name])?;
        ip(&[
            "link", "add", &ns.outer, "type", "veth", "peer", "name", &ns.inner, "netns", &ns.name,
        ])?;
        ip(&["addr", "add", &here, "dev", &ns.outer])?;
        ip(&["link", "set", &ns.outer, "up"])?;
        ip(&["-n", &ns.name, "addr", "add", &there, "dev", &ns.inner])?;
        ip(&["-n", &ns.name, "link", "set", &ns.inner, "up"])?;
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok((ns, std::net::Ipv4Addr::new(10, 231, net, 2)))
    }

    /// Cuts the link: the namespace's end goes down, and packets to it vanish.
    fn cut(&self) -> Result<(), String> {
        ip(&["-n", &self.name, "link", "set", &self.inner, "down"])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.outer]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// One connection's options.
#[derive(Debug, Clone, Copy)]
enum Case {
    /// Idle, no options.
    Idle,
    /// Idle, keepalive after `idle`, every `interval`, `count` probes.
    Keepalive {
        /// TCP_KEEPIDLE.
        idle: Duration,
        /// TCP_KEEPINTVL.
        interval: Duration,
        /// TCP_KEEPCNT.
        count: u32,
    },
    /// Data written after the cut, no options.
    Unacked,
    /// Data written after the cut, TCP_USER_TIMEOUT.
    UserTimeout(Duration),
}

impl Case {
    /// The row's label.
    fn label(self) -> String {
        match self {
            Case::Idle => "idle, no keepalive".into(),
            Case::Keepalive {
                idle,
                interval,
                count,
            } => format!(
                "idle, keepalive {}s + {count} x {}s",
                idle.as_secs(),
                interval.as_secs()
            ),
            Case::Unacked => "data unacked, no timeout".into(),
            Case::UserTimeout(t) => format!("data unacked, TCP_USER_TIMEOUT {}s", t.as_secs()),
        }
    }

    /// When the kernel should report the peer gone, if within reach.
    fn expected(self) -> Option<Duration> {
        match self {
            Case::Idle | Case::Unacked => None,
            Case::Keepalive {
                idle,
                interval,
                count,
            } => Some(idle + interval * count),
            Case::UserTimeout(t) => Some(t),
        }
    }
}

/// What a connection saw after the cut.
struct Seen {
    /// The case.
    case: Case,
    /// When it noticed, and the error, or `None` if it did not within the window.
    noticed: Option<(Duration, String)>,
}

/// Runs the experiment.
pub fn run(ctx: &Ctx, sec: &mut Section) -> Result<(), TuneError> {
    if ctx.addr.is_some() {
        return Err(TuneError::NeedsOwnServer);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(TuneError::Unsupported(
            "needs root to build a network namespace with a veth link (ip netns); skipped".into(),
        ));
    }
    let (ns, there) = Netns::create().map_err(|e| {
        TuneError::Unsupported(format!(
            "cannot build a network namespace with a veth link ({e}); skipped"
        ))
    })?;
    let (window, cases) = if ctx.quick {
        (
            Duration::from_secs(5),
            [
                Case::Idle,
                Case::Keepalive {
                    idle: Duration::from_secs(1),
                    interval: Duration::from_secs(1),
                    count: 2,
                },
                Case::Unacked,
                Case::UserTimeout(Duration::from_secs(2)),
            ],
        )
    } else {
        (
            Duration::from_secs(20),
            [
                Case::Idle,
                Case::Keepalive {
                    idle: Duration::from_secs(5),
                    interval: Duration::from_secs(2),
                    count: 3,
                },
                Case::Unacked,
                Case::UserTimeout(Duration::from_secs(8)),
            ],
        )
    };
    let server = Server::start_in_netns(&ns.name, &[("echo", format!("{there}:0"))], &[])
        .map_err(TuneError::from)?;
    let addr = server.addr("echo")?;
    sec.say(format!(
        "server: echo {addr} in network namespace {} (veth {} <-> {}); the link is cut by setting {} down; each connection waits at most {window:?}",
        ns.name, ns.outer, ns.inner, ns.inner
    ));
    let seen = watch(addr, &ns, &cases, window);
    server.stop();
    drop(ns);
    let seen = seen?;
    let mut table = Table::new(&["connection", "expected", "noticed after", "how"]);
    for s in &seen {
        table.row(vec![
            s.case.label(),
            s.case.expected().map_or_else(
                || "not within minutes".into(),
                |d| format!("{:.1} s", d.as_secs_f64()),
            ),
            s.noticed.as_ref().map_or_else(
                || format!("not within {:.0} s", window.as_secs_f64()),
                |(d, _)| format!("{:.1} s", d.as_secs_f64()),
            ),
            s.noticed
                .as_ref()
                .map_or_else(|| "-".into(), |(_, e)| e.clone()),
        ]);
    }
    sec.table(table);
    sec.say("Without keepalive an idle connection to a vanished peer stays ESTABLISHED for ever (the server's side here too: it never learns), and one with unacknowledged data retransmits for about 15 minutes (net.ipv4.tcp_retries2 = 15) before ETIMEDOUT. Keepalive probes an idle connection after TCP_KEEPIDLE (default 7200 s), every TCP_KEEPINTVL, and gives up after TCP_KEEPCNT; TCP_USER_TIMEOUT bounds how long written data may go unacknowledged.");
    let quickest = seen
        .iter()
        .filter_map(|s| s.noticed.as_ref().map(|(d, _)| (s.case.label(), *d)))
        .min_by_key(|(_, d)| *d);
    let title = match quickest {
        Some((label, d)) => format!(
            "A cut link: {label} noticed in {:.1} s; with no options, not within {:.0} s",
            d.as_secs_f64(),
            window.as_secs_f64()
        ),
        None => format!(
            "A cut link: no connection noticed within {:.0} s",
            window.as_secs_f64()
        ),
    };
    sec.suggest("Turn on TCP keepalive with short timers (and TCP_USER_TIMEOUT for connections that send) wherever a peer can vanish without a RST: behind NAT, load balancers, mobile links; the defaults take two hours to notice an idle dead peer.");
    let labels: Vec<String> = seen.iter().map(|s| s.case.label()).collect();
    let svg = chart::bars(
        &ctx.out,
        "keepalive.svg",
        &chart::Spec {
            title: &title,
            x_desc: "connection options",
            y_desc: "seconds until the kernel reported the peer gone",
            labels: &labels,
            empty_note: "no connection was watched",
            missing: "not noticed in the window",
        },
        &[chart::Series {
            name: "noticed after (s)".into(),
            values: seen
                .iter()
                .map(|s| {
                    s.noticed
                        .as_ref()
                        .map_or(f64::NAN, |(d, _)| d.as_secs_f64())
                })
                .collect(),
        }],
    )?;
    sec.chart(svg);
    Ok(())
}

/// Connects one connection per case, cuts the link, and watches each (in a thread of its
/// own) for at most `window`.
fn watch(
    addr: SocketAddr,
    ns: &Netns,
    cases: &[Case],
    window: Duration,
) -> Result<Vec<Seen>, TuneError> {
    let mut conns = Vec::new();
    for &case in cases {
        let mut s = wire::connect(addr, true)?;
        let r = SockRef::from(&s);
        match case {
            Case::Keepalive {
                idle,
                interval,
                count,
            } => {
                let ka = TcpKeepalive::new()
                    .with_time(idle)
                    .with_interval(interval)
                    .with_retries(count);
                r.set_tcp_keepalive(&ka)
                    .map_err(TuneError::io("set TCP keepalive"))?;
            }
            Case::UserTimeout(t) => r
                .set_tcp_user_timeout(Some(t))
                .map_err(TuneError::io("set TCP_USER_TIMEOUT"))?,
            Case::Idle | Case::Unacked => {}
        }
        wire::write_all(&mut s, b"alive")?;
        let mut back = Vec::new();
        wire::read_exact(&mut s, 5, &mut back)?;
        conns.push((case, s));
    }
    ns.cut().map_err(TuneError::Unsupported)?;
    let cut = Instant::now();
    let handles: Vec<_> = conns
        .into_iter()
        .map(|(case, mut s)| {
            thread::spawn(move || -> Seen {
                if matches!(case, Case::Unacked | Case::UserTimeout(_)) {
                    let _ = std::io::Write::write_all(&mut s, b"anyone there?");
                }
                let noticed = wait_for_error(&mut s, cut, window);
                Seen { case, noticed }
            })
        })
        .collect();
    let mut seen = Vec::new();
    for h in handles {
        seen.push(
            h.join()
                .map_err(|_| TuneError::Protocol("a watching thread panicked".into()))?,
        );
    }
    Ok(seen)
}

/// Blocks in `read` until the kernel reports an error or an end (returns when, and which), or
/// until `window` after `cut` has passed (returns `None`).
fn wait_for_error(s: &mut TcpStream, cut: Instant, window: Duration) -> Option<(Duration, String)> {
    let mut buf = [0u8; 64];
    loop {
        let left = window.saturating_sub(cut.elapsed());
        if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
            return None;
        }
        match s.read(&mut buf) {
            Ok(0) => return Some((cut.elapsed(), "end of stream".into())),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) && e.raw_os_error() != Some(libc::ETIMEDOUT) =>
            {
                return None;
            }
            Err(e) => return Some((cut.elapsed(), e.to_string())),
        }
    }
}
