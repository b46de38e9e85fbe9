//! `exec`, the `files` command that runs an allowed program (PROTOCOL.md, "Exec"), sans-IO:
//! the request is checked here and turned into an [`ExecRequest`]; the reactor spawns the
//! child, reads its pipes and reports an [`ExecOutcome`], which is encoded here.
//!
//! No shell is ever involved: `argv` goes to execve as given, so `;`, `$(…)`, `*` and quotes
//! are bytes of an argument like any other.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use super::response::ErrorCode;

/// The allow-list and limits, fixed at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecPolicy {
    /// Each allowed program: the name as configured, and its absolute path.
    pub allow: Vec<(String, PathBuf)>,
    /// The longest a child may run; a request's `timeout_ms` can only shorten it.
    pub timeout: Duration,
    /// Bytes kept per stream (stdout, stderr); the rest is discarded.
    pub max_output: usize,
    /// Children running at once at most; past it, `too_busy`.
    pub max_procs: usize,
    /// The children's working directory.
    pub workdir: PathBuf,
    /// How every descendant of a command is kept within reach.
    pub containment: crate::sys::contain::Mode,
}

/// Why a program cannot go on the allow-list.
#[derive(Debug, thiserror::Error)]
pub enum AllowError {
    #[error("--exec-allow {0}: no such program on PATH")]
    NotOnPath(String),
    #[error("--exec-allow {name}: {source}")]
    Path {
        name: String,
        source: std::io::Error,
    },
}

/// Resolves a configured program to its absolute path, once, at start-up: a name is looked up
/// on PATH, a path is made absolute.
pub fn resolve_program(name: &str) -> Result<PathBuf, AllowError> {
    if name.contains('/') {
        return std::fs::canonicalize(name).map_err(|source| AllowError::Path {
            name: name.to_owned(),
            source,
        });
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
        .ok_or_else(|| AllowError::NotOnPath(name.to_owned()))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A checked request, for the reactor to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    /// The program to execute (the allow-list's absolute path).
    pub program: PathBuf,
    /// Every argument after `argv[0]`, as given.
    pub args: Vec<String>,
    /// `argv[0]` as the client gave it.
    pub argv0: String,
    /// How long it may run.
    pub timeout: Duration,
}

/// The errors the service itself decides, in PROTOCOL.md's order of checks (`too_busy` is the
/// reactor's, which knows how many children run).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecRefusal {
    #[error("exec is not enabled on this server")]
    Disabled,
    #[error("exec needs an authenticated connection")]
    AuthRequired,
    #[error("{0}")]
    BadRequest(String),
    #[error("`{0}` is not on this server's exec allow-list")]
    NotAllowed(String),
}

/// Checks an `exec` request's fields against the policy.
pub fn check(
    policy: Option<&ExecPolicy>,
    authenticated: bool,
    fields: &Map<String, Value>,
) -> Result<ExecRequest, ExecRefusal> {
    let policy = policy.ok_or(ExecRefusal::Disabled)?;
    if !authenticated {
        return Err(ExecRefusal::AuthRequired);
    }
    let bad = |m: &str| ExecRefusal::BadRequest(m.to_owned());
    let argv = match fields.get("argv") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => return Err(bad("`argv` is empty")),
        Some(_) => return Err(bad("`argv` is not an array of strings")),
        None => return Err(bad("`argv` is missing")),
    };
    let mut strings = Vec::with_capacity(argv.len());
    for a in argv {
        let Value::String(s) = a else {
            return Err(bad("`argv` is not an array of strings"));
        };
        if s.contains('\0') {
            return Err(bad("an argument contains NUL"));
        }
        strings.push(s.clone());
    }
    let timeout = match fields.get("timeout_ms") {
        None | Some(Value::Null) => policy.timeout,
        Some(v) => match v.as_u64() {
            Some(ms) if ms > 0 => Duration::from_millis(ms).min(policy.timeout),
            _ => return Err(bad("`timeout_ms` must be a positive integer")),
        },
    };
    let mut strings = strings.into_iter();
    let argv0 = strings.next().unwrap_or_default();
    let program = policy
        .allow
        .iter()
        .find(|(name, path)| argv0 == *name || Path::new(&argv0) == path)
        .map(|(_, path)| path.clone())
        .ok_or_else(|| ExecRefusal::NotAllowed(argv0.chars().take(200).collect()))?;
    Ok(ExecRequest {
        program,
        args: strings.collect(),
        argv0,
        timeout,
    })
}

/// Output kept from one stream of a child, up to a cap.
#[derive(Debug, Default, Clone)]
pub struct Capture {
    /// What was kept.
    pub bytes: Vec<u8>,
    /// Something was discarded.
    pub truncated: bool,
}

impl Capture {
    /// Keeps what fits under `max` of `chunk`; the rest is discarded and noted.
    pub fn take(&mut self, chunk: &[u8], max: usize) {
        let room = max.saturating_sub(self.bytes.len());
        let keep = room.min(chunk.len());
        self.bytes
            .extend_from_slice(chunk.get(..keep).unwrap_or_default());
        if keep < chunk.len() {
            self.truncated = true;
        }
    }
}

/// How a child ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// It exited with this status.
    Exited(i32),
    /// A signal ended it.
    Signaled(i32),
    /// It passed its timeout and its process group was killed.
    TimedOut,
    /// It could not be started.
    SpawnFailed(String),
    /// Too many children run already.
    TooBusy(usize),
}

/// Appends the response to an `exec` whose child ended as `ending`, with what it wrote.
pub fn encode_outcome(
    out: &mut Vec<u8>,
    id: Option<&str>,
    ending: &Ending,
    stdout: &Capture,
    stderr: &Capture,
) -> &'static str {
    let mut f = Map::new();
    let with_output = |f: &mut Map<String, Value>| {
        f.insert("stdout_size".into(), stdout.bytes.len().into());
        f.insert("stderr_size".into(), stderr.bytes.len().into());
        f.insert(
            "truncated".into(),
            (stdout.truncated || stderr.truncated).into(),
        );
    };
    let (outcome, body) = match ending {
        Ending::Exited(code) => {
            f.insert("ok".into(), true.into());
            f.insert("cmd".into(), "exec".into());
            f.insert("exit_code".into(), (*code).into());
            f.insert("signal".into(), Value::Null);
            with_output(&mut f);
            ("ok", true)
        }
        Ending::Signaled(sig) => {
            f.insert("ok".into(), true.into());
            f.insert("cmd".into(), "exec".into());
            f.insert("exit_code".into(), Value::Null);
            f.insert("signal".into(), (*sig).into());
            with_output(&mut f);
            ("ok", true)
        }
        Ending::TimedOut => {
            error_fields(
                &mut f,
                ErrorCode::Timeout.as_str(),
                "the command ran past its timeout and was killed",
            );
            with_output(&mut f);
            (ErrorCode::Timeout.as_str(), true)
        }
        Ending::SpawnFailed(why) => {
            error_fields(
                &mut f,
                ErrorCode::Io.as_str(),
                &format!("the command could not be started: {why}"),
            );
            (ErrorCode::Io.as_str(), false)
        }
        Ending::TooBusy(n) => {
            error_fields(
                &mut f,
                ErrorCode::TooBusy.as_str(),
                &format!("{n} commands are running already; try again later"),
            );
            (ErrorCode::TooBusy.as_str(), false)
        }
    };
    if let Some(id) = id.and_then(|id| serde_json::from_str::<Value>(id).ok()) {
        f.insert("id".into(), id);
    }
    let size = if body {
        stdout.bytes.len().saturating_add(stderr.bytes.len())
    } else {
        0
    };
    if crate::frame::encode_header(&f, size as u64, out).is_ok() && body {
        out.extend_from_slice(&stdout.bytes);
        out.extend_from_slice(&stderr.bytes);
    }
    outcome
}

fn error_fields(f: &mut Map<String, Value>, code: &str, message: &str) {
    f.insert("ok".into(), false.into());
    f.insert("cmd".into(), "exec".into());
    f.insert(
        "error".into(),
        serde_json::json!({"code": code, "message": message}),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy() -> ExecPolicy {
        ExecPolicy {
            allow: vec![("echo".into(), PathBuf::from("/bin/echo"))],
            timeout: Duration::from_secs(10),
            max_output: 4,
            max_procs: 2,
            containment: crate::sys::contain::Mode::Auto,
            workdir: PathBuf::from("/tmp"),
        }
    }

    fn fields(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn checks_come_in_protocol_order() {
        let p = policy();
        let f = fields(json!({"argv": ["echo", "a; rm -rf /"]}));
        assert_eq!(check(None, true, &f), Err(ExecRefusal::Disabled));
        assert_eq!(check(Some(&p), false, &f), Err(ExecRefusal::AuthRequired));
        let req = check(Some(&p), true, &f).unwrap();
        assert_eq!(req.program, PathBuf::from("/bin/echo"));
        assert_eq!(req.args, vec!["a; rm -rf /".to_owned()]);
        assert_eq!(req.timeout, Duration::from_secs(10));
        // By absolute path too.
        let f = fields(json!({"argv": ["/bin/echo"], "timeout_ms": 50}));
        assert_eq!(
            check(Some(&p), true, &f).unwrap().timeout,
            Duration::from_millis(50)
        );
        for bad in [
            json!({}),
            json!({"argv": []}),
            json!({"argv": "echo"}),
            json!({"argv": ["echo", 1]}),
            json!({"argv": ["echo", "a\u{0}b"]}),
            json!({"argv": ["echo"], "timeout_ms": 0}),
            json!({"argv": ["echo"], "timeout_ms": -5}),
            json!({"argv": ["echo"], "timeout_ms": "1"}),
        ] {
            assert!(
                matches!(
                    check(Some(&p), true, &fields(bad.clone())),
                    Err(ExecRefusal::BadRequest(_))
                ),
                "{bad}"
            );
        }
        // bad_request comes before not_allowed.
        let f = fields(json!({"argv": ["sh", 1]}));
        assert!(matches!(
            check(Some(&p), true, &f),
            Err(ExecRefusal::BadRequest(_))
        ));
        let f = fields(json!({"argv": ["sh", "-c", "id"]}));
        assert_eq!(
            check(Some(&p), true, &f),
            Err(ExecRefusal::NotAllowed("sh".into()))
        );
        let f = fields(json!({"argv": ["/usr/bin/../bin/echo"]}));
        assert!(
            matches!(check(Some(&p), true, &f), Err(ExecRefusal::NotAllowed(_))),
            "exact match only"
        );
    }

    #[test]
    fn capture_keeps_the_cap_and_says_so() {
        let mut c = Capture::default();
        c.take(b"ab", 4);
        assert!(!c.truncated);
        c.take(b"cdef", 4);
        assert_eq!(c.bytes, b"abcd");
        assert!(c.truncated);
        c.take(b"g", 4);
        assert_eq!(c.bytes, b"abcd");
    }

    #[test]
    fn outcomes_encode_as_the_protocol_says() {
        let mut out = Vec::new();
        let so = Capture {
            bytes: b"out".to_vec(),
            truncated: false,
        };
        let se = Capture {
            bytes: b"err".to_vec(),
            truncated: true,
        };
        assert_eq!(
            encode_outcome(&mut out, Some("7"), &Ending::Exited(3), &so, &se),
            "ok"
        );
        let h = u32::from_le_bytes(out[..4].try_into().unwrap()) as usize;
        let v: Value = serde_json::from_slice(&out[4..4 + h]).unwrap();
        assert_eq!(v["exit_code"], 3);
        assert_eq!(v["signal"], Value::Null);
        assert_eq!(v["size"], 6);
        assert_eq!(v["truncated"], true);
        assert_eq!(v["id"], 7);
        assert_eq!(&out[4 + h..], b"outerr");

        out.clear();
        assert_eq!(
            encode_outcome(&mut out, None, &Ending::TimedOut, &so, &se),
            "timeout"
        );
        let h = u32::from_le_bytes(out[..4].try_into().unwrap()) as usize;
        let v: Value = serde_json::from_slice(&out[4..4 + h]).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(v["error"]["code"], "timeout");
        assert_eq!(v["stdout_size"], 3);
        assert_eq!(&out[4 + h..], b"outerr");
    }

    #[test]
    fn names_resolve_on_path() {
        assert!(resolve_program("sh").unwrap().is_absolute());
        assert!(matches!(
            resolve_program("no-such-program-here"),
            Err(AllowError::NotOnPath(_))
        ));
    }
}
