//! The copy-on-write overlay of `serve --overlay FILE`: writes, trims and zeroes go to
//! a local sparse file; reads take the written parts from it and the rest from the
//! point. The repository is never written.
//!
//! The overlay works in [`GRANULE`]-byte granules: a write that covers part of an
//! unwritten granule first copies the point's bytes of that granule in. Which granules
//! were written is a set of ranges in memory (it grows with what was written, not with
//! the volume), saved next to the data as `FILE.map` on every flush and when serving
//! ends, so that a later `serve --overlay FILE` of the same point goes on where this
//! one stopped. The map's first line names the point; an overlay of another point, or
//! a data file without its map, is refused.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tokio::sync::RwLock;

use crate::point::{RandomError, RandomReader};

/// The overlay's unit of copy-on-write.
pub const GRANULE: u64 = 4096;

/// Why an overlay cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OverlayError {
    /// The file or its map cannot be read or written.
    #[error("overlay {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The map is missing, unreadable, or names another point.
    #[error("overlay {path}: {detail}")]
    Mismatch { path: String, detail: String },
    /// Reading the point failed.
    #[error(transparent)]
    Read(#[from] RandomError),
}

/// Written granule ranges, in bytes, merged: start -> end.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Written(BTreeMap<u64, u64>);

impl Written {
    /// Marks `r` (granule-aligned) written, merging neighbours.
    fn insert(&mut self, r: Range<u64>) {
        let (mut start, mut end) = (r.start, r.end);
        let touching: Vec<(u64, u64)> = self
            .0
            .range(..=end)
            .rev()
            .take_while(|(_, e)| **e >= start)
            .map(|(s, e)| (*s, *e))
            .collect();
        for (s, e) in touching {
            self.0.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        self.0.insert(start, end);
    }

    /// The parts of `r`, in order, each with whether it was written.
    pub(super) fn split(&self, r: Range<u64>) -> Vec<(Range<u64>, bool)> {
        let mut out = Vec::new();
        let mut pos = r.start;
        let first = self
            .0
            .range(..=r.start)
            .next_back()
            .map_or(r.start, |(s, _)| *s);
        for (&s, &e) in self.0.range(first..r.end) {
            if e <= pos {
                continue;
            }
            if s > pos {
                out.push((pos..s.min(r.end), false));
            }
            let until = e.min(r.end);
            out.push((pos.max(s)..until, true));
            pos = until;
            if pos >= r.end {
                break;
            }
        }
        if pos < r.end {
            out.push((pos..r.end, false));
        }
        out
    }

    fn contains(&self, granule: u64) -> bool {
        self.0
            .range(..=granule)
            .next_back()
            .is_some_and(|(_, e)| *e > granule)
    }

    fn encode(&self, identity: &str) -> String {
        let mut s = format!("{identity}\n");
        for (a, b) in &self.0 {
            s.push_str(&format!("{a} {b}\n"));
        }
        s
    }

    fn decode(text: &str, identity: &str) -> Result<Written, String> {
        let mut lines = text.lines();
        let first = lines.next().unwrap_or_default();
        if first != identity {
            return Err(format!(
                "was made for another point ({first:?}, this is {identity:?}): name another overlay file"
            ));
        }
        let mut w = Written::default();
        for line in lines {
            let parsed = line
                .split_once(' ')
                .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
            match parsed {
                Some((a, b)) if a < b && a % GRANULE == 0 => w.insert(a..b),
                _ => return Err(format!("map line {line:?} is not `START END`")),
            }
        }
        Ok(w)
    }
}

/// A copy-on-write overlay over a point.
pub struct Overlay {
    file: File,
    path: PathBuf,
    map_path: PathBuf,
    /// The first line of the map: which point this overlays.
    identity: String,
    size: u64,
    written: RwLock<Written>,
}

impl Overlay {
    /// Opens (or creates, sparse) the overlay `path` of the point named by `identity`
    /// (`size` bytes).
    ///
    /// # Errors
    /// [`OverlayError::Io`], [`OverlayError::Mismatch`].
    pub fn open(path: &Path, identity: String, size: u64) -> Result<Overlay, OverlayError> {
        let io = |source| OverlayError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut map_path = path.as_os_str().to_owned();
        map_path.push(".map");
        let map_path = PathBuf::from(map_path);
        let exists = std::fs::metadata(path).is_ok_and(|m| m.len() > 0);
        let written = match std::fs::read_to_string(&map_path) {
            Ok(text) => {
                Written::decode(&text, &identity).map_err(|detail| OverlayError::Mismatch {
                    path: path.display().to_string(),
                    detail,
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !exists => Written::default(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(OverlayError::Mismatch {
                    path: path.display().to_string(),
                    detail: format!(
                        "holds data but its map {} is missing: name a new overlay file",
                        map_path.display()
                    ),
                });
            }
            Err(e) => return Err(io(e)),
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        file.set_len(size).map_err(io)?;
        let o = Overlay {
            file,
            path: path.to_owned(),
            map_path,
            identity,
            size,
            written: RwLock::new(written),
        };
        o.save_map(&o.written.try_read().expect("not shared yet"))?;
        Ok(o)
    }

    fn io(&self, source: std::io::Error) -> OverlayError {
        OverlayError::Io {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// Fills `out` from `offset`: written parts from the overlay, the rest from the
    /// point.
    ///
    /// # Errors
    /// As [`RandomReader::read`]; [`OverlayError::Io`].
    pub async fn read(
        &self,
        base: &RandomReader,
        offset: u64,
        out: &mut [u8],
    ) -> Result<(), OverlayError> {
        let written = self.written.read().await;
        for (r, w) in written.split(offset..offset + out.len() as u64) {
            let dst = &mut out[(r.start - offset) as usize..(r.end - offset) as usize];
            if w {
                self.file
                    .read_exact_at(dst, r.start)
                    .map_err(|e| self.io(e))?;
            } else {
                base.read(r.start, dst).await?;
            }
        }
        Ok(())
    }

    /// Writes `data` at `offset` (`None`: zeroes, as a trim or write-zeroes asks).
    ///
    /// # Errors
    /// [`OverlayError`].
    pub async fn write(
        &self,
        base: &RandomReader,
        offset: u64,
        len: u64,
        data: Option<&[u8]>,
        sync: bool,
    ) -> Result<(), OverlayError> {
        let mut written = self.written.write().await;
        let end = offset + len;
        let span = offset / GRANULE * GRANULE..end.div_ceil(GRANULE).saturating_mul(GRANULE);
        // Copy in the point's bytes of the partly covered granules not yet written.
        for g in [span.start, span.end.saturating_sub(GRANULE)] {
            let covered = g >= offset && (g + GRANULE).min(self.size) <= end;
            if g < self.size && !covered && !written.contains(g) {
                let mut buf = vec![0; (GRANULE.min(self.size - g)) as usize];
                base.read(g, &mut buf).await?;
                self.file.write_all_at(&buf, g).map_err(|e| self.io(e))?;
            }
        }
        match data {
            Some(d) => self.file.write_all_at(d, offset).map_err(|e| self.io(e))?,
            None => self.zero(offset, len)?,
        }
        written.insert(span);
        if sync {
            self.file.sync_data().map_err(|e| self.io(e))?;
        }
        Ok(())
    }

    /// Zeroes `len` bytes at `offset`: whole granules become holes again.
    fn zero(&self, offset: u64, len: u64) -> Result<(), OverlayError> {
        let end = offset + len;
        let inner = offset.div_ceil(GRANULE) * GRANULE..end / GRANULE * GRANULE;
        let zeros = |r: Range<u64>| -> Result<(), OverlayError> {
            if r.start < r.end {
                let buf = vec![0; (r.end - r.start) as usize];
                self.file
                    .write_all_at(&buf, r.start)
                    .map_err(|e| self.io(e))?;
            }
            Ok(())
        };
        if inner.start >= inner.end {
            return zeros(offset..end);
        }
        zeros(offset..inner.start)?;
        zeros(inner.end..end)?;
        use std::os::fd::AsRawFd;
        // SAFETY: fallocate on our own descriptor touches no memory.
        let r = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                inner.start as libc::off_t,
                (inner.end - inner.start) as libc::off_t,
            )
        };
        if r != 0 {
            // A file system without hole punching: write the zeroes.
            zeros(inner)?;
        }
        Ok(())
    }

    /// Makes the data durable and saves the map.
    ///
    /// # Errors
    /// [`OverlayError::Io`].
    pub async fn flush(&self) -> Result<(), OverlayError> {
        let written = self.written.read().await;
        self.file.sync_all().map_err(|e| self.io(e))?;
        self.save_map(&written)
    }

    /// The written ranges (for block status).
    pub(super) async fn written(&self) -> tokio::sync::RwLockReadGuard<'_, Written> {
        self.written.read().await
    }

    /// Writes the map to a temporary file, syncs it and renames it into place.
    fn save_map(&self, written: &Written) -> Result<(), OverlayError> {
        let io = |source| OverlayError::Io {
            path: self.map_path.display().to_string(),
            source,
        };
        let mut tmp = self.map_path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(written.encode(&self.identity).as_bytes())
            .map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.map_path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_ranges_merge_and_split() {
        let mut w = Written::default();
        w.insert(4096..8192);
        w.insert(16384..20480);
        w.insert(8192..12288);
        assert_eq!(w.0.len(), 2);
        assert_eq!(
            w.split(0..24576),
            vec![
                (0..4096, false),
                (4096..12288, true),
                (12288..16384, false),
                (16384..20480, true),
                (20480..24576, false)
            ]
        );
        assert_eq!(w.split(5000..6000), vec![(5000..6000, true)]);
        assert_eq!(
            w.split(13000..17000),
            vec![(13000..16384, false), (16384..17000, true)]
        );
        w.insert(0..20480);
        assert_eq!(w.0.len(), 1);
        assert!(w.contains(0) && w.contains(16384) && !w.contains(20480));
    }

    #[test]
    fn the_map_names_its_point() {
        let mut w = Written::default();
        w.insert(0..4096);
        let text = w.encode("v seq 2");
        assert_eq!(Written::decode(&text, "v seq 2"), Ok(w));
        assert_eq!(
            Written::decode(&text, "v seq 3"),
            Err("was made for another point (\"v seq 2\", this is \"v seq 3\"): name another overlay file".into())
        );
        assert!(Written::decode("v seq 2\n1 2\n", "v seq 2").is_err());
    }
}
