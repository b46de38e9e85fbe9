//! The chat room's side of the Redis bus (PROTOCOL.md, "Chat across hosts"), sans-IO: what
//! this worker's members did, queued as events for the other hosts; the other hosts' members,
//! as heard on the bus, for `/who`; and the nick claims that keep a nick unique across hosts.
//!
//! The reactor drains [`RoomBus::take_outbox`] and [`RoomBus::take_claims`] into the Redis
//! connection once per turn, feeds what arrives through `ChatRoom::apply_remote` and the claim
//! answers through `ChatRoom::claim_answered`, and says when the bus goes up or down.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::MemberId;
use super::bus_message::{Origin, RoomEvent};

/// Nicks per `here` heartbeat, so that a large room's heartbeat stays a few KiB per message.
const HERE_CHUNK: usize = 100;

/// A change to this host's hold on a nick, for the Redis connection to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClaimOp {
    /// Take `nick` for `member` unless another host holds it; the answer comes back through
    /// `ChatRoom::claim_answered`.
    Claim { member: MemberId, nick: String },
    /// Let `nick` go, if this host still holds it.
    Release { nick: String },
}

/// One member of another host, as last heard of.
#[derive(Debug, Clone)]
struct RemoteMember {
    origin: Origin,
    seen: Instant,
}

/// The bus state of one worker's room.
#[derive(Debug)]
pub(crate) struct RoomBus {
    /// Who this worker is on the bus; its node also tags default nicks.
    pub(crate) origin: Origin,
    /// The connection to Redis is up and subscribed: claims go out and renames wait for them.
    pub(crate) up: bool,
    /// Events of this worker's members for the other hosts, in the order they happened.
    outbox: Vec<RoomEvent>,
    /// Claims and releases, in order.
    claims: Vec<ClaimOp>,
    /// Other hosts' members by nick.
    remote: HashMap<String, RemoteMember>,
    /// Other hosts' members remembered at most; past it a new one is not listed by `/who`.
    max_remote: usize,
    /// Renames waiting for Redis's answer: member, the nick it asked for.
    pub(crate) pending: HashMap<MemberId, String>,
}

impl RoomBus {
    pub(crate) fn new(origin: Origin, max_remote: usize) -> Self {
        RoomBus {
            origin,
            up: false,
            outbox: Vec::new(),
            claims: Vec::new(),
            remote: HashMap::new(),
            max_remote,
            pending: HashMap::new(),
        }
    }

    /// A copy for another worker: the same node, its own worker number, nothing heard yet.
    pub(crate) fn for_worker(&self, worker: u16) -> Self {
        let origin = Origin {
            node: self.origin.node.clone(),
            worker,
        };
        RoomBus::new(origin, self.max_remote)
    }

    pub(crate) fn publish(&mut self, event: RoomEvent) {
        self.outbox.push(event);
    }

    /// A claim only goes out while the bus is up: on (re)connection every nick is claimed
    /// again (`ChatRoom::reclaim_all`).
    pub(crate) fn claim(&mut self, member: MemberId, nick: &str) {
        if self.up {
            self.claims.push(ClaimOp::Claim {
                member,
                nick: nick.to_owned(),
            });
        }
    }

    pub(crate) fn release(&mut self, nick: &str) {
        if self.up {
            self.claims.push(ClaimOp::Release {
                nick: nick.to_owned(),
            });
        }
    }

    pub(crate) fn take_outbox(&mut self) -> Vec<RoomEvent> {
        std::mem::take(&mut self.outbox)
    }

    pub(crate) fn take_claims(&mut self) -> Vec<ClaimOp> {
        std::mem::take(&mut self.claims)
    }

    /// Whether a member of another host goes by `nick`.
    pub(crate) fn is_remote(&self, nick: &str) -> bool {
        self.remote.contains_key(nick)
    }

    /// Other hosts' nicks.
    pub(crate) fn remote_nicks(&self) -> impl Iterator<Item = &String> {
        self.remote.keys()
    }

    /// Records what another host said about its members.
    pub(crate) fn heard(&mut self, origin: &Origin, event: &RoomEvent, now: Instant) {
        match event {
            RoomEvent::Said { nick, .. }
            | RoomEvent::Acted { nick, .. }
            | RoomEvent::Joined { nick } => self.saw(origin, nick, now),
            RoomEvent::Left { nick } => self.forget(origin, nick),
            RoomEvent::Renamed { old, new } => {
                self.forget(origin, old);
                self.saw(origin, new, now);
            }
            RoomEvent::Here { nicks } => {
                for nick in nicks {
                    self.saw(origin, nick, now);
                }
            }
            RoomEvent::Gone => self.remote.retain(|_, m| m.origin != *origin),
        }
    }

    fn saw(&mut self, origin: &Origin, nick: &str, now: Instant) {
        if let Some(m) = self.remote.get_mut(nick) {
            m.origin = origin.clone();
            m.seen = now;
        } else if self.remote.len() < self.max_remote {
            self.remote.insert(
                nick.to_owned(),
                RemoteMember {
                    origin: origin.clone(),
                    seen: now,
                },
            );
        }
    }

    fn forget(&mut self, origin: &Origin, nick: &str) {
        if self.remote.get(nick).is_some_and(|m| m.origin == *origin) {
            self.remote.remove(nick);
        }
    }

    /// Forgets the members not heard of for `ttl` (their host stopped heartbeating: it died or
    /// lost the bus) and returns their nicks, sorted.
    pub(crate) fn expire(&mut self, now: Instant, ttl: Duration) -> Vec<String> {
        let mut gone = Vec::new();
        self.remote.retain(|nick, m| {
            let keep = now.saturating_duration_since(m.seen) < ttl;
            if !keep {
                gone.push(nick.clone());
            }
            keep
        });
        gone.sort();
        gone
    }

    /// The heartbeat of this worker's `members`, in chunks of a bounded size.
    pub(crate) fn heartbeat<'a>(&mut self, members: impl Iterator<Item = &'a String>) {
        let nicks: Vec<String> = members.cloned().collect();
        if nicks.is_empty() {
            self.publish(RoomEvent::Here { nicks });
            return;
        }
        for chunk in nicks.chunks(HERE_CHUNK) {
            self.publish(RoomEvent::Here {
                nicks: chunk.to_vec(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(node: &str) -> Origin {
        Origin {
            node: node.into(),
            worker: 0,
        }
    }

    #[test]
    fn presence_follows_events_and_expires() {
        let t0 = Instant::now();
        let mut bus = RoomBus::new(o("me"), 3);
        bus.heard(&o("a"), &RoomEvent::Joined { nick: "x".into() }, t0);
        bus.heard(
            &o("a"),
            &RoomEvent::Here {
                nicks: vec!["y".into()],
            },
            t0,
        );
        bus.heard(
            &o("a"),
            &RoomEvent::Renamed {
                old: "x".into(),
                new: "z".into(),
            },
            t0,
        );
        let mut nicks: Vec<_> = bus.remote_nicks().cloned().collect();
        nicks.sort();
        assert_eq!(nicks, ["y", "z"]);
        // Another origin cannot make a's member leave.
        bus.heard(&o("b"), &RoomEvent::Left { nick: "y".into() }, t0);
        assert!(bus.is_remote("y"));
        // Bounded: a fourth is not remembered.
        bus.heard(&o("b"), &RoomEvent::Joined { nick: "p".into() }, t0);
        bus.heard(&o("b"), &RoomEvent::Joined { nick: "q".into() }, t0);
        assert!(!bus.is_remote("q"));
        let later = t0 + Duration::from_secs(5);
        bus.heard(
            &o("a"),
            &RoomEvent::Here {
                nicks: vec!["y".into()],
            },
            later,
        );
        assert_eq!(bus.expire(later, Duration::from_secs(3)), ["p", "z"]);
        bus.heard(&o("a"), &RoomEvent::Gone, later);
        assert_eq!(bus.remote_nicks().count(), 0);
    }

    #[test]
    fn claims_wait_for_the_bus_and_heartbeats_are_chunked() {
        let mut bus = RoomBus::new(o("me"), 10);
        bus.claim(1, "a");
        assert!(bus.take_claims().is_empty(), "down: nothing to claim with");
        bus.up = true;
        bus.claim(1, "a");
        bus.release("b");
        assert_eq!(
            bus.take_claims(),
            [
                ClaimOp::Claim {
                    member: 1,
                    nick: "a".into()
                },
                ClaimOp::Release { nick: "b".into() }
            ]
        );
        let many: Vec<String> = (0..250).map(|i| format!("n{i}")).collect();
        bus.heartbeat(many.iter());
        let out = bus.take_outbox();
        assert_eq!(out.len(), 3);
        let sizes: Vec<usize> = out
            .iter()
            .map(|e| match e {
                RoomEvent::Here { nicks } => nicks.len(),
                _ => 0,
            })
            .collect();
        assert_eq!(sizes, [100, 100, 50]);
    }
}
