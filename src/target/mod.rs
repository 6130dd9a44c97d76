//! Where restored blocks go: a new image file (written under a temporary name and
//! renamed into place when complete), an existing image file, a block device, or an
//! LV ([`lv`], found or created, then written as a block device).
//!
//! A target only writes what it is given at the offsets it is given; it knows nothing
//! of archives.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

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
    #[error("target {path} is not an image file or block device")]
    NotBlockTarget { path: PathBuf },
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

/// An open restore target.
#[derive(Debug)]
pub struct FileTarget {
    file: File,
    path: PathBuf,
    temp: Option<PathBuf>,
    kind: TargetKind,
    size: u64,
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
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let name = path
                    .file_name()
                    .ok_or_else(|| open_err(std::io::ErrorKind::InvalidInput.into()))?;
                let temp = path.with_file_name(format!(
                    ".{}.thinarc-{}.tmp",
                    name.to_string_lossy(),
                    &crate::repo::new_id()[..8]
                ));
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&temp)
                    .map_err(open_err)?;
                let t = FileTarget {
                    file,
                    path: path.to_path_buf(),
                    temp: Some(temp),
                    kind: TargetKind::NewFile,
                    size,
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
                Ok(FileTarget {
                    file,
                    path: path.to_path_buf(),
                    temp: None,
                    kind,
                    size,
                })
            }
        }
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
            let _ = std::fs::remove_file(temp);
        }
    }
}
