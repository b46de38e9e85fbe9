//! Sans-IO services: each takes the bytes (or datagrams) a client sent and appends its replies
//! to an output buffer. No service sees a socket or a clock; the reactor does the I/O.
//!
//! The contract of a stream service (`StreamService`), in the manner of quinn-proto:
//! - In: `on_input` (the bytes a client sent) and `on_event` (what the reactor reports back:
//!   `Event::Opened`, `AuthFailed`, `DiskDone`, `ExecDone`, `FileSent`, `SendFileRefused`,
//!   `Closing`, `Counters`). Replies are appended to the `out` buffer given.
//! - Out: `poll_action` (work only the reactor can do, `Action::Disk`, `Action::Exec` or
//!   `Action::Counters`, drained after every drive of the connection) and, for a long response, `next_output` (bytes
//!   produced into `out`, or `Output::SendFile`: a file range the reactor sends itself).
//! - Asked: `accepts_input`, `has_output`, `sending_file`, `awaiting`: what the reactor needs
//!   to decide when to read, produce, wait for writability or close; `mid_request` and
//!   `served_on_open`: what its deadlines need (`--request-timeout` runs while a request is
//!   part-way in, `--handshake-timeout` until the connection has been served).
//! - `on_idle_close`: the connection is about to be closed for being idle (a chat member is
//!   told why); `on_shutdown`: the server drained it and is about to close it (likewise);
//!   `drain_wants`: the body under way a drain reads to its end.
//! - At accept, `refusal`: what a service says to a connection refused for its address.
//!
//! What a service may do itself: decode and encode its protocol; keep its own state; touch
//! what `Ctx` lends it (counters, the chat room, lines for the other members, which
//! worker it is and how many there are); and small, bounded file-system work on the loop that the page cache
//! answers: open and stat a file for `get`/`stat`, read the data directory for `list`, create
//! an upload's temporary, read or hash a file (at most the budget it is given per call, and
//! record the md5 it finds), and check `exec`'s request against its policy.
//!
//! What only the reactor does: every socket and pipe (read, write, sendfile, shutdown,
//! registration and interest), the clock and timers, the disk threads (a service hands them
//! a job as `Action::Disk`; md5, writes, fsync and rename run there), child processes
//! (`Action::Exec`), the authentication gate in front of the service (`auth.rs` decodes it,
//! the reactor feeds it), closing connections, and delivering chat lines to the other members
//! and workers. A service's file stays the only place that knows its protocol: the reactor
//! moves bytes, jobs and events, never looks inside them.

pub mod auth;
pub mod chat;
pub mod discovery;
pub mod echo;
pub mod exec;
pub mod files;
pub mod metrics_http;
pub mod redis_bus;
pub mod response;
pub mod status_page;
pub mod store;
pub mod time;
pub mod upper;
pub mod ws_chat;

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
    /// A chat member over WebSocket: a metrics connection that asked for `/chat`.
    WsChat(Box<ws_chat::WsChat>),
}

/// What the stream services of a reactor share.
#[derive(Debug, Clone, Default)]
pub struct Shared {
    /// The `files` data directory and limits, when `files` runs.
    pub files: Option<Arc<files::FilesShared>>,
    /// Every listener of this worker, for the status page.
    pub listeners: Arc<Vec<status_page::ListenerSummary>>,
}

/// What a stream service may touch besides its own connection: the counters, the chat room,
/// and the bytes every other chat member is to receive.
pub struct Ctx<'a> {
    /// The reactor's counters (frames are counted here; `stats` reports them).
    pub counters: &'a mut Counters,
    /// The chat room of this reactor.
    pub room: &'a mut chat::ChatRoom,
    /// Lines for every other chat member, formatted once; the reactor copies them out.
    pub others: &'a mut Vec<u8>,
    /// This worker's number and how many there are: with others, `stats` and metrics ask
    /// for their counters (`Action::Counters`).
    pub peers: &'a crate::metrics::Peers,
    /// The status page's last five minutes of totals.
    pub history: &'a status_page::history::History,
}

/// What the reactor reports back to a stream service: what happened to the connection, and
/// how the work it asked for (`Action`, `Output::SendFile`) went.
#[derive(Debug)]
pub enum Event<'a> {
    /// The connection is open, `authenticated` if its listener asked for the handshake and
    /// the client passed it: a chat member joins; `files` learns whether exec may run.
    Opened { id: u64, authenticated: bool },
    /// The client failed the handshake or ran out of time: the service says so (`files`
    /// answers `auth_failed`); the reactor then takes no more input and closes after the flush.
    AuthFailed,
    /// A disk job this connection asked for (`Action::Disk`) finished.
    DiskDone(files::DiskDone),
    /// The command this connection asked for (`Action::Exec`) ended, or could not start.
    ExecDone {
        ending: &'a exec::Ending,
        stdout: &'a exec::Capture,
        stderr: &'a exec::Capture,
    },
    /// `n` bytes of the file body `Output::SendFile` named went to the socket.
    FileSent(u64),
    /// sendfile cannot carry this connection's bytes (a transport that changes them, or a pair
    /// of descriptors the kernel refuses): file bodies come as `Output::Produced` from now on.
    SendFileRefused,
    /// The connection is closing: a chat member leaves.
    Closing,
    /// The counters of every worker, gathered for this connection (`Action::Counters`).
    Counters(&'a crate::metrics::Gathered),
    /// The time the service asked to be woken at (`Action::Wake`) has come.
    Wake,
}

/// Work only the reactor can do, which a service asks for: the reactor drains these after
/// every drive of the connection (`poll_action`) and reports the outcome as an `Event`.
pub enum Action {
    /// Run this on the hashing and then the disk thread, after the connection's earlier jobs;
    /// the result comes back as `Event::DiskDone`.
    Disk(files::DiskJob),
    /// Start this command; its end comes back as `Event::ExecDone`.
    Exec(exec::ExecRequest),
    /// Gather every worker's counters (`stats`, metrics); they come back as
    /// `Event::Counters`, at most a short timeout later.
    Counters,
    /// Wake the connection's service after this long (`Event::Wake`): a stream's next
    /// snapshot. Skipped while the connection's output is backed up.
    Wake(std::time::Duration),
    /// The connection becomes a chat member over WebSocket (the handshake's answer is
    /// written): the reactor swaps its service and it joins the room.
    UpgradeToWsChat,
}

impl std::fmt::Debug for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // A job is a closure: only its kind can be shown.
            Action::Disk(_) => f.write_str("Disk(..)"),
            Action::Exec(req) => f.debug_tuple("Exec").field(req).finish(),
            Action::Counters => f.write_str("Counters"),
            Action::Wake(d) => f.debug_tuple("Wake").field(d).finish(),
            Action::UpgradeToWsChat => f.write_str("UpgradeToWsChat"),
        }
    }
}

/// What a long response gives next (`next_output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Nothing is under way.
    None,
    /// Bytes were appended to the output.
    Produced,
    /// A file body: the reactor sends it from the page cache to the socket (sendfile) and
    /// reports what went with `Event::FileSent`, or `Event::SendFileRefused`.
    SendFile {
        fd: std::os::fd::RawFd,
        offset: u64,
        left: u64,
    },
    /// The response cannot be completed (a file shrank under a `get`): close the connection.
    Broken,
}

/// What a connection's service waits for outside the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Awaiting {
    /// Nothing.
    Nothing,
    /// Disk work it asked for (upload writes, a commit).
    Disk,
    /// A command it asked for, queued or running.
    Exec,
    /// The other workers' counters it asked for (`Action::Counters`).
    Counters,
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
            ServiceKind::Metrics => Some(StreamService::Metrics(metrics_http::MetricsHttp::new(
                Arc::clone(&shared.listeners),
            ))),
            ServiceKind::UdpEcho
            | ServiceKind::UdpUpper
            | ServiceKind::UdpChat
            | ServiceKind::Time
            | ServiceKind::Discovery => None,
        }
    }

    /// Feeds bytes as they arrived; replies are appended to `out`. The bytes not consumed are
    /// kept by the caller and offered again, in front of the next ones.
    pub fn on_input(&mut self, input: &[u8], out: &mut Vec<u8>, ctx: &mut Ctx<'_>) -> Step {
        let consumed = match self {
            StreamService::Echo(s) => s.on_input(input, out),
            StreamService::Upper(s) => s.on_input(input, out),
            StreamService::Files(s) => return s.on_input(input, out, ctx.counters, ctx.peers),
            StreamService::Chat(s) => return s.on_input(input, out, ctx.room, ctx.others),
            StreamService::Metrics(s) => return s.on_input(input, out, ctx.counters, ctx.peers),
            StreamService::WsChat(s) => return s.on_input(input, out, ctx.room, ctx.others),
        };
        Step {
            consumed: consumed.0,
            close: false,
        }
    }

    /// Takes what the reactor reports about the connection; replies are appended to `out`.
    pub fn on_event(&mut self, ev: Event<'_>, out: &mut Vec<u8>, ctx: &mut Ctx<'_>) {
        match (self, ev) {
            (StreamService::Chat(c), Event::Opened { id, .. }) => {
                c.join(id, ctx.room, out, ctx.others);
            }
            (StreamService::Chat(c), Event::Closing) => c.leave(ctx.room, ctx.others),
            (StreamService::Metrics(m), Event::Opened { authenticated, .. }) => {
                m.on_opened(authenticated);
            }
            (StreamService::WsChat(c), Event::Opened { id, .. }) => {
                c.join(id, ctx.room, out, ctx.others);
            }
            (StreamService::WsChat(c), Event::Closing) => c.leave(ctx.room, ctx.others),
            (StreamService::Files(f), ev) => f.on_event(ev, out, ctx.counters),
            (StreamService::Metrics(m), Event::Counters(g)) => m.on_counters(g, ctx.history, out),
            (StreamService::Metrics(m), Event::Wake) => m.on_wake(),
            _ => {}
        }
    }

    /// The next piece of work the service asks the reactor for, in the order asked.
    pub fn poll_action(&mut self) -> Option<Action> {
        match self {
            StreamService::Files(f) => f.poll_action(),
            StreamService::Metrics(m) => m.poll_action(),
            _ => None,
        }
    }

    /// The next piece of a long response: appends up to about `budget` bytes to `out`, or,
    /// with `sendfile` allowed (nothing else pending before it), names a file range for the
    /// reactor to send.
    pub fn next_output(
        &mut self,
        out: &mut Vec<u8>,
        budget: usize,
        sendfile: bool,
        counters: &mut Counters,
    ) -> Output {
        match self {
            StreamService::Files(s) => s.next_output(out, budget, sendfile, counters),
            _ => Output::None,
        }
    }

    /// Whether the service takes input now (a service busy with a long response waits, so
    /// that its responses stay in order).
    pub fn accepts_input(&self) -> bool {
        match self {
            StreamService::Files(s) => s.accepts_input(),
            StreamService::Chat(s) => s.accepts_input(),
            StreamService::Metrics(s) => s.accepts_input(),
            StreamService::WsChat(s) => s.accepts_input(),
            _ => true,
        }
    }

    /// Whether `next_output` has more to give.
    pub fn has_output(&self) -> bool {
        match self {
            StreamService::Files(s) => s.has_output(),
            _ => false,
        }
    }

    /// Whether the long response under way is a file body to go out by sendfile: the
    /// connection then waits for writability with nothing pending in its own buffer.
    pub fn sending_file(&self) -> bool {
        match self {
            StreamService::Files(s) => s.sending_file(),
            _ => false,
        }
    }

    /// What a response of this connection waits for outside the loop.
    pub fn awaiting(&self) -> Awaiting {
        match self {
            StreamService::Files(s) => s.awaiting(),
            StreamService::Metrics(s) => s.awaiting(),
            _ => Awaiting::Nothing,
        }
    }

    /// The connection has been idle for `idle` and is about to be closed: a chat member is
    /// told why. Input stops; what the service writes here is sent before the close.
    pub fn on_idle_close(&mut self, idle: Duration, out: &mut Vec<u8>) {
        match self {
            StreamService::Chat(c) => c.idle_closing(idle, out),
            StreamService::WsChat(c) => c.idle_closing(idle, out),
            _ => {}
        }
    }

    /// The server is shutting down and this connection owes nothing more: what it says last,
    /// before its write side is shut down (a chat member is told).
    pub fn on_shutdown(&mut self, out: &mut Vec<u8>) {
        match self {
            StreamService::Chat(c) => c.shutting_down(out),
            StreamService::WsChat(c) => c.shutting_down(out),
            _ => {}
        }
    }

    /// Bytes of a request body under way that a drain waits for (a `files` upload or echo body
    /// is read to its end within the grace): the request was received, its body is owed.
    pub fn drain_wants(&self) -> u64 {
        match self {
            StreamService::Files(f) => f.body_left(),
            _ => 0,
        }
    }

    /// Whether the client is part-way through a request, `held` being the input the service
    /// left unconsumed: the reactor's `--request-timeout` runs from the first byte of a request
    /// while this holds. Every framed service consumes a request (a frame header, a chat line,
    /// an HTTP request head) only once it is whole, so held bytes are the start of one; a chat
    /// line being skipped for its length is consumed as it comes and is still one. A `files`
    /// body is consumed as it comes and is not covered: the idle timeout is its deadline. The
    /// byte streams (echo, upper) have no requests.
    pub fn mid_request(&self, held: usize) -> bool {
        match self {
            StreamService::Echo(_) | StreamService::Upper(_) => false,
            StreamService::Files(_) | StreamService::Metrics(_) | StreamService::WsChat(_) => {
                held > 0
            }
            StreamService::Chat(c) => held > 0 || c.mid_line(),
        }
    }

    /// Whether a connection counts as served as soon as it is open (after the handshake): a
    /// chat member is in the room, reading its lines, whether or not it ever speaks. Every
    /// other connection is served once it has sent a complete request; until then it is held
    /// to `--handshake-timeout`.
    pub fn served_on_open(&self) -> bool {
        matches!(self, StreamService::Chat(_) | StreamService::WsChat(_))
    }

    /// Whether the room's lines reach this member as WebSocket text frames.
    pub fn frames_chat(&self) -> bool {
        matches!(self, StreamService::WsChat(_))
    }

    /// What a connection to a `kind` listener is told when it is refused at accept because its
    /// address holds too many connections: `files` an error frame (`too_busy`), `chat` an error
    /// line, `metrics` a 503; the byte streams nothing (any byte would read as data).
    pub fn refusal(kind: ServiceKind, out: &mut Vec<u8>) {
        const WHY: &str = "too many connections from your address";
        match kind {
            ServiceKind::Files => {
                response::Head::error(out, None, response::ErrorCode::TooBusy.as_str(), WHY)
                    .finish(None, 0);
            }
            ServiceKind::Chat => {
                out.extend_from_slice(b"* error: ");
                out.extend_from_slice(WHY.as_bytes());
                out.push(b'\n');
            }
            ServiceKind::Metrics => out.extend_from_slice(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
                  Content-Length: 39\r\nConnection: close\r\n\r\n\
                  too many connections from your address\n",
            ),
            _ => {}
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
    /// the services that say they need it. Returns `false` for a datagram the service refused
    /// as malformed (udp-chat's empty and non-UTF-8 ones), which the caller counts as dropped.
    #[must_use]
    pub fn on_datagram(
        &mut self,
        from: &Peer,
        payload: &[u8],
        now: Instant,
        wall: Option<&chrono::DateTime<chrono::Local>>,
        reply: &mut Vec<u8>,
        targets: &mut Vec<Peer>,
    ) -> bool {
        reply.clear();
        targets.clear();
        let mut taken = true;
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
                let Peer::Inet(addr) = from else {
                    return true;
                };
                let mut addrs = Vec::new();
                taken = s.on_datagram(*addr, payload, now, reply, &mut addrs);
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
                let source = match from {
                    Peer::Inet(addr) => Some(addr.ip()),
                    Peer::Unix(_) => None,
                };
                if d.on_datagram(payload, source, now, reply) {
                    targets.push(from.clone());
                }
            }
        }
        taken
    }
}
