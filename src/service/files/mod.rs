//! `files`: framed commands over the header+body frames of PROTOCOL.md ("Frames"): ping, echo,
//! put, get, list, stat, stats (and exec, answered `exec_disabled` until it is configured).
//!
//! Input bytes go through a [`HeaderBodyDecoder`]; a request's body is handled chunk by chunk
//! as it arrives (an upload is hashed and written to its temporary, an echo body copied out),
//! so no body is ever held whole. Responses that are long (a file, a listing) are produced by
//! [`Files::next_output`] as the socket drains, at most a budget per call, so one large transfer
//! cannot stall the loop. While such a response is being produced, no further request is
//! decoded: responses stay in order and pipelined requests wait in the socket.

use std::io;
use std::sync::Arc;

use super::exec::{self, Capture, Ending, ExecPolicy, ExecRefusal, ExecRequest};
use super::response::{ErrorCode, Head};
use super::store::{Store, check_name};
use super::{Action, Awaiting, Event, Step};
use crate::frame::header::{Field, HeaderBodyConfig, HeaderBodyDecoder, Part};
use crate::frame::{Decoded, Header};
use crate::metrics::{Counters, Gathered, Peers};

mod outgoing;
mod upload;

use outgoing::{AfterHash, Outgoing};
use upload::Upload;
pub use upload::{DiskDone, DiskJob};

/// Longest `id`, as compact JSON.
pub const MAX_ID: usize = 1024;

/// The commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmd {
    Ping,
    Echo,
    Put,
    Get,
    List,
    Stat,
    Stats,
    Exec,
}

impl Cmd {
    fn parse(s: &str) -> Option<Cmd> {
        Some(match s {
            "ping" => Cmd::Ping,
            "echo" => Cmd::Echo,
            "put" => Cmd::Put,
            "get" => Cmd::Get,
            "list" => Cmd::List,
            "stat" => Cmd::Stat,
            "stats" => Cmd::Stats,
            "exec" => Cmd::Exec,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Cmd::Ping => "ping",
            Cmd::Echo => "echo",
            Cmd::Put => "put",
            Cmd::Get => "get",
            Cmd::List => "list",
            Cmd::Stat => "stat",
            Cmd::Stats => "stats",
            Cmd::Exec => "exec",
        }
    }
}

/// Settings of the `files` service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilesConfig {
    /// Largest request header, in bytes.
    pub max_header: usize,
    /// Largest upload, in bytes; `None` for no limit but the disk.
    pub max_upload: Option<u64>,
    /// Upload bytes handed to the disk thread and not yet written, past which the connection
    /// stops reading: memory stays bounded when the disk is slower than the network.
    pub upload_in_flight: u64,
    /// The `exec` allow-list and limits; `None`: exec is disabled.
    pub exec: Option<ExecPolicy>,
}

impl Default for FilesConfig {
    fn default() -> Self {
        FilesConfig {
            max_header: 64 * 1024,
            max_upload: None,
            upload_in_flight: DEFAULT_UPLOAD_IN_FLIGHT,
            exec: None,
        }
    }
}

/// What every `files` connection of a reactor shares.
#[derive(Debug)]
pub struct FilesShared {
    /// The data directory.
    pub store: Store,
    /// Limits.
    pub config: FilesConfig,
    /// Upload buffers the disk thread has written, for reuse: a fresh allocation per chunk
    /// would cost page faults on every one.
    buffers: std::sync::Mutex<Vec<Vec<u8>>>,
}

/// Written upload buffers kept for reuse at most.
const POOLED_BUFFERS: usize = 64;

impl FilesShared {
    /// The shared state of a reactor's `files` connections.
    pub fn new(store: Store, config: FilesConfig) -> Self {
        FilesShared {
            store,
            config,
            buffers: Default::default(),
        }
    }

    /// A copy of `bytes` in a pooled buffer.
    fn buffer_with(&self, bytes: &[u8]) -> Vec<u8> {
        let mut buf = self
            .buffers
            .lock()
            .ok()
            .and_then(|mut pool| pool.pop())
            .unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(bytes);
        buf
    }

    /// Returns a written buffer to the pool.
    fn recycle(&self, buf: Vec<u8>) {
        if let Ok(mut pool) = self.buffers.lock()
            && pool.len() < POOLED_BUFFERS
        {
            pool.push(buf);
        }
    }
}

/// What is done with the body of the request being read.
#[derive(Debug)]
enum Body {
    /// Between frames, or a request whose body is dropped.
    Skip,
    /// `echo`: the body goes straight back out.
    Echo,
    /// `put`: the body goes to a temporary.
    Upload(Box<Upload>),
}

/// The default of [`FilesConfig::upload_in_flight`].
pub const DEFAULT_UPLOAD_IN_FLIGHT: u64 = 8 * 1024 * 1024;

/// One `files` connection.
#[derive(Debug)]
pub struct Files {
    /// The data directory and limits.
    shared: Arc<FilesShared>,
    /// The frame decoder.
    decoder: HeaderBodyDecoder,
    /// What to do with the current body.
    body: Body,
    /// A long response under way.
    outgoing: Option<Outgoing>,
    /// A malformed frame was answered: nothing more is read.
    closing: bool,
    /// Reusable buffer for hashing files.
    hash_buf: Vec<u8>,
    /// sendfile failed once on this connection: file bodies go through `produce`.
    copy_files: bool,
    /// Upload bytes queued for the disk thread and not yet written.
    in_flight: u64,
    /// A `put` is being committed by the disk thread; its response comes when it is done.
    committing: bool,
    /// The connection passed authentication (exec requires it).
    authenticated: bool,
    /// Where this connection's `exec` request is.
    exec: ExecState,
    /// Disk jobs for the reactor's disk thread (`Action::Disk`), in order (`poll_action`).
    disk: std::collections::VecDeque<Action>,
    /// A `stats` request waiting for the other workers' counters.
    stats: Option<StatsWait>,
}

/// A `stats` request waiting for every worker's counters (`Action::Counters`).
#[derive(Debug)]
struct StatsWait {
    /// The request's id (its JSON text), for the response.
    id: Option<Box<str>>,
    /// The reactor has been asked (`poll_action`).
    asked: bool,
}

/// Where a connection's `exec` request is: only one runs at a time, so responses stay in order.
#[derive(Debug, Default)]
enum ExecState {
    /// None asked.
    #[default]
    Idle,
    /// Checked; the reactor is to start it. The request's id comes with it.
    Queued(ExecRequest, Option<Box<str>>),
    /// Running; the id is for the response.
    Running(Option<Box<str>>),
}

/// Appends an error frame and counts it.
fn respond_error(
    out: &mut Vec<u8>,
    counters: &mut Counters,
    cmd: Option<Cmd>,
    id: Option<&str>,
    code: ErrorCode,
    message: impl AsRef<str>,
) {
    counters.frame(cmd.map_or("unknown", Cmd::name), code.as_str());
    Head::error(out, cmd.map(Cmd::name), code.as_str(), message.as_ref()).finish(id, 0);
}

/// The `stats` response: every worker's counters, as gathered.
fn stats_response(out: &mut Vec<u8>, id: Option<&str>, gathered: &Gathered) {
    let data = serde_json::to_vec(&gathered.stats_json()).unwrap_or_default();
    Head::ok(out, Cmd::Stats.name()).finish(id, data.len() as u64);
    out.extend_from_slice(&data);
}

/// The auth_failed frame a `files` listener sends before closing a failed handshake.
fn auth_failed_frame(out: &mut Vec<u8>, counters: &mut Counters) {
    respond_error(
        out,
        counters,
        None,
        None,
        ErrorCode::AuthFailed,
        "authentication failed: wrong or missing HMAC-SHA256 response to the challenge",
    );
}

fn io_message(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOSPC) => "the server's disk is full".to_owned(),
        _ => format!("the server could not do that: {e}"),
    }
}

/// The command a header names.
fn cmd_of(h: &Header<'_>) -> Result<Cmd, (ErrorCode, String)> {
    match h.field("cmd") {
        Field::Str(s) => {
            Cmd::parse(s).ok_or_else(|| (ErrorCode::UnknownCmd, format!("unknown command `{s}`")))
        }
        Field::Null | Field::Other => Err((ErrorCode::BadRequest, "`cmd` is not a string".into())),
        Field::Missing => Err((ErrorCode::BadRequest, "`cmd` is missing".into())),
    }
}

fn filename_of<'h>(h: &'h Header<'_>) -> Result<&'h str, (ErrorCode, String)> {
    match h.field("filename") {
        Field::Missing => Err((ErrorCode::BadRequest, "`filename` is missing".into())),
        Field::Str(s) => check_name(s)
            .map(|()| s)
            .map_err(|e| (ErrorCode::BadFilename, e.to_string())),
        Field::Null | Field::Other => {
            Err((ErrorCode::BadFilename, "`filename` is not a string".into()))
        }
    }
}

impl Files {
    /// A new connection's session.
    pub fn new(shared: Arc<FilesShared>) -> Self {
        let decoder = HeaderBodyDecoder::new(HeaderBodyConfig {
            max_header: shared.config.max_header,
            ..HeaderBodyConfig::default()
        });
        Files {
            shared,
            decoder,
            body: Body::Skip,
            outgoing: None,
            closing: false,
            hash_buf: Vec::new(),
            copy_files: false,
            in_flight: 0,
            committing: false,
            authenticated: false,
            exec: ExecState::Idle,
            disk: Default::default(),
            stats: None,
        }
    }

    /// Whether input is decoded now: not while a long response is produced, nor after a
    /// malformed frame.
    pub fn accepts_input(&self) -> bool {
        self.outgoing.is_none()
            && !self.closing
            && !self.committing
            && self.in_flight <= self.shared.config.upload_in_flight
            && matches!(self.exec, ExecState::Idle)
            && self.stats.is_none()
    }

    /// Bytes still to come of a body being taken (an upload, an echo body); 0 between
    /// requests and while a body is skipped.
    pub fn body_left(&self) -> u64 {
        match self.body {
            Body::Upload(_) | Body::Echo => self.decoder.body_remaining(),
            Body::Skip => 0,
        }
    }

    /// What a response waits on outside the loop: a command's child process, or upload
    /// writes or a commit on the disk thread.
    pub fn awaiting(&self) -> Awaiting {
        if !matches!(self.exec, ExecState::Idle) {
            Awaiting::Exec
        } else if self.in_flight > 0 || self.committing {
            Awaiting::Disk
        } else if self.stats.is_some() {
            Awaiting::Counters
        } else {
            Awaiting::Nothing
        }
    }

    /// Takes what the reactor reports; responses it completes are appended to `out`.
    pub fn on_event(&mut self, ev: Event<'_>, out: &mut Vec<u8>, counters: &mut Counters) {
        match ev {
            Event::Opened { authenticated, .. } => self.authenticated = authenticated,
            Event::AuthFailed => auth_failed_frame(out, counters),
            Event::DiskDone(done) => self.on_disk_done(done, out, counters),
            Event::ExecDone {
                ending,
                stdout,
                stderr,
            } => self.on_exec_done(ending, stdout, stderr, out, counters),
            Event::FileSent(n) => self.file_sent(n),
            Event::SendFileRefused => self.copy_files = true,
            Event::Closing | Event::Wake => {}
            Event::Counters(gathered) => {
                if let Some(wait) = self.stats.take() {
                    stats_response(out, wait.id.as_deref(), gathered);
                }
            }
        }
    }

    /// The next piece of work for the reactor: disk jobs in the order queued, then a command.
    pub fn poll_action(&mut self) -> Option<Action> {
        match self.disk.pop_front() {
            Some(action) => Some(action),
            None => self.take_exec().map(Action::Exec).or_else(|| {
                let wait = self.stats.as_mut().filter(|w| !w.asked)?;
                wait.asked = true;
                Some(Action::Counters)
            }),
        }
    }

    /// Decodes requests from `input` and appends responses to `out`.
    pub fn on_input(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        counters: &mut Counters,
        peers: &Peers,
    ) -> Step {
        let mut pos = 0usize;
        while self.accepts_input() {
            let rest = input.get(pos..).unwrap_or_default();
            // Matched by reference: moving the decoded header (160 bytes) out of the result
            // cost two memcpy calls a frame, 5 % of a ping's server CPU.
            let decoded = self.decoder.decode(rest);
            match &decoded {
                Ok(Decoded::Incomplete) => break,
                Ok(Decoded::Skipped { consumed }) => pos = pos.saturating_add(*consumed),
                Ok(Decoded::Item { item, consumed }) => {
                    pos = pos.saturating_add(*consumed);
                    match item {
                        Part::Header(h) => self.on_header(h, out, counters, peers),
                        Part::BodyChunk(chunk) => self.on_chunk(chunk, out),
                        Part::BodyEnd => self.on_body_end(),
                    }
                }
                Err(e) => {
                    let id = e.request_id().and_then(|v| serde_json::to_string(v).ok());
                    respond_error(
                        out,
                        counters,
                        None,
                        id.as_deref(),
                        ErrorCode::BadFrame,
                        e.to_string(),
                    );
                    self.closing = true;
                    self.body = Body::Skip;
                }
            }
        }
        Step {
            consumed: pos,
            close: self.closing,
        }
    }

    fn on_header(
        &mut self,
        h: &Header<'_>,
        out: &mut Vec<u8>,
        counters: &mut Counters,
        peers: &Peers,
    ) {
        self.body = Body::Skip;
        let id_json = h.id_json();
        let id = id_json.as_deref();
        // The frame's end is known (its body is skipped), the request is not: PROTOCOL.md.
        if let Some(bad) = &h.problem {
            let msg = format!("malformed header: {bad}");
            respond_error(out, counters, None, id, ErrorCode::BadRequest, msg);
            return;
        }
        if let Some(v) = id {
            let len = v.len();
            if len > MAX_ID {
                let msg = format!("`id` is {len} bytes as JSON; at most {MAX_ID}");
                respond_error(out, counters, None, None, ErrorCode::BadRequest, msg);
                return;
            }
        }
        let cmd = match cmd_of(h) {
            Ok(cmd) => cmd,
            Err((code, msg)) => {
                respond_error(out, counters, None, id, code, msg);
                return;
            }
        };
        let done = match cmd {
            Cmd::Ping => {
                counters.frame(cmd.name(), "ok");
                Head::ok(out, cmd.name()).finish(id, 0);
                Ok(())
            }
            Cmd::Echo => {
                counters.frame(cmd.name(), "ok");
                Head::ok(out, cmd.name()).finish(id, h.size);
                self.body = Body::Echo;
                Ok(())
            }
            Cmd::Put => self
                .start_upload(h)
                .map(|upload| self.body = Body::Upload(Box::new(upload))),
            Cmd::Get => self.start_read(h, AfterHash::Get, out, counters),
            Cmd::Stat => self.start_read(h, AfterHash::Stat, out, counters),
            Cmd::List => self.start_list(id, out, counters),
            Cmd::Stats => {
                counters.frame(cmd.name(), "ok");
                if peers.alone() {
                    stats_response(out, id, &Gathered::alone(peers.worker, counters));
                } else {
                    let id = id.map(Box::from);
                    self.stats = Some(StatsWait { id, asked: false });
                }
                Ok(())
            }
            Cmd::Exec => self.queue_exec(h),
        };
        if let Err((code, msg)) = done {
            respond_error(out, counters, Some(cmd), id, code, msg);
        }
    }

    /// `exec`: a request the policy allows waits for the reactor to start it (`poll_action`).
    fn queue_exec(&mut self, h: &Header<'_>) -> Result<(), (ErrorCode, String)> {
        let policy = self.shared.config.exec.as_ref();
        match exec::check(policy, self.authenticated, &h.map()) {
            Ok(req) => {
                self.exec = ExecState::Queued(req, h.id_json().map(|id| id.into()));
                Ok(())
            }
            Err(refusal) => {
                let code = match refusal {
                    ExecRefusal::Disabled => ErrorCode::ExecDisabled,
                    ExecRefusal::AuthRequired => ErrorCode::AuthRequired,
                    ExecRefusal::BadRequest(_) => ErrorCode::BadRequest,
                    ExecRefusal::NotAllowed(_) => ErrorCode::NotAllowed,
                };
                Err((code, refusal.to_string()))
            }
        }
    }

    /// An `exec` request checked and waiting for the reactor to run it.
    fn take_exec(&mut self) -> Option<ExecRequest> {
        match std::mem::replace(&mut self.exec, ExecState::Idle) {
            ExecState::Queued(req, id) => {
                self.exec = ExecState::Running(id);
                Some(req)
            }
            other => {
                self.exec = other;
                None
            }
        }
    }

    /// The command ended: its response is written.
    fn on_exec_done(
        &mut self,
        ending: &Ending,
        stdout: &Capture,
        stderr: &Capture,
        out: &mut Vec<u8>,
        counters: &mut Counters,
    ) {
        let ExecState::Running(id) = std::mem::replace(&mut self.exec, ExecState::Idle) else {
            return;
        };
        let outcome = exec::encode_outcome(out, id.as_deref(), ending, stdout, stderr);
        counters.frame("exec", outcome);
    }

    fn on_chunk(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        match &self.body {
            Body::Skip => {}
            Body::Echo => out.extend_from_slice(chunk),
            Body::Upload(_) => self.upload_chunk(chunk),
        }
    }
}

#[cfg(test)]
mod tests;
