//! The kernel's count of datagrams it dropped because a UDP socket's receive queue was full:
//! the `drops` column of /proc/net/udp and /proc/net/udp6, by socket inode. Read when counters
//! are asked for (`stats`, metrics), never per datagram.

use std::collections::HashMap;

/// Drops by socket inode, from the text of /proc/net/udp (or udp6).
pub(crate) fn parse(text: &str, into: &mut HashMap<u64, u64>) {
    // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(inode), Some(drops)) = (fields.get(9), fields.get(12)) else {
            continue;
        };
        if let (Ok(inode), Ok(drops)) = (inode.parse::<u64>(), drops.parse::<u64>()) {
            into.insert(inode, drops);
        }
    }
}

/// Drops of every UDP socket of this process's network namespace, by inode.
pub(crate) fn read() -> HashMap<u64, u64> {
    let mut drops = HashMap::new();
    for path in ["/proc/self/net/udp", "/proc/self/net/udp6"] {
        if let Ok(text) = std::fs::read_to_string(path) {
            parse(&text, &mut drops);
        }
    }
    drops
}

/// The inode of the socket behind `fd` (as /proc/net/udp names it).
pub(crate) fn inode_of(fd: std::os::fd::RawFd) -> Option<u64> {
    // SAFETY: fstat writes into the zeroed struct we own; `fd` is open for the call.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    (unsafe { libc::fstat(fd, &mut st) } == 0).then_some(st.st_ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drops_column_is_read_by_inode() {
        let text = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
         1: 0100007F:1B58 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 17\n\
         2: 00000000:1BA3 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 77 2 0000000000000000 0\n\
         garbage line\n";
        let mut got = HashMap::new();
        parse(text, &mut got);
        assert_eq!(got.get(&4242), Some(&17));
        assert_eq!(got.get(&77), Some(&0));
        assert_eq!(got.len(), 2);
    }
}
