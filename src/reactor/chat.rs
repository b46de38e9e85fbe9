//! Chat fan-out on this worker: the lines one member produced go to every other member here,
//! written at once where the socket takes them, and to the other workers (`workers.rs`).

use mio::Token;

use super::stream::update_interest;
use super::{Entry, Reactor};
use crate::kind::ServiceKind;
use crate::service::{Event, StreamService};

impl Reactor {
    /// Delivers the chat lines a member of this worker produced: to the other members here,
    /// and to every other worker's.
    pub(super) fn deliver_to_others(&mut self, from: Token) {
        let bytes = std::mem::take(&mut self.svc.others);
        self.deliver_chat(&bytes, Some(from));
        self.forward_chat(&bytes);
        // Hand the buffer back so its capacity is reused.
        self.svc.others = bytes;
        self.svc.others.clear();
    }

    /// Copies chat lines to every member of this worker but `from`, writing at once where
    /// the socket takes them. A member whose pending output passes --chat-max-pending is
    /// dropped: it is the one that does not read, and nobody else waits for it.
    pub(super) fn deliver_chat(&mut self, bytes: &[u8], from: Option<Token>) {
        let members: Vec<Token> = self
            .svc
            .room
            .member_ids()
            .filter_map(|id| usize::try_from(id).ok().map(Token))
            .filter(|t| Some(*t) != from)
            .collect();
        for token in members {
            self.push_chat(token, bytes);
        }
    }

    /// Writes chat bytes to one member, at once where its socket takes them; a member whose
    /// pending output passes --chat-max-pending is dropped.
    pub(super) fn push_chat(&mut self, token: Token, bytes: &[u8]) {
        let limit = self.config.limits.chat_max_pending;
        let Some(Entry::Conn(c)) = self.core.sources.get_mut(token) else {
            return;
        };
        // A member that was said goodbye to at shutdown gets nothing after it.
        if c.dead || c.drain.as_ref().is_some_and(|d| d.said_bye) {
            return;
        }
        if c.service.frames_chat() {
            crate::frame::websocket::text_lines(bytes, c.out.tail());
        } else {
            c.out.extend(bytes);
        }
        let result = c.out.write_to(&mut c.transport);
        let sent = result.as_ref().map_or(0, |n| *n);
        let kind = c.kind;
        if result.is_err() || c.out.pending() > limit {
            if result.is_ok() {
                tracing::info!(
                    service = %kind,
                    pending = c.out.pending(),
                    "disconnecting a chat member that does not read (--chat-max-pending)"
                );
            }
            c.dead = true;
            self.core.to_close.push(token);
        } else if let Err(e) = update_interest(&self.core.poll, c, token) {
            tracing::debug!(service = %kind, "cannot update a chat member's interest: {e}");
        }
        let counters = self.svc.counters.service(kind);
        counters.bytes_sent = counters.bytes_sent.saturating_add(sent as u64);
    }

    /// A metrics connection answered `/chat`'s WebSocket handshake: it becomes a chat member
    /// (counted as chat from now on), joins the room, and what it sent after the handshake is
    /// decoded as frames on its next turn.
    pub(super) fn upgrade_to_ws_chat(&mut self, token: Token) {
        let Some(Entry::Conn(c)) = self.core.sources.get_mut(token) else {
            return;
        };
        if c.dead {
            return;
        }
        c.service = StreamService::WsChat(Box::default());
        let was = std::mem::replace(&mut c.kind, ServiceKind::Chat);
        c.served = true;
        // Held input (frames sent right behind the handshake) is the new service's.
        c.service_paused = true;
        let opened = Event::Opened {
            id: c.id,
            authenticated: false,
        };
        c.service
            .on_event(opened, c.out.tail(), &mut self.svc.ctx());
        if !c.queued {
            c.queued = true;
            self.core.ready.push(token);
        }
        let before = self.svc.counters.service(was);
        before.open = before.open.saturating_sub(1);
        let chat = self.svc.counters.service(ServiceKind::Chat);
        chat.open = chat.open.saturating_add(1);
        chat.accepted = chat.accepted.saturating_add(1);
        if !self.svc.others.is_empty() {
            self.deliver_to_others(token);
        }
    }
}
