//! TLS for the server's stream listeners and for the client commands, on rustls with the ring
//! provider (already built for `socklab cert`'s rcgen): the handshakes are rustls's, the
//! sockets and the loop ours, and so are a server's TLS 1.3 records after the handshake.
//!
//! - [`files`]: what a listener's `[listener.tls]` names (certificate, key, client CA), read and
//!   checked: PEM parsing, the key against the certificate, the certificate's dates and subject.
//! - [`server`]: a listener's rustls configuration and the certificate it serves, swappable
//!   at run time (SIGHUP) without touching the connections already open.
//! - [`client`]: the client commands' `--tls` options and their rustls configuration.
//!
//! - [`server_stream`]: the server side of a connection on rustls's unbuffered API, driven by
//!   readiness, holding no buffer while idle: the reactor's TLS transport.
//! - [`record`]: TLS 1.3's record layer after the handshake, ours (ring's AEAD, in place);
//!   rustls keeps the key schedule.
//! - [`stream`]: the client side over a non-blocking socket, after a blocking handshake, on
//!   rustls's buffered connection: `bench`'s TLS 1.2 connections.
//! - [`client_records`]: the client side of TLS 1.3 on our record layer, after a blocking
//!   handshake on rustls's unbuffered API: `bench`'s TLS 1.3 connections, so that the load
//!   generator spends on TLS what the server does.
//! - [`encode`]: a `Vec` grown to what rustls's unbuffered API encodes.

pub mod client;
pub(crate) mod client_records;
pub(crate) mod encode;
pub(crate) mod files;
pub(crate) mod record;
pub(crate) mod server;
pub(crate) mod server_stream;
pub(crate) mod stream;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The one crypto provider of every TLS configuration here: ring, with X25519 preferred.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::kx_group;
    // Deprecated for lacking the post-quantum hybrid key exchange, which only aws-lc-rs has;
    // that provider would add a C build (cmake) for every user of socklab.
    #[allow(deprecated)]
    let mut provider = rustls::crypto::ring::default_provider();
    // ring's default order puts P-384 first, whose key exchange costs this server about 8x
    // X25519's per handshake (measured: BENCHMARKS.md, TLS); every peer offers X25519.
    provider.kx_groups = vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1];
    Arc::new(provider)
}

/// A server and a client configuration that trust each other (a fresh self-signed
/// certificate for `localhost`, the provider above), for the unit tests, the fuzz targets and
/// the benches that drive rustls in memory. Never used by the server itself.
pub fn trusting_pair() -> Result<(Arc<ServerConfig>, Arc<ClientConfig>), String> {
    trusting_pair_of(rustls::DEFAULT_VERSIONS)
}

/// [`trusting_pair`] whose client offers only `versions`.
pub fn trusting_pair_of(
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<(Arc<ServerConfig>, Arc<ClientConfig>), String> {
    let key = rcgen::KeyPair::generate().map_err(|e| format!("key: {e}"))?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .and_then(|p| p.self_signed(&key))
        .map_err(|e| format!("certificate: {e}"))?;
    let der = CertificateDer::from(cert.der().to_vec());
    let key_der = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| format!("key: {e}"))?;
    let provider = provider();
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .and_then(|b| {
            b.with_no_client_auth()
                .with_single_cert(vec![der.clone()], key_der)
        })
        .map_err(|e| format!("server configuration: {e}"))?;
    // As the server's listeners: TLS 1.3 records go to our own record layer.
    server.enable_secret_extraction = true;
    let mut roots = RootCertStore::empty();
    roots.add(der).map_err(|e| format!("root: {e}"))?;
    let client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| format!("client configuration: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((Arc::new(server), Arc::new(client)))
}

/// The server side of a TLS connection over any byte stream, as the reactor's transport drives
/// it (`server_stream`), for `benches/tls_records.rs` to measure in memory against rustls's own
/// record path and the cipher alone. Never used by the server itself.
#[doc(hidden)]
pub struct BenchServerTls<S>(server_stream::ServerTls<S>);

impl<S: std::io::Read + std::io::Write> BenchServerTls<S> {
    /// An accepted connection over `socket` that has yet to see its ClientHello.
    pub fn new(socket: S, config: Arc<ServerConfig>) -> std::io::Result<Self> {
        server_stream::ServerTls::server(socket, config).map(BenchServerTls)
    }

    /// Plaintext the stream brought (`WouldBlock` when none): the reactor's read.
    pub fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }

    /// Encrypts `buf` and writes the records: the reactor's write.
    pub fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    /// The handshake has not finished.
    pub fn is_handshaking(&self) -> bool {
        self.0.is_handshaking()
    }

    /// The records are ours (TLS 1.3 after the hand-over), not rustls's.
    pub fn records_are_ours(&self) -> bool {
        self.0.record_layer().is_some()
    }

    /// The stream under the records.
    pub fn socket(&mut self) -> &mut S {
        &mut self.0.socket
    }
}
