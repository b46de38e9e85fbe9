//! A real browser for the tests: Debian's Chromium (`/usr/bin/chromium`, which `.ci/run`
//! installs), driven by playwright-core from the npm registry, installed once per build
//! directory. A test that needs it fails, rather than skips, when either is missing.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use super::run_with_input;

/// The Chromium binary.
pub fn chromium() -> PathBuf {
    let path = PathBuf::from("/usr/bin/chromium");
    assert!(
        path.exists(),
        "Chromium is needed (Debian's chromium; .ci/run installs it)"
    );
    path
}

/// A directory with playwright-core installed (npm), made on first use.
fn playwright_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("playwright");
    if !dir.join("node_modules/playwright-core").exists() {
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = Command::new("npm");
        cmd.args([
            "install",
            "--no-audit",
            "--no-fund",
            "--silent",
            "playwright-core@1",
        ])
        .current_dir(&dir);
        let out = run_with_input(cmd, b"", Duration::from_secs(300));
        assert!(
            out.status.success(),
            "npm install playwright-core: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir
}

/// Runs a Node script (which may `require('playwright-core')`) with `args`, bounded; the
/// Chromium path is in the environment as `CHROMIUM`.
pub fn node(script: &str, args: &[&str], bound: Duration) -> Output {
    let dir = playwright_dir();
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = dir.join(format!("script-{}-{n}.js", std::process::id()));
    std::fs::write(&file, script).unwrap();
    let mut cmd = Command::new("node");
    cmd.arg(&file)
        .args(args)
        .env("CHROMIUM", chromium())
        .env("NODE_PATH", dir.join("node_modules"))
        .current_dir(&dir);
    let out = run_with_input(cmd, b"", bound);
    let _ = std::fs::remove_file(file);
    out
}
