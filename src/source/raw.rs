//! An image file or block device, read with positioned reads. Holes of sparse files
//! are found with `SEEK_DATA`/`SEEK_HOLE` and not read at all, and so are ranges the
//! caller knows to read as zero (the unmapped chunks of a thin snapshot).

use std::fs::File;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Why a source could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The source cannot be opened.
    #[error("cannot open source {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The source is neither a regular file nor a block device (a FIFO, a socket, a
    /// character device, a directory): it cannot be read at random offsets, and
    /// opening some of them blocks.
    #[error(
        "{path} is a {kind}, not a regular file or block device: thinarc reads sources at random offsets"
    )]
    NotBlockSource { path: PathBuf, kind: &'static str },
    /// A read failed.
    #[error("reading source {path} at offset {offset}: {source}")]
    Read {
        path: PathBuf,
        offset: u64,
        source: std::io::Error,
    },
    /// The source is shorter than the part of it that must be read.
    #[error("{path} holds {size} bytes, fewer than the {needed} needed")]
    TooShort {
        path: PathBuf,
        size: u64,
        needed: u64,
    },
    /// The source changed size while it was read.
    #[error(
        "source {path} changed size during the backup ({before} -> {after} bytes); nothing was committed, run the backup again"
    )]
    SizeChanged {
        path: PathBuf,
        before: u64,
        after: u64,
    },
    /// A reading or hashing task died.
    #[error("source reading task failed: {0}")]
    Task(String),
}

/// An opened image file or block device.
#[derive(Debug)]
pub struct RawSource {
    file: File,
    path: PathBuf,
    size: u64,
    is_device: bool,
    /// Byte ranges known to read as zero, sorted and disjoint: treated as holes.
    unmapped: Vec<Range<u64>>,
    /// Whether `size` is the whole file or device (else a prefix of it).
    whole: bool,
}

impl RawSource {
    /// Refuses `path` if it exists and is neither a regular file nor a block device,
    /// without opening it: callers check this before they write anything.
    ///
    /// # Errors
    /// [`SourceError::NotBlockSource`], or [`SourceError::Open`] if it cannot be
    /// examined (a missing path is left to [`open`](Self::open) to report).
    pub fn check_kind(path: &Path) -> Result<(), SourceError> {
        match std::fs::metadata(path) {
            Ok(m) => check_type(path, m.file_type()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(SourceError::Open {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Opens `path` read-only and finds its size. Opening never blocks: a FIFO or other
    /// special file is refused, not waited on.
    ///
    /// # Errors
    /// [`SourceError::Open`] or [`SourceError::NotBlockSource`].
    pub fn open(path: &Path) -> Result<Self, SourceError> {
        let open_err = |source| SourceError::Open {
            path: path.to_path_buf(),
            source,
        };
        Self::check_kind(path)?;
        // O_NONBLOCK: a FIFO swapped in after the check must not block the open; the
        // type is checked again on the descriptor, then blocking mode is restored.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        let ft = meta.file_type();
        check_type(path, ft)?;
        let is_device = ft.is_block_device();
        let fd = file.as_raw_fd();
        // SAFETY: fcntl on a descriptor we own touches no memory.
        let restored = unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) == 0
        };
        if !restored {
            return Err(open_err(std::io::Error::last_os_error()));
        }
        let mut src = RawSource {
            file,
            path: path.to_path_buf(),
            size: meta.len(),
            is_device,
            unmapped: Vec::new(),
            whole: true,
        };
        src.size = src.current_size().map_err(|e| match e {
            SourceError::Read { source, .. } => open_err(source),
            e => e,
        })?;
        Ok(src)
    }

    /// Declares byte ranges that read as zero (for example the unmapped chunks of a
    /// thin snapshot): they are treated as holes, not read, and become zero blocks.
    pub fn with_unmapped(mut self, ranges: Vec<Range<u64>>) -> Self {
        self.unmapped = crate::source::ReadPlan::from_ranges(ranges, u64::MAX)
            .ranges()
            .to_vec();
        self
    }

    /// The first `len` bytes only (e.g. the volume-sized start of a larger device).
    ///
    /// # Errors
    /// [`SourceError::TooShort`] when the source is shorter than `len`.
    pub fn prefix(self, len: u64) -> Result<Self, SourceError> {
        if len > self.size {
            return Err(SourceError::TooShort {
                path: self.path,
                size: self.size,
                needed: len,
            });
        }
        Ok(RawSource {
            size: len,
            whole: false,
            ..self
        })
    }

    /// Size in bytes when opened.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the source is a block device.
    pub fn is_device(&self) -> bool {
        self.is_device
    }

    /// The extents of stored data within `offset..end`, sorted and disjoint: the rest
    /// of that range reads as zero (holes of a sparse file, unmapped ranges) and is not
    /// read. Found before the range is read ([`read_extents`](Self::read_extents)), so
    /// that one thread can plan reads that others make.
    ///
    /// # Errors
    /// [`SourceError::Read`].
    pub fn data_extents(&self, offset: u64, end: u64) -> Result<Vec<Range<u64>>, SourceError> {
        let mut extents = Vec::new();
        let mut pos = offset;
        while pos < end {
            let Some((start, stop)) = self.next_data(pos, end)? else {
                break;
            };
            extents.push(start..stop);
            pos = stop;
        }
        Ok(extents)
    }

    /// Fills `buf` with the bytes at `offset`, whose stored data lies in `extents`
    /// (from [`data_extents`](Self::data_extents) on the same range): reads those and
    /// zero-fills the rest. A short read past the end of the source is an error: the
    /// source shrank. Returns the number of bytes actually read from the source.
    ///
    /// # Errors
    /// [`SourceError::Read`], or [`SourceError::SizeChanged`] if the source is shorter
    /// than an extent.
    pub fn read_extents(
        &self,
        offset: u64,
        buf: &mut [u8],
        extents: &[Range<u64>],
    ) -> Result<u64, SourceError> {
        let at = |pos: u64| (pos - offset) as usize;
        let (mut pos, mut read) = (offset, 0);
        for e in extents {
            buf[at(pos)..at(e.start)].fill(0);
            self.read_exact_at(&mut buf[at(e.start)..at(e.end)], e.start)?;
            read += e.end - e.start;
            pos = e.end;
        }
        buf[at(pos)..].fill(0);
        Ok(read)
    }

    /// Offset of the first data byte in `pos..end`, or `end` if that range is a hole
    /// (always `pos` for devices and file systems without hole support).
    ///
    /// # Errors
    /// [`SourceError::Read`].
    pub fn data_start(&self, pos: u64, end: u64) -> Result<u64, SourceError> {
        Ok(self.next_data(pos, end)?.map_or(end, |(start, _)| start))
    }

    fn read_exact_at(&self, mut dst: &mut [u8], mut at: u64) -> Result<(), SourceError> {
        while !dst.is_empty() {
            match self.file.read_at(dst, at) {
                Ok(0) => return Err(self.size_changed()),
                Ok(n) => {
                    dst = &mut dst[n..];
                    at += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(SourceError::Read {
                        path: self.path.clone(),
                        offset: at,
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// The next data extent within `pos..end` as `(start, end)`, or `None` when the
    /// rest is a hole or unmapped.
    fn next_data(&self, mut pos: u64, end: u64) -> Result<Option<(u64, u64)>, SourceError> {
        loop {
            // Skip an unmapped range covering `pos`.
            let i = self.unmapped.partition_point(|r| r.end <= pos);
            if let Some(r) = self.unmapped.get(i).filter(|r| r.start <= pos) {
                pos = r.end;
            }
            if pos >= end {
                return Ok(None);
            }
            let Some((start, stop)) = self.next_stored_data(pos, end)? else {
                return Ok(None);
            };
            let i = self.unmapped.partition_point(|r| r.end <= start);
            match self.unmapped.get(i) {
                // The extent starts inside an unmapped range: look after it.
                Some(r) if r.start <= start => pos = r.end,
                Some(r) => return Ok(Some((start, stop.min(r.start)))),
                None => return Ok(Some((start, stop))),
            }
        }
    }

    /// The next extent of stored data within `pos..end`, or `None` when the rest is a
    /// hole. Devices and file systems without hole support are all data.
    fn next_stored_data(&self, pos: u64, end: u64) -> Result<Option<(u64, u64)>, SourceError> {
        if self.is_device {
            return Ok(Some((pos, end)));
        }
        let err = |source| SourceError::Read {
            path: self.path.clone(),
            offset: pos,
            source,
        };
        let data = match self.lseek(pos, libc::SEEK_DATA) {
            Ok(d) => d,
            // No data after `pos`: the rest is a hole (or the file ended early, which
            // the size check after the backup reports).
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(Some((pos, end))),
            Err(e) => return Err(err(e)),
        };
        if data >= end {
            return Ok(None);
        }
        let hole = self.lseek(data, libc::SEEK_HOLE).map_err(err)?;
        Ok(Some((data, hole.clamp(data, end))))
    }

    fn lseek(&self, offset: u64, whence: libc::c_int) -> std::io::Result<u64> {
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: lseek on a descriptor we own touches no memory; positioned reads do
        // not depend on the file offset it moves.
        let r = unsafe { libc::lseek(self.file.as_raw_fd(), offset, whence) };
        u64::try_from(r).map_err(|_| std::io::Error::last_os_error())
    }

    fn size_changed(&self) -> SourceError {
        SourceError::SizeChanged {
            path: self.path.clone(),
            before: self.size,
            after: self.current_size().unwrap_or(0),
        }
    }

    /// The size now (to detect a source that changed size during a backup).
    ///
    /// # Errors
    /// [`SourceError::Read`] if it cannot be determined.
    pub fn current_size(&self) -> Result<u64, SourceError> {
        let err = |source| SourceError::Read {
            path: self.path.clone(),
            offset: 0,
            source,
        };
        if self.is_device {
            self.lseek(0, libc::SEEK_END).map_err(err)
        } else {
            self.file.metadata().map(|m| m.len()).map_err(err)
        }
    }

    /// Fails if the source's size is no longer the size it had when opened (or, for a
    /// [`prefix`](Self::prefix), if it became shorter than the prefix).
    ///
    /// # Errors
    /// [`SourceError::SizeChanged`].
    pub fn check_size(&self) -> Result<(), SourceError> {
        let now = self.current_size()?;
        if now != self.size && (self.whole || now < self.size) {
            return Err(SourceError::SizeChanged {
                path: self.path.clone(),
                before: self.size,
                after: now,
            });
        }
        Ok(())
    }
}

/// What a file of type `ft` is, in words: `regular file`, `block device`, `fifo`,
/// `socket`, `character device`, `directory` or `symlink`.
pub fn file_kind(ft: std::fs::FileType) -> &'static str {
    if ft.is_file() {
        "regular file"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_dir() {
        "directory"
    } else if ft.is_symlink() {
        "symlink"
    } else {
        "special file"
    }
}

/// Refuses a type that is neither a regular file nor a block device.
fn check_type(path: &Path, ft: std::fs::FileType) -> Result<(), SourceError> {
    if ft.is_file() || ft.is_block_device() {
        Ok(())
    } else {
        Err(SourceError::NotBlockSource {
            path: path.to_path_buf(),
            kind: file_kind(ft),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_files_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("f");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = RawSource::open(&fifo).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{} is a fifo, not a regular file or block device: thinarc reads sources at random offsets",
                fifo.display()
            )
        );
        let e = RawSource::open(dir.path()).unwrap_err();
        assert!(
            e.to_string().contains("is a directory, not a regular file"),
            "{e}"
        );
        let e = RawSource::open(Path::new("/dev/null")).unwrap_err();
        assert!(e.to_string().contains("is a character device, not"), "{e}");
        let sock = dir.path().join("s");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let e = RawSource::check_kind(&sock).unwrap_err();
        assert!(e.to_string().contains("is a socket, not"), "{e}");
        assert!(RawSource::check_kind(&dir.path().join("missing")).is_ok());
    }

    #[test]
    fn unmapped_ranges_read_as_zero_and_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        std::fs::write(&path, vec![7u8; 100]).unwrap();
        let src =
            RawSource::open(&path)
                .unwrap()
                .with_unmapped(vec![40..60, 10..20, 15..25, 90..200]);
        let mut buf = vec![1u8; 100];
        let extents = src.data_extents(0, 100).unwrap();
        assert_eq!(extents, vec![0..10, 25..40, 60..90]);
        assert_eq!(
            src.read_extents(0, &mut buf, &extents).unwrap(),
            100 - 15 - 20 - 10
        );
        let expect: Vec<u8> = (0..100u64)
            .map(|i| {
                if (10..25).contains(&i) || (40..60).contains(&i) || i >= 90 {
                    0
                } else {
                    7
                }
            })
            .collect();
        assert_eq!(buf, expect);
        assert_eq!(src.data_start(10, 100).unwrap(), 25);
        assert_eq!(src.data_start(40, 60).unwrap(), 60);
        assert_eq!(src.data_start(90, 100).unwrap(), 100);
        assert_eq!(src.next_data(30, 100).unwrap(), Some((30, 40)));
    }
}
