//! systemd socket activation (sd_listen_fds(3)): the descriptors 3.. that the service manager
//! passed, with their names, each checked to be a socket and described (type, family,
//! listening) so that the server can match it to a configured listener.

use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The first passed descriptor (SD_LISTEN_FDS_START).
const FIRST_FD: RawFd = 3;
/// More than any configuration could want; a larger `LISTEN_FDS` is refused, not trusted.
const MAX_FDS: usize = 1024;

/// What an inherited descriptor is, read back from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SocketShape {
    /// SOCK_STREAM (true) or SOCK_DGRAM (false).
    pub(crate) stream: bool,
    /// AF_INET, AF_INET6 or AF_UNIX.
    pub(crate) family: libc::c_int,
    /// SO_ACCEPTCONN.
    pub(crate) listening: bool,
}

/// One passed descriptor.
#[derive(Debug)]
pub(crate) struct InheritedFd {
    pub(crate) fd: OwnedFd,
    /// From `LISTEN_FDNAMES`; `unknown` when none was given (systemd's default).
    pub(crate) name: String,
    pub(crate) shape: SocketShape,
}

/// Why the passed descriptors cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ActivationError {
    #[error("LISTEN_FDS={0:?} is not a count of descriptors (at most {MAX_FDS})")]
    BadCount(String),
    #[error("LISTEN_FDNAMES has {names} names for LISTEN_FDS={fds}")]
    NameCount { names: usize, fds: usize },
    #[error("descriptor {fd} ({name}): not a socket")]
    NotASocket { fd: RawFd, name: String },
    #[error("descriptor {fd} ({name}): {what}")]
    Unusable {
        fd: RawFd,
        name: String,
        what: String,
    },
}

/// The descriptors passed to this process, if `LISTEN_PID` is our pid and `LISTEN_FDS` is set.
/// The `LISTEN_*` variables are removed either way, so that children do not inherit them, and
/// each descriptor gets CLOEXEC (children do not get the listeners) and O_NONBLOCK.
///
/// Must run before any other thread exists (it changes the environment), and before any
/// other descriptor is opened (it takes ownership of 3..3+N).
pub(crate) fn take_from_env() -> Result<Vec<InheritedFd>, ActivationError> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let names = std::env::var("LISTEN_FDNAMES").ok();
    // SAFETY: called at start-up, before any thread is spawned.
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    let ours = pid
        .and_then(|p| p.trim().parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    let Some(fds) = fds.filter(|_| ours) else {
        return Ok(Vec::new());
    };
    let count: usize = fds
        .trim()
        .parse()
        .ok()
        .filter(|n| *n <= MAX_FDS)
        .ok_or_else(|| ActivationError::BadCount(fds.clone()))?;
    let names: Vec<String> = match names {
        Some(n) => n.split(':').map(str::to_owned).collect(),
        None => vec!["unknown".to_owned(); count],
    };
    if names.len() != count {
        return Err(ActivationError::NameCount {
            names: names.len(),
            fds: count,
        });
    }
    let mut taken = Vec::with_capacity(count);
    for (fd, name) in (FIRST_FD..).zip(names) {
        taken.push(take_one(fd, name)?);
    }
    Ok(taken)
}

fn take_one(fd: RawFd, name: String) -> Result<InheritedFd, ActivationError> {
    let unusable = |what: String| ActivationError::Unusable {
        fd,
        name: name.clone(),
        what,
    };
    // SAFETY: fstat on any integer is safe; a closed descriptor gives EBADF.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(unusable(format!(
            "cannot be read: {}",
            std::io::Error::last_os_error()
        )));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(ActivationError::NotASocket { fd, name });
    }
    // SAFETY: the descriptor is open, and systemd's protocol hands it to this process alone.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let ty = sockopt_int(fd, libc::SO_TYPE).map_err(|e| unusable(format!("SO_TYPE: {e}")))?;
    let family =
        sockopt_int(fd, libc::SO_DOMAIN).map_err(|e| unusable(format!("SO_DOMAIN: {e}")))?;
    let stream = match ty {
        libc::SOCK_STREAM => true,
        libc::SOCK_DGRAM => false,
        other => {
            return Err(unusable(format!(
                "socket type {other}, neither stream nor datagram"
            )));
        }
    };
    let listening = stream
        && sockopt_int(fd, libc::SO_ACCEPTCONN)
            .map_err(|e| unusable(format!("SO_ACCEPTCONN: {e}")))?
            != 0;
    set_flags(owned.as_raw_fd()).map_err(|e| unusable(format!("fcntl: {e}")))?;
    Ok(InheritedFd {
        fd: owned,
        name,
        shape: SocketShape {
            stream,
            family,
            listening,
        },
    })
}

fn sockopt_int(fd: RawFd, opt: libc::c_int) -> std::io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v and len point to valid memory of the sizes given.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r == 0 {
        Ok(v)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn set_flags(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor this process owns.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fdfl = libc::fcntl(fd, libc::F_GETFD);
        if fdfl < 0 || libc::fcntl(fd, libc::F_SETFD, fdfl | libc::FD_CLOEXEC) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn family_name(f: libc::c_int) -> &'static str {
    match f {
        libc::AF_INET => "AF_INET",
        libc::AF_INET6 => "AF_INET6",
        libc::AF_UNIX => "AF_UNIX",
        _ => "another family",
    }
}

impl fmt::Display for SocketShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.stream, self.listening) {
            (true, true) => write!(f, "a listening stream socket"),
            (true, false) => write!(f, "a stream socket that is not listening"),
            (false, _) => write!(f, "a datagram socket"),
        }?;
        write!(f, " ({})", family_name(self.family))
    }
}

impl SocketShape {
    /// Why this socket cannot serve where a socket of `want` is configured, if it cannot.
    /// `inet` families are interchangeable (a v6 socket may be configured as a v4 address).
    pub(crate) fn mismatch(&self, want: SocketShape) -> Option<String> {
        let inet = |f| f == libc::AF_INET || f == libc::AF_INET6;
        let family_ok = self.family == want.family || (inet(self.family) && inet(want.family));
        if self.stream == want.stream && family_ok && (!want.stream || self.listening) {
            return None;
        }
        let expected = if want.stream {
            "a listening stream socket"
        } else {
            "a datagram socket"
        };
        let fam = if inet(want.family) {
            "AF_INET/AF_INET6"
        } else {
            family_name(want.family)
        };
        let got = match (self.stream, self.listening) {
            (true, true) => "a listening stream socket",
            (true, false) => "a stream socket that is not listening",
            (false, _) => "a datagram socket",
        };
        Some(format!(
            "{got} ({}), expected {expected} ({fam})",
            family_name(self.family)
        ))
    }
}
