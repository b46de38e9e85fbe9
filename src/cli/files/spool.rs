//! `put` of what has no size until it is read to its end (stdin, a pipe, a FIFO, a character
//! device): a frame announces its body's size first, so the bytes are spooled to an anonymous
//! temporary file in $TMPDIR (O_TMPFILE, else a file unlinked as soon as it is made: nothing is
//! left behind however the command ends), hashed as they go, and the spool is sent as a
//! regular file.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::{CHUNK, Failure};
use crate::service::store::Hasher;

/// What `put` sends.
#[derive(Debug)]
pub(crate) enum Source {
    /// A regular file, sent as it is.
    Regular(File),
    /// A spool of everything read, positioned at its start, with its md5.
    Spooled { file: File, md5: String },
}

/// Reads `from` to its end into an anonymous temporary file; `what` names it in messages.
pub(crate) fn spool(from: &mut impl Read, what: &str) -> Result<Source, Failure> {
    let dir = std::env::temp_dir();
    let mut file = anonymous(&dir).map_err(|e| {
        Failure(format!(
            "cannot make a temporary file in {} to hold {what} (set TMPDIR elsewhere): {e}",
            dir.display()
        ))
    })?;
    let mut hasher = Hasher::default();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Failure(format!("reading {what} failed: {e}"))),
        };
        let chunk = buf.get(..n).unwrap_or_default();
        file.write_all(chunk).map_err(|e| {
            let why = match e.raw_os_error() {
                Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG) => {
                    "it is full (set TMPDIR to a directory with room)".to_owned()
                }
                _ => e.to_string(),
            };
            Failure(format!(
                "cannot hold {what} in a temporary file in {} after {total} bytes: {why}; nothing was sent",
                dir.display()
            ))
        })?;
        hasher.update(chunk);
        total = total.saturating_add(n as u64);
    }
    file.seek(SeekFrom::Start(0))?;
    Ok(Source::Spooled {
        file,
        md5: hasher.finish(),
    })
}

/// A file in `dir` with no name: O_TMPFILE where the file system has it, else a new file
/// removed at once.
fn anonymous(dir: &Path) -> io::Result<File> {
    let tmpfile = OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(dir);
    match tmpfile {
        Ok(f) => Ok(f),
        // Not every file system has O_TMPFILE (EOPNOTSUPP, EISDIR on old kernels).
        Err(_) => {
            let path = dir.join(format!(
                ".socklab-put-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
            ));
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            std::fs::remove_file(&path)?;
            Ok(f)
        }
    }
}
