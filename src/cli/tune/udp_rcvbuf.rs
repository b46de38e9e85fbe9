//! Experiment `udp-rcvbuf`: the server's UDP receive buffer (`--rcvbuf`) against bursts of
//! datagrams that arrive while the server is not reading, and what the kernel drops.
//!
//! For each buffer size a server with `udp-echo` (and `files`, to ask for its counters) is
//! started; for each burst it is frozen (SIGSTOP: the kernel still queues datagrams for it,
//! only the reads stop), the burst is sent, and it is resumed. Whatever did not fit in the
//! socket's receive queue was dropped by the kernel: the server's own counter of that
//! (`datagrams_kernel_dropped` in `socklab stats --json`, read from /proc/net/udp's `drops`)
//! is read before and after. The replies are counted until every datagram the kernel kept has
//! been answered, or until none has come for a while (bounded).

use std::net::{SocketAddr, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use super::server::Server;
use super::{Ctx, Section, Table, TuneError, bytes, chart, wire};

/// Bytes per datagram.
const SIZE: usize = 1000;
/// How long the replies may pause before the rest are taken as lost.
const QUIET: Duration = Duration::from_millis(400);

/// One burst against one buffer size.
struct Run {
    /// The receive buffer asked for (`None`: the kernel's default).
    asked: Option<usize>,
    /// The server's rcvbuf as its `listening` line says.
    rcvbuf: String,
    /// Datagrams sent.
    burst: usize,
    /// Datagrams the server's kernel dropped (its counter's increase).
    drops: u64,
    /// Replies received.
    replies: u64,
}

/// Runs the experiment.
pub fn run(ctx: &Ctx, sec: &mut Section) -> Result<(), TuneError> {
    if ctx.addr.is_some() {
        return Err(TuneError::NeedsOwnServer);
    }
    let (sizes, bursts): (&[Option<usize>], &[usize]) = if ctx.quick {
        (&[Some(4 << 10), None], &[50, 500])
    } else {
        (
            &[Some(4 << 10), Some(64 << 10), Some(1 << 20), None],
            &[50, 500, 2000],
        )
    };
    let mut runs = Vec::new();
    for &asked in sizes {
        let extra: Vec<String> = match asked {
            Some(n) => vec!["--rcvbuf".into(), n.to_string()],
            None => vec![],
        };
        let server = Server::start(&["udp-echo", "files"], &extra)?;
        let udp = server
            .listeners
            .iter()
            .find(|l| l.service == "udp-echo")
            .ok_or_else(|| TuneError::Protocol("no udp-echo listener".into()))?;
        sec.say(format!(
            "server: udp-echo {} {}",
            udp.addr, udp.options_text
        ));
        let rcvbuf = udp.option("rcvbuf").to_string();
        let (echo, files) = (udp.addr, server.addr("files")?);
        for &burst in bursts {
            let r = one_burst(&server, echo, files, burst);
            match r {
                Ok((drops, replies)) => runs.push(Run {
                    asked,
                    rcvbuf: rcvbuf.clone(),
                    burst,
                    drops,
                    replies,
                }),
                Err(e) => {
                    server.stop();
                    return Err(e);
                }
            }
        }
        server.stop();
    }
    sec.say(format!(
        "each burst: datagrams of {SIZE} B sent while the server is frozen (SIGSTOP), then it resumes; drops are the server's own counter (stats: datagrams_kernel_dropped); replies are counted until all the kept ones came back or none came for {QUIET:?}"
    ));
    let label = |a: Option<usize>| a.map_or_else(|| "default".to_string(), bytes);
    let mut table = Table::new(&[
        "rcvbuf asked",
        "rcvbuf (listening line)",
        "burst",
        "kernel drops",
        "replies",
        "lost elsewhere",
    ]);
    for r in &runs {
        table.row(vec![
            label(r.asked),
            r.rcvbuf.clone(),
            r.burst.to_string(),
            r.drops.to_string(),
            r.replies.to_string(),
            (r.burst as u64)
                .saturating_sub(r.drops + r.replies)
                .to_string(),
        ]);
    }
    sec.table(table);
    sec.say("A UDP socket's receive queue holds at most SO_RCVBUF bytes of the kernel's bookkeeping (about twice the payload for small datagrams: each carries its buffer's overhead); what arrives while it is full is dropped silently, counted only in /proc/net/udp (drops) and netstat -su (receive buffer errors). A server that pauses (a GC, a full core, SIGSTOP here) loses a burst larger than its queue.");
    let worst = runs.iter().filter(|r| r.drops > 0).max_by_key(|r| r.drops);
    let title = match worst {
        Some(w) => format!(
            "UDP burst while the server pauses: rcvbuf {} dropped {} of {} datagrams",
            label(w.asked),
            w.drops,
            w.burst
        ),
        None => "UDP bursts while the server pauses: no kernel drops this run".to_string(),
    };
    sec.suggest("Size a UDP server's SO_RCVBUF for the largest burst it must survive while not reading (bytes x about 2, under net.core.rmem_max), and watch datagrams_kernel_dropped: UDP loss inside the host shows nowhere else.");
    let labels: Vec<String> = runs
        .iter()
        .map(|r| format!("rcvbuf {}, burst {}", label(r.asked), r.burst))
        .collect();
    let svg = chart::bars(
        &ctx.out,
        "udp-rcvbuf.svg",
        &chart::Spec {
            title: &title,
            x_desc: "server SO_RCVBUF asked for, datagrams in the burst",
            y_desc: "datagrams (count)",
            labels: &labels,
            empty_note: "no burst was sent",
            missing: "",
        },
        &[
            chart::Series {
                name: "dropped by the server's kernel".into(),
                values: runs.iter().map(|r| r.drops as f64).collect(),
            },
            chart::Series {
                name: "replies".into(),
                values: runs.iter().map(|r| r.replies as f64).collect(),
            },
        ],
    )?;
    sec.chart(svg);
    Ok(())
}

/// The server's count of kernel drops on udp-echo.
fn drops(files: SocketAddr) -> Result<u64, TuneError> {
    Ok(wire::counter(
        &wire::stats(files)?,
        "udp-echo",
        "datagrams_kernel_dropped",
    ))
}

/// Sends one burst while the server is frozen; returns (kernel drops, replies).
fn one_burst(
    server: &Server,
    echo: SocketAddr,
    files: SocketAddr,
    burst: usize,
) -> Result<(u64, u64), TuneError> {
    let before = drops(files)?;
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
        .map_err(TuneError::io("create a UDP socket"))?;
    // The replies must not be lost on our side: as big a queue as we are allowed.
    let _ = sock.set_recv_buffer_size(8 << 20);
    sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .map_err(TuneError::io("bind a UDP socket"))?;
    let client: UdpSocket = sock.into();
    client
        .set_read_timeout(Some(QUIET))
        .map_err(TuneError::io("set a read timeout"))?;
    let payload = vec![b'u'; SIZE];
    server.signal(libc::SIGSTOP);
    let mut sent = 0u64;
    for _ in 0..burst {
        if client.send_to(&payload, echo).is_ok() {
            sent += 1;
        }
    }
    server.signal(libc::SIGCONT);
    let mut replies = 0u64;
    let mut buf = vec![0u8; SIZE + 100];
    // Read until none comes for QUIET (each read waits at most that), within a bound.
    let deadline = Instant::now() + Duration::from_secs(10);
    while replies < sent && Instant::now() < deadline {
        match client.recv_from(&mut buf) {
            Ok(_) => replies += 1,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    // The server reads the kernel's count when asked, and its single worker also once a
    // second: poll (bounded) until the count covers what did not come back.
    let lost = sent.saturating_sub(replies);
    let deadline = Instant::now() + Duration::from_millis(2500);
    let mut after = drops(files)?;
    while after.saturating_sub(before) < lost && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        after = drops(files)?;
    }
    Ok((after.saturating_sub(before), replies))
}
