//! `socklab completions SHELL` and `socklab man` produce what the shells and man read: the
//! bash script passes `bash -n` and completes every subcommand, zsh and fish get their own
//! formats, the man page is roff with the subcommands in it; an unknown shell is a usage error.

mod util;

use std::process::Command;
use std::time::Duration;

use util::run_socklab;

const T: Duration = Duration::from_secs(20);

fn stdout_of(args: &[&str]) -> String {
    let out = run_socklab(args, T);
    assert!(out.status.success(), "socklab {args:?}: {out:?}");
    String::from_utf8(out.stdout).expect("UTF-8")
}

const SUBCOMMANDS: [&str; 6] = ["serve", "reload", "put", "exec", "bench", "completions"];

#[test]
fn bash_completions_are_valid_bash_and_know_every_subcommand() {
    let script = stdout_of(&["completions", "bash"]);
    for sub in SUBCOMMANDS {
        assert!(script.contains(sub), "no {sub} in the bash completions");
    }
    assert!(
        script.contains("--proxy-protocol"),
        "serve's flags are completed"
    );
    let dir = util::TempDir::new("completions");
    let path = dir.file("socklab.bash");
    std::fs::write(&path, &script).unwrap();
    let check = Command::new("bash").arg("-n").arg(&path).output().unwrap();
    assert!(check.status.success(), "bash -n: {check:?}");
}

#[test]
fn zsh_and_fish_get_their_own_formats() {
    assert!(stdout_of(&["completions", "zsh"]).starts_with("#compdef socklab"));
    let fish = stdout_of(&["completions", "fish"]);
    assert!(fish.contains("complete -c socklab"), "{fish:.200}");
}

#[test]
fn the_man_page_is_roff_with_the_subcommands() {
    let page = stdout_of(&["man"]);
    assert!(
        page.starts_with(".ie") || page.contains(".TH socklab"),
        "{page:.200}"
    );
    assert!(page.contains(".SH NAME"), "{page:.300}");
    for sub in SUBCOMMANDS {
        assert!(page.contains(sub), "no {sub} in the man page");
    }
}

#[test]
fn an_unknown_shell_is_a_usage_error() {
    let out = run_socklab(["completions", "tcsh"], T);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tcsh") && err.contains("bash"), "{err}");
}
