//! Helpers for the `files` integration tests (tests/files_*.rs): starting a server with only
//! the `files` service on a fresh data directory, writing request frames and reading response
//! frames over real sockets (every read bounded), md5 of local data, the HMAC handshake, the
//! server's resident memory, and a tmpfs mount that is always unmounted.
//!
//! Used next to `tests/util/mod.rs`: a test file declares `mod util;` first, then
//! `mod files_support;`.
#![allow(dead_code)]

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use serde_json::{Map, Value, json};
use socklab::Secret;

use crate::util::{self, End, Server, Stream, TempDir};

/// How long one response (header, or a small body) may take to arrive.
pub const T: Duration = Duration::from_secs(10);

/// Arguments that start only `files` (on `listeners`) with its data directory at `data_dir`,
/// then `extra`. Every other service that takes an address is turned off, so no test binds
/// a default port.
pub fn files_args(listeners: &[&str], data_dir: &Path, extra: &[&str]) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    for service in util::all_services() {
        if service != "files" {
            args.push(format!("--no-{service}").into());
        }
    }
    for l in listeners {
        args.push("--files".into());
        args.push(l.into());
    }
    args.push("--data-dir".into());
    args.push(data_dir.into());
    args.extend(extra.iter().map(OsString::from));
    args
}

/// A `socklab serve` command for `files_args`, with `SOCKLAB_SECRET` removed from its
/// environment (a test that wants it sets it).
pub fn files_cmd(listeners: &[&str], data_dir: &Path, extra: &[&str]) -> Command {
    let mut cmd = util::serve_cmd(files_args(listeners, data_dir, extra));
    cmd.env_remove("SOCKLAB_SECRET");
    cmd
}

/// A test's scratch space: a unique temporary directory (removed on drop) holding the data
/// directory `data/`, so that anything escaping the data directory lands in `root` where it
/// can be seen.
pub struct Scratch {
    /// The unique directory.
    pub root: TempDir,
}

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        Scratch {
            root: TempDir::new(&format!("files-{tag}")),
        }
    }

    /// The data directory (not created: the server creates it).
    pub fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// Names in the data directory, sorted.
    pub fn data_names(&self) -> Vec<String> {
        dir_names(&self.data())
    }

    /// Names in the scratch root, sorted.
    pub fn root_names(&self) -> Vec<String> {
        dir_names(self.root.path())
    }
}

/// Names of the entries of `dir`, sorted (empty if it cannot be read). The server's control
/// socket, which lives in the data directory while the server runs, is not one of them.
pub fn dir_names(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".socklab-control.sock")
        .collect();
    v.sort();
    v
}

/// Names of the server's temporaries (`.socklab-tmp-*`) in `dir`.
pub fn temporaries(dir: &Path) -> Vec<String> {
    dir_names(dir)
        .into_iter()
        .filter(|n| n.starts_with(".socklab-tmp-"))
        .collect()
}

/// Polls (bounded) until `dir` has no entries; panics with what is left otherwise.
#[track_caller]
pub fn wait_dir_empty(dir: &Path, timeout: Duration, what: &str) {
    if !util::wait_until(timeout, || dir_names(dir).is_empty()) {
        panic!(
            "{what}: data directory {dir:?} still holds {:?} after {timeout:?}",
            dir_names(dir)
        );
    }
}

/// Starts `files` on one TCP listener of 127.0.0.1 with the scratch's data directory.
pub fn start(scratch: &Scratch, extra: &[&str]) -> Server {
    Server::start_cmd(files_cmd(&["127.0.0.1:0"], &scratch.data(), extra))
}

/// lower-case hex md5 of `data`.
pub fn md5_hex(data: &[u8]) -> String {
    hex(&Md5::digest(data))
}

/// lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A frame: `H` little-endian, the header, the body.
pub fn frame_raw(header: &[u8], body: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(header);
    v.extend_from_slice(body);
    v
}

/// A frame whose header is `header` as compact JSON.
pub fn frame(header: &Value, body: &[u8]) -> Vec<u8> {
    frame_raw(&serde_json::to_vec(header).unwrap(), body)
}

/// A `ping` header of exactly `len` bytes (at least 25), padded with an extra field.
pub fn ping_header_of_len(len: usize) -> Vec<u8> {
    let base = serde_json::to_vec(&json!({"cmd": "ping", "pad": ""}))
        .unwrap()
        .len();
    assert!(len >= base, "a ping header is at least {base} bytes");
    let h = serde_json::to_vec(&json!({"cmd": "ping", "pad": "p".repeat(len - base)})).unwrap();
    assert_eq!(h.len(), len);
    h
}

/// A request frame: `header` gets `size` = the body's length unless it names a size already.
pub fn request(header: Value, body: &[u8]) -> Vec<u8> {
    let mut header = header;
    let obj = header
        .as_object_mut()
        .expect("a request header is an object");
    if !obj.contains_key("size") && !obj.contains_key("filesize") {
        obj.insert("size".into(), json!(body.len()));
    }
    frame(&header, body)
}

/// One response frame.
#[derive(Debug, Clone)]
pub struct Resp {
    /// The header.
    pub h: Map<String, Value>,
    /// The body.
    pub body: Vec<u8>,
}

impl Resp {
    /// The error code, or `None` for `ok: true`.
    pub fn code(&self) -> Option<&str> {
        if self.h.get("ok") == Some(&Value::Bool(true)) {
            None
        } else {
            self.h.get("error")?.get("code")?.as_str()
        }
    }

    /// A field of the header (`Null` when absent).
    pub fn get(&self, key: &str) -> &Value {
        self.h.get(key).unwrap_or(&Value::Null)
    }

    /// Panics unless this is `{"ok": true, "cmd": cmd, ...}` with a `size` matching the body.
    #[track_caller]
    pub fn assert_ok(&self, cmd: &str) -> &Self {
        assert_eq!(
            self.h.get("ok"),
            Some(&Value::Bool(true)),
            "expected ok for {cmd}, got {:?}",
            self.h
        );
        assert_eq!(self.get("cmd"), &json!(cmd), "cmd of {:?}", self.h);
        assert_eq!(
            self.get("size").as_u64(),
            Some(self.body.len() as u64),
            "size of {:?}",
            self.h
        );
        self
    }

    /// Panics unless this is an error frame with `code`, `cmd` as given (`None` = JSON null),
    /// a non-empty message, no body (`size` 0 or absent).
    #[track_caller]
    pub fn assert_error(&self, code: &str, cmd: Option<&str>) -> &Self {
        assert_eq!(
            self.h.get("ok"),
            Some(&Value::Bool(false)),
            "expected error {code}, got {:?}",
            self.h
        );
        assert_eq!(
            self.get("error").get("code"),
            Some(&json!(code)),
            "error code of {:?}",
            self.h
        );
        assert!(
            self.get("error")
                .get("message")
                .and_then(Value::as_str)
                .is_some_and(|m| !m.is_empty()),
            "error frame without a message: {:?}",
            self.h
        );
        assert_eq!(
            self.h.get("cmd"),
            Some(&cmd.map_or(Value::Null, |c| json!(c))),
            "cmd of {:?} (it must be present, null where unknown)",
            self.h
        );
        assert!(
            self.get("size").as_u64().unwrap_or(0) == 0 && self.body.is_empty(),
            "an error frame has no body: {:?}",
            self.h
        );
        self
    }

    /// The error message (empty if none).
    pub fn message(&self) -> &str {
        self.get("error")
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
}

/// Reads exactly `n` bytes within `timeout`; `Err` says how the stream ended early.
pub fn read_n<S: Stream + ?Sized>(
    s: &mut S,
    n: usize,
    timeout: Duration,
) -> Result<Vec<u8>, (Vec<u8>, End)> {
    let (got, end) = util::read_bounded(s, Some(n), timeout);
    if end == End::Complete {
        Ok(got)
    } else {
        Err((got, end))
    }
}

/// Reads one response header (`H` + JSON object) within `timeout`.
pub fn try_read_header<S: Stream + ?Sized>(
    s: &mut S,
    timeout: Duration,
) -> Result<Map<String, Value>, String> {
    let deadline = Instant::now() + timeout;
    let left = || deadline.saturating_duration_since(Instant::now());
    let len = read_n(s, 4, left())
        .map_err(|(got, end)| format!("no response frame: got {got:?} then {end:?}"))?;
    let h = u32::from_le_bytes(len.try_into().unwrap()) as usize;
    if h == 0 || h > 1 << 20 {
        return Err(format!("response header length {h} is not plausible"));
    }
    let raw = read_n(s, h, left()).map_err(|(got, end)| {
        format!(
            "response header of {h} bytes cut short: {:?} then {end:?}",
            String::from_utf8_lossy(&got)
        )
    })?;
    match serde_json::from_slice::<Value>(&raw) {
        Ok(Value::Object(m)) => Ok(m),
        other => Err(format!(
            "response header is not a JSON object: {:?} ({other:?})",
            String::from_utf8_lossy(&raw)
        )),
    }
}

/// Reads one response frame, body included, within `timeout`.
pub fn try_read_response<S: Stream + ?Sized>(s: &mut S, timeout: Duration) -> Result<Resp, String> {
    let start = Instant::now();
    let h = try_read_header(s, timeout)?;
    let size = h
        .get("size")
        .map_or(Some(0), Value::as_u64)
        .ok_or_else(|| format!("response `size` is not a non-negative integer: {h:?}"))?;
    let left = timeout.saturating_sub(start.elapsed());
    let body = read_n(s, size as usize, left).map_err(|(got, end)| {
        format!(
            "response body of {size} bytes cut short after {} bytes ({end:?}); header {h:?}",
            got.len()
        )
    })?;
    Ok(Resp { h, body })
}

/// Reads one response frame within [`T`], or panics saying what came instead.
#[track_caller]
pub fn read_response<S: Stream + ?Sized>(s: &mut S) -> Resp {
    try_read_response(s, T).unwrap_or_else(|e| panic!("{e}"))
}

/// Writes `bytes`, panicking on failure.
#[track_caller]
pub fn send<S: Stream + ?Sized>(s: &mut S, bytes: &[u8]) {
    s.write_all(bytes)
        .unwrap_or_else(|e| panic!("write of {} bytes: {e}", bytes.len()));
}

/// Sends one request and reads its response.
#[track_caller]
pub fn call<S: Stream + ?Sized>(s: &mut S, header: Value, body: &[u8]) -> Resp {
    send(s, &request(header, body));
    read_response(s)
}

/// Checks that the connection still answers: a `ping` with a fresh id gets `ok` with that id.
#[track_caller]
pub fn assert_usable<S: Stream + ?Sized>(s: &mut S, after: &str) {
    let id = format!("ping after {after}");
    let r = try_read_ping(s, &id)
        .unwrap_or_else(|e| panic!("the connection is not usable after {after}: {e}"));
    r.assert_ok("ping");
    assert_eq!(r.get("id"), &json!(id), "ping after {after}");
}

fn try_read_ping<S: Stream + ?Sized>(s: &mut S, id: &str) -> Result<Resp, String> {
    s.write_all(&request(json!({"cmd": "ping", "id": id}), b""))
        .map_err(|e| format!("write ping: {e}"))?;
    try_read_response(s, T)
}

/// Checks that the server closed the connection: nothing more arrives, then end of stream
/// (EOF or reset), within [`T`].
#[track_caller]
pub fn assert_closed<S: Stream + ?Sized>(s: &mut S, after: &str) {
    let (got, end) = util::read_to_end_timeout(s, T);
    assert!(
        end.closed(),
        "after {after} the server must close the connection; got {} more bytes then {end:?}",
        got.len()
    );
    assert!(
        got.is_empty(),
        "after {after} nothing may follow the error frame; got {:?}",
        String::from_utf8_lossy(&got)
    );
}

/// Connects to the server's `files` TCP listener (blocking, 10 s timeouts).
pub fn connect(server: &Server) -> std::net::TcpStream {
    server.connect("files")
}

/// Uploads `data` as `name` (md5 not given) and checks the answer.
#[track_caller]
pub fn put_ok<S: Stream + ?Sized>(s: &mut S, name: &str, data: &[u8]) -> Resp {
    let r = call(s, json!({"cmd": "put", "filename": name}), data);
    r.assert_ok("put");
    assert_eq!(r.get("filename"), &json!(name), "{:?}", r.h);
    assert_eq!(r.get("filesize"), &json!(data.len()), "{:?}", r.h);
    assert_eq!(r.get("md5"), &json!(md5_hex(data)), "{:?}", r.h);
    r
}

/// Resident memory of process `pid` in KiB, from /proc/PID/status.
pub fn vm_kib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    line[field.len() + 1..]
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("bad line {line:?}"))
}

/// `VmRSS` of `pid`, in KiB.
pub fn rss_kib(pid: i32) -> u64 {
    vm_kib(pid, "VmRSS")
}

/// Answers the server's challenge on a fresh connection: reads the 32 bytes, sends
/// HMAC-SHA256(secret, challenge). Returns the challenge.
#[track_caller]
pub fn handshake<S: Stream + ?Sized>(s: &mut S, secret: &[u8]) -> Vec<u8> {
    let challenge = read_n(s, 32, T)
        .unwrap_or_else(|(got, end)| panic!("no 32-byte challenge: got {got:?} then {end:?}"));
    send(s, &hmac_sha256(secret, &challenge));
    challenge
}

/// HMAC-SHA256(secret, msg), with `secret` taken byte for byte (no newline stripped).
pub fn hmac_sha256(secret: &[u8], msg: &[u8]) -> [u8; 32] {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(msg);
    let out: [u8; 32] = mac.finalize().into_bytes().into();
    // The server's own client-side helper must agree for secrets without a newline.
    if !secret.is_empty() && !secret.ends_with(b"\n") {
        let theirs = Secret::from_bytes(secret.to_vec(), "test").map(|s| s.respond(msg));
        assert_eq!(
            theirs.ok(),
            Some(out),
            "Secret::respond disagrees with HMAC-SHA256"
        );
    }
    out
}

/// A tmpfs mounted on a directory for the length of a test; unmounted on drop, even when the
/// test panics.
pub struct Tmpfs {
    /// The mount point.
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `1m`) on `dir` (created); `Err` with the reason if the
    /// mount fails (not root, no mount(8)).
    pub fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        Tmpfs::mount_with(dir, &format!("size={size}"))
    }

    /// Mounts a tmpfs with mount options `options` (e.g. `size=16m,nr_inodes=2`) on `dir`.
    pub fn mount_with(dir: &Path, options: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {dir:?}: {e}"))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs on {dir:?} failed with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(Tmpfs {
            dir: dir.to_owned(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // A busy mount (the server still has it open) is detached lazily rather than left.
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Whether `prog` is an executable on PATH.
pub fn on_path(prog: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|d| {
            let p = d.join(prog);
            std::fs::metadata(&p).is_ok_and(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.is_file() && m.permissions().mode() & 0o111 != 0
            })
        })
    })
}

/// Writes `total` pseudo-random bytes from `rng` to `s` in 1 MiB pieces, feeding them to
/// `md5` as well; stops early (returning the error) if a write fails.
pub fn stream_random<S: Write + ?Sized>(
    s: &mut S,
    rng: &mut util::Rng,
    total: u64,
    md5: &mut Md5,
    mut each: impl FnMut(u64),
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut sent = 0u64;
    while sent < total {
        let n = (total - sent).min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        md5.update(&buf[..n]);
        s.write_all(&buf[..n])?;
        sent += n as u64;
        each(sent);
    }
    Ok(())
}
