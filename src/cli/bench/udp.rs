//! `socklab bench --mode udp`: datagrams to a UDP (or unixgram) echo — udp-echo, udp-upper, any
//! echo — or, with `--line TEXT`, to a server that answers with something else (time): closed
//! loop (`--conns` sockets × `--depth` datagrams in flight) or open loop (`--rate`), one thread.
//!
//! Each echoed datagram carries its sequence number (8 bytes, little-endian) first, so the run
//! counts what UDP may do to it: replies, loss (no reply within `--timeout`: the datagram is
//! given up and another sent), reordering (a reply older than one already received on the
//! socket) and duplicates (a second reply to one datagram). With `--line`, replies carry no
//! number: they are counted, each taken as the answer to the oldest datagram in flight.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::UdpSocket;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::window::{proc_cpu, self_cpu_seconds};
use super::{BenchArgs, Latency};
use crate::addr::ListenAddr;

/// The largest UDP payload over IPv4 (65,535 − 8 UDP − 20 IP header bytes).
pub(super) const MAX_DATAGRAM: usize = 65_507;

/// Bytes of the sequence number at the start of every echoed datagram.
const SEQ: usize = 8;

/// Why a UDP run cannot start or go on.
#[derive(Debug, thiserror::Error)]
pub enum UdpError {
    #[error("{0} is a stream address: --mode udp needs HOST:PORT (UDP) or unixgram:PATH")]
    StreamAddr(String),
    #[error("--size {0} is larger than a UDP datagram can be ({MAX_DATAGRAM} bytes)")]
    TooLarge(usize),
    #[error("--size {0} is too small: an echoed datagram carries an {SEQ}-byte sequence number")]
    TooSmall(usize),
    #[error("cannot open a socket for {addr}: {source}")]
    Socket { addr: String, source: io::Error },
    #[error(
        "nothing answers UDP at {0}: the kernel reported the port unreachable (a TCP-only address?)"
    )]
    Refused(String),
    #[error("cannot send to or receive from {addr}: {source}")]
    Io { addr: String, source: io::Error },
    #[error("no reply at all from {addr}: {lost} datagrams lost")]
    Silent { addr: String, lost: u64 },
}

/// The result of a UDP run (the `--json` object).
#[derive(Debug, Serialize)]
pub struct UdpReport {
    pub addr: String,
    pub mode: &'static str,
    /// Bytes of one datagram.
    pub datagram_bytes: usize,
    /// Replies are counted only (`--line`): no sequence numbers, no reordering or duplicates.
    pub count_only: bool,
    pub sockets: u32,
    pub depth: u32,
    pub rate: Option<f64>,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// Datagrams sent in the window.
    pub sent: u64,
    /// Replies matched to a datagram in the window.
    pub replies: u64,
    pub replies_per_s: f64,
    /// Datagrams given up after `--timeout` without a reply.
    pub lost: u64,
    /// `lost / (replies + lost)`, in percent.
    pub loss_percent: f64,
    /// Replies older than one already received on their socket.
    pub reordered: u64,
    /// Second (or later) replies to one datagram, or replies to a datagram given up.
    pub duplicates: u64,
    /// Per-datagram latency (send, or scheduled send with --rate, to reply), microseconds.
    pub latency_us: Latency,
    pub cpu_s: f64,
    pub cpu_percent: f64,
    pub server_pid: Option<u32>,
    pub server_cpu_s: Option<f64>,
    pub server_cpu_per_reply_us: Option<f64>,
}

/// One socket towards the server.
enum Sock {
    Udp(UdpSocket),
    Unix(UnixDatagram, PathBuf),
}

impl Sock {
    fn send(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sock::Udp(s) => s.send(buf),
            Sock::Unix(s, _) => s.send(buf),
        }
    }
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Udp(s) => s.recv(buf),
            Sock::Unix(s, _) => s.recv(buf),
        }
    }
}

impl Drop for Sock {
    fn drop(&mut self) {
        if let Sock::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// One socket's datagrams in flight and what it has seen.
struct Flight {
    sock: Sock,
    /// Sequence number → when it was sent (or scheduled); in `--line` mode, the queue order.
    pending: HashMap<u64, Instant>,
    order: VecDeque<(u64, Instant)>,
    /// The highest sequence number answered so far (a smaller one after it is reordered).
    highest: Option<u64>,
}

/// When datagrams go out: to keep each socket at its depth (closed loop), or on a fixed
/// schedule, round robin over the sockets (open loop).
struct Schedule {
    /// Open loop: the time between two sends.
    interval: Option<Duration>,
    next_due: Instant,
    rr: usize,
}

impl Schedule {
    /// The sends due now: (socket, the time the datagram is sent or was scheduled for).
    fn due(&mut self, flights: &[Flight], depth: usize, now: Instant) -> Vec<(usize, Instant)> {
        let mut sends = Vec::new();
        let Some(every) = self.interval else {
            for (i, f) in flights.iter().enumerate() {
                sends.extend(std::iter::repeat_n(
                    (i, now),
                    depth.saturating_sub(f.in_flight()),
                ));
            }
            return sends;
        };
        // At most a batch per turn, so that the replies are read between batches.
        while self.next_due <= now && sends.len() < 4096 {
            let i = self.rr % flights.len().max(1);
            self.rr = self.rr.wrapping_add(1);
            if flights.get(i).is_some_and(|f| f.in_flight() < depth) {
                sends.push((i, self.next_due));
            }
            self.next_due += every;
        }
        sends
    }
}

impl Flight {
    fn in_flight(&self) -> usize {
        self.pending.len() + self.order.len()
    }

    /// Sends datagram `seq` (sent or scheduled `at`); `false` when the socket is full.
    fn send(
        &mut self,
        payload: &mut [u8],
        seq: u64,
        at: Instant,
        count_only: bool,
    ) -> io::Result<bool> {
        if !count_only && let Some(head) = payload.get_mut(..SEQ) {
            head.copy_from_slice(&seq.to_le_bytes());
        }
        match self.sock.send(payload) {
            Ok(_) => {
                if count_only {
                    self.order.push_back((seq, at));
                } else {
                    self.pending.insert(seq, at);
                }
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Reads every reply waiting on the socket and matches it to its datagram; returns whether
    /// any came.
    fn take_replies(
        &mut self,
        buf: &mut [u8],
        count_only: bool,
        tally: &mut Tally,
        hist: &mut Histogram<u64>,
    ) -> io::Result<bool> {
        let mut got = false;
        loop {
            let n = match self.sock.recv(buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(got),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            got = true;
            let now = Instant::now();
            let sent_at = if count_only {
                self.order.pop_front().map(|(_, at)| at)
            } else {
                let seq = buf
                    .get(..SEQ.min(n))
                    .and_then(|b| <[u8; SEQ]>::try_from(b).ok())
                    .map(u64::from_le_bytes);
                seq.and_then(|seq| {
                    let at = self.pending.remove(&seq)?;
                    if self.highest.is_some_and(|h| seq < h) {
                        tally.reordered += 1;
                    }
                    self.highest = Some(self.highest.map_or(seq, |h| h.max(seq)));
                    Some(at)
                })
            };
            match sent_at {
                Some(at) => {
                    tally.replies += 1;
                    let ns = now.saturating_duration_since(at).as_nanos();
                    let _ = hist.record(u64::try_from(ns).unwrap_or(u64::MAX).max(1));
                }
                // A second answer, or one to a datagram already given up.
                None => tally.duplicates += 1,
            }
        }
    }

    /// Gives up on the datagrams that waited `timeout` without a reply; returns how many.
    fn give_up(&mut self, now: Instant, timeout: Duration) -> u64 {
        let before = self.pending.len() + self.order.len();
        self.pending
            .retain(|_, at| now.saturating_duration_since(*at) < timeout);
        while self
            .order
            .front()
            .is_some_and(|(_, at)| now.saturating_duration_since(*at) >= timeout)
        {
            self.order.pop_front();
        }
        before.saturating_sub(self.pending.len() + self.order.len()) as u64
    }
}

/// Checks the arguments of a UDP run; usage errors come before any socket is opened.
pub(super) fn check(args: &BenchArgs) -> Result<(), UdpError> {
    if matches!(args.addr, ListenAddr::Unix(_)) {
        return Err(UdpError::StreamAddr(args.addr.to_string()));
    }
    if args.size > MAX_DATAGRAM {
        return Err(UdpError::TooLarge(args.size));
    }
    if args.line.is_none() && args.size < SEQ {
        return Err(UdpError::TooSmall(args.size));
    }
    Ok(())
}

fn open(args: &BenchArgs, i: u32) -> Result<Sock, UdpError> {
    let addr = args.addr.to_string();
    let err = |source| UdpError::Socket {
        addr: addr.clone(),
        source,
    };
    let sock = match &args.addr {
        ListenAddr::Inet(a) => {
            let local = if a.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
            let s = UdpSocket::bind(local).map_err(err)?;
            s.connect(a).map_err(err)?;
            s.set_nonblocking(true).map_err(err)?;
            Sock::Udp(s)
        }
        ListenAddr::Unixgram(path) => {
            // A reply needs an address to go to: a bound socket of our own.
            let me =
                std::env::temp_dir().join(format!("socklab-bench-{}-{i}.sock", std::process::id()));
            let _ = std::fs::remove_file(&me);
            let s = UnixDatagram::bind(&me).map_err(err)?;
            let sock = Sock::Unix(s, me);
            if let Sock::Unix(s, _) = &sock {
                s.connect(path).map_err(err)?;
                s.set_nonblocking(true).map_err(err)?;
            }
            sock
        }
        ListenAddr::Unix(_) => return Err(UdpError::StreamAddr(addr)),
    };
    Ok(sock)
}

/// Counts of the window.
#[derive(Default)]
struct Tally {
    sent: u64,
    replies: u64,
    lost: u64,
    reordered: u64,
    duplicates: u64,
}

/// Runs the load and gathers the report.
pub(super) fn bench(args: &BenchArgs) -> Result<UdpReport, UdpError> {
    check(args)?;
    let addr = args.addr.to_string();
    let count_only = args.line.is_some();
    let size = match &args.line {
        Some(text) => text.len(),
        None => args.size,
    };
    let mut flights = Vec::new();
    for i in 0..args.conns {
        flights.push(Flight {
            sock: open(args, i)?,
            pending: HashMap::new(),
            order: VecDeque::new(),
            highest: None,
        });
    }
    let mut payload = match &args.line {
        Some(text) => text.clone().into_bytes(),
        None => (0..size)
            .map(|i| b'a'.saturating_add(u8::try_from(i % 26).unwrap_or(0)))
            .collect(),
    };
    let mut buf = vec![0u8; MAX_DATAGRAM.saturating_add(1)];
    let mut hist: Histogram<u64> =
        Histogram::new_with_bounds(1, 100_000_000_000, 3).map_err(|e| UdpError::Io {
            addr: addr.clone(),
            source: io::Error::other(e.to_string()),
        })?;
    let depth = usize::try_from(args.depth).unwrap_or(1);
    let t0 = Instant::now();
    let win_start = t0 + args.warmup;
    let win_end = win_start + args.duration;
    let mut tally = Tally::default();
    let mut next_seq = 0u64;
    let mut schedule = Schedule {
        interval: args.rate.map(|r| Duration::from_secs_f64(1.0 / r)),
        next_due: t0,
        rr: 0,
    };
    let (mut cpu0, mut srv0) = (None, None);
    let io_err = |source: io::Error| {
        if source.kind() == io::ErrorKind::ConnectionRefused {
            UdpError::Refused(addr.clone())
        } else {
            UdpError::Io {
                addr: addr.clone(),
                source,
            }
        }
    };
    loop {
        let now = Instant::now();
        if cpu0.is_none() && now >= win_start {
            cpu0 = Some(self_cpu_seconds());
            srv0 = args.server_pid.and_then(server_cpu_seconds);
            tally = Tally::default();
            hist.reset();
        }
        if now >= win_end {
            break;
        }
        for (i, at) in schedule.due(&flights, depth, now) {
            let Some(f) = flights.get_mut(i) else {
                continue;
            };
            let seq = next_seq;
            next_seq = next_seq.wrapping_add(1);
            if f.send(&mut payload, seq, at, count_only).map_err(io_err)? {
                tally.sent += 1;
            }
        }
        // Receive what has come, on every socket; give up on what waited past the timeout.
        let mut got_any = false;
        for f in &mut flights {
            got_any |= f
                .take_replies(&mut buf, count_only, &mut tally, &mut hist)
                .map_err(io_err)?;
        }
        let now = Instant::now();
        for f in &mut flights {
            tally.lost += f.give_up(now, args.timeout);
        }
        if !got_any {
            // Open loop: never sleep past the next scheduled send (poll's unit is 1 ms; under
            // it, the loop spins, as a load generator may).
            let wait = match schedule.interval {
                Some(_) => schedule.next_due.saturating_duration_since(Instant::now()),
                None => Duration::from_millis(1),
            };
            if wait >= Duration::from_millis(1) {
                wait_readable(&flights, Duration::from_millis(1));
            }
        }
    }
    let wall = Instant::now()
        .saturating_duration_since(win_start)
        .as_secs_f64();
    let duration_s = wall.max(f64::EPSILON);
    let cpu_s = (self_cpu_seconds() - cpu0.unwrap_or(0.0)).max(0.0);
    let server_cpu_s = args
        .server_pid
        .and_then(server_cpu_seconds)
        .zip(srv0)
        .map(|(a, b)| (a - b).max(0.0));
    if tally.replies == 0 && tally.lost > 0 {
        return Err(UdpError::Silent {
            addr,
            lost: tally.lost,
        });
    }
    Ok(report(
        args,
        addr,
        size,
        &tally,
        &hist,
        (duration_s, cpu_s, server_cpu_s),
    ))
}

/// The report of a run: its settings, the window's counts and latency, and the CPU times
/// `(window seconds, this process's CPU seconds, the server's)`.
fn report(
    args: &BenchArgs,
    addr: String,
    size: usize,
    tally: &Tally,
    hist: &Histogram<u64>,
    (duration_s, cpu_s, server_cpu_s): (f64, f64, Option<f64>),
) -> UdpReport {
    let count_only = args.line.is_some();
    let answered = tally.replies.saturating_add(tally.lost);
    UdpReport {
        addr,
        mode: "udp",
        datagram_bytes: size,
        count_only,
        sockets: args.conns,
        depth: args.depth,
        rate: args.rate,
        warmup_s: args.warmup.as_secs_f64(),
        duration_s,
        sent: tally.sent,
        replies: tally.replies,
        replies_per_s: tally.replies as f64 / duration_s,
        lost: tally.lost,
        loss_percent: if answered == 0 {
            0.0
        } else {
            tally.lost as f64 * 100.0 / answered as f64
        },
        reordered: tally.reordered,
        duplicates: tally.duplicates,
        latency_us: Latency::of(hist),
        cpu_s,
        cpu_percent: cpu_s * 100.0 / duration_s,
        server_pid: args.server_pid,
        server_cpu_s,
        server_cpu_per_reply_us: server_cpu_s
            .filter(|_| tally.replies > 0)
            .map(|s| s * 1e6 / tally.replies as f64),
    }
}

/// The server's user plus system CPU time, seconds; `None` when it cannot be read.
fn server_cpu_seconds(pid: u32) -> Option<f64> {
    proc_cpu(pid).ok().map(|c| c.total_s())
}

/// Waits at most `t` for any socket to become readable (poll(2)).
fn wait_readable(flights: &[Flight], t: Duration) {
    use std::os::fd::AsRawFd;
    let mut fds: Vec<libc::pollfd> = flights
        .iter()
        .map(|f| libc::pollfd {
            fd: match &f.sock {
                Sock::Udp(s) => s.as_raw_fd(),
                Sock::Unix(s, _) => s.as_raw_fd(),
            },
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = libc::c_int::try_from(t.as_millis()).unwrap_or(1);
    // SAFETY: `fds` is a valid array of pollfd of the length given, alive for the call.
    unsafe {
        libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms);
    }
}

/// Prints the report: JSON with --json, else a few lines for people.
pub(super) fn print(args: &BenchArgs, r: &UdpReport) {
    if args.json {
        super::report::print_json(r);
        return;
    }
    let rate = r
        .rate
        .map(|x| format!(", open loop at {x} datagrams/s"))
        .unwrap_or_default();
    println!(
        "socklab bench {}: udp ({} B datagrams{}), {} sockets x depth {}{rate}, {:.1} s after {:.1} s warm-up",
        r.addr,
        r.datagram_bytes,
        if r.count_only {
            ", replies counted"
        } else {
            ""
        },
        r.sockets,
        r.depth,
        r.duration_s,
        r.warmup_s
    );
    println!(
        "  replies    {} ({:.0}/s) of {} sent",
        r.replies, r.replies_per_s, r.sent
    );
    println!(
        "  loss       {} ({:.3} %), reordered {}, duplicates {}",
        r.lost, r.loss_percent, r.reordered, r.duplicates
    );
    super::report::print_latency(&r.latency_us);
    super::report::print_cpu(r.cpu_s, r.cpu_percent);
    if let Some(us) = r.server_cpu_per_reply_us {
        println!("  server cpu {us:.2} µs per reply");
    }
}
