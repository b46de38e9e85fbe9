//! The client commands' TLS: `--tls`, `--ca`, `--server-name`, `--cert`/`--key`, and the
//! stream they talk through, [`ClientStream`]: the plain socket, or TLS over it.
//!
//! Some clients read and write on two threads (echo and upper send stdin while they print
//! what comes back). A TLS connection is one state machine, so its handles share it behind a
//! lock that is never held across a blocking socket call: each handle reads ciphertext from
//! its own clone of the socket and hands it to rustls; writes take a second lock, so records
//! reach the socket whole and in the order they were made.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use clap::Args;
use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use super::files::{TlsFileError, load_certs, load_key, load_roots};
use crate::addr::ListenAddr;
use crate::net::StdStream;

/// TLS options of a client command.
#[derive(Debug, Clone, Default, Args)]
pub struct TlsArgs {
    /// Speak TLS to the server.
    #[arg(long, help_heading = "TLS")]
    pub tls: bool,
    /// Trust the CA certificates in this PEM file (`socklab cert` writes ca.pem) instead of
    /// the system's.
    #[arg(long, value_name = "PATH", requires = "tls", help_heading = "TLS")]
    pub ca: Option<PathBuf>,
    /// The name the server's certificate must carry. [default: the address's host; localhost
    /// for a unix socket]
    #[arg(long, value_name = "NAME", requires = "tls", help_heading = "TLS")]
    pub server_name: Option<String>,
    /// A client certificate (PEM), for servers that require one; with --key.
    #[arg(long, value_name = "PATH", requires_all = ["tls", "key"], help_heading = "TLS")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "PATH", requires_all = ["tls", "cert"], help_heading = "TLS")]
    pub key: Option<PathBuf>,
}

/// Why a client cannot speak TLS as asked.
#[derive(Debug, thiserror::Error)]
pub enum TlsClientError {
    #[error(transparent)]
    File(#[from] TlsFileError),
    #[error("no trusted CA: the system has none ({0}); give --ca PATH")]
    NoRoots(String),
    #[error("--server-name {0}: not a DNS name or an IP address")]
    Name(String),
    #[error("TLS setup: {0}")]
    Config(#[from] rustls::Error),
}

/// A client's TLS configuration and the name it expects of the server.
#[derive(Debug, Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl TlsArgs {
    /// The TLS to speak to `addr`, or `None` without `--tls`.
    pub fn client(&self, addr: &ListenAddr) -> Result<Option<ClientTls>, TlsClientError> {
        if !self.tls {
            return Ok(None);
        }
        let roots = match &self.ca {
            Some(ca) => load_roots(ca)?,
            None => system_roots()?,
        };
        let builder = ClientConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                builder.with_client_auth_cert(load_certs(cert)?, load_key(key)?)?
            }
            _ => builder.with_no_client_auth(),
        };
        let name = match (&self.server_name, addr) {
            (Some(n), _) => n.clone(),
            (None, ListenAddr::Inet(a)) => a.ip().to_string(),
            (None, _) => "localhost".to_owned(),
        };
        let name = ServerName::try_from(name.clone()).map_err(|_| TlsClientError::Name(name))?;
        Ok(Some(ClientTls {
            config: Arc::new(config),
            name,
        }))
    }
}

/// The system's trust anchors (`/etc/ssl/certs` and the like).
fn system_roots() -> Result<RootCertStore, TlsClientError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or_else(|| "none found".to_owned(), |e| e.to_string());
        return Err(TlsClientError::NoRoots(why));
    }
    Ok(roots)
}

impl ClientTls {
    /// The same TLS for a load generator: every connection a full handshake (no session kept
    /// to resume: a TLS 1.3 ticket would make the next handshake skip the certificate), and
    /// the traffic secrets handed over after it, for our own record layer (`client_records`).
    pub(crate) fn for_bench(&self) -> ClientTls {
        let mut config = (*self.config).clone();
        config.resumption = rustls::client::Resumption::disabled();
        config.enable_secret_extraction = true;
        ClientTls {
            config: Arc::new(config),
            name: self.name.clone(),
        }
    }

    /// A connection on rustls's unbuffered API, for `client_records::handshake`.
    pub(crate) fn unbuffered(&self) -> io::Result<UnbufferedClientConnection> {
        UnbufferedClientConnection::new(Arc::clone(&self.config), self.name.clone())
            .map_err(io::Error::other)
    }

    /// Runs the handshake over a blocking `socket` (its timeouts bound it) and returns the
    /// session; the server's certificate is verified before this returns.
    pub(crate) fn handshake(&self, socket: &mut StdStream) -> io::Result<ClientConnection> {
        let mut conn = ClientConnection::new(Arc::clone(&self.config), self.name.clone())
            .map_err(io::Error::other)?;
        while conn.is_handshaking() {
            conn.complete_io(socket).map_err(handshake_error)?;
        }
        Ok(conn)
    }

    /// Runs the handshake over `socket` (its timeouts bound it); the server's certificate is
    /// verified before this returns.
    pub(crate) fn connect(&self, mut socket: StdStream) -> io::Result<ClientStream> {
        let conn = self.handshake(&mut socket)?;
        // The session tickets of TLS 1.3 may follow the handshake: they are read with the
        // first reply.
        Ok(ClientStream::Tls(TlsHandle {
            socket,
            shared: Arc::new(Shared {
                conn: Mutex::new(conn),
                writing: Mutex::new(()),
            }),
            eof: false,
            spill: Vec::new(),
        }))
    }
}

/// A handshake error in words: the certificate problem rustls found, if that was it.
pub(crate) fn handshake_error(e: io::Error) -> io::Error {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(why)) => io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the server's TLS certificate is not trusted: {why:?} (a private CA needs \
                 --ca PATH; another name, --server-name NAME)"
            ),
        ),
        Some(other) => io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {other}")),
        None => e,
    }
}

/// An error of an established session in words; the alerts a user can act on say how.
fn session_error(e: rustls::Error) -> io::Error {
    use rustls::AlertDescription as A;
    let hint = match &e {
        rustls::Error::AlertReceived(A::CertificateRequired | A::HandshakeFailure) => {
            ": the server requires a client certificate (give --cert and --key)"
        }
        rustls::Error::AlertReceived(A::BadCertificate | A::UnknownCA) => {
            ": the server does not accept this client certificate"
        }
        _ => "",
    };
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}{hint}"))
}

/// What the handles of one TLS connection share.
#[derive(Debug)]
struct Shared {
    /// rustls's state; never locked across a socket call.
    conn: Mutex<ClientConnection>,
    /// Held while records go to the socket, so they go whole and in order.
    writing: Mutex<()>,
}

/// One handle on a TLS connection: its own clone of the socket, the shared state.
#[derive(Debug)]
pub(crate) struct TlsHandle {
    socket: StdStream,
    shared: Arc<Shared>,
    /// The socket's end was read.
    eof: bool,
    /// Plaintext taken from rustls (to make room for more) and not yet read.
    spill: Vec<u8>,
}

/// A client's connection: plain, or TLS.
#[derive(Debug)]
pub(crate) enum ClientStream {
    /// The socket itself.
    Plain(StdStream),
    /// TLS over it.
    Tls(TlsHandle),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl TlsHandle {
    /// Writes what rustls has made for the socket (records, alerts, key-update answers).
    fn send_pending(&mut self) -> io::Result<()> {
        let _order = lock(&self.shared.writing);
        let mut out = Vec::new();
        {
            let mut conn = lock(&self.shared.conn);
            while conn.wants_write() {
                conn.write_tls(&mut out)?;
            }
        }
        self.socket.write_all(&out)
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut cipher = [0u8; 16 * 1024];
        loop {
            if !self.spill.is_empty() {
                let n = buf.len().min(self.spill.len());
                for (b, s) in buf.iter_mut().zip(self.spill.drain(..n)) {
                    *b = s;
                }
                return Ok(n);
            }
            {
                let mut conn = lock(&self.shared.conn);
                match conn.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the server closed the TLS connection without close_notify",
                        ));
                    }
                    Err(e) => return Err(e),
                }
            }
            if self.eof {
                return Ok(0);
            }
            // Blocking (with the socket's timeout), without the lock: the writer goes on.
            let n = self.socket.read(&mut cipher)?;
            let mut fed = cipher.get(..n).unwrap_or_default();
            {
                let mut conn = lock(&self.shared.conn);
                if n == 0 {
                    self.eof = true;
                    // rustls notes the end: a read after it says how it ended.
                    conn.read_tls(&mut fed)?;
                }
                while !fed.is_empty() {
                    conn.read_tls(&mut fed)?;
                    conn.process_new_packets().map_err(session_error)?;
                    // rustls holds at most 16 KiB of plaintext: take it before feeding more.
                    let mut chunk = [0u8; 4096];
                    while let Ok(m @ 1..) = conn.reader().read(&mut chunk) {
                        self.spill
                            .extend_from_slice(chunk.get(..m).unwrap_or_default());
                    }
                }
            }
            self.send_pending()?;
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _order = lock(&self.shared.writing);
        let mut out = Vec::with_capacity(buf.len() + 64);
        {
            let mut conn = lock(&self.shared.conn);
            // rustls takes a bounded amount at a time: encrypt, collect, take more.
            let mut rest = buf;
            while !rest.is_empty() {
                let n = conn.writer().write(rest)?;
                rest = rest.get(n..).unwrap_or_default();
                while conn.wants_write() {
                    conn.write_tls(&mut out)?;
                }
                if n == 0 && !conn.wants_write() {
                    return Err(io::ErrorKind::WriteZero.into());
                }
            }
        }
        self.socket.write_all(&out)?;
        Ok(buf.len())
    }
}

impl ClientStream {
    /// The socket underneath.
    fn socket(&self) -> &StdStream {
        match self {
            ClientStream::Plain(s) => s,
            ClientStream::Tls(t) => &t.socket,
        }
    }

    /// Sets the read timeout of the socket (and so of a TLS read).
    pub(crate) fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.socket().set_read_timeout(timeout)
    }

    /// Lets reads wait for ever (a reader thread that waits for the server to speak).
    pub(crate) fn clear_read_timeout(&self) -> io::Result<()> {
        match self.socket() {
            StdStream::Tcp(s) => s.set_read_timeout(None),
            StdStream::Unix(s) => s.set_read_timeout(None),
        }
    }

    /// Sets the write timeout of the socket.
    pub(crate) fn set_write_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.socket().set_write_timeout(timeout)
    }

    /// A second handle (a reader thread and a writer thread); a TLS one shares the session.
    pub(crate) fn try_clone(&self) -> io::Result<ClientStream> {
        Ok(match self {
            ClientStream::Plain(s) => ClientStream::Plain(s.try_clone()?),
            ClientStream::Tls(t) => ClientStream::Tls(TlsHandle {
                socket: t.socket.try_clone()?,
                shared: Arc::clone(&t.shared),
                eof: false,
                spill: Vec::new(),
            }),
        })
    }

    /// Shuts down a direction; ending the write side of TLS says close_notify first, so the
    /// server reads a clean end rather than a truncation.
    pub(crate) fn shutdown(&mut self, how: Shutdown) -> io::Result<()> {
        if let (ClientStream::Tls(t), Shutdown::Write | Shutdown::Both) = (&mut *self, how) {
            lock(&t.shared.conn).send_close_notify();
            t.send_pending()?;
        }
        self.socket().shutdown(how)
    }

    /// Whether it speaks TLS.
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }
}

impl Read for ClientStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ClientStream::Plain(s) => s.read(buf),
            ClientStream::Tls(t) => t.read(buf),
        }
    }
}

impl Write for ClientStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ClientStream::Plain(s) => s.write(buf),
            ClientStream::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Connects to `addr` (TCP with TCP_NODELAY, or a unix socket) with `timeout` on connecting,
/// reads and writes, and runs the TLS handshake when `tls` is given.
pub(crate) fn connect(
    addr: &ListenAddr,
    tls: Option<&ClientTls>,
    timeout: Duration,
) -> io::Result<ClientStream> {
    let socket = match addr {
        ListenAddr::Inet(a) => {
            let s = std::net::TcpStream::connect_timeout(a, timeout)?;
            s.set_nodelay(true)?;
            StdStream::Tcp(s)
        }
        ListenAddr::Unix(p) => StdStream::Unix(std::os::unix::net::UnixStream::connect(p)?),
        ListenAddr::Unixgram(_) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{addr} is not a stream address"),
            ));
        }
    };
    socket.set_read_timeout(timeout)?;
    socket.set_write_timeout(timeout)?;
    match tls {
        Some(tls) => tls.connect(socket),
        None => Ok(ClientStream::Plain(socket)),
    }
}
