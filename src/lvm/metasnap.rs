//! The pool's metadata snapshot (`reserve_metadata_snap`), released on every path,
//! and a per-pool lock that makes thinarc runs take turns with it.
//!
//! A pool has at most one metadata snapshot. Two thinarc runs on volumes of the same
//! pool would otherwise release each other's; with the lock held, a snapshot found
//! reserved is known to be left over by a killed run.

use std::fs::File;
use std::os::fd::AsRawFd;

use super::{LvmError, run_tool};

/// An exclusive lock on a pool (`flock` on `/run/lock/thinarc-<pool>.lock`), held
/// until dropped. The kernel releases it when the process dies.
#[derive(Debug)]
pub struct PoolLock {
    _file: File,
}

impl PoolLock {
    /// Waits for and takes the lock of the pool with device-mapper name `pool_dm`.
    ///
    /// # Errors
    /// [`LvmError::Unusable`] if the lock file cannot be opened or locked.
    pub fn acquire(pool_dm: &str) -> Result<Self, LvmError> {
        let dir = std::path::Path::new("/run/lock");
        let path = dir.join(format!("thinarc-{pool_dm}.lock"));
        let err =
            |e: std::io::Error| LvmError::Unusable(format!("cannot lock {}: {e}", path.display()));
        std::fs::create_dir_all(dir).map_err(err)?;
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(err)?;
        // SAFETY: flock on a descriptor we own touches no memory.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        Ok(PoolLock { _file: file })
    }
}

/// A reserved metadata snapshot of a pool; released when dropped (on success, on
/// error and when the command is interrupted and unwinds). Release runs `dmsetup`
/// synchronously: Drop cannot await, and the release must happen before the process
/// exits.
#[derive(Debug)]
pub struct MetadataSnapshot {
    tpool: String,
    held: bool,
}

fn message(tpool: &str, msg: &str) -> Result<(), LvmError> {
    run_tool("dmsetup", &["message", tpool, "0", msg]).map(drop)
}

impl MetadataSnapshot {
    /// Reserves the metadata snapshot of the pool whose `-tpool` device-mapper device
    /// is `tpool` (e.g. `vg-pool-tpool`).
    ///
    /// # Errors
    /// [`LvmError`] (for example when one is reserved already).
    pub fn reserve(tpool: &str) -> Result<Self, LvmError> {
        message(tpool, "reserve_metadata_snap")?;
        Ok(MetadataSnapshot {
            tpool: tpool.into(),
            held: true,
        })
    }

    /// Releases a metadata snapshot left reserved (by a killed run).
    ///
    /// # Errors
    /// [`LvmError`].
    pub fn release_stale(tpool: &str) -> Result<(), LvmError> {
        message(tpool, "release_metadata_snap")
    }

    /// Releases it, reporting a failure.
    ///
    /// # Errors
    /// [`LvmError`]: the snapshot may still be reserved; the next run releases it.
    pub fn release(mut self) -> Result<(), LvmError> {
        self.held = false;
        message(&self.tpool, "release_metadata_snap")
    }
}

impl Drop for MetadataSnapshot {
    fn drop(&mut self) {
        let _cleanup = crate::cleanup::guard();
        if self.held
            && let Err(e) = message(&self.tpool, "release_metadata_snap")
        {
            eprintln!(
                "warning: releasing the metadata snapshot of {} failed: {e}; the next run releases it",
                self.tpool
            );
        }
    }
}
