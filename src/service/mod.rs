//! Sans-IO services: each takes the bytes (or datagrams) a client sent and appends its replies
//! to an output buffer. No service sees a socket or a clock; the reactor does the I/O.

pub mod auth;
pub mod chat;
pub mod discovery;
pub mod echo;
pub mod exec;
pub mod files;
pub mod metrics_http;
pub mod response;
pub mod store;
pub mod time;
pub mod upper;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::kind::ServiceKind;
use crate::metrics::Counters;

/// What a stream service decided about the input it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Consumed(pub usize);

/// What a stream service did with a batch of input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Step {
    /// Bytes used; the rest is kept by the caller and offered again with more.
    pub consumed: usize,
    /// Close once the output is flushed: the input can no longer be trusted.
    pub close: bool,
}

/// A stream service, chosen once per connection. An enum rather than a trait object: the
/// dispatch is a jump table and each connection's state lives inline in its slab slot.
#[derive(Debug)]
pub enum StreamService {
    Echo(echo::Echo),
    Upper(upper::Upper),
    /// Boxed: a `files` session is larger than the byte-stream ones, and idle echo
    /// connections should not pay for it.
    Files(Box<files::Files>),
    /// Boxed, like `Files`.
    Chat(Box<chat::Chat>),
    Metrics(metrics_http::MetricsHttp),
}

/// What the stream services of a reactor share.
#[derive(Debug, Clone, Default)]
pub struct Shared {
    /// The `files` data directory and limits, when `files` runs.
    pub files: Option<Arc<files::FilesShared>>,
}

/// What a stream service may touch besides its own connection: the counters, the chat room,
/// the bytes every other chat member is to receive, and the disk work it queues.
pub struct Ctx<'a> {
    /// The reactor's counters (frames are counted here; `stats` reports them).
    pub counters: &'a mut Counters,
    /// The chat room of this reactor.
    pub room: &'a mut chat::ChatRoom,
    /// Lines for every other chat member, formatted once; the reactor copies them out.
    pub others: &'a mut Vec<u8>,
    /// Disk work for the reactor's disk thread, in order.
    pub disk: &'a mut Vec<files::DiskJob>,
    /// The other workers' counters, for `stats` and metrics.
    pub peers: &'a crate::metrics::Peers,
}

impl StreamService {
    /// The service a new connection on a listener of `kind` gets, or `None` for a datagram
    /// kind (or `files` without its data directory).
    pub fn for_kind(kind: ServiceKind, shared: &Shared) -> Option<Self> {
        match kind {
            ServiceKind::Echo => Some(StreamService::Echo(echo::Echo)),
            ServiceKind::Upper => Some(StreamService::Upper(upper::Upper)),
            ServiceKind::Files => shared
                .files
                .clone()
                .map(|f| StreamService::Files(Box::new(files::Files::new(f)))),
            ServiceKind::Chat => Some(StreamService::Chat(Box::default())),
            ServiceKind::Metrics => Some(StreamService::Metrics(Default::default())),
            ServiceKind::UdpEcho
            | ServiceKind::UdpUpper
            | ServiceKind::UdpChat
            | ServiceKind::Time
            | ServiceKind::Discovery => None,
        }
    }

    /// The connection is open (and `authenticated` if its listener asked for it): a chat
    /// member joins; `files` learns whether exec may run.
    pub fn on_open(&mut self, id: u64, authenticated: bool, out: &mut Vec<u8>, ctx: &mut Ctx<'_>) {
        match self {
            StreamService::Chat(c) => c.join(id, ctx.room, out, ctx.others),
            StreamService::Files(f) => f.set_authenticated(authenticated),
            _ => {}
        }
    }

    /// An `exec` request waiting for the reactor to start it.
    pub fn take_exec(&mut self) -> Option<exec::ExecRequest> {
        match self {
            StreamService::Files(f) => f.take_exec(),
            _ => None,
        }
    }

    /// The connection's command ended.
    pub fn on_exec_done(
        &mut self,
        ending: &exec::Ending,
        stdout: &exec::Capture,
        stderr: &exec::Capture,
        out: &mut Vec<u8>,
        counters: &mut Counters,
    ) {
        if let StreamService::Files(f) = self {
            f.on_exec_done(ending, stdout, stderr, out, counters);
        }
    }

    /// The connection is closing: a chat member leaves.
    pub fn on_close(&mut self, ctx: &mut Ctx<'_>) {
        if let StreamService::Chat(c) = self {
            c.leave(ctx.room, ctx.others);
        }
    }

    /// Feeds bytes as they arrived; replies are appended to `out`. The bytes not consumed are
    /// kept by the caller and offered again, in front of the next ones.
    pub fn on_input(&mut self, input: &[u8], out: &mut Vec<u8>, ctx: &mut Ctx<'_>) -> Step {
        let consumed = match self {
            StreamService::Echo(s) => s.on_input(input, out),
            StreamService::Upper(s) => s.on_input(input, out),
            StreamService::Files(s) => {
                return s.on_input(input, out, ctx.counters, ctx.peers, ctx.disk);
            }
            StreamService::Chat(s) => return s.on_input(input, out, ctx.room, ctx.others),
            StreamService::Metrics(s) => return s.on_input(input, out, ctx.counters, ctx.peers),
        };
        Step {
            consumed: consumed.0,
            close: false,
        }
    }

    /// Whether the service takes input now (a service busy with a long response waits, so
    /// that its responses stay in order).
    pub fn accepts_input(&self) -> bool {
        match self {
            StreamService::Files(s) => s.accepts_input(),
            StreamService::Chat(s) => s.accepts_input(),
            StreamService::Metrics(s) => s.accepts_input(),
            _ => true,
        }
    }

    /// Whether a response waits on disk work queued for the disk thread.
    pub fn awaiting_disk(&self) -> bool {
        match self {
            StreamService::Files(s) => s.awaiting_disk(),
            _ => false,
        }
    }

    /// Whether an `exec` command of this connection is queued or running.
    pub fn awaiting_exec(&self) -> bool {
        match self {
            StreamService::Files(s) => s.awaiting_exec(),
            _ => false,
        }
    }

    /// Takes the result of a disk job queued by this connection.
    pub fn on_disk_done(
        &mut self,
        done: files::DiskDone,
        out: &mut Vec<u8>,
        counters: &mut Counters,
    ) {
        if let StreamService::Files(s) = self {
            s.on_disk_done(done, out, counters);
        }
    }

    /// Whether `produce` has more output to give.
    pub fn has_output(&self) -> bool {
        match self {
            StreamService::Files(s) => s.has_output(),
            _ => false,
        }
    }

    /// Appends up to about `budget` bytes of a long response; `false` when the connection
    /// must close because the response cannot be completed.
    pub fn produce(&mut self, out: &mut Vec<u8>, budget: usize, counters: &mut Counters) -> bool {
        match self {
            StreamService::Files(s) => s.produce(out, budget, counters) == files::Produced::Ok,
            _ => true,
        }
    }

    /// A file body that can go to the socket by sendfile: (descriptor, offset, bytes left).
    pub fn file_range(&self) -> Option<(std::os::fd::RawFd, u64, u64)> {
        match self {
            StreamService::Files(s) => s.file_range(),
            _ => None,
        }
    }

    /// `n` bytes of the file body went out by sendfile.
    pub fn file_sent(&mut self, n: u64) {
        if let StreamService::Files(s) = self {
            s.file_sent(n);
        }
    }

    /// sendfile does not work for this connection: produce file bodies through `produce`.
    pub fn no_sendfile(&mut self) {
        if let StreamService::Files(s) = self {
            s.no_sendfile();
        }
    }

    /// What to send a client whose authentication failed, before closing.
    pub fn on_auth_failed(&self, out: &mut Vec<u8>, counters: &mut Counters) {
        if let StreamService::Files(_) = self {
            files::auth_failed_frame(out, counters);
        }
    }
}

/// Where a datagram came from, and so where a reply can go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    Inet(SocketAddr),
    Unix(PathBuf),
}

/// A datagram service: each request datagram yields at most one reply, sent to `targets`.
#[derive(Debug)]
pub enum DatagramService {
    Echo(echo::Echo),
    Upper(upper::Upper),
    UdpChat(chat::UdpChat),
    Time,
    /// Boxed: it holds the pre-encoded answer.
    Discovery(Box<discovery::Discovery>),
}

/// Settings of the datagram services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatagramSettings {
    /// How long `udp-chat` remembers a silent sender.
    pub udp_chat_expiry: Duration,
    /// Senders `udp-chat` remembers at most.
    pub udp_chat_max_members: usize,
    /// Discovery probes answered per second at most (0: none).
    pub discovery_rate: u32,
}

impl Default for DatagramSettings {
    fn default() -> Self {
        DatagramSettings {
            udp_chat_expiry: Duration::from_secs(600),
            udp_chat_max_members: 4096,
            discovery_rate: discovery::DEFAULT_MAX_PER_SECOND,
        }
    }
}

impl DatagramService {
    /// The service a datagram socket of `kind` runs, or `None` for a stream kind.
    pub fn for_kind(kind: ServiceKind, settings: &DatagramSettings) -> Option<Self> {
        match kind {
            ServiceKind::UdpEcho => Some(DatagramService::Echo(echo::Echo)),
            ServiceKind::UdpUpper => Some(DatagramService::Upper(upper::Upper)),
            ServiceKind::UdpChat => Some(DatagramService::UdpChat(chat::UdpChat::new(
                settings.udp_chat_expiry,
                settings.udp_chat_max_members,
            ))),
            ServiceKind::Time => Some(DatagramService::Time),
            // The service list is known only once every socket is bound: the reactor replaces
            // this empty answer then.
            ServiceKind::Discovery => discovery::Discovery::new(
                &discovery::DiscoveryInfo::default(),
                settings.discovery_rate,
            )
            .ok()
            .map(|d| DatagramService::Discovery(Box::new(d))),
            ServiceKind::Echo
            | ServiceKind::Upper
            | ServiceKind::Files
            | ServiceKind::Chat
            | ServiceKind::Metrics => None,
        }
    }

    /// Whether the service needs the wall clock (`on_datagram`'s `wall`).
    pub fn needs_wall_clock(&self) -> bool {
        matches!(self, DatagramService::Time)
    }

    /// Takes one datagram from `from`; the reply (if any) is written to `reply` and the peers
    /// to send it to into `targets` (both cleared first). `wall` is the local time, given to
    /// the services that say they need it.
    pub fn on_datagram(
        &mut self,
        from: &Peer,
        payload: &[u8],
        now: Instant,
        wall: Option<&chrono::DateTime<chrono::Local>>,
        reply: &mut Vec<u8>,
        targets: &mut Vec<Peer>,
    ) {
        reply.clear();
        targets.clear();
        match self {
            DatagramService::Echo(s) => {
                s.on_input(payload, reply);
                targets.push(from.clone());
            }
            DatagramService::Upper(s) => {
                s.on_input(payload, reply);
                targets.push(from.clone());
            }
            DatagramService::UdpChat(s) => {
                let Peer::Inet(addr) = from else { return };
                let mut addrs = Vec::new();
                s.on_datagram(*addr, payload, now, reply, &mut addrs);
                targets.extend(addrs.into_iter().map(Peer::Inet));
            }
            DatagramService::Time => {
                if let Some(wall) = wall {
                    time::answer(payload, wall, reply);
                    targets.push(from.clone());
                }
            }
            DatagramService::Discovery(d) => {
                // The answer goes to the probe's source only, at a bounded rate.
                if d.on_datagram(payload, now, reply) {
                    targets.push(from.clone());
                }
            }
        }
    }
}
