//! `exec` containment (issue 16): a command that exits while a background child still holds
//! its stdout is answered a short grace after its exit, long before its timeout, the child is
//! killed and the slot is free again. Real sockets, a real `socklab serve`, /proc for pids.

mod util;

#[path = "files_support/mod.rs"]
mod files_support;

mod exec_support;

use std::time::{Duration, Instant};

use exec_support::*;
use files_support::send;
use serde_json::json;

const B: Duration = Duration::from_secs(10);

fn gone(pid: i32) -> bool {
    proc_stat(pid).is_none_or(|p| p.state == 'Z')
}

#[test]
fn a_background_child_holding_stdout_does_not_delay_the_reply_and_dies() {
    let setup = Setup {
        allow: &["sh", "echo"],
        auth: true,
        echo: false,
        extra: &[],
    };
    let es = ExecServer::start("bg-child", setup);
    let mut s = es.authed();
    let start = Instant::now();
    send(
        &mut s,
        &exec_frame(
            &["sh", "-c", "sleep 20 & echo $! >&2; exit 0"],
            Some(8000),
            json!({}),
        ),
    );
    let r = read_within(&mut s, B, &es.server);
    let elapsed = start.elapsed();
    assert!(
        elapsed < Duration::from_secs(4),
        "answered after {elapsed:?}: the background child held the reply"
    );
    let o = ok_outcome(&r);
    assert_eq!(o.exit_code, Some(0));
    let pid: i32 = String::from_utf8_lossy(&o.stderr).trim().parse().unwrap();
    let deadline = Instant::now() + B;
    while !gone(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(gone(pid), "the background sleep {pid} survived the reply");
    // The slot is free: with --exec-max-procs at its default, another exec runs.
    let r = exec(&mut s, &es.server, &["echo", "next"], None, B);
    assert_eq!(ok_outcome(&r).stdout, b"next\n");
}

// ---- descendants that leave their process group or session (setsid) ----
//
// Each case runs under both containments: a cgroup per command (this machine's cgroup v2 is
// writable as root) and the subreaper fallback. The escapee writes its pid to a file in the
// commands' working directory (the data directory) before the command goes on.

/// A command line that starts `sleep 30` in a new session, recording its pid in `file`, with
/// its output on the command's pipes (`holds_pipes`) or on /dev/null.
fn escapee(file: &str, holds_pipes: bool) -> String {
    let redirect = if holds_pipes {
        ""
    } else {
        " </dev/null >/dev/null 2>&1"
    };
    format!(
        "setsid sh -c 'echo $$ > {file}; exec sleep 30'{redirect} & \
         while [ ! -s {file} ]; do :; done"
    )
}

fn mode_server(tag: &str, mode: &'static str, extra: &'static [&'static str]) -> ExecServer {
    let mut args: Vec<&'static str> = vec!["--exec-containment", mode];
    args.extend_from_slice(extra);
    let args: &'static [&'static str] = Box::leak(args.into_boxed_slice());
    ExecServer::start(
        &format!("{tag}-{mode}"),
        Setup {
            allow: &["sh", "echo"],
            auth: true,
            echo: false,
            extra: args,
        },
    )
}

/// The pid an escapee wrote to `file` in the data directory.
fn pid_in(es: &ExecServer, file: &str) -> i32 {
    let path = es.scratch.data().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{path:?} holds {text:?}: {e}"))
}

#[track_caller]
fn assert_gone_within(pid: i32, bound: Duration, what: &str, es: &ExecServer) {
    let ok = util::wait_until(bound, || gone(pid));
    if !ok {
        // Do not leave it behind for the next test.
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    assert!(
        ok,
        "{what}: process {pid} still alive after {bound:?}\n--- server stderr ---\n{}",
        es.server.stderr()
    );
}

/// Sends `script` (which starts an escapee recording its pid in `held.pid`) as a long-running
/// command, and returns the escapee's pid once it has started.
fn start_with_escapee(es: &ExecServer, s: &mut std::net::TcpStream, script: &str) -> i32 {
    send(s, &exec_frame(&["sh", "-c", script], Some(8000), json!({})));
    let data = es.scratch.data().join("held.pid");
    assert!(
        util::wait_until(B, || std::fs::read_to_string(&data)
            .is_ok_and(|t| t.ends_with('\n'))),
        "the escapee never started"
    );
    pid_in(es, "held.pid")
}

fn exits_leaving_escapees(mode: &'static str) {
    let es = mode_server("setsid-exit", mode, &[]);
    let mut s = es.authed();
    // One escapee keeps the pipes, one does not; the command exits at once.
    let script = format!(
        "{}; {}; exit 0",
        escapee("held.pid", true),
        escapee("quiet.pid", false)
    );
    let start = Instant::now();
    send(
        &mut s,
        &exec_frame(&["sh", "-c", &script], Some(8000), json!({})),
    );
    let r = read_within(&mut s, B, &es.server);
    let elapsed = start.elapsed();
    assert_eq!(ok_outcome(&r).exit_code, Some(0));
    assert!(
        elapsed < Duration::from_secs(2),
        "{mode}: answered after {elapsed:?} (the command exited at once)"
    );
    for file in ["held.pid", "quiet.pid"] {
        let pid = pid_in(&es, file);
        assert_gone_within(pid, Duration::from_secs(3), &format!("{mode}: {file}"), &es);
    }
}

#[test]
fn setsid_descendants_die_when_the_command_exits_cgroup() {
    exits_leaving_escapees("cgroup");
}

#[test]
fn setsid_descendants_die_when_the_command_exits_subreaper() {
    exits_leaving_escapees("subreaper");
}

/// A two-level escape: a new session whose own child starts another and waits for it.
fn nested_escape(mode: &'static str) {
    let es = mode_server("setsid-nested", mode, &[]);
    let mut s = es.authed();
    let inner = "setsid sh -c \"echo \\$\\$ > deep.pid; exec sleep 30\" </dev/null >/dev/null 2>&1 & echo $$ > mid.pid; wait";
    let script = format!(
        "setsid sh -c '{inner}' </dev/null >/dev/null 2>&1 & \
         while [ ! -s deep.pid ] || [ ! -s mid.pid ]; do :; done; exit 0"
    );
    let r = exec(&mut s, &es.server, &["sh", "-c", &script], Some(8000), B);
    assert_eq!(ok_outcome(&r).exit_code, Some(0));
    for file in ["mid.pid", "deep.pid"] {
        let pid = pid_in(&es, file);
        assert_gone_within(pid, Duration::from_secs(3), &format!("{mode}: {file}"), &es);
    }
}

#[test]
fn nested_sessions_die_with_their_command_cgroup() {
    nested_escape("cgroup");
}

#[test]
fn nested_sessions_die_with_their_command_subreaper() {
    nested_escape("subreaper");
}

/// At its timeout the command is answered at once, even though an escapee holds its pipes,
/// and everything it started dies; the slot is free for the next command.
fn timeout_with_escapee(mode: &'static str) {
    let es = mode_server("setsid-timeout", mode, &["--exec-max-procs", "1"]);
    let mut s = es.authed();
    let script = format!("{}; exec sleep 30", escapee("held.pid", true));
    let start = Instant::now();
    send(
        &mut s,
        &exec_frame(&["sh", "-c", &script], Some(700), json!({})),
    );
    let r = read_within(&mut s, B, &es.server);
    let elapsed = start.elapsed();
    timeout_outcome(&r);
    assert!(
        elapsed < Duration::from_millis(700 + 250),
        "{mode}: a 700 ms timeout answered after {elapsed:?}"
    );
    let pid = pid_in(&es, "held.pid");
    assert_gone_within(
        pid,
        Duration::from_secs(3),
        &format!("{mode}: escapee"),
        &es,
    );
    let r = exec(&mut s, &es.server, &["echo", "next"], None, B);
    assert_eq!(ok_outcome(&r).stdout, b"next\n");
}

#[test]
fn at_the_timeout_the_answer_goes_and_escapees_die_cgroup() {
    timeout_with_escapee("cgroup");
}

#[test]
fn at_the_timeout_the_answer_goes_and_escapees_die_subreaper() {
    timeout_with_escapee("subreaper");
}

/// The client goes away while its command runs: the command and its escapee die.
fn client_leaves(mode: &'static str) {
    let es = mode_server("setsid-client", mode, &[]);
    let mut s = es.authed();
    let script = format!(
        "{}; echo started; exec sleep 30",
        escapee("held.pid", false)
    );
    let pid = start_with_escapee(&es, &mut s, &script);
    drop(s);
    assert_gone_within(
        pid,
        Duration::from_secs(3),
        &format!("{mode}: escapee of a client that left"),
        &es,
    );
}

#[test]
fn escapees_die_when_their_client_leaves_cgroup() {
    client_leaves("cgroup");
}

#[test]
fn escapees_die_when_their_client_leaves_subreaper() {
    client_leaves("subreaper");
}

/// The server stops (SIGTERM) while a command runs: nothing it started outlives the server.
fn server_stops(mode: &'static str) {
    let mut es = mode_server("setsid-stop", mode, &["--shutdown-grace", "1s"]);
    let mut s = es.authed();
    let script = format!("{}; exec sleep 30", escapee("held.pid", false));
    let pid = start_with_escapee(&es, &mut s, &script);
    es.server.signal(15);
    assert!(
        es.server.wait_exit(B).is_some(),
        "{mode}: the server did not exit"
    );
    assert_gone_within(
        pid,
        Duration::from_secs(3),
        &format!("{mode}: escapee at server exit"),
        &es,
    );
    drop(s);
}

#[test]
fn escapees_do_not_outlive_the_server_cgroup() {
    server_stops("cgroup");
}

#[test]
fn escapees_do_not_outlive_the_server_subreaper() {
    server_stops("subreaper");
}

/// A server killed with SIGKILL cannot clean up; the next one started on the host (with exec)
/// kills what the dead one's commands left, found in the dead one's cgroup.
#[test]
fn a_killed_servers_leftovers_die_when_the_next_server_starts_cgroup() {
    let mut es = mode_server("setsid-sigkill", "cgroup", &[]);
    let mut s = es.authed();
    let script = format!("{}; exec sleep 30", escapee("held.pid", false));
    let pid = start_with_escapee(&es, &mut s, &script);
    es.server.signal(9);
    assert!(es.server.wait_exit(B).is_some(), "the server did not die");
    assert!(!gone(pid), "the escapee died with no one to kill it");
    let next = mode_server("setsid-next", "cgroup", &[]);
    assert_gone_within(
        pid,
        Duration::from_secs(3),
        "leftover of a killed server",
        &next,
    );
    drop(s);
}
