//! `put`: an upload's body, chunk by chunk, as jobs for the reactor's disk threads. Each job has
//! two halves: the first runs on the hashing thread (md5 of the chunk), the second on the disk
//! thread (write, and at the end fsync and rename). The loop only receives and hands over, so
//! md5 — the one cost every uploaded byte must pay — has a core of its own, and the loop stays
//! free for every other connection.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use crate::frame::header::Field;

use super::{Body, Cmd, Files, io_message, respond_error};
use crate::frame::Header;
use crate::metrics::Counters;
use crate::service::Action;
use crate::service::response::{ErrorCode, Head};
use crate::service::store::{Hasher, TempFile};

/// Upload bytes written between two requests to the kernel to start writing back, so that
/// the final fsync has little left to do.
const WRITEBACK_EVERY: u64 = 8 * 1024 * 1024;

/// The second half of a disk job, run on the disk thread: writes, fsync, rename.
pub type DiskWork = Box<dyn FnOnce() -> DiskDone + Send>;

/// A disk job: its first half runs on the hashing thread and returns the second half, which
/// the disk thread runs after the halves of every job queued before it.
pub type DiskJob = Box<dyn FnOnce() -> DiskWork + Send>;

/// What a [`DiskJob`] reports back.
#[derive(Debug)]
pub enum DiskDone {
    /// A chunk of an upload was handled (a failure is kept in the upload's error slot).
    Written { bytes: u64 },
    /// An upload was committed, or refused or failed: the `put` response can be sent.
    Committed {
        /// `Err` holds the error code (`md5_mismatch` or `io`) and its message.
        result: Result<(), (ErrorCode, String)>,
        name: String,
        md5: String,
        size: u64,
        id: Option<Box<str>>,
    },
}

/// The first write error of an upload, set by the disk thread.
type FailSlot = Arc<Mutex<Option<String>>>;

/// An upload in progress.
#[derive(Debug)]
pub(super) struct Upload {
    /// The temporary (removed when dropped uncommitted).
    tmp: Option<TempFile>,
    /// The temporary's file, shared with the disk thread's write jobs.
    file: Arc<File>,
    /// The first write error.
    failed: FailSlot,
    /// md5 of the bytes so far, updated on the hashing thread only (the lock is never
    /// contended; it makes the hasher shareable between the jobs of one upload).
    hasher: Arc<Mutex<Hasher>>,
    /// The name it will get.
    name: String,
    /// The md5 the client announced, lower-cased.
    want_md5: Option<String>,
    /// The request's id.
    id: Option<Box<str>>,
    /// Bytes announced.
    size: u64,
    /// Bytes handed to the disk thread so far.
    written: u64,
    /// Bytes written when writeback was last requested.
    written_back: u64,
    /// The range whose writeback was requested last: the next request waits for it.
    writing_back: Option<(u64, u64)>,
}

/// Write-behind: asks the kernel to start writing the range just written, and waits until the
/// range asked for before it is on the disk. The disk then writes all along the upload rather
/// than at its end, so the fsync before the answer finds at most two ranges left, and the
/// dirty pages an upload leaves in memory stay bounded. Waiting here throttles the upload to
/// the disk's speed through the in-flight window, which is the bound anyway.
#[derive(Debug, Clone, Copy)]
struct WriteBehind {
    /// Start writing this range.
    start: (u64, u64),
    /// Wait for this one.
    wait: Option<(u64, u64)>,
}

impl WriteBehind {
    fn run(self, file: &File) {
        sync_range(file, self.start, libc::SYNC_FILE_RANGE_WRITE);
        if let Some(range) = self.wait {
            let all = libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER;
            sync_range(file, range, all);
        }
    }
}

fn sync_range(file: &File, (from, len): (u64, u64), flags: libc::c_uint) {
    let (Ok(from), Ok(len)) = (libc::off64_t::try_from(from), libc::off64_t::try_from(len)) else {
        return;
    };
    // SAFETY: sync_file_range only reads the descriptor and the integers given.
    let r = unsafe { libc::sync_file_range(file.as_raw_fd(), from, len, flags) };
    if r != 0 {
        tracing::debug!("sync_file_range: {}", io::Error::last_os_error());
    }
}

/// The md5 the hashing thread computed, and whether it matches what the client announced.
fn verdict(
    hasher: &Mutex<Hasher>,
    want_md5: Option<String>,
) -> (String, Result<(), (ErrorCode, String)>) {
    let Ok(mut hasher) = hasher.lock() else {
        let msg = "the server lost the upload's md5 state; nothing stored".to_owned();
        return (String::new(), Err((ErrorCode::Io, msg)));
    };
    let md5 = std::mem::take(&mut *hasher).finish();
    match want_md5 {
        Some(want) if want != md5 => {
            let msg = format!("the body's md5 is {md5}, the request said {want}; nothing stored");
            (md5, Err((ErrorCode::Md5Mismatch, msg)))
        }
        _ => (md5, Ok(())),
    }
}

impl Files {
    /// Takes the result of a disk job.
    pub(super) fn on_disk_done(
        &mut self,
        done: DiskDone,
        out: &mut Vec<u8>,
        counters: &mut Counters,
    ) {
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
                            .finish(id.as_deref(), 0);
                    }
                    Err((code, msg)) => {
                        respond_error(out, counters, Some(Cmd::Put), id.as_deref(), code, msg)
                    }
                }
            }
        }
    }

    /// A `put` header: the upload's temporary, or why there is none.
    pub(super) fn start_upload(&self, h: &Header<'_>) -> Result<Upload, (ErrorCode, String)> {
        let name = super::filename_of(h)?;
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
        let want_md5 = match h.field("md5") {
            Field::Missing | Field::Null => None,
            Field::Str(s) if s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some(s.to_ascii_lowercase())
            }
            Field::Str(_) | Field::Other => {
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
            hasher: Default::default(),
            name: name.to_owned(),
            want_md5,
            id: h.id_json().map(|id| id.into()),
            size: h.size,
            written: 0,
            written_back: 0,
            writing_back: None,
        })
    }

    /// A chunk of the body: hashed on the hashing thread, then written on the disk thread.
    /// The bytes count as in flight until the write reports back.
    pub(super) fn upload_chunk(&mut self, chunk: &[u8]) {
        let Body::Upload(u) = &mut self.body else {
            return;
        };
        let len = chunk.len() as u64;
        let from = u.written_back;
        u.written = u.written.saturating_add(len);
        let writeback = (u.written.saturating_sub(from) >= WRITEBACK_EVERY).then(|| {
            let start = (from, u.written.saturating_sub(from));
            let wait = u.writing_back.replace(start);
            WriteBehind { start, wait }
        });
        if writeback.is_some() {
            u.written_back = u.written;
        }
        self.in_flight = self.in_flight.saturating_add(len);
        let data = self.shared.buffer_with(chunk);
        let (file, failed, hasher, shared) = (
            u.file.clone(),
            u.failed.clone(),
            u.hasher.clone(),
            self.shared.clone(),
        );
        self.disk.push_back(Action::Disk(Box::new(move || {
            if let Ok(mut h) = hasher.lock() {
                h.update(&data);
            }
            Box::new(move || {
                if let Ok(mut slot) = failed.lock()
                    && slot.is_none()
                {
                    match (&*file).write_all(&data) {
                        Err(e) => *slot = Some(io_message(&e)),
                        Ok(()) => {
                            if let Some(writeback) = writeback {
                                writeback.run(&file);
                            }
                        }
                    }
                }
                shared.recycle(data);
                DiskDone::Written { bytes: len }
            })
        })));
    }

    /// The body's end: the md5 is checked on the hashing thread after the last chunk's, and
    /// the commit (or the removal of the temporary) runs on the disk thread after the last
    /// write. The response comes back as `DiskDone::Committed`.
    pub(super) fn on_body_end(&mut self) {
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
        let shared = self.shared.clone();
        self.committing = true;
        self.disk.push_back(Action::Disk(Box::new(move || {
            let (md5, checked) = verdict(&hasher, want_md5);
            Box::new(move || {
                let failure = failed.lock().ok().and_then(|mut slot| slot.take());
                // A refused or failed upload drops `tmp` here, which removes the temporary.
                let result = match (checked, failure, tmp) {
                    (Err(refusal), _, _) => Err(refusal),
                    (Ok(()), Some(msg), _) => Err((ErrorCode::Io, msg)),
                    (Ok(()), None, None) => Err((ErrorCode::Io, "the upload failed".to_owned())),
                    (Ok(()), None, Some(tmp)) => shared
                        .store
                        .commit(tmp, &name, &md5)
                        .map_err(|e| (ErrorCode::Io, io_message(&e))),
                };
                DiskDone::Committed {
                    result,
                    name,
                    md5,
                    size,
                    id,
                }
            })
        })));
    }
}
