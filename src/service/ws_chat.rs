//! A chat member over WebSocket (`GET /chat` on the metrics listener, PROTOCOL.md): the same
//! room, commands, nick rules and notices as a TCP member (`chat.rs`), one text message per
//! line each way. Sans-IO: client frames in (`frame/websocket.rs`), the chat session fed one
//! line per message, its lines out as text frames; every protocol violation closes with the
//! RFC's code.

use super::Step;
use super::chat::{Chat, ChatRoom, MemberId};
use crate::frame::websocket::{self as ws, WsDecoder, WsMessage};

/// The largest message a member may send: a chat line's limit (PROTOCOL.md: 4096 bytes).
pub const MAX_MESSAGE: usize = 4096;

/// One WebSocket chat member.
#[derive(Debug)]
pub struct WsChat {
    /// The chat session, as a TCP member's.
    chat: Chat,
    /// Client frames into messages.
    decoder: WsDecoder,
    /// A close frame went out: nothing more is read, the connection ends once it is sent.
    closed: bool,
    /// The chat session's output before it is framed.
    lines: Vec<u8>,
}

impl Default for WsChat {
    fn default() -> Self {
        WsChat {
            chat: Chat::default(),
            decoder: WsDecoder::new(MAX_MESSAGE),
            closed: false,
            lines: Vec::new(),
        }
    }
}

impl WsChat {
    /// Joins the room: welcomed in a text frame, the others told.
    pub fn join(
        &mut self,
        id: MemberId,
        room: &mut ChatRoom,
        out: &mut Vec<u8>,
        others: &mut Vec<u8>,
    ) {
        self.lines.clear();
        self.chat.join(id, room, &mut self.lines, others);
        ws::text_lines(&self.lines, out);
    }

    /// Leaves the room: the others are told.
    pub fn leave(&mut self, room: &mut ChatRoom, others: &mut Vec<u8>) {
        self.chat.leave(room, others);
    }

    /// Whether more frames are read.
    pub fn accepts_input(&self) -> bool {
        !self.closed
    }

    /// Decodes the client's frames; each text message is a chat line (or several, one per
    /// `\n` in it).
    pub fn on_input(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        room: &mut ChatRoom,
        others: &mut Vec<u8>,
    ) -> Step {
        let mut pos = 0usize;
        while !self.closed {
            let rest = input.get(pos..).unwrap_or_default();
            match self.decoder.decode(rest) {
                Ok(None) => break,
                Ok(Some(step)) => {
                    pos = pos.saturating_add(step.consumed);
                    if let Some(message) = step.message {
                        self.on_message(message, out, room, others);
                    }
                }
                Err(e) => {
                    self.close(e.close_code(), &e.to_string(), out);
                }
            }
        }
        Step {
            consumed: pos,
            close: self.closed,
        }
    }

    fn on_message(
        &mut self,
        message: WsMessage,
        out: &mut Vec<u8>,
        room: &mut ChatRoom,
        others: &mut Vec<u8>,
    ) {
        match message {
            WsMessage::Text(text) => {
                self.lines.clear();
                for line in text.split('\n') {
                    let mut bytes = line.as_bytes().to_vec();
                    bytes.push(b'\n');
                    self.chat.on_input(&bytes, &mut self.lines, room, others);
                    if !self.chat.accepts_input() {
                        break;
                    }
                }
                ws::text_lines(&self.lines, out);
                if !self.chat.accepts_input() {
                    // `/quit`.
                    self.close(ws::CLOSE_NORMAL, "bye", out);
                }
            }
            WsMessage::Binary(_) => {
                self.close(ws::CLOSE_UNSUPPORTED, "chat lines are text messages", out);
            }
            WsMessage::Ping(payload) => ws::pong(&payload, out),
            WsMessage::Pong => {}
            WsMessage::Close(_) => self.close(ws::CLOSE_NORMAL, "", out),
        }
    }

    /// Sends a close frame; nothing more is read.
    fn close(&mut self, code: u16, reason: &str, out: &mut Vec<u8>) {
        if !self.closed {
            ws::close(code, reason, out);
            self.closed = true;
        }
    }

    /// The member is about to be closed for idleness: told why, then closed.
    pub fn idle_closing(&mut self, idle: std::time::Duration, out: &mut Vec<u8>) {
        self.lines.clear();
        self.chat.idle_closing(idle, &mut self.lines);
        ws::text_lines(&self.lines, out);
        self.close(ws::CLOSE_GOING_AWAY, "idle", out);
    }

    /// The server is shutting down: the member's last line, and a going-away close.
    pub fn shutting_down(&mut self, out: &mut Vec<u8>) {
        self.lines.clear();
        self.chat.shutting_down(&mut self.lines);
        ws::text_lines(&self.lines, out);
        self.close(ws::CLOSE_GOING_AWAY, "server shutting down", out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_text(text: &str) -> Vec<u8> {
        let mut f = vec![0x81, 0x80 | text.len() as u8, 1, 2, 3, 4];
        f.extend(
            text.bytes()
                .zip([1u8, 2, 3, 4].iter().cycle())
                .map(|(b, m)| b ^ m),
        );
        f
    }

    /// Server text frames back into strings.
    fn texts(mut out: &[u8]) -> Vec<String> {
        let mut v = Vec::new();
        while out.len() >= 2 && out[0] == 0x81 {
            let n = out[1] as usize;
            v.push(String::from_utf8(out[2..2 + n].to_vec()).unwrap());
            out = &out[2 + n..];
        }
        v
    }

    #[test]
    fn a_member_joins_talks_renames_and_quits_in_frames() {
        let mut room = ChatRoom::default();
        let (mut out, mut others) = (Vec::new(), Vec::new());
        let mut m = WsChat::default();
        m.join(7, &mut room, &mut out, &mut others);
        assert_eq!(texts(&out), ["* welcome guest-1"]);
        out.clear();
        let mut input = client_text("/nick ann");
        input.extend(client_text("hello\nworld"));
        let step = m.on_input(&input, &mut out, &mut room, &mut others);
        assert_eq!(step.consumed, input.len());
        let said = String::from_utf8(others.clone()).unwrap();
        assert!(
            said.contains("ann hello\n") && said.contains("ann world\n"),
            "{said}"
        );
        out.clear();
        let step = m.on_input(&client_text("/quit"), &mut out, &mut room, &mut others);
        assert!(step.close);
        assert_eq!(out.last_chunk::<3>().map(|c| &c[..]), Some(&b"bye"[..]));
    }

    #[test]
    fn a_binary_message_or_a_bad_frame_closes_with_its_code() {
        let mut room = ChatRoom::default();
        let (mut out, mut others) = (Vec::new(), Vec::new());
        let mut m = WsChat::default();
        let step = m.on_input(
            &[0x82, 0x81, 0, 0, 0, 0, 9],
            &mut out,
            &mut room,
            &mut others,
        );
        assert!(step.close);
        assert_eq!(&out[..4], &[0x88, 0x1e, 0x03, 0xeb], "close 1003");
        let mut m = WsChat::default();
        out.clear();
        let step = m.on_input(&[0x81, 0x01, b'x'], &mut out, &mut room, &mut others);
        assert!(step.close, "unmasked");
        assert_eq!(&out[2..4], &1002u16.to_be_bytes());
    }
}
