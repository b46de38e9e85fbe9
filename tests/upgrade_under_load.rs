//! Restart under load, small (issue 18, deliverable 5): tools/upgrade_load.py — the load
//! generator of tools/upgrade-under-load.sh — runs against the real binary with 2 upgrades in
//! a row and a few seconds of load (new connections, pipelined echo and `files` requests on
//! kept connections, 1 MiB uploads with md5, a chat conversation), then SIGTERM. Every failure
//! count must be 0 (refused, reset, no reply, wrong, uploads failed or corrupted, chat lines
//! lost, servers that did not exit 0), and load must really have flowed through every client
//! kind and across both upgrades.
//!
//! Skipped, with a message, only when `python3` is not on PATH.

mod util;

use std::process::{Command, Stdio};
use std::time::Duration;

/// The whole run: about 4 s of load, the drains and the final stop.
const BOUND: Duration = Duration::from_secs(28);

fn on_path(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The figure in column `col` of the table row `row` (`probes`, `echo`, `files`, ...).
fn figure(stdout: &str, header: &[&str], row: &str, col: &str) -> u64 {
    let at = header
        .iter()
        .position(|h| *h == col)
        .unwrap_or_else(|| panic!("no column {col} in {header:?}"));
    let line = stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(row))
        .unwrap_or_else(|| panic!("no row {row} in the table:\n{stdout}"));
    line.split_whitespace()
        .nth(at + 1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no figure {row}/{col} in {line:?}"))
}

#[test]
fn two_upgrades_under_load_lose_nothing() {
    if !on_path("python3") {
        eprintln!("SKIPPED two_upgrades_under_load_lose_nothing: python3 is not on PATH");
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/upgrade_load.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script).arg("--bin").arg(util::bin());
    cmd.args(["--upgrades", "2", "--interval", "1.2", "--rate", "30"]);
    cmd.args(["--kept", "2", "--window", "20", "--uploads", "1"]);
    cmd.args(["--upload-mib", "1", "--upload-pause", "0.05"]);
    cmd.args(["--members", "3", "--chat-rate", "20", "--timeout", "5"]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn python3");
    // On overrun finish_child kills the script; its servers then see their stdout closed.
    let out = util::finish_child(child, BOUND, "tools/upgrade_load.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let context = format!("--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    assert!(
        stdout.contains("upgrade 2/2: reloaded: pid="),
        "both upgrades: {context}"
    );
    assert!(
        out.status.success() && stdout.contains("result: PASS (0 failures)"),
        "every failure count is 0 ({}): {context}",
        out.status
    );
    let header_line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("answered"))
        .unwrap_or_else(|| panic!("no table header: {context}"));
    let header: Vec<&str> = header_line
        .split("  ")
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .collect();
    for row in ["probes", "echo", "files", "uploads", "chat"] {
        assert!(
            figure(&stdout, &header, row, "answered") > 0,
            "{row}: no request was answered: {context}"
        );
    }
    assert_eq!(
        figure(&stdout, &header, "servers", "answered"),
        3,
        "the first server and two successors: {context}"
    );
    // Every member saw each of the three servers drain (two upgrades, then SIGTERM).
    let notices: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("chat: "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no chat summary line: {context}"));
    assert!(notices >= 3, "drain notices: {notices}: {context}");
}
