//! Opening the control socket at start-up (before any worker exists): taken over from the old
//! process when it handed over the same path, else bound, replacing a stale socket file but
//! never a live listener; mode 0600. The first reactor bound takes it (`take_opened`).

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The control socket, opened, until the first reactor takes it.
static OPENED: Mutex<Option<Opened>> = Mutex::new(None);

/// What the server was started as, for starting its successor the same way.
static EXE: OnceLock<PathBuf> = OnceLock::new();

/// The opened control socket.
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) listener: UnixListener,
    pub(crate) path: PathBuf,
}

/// Why the control socket cannot be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    #[error(
        "control socket {0}: in use by a running process (another socklab? upgrade it with `socklab reload --control {0}`, or choose another path with --control)"
    )]
    InUse(String),
    #[error(
        "control socket {0}: the path exists and is not a socket; choose another with --control"
    )]
    NotASocket(String),
    #[error("control socket {path}: {source}; choose another with --control")]
    Io { path: String, source: io::Error },
}

/// Records the binary this process runs, before anything could replace it: its path is what a
/// reload starts (a new binary installed there is the point of a binary upgrade).
pub(crate) fn record_exe() {
    if let Ok(exe) = std::env::current_exe() {
        let _ = EXE.set(exe);
    }
}

/// The binary to start as the successor.
pub(super) fn exe() -> PathBuf {
    EXE.get()
        .cloned()
        .unwrap_or_else(|| PathBuf::from("/proc/self/exe"))
}

/// Opens the control socket at `path` (see the module comment); `None` opens nothing.
/// Returns whether it was taken over from the old process.
pub(crate) fn open_control(path: Option<&Path>) -> Result<bool, OpenError> {
    let Some(path) = path else {
        return Ok(false);
    };
    let shown = path.display().to_string();
    let io_err = |source| OpenError::Io {
        path: shown.clone(),
        source,
    };
    // As the data directory would be, when it holds the control socket.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err)?;
    }
    let (listener, adopted) = match super::claim_control(path) {
        Some(fd) => (UnixListener::from(fd), true),
        None => (bind(path, &shown)?, false),
    };
    listener.set_nonblocking(true).map_err(io_err)?;
    let opened = Opened {
        listener,
        path: path.to_owned(),
    };
    *OPENED.lock().unwrap_or_else(|e| e.into_inner()) = Some(opened);
    Ok(adopted)
}

/// Binds a new control socket, replacing a stale socket file (one nobody listens on).
fn bind(path: &Path, shown: &str) -> Result<UnixListener, OpenError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => {
            return Err(OpenError::NotASocket(shown.to_owned()));
        }
        Ok(_) => match UnixStream::connect(path) {
            Ok(_) => return Err(OpenError::InUse(shown.to_owned())),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!(path = shown, "replacing a stale control socket file");
                std::fs::remove_file(path).map_err(|e| io_error(shown, e))?;
            }
            Err(e) => return Err(io_error(shown, e)),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(shown, e)),
    }
    let listener = UnixListener::bind(path).map_err(|e| io_error(shown, e))?;
    // Only this user may connect; SO_PEERCRED checks every peer as well.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io_error(shown, e))?;
    Ok(listener)
}

fn io_error(path: &str, source: io::Error) -> OpenError {
    OpenError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The control socket, for the first reactor that asks.
pub(super) fn take_opened() -> Option<Opened> {
    OPENED.lock().unwrap_or_else(|e| e.into_inner()).take()
}
