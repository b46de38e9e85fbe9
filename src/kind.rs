//! The vocabulary that configuration, the reactor, the services and the metrics all speak:
//! which services there are, and their names. A leaf: it imports nothing of the crate, so
//! every module can use it without an import cycle.

use std::fmt;

/// The services the reactor can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceKind {
    Echo,
    Upper,
    UdpEcho,
    UdpUpper,
    Files,
    Chat,
    UdpChat,
    Time,
    Discovery,
    Metrics,
}

impl ServiceKind {
    /// Every service, in the order `socklab serve` starts them.
    pub const ALL: [ServiceKind; 10] = [
        ServiceKind::Echo,
        ServiceKind::Upper,
        ServiceKind::UdpEcho,
        ServiceKind::UdpUpper,
        ServiceKind::Files,
        ServiceKind::Chat,
        ServiceKind::UdpChat,
        ServiceKind::Time,
        ServiceKind::Discovery,
        ServiceKind::Metrics,
    ];

    /// The name used on the command line, in logs and in metrics.
    pub fn name(self) -> &'static str {
        match self {
            ServiceKind::Echo => "echo",
            ServiceKind::Upper => "upper",
            ServiceKind::UdpEcho => "udp-echo",
            ServiceKind::UdpUpper => "udp-upper",
            ServiceKind::Files => "files",
            ServiceKind::Chat => "chat",
            ServiceKind::UdpChat => "udp-chat",
            ServiceKind::Time => "time",
            ServiceKind::Discovery => "discovery",
            ServiceKind::Metrics => "metrics",
        }
    }

    /// The service called `name` on the command line, if there is one.
    pub fn from_name(name: &str) -> Option<ServiceKind> {
        ServiceKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Stream services take TCP and `unix:` addresses; datagram services UDP and `unixgram:`.
    pub fn is_stream(self) -> bool {
        matches!(
            self,
            ServiceKind::Echo
                | ServiceKind::Upper
                | ServiceKind::Files
                | ServiceKind::Chat
                | ServiceKind::Metrics
        )
    }
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
