//! `socklab reload`: asks the running server, through its control socket, to start its
//! successor (the same binary path and arguments, plus `--upgrade-from`) and hand it every
//! listening socket; prints the successor's pid once it serves, or why it did not start (the
//! old server then goes on serving). PROTOCOL.md, "Control socket".

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

/// `socklab reload`.
#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// The server's control socket (its --control).
    #[arg(
        long,
        value_name = "PATH",
        default_value = "./socklab-data/.socklab-control.sock"
    )]
    pub control: PathBuf,
    /// Give up when the server has not answered within this long (it gives its successor 30 s).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Why `socklab reload` failed.
#[derive(Debug, thiserror::Error)]
enum ReloadError {
    #[error("cannot reach the server's control socket {path}: {source}")]
    Connect { path: String, source: io::Error },
    #[error("{0}")]
    Refused(String),
    #[error("the server did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the server closed the control connection without an answer")]
    NoAnswer,
    #[error("the control connection failed: {0}")]
    Io(io::Error),
}

pub fn run(args: &ReloadArgs) -> ExitCode {
    match reload(args) {
        Ok(answer) => {
            println!("reloaded: {answer}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("socklab reload: {e}");
            ExitCode::FAILURE
        }
    }
}

fn reload(args: &ReloadArgs) -> Result<String, ReloadError> {
    let stream = UnixStream::connect(&args.control).map_err(|source| ReloadError::Connect {
        path: args.control.display().to_string(),
        source,
    })?;
    stream
        .set_read_timeout(Some(args.timeout))
        .and_then(|()| stream.set_write_timeout(Some(args.timeout)))
        .map_err(ReloadError::Io)?;
    (&stream).write_all(b"reload\n").map_err(ReloadError::Io)?;
    let mut line = String::new();
    // One line of at most 1 KiB or so; `take` bounds what a wrong peer could send.
    let read = BufReader::new(io::Read::take(&stream, 64 * 1024)).read_line(&mut line);
    match read {
        Ok(0) => Err(ReloadError::NoAnswer),
        Ok(_) => {
            let line = line.trim_end();
            match line.strip_prefix("ok ") {
                Some(rest) => Ok(rest.to_owned()),
                None => Err(ReloadError::Refused(
                    line.strip_prefix("error ").unwrap_or(line).to_owned(),
                )),
            }
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Err(ReloadError::Timeout(args.timeout))
        }
        Err(e) => Err(ReloadError::Io(e)),
    }
}
