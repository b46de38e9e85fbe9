//! Helpers for the chat bus tests: a real `redis-server` started on a unix socket or a port of
//! its own (killed on drop), a raw RESP client to publish on the channel as a stranger would,
//! and a chat member that reads whole lines with bounded waits.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` of the test's own, with no persistence.
pub struct Redis {
    child: Option<Child>,
    /// Where it listens: `unix:PATH` or `HOST:PORT`, as `--chat-bus` takes it.
    pub addr: String,
    socket: Option<PathBuf>,
    port: Option<u16>,
    /// The address it binds (127.0.0.1 unless in a namespace).
    host: String,
    /// The network namespace it runs in (`ip netns exec`), if any.
    netns: Option<String>,
}

impl Redis {
    /// Starts Redis on the unix socket `path` and waits until it answers.
    pub fn unix(path: &str) -> Redis {
        let mut r = Redis {
            child: None,
            addr: format!("unix:{path}"),
            socket: Some(PathBuf::from(path)),
            port: None,
            host: "127.0.0.1".into(),
            netns: None,
        };
        r.start();
        r
    }

    /// Starts Redis on 127.0.0.1:`port`.
    pub fn tcp(port: u16) -> Redis {
        Redis::in_netns(None, "127.0.0.1", port)
    }

    /// Starts Redis on `host:port` inside network namespace `netns` (reachable from the test).
    pub fn in_netns(netns: Option<&str>, host: &str, port: u16) -> Redis {
        let mut r = Redis {
            child: None,
            addr: format!("{host}:{port}"),
            socket: None,
            port: Some(port),
            host: host.into(),
            netns: netns.map(str::to_owned),
        };
        r.start();
        r
    }

    /// Starts it (again, after `kill`) and waits until it answers PING.
    pub fn start(&mut self) {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "redis-server"]);
                c
            }
            None => Command::new("redis-server"),
        };
        cmd.args(["--save", "", "--appendonly", "no", "--bind", &self.host]);
        cmd.args(["--protected-mode", "no"]);
        match (&self.socket, self.port) {
            (Some(path), _) => {
                let _ = std::fs::remove_file(path);
                cmd.args(["--port", "0", "--unixsocket"]).arg(path);
            }
            (None, Some(port)) => {
                cmd.args(["--port", &port.to_string()]);
            }
            (None, None) => unreachable!(),
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        self.child = Some(
            cmd.spawn()
                .expect("redis-server (apt-get install redis-server; .ci/run installs it)"),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(mut c) = self.client()
                && c.command(&[b"PING"]).starts_with(b"+PONG")
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server at {} did not answer within 10 s", self.addr);
    }

    /// Kills it (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// A raw RESP client, if Redis is there.
    pub fn client(&self) -> Option<RespClient> {
        let stream: Box<dyn RW> = match (&self.socket, self.port) {
            (Some(path), _) => Box::new(UnixStream::connect(path).ok()?),
            (None, Some(port)) => Box::new(TcpStream::connect((self.host.as_str(), port)).ok()?),
            (None, None) => return None,
        };
        stream.timeout(Duration::from_secs(5));
        Some(RespClient {
            r: BufReader::new(stream),
        })
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

pub trait RW: Read + Write + Send {
    fn timeout(&self, t: Duration);
}
impl RW for UnixStream {
    fn timeout(&self, t: Duration) {
        self.set_read_timeout(Some(t)).unwrap();
    }
}
impl RW for TcpStream {
    fn timeout(&self, t: Duration) {
        self.set_read_timeout(Some(t)).unwrap();
    }
}

/// Speaks RESP2 to Redis: one command, its first reply line (enough for PING and PUBLISH).
pub struct RespClient {
    r: BufReader<Box<dyn RW>>,
}

impl RespClient {
    pub fn command(&mut self, args: &[&[u8]]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend(format!("${}\r\n", a.len()).bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        if self.r.get_mut().write_all(&out).is_err() {
            return Vec::new();
        }
        let mut line = Vec::new();
        let _ = self.r.read_until(b'\n', &mut line);
        line
    }
}

/// A chat member: a line reader over TCP with bounded waits.
pub struct Member {
    pub name: String,
    r: BufReader<TcpStream>,
    /// Every line read so far, in order.
    pub log: Vec<String>,
}

impl Member {
    pub fn connect(addr: std::net::SocketAddr, name: &str) -> Member {
        let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("{name}: connect {addr}: {e}"));
        Member {
            name: name.to_owned(),
            r: BufReader::new(s),
            log: Vec::new(),
        }
    }

    pub fn send(&mut self, line: &str) {
        let s = self.r.get_mut();
        s.write_all(format!("{line}\n").as_bytes())
            .unwrap_or_else(|e| panic!("{}: write: {e}", self.name));
    }

    /// The next line within `t`, or `None`.
    pub fn line(&mut self, t: Duration) -> Option<String> {
        self.r.get_ref().set_read_timeout(Some(t)).unwrap();
        let mut line = String::new();
        match self.r.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => {
                let line = line.trim_end_matches('\n').to_owned();
                self.log.push(line.clone());
                Some(line)
            }
        }
    }

    /// Reads lines until one satisfies `want`, within `t`; returns every line read, the
    /// matching one last. Panics with what was read otherwise.
    pub fn until(&mut self, t: Duration, want: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + t;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!("{}: no wanted line within {t:?}; read {seen:?}", self.name);
            }
            match self.line(left) {
                Some(l) => {
                    let done = want(&l);
                    seen.push(l);
                    if done {
                        return seen;
                    }
                }
                None => panic!("{}: closed or silent; read {seen:?}", self.name),
            }
        }
    }

    /// Everything the member reads up to the answer of a `/who` it sends now: since the
    /// server writes one member's lines in order, these are exactly the lines that arrived
    /// before it. Returns them and the member list.
    pub fn sync(&mut self, t: Duration) -> (Vec<String>, Vec<String>) {
        self.send("/who");
        let mut lines = self.until(t, |l| l.starts_with("* members: "));
        let who = lines.pop().unwrap_or_default();
        let members = who
            .trim_start_matches("* members: ")
            .split(", ")
            .map(str::to_owned)
            .collect();
        (lines, members)
    }

    /// Its nick, from the welcome line (the first line it reads).
    pub fn welcome(&mut self, t: Duration) -> String {
        let l = self.line(t).unwrap_or_default();
        l.strip_prefix("* welcome ")
            .unwrap_or_else(|| panic!("{}: not a welcome: {l:?}", self.name))
            .to_owned()
    }
}
