//! TLS test helpers: a directory of certificates (`socklab cert`, and rcgen for the ones it
//! will not make: expired, not yet valid, another CA), a server with TLS listeners, and Python
//! and openssl peers run with bounded time.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use super::{Server, bin, run_with_input};

/// A scratch directory with `socklab cert`'s CA, server and client pairs.
pub struct Certs {
    pub dir: PathBuf,
}

impl Certs {
    /// Makes the certificates in a fresh directory named after `tag`.
    pub fn new(tag: &str) -> Certs {
        let dir = std::env::temp_dir().join(format!("socklab-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let out = Command::new(bin())
            .args(["cert", "--out"])
            .arg(&dir)
            .output()
            .expect("run socklab cert");
        assert!(
            out.status.success(),
            "socklab cert: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Certs { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn s(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// A self-signed pair for localhost valid from `from` to `until` (years), named `name`.
    pub fn self_signed(&self, name: &str, from: i32, until: i32, cn: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p =
            rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        p.not_before = rcgen::date_time_ymd(from, 1, 1);
        p.not_after = rcgen::date_time_ymd(until, 1, 1);
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let cert = p.self_signed(&key).unwrap();
        let (c, k) = (
            self.path(&format!("{name}.pem")),
            self.path(&format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c.display().to_string(), k.display().to_string())
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `serve` with only `services` on ephemeral loopback ports, each with TLS from `certs`.
pub fn tls_serve_args(certs: &Certs, services: &[&str], extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = super::all_services()
        .iter()
        .filter(|s| !services.contains(&s.as_str()))
        .map(|s| format!("--no-{s}"))
        .collect();
    for s in services {
        args.push(format!("--{s}"));
        args.push("127.0.0.1:0".into());
        args.push("--tls".into());
        args.push(s.to_string());
    }
    args.extend([
        "--tls-cert".to_string(),
        certs.s("server.pem"),
        "--tls-key".to_string(),
        certs.s("server.key"),
    ]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Starts a server with TLS on `services`.
pub fn tls_server(certs: &Certs, services: &[&str], extra: &[&str]) -> Server {
    Server::start(tls_serve_args(certs, services, extra))
}

/// Runs a Python script with `args`, bounded; returns its output.
pub fn python(script: &str, args: &[&str], bound: Duration) -> Output {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script).args(args);
    run_with_input(cmd, b"", bound)
}

/// Runs a Python script and asserts it succeeded; returns its stdout.
pub fn python_ok(script: &str, args: &[&str], bound: Duration) -> String {
    let out = python(script, args, bound);
    assert!(
        out.status.success(),
        "python failed ({}):\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The Python prelude every TLS script starts with: a context trusting `ca` and a connect
/// helper.
pub const PY_PRELUDE: &str = r#"
import socket, ssl, sys, json, struct, hashlib, os, time
def context(ca, cert=None, key=None):
    ctx = ssl.create_default_context(cafile=ca)
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx
def connect(ctx, port, timeout=10):
    raw = socket.create_connection(('127.0.0.1', port), timeout=timeout)
    return ctx.wrap_socket(raw, server_hostname='localhost')
def recv_until(s, needle, limit=1 << 20):
    got = b''
    while needle not in got:
        d = s.recv(65536)
        if not d:
            raise SystemExit('closed before %r; got %r' % (needle, got[-200:]))
        got += d
        if len(got) > limit:
            raise SystemExit('too much without %r' % needle)
    return got
"#;

/// Whether a program is on PATH.
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `openssl s_client` to `port` trusting `ca`, fed `input`; returns stdout and stderr.
pub fn s_client(port: u16, ca: &Path, extra: &[&str], input: &[u8]) -> Output {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .arg("-CAfile")
        .arg(ca)
        .args(["-servername", "localhost", "-verify_return_error"])
        .args(extra);
    run_with_input(cmd, input, Duration::from_secs(15))
}
