//! The chat bus's socket: one connection to Redis per worker, on this loop like any other
//! socket (PROTOCOL.md, "Chat across hosts"). It connects without blocking, feeds what Redis
//! sends to the session (`service/redis_bus.rs`) and what the session heard to the room, sends
//! the room's events once per turn, and when anything goes wrong (refused, lost, garbage, too
//! slow, no answer in time) closes the socket, tells the members, and tries again after a
//! capped exponential backoff. The room never waits for it.

use std::io::{self, Read, Write};

use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Token};

use super::timer::TimerKind;
use super::token::BUS;
use super::{Entry, Reactor};
use crate::config::bus::{BusAddr, ChatBus};
use crate::kind::ServiceKind;
use crate::service::chat::ChatRoom;
use crate::service::chat::MemberId;
use crate::service::chat::bus_message::Origin;
use crate::service::redis_bus::{BusFault, Heard, RedisBus};

/// Bytes read from Redis per turn before the other sockets get theirs.
const READ_BUDGET: usize = 256 * 1024;

/// The socket to Redis.
#[derive(Debug)]
enum BusSocket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl BusSocket {
    fn connect(addr: &BusAddr) -> io::Result<BusSocket> {
        Ok(match addr {
            BusAddr::Tcp(a) => {
                let s = TcpStream::connect(*a)?;
                // Events are small and each is a line someone waits for.
                let _ = s.set_nodelay(true);
                BusSocket::Tcp(s)
            }
            BusAddr::Unix(p) => BusSocket::Unix(UnixStream::connect(p)?),
        })
    }

    /// Whether a connection begun without blocking is made: `Ok(false)` while still under way.
    fn connected(&self) -> io::Result<bool> {
        let (err, peer) = match self {
            BusSocket::Tcp(s) => (s.take_error()?, s.peer_addr().map(|_| ())),
            BusSocket::Unix(s) => (s.take_error()?, s.peer_addr().map(|_| ())),
        };
        if let Some(e) = err {
            return Err(e);
        }
        match peer {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            BusSocket::Tcp(s) => s,
            BusSocket::Unix(s) => s,
        }
    }
}

impl Read for BusSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            BusSocket::Tcp(s) => s.read(buf),
            BusSocket::Unix(s) => s.read(buf),
        }
    }
}

impl Write for BusSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            BusSocket::Tcp(s) => s.write(buf),
            BusSocket::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One worker's link to Redis.
#[derive(Debug)]
pub(super) struct BusLink {
    session: RedisBus,
    addr: BusAddr,
    socket: Option<BusSocket>,
    /// The connection is being made (not yet writable once).
    connecting: bool,
    /// What Redis sent that is not a whole frame yet.
    input: Vec<u8>,
    /// Numbers the connection attempts, so that a deadline of an old one is ignored.
    attempt: u64,
    /// Whether the read budget ran out with bytes left (the link is on the ready list).
    queued: bool,
    /// Why the last connection ended, logged once per cause rather than per retry.
    last_fault: Option<String>,
}

/// Why a bus connection is closed.
#[derive(Debug, thiserror::Error)]
enum Cut {
    #[error("cannot connect to Redis at {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("the connection to Redis was lost: {0}")]
    Io(io::Error),
    #[error("Redis closed the connection")]
    Closed,
    #[error(transparent)]
    Fault(#[from] BusFault),
    #[error("Redis does not read what the bus sends (over {0} bytes wait): too slow")]
    TooSlow(usize),
    #[error("Redis did not answer within {0:?}")]
    Timeout(std::time::Duration),
}

impl Reactor {
    /// Puts the chat room on the bus when one is configured and chat is served (other workers
    /// get their part of it in `workers::link`).
    pub(super) fn room_on_bus(&mut self) {
        let Some(bus) = &self.config.chat_bus else {
            return;
        };
        if !self
            .config
            .listeners
            .iter()
            .any(|l| l.service == ServiceKind::Chat)
        {
            return;
        }
        let origin = Origin {
            node: bus.settings.node.clone(),
            worker: 0,
        };
        self.svc.room = ChatRoom::with_bus(origin, bus.settings.max_remote);
    }

    /// Sets up the bus of this worker when the room spans hosts, and starts connecting.
    pub(super) fn start_bus(&mut self) {
        let Some(origin) = self.svc.room.bus.as_ref().map(|b| b.origin.clone()) else {
            return;
        };
        let Some(bus) = self.config.chat_bus.clone() else {
            return;
        };
        self.bus = Some(new_link(bus, origin, self.config.limits.max_input));
        self.connect_bus();
        let every = self.bus_tick_every();
        self.core
            .timers
            .push(self.core.now + every, TimerKind::BusTick);
    }

    fn bus_tick_every(&self) -> std::time::Duration {
        self.config
            .chat_bus
            .as_ref()
            .map_or(std::time::Duration::from_secs(5), |b| {
                b.settings.presence_ttl / 3
            })
    }

    fn connect_bus(&mut self) {
        let Some(link) = self.bus.as_mut() else {
            return;
        };
        link.attempt = link.attempt.wrapping_add(1);
        link.input.clear();
        link.connecting = true;
        let registered = BusSocket::connect(&link.addr).and_then(|mut s| {
            self.core.poll.registry().register(
                s.source(),
                BUS,
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(s)
        });
        match registered {
            Ok(s) => {
                link.socket = Some(s);
                let deadline = self.core.now + link.session.settings().connect_timeout;
                let attempt = link.attempt;
                self.core
                    .timers
                    .push(deadline, TimerKind::BusDeadline(attempt));
            }
            Err(source) => {
                let addr = link.addr.to_string();
                self.bus_lost(Cut::Connect { addr, source });
            }
        }
    }

    /// The bus socket is ready (or its budget ran out last turn).
    pub(super) fn drive_bus(&mut self) {
        let Some(link) = self.bus.as_mut() else {
            return;
        };
        link.queued = false;
        if link.connecting {
            let Some(socket) = link.socket.as_ref() else {
                return;
            };
            match socket.connected() {
                Ok(false) => return,
                Ok(true) => {
                    link.connecting = false;
                    link.session.connected();
                }
                Err(source) => {
                    let addr = link.addr.to_string();
                    return self.bus_lost(Cut::Connect { addr, source });
                }
            }
        }
        if let Err(cut) = self.read_bus() {
            return self.bus_lost(cut);
        }
        self.write_bus();
    }

    /// Reads what Redis sent, at most the budget, and acts on every whole frame.
    fn read_bus(&mut self) -> Result<(), Cut> {
        let mut heard = Vec::new();
        let mut read = 0usize;
        loop {
            let Some(link) = self.bus.as_mut() else {
                return Ok(());
            };
            let Some(socket) = link.socket.as_mut() else {
                return Ok(());
            };
            if read >= READ_BUDGET {
                if !link.queued {
                    link.queued = true;
                    self.core.ready.push(BUS);
                }
                break;
            }
            let scratch = &mut self.bufs.scratch;
            match socket.read(scratch) {
                Ok(0) => return Err(Cut::Closed),
                Ok(n) => {
                    read = read.saturating_add(n);
                    link.input
                        .extend_from_slice(scratch.get(..n).unwrap_or_default());
                    let used = link.session.on_input(&link.input, &mut heard)?;
                    link.input.drain(..used.min(link.input.len()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Cut::Io(e)),
            }
        }
        // Other hosts' lines go out together, one write per member for the whole read (as a
        // local member's batch does), not one per line.
        let mut lines = Vec::new();
        for h in heard {
            match h {
                Heard::Event(origin, event) => {
                    self.svc
                        .room
                        .apply_remote(&origin, &event, self.core.now, &mut lines);
                }
                other => {
                    self.flush_remote(&mut lines);
                    self.on_heard(other);
                }
            }
        }
        self.flush_remote(&mut lines);
        Ok(())
    }

    fn flush_remote(&mut self, lines: &mut Vec<u8>) {
        if !lines.is_empty() {
            self.deliver_chat(lines, None);
            lines.clear();
        }
    }

    fn on_heard(&mut self, heard: Heard) {
        match heard {
            Heard::Up => {
                if let Some(link) = self.bus.as_mut() {
                    if link.last_fault.take().is_some() {
                        tracing::info!("chat bus: connected to Redis at {} again", link.addr);
                    } else {
                        tracing::info!("chat bus: joined Redis at {}", link.addr);
                    }
                }
                self.bus_state_changed(true);
            }
            Heard::Event(origin, event) => {
                let mut lines = Vec::new();
                self.svc
                    .room
                    .apply_remote(&origin, &event, self.core.now, &mut lines);
                self.flush_remote(&mut lines);
            }
            Heard::Claim { member, nick, won } => {
                let (mut mine, mut others) = (Vec::new(), Vec::new());
                self.svc
                    .room
                    .claim_answered(member, &nick, won, &mut mine, &mut others);
                self.tell_member(member, &mine);
                if !others.is_empty() {
                    let from = usize::try_from(member).ok().map(Token);
                    self.deliver_chat(&others, from);
                    self.forward_chat(&others);
                }
            }
        }
    }

    /// The bus went up or down: every member of this worker is told, and those whose rename
    /// was waiting for it.
    fn bus_state_changed(&mut self, up: bool) {
        let (mut notice, mut told) = (Vec::new(), Vec::new());
        self.svc.room.bus_changed(up, &mut notice, &mut told);
        if !notice.is_empty() {
            self.deliver_chat(&notice, None);
        }
        for (member, bytes) in told {
            self.tell_member(member, &bytes);
        }
    }

    /// Writes `bytes` to one chat member of this worker.
    fn tell_member(&mut self, member: MemberId, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if let Some(token) = usize::try_from(member).ok().map(Token)
            && matches!(self.core.sources.get(token), Some(Entry::Conn(_)))
        {
            self.push_chat(token, bytes);
        }
    }

    /// Writes what the session has for Redis; a Redis that lets it pile up is cut.
    fn write_bus(&mut self) {
        let Some(link) = self.bus.as_mut() else {
            return;
        };
        let Some(socket) = link.socket.as_mut() else {
            return;
        };
        if link.connecting {
            return;
        }
        let out = &mut link.session.out;
        let mut written = 0usize;
        let result = loop {
            let Some(rest) = out.get(written..).filter(|r| !r.is_empty()) else {
                break Ok(());
            };
            match socket.write(rest) {
                Ok(0) => break Err(Cut::Closed),
                Ok(n) => written = written.saturating_add(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(Cut::Io(e)),
            }
        };
        out.drain(..written.min(out.len()));
        let result = result.and_then(|()| {
            if link.session.too_slow() {
                Err(Cut::TooSlow(link.session.settings().max_pending))
            } else {
                Ok(())
            }
        });
        if let Err(cut) = result {
            self.bus_lost(cut);
        }
    }

    /// Once per turn: the room's events and claims go to the session, and out.
    pub(super) fn pump_bus(&mut self) {
        let Some(room_bus) = self.svc.room.bus.as_mut() else {
            return;
        };
        let Some(link) = self.bus.as_mut() else {
            return;
        };
        let events = room_bus.take_outbox();
        let claims = room_bus.take_claims();
        for event in &events {
            link.session.publish(event);
        }
        for claim in &claims {
            link.session.claim(claim);
        }
        self.svc.counters.bus = Some(link.session.counters);
        if !link.session.out.is_empty() {
            self.write_bus();
        }
    }

    /// Closes the bus connection, says why (once per cause), tells the members when it was up,
    /// and tries again later.
    fn bus_lost(&mut self, cut: Cut) {
        let Some(link) = self.bus.as_mut() else {
            return;
        };
        if let Some(mut socket) = link.socket.take() {
            let _ = self.core.poll.registry().deregister(socket.source());
        }
        link.connecting = false;
        link.input.clear();
        let was_up = link.session.is_up();
        let wait = link.session.lost();
        let why = cut.to_string();
        if link.last_fault.as_deref() != Some(why.as_str()) {
            if link.last_fault.is_none() && !was_up && link.session.counters.reconnects == 0 {
                tracing::warn!("chat bus: {why}; the room runs on this host only until it is back");
            } else {
                tracing::warn!(
                    "chat bus: {why}; trying again (every {:?} at most)",
                    crate::service::redis_bus::RETRY_MAX
                );
            }
            link.last_fault = Some(why);
        }
        self.svc.counters.bus = Some(link.session.counters);
        self.core
            .timers
            .push(self.core.now + wait, TimerKind::BusRetry);
        if was_up {
            self.bus_state_changed(false);
        }
    }

    /// A connection attempt's time is up: cut it unless it is up by now.
    pub(super) fn bus_deadline(&mut self, attempt: u64) {
        let Some(link) = self.bus.as_ref() else {
            return;
        };
        if link.attempt == attempt && link.socket.is_some() && !link.session.is_up() {
            let limit = link.session.settings().connect_timeout;
            self.bus_lost(Cut::Timeout(limit));
        }
    }

    pub(super) fn bus_retry(&mut self) {
        if self.bus.as_ref().is_some_and(|l| l.socket.is_none()) && self.shutdown.deadline.is_none()
        {
            self.connect_bus();
        }
    }

    /// The bus's periodic work: heartbeat, claim refresh, forgetting silent members.
    pub(super) fn bus_tick(&mut self) {
        let Some(ttl) = self
            .config
            .chat_bus
            .as_ref()
            .map(|b| b.settings.presence_ttl)
        else {
            return;
        };
        let mut lines = Vec::new();
        self.svc.room.bus_tick(self.core.now, ttl, &mut lines);
        if !lines.is_empty() {
            self.deliver_chat(&lines, None);
        }
        let every = self.bus_tick_every();
        self.core
            .timers
            .push(self.core.now + every, TimerKind::BusTick);
    }

    /// The server stops: the other hosts are told that this worker's members are gone, as far
    /// as the socket takes it now.
    pub(super) fn bus_farewell(&mut self) {
        if let Some(bus) = self.svc.room.bus.as_mut() {
            bus.publish(crate::service::chat::bus_message::RoomEvent::Gone);
        }
        self.pump_bus();
    }
}

fn new_link(bus: ChatBus, origin: Origin, max_line: usize) -> BusLink {
    BusLink {
        session: RedisBus::new(bus.settings, origin, max_line),
        addr: bus.addr,
        socket: None,
        connecting: false,
        input: Vec::new(),
        attempt: 0,
        queued: false,
        last_fault: None,
    }
}
