//! `[chat.bus]` and `--chat-bus`: where the chat room meets the other hosts' rooms (a Redis
//! server) and how (PROTOCOL.md, "Chat across hosts").

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::values::{Count, NonZeroDur, Size};
use crate::service::redis_bus::BusSettings;

/// Where Redis listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusAddr {
    /// `HOST:PORT`, resolved once at start-up (the loop never waits on DNS).
    Tcp(SocketAddr),
    /// `unix:PATH`.
    Unix(PathBuf),
}

impl fmt::Display for BusAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusAddr::Tcp(a) => write!(f, "{a}"),
            BusAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl std::str::FromStr for BusAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a path".to_owned());
            }
            return Ok(BusAddr::Unix(PathBuf::from(path)));
        }
        let mut addrs = s
            .to_socket_addrs()
            .map_err(|e| format!("`{s}` is not HOST:PORT or unix:PATH: {e}"))?;
        addrs
            .next()
            .map(BusAddr::Tcp)
            .ok_or_else(|| format!("`{s}` resolves to no address"))
    }
}

/// The chat bus as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatBus {
    pub addr: BusAddr,
    /// Everything but the password, which `serve` reads from this file at start-up.
    pub settings: BusSettings,
    pub password_file: Option<PathBuf>,
}

impl ChatBus {
    /// A bus at `addr` with the defaults and a fresh random node name.
    pub fn new(addr: BusAddr) -> Self {
        ChatBus {
            addr,
            settings: BusSettings::new(random_node()),
            password_file: None,
        }
    }

    /// Reads the password file, if one is set (a trailing line end is not part of it).
    pub fn load_password(&mut self) -> Result<(), String> {
        let Some(path) = &self.password_file else {
            return Ok(());
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "chat bus: cannot read the password file {}: {e}",
                path.display()
            )
        })?;
        let password = text.trim_end_matches(['\r', '\n']).to_owned();
        if password.is_empty() {
            return Err(format!(
                "chat bus: the password file {} is empty",
                path.display()
            ));
        }
        self.settings.password = Some(password);
        Ok(())
    }
}

/// The longest node name: `guest-NODE-N` must stay a valid nick (32 characters).
pub const MAX_NODE: usize = 12;

/// Checks a node name: 1-12 of `A-Z a-z 0-9 _ -`.
pub fn check_node(node: &str) -> Result<(), String> {
    let ok = (1..=MAX_NODE).contains(&node.len())
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{node}` is not a node name: 1-{MAX_NODE} characters from A-Z a-z 0-9 _ -"
        ))
    }
}

/// Checks a channel name: printable ASCII without spaces, at most 128 bytes.
pub fn check_channel(channel: &str) -> Result<(), String> {
    let ok = (1..=128).contains(&channel.len()) && channel.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{channel}` is not a channel name: 1-128 printable ASCII characters, no spaces"
        ))
    }
}

/// Six random lower-case letters and digits: hosts that were not given a node name still
/// differ, with near certainty.
fn random_node() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 6];
    // Without the OS's randomness the clock's nanoseconds still tell hosts apart.
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        bytes = (u64::from(nanos) ^ u64::from(std::process::id()))
            .to_le_bytes()
            .first_chunk()
            .copied()
            .unwrap_or_default();
    }
    bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect()
}

/// `[chat]` in the file.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table of chat settings")]
pub(super) struct ChatFile {
    pub(super) bus: Option<BusFile>,
}

/// `[chat.bus]` in the file.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table of chat bus settings")]
pub(super) struct BusFile {
    redis: Option<String>,
    password_file: Option<PathBuf>,
    username: Option<String>,
    channel: Option<String>,
    node: Option<String>,
    presence_ttl: Option<NonZeroDur>,
    max_backlog: Option<Size>,
    max_pending: Option<Size>,
    connect_timeout: Option<NonZeroDur>,
    max_remote_members: Option<Count>,
}

impl BusFile {
    /// Applies the file's keys over `bus` (a bus starts only with an address).
    pub(super) fn over(self, bus: Option<ChatBus>) -> Result<Option<ChatBus>, String> {
        let mut bus = match (bus, self.redis) {
            (_, Some(addr)) => ChatBus::new(addr.parse()?),
            (Some(bus), None) => bus,
            (None, None) => {
                return Err("[chat.bus] needs `redis = \"HOST:PORT\"` (or unix:PATH)".to_owned());
            }
        };
        let s = &mut bus.settings;
        if let Some(channel) = self.channel {
            check_channel(&channel)?;
            s.channel = channel;
        }
        if let Some(node) = self.node {
            check_node(&node)?;
            s.node = node;
        }
        if self.username.is_some() {
            s.username = self.username;
        }
        if let Some(d) = self.presence_ttl {
            s.presence_ttl = d.0.max(Duration::from_secs(1));
        }
        if let Some(n) = self.max_backlog {
            s.max_backlog = n.0;
        }
        if let Some(n) = self.max_pending {
            s.max_pending = n.0;
        }
        if let Some(d) = self.connect_timeout {
            s.connect_timeout = d.0;
        }
        if let Some(n) = self.max_remote_members {
            s.max_remote = n.0;
        }
        if self.password_file.is_some() {
            bus.password_file = self.password_file;
        }
        Ok(Some(bus))
    }

    /// The file's form of `bus`, for `--print-config` (the password stays in its file).
    pub(super) fn of(bus: &ChatBus) -> Self {
        let s = &bus.settings;
        BusFile {
            redis: Some(bus.addr.to_string()),
            password_file: bus.password_file.clone(),
            username: s.username.clone(),
            channel: Some(s.channel.clone()),
            node: Some(s.node.clone()),
            presence_ttl: Some(NonZeroDur(s.presence_ttl)),
            max_backlog: Some(Size(s.max_backlog)),
            max_pending: Some(Size(s.max_pending)),
            connect_timeout: Some(NonZeroDur(s.connect_timeout)),
            max_remote_members: Some(Count(s.max_remote)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_nodes_and_channels() {
        assert_eq!(
            "127.0.0.1:6379".parse::<BusAddr>(),
            Ok(BusAddr::Tcp("127.0.0.1:6379".parse().unwrap()))
        );
        assert_eq!(
            "unix:/run/redis.sock".parse::<BusAddr>(),
            Ok(BusAddr::Unix("/run/redis.sock".into()))
        );
        assert!("unix:".parse::<BusAddr>().is_err());
        assert!("no-port".parse::<BusAddr>().is_err());
        assert!(check_node("h-1_A").is_ok());
        for bad in ["", "a b", "x".repeat(13).as_str(), "é"] {
            assert!(check_node(bad).is_err(), "{bad}");
        }
        assert!(check_channel("socklab:chat").is_ok());
        assert!(check_channel("a b").is_err());
        let a = random_node();
        assert!(check_node(&a).is_ok(), "{a}");
        assert_ne!(a, random_node());
    }
}
