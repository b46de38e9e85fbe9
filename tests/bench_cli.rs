//! `socklab bench` against real servers: every mode gets replies and reports them in its JSON
//! result, `--rate` paces the requests, and a server that dies or never answers ends the run
//! with an error within a bound instead of a hang. Nothing here asserts on speed.

mod util;

use std::io::{ErrorKind, Read};
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use util::{Server, TempDir};

/// The most any bench run here may take before the test calls it a hang.
const BOUND: Duration = Duration::from_secs(30);

/// Runs `socklab bench ARGS...` to completion (killed after `bound`), returning its output and
/// how long it took.
fn bench(args: &[&str], bound: Duration) -> (Output, Duration) {
    let start = Instant::now();
    let mut child = Command::new(util::bin())
        .arg("bench")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn socklab bench");
    // Drain both pipes in the background so that the child never blocks on them.
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_t = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if start.elapsed() > bound {
            let _ = child.kill();
            let _ = child.wait();
            panic!("socklab bench {args:?} did not finish within {bound:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let took = start.elapsed();
    let output = Output {
        status,
        stdout: out_t.join().expect("stdout reader"),
        stderr: err_t.join().expect("stderr reader"),
    };
    (output, took)
}

/// Runs a bench that must succeed and returns its JSON result.
fn bench_json(args: &[&str]) -> Value {
    let mut all: Vec<&str> = args.to_vec();
    all.push("--json");
    let (out, _) = bench(&all, BOUND);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench {args:?} failed: {}\n--- stdout ---\n{stdout}--- stderr ---\n{stderr}",
        out.status
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "--json prints one line: {stdout}");
    serde_json::from_str(lines.first().copied().unwrap_or_default())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// Checks what every successful run must report.
fn assert_sane(r: &Value) {
    let requests = r["requests"].as_u64().expect("requests");
    assert!(requests > 0, "no requests: {r}");
    assert_eq!(r["errors"].as_u64(), Some(0), "{r}");
    assert_eq!(r["reconnects"].as_u64(), Some(0), "{r}");
    let lat = &r["latency_us"];
    let (p50, p99, max) = (
        lat["p50"].as_f64().expect("p50"),
        lat["p99"].as_f64().expect("p99"),
        lat["max"].as_f64().expect("max"),
    );
    assert!(p50 > 0.0 && p50 <= p99 && p99 <= max, "{r}");
    assert!(r["requests_per_s"].as_f64().expect("rps") > 0.0, "{r}");
    assert!(r["bytes_received"].as_u64().expect("bytes") > 0, "{r}");
    let cpu = r["cpu_percent"].as_f64().expect("cpu_percent");
    let threads = r["threads"].as_f64().expect("threads");
    assert_eq!(
        r["generator_saturated"].as_bool(),
        Some(cpu >= 90.0 * threads),
        "saturated means 90 % of each load thread's core: {r}"
    );
}

/// An echo server on a free port, every other service off.
fn echo_server() -> Server {
    Server::start(util::serve_args(&[("echo", "127.0.0.1:0")], &[]))
}

/// A files server on a free port (data in `dir`), every other service off.
fn files_server(dir: &TempDir) -> Server {
    let mut args = Vec::new();
    for s in util::all_services() {
        if s == "files" {
            args.push("--files".to_owned());
            args.push("127.0.0.1:0".to_owned());
        } else {
            args.push(format!("--no-{s}"));
        }
    }
    args.push("--data-dir".to_owned());
    args.push(dir.path().display().to_string());
    Server::start(args)
}

#[test]
fn raw_mode_against_echo() {
    let server = echo_server();
    let addr = server.tcp("echo").to_string();
    let r = bench_json(&[
        "--addr",
        &addr,
        "--mode",
        "raw",
        "--size",
        "100",
        "--conns",
        "4",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
    ]);
    assert_sane(&r);
    assert_eq!(r["mode"], "raw");
    assert_eq!(r["request_bytes"].as_u64(), Some(100));
    assert_eq!(r["conns"].as_u64(), Some(4));
}

#[test]
fn raw_mode_with_server_pid_reports_server_cpu() {
    let server = echo_server();
    let addr = server.tcp("echo").to_string();
    let pid = server.pid().to_string();
    let r = bench_json(&[
        "--addr",
        &addr,
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "--server-pid",
        &pid,
    ]);
    assert_sane(&r);
    assert!(r["server_cpu_s"].as_f64().is_some(), "{r}");
    let per = r["server_cpu_per_request_us"].as_f64();
    let user = r["server_user_cpu_per_request_us"].as_f64();
    let sys = r["server_sys_cpu_per_request_us"].as_f64();
    let (Some(per), Some(user), Some(sys)) = (per, user, sys) else {
        panic!("no server CPU per request, or not split into user and system: {r}");
    };
    // The echo server spent something, and the two parts add up to the whole.
    assert!(per > 0.0 && user >= 0.0 && sys >= 0.0, "{r}");
    assert!((user + sys - per).abs() <= per * 1e-9, "{r}");
}

#[test]
fn line_mode_against_echo() {
    let server = echo_server();
    let addr = server.tcp("echo").to_string();
    let r = bench_json(&[
        "--addr",
        &addr,
        "--mode",
        "line",
        "--conns",
        "3",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
    ]);
    assert_sane(&r);
    // And with a fixed line, as sent to redis.
    let r = bench_json(&[
        "--addr",
        &addr,
        "--mode",
        "line",
        "--line",
        "PING",
        "--duration",
        "1s",
        "--warmup",
        "0s",
    ]);
    assert_sane(&r);
    assert_eq!(r["request_bytes"].as_u64(), Some(6));
}

#[test]
fn frame_mode_against_files() {
    let dir = TempDir::new("bench-frame");
    let server = files_server(&dir);
    let addr = server.tcp("files").to_string();
    let r = bench_json(&[
        "--addr",
        &addr,
        "--mode",
        "frame",
        "--frame-cmd",
        "ping",
        "--conns",
        "2",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
    ]);
    assert_sane(&r);
    assert_eq!(r["frame_cmd"], "ping");
    let r = bench_json(&[
        "--addr",
        &addr,
        "--mode",
        "frame",
        "--frame-cmd",
        "echo",
        "--size",
        "3000",
        "--depth",
        "4",
        "--duration",
        "1s",
        "--warmup",
        "0s",
    ]);
    assert_sane(&r);
    assert!(r["bytes_received"].as_u64().unwrap_or(0) > 3000, "{r}");
}

#[test]
fn pipelined_depth_8() {
    let server = echo_server();
    let addr = server.tcp("echo").to_string();
    let r = bench_json(&[
        "--addr",
        &addr,
        "--depth",
        "8",
        "--conns",
        "5",
        "--threads",
        "2",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
    ]);
    assert_sane(&r);
    assert_eq!(r["depth"].as_u64(), Some(8));
    assert_eq!(r["threads"].as_u64(), Some(2));
}

#[test]
fn rate_paces_the_requests() {
    let server = echo_server();
    let addr = server.tcp("echo").to_string();
    let r = bench_json(&[
        "--addr",
        &addr,
        "--rate",
        "200",
        "--conns",
        "4",
        "--duration",
        "1s",
        "--warmup",
        "0s",
    ]);
    assert_sane(&r);
    let requests = r["requests"].as_u64().unwrap_or(0);
    assert!(
        (100..=300).contains(&requests),
        "--rate 200 for 1 s made {requests} requests: {r}"
    );
}

#[test]
fn a_server_killed_mid_run_is_an_error_not_a_hang() {
    let server = echo_server();
    let addr = server.tcp("echo").to_string();
    let killer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(1500));
        server.signal(libc::SIGKILL);
        // Dropping the server reaps it.
        drop(server);
    });
    let (out, took) = bench(
        &[
            "--addr",
            &addr,
            "--conns",
            "4",
            "--duration",
            "20s",
            "--warmup",
            "0s",
            "--timeout",
            "2s",
        ],
        BOUND,
    );
    killer.join().expect("killer thread");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "bench survived a dead server: {stderr}"
    );
    assert!(stderr.contains("socklab bench:"), "no message: {stderr}");
    assert!(
        took < Duration::from_secs(10),
        "bench took {took:?} to notice a dead server: {stderr}"
    );
}

#[test]
fn a_server_that_never_answers_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    listener.set_nonblocking(true).expect("nonblocking");
    let stop = Arc::new(AtomicBool::new(false));
    let holder = {
        let stop = Arc::clone(&stop);
        // Accepts and holds every connection, never reading or writing.
        thread::spawn(move || {
            let mut held = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => held.push(s),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(10))
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
            held.len()
        })
    };
    let (out, took) = bench(
        &[
            "--addr",
            &addr,
            "--conns",
            "3",
            "--duration",
            "20s",
            "--warmup",
            "0s",
            "--timeout",
            "1s",
        ],
        BOUND,
    );
    stop.store(true, Ordering::Relaxed);
    let held = holder.join().expect("holder thread");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "bench succeeded without answers: {stderr}"
    );
    assert!(stderr.contains("timeout"), "no timeout message: {stderr}");
    assert!(
        took < Duration::from_secs(8),
        "bench took {took:?} to time out: {stderr}"
    );
    assert_eq!(held, 3, "the bench opened 3 connections");
}

#[test]
fn bad_usage_is_refused() {
    let (out, _) = bench(&["--addr", "unixgram:/tmp/x", "--duration", "1s"], BOUND);
    assert!(!out.status.success());
    let (out, _) = bench(&["--mode", "raw", "--line", "PING"], BOUND);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--line"));
}

/// On a terminal the run shows a live progress line (phase, rate, replies so far), cleared
/// at the end, where the report takes its place.
#[test]
fn a_terminal_gets_a_live_progress_line() {
    if !util::tmux::have_tmux() {
        eprintln!("skipped: `tmux` is not on PATH (install it: apt-get install tmux)");
        return;
    }
    let server = echo_server();
    let addr = server.tcp("echo").to_string();
    let dir = TempDir::new("bench-tty");
    // Keep the pane after the run, to read the report.
    let conf = dir.file("tmux.conf");
    std::fs::write(&conf, "set -g remain-on-exit on\n").unwrap();
    let command = format!(
        "'{}' bench --addr {addr} --conns 2 --warmup 1s --duration 2s",
        util::bin()
    );
    let tmux = util::tmux::Tmux::start("bench", Some(&conf), 160, 20, &command);
    let progress = |s: &[String]| {
        s.iter()
            .any(|l| l.starts_with("bench [") && l.contains("req/s") && l.contains("replies"))
    };
    let during = tmux.wait_screen("a progress line", BOUND, progress);
    let line = during.iter().find(|l| l.starts_with("bench [")).unwrap();
    assert!(
        line.contains("warm-up") || line.contains("measuring"),
        "the progress line names the phase: {line}"
    );
    let after = tmux.wait_screen("the report", BOUND, |s| {
        s.iter().any(|l| l.trim_start().starts_with("bench cpu"))
    });
    assert!(
        after.iter().any(|l| l.trim_start().starts_with("requests")),
        "{}",
        after.join("\n")
    );
    assert!(
        !progress(&after),
        "the progress line is cleared at the end:\n{}",
        after.join("\n")
    );
}

/// Each bad argument is refused before any connection, with a message that names it. The
/// address is a closed port, so a check that went missing would show up as a connect error
/// instead of the expected message.
#[test]
fn bad_arguments_each_get_a_clear_error() {
    let closed = util::closed_port().to_string();
    let cases: &[(&[&str], &str)] = &[
        (&["--duration", "0s"], "--duration must be more than zero"),
        (&["--duration", "soon"], "is not a duration"),
        (&["--timeout", "0s"], "--timeout must be more than zero"),
        (
            &["--mode", "raw", "--size", "0"],
            "--size must be at least 1",
        ),
        (
            &["--mode", "line", "--size", "0"],
            "--size must be at least 1",
        ),
        (&["--size", "lots"], "is not a size"),
        (
            &["--mode", "line", "--line", "PI\rNG"],
            "must not contain CR or LF",
        ),
        (&["--rate", "0"], "not a positive number"),
        (&["--rate=-5"], "not a positive number"),
        (&["--rate", "NaN"], "not a positive number"),
        (&["--rate", "inf"], "not a positive number"),
        (&["--conns", "0"], "--conns"),
        (&["--depth", "0"], "--depth"),
        (&["--threads", "0"], "--threads"),
        (&["--mode", "udp"], "nothing answers UDP"),
        (
            &["--addr", "unixgram:/tmp/socklab-none"],
            "not a stream address",
        ),
    ];
    for (args, want) in cases {
        let mut all = Vec::new();
        if !args.contains(&"--addr") {
            all.extend(["--addr", closed.as_str()]);
        }
        all.extend_from_slice(args);
        let (out, _) = bench(&all, BOUND);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted: {stderr}");
        assert!(
            stderr.contains(want),
            "{args:?}: want `{want}` in the error, got: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?} printed a report");
    }
}

#[test]
fn a_refused_address_is_a_connect_error() {
    let closed = util::closed_port().to_string();
    let (out, took) = bench(&["--addr", &closed, "--duration", "5s"], BOUND);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot connect to {closed}")),
        "{stderr}"
    );
    assert!(
        took < Duration::from_secs(5),
        "a refused connect must fail at once, took {took:?}"
    );
}

/// A fake server on its own thread: answers whatever each connection sends with `answer`
/// (called with the bytes read), until `stop`.
fn fake_server(answer: fn(&[u8]) -> Vec<u8>) -> (String, Arc<AtomicBool>, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    listener.set_nonblocking(true).expect("nonblocking");
    let stop = Arc::new(AtomicBool::new(false));
    let handle = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let mut conns = Vec::new();
            let mut buf = [0u8; 4096];
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(true).expect("nonblocking");
                        conns.push(s);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => panic!("accept: {e}"),
                }
                for s in &mut conns {
                    if let Ok(n) = s.read(&mut buf)
                        && n > 0
                    {
                        let _ = std::io::Write::write_all(s, &answer(&buf[..n]));
                    }
                }
                thread::sleep(Duration::from_millis(2));
            }
        })
    };
    (addr, stop, handle)
}

/// Runs a `mode` bench against a fake server that answers with `answer`; checks that the run
/// ends at once with exit 1 and a "not a reply" error, and returns that error.
fn protocol_error_against(answer: fn(&[u8]) -> Vec<u8>, mode: &str) -> String {
    let (addr, stop, handle) = fake_server(answer);
    let (out, took) = bench(
        &[
            "--addr",
            &addr,
            "--mode",
            mode,
            "--conns",
            "1",
            "--duration",
            "5s",
        ],
        BOUND,
    );
    stop.store(true, Ordering::Relaxed);
    handle.join().expect("fake server");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not a reply"), "{stderr}");
    assert!(took < Duration::from_secs(5), "took {took:?}: {stderr}");
    stderr
}

#[test]
fn a_server_that_answers_twice_is_a_protocol_error() {
    // Two lines back for every request line: more replies than requests.
    let stderr = protocol_error_against(|got| got.repeat(2), "line");
    assert!(stderr.contains("more replies than requests"), "{stderr}");
}

#[test]
fn a_frame_reply_with_an_empty_header_is_a_protocol_error() {
    // A files reply starts with its header's length; 0 is no header at all.
    let stderr = protocol_error_against(|_| vec![0, 0, 0, 0], "frame");
    assert!(stderr.contains("header length of 0 bytes"), "{stderr}");
}

/// `--new-conn-per-request` (TCP_CRR): every request on a connection of its own.
#[test]
fn a_connection_per_request_is_counted() {
    let server = echo_server();
    let addr = server.tcp("echo").to_string();
    let r = bench_json(&[
        "--addr",
        &addr,
        "--conns",
        "2",
        "--new-conn-per-request",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
    ]);
    assert_sane(&r);
    let (connects, requests) = (
        r["connects"].as_u64().unwrap(),
        r["requests"].as_u64().unwrap(),
    );
    assert!(connects > 0, "{r}");
    // A connect per reply, counted with the reply, also across the warm-up's end.
    assert_eq!(connects, requests, "{r}");
    let (out, _) = bench(
        &["--addr", &addr, "--new-conn-per-request", "--depth", "2"],
        BOUND,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs --depth 1"));
}

/// Ctrl-C ends the run with the summary of what was measured so far, and `--interval` shows
/// progress on stderr meanwhile.
#[test]
fn ctrl_c_reports_what_was_measured() {
    let server = echo_server();
    let addr = server.tcp("echo").to_string();
    let mut child = Command::new(util::bin())
        .args([
            "bench",
            "--addr",
            &addr,
            "--duration",
            "60s",
            "--warmup",
            "100ms",
        ])
        .args(["--interval", "100ms", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn socklab bench");
    let mut err = child.stderr.take().unwrap();
    // Wait for an interval line from the measured window (not the warm-up).
    let mut seen = String::new();
    let deadline = Instant::now() + BOUND;
    let mut buf = [0u8; 4096];
    while !seen
        .lines()
        .any(|l| l.contains("replies/s") && !l.contains("warm-up"))
    {
        assert!(Instant::now() < deadline, "no interval line: {seen}");
        let n = err.read(&mut buf).expect("stderr");
        assert!(n > 0, "bench ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    // SAFETY: kill(2) on the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = util::wait_child(&mut child, BOUND).expect("bench exits after Ctrl-C");
    assert!(status.success(), "{status}: {seen}");
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let r: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(r["interrupted"], true, "{r}");
    assert!(r["requests"].as_u64().unwrap() > 0, "{r}");
    assert!(r["duration_s"].as_f64().unwrap() < 60.0, "{r}");
}
