//! The CPU stages of a backup: reading batches, and hashing, comparing and compressing
//! them (run on the blocking pool, several batches at once).

use std::cell::RefCell;

use tokio::sync::mpsc::Sender;

use super::BackupError;
use crate::format::{
    ArchiveWriter, Digest, EncodedFrame, FormatError, Geometry, ImageHasher, ImageRun,
    compress_frame,
};
use crate::source::{RawSource, ReadPlan, SourceError};
use crate::throttle::RateLimiter;

/// Settings shared by every batch of a run.
#[derive(Debug)]
pub(super) struct Context {
    pub geometry: Geometry,
    /// Blocks the archive must hold even if unchanged: the boundary block of a volume
    /// that changed size, and blocks the parent takes from a damaged archive.
    pub forced: std::collections::BTreeSet<u64>,
    pub frame_blocks: usize,
    pub level: i32,
    /// Whether blocks are compared with a previous point (a delta).
    pub diff: bool,
}

/// Consecutive blocks read from the source; `buf` is empty for a run of blocks that
/// lie entirely in a hole of a sparse source (zero, and not read at all).
pub(super) struct Batch {
    pub first: u64,
    pub count: u64,
    pub buf: Vec<u8>,
    pub bytes_read: u64,
}

/// Most blocks in one batch of hole blocks (bounds the previous point's digests
/// fetched for it).
const MAX_HOLE_BATCH: u64 = 1 << 16;

/// What goes into the archive, in block order.
pub(crate) enum Op {
    Zeros { first: u64, count: u64 },
    Frame(EncodedFrame),
}

/// A processed batch: what to append to the archive, and the new point's blocks for
/// the image digest. Merges build them too (from blocks read out of archives).
pub(crate) struct Processed {
    pub first: u64,
    pub count: u64,
    pub bytes_read: u64,
    pub ops: Vec<Op>,
    /// The new point's blocks in the batch.
    pub image: Vec<ImageRun>,
}

/// Reads the blocks of `plan` in batches of `batch_blocks` and sends them in order,
/// at most at `read_limit`'s rate (bytes actually read; holes are free).
/// Stops quietly when the receiver is gone (the pipeline failed elsewhere). Checks at
/// the end that the source did not change size.
pub(super) fn read_batches(
    source: &RawSource,
    plan: &ReadPlan,
    geometry: Geometry,
    batch_blocks: u64,
    read_limit: Option<&RateLimiter>,
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
            let mut buf = vec![0u8; len as usize];
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
    /// The digest of block `b` of the batch, `None` for a zero block.
    fn digest(&self, g: &Geometry, b: u64) -> Option<Digest> {
        if self.buf.is_empty() {
            return None; // a hole
        }
        let start = (g.offset(b) - g.offset(self.first)) as usize;
        let data = &self.buf[start..start + g.block_len(b) as usize];
        (!is_zero(data)).then(|| Digest::of(data))
    }

    /// The batch's blocks as the image digest sees them.
    pub(super) fn image(&self, g: &Geometry) -> Vec<ImageRun> {
        let mut image = Vec::new();
        for b in self.first..self.first + self.count {
            push_image(&mut image, self.digest(g, b));
        }
        image
    }
}

/// Appends one block (`None` = zero) to `image`, extending a zero run.
fn push_image(image: &mut Vec<ImageRun>, digest: Option<Digest>) {
    match (digest, image.last_mut()) {
        (None, Some(ImageRun::Zeros(n))) => *n += 1,
        (None, _) => image.push(ImageRun::Zeros(1)),
        (Some(d), _) => image.push(ImageRun::Data(d)),
    }
}

/// Whether `data` is all zero bytes.
fn is_zero(data: &[u8]) -> bool {
    // SAFETY: u128 has no invalid bit patterns; align_to only reinterprets the aligned
    // middle of the slice.
    let (head, mid, tail) = unsafe { data.align_to::<u128>() };
    head.iter().all(|&b| b == 0) && mid.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
}

/// Hashes every block of `batch`, compares it with `prev` (the previous point's
/// digests, empty for a full backup) and compresses changed data blocks into frames.
pub(super) fn process_batch(
    ctx: &Context,
    batch: Batch,
    prev: Vec<Option<Digest>>,
) -> Result<Processed, BackupError> {
    let g = &ctx.geometry;
    let base = g.offset(batch.first);
    let mut image = Vec::with_capacity(if batch.buf.is_empty() {
        1
    } else {
        batch.count as usize
    });
    let mut ops = Vec::new();
    // Changed data blocks waiting to become a frame: (first block, digests).
    let mut run: Option<(u64, Vec<Digest>)> = None;
    let flush =
        |run: &mut Option<(u64, Vec<Digest>)>, ops: &mut Vec<Op>| -> Result<(), BackupError> {
            if let Some((first, digests)) = run.take() {
                let start = (g.offset(first) - base) as usize;
                let end = (g.offset(first + digests.len() as u64).min(g.size()) - base) as usize;
                let (kind, bytes) = compress(&batch.buf[start..end], ctx.level)?;
                ops.push(Op::Frame(EncodedFrame {
                    first_block: first,
                    kind,
                    bytes,
                    digests,
                }));
            }
            Ok(())
        };
    for i in 0..batch.count {
        let b = batch.first + i;
        let digest = batch.digest(g, b);
        push_image(&mut image, digest);
        let changed = !ctx.diff
            || prev.get(i as usize).copied().flatten() != digest
            || ctx.forced.contains(&b);
        match (changed, digest) {
            (true, Some(d)) => {
                if let Some((first, digests)) = &mut run
                    && *first + digests.len() as u64 == b
                    && digests.len() < ctx.frame_blocks
                {
                    digests.push(d);
                } else {
                    flush(&mut run, &mut ops)?;
                    run = Some((b, vec![d]));
                }
            }
            (true, None) => {
                flush(&mut run, &mut ops)?;
                match ops.last_mut() {
                    Some(Op::Zeros { first, count }) if *first + *count == b => *count += 1,
                    _ => ops.push(Op::Zeros { first: b, count: 1 }),
                }
            }
            (false, _) => flush(&mut run, &mut ops)?,
        }
    }
    flush(&mut run, &mut ops)?;
    Ok(Processed {
        first: batch.first,
        count: batch.count,
        bytes_read: batch.bytes_read,
        ops,
        image,
    })
}

/// Compresses one frame's content at zstd `level` with this thread's compressor.
pub(crate) fn compress(
    content: &[u8],
    level: i32,
) -> Result<(crate::format::FrameKind, Vec<u8>), FormatError> {
    COMPRESSOR.with_borrow_mut(|slot| {
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            let c = zstd::bulk::Compressor::new(level)
                .map_err(|e| FormatError::InvalidInput(format!("zstd level {level}: {e}")))?;
            *slot = Some((level, c));
        }
        let (_, c) = slot.as_mut().expect("just set");
        compress_frame(content, c)
    })
}

impl Processed {
    /// Appends the batch to the archive and the image digest; returns the number of
    /// blocks recorded in the archive.
    pub fn apply(
        self,
        writer: &mut ArchiveWriter,
        hasher: &mut ImageHasher,
        out: &mut Vec<u8>,
    ) -> Result<u64, FormatError> {
        let mut recorded = 0;
        for op in &self.ops {
            match op {
                Op::Zeros { first, count } => {
                    writer.push_zeros(*first, *count, out)?;
                    recorded += count;
                }
                Op::Frame(f) => {
                    writer.push_frame(f, out)?;
                    recorded += f.digests.len() as u64;
                }
            }
        }
        for run in &self.image {
            hasher.feed(run);
        }
        Ok(recorded)
    }
}
