//! Experiment `kernel`: the kernel settings that bound the other experiments, read-only from
//! /proc/sys, and the process's descriptor limit (getrlimit), each with what it means and
//! what the experiments suggest. There is nothing to measure, so no chart.

use super::{Ctx, Section, Table, TuneError, bytes};

/// A sysctl's value as text (`?` when unreadable), whitespace squeezed.
fn sysctl(name: &str) -> String {
    let path = format!("/proc/sys/{}", name.replace('.', "/"));
    std::fs::read_to_string(path)
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The first number of a sysctl's value.
fn first_number(v: &str) -> Option<u64> {
    v.split_whitespace().next()?.parse().ok()
}

/// Runs the experiment.
pub fn run(_ctx: &Ctx, sec: &mut Section) -> Result<(), TuneError> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let nofile = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        let show = |v: libc::rlim_t| {
            if v == libc::RLIM_INFINITY {
                "unlimited".to_string()
            } else {
                v.to_string()
            }
        };
        format!("{} soft, {} hard", show(lim.rlim_cur), show(lim.rlim_max))
    } else {
        "?".into()
    };
    let somaxconn = sysctl("net.core.somaxconn");
    let rmem_max = sysctl("net.core.rmem_max");
    let wmem_max = sysctl("net.core.wmem_max");
    let ports = sysctl("net.ipv4.ip_local_port_range");
    let port_count = {
        let mut it = ports
            .split_whitespace()
            .filter_map(|p| p.parse::<u64>().ok());
        match (it.next(), it.next()) {
            (Some(lo), Some(hi)) if hi >= lo => (hi - lo + 1).to_string(),
            _ => "?".into(),
        }
    };
    let capped = |max: &str| match first_number(max) {
        Some(m) => format!(
            "asking 1 MiB gives {} (doubled); asks above {} are cut to it before doubling",
            bytes((2 << 20).min(2 * m as usize)),
            bytes(m as usize)
        ),
        None => "?".into(),
    };
    let rows: Vec<(&str, String, String, String)> = vec![
        (
            "net.core.somaxconn",
            somaxconn.clone(),
            "the cap on any listen backlog".into(),
            format!(
                "backlog: --backlog above {somaxconn} is silently cut to {somaxconn}; the `somaxconn=` of the listening line shows it"
            ),
        ),
        (
            "net.ipv4.tcp_max_syn_backlog",
            sysctl("net.ipv4.tcp_max_syn_backlog"),
            "half-open (SYN_RECV) connections kept per listener".into(),
            "backlog: bounds handshakes in progress when the accept queue is full".into(),
        ),
        (
            "net.ipv4.tcp_syncookies",
            sysctl("net.ipv4.tcp_syncookies"),
            "answer SYNs statelessly when the SYN queue overflows (1 = only then)".into(),
            "backlog: keeps a SYN flood from filling the SYN queue; does not help a full accept queue".into(),
        ),
        (
            "net.ipv4.tcp_abort_on_overflow",
            sysctl("net.ipv4.tcp_abort_on_overflow"),
            "1: reset connections the full accept queue cannot take; 0: drop and let the client retry".into(),
            "backlog: with 0, a burst past the backlog shows as slow connects, not refusals".into(),
        ),
        (
            "net.ipv4.tcp_tw_reuse",
            sysctl("net.ipv4.tcp_tw_reuse"),
            "outgoing connects may reuse a TIME_WAIT port (1 all, 2 loopback only)".into(),
            "reuseaddr: helps clients running out of ports; does nothing for a server's bind (SO_REUSEADDR does)".into(),
        ),
        (
            "net.ipv4.tcp_fin_timeout",
            sysctl("net.ipv4.tcp_fin_timeout"),
            "seconds an orphaned connection stays in FIN_WAIT_2".into(),
            "reuseaddr: not the TIME_WAIT time (fixed at 60 s in Linux), despite the folklore".into(),
        ),
        (
            "net.ipv4.ip_local_port_range",
            ports,
            format!("ephemeral ports for outgoing connects ({port_count})"),
            "backlog: a client reaches one server address with at most that many connections at once (plus TIME_WAIT leftovers)".into(),
        ),
        (
            "net.core.rmem_max",
            rmem_max.clone(),
            "the largest SO_RCVBUF an unprivileged setsockopt gets".into(),
            format!("buffers: {}", capped(&rmem_max)),
        ),
        (
            "net.core.wmem_max",
            wmem_max.clone(),
            "the largest SO_SNDBUF an unprivileged setsockopt gets".into(),
            format!("buffers: {}", capped(&wmem_max)),
        ),
        (
            "net.ipv4.tcp_rmem",
            sysctl("net.ipv4.tcp_rmem"),
            "min, default, max of the receive buffer when autotuning (no SO_RCVBUF)".into(),
            "buffers: `default` grows up to the max; a fixed SO_RCVBUF turns autotuning off".into(),
        ),
        (
            "net.ipv4.tcp_wmem",
            sysctl("net.ipv4.tcp_wmem"),
            "min, default, max of the send buffer when autotuning".into(),
            "buffers: as above, for the sending side".into(),
        ),
        (
            "net.core.rmem_default",
            sysctl("net.core.rmem_default"),
            "the receive buffer of a socket that sets no SO_RCVBUF (UDP's queue)".into(),
            "udp-rcvbuf: the `default` rows; a burst larger than this (about half of it in payload) is dropped while the server does not read".into(),
        ),
        (
            "net.ipv4.tcp_keepalive_time",
            sysctl("net.ipv4.tcp_keepalive_time"),
            "seconds idle before the first keepalive probe, when SO_KEEPALIVE is on".into(),
            "keepalive: the default (7200) notices a dead idle peer after two hours; set TCP_KEEPIDLE per socket".into(),
        ),
        (
            "net.ipv4.tcp_keepalive_intvl / probes",
            format!(
                "{} / {}",
                sysctl("net.ipv4.tcp_keepalive_intvl"),
                sysctl("net.ipv4.tcp_keepalive_probes")
            ),
            "seconds between probes, and unanswered probes before the connection is dropped".into(),
            "keepalive: idle + interval x probes is how long a dead idle peer goes unnoticed".into(),
        ),
        (
            "net.ipv4.tcp_retries2",
            sysctl("net.ipv4.tcp_retries2"),
            "retransmissions of unacknowledged data before the connection is dropped (15: about 15 min)".into(),
            "keepalive: why unacknowledged data goes unnoticed for minutes; TCP_USER_TIMEOUT bounds it per socket".into(),
        ),
        (
            "RLIMIT_NOFILE",
            nofile,
            "descriptors this process may hold; every socket is one".into(),
            "backlog: a burst of N connects needs N descriptors here and N in the server (socklab raises its soft limit to the hard one)".into(),
        ),
    ];
    let mut table = Table::new(&["setting", "value", "meaning"]);
    for (name, value, meaning, _) in &rows {
        table.row(vec![name.to_string(), value.clone(), meaning.clone()]);
    }
    sec.table(table);
    sec.say("");
    sec.say("what the experiments suggest:");
    for (name, _, _, hint) in &rows {
        println!("  {name}: {hint}");
        sec.suggests.push(format!("{name}: {hint}"));
    }
    sec.say("(no chart: these are settings, not measurements)");
    Ok(())
}
