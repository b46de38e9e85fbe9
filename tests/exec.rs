//! `exec`, the `files` command that runs an allowed program (PROTOCOL.md, "Frames",
//! "Commands", "Exec", "Authentication"), over real sockets against a real `socklab serve`:
//! allowed, not allowed, disabled, unauthenticated and malformed requests and the order of
//! those checks; arguments full of shell syntax passed literally; the child's environment,
//! stdin, working directory and process group; output capped per stream while the command
//! runs to its end; timeouts (the request's and the server's cap) that kill the whole process
//! group; exit codes, signals and separate stderr; 50 commands at once while an echo client
//! keeps being served; `--exec-max-procs`; a client that leaves mid-command (no process, no
//! zombie left); the `socklab exec` client's streams and exit codes; pipelined requests
//! answered in order.
//!
//! Every wait is bounded; processes are checked through /proc.

mod util;

#[path = "files_support/mod.rs"]
mod files_support;

mod exec_support;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use exec_support::*;
use files_support::{Resp, assert_usable, call, read_response, request, send};
use serde_json::{Value, json};

/// Bound for an answer that should come at once.
const B: Duration = Duration::from_secs(10);

fn setup<'a>(allow: &'a [&'a str], extra: &'a [&'a str]) -> Setup<'a> {
    Setup {
        allow,
        auth: true,
        echo: false,
        extra,
    }
}

/// `Outcome` of a command that exited with `code` and wrote `stdout` and `stderr`.
fn exited(code: i64, stdout: &[u8], stderr: &[u8]) -> Outcome {
    Outcome {
        exit_code: Some(code),
        signal: None,
        stdout: stdout.to_vec(),
        stderr: stderr.to_vec(),
        truncated: false,
    }
}

/// Sends an exec whose header is `header` exactly (plus `size`) and reads the answer.
#[track_caller]
fn raw_exec(s: &mut TcpStream, es: &ExecServer, header: Value) -> Resp {
    send(s, &request(header, b""));
    read_within(s, B, &es.server)
}

/// Whether anything can be read from `s` right now (without consuming it).
fn has_data(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 1];
    let r = s.peek(&mut b);
    s.set_nonblocking(false).unwrap();
    matches!(r, Ok(n) if n > 0)
}

// ---------------------------------------------------------------------------------------------
// 1. Allowed, not allowed, disabled, unauthenticated, malformed; the order of the checks.

#[test]
fn an_allowed_command_runs_and_answers_with_its_output() {
    let es = ExecServer::start("allowed", setup(&["echo", "true"], &[]));
    // The start-up listing says what the listener asks and what exec may run.
    let l = es.server.listener("files", "tcp");
    assert_eq!((l.opt("auth"), l.opt("exec")), ("on", "echo,true"), "{l:?}");
    let mut s = es.authed();
    let r = exec(&mut s, &es.server, &["echo", "hello"], None, B);
    assert_eq!(ok_outcome(&r), exited(0, b"hello\n", b""), "{:?}", r.h);

    // By the resolved absolute path too, with the request's id copied.
    let path = resolve("echo");
    let path = path.to_str().unwrap();
    send(
        &mut s,
        &exec_frame(&[path, "by", "path"], Some(5000), json!({"id": {"n": 7}})),
    );
    let r = read_within(&mut s, B, &es.server);
    assert_eq!(ok_outcome(&r), exited(0, b"by path\n", b""), "{:?}", r.h);
    assert_eq!(r.get("id"), &json!({"n": 7}), "id of {:?}", r.h);
    assert_usable(&mut s, "an exec");
}

#[test]
fn a_program_not_on_the_allow_list_is_not_allowed() {
    let es = ExecServer::start("not-allowed", setup(&["echo"], &[]));
    let mut s = es.authed();
    let echo = resolve("echo");
    let dotted = format!(
        "{}/../{}/echo",
        echo.parent().unwrap().display(),
        echo.parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
    );
    for argv0 in [
        "ls", "sh", "ECHO", "echo ", " echo", "./echo", &dotted, "/bin/sh",
    ] {
        send(
            &mut s,
            &exec_frame(&[argv0, "hello"], None, json!({"id": argv0})),
        );
        let r = read_within(&mut s, B, &es.server);
        r.assert_error("not_allowed", Some("exec"));
        assert_eq!(r.get("id"), &json!(argv0), "{:?}", r.h);
    }
    assert_usable(&mut s, "not_allowed");
    let r = exec(&mut s, &es.server, &["echo", "still"], None, B);
    assert_eq!(ok_outcome(&r), exited(0, b"still\n", b""));
}

#[test]
fn exec_is_disabled_without_an_allow_list_before_any_other_check() {
    // With authentication: a good request and a malformed one.
    let es = ExecServer::start("disabled", setup(&[], &[]));
    let mut s = es.authed();
    for header in [
        json!({"cmd": "exec", "argv": ["echo", "hello"]}),
        json!({"cmd": "exec", "argv": []}),
        json!({"cmd": "exec"}),
    ] {
        raw_exec(&mut s, &es, header).assert_error("exec_disabled", Some("exec"));
    }
    assert_usable(&mut s, "exec_disabled");

    // Without authentication: exec_disabled comes before auth_required.
    let es = ExecServer::start(
        "disabled-noauth",
        Setup {
            auth: false,
            ..Setup::default()
        },
    );
    let mut s = es.plain();
    for header in [
        json!({"cmd": "exec", "argv": ["echo", "hello"]}),
        json!({"cmd": "exec", "argv": 5}),
    ] {
        raw_exec(&mut s, &es, header).assert_error("exec_disabled", Some("exec"));
    }
    assert_usable(&mut s, "exec_disabled without auth");
}

#[test]
fn an_unauthenticated_connection_gets_auth_required_before_request_checks() {
    let es = ExecServer::start(
        "noauth",
        Setup {
            allow: &["echo"],
            auth: false,
            ..Setup::default()
        },
    );
    assert!(
        es.server
            .wait_stderr_contains("every exec will be refused", Duration::from_secs(10)),
        "no start-up warning for exec without authentication:\n{}",
        es.server.stderr()
    );
    let mut s = es.plain();
    for header in [
        json!({"cmd": "exec", "argv": ["echo", "hello"]}),
        json!({"cmd": "exec", "argv": ["ls"]}),
        json!({"cmd": "exec", "argv": 5}),
        json!({"cmd": "exec", "argv": ["echo"], "timeout_ms": 0}),
        json!({"cmd": "exec"}),
    ] {
        let r = raw_exec(&mut s, &es, header.clone());
        r.assert_error("auth_required", Some("exec"));
    }
    // The rest of the service works unauthenticated on this listener.
    assert_usable(&mut s, "auth_required");
    assert!(
        children_of(es.pid()).is_empty(),
        "nothing may have been started"
    );
}

#[test]
fn malformed_requests_are_bad_request_before_not_allowed() {
    let es = ExecServer::start("bad", setup(&["echo"], &[]));
    let mut s = es.authed();
    let cases = [
        json!({"cmd": "exec"}),
        json!({"cmd": "exec", "argv": null}),
        json!({"cmd": "exec", "argv": []}),
        json!({"cmd": "exec", "argv": "echo hello"}),
        json!({"cmd": "exec", "argv": {"0": "echo"}}),
        json!({"cmd": "exec", "argv": ["echo", 1]}),
        json!({"cmd": "exec", "argv": ["echo", null]}),
        json!({"cmd": "exec", "argv": [["echo"]]}),
        json!({"cmd": "exec", "argv": ["echo", true]}),
        json!({"cmd": "exec", "argv": ["echo", "a\u{0}b"]}),
        json!({"cmd": "exec", "argv": ["ec\u{0}ho"]}),
        json!({"cmd": "exec", "argv": ["echo"], "timeout_ms": 0}),
        json!({"cmd": "exec", "argv": ["echo"], "timeout_ms": -1}),
        json!({"cmd": "exec", "argv": ["echo"], "timeout_ms": 1.5}),
        json!({"cmd": "exec", "argv": ["echo"], "timeout_ms": "100"}),
        json!({"cmd": "exec", "argv": ["echo"], "timeout_ms": true}),
        json!({"cmd": "exec", "argv": ["echo"], "timeout_ms": [100]}),
        // A program that is not allowed, with something malformed: bad_request comes first.
        json!({"cmd": "exec", "argv": ["ls", 1]}),
        json!({"cmd": "exec", "argv": ["ls", "a\u{0}"]}),
        json!({"cmd": "exec", "argv": ["ls"], "timeout_ms": 0}),
        json!({"cmd": "exec", "argv": ["sh", "-c", "id"], "timeout_ms": "soon"}),
    ];
    for (i, mut header) in cases.into_iter().enumerate() {
        header["id"] = json!(i);
        let shown = header.to_string();
        let r = raw_exec(&mut s, &es, header);
        assert_eq!(
            r.code(),
            Some("bad_request"),
            "{shown} must be bad_request: {:?}",
            r.h
        );
        r.assert_error("bad_request", Some("exec"));
        assert_eq!(r.get("id"), &json!(i), "{:?}", r.h);
    }
    // A well-formed request with a program that is not allowed is not_allowed.
    raw_exec(&mut s, &es, json!({"cmd": "exec", "argv": ["ls"]}))
        .assert_error("not_allowed", Some("exec"));
    assert_usable(&mut s, "bad requests");
    let r = exec(&mut s, &es.server, &["echo", "fine"], Some(1), B);
    // 1 ms may or may not be enough for echo: either answer is well-formed.
    match r.code() {
        None => assert_eq!(ok_outcome(&r).stdout, b"fine\n"),
        Some("timeout") => {
            timeout_outcome(&r);
        }
        other => panic!("echo with timeout_ms 1: unexpected {other:?} in {:?}", r.h),
    }
    assert!(
        es.scratch.data_names().is_empty(),
        "{:?}",
        es.scratch.data_names()
    );
}

// ---------------------------------------------------------------------------------------------
// 2. No shell, ever; the child's environment, stdin, working directory and process group.

#[test]
fn shell_syntax_in_arguments_is_passed_literally() {
    let es = ExecServer::start("literal", setup(&["echo", "printf"], &[]));
    let mut s = es.authed();
    let r = exec(&mut s, &es.server, &["echo", "a; rm -rf /"], None, B);
    assert_eq!(ok_outcome(&r), exited(0, b"a; rm -rf /\n", b""));

    let args = [
        "printf",
        "%s|",
        "$(id)",
        "*",
        "it's",
        "\"double\"",
        "line one\nline two",
        "`id`",
        "$HOME",
        "x > made-by-redirect",
        "&& echo and",
        "| cat",
        "",
        "  spaced  out  ",
        "héllo ✓",
    ];
    let r = exec(&mut s, &es.server, &args, None, B);
    let want: String = args[2..].iter().map(|a| format!("{a}|")).collect();
    let o = ok_outcome(&r);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        want,
        "printf must see every argument as given"
    );
    assert_eq!(o, exited(0, want.as_bytes(), b""));
    assert!(
        es.scratch.data_names().is_empty(),
        "nothing may be created in the working directory: {:?}",
        es.scratch.data_names()
    );
}

#[test]
fn the_child_gets_a_clean_environment_dev_null_stdin_the_workdir_and_its_own_group() {
    let es = ExecServer::start("env", setup(&["env", "cat", "pwd", "sh"], &[]));
    let mut s = es.authed();

    let r = exec(&mut s, &es.server, &["env"], None, B);
    let o = ok_outcome(&r);
    assert_eq!(o.exit_code, Some(0), "{o:?}");
    let mut lines: Vec<String> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    assert_eq!(
        lines,
        ["LANG=C.UTF-8", "PATH=/usr/local/bin:/usr/bin:/bin"],
        "the child's environment is exactly PATH and LANG"
    );

    // stdin is /dev/null: cat ends at once with nothing.
    let r = exec(&mut s, &es.server, &["cat"], None, B);
    assert_eq!(ok_outcome(&r), exited(0, b"", b""));

    // The working directory defaults to the data directory.
    let r = exec(&mut s, &es.server, &["pwd", "-P"], None, B);
    let want = std::fs::canonicalize(es.scratch.data()).unwrap();
    let want = format!("{}\n", want.display());
    assert_eq!(ok_outcome(&r), exited(0, want.as_bytes(), b""));

    // Its own process group: the child's pgid is its pid, not the server's group.
    let r = exec(
        &mut s,
        &es.server,
        &["sh", "-c", "echo $$; cut -d' ' -f5 /proc/$$/stat"],
        None,
        B,
    );
    let o = ok_outcome(&r);
    assert_eq!(o.exit_code, Some(0), "{o:?}");
    let out = String::from_utf8(o.stdout).unwrap();
    let ids: Vec<&str> = out.lines().collect();
    assert_eq!(ids.len(), 2, "{out:?}");
    assert_eq!(ids[0], ids[1], "pid and pgid of the child: {out:?}");
    let server_pgrp = proc_stat(es.pid()).unwrap().pgrp;
    assert_ne!(ids[1], server_pgrp.to_string(), "not the server's group");
}

#[test]
fn exec_workdir_sets_the_working_directory() {
    let dir = util::TempDir::new("exec-workdir");
    let workdir = dir.path().to_str().unwrap().to_owned();
    let extra = ["--exec-workdir", workdir.as_str()];
    let es = ExecServer::start("workdir", setup(&["pwd"], &extra));
    let mut s = es.authed();
    let r = exec(&mut s, &es.server, &["pwd", "-P"], None, B);
    let want = format!("{}\n", std::fs::canonicalize(dir.path()).unwrap().display());
    assert_eq!(ok_outcome(&r), exited(0, want.as_bytes(), b""));
}

// ---------------------------------------------------------------------------------------------
// 3. Output caps.

#[test]
fn output_past_the_cap_is_cut_and_the_command_runs_to_its_end() {
    let es = ExecServer::start(
        "cap",
        setup(&["head", "sh"], &["--exec-max-output", "1MiB"]),
    );
    let mut s = es.authed();
    let r = exec(
        &mut s,
        &es.server,
        &["head", "-c", "10485760", "/dev/zero"],
        None,
        Duration::from_secs(30),
    );
    let o = ok_outcome(&r);
    assert_eq!(
        (o.exit_code, o.signal),
        (Some(0), None),
        "head must run to its end, not die of a closed pipe: {:?}",
        r.h
    );
    assert_eq!(o.stdout.len(), 1 << 20, "stdout_size: {:?}", r.h);
    assert!(
        o.stdout.iter().all(|&b| b == 0),
        "the kept bytes are head's"
    );
    assert!(o.stderr.is_empty());
    assert!(o.truncated, "{:?}", r.h);

    // Each stream has its own cap: stderr cut, stdout whole.
    let r = exec(
        &mut s,
        &es.server,
        &["sh", "-c", "head -c 3000000 /dev/zero >&2; echo done"],
        None,
        Duration::from_secs(30),
    );
    let o = ok_outcome(&r);
    assert_eq!(o.exit_code, Some(0), "{:?}", r.h);
    assert_eq!(o.stdout, b"done\n");
    assert_eq!(o.stderr.len(), 1 << 20, "{:?}", r.h);
    assert!(o.truncated);
    assert_usable(&mut s, "a capped exec");
}

#[test]
fn the_cap_is_exact() {
    let es = ExecServer::start(
        "cap-exact",
        setup(&["printf"], &["--exec-max-output", "10"]),
    );
    let mut s = es.authed();
    let r = exec(&mut s, &es.server, &["printf", "0123456789"], None, B);
    assert_eq!(ok_outcome(&r), exited(0, b"0123456789", b""), "{:?}", r.h);
    let r = exec(&mut s, &es.server, &["printf", "0123456789A"], None, B);
    let o = ok_outcome(&r);
    assert_eq!(o.stdout, b"0123456789", "{:?}", r.h);
    assert!(o.truncated, "{:?}", r.h);
}

// ---------------------------------------------------------------------------------------------
// 4. Timeouts.

#[test]
fn a_command_past_its_timeout_is_killed_and_answered_timeout() {
    let es = ExecServer::start("timeout", setup(&["sleep", "echo"], &[]));
    let mut s = es.authed();
    let watch = ChildWatch::start(es.pid());
    let start = Instant::now();
    send(
        &mut s,
        &exec_frame(&["sleep", "60"], Some(500), json!({"id": "t"})),
    );
    let r = read_within(&mut s, B, &es.server);
    let elapsed = start.elapsed();
    let seen = watch.stop();
    let o = timeout_outcome(&r);
    assert_eq!(r.get("id"), &json!("t"));
    assert_eq!((o.stdout.len(), o.stderr.len(), o.truncated), (0, 0, false));
    assert!(
        elapsed >= Duration::from_millis(450),
        "answered timeout after {elapsed:?}, before the 500 ms had passed"
    );
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");

    let sleeps: Vec<&Proc> = seen.iter().filter(|p| p.comm == "sleep").collect();
    assert!(
        !sleeps.is_empty(),
        "the sleep never showed up as a child of the server: {seen:?}"
    );
    let groups: Vec<i32> = sleeps.iter().map(|p| p.pgrp).collect();
    wait_no_leftovers(&es.server, &groups, B, "after the timeout");
    for p in &sleeps {
        assert!(proc_stat(p.pid).is_none(), "sleep {} is still there", p.pid);
    }

    // The connection and the slot are free again.
    assert_usable(&mut s, "a timeout");
    let r = exec(&mut s, &es.server, &["echo", "after"], None, B);
    assert_eq!(ok_outcome(&r), exited(0, b"after\n", b""));
}

#[test]
fn a_timeout_keeps_what_was_captured_and_kills_the_whole_group() {
    let es = ExecServer::start("timeout-group", setup(&["sh"], &[]));
    let mut s = es.authed();
    let start = Instant::now();
    send(
        &mut s,
        &exec_frame(
            &[
                "sh",
                "-c",
                "echo before; echo oops >&2; sleep 61 & sleep 62; echo never",
            ],
            Some(3000),
            json!({}),
        ),
    );
    // The shell and its background sleep share the shell's group.
    let sh = wait_children(&es.server, 1, Duration::from_secs(2))
        .into_iter()
        .next()
        .unwrap();
    assert_eq!(sh.pgrp, sh.pid, "the child leads its own group: {sh:?}");
    assert!(
        util::wait_until(Duration::from_secs(2), || group_members(sh.pgrp).len() >= 3),
        "sh and its two sleeps: {:?}",
        group_members(sh.pgrp)
    );
    let r = read_within(&mut s, B, &es.server);
    let o = timeout_outcome(&r);
    assert!(start.elapsed() < B);
    assert_eq!(o.stdout, b"before\n", "{:?}", r.h);
    assert_eq!(o.stderr, b"oops\n", "{:?}", r.h);
    assert!(!o.truncated);
    wait_no_leftovers(
        &es.server,
        &[sh.pgrp],
        Duration::from_secs(5),
        "after killing the group",
    );
}

#[test]
fn the_server_timeout_caps_the_request_and_applies_by_default() {
    let es = ExecServer::start("timeout-cap", setup(&["sleep"], &["--exec-timeout", "1s"]));
    let mut s = es.authed();
    for timeout_ms in [Some(60_000), None] {
        let start = Instant::now();
        let r = exec(&mut s, &es.server, &["sleep", "60"], timeout_ms, B);
        let elapsed = start.elapsed();
        timeout_outcome(&r);
        assert!(
            elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(8),
            "timeout_ms {timeout_ms:?} under --exec-timeout 1s: answered after {elapsed:?}"
        );
    }
    wait_no_leftovers(&es.server, &[], B, "after capped timeouts");
}

// ---------------------------------------------------------------------------------------------
// 5. Exit codes, signals, stderr.

#[test]
fn exit_codes_signals_and_stderr_are_reported() {
    let es = ExecServer::start("codes", setup(&["sh"], &[]));
    let mut s = es.authed();
    let mut run =
        |script: &str| ok_outcome(&exec(&mut s, &es.server, &["sh", "-c", script], None, B));

    assert_eq!(run("exit 3"), exited(3, b"", b""));
    assert_eq!(run("exit 255"), exited(255, b"", b""));
    assert_eq!(run("true"), exited(0, b"", b""));
    assert_eq!(
        run("echo out; echo err >&2; exit 5"),
        exited(5, b"out\n", b"err\n")
    );
    assert_eq!(
        run("printf e1 >&2; printf o1; printf e2 >&2; printf o2"),
        exited(0, b"o1o2", b"e1e2"),
        "stdout then stderr, each whole"
    );
    for (script, sig) in [
        ("kill -TERM $$", 15),
        ("kill -KILL $$", 9),
        ("kill -USR1 $$", 10),
    ] {
        let o = run(script);
        assert_eq!(
            (o.exit_code, o.signal),
            (None, Some(sig)),
            "{script}: {o:?}"
        );
    }
    let o = run("echo partial; kill -TERM $$");
    assert_eq!(o.stdout, b"partial\n");
    assert_eq!(o.signal, Some(15));
}

// ---------------------------------------------------------------------------------------------
// 6. Many commands at once; the loop keeps serving.

#[test]
fn fifty_concurrent_commands_while_an_echo_client_is_served() {
    const N: usize = 50;
    let es = ExecServer::start(
        "fifty",
        Setup {
            allow: &["sleep"],
            auth: true,
            echo: true,
            extra: &["--exec-max-procs", "64"],
        },
    );
    let mut conns: Vec<TcpStream> = (0..N).map(|_| es.authed()).collect();
    let mut echo = es.server.connect("echo");

    let start = Instant::now();
    for (i, c) in conns.iter_mut().enumerate() {
        send(c, &exec_frame(&["sleep", "1"], None, json!({"id": i})));
    }

    // The echo client runs round trips until told to stop; each is bounded.
    let stop = Arc::new(AtomicBool::new(false));
    let trips = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let echo_thread = {
        let (stop, trips) = (stop.clone(), trips.clone());
        thread::spawn(move || -> Result<(), String> {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let msg = format!("round trip {n}\n");
                echo.write_all(msg.as_bytes())
                    .map_err(|e| format!("echo write {n}: {e}"))?;
                let (got, end) =
                    util::read_bounded(&mut echo, Some(msg.len()), Duration::from_secs(5));
                if got != msg.as_bytes() {
                    return Err(format!(
                        "echo round trip {n}: got {:?} then {end:?}",
                        String::from_utf8_lossy(&got)
                    ));
                }
                trips.lock().unwrap().push(Instant::now());
                n += 1;
                thread::sleep(Duration::from_millis(5));
            }
            Ok(())
        })
    };

    let deadline = start + Duration::from_secs(30);
    let mut first_answer = None;
    for (i, c) in conns.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let r = read_within(c, left, &es.server);
        first_answer.get_or_insert_with(Instant::now);
        let o = ok_outcome(&r);
        assert_eq!(o, exited(0, b"", b""), "command {i}: {:?}", r.h);
        assert_eq!(r.get("id"), &json!(i), "{:?}", r.h);
    }
    let all_done = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    echo_thread
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}\n--- server stderr ---\n{}", es.server.stderr()));

    let first_answer = first_answer.unwrap();
    let before_first = trips
        .lock()
        .unwrap()
        .iter()
        .filter(|t| **t < first_answer)
        .count();
    assert!(
        before_first >= 20,
        "the echo client completed only {before_first} round trips while the sleeps ran"
    );
    assert!(all_done < Duration::from_secs(30), "{all_done:?}");
    wait_no_leftovers(&es.server, &[], B, "after fifty commands");
}

#[test]
fn a_blocked_command_does_not_hold_up_other_connections() {
    let es = ExecServer::start(
        "blocked",
        Setup {
            allow: &["cat", "echo"],
            auth: true,
            echo: true,
            extra: &["--exec-timeout", "60s"],
        },
    );
    let gate = es.scratch.data().join("gate");
    mkfifo(&gate);
    let mut a = es.authed();
    // cat blocks opening the FIFO until the test opens it for writing.
    send(&mut a, &exec_frame(&["cat", "gate"], None, json!({})));
    wait_children(&es.server, 1, B);

    let mut echo = es.server.connect("echo");
    for i in 0..20 {
        let msg = format!("trip {i}\n");
        let got = util::roundtrip(&mut echo, msg.as_bytes(), B);
        assert_eq!(got, msg.as_bytes());
    }
    let mut b = es.authed();
    assert_usable(&mut b, "another connection's command blocks");
    let r = exec(&mut b, &es.server, &["echo", "meanwhile"], None, B);
    assert_eq!(ok_outcome(&r), exited(0, b"meanwhile\n", b""));
    assert!(!has_data(&a), "the blocked command cannot have answered");

    let mut w = open_fifo_writer(&gate, B);
    w.write_all(b"released\n").unwrap();
    drop(w);
    let r = read_within(&mut a, B, &es.server);
    assert_eq!(ok_outcome(&r), exited(0, b"released\n", b""));
}

// ---------------------------------------------------------------------------------------------
// 7. --exec-max-procs.

#[test]
fn past_max_procs_a_command_is_too_busy() {
    let es = ExecServer::start("busy", setup(&["sleep"], &["--exec-max-procs", "2"]));

    // Three at once: exactly one too_busy.
    let mut conns: Vec<TcpStream> = (0..3).map(|_| es.authed()).collect();
    for c in &mut conns {
        send(c, &exec_frame(&["sleep", "2"], None, json!({})));
    }
    let mut codes: Vec<Option<String>> = Vec::new();
    for c in &mut conns {
        let r = read_within(c, B, &es.server);
        match r.code() {
            None => assert_eq!(ok_outcome(&r), exited(0, b"", b"")),
            Some("too_busy") => {
                r.assert_error("too_busy", Some("exec"));
            }
            other => panic!("unexpected {other:?}: {:?}", r.h),
        }
        codes.push(r.code().map(str::to_owned));
    }
    let busy = codes.iter().filter(|c| c.is_some()).count();
    assert_eq!(busy, 1, "exactly one of three too_busy: {codes:?}");

    // Two running (seen in /proc), then: bad_request and not_allowed still come first.
    let (mut a, mut b, mut c) = (es.authed(), es.authed(), es.authed());
    send(&mut a, &exec_frame(&["sleep", "2"], None, json!({})));
    send(&mut b, &exec_frame(&["sleep", "2"], None, json!({})));
    wait_children(&es.server, 2, B);
    raw_exec(&mut c, &es, json!({"cmd": "exec", "argv": []}))
        .assert_error("bad_request", Some("exec"));
    raw_exec(&mut c, &es, json!({"cmd": "exec", "argv": ["ls"]}))
        .assert_error("not_allowed", Some("exec"));
    let r = raw_exec(
        &mut c,
        &es,
        json!({"cmd": "exec", "argv": ["sleep", "2"], "id": "third"}),
    );
    r.assert_error("too_busy", Some("exec"));
    assert_eq!(r.get("id"), &json!("third"));
    assert_usable(&mut c, "too_busy");
    for s in [&mut a, &mut b] {
        let r = read_within(s, B, &es.server);
        assert_eq!(ok_outcome(&r), exited(0, b"", b""));
    }
    // The slots are free again.
    let r = exec(&mut c, &es.server, &["sleep", "0"], None, B);
    assert_eq!(ok_outcome(&r), exited(0, b"", b""));
}

// ---------------------------------------------------------------------------------------------
// 8. A client that leaves mid-command.

/// A server for the disconnect tests: its exec timeout is far past every bound here, so only
/// the disconnect can end the commands in time.
fn disconnect_server(tag: &str) -> ExecServer {
    ExecServer::start(
        tag,
        setup(&["sleep", "sh", "echo"], &["--exec-timeout", "120s"]),
    )
}

/// How long the server may take to kill and reap a command whose client left.
const GONE: Duration = Duration::from_secs(5);

/// Checks that the server still runs commands and has no child left.
fn assert_server_goes_on(es: &ExecServer) {
    let mut s = es.authed();
    let r = exec(&mut s, &es.server, &["echo", "alive"], None, B);
    assert_eq!(ok_outcome(&r), exited(0, b"alive\n", b""));
    wait_no_leftovers(&es.server, &[], GONE, "at the end");
}

#[test]
fn a_client_that_closes_mid_command_leaves_no_process_and_no_zombie() {
    let es = disconnect_server("disconnect-fin");
    let mut s = es.authed();
    send(&mut s, &exec_frame(&["sleep", "30"], None, json!({})));
    let kids = wait_children(&es.server, 1, B);
    drop(s);
    let groups: Vec<i32> = kids.iter().map(|p| p.pgrp).collect();
    wait_no_leftovers(&es.server, &groups, GONE, "after the client closed (FIN)");
    assert_server_goes_on(&es);
}

#[test]
fn a_client_that_resets_mid_command_leaves_no_process_in_the_group() {
    let es = disconnect_server("disconnect-rst");
    let mut s = es.authed();
    send(
        &mut s,
        &exec_frame(&["sh", "-c", "sleep 31 & sleep 32"], None, json!({})),
    );
    let sh = wait_children(&es.server, 1, B).remove(0);
    assert!(
        util::wait_until(B, || group_members(sh.pgrp).len() >= 3),
        "sh and its two sleeps: {:?}",
        group_members(sh.pgrp)
    );
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
    wait_no_leftovers(&es.server, &[sh.pgrp], GONE, "after the client reset (RST)");
    assert_server_goes_on(&es);
}

// ---------------------------------------------------------------------------------------------
// 9. The `socklab exec` client.

#[test]
fn the_exec_client_separates_streams_and_propagates_the_exit_code() {
    let es = ExecServer::start("client", setup(&["sh", "sleep"], &[]));
    let run = run_client(
        &es,
        &[],
        &["sh", "-c", "echo out; echo err >&2; exit 7"],
        Duration::from_secs(30),
    );
    assert_eq!(run.status.code(), Some(7), "{run:?}");
    assert_eq!(run.stdout, b"out\n", "{run:?}");
    assert!(run.stderr.contains("err"), "{run:?}");
    assert!(!run.stderr.contains("out"), "{run:?}");

    let run = run_client(&es, &[], &["sh", "-c", "exit 0"], Duration::from_secs(30));
    assert_eq!(run.status.code(), Some(0), "{run:?}");

    let run = run_client(
        &es,
        &[],
        &["sh", "-c", "kill -TERM $$"],
        Duration::from_secs(30),
    );
    assert_eq!(run.status.code(), Some(128 + 15), "{run:?}");
}

#[test]
fn the_exec_client_exits_124_on_timeout_and_255_on_refusal() {
    let es = ExecServer::start("client-errors", setup(&["sleep"], &[]));
    let run = run_client(
        &es,
        &["--timeout-ms", "300"],
        &["sleep", "60"],
        Duration::from_secs(30),
    );
    assert_eq!(run.status.code(), Some(124), "{run:?}");
    assert!(run.elapsed < Duration::from_secs(10), "{run:?}");
    assert!(!run.stderr.trim().is_empty(), "{run:?}");

    let run = run_client(&es, &[], &["ls", "/"], Duration::from_secs(30));
    assert_eq!(run.status.code(), Some(255), "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
    assert!(
        run.stderr.contains("not_allowed"),
        "the refusal must be on stderr: {run:?}"
    );
    wait_no_leftovers(&es.server, &[], B, "after the client runs");
}

// ---------------------------------------------------------------------------------------------
// 10. Pipelining.

#[test]
fn pipelined_requests_after_an_exec_are_answered_in_order() {
    let es = ExecServer::start("pipeline", setup(&["sh", "echo"], &[]));
    let mut s = es.authed();
    let mut burst = exec_frame(
        &["sh", "-c", "sleep 0.3; echo late"],
        None,
        json!({"id": 1}),
    );
    burst.extend(request(json!({"cmd": "ping", "id": 2}), b""));
    burst.extend(exec_frame(&["echo", "third"], None, json!({"id": 3})));
    burst.extend(request(json!({"cmd": "echo", "id": 4}), b"body four"));
    send(&mut s, &burst);

    let r = read_within(&mut s, B, &es.server);
    assert_eq!(r.get("id"), &json!(1), "the exec answers first: {:?}", r.h);
    assert_eq!(ok_outcome(&r), exited(0, b"late\n", b""));
    let r = read_response(&mut s);
    assert_eq!(r.get("id"), &json!(2), "then the ping: {:?}", r.h);
    r.assert_ok("ping");
    let r = read_response(&mut s);
    assert_eq!(r.get("id"), &json!(3), "{:?}", r.h);
    assert_eq!(ok_outcome(&r), exited(0, b"third\n", b""));
    let r = read_response(&mut s);
    assert_eq!(r.get("id"), &json!(4), "{:?}", r.h);
    r.assert_ok("echo");
    assert_eq!(r.body, b"body four");

    // Refusals keep their place too.
    let mut burst = exec_frame(&["ls"], None, json!({"id": "a"}));
    burst.extend(exec_frame(&["echo", "b"], None, json!({"id": "b"})));
    burst.extend(request(json!({"cmd": "ping", "id": "c"}), b""));
    send(&mut s, &burst);
    let r = read_response(&mut s);
    r.assert_error("not_allowed", Some("exec"));
    assert_eq!(r.get("id"), &json!("a"));
    let r = read_response(&mut s);
    assert_eq!(r.get("id"), &json!("b"));
    assert_eq!(ok_outcome(&r), exited(0, b"b\n", b""));
    let r = call(&mut s, json!({"cmd": "ping", "id": "d"}), b"");
    // "c" was pipelined before "d".
    assert_eq!(r.get("id"), &json!("c"), "{:?}", r.h);
    let r = read_response(&mut s);
    assert_eq!(r.get("id"), &json!("d"), "{:?}", r.h);
}

/// A command allowed to run longer than the client's `--timeout` (by `--timeout-ms`) is waited
/// for: the client does not give up on an answer the server is still entitled to take.
#[test]
fn the_exec_client_waits_as_long_as_the_command_may_run() {
    let es = ExecServer::start("client-long", setup(&["sh"], &[]));
    let run = run_client(
        &es,
        &["--timeout", "1s", "--timeout-ms", "4000"],
        &["sh", "-c", "sleep 2; echo done"],
        Duration::from_secs(30),
    );
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    assert_eq!(run.stdout, b"done\n", "{run:?}");
}

/// `socklab exec PROGRAM ARGS` needs no `--`: what follows the program is the program's, even
/// arguments that look like flags.
#[test]
fn the_exec_client_needs_no_double_dash() {
    let es = ExecServer::start("client-nodash", setup(&["sh"], &[]));
    let out = util::run_socklab(
        [
            "exec",
            "--addr",
            &es.server.tcp("files").to_string(),
            "--secret-file",
            es.secret_file.to_str().unwrap(),
            "sh",
            "-c",
            "echo \"$0 $1\"",
            "--addr",
            "-x",
        ],
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "--addr -x\n");
}
