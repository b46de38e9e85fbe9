//! `serve --upgrade-from PATH`, the new process's side: before anything is bound, connect to
//! the old process's control socket, ask for its sockets, and keep the connection to say
//! `ready` (or why not) once every worker is bound. This runs before the reactor exists, so
//! its reads block, each bounded by `TIMEOUT`.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::Described;
use crate::sys::fdpass;

/// How long the old process may take to answer each step.
const TIMEOUT: Duration = Duration::from_secs(10);
/// More sockets than any configuration has; a larger count is refused, not trusted.
const MAX_SOCKETS: usize = 4096;
/// The longest answer taken (every `listener` line of `MAX_SOCKETS`).
const MAX_ANSWER: usize = 1 << 20;

/// Why the sockets could not be taken over.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpgradeError {
    #[error("cannot connect to {path}: {source}")]
    Connect { path: String, source: io::Error },
    #[error("{path} is served by uid {uid}, not by this user")]
    OtherUser { path: String, uid: u32 },
    #[error("the old process refused: {0}")]
    Refused(String),
    #[error("{path} is not a socklab control socket (it answered {line:?})")]
    Garbage { path: String, line: String },
    #[error("the old process sent `{0}` without its descriptor")]
    MissingFd(String),
    #[error("the old process sent {fds} descriptors for {lines} listeners")]
    Count { fds: usize, lines: usize },
    #[error("the old process closed the control connection before sending every listener")]
    Closed,
    #[error("the old process did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the control connection failed: {0}")]
    Io(io::Error),
}

/// The connection to the old process, with the sockets it sent.
pub(crate) struct Upgrade {
    stream: UnixStream,
    path: PathBuf,
}

impl Upgrade {
    /// Connects to the old process at `path` and takes its sockets.
    pub(crate) fn connect(path: &Path) -> Result<(Upgrade, Vec<Described>), UpgradeError> {
        let shown = path.display().to_string();
        let stream = UnixStream::connect(path).map_err(|source| UpgradeError::Connect {
            path: shown.clone(),
            source,
        })?;
        let cred = fdpass::peer_cred(&stream).map_err(UpgradeError::Io)?;
        if cred.uid != fdpass::euid() {
            return Err(UpgradeError::OtherUser {
                path: shown,
                uid: cred.uid,
            });
        }
        stream
            .set_read_timeout(Some(TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
            .map_err(UpgradeError::Io)?;
        (&stream)
            .write_all(b"upgrade\n")
            .map_err(UpgradeError::Io)?;
        let sockets = receive(&stream, &shown)?;
        Ok((
            Upgrade {
                stream,
                path: path.to_owned(),
            },
            sockets,
        ))
    }

    /// The old process's control socket path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Tells the old process this one serves now (`kept_control`: on its control socket too)
    /// and waits, bounded, for its `bye`. An error means it may still be serving as well.
    pub(crate) fn ready(self, kept_control: bool) -> Result<(), UpgradeError> {
        let line: &[u8] = if kept_control {
            b"ready control\n"
        } else {
            b"ready\n"
        };
        (&self.stream).write_all(line).map_err(UpgradeError::Io)?;
        let mut answer = Vec::new();
        read_line(&self.stream, &mut answer, &mut VecDeque::new())?;
        match answer.as_slice() {
            b"bye" => Ok(()),
            other => Err(UpgradeError::Refused(
                String::from_utf8_lossy(other).into_owned(),
            )),
        }
    }

    /// Tells the old process why this one will not serve; it goes on serving.
    pub(crate) fn fail(self, why: &str) {
        let one_line: String = why
            .chars()
            .map(|c| if c == '\n' { ' ' } else { c })
            .take(900)
            .collect();
        let _ = (&self.stream).write_all(format!("failed {one_line}\n").as_bytes());
    }
}

/// Reads `listeners N`, N `listener …` lines each with its descriptor, and `end`.
fn receive(stream: &UnixStream, path: &str) -> Result<Vec<Described>, UpgradeError> {
    let mut fds = VecDeque::new();
    let mut line = Vec::new();
    read_line(stream, &mut line, &mut fds)?;
    let text = String::from_utf8_lossy(&line).into_owned();
    if let Some(why) = text.strip_prefix("error ") {
        return Err(UpgradeError::Refused(why.to_owned()));
    }
    let count = text
        .strip_prefix("listeners ")
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| *n <= MAX_SOCKETS)
        .ok_or_else(|| UpgradeError::Garbage {
            path: path.to_owned(),
            line: text.chars().take(60).collect(),
        })?;
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count {
        read_line(stream, &mut line, &mut fds)?;
        let text = String::from_utf8_lossy(&line).into_owned();
        let d = parse_listener(&text).ok_or_else(|| UpgradeError::Garbage {
            path: path.to_owned(),
            line: text.chars().take(60).collect(),
        })?;
        let fd = fds
            .pop_front()
            .ok_or_else(|| UpgradeError::MissingFd(text.clone()))?;
        fdpass::set_nonblocking(&fd).map_err(UpgradeError::Io)?;
        sockets.push(d(fd));
    }
    read_line(stream, &mut line, &mut fds)?;
    if line != b"end" || !fds.is_empty() {
        return Err(UpgradeError::Count {
            fds: count + fds.len(),
            lines: count,
        });
    }
    Ok(sockets)
}

/// `listener SERVICE TRANSPORT ADDR` → the socket, once given its descriptor.
fn parse_listener(line: &str) -> Option<impl FnOnce(OwnedFd) -> Described> {
    let mut words = line.splitn(4, ' ');
    if words.next()? != "listener" {
        return None;
    }
    let service = words.next()?.to_owned();
    let transport = match words.next()? {
        "tcp" => "tcp",
        "udp" => "udp",
        "unix" => "unix",
        "unixgram" => "unixgram",
        _ => return None,
    };
    let addr = words.next().filter(|a| !a.is_empty())?.to_owned();
    Some(move |fd| Described {
        service,
        transport,
        addr,
        fd,
    })
}

/// Reads one line (without its `\n`) into `line`, and every descriptor that arrives meanwhile
/// into `fds`. Reads a byte at a time, so that nothing past the line is taken from the socket
/// and each descriptor is taken with the line it came with.
fn read_line(
    stream: &UnixStream,
    line: &mut Vec<u8>,
    fds: &mut VecDeque<OwnedFd>,
) -> Result<(), UpgradeError> {
    line.clear();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if Instant::now() >= deadline {
            return Err(UpgradeError::Timeout(TIMEOUT));
        }
        let mut byte = [0u8; 1];
        let (n, got) = match fdpass::recv_with_fds(stream, &mut byte) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(UpgradeError::Timeout(TIMEOUT));
            }
            Err(e) => return Err(UpgradeError::Io(e)),
        };
        fds.extend(got);
        if fds.len() > MAX_SOCKETS {
            return Err(UpgradeError::Count {
                fds: fds.len(),
                lines: 0,
            });
        }
        match (n, byte[0]) {
            (0, _) => return Err(UpgradeError::Closed),
            (_, b'\n') => return Ok(()),
            (_, b) if line.len() < MAX_ANSWER => line.push(b),
            _ => {
                return Err(UpgradeError::Garbage {
                    path: String::new(),
                    line: "a line longer than 1 MiB".into(),
                });
            }
        }
    }
}
