//! Containment of `exec` commands: no descendant of a command outlives its timeout, its client
//! or the server, even one that leaves its process group or session.
//!
//! Two ways, chosen once at start-up (`--exec-containment`; the subreaper by default, see
//! [`Mode::Subreaper`] for why):
//! - [`cgroup`]: each command runs in a cgroup v2 of its own, below one the server creates for
//!   itself; ending a command writes `cgroup.kill`, which kills every process in it, wherever
//!   it moved its group or session. Needs a writable cgroup v2 hierarchy with `cgroup.kill`
//!   (Linux 5.14; root, or a delegated subtree as systemd's `Delegate=yes` gives).
//! - [`orphans`] (the fallback): the server is the child subreaper (`PR_SET_CHILD_SUBREAPER`),
//!   so a descendant whose parent exits becomes the server's child instead of init's; when a
//!   command ends, every such orphan is killed with its process group, and again for the
//!   orphans that their deaths leave, until none is left alive. It cannot tell which command
//!   an orphan came from: one is killed when any command ends.
//!
//! Either way the server is the subreaper, so the orphans it kills are reaped here rather than
//! left to init.

pub(crate) mod cgroup;
pub(crate) mod orphans;

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// How commands are contained, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A cgroup per command where cgroup v2 is writable, else the subreaper (said in the log).
    Auto,
    /// A cgroup per command; the server does not start without one.
    Cgroup,
    /// The subreaper and orphan sweeps only. The default: joining a cgroup between fork and
    /// exec takes the kernel's cgroup_threadgroup_rwsem for writing, which waits for an RCU
    /// grace period; under load that held `spawn`, on the loop thread, for hundreds of
    /// milliseconds (a CI run here). A cgroup per command is opt-in until commands are
    /// spawned off the loop (or with clone3's CLONE_INTO_CGROUP).
    #[default]
    Subreaper,
}

impl Mode {
    /// The name used by the flag and the file.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Cgroup => "cgroup",
            Mode::Subreaper => "subreaper",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "auto" => Ok(Mode::Auto),
            "cgroup" => Ok(Mode::Cgroup),
            "subreaper" => Ok(Mode::Subreaper),
            _ => Err(format!(
                "`{s}` is not a containment (auto, cgroup or subreaper)"
            )),
        }
    }
}

/// Why commands cannot be contained as configured.
#[derive(Debug, thiserror::Error)]
pub enum ContainError {
    #[error("cannot become the child subreaper: {0}")]
    Subreaper(io::Error),
    #[error("--exec-containment cgroup: {0}")]
    Cgroup(#[from] cgroup::CgroupError),
}

/// The containment in force for the whole process (every worker's commands).
#[derive(Debug)]
pub(crate) enum Containment {
    Cgroup(cgroup::Base),
    Subreaper,
}

static IN_FORCE: OnceLock<Containment> = OnceLock::new();

/// Makes the process the child subreaper and sets up `mode`; says in the log which one is in
/// force. Called once, before the workers start, when `exec` is on.
pub(crate) fn init(mode: Mode) -> Result<&'static Containment, ContainError> {
    if let Some(c) = IN_FORCE.get() {
        return Ok(c);
    }
    become_subreaper().map_err(ContainError::Subreaper)?;
    let chosen = match mode {
        Mode::Subreaper => Containment::Subreaper,
        Mode::Cgroup => Containment::Cgroup(cgroup::Base::create()?),
        Mode::Auto => match cgroup::Base::create() {
            Ok(base) => Containment::Cgroup(base),
            Err(e) => {
                tracing::warn!(
                    "exec: no cgroup per command ({e}); containing commands as the child \
                     subreaper instead: an orphaned descendant is killed when any command ends"
                );
                Containment::Subreaper
            }
        },
    };
    match &chosen {
        Containment::Cgroup(base) => tracing::info!(
            cgroup = %base.path().display(),
            "exec: each command runs in a cgroup of its own"
        ),
        Containment::Subreaper => {
            tracing::info!("exec: commands contained by process group and subreaper")
        }
    }
    Ok(IN_FORCE.get_or_init(|| chosen))
}

/// The containment in force, if [`init`] ran.
pub(crate) fn in_force() -> Option<&'static Containment> {
    IN_FORCE.get()
}

fn become_subreaper() -> io::Result<()> {
    // SAFETY: prctl with an integer option and argument; no memory is passed.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Where one command runs: its cgroup, if commands get one.
#[derive(Debug)]
pub(crate) struct Jail {
    leaf: Option<cgroup::Leaf>,
}

impl Jail {
    /// A jail for the next command.
    pub(crate) fn new() -> io::Result<Jail> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let leaf = match in_force() {
            Some(Containment::Cgroup(base)) => {
                Some(base.leaf(NEXT.fetch_add(1, Ordering::Relaxed))?)
            }
            _ => None,
        };
        Ok(Jail { leaf })
    }

    /// The descriptor the child writes `0` to, between fork and exec, to join its cgroup.
    pub(crate) fn join_fd(&self) -> Option<RawFd> {
        self.leaf.as_ref().map(|l| l.procs().as_raw_fd())
    }

    /// The child has started: the parent's copy of the join descriptor is not needed.
    pub(crate) fn started(&mut self) {
        if let Some(l) = &mut self.leaf {
            l.close_procs();
        }
    }

    /// Kills everything the command started: its cgroup, or its process group and then every
    /// orphan that escaped it. True when the caller must call [`sweep_again`] at
    /// [`SWEEP_AGAIN_AFTER`]: a descendant can be orphaned after the kill with no SIGCHLD to
    /// the server (its parent died first).
    #[must_use]
    pub(crate) fn kill(&self, pgid: i32) -> bool {
        kill_group(pgid, libc::SIGKILL);
        match (&self.leaf, in_force()) {
            (Some(leaf), _) => {
                leaf.kill();
                false
            }
            (None, Some(Containment::Subreaper)) => {
                orphans::start_sweep();
                true
            }
            // Not set up (a test driving the reactor in process): the group only.
            (None, _) => false,
        }
    }
}

impl Drop for Jail {
    fn drop(&mut self) {
        if let Some(leaf) = self.leaf.take() {
            leaf.kill();
            cgroup::remove_when_empty(leaf);
        }
    }
}

/// Sends `signal` to every process of the group `pgid` (never to group 0 or 1, nor to our own).
pub(crate) fn kill_group(pgid: i32, signal: i32) {
    // SAFETY: getpgrp has no arguments and cannot fail.
    if pgid <= 1 || pgid == unsafe { libc::getpgrp() } {
        return;
    }
    // SAFETY: kill only sends a signal; a negative pid names a group.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// When to sweep again after a kill in subreaper mode, counted from the kill.
pub(crate) const SWEEP_AGAIN_AFTER: [std::time::Duration; 4] = [
    std::time::Duration::from_millis(10),
    std::time::Duration::from_millis(50),
    std::time::Duration::from_millis(250),
    std::time::Duration::from_secs(1),
];

/// A later look for orphans that a kill left (see [`Jail::kill`]).
pub(crate) fn sweep_again() {
    orphans::start_sweep();
}

/// After SIGCHLD: reaps the orphans that died, goes on killing escaped ones while a sweep is
/// under way, and removes the cgroups that have emptied.
pub(crate) fn after_sigchld() {
    if in_force().is_none() {
        return;
    }
    orphans::reap_and_sweep();
    cgroup::retry_removals();
}

/// At the server's exit: kills every command still running and everything it started, reaps
/// what it can within a short bound, and removes the cgroups.
pub(crate) fn at_exit() {
    match in_force() {
        Some(Containment::Cgroup(base)) => {
            base.kill_all();
            orphans::kill_registered_commands();
            base.remove_within(std::time::Duration::from_millis(500));
        }
        Some(Containment::Subreaper) => {
            orphans::kill_registered_commands();
            orphans::sweep_within(std::time::Duration::from_millis(500));
        }
        None => {}
    }
}
