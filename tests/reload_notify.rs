//! A reload under a service manager, without systemd: the test reads sd_notify datagrams from
//! its own `NOTIFY_SOCKET`. The old process says `RELOADING=1` when the hand-over begins and,
//! once the successor is ready, makes it the main process (`MAINPID=`) with `READY=1`; it then
//! drains without `STOPPING=1` (that would stop the service). The successor inherits the
//! socket (and the watchdog) and says `STOPPING=1` when it is stopped in its turn.

mod util;

#[path = "handover_support/mod.rs"]
mod handover_support;

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use handover_support::*;
use util::*;

#[test]
fn a_reload_hands_the_main_pid_to_the_successor() {
    let dir = TempDir::new("reload-notify");
    let path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&path).unwrap();
    let mut cmd = serve_cmd(args(&dir, &[]));
    cmd.env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "400000");
    let mut old = Server::start_cmd(cmd);
    read_notify_until(&notify, "READY=1", T);

    let out = run_socklab(
        ["reload", "--control", dir.file("control.sock").as_str()],
        Duration::from_secs(40),
    );
    assert!(out.status.success(), "reload failed: {out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let pid: i32 = stdout
        .split_whitespace()
        .find_map(|w| w.strip_prefix("pid=").and_then(|p| p.parse().ok()))
        .unwrap_or_else(|| panic!("no pid= in {stdout:?}"));
    let _new = Pid(pid);
    let main = format!("MAINPID={pid}");
    let seen = read_notify_until(&notify, &main, T);
    assert!(
        seen.iter().any(|m| m.lines().any(|l| l == "RELOADING=1")),
        "RELOADING=1 before the hand-over: {seen:?}"
    );
    let handed = seen.last().cloned().unwrap_or_default();
    assert!(
        handed.lines().any(|l| l == "READY=1"),
        "READY=1 with the new main pid: {handed:?}"
    );
    // The old process drains and exits without saying STOPPING=1.
    assert!(old.wait_exit(T).is_some_and(|s| s.success()), "old exits 0");
    let mut after = Vec::new();
    let mut buf = [0u8; 4096];
    notify.set_nonblocking(true).unwrap();
    while let Ok(n) = notify.recv(&mut buf) {
        after.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    notify.set_nonblocking(false).unwrap();
    assert!(
        !after.iter().any(|m| m.lines().any(|l| l == "STOPPING=1")),
        "the old process said STOPPING=1 after the hand-over: {after:?}"
    );
    // The successor notifies in its turn: its watchdog, then STOPPING=1 at SIGTERM.
    read_notify_until(&notify, "WATCHDOG=1", Duration::from_secs(3));
    // SAFETY: kill(2) has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    read_notify_until(&notify, "STOPPING=1", T);
    assert!(
        wait_until(T, || !alive(pid)),
        "the successor exits at SIGTERM"
    );
}
