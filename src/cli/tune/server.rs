//! A `socklab serve` child process on loopback for the experiments of `tune` and `sticky`:
//! started from this very binary with explicit `127.0.0.1:0` addresses and every unused
//! service off, its `listening` lines read for ports and the options the kernel set, and
//! stopped (SIGTERM, then SIGKILL) with every wait bounded.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

/// How long a server may take to print `ready`.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a server may take to exit after SIGTERM before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The services `socklab serve` is known to have, for when its `--help` cannot be read.
const KNOWN_SERVICES: [&str; 10] = [
    "echo",
    "upper",
    "udp-echo",
    "udp-upper",
    "files",
    "chat",
    "udp-chat",
    "time",
    "discovery",
    "metrics",
];

/// Every service this binary's `serve` has: the `X` with both `--X <ADDR>` and `--no-X` in
/// `serve --help`, so that a service added later is turned off too.
fn services() -> &'static [String] {
    static SERVICES: OnceLock<Vec<String>> = OnceLock::new();
    SERVICES.get_or_init(|| {
        let help = std::env::current_exe()
            .ok()
            .and_then(|exe| {
                Command::new(exe)
                    .args(["serve", "--help"])
                    .stdin(Stdio::null())
                    .stderr(Stdio::null())
                    .output()
                    .ok()
            })
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let flags: Vec<&str> = help
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|w| w.starts_with("--"))
            .collect();
        let with_addr: Vec<&str> = help
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                match (w.next(), w.next()) {
                    (Some(flag), Some("<ADDR>")) => flag.strip_prefix("--"),
                    _ => None,
                }
            })
            .collect();
        let found: Vec<String> = with_addr
            .into_iter()
            .filter(|s| flags.contains(&format!("--no-{s}").as_str()))
            .map(str::to_string)
            .collect();
        if found.is_empty() {
            KNOWN_SERVICES.iter().map(|s| s.to_string()).collect()
        } else {
            found
        }
    })
}

/// Why a server could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The binary could not be found or run.
    #[error("cannot run {exe}: {source}")]
    Spawn {
        /// The program that was run.
        exe: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The server exited (or closed its stdout) before `ready`.
    #[error("the server did not start ({status}): {stderr}")]
    Exited {
        /// How it ended, as text (`exit status: 1`, or `still running`).
        status: String,
        /// What it wrote to stderr.
        stderr: String,
    },
    /// No `ready` within [`START_TIMEOUT`].
    #[error("the server printed no `ready` within {0:?}")]
    StartTimeout(Duration),
    /// A `listening` line that does not parse.
    #[error("cannot parse the server's line `{0}`")]
    BadLine(String),
    /// The server asked for is not in its `listening` lines.
    #[error("the server has no {0} listener")]
    NoListener(String),
    /// A temporary directory could not be made.
    #[error("cannot create a temporary directory: {0}")]
    TempDir(std::io::Error),
}

/// One `listening <service> <transport> <addr> <key>=<value>...` line.
#[derive(Debug, Clone)]
pub struct Listening {
    /// The service's name (`echo`, `files`, ...).
    pub service: String,
    /// `tcp`, `udp`, `unix` or `unixgram`.
    pub transport: String,
    /// The address bound (with the real port).
    pub addr: SocketAddr,
    /// The options in effect, as the server read them back with getsockopt.
    pub options: BTreeMap<String, String>,
    /// The options' part of the line, as printed.
    pub options_text: String,
}

impl Listening {
    /// Parses one `listening` line.
    pub fn parse(line: &str) -> Result<Listening, ServerError> {
        let bad = || ServerError::BadLine(line.to_string());
        let mut words = line.split_whitespace();
        if words.next() != Some("listening") {
            return Err(bad());
        }
        let service = words.next().ok_or_else(bad)?.to_string();
        let transport = words.next().ok_or_else(bad)?.to_string();
        let addr = words.next().and_then(|a| a.parse().ok()).ok_or_else(bad)?;
        let rest: Vec<&str> = words.collect();
        let options = rest
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Ok(Listening {
            service,
            transport,
            addr,
            options,
            options_text: rest.join(" "),
        })
    }

    /// One option's value, or `?` when the line does not have it.
    pub fn option(&self, key: &str) -> &str {
        self.options.get(key).map_or("?", String::as_str)
    }
}

/// A directory under the system's temporary directory, removed when dropped.
#[derive(Debug)]
pub struct TempDir {
    /// Its path.
    path: PathBuf,
}

impl TempDir {
    /// Creates a fresh, empty directory named after `what`, this process and a counter.
    pub fn new(what: &str) -> Result<TempDir, ServerError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("socklab-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).map_err(ServerError::TempDir)?;
        Ok(TempDir { path })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A running `socklab serve` child.
#[derive(Debug)]
pub struct Server {
    /// The child; `None` once it has been waited for.
    child: Option<Child>,
    /// Its `listening` lines.
    pub listeners: Vec<Listening>,
    /// Its stderr so far, collected by a thread.
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    /// The data directory of `files`, if this server has one.
    _data_dir: Option<TempDir>,
}

/// The arguments of `socklab serve` that start exactly `services` (each on the address
/// given with it; every other service off), followed by `extra`.
pub fn serve_args(services_wanted: &[(&str, String)], extra: &[String]) -> Vec<String> {
    let mut args = vec!["serve".to_string()];
    for s in services() {
        match services_wanted.iter().find(|(name, _)| name == s) {
            Some((_, addr)) => {
                args.push(format!("--{s}"));
                args.push(addr.clone());
            }
            None => args.push(format!("--no-{s}")),
        }
    }
    args.extend(extra.iter().cloned());
    args
}

impl Server {
    /// Starts `socklab serve` with exactly `services` on `127.0.0.1:0` and `extra` flags, and
    /// waits (bounded) for `ready`. A `files` service gets a temporary data directory.
    pub fn start(services: &[&str], extra: &[String]) -> Result<Server, ServerError> {
        let at: Vec<(&str, String)> = services
            .iter()
            .map(|s| (*s, "127.0.0.1:0".to_string()))
            .collect();
        Server::start_at(&at, extra)
    }

    /// Starts `socklab serve` with exactly `services`, each on the address given with it.
    pub fn start_at(services: &[(&str, String)], extra: &[String]) -> Result<Server, ServerError> {
        let mut extra = extra.to_vec();
        let data_dir = if services.iter().any(|(s, _)| *s == "files") {
            let dir = TempDir::new("data")?;
            extra.push("--data-dir".into());
            extra.push(dir.path().display().to_string());
            Some(dir)
        } else {
            None
        };
        let mut server = Server::spawn(&serve_args(services, &extra))?;
        server._data_dir = data_dir;
        Ok(server)
    }

    /// Runs this binary with `args` (the first being `serve`), reading `listening` lines
    /// until `ready` (at most [`START_TIMEOUT`]).
    pub fn spawn(args: &[String]) -> Result<Server, ServerError> {
        Server::spawn_in(None, args)
    }

    /// Starts `socklab serve` with exactly `services`, each on the address given with it,
    /// inside the network namespace `netns` (`ip netns exec`, which execs the server itself:
    /// the child is the server).
    pub fn start_in_netns(
        netns: &str,
        services: &[(&str, String)],
        extra: &[String],
    ) -> Result<Server, ServerError> {
        Server::spawn_in(Some(netns), &serve_args(services, extra))
    }

    /// [`Server::spawn`], inside the network namespace `netns` when there is one.
    fn spawn_in(netns: Option<&str>, args: &[String]) -> Result<Server, ServerError> {
        let exe = std::env::current_exe().map_err(|source| ServerError::Spawn {
            exe: "the current executable".into(),
            source,
        })?;
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let mut child = command
            .args(args)
            .arg("-q")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ServerError::Spawn {
                exe: exe.display().to_string(),
                source,
            })?;
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (err_done_tx, err_done) = mpsc::channel::<()>();
        if let Some(mut pipe) = child.stderr.take() {
            let sink = stderr.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut s) = sink.lock() {
                        s.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
                let _ = err_done_tx.send(());
            });
        }
        let (tx, lines) = mpsc::channel::<String>();
        if let Some(pipe) = child.stdout.take() {
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let mut server = Server {
            child: Some(child),
            listeners: Vec::new(),
            stderr,
            _data_dir: None,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line == "ready" => return Ok(server),
                Ok(line) if line.starts_with("listening ") => {
                    server.listeners.push(Listening::parse(&line)?);
                }
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(ServerError::StartTimeout(START_TIMEOUT));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // Stdout closed: the server is exiting. Wait for it and for its stderr.
                    let status = server.wait_bounded();
                    let _ = err_done.recv_timeout(STOP_TIMEOUT);
                    return Err(ServerError::Exited {
                        status,
                        stderr: server.stderr_text().trim().to_string(),
                    });
                }
            }
        }
    }

    /// The first listener of `service`.
    pub fn listener(&self, service: &str) -> Result<&Listening, ServerError> {
        self.listeners
            .iter()
            .find(|l| l.service == service)
            .ok_or_else(|| ServerError::NoListener(service.to_string()))
    }

    /// The address of the first listener of `service`.
    pub fn addr(&self, service: &str) -> Result<SocketAddr, ServerError> {
        self.listener(service).map(|l| l.addr)
    }

    /// The child's process id.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().and_then(|c| i32::try_from(c.id()).ok())
    }

    /// Sends `signal` to the child (SIGSTOP, SIGCONT, SIGTERM...).
    pub fn signal(&self, signal: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill has no memory effects; the pid is our own child, not yet reaped.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }

    /// What the server wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// SIGTERM, then waits for the exit (at most [`STOP_TIMEOUT`], then SIGKILL).
    /// Returns how it ended, as text.
    pub fn stop(mut self) -> String {
        self.signal(libc::SIGCONT);
        self.signal(libc::SIGTERM);
        self.wait_bounded()
    }

    /// Waits for the child to exit, at most [`STOP_TIMEOUT`]; kills it after that.
    fn wait_bounded(&mut self) -> String {
        let Some(mut child) = self.child.take() else {
            return "already stopped".into();
        };
        let pid = child.id();
        let (tx, rx) = mpsc::channel::<std::io::Result<ExitStatus>>();
        thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(STOP_TIMEOUT) {
            Ok(Ok(status)) => status.to_string(),
            Ok(Err(e)) => format!("wait failed: {e}"),
            Err(_) => {
                if let Ok(pid) = i32::try_from(pid) {
                    // SAFETY: as in `signal`; the waiting thread still owns the unreaped child.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
                let _ = rx.recv_timeout(STOP_TIMEOUT);
                format!("killed after not exiting within {STOP_TIMEOUT:?} of SIGTERM")
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
