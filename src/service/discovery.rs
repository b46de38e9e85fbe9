//! `discovery`: answers the broadcast probe `SOCKLAB?` with a JSON description of this server
//! and its services (PROTOCOL.md, "Discovery").
//!
//! A discovery socket listens on all interfaces and its answer is larger than the probe, so it
//! could be used to amplify traffic towards a spoofed source. Three things keep that bounded:
//! only the exact 8-byte probe is answered (anything else, however large, gets nothing); the
//! answer goes only to the probe's source (the caller's job: it replies with `send_to` the
//! sender); and answers are rate limited over the whole socket, so a flood of probes yields at
//! most `max_per_second` answers a second (with a burst of as many). So that one flooding
//! source cannot use up that budget and starve everyone else, each source address is also
//! held to a quarter of it (at least 1 a second), in a table of at most [`MAX_SOURCES`]
//! addresses that forgets the oldest first. The answer is encoded once, at construction, so a
//! probe costs a comparison, two table look-ups and a copy.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
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
/// Source addresses whose answers are counted at once; past it the oldest is forgotten.
pub const MAX_SOURCES: usize = 1024;

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

/// The discovery service of one socket: the pre-encoded answer and the rate limits.
#[derive(Debug, Clone)]
pub struct Discovery {
    /// The JSON answer, encoded once.
    answer: Vec<u8>,
    /// The limit on answers over the whole socket.
    global: Rate,
    /// The global bucket's deadline; `None` until the first answer.
    global_tat: Option<Instant>,
    /// The limit on answers to one source address.
    per_source: Rate,
    /// Each recent source's bucket deadline, at most [`MAX_SOURCES`] of them.
    sources: HashMap<IpAddr, Instant>,
    /// The keys of `sources`, oldest first, for eviction.
    order: VecDeque<IpAddr>,
}

impl Discovery {
    /// Encodes the answer for `info`, with at most `max_per_second` answers a second (0: never
    /// answer), and a quarter of that (at least 1) to any one source address.
    pub fn new(info: &DiscoveryInfo, max_per_second: u32) -> Result<Self, DiscoveryError> {
        let answer = serde_json::to_vec(info)?;
        if answer.len() > MAX_ANSWER {
            return Err(DiscoveryError::TooLarge { len: answer.len() });
        }
        Ok(Discovery {
            answer,
            global: Rate::new(max_per_second),
            global_tat: None,
            per_source: Rate::new(max_per_second.div_ceil(4)),
            sources: HashMap::new(),
            order: VecDeque::new(),
        })
    }

    /// Handles one datagram from `source` (`None`: an address without an IP, limited only
    /// globally) received at `now`: `true` with the answer in `reply` (cleared first) for the
    /// probe while under both rate limits; `false` (send nothing) otherwise. A refused probe
    /// uses up neither limit.
    pub fn on_datagram(
        &mut self,
        payload: &[u8],
        source: Option<IpAddr>,
        now: Instant,
        reply: &mut Vec<u8>,
    ) -> bool {
        reply.clear();
        if payload != PROBE {
            return false;
        }
        let Some(global_next) = self.global.admit(self.global_tat, now) else {
            return false;
        };
        if let Some(ip) = source {
            let tat = self.sources.get(&ip).copied();
            let Some(next) = self.per_source.admit(tat, now) else {
                return false;
            };
            self.remember(ip, next);
        }
        self.global_tat = Some(global_next);
        reply.extend_from_slice(&self.answer);
        true
    }

    /// Stores `ip`'s new deadline, forgetting the oldest source when the table is full.
    fn remember(&mut self, ip: IpAddr, tat: Instant) {
        if let Some(slot) = self.sources.get_mut(&ip) {
            *slot = tat;
            return;
        }
        while self.sources.len() >= MAX_SOURCES {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.sources.remove(&oldest);
        }
        self.sources.insert(ip, tat);
        self.order.push_back(ip);
    }
}

/// A token bucket kept as one deadline (the generic cell rate algorithm): an answer is
/// allowed when the bucket's "theoretical arrival time" is at most a burst ahead of `now`.
/// Integer durations, no floating point; the deadline itself is kept by the caller, so one
/// rate serves many buckets.
#[derive(Debug, Clone)]
struct Rate {
    /// Time one answer costs (1 s / rate); `None` when the rate is 0 and nothing is allowed.
    interval: Option<Duration>,
    /// How far ahead of `now` the deadline may run: (burst − 1) intervals, burst = rate.
    tolerance: Duration,
}

impl Rate {
    fn new(per_second: u32) -> Self {
        let interval = (per_second > 0).then(|| Duration::from_secs(1) / per_second);
        let tolerance = interval
            .map(|i| i.saturating_mul(per_second.saturating_sub(1)))
            .unwrap_or_default();
        Rate {
            interval,
            tolerance,
        }
    }

    /// The bucket's next deadline if one more answer is allowed at `now` with deadline `tat`
    /// (`None`: an untouched bucket); `None` if it is not.
    fn admit(&self, tat: Option<Instant>, now: Instant) -> Option<Instant> {
        let interval = self.interval?;
        let tat = match tat {
            // A deadline in the past means the bucket is full: start from now.
            Some(tat) if tat > now => {
                if tat.saturating_duration_since(now) > self.tolerance {
                    return None;
                }
                tat
            }
            _ => now,
        };
        // An Instant this far in the future cannot be reached; refuse rather than overflow.
        tat.checked_add(interval)
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
        assert!(d.on_datagram(b"SOCKLAB?", None, Instant::now(), &mut reply));
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
            assert!(
                !d.on_datagram(payload, None, now, &mut reply),
                "{payload:?}"
            );
            assert!(reply.is_empty(), "{payload:?}");
        }
        // Ignored payloads do not use up the rate limit.
        for i in 0..DEFAULT_MAX_PER_SECOND {
            let mut reply = Vec::new();
            assert!(d.on_datagram(PROBE, None, now, &mut reply), "probe {i}");
        }
    }

    #[test]
    fn rate_limit_allows_a_burst_then_refills() {
        let mut d = Discovery::new(&info(), 20).expect("encodes");
        let t0 = Instant::now();
        let mut reply = Vec::new();
        for i in 0..20 {
            assert!(d.on_datagram(PROBE, None, t0, &mut reply), "probe {i}");
        }
        // The 21st within the same second is ignored, however many come.
        for ms in [0, 1, 10, 49] {
            let now = t0 + Duration::from_millis(ms);
            assert!(!d.on_datagram(PROBE, None, now, &mut reply), "at {ms} ms");
            assert!(reply.is_empty());
        }
        // One interval (1/20 s) later, one more.
        let t1 = t0 + Duration::from_millis(50);
        assert!(d.on_datagram(PROBE, None, t1, &mut reply));
        assert!(!d.on_datagram(PROBE, None, t1, &mut reply));
        // After a quiet second or more the bucket is full again: a whole burst, no more.
        let t2 = t0 + Duration::from_secs(3);
        let answered = (0..100)
            .filter(|_| d.on_datagram(PROBE, None, t2, &mut reply))
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
            .filter(|ms| d.on_datagram(PROBE, None, t0 + Duration::from_millis(*ms), &mut reply))
            .count();
        assert!((200..=221).contains(&answered), "{answered}");
    }

    #[test]
    fn zero_rate_never_answers() {
        let mut d = Discovery::new(&info(), 0).expect("encodes");
        let mut reply = Vec::new();
        assert!(!d.on_datagram(PROBE, None, Instant::now(), &mut reply));
    }

    #[test]
    fn rate_one_is_one_a_second() {
        let mut d = Discovery::new(&info(), 1).expect("encodes");
        let t0 = Instant::now();
        let mut reply = Vec::new();
        assert!(d.on_datagram(PROBE, None, t0, &mut reply));
        assert!(!d.on_datagram(PROBE, None, t0 + Duration::from_millis(999), &mut reply));
        assert!(d.on_datagram(PROBE, None, t0 + Duration::from_secs(1), &mut reply));
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

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn one_flooding_source_leaves_the_others_answered() {
        let mut d = Discovery::new(&info(), 20).expect("encodes");
        let t0 = Instant::now();
        let mut reply = Vec::new();
        let (flood, other) = (ip("127.0.0.2"), ip("127.0.0.1"));
        // A probe every millisecond from one source for 5 s, one every 250 ms from another.
        let (mut flooded, mut others) = (0, 0);
        for ms in 0..5_000u64 {
            let now = t0 + Duration::from_millis(ms);
            flooded += usize::from(d.on_datagram(PROBE, flood, now, &mut reply));
            if ms % 250 == 0 {
                assert!(d.on_datagram(PROBE, other, now, &mut reply), "at {ms} ms");
                others += 1;
            }
        }
        assert_eq!(others, 20);
        // The flooder gets its quarter: a burst of 5, then 5 a second.
        assert!((25..=31).contains(&flooded), "{flooded}");
    }

    #[test]
    fn the_source_table_is_bounded_and_forgets_the_oldest() {
        let mut d = Discovery::new(&info(), 1_000_000).expect("encodes");
        let now = Instant::now();
        let mut reply = Vec::new();
        for i in 0..(MAX_SOURCES as u32 + 10) {
            let source = Some(IpAddr::from(i.to_be_bytes()));
            assert!(d.on_datagram(PROBE, source, now, &mut reply));
        }
        assert_eq!(d.sources.len(), MAX_SOURCES);
        assert_eq!(d.order.len(), MAX_SOURCES);
        assert!(!d.sources.contains_key(&IpAddr::from(0u32.to_be_bytes())));
        assert!(d.sources.contains_key(&IpAddr::from(1033u32.to_be_bytes())));
    }

    #[test]
    fn a_source_refused_globally_keeps_its_own_budget() {
        let mut d = Discovery::new(&info(), 4).expect("encodes");
        let now = Instant::now();
        let mut reply = Vec::new();
        // Four sources use up the global burst of 4 (one each: per-source rate is 1).
        for last in 1..=4u8 {
            assert!(d.on_datagram(PROBE, ip(&format!("10.0.0.{last}")), now, &mut reply));
        }
        assert!(!d.on_datagram(PROBE, ip("10.0.0.9"), now, &mut reply));
        // 10.0.0.9 was refused globally: its own bucket is untouched, so once the global one
        // refills (1/4 s) it is answered.
        let later = now + Duration::from_millis(250);
        assert!(d.on_datagram(PROBE, ip("10.0.0.9"), later, &mut reply));
        assert!(
            !d.on_datagram(PROBE, ip("10.0.0.1"), later, &mut reply),
            "its own 1/s"
        );
    }
}
