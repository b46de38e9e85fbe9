//! `socklab cert --out DIR` (issue 26, deliverable 5): the files it writes are a certificate
//! authority and two certificates it signs, as OpenSSL and Python's `ssl` module read them — a
//! real TLS handshake on loopback with the server pair, verified against the CA, by name and
//! by address — with private keys readable by their owner only; an existing set is never
//! overwritten, and a directory that cannot be made is a clear error.

mod util;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};
use std::time::Duration;

use util::TempDir;

const T: Duration = Duration::from_secs(30);

fn cert(out: &str) -> Output {
    let mut cmd = Command::new(util::bin());
    cmd.args(["cert", "--out", out]);
    util::run_with_input(cmd, b"", T)
}

fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl (.ci/run installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_ca_and_two_certificates_that_real_tls_stacks_accept() {
    let dir = TempDir::new("cert");
    let out = dir.file("tls");
    let run = cert(&out);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let file = |name: &str| format!("{out}/{name}");
    for key in ["ca.key", "server.key", "client.key"] {
        let mode = std::fs::metadata(file(key)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    let verified = openssl(&[
        "verify",
        "-CAfile",
        &file("ca.pem"),
        &file("server.pem"),
        &file("client.pem"),
    ]);
    assert!(verified.contains("server.pem: OK") && verified.contains("client.pem: OK"));
    let san = openssl(&[
        "x509",
        "-in",
        &file("server.pem"),
        "-noout",
        "-ext",
        "subjectAltName",
    ]);
    for name in [
        "DNS:localhost",
        "IP Address:127.0.0.1",
        "IP Address:0:0:0:0:0:0:0:1",
    ] {
        assert!(san.contains(name), "{name} in {san}");
    }
    let usage = openssl(&[
        "x509",
        "-in",
        &file("client.pem"),
        "-noout",
        "-ext",
        "extendedKeyUsage",
    ]);
    assert!(usage.contains("TLS Web Client Authentication"), "{usage}");

    // A real handshake: Python's ssl serves with the server pair and connects verifying it
    // against the CA, by name and by address.
    let script = r#"
import socket, ssl, sys, threading
d = sys.argv[1]
srv = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
srv.load_cert_chain(d + "/server.pem", d + "/server.key")
lsock = socket.create_server(("127.0.0.1", 0))
port = lsock.getsockname()[1]
def serve():
    for _ in range(2):
        c, _ = lsock.accept()
        with srv.wrap_socket(c, server_side=True) as s:
            s.sendall(s.recv(100).upper())
threading.Thread(target=serve, daemon=True).start()
cli = ssl.create_default_context(cafile=d + "/ca.pem")
for name in ("localhost", "127.0.0.1"):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with cli.wrap_socket(raw, server_hostname=name) as s:
            s.sendall(b"hello")
            assert s.recv(100) == b"HELLO", name
            print(name, s.version())
"#;
    let py = Command::new("python3")
        .args(["-c", script, &out])
        .output()
        .expect("python3");
    let said = String::from_utf8_lossy(&py.stdout);
    assert!(
        py.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&py.stderr)
    );
    assert!(
        said.contains("localhost TLSv1.3") && said.contains("127.0.0.1 TLSv1.3"),
        "{said}"
    );
}

#[test]
fn an_existing_set_is_kept_and_an_impossible_directory_is_an_error() {
    let dir = TempDir::new("cert-again");
    let out = dir.file("tls");
    assert!(cert(&out).status.success());
    let before = std::fs::read(format!("{out}/ca.pem")).unwrap();
    let again = cert(&out);
    assert_eq!(again.status.code(), Some(1));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.starts_with("socklab cert: ") && err.contains("ca.pem exists already"),
        "{err}"
    );
    assert_eq!(std::fs::read(format!("{out}/ca.pem")).unwrap(), before);

    // A directory inside a regular file cannot be made.
    std::fs::write(dir.file("plain"), b"x").unwrap();
    let blocked = dir.file("plain/tls");
    let run = cert(&blocked);
    assert_eq!(run.status.code(), Some(1));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains(&blocked), "the path is named: {err}");
}
