//! `socklab stats`: asks the `files` service for the server's counters (its `stats` command)
//! and prints them as a compact table per service, or the JSON body as it came with `--json`.
//!
//! The connection asking is itself a `files` connection, so `files` always shows at least one
//! accepted and one open.
//!
//! With several workers the server gathers every worker's counters when asked (exact at that
//! moment); the table adds the connections each worker accepted, and names any worker that did
//! not answer in time.
//!
//! The table reads the body loosely: a counter the server does not send counts as 0, and
//! fields the table does not know are left to `--json`, so the command keeps working when the
//! server grows counters.

use std::fmt::Write as _;
use std::process::ExitCode;

use clap::Args;
use serde_json::{Map, Value};

use crate::cli::files::{Conn, Failure, report};
use crate::client::request;

/// `socklab stats`: the server's counters.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Print the server's JSON body as it came, instead of the table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    conn: Conn,
}

/// Runs `socklab stats`; exit 1 with a message on failure.
pub fn run(args: &StatsArgs) -> ExitCode {
    report("stats", stats(args))
}

/// Sends one `stats` frame and prints the answer.
fn stats(args: &StatsArgs) -> Result<(), Failure> {
    let mut client = args.conn.open()?;
    let (_, body) = client.call(&request("stats"))?;
    if args.json {
        println!("{}", String::from_utf8_lossy(&body));
        return Ok(());
    }
    let stats: Value = serde_json::from_slice(&body)
        .map_err(|e| Failure(format!("the server's stats are not JSON: {e}")))?;
    print!("{}", table(&stats)?);
    Ok(())
}

/// A column of the table: its title and the counters (in one service's object) it adds up.
type Column = (&'static str, &'static [&'static str]);

/// The table's columns after the service name.
const COLUMNS: [Column; 8] = [
    ("accepted", &["connections_accepted"]),
    ("open", &["connections_open"]),
    (
        "rejected",
        &[
            "rejected_max_conns",
            "rejected_fd_limit",
            "rejected_auth",
            "rejected_per_ip",
            "rejected_proxy",
            "rejected_tls",
        ],
    ),
    ("bytes_in", &["bytes_received"]),
    ("bytes_out", &["bytes_sent"]),
    ("dgrams_in", &["datagrams_received"]),
    ("dgrams_out", &["datagrams_sent"]),
    ("dropped", &["datagrams_dropped"]),
];

/// The sum of the named counters of one service (missing ones count as 0).
fn sum(service: &Map<String, Value>, keys: &[&str]) -> u64 {
    keys.iter()
        .filter_map(|k| service.get(*k).and_then(Value::as_u64))
        .fold(0, u64::saturating_add)
}

/// The human form of a `stats` body: one row per service with any counter above zero, the
/// rejections by reason when there are any, the frames answered, and the event loops' work
/// (the server adds up every worker's counters).
fn table(stats: &Value) -> Result<String, Failure> {
    let services = stats
        .get("services")
        .and_then(Value::as_object)
        .ok_or_else(|| Failure("the server's stats have no `services` object".into()))?;
    let mut rows: Vec<(String, Vec<u64>, &Map<String, Value>)> = Vec::new();
    for (name, counters) in services {
        let Some(counters) = counters.as_object() else {
            continue;
        };
        let any = counters
            .values()
            .any(|v| v.as_f64().is_some_and(|n| n != 0.0));
        if !any {
            continue;
        }
        let cells = COLUMNS
            .iter()
            .map(|(_, keys)| sum(counters, keys))
            .collect();
        rows.push((name.clone(), cells, counters));
    }
    let mut out = String::new();
    if rows.is_empty() {
        out.push_str("no service has counted anything yet\n");
    } else {
        let name_w = rows
            .iter()
            .map(|(n, ..)| n.len())
            .chain(["service".len()])
            .max()
            .unwrap_or(0);
        let widths: Vec<usize> = COLUMNS
            .iter()
            .enumerate()
            .map(|(i, (title, _))| {
                rows.iter()
                    .map(|(_, cells, _)| cells[i].to_string().len())
                    .chain([title.len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let _ = write!(out, "{:<name_w$}", "service");
        for ((title, _), w) in COLUMNS.iter().zip(&widths) {
            let _ = write!(out, "  {title:>w$}");
        }
        out.push('\n');
        for (name, cells, _) in &rows {
            let _ = write!(out, "{name:<name_w$}");
            for (cell, w) in cells.iter().zip(&widths) {
                let _ = write!(out, "  {cell:>w$}");
            }
            out.push('\n');
        }
        for (name, _, counters) in &rows {
            let reasons: Vec<String> = ["max_conns", "fd_limit", "auth", "per_ip"]
                .iter()
                .filter_map(|r| {
                    let n = sum(counters, &[&format!("rejected_{r}")]);
                    (n > 0).then(|| format!("{r} {n}"))
                })
                .collect();
            if !reasons.is_empty() {
                let _ = writeln!(out, "rejected by {name}: {}", reasons.join(", "));
            }
        }
    }
    if let Some(frames) = stats.get("frames").and_then(Value::as_array)
        && !frames.is_empty()
    {
        let list: Vec<String> = frames
            .iter()
            .map(|f| {
                let text = |k: &str| f.get(k).and_then(Value::as_str).unwrap_or("?");
                let count = f.get("count").and_then(Value::as_u64).unwrap_or(0);
                format!("{} {} {count}", text("cmd"), text("outcome"))
            })
            .collect();
        let _ = writeln!(out, "frames: {}", list.join(", "));
    }
    if let Some(turns) = stats.get("loop_iterations").and_then(Value::as_u64) {
        let busy = stats
            .get("loop_busy_seconds")
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        let _ = write!(out, "loop: {turns} turns, {busy:.3} s busy");
        if let Some(workers) = stats.get("workers").and_then(Value::as_u64) {
            let s = if workers == 1 { "" } else { "s" };
            let _ = write!(out, ", {workers} worker{s}");
        }
        out.push('\n');
    }
    out.push_str(&workers_lines(stats));
    Ok(out)
}

/// With several workers: the connections each accepted, and the workers that did not answer
/// in time (their counters are missing from every sum above).
fn workers_lines(stats: &Value) -> String {
    let mut out = String::new();
    let per_worker = stats.get("per_worker").and_then(Value::as_array);
    if let Some(workers) = per_worker.filter(|w| w.len() > 1) {
        let parts: Vec<String> = workers
            .iter()
            .map(|w| {
                let n = w.get("worker").and_then(Value::as_u64).unwrap_or(0);
                let accepted = w
                    .get("services")
                    .and_then(Value::as_object)
                    .map_or(0, |services| {
                        services
                            .values()
                            .filter_map(Value::as_object)
                            .map(|c| sum(c, &["connections_accepted"]))
                            .fold(0, u64::saturating_add)
                    });
                format!("{n}: {accepted}")
            })
            .collect();
        let _ = writeln!(out, "accepted by worker: {}", parts.join(", "));
    }
    let missing: Vec<String> = stats
        .get("missing_workers")
        .and_then(Value::as_array)
        .map(|m| {
            m.iter()
                .filter_map(Value::as_u64)
                .map(|w| w.to_string())
                .collect()
        })
        .unwrap_or_default();
    if !missing.is_empty() {
        let _ = writeln!(
            out,
            "missing: worker {} did not answer in time; not in the counts above",
            missing.join(", ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::table;

    #[test]
    fn the_table_skips_idle_services_and_adds_up_rejections() {
        let stats = json!({
            "services": {
                "echo": {"connections_accepted": 3, "connections_open": 1, "bytes_received": 10,
                         "bytes_sent": 10, "rejected_max_conns": 2, "rejected_auth": 1},
                "upper": {"connections_accepted": 0, "bytes_received": 0},
                "files": {"connections_accepted": 1, "some_new_counter": 5},
            },
            "frames": [{"cmd": "stats", "outcome": "ok", "count": 1}],
            "loop_iterations": 42,
            "loop_busy_seconds": 0.5,
            "workers": 3,
            "missing_workers": [2],
            "per_worker": [
                {"worker": 0, "services": {"echo": {"connections_accepted": 2}}},
                {"worker": 1, "services": {"echo": {"connections_accepted": 1},
                                           "files": {"connections_accepted": 1}}},
            ],
        });
        let t = table(&stats).unwrap();
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("service"), "{t}");
        assert!(
            lines[0].contains("accepted") && lines[0].contains("rejected"),
            "{t}"
        );
        let echo: Vec<&str> = lines
            .iter()
            .find(|l| l.starts_with("echo "))
            .unwrap()
            .split_whitespace()
            .collect();
        assert_eq!(
            echo,
            ["echo", "3", "1", "3", "10", "10", "0", "0", "0"],
            "{t}"
        );
        assert!(lines.iter().any(|l| l.starts_with("files ")), "{t}");
        assert!(!t.contains("upper"), "{t}");
        assert!(t.contains("rejected by echo: max_conns 2, auth 1"), "{t}");
        assert!(t.contains("frames: stats ok 1"), "{t}");
        assert!(t.contains("loop: 42 turns, 0.500 s busy, 3 workers"), "{t}");
        assert!(t.contains("\naccepted by worker: 0: 2, 1: 2\n"), "{t}");
        assert!(
            t.contains("missing: worker 2 did not answer in time; not in the counts above"),
            "{t}"
        );
    }

    #[test]
    fn a_body_without_services_is_an_error() {
        assert!(table(&json!({"frames": []})).is_err());
        let t = table(&json!({"services": {"echo": {"connections_accepted": 0}}})).unwrap();
        assert_eq!(t, "no service has counted anything yet\n");
    }
}
