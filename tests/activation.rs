//! systemd socket activation and sd_notify, without systemd: the test binds the sockets
//! itself and passes them the way systemd does (descriptors from 3, `LISTEN_FDS`,
//! `LISTEN_FDNAMES`, `LISTEN_PID` set to the server's own pid), and reads the notifications
//! from a unix datagram socket named by `NOTIFY_SOCKET`.

mod util;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use util::*;

const T: Duration = Duration::from_secs(10);

/// `socklab serve ARGS` started through `sh`, so that `LISTEN_PID` is the pid that execs the
/// server, with `fds` placed at 3, 4, … and named `names`.
fn activated(fds: &[RawFd], names: &[&str], args: &[&str]) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ exec \"$0\" serve \"$@\"")
        .arg(bin())
        .args(args)
        .env("LISTEN_FDS", fds.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"));
    let fds = fds.to_vec();
    // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // First out of the way of 3.., then into place: dup2 clears CLOEXEC.
            let mut high = Vec::with_capacity(fds.len());
            for &fd in &fds {
                let h = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100);
                if h < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                high.push(h);
            }
            for (i, &h) in high.iter().enumerate() {
                if libc::dup2(h, 3 + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd
}

fn no_own_listeners() -> Vec<&'static str> {
    // Every default service off but those a test hands over.
    vec![
        "--no-upper",
        "--no-udp-upper",
        "--no-time",
        "--no-chat",
        "--no-udp-chat",
        "--no-files",
        "--no-discovery",
        "--no-metrics",
    ]
}

#[test]
fn serves_on_inherited_tcp_unix_and_udp_sockets() {
    let dir = TempDir::new("activation");
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_addr = tcp.local_addr().unwrap();
    let path = dir.path().join("echo.sock");
    let unix = UnixListener::bind(&path).unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_addr = udp.local_addr().unwrap();
    let unix_flag = format!("unix:{}", path.display());
    // The configured addresses are placeholders the inherited sockets replace; a second
    // upper listener is bound as usual.
    let mut args = vec![
        "--echo",
        "127.0.0.1:1",
        "--upper",
        &unix_flag,
        "--udp-echo",
        "127.0.0.1:1",
        "--no-udp-upper",
        "--no-time",
        "--no-chat",
        "--no-udp-chat",
        "--no-files",
        "--no-discovery",
    ];
    args.push("--no-metrics");
    let cmd = activated(
        &[tcp.as_raw_fd(), unix.as_raw_fd(), udp.as_raw_fd()],
        &["echo", "upper", "udp-echo"],
        &args,
    );
    let server = Server::start_cmd(cmd);
    let echo = server.listener("echo", "tcp");
    assert_eq!(echo.addr, tcp_addr.to_string());
    assert_eq!(echo.opt("inherited"), "systemd");
    assert_eq!(server.listener("upper", "unix").opt("inherited"), "systemd");
    let udp_line = server.listener("udp-echo", "udp");
    assert_eq!(udp_line.addr, udp_addr.to_string());
    assert_eq!(udp_line.opt("inherited"), "systemd");

    let mut s = TcpStream::connect(tcp_addr).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(b"hello").unwrap();
    let mut got = [0u8; 5];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");

    let mut u = UnixStream::connect(&path).unwrap();
    u.set_read_timeout(Some(T)).unwrap();
    u.write_all(b"abc").unwrap();
    let mut got = [0u8; 3];
    u.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ABC");

    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(T)).unwrap();
    assert_eq!(
        udp_ask(&c, udp_addr, b"ping").as_deref(),
        Some(&b"ping"[..])
    );
}

fn expect_error(fds: &[RawFd], names: &[&str], args: &[&str], needle: &str) {
    let cmd = activated(fds, names, args);
    let (status, stderr) = expect_start_failure(cmd, needle);
    assert_eq!(status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains(needle),
        "want {needle:?} in stderr: {stderr}"
    );
}

#[test]
fn a_udp_socket_named_echo_is_refused() {
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut args = no_own_listeners();
    args.extend(["--echo", "127.0.0.1:0", "--no-udp-echo"]);
    expect_error(
        &[udp.as_raw_fd()],
        &["echo"],
        &args,
        "descriptor 3 (echo): a datagram socket (AF_INET), expected a listening stream socket",
    );
}

#[test]
fn a_regular_file_is_refused() {
    let dir = TempDir::new("regular");
    let f = std::fs::File::create(dir.path().join("plain")).unwrap();
    let mut args = no_own_listeners();
    args.extend(["--echo", "127.0.0.1:0", "--no-udp-echo"]);
    expect_error(
        &[f.as_raw_fd()],
        &["echo"],
        &args,
        "descriptor 3 (echo): not a socket",
    );
}

#[test]
fn a_descriptor_no_listener_wants_is_refused() {
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut args = no_own_listeners();
    args.extend(["--echo", "127.0.0.1:0", "--no-udp-echo"]);
    expect_error(
        &[tcp.as_raw_fd()],
        &["chat"],
        &args,
        "descriptor 3 (chat): no configured listener of that name",
    );
}

#[test]
fn an_unlistened_stream_socket_is_refused() {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let mut args = no_own_listeners();
    args.extend(["--echo", "127.0.0.1:0", "--no-udp-echo"]);
    expect_error(
        &[sock.as_raw_fd()],
        &["echo"],
        &args,
        "descriptor 3 (echo): a stream socket that is not listening",
    );
}

#[test]
fn notifies_ready_watchdog_and_stopping() {
    let dir = TempDir::new("notify");
    let path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&path).unwrap();
    let mut args = no_own_listeners();
    args.extend(["--echo", "127.0.0.1:0", "--no-udp-echo", "--workers", "2"]);
    let mut cmd = serve_cmd(&args);
    cmd.env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "200000");
    let mut server = Server::start_cmd(cmd);
    read_notify_until(&notify, "READY=1", T);
    // Three watchdog pings at 100 ms each: repeated, not one.
    for _ in 0..3 {
        read_notify_until(&notify, "WATCHDOG=1", Duration::from_secs(2));
    }
    server.signal(libc::SIGTERM);
    read_notify_until(&notify, "STOPPING=1", T);
    assert_eq!(server.wait_exit(T).and_then(|s| s.code()), Some(0));
}

#[test]
fn notify_reaches_an_abstract_socket() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("socklab-test-notify-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let notify = UnixDatagram::bind_addr(&addr).unwrap();
    let mut args = no_own_listeners();
    args.extend(["--echo", "127.0.0.1:0", "--no-udp-echo"]);
    let mut cmd = serve_cmd(&args);
    cmd.env("NOTIFY_SOCKET", format!("@{name}"));
    let mut server = Server::start_cmd(cmd);
    read_notify_until(&notify, "READY=1", T);
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(T).and_then(|s| s.code()), Some(0));
}

/// The real thing, where installed: systemd's own `systemd-socket-activate` binds a unix
/// socket, waits for the first connection, and execs the server with it as descriptor 3.
#[test]
fn systemd_socket_activate_passes_a_listener() {
    use std::io::BufRead;
    use std::process::Stdio;
    let tool = "/usr/bin/systemd-socket-activate";
    if !std::path::Path::new(tool).exists() {
        eprintln!("skipped: {tool} is not installed");
        return;
    }
    let dir = TempDir::new("sd-activate");
    let path = dir.path().join("echo.sock");
    let mut args: Vec<String> = vec![
        "-l".into(),
        path.display().to_string(),
        "--fdname=echo".into(),
        bin().into(),
        "serve".into(),
        "--echo".into(),
        "unix:/nonexistent/placeholder".into(),
        "--no-udp-echo".into(),
    ];
    args.extend(no_own_listeners().iter().map(|s| s.to_string()));
    let mut child = Command::new(tool)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    assert!(wait_until(T, || path.exists()), "no socket at {path:?}");
    let mut u = UnixStream::connect(&path).unwrap();
    u.set_read_timeout(Some(T)).unwrap();
    u.write_all(b"through systemd").unwrap();
    let mut got = [0u8; 15];
    u.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"through systemd");
    let line = rx.recv_timeout(T).expect("a listening line");
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = wait_child(&mut child, T);
    assert!(
        line.starts_with(&format!("listening echo unix unix:{}", path.display()))
            && line.ends_with("inherited=systemd"),
        "{line}"
    );
    assert_eq!(status.and_then(|s| s.code()), Some(0));
}

#[test]
fn a_unix_listener_where_tcp_is_configured_is_refused() {
    let dir = TempDir::new("family");
    let unix = UnixListener::bind(dir.path().join("s")).unwrap();
    let mut args = no_own_listeners();
    args.extend(["--echo", "127.0.0.1:0", "--no-udp-echo"]);
    expect_error(
        &[unix.as_raw_fd()],
        &["echo"],
        &args,
        "descriptor 3 (echo): a listening stream socket (AF_UNIX), expected a listening stream socket (AF_INET/AF_INET6)",
    );
}
