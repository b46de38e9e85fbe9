//! Responses produced over several turns as the socket drains: a file's bytes (`get`, by
//! sendfile or copied), a listing, and the md5 of a file stored without one, computed a slice
//! at a time before its `get` or `stat` is answered.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use serde_json::{Value, json};

use super::{Cmd, Files, filename_of, io_message};
use crate::frame::Header;
use crate::metrics::Counters;
use crate::service::Output;
use crate::service::response::{ErrorCode, Head};
use crate::service::store::{Hasher, Store, record_md5};

/// What `Hash` answers once the md5 is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AfterHash {
    Get,
    Stat,
}

/// A response being produced over several turns.
#[derive(Debug)]
pub(super) enum Outgoing {
    /// Computing the md5 of a file stored without one, before answering.
    Hash {
        file: File,
        size: u64,
        mtime: i64,
        offset: u64,
        hasher: Hasher,
        then: AfterHash,
        id: Option<Box<str>>,
    },
    /// A file's bytes, from `offset`, `left` to go.
    File { file: File, offset: u64, left: u64 },
    /// A body built in memory (a listing).
    Bytes { data: Vec<u8>, pos: usize },
}

/// What `produce` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Produced {
    /// It wrote what it could; call again while `has_output` says so.
    Ok,
    /// A file shrank under a `get` whose size was announced: the frame cannot be completed,
    /// so the connection must close.
    Broken,
}

impl Files {
    /// Whether `next_output` has more to give.
    pub fn has_output(&self) -> bool {
        self.outgoing.is_some()
    }

    /// The file body under way, for the reactor to send with sendfile: (descriptor, offset,
    /// bytes left).
    pub(super) fn file_range(&self) -> Option<(std::os::fd::RawFd, u64, u64)> {
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
    pub(super) fn file_sent(&mut self, n: u64) {
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

    /// `list`: the names, sizes and md5s of the stored files, sent as a long response.
    pub(super) fn start_list(
        &mut self,
        id: Option<&str>,
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

    pub(super) fn start_read(
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
        let id: Option<Box<str>> = h.id_json().map(|id| id.into());
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
    pub(super) fn answer_read(
        &mut self,
        then: AfterHash,
        file: File,
        size: u64,
        mtime: i64,
        md5: String,
        id: Option<Box<str>>,
        out: &mut Vec<u8>,
        counters: &mut Counters,
    ) {
        match then {
            AfterHash::Get => {
                counters.frame("get", "ok");
                Head::ok(out, "get")
                    .str("md5", &md5)
                    .finish(id.as_deref(), size);
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
                    .finish(id.as_deref(), 0);
            }
        }
    }

    /// Appends up to `budget` bytes of the response under way to `out` (or hashes up to
    /// `budget` bytes of a file first).
    pub(super) fn produce(
        &mut self,
        out: &mut Vec<u8>,
        budget: usize,
        counters: &mut Counters,
    ) -> Produced {
        let budget = budget.max(1);
        match self.outgoing {
            None => Produced::Ok,
            Some(Outgoing::Bytes { .. }) => self.produce_bytes(out, budget),
            Some(Outgoing::File { .. }) => self.produce_file(out, budget),
            Some(Outgoing::Hash { .. }) => self.produce_hash(out, budget, counters),
        }
    }

    /// The next slice of a response held in memory (`list`).
    pub(super) fn produce_bytes(&mut self, out: &mut Vec<u8>, budget: usize) -> Produced {
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
    pub(super) fn produce_file(&mut self, out: &mut Vec<u8>, budget: usize) -> Produced {
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
    pub(super) fn produce_hash(
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
