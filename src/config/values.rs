//! The value types of the configuration file. Each checks its own range while the file is read,
//! so that a bad value is reported with its key and line, and each writes itself back in the
//! form it reads (sizes with binary units, durations in humantime), for `--print-config`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Unexpected};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{MAX_DURATION, MAX_WORKERS};
use crate::addr::ListenAddr;
use crate::kind::ServiceKind;

/// Parses a size as the flags take it: bytes, or a number with a binary unit (64KiB, 1MiB).
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let n = parse_size::Config::new()
        .with_binary()
        .parse_size(s)
        .map_err(|e| format!("`{s}` is not a size such as 65536, 64KiB or 1MiB: {e}"))?;
    usize::try_from(n).map_err(|_| format!("`{s}` is too large"))
}

/// Parses a duration as the flags take it (humantime: 300s, 10m, 500ms).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration such as 300s, 1m or 500ms: {e}"))
}

/// Writes a size the way a person would: with the largest binary unit that divides it exactly.
fn format_bytes(n: usize) -> String {
    const UNITS: [(usize, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (unit, name) in UNITS {
        if n != 0 && n.is_multiple_of(unit) {
            return format!("{}{name}", n / unit);
        }
    }
    n.to_string()
}

fn serialize_bytes<S: Serializer>(n: usize, s: S) -> Result<S::Ok, S::Error> {
    let text = format_bytes(n);
    if text.bytes().all(|b| b.is_ascii_digit()) {
        s.serialize_u64(n as u64)
    } else {
        s.serialize_str(&text)
    }
}

/// A size key before its range is checked: bytes, or a word some keys take instead of a size.
#[derive(Debug)]
pub enum RawSize {
    Bytes(usize),
    Word(String),
}

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = RawSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a size in bytes: an integer such as 65536 or a string such as \"64KiB\"",
                )
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawSize, E> {
                usize::try_from(v)
                    .map(RawSize::Bytes)
                    .map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawSize, E> {
                usize::try_from(v)
                    .map(RawSize::Bytes)
                    .map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawSize, E> {
                match parse_bytes(v) {
                    Ok(n) => Ok(RawSize::Bytes(n)),
                    // A bare word is for the key to judge (`kernel`, `unlimited`); anything else
                    // was meant as a size.
                    Err(_) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_lowercase()) => {
                        Ok(RawSize::Word(v.to_owned()))
                    }
                    Err(e) => Err(E::custom(e)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A size of at least one byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub usize);

impl TryFrom<RawSize> for Size {
    type Error = String;
    fn try_from(raw: RawSize) -> Result<Self, String> {
        match raw {
            RawSize::Bytes(0) => Err("must be at least 1 byte".to_owned()),
            RawSize::Bytes(n) => Ok(Size(n)),
            RawSize::Word(w) => Err(format!(
                "`{w}` is not a size such as 65536, \"64KiB\" or \"1MiB\""
            )),
        }
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Size::try_from(RawSize::deserialize(d)?).map_err(de::Error::custom)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_bytes(self.0, s)
    }
}

/// A size that may be 0 (a cap that keeps nothing is a choice, not a mistake).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeOrZero(pub usize);

impl<'de> Deserialize<'de> for SizeOrZero {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match RawSize::deserialize(d)? {
            RawSize::Bytes(n) => Ok(SizeOrZero(n)),
            RawSize::Word(w) => Err(de::Error::custom(format!(
                "`{w}` is not a size such as 65536, \"64KiB\" or \"1MiB\""
            ))),
        }
    }
}

impl Serialize for SizeOrZero {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_bytes(self.0, s)
    }
}

/// SO_RCVBUF or SO_SNDBUF: a size, or `"kernel"` to leave the kernel's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufSize(pub Option<usize>);

impl<'de> Deserialize<'de> for BufSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match RawSize::deserialize(d)? {
            RawSize::Word(w) if w == "kernel" => Ok(BufSize(None)),
            RawSize::Word(w) => Err(de::Error::custom(format!(
                "`{w}` is neither a size such as \"256KiB\" nor \"kernel\" (the kernel's default)"
            ))),
            RawSize::Bytes(0) => Err(de::Error::custom(
                "a socket buffer must be at least 1 byte; write \"kernel\" for the kernel's default",
            )),
            RawSize::Bytes(n) => Ok(BufSize(Some(n))),
        }
    }
}

impl Serialize for BufSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(n) => serialize_bytes(n, s),
            None => s.serialize_str("kernel"),
        }
    }
}

/// The largest upload: a size, or `"unlimited"` (no limit but the disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadLimit(pub Option<usize>);

impl<'de> Deserialize<'de> for UploadLimit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match RawSize::deserialize(d)? {
            RawSize::Word(w) if w == "unlimited" => Ok(UploadLimit(None)),
            RawSize::Word(w) => Err(de::Error::custom(format!(
                "`{w}` is neither a size such as \"1GiB\" nor \"unlimited\""
            ))),
            RawSize::Bytes(n) => Ok(UploadLimit(Some(n))),
        }
    }
}

impl Serialize for UploadLimit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(n) => serialize_bytes(n, s),
            None => s.serialize_str("unlimited"),
        }
    }
}

/// `limits.max_conns_per_ip`: a count (0: no limit) or `"auto"` (`None`: a tenth of
/// `max_conns`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerIp(pub Option<usize>);

impl<'de> Deserialize<'de> for PerIp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = PerIp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a count of connections (0: no limit) or \"auto\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PerIp, E> {
                usize::try_from(v)
                    .map(|n| PerIp(Some(n)))
                    .map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PerIp, E> {
                usize::try_from(v)
                    .map(|n| PerIp(Some(n)))
                    .map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PerIp, E> {
                match v {
                    "auto" => Ok(PerIp(None)),
                    _ => Err(E::invalid_value(Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for PerIp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(n) => s.serialize_u64(n as u64),
            None => s.serialize_str("auto"),
        }
    }
}

/// A duration written as humantime ("300s", "10m", "500ms"), at most `MAX_DURATION`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration with its unit, such as \"300s\", \"10m\" or \"500ms\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                let d = parse_duration(v).map_err(E::custom)?;
                if d > MAX_DURATION {
                    return Err(E::custom(format!(
                        "`{v}` is longer than the {} days a timeout may last",
                        MAX_DURATION.as_secs() / 86_400
                    )));
                }
                Ok(Dur(d))
            }
        }
        d.deserialize_str(V)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

/// A duration that must be longer than 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NonZeroDur(pub Duration);

impl<'de> Deserialize<'de> for NonZeroDur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Dur(v) = Dur::deserialize(d)?;
        if v.is_zero() {
            return Err(de::Error::custom("must be longer than 0"));
        }
        Ok(NonZeroDur(v))
    }
}

impl Serialize for NonZeroDur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Dur(self.0).serialize(s)
    }
}

/// A count of at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct Count(pub usize);

impl TryFrom<u64> for Count {
    type Error = String;
    fn try_from(v: u64) -> Result<Self, String> {
        match usize::try_from(v) {
            Ok(0) => Err("must be at least 1".to_owned()),
            Ok(n) => Ok(Count(n)),
            Err(_) => Err(format!("{v} is too large")),
        }
    }
}

impl From<Count> for u64 {
    fn from(c: Count) -> u64 {
        c.0 as u64
    }
}

/// The listen backlog: 1 to `i32::MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Backlog(pub i32);

impl TryFrom<i64> for Backlog {
    type Error = String;
    fn try_from(v: i64) -> Result<Self, String> {
        match i32::try_from(v) {
            Ok(n) if n >= 1 => Ok(Backlog(n)),
            _ => Err(format!("must be between 1 and {}, not {v}", i32::MAX)),
        }
    }
}

impl From<Backlog> for i64 {
    fn from(b: Backlog) -> i64 {
        i64::from(b.0)
    }
}

/// Reactor threads: 1 to `MAX_WORKERS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct Workers(pub usize);

impl TryFrom<u64> for Workers {
    type Error = String;
    fn try_from(v: u64) -> Result<Self, String> {
        match usize::try_from(v) {
            Ok(n) if (1..=MAX_WORKERS).contains(&n) => Ok(Workers(n)),
            _ => Err(format!("must be between 1 and {MAX_WORKERS}, not {v}")),
        }
    }
}

impl From<Workers> for u64 {
    fn from(w: Workers) -> u64 {
        w.0 as u64
    }
}

/// A listening address in the flags' syntax: `HOST:PORT`, `unix:PATH` or `unixgram:PATH`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Addr(pub ListenAddr);

impl TryFrom<String> for Addr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse().map(Addr).map_err(|e| e.to_string())
    }
}

impl From<Addr> for String {
    fn from(a: Addr) -> String {
        a.0.to_string()
    }
}

/// A service, by the name the flags use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Service(pub ServiceKind);

impl TryFrom<String> for Service {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        ServiceKind::from_name(&s).map(Service).ok_or_else(|| {
            let names: Vec<&str> = ServiceKind::ALL.iter().map(|k| k.name()).collect();
            format!("`{s}` is not a service; one of {}", names.join(", "))
        })
    }
}

impl From<Service> for String {
    fn from(s: Service) -> String {
        s.0.name().to_owned()
    }
}

/// How much the server logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// Steps from `info`: -2 for `error` to 2 for `trace`, as `-q` and `-v` count them.
    pub fn offset(self) -> i16 {
        match self {
            LogLevel::Error => -2,
            LogLevel::Warn => -1,
            LogLevel::Info => 0,
            LogLevel::Debug => 1,
            LogLevel::Trace => 2,
        }
    }

    /// The level `offset` steps from `info`, clamped to the ends.
    pub fn from_offset(offset: i16) -> LogLevel {
        match offset {
            i16::MIN..=-2 => LogLevel::Error,
            -1 => LogLevel::Warn,
            0 => LogLevel::Info,
            1 => LogLevel::Debug,
            _ => LogLevel::Trace,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_written_with_the_largest_exact_unit() {
        assert_eq!(format_bytes(0), "0");
        assert_eq!(format_bytes(1000), "1000");
        assert_eq!(format_bytes(64 * 1024), "64KiB");
        assert_eq!(format_bytes(1536 * 1024), "1536KiB");
        assert_eq!(format_bytes(1 << 20), "1MiB");
        assert_eq!(format_bytes(3 << 30), "3GiB");
        for n in [1, 1000, 65536, 1536 * 1024, 1 << 20, 3 << 30] {
            assert_eq!(parse_bytes(&format_bytes(n)), Ok(n));
        }
    }

    #[test]
    fn log_levels_count_like_v_and_q() {
        for l in [
            LogLevel::Error,
            LogLevel::Warn,
            LogLevel::Info,
            LogLevel::Debug,
            LogLevel::Trace,
        ] {
            assert_eq!(LogLevel::from_offset(l.offset()), l);
        }
        assert_eq!(LogLevel::from_offset(-7), LogLevel::Error);
        assert_eq!(LogLevel::from_offset(9), LogLevel::Trace);
    }
}
