//! Waking a service that asked for it (`Action::Wake`): an `/events` stream's next snapshot.
//! A connection whose output is backed up is not woken but asked again later, so a viewer
//! that does not read holds at most [`WAKE_PENDING_LIMIT`] and one snapshot.

use mio::Token;

use super::timer::TimerKind;
use super::{Entry, Reactor};
use crate::service::Event;

/// Pending output past which a wake is put off: a stream's viewer reads too slowly.
const WAKE_PENDING_LIMIT: usize = 64 * 1024;

/// How long a wake put off waits before it is tried again.
const WAKE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

impl Reactor {
    /// Delivers `Event::Wake` to the connection's service and drives it (its actions, its
    /// output); or, with its output backed up, tries again later.
    pub(super) fn wake_service(&mut self, token: Token) {
        let Some(Entry::Conn(c)) = self.core.sources.get_mut(token) else {
            return;
        };
        if c.dead {
            return;
        }
        if c.out.pending() > WAKE_PENDING_LIMIT {
            let at = self.core.now + WAKE_RETRY;
            self.core.timers.push(at, TimerKind::Wake(token));
            return;
        }
        c.service
            .on_event(Event::Wake, c.out.tail(), &mut self.svc.ctx());
        self.drive_conn(token, false, true);
    }
}
