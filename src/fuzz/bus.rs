//! The chat bus's input from Redis, fuzzed: bytes cut into reads of the input's choosing go
//! into a worker's Redis session (`service/redis_bus.rs`), and everything it hears goes into a
//! room on the bus, as the reactor does. Whatever Redis sends, nothing panics, a fault only
//! ever means "reconnect", and what a member would read is whole UTF-8 lines.

use std::time::{Duration, Instant};

use crate::service::chat::ChatRoom;
use crate::service::chat::bus_message::Origin;
use crate::service::redis_bus::{BusSettings, Heard, RedisBus};

/// `data`: its first byte picks the read size (1-256); the rest is what Redis sends.
pub fn fuzz_chat_bus(data: &[u8]) {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut) + 1;
    let origin = Origin {
        node: "me".into(),
        worker: 0,
    };
    let mut bus = RedisBus::new(BusSettings::new("me".into()), origin.clone(), 4096);
    let mut room = ChatRoom::with_bus(origin, 64);
    let now = Instant::now();
    bus.connected();
    let mut held: Vec<u8> = Vec::new();
    let mut heard = Vec::new();
    for chunk in stream.chunks(cut) {
        held.extend_from_slice(chunk);
        heard.clear();
        match bus.on_input(&held, &mut heard) {
            Ok(used) => {
                assert!(used <= held.len(), "used more than it had");
                held.drain(..used);
            }
            Err(_) => {
                // A fault: the reactor cuts the connection and makes a new one.
                held.clear();
                let wait = bus.lost();
                assert!(wait <= crate::service::redis_bus::RETRY_MAX);
                let (mut notice, mut told) = (Vec::new(), Vec::new());
                room.bus_changed(false, &mut notice, &mut told);
                bus.connected();
                continue;
            }
        }
        for h in heard.drain(..) {
            let mut lines = Vec::new();
            match h {
                Heard::Up => {
                    let mut told = Vec::new();
                    room.bus_changed(true, &mut lines, &mut told);
                }
                Heard::Event(from, event) => room.apply_remote(&from, &event, now, &mut lines),
                Heard::Claim { member, nick, won } => {
                    let mut others = Vec::new();
                    room.claim_answered(member, &nick, won, &mut lines, &mut others);
                    lines.extend(others);
                }
            }
            check_lines(&lines);
        }
        let mut lines = Vec::new();
        room.bus_tick(
            now + Duration::from_secs(60),
            Duration::from_secs(15),
            &mut lines,
        );
        check_lines(&lines);
    }
}

/// What a member reads: UTF-8, whole lines, no control characters inside one.
fn check_lines(bytes: &[u8]) {
    let text = std::str::from_utf8(bytes).expect("lines for members are UTF-8");
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "a partial line: {text:?}"
    );
    for line in text.lines() {
        assert!(
            !line.chars().any(char::is_control),
            "a control character: {line:?}"
        );
    }
}
