//! The status page's history (`service/status_page/history.rs`): once a second, on a worker
//! with a metrics listener, every worker's counters are gathered as for a scrape (token
//! [`HISTORY`], no connection) and their totals kept, whether anyone watches or not, so the
//! page's charts open on the last five minutes. A second's gather costs one message to each
//! other worker; the process's memory and descriptors are not read for it.

use super::Reactor;
use super::timer::TimerKind;
use super::token::HISTORY;
use crate::kind::ServiceKind;
use crate::metrics::Gathered;
use crate::service::status_page::history::{EVERY, Sample, unix_ms_now};

impl Reactor {
    /// Gathers the counters for the next sample, and comes back in a second; nothing at all
    /// on a worker that serves no status page.
    pub(super) fn history_tick(&mut self) {
        let serves_page = self
            .config
            .listeners
            .iter()
            .any(|l| l.service == ServiceKind::Metrics);
        if !serves_page {
            return;
        }
        self.gather_counters(HISTORY);
        let at = self.core.now + EVERY;
        self.core.timers.push(at, TimerKind::History);
    }

    /// The gathered counters' totals go into the history.
    pub(super) fn record_history(&mut self, gathered: &Gathered) {
        self.svc.history.push(Sample::of(gathered, unix_ms_now()));
    }
}
