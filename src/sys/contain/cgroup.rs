//! A cgroup v2 per `exec` command: `<own cgroup>/socklab-<pid>/cmd-<n>`. The child joins
//! its cgroup between fork and exec by writing `0` to a `cgroup.procs` descriptor the parent
//! opened; killing writes `1` to `cgroup.kill`; the directory is removed once it is empty.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Why commands cannot get a cgroup each.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup v2 hierarchy is mounted")]
    NoMount,
    #[error("this process is in no cgroup v2 (no `0::` line in /proc/self/cgroup)")]
    NotInHierarchy,
    #[error("cannot read {0}: {1}")]
    Read(&'static str, io::Error),
    #[error("cannot create the cgroup {}: {source}", .path.display())]
    Create { path: PathBuf, source: io::Error },
    #[error("{} has no cgroup.kill (Linux 5.14 or later is needed)", .0.display())]
    NoKill(PathBuf),
}

/// The server's own cgroup, under which every command's goes.
#[derive(Debug)]
pub(crate) struct Base {
    dir: PathBuf,
}

/// Cgroups of ended commands that still held a process when the command was answered.
static PENDING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Past this many, an undeletable cgroup is left and said so rather than remembered.
const MAX_PENDING: usize = 4096;

impl Base {
    /// Creates `socklab-<pid>` below this process's cgroup.
    pub(crate) fn create() -> Result<Base, CgroupError> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| CgroupError::Read("/proc/self/mountinfo", e))?;
        let mount = cgroup2_mount(&mountinfo).ok_or(CgroupError::NoMount)?;
        let own = fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| CgroupError::Read("/proc/self/cgroup", e))?;
        let own = unified_path(&own).ok_or(CgroupError::NotInHierarchy)?;
        let parent = mount.join(own.trim_start_matches('/'));
        remove_stale(&parent);
        let dir = parent.join(format!("socklab-{}", std::process::id()));
        // A directory of an earlier process with our pid: empty, or it could not be removed.
        let _ = fs::remove_dir(&dir);
        fs::create_dir(&dir).map_err(|source| CgroupError::Create {
            path: dir.clone(),
            source,
        })?;
        if !dir.join("cgroup.kill").exists() {
            let _ = fs::remove_dir(&dir);
            return Err(CgroupError::NoKill(dir));
        }
        Ok(Base { dir })
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }

    /// A new cgroup for command number `id`, with its `cgroup.procs` open for the child.
    pub(crate) fn leaf(&self, id: u64) -> io::Result<Leaf> {
        let dir = self.dir.join(format!("cmd-{id}"));
        fs::create_dir(&dir)?;
        let procs = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(dir.join("cgroup.procs"));
        match procs {
            Ok(f) => Ok(Leaf {
                dir,
                procs: Some(OwnedFd::from(f)),
            }),
            Err(e) => {
                let _ = fs::remove_dir(&dir);
                Err(e)
            }
        }
    }

    /// Kills every process of every command.
    pub(crate) fn kill_all(&self) {
        write_kill(&self.dir);
    }

    /// Removes every command's cgroup and then the server's, waiting at most `bound` for the
    /// killed processes to leave them. At exit only: it sleeps.
    pub(crate) fn remove_within(&self, bound: Duration) {
        let deadline = Instant::now() + bound;
        loop {
            if let Ok(entries) = fs::read_dir(&self.dir) {
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        let _ = fs::remove_dir(e.path());
                    }
                }
            }
            if fs::remove_dir(&self.dir).is_ok() || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if self.dir.exists() {
            tracing::warn!(cgroup = %self.dir.display(), "exec: a cgroup still holds processes at exit");
        }
    }
}

/// One command's cgroup.
#[derive(Debug)]
pub(crate) struct Leaf {
    dir: PathBuf,
    procs: Option<OwnedFd>,
}

impl Leaf {
    /// `cgroup.procs`, open for writing until the child has joined.
    pub(crate) fn procs(&self) -> BorrowedFd<'_> {
        match &self.procs {
            Some(fd) => fd.as_fd(),
            // SAFETY: -1 is never a valid descriptor; a write to it fails with EBADF, which
            // fails the spawn rather than letting the child run outside its cgroup.
            None => unsafe { BorrowedFd::borrow_raw(-1) },
        }
    }

    /// The child joined (or failed to): the parent's descriptor is closed.
    pub(crate) fn close_procs(&mut self) {
        self.procs = None;
    }

    /// Kills every process in the cgroup.
    pub(crate) fn kill(&self) {
        write_kill(&self.dir);
    }
}

fn write_kill(dir: &Path) {
    if let Err(e) = File::options()
        .write(true)
        .open(dir.join("cgroup.kill"))
        .and_then(|mut f| io::Write::write_all(&mut f, b"1"))
    {
        tracing::warn!(cgroup = %dir.display(), "exec: cannot write cgroup.kill: {e}");
    }
}

/// Cgroups of servers that are gone (killed with SIGKILL, say): whatever their commands left
/// running is killed, and the directories go once empty.
fn remove_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("socklab-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = e.path();
        write_kill(&dir);
        let base = Base { dir };
        base.remove_within(Duration::from_millis(100));
        if !base.dir.exists() {
            tracing::info!(cgroup = %base.dir.display(), "exec: removed the cgroup of a server that is gone");
        }
    }
}

/// Removes `leaf` now if it is empty, else remembers it for [`retry_removals`].
pub(crate) fn remove_when_empty(leaf: Leaf) {
    if fs::remove_dir(&leaf.dir).is_ok() {
        return;
    }
    if let Ok(mut pending) = PENDING.lock() {
        if pending.len() < MAX_PENDING {
            pending.push(leaf.dir);
        } else {
            tracing::warn!(cgroup = %leaf.dir.display(), "exec: too many cgroups still busy; this one is left");
        }
    }
}

/// Removes the remembered cgroups that have emptied since; never waits for the lock.
pub(crate) fn retry_removals() {
    if let Ok(mut pending) = PENDING.try_lock() {
        pending.retain(|dir| fs::remove_dir(dir).is_err() && dir.exists());
    }
}

/// The mount point of the cgroup v2 hierarchy in `/proc/self/mountinfo`'s text.
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        if fs.split(' ').next()? != "cgroup2" {
            return None;
        }
        let point = mount.split(' ').nth(4)?;
        Some(PathBuf::from(unescape_octal(point)))
    })
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(rest.get(..i).unwrap_or_default());
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(char::from(c));
                rest = rest.get(i + 4..).unwrap_or_default();
            }
            None => {
                out.push('\\');
                rest = rest.get(i + 1..).unwrap_or_default();
            }
        }
    }
    out.push_str(rest);
    out
}

/// This process's path in the unified hierarchy, from `/proc/self/cgroup`'s text.
fn unified_path(cgroup: &str) -> Option<&str> {
    cgroup.lines().find_map(|l| l.strip_prefix("0::"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_among_v1_ones() {
        let info = "30 25 0:26 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu\n\
                    35 25 0:31 / /sys/fs/cgroup/uni\\040fied rw,relatime shared:14 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(info),
            Some(PathBuf::from("/sys/fs/cgroup/uni fied"))
        );
        assert_eq!(cgroup2_mount("30 25 0:26 / /x rw - cgroup c rw\n"), None);
    }

    #[test]
    fn reads_the_unified_line() {
        let text = "4:memory:/a/b\n0::/system.slice/socklab.service\n";
        assert_eq!(unified_path(text), Some("/system.slice/socklab.service"));
        assert_eq!(unified_path("4:memory:/a\n"), None);
    }
}
