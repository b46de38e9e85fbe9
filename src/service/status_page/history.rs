//! The last five minutes of the server's totals, sampled once a second by the reactor whether
//! anyone watches or not, so that the status page's charts show the minutes before it was
//! opened. Bounded: [`KEEP`] samples of five integers, about 12 KiB a worker.

use std::collections::VecDeque;
use std::fmt::Write;
use std::time::Duration;

use crate::metrics::Gathered;

/// How often the reactor samples.
pub(crate) const EVERY: Duration = Duration::from_secs(1);

/// Five minutes of rates need one sample more than five minutes of seconds.
pub(crate) const KEEP: usize = 301;

/// The totals at one moment: what the page's charts take differences of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Sample {
    /// Wall-clock time, milliseconds since the Unix epoch (the page's clock may differ; rates
    /// come from differences of this one).
    pub(crate) unix_ms: u64,
    /// Requests: `files` frames answered and datagrams received, every service.
    pub(crate) requests: u64,
    /// Connections accepted, every service.
    pub(crate) connections: u64,
    /// Bytes received, every service.
    pub(crate) bytes_in: u64,
    /// Bytes sent, every service.
    pub(crate) bytes_out: u64,
}

impl Sample {
    /// The totals of every worker that answered, at `unix_ms`.
    pub(crate) fn of(gathered: &Gathered, unix_ms: u64) -> Sample {
        let mut s = Sample {
            unix_ms,
            ..Sample::default()
        };
        for (_, c) in &gathered.answered {
            s.requests = s.requests.saturating_add(c.frames.total());
            for svc in &c.services {
                s.requests = s.requests.saturating_add(svc.datagrams_received);
                s.connections = s.connections.saturating_add(svc.accepted);
                s.bytes_in = s.bytes_in.saturating_add(svc.bytes_received);
                s.bytes_out = s.bytes_out.saturating_add(svc.bytes_sent);
            }
        }
        s
    }
}

/// The samples, oldest first, at most [`KEEP`].
#[derive(Debug, Default)]
pub(crate) struct History {
    samples: VecDeque<Sample>,
}

impl History {
    /// Adds a sample, forgetting the oldest beyond [`KEEP`].
    pub(crate) fn push(&mut self, sample: Sample) {
        if self.samples.len() >= KEEP {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    /// How many samples are kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.samples.len()
    }

    /// The samples as JSON, oldest first, each `[unix_ms, requests, connections, bytes_in,
    /// bytes_out]` (compact: the page embeds it).
    pub(crate) fn json(&self) -> String {
        let mut out = String::with_capacity(2 + self.samples.len() * 48);
        out.push('[');
        for (i, s) in self.samples.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(
                out,
                "[{},{},{},{},{}]",
                s.unix_ms, s.requests, s.connections, s.bytes_in, s.bytes_out
            );
        }
        out.push(']');
        out
    }
}

/// Now, in milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::ServiceKind;
    use crate::metrics::Counters;

    #[test]
    fn a_sample_adds_up_every_worker_and_service() {
        let mut a = Counters::default();
        a.service(ServiceKind::Echo).accepted = 3;
        a.service(ServiceKind::Echo).bytes_received = 100;
        a.service(ServiceKind::UdpEcho).datagrams_received = 7;
        a.frame("ping", "ok");
        a.frame("ping", "ok");
        let mut b = Counters::default();
        b.service(ServiceKind::Files).accepted = 2;
        b.service(ServiceKind::Files).bytes_sent = 50;
        b.frame("put", "bad_request");
        let g = Gathered {
            workers: 2,
            answered: vec![(0, a), (1, b)],
            missing: vec![],
            process: Default::default(),
        };
        assert_eq!(
            Sample::of(&g, 9),
            Sample {
                unix_ms: 9,
                requests: 2 + 1 + 7,
                connections: 5,
                bytes_in: 100,
                bytes_out: 50,
            }
        );
    }

    #[test]
    fn it_keeps_five_minutes_and_forgets_the_oldest() {
        let mut h = History::default();
        assert_eq!(h.json(), "[]");
        for t in 0..(KEEP as u64 + 10) {
            h.push(Sample {
                unix_ms: t,
                requests: t * 2,
                ..Sample::default()
            });
        }
        assert_eq!(h.len(), KEEP);
        let v: serde_json::Value = serde_json::from_str(&h.json()).unwrap();
        let rows = v.as_array().unwrap();
        assert_eq!(rows.len(), KEEP);
        assert_eq!(rows[0], serde_json::json!([10, 20, 0, 0, 0]));
        assert_eq!(rows[KEEP - 1][0], KEEP as u64 + 9);
    }
}
