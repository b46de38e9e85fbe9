//! The files a TLS listener or client names, read and checked before anything is served:
//! certificates and keys in PEM (a chain is allowed; PKCS#8, PKCS#1 or SEC1 keys), the key
//! against the certificate, and the certificate's dates, so that a server never starts (or
//! reloads) with a certificate every client would refuse.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::RootCertStore;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate or key file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: PathBuf },
    #[error("the key {path} cannot be used: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("the key {key} does not belong to the certificate {cert}")]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("the certificate {path} cannot be parsed: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("the certificate {path} is not valid before {from} (check it, or this clock)")]
    NotYetValid { path: PathBuf, from: String },
    #[error("the certificate {path} expired at {until}")]
    Expired { path: PathBuf, until: String },
    #[error("the CA file {path} cannot be used: {reason}")]
    Ca { path: PathBuf, reason: String },
}

/// What the start-up line and the logs say of a served certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject's distinguished name (`CN=localhost, O=…`).
    pub subject: String,
    /// The end of its validity, UTC, RFC 3339.
    pub not_after: String,
}

/// Every certificate in a PEM file, in order (the end entity first, for a chain).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| read_error(path, e))?;
    let certs = iter
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_error(path, e))?;
    if certs.is_empty() {
        return Err(TlsFileError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsFileError::NoKey {
            path: path.to_owned(),
        },
        e => read_error(path, e),
    })
}

/// The certificates of a CA file as trust anchors.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsFileError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsFileError::Ca {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// A certificate chain and its key, checked to belong together and to be valid now.
pub fn load_certified_key(
    cert: &Path,
    key: &Path,
) -> Result<(Arc<CertifiedKey>, CertInfo), TlsFileError> {
    let chain = load_certs(cert)?;
    let info = check_dates(cert, chain.first(), SystemTime::now())?;
    let der = load_key(key)?;
    let provider = super::provider();
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| TlsFileError::Key {
            path: key.to_owned(),
            reason: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(TlsFileError::Mismatch {
                cert: cert.to_owned(),
                key: key.to_owned(),
            });
        }
        Err(e) => {
            return Err(TlsFileError::Parse {
                path: cert.to_owned(),
                reason: e.to_string(),
            });
        }
    }
    Ok((Arc::new(certified), info))
}

/// The subject and dates of `cert` (the end entity), refused outside its validity at `now`.
fn check_dates(
    path: &Path,
    cert: Option<&CertificateDer<'_>>,
    now: SystemTime,
) -> Result<CertInfo, TlsFileError> {
    let parse_err = |reason: String| TlsFileError::Parse {
        path: path.to_owned(),
        reason,
    };
    let der = cert.ok_or_else(|| TlsFileError::NoCertificate {
        path: path.to_owned(),
    })?;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| parse_err(e.to_string()))?;
    let validity = parsed.validity();
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let (from, until) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    if now < from {
        return Err(TlsFileError::NotYetValid {
            path: path.to_owned(),
            from: rfc3339(from),
        });
    }
    if now > until {
        return Err(TlsFileError::Expired {
            path: path.to_owned(),
            until: rfc3339(until),
        });
    }
    Ok(CertInfo {
        subject: parsed.subject().to_string(),
        not_after: rfc3339(until),
    })
}

/// Seconds since the epoch as `2027-12-05T00:00:00Z`.
fn rfc3339(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0).map_or_else(
        || secs.to_string(),
        |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )
}

fn read_error(path: &Path, e: rustls_pki_types::pem::Error) -> TlsFileError {
    TlsFileError::Read {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, date_time_ymd};

    fn write_pair(dir: &Path, name: &str, params: CertificateParams) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    fn temp_dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("socklab-tlsfiles-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_valid_pair_loads_with_its_subject_and_expiry() {
        let d = temp_dir("valid");
        let mut p = CertificateParams::new(vec!["localhost".into()]).unwrap();
        p.not_before = date_time_ymd(2020, 1, 1);
        p.not_after = date_time_ymd(2090, 1, 1);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "socklab test");
        let (c, k) = write_pair(&d, "a", p);
        let (_, info) = load_certified_key(&c, &k).unwrap();
        assert_eq!(info.subject, "CN=socklab test");
        assert_eq!(info.not_after, "2090-01-01T00:00:00Z");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn expired_future_mismatched_and_missing_files_are_refused() {
        let d = temp_dir("bad");
        let mut old = CertificateParams::new(vec!["localhost".into()]).unwrap();
        old.not_before = date_time_ymd(2001, 1, 1);
        old.not_after = date_time_ymd(2002, 1, 1);
        let (c, k) = write_pair(&d, "old", old);
        let e = load_certified_key(&c, &k).unwrap_err();
        assert!(matches!(e, TlsFileError::Expired { .. }), "{e}");
        assert!(e.to_string().contains("expired at 2002-01-01"), "{e}");

        let mut future = CertificateParams::new(vec!["localhost".into()]).unwrap();
        future.not_before = date_time_ymd(2090, 1, 1);
        future.not_after = date_time_ymd(2091, 1, 1);
        let (c, k) = write_pair(&d, "future", future);
        let e = load_certified_key(&c, &k).unwrap_err();
        assert!(matches!(e, TlsFileError::NotYetValid { .. }), "{e}");

        let (c1, _) = write_pair(&d, "one", CertificateParams::new(vec!["a".into()]).unwrap());
        let (_, k2) = write_pair(&d, "two", CertificateParams::new(vec!["b".into()]).unwrap());
        let e = load_certified_key(&c1, &k2).unwrap_err();
        assert!(matches!(e, TlsFileError::Mismatch { .. }), "{e}");

        let e = load_certified_key(&d.join("absent.pem"), &k2).unwrap_err();
        assert!(e.to_string().contains("absent.pem"), "{e}");
        // A key where the certificate should be, and the reverse.
        let e = load_certified_key(&k2, &k2).unwrap_err();
        assert!(matches!(e, TlsFileError::NoCertificate { .. }), "{e}");
        let e = load_certified_key(&c1, &c1).unwrap_err();
        assert!(matches!(e, TlsFileError::NoKey { .. }), "{e}");
        std::fs::remove_dir_all(d).unwrap();
    }
}
