//! Experiment `reuseport`: how the kernel spreads connections over the listeners of
//! `serve --workers N`, each worker's own socket bound with SO_REUSEPORT.
//!
//! The kernel picks a listener by a hash of the connection's addresses and ports, so the
//! spread is random-looking but not balanced by load. M connections come from one source
//! address (127.0.0.1, ephemeral ports varying), then M from eight (127.0.0.2 ... 127.0.0.9,
//! loopback answers the whole 127/8); each is proven accepted by an echo, and the server's own
//! counters (`stats`, `per_worker`: each worker's `connections_accepted` on echo) say which
//! worker took how many.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};

use serde_json::Value;
use socket2::{Domain, Socket, Type};

use super::server::Server;
use super::{Ctx, Section, Table, TuneError, chart, wire};

/// Connections accepted on echo per worker, from a `stats` body.
fn per_worker(stats: &Value) -> BTreeMap<u64, u64> {
    stats
        .get("per_worker")
        .and_then(Value::as_array)
        .map(|ws| {
            ws.iter()
                .filter_map(|w| {
                    let id = w.get("worker").and_then(Value::as_u64)?;
                    Some((id, wire::counter(w, "echo", "connections_accepted")))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Opens `m` connections to `addr`, the i-th from `sources[i % len]`, each proven by an echo.
fn open(addr: SocketAddr, sources: &[Ipv4Addr], m: usize) -> Result<Vec<TcpStream>, TuneError> {
    let mut conns = Vec::with_capacity(m);
    for i in 0..m {
        let src = sources.get(i % sources.len().max(1)).copied();
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None)
            .map_err(TuneError::io("create a socket"))?;
        if let Some(ip) = src {
            let from = SocketAddr::new(IpAddr::V4(ip), 0);
            sock.bind(&from.into())
                .map_err(TuneError::io(format!("bind {from}")))?;
        }
        sock.connect_timeout(&addr.into(), wire::IO_TIMEOUT)
            .map_err(TuneError::io(format!("connect to {addr}")))?;
        let mut s: TcpStream = sock.into();
        s.set_read_timeout(Some(wire::IO_TIMEOUT))
            .map_err(TuneError::io("set a read timeout"))?;
        wire::write_all(&mut s, b"w")?;
        let mut back = Vec::new();
        wire::read_exact(&mut s, 1, &mut back)?;
        conns.push(s);
    }
    Ok(conns)
}

/// Runs the experiment.
pub fn run(ctx: &Ctx, sec: &mut Section) -> Result<(), TuneError> {
    if ctx.addr.is_some() {
        return Err(TuneError::NeedsOwnServer);
    }
    let (workers, m): (u64, usize) = if ctx.quick { (4, 64) } else { (4, 400) };
    let server = Server::start(
        &["echo", "files"],
        &["--workers".into(), workers.to_string()],
    )?;
    let echo = server.listener("echo")?;
    sec.say(format!(
        "server: --workers {workers}, echo {} {}",
        echo.addr, echo.options_text
    ));
    let (addr, files) = (echo.addr, server.addr("files")?);
    let result = (|| -> Result<_, TuneError> {
        let before = per_worker(&wire::stats(files)?);
        let one = open(addr, &[Ipv4Addr::LOCALHOST], m)?;
        let mid = per_worker(&wire::stats(files)?);
        drop(one);
        let many: Vec<Ipv4Addr> = (2..=9).map(|d| Ipv4Addr::new(127, 0, 0, d)).collect();
        let conns = open(addr, &many, m)?;
        let after = per_worker(&wire::stats(files)?);
        drop(conns);
        Ok((before, mid, after))
    })();
    server.stop();
    let (before, mid, after) = result?;
    let delta = |a: &BTreeMap<u64, u64>, b: &BTreeMap<u64, u64>, w: u64| {
        b.get(&w)
            .copied()
            .unwrap_or(0)
            .saturating_sub(a.get(&w).copied().unwrap_or(0))
    };
    let ids: Vec<u64> = (0..workers).collect();
    let from_one: Vec<u64> = ids.iter().map(|w| delta(&before, &mid, *w)).collect();
    let from_many: Vec<u64> = ids.iter().map(|w| delta(&mid, &after, *w)).collect();
    let mut table = Table::new(&[
        "worker",
        "from 127.0.0.1",
        "from 127.0.0.2-9",
        "share (one source)",
        "share (eight)",
    ]);
    let pct = |n: u64| format!("{:.0} %", n as f64 * 100.0 / m.max(1) as f64);
    for (i, w) in ids.iter().enumerate() {
        let (a, b) = (
            from_one.get(i).copied().unwrap_or(0),
            from_many.get(i).copied().unwrap_or(0),
        );
        table.row(vec![
            w.to_string(),
            a.to_string(),
            b.to_string(),
            pct(a),
            pct(b),
        ]);
    }
    table.row(vec![
        "all".into(),
        from_one.iter().sum::<u64>().to_string(),
        from_many.iter().sum::<u64>().to_string(),
        String::new(),
        String::new(),
    ]);
    sec.table(table);
    sec.say(format!(
        "{m} connections each time, counted by the server's own per-worker counters (stats, per_worker). SO_REUSEPORT hashes the four-tuple: the source port varies even from one address, so both spread; neither balances by load (a worker with slow connections gets as many new ones as an idle one), and a worker that stops accepting keeps its share queued."
    ));
    let span = |v: &[u64]| {
        let lo = v.iter().min().copied().unwrap_or(0);
        let hi = v.iter().max().copied().unwrap_or(0);
        (lo, hi)
    };
    let (lo1, hi1) = span(&from_one);
    let (lo8, hi8) = span(&from_many);
    let title = format!(
        "{m} connections over {workers} SO_REUSEPORT workers: {lo1}-{hi1} per worker from one address, {lo8}-{hi8} from eight"
    );
    sec.suggest("SO_REUSEPORT spreads connections roughly evenly by hash, not by load: size workers to cores, and keep per-connection work short so no worker falls behind with its share.");
    let labels: Vec<String> = ids.iter().map(|w| format!("worker {w}")).collect();
    let svg = chart::bars(
        &ctx.out,
        "reuseport.svg",
        &chart::Spec {
            title: &title,
            x_desc: "worker (its own SO_REUSEPORT listener)",
            y_desc: "connections accepted (count)",
            labels: &labels,
            empty_note: "no connection was accepted",
            missing: "",
        },
        &[
            chart::Series {
                name: "from one address (127.0.0.1)".into(),
                values: from_one.iter().map(|v| *v as f64).collect(),
            },
            chart::Series {
                name: "from eight addresses (127.0.0.2-9)".into(),
                values: from_many.iter().map(|v| *v as f64).collect(),
            },
        ],
    )?;
    sec.chart(svg);
    Ok(())
}
