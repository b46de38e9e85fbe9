//! The chat bus's Redis session, sans-IO (PROTOCOL.md, "Chat across hosts"): one RESP3
//! connection per worker that subscribes to the room's channel, publishes this worker's events
//! on it, and claims nicks with two small scripts. Bytes from Redis go in ([`RedisBus::on_input`]),
//! bytes for Redis come out (`out`), and what was heard is returned; the reactor owns the socket,
//! the clock and the timers (`reactor/bus.rs`).
//!
//! RESP3 (`HELLO 3`, Redis 6 or later) lets one connection both subscribe and run commands:
//! messages arrive as push frames between the replies, which come in the order the commands
//! went out.

use std::collections::VecDeque;
use std::time::Duration;

use crate::frame::resp::{self, Frame};
use crate::service::chat::MemberId;
use crate::service::chat::bus::ClaimOp;
use crate::service::chat::bus_message::{self, Origin, RoomEvent};

/// Takes the nick in `KEYS[1]` for node `ARGV[1]` for `ARGV[2]` seconds unless another node
/// holds it; 1 when this node holds it now, 0 when another does. Claims and refreshes alike.
const CLAIM_SCRIPT: &str = "local v = redis.call('GET', KEYS[1]) \
     if v == false or v == ARGV[1] then \
     redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) return 1 end return 0";

/// Lets the nick in `KEYS[1]` go if node `ARGV[1]` holds it (never another host's).
const RELEASE_SCRIPT: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
     return redis.call('DEL', KEYS[1]) end return 0";

/// The first wait before connecting again, doubled after each failure up to `RETRY_MAX`.
pub(crate) const RETRY_MIN: Duration = Duration::from_millis(100);
pub(crate) const RETRY_MAX: Duration = Duration::from_secs(5);

/// How the bus is set up (`[chat.bus]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusSettings {
    /// The Pub/Sub channel of the room; nick claims are keys `CHANNEL:nick:NICK`.
    pub channel: String,
    /// This host's name on the bus: unique per host, 1-12 of `A-Z a-z 0-9 _ -`.
    pub node: String,
    /// `HELLO 3 AUTH` with this user (Redis's `default` when only a password is given).
    pub username: Option<String>,
    /// Read from `password_file` at start-up, never written out.
    pub password: Option<String>,
    /// A member of another host not heard of for this long is gone, and a nick claim lasts
    /// this long unless refreshed (a third of it).
    pub presence_ttl: Duration,
    /// Publications kept while the bus is down, in bytes; past it they are dropped and counted.
    pub max_backlog: usize,
    /// Output waiting for Redis, in bytes, past which it is judged too slow: cut and rebuilt.
    pub max_pending: usize,
    /// Other hosts' members remembered at most.
    pub max_remote: usize,
    /// The connection must be up this long after it was started, or it is cut.
    pub connect_timeout: Duration,
}

impl BusSettings {
    pub const DEFAULT_CHANNEL: &'static str = "socklab:chat";

    /// Settings with their defaults for `node`.
    pub fn new(node: String) -> Self {
        BusSettings {
            channel: Self::DEFAULT_CHANNEL.to_owned(),
            node,
            username: None,
            password: None,
            presence_ttl: Duration::from_secs(15),
            max_backlog: 256 * 1024,
            max_pending: 4 * 1024 * 1024,
            max_remote: 100_000,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// The bus's counters, in `stats` and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BusCounters {
    /// Events Redis took (`PUBLISH` answered).
    pub published: u64,
    /// Events from other hosts delivered here.
    pub received: u64,
    /// Messages on the channel that were not socklab's format, or broke its rules: ignored.
    pub rejected: u64,
    /// Events never confirmed by Redis: dropped while down past the backlog, or in flight when
    /// the connection was lost (then they may have reached some hosts).
    pub dropped: u64,
    /// Connections to Redis made again after the first.
    pub reconnects: u64,
    /// Errors Redis answered to a command (the connection goes on).
    pub errors: u64,
    /// 1 while the bus is up.
    pub up: u64,
}

impl BusCounters {
    /// Adds another worker's counters.
    pub fn add(&mut self, o: &BusCounters) {
        self.published = self.published.saturating_add(o.published);
        self.received = self.received.saturating_add(o.received);
        self.rejected = self.rejected.saturating_add(o.rejected);
        self.dropped = self.dropped.saturating_add(o.dropped);
        self.reconnects = self.reconnects.saturating_add(o.reconnects);
        self.errors = self.errors.saturating_add(o.errors);
        self.up = self.up.saturating_add(o.up);
    }
}

/// Why the connection to Redis cannot go on: it is closed and made again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BusFault {
    #[error("{0}")]
    Protocol(#[from] resp::RespError),
    #[error("Redis refused HELLO 3 (Redis 6 or later, and the right password, are needed): {0}")]
    Hello(String),
    #[error("Redis refused SUBSCRIBE: {0}")]
    Subscribe(String),
    #[error("a reply that no command asked for: {0}")]
    Unexpected(String),
    #[error("a reply over {0} bytes")]
    TooLarge(usize),
}

/// Where the session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No connection (or one still being made).
    Down,
    /// `HELLO` and `SUBSCRIBE` are out; the subscription is not confirmed yet.
    Starting,
    /// Subscribed: events flow both ways.
    Up,
}

/// A reply the session waits for, in the order the commands went out.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    Hello,
    Subscribe,
    Publish,
    Claim { member: MemberId, nick: String },
    Release,
}

/// What the session heard from Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Heard {
    /// Subscribed: the bus is up.
    Up,
    /// An event another host (or this one) published.
    Event(Origin, RoomEvent),
    /// The answer to a nick claim: `won` when this node holds the nick.
    Claim {
        member: MemberId,
        nick: String,
        won: bool,
    },
}

/// One worker's Redis session.
#[derive(Debug)]
pub(crate) struct RedisBus {
    settings: BusSettings,
    /// This worker on the bus.
    origin: Origin,
    phase: Phase,
    expect: VecDeque<Expect>,
    /// Bytes for Redis; the reactor writes them and drains what went out.
    pub(crate) out: Vec<u8>,
    /// `PUBLISH` commands made while the bus was down, sent once it is up again.
    backlog: Vec<u8>,
    backlog_count: usize,
    /// The wait before the next connection attempt.
    backoff: Duration,
    /// Whether a connection was ever up (later ones are reconnects).
    was_up: bool,
    pub(crate) counters: BusCounters,
    /// The longest frame Redis may send (a message is a line; claims are small).
    max_frame: usize,
    /// Scratch for one payload.
    payload: Vec<u8>,
}

impl RedisBus {
    pub(crate) fn new(settings: BusSettings, origin: Origin, max_line: usize) -> Self {
        RedisBus {
            settings,
            origin,
            phase: Phase::Down,
            expect: VecDeque::new(),
            out: Vec::new(),
            backlog: Vec::new(),
            backlog_count: 0,
            backoff: RETRY_MIN,
            was_up: false,
            counters: BusCounters::default(),
            max_frame: max_line.saturating_add(64 * 1024),
            payload: Vec::new(),
        }
    }

    pub(crate) fn settings(&self) -> &BusSettings {
        &self.settings
    }

    pub(crate) fn is_up(&self) -> bool {
        self.phase == Phase::Up
    }

    /// The socket connected: the session starts (`HELLO 3`, then `SUBSCRIBE`).
    pub(crate) fn connected(&mut self) {
        self.out.clear();
        self.expect.clear();
        let mut hello: Vec<&[u8]> = vec![b"HELLO", b"3"];
        let user = self.settings.username.as_deref().unwrap_or("default");
        if let Some(password) = self.settings.password.as_deref() {
            hello.extend([b"AUTH".as_slice(), user.as_bytes(), password.as_bytes()]);
        }
        hello.extend([b"SETNAME".as_slice(), b"socklab-chat-bus"]);
        resp::encode_command(&mut self.out, &hello);
        self.expect.push_back(Expect::Hello);
        resp::encode_command(
            &mut self.out,
            &[b"SUBSCRIBE", self.settings.channel.as_bytes()],
        );
        self.expect.push_back(Expect::Subscribe);
        self.phase = Phase::Starting;
    }

    /// The connection is gone (or was never made): what was in flight is counted, and the
    /// wait before the next attempt returned (capped exponential backoff).
    pub(crate) fn lost(&mut self) -> Duration {
        let in_flight = self
            .expect
            .iter()
            .filter(|e| matches!(e, Expect::Publish))
            .count();
        self.counters.dropped = self.counters.dropped.saturating_add(in_flight as u64);
        self.expect.clear();
        self.out.clear();
        self.phase = Phase::Down;
        self.counters.up = 0;
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(RETRY_MAX);
        wait
    }

    /// Whether Redis has let so much output pile up that it is judged too slow.
    pub(crate) fn too_slow(&self) -> bool {
        self.out.len() > self.settings.max_pending
    }

    /// Publishes one event of this worker: at once while up, into the bounded backlog while
    /// down (dropped and counted past it).
    pub(crate) fn publish(&mut self, event: &RoomEvent) {
        self.payload.clear();
        event.encode(&self.origin, &mut self.payload);
        let args: [&[u8]; 3] = [b"PUBLISH", self.settings.channel.as_bytes(), &self.payload];
        if self.phase == Phase::Up {
            resp::encode_command(&mut self.out, &args);
            self.expect.push_back(Expect::Publish);
            return;
        }
        // Heartbeats are not kept: a fresh one goes out when the bus is back.
        if matches!(event, RoomEvent::Here { .. }) {
            return;
        }
        let before = self.backlog.len();
        resp::encode_command(&mut self.backlog, &args);
        if self.backlog.len() > self.settings.max_backlog {
            self.backlog.truncate(before);
            self.counters.dropped = self.counters.dropped.saturating_add(1);
        } else {
            self.backlog_count += 1;
        }
    }

    /// Claims or releases a nick (only while up; see `RoomBus::claim`).
    pub(crate) fn claim(&mut self, op: &ClaimOp) {
        if self.phase != Phase::Up {
            return;
        }
        let ttl = self.settings.presence_ttl.as_secs().max(1).to_string();
        let (script, nick, expect) = match op {
            ClaimOp::Claim { member, nick } => (
                CLAIM_SCRIPT,
                nick,
                Expect::Claim {
                    member: *member,
                    nick: nick.clone(),
                },
            ),
            ClaimOp::Release { nick } => (RELEASE_SCRIPT, nick, Expect::Release),
        };
        let key = format!("{}:nick:{nick}", self.settings.channel);
        resp::encode_command(
            &mut self.out,
            &[
                b"EVAL",
                script.as_bytes(),
                b"1",
                key.as_bytes(),
                self.settings.node.as_bytes(),
                ttl.as_bytes(),
            ],
        );
        self.expect.push_back(expect);
    }

    /// Takes what Redis sent: the frames whole in `input` are acted on and what was heard
    /// appended to `heard`; returns the bytes used (a partial frame stays for next time).
    pub(crate) fn on_input(
        &mut self,
        input: &[u8],
        heard: &mut Vec<Heard>,
    ) -> Result<usize, BusFault> {
        let mut used = 0usize;
        loop {
            let rest = input.get(used..).unwrap_or_default();
            let Some((frame, n)) = resp::decode(rest)? else {
                if rest.len() > self.max_frame {
                    return Err(BusFault::TooLarge(self.max_frame));
                }
                return Ok(used);
            };
            used = used.saturating_add(n);
            match frame {
                Frame::Push { data, .. } => self.on_push(data, heard)?,
                reply => self.on_reply(reply, heard)?,
            }
        }
    }

    fn on_push(&mut self, data: Vec<Frame>, heard: &mut Vec<Heard>) -> Result<(), BusFault> {
        let mut parts = data.into_iter();
        let kind = parts.next().and_then(blob);
        match kind.as_deref() {
            Some(b"message") => {
                let payload = parts.nth(1).and_then(blob).unwrap_or_default();
                match bus_message::decode(&payload, self.max_frame) {
                    // This host's own events: its workers had them already.
                    Ok((origin, _)) if origin.node == self.settings.node => {}
                    Ok((origin, event)) => {
                        self.counters.received = self.counters.received.saturating_add(1);
                        heard.push(Heard::Event(origin, event));
                    }
                    Err(why) => {
                        self.counters.rejected = self.counters.rejected.saturating_add(1);
                        tracing::debug!("chat bus: ignored a message on the channel: {why}");
                    }
                }
            }
            Some(b"subscribe") if self.expect.front() == Some(&Expect::Subscribe) => {
                self.expect.pop_front();
                self.up(heard);
            }
            // Other pushes (invalidations, a server's own notices) are not for the room.
            _ => {}
        }
        Ok(())
    }

    fn up(&mut self, heard: &mut Vec<Heard>) {
        self.phase = Phase::Up;
        self.counters.up = 1;
        if self.was_up {
            self.counters.reconnects = self.counters.reconnects.saturating_add(1);
        }
        self.was_up = true;
        self.backoff = RETRY_MIN;
        self.out.append(&mut self.backlog);
        for _ in 0..std::mem::take(&mut self.backlog_count) {
            self.expect.push_back(Expect::Publish);
        }
        heard.push(Heard::Up);
    }

    fn on_reply(&mut self, reply: Frame, heard: &mut Vec<Heard>) -> Result<(), BusFault> {
        let error = error_text(&reply);
        let Some(expect) = self.expect.pop_front() else {
            return Err(BusFault::Unexpected(describe(&reply)));
        };
        match (expect, error) {
            (Expect::Hello, Some(e)) => return Err(BusFault::Hello(e)),
            (Expect::Hello, None) => {}
            // With RESP3 a subscription is confirmed by a push; a reply here is its refusal.
            (Expect::Subscribe, e) => {
                return Err(BusFault::Subscribe(e.unwrap_or_else(|| describe(&reply))));
            }
            (Expect::Publish, None) => {
                self.counters.published = self.counters.published.saturating_add(1);
            }
            (Expect::Claim { member, nick }, None) => {
                let won = matches!(reply, Frame::Number { data: 1, .. });
                heard.push(Heard::Claim { member, nick, won });
            }
            (Expect::Release, None) => {}
            (what, Some(e)) => {
                self.counters.errors = self.counters.errors.saturating_add(1);
                if matches!(what, Expect::Publish) {
                    self.counters.dropped = self.counters.dropped.saturating_add(1);
                }
                tracing::warn!("chat bus: Redis answered an error to {what:?}: {e}");
            }
        }
        Ok(())
    }
}

/// The bytes of a string frame.
fn blob(f: Frame) -> Option<Vec<u8>> {
    match f {
        Frame::BlobString { data, .. } | Frame::SimpleString { data, .. } => Some(data),
        _ => None,
    }
}

fn error_text(f: &Frame) -> Option<String> {
    match f {
        Frame::SimpleError { data, .. } => Some(data.clone()),
        Frame::BlobError { data, .. } => Some(String::from_utf8_lossy(data).into_owned()),
        _ => None,
    }
}

/// A short description of a frame for a log line.
fn describe(f: &Frame) -> String {
    let s = format!("{f:?}");
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bus() -> RedisBus {
        let mut s = BusSettings::new("h1".into());
        s.max_backlog = 200;
        RedisBus::new(
            s,
            Origin {
                node: "h1".into(),
                worker: 0,
            },
            4096,
        )
    }

    fn feed(bus: &mut RedisBus, bytes: &[u8]) -> Result<Vec<Heard>, BusFault> {
        let mut heard = Vec::new();
        let used = bus.on_input(bytes, &mut heard)?;
        assert_eq!(used, bytes.len(), "every frame whole");
        Ok(heard)
    }

    const HELLO_OK: &[u8] = b"%1\r\n+server\r\n+redis\r\n";
    const SUBSCRIBED: &[u8] = b">3\r\n$9\r\nsubscribe\r\n$12\r\nsocklab:chat\r\n:1\r\n";

    fn push(payload: &str) -> Vec<u8> {
        format!(
            ">3\r\n$7\r\nmessage\r\n$12\r\nsocklab:chat\r\n${}\r\n{payload}\r\n",
            payload.len()
        )
        .into_bytes()
    }

    fn up(bus: &mut RedisBus) {
        bus.connected();
        assert!(bus.out.starts_with(b"*4\r\n$5\r\nHELLO\r\n$1\r\n3\r\n"));
        bus.out.clear();
        assert_eq!(feed(bus, HELLO_OK).unwrap(), []);
        assert_eq!(feed(bus, SUBSCRIBED).unwrap(), [Heard::Up]);
        assert!(bus.is_up());
    }

    #[test]
    fn events_flow_both_ways_and_own_ones_are_skipped() {
        let mut b = bus();
        up(&mut b);
        b.publish(&RoomEvent::Joined { nick: "a".into() });
        assert!(
            String::from_utf8_lossy(&b.out).contains("socklab-chat/1 h1/0 join a"),
            "{:?}",
            String::from_utf8_lossy(&b.out)
        );
        assert_eq!(feed(&mut b, b":2\r\n").unwrap(), []);
        assert_eq!(b.counters.published, 1);
        let heard = feed(&mut b, &push("socklab-chat/1 h2/0 say bob hi there")).unwrap();
        assert_eq!(
            heard,
            [Heard::Event(
                Origin {
                    node: "h2".into(),
                    worker: 0
                },
                RoomEvent::Said {
                    nick: "bob".into(),
                    text: "hi there".into()
                }
            )]
        );
        assert_eq!(
            feed(&mut b, &push("socklab-chat/1 h1/1 join z")).unwrap(),
            []
        );
        assert_eq!(feed(&mut b, &push("not ours")).unwrap(), []);
        assert_eq!(
            feed(&mut b, &push("socklab-chat/1 h2/0 join b@d")).unwrap(),
            []
        );
        assert_eq!(b.counters.rejected, 2);
        assert_eq!(b.counters.received, 1);
    }

    #[test]
    fn claims_are_answered_in_order() {
        let mut b = bus();
        up(&mut b);
        b.claim(&ClaimOp::Claim {
            member: 7,
            nick: "alice".into(),
        });
        b.claim(&ClaimOp::Release { nick: "x".into() });
        b.claim(&ClaimOp::Claim {
            member: 8,
            nick: "bob".into(),
        });
        let heard = feed(&mut b, b":1\r\n:0\r\n:0\r\n").unwrap();
        assert_eq!(
            heard,
            [
                Heard::Claim {
                    member: 7,
                    nick: "alice".into(),
                    won: true
                },
                Heard::Claim {
                    member: 8,
                    nick: "bob".into(),
                    won: false
                }
            ]
        );
    }

    #[test]
    fn down_keeps_a_bounded_backlog_and_backs_off() {
        let mut b = bus();
        assert_eq!(b.lost(), RETRY_MIN);
        for i in 0..10 {
            b.publish(&RoomEvent::Said {
                nick: "a".into(),
                text: format!("line {i}"),
            });
        }
        assert!(b.counters.dropped > 0, "past 200 bytes they are dropped");
        let kept = 10 - b.counters.dropped;
        up(&mut b);
        let sent = String::from_utf8_lossy(&b.out).matches("PUBLISH").count() as u64;
        assert_eq!(sent, kept);
        // In flight when lost: counted, and the waits grow to the cap.
        let before = b.counters.dropped;
        b.lost();
        assert_eq!(b.counters.dropped, before + kept);
        let mut wait = Duration::ZERO;
        for _ in 0..20 {
            wait = b.lost();
        }
        assert_eq!(wait, RETRY_MAX);
        up(&mut b);
        assert_eq!(b.counters.reconnects, 1);
    }

    #[test]
    fn garbage_and_refusals_are_faults() {
        let mut b = bus();
        b.connected();
        assert!(matches!(
            feed(&mut b, b"-WRONGPASS invalid password\r\n"),
            Err(BusFault::Hello(_))
        ));
        let mut b = bus();
        up(&mut b);
        assert!(matches!(
            feed(&mut b, b"?what\r\n"),
            Err(BusFault::Protocol(_))
        ));
        let mut b = bus();
        up(&mut b);
        assert!(matches!(
            feed(&mut b, b"+OK\r\n"),
            Err(BusFault::Unexpected(_))
        ));
        let mut b = bus();
        up(&mut b);
        let mut heard = Vec::new();
        let huge = format!("${}\r\n{}", 1 << 30, "x".repeat(80 * 1024));
        assert!(matches!(
            b.on_input(huge.as_bytes(), &mut heard),
            Err(BusFault::TooLarge(_))
        ));
    }
}
