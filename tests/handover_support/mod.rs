//! Helpers for tests/handover.rs: the server's listeners and control socket, a client of the
//! control protocol, a fake successor and a fake old process speaking it over real Unix
//! sockets with real SCM_RIGHTS messages, a prober that connects in a loop, and the inodes of
//! listening sockets (the same socket before and after a hand-over).
//!
//! Used next to `tests/util/mod.rs`: a test file declares `mod util;` first, then
//! `mod handover_support;`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::*;

/// How long any one step may take.
pub const T: Duration = Duration::from_secs(10);

/// Kills a successor (not a child of this test) when the test ends, whatever happened.
pub struct Pid(pub i32);

impl Drop for Pid {
    fn drop(&mut self) {
        if self.0 > 0 {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
}

pub fn alive(pid: i32) -> bool {
    // A zombie still answers kill(0); its state in /proc says it is gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Echo on TCP and on a unix socket, udp-echo on UDP and a unixgram socket, the control socket
/// at `dir/control.sock`, then `extra`.
pub fn args(dir: &TempDir, extra: &[&str]) -> Vec<String> {
    let unix = format!("unix:{}", dir.file("echo.sock"));
    let gram = format!("unixgram:{}", dir.file("echo.dgram"));
    let mut a = serve_args(
        &[
            ("echo", "127.0.0.1:0"),
            ("echo", unix.as_str()),
            ("udp-echo", "127.0.0.1:0"),
            ("udp-echo", gram.as_str()),
        ],
        &["--control", dir.file("control.sock").as_str()],
    );
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

pub fn control(dir: &TempDir) -> PathBuf {
    dir.path().join("control.sock")
}

/// Sends one command line to the control socket and reads the answer to its end (bounded).
pub fn ask(path: &Path, command: &[u8]) -> String {
    let mut s = UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {path:?}: {e}"));
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(command).unwrap();
    let (got, _) = read_to_end_timeout(&mut s, T);
    String::from_utf8_lossy(&got).into_owned()
}

/// The pid of the process serving the control socket at `path`.
pub fn serving_pid(path: &Path) -> i32 {
    let answer = ask(path, b"status\n");
    answer
        .split_whitespace()
        .find_map(|w| w.strip_prefix("pid="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in the status answer {answer:?}"))
}

pub fn echo_roundtrip(addr: SocketAddr) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&addr, T).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(b"ping\n").map_err(|e| format!("write: {e}"))?;
    let mut got = [0u8; 5];
    s.read_exact(&mut got).map_err(|e| format!("read: {e}"))?;
    (&got == b"ping\n")
        .then_some(())
        .ok_or_else(|| format!("echoed {got:?}"))
}

/// Every listener of `args` answers: TCP and unix echo, UDP and unixgram udp-echo.
pub fn assert_serving(server: &Server, dir: &TempDir, context: &str) {
    echo_roundtrip(server.tcp("echo")).unwrap_or_else(|e| panic!("{context}: tcp echo: {e}"));
    let mut u = UnixStream::connect(dir.file("echo.sock"))
        .unwrap_or_else(|e| panic!("{context}: unix echo: {e}"));
    assert_eq!(
        roundtrip(&mut u, b"unix", T),
        b"unix",
        "{context}: unix echo"
    );
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(T)).unwrap();
    assert_eq!(
        udp_ask(&udp, server.udp("udp-echo"), b"udp").as_deref(),
        Some(&b"udp"[..]),
        "{context}: udp echo"
    );
    let me = dir.file(&format!("client-{}.dgram", std::process::id()));
    let _ = std::fs::remove_file(&me);
    let g = std::os::unix::net::UnixDatagram::bind(&me).unwrap();
    g.set_read_timeout(Some(T)).unwrap();
    g.send_to(b"gram", dir.file("echo.dgram")).unwrap();
    let mut buf = [0u8; 16];
    let n = g
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("{context}: unixgram echo: {e}"));
    assert_eq!(&buf[..n], b"gram", "{context}: unixgram echo");
    let _ = std::fs::remove_file(&me);
}

/// The inodes of the TCP sockets listening on `port` (from /proc/net/tcp): the same inodes
/// before and after a hand-over are the same sockets, with their accept queues.
pub fn listening_inodes(port: u16) -> std::collections::BTreeSet<u64> {
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap();
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            let listening = *f.get(3)? == "0A";
            (listening && local_port == port).then(|| f.get(9)?.parse().ok())?
        })
        .collect()
}

/// Plays a successor: asks for the listeners and returns the connection (still open, no
/// `ready` sent), the lines and the descriptors received.
pub fn fake_successor(path: &Path) -> (UnixStream, Vec<String>, Vec<OwnedFd>) {
    let mut s = UnixStream::connect(path).unwrap();
    s.write_all(b"upgrade\n").unwrap();
    let deadline = Instant::now() + T;
    let (mut text, mut fds) = (Vec::new(), Vec::new());
    while !text.ends_with(b"end\n") && !text.starts_with(b"error") {
        assert!(Instant::now() < deadline, "no `end` within {T:?}: {text:?}");
        let mut buf = [0u8; 4096];
        let (n, got) = recv_fds(&s, &mut buf);
        fds.extend(got);
        if n == 0 {
            break;
        }
        text.extend_from_slice(&buf[..n]);
    }
    let lines = String::from_utf8_lossy(&text)
        .lines()
        .map(str::to_owned)
        .collect();
    s.set_read_timeout(Some(T)).unwrap();
    (s, lines, fds)
}

/// One recvmsg with room for 16 descriptors (bounded by the socket's read timeout).
pub fn recv_fds(s: &UnixStream, buf: &mut [u8]) -> (usize, Vec<OwnedFd>) {
    s.set_read_timeout(Some(T)).unwrap();
    let mut cmsg = [0u64; 64];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: the message points at live buffers of the stated sizes.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cmsg) as _;
        let n = libc::recvmsg(s.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
        assert!(n >= 0, "recvmsg: {}", std::io::Error::last_os_error());
        let mut fds = Vec::new();
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(c).cast::<i32>();
                for i in 0..len / 4 {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        (n as usize, fds)
    }
}

/// Connects to `addr` in a loop until `stop`, counting refusals and unanswered requests.
pub struct Prober {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<(u64, u64, u64, Vec<String>)>,
}

impl Prober {
    pub fn start(addr: SocketAddr) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            let (mut ok, mut refused, mut failed, mut why) = (0, 0, 0, Vec::new());
            while !flag.load(Ordering::Relaxed) {
                match echo_roundtrip(addr) {
                    Ok(()) => ok += 1,
                    Err(e) if e.contains("refused") => refused += 1,
                    Err(e) => {
                        failed += 1;
                        why.push(e);
                    }
                }
            }
            (ok, refused, failed, why)
        });
        Prober { stop, handle }
    }

    pub fn finish(self) -> (u64, u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("prober")
    }
}

pub fn send_fd(s: &UnixStream, data: &[u8], fd: i32) {
    let mut cmsg = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut _,
        iov_len: data.len(),
    };
    // SAFETY: the message points at live buffers of the stated sizes.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(4) as _;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(4) as _;
        libc::CMSG_DATA(c).cast::<i32>().write_unaligned(fd);
        assert!(libc::sendmsg(s.as_raw_fd(), &msg, 0) >= 0);
    }
}

/// A fake old process at `path` that answers `upgrade` with `reply` (no descriptors).
pub fn fake_old(path: &Path, reply: &'static [u8]) -> thread::JoinHandle<()> {
    let l = UnixListener::bind(path).unwrap();
    thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        s.set_read_timeout(Some(T)).unwrap();
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf);
        let _ = s.write_all(reply);
    })
}
