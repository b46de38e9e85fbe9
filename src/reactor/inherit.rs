//! Listeners from inherited descriptors: systemd's socket activation today, and the one path a
//! hand-over from an older process would fill too. The descriptors are process-wide (taken
//! once at start-up, before any thread); each reactor claims them by service name, in the
//! order its listeners are configured, and serves a duplicate of each, so that with
//! `--workers N` every worker shares the one inherited socket the way bound ones share a port.

use std::os::fd::OwnedFd;
use std::sync::OnceLock;

use crate::addr::ListenAddr;
use crate::config::ListenerConfig;
use crate::sys::activation::{InheritedFd, SocketShape};

/// Who passed the descriptors, as the `listening` line says (`inherited=systemd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Systemd,
    /// The old process, through the control socket (`serve --upgrade-from`).
    Handover,
}

impl Source {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Source::Systemd => "systemd",
            Source::Handover => "handover",
        }
    }
}

#[derive(Debug)]
pub(crate) struct Inherited {
    source: Source,
    fds: Vec<InheritedFd>,
}

static INHERITED: OnceLock<Inherited> = OnceLock::new();

/// Why the inherited descriptors do not fit the configuration.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InheritError {
    #[error(
        "descriptor {fd} ({name}): no configured listener of that name; name it after a service in the `listening` lines (echo, files, udp-echo, …) or configure one"
    )]
    Unwanted { fd: i32, name: String },
    #[error("descriptor {fd} ({name}): {why}")]
    WrongShape { fd: i32, name: String, why: String },
}

/// The shape a configured listener needs.
fn wanted(l: &ListenerConfig) -> SocketShape {
    let (stream, family) = match &l.addr {
        ListenAddr::Inet(a) if a.is_ipv4() => (l.service.is_stream(), libc::AF_INET),
        ListenAddr::Inet(_) => (l.service.is_stream(), libc::AF_INET6),
        ListenAddr::Unix(_) => (true, libc::AF_UNIX),
        ListenAddr::Unixgram(_) => (false, libc::AF_UNIX),
    };
    SocketShape {
        stream,
        family,
        listening: stream,
    }
}

/// Which inherited descriptor (by index) each listener gets: the first unclaimed one named
/// after its service.
fn assign(fds: &[InheritedFd], listeners: &[ListenerConfig]) -> Vec<Option<usize>> {
    let mut claimed = vec![false; fds.len()];
    listeners
        .iter()
        .map(|l| {
            let i = fds
                .iter()
                .enumerate()
                .position(|(i, f)| !claimed[i] && f.name == l.service.name())?;
            claimed[i] = true;
            Some(i)
        })
        .collect()
}

/// Records the descriptors passed to this process and checks each against the listener that
/// will claim it; a descriptor no listener claims is an error. Called once, before binding.
pub(crate) fn install(
    source: Source,
    fds: Vec<InheritedFd>,
    listeners: &[ListenerConfig],
) -> Result<(), InheritError> {
    let assigned = assign(&fds, listeners);
    for (l, i) in listeners.iter().zip(&assigned) {
        let Some(f) = i.and_then(|i| fds.get(i)) else {
            continue;
        };
        if let Some(why) = f.shape.mismatch(wanted(l)) {
            return Err(InheritError::WrongShape {
                fd: raw(&f.fd),
                name: f.name.clone(),
                why,
            });
        }
    }
    if let Some(f) = fds
        .iter()
        .enumerate()
        .find(|(i, _)| !assigned.contains(&Some(*i)))
        .map(|(_, f)| f)
    {
        return Err(InheritError::Unwanted {
            fd: raw(&f.fd),
            name: f.name.clone(),
        });
    }
    if !fds.is_empty() {
        let _ = INHERITED.set(Inherited { source, fds });
    }
    Ok(())
}

fn raw(fd: &OwnedFd) -> i32 {
    use std::os::fd::AsRawFd;
    fd.as_raw_fd()
}

/// For each of `listeners`, a duplicate of its inherited descriptor (and who passed it), or
/// `None` to bind it as usual. What systemd did not pass may come from an old process
/// (`handover::claim`, which moves rather than duplicates).
pub(crate) fn claim(
    listeners: &[ListenerConfig],
) -> std::io::Result<Vec<Option<(OwnedFd, Source)>>> {
    let mut claims = claim_systemd(listeners)?;
    for (l, c) in listeners.iter().zip(claims.iter_mut()) {
        if c.is_none() {
            *c = super::handover::claim(l).map(|fd| (fd, Source::Handover));
        }
    }
    Ok(claims)
}

fn claim_systemd(listeners: &[ListenerConfig]) -> std::io::Result<Vec<Option<(OwnedFd, Source)>>> {
    let Some(inh) = INHERITED.get() else {
        return Ok(listeners.iter().map(|_| None).collect());
    };
    assign(&inh.fds, listeners)
        .into_iter()
        .map(|i| match i.and_then(|i| inh.fds.get(i)) {
            Some(f) => Ok(Some((f.fd.try_clone()?, inh.source))),
            None => Ok(None),
        })
        .collect()
}
