//! Every stream client against real servers with `--auth` (PROTOCOL.md, "Authentication"):
//! with `--secret-file` or `SOCKLAB_SECRET` each one answers the challenge and works; without
//! a secret it says that the server asks for authentication and exits 1 (the clients' code for
//! a failed operation, as in tests/client_timeouts.rs) instead of printing the challenge as if
//! it were the reply; with the wrong secret it says the server refused it; with a secret
//! against a server without auth it just works.

mod util;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use util::{Server, TempDir};

/// The longest any client run here may take.
const BOUND: Duration = Duration::from_secs(20);

/// Exit code of every client for a failed operation.
const FAILED: i32 = 1;

/// What a client without a secret must say.
const ASKS: &str = "asks for authentication: give --secret-file or SOCKLAB_SECRET";

const SECRET: &str = "client secret";

/// A server with echo, upper, chat and files, each with `--auth`, or none with `auth` false.
fn start(dir: &TempDir, auth: bool) -> Server {
    let secret = dir.path().join("server-secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let data = data.to_str().unwrap().to_owned();
    let mut extra = vec!["--data-dir".to_owned(), data];
    if auth {
        for s in ["echo", "upper", "chat", "files"] {
            extra.push("--auth".into());
            extra.push(s.into());
        }
        extra.push("--auth-secret-file".into());
        extra.push(secret.to_str().unwrap().into());
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let listeners = [
        ("echo", "127.0.0.1:0"),
        ("upper", "127.0.0.1:0"),
        ("chat", "127.0.0.1:0"),
        ("files", "127.0.0.1:0"),
    ];
    Server::start(util::serve_args(&listeners, &extra))
}

/// A secret file for the clients (with its trailing newline, as an editor saves it).
fn client_secret(dir: &TempDir, contents: &str) -> PathBuf {
    let p = dir.path().join(format!("client-secret-{}", contents.len()));
    std::fs::write(&p, format!("{contents}\n")).unwrap();
    p
}

/// Runs `socklab ARGS` with `input` on stdin and `env` set (SOCKLAB_SECRET removed otherwise);
/// bounded.
fn run(args: &[&str], input: &[u8], env: Option<&str>) -> Output {
    let mut cmd = Command::new(util::bin());
    cmd.args(args).env_remove("SOCKLAB_SECRET");
    if let Some(v) = env {
        cmd.env("SOCKLAB_SECRET", v);
    }
    util::run_with_input(cmd, input, BOUND)
}

#[track_caller]
fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: exit {}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Exit 1 with `socklab CMD: the server at ADDR asks for authentication ...`, nothing printed.
#[track_caller]
fn assert_asks(out: &Output, cmd: &str, addr: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(FAILED), "{cmd}: {stderr}");
    let want = format!("socklab {cmd}: the server at {addr} {ASKS}");
    assert!(stderr.contains(&want), "{cmd}: want {want:?} in {stderr:?}");
    assert!(
        out.stdout.is_empty(),
        "{cmd} printed {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn upper_and_echo_answer_with_a_secret_file_or_the_environment() {
    let dir = TempDir::new("client-auth-stream");
    let server = start(&dir, true);
    let secret = client_secret(&dir, SECRET);
    let secret = secret.to_str().unwrap();
    let upper = server.tcp("upper").to_string();
    let echo = server.tcp("echo").to_string();

    let out = run(
        &["upper", "--addr", &upper, "--secret-file", secret],
        b"abc\n",
        None,
    );
    assert_ok(&out, "upper --secret-file");
    assert_eq!(out.stdout, b"ABC\n");

    let out = run(&["echo", "--addr", &echo], b"hello\n", Some(SECRET));
    assert_ok(&out, "echo with SOCKLAB_SECRET");
    assert_eq!(out.stdout, b"hello\n");

    let out = run(&["upper", "--addr", &upper], b"", Some(SECRET));
    assert_ok(&out, "upper with no input");
    assert_eq!(out.stdout, b"");
}

#[test]
fn upper_and_echo_without_a_secret_say_the_server_asks() {
    let dir = TempDir::new("client-auth-none");
    let server = start(&dir, true);
    let upper = server.tcp("upper").to_string();
    let echo = server.tcp("echo").to_string();
    assert_asks(
        &run(&["upper", "--addr", &upper], b"abc\n", None),
        "upper",
        &upper,
    );
    assert_asks(&run(&["echo", "--addr", &echo], b"", None), "echo", &echo);
    let long = vec![b'x'; 100];
    assert_asks(&run(&["echo", "--addr", &echo], &long, None), "echo", &echo);
}

#[test]
fn a_wrong_secret_is_refused_not_printed() {
    let dir = TempDir::new("client-auth-wrong");
    let server = start(&dir, true);
    let wrong = client_secret(&dir, "not the secret");
    let upper = server.tcp("upper").to_string();
    let out = run(
        &[
            "upper",
            "--addr",
            &upper,
            "--secret-file",
            wrong.to_str().unwrap(),
        ],
        b"abc\n",
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(FAILED), "{stderr}");
    assert!(stderr.contains("refused the authentication"), "{stderr}");
    assert!(out.stdout.is_empty(), "{:?}", out.stdout);
}

#[test]
fn a_secret_against_a_server_without_auth_just_works() {
    let dir = TempDir::new("client-auth-open");
    let server = start(&dir, false);
    let upper = server.tcp("upper").to_string();
    let files = server.tcp("files").to_string();
    let out = run(&["upper", "--addr", &upper], b"abc\n", Some(SECRET));
    assert_ok(&out, "upper with a secret, no auth");
    assert_eq!(out.stdout, b"ABC\n");
    let out = run(&["ping", "--addr", &files], b"", Some(SECRET));
    assert_ok(&out, "ping with a secret, no auth");
    let out = run(
        &["chat", "--addr", &server.tcp("chat").to_string()],
        b"/quit\n",
        Some(SECRET),
    );
    assert_ok(&out, "chat with a secret, no auth");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("* welcome "), "{stdout}");
}

#[test]
fn chat_with_and_without_a_secret() {
    let dir = TempDir::new("client-auth-chat");
    let server = start(&dir, true);
    let chat = server.tcp("chat").to_string();
    let out = run(&["chat", "--addr", &chat], b"/quit\n", Some(SECRET));
    assert_ok(&out, "chat with SOCKLAB_SECRET");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("* welcome "), "{stdout}");
    assert_asks(
        &run(&["chat", "--addr", &chat], b"/quit\n", None),
        "chat",
        &chat,
    );
}

#[test]
fn files_commands_with_and_without_a_secret() {
    let dir = TempDir::new("client-auth-files");
    let server = start(&dir, true);
    let files = server.tcp("files").to_string();
    let secret = client_secret(&dir, SECRET);
    let secret = secret.to_str().unwrap();
    let out = run(
        &["ping", "--addr", &files, "--secret-file", secret],
        b"",
        None,
    );
    assert_ok(&out, "ping --secret-file");
    let out = run(&["ls", "--addr", &files], b"", Some(SECRET));
    assert_ok(&out, "ls with SOCKLAB_SECRET");
    assert_asks(&run(&["ping", "--addr", &files], b"", None), "ping", &files);
    assert_asks(&run(&["ls", "--addr", &files], b"", None), "ls", &files);
}

#[test]
fn bench_with_and_without_a_secret() {
    let dir = TempDir::new("client-auth-bench");
    let server = start(&dir, true);
    let echo = server.tcp("echo").to_string();
    let args = [
        "bench",
        "--addr",
        &echo,
        "--conns",
        "3",
        "--duration",
        "300ms",
        "--warmup",
        "0s",
    ];
    let out = run(&args, b"", Some(SECRET));
    assert_ok(&out, "bench with SOCKLAB_SECRET");
    let secret = client_secret(&dir, SECRET);
    let mut with_file = args.to_vec();
    with_file.extend(["--secret-file", secret.to_str().unwrap()]);
    assert_ok(&run(&with_file, b"", None), "bench --secret-file");
    assert_asks(&run(&args, b"", None), "bench", &echo);
}

#[test]
fn sticky_with_and_without_a_secret() {
    let dir = TempDir::new("client-auth-sticky");
    let server = start(&dir, true);
    let echo = server.tcp("echo").to_string();
    let files = server.tcp("files").to_string();
    let args = ["sticky", "--addr", &echo, "--files-addr", &files, "-n", "5"];
    let out = run(&args, b"", Some(SECRET));
    assert_ok(&out, "sticky with SOCKLAB_SECRET");
    assert_asks(&run(&args, b"", None), "sticky", &echo);
}

/// Without a secret, the files commands send at once and learn of the challenge afterwards:
/// from the 32 bytes that come where a response frame should, or, for a big upload the
/// server closes on in the middle (it read 32 bytes of it as a wrong answer), from what it
/// sent before closing.
#[test]
fn files_commands_without_a_secret_learn_of_the_challenge_after_sending() {
    let dir = TempDir::new("client-auth-nowait");
    let server = start(&dir, true);
    let files = server.tcp("files").to_string();
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'x'; 4 << 20]).unwrap();
    let big = big.to_str().unwrap();
    assert_asks(&run(&["ping", "--addr", &files], b"", None), "ping", &files);
    assert_asks(
        &run(&["stat", "x", "--addr", &files], b"", None),
        "stat",
        &files,
    );
    assert_asks(
        &run(&["put", big, "--addr", &files], b"", None),
        "put",
        &files,
    );
    assert_asks(
        &run(&["put", big, "--no-verify", "--addr", &files], b"", None),
        "put",
        &files,
    );
    assert_asks(
        &run(
            &["put", "-", "--as", "s", "--addr", &files],
            &vec![b'y'; 4 << 20],
            None,
        ),
        "put",
        &files,
    );
}
