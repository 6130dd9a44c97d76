//! Reading a source's blocks in batches and hashing them (FORMAT.md §6 block digests,
//! §9 image digest): the reader every full scan shares (backup, verify `--source`,
//! restore `--since` checking its target).

use std::sync::Arc;

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tokio::sync::mpsc::Sender;

use super::{RawSource, ReadPlan, SourceError};
use crate::buffers::BufferPool;
use crate::format::{BlockSize, Digest, Digester, Geometry, ImageHasher, ImageRun, push_image};
use crate::progress::Progress;
use crate::throttle::RateLimiter;

/// Uncompressed bytes per read batch.
pub const BATCH_BYTES: u64 = 1 << 20;

/// Consecutive blocks read from the source; `buf` is empty for a run of blocks that
/// lie entirely in a hole of a sparse source (zero, and not read at all).
pub struct Batch {
    pub first: u64,
    pub count: u64,
    pub buf: Vec<u8>,
    pub bytes_read: u64,
}

/// Batches a pipeline of `threads` hashing threads reads and hashes at once: two per
/// thread, so that a core whose batch is done starts another while the oldest one,
/// which the pipeline waits for in order, is still being hashed.
pub fn batches_in_flight(threads: usize) -> usize {
    2 * threads.max(1)
}

/// The pool of batch buffers for a pipeline of `threads` hashing threads: the
/// batches in flight and a spare.
pub fn batch_buffers(threads: usize) -> BufferPool {
    BufferPool::new(batches_in_flight(threads) + 1)
}

/// Most blocks in one batch of hole blocks (bounds the previous point's digests
/// fetched for it).
const MAX_HOLE_BATCH: u64 = 1 << 16;

/// A batch as [`plan_batches`] plans it: its blocks and where their stored data lies,
/// not read yet. The thread that hashes it reads it ([`read`](Self::read)), so the
/// bytes are hashed where they were copied, while they are in that core's cache.
pub struct Planned {
    pub first: u64,
    pub count: u64,
    /// The bytes to fill and the extents of stored data among them; `None` for a run
    /// of blocks entirely in a hole.
    data: Option<(std::ops::Range<u64>, Vec<std::ops::Range<u64>>)>,
}

impl Planned {
    /// Reads the batch into a buffer taken from `buffers` (which the last stage hands
    /// back: every byte is overwritten), at most at `read_limit`'s rate (bytes
    /// actually read; holes are free).
    ///
    /// # Errors
    /// [`SourceError::Read`], or [`SourceError::SizeChanged`] if the source shrank.
    pub fn read(
        self,
        source: &RawSource,
        read_limit: Option<&RateLimiter>,
        buffers: &BufferPool,
    ) -> Result<Batch, SourceError> {
        let (first, count) = (self.first, self.count);
        let Some((bytes, extents)) = self.data else {
            return Ok(Batch {
                first,
                count,
                buf: Vec::new(),
                bytes_read: 0,
            });
        };
        let mut buf = buffers.take();
        buf.resize((bytes.end - bytes.start) as usize, 0);
        let bytes_read = source.read_extents(bytes.start, &mut buf, &extents)?;
        if let Some(limit) = read_limit {
            limit.acquire_blocking(bytes_read);
        }
        Ok(Batch {
            first,
            count,
            buf,
            bytes_read,
        })
    }
}

/// Plans the blocks of `plan` in batches of `batch_blocks` and sends them in order:
/// whole blocks inside a hole become hole batches, the others carry the extents of
/// stored data to read. Stops quietly when the receiver is gone (the pipeline failed
/// elsewhere). Reads nothing: the caller reads each batch ([`Planned::read`]) and checks
/// the source's size once every batch is read ([`RawSource::check_size`]).
pub fn plan_batches(
    source: &RawSource,
    plan: &ReadPlan,
    geometry: Geometry,
    batch_blocks: u64,
    tx: &Sender<Planned>,
) -> Result<(), SourceError> {
    for range in plan.ranges() {
        let mut first = range.start;
        let range_end = geometry.offset(range.end).min(geometry.size());
        while first < range.end {
            // Whole blocks inside a hole are zero: no buffer, no read, no scan.
            let data = source.data_start(geometry.offset(first), range_end)?;
            let hole_end = if data >= range_end {
                range.end
            } else {
                data / u64::from(geometry.block_size().get())
            };
            let planned = if hole_end > first {
                Planned {
                    first,
                    count: MAX_HOLE_BATCH.min(hole_end - first),
                    data: None,
                }
            } else {
                let count = batch_blocks.min(range.end - first);
                let bytes =
                    geometry.offset(first)..geometry.offset(first + count).min(geometry.size());
                let extents = source.data_extents(bytes.start, bytes.end)?;
                Planned {
                    first,
                    count,
                    data: Some((bytes, extents)),
                }
            };
            first += planned.count;
            if tx.blocking_send(planned).is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

impl Batch {
    /// The digest of block `b` of the batch under `digester`, `None` for a zero block.
    pub fn digest(&self, g: &Geometry, digester: &Digester, b: u64) -> Option<Digest> {
        if self.buf.is_empty() {
            return None; // a hole
        }
        let start = (g.offset(b) - g.offset(self.first)) as usize;
        let data = &self.buf[start..start + g.block_len(b) as usize];
        (!is_zero(data)).then(|| digester.block(data))
    }

    /// The batch's blocks as the image digest under `digester` sees them.
    pub fn image(&self, g: &Geometry, digester: &Digester) -> Vec<ImageRun> {
        let mut image = Vec::new();
        for b in self.first..self.first + self.count {
            push_image(&mut image, self.digest(g, digester, b));
        }
        image
    }
}

/// Whether `data` is all zero bytes.
pub fn is_zero(data: &[u8]) -> bool {
    // SAFETY: u128 has no invalid bit patterns; align_to only reinterprets the aligned
    // middle of the slice.
    let (head, mid, tail) = unsafe { data.align_to::<u128>() };
    head.iter().all(|&b| b == 0) && mid.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

/// The image digest of `source` read in full with `block_size` blocks under
/// `digester`, as a full backup would record it (verify `--source`): the backup's
/// reader and block hashing, without compression or upload.
///
/// # Errors
/// [`SourceError`] when the source cannot be read or changes size.
pub async fn source_image_digest(
    source: RawSource,
    block_size: BlockSize,
    digester: &Digester,
    threads: usize,
    progress: Arc<Progress>,
) -> Result<Digest, SourceError> {
    let geometry = Geometry::new(source.size(), block_size);
    progress.set_total(geometry.size());
    let threads = threads.max(1);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Planned>(threads);
    let batch_blocks = (BATCH_BYTES / u64::from(block_size.get())).max(1);
    let buffers = Arc::new(batch_buffers(threads));
    let source = Arc::new(source);
    let planner = {
        let source = source.clone();
        tokio::task::spawn_blocking(move || {
            plan_batches(
                &source,
                &ReadPlan::all(geometry.blocks()),
                geometry,
                batch_blocks,
                &tx,
            )
        })
    };
    let mut hasher = ImageHasher::with(geometry, digester);
    let mut inflight = FuturesOrdered::new();
    let mut reading = true;
    loop {
        while reading && inflight.len() < batches_in_flight(threads) {
            match rx.recv().await {
                Some(planned) => {
                    let (source, buffers) = (source.clone(), buffers.clone());
                    let digester = digester.clone();
                    inflight.push_back(tokio::task::spawn_blocking(move || {
                        let batch = planned.read(&source, None, &buffers)?;
                        let image = batch.image(&geometry, &digester);
                        buffers.give(batch.buf);
                        Ok::<_, SourceError>((batch.count, image))
                    }))
                }
                None => reading = false,
            }
        }
        let Some(done) = inflight.next().await else {
            break;
        };
        let (count, image) = done.map_err(|e| SourceError::Task(e.to_string()))??;
        progress.add(count * u64::from(block_size.get()));
        image.iter().for_each(|run| hasher.feed(run));
    }
    planner
        .await
        .map_err(|e| SourceError::Task(e.to_string()))??;
    source.check_size()?;
    hasher
        .finish()
        .map_err(|e| SourceError::Task(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;

    /// Every batch `plan_batches` plans for all of `source`, in order.
    fn plan(source: &RawSource, g: Geometry, batch_blocks: u64) -> Vec<Planned> {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        plan_batches(source, &ReadPlan::all(g.blocks()), g, batch_blocks, &tx).unwrap();
        drop(tx);
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    #[test]
    fn holes_are_planned_apart_and_batches_read_as_the_file_with_a_short_last_block() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let bs = 4096u64;
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(20 * bs + 100).unwrap();
        file.write_all_at(&[1; 8192], 0).unwrap();
        file.write_all_at(&[2; 50], 12 * bs + 10).unwrap();
        file.write_all_at(&[3; 100], 20 * bs).unwrap();
        let source = RawSource::open(&path).unwrap();
        let g = Geometry::new(source.size(), BlockSize::new(4096).unwrap());
        let planned = plan(&source, g, 4);
        let shape: Vec<_> = planned
            .iter()
            .map(|p| (p.first, p.count, p.data.is_some()))
            .collect();
        assert_eq!(
            shape,
            [
                (0, 4, true),
                (4, 8, false),
                (12, 4, true),
                (16, 4, false),
                (20, 1, true)
            ]
        );
        let image = std::fs::read(&path).unwrap();
        let pool = BufferPool::new(1);
        pool.give(vec![9; 1 << 20]); // a used buffer: every byte must be overwritten
        let mut read = Vec::new();
        for p in planned {
            let batch = p.read(&source, None, &pool).unwrap();
            if batch.buf.is_empty() {
                let bytes = g.offset(batch.first)..g.offset(batch.first + batch.count);
                assert!(is_zero(&image[bytes.start as usize..bytes.end as usize]));
            } else {
                let start = g.offset(batch.first) as usize;
                assert_eq!(batch.buf, image[start..start + batch.buf.len()]);
            }
            read.push(batch.bytes_read);
            pool.give(batch.buf);
        }
        assert_eq!(read, [8192, 0, 4096, 0, 100]);
        source.check_size().unwrap();
    }

    #[test]
    fn a_source_that_shrinks_after_planning_fails_its_read_as_a_size_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        std::fs::write(&path, vec![5u8; 3 * 4096]).unwrap();
        let source = RawSource::open(&path).unwrap();
        let g = Geometry::new(source.size(), BlockSize::new(4096).unwrap());
        let mut planned = plan(&source, g, 2);
        assert_eq!(planned.len(), 2);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(4096 + 100)
            .unwrap();
        let pool = BufferPool::new(1);
        let last = planned.pop().unwrap();
        let e = planned
            .pop()
            .unwrap()
            .read(&source, None, &pool)
            .err()
            .unwrap();
        let expect = format!(
            "source {} changed size during the backup (12288 -> 4196 bytes); nothing was committed, run the backup again",
            path.display()
        );
        assert_eq!(e.to_string(), expect);
        assert_eq!(
            last.read(&source, None, &pool).err().unwrap().to_string(),
            expect
        );
        assert_eq!(source.check_size().unwrap_err().to_string(), expect);
    }
}
