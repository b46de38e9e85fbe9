//! A TLS listener's rustls configuration: TLS 1.3 and 1.2 with rustls's safe defaults, the
//! listener's certificate behind a resolver that a reload can swap (new handshakes get the new
//! one; connections already open keep the keys they agreed), and client certificates verified
//! against the listener's CA when it names one.

use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

use super::files::{CertInfo, TlsFileError, load_certified_key, load_roots};
use crate::config::{ListenerConfig, TlsFiles};

/// The certificate a listener serves now.
#[derive(Debug)]
struct Served {
    /// What every new handshake is given.
    key: RwLock<Arc<CertifiedKey>>,
    /// What it says of itself.
    info: RwLock<CertInfo>,
}

impl ResolvesServerCert for Served {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.key.read().ok().map(|k| Arc::clone(&k))
    }
}

/// One listener's TLS.
#[derive(Debug)]
pub(crate) struct ListenerTls {
    /// Shared by every connection it accepts.
    pub(crate) config: Arc<ServerConfig>,
    /// The certificate, swapped by [`ListenerTls::reload`].
    served: Arc<Served>,
    /// Where the certificate and key are read from.
    files: TlsFiles,
}

impl ListenerTls {
    /// Reads and checks the listener's files and builds its configuration.
    pub(crate) fn load(files: &TlsFiles) -> Result<ListenerTls, TlsFileError> {
        let (key, info) = load_certified_key(&files.cert, &files.key)?;
        let served = Arc::new(Served {
            key: RwLock::new(key),
            info: RwLock::new(info),
        });
        let provider = super::provider();
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsFileError::Key {
                path: files.key.clone(),
                reason: e.to_string(),
            })?;
        let builder = match &files.client_ca {
            Some(ca) => {
                let roots = Arc::new(load_roots(ca)?);
                let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| TlsFileError::Ca {
                        path: ca.clone(),
                        reason: e.to_string(),
                    })?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config =
            builder.with_cert_resolver(Arc::clone(&served) as Arc<dyn ResolvesServerCert>);
        // TLS 1.3 records are opened and sealed by our own record layer after the handshake
        // (`tls/record.rs`): rustls hands it the traffic secrets.
        config.enable_secret_extraction = true;
        Ok(ListenerTls {
            config: Arc::new(config),
            served,
            files: files.clone(),
        })
    }

    /// Whether a client must present a certificate from the listener's CA: then a finished
    /// handshake has authenticated it.
    pub(crate) fn verifies_clients(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// The certificate served now.
    pub(crate) fn info(&self) -> CertInfo {
        match self.served.info.read() {
            Ok(info) => info.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reads the certificate and key again; on success new handshakes get them. On failure
    /// the old ones stay and the error says why.
    pub(crate) fn reload(&self) -> Result<CertInfo, TlsFileError> {
        let (key, info) = load_certified_key(&self.files.cert, &self.files.key)?;
        if let Ok(mut k) = self.served.key.write() {
            *k = key;
        }
        if let Ok(mut i) = self.served.info.write() {
            *i = info.clone();
        }
        Ok(info)
    }
}

/// The TLS of every listener, in the order of the configuration's listeners.
#[derive(Debug, Clone, Default)]
pub(crate) struct TlsSet {
    /// One per configured listener: `None` for a plain one.
    by_listener: Arc<Vec<Option<Arc<ListenerTls>>>>,
    /// This worker reloads the certificates on SIGHUP (the first; the others share them).
    pub(crate) reloads: bool,
}

impl TlsSet {
    /// Loads the files of every TLS listener; the first that cannot be used stops the start.
    pub(crate) fn load(listeners: &[ListenerConfig]) -> Result<TlsSet, TlsFileError> {
        let by_listener = listeners
            .iter()
            .map(|l| l.tls.as_ref().map(ListenerTls::load).transpose())
            .map(|r| r.map(|t| t.map(Arc::new)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TlsSet {
            by_listener: Arc::new(by_listener),
            reloads: true,
        })
    }

    /// The same listeners' TLS for another worker, which leaves reloading to the first.
    pub(crate) fn for_other_workers(&self) -> TlsSet {
        TlsSet {
            by_listener: Arc::clone(&self.by_listener),
            reloads: false,
        }
    }

    /// The TLS of the `index`th listener, if it has any.
    pub(crate) fn of(&self, index: usize) -> Option<Arc<ListenerTls>> {
        self.by_listener.get(index).cloned().flatten()
    }

    /// Whether any listener has TLS.
    pub(crate) fn is_empty(&self) -> bool {
        self.by_listener.iter().all(Option::is_none)
    }

    /// Reloads every listener's certificate (SIGHUP), logging each outcome.
    pub(crate) fn reload_all(&self) {
        for tls in self.by_listener.iter().flatten() {
            match tls.reload() {
                Ok(info) => tracing::info!(
                    cert = %tls.files.cert.display(),
                    subject = %info.subject,
                    expires = %info.not_after,
                    "TLS certificate reloaded: new connections get it"
                ),
                Err(e) => tracing::error!(
                    cert = %tls.files.cert.display(),
                    "TLS certificate not reloaded, the old one is kept: {e}"
                ),
            }
        }
    }
}
