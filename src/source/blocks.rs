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

/// The pool of batch buffers for a pipeline of `threads` hashing threads: the
/// channel's and the hashers' batches, and the one being read.
pub fn batch_buffers(threads: usize) -> BufferPool {
    BufferPool::new(2 * threads + 3)
}

/// Most blocks in one batch of hole blocks (bounds the previous point's digests
/// fetched for it).
const MAX_HOLE_BATCH: u64 = 1 << 16;

/// Reads the blocks of `plan` in batches of `batch_blocks` and sends them in order,
/// at most at `read_limit`'s rate (bytes actually read; holes are free), into buffers
/// taken from `buffers` (which the last stage hands back: every byte is overwritten).
/// Stops quietly when the receiver is gone (the pipeline failed elsewhere). Checks at
/// the end that the source did not change size.
pub fn read_batches(
    source: &RawSource,
    plan: &ReadPlan,
    geometry: Geometry,
    batch_blocks: u64,
    read_limit: Option<&RateLimiter>,
    buffers: &BufferPool,
    tx: &Sender<Batch>,
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
            if hole_end > first {
                let count = MAX_HOLE_BATCH.min(hole_end - first);
                if tx
                    .blocking_send(Batch {
                        first,
                        count,
                        buf: Vec::new(),
                        bytes_read: 0,
                    })
                    .is_err()
                {
                    return Ok(());
                }
                first += count;
                continue;
            }
            let count = batch_blocks.min(range.end - first);
            let offset = geometry.offset(first);
            let len = geometry.offset(first + count).min(geometry.size()) - offset;
            let mut buf = buffers.take();
            buf.resize(len as usize, 0);
            let bytes_read = source.read_at(offset, &mut buf)?;
            if let Some(limit) = read_limit {
                limit.acquire_blocking(bytes_read);
            }
            if tx
                .blocking_send(Batch {
                    first,
                    count,
                    buf,
                    bytes_read,
                })
                .is_err()
            {
                return Ok(());
            }
            first += count;
        }
    }
    source.check_size()
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
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Batch>(threads);
    let batch_blocks = (BATCH_BYTES / u64::from(block_size.get())).max(1);
    let buffers = Arc::new(batch_buffers(threads));
    let reader = {
        let buffers = buffers.clone();
        tokio::task::spawn_blocking(move || {
            read_batches(
                &source,
                &ReadPlan::all(geometry.blocks()),
                geometry,
                batch_blocks,
                None,
                &buffers,
                &tx,
            )
        })
    };
    let mut hasher = ImageHasher::with(geometry, digester);
    let mut inflight = FuturesOrdered::new();
    let mut reading = true;
    loop {
        while reading && inflight.len() < threads + 1 {
            match rx.recv().await {
                Some(batch) => {
                    let buffers = buffers.clone();
                    let digester = digester.clone();
                    inflight.push_back(tokio::task::spawn_blocking(move || {
                        let image = batch.image(&geometry, &digester);
                        buffers.give(batch.buf);
                        (batch.count, image)
                    }))
                }
                None => reading = false,
            }
        }
        let Some(done) = inflight.next().await else {
            break;
        };
        let (count, image) = done.map_err(|e| SourceError::Task(e.to_string()))?;
        progress.add(count * u64::from(block_size.get()));
        image.iter().for_each(|run| hasher.feed(run));
    }
    reader
        .await
        .map_err(|e| SourceError::Task(e.to_string()))??;
    hasher
        .finish()
        .map_err(|e| SourceError::Task(e.to_string()))
}
