//! The datagram services (udp-echo, udp-upper, udp-chat, time, discovery) under an
//! `arbitrary` list of datagrams from a few senders, with time moving forward.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};

use crate::kind::ServiceKind;
use crate::service::{DatagramService, DatagramSettings, Peer};

/// One datagram: from which of a few senders, after how long, with what payload.
#[derive(Debug, Arbitrary)]
struct Datagram {
    sender: u8,
    after_ms: u16,
    payload: Vec<u8>,
}

#[derive(Debug, Arbitrary)]
enum Kind {
    Echo,
    Upper,
    Chat,
    Time,
    Discovery,
}

/// A reply goes only to someone who has sent; echo and upper answer their sender with the
/// payload (upper-cased); a reply is never larger than a datagram can be.
pub fn fuzz_datagram(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let (Ok(kind), Ok(grams)) = (Kind::arbitrary(&mut u), Vec::<Datagram>::arbitrary(&mut u))
    else {
        return;
    };
    let kind = match kind {
        Kind::Echo => ServiceKind::UdpEcho,
        Kind::Upper => ServiceKind::UdpUpper,
        Kind::Chat => ServiceKind::UdpChat,
        Kind::Time => ServiceKind::Time,
        Kind::Discovery => ServiceKind::Discovery,
    };
    let settings = DatagramSettings {
        udp_chat_max_members: 4,
        ..DatagramSettings::default()
    };
    let Some(mut svc) = DatagramService::for_kind(kind, &settings) else {
        return;
    };
    let wall = chrono::Local::now();
    let mut now = Instant::now();
    let (mut reply, mut targets) = (Vec::new(), Vec::new());
    let mut seen: Vec<Peer> = Vec::new();
    for g in &grams {
        now += Duration::from_millis(u64::from(g.after_ms));
        let from = Peer::Inet(SocketAddr::from((
            Ipv4Addr::LOCALHOST,
            1000 + u16::from(g.sender % 8),
        )));
        if !seen.contains(&from) {
            seen.push(from.clone());
        }
        let taken = svc.on_datagram(
            &from,
            &g.payload,
            now,
            Some(&wall),
            &mut reply,
            &mut targets,
        );
        assert!(
            taken || targets.is_empty(),
            "a refused datagram was answered"
        );
        assert!(reply.len() <= 65_507, "reply of {} bytes", reply.len());
        for t in &targets {
            assert!(seen.contains(t), "reply to {t:?}, who never sent");
        }
        match kind {
            ServiceKind::UdpEcho => {
                assert_eq!(reply, g.payload);
                assert_eq!(targets, [from]);
            }
            ServiceKind::UdpUpper => {
                assert_eq!(reply, g.payload.to_ascii_uppercase());
                assert_eq!(targets, [from]);
            }
            ServiceKind::UdpChat => {
                assert!(!targets.contains(&from), "udp-chat echoed to its sender");
                let text = !g.payload.is_empty() && std::str::from_utf8(&g.payload).is_ok();
                assert!(
                    text || targets.is_empty(),
                    "udp-chat relayed a non-text datagram"
                );
            }
            _ => assert!(targets.len() <= 1),
        }
    }
}
