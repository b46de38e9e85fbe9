//! The reactor's alarm clock: one timerfd in the poll, armed for the earliest deadline.
//!
//! A poll given a timeout makes the kernel start and cancel a high-resolution timer around
//! every sleep, and a loop that sleeps once per request (one connection, depth 1) pays that
//! each time: `socklab bench --conns 1 --depth 1` measured about 5 % more server CPU per
//! request with the 300 s idle timeout pending than with no deadline at all (BENCHMARKS.md).
//! A timerfd stays armed across sleeps, so the poll can always wait without a timeout.
//!
//! The alarm is re-armed only when a deadline comes that is earlier than the one it holds. A
//! later one needs nothing: the alarm rings early, the reactor finds nothing due, and arms it
//! again for what is left. Deadlines that go away (a connection closed) cost at most that one
//! early ring, which keeps the syscall off the path that traffic takes.

use std::io;
use std::time::Instant;

use mio::{Registry, Token};

use crate::sys::timerfd::TimerFd;

/// A timerfd registered in a poll, and the deadline it is armed for.
#[derive(Debug)]
pub struct Alarm {
    /// The timerfd.
    timer: TimerFd,
    /// The deadline the timerfd rings at, if it is armed and has not rung yet.
    armed: Option<Instant>,
}

impl Alarm {
    /// Creates the timerfd and registers it under `token`.
    pub fn new(registry: &Registry, token: Token) -> io::Result<Alarm> {
        Ok(Alarm {
            timer: TimerFd::new(registry, token)?,
            armed: None,
        })
    }

    /// Makes sure the alarm rings no later than `deadline`; `now` is the current time (only
    /// read when the alarm must be re-armed, so the caller may pass a clock read lazily).
    pub fn ring_by(&mut self, deadline: Instant, now: impl FnOnce() -> Instant) -> io::Result<()> {
        if self.armed.is_some_and(|at| at <= deadline) {
            return Ok(());
        }
        // A deadline already passed rings at once.
        self.timer
            .arm_once(deadline.saturating_duration_since(now()))?;
        self.armed = Some(deadline);
        Ok(())
    }

    /// Called when the poll reports the alarm: clears the timerfd's count. The reactor then
    /// fires what is due and arms the alarm for what is next.
    pub fn rang(&mut self) {
        self.timer.drain();
        self.armed = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll};
    use std::time::Duration;

    const ALARM: Token = Token(7);

    /// Polls until the alarm's event arrives or `limit` passes; returns when it came.
    fn wait_for_ring(poll: &mut Poll, limit: Duration) -> Option<Instant> {
        let mut events = Events::with_capacity(4);
        let end = Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            poll.poll(&mut events, Some(left)).unwrap();
            if events.iter().any(|e| e.token() == ALARM) {
                return Some(Instant::now());
            }
        }
    }

    #[test]
    fn rings_at_the_deadline_and_not_before() {
        let mut poll = Poll::new().unwrap();
        let mut alarm = Alarm::new(poll.registry(), ALARM).unwrap();
        let t0 = Instant::now();
        alarm
            .ring_by(t0 + Duration::from_millis(30), Instant::now)
            .unwrap();
        let at = wait_for_ring(&mut poll, Duration::from_secs(5)).expect("the alarm rang");
        assert!(
            at >= t0 + Duration::from_millis(30),
            "rang early: {:?}",
            at - t0
        );
        alarm.rang();
        assert_eq!(alarm.armed, None);
        // Rung and cleared: it does not ring again by itself.
        assert_eq!(wait_for_ring(&mut poll, Duration::from_millis(100)), None);
    }

    #[test]
    fn an_earlier_deadline_rearms_a_later_one_does_not() {
        let mut poll = Poll::new().unwrap();
        let mut alarm = Alarm::new(poll.registry(), ALARM).unwrap();
        let t0 = Instant::now();
        alarm
            .ring_by(t0 + Duration::from_secs(60), Instant::now)
            .unwrap();
        alarm
            .ring_by(t0 + Duration::from_millis(20), Instant::now)
            .unwrap();
        assert_eq!(alarm.armed, Some(t0 + Duration::from_millis(20)));
        // A later deadline leaves the earlier one armed and reads no clock.
        alarm
            .ring_by(t0 + Duration::from_secs(30), || panic!("no clock read"))
            .unwrap();
        assert_eq!(alarm.armed, Some(t0 + Duration::from_millis(20)));
        assert!(wait_for_ring(&mut poll, Duration::from_secs(5)).is_some());
    }

    #[test]
    fn a_deadline_already_passed_rings_at_once() {
        let mut poll = Poll::new().unwrap();
        let mut alarm = Alarm::new(poll.registry(), ALARM).unwrap();
        let past = Instant::now();
        alarm.ring_by(past, Instant::now).unwrap();
        assert!(
            wait_for_ring(&mut poll, Duration::from_secs(5)).is_some(),
            "a zero wait must not disarm the timerfd"
        );
    }
}
