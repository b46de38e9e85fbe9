//! `socklab exec -- PROGRAM ARGS…`: runs an allowed program on the server through the `files`
//! service and behaves like ssh: the command's stdout to stdout, its stderr to stderr, and its
//! exit code as ours (128 + the signal for a command killed by one).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde_json::Value;

use super::files::{Conn, Failure};
use crate::client::{ClientError, request};

/// Exit code for a failure of socklab or the server rather than of the command (as ssh).
const OWN_FAILURE: u8 = 255;

/// Exit code for a command killed at its timeout (as timeout(1)).
const TIMED_OUT: u8 = 124;

/// How much longer than `--timeout-ms` the client waits for the answer.
const ANSWER_MARGIN: Duration = Duration::from_secs(5);

/// `socklab exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Kill the command after this long: 500ms, 2s… (a plain number is milliseconds; the
    /// server's own limit still applies).
    #[arg(long = "timeout-ms", value_name = "DURATION", value_parser = super::parse_duration_or_ms)]
    timeout_ms: Option<Duration>,
    #[command(flatten)]
    conn: Conn,
    /// The program (as on the server's allow-list) and its arguments, passed as they are: no
    /// shell is involved anywhere. Everything after PROGRAM is its own (`socklab exec ls -l`);
    /// `--` before PROGRAM is needed only when PROGRAM itself starts with `-`.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = false,
        value_name = "PROGRAM ARGS"
    )]
    argv: Vec<String>,
}

/// Runs the command; the exit code is the command's.
pub fn run(args: &ExecArgs) -> ExitCode {
    match exec(args) {
        Ok(code) => ExitCode::from(code),
        Err(Failure(msg)) => {
            eprintln!("socklab exec: {msg}");
            ExitCode::from(OWN_FAILURE)
        }
    }
}

fn exec(args: &ExecArgs) -> Result<u8, Failure> {
    let mut client = args.conn.open()?;
    let mut header = request("exec");
    header.insert("argv".into(), args.argv.clone().into());
    if let Some(limit) = args.timeout_ms {
        let ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        header.insert("timeout_ms".into(), ms.into());
    }
    client.send_request(&header, 0)?;
    if let Some(limit) = args.timeout_ms {
        // The answer may take as long as the command is allowed to run, and the server's
        // timeout answer a moment more.
        let runs = limit.saturating_add(ANSWER_MARGIN);
        client.wait_at_least(runs).map_err(ClientError::from)?;
    }
    let resp = client.read_response()?;
    let body = client.read_small_body(resp.size)?;
    let out_len = resp.u64("stdout_size").unwrap_or(0);
    let out_len = usize::try_from(out_len)
        .unwrap_or(usize::MAX)
        .min(body.len());
    let (stdout, stderr) = body.split_at(out_len);
    let _ = std::io::stdout().write_all(stdout);
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().write_all(stderr);
    if resp.fields.get("truncated") == Some(&Value::Bool(true)) {
        eprintln!("socklab exec: the command's output was cut at the server's limit");
    }
    match resp.into_result() {
        Ok(resp) => {
            if let Some(code) = resp.fields.get("exit_code").and_then(Value::as_i64) {
                return Ok(u8::try_from(code & 0xff).unwrap_or(OWN_FAILURE));
            }
            let sig = resp
                .fields
                .get("signal")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            Ok(u8::try_from(128 + (sig & 0x7f)).unwrap_or(OWN_FAILURE))
        }
        Err(ClientError::Server { code, message }) if code == "timeout" => {
            eprintln!("socklab exec: {message}");
            Ok(TIMED_OUT)
        }
        Err(e) => Err(e.into()),
    }
}
