//! The run lock: one `thinarc run` per host at a time. A nightly run that is still
//! going when the next one is due (a slow upload, a huge first backup) must not be
//! joined by a second one; the second exits at once and says who holds the lock.
//!
//! It is an exclusive `flock` on `<state-dir>/run.lock`, released by the kernel when
//! the process ends however it ends, so a crashed run never leaves it behind. The file
//! holds the holder's pid and start time for the message.

use std::fs::File;
use std::io::{Read as _, Seek as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::path::Path;

/// Another `thinarc run` holds the run lock.
#[derive(Debug, thiserror::Error)]
#[error("another thinarc run is still going ({holder}); not starting a second one (lock {path})")]
pub struct RunLocked {
    /// Who holds it: `pid N since TIME`.
    pub holder: String,
    /// The lock file.
    pub path: String,
}

/// Why the run lock cannot be taken.
#[derive(Debug, thiserror::Error)]
pub enum RunLockError {
    /// Another run holds it.
    #[error(transparent)]
    Locked(#[from] RunLocked),
    /// The state directory or lock file cannot be used.
    #[error("{0}")]
    Io(String),
}

/// A held run lock; released on drop (or process exit).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Takes the run lock in `state_dir` (created if missing) without waiting.
    ///
    /// # Errors
    /// [`RunLockError::Locked`] naming the holder when another run holds it, or the
    /// I/O error.
    pub fn acquire(state_dir: &Path) -> Result<RunLock, RunLockError> {
        std::fs::create_dir_all(state_dir).map_err(|e| {
            RunLockError::Io(format!(
                "cannot create state directory {}: {e}",
                state_dir.display()
            ))
        })?;
        let path = state_dir.join("run.lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| RunLockError::Io(format!("cannot open {}: {e}", path.display())))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(RunLocked {
                holder: holder.trim().to_string(),
                path: path.display().to_string(),
            }
            .into());
        }
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = write!(
            file,
            "pid {} since {}",
            std::process::id(),
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        Ok(RunLock { _file: file })
    }
}
