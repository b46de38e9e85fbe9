//! TLS for the server's stream listeners and for the client commands, on rustls with the ring
//! provider (already built for `socklab cert`'s rcgen): the records are rustls's, the sockets
//! and the loop stay ours.
//!
//! - [`files`]: what a listener's `[listener.tls]` names (certificate, key, client CA), read and
//!   checked: PEM parsing, the key against the certificate, the certificate's dates and subject.
//! - [`server`]: a listener's rustls configuration and the certificate it serves, swappable
//!   at run time (SIGHUP) without touching the connections already open.
//! - [`client`]: the client commands' `--tls` options and their rustls configuration.
//!
//! - [`stream`]: a non-blocking TLS stream over any socket, driven by readiness: the
//!   reactor's TLS transport, and `bench`'s TLS connections.

pub mod client;
pub(crate) mod files;
pub(crate) mod server;
pub(crate) mod stream;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// The one crypto provider of every TLS configuration here.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    // Deprecated for lacking the post-quantum hybrid key exchange, which only aws-lc-rs has;
    // that provider would add a C build (cmake) for every user of socklab.
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}
