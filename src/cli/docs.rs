//! `socklab completions SHELL` and `socklab man`: shell completions (clap_complete) and a man
//! page in roff (clap_mangen), both written to stdout from the same definition of the command
//! line that parses it, so they never fall behind a flag.

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, CommandFactory, ValueEnum};

use super::Cli;

/// The shells completions are made for.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
    Elvish,
    Powershell,
}

/// `socklab completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell: bash (source it, or install it as /usr/share/bash-completion/completions/socklab),
    /// zsh (a `_socklab` file on $fpath), fish (~/.config/fish/completions/socklab.fish), elvish,
    /// powershell.
    shell: Shell,
}

/// `socklab man`.
#[derive(Debug, Args)]
pub struct ManArgs {}

/// Writes the completion script for `args.shell` to stdout.
pub fn completions(args: &CompletionsArgs) -> ExitCode {
    let shell = match args.shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
        Shell::Elvish => clap_complete::Shell::Elvish,
        Shell::Powershell => clap_complete::Shell::PowerShell,
    };
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "socklab", &mut out);
    write_out("completions", &out)
}

/// Writes the man page (roff, section 1) to stdout: `socklab man | man -l -`.
pub fn man(_: &ManArgs) -> ExitCode {
    let mut out = Vec::new();
    if let Err(e) = clap_mangen::Man::new(Cli::command()).render(&mut out) {
        eprintln!("socklab man: cannot render the page: {e}");
        return ExitCode::FAILURE;
    }
    write_out("man", &out)
}

fn write_out(what: &str, bytes: &[u8]) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("socklab {what}: cannot write to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}
