//! This process's resident memory and open descriptors, from /proc/self (a read of kernel
//! memory: it never waits on a device).

/// What the status page shows of the process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ProcessStats {
    /// Resident set size, bytes.
    pub(crate) rss_bytes: u64,
    /// Open file descriptors.
    pub(crate) open_fds: u64,
}

/// Reads them now; what cannot be read is 0.
pub(crate) fn read() -> ProcessStats {
    // statm: sizes in pages; the second field is the resident set.
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    ProcessStats {
        rss_bytes: pages.saturating_mul(page),
        open_fds,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_running_process_has_memory_and_descriptors() {
        let p = super::read();
        assert!(p.rss_bytes > 1 << 20, "{p:?}");
        assert!(p.open_fds >= 3, "{p:?}");
    }
}
