//! The addresses a service can listen on, in the form the command line uses:
//! `HOST:PORT` (TCP or UDP, by the service), `unix:PATH` and `unixgram:PATH`.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;

/// Where one listener binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// An IP address and port: TCP for stream services, UDP for datagram ones.
    Inet(SocketAddr),
    /// A Unix-domain stream socket at this path.
    Unix(PathBuf),
    /// A Unix-domain datagram socket at this path.
    Unixgram(PathBuf),
}

/// Why an address given on the command line cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AddrError {
    #[error("`{0}` has an empty path; write unix:/path/to/socket")]
    EmptyPath(String),
    #[error("`{input}` is not HOST:PORT, unix:PATH or unixgram:PATH ({reason})")]
    Unparsable { input: String, reason: String },
}

impl FromStr for ListenAddr {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(AddrError::EmptyPath(s.to_owned()));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        if let Some(path) = s.strip_prefix("unixgram:") {
            if path.is_empty() {
                return Err(AddrError::EmptyPath(s.to_owned()));
            }
            return Ok(ListenAddr::Unixgram(PathBuf::from(path)));
        }
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(ListenAddr::Inet(addr));
        }
        // A host name (`localhost:7000`) is resolved once, here, at start-up: the reactor never
        // resolves names.
        let unparsable = |reason: String| AddrError::Unparsable {
            input: s.to_owned(),
            reason,
        };
        let mut addrs = s.to_socket_addrs().map_err(|e| unparsable(e.to_string()))?;
        addrs
            .next()
            .map(ListenAddr::Inet)
            .ok_or_else(|| unparsable("the name resolves to no address".to_owned()))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Inet(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ListenAddr::Unixgram(p) => write!(f, "unixgram:{}", p.display()),
        }
    }
}

impl ListenAddr {
    /// True for loopback IP addresses and Unix sockets: the places only this machine can reach.
    pub fn is_local(&self) -> bool {
        match self {
            ListenAddr::Inet(a) => a.ip().is_loopback(),
            ListenAddr::Unix(_) | ListenAddr::Unixgram(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!(
            "127.0.0.1:7000".parse::<ListenAddr>().unwrap(),
            ListenAddr::Inet("127.0.0.1:7000".parse().unwrap())
        );
        assert_eq!(
            "[::1]:0".parse::<ListenAddr>().unwrap(),
            ListenAddr::Inet("[::1]:0".parse().unwrap())
        );
        assert_eq!(
            "unix:/tmp/a.sock".parse::<ListenAddr>().unwrap(),
            ListenAddr::Unix("/tmp/a.sock".into())
        );
        assert_eq!(
            "unixgram:rel.sock".parse::<ListenAddr>().unwrap(),
            ListenAddr::Unixgram("rel.sock".into())
        );
    }

    #[test]
    fn display_round_trips() {
        for s in ["127.0.0.1:7000", "unix:/tmp/a.sock", "unixgram:/tmp/b.sock"] {
            assert_eq!(s.parse::<ListenAddr>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn rejects_nonsense() {
        assert!(matches!(
            "unix:".parse::<ListenAddr>(),
            Err(AddrError::EmptyPath(_))
        ));
        assert!(matches!(
            "not an address".parse::<ListenAddr>(),
            Err(AddrError::Unparsable { .. })
        ));
        assert!(matches!(
            "127.0.0.1:99999".parse::<ListenAddr>(),
            Err(AddrError::Unparsable { .. })
        ));
    }
}
