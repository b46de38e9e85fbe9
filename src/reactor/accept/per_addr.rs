//! Connections open per source address, for `--max-conns-per-ip` (as nginx's `limit_conn`):
//! one table for the whole process, shared by every worker, so that the limit holds per process
//! whichever worker the kernel hands a connection to. An address has an entry only while it
//! holds a connection, so the table is bounded by `--max-conns`, not by the addresses seen.
//! The lock is taken once per accept and once per close, for one hash-map update (the chat
//! nick table is shared the same way).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Open connections by source address, shared across workers (clones share the table).
#[derive(Debug, Clone, Default)]
pub(in crate::reactor) struct PerAddr(Arc<Mutex<HashMap<IpAddr, usize>>>);

impl PerAddr {
    fn table(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        // Every update below is one insert, increment or remove: a worker that panicked while
        // holding the lock left a consistent table.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one more connection from `ip` unless it holds `limit` already (`None`: no limit;
    /// still counted, for `busiest`).
    pub(in crate::reactor) fn try_open(&self, ip: IpAddr, limit: Option<usize>) -> bool {
        let mut table = self.table();
        let n = table.entry(ip).or_default();
        if limit.is_some_and(|max| *n >= max) {
            if *n == 0 {
                table.remove(&ip);
            }
            return false;
        }
        *n = n.saturating_add(1);
        true
    }

    /// Counts one connection from `ip` closed.
    pub(in crate::reactor) fn close(&self, ip: IpAddr) {
        let mut table = self.table();
        if let Some(n) = table.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                table.remove(&ip);
            }
        }
    }

    /// The `n` addresses holding the most connections, most first (ties by address).
    pub(in crate::reactor) fn busiest(&self, n: usize) -> Vec<(IpAddr, usize)> {
        let mut all: Vec<(IpAddr, usize)> = self.table().iter().map(|(a, c)| (*a, *c)).collect();
        all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }
}

/// The address a connection is counted under: an IPv4 peer of a dual-stack socket
/// (`::ffff:a.b.c.d`) counts as the IPv4 address it is.
pub(in crate::reactor) fn source_of(addr: std::net::SocketAddr) -> IpAddr {
    addr.ip().to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_refuses_at_the_limit_and_forgets_empty_addresses() {
        let t = PerAddr::default();
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "::1".parse().unwrap();
        assert!(t.try_open(a, Some(2)));
        assert!(t.try_open(a, Some(2)));
        assert!(!t.try_open(a, Some(2)), "a third from the same address");
        assert!(t.try_open(b, Some(2)), "another address is not held to it");
        assert_eq!(t.busiest(5), vec![(a, 2), (b, 1)]);
        t.close(a);
        assert!(t.try_open(a, Some(2)), "a slot freed is a slot again");
        t.close(a);
        t.close(a);
        t.close(b);
        t.close(b);
        assert!(
            t.busiest(5).is_empty(),
            "no entry is left for an address with none open"
        );
        assert!(t.table().is_empty());
    }

    #[test]
    fn a_mapped_ipv4_peer_counts_as_ipv4() {
        let mapped: std::net::SocketAddr = "[::ffff:10.0.0.1]:80".parse().unwrap();
        assert_eq!(source_of(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }
}
