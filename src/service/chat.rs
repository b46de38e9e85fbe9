//! `chat` and `udp-chat` (PROTOCOL.md, "Line service" and "Datagram chat"), sans-IO.
//!
//! A [`ChatRoom`] holds the members' nicks. A [`Chat`] session decodes its member's lines and
//! writes what its member should read to `out` and what every other member should read to
//! `others`: the reactor copies those bytes to the others, so a message is formatted once
//! however many members read it.
//!
//! Decided where PROTOCOL.md is silent: a successful `/nick` is announced to the renamed
//! member too (so a client learns its new name took), and `/who` lists nicks sorted.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::Step;
use crate::frame::{Decoded, Line, LinesConfig, LinesDecoder};

pub(crate) mod bus;
pub(crate) mod bus_message;

use bus::RoomBus;
use bus_message::{Origin, RoomEvent};

/// Longest nick, in characters (all ASCII).
pub const MAX_NICK: usize = 32;

/// A member's id: unique among the open connections of one reactor.
pub type MemberId = u64;

/// Every nick in use, sorted for `/who`, and the number of the last default nick. With
/// `--workers N` one table serves every worker's members, so nicks stay unique and `/who`
/// lists everyone.
#[derive(Debug, Default)]
struct Nicks {
    taken: BTreeSet<String>,
    next_guest: u64,
}

/// A chat room as one reactor sees it: its own members, and the nick table it shares with the
/// other workers' rooms.
#[derive(Debug, Default)]
pub struct ChatRoom {
    /// Each member of this reactor, by id, with its nick.
    members: HashMap<MemberId, String>,
    /// Shared by every worker; held only for a lookup or an update, never across I/O.
    nicks: Arc<Mutex<Nicks>>,
    /// The room spans hosts over Redis (`[chat.bus]`); `None`: this host only.
    pub(crate) bus: Option<RoomBus>,
}

impl ChatRoom {
    /// Another worker's view of the same room: no members of its own yet, the same nicks.
    pub fn share(&self) -> ChatRoom {
        ChatRoom {
            members: HashMap::new(),
            nicks: Arc::clone(&self.nicks),
            bus: None,
        }
    }

    /// Like [`share`](Self::share), for worker `worker`: on the bus too when this room is.
    pub(crate) fn share_for(&self, worker: u16) -> ChatRoom {
        ChatRoom {
            bus: self.bus.as_ref().map(|b| b.for_worker(worker)),
            ..self.share()
        }
    }

    /// A room on the bus as `origin`, remembering at most `max_remote` members of other hosts.
    pub(crate) fn with_bus(origin: Origin, max_remote: usize) -> ChatRoom {
        ChatRoom {
            bus: Some(RoomBus::new(origin, max_remote)),
            ..ChatRoom::default()
        }
    }

    /// Members of this reactor in the room.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Every member's id.
    pub fn member_ids(&self) -> impl Iterator<Item = MemberId> + '_ {
        self.members.keys().copied()
    }

    fn nicks(&self) -> MutexGuard<'_, Nicks> {
        lock(&self.nicks)
    }

    /// Renames member `id` from `old` to `new` (already taken in the table for it): the member
    /// and the others are told, and the bus.
    fn commit_rename(
        &mut self,
        id: MemberId,
        old: &str,
        new: &str,
        out: &mut Vec<u8>,
        others: &mut Vec<u8>,
    ) {
        self.nicks().taken.remove(old);
        self.members.insert(id, new.to_owned());
        line(others, format_args!("* {old} is now {new}"));
        line(out, format_args!("* {old} is now {new}"));
        if let Some(bus) = self.bus.as_mut() {
            bus.publish(RoomEvent::Renamed {
                old: old.to_owned(),
                new: new.to_owned(),
            });
            bus.release(old);
            bus.claim(id, new);
        }
    }

    /// An event another host published: recorded for `/who`, and the line this worker's
    /// members read appended to `lines`. A host's own events are not taken back (its workers
    /// had them already).
    pub(crate) fn apply_remote(
        &mut self,
        origin: &Origin,
        event: &RoomEvent,
        now: Instant,
        lines: &mut Vec<u8>,
    ) {
        let Some(bus) = self.bus.as_mut() else { return };
        if origin.node == bus.origin.node {
            return;
        }
        bus.heard(origin, event, now);
        event.format_line(lines);
    }

    /// Redis answered the claim of `nick` for member `id`: `won` when this host holds it now.
    /// A rename waiting for it completes or is refused; a member that lost the nick it had
    /// (another host took it while the bus was down) gets a fresh default nick, and is told.
    pub(crate) fn claim_answered(
        &mut self,
        id: MemberId,
        nick: &str,
        won: bool,
        out: &mut Vec<u8>,
        others: &mut Vec<u8>,
    ) {
        let Some(bus) = self.bus.as_mut() else { return };
        if bus.pending.get(&id).is_some_and(|p| p == nick) {
            bus.pending.remove(&id);
            let old = self.members.get(&id).cloned();
            match (old, won) {
                (Some(old), true) => self.commit_rename(id, &old, nick, out, others),
                (Some(_), false) => {
                    self.nicks().taken.remove(nick);
                    line(out, format_args!("* error: nick {nick} is taken"));
                }
                (None, _) => {
                    self.nicks().taken.remove(nick);
                }
            }
            return;
        }
        if self.members.get(&id).is_some_and(|n| n == nick) {
            if !won {
                let guest = self.fresh_guest();
                line(
                    out,
                    format_args!("* nick {nick} is held on another host; you are now {guest}"),
                );
                let mut mine = Vec::new();
                self.commit_rename(id, nick, &guest, &mut mine, others);
            }
            return;
        }
        // Claimed for a member that left or moved on since: let it go again.
        if won && let Some(bus) = self.bus.as_mut() {
            bus.release(nick);
        }
    }

    /// The bus went up (every nick is claimed again, a heartbeat goes out) or down (renames
    /// waiting for it are called off, each member told in `told`); `notice` gets the line every
    /// member of this worker reads.
    pub(crate) fn bus_changed(
        &mut self,
        up: bool,
        notice: &mut Vec<u8>,
        told: &mut Vec<(MemberId, Vec<u8>)>,
    ) {
        let Some(bus) = self.bus.as_mut() else { return };
        if bus.up == up {
            return;
        }
        bus.up = up;
        if up {
            line(notice, format_args!("* bus restored"));
            let mine: Vec<(MemberId, String)> = self
                .members
                .iter()
                .map(|(id, n)| (*id, n.clone()))
                .collect();
            let pending: Vec<(MemberId, String)> =
                bus.pending.iter().map(|(id, n)| (*id, n.clone())).collect();
            for (id, nick) in mine.iter().chain(&pending) {
                bus.claim(*id, nick);
            }
            bus.heartbeat(mine.iter().map(|(_, n)| n));
        } else {
            line(notice, format_args!("* bus lost: local members only"));
            let called_off: Vec<(MemberId, String)> = bus.pending.drain().collect();
            for (id, nick) in called_off {
                self.nicks().taken.remove(&nick);
                let mut out = Vec::new();
                line(
                    &mut out,
                    format_args!("* error: nick {nick}: the bus was lost before it answered"),
                );
                told.push((id, out));
            }
        }
    }

    /// The bus's periodic work: members of other hosts not heard of for `ttl` are forgotten
    /// (their lines `* NICK left` appended to `lines`), and, while the bus is up, this worker's
    /// heartbeat and the refresh of its nicks' claims are queued.
    pub(crate) fn bus_tick(&mut self, now: Instant, ttl: Duration, lines: &mut Vec<u8>) {
        let Some(bus) = self.bus.as_mut() else { return };
        for nick in bus.expire(now, ttl) {
            line(lines, format_args!("* {nick} left"));
        }
        if bus.up {
            bus.heartbeat(self.members.values());
            for (id, nick) in &self.members {
                bus.claim(*id, nick);
            }
        }
    }

    /// A default nick, taken at once: `guest-N`, or `guest-NODE-N` on the bus, where the node
    /// name keeps two hosts from handing out the same one.
    fn fresh_guest(&self) -> String {
        let node = self.bus.as_ref().map(|b| b.origin.node.as_str());
        let mut nicks = self.nicks();
        loop {
            nicks.next_guest = nicks.next_guest.wrapping_add(1);
            let nick = match node {
                Some(node) => format!("guest-{node}-{}", nicks.next_guest),
                None => format!("guest-{}", nicks.next_guest),
            };
            let remote = self.bus.as_ref().is_some_and(|b| b.is_remote(&nick));
            if !remote && !nicks.taken.contains(&nick) {
                nicks.taken.insert(nick.clone());
                return nick;
            }
        }
    }
}

fn lock(nicks: &Mutex<Nicks>) -> MutexGuard<'_, Nicks> {
    // A worker that panicked while holding the lock left a consistent table: every update is a
    // single insert or remove.
    nicks.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether `name` is a valid nick: 1–32 of `A–Z a–z 0–9 _ -`.
pub fn valid_nick(name: &str) -> bool {
    (1..=MAX_NICK).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// One member's session.
#[derive(Debug)]
pub struct Chat {
    /// The member's id, set when it joins.
    id: Option<MemberId>,
    /// Splits the input into lines.
    decoder: LinesDecoder,
    /// `/quit` was read: nothing more is.
    quit: bool,
}

impl Default for Chat {
    fn default() -> Self {
        Chat {
            id: None,
            decoder: LinesDecoder::new(LinesConfig::default()),
            quit: false,
        }
    }
}

fn line(out: &mut Vec<u8>, args: std::fmt::Arguments<'_>) {
    let mut s = String::new();
    let _ = s.write_fmt(args);
    out.extend_from_slice(s.as_bytes());
    out.push(b'\n');
}

impl Chat {
    /// Joins the room as `id` with a default nick: the member is welcomed, the others told.
    pub fn join(
        &mut self,
        id: MemberId,
        room: &mut ChatRoom,
        out: &mut Vec<u8>,
        others: &mut Vec<u8>,
    ) {
        if self.id.is_some() {
            return;
        }
        let nick = room.fresh_guest();
        line(out, format_args!("* welcome {nick}"));
        if room.bus.as_ref().is_some_and(|b| !b.up) {
            line(out, format_args!("* bus down: local members only"));
        }
        line(others, format_args!("* {nick} joined"));
        if let Some(bus) = room.bus.as_mut() {
            bus.publish(RoomEvent::Joined { nick: nick.clone() });
            bus.claim(id, &nick);
        }
        room.members.insert(id, nick);
        self.id = Some(id);
    }

    /// Leaves the room: the others are told.
    pub fn leave(&mut self, room: &mut ChatRoom, others: &mut Vec<u8>) {
        let Some(id) = self.id.take() else { return };
        if let Some(nick) = room.members.remove(&id) {
            room.nicks().taken.remove(&nick);
            line(others, format_args!("* {nick} left"));
            if let Some(bus) = room.bus.as_mut() {
                bus.publish(RoomEvent::Left { nick: nick.clone() });
                bus.release(&nick);
                if let Some(asked) = bus.pending.remove(&id) {
                    lock(&room.nicks).taken.remove(&asked);
                }
            }
        }
    }

    /// Whether the session still reads input.
    pub fn accepts_input(&self) -> bool {
        !self.quit
    }

    /// Whether the member is part-way through a line whose bytes are consumed as they come (an
    /// over-long one being skipped): the rest of a line is otherwise held unconsumed.
    pub fn mid_line(&self) -> bool {
        self.decoder.skipping()
    }

    /// The member is about to be closed after `idle` without traffic: it is told why.
    pub fn idle_closing(&self, idle: Duration, out: &mut Vec<u8>) {
        line(
            out,
            format_args!("* idle for {} s: closing", idle.as_secs()),
        );
    }

    /// The server is shutting down: the member's last line.
    pub fn shutting_down(&self, out: &mut Vec<u8>) {
        line(out, format_args!("* server shutting down"));
    }

    /// Decodes lines from `input` and acts on each.
    pub fn on_input(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        room: &mut ChatRoom,
        others: &mut Vec<u8>,
    ) -> Step {
        let mut pos = 0usize;
        while !self.quit {
            let rest = input.get(pos..).unwrap_or_default();
            match self.decoder.decode(rest) {
                Decoded::Incomplete => break,
                Decoded::Skipped { consumed } => pos = pos.saturating_add(consumed),
                Decoded::Item { item, consumed } => {
                    pos = pos.saturating_add(consumed);
                    match item {
                        Line::TooLong { limit, .. } => line(
                            out,
                            format_args!("* error: line too long (at most {limit} bytes); dropped"),
                        ),
                        Line::Text(text) => self.on_line(text, out, room, others),
                    }
                }
            }
        }
        Step {
            consumed: pos,
            close: self.quit,
        }
    }

    fn on_line(
        &mut self,
        text: &[u8],
        out: &mut Vec<u8>,
        room: &mut ChatRoom,
        others: &mut Vec<u8>,
    ) {
        if text.is_empty() {
            return;
        }
        let Ok(text) = std::str::from_utf8(text) else {
            line(out, format_args!("* error: line is not UTF-8; dropped"));
            return;
        };
        let Some(id) = self.id else { return };
        let nick = room.members.get(&id).cloned().unwrap_or_default();
        let Some(command) = text.strip_prefix('/') else {
            line(others, format_args!("{nick} {text}"));
            if let Some(bus) = room.bus.as_mut() {
                bus.publish(RoomEvent::Said {
                    nick,
                    text: text.to_owned(),
                });
            }
            return;
        };
        let (name, arg) = match command.split_once(' ') {
            Some((name, arg)) => (name, Some(arg)),
            None => (command, None),
        };
        match (name, arg) {
            ("nick", Some(new)) => {
                if !valid_nick(new) {
                    line(
                        out,
                        format_args!(
                            "* error: a nick is 1-{MAX_NICK} characters from A-Z a-z 0-9 _ -"
                        ),
                    );
                } else if new == nick {
                    line(out, format_args!("* you are already {nick}"));
                } else if room
                    .bus
                    .as_ref()
                    .is_some_and(|b| b.pending.contains_key(&id))
                {
                    line(out, format_args!("* error: a nick change is under way"));
                } else if room.bus.as_ref().is_some_and(|b| b.is_remote(new))
                    || !room.nicks().taken.insert(new.to_owned())
                {
                    line(out, format_args!("* error: nick {new} is taken"));
                } else if let Some(bus) = room.bus.as_mut().filter(|b| b.up) {
                    // Another host may be taking it at this moment: Redis decides.
                    bus.pending.insert(id, new.to_owned());
                    bus.claim(id, new);
                } else {
                    room.commit_rename(id, &nick, new, out, others);
                }
            }
            ("nick", None) => line(out, format_args!("* error: usage: /nick NAME")),
            ("who", None) => {
                let mut all: BTreeSet<String> = room.nicks().taken.clone();
                if let Some(bus) = room.bus.as_ref() {
                    // A rename under way holds its nick locally but is nobody's yet.
                    for asked in bus.pending.values() {
                        all.remove(asked);
                    }
                    all.extend(bus.remote_nicks().cloned());
                }
                let all: Vec<String> = all.into_iter().collect();
                line(out, format_args!("* members: {}", all.join(", ")));
            }
            ("me", Some(action)) if !action.is_empty() => {
                line(others, format_args!("* {nick} {action}"));
                if let Some(bus) = room.bus.as_mut() {
                    bus.publish(RoomEvent::Acted {
                        nick,
                        action: action.to_owned(),
                    });
                }
            }
            ("me", _) => line(out, format_args!("* error: usage: /me ACTION")),
            ("quit", None) => self.quit = true,
            _ => {
                let shown: String = name.chars().take(40).collect();
                line(out, format_args!("* error: unknown command /{shown}"));
            }
        }
    }
}

/// `udp-chat`: relays each datagram to every other sender heard from recently.
#[derive(Debug)]
pub struct UdpChat {
    /// When each member was last heard from.
    members: HashMap<SocketAddr, Instant>,
    /// How long a silent member is remembered.
    expiry: Duration,
    /// Members at most; a new sender past it is not remembered (its datagrams still go out).
    max_members: usize,
}

impl UdpChat {
    /// A room that forgets members silent for `expiry`.
    pub fn new(expiry: Duration, max_members: usize) -> Self {
        UdpChat {
            members: HashMap::new(),
            expiry,
            max_members,
        }
    }

    /// Takes one datagram from `from`: writes the relayed text to `reply` and the members to
    /// send it to into `targets`. Returns `false` for a datagram that is ignored: one that is
    /// not UTF-8, or empty once its line end is stripped. It is not relayed, and its sender is
    /// not remembered for it (a spoofed source must not be made a member by garbage).
    #[must_use]
    pub fn on_datagram(
        &mut self,
        from: SocketAddr,
        payload: &[u8],
        now: Instant,
        reply: &mut Vec<u8>,
        targets: &mut Vec<SocketAddr>,
    ) -> bool {
        reply.clear();
        targets.clear();
        let Ok(text) = std::str::from_utf8(payload) else {
            return false;
        };
        let text = text
            .strip_suffix('\n')
            .map(|t| t.strip_suffix('\r').unwrap_or(t))
            .unwrap_or(text);
        if text.is_empty() {
            return false;
        }
        let expiry = self.expiry;
        self.members
            .retain(|_, seen| now.saturating_duration_since(*seen) < expiry);
        if self.members.len() < self.max_members || self.members.contains_key(&from) {
            self.members.insert(from, now);
        }
        let _ = write!(StringSink(reply), "[{from}] {text}");
        targets.extend(self.members.keys().filter(|a| **a != from).copied());
        true
    }
}

/// Lets `write!` append to a byte vector.
struct StringSink<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for StringSink<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Member {
        chat: Chat,
        out: Vec<u8>,
    }

    fn join(room: &mut ChatRoom, id: MemberId, others: &mut Vec<u8>) -> Member {
        let mut m = Member {
            chat: Chat::default(),
            out: Vec::new(),
        };
        m.chat.join(id, room, &mut m.out, others);
        m
    }

    fn say(m: &mut Member, room: &mut ChatRoom, input: &str) -> (String, String, Step) {
        m.out.clear();
        let mut others = Vec::new();
        let step = m
            .chat
            .on_input(input.as_bytes(), &mut m.out, room, &mut others);
        (
            String::from_utf8(m.out.clone()).unwrap(),
            String::from_utf8(others).unwrap(),
            step,
        )
    }

    #[test]
    fn join_message_nick_who_me_quit_leave() {
        let mut room = ChatRoom::default();
        let mut others = Vec::new();
        let mut a = join(&mut room, 1, &mut others);
        assert_eq!(
            String::from_utf8(a.out.clone()).unwrap(),
            "* welcome guest-1\n"
        );
        assert_eq!(
            String::from_utf8(others.clone()).unwrap(),
            "* guest-1 joined\n"
        );
        let mut b = join(&mut room, 2, &mut Vec::new());

        let (mine, theirs, _) = say(&mut a, &mut room, "hello there\r\n\n");
        assert_eq!(mine, "");
        assert_eq!(theirs, "guest-1 hello there\n");

        let (mine, theirs, _) = say(&mut a, &mut room, "/nick alice\n");
        assert_eq!(mine, "* guest-1 is now alice\n");
        assert_eq!(theirs, "* guest-1 is now alice\n");
        let (mine, _, _) = say(&mut b, &mut room, "/nick alice\n");
        assert_eq!(mine, "* error: nick alice is taken\n");
        for bad in [
            "/nick a b",
            "/nick ",
            "/nick é",
            &format!("/nick {}", "x".repeat(33)),
        ] {
            let (mine, theirs, _) = say(&mut b, &mut room, &format!("{bad}\n"));
            assert!(mine.starts_with("* error:"), "{bad}: {mine}");
            assert_eq!(theirs, "");
        }
        let (mine, _, _) = say(&mut b, &mut room, "/who\n");
        assert_eq!(mine, "* members: alice, guest-2\n");
        let (_, theirs, _) = say(&mut b, &mut room, "/me waves\n");
        assert_eq!(theirs, "* guest-2 waves\n");
        let (mine, _, _) = say(&mut b, &mut room, "/me\n");
        assert!(mine.starts_with("* error:"));
        let (mine, _, _) = say(&mut b, &mut room, "/dance\n");
        assert_eq!(mine, "* error: unknown command /dance\n");

        let (_, _, step) = say(&mut b, &mut room, "/quit\nignored\n");
        assert!(step.close);
        assert_eq!(step.consumed, 6, "nothing after /quit is read");
        let mut others = Vec::new();
        b.chat.leave(&mut room, &mut others);
        assert_eq!(String::from_utf8(others).unwrap(), "* guest-2 left\n");
        assert_eq!(room.len(), 1);
        // The nick is free again.
        let (mine, _, _) = say(&mut a, &mut room, "/nick guest-2\n");
        assert_eq!(mine, "* alice is now guest-2\n");
    }

    #[test]
    fn bad_lines_are_errors_and_the_member_stays() {
        let mut room = ChatRoom::default();
        let mut a = join(&mut room, 1, &mut Vec::new());
        let mut input = vec![b'x'; 5000];
        input.extend_from_slice(b"\n\xff\xfe\nok\n");
        a.out.clear();
        let mut others = Vec::new();
        let step = a.chat.on_input(&input, &mut a.out, &mut room, &mut others);
        assert_eq!(step.consumed, input.len());
        let mine = String::from_utf8(a.out.clone()).unwrap();
        assert!(mine.starts_with("* error: line too long"), "{mine}");
        assert!(mine.contains("* error: line is not UTF-8"), "{mine}");
        assert_eq!(String::from_utf8(others).unwrap(), "guest-1 ok\n");
    }

    #[test]
    fn guest_nicks_skip_taken_names() {
        let mut room = ChatRoom::default();
        let mut a = join(&mut room, 1, &mut Vec::new());
        say(&mut a, &mut room, "/nick guest-2\n");
        let b = join(&mut room, 2, &mut Vec::new());
        assert_eq!(String::from_utf8(b.out).unwrap(), "* welcome guest-3\n");
    }

    #[test]
    fn udp_chat_relays_to_the_others_and_forgets_the_silent() {
        let t0 = Instant::now();
        let mut room = UdpChat::new(Duration::from_secs(10), 100);
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2000".parse().unwrap();
        let c: SocketAddr = "127.0.0.1:3000".parse().unwrap();
        let (mut reply, mut targets) = (Vec::new(), Vec::new());
        assert!(room.on_datagram(a, b"hi", t0, &mut reply, &mut targets));
        assert!(targets.is_empty());
        assert!(room.on_datagram(b, b"yo\n", t0, &mut reply, &mut targets));
        assert_eq!(reply, b"[127.0.0.1:2000] yo");
        assert_eq!(targets, vec![a]);
        let _ = room.on_datagram(
            c,
            b"hey",
            t0 + Duration::from_secs(5),
            &mut reply,
            &mut targets,
        );
        targets.sort();
        assert_eq!(targets, vec![a, b]);
        // a and b have been silent for 11 s: only c is left to hear d.
        let d: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let _ = room.on_datagram(
            d,
            b"x",
            t0 + Duration::from_secs(11),
            &mut reply,
            &mut targets,
        );
        assert_eq!(targets, vec![c]);
        let t11 = t0 + Duration::from_secs(11);
        for ignored in [&b"\xff"[..], b"", b"\n", b"\r\n", b"ok\xc3"] {
            assert!(!room.on_datagram(d, ignored, t11, &mut reply, &mut targets));
            assert!(
                targets.is_empty() && reply.is_empty(),
                "{ignored:?}: dropped"
            );
        }
        // An ignored datagram does not make its sender a member.
        let e: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert!(!room.on_datagram(e, b"", t11, &mut reply, &mut targets));
        assert!(room.on_datagram(d, b"y", t11, &mut reply, &mut targets));
        assert_eq!(targets, vec![c]);
    }

    #[test]
    fn shared_rooms_keep_nicks_unique_and_list_everyone() {
        let mut here = ChatRoom::default();
        let mut there = here.share();
        let (mut a, mut b) = (Chat::default(), Chat::default());
        let (mut out, mut others) = (Vec::new(), Vec::new());
        a.join(1, &mut here, &mut out, &mut others);
        b.join(1, &mut there, &mut out, &mut others);
        assert_eq!(here.len(), 1, "each room holds its own members");
        assert_eq!(there.len(), 1);
        out.clear();
        a.on_input(b"/nick alice\n", &mut out, &mut here, &mut others);
        out.clear();
        b.on_input(b"/nick alice\n/who\n", &mut out, &mut there, &mut others);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "* error: nick alice is taken\n* members: alice, guest-2\n"
        );
        let mut gone = Vec::new();
        a.leave(&mut here, &mut gone);
        out = Vec::new();
        b.on_input(b"/nick alice\n", &mut out, &mut there, &mut others);
        assert_eq!(String::from_utf8(out).unwrap(), "* guest-2 is now alice\n");
    }
}
