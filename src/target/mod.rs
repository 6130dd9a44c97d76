//! Where restored blocks go: a new image file (written under a temporary name and
//! renamed into place when complete), an existing image file, a block device, or an
//! LV ([`lv`], found or created, then written as a block device).
//!
//! A target only writes what it is given at the offsets it is given; it knows nothing
//! of archives.
//!
//! The temporary file of a new target is named `.NAME.thinarc-XXXXXXXX.tmp` beside it
//! and `flock`ed while it is written. A restore killed with SIGKILL leaves it behind;
//! the next restore to that target removes every such file whose lock is free (its
//! writer is gone) and leaves one that is locked (a restore still running) alone.
//!
//! Nouns floor (with `repo` and `source`). Imports only `cleanup`, `lvm`, `repo` and
//! `source` (for fresh ids and the names of file kinds, nothing of archives); must not
//! import `point`, a command module or `cli`.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

use crate::source::file_kind;

pub mod lv;

/// Why a target could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// The target cannot be opened or created.
    #[error("cannot open target {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The target is neither a regular file nor a block device.
    #[error("target {path} is a {kind}, not a regular file or block device")]
    NotBlockTarget { path: PathBuf, kind: &'static str },
    /// The target is smaller than the volume.
    #[error(
        "target {path} is {have} bytes, the volume needs {need}; use a larger target or a new file name"
    )]
    TooSmall { path: PathBuf, have: u64, need: u64 },
    /// Writing failed.
    #[error("writing target {path} at offset {offset}: {source}")]
    Write {
        path: PathBuf,
        offset: u64,
        source: std::io::Error,
    },
}

/// What kind of target is being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// A file that did not exist: zero blocks stay holes.
    NewFile,
    /// A file that existed: zero blocks are punched out (they read back as zero).
    ExistingFile,
    /// A block device: zero blocks are zeroed with `BLKZEROOUT` (or written).
    BlockDevice,
    /// A block device known to read zero everywhere (a new thin LV): zero blocks are
    /// left alone.
    FreshDevice,
}

/// What a restore does with the bytes of an existing target past the volume's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum BeyondVolume {
    /// A file is cut to the volume's size: it then holds exactly the image.
    Trimmed {
        /// Bytes removed.
        bytes: u64,
    },
    /// A device cannot shrink: its last bytes are not written.
    Untouched {
        /// Bytes past the volume's end.
        bytes: u64,
    },
}

/// An open restore target.
#[derive(Debug)]
pub struct FileTarget {
    file: File,
    path: PathBuf,
    temp: Option<PathBuf>,
    kind: TargetKind,
    size: u64,
    beyond: Option<BeyondVolume>,
    notices: Vec<String>,
}

/// Temporary files of new targets not yet finished, removed by [`remove_unfinished`].
static UNFINISHED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Removes the temporary files of every unfinished new target of this process (on a
/// signal, before the process exits, whatever its threads are doing).
pub fn remove_unfinished() {
    let temps = std::mem::take(&mut *UNFINISHED.lock().unwrap_or_else(|e| e.into_inner()));
    for t in temps {
        let _ = std::fs::remove_file(t);
    }
}

fn forget_unfinished(temp: &Path) {
    UNFINISHED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|t| t != temp);
}

/// The prefix of the temporary files of new target `name`.
fn temp_prefix(name: &std::ffi::OsStr) -> String {
    format!(".{}.thinarc-", name.to_string_lossy())
}

/// Removes the temporary files that killed restores to `path` left beside it (their
/// `flock` is free) and describes what it found, one line each. A temporary file whose
/// lock is held belongs to a restore still running, and is left alone.
fn remove_leftovers(path: &Path) -> Vec<String> {
    let (Some(name), dir) = (path.file_name(), path.parent()) else {
        return Vec::new();
    };
    let dir = dir
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let prefix = temp_prefix(name);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut notices = Vec::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let n = file_name.to_string_lossy();
        if !(n.starts_with(&prefix) && n.ends_with(".tmp")) {
            continue;
        }
        // Named as the target is (relative stays relative).
        let leftover = path.with_file_name(&file_name);
        let Ok(file) = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&leftover)
        else {
            continue;
        };
        let size = file.metadata().map_or(0, |m| m.len());
        if try_lock(&file) {
            if std::fs::remove_file(&leftover).is_ok() {
                notices.push(format!(
                    "removed {} ({size} bytes), the temporary file of an interrupted restore to {}",
                    leftover.display(),
                    path.display()
                ));
            }
        } else {
            notices.push(format!(
                "{} is being written by another restore to {} (its lock is held): left alone; the restore that finishes last is kept",
                leftover.display(),
                path.display()
            ));
        }
    }
    notices
}

/// Takes an exclusive `flock` on `file` without waiting; false if another holds it.
fn try_lock(file: &File) -> bool {
    // SAFETY: flock on a descriptor we own touches no memory.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Creates the locked temporary file of new target `path`: created, `flock`ed, and
/// checked to still be in place (a concurrent restore's leftover cleaning could have
/// removed it between the two steps, as its lock was still free).
fn create_temp(path: &Path) -> std::io::Result<(File, PathBuf)> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    loop {
        let temp = path.with_file_name(format!(
            "{}{}.tmp",
            temp_prefix(name),
            &crate::repo::new_id()[..8]
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        if !try_lock(&file) {
            match std::io::Error::last_os_error().raw_os_error() {
                // Another restore's leftover cleaning holds it and removes it: start over.
                Some(libc::EWOULDBLOCK) => continue,
                // A file system without locks: the file stays unlocked, and leftover
                // cleaning (whose lock fails the same way) leaves such files alone.
                _ => return Ok((file, temp)),
            }
        }
        let mine = file.metadata()?;
        match std::fs::symlink_metadata(&temp) {
            Ok(m) if m.dev() == mine.dev() && m.ino() == mine.ino() => return Ok((file, temp)),
            _ => continue,
        }
    }
}

/// `BLKZEROOUT` = `_IO(0x12, 127)`: zero a byte range of a block device.
const BLKZEROOUT: libc::c_ulong = 0x127f;

impl FileTarget {
    /// Opens `path` to receive a volume of `size` bytes. A missing file is created
    /// under a temporary name beside it.
    ///
    /// # Errors
    /// [`TargetError::Open`], [`TargetError::NotBlockTarget`] or
    /// [`TargetError::TooSmall`].
    pub fn open(path: &Path, size: u64) -> Result<Self, TargetError> {
        FileTarget::open_with(path, size, false)
    }

    /// [`open`](Self::open), but an existing regular file smaller than `size` is
    /// extended rather than refused: a replica file follows a volume that grew
    /// (`restore --since`). Block devices must still be large enough.
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn open_growing(path: &Path, size: u64) -> Result<Self, TargetError> {
        FileTarget::open_with(path, size, true)
    }

    fn open_with(path: &Path, size: u64, grow: bool) -> Result<Self, TargetError> {
        let open_err = |source| TargetError::Open {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path);
        let notices = match &meta {
            Ok(m) if m.file_type().is_block_device() => Vec::new(),
            _ => remove_leftovers(path),
        };
        match meta {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (file, temp) = create_temp(path).map_err(open_err)?;
                UNFINISHED
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(temp.clone());
                let t = FileTarget {
                    file,
                    path: path.to_path_buf(),
                    temp: Some(temp),
                    kind: TargetKind::NewFile,
                    size,
                    beyond: None,
                    notices,
                };
                t.file.set_len(size).map_err(|source| TargetError::Write {
                    path: path.to_path_buf(),
                    offset: size,
                    source,
                })?;
                Ok(t)
            }
            Err(e) => Err(open_err(e)),
            Ok(m) => {
                let kind = if m.file_type().is_block_device() {
                    TargetKind::BlockDevice
                } else if m.is_file() {
                    TargetKind::ExistingFile
                } else {
                    return Err(TargetError::NotBlockTarget {
                        path: path.to_path_buf(),
                        kind: file_kind(m.file_type()),
                    });
                };
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(open_err)?;
                let have = if kind == TargetKind::BlockDevice {
                    // SAFETY: lseek on our own descriptor touches no memory.
                    let r = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_END) };
                    u64::try_from(r).map_err(|_| open_err(std::io::Error::last_os_error()))?
                } else {
                    m.len()
                };
                if have < size && !(grow && kind == TargetKind::ExistingFile) {
                    return Err(TargetError::TooSmall {
                        path: path.to_path_buf(),
                        have,
                        need: size,
                    });
                }
                let extra = have.saturating_sub(size);
                Ok(FileTarget {
                    file,
                    path: path.to_path_buf(),
                    temp: None,
                    kind,
                    size,
                    beyond: (extra > 0).then_some(if kind == TargetKind::ExistingFile {
                        BeyondVolume::Trimmed { bytes: extra }
                    } else {
                        BeyondVolume::Untouched { bytes: extra }
                    }),
                    notices,
                })
            }
        }
    }

    /// What [`finish`](Self::finish) does with the bytes of an existing target past
    /// the volume's size, if it has any.
    pub fn beyond_volume(&self) -> Option<BeyondVolume> {
        self.beyond
    }

    /// What opening found beside the target: leftover temporary files of killed
    /// restores removed, or another restore's left alone. One line each.
    pub fn notices(&self) -> &[String] {
        &self.notices
    }

    /// Declares a block device target to read zero everywhere (a new thin LV), so zero
    /// blocks are not written. No effect on files.
    pub fn assume_zeroed(mut self) -> Self {
        if self.kind == TargetKind::BlockDevice {
            self.kind = TargetKind::FreshDevice;
        }
        self
    }

    /// Device and inode of an existing target (`rdev` for a device), to recognise the
    /// backup's own source.
    pub fn identity(path: &Path) -> Option<(u64, u64)> {
        let m = std::fs::metadata(path).ok()?;
        Some(if m.file_type().is_block_device() {
            (u64::MAX, m.rdev())
        } else {
            (m.dev(), m.ino())
        })
    }

    fn write_err(&self, offset: u64) -> impl FnOnce(std::io::Error) -> TargetError + '_ {
        move |source| TargetError::Write {
            path: self.path.clone(),
            offset,
            source,
        }
    }

    /// Writes `data` at `offset`.
    ///
    /// # Errors
    /// [`TargetError::Write`].
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), TargetError> {
        self.file
            .write_all_at(data, offset)
            .map_err(self.write_err(offset))
    }

    /// Makes `len` bytes at `offset` read as zero: nothing to do on a new file (holes),
    /// a punched hole on an existing file, `BLKZEROOUT` on a device; zeros are written
    /// where those are not supported.
    ///
    /// # Errors
    /// [`TargetError::Write`].
    pub fn zero(&self, offset: u64, len: u64) -> Result<(), TargetError> {
        let fd = self.file.as_raw_fd();
        let done = match self.kind {
            TargetKind::NewFile | TargetKind::FreshDevice => true,
            TargetKind::ExistingFile => {
                // SAFETY: fallocate on our own descriptor touches no memory.
                let r = unsafe {
                    libc::fallocate(
                        fd,
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        offset as libc::off_t,
                        len as libc::off_t,
                    )
                };
                r == 0
            }
            TargetKind::BlockDevice => {
                let range: [u64; 2] = [offset, len];
                // SAFETY: BLKZEROOUT reads two u64 from the pointer we pass, which
                // points at `range`, alive for the call.
                let r = unsafe { libc::ioctl(fd, BLKZEROOUT, range.as_ptr()) };
                r == 0
            }
        };
        if !done {
            static ZEROS: [u8; 1 << 16] = [0; 1 << 16];
            let mut at = offset;
            while at < offset + len {
                let n = (offset + len - at).min(ZEROS.len() as u64);
                self.write_at(at, &ZEROS[..n as usize])?;
                at += n;
            }
        }
        Ok(())
    }

    /// Starts writing `len` bytes at `offset`, already written, to the disk without
    /// waiting for it (`sync_file_range`), so that the disk works while the restore
    /// goes on and [`finish`](Self::finish)'s fsync has little left to do. A hint:
    /// failures are ignored here and reported by that fsync.
    pub fn start_writeback(&self, offset: u64, len: u64) {
        // SAFETY: sync_file_range on our own descriptor touches no memory.
        unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                offset as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }

    /// Makes the target durable and final: trims an existing larger file to the volume
    /// size, fsyncs, and renames a new file into place.
    ///
    /// # Errors
    /// [`TargetError::Write`] or [`TargetError::Open`] (the rename failed).
    pub fn finish(mut self) -> Result<(), TargetError> {
        if self.kind == TargetKind::ExistingFile {
            self.file
                .set_len(self.size)
                .map_err(self.write_err(self.size))?;
        }
        self.file.sync_all().map_err(self.write_err(0))?;
        if let Some(temp) = self.temp.take() {
            forget_unfinished(&temp);
            if let Err(source) = std::fs::rename(&temp, &self.path) {
                let _ = std::fs::remove_file(&temp);
                return Err(TargetError::Open {
                    path: self.path.clone(),
                    source,
                });
            }
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(self.write_err(0))?;
            }
        }
        Ok(())
    }
}

impl Drop for FileTarget {
    /// A new file that was not finished is removed: a failed restore leaves nothing.
    fn drop(&mut self) {
        if let Some(temp) = &self.temp {
            forget_unfinished(temp);
            let _ = std::fs::remove_file(temp);
        }
    }
}
