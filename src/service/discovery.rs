//! `discovery`: answers the broadcast probe `SOCKLAB?` with a JSON description of this server
//! and its services (PROTOCOL.md, "Discovery").
//!
//! A discovery socket listens on all interfaces and its answer is larger than the probe, so it
//! could be used to amplify traffic towards a spoofed source. Three things keep that bounded:
//! only the exact 8-byte probe is answered (anything else, however large, gets nothing); the
//! answer goes only to the probe's source (the caller's job: it replies with `send_to` the
//! sender); and answers are rate limited over the whole socket, so a flood of probes yields at
//! most `max_per_second` answers a second (with a burst of as many). The answer is encoded
//! once, at construction, so a probe costs a comparison and a copy.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The probe a client broadcasts.
pub const PROBE: &[u8; 8] = b"SOCKLAB?";
/// The UDP port discovery listens on by default.
pub const DEFAULT_PORT: u16 = 7099;
/// Answers per second allowed by default.
pub const DEFAULT_MAX_PER_SECOND: u32 = 20;
/// Largest answer: what fits in one UDP datagram over IPv4.
pub const MAX_ANSWER: usize = 65_507;

/// What a server says about itself; the answer is this object in JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveryInfo {
    /// A name for this server (by default its host name), to tell servers apart.
    pub name: String,
    /// The socklab version the server runs.
    pub version: String,
    /// The services it offers, in listener order.
    pub services: Vec<ServiceEntry>,
}

/// One service a server offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEntry {
    /// The service's name as in PROTOCOL.md (`echo`, `udp-echo`, `time`, …).
    pub service: String,
    /// `tcp`, `udp`, `unix` or `unixgram`.
    pub transport: String,
    /// The address it listens on, as the client would write it.
    pub addr: String,
}

/// Why a discovery answer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("cannot encode the discovery answer: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("discovery answer too large for one datagram: {len} bytes, at most {MAX_ANSWER}")]
    TooLarge { len: usize },
}

/// The discovery service of one socket: the pre-encoded answer and the rate limit.
#[derive(Debug, Clone)]
pub struct Discovery {
    /// The JSON answer, encoded once.
    answer: Vec<u8>,
    /// The rate limit on answers.
    limit: RateLimit,
}

impl Discovery {
    /// Encodes the answer for `info`, with at most `max_per_second` answers a second (0: never
    /// answer).
    pub fn new(info: &DiscoveryInfo, max_per_second: u32) -> Result<Self, DiscoveryError> {
        let answer = serde_json::to_vec(info)?;
        if answer.len() > MAX_ANSWER {
            return Err(DiscoveryError::TooLarge { len: answer.len() });
        }
        Ok(Discovery {
            answer,
            limit: RateLimit::new(max_per_second),
        })
    }

    /// Handles one datagram received at `now`: `true` with the answer in `reply` (cleared
    /// first) for the probe while under the rate limit; `false` (send nothing) otherwise.
    pub fn on_datagram(&mut self, payload: &[u8], now: Instant, reply: &mut Vec<u8>) -> bool {
        reply.clear();
        if payload != PROBE || !self.limit.allow(now) {
            return false;
        }
        reply.extend_from_slice(&self.answer);
        true
    }
}

/// A token bucket kept as one deadline (the generic cell rate algorithm): an answer is
/// allowed when the bucket's "theoretical arrival time" is at most a burst ahead of `now`.
/// Integer durations, no floating point, and a refused probe changes nothing.
#[derive(Debug, Clone)]
struct RateLimit {
    /// Time one answer costs (1 s / rate); `None` when the rate is 0 and nothing is allowed.
    interval: Option<Duration>,
    /// How far ahead of `now` the deadline may run: (burst − 1) intervals, burst = rate.
    tolerance: Duration,
    /// When the bucket would be full again; `None` until the first answer.
    tat: Option<Instant>,
}

impl RateLimit {
    fn new(per_second: u32) -> Self {
        let interval = (per_second > 0).then(|| Duration::from_secs(1) / per_second);
        let tolerance = interval
            .map(|i| i.saturating_mul(per_second.saturating_sub(1)))
            .unwrap_or_default();
        RateLimit {
            interval,
            tolerance,
            tat: None,
        }
    }

    /// Whether one more answer is allowed at `now`; counts it if so.
    fn allow(&mut self, now: Instant) -> bool {
        let Some(interval) = self.interval else {
            return false;
        };
        let tat = match self.tat {
            // A deadline in the past means the bucket is full: start from now.
            Some(tat) if tat > now => {
                if tat.saturating_duration_since(now) > self.tolerance {
                    return false;
                }
                tat
            }
            _ => now,
        };
        // An Instant this far in the future cannot be reached; refuse rather than overflow.
        match tat.checked_add(interval) {
            Some(next) => {
                self.tat = Some(next);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> DiscoveryInfo {
        DiscoveryInfo {
            name: "box \"one\"".into(),
            version: "0.1.0".into(),
            services: vec![
                ServiceEntry {
                    service: "echo".into(),
                    transport: "tcp".into(),
                    addr: "127.0.0.1:7000".into(),
                },
                ServiceEntry {
                    service: "time".into(),
                    transport: "udp".into(),
                    addr: "127.0.0.1:7013".into(),
                },
            ],
        }
    }

    #[test]
    fn answers_the_probe_with_the_json_object() {
        let mut d = Discovery::new(&info(), DEFAULT_MAX_PER_SECOND).expect("encodes");
        let mut reply = b"stale".to_vec();
        assert!(d.on_datagram(b"SOCKLAB?", Instant::now(), &mut reply));
        let v: serde_json::Value = serde_json::from_slice(&reply).expect("JSON");
        assert_eq!(v["name"], "box \"one\"");
        assert_eq!(v["version"], "0.1.0");
        assert_eq!(v["services"][0]["service"], "echo");
        assert_eq!(v["services"][0]["transport"], "tcp");
        assert_eq!(v["services"][0]["addr"], "127.0.0.1:7000");
        assert_eq!(v["services"][1]["service"], "time");
        assert_eq!(v.as_object().map(|o| o.len()), Some(3));
        let back: DiscoveryInfo = serde_json::from_slice(&reply).expect("round trip");
        assert_eq!(back, info());
    }

    #[test]
    fn ignores_everything_but_the_exact_probe() {
        let mut d = Discovery::new(&info(), DEFAULT_MAX_PER_SECOND).expect("encodes");
        let now = Instant::now();
        for payload in [
            &b""[..],
            b"SOCKLAB",
            b"SOCKLAB?x",
            b"socklab?",
            b"SOCKLAB!",
            b" SOCKLAB?",
            b"SOCKLAB?\n",
            &[0u8; 8],
            &[b'S'; 1500],
        ] {
            let mut reply = b"stale".to_vec();
            assert!(!d.on_datagram(payload, now, &mut reply), "{payload:?}");
            assert!(reply.is_empty(), "{payload:?}");
        }
        // Ignored payloads do not use up the rate limit.
        for i in 0..DEFAULT_MAX_PER_SECOND {
            let mut reply = Vec::new();
            assert!(d.on_datagram(PROBE, now, &mut reply), "probe {i}");
        }
    }

    #[test]
    fn rate_limit_allows_a_burst_then_refills() {
        let mut d = Discovery::new(&info(), 20).expect("encodes");
        let t0 = Instant::now();
        let mut reply = Vec::new();
        for i in 0..20 {
            assert!(d.on_datagram(PROBE, t0, &mut reply), "probe {i}");
        }
        // The 21st within the same second is ignored, however many come.
        for ms in [0, 1, 10, 49] {
            let now = t0 + Duration::from_millis(ms);
            assert!(!d.on_datagram(PROBE, now, &mut reply), "at {ms} ms");
            assert!(reply.is_empty());
        }
        // One interval (1/20 s) later, one more.
        let t1 = t0 + Duration::from_millis(50);
        assert!(d.on_datagram(PROBE, t1, &mut reply));
        assert!(!d.on_datagram(PROBE, t1, &mut reply));
        // After a quiet second or more the bucket is full again: a whole burst, no more.
        let t2 = t0 + Duration::from_secs(3);
        let answered = (0..100)
            .filter(|_| d.on_datagram(PROBE, t2, &mut reply))
            .count();
        assert_eq!(answered, 20);
    }

    #[test]
    fn sustained_flood_is_held_to_the_rate() {
        let mut d = Discovery::new(&info(), 20).expect("encodes");
        let t0 = Instant::now();
        let mut reply = Vec::new();
        // A probe every millisecond for 10 s: the burst plus 20 a second.
        let answered = (0..10_000u64)
            .filter(|ms| d.on_datagram(PROBE, t0 + Duration::from_millis(*ms), &mut reply))
            .count();
        assert!((200..=221).contains(&answered), "{answered}");
    }

    #[test]
    fn zero_rate_never_answers() {
        let mut d = Discovery::new(&info(), 0).expect("encodes");
        let mut reply = Vec::new();
        assert!(!d.on_datagram(PROBE, Instant::now(), &mut reply));
    }

    #[test]
    fn rate_one_is_one_a_second() {
        let mut d = Discovery::new(&info(), 1).expect("encodes");
        let t0 = Instant::now();
        let mut reply = Vec::new();
        assert!(d.on_datagram(PROBE, t0, &mut reply));
        assert!(!d.on_datagram(PROBE, t0 + Duration::from_millis(999), &mut reply));
        assert!(d.on_datagram(PROBE, t0 + Duration::from_secs(1), &mut reply));
    }

    #[test]
    fn an_answer_too_large_for_a_datagram_is_refused() {
        let mut big = info();
        big.name = "x".repeat(MAX_ANSWER);
        assert!(matches!(
            Discovery::new(&big, 20),
            Err(DiscoveryError::TooLarge { .. })
        ));
    }
}
