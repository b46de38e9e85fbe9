//! The `files` data directory: which names are allowed, temporaries that become files only by
//! an atomic rename, and the md5 of every stored file kept beside its bytes.
//!
//! The md5 lives in an extended attribute (`user.socklab.md5`) set on the temporary before the
//! rename, together with the file's size and modification time. The rename publishes bytes and
//! md5 in one step, so no crash can pair a file with another file's md5; a file changed behind
//! the server's back no longer matches the recorded size and time and is hashed again.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use socklab_md5::Md5;

mod leftovers;

#[cfg(test)]
use leftovers::{FOREIGN_MAX_AGE, parse_own, sanitize_host, this_host};
#[cfg(test)]
use std::time::Duration;

/// Names with this prefix are the server's own; clients cannot use them.
pub const RESERVED_PREFIX: &str = ".socklab-";

/// Temporaries are named with this prefix, and removed at start-up.
const TMP_PREFIX: &str = ".socklab-tmp-";

/// A file replaced by an upload is first linked aside under this prefix, and removed after
/// the answer; names left by a crash are removed at start-up.
const OLD_PREFIX: &str = ".socklab-old-";

/// Files at least this large are removed after the answer when replaced: freeing a large
/// file's blocks can take a second (more with online discard), and the client who replaced
/// it need not wait for that.
const RETIRE_ABOVE: u64 = 64 * 1024 * 1024;

/// The extended attribute that holds "md5 size mtime_ns".
const MD5_XATTR: &str = "user.socklab.md5";

/// Longest file name, in bytes.
pub const MAX_NAME: usize = 255;

/// Why a file name is refused (`bad_filename`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("the file name is empty")]
    Empty,
    #[error("`.` and `..` are not file names")]
    Dots,
    #[error("a file name may not contain `/`, `\\` or NUL")]
    Separator,
    #[error("a file name is at most {MAX_NAME} bytes, this one is {0}")]
    TooLong(usize),
    #[error("names starting with `{RESERVED_PREFIX}` are reserved for the server")]
    Reserved,
}

/// Checks a client's file name against PROTOCOL.md: a plain name inside the data directory.
pub fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name == "." || name == ".." {
        return Err(NameError::Dots);
    }
    if name.bytes().any(|b| matches!(b, b'/' | b'\\' | 0)) {
        return Err(NameError::Separator);
    }
    if name.len() > MAX_NAME {
        return Err(NameError::TooLong(name.len()));
    }
    if name.starts_with(RESERVED_PREFIX) {
        return Err(NameError::Reserved);
    }
    Ok(())
}

/// Lower-case hex of an md5 digest.
pub fn hex(digest: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(digest.len() * 2);
    for b in digest {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// What the store knows of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// Length in bytes.
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// The md5 recorded when it was stored, if it still matches the file.
    pub md5: Option<String>,
}

/// The data directory.
#[derive(Debug)]
pub struct Store {
    /// Where the files are.
    dir: PathBuf,
    /// Makes temporary names unique within this process.
    seq: AtomicU64,
    /// Random, so that servers on other hosts sharing the directory (whose process ids may
    /// equal this one's) never pick the same temporary name.
    tag: u64,
    /// This host's name (sanitized), the first field of its temporaries' names.
    host: String,
}

/// A file being uploaded: removed on drop unless committed.
#[derive(Debug)]
pub struct TempFile {
    /// Where it is.
    path: PathBuf,
    /// The open file, shared with the disk thread's write jobs.
    pub file: std::sync::Arc<File>,
    /// Set once renamed into place.
    committed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn recorded_md5(file: &File, meta: &fs::Metadata) -> Option<String> {
    let raw = xattr::FileExt::get_xattr(file, MD5_XATTR).ok()??;
    let text = String::from_utf8(raw).ok()?;
    let mut parts = text.split(' ');
    let (md5, size, mtime_ns) = (parts.next()?, parts.next()?, parts.next()?);
    let still = size.parse::<u64>().ok()? == meta.len()
        && mtime_ns.parse::<i128>().ok()? == mtime_ns_of(meta);
    (still && md5.len() == 32).then(|| md5.to_owned())
}

fn mtime_ns_of(meta: &fs::Metadata) -> i128 {
    i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec())
}

/// Records `md5` on an open file, with the size and time that make it valid.
pub fn record_md5(file: &File, md5: &str) -> io::Result<()> {
    let meta = file.metadata()?;
    let value = format!("{md5} {} {}", meta.len(), mtime_ns_of(&meta));
    xattr::FileExt::set_xattr(file, MD5_XATTR, value.as_bytes())
}

impl Store {
    /// Opens (creating it if missing) the data directory and removes temporaries left by a
    /// crash: this host's of processes that are gone, other hosts' past an age limit (see
    /// `leftovers`). Returns the store and how many temporaries were removed.
    pub fn open(dir: &Path) -> io::Result<(Store, usize)> {
        fs::create_dir_all(dir)?;
        let host = leftovers::this_host();
        let mut removed = 0;
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.as_encoded_bytes();
            let Some(prefix) = [TMP_PREFIX, OLD_PREFIX]
                .into_iter()
                .find(|p| name.starts_with(p.as_bytes()))
            else {
                continue;
            };
            let mtime = entry.metadata()?.modified()?;
            if leftovers::removable(name, prefix, &host, mtime) {
                match fs::remove_file(entry.path()) {
                    Ok(()) => removed += 1,
                    // Its owner (on another host) finished with it meanwhile.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let tag = getrandom::u64().unwrap_or_default();
        let store = Store {
            dir: dir.to_owned(),
            seq: AtomicU64::new(0),
            tag,
            host,
        };
        Ok((store, removed))
    }

    /// A name of the server's own in the data directory, unique to this process.
    fn own_name(&self, prefix: &str) -> PathBuf {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!(
            "{prefix}{}-{}-{:016x}-{n}",
            self.host,
            std::process::id(),
            self.tag
        ))
    }

    /// Creates a new, empty temporary in the data directory.
    pub fn create_temp(&self) -> io::Result<TempFile> {
        let path = self.own_name(TMP_PREFIX);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)?;
        Ok(TempFile {
            path,
            file: std::sync::Arc::new(file),
            committed: false,
        })
    }

    /// Makes a finished upload the file `name`: md5 recorded, data synced, renamed into place
    /// (replacing any older file atomically), and the directory synced so the name survives a
    /// crash too.
    pub fn commit(&self, mut tmp: TempFile, name: &str, md5: &str) -> io::Result<()> {
        tmp.file.sync_all()?;
        record_md5(&tmp.file, md5)?;
        tmp.file.sync_all()?;
        let target = self.dir.join(name);
        let retired = self.link_aside(&target);
        if let Err(e) = fs::rename(&tmp.path, &target) {
            if let Some(old) = retired {
                let _ = fs::remove_file(old);
            }
            return Err(e);
        }
        tmp.committed = true;
        let synced = File::open(&self.dir).and_then(|d| d.sync_all());
        if let Some(old) = retired {
            remove_in_background(old);
        }
        synced
    }

    /// Links a large regular file at `target` to a name of the server's own, so that the
    /// rename replacing it does not free its blocks; `None` if there is none, or it is small, or
    /// the link fails (then the rename frees them, as it would anyway).
    fn link_aside(&self, target: &Path) -> Option<PathBuf> {
        let meta = fs::symlink_metadata(target).ok()?;
        if !meta.is_file() || meta.len() < RETIRE_ABOVE {
            return None;
        }
        let aside = self.own_name(OLD_PREFIX);
        fs::hard_link(target, &aside).ok().map(|()| aside)
    }

    /// Opens the regular file `name` for reading; symbolic links and other kinds of entries are
    /// `NotFound`, as if they were not there.
    pub fn open_file(&self, name: &str) -> io::Result<(File, fs::Metadata)> {
        let path = self.dir.join(name);
        let open = |extra: libc::c_int| {
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | extra)
                .open(&path)
        };
        // O_NOATIME: reading a file the loop sends must not update its access time, which
        // would start a journal transaction on the loop thread and wait behind a commit under
        // way (seen: a 93 ms sendfile while a replaced file's blocks were being discarded).
        // Only the file's owner may ask for it; a file put there by another user is opened
        // without.
        let file = match open(libc::O_NOATIME) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(0),
            other => other,
        }
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => io::ErrorKind::NotFound.into(),
            _ => e,
        })?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::ErrorKind::NotFound.into());
        }
        Ok((file, meta))
    }

    /// Size, time and recorded md5 of an open file.
    pub fn info(file: &File, meta: &fs::Metadata) -> FileInfo {
        FileInfo {
            size: meta.len(),
            mtime: meta.mtime(),
            md5: recorded_md5(file, meta),
        }
    }

    /// Every regular file that is not the server's own, sorted by name, with what is known of
    /// it. Files whose md5 was never recorded (put there by hand) have `md5: None`.
    pub fn list(&self) -> io::Result<Vec<(String, FileInfo)>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if check_name(&name).is_err() {
                continue;
            }
            let Ok((file, meta)) = self.open_file(&name) else {
                continue;
            };
            out.push((name, Store::info(&file, &meta)));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

/// Removes a replaced file on a short-lived thread of its own, so that neither the answer nor
/// the next upload's writes wait for its blocks to be freed. A name left behind by a stop is
/// removed at the next start.
fn remove_in_background(path: PathBuf) {
    let spawned = std::thread::Builder::new()
        .name("socklab-unlink".into())
        .spawn({
            let path = path.clone();
            move || {
                if let Err(e) = fs::remove_file(&path) {
                    tracing::warn!("cannot remove the replaced file {}: {e}", path.display());
                }
            }
        });
    if spawned.is_err() {
        let _ = fs::remove_file(&path);
    }
}

/// An md5 computed over a file a slice at a time, so that hashing a large file never holds
/// the loop for long.
#[derive(Debug, Default, Clone)]
pub struct Hasher(Md5);

impl Hasher {
    /// Adds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The lower-case hex digest.
    pub fn finish(self) -> String {
        hex(&self.0.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("socklab-store-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn names_follow_the_protocol() {
        for ok in ["a", "a.txt", "..a", "a..", "é", &"x".repeat(255)] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        assert_eq!(check_name(""), Err(NameError::Empty));
        assert_eq!(check_name("."), Err(NameError::Dots));
        assert_eq!(check_name(".."), Err(NameError::Dots));
        for bad in ["../x", "/etc/passwd", "a/b", "a\\b", "a\0b"] {
            assert_eq!(check_name(bad), Err(NameError::Separator), "{bad:?}");
        }
        assert_eq!(check_name(&"x".repeat(256)), Err(NameError::TooLong(256)));
        assert_eq!(check_name(".socklab-tmp-1"), Err(NameError::Reserved));
    }

    #[test]
    fn commit_publishes_bytes_and_md5_together() {
        let dir = temp_dir("commit");
        let (store, _) = Store::open(&dir).unwrap();
        let tmp = store.create_temp().unwrap();
        std::io::Write::write_all(&mut &*tmp.file, b"hello").unwrap();
        let md5 = "5d41402abc4b2a76b9719d911017c592";
        store.commit(tmp, "h.txt", md5).unwrap();
        let (f, m) = store.open_file("h.txt").unwrap();
        assert_eq!(Store::info(&f, &m).md5.as_deref(), Some(md5));
        assert_eq!(store.list().unwrap().len(), 1);
        // A change behind the server's back invalidates the record.
        fs::write(dir.join("h.txt"), b"changed!").unwrap();
        let (f, m) = store.open_file("h.txt").unwrap();
        assert_eq!(Store::info(&f, &m).md5, None);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_large_file_replaced_is_removed_after_the_commit_and_leftovers_at_open() {
        let dir = temp_dir("retire");
        let (store, _) = Store::open(&dir).unwrap();
        // Sparse: large by its length, cheap on the disk.
        File::create(dir.join("big"))
            .unwrap()
            .set_len(RETIRE_ABOVE)
            .unwrap();
        let tmp = store.create_temp().unwrap();
        std::io::Write::write_all(&mut &*tmp.file, b"new").unwrap();
        store.commit(tmp, "big", "0".repeat(32).as_str()).unwrap();
        assert_eq!(fs::read(dir.join("big")).unwrap(), b"new");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while fs::read_dir(&dir).unwrap().count() > 1 {
            assert!(std::time::Instant::now() < deadline, "the old file stays");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let left = format!("{OLD_PREFIX}{}-{}-2-3", this_host(), dead_pid());
        fs::write(dir.join(left), b"crash").unwrap();
        let (_store, removed) = Store::open(&dir).unwrap();
        assert_eq!(removed, 1);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dropped_temporaries_vanish_and_leftovers_are_cleaned_at_open() {
        let dir = temp_dir("tmp");
        let (store, _) = Store::open(&dir).unwrap();
        let tmp = store.create_temp().unwrap();
        drop(tmp);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
        let left = format!("{TMP_PREFIX}{}-{}-2-1", this_host(), dead_pid());
        fs::write(dir.join(left), b"crash").unwrap();
        let (_store, removed) = Store::open(&dir).unwrap();
        assert_eq!(removed, 1);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// The id of a process that has exited (and been reaped).
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    /// A name of another host's temporary, as that host's server would write it.
    fn foreign(prefix: &str) -> String {
        format!("{prefix}other.host-4242-00000000000000ab-0")
    }

    #[test]
    fn another_hosts_fresh_temporaries_are_left_and_stale_ones_removed() {
        let dir = temp_dir("shared");
        fs::create_dir_all(&dir).unwrap();
        let fresh = [foreign(TMP_PREFIX), foreign(OLD_PREFIX)];
        for name in &fresh {
            fs::write(dir.join(name), b"uploading elsewhere").unwrap();
        }
        let stale = format!("{TMP_PREFIX}gone.host-7-00000000000000cd-3");
        let f = File::create(dir.join(&stale)).unwrap();
        let old = std::time::SystemTime::now() - FOREIGN_MAX_AGE - Duration::from_secs(60);
        f.set_modified(old).unwrap();
        let (_store, removed) = Store::open(&dir).unwrap();
        assert_eq!(removed, 1, "only the stale one");
        for name in &fresh {
            assert!(dir.join(name).exists(), "{name} removed");
        }
        assert!(!dir.join(&stale).exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn this_hosts_temporaries_of_a_dead_process_are_removed_of_a_live_server_left() {
        let dir = temp_dir("thishost");
        fs::create_dir_all(&dir).unwrap();
        let host = this_host();
        let dead = dead_pid();
        let dead_name = format!("{TMP_PREFIX}{host}-{dead}-00000000000000ef-0");
        // The unit-test binary is a socklab by its name, and alive.
        let live = std::process::id();
        let live_name = format!("{OLD_PREFIX}{host}-{live}-00000000000000ef-1");
        fs::write(dir.join(&dead_name), b"crash").unwrap();
        fs::write(dir.join(&live_name), b"in use").unwrap();
        let (store, removed) = Store::open(&dir).unwrap();
        assert_eq!(removed, 1);
        assert!(!dir.join(&dead_name).exists());
        assert!(dir.join(&live_name).exists());
        // Its own temporaries carry the host and the process.
        let tmp = store.create_temp().unwrap();
        let own = tmp.path.file_name().unwrap().to_str().unwrap().to_owned();
        assert!(
            own.starts_with(&format!("{TMP_PREFIX}{host}-{live}-")),
            "{own}"
        );
        drop(tmp);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn host_names_are_sanitized_into_one_field() {
        assert_eq!(sanitize_host("web-1.example.com"), "web_1.example.com");
        assert_eq!(sanitize_host("a/b c"), "a_b_c");
        assert_eq!(sanitize_host(""), "unknown");
        assert_eq!(sanitize_host(&"h".repeat(300)).len(), 64);
        let name = format!("{TMP_PREFIX}{}-12-00000000000000ab-0", sanitize_host("x-y"));
        let left = parse_own(name.as_bytes(), TMP_PREFIX).unwrap();
        assert_eq!((left.host, left.pid), ("x_y", 12));
        assert!(parse_own(b".socklab-tmp-999-1", TMP_PREFIX).is_none());
        assert!(parse_own(b".socklab-tmp-h-notapid-1-2", TMP_PREFIX).is_none());
    }

    #[test]
    fn links_and_directories_are_not_files() {
        let dir = temp_dir("links");
        let (store, _) = Store::open(&dir).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join("pw")).unwrap();
        fs::create_dir(dir.join("sub")).unwrap();
        assert_eq!(
            store.open_file("pw").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(
            store.open_file("sub").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert!(store.list().unwrap().is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }
}
