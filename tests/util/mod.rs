//! Shared helpers for the reactor integration tests: starting `socklab serve`
//! as a child process and reading its `listening` lines, bounded waits and
//! reads over real sockets, a deterministic PRNG, temporary directories, and
//! small readers of `/proc` (CPU time of a process, TCP socket states).
//!
//! Every wait here is bounded: a test that hangs is a test that lies.
#![allow(dead_code)]

pub mod browser;
pub mod chatbus;
pub mod netns;
pub mod tls;
pub mod tmux;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// How long a server may take to print `ready`.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Path of the `socklab` binary built by cargo for this test run.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_socklab")
}

/// A `socklab serve ARGS...` command.
pub fn serve_cmd<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(bin());
    cmd.arg("serve").args(args);
    cmd
}

/// A `socklab serve ARGS...` command run under `ulimit -n NOFILE` (soft and hard).
pub fn serve_cmd_with_nofile<I, S>(nofile: u32, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    serve_cmd_with_ulimit(&format!("-n {nofile}"), args)
}

/// A `socklab serve ARGS...` command started by `sh` after `ulimit ULIMIT_ARGS`
/// (e.g. `-S -n 256` lowers only the soft limit).
pub fn serve_cmd_with_ulimit<I, S>(ulimit_args: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("ulimit {ulimit_args} && exec \"$0\" \"$@\""))
        .arg(bin())
        .arg("serve")
        .args(args);
    cmd
}

/// Soft and hard "Max open files" of process `pid`, from /proc/PID/limits.
pub fn nofile_limits(pid: i32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/limits: {e}"));
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files line");
    let f: Vec<&str> = line["Max open files".len()..].split_whitespace().collect();
    (f[0].to_string(), f[1].to_string())
}

/// The four services of `socklab serve` that take addresses.
pub const SERVICES: [&str; 4] = ["echo", "upper", "udp-echo", "udp-upper"];

/// Every service `socklab serve --help` offers: the four above plus any other
/// that has both `--NAME <ADDR>` and `--no-NAME`, so that services added later
/// are turned off too and no test ever binds a default port.
pub fn all_services() -> &'static [String] {
    static ALL: OnceLock<Vec<String>> = OnceLock::new();
    ALL.get_or_init(|| {
        let mut all: Vec<String> = SERVICES.iter().map(|s| s.to_string()).collect();
        let Launch::Exited { status, stdout, .. } = Server::launch(serve_cmd(["--help"])) else {
            panic!("`socklab serve --help` printed `ready`");
        };
        if !status.success() {
            return all;
        }
        let words: Vec<&str> = stdout
            .split(|c: char| c.is_whitespace() || c == ',' || c == '=')
            .filter(|w| !w.is_empty())
            .collect();
        for pair in words.windows(2) {
            let (flag, value) = (pair[0], pair[1]);
            let Some(name) = flag.strip_prefix("--") else {
                continue;
            };
            let takes_addr = value.starts_with('<');
            let has_off = words.contains(&format!("--no-{name}").as_str());
            if takes_addr && has_off && !all.iter().any(|s| s == name) {
                all.push(name.to_string());
            }
        }
        all
    })
}

/// Arguments that configure exactly the given `(service, addr)` listeners and
/// turn every other service off (so no test ever binds a default port), then
/// `extra`.
pub fn serve_args(listeners: &[(&str, &str)], extra: &[&str]) -> Vec<String> {
    let mut args = Vec::new();
    for (s, _) in listeners {
        assert!(
            all_services().iter().any(|known| known == s),
            "unknown service {s}"
        );
    }
    for service in all_services() {
        let mut any = false;
        for (s, addr) in listeners {
            if s == service {
                args.push(format!("--{service}"));
                args.push(addr.to_string());
                any = true;
            }
        }
        if !any {
            args.push(format!("--no-{service}"));
        }
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Sends one datagram to `to` and waits (up to the socket's read timeout) for one back.
pub fn udp_ask(sock: &std::net::UdpSocket, to: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
    sock.send_to(payload, to).expect("send");
    let mut buf = [0u8; 65536];
    match sock.recv_from(&mut buf) {
        Ok((n, _)) => Some(buf[..n].to_vec()),
        Err(_) => None,
    }
}

/// One `listening <service> <transport> <addr> k=v ...` line of the server.
#[derive(Debug, Clone)]
pub struct Listener {
    /// `echo`, `upper`, `udp-echo`, `udp-upper`.
    pub service: String,
    /// `tcp`, `udp`, `unix` or `unixgram`.
    pub transport: String,
    /// The bound address in flag form: `127.0.0.1:41234`, `unix:/x`, `unixgram:/y`.
    pub addr: String,
    /// Socket options as read back by the server, e.g. `nodelay` → `on`.
    pub opts: BTreeMap<String, String>,
}

impl Listener {
    /// Parses one `listening ...` line; `None` if it is not one.
    pub fn parse(line: &str) -> Option<Listener> {
        let mut words = line.split_whitespace();
        if words.next()? != "listening" {
            return None;
        }
        let service = words.next()?.to_string();
        let transport = words.next()?.to_string();
        let addr = words.next()?.to_string();
        let mut opts = BTreeMap::new();
        for kv in words {
            let (k, v) = kv.split_once('=')?;
            opts.insert(k.to_string(), v.to_string());
        }
        Some(Listener {
            service,
            transport,
            addr,
            opts,
        })
    }

    /// The option `key`, or a panic naming the line.
    pub fn opt(&self, key: &str) -> &str {
        self.opts
            .get(key)
            .unwrap_or_else(|| panic!("listening line {self:?} has no {key}=..."))
    }

    /// The option `key` as a number.
    pub fn opt_u64(&self, key: &str) -> u64 {
        let v = self.opt(key);
        v.parse()
            .unwrap_or_else(|_| panic!("{key}={v} is not a number in {self:?}"))
    }
}

/// What became of a launched server.
pub enum Launch {
    /// It printed `ready`.
    Ready(Server),
    /// It exited before printing `ready`.
    Exited {
        status: ExitStatus,
        stdout: String,
        stderr: String,
    },
}

/// A running `socklab serve`; killed (SIGKILL) and reaped on drop.
pub struct Server {
    child: Child,
    /// Listeners in the order the server printed them.
    pub listeners: Vec<Listener>,
    /// Every stdout line, `ready` included (and whatever comes after it).
    stdout: Arc<Mutex<Vec<String>>>,
    /// Everything written to stderr so far.
    stderr: Arc<Mutex<String>>,
    /// Exit status once reaped.
    status: Option<ExitStatus>,
}

impl Server {
    /// Starts `socklab serve ARGS...` and waits for `ready`; panics (with the
    /// server's stderr) if it exits or takes longer than [`START_TIMEOUT`].
    pub fn start<I, S>(args: I) -> Server
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Self::start_cmd(serve_cmd(args))
    }

    /// Like [`Server::start`] for a prepared command.
    pub fn start_cmd(cmd: Command) -> Server {
        let desc = format!("{cmd:?}");
        match Self::launch(cmd) {
            Launch::Ready(server) => server,
            Launch::Exited {
                status,
                stdout,
                stderr,
            } => panic!(
                "server {desc} exited before `ready` with {status}\n--- stdout ---\n{stdout}--- stderr ---\n{stderr}"
            ),
        }
    }

    /// Starts the command and waits (bounded) until it prints `ready` or exits.
    pub fn launch(mut cmd: Command) -> Launch {
        let desc = format!("{cmd:?}");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {desc}: {e}"));

        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_pipe = child.stderr.take().expect("stderr piped");
        let stderr_thread = {
            let stderr = stderr.clone();
            thread::spawn(move || {
                let mut reader = BufReader::new(stderr_pipe);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match reader.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => stderr
                            .lock()
                            .unwrap()
                            .push_str(&String::from_utf8_lossy(&line)),
                    }
                }
            })
        };

        let stdout = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<String>();
        let stdout_pipe = child.stdout.take().expect("stdout piped");
        {
            let stdout = stdout.clone();
            thread::spawn(move || {
                let reader = BufReader::new(stdout_pipe);
                for line in reader.lines() {
                    let Ok(line) = line else { break };
                    stdout.lock().unwrap().push(line.clone());
                    // The receiver is gone once `ready` was seen; keep draining.
                    let _ = tx.send(line);
                }
            });
        }

        let deadline = Instant::now() + START_TIMEOUT;
        let mut listeners = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if line.trim() == "ready" {
                        return Launch::Ready(Server {
                            child,
                            listeners,
                            stdout,
                            stderr,
                            status: None,
                        });
                    }
                    if let Some(l) = Listener::parse(&line) {
                        listeners.push(l);
                    } else if line.starts_with("listening") {
                        let _ = child.kill();
                        let _ = child.wait();
                        panic!("malformed listening line from {desc}: {line:?}");
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed: the process is exiting (or closed stdout, which it must not).
                    let status = wait_child(&mut child, Duration::from_secs(10));
                    let Some(status) = status else {
                        let _ = child.kill();
                        let _ = child.wait();
                        panic!(
                            "{desc} closed stdout before `ready` but did not exit\n--- stderr ---\n{}",
                            stderr.lock().unwrap()
                        );
                    };
                    // Let the stderr reader reach end of file (bounded).
                    wait_until(Duration::from_secs(5), || stderr_thread.is_finished());
                    let stdout = stdout.lock().unwrap().join("\n") + "\n";
                    let stderr = stderr.lock().unwrap().clone();
                    return Launch::Exited {
                        status,
                        stdout,
                        stderr,
                    };
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "{desc} did not print `ready` within {START_TIMEOUT:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                        stdout.lock().unwrap().join("\n"),
                        stderr.lock().unwrap()
                    );
                }
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Everything the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Every stdout line so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Waits (bounded) until stderr contains `needle`.
    pub fn wait_stderr_contains(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.stderr.lock().unwrap().contains(needle))
    }

    /// Sends a signal to the server process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(
            rc,
            0,
            "kill({}, {sig}): {}",
            self.pid(),
            io::Error::last_os_error()
        );
    }

    /// Waits up to `timeout` for the server to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = wait_child(&mut self.child, timeout);
        }
        self.status
    }

    /// `Some(status)` if the process has exited (reaps it).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    /// Panics unless the process is still running.
    pub fn assert_alive(&mut self, context: &str) {
        if let Some(status) = self.try_status() {
            panic!(
                "{context}: server exited with {status}\n--- stderr ---\n{}",
                self.stderr()
            );
        }
    }

    /// All listeners of `service` over `transport`.
    pub fn listeners_of(&self, service: &str, transport: &str) -> Vec<&Listener> {
        self.listeners
            .iter()
            .filter(|l| l.service == service && l.transport == transport)
            .collect()
    }

    /// The first listener of `service` over `transport`, or a panic listing what there is.
    pub fn listener(&self, service: &str, transport: &str) -> &Listener {
        self.listeners_of(service, transport)
            .into_iter()
            .next()
            .unwrap_or_else(|| {
                panic!(
                    "no `listening {service} {transport}` line; got {:#?}",
                    self.listeners
                )
            })
    }

    fn inet(&self, service: &str, transport: &str) -> SocketAddr {
        let l = self.listener(service, transport);
        let addr: SocketAddr = l
            .addr
            .parse()
            .unwrap_or_else(|e| panic!("address of {l:?}: {e}"));
        assert_ne!(addr.port(), 0, "listening line shows port 0: {l:?}");
        addr
    }

    fn path(&self, service: &str, transport: &str) -> PathBuf {
        let l = self.listener(service, transport);
        let prefix = format!("{transport}:");
        let path = l
            .addr
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("address of {l:?} does not start with {prefix}"));
        PathBuf::from(path)
    }

    /// Bound address of the service's TCP listener.
    pub fn tcp(&self, service: &str) -> SocketAddr {
        self.inet(service, "tcp")
    }

    /// Bound address of the service's UDP socket.
    pub fn udp(&self, service: &str) -> SocketAddr {
        self.inet(service, "udp")
    }

    /// Path of the service's Unix stream listener.
    pub fn unix(&self, service: &str) -> PathBuf {
        self.path(service, "unix")
    }

    /// Path of the service's Unix datagram socket.
    pub fn unixgram(&self, service: &str) -> PathBuf {
        self.path(service, "unixgram")
    }

    /// A connected client of the service's TCP listener (blocking, 10 s timeouts).
    pub fn connect(&self, service: &str) -> TcpStream {
        let addr = self.tcp(service);
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect {addr}: {e}\n--- stderr ---\n{}", self.stderr()));
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "--- stderr of server pid {} ---\n{}--- end of server stderr ---",
                self.child.id(),
                self.stderr()
            );
        }
    }
}

/// Launches a command that is expected to fail at start-up; panics (killing it)
/// if it prints `ready` instead, with `why` in the message.
pub fn expect_start_failure(cmd: Command, why: &str) -> (ExitStatus, String) {
    match Server::launch(cmd) {
        Launch::Ready(server) => panic!(
            "server started although {why}\nlisteners: {:#?}\n--- stderr ---\n{}",
            server.listeners,
            server.stderr()
        ),
        Launch::Exited { status, stderr, .. } => (status, stderr),
    }
}

pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Collects a child's stdout and stderr and waits for it; kills it and panics (naming `what`)
/// if it has not exited within `bound`.
pub fn finish_child(mut child: Child, bound: Duration, what: &str) -> std::process::Output {
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut v);
            }
            v
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let Some(status) = wait_child(&mut child, bound) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{what} did not exit within {bound:?}");
    };
    std::process::Output {
        status,
        stdout: out.join().expect("the stdout reader"),
        stderr: err.join().expect("the stderr reader"),
    }
}

/// Runs `cmd` with `input` written to its stdin (then closed), stdout and stderr collected;
/// bounded as [`finish_child`].
pub fn run_with_input(mut cmd: Command, input: &[u8], bound: Duration) -> std::process::Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let writer = thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = finish_child(child, bound, &what);
    let _ = writer.join();
    out
}

/// Sends `sig` to process `pid` (one the test started).
pub fn signal_pid(pid: i32, sig: i32) {
    assert!(pid > 0, "no process to signal");
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}): {}", io::Error::last_os_error());
}

/// True when the test runs as root; otherwise says the test `name` is skipped and `why`, and
/// answers false. CI runs as root, so there a test that needs root never skips.
pub fn root_or_skip(name: &str, why: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{name}: CI runs as root, and {why}"
    );
    eprintln!("SKIPPED {name}: {why}");
    false
}

/// A loopback address nothing listens on: a port that was just free (bound, read, closed).
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr")
}

/// Polls `cond` every few milliseconds until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl), 0);
        if rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max;
            assert_eq!(
                libc::setrlimit(libc::RLIMIT_NOFILE, &rl),
                0,
                "setrlimit: {}",
                io::Error::last_os_error()
            );
        }
        rl.rlim_cur
    }
}

/// A stream socket the helpers can put a read timeout on.
pub trait Stream: Read + Write + AsRawFd {
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()>;
}

impl Stream for TcpStream {
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(t)
    }
}

impl Stream for UnixStream {
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(t)
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
    )
}

/// How a bounded read ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Got everything that was asked for.
    Complete,
    /// Orderly end of stream.
    Eof,
    /// ECONNRESET or similar.
    Reset,
    /// Nothing more arrived before the deadline.
    TimedOut,
}

impl End {
    /// The peer closed the connection (EOF or reset).
    pub fn closed(self) -> bool {
        matches!(self, End::Eof | End::Reset)
    }
}

/// Reads until `want` bytes arrived (or end of stream when `want` is `None`),
/// the peer closed, or `timeout` passed. Returns what was read and why it stopped.
pub fn read_bounded<S: Stream + ?Sized>(
    s: &mut S,
    want: Option<usize>,
    timeout: Duration,
) -> (Vec<u8>, End) {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if want.is_some_and(|w| out.len() >= w) {
            return (out, End::Complete);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (out, End::TimedOut);
        }
        s.set_timeout(Some(left)).unwrap();
        let max = want.map_or(buf.len(), |w| (w - out.len()).min(buf.len()));
        match s.read(&mut buf[..max]) {
            Ok(0) => return (out, End::Eof),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return (out, End::TimedOut),
            Err(e) if is_reset(&e) => return (out, End::Reset),
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// Reads exactly `n` bytes within `timeout`, or panics saying what happened.
pub fn read_exact_timeout<S: Stream + ?Sized>(s: &mut S, n: usize, timeout: Duration) -> Vec<u8> {
    let (got, end) = read_bounded(s, Some(n), timeout);
    assert_eq!(
        end,
        End::Complete,
        "wanted {n} bytes within {timeout:?}, got {} then {end:?}",
        got.len()
    );
    got
}

/// Reads until end of stream within `timeout`; returns the bytes and how it ended.
pub fn read_to_end_timeout<S: Stream + ?Sized>(s: &mut S, timeout: Duration) -> (Vec<u8>, End) {
    read_bounded(s, None, timeout)
}

/// Writes `data` and reads back as many bytes, each step within `timeout`.
pub fn roundtrip<S: Stream + ?Sized>(s: &mut S, data: &[u8], timeout: Duration) -> Vec<u8> {
    s.write_all(data).expect("write");
    read_exact_timeout(s, data.len(), timeout)
}

/// Sends one byte and classifies the answer: `Complete` if it came back,
/// else how the connection ended (`Eof`/`Reset`) or `TimedOut`.
pub fn probe<S: Stream + ?Sized>(s: &mut S, timeout: Duration) -> End {
    match s.write_all(b"p") {
        Ok(()) => {}
        Err(e) if is_reset(&e) => return End::Reset,
        Err(e) => panic!("write: {e}"),
    }
    let (got, end) = read_bounded(s, Some(1), timeout);
    if end == End::Complete {
        assert_eq!(got, b"p", "probe echoed the wrong byte");
    }
    end
}

/// Connects to `addr` and checks that one echo round trip works within `timeout`.
pub fn echo_works(addr: SocketAddr, timeout: Duration) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    s.set_write_timeout(Some(timeout)).unwrap();
    let msg = b"still alive?";
    if s.write_all(msg).is_err() {
        return false;
    }
    let (got, end) = read_bounded(&mut s, Some(msg.len()), timeout);
    end == End::Complete && got == msg
}

/// Waits until `fd` is writable (POLLOUT, or an error/hangup that a write will report).
pub fn wait_writable(fd: &impl AsRawFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    loop {
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 && io::Error::last_os_error().kind() == ErrorKind::Interrupted {
            continue;
        }
        assert!(rc >= 0, "poll: {}", io::Error::last_os_error());
        return rc > 0;
    }
}

/// Why [`write_until_blocked`] stopped.
#[derive(Debug)]
pub enum WriteStop {
    /// No write progress for the stall period.
    Blocked,
    /// The byte cap was reached.
    Cap,
    /// A write failed (EPIPE, ECONNRESET, ...).
    Failed(io::Error),
}

/// Writes pseudo-random bytes to a non-blocking stream (which it never reads)
/// until no write makes progress for `stall`, `cap` bytes went out, or a
/// write fails. Returns every byte that was accepted, and why it stopped.
pub fn write_until_blocked<S: Write + AsRawFd>(
    s: &mut S,
    rng: &mut Rng,
    cap: usize,
    stall: Duration,
) -> (Vec<u8>, WriteStop) {
    let mut sent = Vec::with_capacity(cap.min(32 << 20));
    let mut chunk = vec![0u8; 64 * 1024];
    rng.fill(&mut chunk);
    let mut off = 0;
    loop {
        if sent.len() >= cap {
            return (sent, WriteStop::Cap);
        }
        if off == chunk.len() {
            rng.fill(&mut chunk);
            off = 0;
        }
        let end = chunk.len().min(off + cap - sent.len());
        match s.write(&chunk[off..end]) {
            Ok(0) => return (sent, WriteStop::Failed(ErrorKind::WriteZero.into())),
            Ok(n) => {
                sent.extend_from_slice(&chunk[off..off + n]);
                off += n;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if !wait_writable(s, stall) {
                    return (sent, WriteStop::Blocked);
                }
            }
            Err(e) => return (sent, WriteStop::Failed(e)),
        }
    }
}

/// Index of the first differing byte, for readable assertion messages.
pub fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or(if a.len() != b.len() {
            Some(a.len().min(b.len()))
        } else {
            None
        })
}

/// Asserts that two byte strings are equal without dumping megabytes on failure.
#[track_caller]
pub fn assert_bytes_eq(got: &[u8], want: &[u8], what: &str) {
    if let Some(i) = first_diff(got, want) {
        let ctx = |v: &[u8]| v[i.saturating_sub(8).min(v.len())..(i + 8).min(v.len())].to_vec();
        panic!(
            "{what}: got {} bytes, want {}; first difference at byte {i}: got {:?}, want {:?}",
            got.len(),
            want.len(),
            ctx(got),
            ctx(want)
        );
    }
}

/// Maps ASCII a–z to A–Z and leaves every other byte alone: what `upper` must do.
pub fn upper(data: &[u8]) -> Vec<u8> {
    data.iter().map(|b| b.to_ascii_uppercase()).collect()
}

/// Deterministic xorshift64* generator: reproducible test data without a dependency.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }
}

/// A fresh directory under the system temp dir, removed (with its contents) on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "socklab-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {dir:?}: {e}"));
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `dir/name` as a string (for building `unix:...` arguments).
    pub fn file(&self, name: &str) -> String {
        self.0
            .join(name)
            .to_str()
            .expect("utf-8 temp path")
            .to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// User + system CPU time consumed so far by process `pid`, from /proc/PID/stat.
pub fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/stat: {e}"));
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields[11].parse().unwrap();
    let stime: u64 = fields[12].parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis((utime + stime) * 1000 / hz)
}

/// TCP socket states as numbered in /proc/net/tcp.
pub const TCP_ESTABLISHED: u8 = 0x01;
pub const TCP_FIN_WAIT2: u8 = 0x05;
pub const TCP_TIME_WAIT: u8 = 0x06;
pub const TCP_LISTEN: u8 = 0x0A;

/// One IPv4 TCP socket from /proc/net/tcp.
#[derive(Debug, Clone, Copy)]
pub struct TcpEntry {
    pub local: SocketAddrV4,
    pub remote: SocketAddrV4,
    pub state: u8,
    /// Bytes in the send queue (unacknowledged or unsent).
    pub tx_queue: u64,
    /// Bytes received and not yet read by the application.
    pub rx_queue: u64,
}

/// Every IPv4 TCP socket of this network namespace (TIME_WAIT ones included).
pub fn tcp_table() -> Vec<TcpEntry> {
    fn addr(s: &str) -> SocketAddrV4 {
        let (ip, port) = s.split_once(':').unwrap();
        let ip = u32::from_str_radix(ip, 16).unwrap();
        let port = u16::from_str_radix(port, 16).unwrap();
        SocketAddrV4::new(Ipv4Addr::from(ip.to_ne_bytes()), port)
    }
    let text = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 5 {
                return None;
            }
            let (tx, rx) = f[4].split_once(':')?;
            Some(TcpEntry {
                local: addr(f[1]),
                remote: addr(f[2]),
                state: u8::from_str_radix(f[3], 16).ok()?,
                tx_queue: u64::from_str_radix(tx, 16).ok()?,
                rx_queue: u64::from_str_radix(rx, 16).ok()?,
            })
        })
        .collect()
}

/// The socket with exactly this local and remote address, if any.
pub fn tcp_entry(local: SocketAddr, remote: SocketAddr) -> Option<TcpEntry> {
    let (SocketAddr::V4(local), SocketAddr::V4(remote)) = (local, remote) else {
        panic!("tcp_entry only knows IPv4");
    };
    tcp_table()
        .into_iter()
        .find(|e| e.local == local && e.remote == remote)
}

/// Pattern of prime length, so that a stream of it shifted by whole chunks is caught.
pub fn pattern() -> Vec<u8> {
    Rng::new(0xFA1E).bytes(65521)
}

/// Checks that `data` is the slice of the endless repetition of `pat` starting at `offset`.
pub fn matches_pattern(pat: &[u8], offset: u64, data: &[u8]) -> bool {
    let mut pos = (offset % pat.len() as u64) as usize;
    let mut rest = data;
    while !rest.is_empty() {
        let n = rest.len().min(pat.len() - pos);
        if rest[..n] != pat[pos..pos + n] {
            return false;
        }
        rest = &rest[n..];
        pos = (pos + n) % pat.len();
    }
    true
}

/// Checks a Prometheus exposition with `promtool check metrics` (Debian's `prometheus`
/// package). CI installs it and must not skip the check; elsewhere a missing promtool is said.
pub fn promtool_check(body: &str) {
    let run = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child
                .stdin
                .take()
                .expect("piped stdin")
                .write_all(body.as_bytes())?;
            child.wait_with_output()
        });
    match run {
        Ok(out) => assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("CI installs promtool (Debian's prometheus), but it cannot run: {e}")
        }
        Err(e) => eprintln!("promtool cannot run ({e}): the format was checked by this test only"),
    }
}

/// Runs `socklab ARGS...` (a client command) with stdin closed; see [`run_bounded`].
pub fn run_socklab<I, S>(args: I, timeout: Duration) -> std::process::Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(bin());
    cmd.args(args);
    run_bounded(cmd, timeout)
}

/// Reads a child's stdout or stderr to its end on a thread of its own, so that a child that
/// writes more than a pipe holds cannot block the test that waits for it.
pub fn drain(r: Option<impl Read + Send + 'static>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut v);
        }
        v
    })
}

/// Runs `cmd` with stdin closed and returns its output; kills it and panics if it has not
/// exited within `timeout`.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> std::process::Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let desc = format!("{cmd:?}");
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{desc} did not exit within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(5));
    };
    std::process::Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// sd_notify datagrams received on `sock` within `within`, until one has the line `want`
/// (panics, with what came, if none does).
pub fn read_notify_until(
    sock: &std::os::unix::net::UnixDatagram,
    want: &str,
    within: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let hit = msg.lines().any(|l| l == want);
                seen.push(msg);
                if hit {
                    return seen;
                }
            }
            Err(_) => break,
        }
    }
    panic!("no {want:?} within {within:?}; got {seen:?}");
}
