//! sd_notify(3): one datagram to the unix socket named by `NOTIFY_SOCKET` (a path, or
//! `@name` for an abstract socket), sent without blocking. Written on std's `UnixDatagram`
//! rather than a crate: it is a dozen lines, and the send must never block the loop.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where notifications go; `None` when the process was not started by a service manager.
#[derive(Debug)]
pub(crate) struct Notifier {
    sock: UnixDatagram,
    to: SocketAddr,
    /// `NOTIFY_SOCKET` as it was, for a successor started by a reload.
    env: std::ffi::OsString,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`, which is then removed so children do not notify in our name.
    /// Must run before any other thread exists.
    pub(crate) fn from_env() -> io::Result<Option<Notifier>> {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(None);
        };
        // SAFETY: called at start-up, before any thread is spawned.
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        let bytes = path.as_encoded_bytes();
        let to = match bytes.split_first() {
            Some((b'@', name)) => SocketAddr::from_abstract_name(name)?,
            Some(_) => SocketAddr::from_pathname(std::path::Path::new(&path))?,
            None => return Ok(None),
        };
        let sock = UnixDatagram::unbound()?;
        sock.set_nonblocking(true)?;
        Ok(Some(Notifier {
            sock,
            to,
            env: path,
        }))
    }

    /// Sends `state` (lines such as `READY=1`); a full or absent receiver loses it, never waits.
    pub(crate) fn send(&self, state: &str) {
        if let Err(e) = self.sock.send_to_addr(state.as_bytes(), &self.to) {
            tracing::debug!("sd_notify {state:?} not sent: {e}");
        }
    }
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, when it is set for this process
/// (`WATCHDOG_PID` absent or ours). The variables are removed.
pub(crate) fn watchdog_interval_from_env() {
    if let Some(every) = watchdog_from_env() {
        let _ = WATCHDOG.set(every);
    }
}

static WATCHDOG: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();

/// The interval recorded by [`watchdog_interval_from_env`], if any.
pub(crate) fn watchdog_interval() -> Option<Duration> {
    WATCHDOG.get().copied()
}

static WATCHDOG_USEC: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

fn watchdog_from_env() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    // SAFETY: called at start-up, before any thread is spawned.
    unsafe {
        std::env::remove_var("WATCHDOG_USEC");
        std::env::remove_var("WATCHDOG_PID");
    }
    if let Some(p) = pid
        && p.trim().parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    let _ = WATCHDOG_USEC.set(usec);
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

static NOTIFIER: std::sync::OnceLock<Notifier> = std::sync::OnceLock::new();
static STOPPING_SENT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Reads `NOTIFY_SOCKET` once for the whole process (every worker notifies through it).
pub(crate) fn init_from_env() -> io::Result<()> {
    if let Some(n) = Notifier::from_env()? {
        let _ = NOTIFIER.set(n);
    }
    Ok(())
}

/// Sends `state` to the service manager, if there is one.
pub(crate) fn notify(state: &str) {
    if let Some(n) = NOTIFIER.get() {
        n.send(state);
    }
}

/// What a successor started by a reload needs to notify the service manager in its turn:
/// `NOTIFY_SOCKET` and `WATCHDOG_USEC` (without `WATCHDOG_PID`, which would name this process).
pub(crate) fn successor_env() -> Vec<(&'static str, std::ffi::OsString)> {
    let mut env = Vec::new();
    if let Some(n) = NOTIFIER.get() {
        env.push(("NOTIFY_SOCKET", n.env.clone()));
    }
    if let Some(usec) = WATCHDOG_USEC.get() {
        env.push(("WATCHDOG_USEC", usec.to_string().into()));
    }
    env
}

/// A hand-over to a successor begins (`RELOADING=1`, with the monotonic time systemd's
/// `Type=notify-reload` asks for).
pub(crate) fn reloading() {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let usec = u64::try_from(now.tv_sec)
        .unwrap_or_default()
        .saturating_mul(1_000_000)
        .saturating_add(u64::try_from(now.tv_nsec / 1_000).unwrap_or_default());
    notify(&format!(
        "RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=handing the listeners to a successor"
    ));
}

/// The successor `pid` serves now: it is the service's main process, and ready. This process
/// drains without saying `STOPPING=1`, which would now stop the service.
pub(crate) fn handed_over(pid: i32) {
    STOPPING_SENT.store(true, std::sync::atomic::Ordering::Relaxed);
    notify(&format!(
        "MAINPID={pid}\nREADY=1\nSTATUS=serving (successor pid {pid})"
    ));
}

/// The hand-over failed: this process serves on.
pub(crate) fn reload_failed(why: &str) {
    notify(&format!(
        "READY=1\nSTATUS=hand-over failed: {why}; still serving"
    ));
}

/// `STOPPING=1`, once per process however many workers hear the signal.
pub(crate) fn stopping() {
    if !STOPPING_SENT.swap(true, std::sync::atomic::Ordering::Relaxed) {
        notify("STOPPING=1\nSTATUS=draining connections");
    }
}
