//! `socklab cert --out DIR`: a self-signed certificate authority and two certificates it signs,
//! for trying TLS on loopback (rcgen): `ca.pem`/`ca.key`, `server.pem`/`server.key` (for
//! localhost, 127.0.0.1 and ::1, or `--name`s), `client.pem`/`client.key` (a client
//! certificate). Keys are ECDSA P-256, written 0600; an existing file is never overwritten.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chrono::{Datelike, Duration as Days, Utc};
use clap::Args;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, date_time_ymd,
};

/// `socklab cert`.
#[derive(Debug, Args)]
pub struct CertArgs {
    /// The directory to write into (made if missing; existing files are not overwritten).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// A name or address the server certificate is for (repeatable).
    /// [default: localhost, 127.0.0.1, ::1]
    #[arg(long = "name", value_name = "NAME")]
    names: Vec<String>,
    /// Days the certificates are valid from today (they start yesterday, for clocks behind).
    #[arg(long, value_name = "N", default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36500))]
    days: u32,
}

/// Why the certificates could not be made.
#[derive(Debug, thiserror::Error)]
enum CertError {
    #[error("cannot create {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} exists already: not overwritten (choose another --out)")]
    Exists { path: String },
    #[error("cannot make the certificates: {0}")]
    Rcgen(#[from] rcgen::Error),
}

pub fn cert(args: &CertArgs) -> ExitCode {
    match write_all(args) {
        Ok(written) => {
            for path in written {
                println!("wrote {}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("socklab cert: {e}");
            ExitCode::from(1)
        }
    }
}

fn write_all(args: &CertArgs) -> Result<Vec<PathBuf>, CertError> {
    let names = if args.names.is_empty() {
        vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ]
    } else {
        args.names.clone()
    };
    // From yesterday (a peer whose clock is a little behind still accepts them) for `days`.
    let ymd = |d: chrono::NaiveDate| {
        let (month, day) = (u8::try_from(d.month()), u8::try_from(d.day()));
        date_time_ymd(d.year(), month.unwrap_or(1), day.unwrap_or(1))
    };
    let today = Utc::now().date_naive();
    let from = ymd(today - Days::days(1));
    let until = ymd(today + Days::days(i64::from(args.days)));

    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "socklab test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    (ca.not_before, ca.not_after) = (from, until);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::from_params(&ca, &ca_key);

    let mut server = CertificateParams::new(names.clone())?;
    server.distinguished_name.push(
        DnType::CommonName,
        names.first().map_or("localhost", String::as_str),
    );
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    (server.not_before, server.not_after) = (from, until);
    let server_key = KeyPair::generate()?;
    let server_cert = server.signed_by(&server_key, &issuer)?;

    let mut client = CertificateParams::new(Vec::<String>::new())?;
    client
        .distinguished_name
        .push(DnType::CommonName, "socklab test client");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    (client.not_before, client.not_after) = (from, until);
    let client_key = KeyPair::generate()?;
    let client_cert = client.signed_by(&client_key, &issuer)?;

    std::fs::create_dir_all(&args.out).map_err(|source| CertError::Create {
        path: args.out.display().to_string(),
        source,
    })?;
    let files = [
        ("ca.pem", ca_cert.pem(), 0o644),
        ("ca.key", ca_key.serialize_pem(), 0o600),
        ("server.pem", server_cert.pem(), 0o644),
        ("server.key", server_key.serialize_pem(), 0o600),
        ("client.pem", client_cert.pem(), 0o644),
        ("client.key", client_key.serialize_pem(), 0o600),
    ];
    // Refuse before writing anything, so that a half-written set never mixes with an old one.
    for (name, _, _) in &files {
        let path = args.out.join(name);
        if path.exists() {
            return Err(CertError::Exists {
                path: path.display().to_string(),
            });
        }
    }
    let mut written = Vec::new();
    for (name, text, mode) in files {
        let path = args.out.join(name);
        write_new(&path, text.as_bytes(), mode)?;
        written.push(path);
    }
    Ok(written)
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    let create = |source| CertError::Create {
        path: path.display().to_string(),
        source,
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(create)?;
    f.write_all(bytes).map_err(create)
}
