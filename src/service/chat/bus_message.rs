//! What one host's chat room tells the others over the Redis bus (PROTOCOL.md, "Chat across
//! hosts"): one event per PUBLISH payload, a single line of UTF-8 text, checked field by field
//! on the way in so that nothing another host (or anyone who can publish on the channel) sends
//! reaches a member raw.
//!
//! `socklab-chat/1 ORIGIN KIND ARGS…` where ORIGIN is `NODE/WORKER`, and KIND with its
//! arguments is one of `say NICK TEXT`, `me NICK TEXT`, `join NICK`, `leave NICK`,
//! `nick OLD NEW`, `here NICK…` (a heartbeat: some of the origin's members, still there) and
//! `gone` (the origin stops: all its members left).

use std::fmt;

use super::valid_nick;

/// The first word of every payload: the format and its version.
pub(crate) const MAGIC: &str = "socklab-chat/1";

/// Who published an event: a host's node name and the worker on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Origin {
    /// The host's node name (`[chat.bus] node`): unique among the hosts on one channel.
    pub(crate) node: String,
    /// The worker of that host whose members the event concerns.
    pub(crate) worker: u16,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.node, self.worker)
    }
}

/// One thing that happened in a host's part of the room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RoomEvent {
    /// A member's line.
    Said {
        nick: String,
        text: String,
    },
    /// A member's `/me` action.
    Acted {
        nick: String,
        action: String,
    },
    Joined {
        nick: String,
    },
    Left {
        nick: String,
    },
    Renamed {
        old: String,
        new: String,
    },
    /// Members of the origin still there (a heartbeat; a long list comes in several).
    Here {
        nicks: Vec<String>,
    },
    /// The origin stops: every member it announced is gone.
    Gone,
}

impl RoomEvent {
    /// The line a member reads for this event, as for a local one (PROTOCOL.md, "Line
    /// service"), with its line end; nothing for presence-only events.
    pub(crate) fn format_line(&self, out: &mut Vec<u8>) {
        let line = match self {
            RoomEvent::Said { nick, text } => format!("{nick} {text}\n"),
            RoomEvent::Acted { nick, action } => format!("* {nick} {action}\n"),
            RoomEvent::Joined { nick } => format!("* {nick} joined\n"),
            RoomEvent::Left { nick } => format!("* {nick} left\n"),
            RoomEvent::Renamed { old, new } => format!("* {old} is now {new}\n"),
            RoomEvent::Here { .. } | RoomEvent::Gone => return,
        };
        out.extend_from_slice(line.as_bytes());
    }

    /// Appends this event's payload, as published by `origin`.
    pub(crate) fn encode(&self, origin: &Origin, out: &mut Vec<u8>) {
        let body = match self {
            RoomEvent::Said { nick, text } => format!("say {nick} {text}"),
            RoomEvent::Acted { nick, action } => format!("me {nick} {action}"),
            RoomEvent::Joined { nick } => format!("join {nick}"),
            RoomEvent::Left { nick } => format!("leave {nick}"),
            RoomEvent::Renamed { old, new } => format!("nick {old} {new}"),
            RoomEvent::Here { nicks } => {
                let mut s = String::from("here");
                for n in nicks {
                    s.push(' ');
                    s.push_str(n);
                }
                s
            }
            RoomEvent::Gone => "gone".to_owned(),
        };
        out.extend_from_slice(format!("{MAGIC} {origin} {body}").as_bytes());
    }
}

/// Why a payload from the bus was not taken: it is ignored and counted, never delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Rejected {
    #[error("not socklab's chat format (no `{MAGIC}` first)")]
    NotOurs,
    #[error("longer than {limit} bytes")]
    TooLong { limit: usize },
    #[error("not UTF-8")]
    NotUtf8,
    #[error("a line end or control character inside")]
    Control,
    #[error("the origin is not NODE/WORKER")]
    BadOrigin,
    #[error("unknown event `{0}`")]
    UnknownKind(String),
    #[error("a nick that breaks the nick rules")]
    BadNick,
    #[error("missing text")]
    MissingText,
    #[error("extra words after the event")]
    Extra,
}

/// Reads a payload: who published it and what happened. `limit` bounds its length (a line).
pub(crate) fn decode(payload: &[u8], limit: usize) -> Result<(Origin, RoomEvent), Rejected> {
    if payload.len() > limit {
        return Err(Rejected::TooLong { limit });
    }
    let text = std::str::from_utf8(payload).map_err(|_| Rejected::NotUtf8)?;
    let rest = text
        .strip_prefix(MAGIC)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or(Rejected::NotOurs)?;
    if rest.chars().any(char::is_control) {
        return Err(Rejected::Control);
    }
    let (origin, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let origin = parse_origin(origin)?;
    let (kind, args) = rest.split_once(' ').unwrap_or((rest, ""));
    let event = match kind {
        "say" | "me" => {
            let (nick, text) = args.split_once(' ').ok_or(Rejected::MissingText)?;
            let nick = nick_of(nick)?;
            if text.is_empty() {
                return Err(Rejected::MissingText);
            }
            let text = text.to_owned();
            if kind == "say" {
                RoomEvent::Said { nick, text }
            } else {
                RoomEvent::Acted { nick, action: text }
            }
        }
        "join" => RoomEvent::Joined {
            nick: one_nick(args)?,
        },
        "leave" => RoomEvent::Left {
            nick: one_nick(args)?,
        },
        "nick" => {
            let (old, new) = args.split_once(' ').ok_or(Rejected::BadNick)?;
            RoomEvent::Renamed {
                old: nick_of(old)?,
                new: one_nick(new)?,
            }
        }
        "here" => {
            let nicks = args
                .split(' ')
                .filter(|n| !n.is_empty())
                .map(nick_of)
                .collect::<Result<Vec<_>, _>>()?;
            RoomEvent::Here { nicks }
        }
        "gone" if args.is_empty() => RoomEvent::Gone,
        "gone" => return Err(Rejected::Extra),
        other => {
            return Err(Rejected::UnknownKind(other.chars().take(16).collect()));
        }
    };
    Ok((origin, event))
}

fn parse_origin(s: &str) -> Result<Origin, Rejected> {
    let (node, worker) = s.split_once('/').ok_or(Rejected::BadOrigin)?;
    if !valid_nick(node) {
        return Err(Rejected::BadOrigin);
    }
    let worker = worker.parse().map_err(|_| Rejected::BadOrigin)?;
    Ok(Origin {
        node: node.to_owned(),
        worker,
    })
}

fn nick_of(s: &str) -> Result<String, Rejected> {
    if valid_nick(s) {
        Ok(s.to_owned())
    } else {
        Err(Rejected::BadNick)
    }
}

fn one_nick(s: &str) -> Result<String, Rejected> {
    if s.contains(' ') {
        return Err(Rejected::Extra);
    }
    nick_of(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin {
        Origin {
            node: "h1".into(),
            worker: 2,
        }
    }

    #[test]
    fn every_event_survives_the_bus() {
        let events = [
            RoomEvent::Said {
                nick: "alice".into(),
                text: "hello  there é".into(),
            },
            RoomEvent::Acted {
                nick: "bob".into(),
                action: "waves".into(),
            },
            RoomEvent::Joined {
                nick: "guest-h1-1".into(),
            },
            RoomEvent::Left { nick: "x".into() },
            RoomEvent::Renamed {
                old: "a".into(),
                new: "b".into(),
            },
            RoomEvent::Here {
                nicks: vec!["a".into(), "b".into()],
            },
            RoomEvent::Here { nicks: vec![] },
            RoomEvent::Gone,
        ];
        for ev in events {
            let mut payload = Vec::new();
            ev.encode(&origin(), &mut payload);
            assert_eq!(decode(&payload, 4096), Ok((origin(), ev.clone())), "{ev:?}");
        }
    }

    #[test]
    fn lines_read_as_local_ones() {
        let mut out = Vec::new();
        RoomEvent::Said {
            nick: "a".into(),
            text: "hi".into(),
        }
        .format_line(&mut out);
        RoomEvent::Renamed {
            old: "a".into(),
            new: "b".into(),
        }
        .format_line(&mut out);
        RoomEvent::Here { nicks: vec![] }.format_line(&mut out);
        assert_eq!(out, b"a hi\n* a is now b\n");
    }

    #[test]
    fn foreign_and_broken_payloads_are_rejected() {
        let cases: &[(&[u8], Rejected)] = &[
            (b"hello", Rejected::NotOurs),
            (b"{\"json\":1}", Rejected::NotOurs),
            (b"socklab-chat/1", Rejected::NotOurs),
            (b"socklab-chat/1 h1/0 say al\xffce hi", Rejected::NotUtf8),
            (
                b"socklab-chat/1 h1/0 say alice hi\nbob x",
                Rejected::Control,
            ),
            (b"socklab-chat/1 h1/0 say alice hi\r", Rejected::Control),
            (b"socklab-chat/1 h1 say alice hi", Rejected::BadOrigin),
            (b"socklab-chat/1 h 1/0 say alice hi", Rejected::BadOrigin),
            (b"socklab-chat/1 h1/x say alice hi", Rejected::BadOrigin),
            (b"socklab-chat/1 h1/99999 join a", Rejected::BadOrigin),
            (
                b"socklab-chat/1 h1/0 shout alice hi",
                Rejected::UnknownKind("shout".into()),
            ),
            (b"socklab-chat/1 h1/0 say alice", Rejected::MissingText),
            (b"socklab-chat/1 h1/0 say alice ", Rejected::MissingText),
            (b"socklab-chat/1 h1/0 say al:ce hi", Rejected::BadNick),
            (b"socklab-chat/1 h1/0 join \xc3\xa9", Rejected::BadNick),
            (b"socklab-chat/1 h1/0 join ", Rejected::BadNick),
            (b"socklab-chat/1 h1/0 join a b", Rejected::Extra),
            (b"socklab-chat/1 h1/0 nick a", Rejected::BadNick),
            (b"socklab-chat/1 h1/0 nick a b!", Rejected::BadNick),
            (b"socklab-chat/1 h1/0 here a b! c", Rejected::BadNick),
            (b"socklab-chat/1 h1/0 gone now", Rejected::Extra),
        ];
        for (payload, why) in cases {
            assert_eq!(
                decode(payload, 4096).as_ref().map_err(Clone::clone),
                Err(why.clone()),
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
        let long_nick = format!("socklab-chat/1 h1/0 join {}", "x".repeat(33));
        assert_eq!(decode(long_nick.as_bytes(), 4096), Err(Rejected::BadNick));
        let long = format!("socklab-chat/1 h1/0 say a {}", "x".repeat(5000));
        assert_eq!(
            decode(long.as_bytes(), 4096),
            Err(Rejected::TooLong { limit: 4096 })
        );
    }
}
