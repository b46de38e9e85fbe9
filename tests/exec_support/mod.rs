//! Helpers for the `exec` integration tests (tests/exec.rs): starting a server with `files`
//! (and optionally `echo`) only, `--auth files` and an allow-list; authenticated connections;
//! `exec` requests and a checked view of their answers; readers of `/proc` for the server's
//! children, their process groups and zombies; and running the `socklab exec` client with a
//! bounded wait.
//!
//! Used next to `tests/util/mod.rs` and `tests/files_support/mod.rs`: a test file declares
//! `mod util;`, then `mod files_support;`, then `mod exec_support;`.
#![allow(dead_code)]

use std::ffi::OsString;
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::files_support::{self, Resp, Scratch};
use crate::util::{self, Server, Stream};

/// The shared secret (the file holds it followed by `\n`, which the server drops).
pub const SECRET: &[u8] = b"exec tests: correct horse battery staple";

/// How the test server is set up.
#[derive(Debug, Clone, Default)]
pub struct Setup<'a> {
    /// `--exec-allow` values; empty: exec disabled.
    pub allow: &'a [&'a str],
    /// `--auth files` with a secret file.
    pub auth: bool,
    /// Also run `echo` on 127.0.0.1:0.
    pub echo: bool,
    /// Further flags.
    pub extra: &'a [&'a str],
}

/// A running server with its scratch directory and secret file.
pub struct ExecServer {
    /// The server process (dropped first: killed before the scratch directory goes).
    pub server: Server,
    /// Scratch space; the data directory (the commands' working directory) is `data/`.
    pub scratch: Scratch,
    /// The secret file (holds [`SECRET`] and a newline).
    pub secret_file: PathBuf,
}

impl ExecServer {
    /// Starts `socklab serve` as `setup` says; every service but `files` (and `echo` when
    /// asked) is turned off, and every listener is on 127.0.0.1 port 0.
    pub fn start(tag: &str, setup: Setup<'_>) -> ExecServer {
        let scratch = Scratch::new(&format!("exec-{tag}"));
        let secret_file = scratch.root.path().join("secret");
        let mut secret = SECRET.to_vec();
        secret.push(b'\n');
        std::fs::write(&secret_file, &secret).unwrap();
        let mut args: Vec<OsString> = Vec::new();
        for service in util::all_services() {
            if service == "files" || (service == "echo" && setup.echo) {
                args.push(format!("--{service}").into());
                args.push("127.0.0.1:0".into());
            } else {
                args.push(format!("--no-{service}").into());
            }
        }
        args.push("--data-dir".into());
        args.push(scratch.data().into());
        if setup.auth {
            args.push("--auth".into());
            args.push("files".into());
            args.push("--auth-secret-file".into());
            args.push(secret_file.clone().into());
        }
        for a in setup.allow {
            args.push("--exec-allow".into());
            args.push(a.into());
        }
        args.extend(setup.extra.iter().map(OsString::from));
        let mut cmd = util::serve_cmd(args);
        cmd.env_remove("SOCKLAB_SECRET");
        let server = Server::start_cmd(cmd);
        ExecServer {
            server,
            scratch,
            secret_file,
        }
    }

    /// A connection to `files` that passed the handshake.
    pub fn authed(&self) -> TcpStream {
        let mut s = self.server.connect("files");
        files_support::handshake(&mut s, SECRET);
        s
    }

    /// A connection to `files` without any handshake (for a server without `--auth files`).
    pub fn plain(&self) -> TcpStream {
        self.server.connect("files")
    }

    /// The server's pid.
    pub fn pid(&self) -> i32 {
        self.server.pid()
    }
}

/// An `exec` request frame, with `extra` fields merged into the header.
pub fn exec_frame(argv: &[&str], timeout_ms: Option<u64>, extra: Value) -> Vec<u8> {
    let mut h = json!({"cmd": "exec", "argv": argv});
    if let Some(ms) = timeout_ms {
        h["timeout_ms"] = json!(ms);
    }
    if let Value::Object(m) = extra {
        for (k, v) in m {
            h[k] = v;
        }
    }
    files_support::request(h, b"")
}

/// Reads one response frame within `bound`, or panics (with the server's stderr) saying what
/// came instead.
#[track_caller]
pub fn read_within<S: Stream + ?Sized>(s: &mut S, bound: Duration, server: &Server) -> Resp {
    files_support::try_read_response(s, bound).unwrap_or_else(|e| {
        panic!(
            "no response within {bound:?}: {e}\n--- server stderr ---\n{}",
            server.stderr()
        )
    })
}

/// Sends an `exec` of `argv` and reads its answer within `bound`.
#[track_caller]
pub fn exec<S: Stream + ?Sized>(
    s: &mut S,
    server: &Server,
    argv: &[&str],
    timeout_ms: Option<u64>,
    bound: Duration,
) -> Resp {
    files_support::send(s, &exec_frame(argv, timeout_ms, json!({})));
    read_within(s, bound, server)
}

/// What an `exec` answer (success or `timeout`) says, after its fields were checked against
/// each other and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `exit_code` (None for null).
    pub exit_code: Option<i64>,
    /// `signal` (None for null).
    pub signal: Option<i64>,
    /// The first `stdout_size` bytes of the body.
    pub stdout: Vec<u8>,
    /// The rest of the body.
    pub stderr: Vec<u8>,
    /// `truncated`.
    pub truncated: bool,
}

fn opt_i64(r: &Resp, key: &str) -> Option<i64> {
    match r.get(key) {
        Value::Null => None,
        v => Some(
            v.as_i64()
                .unwrap_or_else(|| panic!("`{key}` is neither null nor an integer: {:?}", r.h)),
        ),
    }
}

/// Checks the output fields common to a success and a timeout and splits the body.
#[track_caller]
fn split_output(r: &Resp) -> (Vec<u8>, Vec<u8>, bool) {
    let out = r.get("stdout_size").as_u64();
    let err = r.get("stderr_size").as_u64();
    let (Some(out), Some(err)) = (out, err) else {
        panic!("stdout_size/stderr_size missing or not integers: {:?}", r.h);
    };
    let size = r.get("size").as_u64();
    assert_eq!(
        size,
        Some(out + err),
        "size must be stdout_size + stderr_size: {:?}",
        r.h
    );
    assert_eq!(
        r.body.len() as u64,
        out + err,
        "the body must be stdout then stderr: {:?}",
        r.h
    );
    let truncated = r
        .get("truncated")
        .as_bool()
        .unwrap_or_else(|| panic!("`truncated` missing or not a boolean: {:?}", r.h));
    let (o, e) = r.body.split_at(out as usize);
    (o.to_vec(), e.to_vec(), truncated)
}

/// Checks a successful `exec` answer: ok, cmd exec, exactly one of `exit_code`/`signal`.
#[track_caller]
pub fn ok_outcome(r: &Resp) -> Outcome {
    r.assert_ok("exec");
    let (stdout, stderr, truncated) = split_output(r);
    let exit_code = opt_i64(r, "exit_code");
    let signal = opt_i64(r, "signal");
    assert!(
        r.h.contains_key("exit_code") && r.h.contains_key("signal"),
        "exit_code and signal must both be present (one null): {:?}",
        r.h
    );
    assert!(
        exit_code.is_some() != signal.is_some(),
        "exactly one of exit_code and signal is set: {:?}",
        r.h
    );
    Outcome {
        exit_code,
        signal,
        stdout,
        stderr,
        truncated,
    }
}

/// Checks a `timeout` answer: an error frame of cmd exec with a message, the output fields,
/// and what was captured as its body.
#[track_caller]
pub fn timeout_outcome(r: &Resp) -> Outcome {
    assert_eq!(r.code(), Some("timeout"), "expected timeout: {:?}", r.h);
    assert_eq!(r.get("ok"), &json!(false), "{:?}", r.h);
    assert_eq!(r.get("cmd"), &json!("exec"), "{:?}", r.h);
    assert!(
        !r.message().is_empty(),
        "timeout without message: {:?}",
        r.h
    );
    let (stdout, stderr, truncated) = split_output(r);
    Outcome {
        exit_code: None,
        signal: None,
        stdout,
        stderr,
        truncated,
    }
}

/// Absolute path of `prog` as the server resolves a name: the first executable on PATH.
pub fn resolve(prog: &str) -> PathBuf {
    let paths = std::env::var_os("PATH").expect("PATH");
    std::env::split_paths(&paths)
        .map(|d| d.join(prog))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .unwrap_or_else(|| panic!("{prog} is not on PATH"))
}

/// One process as `/proc/PID/stat` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub pid: i32,
    pub comm: String,
    /// `R`, `S`, `Z`, ...
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
}

/// Parses `/proc/PID/stat`; `None` if the process is gone.
pub fn proc_stat(pid: i32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let mut rest = stat.get(close + 2..)?.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    let pgrp = rest.next()?.parse().ok()?;
    Some(Proc {
        pid,
        comm,
        state,
        ppid,
        pgrp,
    })
}

/// Every process visible in /proc.
pub fn processes() -> Vec<Proc> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(proc_stat)
        .collect()
}

/// Processes whose parent is `pid` (zombies included).
pub fn children_of(pid: i32) -> Vec<Proc> {
    processes().into_iter().filter(|p| p.ppid == pid).collect()
}

/// Processes of process group `pgid`.
pub fn group_members(pgid: i32) -> Vec<Proc> {
    processes().into_iter().filter(|p| p.pgrp == pgid).collect()
}

/// Polls /proc until the server has at least `n` children that lead their own process group
/// (a command between fork and its `setpgid` is still in the server's group, which may be the
/// test's own: its group must never be taken for the command's); returns them, or panics
/// after `bound`.
#[track_caller]
pub fn wait_children(server: &Server, n: usize, bound: Duration) -> Vec<Proc> {
    let mut last = Vec::new();
    let ok = util::wait_until(bound, || {
        last = children_of(server.pid());
        last.iter().filter(|p| p.pgrp == p.pid).count() >= n
    });
    assert!(
        ok,
        "the server did not get {n} children leading their own groups within {bound:?}; it has {last:?}\n--- server stderr ---\n{}",
        server.stderr()
    );
    last.retain(|p| p.pgrp == p.pid);
    last
}

/// Polls /proc until the server has no child at all (no zombie either) and no process is left
/// in any of `groups`; panics with what is left after `bound`.
#[track_caller]
pub fn wait_no_leftovers(server: &Server, groups: &[i32], bound: Duration, what: &str) {
    // The cleanup below kills what is left in `groups`: the test's own group (cargo, the shell
    // that ran it, this process) must never be among them.
    // SAFETY: getpgrp has no arguments and cannot fail.
    let own = unsafe { libc::getpgrp() };
    assert!(
        groups.iter().all(|&g| g > 1 && g != own),
        "{what}: the groups to watch {groups:?} include the test's own ({own}) or an invalid one"
    );
    let mut left = Vec::new();
    let ok = util::wait_until(bound, || {
        left = processes()
            .into_iter()
            .filter(|p| p.ppid == server.pid() || groups.contains(&p.pgrp))
            .collect();
        left.is_empty()
    });
    if !ok {
        let zombies: Vec<&Proc> = left.iter().filter(|p| p.state == 'Z').collect();
        // Do not leave the commands running after the test: each one by its pid (never a
        // group, which could be the test's own if the server got the groups wrong).
        for p in left.iter().filter(|p| p.state != 'Z' && p.pgrp != own) {
            // SAFETY: kill(2) only sends a signal, to a process this test's server started.
            unsafe {
                libc::kill(p.pid, libc::SIGKILL);
            }
        }
        panic!(
            "{what}: after {bound:?} processes remain (children of the server pid {} or in groups {groups:?}): {left:?}; zombies among them: {zombies:?}\n--- server stderr ---\n{}",
            server.pid(),
            server.stderr()
        );
    }
}

/// Records every child the server has while it runs, from a thread polling /proc; for
/// catching a short-lived child (a command killed at a timeout of half a second).
pub struct ChildWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Proc>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl ChildWatch {
    /// Starts watching the children of `pid`.
    pub fn start(pid: i32) -> ChildWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::<Proc>::new()));
        let thread = {
            let (stop, seen) = (stop.clone(), seen.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for p in children_of(pid) {
                        let mut seen = seen.lock().unwrap();
                        if !seen.iter().any(|q| q.pid == p.pid) {
                            seen.push(p);
                        }
                    }
                    thread::sleep(Duration::from_millis(2));
                }
            })
        };
        ChildWatch {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// What was seen so far (each pid once, as first seen).
    pub fn seen(&self) -> Vec<Proc> {
        self.seen.lock().unwrap().clone()
    }

    /// Stops watching; returns what was seen.
    pub fn stop(mut self) -> Vec<Proc> {
        self.halt();
        self.seen()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ChildWatch {
    fn drop(&mut self) {
        self.halt();
    }
}

/// What a run of the `socklab exec` client gave.
#[derive(Debug)]
pub struct ClientRun {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Runs `socklab exec --addr ADDR --secret-file PATH ARGS... -- ARGV...` with
/// `SOCKLAB_SECRET` removed; kills it and panics if it takes longer than `bound`.
#[track_caller]
pub fn run_client(es: &ExecServer, args: &[&str], argv: &[&str], bound: Duration) -> ClientRun {
    let mut cmd = Command::new(util::bin());
    cmd.arg("exec")
        .arg("--addr")
        .arg(es.server.tcp("files").to_string())
        .arg("--secret-file")
        .arg(&es.secret_file)
        .args(args)
        .arg("--")
        .args(argv)
        .env_remove("SOCKLAB_SECRET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let desc = format!("{cmd:?}");
    let start = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_t = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_t = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let mut status = None;
    util::wait_until(bound, || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{desc} did not exit within {bound:?}\n--- server stderr ---\n{}",
            es.server.stderr()
        );
    };
    let elapsed = start.elapsed();
    let stdout = out_t.join().unwrap();
    let stderr = String::from_utf8_lossy(&err_t.join().unwrap()).into_owned();
    ClientRun {
        status,
        stdout,
        stderr,
        elapsed,
    }
}

/// Creates a FIFO at `path`.
pub fn mkfifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(
        rc,
        0,
        "mkfifo {path:?}: {}",
        std::io::Error::last_os_error()
    );
}

/// Opens the FIFO at `path` for writing once a reader has it open (polling with O_NONBLOCK,
/// which fails with ENXIO while there is none); panics after `bound`.
#[track_caller]
pub fn open_fifo_writer(path: &Path, bound: Duration) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = None;
    let ok = util::wait_until(bound, || {
        file = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .ok();
        file.is_some()
    });
    assert!(ok, "no reader opened the FIFO {path:?} within {bound:?}");
    file.unwrap()
}
