//! A listener's TLS files (`[listener.tls]`, `--tls SERVICE --tls-cert --tls-key`): named
//! here, read and checked by `crate::tls` before anything is bound.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What a TLS listener serves and whom it trusts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a tls table (cert, key, and optionally client_ca)"
)]
pub struct TlsFiles {
    /// The certificate in PEM, the server's first, then any chain.
    pub cert: PathBuf,
    /// Its private key in PEM.
    pub key: PathBuf,
    /// Clients must present a certificate this CA (PEM) signed; a verified one counts as
    /// authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}
