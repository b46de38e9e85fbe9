//! The PROXY protocol header (HAProxy's v1 text and v2 binary) that a load balancer sends
//! ahead of its client's bytes, so that the server learns the client's address. Sans-IO: it
//! looks at what has arrived so far and says whether a header is whole, how long it is and
//! whom it names; `ppp` parses the header itself once its length is known.
//!
//! Bounds: a v1 header is at most 107 bytes (the specification's); a v2 header at most
//! [`MAX_HEADER`] bytes here (its own length field allows 65,551). A header that cannot
//! become valid is refused as soon as its first wrong byte has arrived.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// The v2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// What a v1 header starts with.
const V1_PREFIX: &[u8; 6] = b"PROXY ";

/// The longest v1 header, CRLF included.
const V1_MAX: usize = 107;

/// The longest v2 header accepted: the 16 fixed bytes, addresses and TLVs.
pub const MAX_HEADER: usize = 16 + 1024;

/// Which versions a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ProxyVersions {
    #[serde(rename = "v1")]
    V1,
    #[serde(rename = "v2")]
    V2,
    #[serde(rename = "v1-or-v2")]
    Either,
}

impl ProxyVersions {
    /// The name used by the flag and the file.
    pub fn name(self) -> &'static str {
        match self {
            ProxyVersions::V1 => "v1",
            ProxyVersions::V2 => "v2",
            ProxyVersions::Either => "v1-or-v2",
        }
    }

    fn accepts(self, version: u8) -> bool {
        matches!(
            (self, version),
            (ProxyVersions::Either, _) | (ProxyVersions::V1, 1) | (ProxyVersions::V2, 2)
        )
    }
}

impl std::str::FromStr for ProxyVersions {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "v1" => Ok(ProxyVersions::V1),
            "v2" => Ok(ProxyVersions::V2),
            "v1-or-v2" => Ok(ProxyVersions::Either),
            _ => Err(format!(
                "`{s}` is not a PROXY protocol version (v1, v2 or v1-or-v2)"
            )),
        }
    }
}

impl fmt::Display for ProxyVersions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the bytes so far hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A valid beginning: more bytes are needed.
    Incomplete,
    /// A whole header of `len` bytes. `source` is the client's address; `None` when the header
    /// names none (v1 `UNKNOWN`, v2 `LOCAL` — a balancer's own health check — or an unspecified
    /// or unix family): the connection's own peer address stands.
    Done {
        len: usize,
        source: Option<SocketAddr>,
    },
}

/// Why the bytes are not a header this listener takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("no PROXY protocol header (the connection began with {0:?})")]
    Missing(String),
    #[error("a PROXY protocol v{got} header on a listener that takes {expected}")]
    WrongVersion { got: u8, expected: ProxyVersions },
    #[error("the PROXY protocol header is longer than {limit} bytes")]
    TooLong { limit: usize },
    #[error("an invalid PROXY protocol v{version} header: {why}")]
    Invalid { version: u8, why: String },
}

/// Looks at the first bytes of a connection.
pub fn parse(input: &[u8], accept: ProxyVersions) -> Result<Parsed, ProxyError> {
    let starts = |prefix: &[u8]| {
        let n = input.len().min(prefix.len());
        input.get(..n) == prefix.get(..n)
    };
    let version = match (starts(V2_SIGNATURE), starts(V1_PREFIX)) {
        (true, true) => return Ok(Parsed::Incomplete),
        (true, false) => 2,
        (false, true) => 1,
        (false, false) => return Err(ProxyError::Missing(preview(input))),
    };
    if !accept.accepts(version) {
        return Err(ProxyError::WrongVersion {
            got: version,
            expected: accept,
        });
    }
    if version == 2 {
        parse_v2(input)
    } else {
        parse_v1(input)
    }
}

fn parse_v1(input: &[u8]) -> Result<Parsed, ProxyError> {
    let window = input.get(..input.len().min(V1_MAX)).unwrap_or_default();
    let Some(cr) = window.windows(2).position(|w| w == b"\r\n") else {
        if input.len() >= V1_MAX {
            return Err(ProxyError::TooLong { limit: V1_MAX });
        }
        return Ok(Parsed::Incomplete);
    };
    let len = cr + 2;
    let header = input.get(..len).unwrap_or_default();
    let parsed = ppp::v1::Header::try_from(header).map_err(|e| ProxyError::Invalid {
        version: 1,
        why: e.to_string(),
    })?;
    let source = match parsed.addresses {
        ppp::v1::Addresses::Tcp4(a) => {
            Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
        }
        ppp::v1::Addresses::Tcp6(a) => {
            Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
        }
        ppp::v1::Addresses::Unknown => None,
    };
    Ok(Parsed::Done { len, source })
}

fn parse_v2(input: &[u8]) -> Result<Parsed, ProxyError> {
    let (Some(&hi), Some(&lo)) = (input.get(14), input.get(15)) else {
        return Ok(Parsed::Incomplete);
    };
    let len = 16 + usize::from(u16::from_be_bytes([hi, lo]));
    if len > MAX_HEADER {
        return Err(ProxyError::TooLong { limit: MAX_HEADER });
    }
    let Some(header) = input.get(..len) else {
        return Ok(Parsed::Incomplete);
    };
    let parsed = ppp::v2::Header::try_from(header).map_err(|e| ProxyError::Invalid {
        version: 2,
        why: e.to_string(),
    })?;
    let source = match (parsed.command, parsed.addresses) {
        (ppp::v2::Command::Local, _) => None,
        (_, ppp::v2::Addresses::IPv4(a)) => {
            Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
        }
        (_, ppp::v2::Addresses::IPv6(a)) => {
            Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
        }
        (_, ppp::v2::Addresses::Unix(_) | ppp::v2::Addresses::Unspecified) => None,
    };
    Ok(Parsed::Done { len, source })
}

/// The first bytes, escaped, for an error message.
fn preview(input: &[u8]) -> String {
    let head = input.get(..input.len().min(16)).unwrap_or_default();
    head.escape_ascii().to_string()
}

#[cfg(test)]
mod tests;
