//! The configuration file of `socklab serve --config FILE` (TOML), and `--print-config`.
//!
//! The path from input to a running server: [`ServeSettings::default`] (the built-in defaults)
//! → [`ServeSettings::apply_file`] (a file read by [`load`] or [`parse`]) → the flags
//! (`config::flags`) → [`ServeSettings::finish`], which resolves the exec allow-list and validates,
//! giving an [`Effective`] configuration that [`Effective::to_toml`] writes back in the form
//! `--config` reads. Every value is range-checked while the file is read, so that an error names
//! the key and the line; rules that span keys (a stream service on a `unixgram:` address) are
//! checked by `finish` against the line the listener came from.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::{ConfigError, ListenerConfig, ServerConfig, SocketOptions, default_addr};
use crate::kind::ServiceKind;
use crate::service::exec::{AllowError, ExecPolicy, resolve_program};

use super::values::{
    Addr, Backlog, BufSize, Count, Dur, LogLevel, NonZeroDur, PerIp, Service, Size, SizeOrZero,
    UploadLimit, Workers,
};

/// Defaults of `exec`'s limits, which apply once `exec.allow` names a program.
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_EXEC_MAX_OUTPUT: usize = 1024 * 1024;
pub const DEFAULT_EXEC_MAX_PROCS: usize = 16;

/// The whole file. Every key is optional: what is missing keeps its built-in default.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a configuration file")]
struct FileConfig {
    workers: Option<Workers>,
    data_dir: Option<PathBuf>,
    control: Option<PathBuf>,
    log: Option<LogLevel>,
    limits: Option<LimitsFile>,
    socket: Option<SocketFile>,
    auth: Option<AuthFile>,
    files: Option<FilesFile>,
    exec: Option<ExecFile>,
    chat: Option<super::bus::ChatFile>,
    #[serde(rename = "listener")]
    listeners: Option<Vec<Spanned<ListenerFile>>>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table of limits")]
struct LimitsFile {
    max_conns: Option<Count>,
    max_conns_per_ip: Option<PerIp>,
    idle_timeout: Option<Dur>,
    request_timeout: Option<Dur>,
    handshake_timeout: Option<Dur>,
    tls_handshake_timeout: Option<NonZeroDur>,
    shutdown_grace: Option<Dur>,
    pending_pause: Option<Size>,
    max_pending: Option<Size>,
    max_input: Option<Size>,
    read_budget: Option<Size>,
    accept_budget: Option<Count>,
    datagram_budget: Option<Count>,
    max_queued_datagrams: Option<usize>,
    chat_max_pending: Option<Size>,
    udp_chat_expiry: Option<Dur>,
    udp_chat_max_members: Option<Count>,
    discovery_rate: Option<u32>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table of socket options")]
struct SocketFile {
    reuseaddr: Option<bool>,
    reuseport: Option<bool>,
    nodelay: Option<bool>,
    rcvbuf: Option<BufSize>,
    sndbuf: Option<BufSize>,
    backlog: Option<Backlog>,
    broadcast: Option<bool>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table of authentication settings")]
struct AuthFile {
    secret_file: Option<PathBuf>,
    timeout: Option<NonZeroDur>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table of files settings")]
struct FilesFile {
    max_upload: Option<UploadLimit>,
    max_header: Option<Size>,
    upload_in_flight: Option<Size>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table of exec settings")]
struct ExecFile {
    allow: Option<Spanned<Vec<String>>>,
    timeout: Option<NonZeroDur>,
    max_output: Option<SizeOrZero>,
    max_procs: Option<Count>,
    workdir: Option<PathBuf>,
    containment: Option<crate::sys::contain::Mode>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a listener table (service, addr, auth, max_conns_per_ip, proxy_protocol, tls, socket)"
)]
struct ListenerFile {
    service: Service,
    addr: Option<Spanned<Addr>>,
    auth: Option<Spanned<bool>>,
    max_conns_per_ip: Option<usize>,
    proxy_protocol: Option<crate::frame::proxy::ProxyVersions>,
    tls: Option<crate::config::TlsFiles>,
    socket: Option<SocketFile>,
}

impl SocketFile {
    /// `base` with the options this table sets.
    fn over(&self, base: &SocketOptions) -> SocketOptions {
        SocketOptions {
            reuseaddr: self.reuseaddr.unwrap_or(base.reuseaddr),
            reuseport: self.reuseport.unwrap_or(base.reuseport),
            nodelay: self.nodelay.unwrap_or(base.nodelay),
            rcvbuf: self.rcvbuf.map_or(base.rcvbuf, |b| b.0),
            sndbuf: self.sndbuf.map_or(base.sndbuf, |b| b.0),
            backlog: self.backlog.map_or(base.backlog, |b| b.0),
            broadcast: self.broadcast.unwrap_or(base.broadcast),
        }
    }

    /// Every option, so that a printed listener does not depend on the global table.
    fn full(o: &SocketOptions) -> SocketFile {
        SocketFile {
            reuseaddr: Some(o.reuseaddr),
            reuseport: Some(o.reuseport),
            nodelay: Some(o.nodelay),
            rcvbuf: Some(BufSize(o.rcvbuf)),
            sndbuf: Some(BufSize(o.sndbuf)),
            backlog: Some(Backlog(o.backlog)),
            broadcast: Some(o.broadcast),
        }
    }
}

/// Why a configuration file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read the configuration file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}:{line}: not valid TOML: {message}{context}")]
    Syntax {
        file: String,
        line: usize,
        message: String,
        context: String,
    },
    #[error("{file}:{line}: {key}: {message}{context}")]
    Key {
        file: String,
        line: usize,
        key: String,
        message: String,
        context: String,
    },
    #[error("{file}: {key}: {message}")]
    Unlocated {
        file: String,
        key: String,
        message: String,
    },
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    #[error(transparent)]
    ExecAllow(#[from] AllowError),
    #[error("cannot write the configuration as TOML: {0}")]
    Print(#[from] toml::ser::Error),
}

/// The exec settings before the allow-list is resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSettings {
    /// Programs as configured: names looked up on PATH, or paths.
    pub allow: Vec<String>,
    pub timeout: Duration,
    pub max_output: usize,
    pub max_procs: usize,
    /// The children's working directory; the data directory when `None`.
    pub workdir: Option<PathBuf>,
    /// How every descendant of a command is kept within reach.
    pub containment: crate::sys::contain::Mode,
}

impl Default for ExecSettings {
    fn default() -> Self {
        ExecSettings {
            allow: Vec::new(),
            timeout: DEFAULT_EXEC_TIMEOUT,
            max_output: DEFAULT_EXEC_MAX_OUTPUT,
            max_procs: DEFAULT_EXEC_MAX_PROCS,
            workdir: None,
            containment: crate::sys::contain::Mode::Subreaper,
        }
    }
}

/// Where a listener was written in the file, to point errors at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Origin {
    /// Its position among the file's `[[listener]]` entries.
    index: usize,
    /// Line of the `[[listener]]` header (or of the inline table).
    line: usize,
    addr_line: Option<usize>,
    auth_line: Option<usize>,
}

/// The text of a file, kept to turn byte offsets into lines and to quote them in errors.
#[derive(Debug, Clone)]
struct Source {
    name: String,
    text: String,
}

impl Source {
    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// The line quoted under an error message.
    fn context(&self, line: usize) -> String {
        match self.text.lines().nth(line.saturating_sub(1)) {
            Some(text) if !text.trim().is_empty() => format!("\n    {line} | {}", text.trim_end()),
            _ => String::new(),
        }
    }

    fn key_error(
        &self,
        line: usize,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigFileError {
        ConfigFileError::Key {
            file: self.name.clone(),
            line,
            key: key.into(),
            message: message.into(),
            context: self.context(line),
        }
    }
}

/// What `socklab serve` will run with, before the last checks: the defaults, then the file, then
/// the flags, each overriding the one before.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    pub server: ServerConfig,
    pub exec: ExecSettings,
    /// The file holding the authentication secret (never the secret itself).
    pub secret_file: Option<PathBuf>,
    /// The control socket, when given (`--control`); else the default of `finish`.
    pub control: Option<PathBuf>,
    pub log: LogLevel,
    /// Parallel to `server.listeners`: where each came from in the file, if it did.
    origins: Vec<Option<Origin>>,
    exec_allow_line: Option<usize>,
    source: Option<Source>,
}

impl Default for ServeSettings {
    /// The built-in defaults: every service on its default address.
    fn default() -> Self {
        let listeners: Vec<ListenerConfig> = ServiceKind::ALL
            .into_iter()
            .map(|service| ListenerConfig {
                service,
                addr: default_addr(service),
                auth: false,
                sockopts: None,
                max_conns_per_ip: None,
                proxy_protocol: None,
                tls: None,
            })
            .collect();
        ServeSettings {
            origins: vec![None; listeners.len()],
            server: ServerConfig {
                listeners,
                ..ServerConfig::default()
            },
            exec: ExecSettings::default(),
            secret_file: None,
            control: None,
            log: LogLevel::Info,
            exec_allow_line: None,
            source: None,
        }
    }
}

/// Reads and checks the file at `path`; the settings are the defaults overridden by it.
pub fn load(path: &Path) -> Result<ServeSettings, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// Like [`load`] for text already read; `name` stands for the file in error messages.
pub fn parse(text: &str, name: &str) -> Result<ServeSettings, ConfigFileError> {
    let mut settings = ServeSettings::default();
    settings.apply_file(text, name)?;
    Ok(settings)
}

impl ServeSettings {
    /// Overrides these settings with what the TOML `text` says.
    pub fn apply_file(&mut self, text: &str, name: &str) -> Result<(), ConfigFileError> {
        let source = Source {
            name: name.to_owned(),
            text: text.to_owned(),
        };
        let mut file = read(&source)?;
        if let Some(bus) = file.chat.take().and_then(|c| c.bus) {
            self.server.chat_bus = bus.over(self.server.chat_bus.take()).map_err(|message| {
                ConfigFileError::Unlocated {
                    file: name.to_owned(),
                    key: "chat.bus".to_owned(),
                    message,
                }
            })?;
        }
        self.apply(file, &source);
        self.source = Some(source);
        Ok(())
    }

    fn apply(&mut self, file: FileConfig, source: &Source) {
        if file.control.is_some() {
            self.control = file.control.clone();
        }
        let s = &mut self.server;
        if let Some(w) = file.workers {
            s.workers = w.0;
        }
        if let Some(dir) = file.data_dir {
            s.files.data_dir = dir;
        }
        if let Some(log) = file.log {
            self.log = log;
        }
        if let Some(l) = file.limits {
            let limits = &mut s.limits;
            set(&mut limits.max_conns, l.max_conns.map(|v| v.0));
            if let Some(d) = l.idle_timeout {
                limits.idle_timeout = Some(d.0).filter(|d| !d.is_zero());
            }
            if let Some(d) = l.request_timeout {
                limits.request_timeout = Some(d.0).filter(|d| !d.is_zero());
            }
            if let Some(d) = l.handshake_timeout {
                limits.handshake_timeout = Some(d.0).filter(|d| !d.is_zero());
            }
            set(
                &mut limits.tls_handshake_timeout,
                l.tls_handshake_timeout.map(|d| d.0),
            );
            if let Some(n) = l.max_conns_per_ip {
                limits.max_conns_per_ip = n.0;
            }
            set(&mut limits.shutdown_grace, l.shutdown_grace.map(|v| v.0));
            set(&mut limits.pending_pause, l.pending_pause.map(|v| v.0));
            set(&mut limits.max_pending, l.max_pending.map(|v| v.0));
            set(&mut limits.max_input, l.max_input.map(|v| v.0));
            set(&mut limits.read_budget, l.read_budget.map(|v| v.0));
            set(&mut limits.accept_budget, l.accept_budget.map(|v| v.0));
            set(&mut limits.datagram_budget, l.datagram_budget.map(|v| v.0));
            set(&mut limits.max_queued_datagrams, l.max_queued_datagrams);
            set(
                &mut limits.chat_max_pending,
                l.chat_max_pending.map(|v| v.0),
            );
            let datagram = &mut s.datagram;
            set(
                &mut datagram.udp_chat_expiry,
                l.udp_chat_expiry.map(|v| v.0),
            );
            set(
                &mut datagram.udp_chat_max_members,
                l.udp_chat_max_members.map(|v| v.0),
            );
            set(&mut datagram.discovery_rate, l.discovery_rate);
        }
        if let Some(o) = &file.socket {
            s.sockopts = o.over(&s.sockopts);
        }
        if let Some(a) = file.auth {
            if a.secret_file.is_some() {
                self.secret_file = a.secret_file;
            }
            set(&mut s.auth_timeout, a.timeout.map(|v| v.0));
        }
        if let Some(f) = file.files {
            if let Some(u) = f.max_upload {
                s.files.config.max_upload = u.0.map(|n| n as u64);
            }
            set(&mut s.files.config.max_header, f.max_header.map(|v| v.0));
            if let Some(n) = f.upload_in_flight {
                s.files.config.upload_in_flight = n.0 as u64;
            }
        }
        if let Some(e) = file.exec {
            if let Some(allow) = e.allow {
                self.exec_allow_line = Some(source.line_of(allow.span().start));
                self.exec.allow = allow.into_inner();
            }
            set(&mut self.exec.timeout, e.timeout.map(|v| v.0));
            set(&mut self.exec.max_output, e.max_output.map(|v| v.0));
            set(&mut self.exec.max_procs, e.max_procs.map(|v| v.0));
            set(&mut self.exec.containment, e.containment);
            if e.workdir.is_some() {
                self.exec.workdir = e.workdir;
            }
        }
        if let Some(listeners) = file.listeners {
            let (listeners, origins) = listeners
                .into_iter()
                .enumerate()
                .map(|(index, spanned)| {
                    let line = source.line_of(spanned.span().start);
                    let l = spanned.into_inner();
                    let origin = Origin {
                        index,
                        line,
                        addr_line: l.addr.as_ref().map(|a| source.line_of(a.span().start)),
                        auth_line: l.auth.as_ref().map(|a| source.line_of(a.span().start)),
                    };
                    let config = ListenerConfig {
                        service: l.service.0,
                        addr: l
                            .addr
                            .map_or_else(|| default_addr(l.service.0), |a| a.into_inner().0),
                        auth: l.auth.is_some_and(|a| a.into_inner()),
                        sockopts: l.socket.map(|o| o.over(&s.sockopts)),
                        max_conns_per_ip: l.max_conns_per_ip,
                        proxy_protocol: l.proxy_protocol,
                        tls: l.tls,
                    };
                    (config, Some(origin))
                })
                .unzip();
            s.listeners = listeners;
            self.origins = origins;
        }
    }

    /// Resolves the exec allow-list and checks everything; what is left can run.
    pub fn finish(self) -> Result<Effective, ConfigFileError> {
        let mut server = self.server;
        if let Some(source) = &self.source {
            for (l, origin) in server.listeners.iter().zip(&self.origins) {
                let Some(origin) = origin else { continue };
                if let Err(e) = l.check() {
                    return Err(listener_error(source, origin, &e));
                }
            }
        }
        let mut exec = self.exec;
        let workdir = exec
            .workdir
            .take()
            .unwrap_or_else(|| server.files.data_dir.clone());
        exec.workdir = Some(workdir.clone());
        if !exec.allow.is_empty() {
            let mut allow = Vec::new();
            for name in &exec.allow {
                match resolve_program(name) {
                    Ok(path) => allow.push((name.clone(), path)),
                    Err(e) => {
                        return Err(match (&self.source, self.exec_allow_line) {
                            (Some(source), Some(line)) => {
                                source.key_error(line, "exec.allow", allow_message(&e))
                            }
                            _ => e.into(),
                        });
                    }
                }
            }
            server.files.config.exec = Some(ExecPolicy {
                allow,
                timeout: exec.timeout,
                max_output: exec.max_output,
                max_procs: exec.max_procs,
                workdir,
                containment: exec.containment,
            });
        }
        server.validate()?;
        // The data directory exists when files runs: the control socket lives there then.
        let files = server
            .listeners
            .iter()
            .any(|l| l.service == ServiceKind::Files);
        let control = self
            .control
            .or_else(|| files.then(|| server.files.data_dir.join(".socklab-control.sock")));
        Ok(Effective {
            server,
            exec,
            control,
            secret_file: self.secret_file,
            log: self.log,
        })
    }
}

pub(super) fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

/// A listener rule broken by a listener of the file, said in the file's words.
fn listener_error(source: &Source, origin: &Origin, e: &ConfigError) -> ConfigFileError {
    let i = origin.index;
    let at_addr = origin.addr_line.unwrap_or(origin.line);
    let (line, key, message) = match e {
        ConfigError::StreamNeedsStreamAddr { service, addr } => (
            at_addr,
            format!("listener[{i}].addr"),
            format!(
                "{service} is a stream service: give it \"HOST:PORT\" or \"unix:PATH\", not `{addr}`"
            ),
        ),
        ConfigError::DatagramNeedsDatagramAddr { service, addr } => (
            at_addr,
            format!("listener[{i}].addr"),
            format!(
                "{service} is a datagram service: give it \"HOST:PORT\" or \"unixgram:PATH\", not `{addr}`"
            ),
        ),
        ConfigError::UdpOnly { .. } => (at_addr, format!("listener[{i}].addr"), e.to_string()),
        ConfigError::NeedsAuth { service, addr } => (
            at_addr,
            format!("listener[{i}].addr"),
            format!(
                "{service} on {addr} would be reachable from other machines without \
                 authentication; set auth = true on this listener (the secret comes from \
                 [auth] secret_file or SOCKLAB_SECRET), or listen on 127.0.0.1 or a unix socket"
            ),
        ),
        ConfigError::AuthOnDatagram { .. } => (
            origin.auth_line.unwrap_or(origin.line),
            format!("listener[{i}].auth"),
            e.to_string(),
        ),
        other => (origin.line, format!("listener[{i}]"), other.to_string()),
    };
    source.key_error(line, key, message)
}

fn allow_message(e: &AllowError) -> String {
    match e {
        AllowError::NotOnPath(name) => format!("`{name}` is not a program on PATH"),
        AllowError::Path { name, source } => format!("`{name}`: {source}"),
    }
}

/// Deserializes the file, turning the first error into one that names its key and line.
fn read(source: &Source) -> Result<FileConfig, ConfigFileError> {
    let de = toml::Deserializer::parse(&source.text).map_err(|e| {
        let line = e.span().map_or(1, |s| source.line_of(s.start));
        let mut message = e.message().trim_end().to_owned();
        // Some messages ("duplicate key") do not say what they point at.
        let at = e.span().and_then(|s| source.text.get(s));
        if let Some(at) = at.filter(|t| !t.is_empty() && t.len() <= 40 && !t.contains('\n')) {
            message.push_str(&format!(": `{at}`"));
        }
        ConfigFileError::Syntax {
            file: source.name.clone(),
            line,
            message,
            context: source.context(line),
        }
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = key_of(e.path());
        let inner = e.into_inner();
        let message = inner.message().trim_end().to_owned();
        match inner.span() {
            Some(span) => source.key_error(source.line_of(span.start), key, message),
            None => ConfigFileError::Unlocated {
                file: source.name.clone(),
                key,
                message,
            },
        }
    })
}

/// The path as a user writes it (`listener[1].socket.rcvbuf`), without `Spanned`'s inner field.
fn key_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut key = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => key.push_str(&format!("[{index}]")),
            Segment::Map { key: k } | Segment::Enum { variant: k } => {
                if k.starts_with("$__serde_spanned") {
                    continue;
                }
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(k);
            }
            Segment::Unknown => {}
        }
    }
    if key.is_empty() {
        key.push_str("(top level)");
    }
    key
}

mod effective;
mod overrides;
pub use effective::Effective;

#[cfg(test)]
mod tests;
