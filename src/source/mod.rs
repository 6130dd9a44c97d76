//! Where blocks come from: an image file or block device read in block order, an LVM
//! thin LV read through a snapshot ([`lvm`]), and the plan of which blocks to read
//! (everything, or a changed-block list); and what a user names as a source
//! ([`SourceSpec`]: `lvm:VG/LV` or a path), parsed in one place.
//!
//! A source only reads; it knows nothing of archives or repositories.
//!
//! Nouns floor (with `repo` and `target`). Imports only `buffers`, `cleanup`, `format`,
//! `hook`, `lvm`, `progress`, `quote` and `throttle`; must not import `repo`, `target`, `point`, a
//! command module or `cli`.

mod blocks;
mod changed;
pub mod consistent;
pub mod lvm;
mod raw;
mod spec;

pub use blocks::{
    BATCH_BYTES, Batch, Planned, batch_buffers, batches_in_flight, is_zero, plan_batches,
    source_image_digest,
};
pub use changed::{ChangedBlocks, ChangedBlocksError, parse_changed_blocks};
pub use raw::{RawSource, SourceError, file_kind};
pub use spec::{SourceSpec, SourceSpecError};

use std::ops::Range;

/// Which blocks a backup reads, as sorted, non-overlapping block ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadPlan(Vec<Range<u64>>);

impl ReadPlan {
    /// Every block of a volume with `blocks` blocks.
    pub fn all(blocks: u64) -> Self {
        ReadPlan(
            std::iter::once(0..blocks)
                .filter(|r| !r.is_empty())
                .collect(),
        )
    }

    /// A plan from arbitrary block ranges: sorted, merged, clipped to `blocks`.
    pub fn from_ranges(mut ranges: Vec<Range<u64>>, blocks: u64) -> Self {
        ranges.retain(|r| r.start < r.end && r.start < blocks);
        ranges.sort_by_key(|r| r.start);
        let mut out: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
        for r in ranges {
            let r = r.start..r.end.min(blocks);
            match out.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => out.push(r),
            }
        }
        ReadPlan(out)
    }

    /// The ranges, in order.
    pub fn ranges(&self) -> &[Range<u64>] {
        &self.0
    }

    /// Total number of blocks in the plan.
    pub fn blocks(&self) -> u64 {
        self.0.iter().map(|r| r.end - r.start).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_merges_sorts_and_clips() {
        let p = ReadPlan::from_ranges(vec![5..7, 0..2, 1..3, 7..8, 20..30, 9..9], 25);
        assert_eq!(p.ranges(), &[0..3, 5..8, 20..25]);
        assert_eq!(p.blocks(), 11);
        assert_eq!(ReadPlan::all(0).ranges(), &[] as &[Range<u64>]);
    }
}
