//! `socklab tune` and `socklab sticky` end to end: the experiments are listed, the quick
//! `nodelay` run prints a table and writes an SVG, the `reuseaddr` run shows the bind error
//! without SO_REUSEADDR and success with it, and `sticky` recovers every message intact
//! through frames; the quick `udp-rcvbuf`, `time-wait`, `reuseport` and `keepalive` runs show
//! what they are for (kernel drops, who holds TIME_WAIT, the spread over workers, a dead peer
//! noticed). Nothing here asserts on speed or on how the kernel merged the raw reads: only
//! on structure, on counts the kernel makes exact, and on the frames being exact.

mod util;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// How long one run of the binary may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `socklab ARGS...` to completion (at most [`RUN_TIMEOUT`]); returns its output.
fn socklab(args: &[&str]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_socklab"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn socklab");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(RUN_TIMEOUT) {
        Ok(out) => out.expect("wait for socklab"),
        Err(_) => {
            // SAFETY: kill has no memory effects; the pid is our child, not yet reaped.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
            panic!("socklab {args:?} did not finish within {RUN_TIMEOUT:?}");
        }
    }
}

/// Stdout as text, and a panic message with both streams when `out` did not succeed.
fn stdout_ok(args: &[&str], out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "socklab {args:?} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A fresh directory for one test's charts, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p =
            std::env::temp_dir().join(format!("socklab-tune-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `socklab tune --only NAME --quick` with charts in a fresh directory; returns the
/// directory (removed when dropped) and the output, after checking that the run succeeded.
fn tune_quick(name: &str) -> (TempDir, String) {
    let dir = TempDir::new(name);
    let out_dir = dir.0.display().to_string();
    let args = ["tune", "--only", name, "--quick", "--out", &out_dir];
    let out = stdout_ok(&args, &socklab(&args));
    (dir, out)
}

#[test]
fn tune_list_names_every_experiment() {
    let args = ["tune", "--list"];
    let out = stdout_ok(&args, &socklab(&args));
    let names: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for want in [
        "nodelay",
        "buffers",
        "backlog",
        "reuseaddr",
        "udp-rcvbuf",
        "time-wait",
        "reuseport",
        "keepalive",
        "kernel",
    ] {
        assert!(
            names.contains(&want),
            "`{want}` missing from --list:\n{out}"
        );
    }
}

#[test]
fn tune_refuses_an_unknown_experiment() {
    let out = socklab(&["tune", "--only", "no-such-experiment"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nodelay"),
        "the error should name the experiments: {err}"
    );
}

#[test]
fn tune_nodelay_quick_prints_a_table_and_writes_an_svg() {
    let (dir, out) = tune_quick("nodelay");
    let header = out
        .lines()
        .find(|l| l.starts_with("| server nodelay"))
        .unwrap_or_else(|| panic!("no table header in:\n{out}"));
    for col in [
        "client nodelay",
        "pattern",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "max µs",
    ] {
        assert!(header.contains(col), "column `{col}` missing: {header}");
    }
    // Both server settings × both client settings × 2 patterns × 2 sizes.
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("| on ") || l.starts_with("| off "))
        .collect();
    assert_eq!(rows.len(), 16, "expected 16 rows:\n{out}");
    for pattern in ["rr", "wwr"] {
        assert!(
            rows.iter().any(|r| r.contains(&format!("| {pattern} "))),
            "no {pattern} row:\n{out}"
        );
    }
    let svg = std::fs::read_to_string(dir.0.join("nodelay.svg")).expect("nodelay.svg written");
    assert!(!svg.is_empty());
    assert!(
        svg.contains("<svg"),
        "not an SVG: {}",
        &svg[..svg.len().min(200)]
    );
    assert!(svg.contains("<text"), "the chart has no text");
    assert!(
        svg.contains("log scale"),
        "the latency axis should say it is logarithmic"
    );
}

#[test]
fn tune_reuseaddr_quick_shows_the_bind_error_and_the_fix() {
    let (dir, out) = tune_quick("reuseaddr");
    let without = out
        .lines()
        .find(|l| l.starts_with("result: without SO_REUSEADDR"))
        .unwrap_or_else(|| panic!("no result line without SO_REUSEADDR:\n{out}"));
    assert!(
        without.contains("failed") && without.contains("already in use"),
        "{without}"
    );
    let with = out
        .lines()
        .find(|l| l.starts_with("result: with SO_REUSEADDR"))
        .unwrap_or_else(|| panic!("no result line with SO_REUSEADDR:\n{out}"));
    assert!(with.contains("succeeded"), "{with}");
    assert!(dir.0.join("reuseaddr.svg").exists());
}

/// Checks one `sticky` run's output for `n` messages; returns the raw part's read count.
fn check_sticky(out: &str, n: usize) -> usize {
    let summary = format!("raw echo: {n} messages in {n} writes came back in ");
    let line = out
        .lines()
        .find(|l| l.starts_with(&summary))
        .unwrap_or_else(|| panic!("no raw summary in:\n{out}"));
    let reads: usize = line[summary.len()..]
        .split_whitespace()
        .next()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no read count in `{line}`"));
    assert!(reads >= 1);
    assert!(
        out.contains(&format!("frames: {n} of {n} messages recovered intact")),
        "frames not all intact:\n{out}"
    );
    // Every frame printed once, in order, with its exact body.
    for i in 0..n {
        let want = format!("frame {i:>3}: header ");
        let frame = out
            .lines()
            .find(|l| l.trim_start().starts_with(&want))
            .unwrap_or_else(|| panic!("frame {i} missing:\n{out}"));
        assert!(frame.contains(&format!("\"msg-{i:03} hello\"")), "{frame}");
        assert!(frame.ends_with("intact"), "{frame}");
    }
    assert!(out.contains("client: nodelay="), "client options missing");
    assert!(out.contains("server echo "), "server options missing");
    reads
}

#[test]
fn sticky_recovers_every_message_through_frames() {
    let args = ["sticky"];
    let out = stdout_ok(&args, &socklab(&args));
    check_sticky(&out, 20);
}

#[test]
fn sticky_with_nagle_and_small_reads_still_recovers_frames() {
    let args = ["sticky", "-n", "7", "--nodelay", "off", "--read-size", "16"];
    let out = stdout_ok(&args, &socklab(&args));
    let reads = check_sticky(&out, 7);
    // 7 messages of 13 bytes read 16 bytes at a time need at least 6 reads.
    assert!(reads >= 6, "{reads} reads:\n{out}");
    assert!(out.contains("client: nodelay=off"), "{out}");
    assert!(
        out.contains("Nagle"),
        "the why should name Nagle's algorithm:\n{out}"
    );
}

/// The table whose header row starts with `| first`: its column titles and its rows, each
/// cell trimmed.
fn table(out: &str, first: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let cells = |l: &str| -> Vec<String> {
        l.trim()
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_string())
            .collect()
    };
    let mut lines = out
        .lines()
        .skip_while(|l| !l.starts_with(&format!("| {first}")));
    let header = lines
        .next()
        .unwrap_or_else(|| panic!("no table starting with `{first}` in:\n{out}"));
    let rows = lines
        .take_while(|l| l.starts_with('|'))
        .filter(|l| !l.starts_with("|-"))
        .map(cells)
        .collect();
    (cells(header), rows)
}

/// The cell of `row` under the column titled `col`.
fn cell<'a>(headers: &[String], row: &'a [String], col: &str) -> &'a str {
    let i = headers
        .iter()
        .position(|h| h == col)
        .unwrap_or_else(|| panic!("no column `{col}` in {headers:?}"));
    row.get(i).map_or("", String::as_str)
}

#[test]
fn tune_buffers_quick_reads_back_doubled_sizes_and_moves_data() {
    let (dir, out) = tune_quick("buffers");
    let (headers, rows) = table(&out, "asked");
    let asked: Vec<&str> = rows.iter().map(|r| cell(&headers, r, "asked")).collect();
    assert_eq!(asked, ["4 KiB", "64 KiB", "1 MiB", "default"], "{out}");
    // Linux doubles what is asked for; 4 KiB and 64 KiB sit under every default
    // net.core.wmem_max/rmem_max, so the read-back values are exact.
    for (row, want) in rows.iter().zip(["8192", "131072"]) {
        assert_eq!(cell(&headers, row, "client sndbuf"), want, "{out}");
        assert_eq!(cell(&headers, row, "client rcvbuf"), want, "{out}");
        assert!(
            cell(&headers, row, "server (listening line)")
                .contains(&format!("rcvbuf={want} sndbuf={want}")),
            "the server's own read-back: {out}"
        );
    }
    for row in &rows {
        let back: f64 = cell(&headers, row, "MiB back")
            .parse()
            .unwrap_or_else(|_| panic!("MiB back is not a number: {row:?}"));
        assert!(back > 0.0, "nothing came back through echo: {row:?}");
    }
    let svg = std::fs::read_to_string(dir.0.join("buffers.svg")).expect("buffers.svg written");
    assert!(
        svg.contains("<svg") && svg.contains("MB/s"),
        "chart: {svg:.200}"
    );
}

#[test]
fn tune_backlog_quick_accounts_for_every_connect() {
    let (dir, out) = tune_quick("backlog");
    let (headers, rows) = table(&out, "backlog");
    let backlogs: Vec<&str> = rows.iter().map(|r| cell(&headers, r, "backlog")).collect();
    assert_eq!(backlogs, ["1", "128"], "{out}");
    let n = |row: &[String], col: &str| -> u64 {
        cell(&headers, row, col)
            .parse()
            .unwrap_or_else(|_| panic!("`{col}` is not a count: {row:?}"))
    };
    for row in &rows {
        let fates = [
            "up while stopped",
            "up after resume",
            "still retrying SYN",
            "refused",
            "other errors",
        ];
        let sum: u64 = fates.iter().map(|c| n(row, c)).sum();
        assert_eq!(
            sum,
            n(row, "connects"),
            "every connect has one fate: {row:?}"
        );
        assert!(n(row, "connects") > 0, "{row:?}");
        assert!(
            n(row, "echoed in 2 s") <= n(row, "connects"),
            "more echoes than connects: {row:?}"
        );
    }
    assert!(
        out.contains("somaxconn"),
        "the cap on the backlog is shown: {out}"
    );
    assert!(dir.0.join("backlog.svg").exists());
}

#[test]
fn tune_kernel_names_each_setting_with_its_value_and_a_hint() {
    let args = ["tune", "--only", "kernel"];
    let out = stdout_ok(&args, &socklab(&args));
    let (headers, rows) = table(&out, "setting");
    for name in [
        "net.core.somaxconn",
        "net.ipv4.tcp_tw_reuse",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.ip_local_port_range",
        "net.core.rmem_max",
        "net.core.wmem_max",
        "RLIMIT_NOFILE",
    ] {
        let row = rows
            .iter()
            .find(|r| cell(&headers, r, "setting") == name)
            .unwrap_or_else(|| panic!("{name} missing:\n{out}"));
        let value = cell(&headers, row, "value");
        assert!(
            !value.is_empty() && value != "?",
            "{name} unreadable: {row:?}"
        );
        assert!(
            !cell(&headers, row, "meaning").is_empty(),
            "{name} has no meaning"
        );
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("  {name}: ")) && l.len() > name.len() + 12),
            "no hint for {name}:\n{out}"
        );
    }
}

/// Runs `args`, expects a failure whose stderr names `want`, and no panic or hang.
fn expect_failure(args: &[&str], want: &str) {
    let started = std::time::Instant::now();
    let out = socklab(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded: {stderr}");
    assert!(
        stderr.contains(want),
        "{args:?}: want `{want}` in: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{args:?} took {:?} to fail",
        started.elapsed()
    );
}

#[test]
fn tune_against_a_closed_address_fails_clearly() {
    let addr = util::closed_port().to_string();
    let dir = TempDir::new("closed");
    let out_dir = dir.0.display().to_string();
    expect_failure(
        &[
            "tune", "--only", "nodelay", "--quick", "--addr", &addr, "--out", &out_dir,
        ],
        &addr,
    );
}

#[test]
fn tune_with_an_unwritable_chart_directory_fails_clearly() {
    // /proc refuses new directories, even to root.
    let out_dir = "/proc/socklab-no-such-dir/charts";
    expect_failure(
        &["tune", "--only", "reuseaddr", "--quick", "--out", out_dir],
        "/proc/socklab-no-such-dir",
    );
}

#[test]
fn sticky_against_a_closed_address_fails_clearly() {
    let addr = util::closed_port().to_string();
    expect_failure(&["sticky", "--addr", &addr, "--files-addr", &addr], &addr);
}

/// A cell parsed as a count.
fn count(headers: &[String], row: &[String], col: &str) -> u64 {
    cell(headers, row, col)
        .parse()
        .unwrap_or_else(|_| panic!("`{col}` is not a count: {row:?}"))
}

/// The chart `file` in `dir`: an SVG 1,000 px wide whose text includes every one of `want`.
fn check_chart(dir: &TempDir, file: &str, want: &[&str]) {
    let svg = std::fs::read_to_string(dir.0.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    assert!(
        svg.contains("<svg") && svg.contains("width=\"1000\""),
        "{file}: {svg:.300}"
    );
    for w in want {
        assert!(svg.contains(w), "{file} lacks `{w}`");
    }
}

#[test]
fn tune_udp_rcvbuf_quick_shows_the_servers_kernel_drops() {
    let (dir, out) = tune_quick("udp-rcvbuf");
    let (headers, rows) = table(&out, "rcvbuf asked");
    assert_eq!(rows.len(), 4, "2 sizes x 2 bursts:\n{out}");
    for row in &rows {
        let burst = count(&headers, row, "burst");
        let accounted = count(&headers, row, "kernel drops") + count(&headers, row, "replies");
        assert!(accounted <= burst, "more than was sent: {row:?}");
    }
    // 500 datagrams of 1000 B cannot fit in an 8 KiB queue: the server's kernel drops most,
    // and the server's counter says so.
    let small = rows
        .iter()
        .find(|r| {
            cell(&headers, r, "rcvbuf asked") == "4 KiB" && cell(&headers, r, "burst") == "500"
        })
        .unwrap_or_else(|| panic!("no 4 KiB x 500 row:\n{out}"));
    assert!(
        count(&headers, small, "kernel drops") > 0,
        "no drops counted: {small:?}\n{out}"
    );
    assert!(
        count(&headers, small, "replies") > 0,
        "the echo answered nothing: {small:?}"
    );
    check_chart(
        &dir,
        "udp-rcvbuf.svg",
        &["dropped by the server", "replies", "rcvbuf 4 KiB"],
    );
}

#[test]
fn tune_time_wait_quick_shows_who_keeps_time_wait_and_the_rebind() {
    // The rebind needs a port that only this experiment's connection holds; the tool makes
    // one, but another program can still take it in between. Up to three runs, each one's
    // report kept for the failure message.
    let mut earlier = String::new();
    let (dir, out) = loop {
        let (dir, out) = tune_quick("time-wait");
        let rebound = out
            .lines()
            .any(|l| l.contains("SO_REUSEADDR on") && l.contains("| bound"));
        if rebound || earlier.matches("== time-wait ==").count() >= 2 {
            break (dir, out);
        }
        earlier.push_str(&out);
    };
    let (headers, rows) = table(&out, "close");
    let fin = rows
        .iter()
        .find(|r| cell(&headers, r, "close").contains("FIN"))
        .unwrap_or_else(|| panic!("no FIN row:\n{out}"));
    let rst = rows
        .iter()
        .find(|r| cell(&headers, r, "close").contains("SO_LINGER 0"))
        .unwrap_or_else(|| panic!("no SO_LINGER 0 row:\n{out}"));
    let n = count(&headers, fin, "connections");
    // The client closed first: its side holds TIME_WAIT, one per connection; the server's none.
    assert_eq!(count(&headers, fin, "TIME_WAIT client side"), n, "{out}");
    assert_eq!(count(&headers, fin, "TIME_WAIT server side"), 0, "{out}");
    // A reset leaves no TIME_WAIT anywhere.
    assert_eq!(count(&headers, rst, "TIME_WAIT client side"), 0, "{out}");
    assert_eq!(count(&headers, rst, "TIME_WAIT server side"), 0, "{out}");
    let (h2, reuse) = table(&out, "rebind a local port in TIME_WAIT");
    let result = |needle: &str| -> String {
        reuse
            .iter()
            .find(|r| cell(&h2, r, "rebind a local port in TIME_WAIT").contains(needle))
            .map(|r| cell(&h2, r, "result").to_string())
            .unwrap_or_else(|| panic!("no `{needle}` row:\n{out}"))
    };
    assert!(
        result("SO_REUSEADDR off").contains("Address already in use"),
        "{out}"
    );
    assert_eq!(
        result("SO_REUSEADDR on"),
        "bound",
        "{earlier}\n(earlier runs above)\n{out}"
    );
    check_chart(
        &dir,
        "time-wait.svg",
        &["TIME_WAIT on the client side", "SO_LINGER 0"],
    );
}

#[test]
fn tune_reuseport_quick_accounts_for_every_connection_per_worker() {
    let (dir, out) = tune_quick("reuseport");
    let (headers, rows) = table(&out, "worker");
    let workers: Vec<&Vec<String>> = rows
        .iter()
        .filter(|r| cell(&headers, r, "worker") != "all")
        .collect();
    assert_eq!(workers.len(), 4, "{out}");
    for col in ["from 127.0.0.1", "from 127.0.0.2-9"] {
        let sum: u64 = workers.iter().map(|r| count(&headers, r, col)).sum();
        assert_eq!(sum, 64, "every connection counted once ({col}):\n{out}");
        // A hash over 64 four-tuples does not put them all on one or two workers.
        let busy = workers
            .iter()
            .filter(|r| count(&headers, r, col) > 0)
            .count();
        assert!(
            busy >= 3,
            "the kernel spread {col} over only {busy} workers:\n{out}"
        );
    }
    check_chart(&dir, "reuseport.svg", &["worker 3", "from eight addresses"]);
}

#[test]
fn tune_keepalive_quick_notices_the_dead_peer_only_with_keepalive_or_a_timeout() {
    let (dir, out) = tune_quick("keepalive");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(out.contains("skipped: needs root"), "{out}");
        return;
    }
    let (headers, rows) = table(&out, "connection");
    let noticed = |needle: &str| -> String {
        rows.iter()
            .find(|r| cell(&headers, r, "connection").contains(needle))
            .map(|r| cell(&headers, r, "noticed after").to_string())
            .unwrap_or_else(|| panic!("no `{needle}` row:\n{out}"))
    };
    assert!(
        noticed("idle, no keepalive").starts_with("not within"),
        "{out}"
    );
    assert!(
        noticed("data unacked, no timeout").starts_with("not within"),
        "{out}"
    );
    for needle in ["idle, keepalive", "TCP_USER_TIMEOUT"] {
        let after = noticed(needle);
        let secs: f64 = after
            .trim_end_matches(" s")
            .parse()
            .unwrap_or_else(|_| panic!("`{needle}` not noticed: {after}\n{out}"));
        assert!((1.0..5.0).contains(&secs), "{needle}: {secs} s\n{out}");
    }
    assert!(out.contains("Connection timed out"), "{out}");
    check_chart(
        &dir,
        "keepalive.svg",
        &["TCP_USER_TIMEOUT", "noticed after", "not noticed in"],
    );
}
