//! `files`: framed commands over the header+body frames of PROTOCOL.md ("Frames"): ping, echo,
//! put, get, list, stat, stats (and exec, answered `exec_disabled` until it is configured).
//!
//! Input bytes go through a [`HeaderBodyDecoder`]; a request's body is handled chunk by chunk
//! as it arrives (an upload is hashed and written to its temporary, an echo body copied out),
//! so no body is ever held whole. Responses that are long (a file, a listing) are produced by
//! [`Files::next_output`] as the socket drains, at most a budget per call, so one large transfer
//! cannot stall the loop. While such a response is being produced, no further request is
//! decoded: responses stay in order and pipelined requests wait in the socket.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use serde_json::{Value, json};

use super::exec::{self, Capture, Ending, ExecPolicy, ExecRefusal, ExecRequest};
use super::response::{ErrorCode, Head};
use super::store::{Hasher, Store, TempFile, check_name, record_md5};
use super::{Action, Awaiting, Event, Output, Step};
use crate::frame::header::{HeaderBodyConfig, HeaderBodyDecoder, Part};
use crate::frame::{Decoded, Header};
use crate::metrics::{Counters, Peers};

/// Longest `id`, as compact JSON.
pub const MAX_ID: usize = 1024;

/// Upload bytes written between two requests to the kernel to start writing back, so that
/// the final fsync has little left to do.
const WRITEBACK_EVERY: u64 = 8 * 1024 * 1024;

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

/// Disk work for the reactor's disk thread: the loop hashes, the thread writes and commits.
pub type DiskJob = Box<dyn FnOnce() -> DiskDone + Send>;

/// What a [`DiskJob`] reports back.
#[derive(Debug)]
pub enum DiskDone {
    /// A chunk of an upload was handled (a failure is kept in the upload's error slot).
    Written { bytes: u64 },
    /// An upload was committed, or failed: the `put` response can be sent.
    Committed {
        /// `Err` holds the message for the `io` error.
        result: Result<(), String>,
        name: String,
        md5: String,
        size: u64,
        id: Option<Value>,
    },
}

/// The default of [`FilesConfig::upload_in_flight`].
pub const DEFAULT_UPLOAD_IN_FLIGHT: u64 = 8 * 1024 * 1024;

/// The first write error of an upload, set by the disk thread.
type FailSlot = Arc<std::sync::Mutex<Option<String>>>;

/// An upload in progress.
#[derive(Debug)]
struct Upload {
    /// The temporary (removed when dropped uncommitted).
    tmp: Option<TempFile>,
    /// The temporary's file, shared with the disk thread's write jobs.
    file: Arc<File>,
    /// The first write error.
    failed: FailSlot,
    /// md5 of the bytes so far.
    hasher: Hasher,
    /// The name it will get.
    name: String,
    /// The md5 the client announced, lower-cased.
    want_md5: Option<String>,
    /// The request's id.
    id: Option<Value>,
    /// Bytes announced.
    size: u64,
    /// Bytes handed to the disk thread so far.
    written: u64,
    /// Bytes written when writeback was last requested.
    written_back: u64,
}

/// What `Hash` answers once the md5 is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterHash {
    Get,
    Stat,
}

/// A response being produced over several turns.
#[derive(Debug)]
enum Outgoing {
    /// Computing the md5 of a file stored without one, before answering.
    Hash {
        file: File,
        size: u64,
        mtime: i64,
        offset: u64,
        hasher: Hasher,
        then: AfterHash,
        id: Option<Value>,
    },
    /// A file's bytes, from `offset`, `left` to go.
    File { file: File, offset: u64, left: u64 },
    /// A body built in memory (a listing).
    Bytes { data: Vec<u8>, pos: usize },
}

/// What `produce` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Produced {
    /// It wrote what it could; call again while `has_output` says so.
    Ok,
    /// A file shrank under a `get` whose size was announced: the frame cannot be completed,
    /// so the connection must close.
    Broken,
}

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
}

/// Where a connection's `exec` request is: only one runs at a time, so responses stay in order.
#[derive(Debug, Default)]
enum ExecState {
    /// None asked.
    #[default]
    Idle,
    /// Checked; the reactor is to start it. The request's id comes with it.
    Queued(ExecRequest, Option<Value>),
    /// Running; the id is for the response.
    Running(Option<Value>),
}

/// Appends an error frame and counts it.
fn respond_error(
    out: &mut Vec<u8>,
    counters: &mut Counters,
    cmd: Option<Cmd>,
    id: Option<&Value>,
    code: ErrorCode,
    message: impl AsRef<str>,
) {
    counters.frame(cmd.map_or("unknown", Cmd::name), code.as_str());
    Head::error(out, cmd.map(Cmd::name), code.as_str(), message.as_ref()).finish(id, 0);
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
    match h.fields.get("cmd") {
        Some(Value::String(s)) => {
            Cmd::parse(s).ok_or_else(|| (ErrorCode::UnknownCmd, format!("unknown command `{s}`")))
        }
        Some(_) => Err((ErrorCode::BadRequest, "`cmd` is not a string".into())),
        None => Err((ErrorCode::BadRequest, "`cmd` is missing".into())),
    }
}

fn filename_of<'h>(h: &'h Header<'_>) -> Result<&'h str, (ErrorCode, String)> {
    match h.fields.get("filename") {
        None => Err((ErrorCode::BadRequest, "`filename` is missing".into())),
        Some(Value::String(s)) => check_name(s)
            .map(|()| s.as_str())
            .map_err(|e| (ErrorCode::BadFilename, e.to_string())),
        Some(_) => Err((ErrorCode::BadFilename, "`filename` is not a string".into())),
    }
}

impl Files {
    /// A new connection's session.
    pub fn new(shared: Arc<FilesShared>) -> Self {
        let decoder = HeaderBodyDecoder::new(HeaderBodyConfig {
            max_header: shared.config.max_header,
            accept_filesize: true,
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
    }

    /// What a response waits on outside the loop: a command's child process, or upload
    /// writes or a commit on the disk thread.
    pub fn awaiting(&self) -> Awaiting {
        if !matches!(self.exec, ExecState::Idle) {
            Awaiting::Exec
        } else if self.in_flight > 0 || self.committing {
            Awaiting::Disk
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
            Event::Closing => {}
        }
    }

    /// The next piece of work for the reactor: disk jobs in the order queued, then a command.
    pub fn poll_action(&mut self) -> Option<Action> {
        match self.disk.pop_front() {
            Some(action) => Some(action),
            None => self.take_exec().map(Action::Exec),
        }
    }

    /// Takes the result of a disk job.
    fn on_disk_done(&mut self, done: DiskDone, out: &mut Vec<u8>, counters: &mut Counters) {
        match done {
            DiskDone::Written { bytes } => self.in_flight = self.in_flight.saturating_sub(bytes),
            DiskDone::Committed {
                result,
                name,
                md5,
                size,
                id,
            } => {
                self.committing = false;
                match result {
                    Ok(()) => {
                        counters.frame("put", "ok");
                        Head::ok(out, "put")
                            .str("filename", &name)
                            .num("filesize", size)
                            .str("md5", &md5)
                            .finish(id.as_ref(), 0);
                    }
                    Err(msg) => respond_error(
                        out,
                        counters,
                        Some(Cmd::Put),
                        id.as_ref(),
                        ErrorCode::Io,
                        msg,
                    ),
                }
            }
        }
    }

    /// Whether `next_output` has more to give.
    pub fn has_output(&self) -> bool {
        self.outgoing.is_some()
    }

    /// The file body under way, for the reactor to send with sendfile: (descriptor, offset,
    /// bytes left).
    fn file_range(&self) -> Option<(std::os::fd::RawFd, u64, u64)> {
        match &self.outgoing {
            Some(Outgoing::File { file, offset, left }) if !self.copy_files => {
                Some((file.as_raw_fd(), *offset, *left))
            }
            _ => None,
        }
    }

    /// Whether the response under way is a file body to go out by sendfile.
    pub fn sending_file(&self) -> bool {
        self.file_range().is_some()
    }

    /// `n` bytes of the file body were sent by the reactor.
    fn file_sent(&mut self, n: u64) {
        if let Some(Outgoing::File { offset, left, .. }) = &mut self.outgoing {
            *offset = offset.saturating_add(n);
            *left = left.saturating_sub(n);
            if *left == 0 {
                self.outgoing = None;
            }
        }
    }

    /// The next piece of the response under way: with `sendfile` allowed, a file body is
    /// named for the reactor to send; anything else is produced into `out`, up to `budget`.
    pub fn next_output(
        &mut self,
        out: &mut Vec<u8>,
        budget: usize,
        sendfile: bool,
        counters: &mut Counters,
    ) -> Output {
        if self.outgoing.is_none() {
            return Output::None;
        }
        if sendfile && let Some((fd, offset, left)) = self.file_range() {
            return Output::SendFile { fd, offset, left };
        }
        match self.produce(out, budget, counters) {
            Produced::Ok => Output::Produced,
            Produced::Broken => Output::Broken,
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
            match self.decoder.decode(rest) {
                Ok(Decoded::Incomplete) => break,
                Ok(Decoded::Skipped { consumed }) => pos = pos.saturating_add(consumed),
                Ok(Decoded::Item { item, consumed }) => {
                    pos = pos.saturating_add(consumed);
                    match item {
                        Part::Header(h) => self.on_header(&h, out, counters, peers),
                        Part::BodyChunk(chunk) => self.on_chunk(chunk, out),
                        Part::BodyEnd => self.on_body_end(out, counters),
                    }
                }
                Err(e) => {
                    respond_error(
                        out,
                        counters,
                        None,
                        e.request_id(),
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
        let id = h.id();
        // The frame's end is known (its body is skipped), the request is not: PROTOCOL.md.
        if let Some(bad) = &h.problem {
            let msg = format!("malformed header: {bad}");
            respond_error(out, counters, None, id, ErrorCode::BadRequest, msg);
            return;
        }
        if let Some(v) = id {
            let len = serde_json::to_vec(v).map_or(usize::MAX, |b| b.len());
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
                let data = serde_json::to_vec(&peers.stats_json(counters)).unwrap_or_default();
                Head::ok(out, cmd.name()).finish(id, data.len() as u64);
                out.extend_from_slice(&data);
                Ok(())
            }
            Cmd::Exec => self.queue_exec(h),
        };
        if let Err((code, msg)) = done {
            respond_error(out, counters, Some(cmd), id, code, msg);
        }
    }

    /// `list`: the names, sizes and md5s of the stored files, sent as a long response.
    fn start_list(
        &mut self,
        id: Option<&Value>,
        out: &mut Vec<u8>,
        counters: &mut Counters,
    ) -> Result<(), (ErrorCode, String)> {
        let entries = self
            .shared
            .store
            .list()
            .map_err(|e| (ErrorCode::Io, io_message(&e)))?;
        let list: Vec<Value> = entries
            .into_iter()
            .map(|(name, info)| json!({"name": name, "size": info.size, "md5": info.md5}))
            .collect();
        let data = serde_json::to_vec(&list).unwrap_or_default();
        counters.frame(Cmd::List.name(), "ok");
        Head::ok(out, Cmd::List.name()).finish(id, data.len() as u64);
        self.outgoing = Some(Outgoing::Bytes { data, pos: 0 });
        Ok(())
    }

    /// `exec`: a request the policy allows waits for the reactor to start it (`poll_action`).
    fn queue_exec(&mut self, h: &Header<'_>) -> Result<(), (ErrorCode, String)> {
        let policy = self.shared.config.exec.as_ref();
        match exec::check(policy, self.authenticated, &h.fields) {
            Ok(req) => {
                self.exec = ExecState::Queued(req, h.id().cloned());
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
        let outcome = exec::encode_outcome(out, id.as_ref(), ending, stdout, stderr);
        counters.frame("exec", outcome);
    }

    fn start_upload(&self, h: &Header<'_>) -> Result<Upload, (ErrorCode, String)> {
        let name = filename_of(h)?;
        if let Some(max) = self.shared.config.max_upload
            && h.size > max
        {
            return Err((
                ErrorCode::TooLarge,
                format!(
                    "{} bytes is over this server's upload limit of {max}",
                    h.size
                ),
            ));
        }
        let want_md5 = match h.fields.get("md5") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some(s.to_ascii_lowercase())
            }
            Some(_) => {
                return Err((
                    ErrorCode::BadRequest,
                    "`md5` must be 32 hexadecimal digits".into(),
                ));
            }
        };
        let tmp = self
            .shared
            .store
            .create_temp()
            .map_err(|e| (ErrorCode::Io, io_message(&e)))?;
        Ok(Upload {
            file: tmp.file.clone(),
            failed: FailSlot::default(),
            tmp: Some(tmp),
            hasher: Hasher::default(),
            name: name.to_owned(),
            want_md5,
            id: h.id().cloned(),
            size: h.size,
            written: 0,
            written_back: 0,
        })
    }

    fn start_read(
        &mut self,
        h: &Header<'_>,
        then: AfterHash,
        out: &mut Vec<u8>,
        counters: &mut Counters,
    ) -> Result<(), (ErrorCode, String)> {
        let name = filename_of(h)?;
        let (file, meta) = self.shared.store.open_file(name).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                (ErrorCode::NotFound, format!("no file named `{name}`"))
            } else {
                (ErrorCode::Io, io_message(&e))
            }
        })?;
        let info = Store::info(&file, &meta);
        let id = h.id().cloned();
        match info.md5 {
            Some(md5) => {
                self.answer_read(then, file, info.size, info.mtime, md5, id, out, counters)
            }
            None => {
                self.outgoing = Some(Outgoing::Hash {
                    file,
                    size: info.size,
                    mtime: info.mtime,
                    offset: 0,
                    hasher: Hasher::default(),
                    then,
                    id,
                })
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn answer_read(
        &mut self,
        then: AfterHash,
        file: File,
        size: u64,
        mtime: i64,
        md5: String,
        id: Option<Value>,
        out: &mut Vec<u8>,
        counters: &mut Counters,
    ) {
        match then {
            AfterHash::Get => {
                counters.frame("get", "ok");
                Head::ok(out, "get")
                    .str("md5", &md5)
                    .finish(id.as_ref(), size);
                if size > 0 {
                    self.outgoing = Some(Outgoing::File {
                        file,
                        offset: 0,
                        left: size,
                    });
                }
            }
            AfterHash::Stat => {
                counters.frame("stat", "ok");
                Head::ok(out, "stat")
                    .num("filesize", size)
                    .str("md5", &md5)
                    .num("mtime", mtime)
                    .finish(id.as_ref(), 0);
            }
        }
    }

    fn on_chunk(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        match &mut self.body {
            Body::Skip => {}
            Body::Echo => out.extend_from_slice(chunk),
            Body::Upload(u) => {
                u.hasher.update(chunk);
                let len = chunk.len() as u64;
                let from = u.written_back;
                u.written = u.written.saturating_add(len);
                let writeback = (u.written.saturating_sub(from) >= WRITEBACK_EVERY)
                    .then(|| (from, u.written.saturating_sub(from)));
                if writeback.is_some() {
                    u.written_back = u.written;
                }
                self.in_flight = self.in_flight.saturating_add(len);
                let data = self.shared.buffer_with(chunk);
                let (file, failed, shared) =
                    (u.file.clone(), u.failed.clone(), self.shared.clone());
                self.disk.push_back(Action::Disk(Box::new(move || {
                    if let Ok(mut slot) = failed.lock()
                        && slot.is_none()
                    {
                        match (&*file).write_all(&data) {
                            Err(e) => *slot = Some(io_message(&e)),
                            Ok(()) => {
                                if let Some((from, len)) = writeback {
                                    start_writeback(&file, from, len);
                                }
                            }
                        }
                    }
                    shared.recycle(data);
                    DiskDone::Written { bytes: len }
                })));
            }
        }
    }

    fn on_body_end(&mut self, out: &mut Vec<u8>, counters: &mut Counters) {
        let Body::Upload(u) = std::mem::replace(&mut self.body, Body::Skip) else {
            return;
        };
        let Upload {
            tmp,
            failed,
            hasher,
            name,
            want_md5,
            id,
            size,
            ..
        } = *u;
        let md5 = hasher.finish();
        if let Some(want) = want_md5
            && want != md5
        {
            let msg = format!("the body's md5 is {md5}, the request said {want}; nothing stored");
            respond_error(
                out,
                counters,
                Some(Cmd::Put),
                id.as_ref(),
                ErrorCode::Md5Mismatch,
                msg,
            );
            // Dropping `tmp` removes the temporary.
            return;
        }
        let shared = self.shared.clone();
        self.committing = true;
        // Queued after the upload's writes, so it runs once they are all done.
        self.disk.push_back(Action::Disk(Box::new(move || {
            let failure = failed.lock().ok().and_then(|mut slot| slot.take());
            let result = match (failure, tmp) {
                (Some(msg), _) => Err(msg),
                (None, None) => Err("the upload failed".to_owned()),
                (None, Some(tmp)) => shared
                    .store
                    .commit(tmp, &name, &md5)
                    .map_err(|e| io_message(&e)),
            };
            DiskDone::Committed {
                result,
                name,
                md5,
                size,
                id,
            }
        })));
    }

    /// Appends up to `budget` bytes of the response under way to `out` (or hashes up to
    /// `budget` bytes of a file first).
    fn produce(&mut self, out: &mut Vec<u8>, budget: usize, counters: &mut Counters) -> Produced {
        let budget = budget.max(1);
        match self.outgoing {
            None => Produced::Ok,
            Some(Outgoing::Bytes { .. }) => self.produce_bytes(out, budget),
            Some(Outgoing::File { .. }) => self.produce_file(out, budget),
            Some(Outgoing::Hash { .. }) => self.produce_hash(out, budget, counters),
        }
    }

    /// The next slice of a response held in memory (`list`).
    fn produce_bytes(&mut self, out: &mut Vec<u8>, budget: usize) -> Produced {
        let Some(Outgoing::Bytes { data, pos }) = &mut self.outgoing else {
            return Produced::Ok;
        };
        let end = pos.saturating_add(budget).min(data.len());
        out.extend_from_slice(data.get(*pos..end).unwrap_or_default());
        *pos = end;
        if *pos >= data.len() {
            self.outgoing = None;
        }
        Produced::Ok
    }

    /// The next slice of a file, read into `out` (when sendfile cannot be used).
    fn produce_file(&mut self, out: &mut Vec<u8>, budget: usize) -> Produced {
        let Some(Outgoing::File { file, offset, left }) = &mut self.outgoing else {
            return Produced::Ok;
        };
        let want = usize::try_from(*left).map_or(budget, |l| l.min(budget));
        let start = out.len();
        out.resize(start.saturating_add(want), 0);
        let got = loop {
            let Some(dst) = out.get_mut(start..) else {
                break Err(io::Error::other("buffer"));
            };
            match file.read_at(dst, *offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => break r,
            }
        };
        match got {
            Ok(n) if n > 0 => {
                out.truncate(start.saturating_add(n));
                *offset = offset.saturating_add(n as u64);
                *left = left.saturating_sub(n as u64);
                if *left == 0 {
                    self.outgoing = None;
                }
                Produced::Ok
            }
            other => {
                out.truncate(start);
                tracing::warn!(
                    "a file shrank or failed while being sent ({other:?}); closing the connection"
                );
                self.outgoing = None;
                self.closing = true;
                Produced::Broken
            }
        }
    }

    /// Hashes the next slice of a file stored without an md5; at its end, records the md5 and
    /// answers the `get` or `stat` that waited for it.
    fn produce_hash(
        &mut self,
        out: &mut Vec<u8>,
        budget: usize,
        counters: &mut Counters,
    ) -> Produced {
        let Some(Outgoing::Hash {
            file,
            size,
            offset,
            hasher,
            ..
        }) = &mut self.outgoing
        else {
            return Produced::Ok;
        };
        let want = usize::try_from(size.saturating_sub(*offset)).map_or(budget, |l| l.min(budget));
        self.hash_buf.resize(want, 0);
        let got = match file.read_at(&mut self.hash_buf, *offset) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Produced::Ok,
            r => r,
        };
        match got {
            Ok(n) if n > 0 || want == 0 => {
                hasher.update(self.hash_buf.get(..n).unwrap_or_default());
                *offset = offset.saturating_add(n as u64);
            }
            _ => {
                // The file shrank under us: answer from what is there now.
                *size = *offset;
            }
        }
        if *offset >= *size {
            self.hash_buf = Vec::new();
            if let Some(Outgoing::Hash {
                file,
                size,
                mtime,
                hasher,
                then,
                id,
                ..
            }) = self.outgoing.take()
            {
                let md5 = hasher.finish();
                if let Err(e) = record_md5(&file, &md5) {
                    tracing::debug!("cannot record an md5: {e}");
                }
                self.answer_read(then, file, size, mtime, md5, id, out, counters);
            }
        }
        Produced::Ok
    }
}

/// Asks the kernel to start writing a file's dirty pages now, without waiting, so that the
/// fsync at the end of an upload does not find gigabytes left to write.
fn start_writeback(file: &File, from: u64, len: u64) {
    let (Ok(from), Ok(len)) = (libc::off64_t::try_from(from), libc::off64_t::try_from(len)) else {
        return;
    };
    // SAFETY: sync_file_range only reads the descriptor and the integers given.
    let r =
        unsafe { libc::sync_file_range(file.as_raw_fd(), from, len, libc::SYNC_FILE_RANGE_WRITE) };
    if r != 0 {
        tracing::debug!("sync_file_range: {}", io::Error::last_os_error());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::header::HeaderBodyDecoder;

    fn session(tag: &str, max_upload: Option<u64>) -> (Files, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("socklab-files-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (store, _) = Store::open(&dir).unwrap();
        let shared = Arc::new(FilesShared::new(
            store,
            FilesConfig {
                max_upload,
                ..FilesConfig::default()
            },
        ));
        (Files::new(shared), dir)
    }

    fn frame(header: Value, body: &[u8]) -> Vec<u8> {
        let h = serde_json::to_vec(&header).unwrap();
        let mut v = (h.len() as u32).to_le_bytes().to_vec();
        v.extend_from_slice(&h);
        v.extend_from_slice(body);
        v
    }

    /// A decoded response: header fields and body.
    type Response = (serde_json::Map<String, Value>, Vec<u8>);

    /// The next disk job the session asks for (none of these tests asks for a command).
    fn disk_job(s: &mut Files) -> Option<DiskJob> {
        match s.poll_action()? {
            Action::Disk(job) => Some(job),
            Action::Exec(req) => panic!("an unexpected command: {req:?}"),
        }
    }

    /// Runs input through a session (producing everything) and decodes the responses.
    fn run(s: &mut Files, input: &[u8]) -> (Vec<Response>, bool) {
        let mut counters = Counters::default();
        let mut out = Vec::new();
        let mut pos = 0;
        let mut close = false;
        loop {
            let step = s.on_input(&input[pos..], &mut out, &mut counters, &Peers::default());
            pos += step.consumed;
            close |= step.close;
            // The disk thread's part, done inline.
            while let Some(job) = disk_job(s) {
                s.on_disk_done(job(), &mut out, &mut counters);
            }
            while s.has_output() {
                assert_eq!(s.produce(&mut out, 1000, &mut counters), Produced::Ok);
            }
            if step.consumed == 0 || close {
                break;
            }
        }
        let mut d = HeaderBodyDecoder::new(HeaderBodyConfig::responses());
        let mut responses = Vec::new();
        let mut p = 0;
        while let Ok(Decoded::Item { item, consumed }) = d.decode(&out[p..]) {
            p += consumed;
            match item {
                Part::Header(h) => responses.push((h.fields, Vec::new())),
                Part::BodyChunk(c) => responses.last_mut().unwrap().1.extend_from_slice(c),
                Part::BodyEnd => {}
            }
        }
        assert_eq!(p, out.len(), "every response decodes");
        (responses, close)
    }

    #[test]
    fn pipelined_requests_are_answered_in_order_with_ids() {
        let (mut s, dir) = session("pipe", None);
        let mut input = frame(json!({"cmd": "ping", "id": 1}), b"");
        input.extend(frame(
            json!({"cmd": "echo", "id": "two", "size": 3}),
            b"abc",
        ));
        input.extend(frame(
            json!({"cmd": "put", "filename": "f", "filesize": 5, "id": [3]}),
            b"hello",
        ));
        input.extend(frame(json!({"cmd": "get", "filename": "f"}), b""));
        input.extend(frame(json!({"cmd": "stat", "filename": "f"}), b""));
        input.extend(frame(json!({"cmd": "list"}), b""));
        let (r, close) = run(&mut s, &input);
        assert!(!close);
        assert_eq!(r.len(), 6);
        assert_eq!(r[0].0["id"], json!(1));
        assert_eq!(r[1].1, b"abc");
        assert_eq!(r[1].0["id"], json!("two"));
        assert_eq!(r[2].0["md5"], json!("5d41402abc4b2a76b9719d911017c592"));
        assert_eq!(r[2].0["filesize"], json!(5));
        assert_eq!(r[2].0["id"], json!([3]));
        assert_eq!(r[3].1, b"hello");
        assert_eq!(r[3].0["md5"], json!("5d41402abc4b2a76b9719d911017c592"));
        assert_eq!(r[4].0["filesize"], json!(5));
        let list: Value = serde_json::from_slice(&r[5].1).unwrap();
        assert_eq!(
            list,
            json!([{"name": "f", "size": 5, "md5": "5d41402abc4b2a76b9719d911017c592"}])
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_requests_keep_the_connection_and_bad_frames_close_it() {
        let (mut s, dir) = session("bad", Some(10));
        let mut input = frame(json!({"cmd": "nope", "id": 9}), b"");
        input.extend(frame(json!({"id": 1}), b""));
        input.extend(frame(
            json!({"cmd": "put", "filename": "../x", "size": 2}),
            b"zz",
        ));
        input.extend(frame(
            json!({"cmd": "put", "filename": "big", "size": 11}),
            b"01234567890",
        ));
        input.extend(frame(json!({"cmd": "put", "filename": "m", "size": 1, "md5": "00000000000000000000000000000000"}), b"x"));
        input.extend(frame(json!({"cmd": "get", "filename": "missing"}), b""));
        input.extend(frame(json!({"cmd": "exec", "argv": ["ls"]}), b""));
        input.extend(frame(json!({"cmd": "ping", "id": "x".repeat(2000)}), b""));
        input.extend(frame(json!({"cmd": "ping", "id": 5, "size": -1}), b""));
        input.extend(frame(json!({"cmd": "ping"}), b""));
        let (r, close) = run(&mut s, &input);
        let codes: Vec<&str> = r
            .iter()
            .map(|(h, _)| h["error"]["code"].as_str().unwrap_or("ok"))
            .collect();
        assert_eq!(
            codes,
            [
                "unknown_cmd",
                "bad_request",
                "bad_filename",
                "too_large",
                "md5_mismatch",
                "not_found",
                "exec_disabled",
                "bad_request",
                "bad_frame"
            ]
        );
        assert_eq!(r[0].0["cmd"], Value::Null);
        assert_eq!(r[0].0["id"], json!(9));
        assert_eq!(
            r[8].0["id"],
            json!(5),
            "a bad_frame copies the id of an object header"
        );
        assert!(close, "after a bad frame nothing more is read");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "nothing stored, no temporaries"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_abandoned_upload_leaves_nothing() {
        let (mut s, dir) = session("abandon", None);
        let input = frame(
            json!({"cmd": "put", "filename": "f", "size": 1u64 << 40}),
            &[1; 5000],
        );
        let mut counters = Counters::default();
        let mut out = Vec::new();
        let step = s.on_input(&input, &mut out, &mut counters, &Peers::default());
        while let Some(job) = disk_job(&mut s) {
            s.on_disk_done(job(), &mut out, &mut counters);
        }
        assert_eq!(step.consumed, input.len());
        assert!(out.is_empty());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "the temporary");
        drop(s);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_body_that_fills_the_in_flight_window_ends_on_the_next_call_without_new_bytes() {
        let dir = std::env::temp_dir().join(format!("socklab-files-window-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (store, _) = Store::open(&dir).unwrap();
        let config = FilesConfig {
            upload_in_flight: 4,
            ..FilesConfig::default()
        };
        let mut s = Files::new(Arc::new(FilesShared::new(store, config)));
        let (mut counters, mut out) = (Counters::default(), Vec::new());
        let input = frame(
            json!({"cmd": "put", "filename": "f", "size": 10}),
            b"0123456789",
        );
        let step = s.on_input(&input, &mut out, &mut counters, &Peers::default());
        assert_eq!(step.consumed, input.len(), "the whole body is taken");
        assert_eq!(
            s.disk.len(),
            1,
            "one write, and no commit yet: the window is full"
        );
        assert!(!s.accepts_input() && s.awaiting() == Awaiting::Disk);
        let done = disk_job(&mut s).unwrap()();
        s.on_disk_done(done, &mut out, &mut counters);
        assert!(s.accepts_input() && s.awaiting() == Awaiting::Nothing);
        assert!(out.is_empty(), "no answer before the commit");
        // The reactor's resumption: no new bytes, but the decoder owes the body's end.
        let step = s.on_input(&[], &mut out, &mut counters, &Peers::default());
        assert_eq!(step.consumed, 0);
        assert_eq!(s.disk.len(), 1, "the commit is queued");
        assert!(
            s.awaiting() == Awaiting::Disk,
            "a commit under way keeps the connection open"
        );
        let done = disk_job(&mut s).unwrap()();
        s.on_disk_done(done, &mut out, &mut counters);
        let mut d = HeaderBodyDecoder::new(HeaderBodyConfig::responses());
        match d.decode(&out) {
            Ok(Decoded::Item {
                item: Part::Header(h),
                ..
            }) => assert_eq!(h.fields["md5"], json!("781e5e245d69b566979b86e28d23f2c7")),
            other => panic!("no put response: {other:?}"),
        }
        assert_eq!(std::fs::read(dir.join("f")).unwrap(), b"0123456789");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn files_stored_by_hand_are_hashed_before_answering() {
        let (mut s, dir) = session("hand", None);
        std::fs::write(dir.join("hand"), vec![b'a'; 2500]).unwrap();
        let input = frame(json!({"cmd": "get", "filename": "hand"}), b"");
        let (r, _) = run(&mut s, &input);
        let want = {
            let mut h = Hasher::default();
            h.update(&[b'a'; 2500]);
            h.finish()
        };
        assert_eq!(r[0].0["md5"], json!(want));
        assert_eq!(r[0].1.len(), 2500);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
