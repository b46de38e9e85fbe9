//! The main thread's part of a `socklab bench` run: waiting for the window (with a progress
//! bar on a terminal, `--interval` lines, and Ctrl-C ending it early), and the CPU-time
//! snapshots of this process and the server around it.

use std::io::{self, IsTerminal};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::worker::{Outcome, Shared};
use super::{BenchArgs, BenchError};

/// What the main thread measured around the window.
pub(super) struct Window {
    /// Wall time between the two snapshots, seconds.
    pub(super) wall_s: f64,
    /// This process's CPU time over it, seconds.
    pub(super) cpu_s: f64,
    /// The server's CPU time over it (with --server-pid).
    pub(super) server_cpu: Option<ProcCpu>,
}

/// Waits (showing progress on a terminal) for the run to end, taking CPU-time snapshots at the
/// start and the end of the measured window.
pub(super) fn watch(
    args: &BenchArgs,
    shared: &Shared,
    handles: &[thread::JoinHandle<Result<Outcome, BenchError>>],
) -> Result<Window, BenchError> {
    // Ctrl-C ends the window instead of the process: what was measured is reported.
    let sigint = Arc::new(AtomicBool::new(false));
    let _ = signal_hook::flag::register(libc::SIGINT, Arc::clone(&sigint));
    shared.start.wait();
    let t0 = Instant::now();
    let win_start = t0.checked_add(args.warmup).unwrap_or(t0);
    let win_end = win_start.checked_add(args.duration).unwrap_or(win_start);
    let bar = progress_bar(args);
    let mut before = None;
    let mut last = (t0, 0u64);
    let mut interval = args.interval.map(|every| (every, t0, 0u64));
    loop {
        let now = Instant::now();
        if before.is_none() && now >= win_start {
            before = Some(snapshot(args)?);
        }
        if sigint.load(Ordering::Relaxed) {
            shared.interrupted.store(true, Ordering::Relaxed);
            break;
        }
        if now >= win_end || handles.iter().all(|h| h.is_finished()) {
            break;
        }
        if let Some((every, since, seen)) = &mut interval
            && now.saturating_duration_since(*since) >= *every
        {
            let replies = shared.replies.load(Ordering::Relaxed);
            let secs = now.saturating_duration_since(*since).as_secs_f64();
            let from = since.saturating_duration_since(t0).as_secs_f64();
            let to = now.saturating_duration_since(t0).as_secs_f64();
            let phase = if now <= win_start { " (warm-up)" } else { "" };
            eprintln!(
                "[{from:5.1}-{to:5.1} s] {:.0} replies/s{phase}",
                replies.saturating_sub(*seen) as f64 / secs.max(f64::EPSILON)
            );
            (*since, *seen) = (now, replies);
        }
        let next = if now < win_start { win_start } else { win_end };
        let next = match &interval {
            Some((every, since, _)) => next.min(*since + *every),
            None => next,
        };
        thread::sleep(
            next.saturating_duration_since(now)
                .min(Duration::from_millis(250)),
        );
        if let Some(bar) = &bar {
            let now = Instant::now();
            let replies = shared.replies.load(Ordering::Relaxed);
            let secs = now.saturating_duration_since(last.0).as_secs_f64();
            let rate = if secs > 0.0 {
                replies.saturating_sub(last.1) as f64 / secs
            } else {
                0.0
            };
            last = (now, replies);
            let phase = if now < win_start {
                "warm-up"
            } else {
                "measuring"
            };
            bar.set_position(
                u64::try_from(now.saturating_duration_since(t0).as_millis()).unwrap_or(0),
            );
            bar.set_message(format!("{phase}: {rate:.0} req/s, {replies} replies"));
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let after = snapshot(args)?;
    let before = before.unwrap_or(Snapshot {
        at: after.at,
        cpu_s: after.cpu_s,
        server_cpu: after.server_cpu,
    });
    Ok(Window {
        wall_s: after.at.saturating_duration_since(before.at).as_secs_f64(),
        cpu_s: (after.cpu_s - before.cpu_s).max(0.0),
        server_cpu: after
            .server_cpu
            .zip(before.server_cpu)
            .map(|(a, b)| a.since(b)),
    })
}

/// A progress bar on stderr when it is a terminal and the output is not JSON-only.
fn progress_bar(args: &BenchArgs) -> Option<indicatif::ProgressBar> {
    if !io::stderr().is_terminal() {
        return None;
    }
    let total = args.warmup.saturating_add(args.duration);
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(u64::try_from(total.as_millis()).unwrap_or(u64::MAX)),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("bench [{bar:30}] {elapsed}/{duration} {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    Some(bar)
}

/// CPU times at one moment.
struct Snapshot {
    /// When.
    at: Instant,
    /// This process's CPU time, seconds.
    cpu_s: f64,
    /// The server's, with --server-pid.
    server_cpu: Option<ProcCpu>,
}

/// Takes a snapshot of this process's and the server's CPU time.
fn snapshot(args: &BenchArgs) -> Result<Snapshot, BenchError> {
    let server_cpu = match args.server_pid {
        Some(pid) => Some(proc_cpu(pid).map_err(|reason| BenchError::ServerCpu { pid, reason })?),
        None => None,
    };
    Ok(Snapshot {
        at: Instant::now(),
        cpu_s: self_cpu_seconds(),
        server_cpu,
    })
}

/// User plus system CPU time of this process (all threads), seconds.
pub(super) fn self_cpu_seconds() -> f64 {
    // SAFETY: rusage is plain data; getrusage writes into the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to our struct; RUSAGE_SELF is always a valid `who`.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU time of a process (all threads), seconds: user and system apart, because the system
/// part of a request is the kernel's and the user part the server's own.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct ProcCpu {
    pub(super) user_s: f64,
    pub(super) sys_s: f64,
}

impl ProcCpu {
    pub(super) fn total_s(self) -> f64 {
        self.user_s + self.sys_s
    }

    /// What was spent from `before` to `self` (never negative).
    pub(super) fn since(self, before: ProcCpu) -> ProcCpu {
        ProcCpu {
            user_s: (self.user_s - before.user_s).max(0.0),
            sys_s: (self.sys_s - before.sys_s).max(0.0),
        }
    }
}

/// The user and system CPU time of process `pid` (all threads) from /proc/PID/stat.
pub(super) fn proc_cpu(pid: u32) -> Result<ProcCpu, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    // The command name (field 2) may hold spaces and parentheses: fields start after the last
    // `)`, with field 3 (state) first, so utime (14) and stime (15) are the 12th and 13th.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("no `)` in the stat line")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<u64, String> {
        fields
            .get(n)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| format!("field {} of the stat line is not a number", n + 3))
    };
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Ok(ProcCpu {
        user_s: field(11)? as f64 / hz,
        sys_s: field(12)? as f64 / hz,
    })
}
