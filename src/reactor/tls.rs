//! The reactor's part in TLS: the handshake deadline of a new connection and the reload of
//! the certificates on SIGHUP. The records themselves are the transport's
//! (`transport/tls.rs`).

use mio::Token;

use super::{Entry, Reactor};

impl Reactor {
    /// Closes a connection whose TLS handshake has not finished by `--tls-handshake-timeout`
    /// (a slowloris at the handshake, or a client that gave up half-way).
    pub(super) fn tls_handshake_deadline(&mut self, token: Token) {
        let Some(Entry::Conn(c)) = self.core.sources.get_mut(token) else {
            return;
        };
        if c.dead || !c.transport.is_handshaking() {
            return;
        }
        tracing::debug!(service = %c.kind, "closing: TLS handshake not finished in time (--tls-handshake-timeout)");
        c.dead = true;
        self.core.to_close.push(token);
        let counters = self.svc.counters.service(c.kind);
        counters.rejected_tls = counters.rejected_tls.saturating_add(1);
    }

    /// SIGHUP: the first worker reads every listener's certificate and key again (the others
    /// share them). New handshakes get the new ones; open connections keep theirs.
    pub(super) fn reload_tls(&mut self) {
        if self.admission.tls.reloads {
            self.admission.tls.reload_all();
        }
    }
}
