//! socket2 lives here only: building listeners and datagram sockets with the configured
//! options, reading back the values the kernel really set, and the process's descriptor limit.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::{Path, PathBuf};

use socket2::{Domain, SockAddr, SockRef, Socket, Type};

use crate::config::SocketOptions;

/// The options in effect on a bound socket, as getsockopt reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct OptionsInEffect {
    /// SO_REUSEADDR (inet sockets only).
    pub(crate) reuseaddr: Option<bool>,
    /// SO_REUSEPORT (inet sockets only).
    pub(crate) reuseport: Option<bool>,
    /// TCP_NODELAY (TCP listeners; accepted connections get the same value).
    pub(crate) nodelay: Option<bool>,
    /// The backlog asked for, and the kernel's cap on it (net.core.somaxconn) when readable.
    pub(crate) backlog: Option<(i32, Option<i32>)>,
    /// SO_BROADCAST (UDP sockets only).
    pub(crate) broadcast: Option<bool>,
    /// SO_RCVBUF as the kernel set it (Linux doubles what it is asked for).
    pub(crate) rcvbuf: Option<usize>,
    /// SO_SNDBUF as the kernel set it.
    pub(crate) sndbuf: Option<usize>,
}

impl fmt::Display for OptionsInEffect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let on = |b: bool| if b { "on" } else { "off" };
        let mut sep = "";
        let mut field = |f: &mut fmt::Formatter<'_>, args: fmt::Arguments<'_>| {
            let r = write!(f, "{sep}{args}");
            sep = " ";
            r
        };
        if let Some(v) = self.reuseaddr {
            field(f, format_args!("reuseaddr={}", on(v)))?;
        }
        if let Some(v) = self.reuseport {
            field(f, format_args!("reuseport={}", on(v)))?;
        }
        if let Some(v) = self.nodelay {
            field(f, format_args!("nodelay={}", on(v)))?;
        }
        if let Some(v) = self.broadcast {
            field(f, format_args!("broadcast={}", on(v)))?;
        }
        if let Some((asked, cap)) = self.backlog {
            field(f, format_args!("backlog={asked}"))?;
            if let Some(cap) = cap {
                field(f, format_args!("somaxconn={cap}"))?;
            }
        }
        if let Some(v) = self.rcvbuf {
            field(f, format_args!("rcvbuf={v}"))?;
        }
        if let Some(v) = self.sndbuf {
            field(f, format_args!("sndbuf={v}"))?;
        }
        Ok(())
    }
}

/// Why a socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BindError {
    #[error("{addr} is already in use")]
    InUse { addr: String },
    #[error("{addr} is already in use: another process accepts connections on that socket file")]
    UnixLive { addr: String },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("{addr}: permission denied")]
    Permission { addr: String },
    #[error("{addr}: {source}")]
    Io { addr: String, source: io::Error },
}

impl BindError {
    fn from_io(addr: String, source: io::Error) -> Self {
        match source.kind() {
            io::ErrorKind::AddrInUse => BindError::InUse { addr },
            io::ErrorKind::PermissionDenied => BindError::Permission { addr },
            _ => BindError::Io { addr, source },
        }
    }
}

fn set_buffers(sock: &Socket, o: &SocketOptions) -> io::Result<()> {
    if let Some(n) = o.rcvbuf {
        sock.set_recv_buffer_size(n)?;
    }
    if let Some(n) = o.sndbuf {
        sock.set_send_buffer_size(n)?;
    }
    Ok(())
}

fn somaxconn() -> Option<i32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A non-blocking TCP listener with the options applied before `listen`, so that accepted
/// connections inherit the buffer sizes (window scaling is settled at the handshake).
pub(crate) fn tcp_listener(
    addr: SocketAddr,
    o: &SocketOptions,
) -> Result<(std::net::TcpListener, OptionsInEffect), BindError> {
    let name = addr.to_string();
    let io_err = |e| BindError::from_io(name.clone(), e);
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(io_err)?;
    sock.set_reuse_address(o.reuseaddr).map_err(io_err)?;
    sock.set_reuse_port(o.reuseport).map_err(io_err)?;
    sock.set_tcp_nodelay(o.nodelay).map_err(io_err)?;
    set_buffers(&sock, o).map_err(io_err)?;
    sock.set_nonblocking(true).map_err(io_err)?;
    sock.bind(&addr.into()).map_err(io_err)?;
    sock.listen(o.backlog).map_err(io_err)?;
    let effect = OptionsInEffect {
        reuseaddr: Some(sock.reuse_address().map_err(io_err)?),
        reuseport: Some(sock.reuse_port().map_err(io_err)?),
        nodelay: Some(sock.tcp_nodelay().map_err(io_err)?),
        backlog: Some((o.backlog, somaxconn())),
        broadcast: None,
        rcvbuf: Some(sock.recv_buffer_size().map_err(io_err)?),
        sndbuf: Some(sock.send_buffer_size().map_err(io_err)?),
    };
    Ok((sock.into(), effect))
}

/// A non-blocking UDP socket.
pub(crate) fn udp_socket(
    addr: SocketAddr,
    o: &SocketOptions,
) -> Result<(std::net::UdpSocket, OptionsInEffect), BindError> {
    let name = addr.to_string();
    let io_err = |e| BindError::from_io(name.clone(), e);
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, None).map_err(io_err)?;
    // SO_REUSEADDR on UDP would let two servers silently split one port's datagrams, so it
    // follows --reuseport (the explicit way to share a port), not --reuseaddr.
    sock.set_reuse_port(o.reuseport).map_err(io_err)?;
    sock.set_broadcast(o.broadcast).map_err(io_err)?;
    set_buffers(&sock, o).map_err(io_err)?;
    sock.set_nonblocking(true).map_err(io_err)?;
    sock.bind(&addr.into()).map_err(io_err)?;
    let effect = OptionsInEffect {
        reuseaddr: Some(sock.reuse_address().map_err(io_err)?),
        reuseport: Some(sock.reuse_port().map_err(io_err)?),
        nodelay: None,
        backlog: None,
        broadcast: Some(sock.broadcast().map_err(io_err)?),
        rcvbuf: Some(sock.recv_buffer_size().map_err(io_err)?),
        sndbuf: Some(sock.send_buffer_size().map_err(io_err)?),
    };
    Ok((sock.into(), effect))
}

/// Whether something is bound to the socket file at `path`, found by connecting to it without
/// blocking: a live listener answers (or is merely busy), a stale file refuses.
fn unix_path_is_live(path: &Path, ty: Type) -> io::Result<bool> {
    let probe = Socket::new(Domain::UNIX, ty, None)?;
    probe.set_nonblocking(true)?;
    match probe.connect(&SockAddr::unix(path)?) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(false),
        Err(e) => Err(e),
    }
}

/// Binds a Unix socket at `path`, replacing a stale socket file left by a crashed run but never
/// a live one, nor anything that is not a socket.
fn bind_unix(path: &Path, ty: Type, o: &SocketOptions) -> Result<Socket, BindError> {
    let kind = if ty == Type::STREAM {
        "unix"
    } else {
        "unixgram"
    };
    let name = format!("{kind}:{}", path.display());
    let io_err = |e| BindError::from_io(name.clone(), e);
    let fresh = || -> io::Result<Socket> {
        let sock = Socket::new(Domain::UNIX, ty, None)?;
        set_buffers(&sock, o)?;
        sock.set_nonblocking(true)?;
        Ok(sock)
    };
    let addr = SockAddr::unix(path).map_err(io_err)?;
    let sock = fresh().map_err(io_err)?;
    match sock.bind(&addr) {
        Ok(()) => return Ok(sock),
        Err(e) if e.kind() != io::ErrorKind::AddrInUse => return Err(io_err(e)),
        Err(_) => {}
    }
    let meta = std::fs::symlink_metadata(path).map_err(io_err)?;
    if !meta.file_type().is_socket() {
        return Err(BindError::NotASocket {
            path: path.to_owned(),
        });
    }
    if unix_path_is_live(path, ty).map_err(io_err)? {
        return Err(BindError::UnixLive { addr: name });
    }
    tracing::info!(path = %path.display(), "replacing a stale socket file left by an earlier run");
    std::fs::remove_file(path).map_err(io_err)?;
    let sock = fresh().map_err(io_err)?;
    sock.bind(&addr).map_err(io_err)?;
    Ok(sock)
}

fn unix_effect(sock: &Socket) -> io::Result<OptionsInEffect> {
    Ok(OptionsInEffect {
        rcvbuf: Some(sock.recv_buffer_size()?),
        sndbuf: Some(sock.send_buffer_size()?),
        ..OptionsInEffect::default()
    })
}

/// A non-blocking Unix stream listener at `path`.
pub(crate) fn unix_listener(
    path: &Path,
    o: &SocketOptions,
) -> Result<(UnixListener, OptionsInEffect), BindError> {
    let sock = bind_unix(path, Type::STREAM, o)?;
    let io_err = |e| BindError::from_io(format!("unix:{}", path.display()), e);
    sock.listen(o.backlog).map_err(io_err)?;
    let mut effect = unix_effect(&sock).map_err(io_err)?;
    effect.backlog = Some((o.backlog, somaxconn()));
    Ok((sock.into(), effect))
}

/// A non-blocking Unix datagram socket at `path`.
pub(crate) fn unix_datagram(
    path: &Path,
    o: &SocketOptions,
) -> Result<(UnixDatagram, OptionsInEffect), BindError> {
    let sock = bind_unix(path, Type::DGRAM, o)?;
    let effect = unix_effect(&sock)
        .map_err(|e| BindError::from_io(format!("unixgram:{}", path.display()), e))?;
    Ok((sock.into(), effect))
}

/// The options in effect on a socket this process inherited (socket activation), read back
/// as for the ones it binds; `backlog` is unknown (the passer chose it).
pub(crate) fn inherited_effect(
    fd: &impl AsFd,
    inet: bool,
    stream: bool,
) -> io::Result<OptionsInEffect> {
    let sock = SockRef::from(fd);
    Ok(OptionsInEffect {
        reuseaddr: if inet {
            Some(sock.reuse_address()?)
        } else {
            None
        },
        reuseport: if inet { Some(sock.reuse_port()?) } else { None },
        nodelay: None,
        backlog: None,
        broadcast: if inet && !stream {
            Some(sock.broadcast()?)
        } else {
            None
        },
        rcvbuf: Some(sock.recv_buffer_size()?),
        sndbuf: Some(sock.send_buffer_size()?),
    })
}

/// Sets TCP_NODELAY on an accepted TCP connection.
pub(crate) fn set_nodelay(stream: &impl AsFd, nodelay: bool) -> io::Result<()> {
    SockRef::from(stream).set_tcp_nodelay(nodelay)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit, so that `--max-conns` rather than a low
/// default decides how many clients fit. Returns the (old, new) soft limits.
pub(crate) fn raise_fd_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; no other memory is touched.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let old = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit only reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((old, lim.rlim_cur))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_listener_reports_what_the_kernel_set() {
        let o = SocketOptions {
            rcvbuf: Some(65536),
            nodelay: false,
            ..SocketOptions::default()
        };
        let (l, effect) = tcp_listener("127.0.0.1:0".parse().unwrap(), &o).unwrap();
        assert_ne!(l.local_addr().unwrap().port(), 0);
        assert_eq!(effect.reuseaddr, Some(true));
        assert_eq!(effect.nodelay, Some(false));
        // Linux doubles the request to leave room for its bookkeeping.
        assert!(effect.rcvbuf.unwrap() >= 65536, "{effect}");
        let line = effect.to_string();
        assert!(line.starts_with("reuseaddr=on reuseport=off nodelay=off backlog=1024"));
    }

    #[test]
    fn a_port_in_use_says_so() {
        let o = SocketOptions::default();
        let (l, _) = tcp_listener("127.0.0.1:0".parse().unwrap(), &o).unwrap();
        let err = tcp_listener(l.local_addr().unwrap(), &o).unwrap_err();
        assert!(matches!(err, BindError::InUse { .. }), "{err}");
        assert!(err.to_string().contains("already in use"));
    }

    #[test]
    fn unix_sockets_replace_stale_files_but_not_live_ones_or_other_files() {
        let dir = std::env::temp_dir().join(format!("socklab-sockopt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let _ = std::fs::remove_file(&path);
        let o = SocketOptions::default();

        drop(UnixListener::bind(&path).unwrap()); // leaves a stale file behind
        assert!(path.exists());
        let (live, _) = unix_listener(&path, &o).unwrap();
        let err = unix_listener(&path, &o).unwrap_err();
        assert!(matches!(err, BindError::UnixLive { .. }), "{err}");
        assert!(path.exists(), "a live socket's file must be left alone");
        drop(live);

        let plain = dir.join("plain");
        std::fs::write(&plain, b"keep me").unwrap();
        assert!(matches!(
            unix_listener(&plain, &o),
            Err(BindError::NotASocket { .. })
        ));
        assert_eq!(std::fs::read(&plain).unwrap(), b"keep me");

        let gram = dir.join("g.sock");
        let _ = std::fs::remove_file(&gram);
        drop(UnixDatagram::bind(&gram).unwrap());
        let (g, _) = unix_datagram(&gram, &o).unwrap();
        assert!(matches!(
            unix_datagram(&gram, &o),
            Err(BindError::UnixLive { .. })
        ));
        drop(g);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
