//! `tokio-tls-echo ADDR CERT KEY`: the ordinary tokio-rustls echo server, the TLS anchor of
//! `tools/tls-bench.sh`, as `tools/tokio-echo` is the plain one.
//!
//! A current-thread runtime; the accept loop spawns one task per connection, which runs the
//! handshake (tokio-rustls's `TlsAcceptor`) and then reads into a buffer and writes back what it
//! read with `write_all`, until end of file or an error. rustls 0.23 with the ring provider and
//! its safe defaults, as socklab; TCP_NODELAY on every connection, as socklab does.

use std::process::ExitCode;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// Bytes read at a time per connection.
const BUF: usize = 16 * 1024;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, cert, key] = args.as_slice() else {
        eprintln!("usage: tokio-tls-echo HOST:PORT CERT.pem KEY.pem");
        return ExitCode::from(2);
    };
    let acceptor = match acceptor(cert, key) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tokio-tls-echo: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokio-tls-echo: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(addr, acceptor)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokio-tls-echo: {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The server configuration: the certificate chain and key, rustls's safe defaults.
fn acceptor(cert: &str, key: &str) -> Result<TlsAcceptor, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{cert}: {e}"))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{key}: {e}"))?;
    #[allow(deprecated)]
    let mut provider = rustls::crypto::ring::default_provider();
    // The same key exchange order as socklab's (X25519 first; ring's default starts with P-384).
    use rustls::crypto::ring::kx_group;
    provider.kx_groups = vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1];
    let provider = Arc::new(provider);
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts connections for ever, one task each; prints `listening ADDR` once bound.
async fn serve(addr: &str, acceptor: TlsAcceptor) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    println!("listening {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(echo(stream, acceptor.clone()));
    }
}

/// Runs the handshake, then sends back everything the connection sends, until it closes.
async fn echo(stream: TcpStream, acceptor: TlsAcceptor) {
    if stream.set_nodelay(true).is_err() {
        return;
    }
    let Ok(mut tls) = acceptor.accept(stream).await else {
        return;
    };
    let mut buf = vec![0u8; BUF];
    loop {
        let n = match tls.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if tls.write_all(&buf[..n]).await.is_err() || tls.flush().await.is_err() {
            return;
        }
    }
}
