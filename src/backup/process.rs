//! The CPU stage of a backup: hashing a batch's blocks, comparing them with the
//! parent's digests and compressing the changed ones into frames (run on the blocking
//! pool, several batches at once).

use super::BackupError;
use crate::format::{
    ArchivePart, Digest, Digester, EncodedFrame, Geometry, Op, compress, push_image,
};
use crate::source::Batch;

/// Settings shared by every batch of a run.
#[derive(Debug)]
pub(super) struct Context {
    pub geometry: Geometry,
    /// The archive's block digest function (keyed in an encrypted repository).
    pub digester: Digester,
    /// Blocks the archive must hold even if unchanged: the boundary block of a volume
    /// that changed size, and blocks the parent takes from a damaged archive.
    pub forced: std::collections::BTreeSet<u64>,
    pub frame_blocks: usize,
    pub level: i32,
    /// Whether blocks are compared with a previous point (a delta).
    pub diff: bool,
}

/// Hashes every block of `batch`, compares it with `prev` (the previous point's
/// digests, empty for a full backup) and compresses changed data blocks into frames.
pub(super) fn process_batch(
    ctx: &Context,
    batch: &Batch,
    prev: Vec<Option<Digest>>,
) -> Result<ArchivePart, BackupError> {
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
        let digest = batch.digest(g, &ctx.digester, b);
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
    Ok(ArchivePart {
        first: batch.first,
        count: batch.count,
        bytes_read: batch.bytes_read,
        ops,
        image,
    })
}
