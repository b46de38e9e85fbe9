//! Which of the server's own names left in the data directory start-up may remove.
//!
//! The directory may be shared by servers on several hosts (NFS, a cluster file system): a
//! temporary is named `<prefix><host>-<pid>-<tag>-<n>`, and a server removes only what its own
//! host left behind by processes that are gone, so that its restart never aborts another
//! host's upload. Other hosts' names are removed only once older than [`FOREIGN_MAX_AGE`].

use std::fs;
use std::time::{Duration, SystemTime};

/// Another host's temporaries untouched for this long are taken to be left by a crash.
pub(crate) const FOREIGN_MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// Longest host name kept in a temporary's name.
const MAX_HOST: usize = 64;

/// The host name as it appears in temporaries' names.
pub(crate) fn this_host() -> String {
    let raw = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    sanitize_host(raw.trim())
}

/// A host name made one field of a file name: no `-` (the field separator), no `/`, nothing
/// but ASCII letters, digits, `.` and `_`.
pub(crate) fn sanitize_host(raw: &str) -> String {
    let host: String = raw
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' => c,
            _ => '_',
        })
        .take(MAX_HOST)
        .collect();
    if host.is_empty() {
        "unknown".to_owned()
    } else {
        host
    }
}

/// Host and process read back from one of the server's own names.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Owner<'a> {
    pub(crate) host: &'a str,
    pub(crate) pid: u32,
}

/// The owner of `name` if it is a name with `prefix` in the current format.
pub(crate) fn parse_own<'a>(name: &'a [u8], prefix: &str) -> Option<Owner<'a>> {
    let rest = std::str::from_utf8(name.strip_prefix(prefix.as_bytes())?).ok()?;
    let mut fields = rest.split('-');
    let (host, pid, tag, n) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    let well_formed = fields.next().is_none()
        && !host.is_empty()
        && u64::from_str_radix(tag, 16).is_ok()
        && n.parse::<u64>().is_ok();
    well_formed.then_some(())?;
    Some(Owner {
        host,
        pid: pid.parse().ok()?,
    })
}

/// Whether start-up on `host` may remove the leftover `name` (one of the server's own names,
/// with `prefix`) last modified at `mtime`.
pub(crate) fn removable(name: &[u8], prefix: &str, host: &str, mtime: SystemTime) -> bool {
    match parse_own(name, prefix) {
        Some(owner) if owner.host == host => !is_live_socklab(owner.pid),
        // Another host's, or a name from before hosts were recorded: only by age.
        _ => SystemTime::now()
            .duration_since(mtime)
            .is_ok_and(|age| age > FOREIGN_MAX_AGE),
    }
}

/// Whether `pid` is a live process of this host running socklab: then it is another server
/// sharing the directory (or this one), and its temporaries may be uploads in progress.
fn is_live_socklab(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|comm| comm.trim_end().starts_with("socklab"))
}
