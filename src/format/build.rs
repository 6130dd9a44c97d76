//! Building an archive's content from blocks (FORMAT.md §7 frames, §8 index): data
//! blocks grouped into zstd frames, zero runs, and the image digest's runs, as ordered
//! [`ArchivePart`]s an [`ArchiveWriter`] appends. Backups build parts from a source's
//! blocks, merges from blocks read out of archives.

use std::cell::RefCell;

use super::{
    ArchiveWriter, Digest, EncodedFrame, FormatError, FrameKind, ImageHasher, ImageRun,
    compress_frame,
};

/// Default zstd level.
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;
/// Uncompressed bytes per frame (at least one block).
pub const FRAME_BYTES: u64 = 256 << 10;

/// What goes into the archive, in block order.
pub enum Op {
    Zeros { first: u64, count: u64 },
    Frame(EncodedFrame),
}

/// A part of an archive in block order: what to append to it, and the new point's
/// blocks for the image digest.
pub struct ArchivePart {
    pub first: u64,
    pub count: u64,
    pub bytes_read: u64,
    pub ops: Vec<Op>,
    /// The new point's blocks in the batch.
    pub image: Vec<ImageRun>,
}

/// Appends one block (`None` = zero) to `image`, extending a zero run.
pub fn push_image(image: &mut Vec<ImageRun>, digest: Option<Digest>) {
    match (digest, image.last_mut()) {
        (None, Some(ImageRun::Zeros(n))) => *n += 1,
        (None, _) => image.push(ImageRun::Zeros(1)),
        (Some(d), _) => image.push(ImageRun::Data(d)),
    }
}

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
}

/// Compresses one frame's content at zstd `level` with this thread's compressor.
pub fn compress(content: &[u8], level: i32) -> Result<(FrameKind, Vec<u8>), FormatError> {
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

impl ArchivePart {
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
