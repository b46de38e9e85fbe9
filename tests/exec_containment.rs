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
