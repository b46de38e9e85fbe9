//! `socklab ipmsg`: sends one message to an IP Messenger client (IPMSG, 飞秋/FeiQ), as a
//! worked example of talking to somebody else's datagram protocol, and waits for its receipt.
//!
//! The datagram is `1:<packet-no>:<user>:<host>:<command>:<text>`, the whole of it in UTF-8
//! or GBK (what FeiQ and older Chinese clients use). The command is IPMSG_SENDMSG with
//! IPMSG_SENDCHECKOPT (asks for a receipt); the receipt is a datagram whose command's low
//! byte is IPMSG_RECVMSG and whose text is our packet number.
//!
//! Exactly one datagram per call, on purpose: there is no count or repeat option, so this
//! cannot become the "FeiQ bomb" loop of socket tutorials.

use std::borrow::Cow;
use std::io::{self, ErrorKind};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, ValueEnum};

/// The port IP Messenger clients listen on.
pub const DEFAULT_PORT: u16 = 2425;
/// The protocol version field.
pub const VERSION: u32 = 1;
/// IPMSG_SENDMSG: a message.
pub const IPMSG_SENDMSG: u32 = 0x20;
/// IPMSG_RECVMSG: the receipt for a message.
pub const IPMSG_RECVMSG: u32 = 0x21;
/// IPMSG_SENDCHECKOPT: the sender wants a receipt.
pub const IPMSG_SENDCHECKOPT: u32 = 0x100;
/// Largest datagram sent: classic IP Messenger clients read into an 8 KiB buffer.
pub const MAX_DATAGRAM: usize = 8192;

/// How the datagram's text is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Encoding {
    /// UTF-8 (IP Messenger 4 and later with the UTF-8 option, most Linux clients).
    Utf8,
    /// GBK (FeiQ and older Chinese clients).
    Gbk,
}

/// `socklab ipmsg`: send one message to an IP Messenger client.
#[derive(Debug, Args)]
pub struct IpmsgArgs {
    /// The client: HOST or HOST:PORT (port 2425 when not given; [V6]:PORT for IPv6).
    #[arg(value_name = "HOST[:PORT]")]
    pub target: String,
    /// The message.
    pub message: String,
    /// The encoding of the datagram.
    #[arg(long, value_enum, default_value_t = Encoding::Utf8)]
    pub encoding: Encoding,
    /// The user name shown to the receiver (default: $USER, else "socklab").
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// How long to wait for the receipt: 500ms, 2s… (a plain number is milliseconds).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = super::parse_duration_or_ms)]
    pub timeout: Duration,
}

/// Why the message could not be built or sent.
#[derive(Debug, thiserror::Error)]
pub enum IpmsgError {
    #[error("the {field} contains ':', which separates the fields of the datagram")]
    Colon { field: &'static str },
    #[error("the {field} contains a NUL byte, which would end it early at the receiver")]
    Nul { field: &'static str },
    #[error("GBK cannot encode {ch:?} (U+{:04X})", u32::from(*.ch))]
    Unencodable { ch: char },
    #[error("the datagram would be {len} bytes, at most {MAX_DATAGRAM}")]
    TooLong { len: usize },
    #[error("cannot resolve {target}: {source}")]
    Resolve { target: String, source: io::Error },
    #[error("{target} resolves to no address")]
    NoAddress { target: String },
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Builds the datagram `1:<packet_no>:<user>:<host>:<command>:<text>` in `encoding`. The text
/// is the last field, so colons in it are kept as they are; the user and host cannot hold
/// one. Nothing is sent when a character cannot be encoded.
pub fn encode_message(
    packet_no: u64,
    user: &str,
    host: &str,
    command: u32,
    text: &str,
    encoding: Encoding,
) -> Result<Vec<u8>, IpmsgError> {
    for (field, value) in [("user name", user), ("host name", host)] {
        if value.contains(':') {
            return Err(IpmsgError::Colon { field });
        }
    }
    for (field, value) in [("user name", user), ("host name", host), ("message", text)] {
        if value.contains('\0') {
            return Err(IpmsgError::Nul { field });
        }
    }
    let datagram = format!("{VERSION}:{packet_no}:{user}:{host}:{command}:{text}");
    let bytes = match encoding {
        Encoding::Utf8 => datagram.into_bytes(),
        Encoding::Gbk => encode_gbk(&datagram)?,
    };
    if bytes.len() > MAX_DATAGRAM {
        return Err(IpmsgError::TooLong { len: bytes.len() });
    }
    Ok(bytes)
}

/// `s` in GBK, or the first character GBK has no code for.
fn encode_gbk(s: &str) -> Result<Vec<u8>, IpmsgError> {
    let mut encoder = encoding_rs::GBK.new_encoder();
    // GBK takes at most 2 bytes per character and UTF-8 at least 1, so 2 × len always fits;
    // the encoder's own bound is used when it has one.
    let cap = encoder
        .max_buffer_length_from_utf8_without_replacement(s.len())
        .unwrap_or_else(|| s.len().saturating_mul(2));
    let mut out = vec![0u8; cap];
    let (result, _read, written) = encoder.encode_from_utf8_without_replacement(s, &mut out, true);
    match result {
        encoding_rs::EncoderResult::InputEmpty => {
            out.truncate(written);
            Ok(out)
        }
        encoding_rs::EncoderResult::Unmappable(ch) => Err(IpmsgError::Unencodable { ch }),
        // Cannot happen with the bound above; say so rather than send a cut message.
        encoding_rs::EncoderResult::OutputFull => Err(IpmsgError::TooLong { len: s.len() }),
    }
}

/// The packet number acknowledged by `bytes` when it is a receipt (IPMSG_RECVMSG in the
/// command's low byte); `None` for anything else. The caller compares it with its own packet
/// number: a receipt for another packet is not ours.
pub fn parse_receipt(bytes: &[u8], encoding: Encoding) -> Option<u64> {
    // Malformed bytes in the user or host name become U+FFFD; only the command and the text
    // fields are read, and they are ASCII digits in either encoding.
    let text: Cow<str> = match encoding {
        Encoding::Utf8 => String::from_utf8_lossy(bytes),
        Encoding::Gbk => encoding_rs::GBK.decode_without_bom_handling(bytes).0,
    };
    let mut fields = text.splitn(6, ':');
    let _version = fields.next()?;
    let _packet_no = fields.next()?;
    let _user = fields.next()?;
    let _host = fields.next()?;
    let command: u32 = fields.next()?.trim().parse().ok()?;
    // Real clients end the datagram with a NUL (and sometimes more sections after it).
    let acked = fields.next()?.split('\0').next()?.trim();
    if command & 0xff != IPMSG_RECVMSG {
        return None;
    }
    acked.parse().ok()
}

/// Runs `socklab ipmsg`: exit 0 when the receipt came back in time.
pub fn run(args: &IpmsgArgs) -> ExitCode {
    match send(args) {
        Ok(Some(from)) => {
            println!("receipt received from {from}");
            ExitCode::SUCCESS
        }
        Ok(None) => {
            println!("no receipt within {} ms", args.timeout.as_millis());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("socklab ipmsg: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Sends the one datagram and waits for its receipt; the receipt's source, or `None` when the
/// timeout passed.
fn send(args: &IpmsgArgs) -> Result<Option<SocketAddr>, IpmsgError> {
    let target = resolve(&args.target)?;
    // The packet number is the time, as IP Messenger clients do; a clock before 1970 gives 0.
    let packet_no = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let user = args
        .user
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "socklab".to_owned());
    let command = IPMSG_SENDMSG | IPMSG_SENDCHECKOPT;
    let datagram = encode_message(
        packet_no,
        &user,
        &hostname(),
        command,
        &args.message,
        args.encoding,
    )?;

    let local: SocketAddr = match target.ip() {
        IpAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
        IpAddr::V6(_) => ([0u16; 8], 0).into(),
    };
    let socket = UdpSocket::bind(local)?;
    socket.send_to(&datagram, target)?;

    // Not connected: a client may answer from another port than the one we sent to, so
    // datagrams are filtered by source address and content instead.
    let deadline = Instant::now() + args.timeout;
    let mut buf = vec![0u8; 65_536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        socket.set_read_timeout(Some(left))?;
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                let ours = from.ip() == target.ip()
                    && buf.get(..n).and_then(|d| parse_receipt(d, args.encoding))
                        == Some(packet_no);
                if ours {
                    return Ok(Some(from));
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::Interrupted | ErrorKind::WouldBlock | ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// `HOST`, `HOST:PORT`, `[V6]:PORT` or a bare IPv6 address, resolved; port 2425 by default.
fn resolve(target: &str) -> Result<SocketAddr, IpmsgError> {
    let resolve_err = |source| IpmsgError::Resolve {
        target: target.to_owned(),
        source,
    };
    let mut addrs = if let Ok(addr) = target.parse::<SocketAddr>() {
        vec![addr]
    } else if let Ok(ip) = target.parse::<IpAddr>() {
        vec![SocketAddr::new(ip, DEFAULT_PORT)]
    } else if target.contains(':') {
        target.to_socket_addrs().map_err(resolve_err)?.collect()
    } else {
        (target, DEFAULT_PORT)
            .to_socket_addrs()
            .map_err(resolve_err)?
            .collect()
    };
    // Prefer IPv4: IP Messenger clients rarely listen on IPv6.
    addrs.sort_by_key(|a| !a.is_ipv4());
    addrs
        .into_iter()
        .next()
        .ok_or_else(|| IpmsgError::NoAddress {
            target: target.to_owned(),
        })
}

/// This machine's host name, as IP Messenger shows it; `localhost` when it cannot be read.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().replace(':', "-"))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CMD: u32 = IPMSG_SENDMSG | IPMSG_SENDCHECKOPT;

    #[test]
    fn command_is_288() {
        assert_eq!(CMD, 288);
    }

    #[test]
    fn utf8_message_round_trip() {
        let d = encode_message(
            1700000000,
            "ann",
            "box",
            CMD,
            "hello：世界 a:b",
            Encoding::Utf8,
        )
        .expect("encodes");
        assert_eq!(
            String::from_utf8(d).expect("UTF-8"),
            "1:1700000000:ann:box:288:hello：世界 a:b"
        );
    }

    #[test]
    fn gbk_message_round_trip() {
        let d = encode_message(42, "用户", "box", CMD, "hello：世界 a:b", Encoding::Gbk)
            .expect("encodes");
        // 世 is CA C0 in GBK, the full-width colon A3 BA.
        assert!(d.windows(2).any(|w| w == [0xCA, 0xC0]));
        assert!(d.windows(2).any(|w| w == [0xA3, 0xBA]));
        let (text, had_errors) = encoding_rs::GBK.decode_without_bom_handling(&d);
        assert!(!had_errors);
        let fields: Vec<&str> = text.splitn(6, ':').collect();
        assert_eq!(fields, ["1", "42", "用户", "box", "288", "hello：世界 a:b"]);
    }

    #[test]
    fn gbk_cannot_encode_everything() {
        let e = encode_message(1, "u", "h", CMD, "hi 😀", Encoding::Gbk).unwrap_err();
        assert!(matches!(e, IpmsgError::Unencodable { ch: '😀' }), "{e}");
        assert!(e.to_string().contains("U+1F600"));
        // The same text is fine in UTF-8.
        assert!(encode_message(1, "u", "h", CMD, "hi 😀", Encoding::Utf8).is_ok());
    }

    #[test]
    fn colons_and_nuls_in_the_wrong_place_are_refused() {
        assert!(matches!(
            encode_message(1, "a:b", "h", CMD, "x", Encoding::Utf8),
            Err(IpmsgError::Colon { field: "user name" })
        ));
        assert!(matches!(
            encode_message(1, "a", "h:1", CMD, "x", Encoding::Utf8),
            Err(IpmsgError::Colon { field: "host name" })
        ));
        assert!(matches!(
            encode_message(1, "a", "h", CMD, "x\0y", Encoding::Gbk),
            Err(IpmsgError::Nul { field: "message" })
        ));
    }

    #[test]
    fn too_long_is_refused() {
        let text = "x".repeat(MAX_DATAGRAM);
        assert!(matches!(
            encode_message(1, "u", "h", CMD, &text, Encoding::Utf8),
            Err(IpmsgError::TooLong { .. })
        ));
    }

    #[test]
    fn receipts_are_parsed() {
        assert_eq!(
            parse_receipt(b"1:99:recv:host:33:42", Encoding::Utf8),
            Some(42)
        );
        // A NUL terminator and option bits in the command, as real clients send.
        assert_eq!(
            parse_receipt(b"1:99:recv:host:8388641:42\0", Encoding::Utf8),
            Some(42)
        );
        // A GBK user name.
        let gbk = encoding_rs::GBK.encode("1:99:飞秋:主机:33:1700000000").0;
        assert_eq!(parse_receipt(&gbk, Encoding::Gbk), Some(1700000000));
        // …which the UTF-8 reading survives too, since only digits are read.
        assert_eq!(parse_receipt(&gbk, Encoding::Utf8), Some(1700000000));
    }

    #[test]
    fn a_receipt_for_another_packet_is_not_ours() {
        let ours = 1700000000;
        let other = parse_receipt(b"1:99:recv:host:33:1699999999", Encoding::Utf8);
        assert_eq!(other, Some(1699999999));
        assert_ne!(other, Some(ours));
    }

    #[test]
    fn other_datagrams_are_not_receipts() {
        for d in [
            &b""[..],
            b"1:99:recv:host:32:42",  // a message, not a receipt
            b"1:99:recv:host:288:42", // a message asking for a receipt
            b"1:99:recv:host:33:",    // no packet number
            b"1:99:recv:host:33:abc", // not a number
            b"1:99:recv:host:33",     // no text field
            b"1:99:recv:host:x33:42", // command not a number
            b"1:99:recv:host:289:42", // 0x121: low byte 0x21 is RECVMSG…
        ] {
            let got = parse_receipt(d, Encoding::Utf8);
            if d.ends_with(b"289:42") {
                // …so this one is a receipt (option bits are ignored).
                assert_eq!(got, Some(42));
            } else {
                assert_eq!(got, None, "{:?}", String::from_utf8_lossy(d));
            }
        }
    }

    #[test]
    fn targets_resolve_with_the_default_port() {
        let a = resolve("127.0.0.1").expect("resolves");
        assert_eq!(a, SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)));
        let a = resolve("127.0.0.1:9").expect("resolves");
        assert_eq!(a.port(), 9);
        let a = resolve("::1").expect("resolves");
        assert_eq!(
            a,
            SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], DEFAULT_PORT))
        );
        let a = resolve("[::1]:9").expect("resolves");
        assert_eq!(a.port(), 9);
        let a = resolve("localhost").expect("resolves");
        assert_eq!(a.port(), DEFAULT_PORT);
    }
}
