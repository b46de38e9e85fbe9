//! `socklab serve --config FILE` and `--print-config`, through the real binary: a file alone
//! starts exactly its listeners; flags given on the command line beat the file, flags left out do
//! not; `--print-config` binds nothing and prints what `--config` reads back to the same server;
//! every bad file exits with code 2 naming the key and the line; the secret is never printed;
//! and `socklab.example.toml` is the defaults, documents every key, and loads with its optional
//! keys switched on.

mod util;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use socklab::config_file::{self, ServeSettings};
use util::{Launch, Server, TempDir, expect_start_failure, probe, roundtrip, serve_cmd};

const T: Duration = Duration::from_secs(10);

fn write(dir: &TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {path:?}: {e}"));
    path
}

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("socklab.example.toml")
}

/// Runs `socklab serve ARGS... --print-config`, which must exit 0 without printing `ready`;
/// returns its stdout.
fn print_config(args: &[&str]) -> String {
    let mut cmd = serve_cmd(args);
    cmd.arg("--print-config");
    match Server::launch(cmd) {
        Launch::Ready(server) => panic!(
            "--print-config {args:?} started a server: {:#?}",
            server.listeners
        ),
        Launch::Exited {
            status,
            stdout,
            stderr,
        } => {
            assert!(
                status.success(),
                "--print-config {args:?} exited with {status}\n--- stderr ---\n{stderr}"
            );
            stdout
        }
    }
}

#[test]
fn a_file_alone_starts_exactly_its_listeners() {
    let dir = TempDir::new("cfg-alone");
    let sock = dir.file("upper.sock");
    let file = write(
        &dir,
        "socklab.toml",
        &format!(
            "log = \"warn\"\n\
             [[listener]]\nservice = \"echo\"\naddr = \"127.0.0.1:0\"\n\n\
             [[listener]]\nservice = \"upper\"\naddr = \"unix:{sock}\"\n"
        ),
    );
    let server = Server::start(["--config", file.to_str().unwrap()]);
    let services: Vec<(&str, &str)> = server
        .listeners
        .iter()
        .map(|l| (l.service.as_str(), l.transport.as_str()))
        .collect();
    assert_eq!(
        services,
        [("echo", "tcp"), ("upper", "unix")],
        "a service without a [[listener]] must not start"
    );
    let mut c = server.connect("echo");
    assert_eq!(roundtrip(&mut c, b"from a file", T), b"from a file");
    let mut u = UnixStream::connect(server.unix("upper")).expect("connect to upper");
    assert_eq!(roundtrip(&mut u, b"shout", T), b"SHOUT");
}

/// The file sets options globally, one listener sets its own, and `max_conns = 1` (with no
/// per-address limit, which would otherwise refuse the second connection from 127.0.0.1 first).
fn override_file(dir: &TempDir) -> PathBuf {
    write(
        dir,
        "socklab.toml",
        "log = \"warn\"\n\
         [limits]\nmax_conns = 1\nmax_conns_per_ip = 0\n\
         [socket]\nnodelay = false\nbacklog = 100\n\
         [[listener]]\nservice = \"echo\"\naddr = \"127.0.0.1:0\"\n\
         [[listener]]\nservice = \"echo\"\naddr = \"127.0.0.1:0\"\n\
         [listener.socket]\nnodelay = true\nbacklog = 7\n",
    )
}

/// `(nodelay, backlog)` of every echo listener, sorted.
fn echo_options(server: &Server) -> Vec<(String, u64)> {
    let mut opts: Vec<(String, u64)> = server
        .listeners_of("echo", "tcp")
        .into_iter()
        .map(|l| (l.opt("nodelay").to_owned(), l.opt_u64("backlog")))
        .collect();
    opts.sort();
    opts
}

#[test]
fn the_file_holds_without_flags() {
    let dir = TempDir::new("cfg-holds");
    let file = override_file(&dir);
    let server = Server::start(["--config", file.to_str().unwrap()]);
    assert_eq!(
        echo_options(&server),
        [("off".to_owned(), 100), ("on".to_owned(), 7)],
        "[socket] for the first listener, [listener.socket] for the second"
    );
    let mut first = server.connect("echo");
    assert_eq!(roundtrip(&mut first, b"one", T), b"one");
    let mut second = server.connect("echo");
    let r = probe(&mut second, T);
    assert!(
        r.closed(),
        "a second connection past the file's max_conns = 1: want it closed, got {r:?}"
    );
}

#[test]
fn flags_given_override_the_file() {
    let dir = TempDir::new("cfg-flags");
    let file = override_file(&dir);
    let server = Server::start([
        "--config",
        file.to_str().unwrap(),
        "--max-conns",
        "2",
        "--backlog",
        "50",
        "--no-nodelay",
    ]);
    assert_eq!(
        echo_options(&server),
        [("off".to_owned(), 50), ("off".to_owned(), 50)],
        "socket flags reach every listener, its own options included"
    );
    let mut first = server.connect("echo");
    assert_eq!(roundtrip(&mut first, b"one", T), b"one");
    let mut second = server.connect("echo");
    assert_eq!(
        roundtrip(&mut second, b"two", T),
        b"two",
        "--max-conns 2 beats the file's max_conns = 1"
    );
}

#[test]
fn an_address_flag_replaces_the_files_listeners_of_that_service() {
    let dir = TempDir::new("cfg-addr");
    let sock = dir.file("echo.sock");
    let file = write(
        &dir,
        "socklab.toml",
        &format!(
            "log = \"warn\"\n\
             [[listener]]\nservice = \"echo\"\naddr = \"unix:{sock}\"\n\
             [[listener]]\nservice = \"upper\"\naddr = \"127.0.0.1:0\"\n"
        ),
    );
    let server = Server::start([
        "--config",
        file.to_str().unwrap(),
        "--echo",
        "127.0.0.1:0",
        "--no-upper",
        "--udp-echo",
        "127.0.0.1:0",
    ]);
    let services: Vec<(&str, &str)> = server
        .listeners
        .iter()
        .map(|l| (l.service.as_str(), l.transport.as_str()))
        .collect();
    assert_eq!(services, [("echo", "tcp"), ("udp-echo", "udp")]);
    assert!(
        !Path::new(&sock).exists(),
        "the file's unix listener was bound"
    );
    let mut c = server.connect("echo");
    assert_eq!(roundtrip(&mut c, b"moved", T), b"moved");
}

#[test]
fn print_config_binds_nothing_and_reads_back_the_same() {
    let dir = TempDir::new("cfg-print");
    // Held by the test: a server that tried to bind it would fail.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let sock = dir.file("upper.sock");
    let file = write(
        &dir,
        "socklab.toml",
        &format!(
            "[limits]\nidle_timeout = \"90s\"\n\
             [[listener]]\nservice = \"echo\"\naddr = \"127.0.0.1:{port}\"\n\
             [[listener]]\nservice = \"upper\"\naddr = \"unix:{sock}\"\n\
             [listener.socket]\nnodelay = false\nrcvbuf = \"64KiB\"\n"
        ),
    );
    let first = print_config(&[
        "--config",
        file.to_str().unwrap(),
        "--max-conns",
        "77",
        "--chat",
        "127.0.0.1:0",
    ]);
    assert!(
        !Path::new(&sock).exists(),
        "--print-config bound the unix listener"
    );
    for want in [
        "max_conns = 77",
        "idle_timeout = \"1m 30s\"",
        &format!("addr = \"127.0.0.1:{port}\""),
        &format!("addr = \"unix:{sock}\""),
        "addr = \"127.0.0.1:0\"",
        "[listener.socket]",
        "rcvbuf = \"64KiB\"",
    ] {
        assert!(first.contains(want), "no `{want}` in\n{first}");
    }
    assert_eq!(
        first.matches("[[listener]]").count(),
        3,
        "every listener listed:\n{first}"
    );

    let printed = write(&dir, "printed.toml", &first);
    let second = print_config(&["--config", printed.to_str().unwrap()]);
    assert_eq!(second, first, "the printed configuration did not read back");
    drop(held);
}

#[test]
fn a_printed_configuration_starts_the_server_it_describes() {
    let dir = TempDir::new("cfg-printed-start");
    let file = write(
        &dir,
        "socklab.toml",
        "log = \"warn\"\n[[listener]]\nservice = \"echo\"\naddr = \"127.0.0.1:0\"\n",
    );
    let text = print_config(&[
        "--config",
        file.to_str().unwrap(),
        "--no-nodelay",
        "--backlog",
        "33",
    ]);
    let printed = write(&dir, "printed.toml", &text);
    let server = Server::start(["--config", printed.to_str().unwrap()]);
    assert_eq!(server.listeners.len(), 1, "{:#?}", server.listeners);
    let l = server.listener("echo", "tcp");
    assert_eq!(l.opt("nodelay"), "off", "{l:?}");
    assert_eq!(l.opt_u64("backlog"), 33, "{l:?}");
    let mut c = server.connect("echo");
    assert_eq!(roundtrip(&mut c, b"again", T), b"again");
}

#[test]
fn the_secret_is_never_printed() {
    let dir = TempDir::new("cfg-secret");
    let secret = write(&dir, "secret", "file-secret-3f9a\n");
    let file = write(
        &dir,
        "socklab.toml",
        &format!(
            "[auth]\nsecret_file = \"{}\"\n\
             [[listener]]\nservice = \"files\"\naddr = \"127.0.0.1:0\"\nauth = true\n",
            secret.display()
        ),
    );
    let mut cmd = serve_cmd(["--config", file.to_str().unwrap(), "--print-config"]);
    cmd.env("SOCKLAB_SECRET", "env-secret-77c1");
    let Launch::Exited { status, stdout, .. } = Server::launch(cmd) else {
        panic!("--print-config started a server");
    };
    assert!(status.success(), "{status}");
    assert!(
        stdout.contains(&format!("secret_file = \"{}\"", secret.display())),
        "{stdout}"
    );
    assert!(stdout.contains("auth = true"), "{stdout}");
    for leaked in ["file-secret-3f9a", "env-secret-77c1"] {
        assert!(
            !stdout.contains(leaked),
            "the secret was printed:\n{stdout}"
        );
    }
}

/// Bad files: the text, then the line and key the error must name.
const BAD: &[(&str, &str, usize, &str)] = &[
    (
        "unknown key",
        "workers = 1\n[limits]\nmax_conn = 5\n",
        3,
        "limits.max_conn",
    ),
    (
        "wrong type",
        "[socket]\nnodelay = \"yes\"\n",
        2,
        "socket.nodelay",
    ),
    (
        "a port over 65535",
        "[[listener]]\nservice = \"echo\"\naddr = \"127.0.0.1:70000\"\n",
        3,
        "listener[0].addr",
    ),
    (
        "a buffer of 0",
        "[socket]\nrcvbuf = 0\n",
        2,
        "socket.rcvbuf",
    ),
    (
        "a listener's buffer of 0",
        "[[listener]]\nservice = \"echo\"\naddr = \"127.0.0.1:0\"\n[listener.socket]\nsndbuf = 0\n",
        5,
        "listener[0].socket.sndbuf",
    ),
    (
        "a backlog of 0",
        "\n[socket]\nbacklog = 0\n",
        3,
        "socket.backlog",
    ),
    ("0 workers", "workers = 0\n", 1, "workers"),
    (
        "max_conns 0",
        "[limits]\nmax_conns = 0\n",
        2,
        "limits.max_conns",
    ),
    (
        "an unknown service",
        "[[listener]]\nservice = \"echoo\"\naddr = \"127.0.0.1:0\"\n",
        2,
        "listener[0].service",
    ),
    (
        "a stream service on unixgram",
        "[[listener]]\nservice = \"echo\"\naddr = \"unixgram:/tmp/socklab-never.sock\"\n",
        3,
        "listener[0].addr",
    ),
    (
        "files off loopback without auth",
        "[[listener]]\nservice = \"echo\"\naddr = \"127.0.0.1:0\"\n\
         [[listener]]\nservice = \"files\"\naddr = \"0.0.0.0:0\"\n",
        6,
        "listener[1].addr",
    ),
    (
        "an exec program not on PATH",
        "[exec]\nallow = [\"socklab-no-such-program\"]\n",
        2,
        "exec.allow",
    ),
    ("not TOML", "workers = 1\n[limits\n", 2, "not valid TOML"),
];

#[test]
fn bad_files_exit_2_naming_the_key_and_the_line() {
    let dir = TempDir::new("cfg-bad");
    for (i, (what, text, line, key)) in BAD.iter().enumerate() {
        let path = write(&dir, &format!("bad{i}.toml"), text);
        let (status, stderr) = expect_start_failure(
            serve_cmd(["--config", path.to_str().unwrap()]),
            &format!("the file has {what}"),
        );
        assert_eq!(status.code(), Some(2), "{what}: {status}\n{stderr}");
        let place = format!("socklab serve: {}:{line}: {key}", path.display());
        assert!(
            stderr.contains(&place),
            "{what}: stderr does not name `{place}`:\n{stderr}"
        );
    }
}

#[test]
fn other_refusals_exit_2_too() {
    let dir = TempDir::new("cfg-refusals");
    let missing = dir.path().join("missing.toml");
    let (status, stderr) = expect_start_failure(
        serve_cmd(["--config", missing.to_str().unwrap()]),
        "the file does not exist",
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot read the configuration file"),
        "{stderr}"
    );

    let good = write(
        &dir,
        "good.toml",
        "[[listener]]\nservice = \"echo\"\naddr = \"127.0.0.1:0\"\n",
    );
    let (status, stderr) = expect_start_failure(
        serve_cmd(["--config", good.to_str().unwrap(), "--max-conns", "0"]),
        "--max-conns 0 is impossible",
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--max-conns"), "{stderr}");

    let bad = write(&dir, "bad.toml", "[limits]\nmax_conns = 0\n");
    let (status, stderr) = expect_start_failure(
        serve_cmd(["--config", bad.to_str().unwrap(), "--print-config"]),
        "--print-config of a bad file",
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("bad.toml:2: limits.max_conns"), "{stderr}");
}

#[test]
fn the_example_file_is_the_defaults() {
    let from_example = config_file::load(&example_path())
        .and_then(ServeSettings::finish)
        .unwrap_or_else(|e| panic!("socklab.example.toml: {e}"));
    let defaults = ServeSettings::default().finish().unwrap();
    assert_eq!(from_example, defaults);
    // The binary agrees: printing through the example is printing the defaults.
    assert_eq!(
        print_config(&["--config", example_path().to_str().unwrap()]),
        print_config(&[])
    );
}

/// `# key = value` and `# [table]` lines: the keys the example shows switched off.
fn is_commented_setting(line: &str) -> bool {
    let Some(rest) = line.strip_prefix("# ") else {
        return false;
    };
    rest.starts_with('[') || key_of(rest).is_some()
}

/// The key of a `key = value` line.
fn key_of(line: &str) -> Option<&str> {
    let (key, _) = line.split_once(" = ")?;
    let ok = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    ok.then_some(key)
}

#[test]
fn the_examples_optional_keys_load_when_switched_on() {
    let text = std::fs::read_to_string(example_path()).unwrap();
    let switched_on: String = text
        .lines()
        .map(|l| if is_commented_setting(l) { &l[2..] } else { l })
        .collect::<Vec<_>>()
        .join("\n");
    assert_ne!(
        switched_on,
        text.trim_end(),
        "the example has no optional keys"
    );
    let e = config_file::parse(&switched_on, "switched-on example")
        .and_then(ServeSettings::finish)
        .unwrap_or_else(|e| panic!("{e}\n{switched_on}"));
    assert!(e.secret_file.is_some(), "auth.secret_file");
    assert!(
        e.exec.workdir.as_deref() == Some(Path::new("/tmp")),
        "exec.workdir"
    );
    let echo = &e.server.listeners[0];
    assert!(
        !e.server.sockopts_of(echo).nodelay,
        "the echo listener's [listener.socket]"
    );
}

#[test]
fn the_example_documents_every_key_with_its_default() {
    let text = std::fs::read_to_string(example_path()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut documented = BTreeSet::new();
    let mut table = String::new();
    for (i, line) in lines.iter().enumerate() {
        let setting = line
            .strip_prefix("# ")
            .filter(|_| is_commented_setting(line));
        let setting = setting.unwrap_or(line);
        if let Some(header) = setting.strip_prefix('[') {
            table = header.trim_matches(|c| c == '[' || c == ']').to_owned();
            documented.insert(format!("[{table}]"));
            continue;
        }
        let Some(key) = key_of(setting) else { continue };
        documented.insert(format!("{table}.{key}"));
        // The listeners' keys are documented together above the first [[listener]].
        if table.starts_with("listener") {
            continue;
        }
        let prose: Vec<&str> = lines[..i]
            .iter()
            .rev()
            .take_while(|l| l.starts_with('#') && !is_commented_setting(l))
            .copied()
            .collect();
        assert!(
            !prose.is_empty(),
            "line {}: `{line}` has no comment above it",
            i + 1
        );
        assert!(
            prose.iter().any(|l| l.contains("Default")),
            "line {}: the comment above `{line}` does not give its default",
            i + 1
        );
    }
    // Every key --print-config writes, with every optional part present.
    let full = config_file::parse(
        "[auth]\nsecret_file = \"/s\"\n[[listener]]\nservice = \"echo\"\n[listener.socket]\n",
        "full",
    )
    .and_then(ServeSettings::finish)
    .and_then(|e| e.to_toml())
    .unwrap();
    let mut table = String::new();
    for line in full.lines() {
        if let Some(header) = line.strip_prefix('[') {
            table = header.trim_matches(|c| c == '[' || c == ']').to_owned();
            assert!(
                documented.contains(&format!("[{table}]")),
                "the example has no [{table}]"
            );
        } else if let Some(key) = key_of(line) {
            // A listener's own socket options are the keys of [socket].
            let table = if table == "listener.socket" {
                "socket"
            } else {
                &table
            };
            assert!(
                documented.contains(&format!("{table}.{key}")),
                "the example does not show `{key}` in [{table}]"
            );
        }
    }
}
