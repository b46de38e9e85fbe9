//! Sans-IO services: each takes the bytes (or datagrams) a client sent and appends its replies
//! to an output buffer. No service sees a socket or a clock; the reactor does the I/O.

pub mod auth;
pub mod echo;
pub mod files;
pub mod store;
pub mod upper;

use std::sync::Arc;

use crate::config::ServiceKind;
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
}

/// What the stream services of a reactor share.
#[derive(Debug, Clone, Default)]
pub struct Shared {
    /// The `files` data directory and limits, when `files` runs.
    pub files: Option<Arc<files::FilesShared>>,
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
            ServiceKind::UdpEcho | ServiceKind::UdpUpper => None,
        }
    }

    /// Feeds bytes as they arrived; replies are appended to `out`. The bytes not consumed are
    /// kept by the caller and offered again, in front of the next ones.
    pub fn on_input(&mut self, input: &[u8], out: &mut Vec<u8>, counters: &mut Counters) -> Step {
        let consumed = match self {
            StreamService::Echo(s) => s.on_input(input, out),
            StreamService::Upper(s) => s.on_input(input, out),
            StreamService::Files(s) => return s.on_input(input, out, counters),
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
            _ => true,
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

/// A datagram service: one request datagram in, at most one reply datagram out.
#[derive(Debug)]
pub enum DatagramService {
    Echo(echo::Echo),
    Upper(upper::Upper),
}

impl DatagramService {
    /// The service a datagram socket of `kind` runs, or `None` for a stream kind.
    pub fn for_kind(kind: ServiceKind) -> Option<Self> {
        match kind {
            ServiceKind::UdpEcho => Some(DatagramService::Echo(echo::Echo)),
            ServiceKind::UdpUpper => Some(DatagramService::Upper(upper::Upper)),
            ServiceKind::Echo | ServiceKind::Upper | ServiceKind::Files => None,
        }
    }

    /// Writes the reply to `payload` into `reply` (cleared first); returns whether to send it.
    pub fn on_datagram(&mut self, payload: &[u8], reply: &mut Vec<u8>) -> bool {
        reply.clear();
        match self {
            DatagramService::Echo(s) => {
                s.on_input(payload, reply);
            }
            DatagramService::Upper(s) => {
                s.on_input(payload, reply);
            }
        }
        true
    }
}
