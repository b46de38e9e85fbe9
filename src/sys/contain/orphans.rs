//! The server's children and the orphans that come to it as the child subreaper.
//!
//! Every child the server starts is registered here ([`spawn_registered`]) until its owner
//! reaps it; any other child is an orphan some command left. Orphans are reaped here, and
//! while a sweep is under way (a command ended in subreaper mode) killed with their process
//! group: the orphans their deaths leave arrive as more SIGCHLDs and are killed in turn, until
//! a sweep finds none alive.

use std::collections::BTreeMap;
use std::io;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::kill_group;

/// What a registered child is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// An `exec` command (killed with everything else at exit).
    Command,
    /// Another child (a successor started by a reload): never killed here.
    Other,
}

/// Children started by the server and not yet reaped by their owner.
static SPAWNED: Mutex<BTreeMap<i32, Kind>> = Mutex::new(BTreeMap::new());

/// A sweep is under way: escaped orphans are killed as they appear.
static SWEEPING: AtomicBool = AtomicBool::new(false);

/// Zombies reaped per pass at most (the rest wait for the next SIGCHLD).
const REAP_PER_PASS: usize = 256;

fn registry() -> MutexGuard<'static, BTreeMap<i32, Kind>> {
    SPAWNED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts a child with `spawn` and registers it. The registry is held meanwhile, so that no
/// reaping pass takes the new child for an orphan before it is registered.
pub(crate) fn spawn_registered(
    kind: Kind,
    spawn: impl FnOnce() -> io::Result<Child>,
) -> io::Result<Child> {
    let mut reg = registry();
    let child = spawn()?;
    if let Ok(pid) = i32::try_from(child.id()) {
        reg.insert(pid, kind);
    }
    Ok(child)
}

/// Its owner reaped `pid`.
pub(crate) fn forget(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        registry().remove(&pid);
    }
}

/// Reaps the orphans that died and, during a sweep, kills the living ones. Never waits: when
/// a spawn holds the registry, the next SIGCHLD does it.
pub(crate) fn reap_and_sweep() {
    let Ok(reg) = SPAWNED.try_lock() else {
        return;
    };
    reap_orphans(&reg);
    if SWEEPING.load(Ordering::Relaxed) && kill_orphans(&reg) == 0 {
        SWEEPING.store(false, Ordering::Relaxed);
    }
}

/// Begins a sweep: kills every living orphan now; those orphaned by these deaths follow on
/// their SIGCHLD.
pub(crate) fn start_sweep() {
    SWEEPING.store(true, Ordering::Relaxed);
    reap_and_sweep();
}

/// At exit: kills the process group of every command still registered.
pub(crate) fn kill_registered_commands() {
    for (pid, kind) in registry().iter() {
        if *kind == Kind::Command {
            // A command leads its own group.
            kill_with_group(*pid, *pid);
        }
    }
}

/// At exit: kills orphans until none is left alive or `bound` passes. It sleeps.
pub(crate) fn sweep_within(bound: Duration) {
    let deadline = Instant::now() + bound;
    loop {
        let reg = registry();
        reap_orphans(&reg);
        let live = kill_orphans(&reg);
        drop(reg);
        if live == 0 || Instant::now() >= deadline {
            if live > 0 {
                tracing::warn!(live, "exec: orphans still alive at exit");
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reaps dead children that nobody registered. A registered one first in line stops the
/// pass: its owner reaps it and the SIGCHLD of the next death resumes here.
fn reap_orphans(reg: &BTreeMap<i32, Kind>) {
    for _ in 0..REAP_PER_PASS {
        let Some(pid) = next_zombie() else { return };
        if reg.contains_key(&pid) {
            return;
        }
        // SAFETY: reaps one child that we know is a zombie; no status is read.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
    }
}

/// A dead child not yet reaped, left unreaped (WNOWAIT).
fn next_zombie() -> Option<i32> {
    // SAFETY: siginfo_t is plain data that waitid fills; zeroed is its documented "no child".
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid writes only into `info`.
    let rc = unsafe {
        libc::waitid(
            libc::P_ALL,
            0,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: si_pid is valid for a SIGCHLD siginfo, and 0 in the zeroed one.
    let pid = unsafe { info.si_pid() };
    (rc == 0 && pid > 0).then_some(pid)
}

/// Kills every living unregistered child with its process group; returns how many there were.
fn kill_orphans(reg: &BTreeMap<i32, Kind>) -> usize {
    let mut live = 0;
    for pid in own_children() {
        if reg.contains_key(&pid) {
            continue;
        }
        let Some((state, pgid)) = state_and_group(pid) else {
            continue;
        };
        if state == 'Z' {
            continue;
        }
        live += 1;
        kill_with_group(pid, pgid);
    }
    live
}

/// SIGKILL to a child of ours and to the process group `pgid` it is in.
fn kill_with_group(pid: i32, pgid: i32) {
    // SAFETY: kill only sends a signal, to a child of ours.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    kill_group(pgid, libc::SIGKILL);
}

/// Our children, from every thread's `/proc/self/task/<tid>/children` (an orphan is given to
/// any living thread of the subreaper).
fn own_children() -> Vec<i32> {
    let mut pids = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return pids;
    };
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            pids.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    pids
}

/// A process's state letter and process group, from `/proc/<pid>/stat`.
fn state_and_group(pid: i32) -> Option<(char, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

fn parse_stat(text: &str) -> Option<(char, i32)> {
    // The command name may hold spaces and parentheses: the fields start after the last `)`.
    let rest = text.get(text.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgid = fields.next()?.parse().ok()?;
    Some((state, pgid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_name_with_parentheses() {
        assert_eq!(parse_stat("42 (a) b (c)) S 1 42 42 0 -1"), Some(('S', 42)));
        assert_eq!(parse_stat("7 (sleep) Z 1 9 9"), Some(('Z', 9)));
        assert_eq!(parse_stat("7 (sleep"), None);
    }
}
