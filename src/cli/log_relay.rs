//! The server's log lines leave through a pipe to a small relay process that copies them to
//! stderr, as PostgreSQL's logging collector does.
//!
//! Why a process and not a thread: the loop must never wait on a slow or stopped stderr, so
//! the lines need somewhere else to block. A second thread would do that, but a process with
//! two threads pays on every `recv` and `send` the reactor makes: the kernel takes an atomic
//! reference on the descriptor (its `fdget` fast path is for single-threaded processes) and
//! libc wraps each call in cancellation bookkeeping. The relay keeps the server at one thread.
//!
//! The server writes each line with one non-blocking `write` to its end of the pipe (1 MiB
//! where the kernel allows it). A line that does not fit is dropped and counted, and the count
//! is reported in the next line that gets through. The relay ignores SIGINT and SIGTERM (a
//! Ctrl-C reaches the whole process group) and exits when the server's end closes.

use std::ffi::c_void;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// The size asked for the pipe: room for bursts of lines while stderr is slow.
const PIPE_SIZE: libc::c_int = 1 << 20;
/// How long the server waits at exit for the relay to write out what is queued.
const EXIT_WAIT: Duration = Duration::from_secs(2);

/// The server's end of the relay: a non-blocking pipe and the relay's pid.
#[derive(Debug)]
pub struct LogRelay {
    pipe: Arc<OwnedFd>,
    dropped: Arc<AtomicU64>,
    /// Reaches end-of-file when the relay exits: the relay holds the only write end.
    exited: OwnedFd,
}

/// What tracing writes through: a handle on the relay's pipe.
#[derive(Debug, Clone)]
pub struct RelayWriter {
    pipe: Arc<OwnedFd>,
    dropped: Arc<AtomicU64>,
}

impl LogRelay {
    /// Forks the relay. Call it before the server opens its sockets: the relay closes every
    /// descriptor but the pipe and stderr, but only those open when it starts.
    pub fn start() -> io::Result<LogRelay> {
        let (read_end, write_end) = pipe(libc::O_CLOEXEC | libc::O_NONBLOCK)?;
        let (exited, exited_w) = pipe(libc::O_CLOEXEC)?;
        // SAFETY: fcntl on an open descriptor; a failure only leaves the default size.
        unsafe { libc::fcntl(write_end.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
        // The relay is a grandchild, so that it is nobody's child to wait for: the server's
        // children are the commands it runs, and the relay outlives the server by a moment.
        // SAFETY: the children run only async-signal-safe calls (see `relay`) and end in
        // _exit, so forking a process that may have other threads is sound.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: fork and _exit are async-signal-safe.
            unsafe {
                if libc::fork() == 0 {
                    relay(read_end.as_raw_fd(), exited_w.as_raw_fd());
                }
                libc::_exit(0);
            }
        }
        let mut status = 0;
        // SAFETY: reaps the intermediate child, which exits at once.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        Ok(LogRelay {
            pipe: Arc::new(write_end),
            dropped: Arc::new(AtomicU64::new(0)),
            exited,
        })
    }

    /// The writer for tracing.
    pub fn writer(&self) -> RelayWriter {
        RelayWriter {
            pipe: Arc::clone(&self.pipe),
            dropped: Arc::clone(&self.dropped),
        }
    }
}

impl Drop for LogRelay {
    /// Closes the pipe and waits a bounded time for the relay to write out what is queued, so
    /// that the last lines come before the shell's prompt. The global subscriber keeps its
    /// writer (and so the pipe's descriptor) for the life of the process, so the pipe is closed
    /// by putting /dev/null in its place: later lines, if any, are discarded.
    fn drop(&mut self) {
        if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
            // SAFETY: both descriptors are open; dup2 replaces the pipe's descriptor at once,
            // so a concurrent writer writes to one or the other, never to a closed number.
            unsafe { libc::dup2(null.as_raw_fd(), self.pipe.as_raw_fd()) };
        }
        let mut pfd = libc::pollfd {
            fd: self.exited.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(EXIT_WAIT.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one pollfd, valid for the call. It returns when the relay exits, or at `ms`.
        unsafe { libc::poll(&mut pfd, 1, ms) };
    }
}

impl io::Write for RelayWriter {
    /// One event is one call: written whole, or dropped and counted, never waited for.
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let notice =
                format!("socklab: {dropped} log line(s) dropped: stderr was not keeping up\n");
            if !write_nonblocking(self.pipe.as_raw_fd(), notice.as_bytes()) {
                self.dropped
                    .fetch_add(dropped.saturating_add(1), Ordering::Relaxed);
                return Ok(line.len());
            }
        }
        if !write_nonblocking(self.pipe.as_raw_fd(), line) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for RelayWriter {
    type Writer = RelayWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Writes `bytes` to a non-blocking pipe; false when nothing of it went in (the pipe is full
/// or gone). A line longer than the pipe's atomic size may go in part: the rest is dropped.
fn write_nonblocking(fd: RawFd, bytes: &[u8]) -> bool {
    let mut rest = bytes;
    while !rest.is_empty() {
        // SAFETY: `rest` is a live slice of the given length; `fd` is the pipe we own.
        let n = unsafe { libc::write(fd, rest.as_ptr().cast::<c_void>(), rest.len()) };
        match usize::try_from(n) {
            Ok(n) => rest = rest.get(n..).unwrap_or_default(),
            Err(_) if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return rest.len() < bytes.len(),
        }
    }
    true
}

/// A pipe with the given flags: (read end, write end).
fn pipe(flags: libc::c_int) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let [r, w] = fds;
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(r), OwnedFd::from_raw_fd(w)) })
}

/// The relay's whole life, in the forked grandchild: copy the pipe to stderr until
/// end-of-file. Only async-signal-safe calls: the parent may have had other threads when it
/// forked.
fn relay(read_end: RawFd, exited: RawFd) -> ! {
    // SAFETY: every call below is async-signal-safe and works on descriptors and memory of
    // this process alone; the function never returns.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        libc::prctl(libc::PR_SET_NAME, c"socklab-log".as_ptr(), 0, 0, 0);
        // The read end moves to 0 (and blocks), the end-of-life pipe to 1; everything else but
        // stderr is closed, so that the relay holds no socket, file or pipe of the server's (a
        // test reading the server's stdout to its end must not wait for the relay).
        if libc::dup2(read_end, 0) < 0 || libc::dup2(exited, 1) < 0 {
            libc::_exit(1);
        }
        let flags = libc::fcntl(0, libc::F_GETFL);
        libc::fcntl(0, libc::F_SETFL, flags & !libc::O_NONBLOCK);
        if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) != 0 {
            for fd in 3..4096 {
                libc::close(fd);
            }
        }
        let mut buf = [0u8; 16384];
        let mut stderr_ok = true;
        loop {
            let n = libc::read(0, buf.as_mut_ptr().cast::<c_void>(), buf.len());
            if n == 0 {
                libc::_exit(0);
            }
            if n < 0 {
                if *libc::__errno_location() == libc::EINTR {
                    continue;
                }
                libc::_exit(1);
            }
            let mut off = 0isize;
            while stderr_ok && off < n {
                let w = libc::write(
                    2,
                    buf.as_ptr().offset(off).cast::<c_void>(),
                    (n - off) as usize,
                );
                if w > 0 {
                    off += w;
                } else if w < 0 && *libc::__errno_location() == libc::EINTR {
                    continue;
                } else {
                    // stderr is gone: keep draining the pipe so the server never fills it.
                    stderr_ok = false;
                }
            }
        }
    }
}
