//! Sans-IO services: each takes the bytes (or datagrams) a client sent and appends its replies
//! to an output buffer. No service sees a socket or a clock; the reactor does the I/O.

pub mod auth;
pub mod echo;
pub mod upper;

use crate::config::ServiceKind;

/// What a stream service decided about the input it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Consumed(pub usize);

/// A stream service, chosen once per connection. An enum rather than a trait object: the
/// dispatch is a jump table and each connection's state lives inline in its slab slot.
#[derive(Debug)]
pub enum StreamService {
    Echo(echo::Echo),
    Upper(upper::Upper),
}

impl StreamService {
    /// The service a new connection on a listener of `kind` gets, or `None` for a datagram kind.
    pub fn for_kind(kind: ServiceKind) -> Option<Self> {
        match kind {
            ServiceKind::Echo => Some(StreamService::Echo(echo::Echo)),
            ServiceKind::Upper => Some(StreamService::Upper(upper::Upper)),
            ServiceKind::UdpEcho | ServiceKind::UdpUpper => None,
        }
    }

    /// Feeds bytes as they arrived; replies are appended to `out`. The bytes not consumed are
    /// kept by the caller and offered again, in front of the next ones.
    pub fn on_input(&mut self, input: &[u8], out: &mut Vec<u8>) -> Consumed {
        match self {
            StreamService::Echo(s) => s.on_input(input, out),
            StreamService::Upper(s) => s.on_input(input, out),
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
            ServiceKind::Echo | ServiceKind::Upper => None,
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
