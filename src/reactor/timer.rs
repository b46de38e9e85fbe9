//! Deadlines for the whole reactor in one min-heap; the earliest sets the alarm (`alarm.rs`).
//!
//! Idle timeouts are lazy: a connection's entry is not moved when it sees traffic. When the
//! entry comes due, the reactor checks the connection's last activity and either closes it or
//! pushes a new entry. Entries of closed connections are dropped when they come due, and the
//! heap is compacted when they outnumber the live ones, so its size stays bounded by the number
//! of connections rather than by their churn.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use mio::Token;

/// What comes due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TimerKind {
    /// Check whether this connection has been idle for too long.
    Idle(Token),
    /// This connection's request must be whole by now (`--request-timeout`).
    Request(Token),
    /// Try again to accept on a listener that the descriptor limit paused.
    AcceptRetry(Token),
    /// The client must have answered the authentication challenge by now.
    AuthTimeout(Token),
    /// This connection's PROXY protocol header must be whole by now.
    ProxyHeader(Token),
    /// This connection's TLS handshake must have finished by now.
    TlsHandshake(Token),
    /// This connection's service asked to be woken now (`Action::Wake`).
    Wake(Token),
    /// The shutdown grace period is over.
    ShutdownGrace,
    /// This drained connection has lingered long enough for its peer's end: close it.
    Linger(Token),
    /// This `exec` command's time is up.
    ExecDeadline(u64),
    /// Stop waiting for the pipes of this killed command.
    ExecPipeGrace(u64),
    /// Look again for orphans that killed commands left (subreaper containment).
    OrphanSweep,
    /// Tell systemd's watchdog that this loop still turns (`WATCHDOG=1`).
    Watchdog,
    /// A control connection or a starting successor may be past its deadline.
    Control,
    /// The chat bus's heartbeat, claim refresh and presence expiry.
    BusTick,
    /// Connect to Redis again.
    BusRetry,
    /// This attempt to connect to Redis must be up by now.
    BusDeadline(u64),
    /// Read the kernel's receive-queue drops of the UDP sockets into the counters.
    KernelDrops,
    /// Sample the counters into the status page's history.
    History,
}

/// A min-heap of deadlines.
#[derive(Debug, Default)]
pub struct Timers {
    /// Earliest first; the sequence number keeps equal deadlines in insertion order.
    heap: BinaryHeap<Reverse<(Instant, u64, TimerKind)>>,
    /// Counter for the sequence numbers.
    seq: u64,
}

impl Timers {
    /// Schedules `kind` at `at`.
    pub fn push(&mut self, at: Instant, kind: TimerKind) {
        self.seq = self.seq.wrapping_add(1);
        self.heap.push(Reverse((at, self.seq, kind)));
    }

    /// The earliest deadline, if any: the reactor's alarm rings by then.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Takes the earliest timer if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<TimerKind> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= now => self.heap.pop().map(|Reverse(e)| e.2),
            _ => None,
        }
    }

    /// Number of entries, stale ones included.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True when nothing is scheduled.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Drops the entries `keep` says are stale.
    pub fn retain(&mut self, mut keep: impl FnMut(&TimerKind) -> bool) {
        self.heap.retain(|Reverse((_, _, kind))| keep(kind));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn earliest_first_and_the_deadline_from_it() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        assert_eq!(t.next_deadline(), None);
        t.push(t0 + Duration::from_secs(5), TimerKind::ShutdownGrace);
        t.push(t0 + Duration::from_secs(1), TimerKind::Idle(Token(1)));
        t.push(t0 + Duration::from_secs(3), TimerKind::Idle(Token(2)));
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(t.pop_due(t0), None, "nothing is due yet");
        let later = t0 + Duration::from_secs(3);
        assert_eq!(t.pop_due(later), Some(TimerKind::Idle(Token(1))));
        assert_eq!(t.pop_due(later), Some(TimerKind::Idle(Token(2))));
        assert_eq!(t.pop_due(later), None);
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_secs(5)));
    }

    #[test]
    fn retain_drops_stale_entries() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        for i in 0..10 {
            t.push(t0, TimerKind::Idle(Token(i)));
        }
        t.retain(|k| matches!(k, TimerKind::Idle(Token(i)) if i % 2 == 0));
        assert_eq!(t.len(), 5);
        let mut seen = Vec::new();
        while let Some(TimerKind::Idle(Token(i))) = t.pop_due(t0) {
            seen.push(i);
        }
        assert_eq!(seen, vec![0, 2, 4, 6, 8]);
        assert!(t.is_empty());
    }
}
