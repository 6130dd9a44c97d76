//! What a write-only host keeps of the last point it wrote (FORMAT.md section 18,
//! write-only hosts): with only the writer key it cannot read an archive's index, so
//! the block digests (keyed) of the point it just committed are kept in its state
//! directory, per repository and volume, and the next backup compares blocks with
//! them. The state holds the point's seq, archive id and image digest: it is used
//! only while the volume's newest point is that one; otherwise the backup is a full
//! and says why.
//!
//! File `STATE_DIR/writer/<repository id>/<volume, / as ~>.state`: one JSON line
//! ([`StateMeta`]), then the point's blocks in order as the image digest sees them:
//! `0x00 || count u64le` for a run of zero blocks, `0x01 || digest` for a data block.
//! Written to a temporary file and renamed once the point is committed. Read and
//! written streaming: memory does not grow with the volume.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::format::{Digest, ImageHasher, ImageRun, KeyId};
use crate::repo::{Chain, Repository, VolumeName};

/// Version of the state file layout.
const VERSION: u32 = 1;

/// The first line of a state file: the point it describes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct StateMeta {
    pub version: u32,
    pub key_id: String,
    pub seq: u64,
    pub archive_id: String,
    pub image_digest: Digest,
    pub size: u64,
    pub block_size: u32,
    /// Blocks recorded damaged (`damage/<archive id>`, kind `blocks`) that this point's
    /// chain holds again, stored by this host since: by damaged archive id. A later
    /// delta on this state does not store them again. (Absent in older files.)
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stored_again: BTreeMap<String, Vec<u64>>,
}

/// Where the state of `volume` of `repo` lives under `state_dir`.
pub(super) fn state_path(state_dir: &Path, repo: &Repository, volume: &VolumeName) -> PathBuf {
    state_dir
        .join("writer")
        .join(&repo.config().id)
        .join(format!("{}.state", volume.as_str().replace('/', "~")))
}

/// The state at `path` when it stands for the tip of `chain` (written under `key`),
/// else why not.
pub(super) fn usable(path: &Path, chain: &Chain, key: KeyId) -> Result<StateMeta, String> {
    let meta = match read_meta(path) {
        Ok((meta, _)) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "this host holds only a writer key and has no state of the last point ({} is missing)",
                path.display()
            ));
        }
        Err(e) => {
            return Err(format!(
                "this host holds only a writer key and its state of the last point ({}) cannot be read: {e}",
                path.display()
            ));
        }
    };
    let tip = chain.tip();
    let matches = meta.version == VERSION
        && meta.key_id == key.to_string()
        && meta.seq == tip.commit.seq
        && meta.image_digest == tip.trailer.image_digest
        && meta.size == tip.geometry().size()
        && meta.block_size == tip.header.block_size;
    if !matches {
        return Err(format!(
            "this host holds only a writer key and its state ({}) is of seq {}, not of the newest point seq {}",
            path.display(),
            meta.seq,
            tip.commit.seq
        ));
    }
    Ok(meta)
}

fn read_meta(path: &Path) -> std::io::Result<(StateMeta, BufReader<File>)> {
    let mut reader = BufReader::new(File::open(path)?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let meta = serde_json::from_str(&line)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    Ok((meta, reader))
}

/// A forward-only reader of a state's blocks.
pub(super) struct StateCursor {
    reader: BufReader<File>,
    /// The run at the cursor, and how many of its blocks are left.
    current: Option<(ImageRun, u64)>,
    /// The block at the cursor.
    at: u64,
}

impl StateCursor {
    pub fn open(path: &Path) -> std::io::Result<StateCursor> {
        let (_, reader) = read_meta(path)?;
        Ok(StateCursor {
            reader,
            current: None,
            at: 0,
        })
    }

    fn next_run(&mut self) -> std::io::Result<Option<ImageRun>> {
        let mut tag = [0u8; 1];
        match self.reader.read_exact(&mut tag) {
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            r => r?,
        }
        match tag[0] {
            0 => {
                let mut n = [0u8; 8];
                self.reader.read_exact(&mut n)?;
                Ok(Some(ImageRun::Zeros(u64::from_le_bytes(n))))
            }
            1 => {
                let mut d = [0u8; 32];
                self.reader.read_exact(&mut d)?;
                Ok(Some(ImageRun::Data(Digest(d))))
            }
            t => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("unknown record {t}"),
            )),
        }
    }

    /// The next stretch of blocks before `end`: (first block, count, digest or zero).
    fn next(&mut self, end: u64) -> std::io::Result<Option<(u64, u64, Option<Digest>)>> {
        if self.at >= end {
            return Ok(None);
        }
        if self.current.is_none_or(|(_, left)| left == 0) {
            self.current = match self.next_run()? {
                None => return Ok(None),
                Some(ImageRun::Zeros(n)) => Some((ImageRun::Zeros(n), n)),
                Some(run) => Some((run, 1)),
            };
        }
        let (run, left) = self.current.as_mut().expect("just set");
        let n = (*left).min(end - self.at);
        *left -= n;
        let first = self.at;
        self.at += n;
        Ok(Some(match run {
            ImageRun::Zeros(_) => (first, n, None),
            ImageRun::Data(d) => (first, 1, Some(*d)),
        }))
    }

    /// Moves the cursor to `block` (forward only).
    fn seek(&mut self, block: u64) -> std::io::Result<()> {
        while self.at < block && self.next(block)?.is_some() {}
        Ok(())
    }

    /// Digests of blocks `first..first + count` (`None` = zero).
    pub fn digests(&mut self, first: u64, count: u64) -> std::io::Result<Vec<Option<Digest>>> {
        self.seek(first)?;
        let mut out = Vec::with_capacity(count as usize);
        while let Some((_, n, d)) = self.next(first + count)? {
            out.extend(std::iter::repeat_n(d, n as usize));
        }
        Ok(out)
    }

    /// Feeds `hasher` (and `record`) with the blocks from `hasher.position()` to `end`.
    pub fn feed(
        &mut self,
        hasher: &mut ImageHasher,
        record: &mut StateWriter,
        end: u64,
    ) -> std::io::Result<()> {
        self.seek(hasher.position())?;
        while let Some((_, n, d)) = self.next(end)? {
            let run = match d {
                None => ImageRun::Zeros(n),
                Some(d) => ImageRun::Data(d),
            };
            hasher.feed(&run);
            record.push(&run)?;
        }
        Ok(())
    }
}

/// Writes the state of the point being backed up, committed by a rename.
pub(super) struct StateWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: BufWriter<File>,
    /// A zero run not written yet (consecutive runs are merged).
    zeros: u64,
}

impl StateWriter {
    /// Starts the state that will replace `path` (the directory is created).
    pub fn create(path: &Path) -> std::io::Result<StateWriter> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("state.tmp");
        Ok(StateWriter {
            path: path.to_path_buf(),
            out: BufWriter::new(File::create(&tmp)?),
            tmp,
            zeros: 0,
        })
    }

    /// Appends blocks.
    pub fn push(&mut self, run: &ImageRun) -> std::io::Result<()> {
        match run {
            ImageRun::Zeros(n) => self.zeros += n,
            ImageRun::Data(d) => {
                self.flush_zeros()?;
                self.out.write_all(&[1])?;
                self.out.write_all(&d.0)?;
            }
        }
        Ok(())
    }

    fn flush_zeros(&mut self) -> std::io::Result<()> {
        if self.zeros > 0 {
            self.out.write_all(&[0])?;
            self.out.write_all(&self.zeros.to_le_bytes())?;
            self.zeros = 0;
        }
        Ok(())
    }

    /// Writes `meta` in front of the blocks and puts the state in place.
    pub fn commit(mut self, meta: &StateMeta) -> std::io::Result<()> {
        self.flush_zeros()?;
        let body = self.out.into_inner().map_err(|e| e.into_error())?;
        drop(body);
        let final_tmp = self.path.with_extension("state.new");
        {
            let mut out = BufWriter::new(File::create(&final_tmp)?);
            let mut line = serde_json::to_vec(meta).expect("state meta serializes");
            line.push(b'\n');
            out.write_all(&line)?;
            std::io::copy(&mut File::open(&self.tmp)?, &mut out)?;
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
        std::fs::remove_file(&self.tmp)?;
        std::fs::rename(&final_tmp, &self.path)
    }

    /// Drops the unfinished state.
    pub fn abort(self) {
        drop(self.out);
        let _ = std::fs::remove_file(&self.tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{BlockSize, Geometry};

    #[test]
    fn a_state_reads_back_by_stretches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.state");
        let d = |b: u8| Digest([b; 32]);
        let mut w = StateWriter::create(&path).unwrap();
        for run in [
            ImageRun::Zeros(2),
            ImageRun::Zeros(1),
            ImageRun::Data(d(1)),
            ImageRun::Data(d(2)),
            ImageRun::Zeros(4),
        ] {
            w.push(&run).unwrap();
        }
        let meta = StateMeta {
            version: VERSION,
            key_id: "k".into(),
            seq: 3,
            archive_id: "a".into(),
            image_digest: d(9),
            size: 9 * 4096,
            block_size: 4096,
            stored_again: BTreeMap::from([("d".into(), vec![1, 4])]),
        };
        w.commit(&meta).unwrap();
        assert_eq!(read_meta(&path).unwrap().0, meta);
        let mut c = StateCursor::open(&path).unwrap();
        assert_eq!(
            c.digests(1, 4).unwrap(),
            vec![None, None, Some(d(1)), Some(d(2))]
        );
        let mut h = ImageHasher::new(Geometry::new(9 * 4096, BlockSize::new(4096).unwrap()));
        h.zeros(6);
        let mut again = StateWriter::create(&dir.path().join("w.state")).unwrap();
        c.feed(&mut h, &mut again, 9).unwrap();
        assert_eq!(h.position(), 9);
        again.abort();
        assert!(!dir.path().join("w.state.tmp").exists());
    }
}
