//! The `files` client commands: `socklab put`, `get`, `ls`, `stat` and `ping`.

use std::fs::{self, File};
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

mod spool;

use crate::addr::ListenAddr;
use crate::client::{ClientError, FilesClient, client_secret, request};
use crate::service::store::{Hasher, check_name};
use crate::tls::client::TlsArgs;

/// Bytes read from or written to disk per call.
const CHUNK: usize = 256 * 1024;

/// How to reach the `files` service.
#[derive(Debug, Args)]
pub struct Conn {
    /// The files service: HOST:PORT or unix:PATH.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7080")]
    addr: ListenAddr,
    /// File holding the shared secret, when the server requires authentication (else the
    /// SOCKLAB_SECRET environment variable, if set).
    #[arg(long, value_name = "PATH")]
    secret_file: Option<PathBuf>,
    /// Give up on a server that does not answer, or takes none of what is sent, for this long.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    tls: TlsArgs,
}

impl Conn {
    pub(crate) fn open(&self) -> Result<FilesClient, Failure> {
        let secret = client_secret(self.secret_file.as_deref()).map_err(ClientError::from)?;
        let tls = self.tls.client(&self.addr).map_err(ClientError::from)?;
        Ok(FilesClient::connect_tls(
            &self.addr,
            secret.as_ref(),
            tls.as_ref(),
            self.timeout,
        )?)
    }
}

/// `socklab put`: upload a file.
///
/// A regular file is sent as it is (and must not change size meanwhile). Anything else — `-`
/// (stdin), a pipe, a FIFO, `/dev/stdin`, `<(cmd)`, a character device — is first read to its
/// end into an anonymous temporary file in $TMPDIR (O_TMPFILE, or a file unlinked at once),
/// hashed as it is read, since a frame announces its size first; then that is sent.
#[derive(Debug, Args)]
pub struct PutArgs {
    /// The file to upload; `-` reads stdin (then --as is required). Pipes, FIFOs and devices
    /// are read to their end into an unlinked temporary file in $TMPDIR first.
    file: PathBuf,
    /// The name to store it under (default: the file's own name).
    #[arg(long = "as", value_name = "NAME")]
    name: Option<String>,
    /// Do not hash the file here to compare with the md5 the server stored (the server still
    /// hashes and records it; for measuring the server's own throughput).
    #[arg(long)]
    no_verify: bool,
    #[command(flatten)]
    conn: Conn,
}

/// `socklab get`: download a file.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The stored file's name.
    name: String,
    /// Where to write it (default: NAME in the current directory; a directory: NAME in it; `-`
    /// for stdout). A regular file is written to a temporary and renamed once its md5 checks
    /// out.
    #[arg(short, long, value_name = "PATH")]
    output: Option<PathBuf>,
    /// Do not compute and check the md5 (for measuring raw transfer speed).
    #[arg(long)]
    no_verify: bool,
    #[command(flatten)]
    conn: Conn,
}

/// `socklab ls`: list the stored files.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Print the server's JSON as it came.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    conn: Conn,
}

/// `socklab stat`: size, md5 and time of one file.
#[derive(Debug, Args)]
pub struct StatArgs {
    /// The stored file's name.
    name: String,
    #[command(flatten)]
    conn: Conn,
}

/// `socklab ping`: one round trip.
#[derive(Debug, Args)]
pub struct PingArgs {
    #[command(flatten)]
    conn: Conn,
}

/// A failure to report before exiting non-zero.
#[derive(Debug)]
pub struct Failure(pub String);

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure(e.to_string())
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure(e.to_string())
    }
}

/// Turns the result of `socklab CMD` into an exit code: a failure is a message
/// (`socklab CMD: ...`) and exit code 1.
pub fn report(cmd: &str, result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(msg)) => {
            eprintln!("socklab {cmd}: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn progress(len: u64, what: &str) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    )
    .map(|s| s.progress_chars("=> "));
    if let Ok(style) = style {
        bar.set_style(style);
    }
    bar.set_message(what.to_owned());
    bar
}

/// `socklab put FILE [--as NAME]`.
pub fn put(args: &PutArgs) -> Result<(), Failure> {
    let stdin = args.file == Path::new("-");
    let name = match &args.name {
        Some(n) => n.clone(),
        None if stdin => {
            return Err(Failure(
                "put - reads stdin, which has no name: give --as NAME".into(),
            ));
        }
        None => args
            .file
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| {
                Failure(format!(
                    "{} has no usable file name; give --as NAME",
                    args.file.display()
                ))
            })?
            .to_owned(),
    };
    check_name(&name).map_err(|e| Failure(format!("cannot store as `{name}`: {e}")))?;
    let source = if stdin {
        spool::spool(&mut io::stdin().lock(), "stdin")?
    } else {
        let mut file = File::open(&args.file)
            .map_err(|e| Failure(format!("cannot open {}: {e}", args.file.display())))?;
        if file.metadata()?.is_file() {
            spool::Source::Regular(file)
        } else {
            spool::spool(&mut file, &args.file.display().to_string())?
        }
    };
    match source {
        spool::Source::Regular(file) => send(args, &name, file, None),
        spool::Source::Spooled { file, md5 } => send(args, &name, file, Some(md5)),
    }
}

/// Sends `file` (from its start) as `name`; `md5` is its hash when the spooling computed it.
fn send(args: &PutArgs, name: &str, mut file: File, md5: Option<String>) -> Result<(), Failure> {
    let name = name.to_owned();
    let size = file.metadata()?.len();
    let mut client = args.conn.open()?;
    let mut header = request("put");
    header.insert("filename".into(), name.clone().into());
    client.send_request(&header, size)?;
    let bar = progress(size, &name);
    let mut hasher = (!args.no_verify && md5.is_none()).then(Hasher::default);
    let mut buf = vec![0u8; CHUNK];
    let mut left = size;
    if hasher.is_none() {
        // Nothing to hash here: the file goes from the page cache to the socket by sendfile,
        // a chunk at a time for the progress bar.
        while left > 0 {
            let n = client.send_file_body(&file, size - left, left.min(CHUNK as u64 * 16))?;
            if n == 0 {
                return Err(Failure(format!(
                    "{} shrank while being uploaded",
                    args.file.display()
                )));
            }
            left -= n;
            bar.inc(n);
        }
    }
    while left > 0 {
        let want = usize::try_from(left).map_or(CHUNK, |l| l.min(CHUNK));
        let n = file.read(&mut buf[..want])?;
        if n == 0 {
            return Err(Failure(format!(
                "{} shrank while being uploaded",
                args.file.display()
            )));
        }
        if let Some(h) = &mut hasher {
            h.update(&buf[..n]);
        }
        client.send_body(&buf[..n])?;
        left -= n as u64;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    let now = file.metadata()?.len();
    if now != size {
        return Err(Failure(format!(
            "{} changed size while being uploaded ({size} bytes announced and sent, {now} now); the server may have stored the first {size} bytes",
            args.file.display()
        )));
    }
    let resp = client.read_response()?;
    client.read_small_body(resp.size)?;
    let resp = resp.into_result()?;
    let theirs = resp.str("md5").unwrap_or_default();
    let ours = match (hasher, md5) {
        (Some(h), _) => Some(h.finish()),
        (None, md5) if !args.no_verify => md5,
        (None, _) => None,
    };
    if let Some(ours) = ours
        && theirs != ours
    {
        return Err(Failure(format!(
            "the server stored md5 {theirs}, but the file's md5 is {ours}"
        )));
    }
    println!("stored {name}: {size} bytes, md5 {theirs}");
    Ok(())
}

/// Where `get` writes.
enum Sink {
    Stdout(io::StdoutLock<'static>),
    /// A device or other non-regular file (`/dev/null`), written in place.
    Direct(File),
    /// A temporary beside the destination, renamed once complete.
    Temp {
        file: File,
        tmp: PathBuf,
        dest: PathBuf,
    },
}

impl Sink {
    fn open(dest: &Path) -> Result<Sink, Failure> {
        if dest == Path::new("-") {
            return Ok(Sink::Stdout(io::stdout().lock()));
        }
        if let Ok(meta) = fs::metadata(dest)
            && !meta.is_file()
        {
            return Ok(Sink::Direct(fs::OpenOptions::new().write(true).open(dest)?));
        }
        let dir = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let base = dest
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("download");
        let tmp = dir.join(format!(".{base}.socklab-part-{}", std::process::id()));
        let file = File::create(&tmp)
            .map_err(|e| Failure(format!("cannot write {}: {e}", tmp.display())))?;
        Ok(Sink::Temp {
            file,
            tmp,
            dest: dest.to_owned(),
        })
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Sink::Stdout(s) => s.write_all(bytes),
            Sink::Direct(f) | Sink::Temp { file: f, .. } => f.write_all(bytes),
        }
    }

    fn finish(self) -> io::Result<()> {
        match self {
            Sink::Stdout(mut s) => s.flush(),
            Sink::Direct(_) => Ok(()),
            Sink::Temp { file, tmp, dest } => {
                file.sync_all()?;
                fs::rename(&tmp, &dest)
            }
        }
    }

    fn abandon(self) {
        if let Sink::Temp { tmp, .. } = self {
            let _ = fs::remove_file(tmp);
        }
    }
}

/// `socklab get NAME [-o PATH]`.
pub fn get(args: &GetArgs) -> Result<(), Failure> {
    check_name(&args.name).map_err(|e| Failure(format!("`{}`: {e}", args.name)))?;
    let mut client = args.conn.open()?;
    let mut header = request("get");
    header.insert("filename".into(), args.name.clone().into());
    client.send_request(&header, 0)?;
    let resp = client.read_response()?.into_result()?;
    let size = resp.size;
    let want_md5 = resp.str("md5").unwrap_or_default().to_owned();
    let dest = destination(args.output.as_deref(), &args.name);
    let mut sink = Sink::open(&dest)?;
    let bar = progress(size, &args.name);
    let mut hasher = (!args.no_verify).then(Hasher::default);
    let mut buf = vec![0u8; CHUNK];
    let mut left = size;
    let result = (|| -> Result<(), Failure> {
        while left > 0 {
            let want = usize::try_from(left).map_or(CHUNK, |l| l.min(CHUNK));
            let n = client.read_body(&mut buf[..want])?;
            if let Some(h) = &mut hasher {
                h.update(&buf[..n]);
            }
            sink.write(&buf[..n])?;
            left -= n as u64;
            bar.inc(n as u64);
        }
        Ok(())
    })();
    bar.finish_and_clear();
    if let Err(e) = result {
        sink.abandon();
        return Err(e);
    }
    if let Some(h) = hasher {
        let got = h.finish();
        if got != want_md5 {
            sink.abandon();
            return Err(Failure(format!(
                "md5 mismatch: the server announced {want_md5}, the bytes received hash to {got}; nothing written"
            )));
        }
    }
    sink.finish()?;
    if dest != Path::new("-") {
        eprintln!("{}: {size} bytes, md5 {want_md5}", dest.display());
    }
    Ok(())
}

/// Where `get` writes NAME: `-o PATH` as given, or NAME inside it when PATH is a directory
/// (or ends with `/`, as `cp` and `curl --output-dir` read it); NAME here without `-o`.
fn destination(output: Option<&Path>, name: &str) -> PathBuf {
    match output {
        None => PathBuf::from(name),
        Some(p) if p.as_os_str().as_encoded_bytes().ends_with(b"/") || p.is_dir() => p.join(name),
        Some(p) => p.to_path_buf(),
    }
}

/// `socklab ls`.
pub fn ls(args: &LsArgs) -> Result<(), Failure> {
    let mut client = args.conn.open()?;
    let (_, body) = client.call(&request("list"))?;
    if args.json {
        println!("{}", String::from_utf8_lossy(&body));
        return Ok(());
    }
    let list: Vec<Value> =
        serde_json::from_slice(&body).map_err(|e| Failure(format!("bad listing: {e}")))?;
    for entry in list {
        let size = entry.get("size").and_then(Value::as_u64).unwrap_or(0);
        let md5 = entry.get("md5").and_then(Value::as_str).unwrap_or("-");
        let name = entry.get("name").and_then(Value::as_str).unwrap_or("?");
        println!("{size:>14}  {md5:32}  {name}");
    }
    Ok(())
}

/// `socklab stat NAME`.
pub fn stat(args: &StatArgs) -> Result<(), Failure> {
    let mut client = args.conn.open()?;
    let mut header = request("stat");
    header.insert("filename".into(), args.name.clone().into());
    let (resp, _) = client.call(&header)?;
    println!(
        "{}: {} bytes, md5 {}, mtime {}",
        args.name,
        resp.u64("filesize").unwrap_or(0),
        resp.str("md5").unwrap_or("-"),
        resp.fields.get("mtime").cloned().unwrap_or(Value::Null)
    );
    Ok(())
}

/// `socklab ping`.
pub fn ping(args: &PingArgs) -> Result<(), Failure> {
    let mut client = args.conn.open()?;
    let t0 = Instant::now();
    client.call(&request("ping"))?;
    println!(
        "pong from {} in {:.3} ms",
        args.conn.addr,
        t0.elapsed().as_secs_f64() * 1000.0
    );
    Ok(())
}
