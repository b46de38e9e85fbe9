//! `socklab tune --report DIR` end to end: a quick run of every experiment writes
//! DIR/index.html (and, with --png, a PNG beside each SVG chart, linked from the page), which headless Chromium opens with every chart loaded (the page's own
//! script marks how many images loaded); the page holds the tables, the kernel settings and
//! the suggestions, and needs no network. A report into a directory that cannot be written
//! fails at once, naming it. Chromium must be installed (CI installs it): without it the
//! test fails, it does not skip.

mod util;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// How long one run of the binary (or of Chromium) may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(240);

/// The headless browser.
const CHROMIUM: &str = "chromium";

/// Runs `program ARGS...` to completion (at most [`RUN_TIMEOUT`]); returns its output.
fn run(program: &str, args: &[&str]) -> Output {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {program}: {e} (install it: apt-get install chromium)")
        });
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(RUN_TIMEOUT) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            // SAFETY: kill has no memory effects; the pid is our child, not yet reaped.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
            panic!("{program} {args:?} did not finish within {RUN_TIMEOUT:?}");
        }
    }
}

/// A fresh directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("socklab-report-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The value of `attr="..."` in `html`.
fn attr(html: &str, attr: &str) -> Option<u64> {
    let at = html.find(&format!("{attr}=\""))? + attr.len() + 2;
    html[at..].split('"').next()?.parse().ok()
}

/// Opens `page` in headless Chromium, lets it load, and returns the DOM after its scripts ran.
fn dom_after_load(page: &Path, profile: &Path) -> String {
    let url = format!("file://{}", page.display());
    let profile = format!("--user-data-dir={}", profile.display());
    let out = run(
        CHROMIUM,
        &[
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            &profile,
            "--virtual-time-budget=10000",
            "--dump-dom",
            &url,
        ],
    );
    assert!(
        out.status.success(),
        "chromium failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_quick_report_opens_in_chromium_with_every_chart_loaded() {
    let dir = TempDir::new("page");
    let report = dir.0.join("report");
    let report_arg = report.display().to_string();
    let args = ["tune", "--quick", "--png", "--report", &report_arg];
    let out = run(env!("CARGO_BIN_EXE_socklab"), &args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let page = report.join("index.html");
    let html = std::fs::read_to_string(&page).expect("index.html written");
    // Every experiment has its section; the kernel's settings are there as a table.
    for name in [
        "nodelay",
        "buffers",
        "backlog",
        "reuseaddr",
        "udp-rcvbuf",
        "time-wait",
        "reuseport",
        "keepalive",
        "kernel",
    ] {
        assert!(
            html.contains(&format!("<section id=\"{name}\">")),
            "no {name} section"
        );
    }
    assert!(
        html.contains("<td>net.core.somaxconn</td>"),
        "no kernel table"
    );
    assert!(html.contains("What this suggests"), "no suggestions");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the page needs the network"
    );
    let images = html.matches("<img ").count();
    // Every experiment draws one chart, but kernel; keepalive only where it can run.
    let want = if html.contains("<p class=\"skipped\">") {
        7
    } else {
        8
    };
    assert!(images >= want, "{images} charts in the page, want {want}");
    for svg in std::fs::read_dir(&report).unwrap().flatten() {
        let p = svg.path();
        if p.extension().is_some_and(|e| e == "svg") {
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(
                text.contains("width=\"1000\""),
                "{} is not 1000 px wide",
                p.display()
            );
            // --png: a PNG of the same size beside it, linked from the page.
            let png = std::fs::read(p.with_extension("png"))
                .unwrap_or_else(|e| panic!("no PNG beside {}: {e}", p.display()));
            assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
            assert_eq!(
                &png[16..24],
                &[0, 0, 0x03, 0xe8, 0, 0, 0x02, 0x58],
                "1000 x 600"
            );
            let name = p.with_extension("png");
            let name = name.file_name().unwrap().to_string_lossy();
            assert!(
                html.contains(&format!("<a href=\"{name}\">PNG</a>")),
                "no link to {name}"
            );
        }
    }
    let started = Instant::now();
    let dom = dom_after_load(&page, &dir.0.join("chromium-profile"));
    let loaded = attr(&dom, "data-images-loaded")
        .unwrap_or_else(|| panic!("the page's script did not run: {dom:.500}"));
    let total = attr(&dom, "data-images-total").expect("data-images-total");
    assert_eq!(
        total as usize, images,
        "chromium saw another number of images"
    );
    assert_eq!(loaded, total, "images that did not load:\n{dom}");
    assert!(!dom.contains("class=\"broken\""), "{dom}");
    assert!(started.elapsed() < RUN_TIMEOUT);
}

#[test]
fn a_report_into_an_unwritable_directory_fails_at_once_naming_it() {
    // /proc refuses new directories, even to root.
    let dir = "/proc/socklab-no-such-dir/report";
    let started = Instant::now();
    let out = run(
        env!("CARGO_BIN_EXE_socklab"),
        &["tune", "--only", "nodelay", "--quick", "--report", dir],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    // A runtime failure (the file system said no), not a usage error.
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(dir) || stderr.contains("/proc/socklab-no-such-dir"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Refused before any experiment ran.
    assert!(!String::from_utf8_lossy(&out.stdout).contains("== nodelay =="));
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn chromium_is_installed() {
    // CI installs it (.ci/run); a machine without it fails here rather than skipping the
    // report's test.
    let out = run(CHROMIUM, &["--version"]);
    assert!(
        out.status.success(),
        "chromium --version: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn png_without_any_font_is_refused_before_any_experiment() {
    if !util::root_or_skip(
        "png_without_any_font_is_refused_before_any_experiment",
        "hiding the fonts (a mount namespace) needs root",
    ) {
        return;
    }
    let dir = TempDir::new("nofont");
    let out_dir = dir.0.join("charts");
    // The system's fonts hidden under an empty tmpfs, in a mount namespace of this command's own.
    let script = format!(
        "mount -t tmpfs none /usr/share/fonts && exec {} tune --only reuseaddr --quick --png --out {}",
        env!("CARGO_BIN_EXE_socklab"),
        out_dir.display()
    );
    let out = run("unshare", &["-m", "sh", "-c", &script]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--png needs a TrueType or OpenType font"),
        "{stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("== reuseaddr =="));
}
