//! Encrypted bytes on their way to the socket.

use std::io::{self, Write};

use crate::net::write_until_blocked;

/// Encrypted bytes the socket has not taken yet.
#[derive(Debug, Default)]
pub(super) struct Unsent {
    pub(super) bytes: Vec<u8>,
    /// How many of `bytes` have gone.
    pub(super) at: usize,
}

impl Unsent {
    pub(super) fn is_empty(&self) -> bool {
        self.at >= self.bytes.len()
    }

    /// How many bytes wait.
    pub(super) fn pending(&self) -> usize {
        self.bytes.len().saturating_sub(self.at)
    }

    /// Writes until none wait (`Ok`) or the socket would block (the error); the buffer is
    /// released once it is empty.
    pub(super) fn send(&mut self, socket: &mut impl Write) -> io::Result<usize> {
        let rest = self.bytes.get(self.at..).unwrap_or_default();
        let sent = write_until_blocked(socket, rest)?;
        self.at = self.at.saturating_add(sent);
        if !self.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.bytes = Vec::new();
        self.at = 0;
        Ok(sent)
    }

    /// Writes what waits, then `records`, as far as the socket takes them; keeps the rest.
    pub(super) fn send_or_keep(
        &mut self,
        records: &[u8],
        socket: &mut impl Write,
    ) -> io::Result<()> {
        match self.send(socket) {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
            _ => {}
        }
        let taken = if self.is_empty() {
            write_until_blocked(socket, records)?
        } else {
            0
        };
        self.bytes
            .extend_from_slice(records.get(taken..).unwrap_or_default());
        Ok(())
    }
}
