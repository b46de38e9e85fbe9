//! A one-shot timerfd registered in a mio poll: the poll wakes when it expires, with
//! nanosecond precision and no timeout of the poll's own (a poll timeout is whole
//! milliseconds, and arms and cancels a kernel timer around every sleep). The reactor's
//! alarm (`reactor/alarm.rs`) and `socklab bench`'s rate timer (`cli/bench/worker.rs`) are
//! built on it.
//!
//! It lives in [`crate::sys`], not in the reactor: its two users are the server and a client,
//! and the load generator should not depend on the server's event loop to get a clock. It knows
//! nothing of socklab, only of Linux and mio.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

/// A timerfd on CLOCK_MONOTONIC (the clock of `Instant`), non-blocking.
#[derive(Debug)]
pub(crate) struct TimerFd {
    /// The descriptor, registered for READABLE.
    fd: OwnedFd,
}

impl TimerFd {
    /// Creates the timerfd and registers it under `token`.
    pub(crate) fn new(registry: &Registry, token: Token) -> io::Result<TimerFd> {
        // SAFETY: no pointers; the flags are valid for timerfd_create.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor we just opened and own alone.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        registry.register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE)?;
        Ok(TimerFd { fd })
    }

    /// Arms it to expire once, `after` from now, replacing any earlier arming. A zero wait
    /// would disarm a timerfd, so a wait below 1 ns is 1 ns: it expires at once.
    pub(crate) fn arm_once(&self, after: Duration) -> io::Result<()> {
        let after = after.max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: libc::time_t::try_from(after.as_secs()).unwrap_or(libc::time_t::MAX),
                tv_nsec: libc::c_long::from(after.subsec_nanos()),
            },
        };
        // SAFETY: `spec` is a valid itimerspec we own; a null old-value pointer is allowed.
        let rc =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads the expiry count, so that the next expiry is a new edge for the poll.
    pub(crate) fn drain(&self) {
        let mut count = [0u8; 8];
        // SAFETY: reads at most 8 bytes into our buffer; the descriptor is ours. An error
        // (EAGAIN: nothing expired since the last read) leaves nothing to do.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), count.as_mut_ptr().cast(), count.len()) };
    }
}
