//! Experiment `backlog`: for each listen backlog, a burst of simultaneous non-blocking
//! connects while the server is not accepting, and what became of them.
//!
//! The server is frozen with SIGSTOP for a moment (the kernel still answers handshakes for
//! it: only `accept` stops), the burst is fired, then SIGCONT lets it accept again. The
//! kernel queues at most backlog+1 fully established connections for a listener (the cap
//! being net.core.somaxconn); once that queue is full it drops further SYNs (and the final
//! ACKs of handshakes in progress) instead of refusing them, unless
//! net.ipv4.tcp_abort_on_overflow is 1. A dropped SYN is retried by the client after 1 s,
//! then 3 s, 7 s... (its retransmission timeout doubling), so a small backlog shows up as
//! connects that take seconds, not as errors.

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use super::server::Server;
use super::{Ctx, Section, Table, TuneError, chart};

/// What became of one connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Still in progress (the SYN is being retried).
    Pending,
    /// Established while the server was stopped.
    WhileStopped,
    /// Established after the server resumed.
    AfterResume,
    /// ECONNREFUSED (a RST).
    Refused,
    /// Any other error (timeout, no ephemeral port...).
    Failed,
}

/// The outcome of one burst.
struct Burst {
    /// The backlog asked for.
    backlog: i32,
    /// The cap on it, from the `listening` line.
    somaxconn: String,
    /// Connects fired.
    fired: usize,
    /// Count per fate.
    while_stopped: usize,
    /// Established after SIGCONT.
    after_resume: usize,
    /// Refused.
    refused: usize,
    /// Other errors.
    failed: usize,
    /// Still pending at the deadline.
    pending: usize,
    /// Established connections that echoed a byte back before the deadline.
    echoed: usize,
    /// Milliseconds until the last connect that completed did.
    last_ms: u128,
}

/// Runs the experiment.
pub fn run(ctx: &Ctx, sec: &mut Section) -> Result<(), TuneError> {
    if ctx.addr.is_some() {
        return Err(TuneError::NeedsOwnServer);
    }
    let (backlogs, fired, stopped, window): (&[i32], usize, u64, u64) = if ctx.quick {
        (&[1, 128], 256, 300, 1_600)
    } else {
        (&[1, 8, 128, 1024], 2_000, 500, 3_600)
    };
    let fired = fired.min(fd_room());
    let stopped = Duration::from_millis(stopped);
    let window = Duration::from_millis(window);
    sec.say(format!("each burst: {fired} non-blocking connects at once; the server is frozen (SIGSTOP) for {stopped:?}, then resumed; connects are watched for {window:?} in all (a deliberate wait: it lets the clients' SYN retries at 1 s and 3 s happen), then each established connection sends one byte and waits for its echo"));
    let mut bursts = Vec::new();
    for &backlog in backlogs {
        let server = Server::start(&["echo"], &["--backlog".into(), backlog.to_string()])?;
        let l = server.listener("echo")?;
        sec.say(format!("server: {} {}", l.addr, l.options_text));
        let somaxconn = l.option("somaxconn").to_string();
        let addr = l.addr;
        let b = burst(&server, addr, backlog, somaxconn, fired, stopped, window);
        server.stop();
        bursts.push(b?);
    }
    let mut table = Table::new(&[
        "backlog",
        "somaxconn",
        "connects",
        "up while stopped",
        "up after resume",
        "still retrying SYN",
        "refused",
        "other errors",
        "echoed in 2 s",
        "last up (ms)",
    ]);
    for b in &bursts {
        table.row(vec![
            b.backlog.to_string(),
            b.somaxconn.clone(),
            b.fired.to_string(),
            b.while_stopped.to_string(),
            b.after_resume.to_string(),
            b.pending.to_string(),
            b.refused.to_string(),
            b.failed.to_string(),
            b.echoed.to_string(),
            b.last_ms.to_string(),
        ]);
    }
    sec.table(table);
    sec.say("");
    sec.say("While the server does not accept, the kernel completes at most backlog+1 handshakes into its accept queue; later SYNs are dropped, not refused (no RST unless net.ipv4.tcp_abort_on_overflow=1), so clients retry after 1 s, 3 s, 7 s. \"up while stopped\" can exceed backlog+1: a client counts its connect done at the SYN-ACK, while the server, its queue full, drops the final ACK and completes the connection later (when it retransmits the SYN-ACK or the client's first data arrives): \"echoed in 2 s\" below \"up\" counts clients that believe they are connected while the server has not accepted them yet. A backlog is a burst absorber: with a small one, a burst costs whole seconds of SYN retries; with backlog >= the burst (and somaxconn >= backlog), every connect completes at once.");
    let labels: Vec<String> = bursts
        .iter()
        .map(|b| format!("backlog {}", b.backlog))
        .collect();
    let summary: Vec<String> = bursts
        .iter()
        .map(|b| {
            format!(
                "backlog {}: {} of {} echoed in 2 s",
                b.backlog, b.echoed, b.fired
            )
        })
        .collect();
    let title = if summary.is_empty() {
        "A burst of connects against a listener that is not accepting".to_string()
    } else {
        format!("A burst of connects, server frozen: {}", summary.join("; "))
    };
    if let (Some(small), Some(big)) = (bursts.first(), bursts.last())
        && big.echoed > small.echoed
    {
        sec.suggest(format!(
            "Size the backlog for the largest burst the server may not accept at once (raise net.core.somaxconn with it): backlog {} answered {} of {} within 2 s, backlog {} answered {}.",
            small.backlog, small.echoed, small.fired, big.backlog, big.echoed
        ));
    } else {
        sec.suggest("A larger backlog made no difference to this burst; the burst fitted, or somaxconn capped both.".to_string());
    }
    let col = |f: fn(&Burst) -> usize| bursts.iter().map(|b| f(b) as f64).collect::<Vec<_>>();
    let svg = chart::bars(
        &ctx.out,
        "backlog.svg",
        &chart::Spec {
            title: &title,
            x_desc: "listen backlog",
            y_desc: "connections (count)",
            labels: &labels,
            empty_note: "no burst was fired",
            missing: "",
        },
        &[
            chart::Series {
                name: "up while stopped".into(),
                values: col(|b| b.while_stopped),
            },
            chart::Series {
                name: "up after resume".into(),
                values: col(|b| b.after_resume),
            },
            chart::Series {
                name: "still retrying SYN at the deadline".into(),
                values: col(|b| b.pending),
            },
            chart::Series {
                name: "refused or failed".into(),
                values: col(|b| b.refused + b.failed),
            },
            chart::Series {
                name: "echoed in 2 s".into(),
                values: col(|b| b.echoed),
            },
        ],
    )?;
    sec.chart(svg);
    Ok(())
}

/// How many sockets this process can still open, leaving some room.
fn fd_room() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    if ok {
        usize::try_from(lim.rlim_cur)
            .unwrap_or(usize::MAX)
            .saturating_sub(128)
            .max(16)
    } else {
        1_000
    }
}

/// Fires one burst and follows it to the deadline.
fn burst(
    server: &Server,
    addr: SocketAddr,
    backlog: i32,
    somaxconn: String,
    fired: usize,
    stopped: Duration,
    window: Duration,
) -> Result<Burst, TuneError> {
    let mut poll = Poll::new().map_err(TuneError::io("create a poll"))?;
    let mut events = Events::with_capacity(1024);
    server.signal(libc::SIGSTOP);
    let start = Instant::now();
    let mut socks: Vec<Option<TcpStream>> = Vec::with_capacity(fired);
    let mut fate = vec![Fate::Pending; fired];
    let mut last = Duration::ZERO;
    for (i, f) in fate.iter_mut().enumerate() {
        match TcpStream::connect(addr) {
            Ok(mut s) => {
                match poll
                    .registry()
                    .register(&mut s, Token(i), Interest::WRITABLE)
                {
                    Ok(()) => socks.push(Some(s)),
                    Err(_) => {
                        *f = Fate::Failed;
                        socks.push(None);
                    }
                }
            }
            Err(e) => {
                *f = if e.kind() == ErrorKind::ConnectionRefused {
                    Fate::Refused
                } else {
                    Fate::Failed
                };
                socks.push(None);
            }
        }
    }
    let resume_at = start + stopped;
    let deadline = start + window;
    let mut resumed = false;
    loop {
        let now = Instant::now();
        if !resumed && now >= resume_at {
            server.signal(libc::SIGCONT);
            resumed = true;
        }
        let pending = fate.iter().filter(|f| **f == Fate::Pending).count();
        if now >= deadline || (resumed && pending == 0) {
            break;
        }
        let wake = if resumed {
            deadline
        } else {
            resume_at.min(deadline)
        };
        let timeout = wake.saturating_duration_since(now);
        match poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                server.signal(libc::SIGCONT);
                return Err(TuneError::io("poll")(e));
            }
        }
        for ev in events.iter() {
            let i = ev.token().0;
            let (Some(f), Some(Some(s))) = (fate.get_mut(i), socks.get_mut(i)) else {
                continue;
            };
            if *f != Fate::Pending {
                continue;
            }
            let err = match s.take_error() {
                Ok(Some(e)) | Err(e) => Some(e),
                Ok(None) => None,
            };
            *f = match (err, s.peer_addr()) {
                (Some(e), _) if e.kind() == ErrorKind::ConnectionRefused => Fate::Refused,
                (Some(_), _) => Fate::Failed,
                (None, Ok(_)) => {
                    last = start.elapsed();
                    if resumed {
                        Fate::AfterResume
                    } else {
                        Fate::WhileStopped
                    }
                }
                (None, Err(e)) if e.kind() == ErrorKind::NotConnected => Fate::Pending,
                (None, Err(_)) => Fate::Failed,
            };
        }
    }
    if !resumed {
        server.signal(libc::SIGCONT);
    }
    let echoed = echo_check(&mut poll, &mut socks, &fate)?;
    let count = |x: Fate| fate.iter().filter(|f| **f == x).count();
    Ok(Burst {
        backlog,
        somaxconn,
        fired,
        while_stopped: count(Fate::WhileStopped),
        after_resume: count(Fate::AfterResume),
        refused: count(Fate::Refused),
        failed: count(Fate::Failed),
        pending: count(Fate::Pending),
        echoed,
        last_ms: last.as_millis(),
    })
}

/// Sends one byte on every established connection and counts the echoes that come back
/// within two seconds.
fn echo_check(
    poll: &mut Poll,
    socks: &mut [Option<TcpStream>],
    fate: &[Fate],
) -> Result<usize, TuneError> {
    let mut waiting = 0usize;
    let mut done = vec![true; socks.len()];
    for (i, (slot, f)) in socks.iter_mut().zip(fate).enumerate() {
        let Some(s) = slot else { continue };
        if !matches!(f, Fate::WhileStopped | Fate::AfterResume) {
            continue;
        }
        if s.write(b"x").ok() == Some(1)
            && poll
                .registry()
                .reregister(s, Token(i), Interest::READABLE)
                .is_ok()
            && let Some(d) = done.get_mut(i)
        {
            *d = false;
            waiting += 1;
        }
    }
    let mut echoed = 0;
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut events = Events::with_capacity(1024);
    let mut buf = [0u8; 16];
    while waiting > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match poll.poll(&mut events, Some(left)) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(TuneError::io("poll")(e)),
        }
        for ev in events.iter() {
            let i = ev.token().0;
            let (Some(d), Some(Some(s))) = (done.get_mut(i), socks.get_mut(i)) else {
                continue;
            };
            if *d {
                continue;
            }
            match s.read(&mut buf) {
                Ok(n) if n > 0 => {
                    echoed += 1;
                    *d = true;
                    waiting -= 1;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                _ => {
                    *d = true;
                    waiting -= 1;
                }
            }
        }
    }
    Ok(echoed)
}
