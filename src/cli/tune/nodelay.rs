//! Experiment `nodelay`: TCP_NODELAY on and off, on the client and on the server
//! (`--no-nodelay`), for small and larger payloads, in two patterns:
//!
//! - `rr` (request/response): the request goes out in one write, then the reply is read.
//! - `wwr` (write-write-read): the request goes out in two writes (a `files` frame's header,
//!   then its body; or the two halves of the payload for a raw echo server), then the reply is
//!   read. This is where Nagle's algorithm meets delayed ACK: with Nagle on, the second small
//!   write waits until the first is acknowledged, and the server, which answers only whole
//!   requests, may hold that ACK back for its delayed-ACK timer (40 ms on Linux).
//!
//! Against our own servers the request is a `files` `echo` frame (the server answers only a
//! whole frame); with `--addr` it is raw bytes to echo and only the client's side varies.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::server::Server;
use super::wire::{self, ClientOptions};
use super::{Ctx, Section, Table, TuneError, bytes, chart, on_off};

/// How a request is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pattern {
    /// One write, then read the reply.
    Rr,
    /// Two writes, then read the reply.
    Wwr,
}

impl Pattern {
    /// Its short name.
    fn name(self) -> &'static str {
        match self {
            Pattern::Rr => "rr",
            Pattern::Wwr => "wwr",
        }
    }
}

/// What the requests are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    /// `files` `echo` frames.
    Frames,
    /// Raw bytes to the echo service.
    Raw,
}

/// The server to measure against.
struct Target {
    /// Its address.
    addr: SocketAddr,
    /// Its TCP_NODELAY as its `listening` line says, `?` when unknown.
    nodelay: String,
    /// The request format.
    proto: Proto,
}

/// One measured configuration.
struct Cell {
    /// The server's TCP_NODELAY.
    server: String,
    /// The client's TCP_NODELAY, read back.
    client: bool,
    /// The pattern.
    pattern: Pattern,
    /// Payload bytes.
    size: usize,
    /// Round-trip latencies in microseconds.
    hist: Histogram<u64>,
}

/// Runs the experiment.
pub fn run(ctx: &Ctx, sec: &mut Section) -> Result<(), TuneError> {
    let sizes: &[usize] = if ctx.quick {
        &[32, 4096]
    } else {
        &[32, 1024, 16384]
    };
    let budget = Duration::from_millis(if ctx.quick { 150 } else { 400 });
    let mut servers = Vec::new();
    let mut targets = Vec::new();
    match ctx.addr {
        Some(addr) => targets.push(Target {
            addr,
            nodelay: "?".into(),
            proto: Proto::Raw,
        }),
        None => {
            for extra in [vec![], vec!["--no-nodelay".to_string()]] {
                let s = Server::start(&["files"], &extra)?;
                let l = s.listener("files")?;
                sec.say(format!("server: {} {}", l.addr, l.options_text));
                targets.push(Target {
                    addr: l.addr,
                    nodelay: l.option("nodelay").to_string(),
                    proto: Proto::Frames,
                });
                servers.push(s);
            }
        }
    }
    let mut cells = Vec::new();
    for t in &targets {
        for client in [true, false] {
            for pattern in [Pattern::Rr, Pattern::Wwr] {
                for &size in sizes {
                    cells.push(measure(t, client, pattern, size, budget)?);
                }
            }
        }
    }
    for s in servers {
        s.stop();
    }
    sec.say(format!(
        "requests: {}; each configuration runs for {budget:?} on a fresh connection; latency in µs",
        match targets.first().map(|t| t.proto) {
            Some(Proto::Raw) => "raw bytes to echo (wwr: the payload's two halves)",
            _ => "files echo frames (wwr: the header in one write, the body in another)",
        }
    ));
    let mut table = Table::new(&[
        "server nodelay",
        "client nodelay",
        "pattern",
        "payload",
        "requests",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "max µs",
        "note",
    ]);
    let mut stalls = 0;
    for c in &cells {
        let h = &c.hist;
        let stall = h.value_at_quantile(0.99) >= 20_000;
        stalls += usize::from(stall);
        table.row(vec![
            c.server.clone(),
            on_off(c.client),
            c.pattern.name().into(),
            bytes(c.size),
            h.len().to_string(),
            h.value_at_quantile(0.5).to_string(),
            h.value_at_quantile(0.9).to_string(),
            h.value_at_quantile(0.99).to_string(),
            h.max().to_string(),
            if stall {
                "<- stalls".into()
            } else {
                String::new()
            },
        ]);
    }
    sec.table(table);
    sec.say("");
    if stalls > 0 {
        sec.say(format!("{stalls} configuration(s) stalled for tens of milliseconds at p99: Nagle's algorithm held a second small write (the client's, or the server's reply) until the first was acknowledged, and the other side held that ACK back for its delayed-ACK timer (40 ms on Linux)."));
    } else {
        sec.say("No configuration stalled this time. Linux often ACKs at once on loopback (quick-ACK mode, and an immediate ACK when the reader empties a queue of small pushed segments), so the Nagle/delayed-ACK stall (tens of ms) shows up mostly between hosts; TCP_NODELAY is what rules it out everywhere.");
    }
    sec.say("rr vs wwr: with TCP_NODELAY on, each write leaves at once; with it off, a small write waits while earlier data is unacknowledged. The same holds on the way back: a server that sends a reply in more than one write (a header, then a body) meets the stall there, which is what the server's --no-nodelay risks.");
    // The worst p99 (and the worst maximum), for the title: the finding when there is a stall.
    let worst = cells.iter().max_by_key(|c| c.hist.value_at_quantile(0.99));
    let worst_max = cells.iter().max_by_key(|c| c.hist.max());
    let who = |c: &Cell| {
        format!(
            "the server's nodelay {}, the client's {} ({}, {})",
            c.server,
            on_off(c.client),
            c.pattern.name(),
            bytes(c.size)
        )
    };
    let title = match (worst, worst_max) {
        (Some(c), _) if c.hist.value_at_quantile(0.99) >= 20_000 => format!(
            "Nagle + delayed ACK: p99 {} with {}",
            chart::micros(c.hist.value_at_quantile(0.99) as f64),
            who(c)
        ),
        (Some(c), Some(m)) if m.hist.max() >= 20_000 => format!(
            "Nagle + delayed ACK: rare stalls of {} (max) with {}; worst p99 {}",
            chart::micros(m.hist.max() as f64),
            who(m),
            chart::micros(c.hist.value_at_quantile(0.99) as f64)
        ),
        (Some(c), _) => format!(
            "No Nagle/delayed-ACK stall this run: the worst p99 is {} (loopback ACKs at once)",
            chart::micros(c.hist.value_at_quantile(0.99) as f64)
        ),
        _ => "Round-trip latency by TCP_NODELAY and write pattern".to_string(),
    };
    if stalls > 0 {
        sec.suggest("Keep TCP_NODELAY on (socklab's default, on both sides) for request/response traffic, or write each request and each reply in one call (writev): a request split over two writes waits for the peer's delayed ACK.");
    } else {
        sec.suggest("TCP_NODELAY costs nothing measurable here and rules out the 40 ms Nagle/delayed-ACK stall between hosts: keep it on; still send each message in one write.");
    }
    // One panel per server setting, one curve per client setting, pattern and payload.
    let mut panels: Vec<chart::Panel> = Vec::new();
    for c in &cells {
        let title = format!("server TCP_NODELAY {}", c.server);
        let curve = chart::Curve {
            name: format!(
                "client {}, {}, {}",
                on_off(c.client),
                c.pattern.name(),
                bytes(c.size)
            ),
            points: [0.5, 0.9, 0.99, 0.999]
                .iter()
                .map(|&q| (q, c.hist.value_at_quantile(q) as f64))
                .chain(std::iter::once((1.0, c.hist.max() as f64)))
                .filter(|_| !c.hist.is_empty())
                .collect(),
        };
        match panels.iter_mut().find(|p| p.title == title) {
            Some(p) => p.curves.push(curve),
            None => panels.push(chart::Panel {
                title,
                curves: vec![curve],
            }),
        }
    }
    let svg = chart::percentiles(
        &ctx.out,
        "nodelay.svg",
        &chart::PercentileSpec {
            title: &title,
            y_desc: "round trip (log scale)",
            guide: Some((40_000.0, "40 ms: Linux's delayed-ACK timer")),
            empty_note: "no request was answered",
        },
        &panels,
    )?;
    sec.chart(svg);
    Ok(())
}

/// Measures one configuration on a fresh connection for `budget`.
fn measure(
    t: &Target,
    client: bool,
    pattern: Pattern,
    size: usize,
    budget: Duration,
) -> Result<Cell, TuneError> {
    let mut s = wire::connect(t.addr, client)?;
    let opts = ClientOptions::of(&s)?;
    let payload = vec![b'x'; size];
    let (first, second) = match t.proto {
        Proto::Frames => (wire::echo_frame_header(size, None)?, payload.clone()),
        Proto::Raw => {
            let (a, b) = payload.split_at(size / 2);
            (a.to_vec(), b.to_vec())
        }
    };
    let whole: Vec<u8> = first.iter().chain(&second).copied().collect();
    let mut dec = wire::response_decoder();
    let mut pending = Vec::new();
    let mut body = Vec::new();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| TuneError::Protocol(e.to_string()))?;
    let mut round = |s: &mut std::net::TcpStream| -> Result<u64, TuneError> {
        let start = Instant::now();
        match pattern {
            Pattern::Rr => wire::write_all(s, &whole)?,
            Pattern::Wwr => {
                wire::write_all(s, &first)?;
                wire::write_all(s, &second)?;
            }
        }
        match t.proto {
            Proto::Frames => {
                wire::read_frame(s, &mut dec, &mut pending, &mut body)?;
            }
            Proto::Raw => wire::read_exact(s, size, &mut body)?,
        }
        if body != payload {
            return Err(TuneError::Protocol(
                "the echo differs from the request".into(),
            ));
        }
        Ok(u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX))
    };
    // Warm-up rounds settle the connection (slow start, the kernel's ACK mode) first.
    for _ in 0..5 {
        round(&mut s)?;
    }
    let start = Instant::now();
    while start.elapsed() < budget && hist.len() < 20_000 {
        let us = round(&mut s)?;
        hist.saturating_record(us.max(1));
    }
    Ok(Cell {
        server: t.nodelay.clone(),
        client: opts.nodelay,
        pattern,
        size,
        hist,
    })
}
