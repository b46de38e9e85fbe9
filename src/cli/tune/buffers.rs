//! Experiment `buffers`: SO_SNDBUF/SO_RCVBUF of 4 KiB, 64 KiB, 1 MiB and the kernel's default
//! (autotuning), set on both the client socket and the server (`--sndbuf`/`--rcvbuf`), against
//! bulk throughput: N MiB pushed through echo by one thread while the main thread reads the
//! echo back. The buffers bound how much can be in flight, so small ones cap throughput.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

use super::server::Server;
use super::wire::{ClientOptions, IO_TIMEOUT};
use super::{Ctx, Section, Table, TuneError, bytes, chart};

/// One measured buffer size.
struct Row {
    /// What was asked for (`None`: the default).
    asked: Option<usize>,
    /// The client's options read back.
    client: ClientOptions,
    /// The server's `rcvbuf`/`sndbuf` from its `listening` line.
    server: String,
    /// Bytes read back.
    moved: u64,
    /// Seconds from the first write to the last byte read.
    secs: f64,
}

/// Runs the experiment.
pub fn run(ctx: &Ctx, sec: &mut Section) -> Result<(), TuneError> {
    let total: u64 = if ctx.quick { 64 << 20 } else { 512 << 20 };
    // A bound on each run: past it the writer stops and what came back so far counts.
    let limit = Duration::from_secs(if ctx.quick { 1 } else { 3 });
    let mut rows = Vec::new();
    for asked in [Some(4 << 10), Some(64 << 10), Some(1 << 20), None] {
        let (server, addr, server_opts) = match ctx.addr {
            Some(addr) => (None, addr, "? (existing server)".to_string()),
            None => {
                let extra: Vec<String> = match asked {
                    Some(n) => vec![
                        "--rcvbuf".into(),
                        n.to_string(),
                        "--sndbuf".into(),
                        n.to_string(),
                    ],
                    None => vec![],
                };
                let s = Server::start(&["echo"], &extra)?;
                let l = s.listener("echo")?;
                let text = format!(
                    "rcvbuf={} sndbuf={}",
                    l.option("rcvbuf"),
                    l.option("sndbuf")
                );
                let addr = l.addr;
                (Some(s), addr, text)
            }
        };
        let (client, moved, secs) = push(addr, asked, total, limit)?;
        rows.push(Row {
            asked,
            client,
            server: server_opts,
            moved,
            secs,
        });
        if let Some(s) = server {
            s.stop();
        }
    }
    sec.say(format!(
        "each run: {} MiB written through echo by one thread, read back by another (at most {limit:?})",
        total >> 20
    ));
    let mut table = Table::new(&[
        "asked",
        "client sndbuf",
        "client rcvbuf",
        "server (listening line)",
        "MiB back",
        "seconds",
        "MB/s",
    ]);
    let label = |a: Option<usize>| a.map_or_else(|| "default".to_string(), bytes);
    for r in &rows {
        table.row(vec![
            label(r.asked),
            r.client.sndbuf.to_string(),
            r.client.rcvbuf.to_string(),
            r.server.clone(),
            format!("{:.1}", r.moved as f64 / f64::from(1 << 20)),
            format!("{:.3}", r.secs),
            format!("{:.0}", mbps(r.moved, r.secs)),
        ]);
    }
    sec.table(table);
    sec.say("");
    sec.say("Linux doubles what SO_SNDBUF/SO_RCVBUF ask for (the extra half is for its bookkeeping) and caps the request at net.core.wmem_max/rmem_max. Setting a size turns off receive-buffer autotuning for that socket, so a small fixed buffer caps the data in flight per round trip, while `default` lets the kernel grow it (up to net.ipv4.tcp_rmem's max).");
    let labels: Vec<String> = rows.iter().map(|r| label(r.asked)).collect();
    let rate = |r: &Row| mbps(r.moved, r.secs);
    let slowest = rows.iter().min_by(|a, b| rate(a).total_cmp(&rate(b)));
    let fastest = rows.iter().max_by(|a, b| rate(a).total_cmp(&rate(b)));
    let title = match (slowest, fastest) {
        (Some(s), Some(f)) => format!(
            "Bulk echo: {} buffers {:.0} MB/s, {} {:.0} MB/s",
            label(s.asked),
            rate(s),
            label(f.asked),
            rate(f)
        ),
        _ => "Bulk echo throughput by SO_SNDBUF/SO_RCVBUF".to_string(),
    };
    if let Some(f) = fastest {
        sec.suggest(format!(
            "Leave SO_SNDBUF/SO_RCVBUF unset (autotuning) unless you must bound memory per connection: the fastest here was {}; a small fixed buffer caps the data in flight per round trip.",
            label(f.asked)
        ));
    }
    let svg = chart::bars(
        &ctx.out,
        "buffers.svg",
        &chart::Spec {
            title: &title,
            x_desc: "SO_SNDBUF/SO_RCVBUF asked for (client and server)",
            y_desc: "throughput (MB/s, bytes echoed back)",
            labels: &labels,
            empty_note: "no run moved data",
            missing: "",
        },
        &[chart::Series {
            name: "MB/s".into(),
            values: rows.iter().map(rate).collect(),
        }],
    )?;
    sec.chart(svg);
    Ok(())
}

/// Megabytes (10^6) per second.
fn mbps(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 / secs / 1e6
    } else {
        0.0
    }
}

/// Connects with the buffers asked for set before `connect` (window scaling is settled at the
/// handshake), pushes `total` bytes through echo and reads them back.
fn push(
    addr: SocketAddr,
    asked: Option<usize>,
    total: u64,
    limit: Duration,
) -> Result<(ClientOptions, u64, f64), TuneError> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)
        .map_err(TuneError::io("create a socket"))?;
    if let Some(n) = asked {
        sock.set_send_buffer_size(n)
            .and_then(|()| sock.set_recv_buffer_size(n))
            .map_err(TuneError::io("set SO_SNDBUF/SO_RCVBUF"))?;
    }
    sock.connect_timeout(&addr.into(), IO_TIMEOUT)
        .map_err(TuneError::io(format!("connect to {addr}")))?;
    let mut reader: TcpStream = sock.into();
    reader
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| reader.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(TuneError::io("set timeouts"))?;
    let client = ClientOptions::of(&reader)?;
    let mut writer = reader
        .try_clone()
        .map_err(TuneError::io("clone the socket"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop_w = stop.clone();
    let start = Instant::now();
    let handle = thread::spawn(move || -> std::io::Result<()> {
        let chunk = vec![0x5au8; 64 << 10];
        let mut sent = 0u64;
        while sent < total && !stop_w.load(Ordering::Relaxed) {
            let n = chunk
                .len()
                .min(usize::try_from(total - sent).unwrap_or(usize::MAX));
            writer.write_all(chunk.get(..n).unwrap_or_default())?;
            sent += n as u64;
        }
        // Half-close: the server sends what is pending, then closes; the reader sees EOF.
        writer.shutdown(Shutdown::Write)
    });
    let mut buf = vec![0u8; 256 << 10];
    let mut moved = 0u64;
    let outcome = loop {
        if start.elapsed() >= limit {
            stop.store(true, Ordering::Relaxed);
        }
        match reader.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => moved += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    let secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let written = handle
        .join()
        .map_err(|_| TuneError::Protocol("the writer thread panicked".into()))?;
    outcome.map_err(TuneError::io("read the echo"))?;
    written.map_err(TuneError::io("write to echo"))?;
    Ok((client, moved, secs))
}
