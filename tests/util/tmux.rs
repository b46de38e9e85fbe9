//! A real terminal for a test: a tmux server of the test's own (`tmux -L NAME`), one detached
//! session running a command, its screen read with `capture-pane`, keys sent with `send-keys`.
//! Every wait is bounded.

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Whether `tmux` can be run. Under `CI=true` its absence fails the test (CI installs it).
pub fn have_tmux() -> bool {
    let ok = Command::new("tmux")
        .arg("-V")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok && std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("`tmux` is not on PATH, and CI must not skip the terminal tests");
    }
    ok
}

/// A tmux server of its own with one session, killed (and its socket file removed) on drop.
pub struct Tmux {
    /// The `-L` socket name.
    socket: String,
    /// The session's name.
    session: String,
    /// The server's socket file, once known.
    path: Option<String>,
}

impl Tmux {
    /// Starts a detached `cols` x `rows` session running the shell command `command`, with
    /// the tmux configuration file `conf` if given.
    pub fn start(tag: &str, conf: Option<&str>, cols: u16, rows: u16, command: &str) -> Tmux {
        static N: AtomicU64 = AtomicU64::new(0);
        let socket = format!(
            "socklab-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut tmux = Tmux {
            socket,
            session: tag.to_string(),
            path: None,
        };
        let (cols, rows) = (cols.to_string(), rows.to_string());
        let mut args = Vec::new();
        if let Some(conf) = conf {
            args.extend(["-f", conf]);
        }
        let session = tmux.session.clone();
        args.extend([
            "new-session",
            "-d",
            "-s",
            &session,
            "-x",
            &cols,
            "-y",
            &rows,
            command,
        ]);
        tmux.cmd(&args);
        let out = tmux.cmd(&["display-message", "-p", "#{socket_path}"]);
        tmux.path = Some(String::from_utf8_lossy(&out.stdout).trim().to_string());
        tmux
    }

    /// Runs `tmux -L SOCKET ARGS`; panics with its stderr if it fails.
    pub fn cmd(&self, args: &[&str]) -> Output {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .env("TERM", "xterm-256color")
            .stdin(Stdio::null())
            .output()
            .expect("run tmux");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The visible screen, one string per line, trailing blank lines dropped.
    pub fn screen(&self) -> Vec<String> {
        let out = self.cmd(&["capture-pane", "-p", "-t", &self.session]);
        let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim_end().to_string())
            .collect();
        while lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        lines
    }

    /// Polls the screen until `cond` holds; panics with the screen if it does not within
    /// `limit`.
    pub fn wait_screen(
        &self,
        what: &str,
        limit: Duration,
        cond: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        let deadline = Instant::now() + limit;
        loop {
            let screen = self.screen();
            if cond(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not on screen within {limit:?}:\n{}",
                screen.join("\n")
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Types `literal` as it is.
    pub fn keys(&self, literal: &str) {
        self.cmd(&["send-keys", "-t", &self.session, "-l", literal]);
    }

    /// Presses Enter.
    pub fn enter(&self) {
        self.cmd(&["send-keys", "-t", &self.session, "Enter"]);
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .arg("kill-server")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
}
