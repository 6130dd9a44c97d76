//! Grouping the resolved blocks of a point into work units.
//!
//! A unit is a short stretch of the point, in block order: its zero runs and data
//! blocks, the frames holding those blocks, and the range reads that fetch the frames
//! (one per archive touched, nearby frames coalesced). Blocks of one frame that are
//! interleaved with newer archives' blocks stay in one unit, so the frame is fetched and
//! decoded once.

use std::ops::Range;

use tokio::sync::mpsc::Sender;

use super::ReadError;
use crate::format::{Digest, EntryKind, FrameKind};
use crate::repo::{ChainCursor, Resolved};

/// Two frames of one archive closer than this are fetched in one range read.
const MAX_GAP: u64 = 256 << 10;
/// How large work units get: bytes fetched, and bytes of block data (what a unit
/// holds once decoded).
#[derive(Debug, Clone, Copy)]
pub(super) struct UnitLimits {
    pub fetch: u64,
    pub data: u64,
}
/// Most items in one work unit (bounds zero-only units too).
const MAX_ITEMS: usize = 4096;

/// One range read of one archive of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Fetch {
    pub layer: usize,
    pub range: Range<u64>,
}

/// A frame to decode: where it lies in which fetch, and its slot 0's block (a sealed
/// frame's associated data names it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FrameRef {
    pub fetch: usize,
    pub offset: u64,
    pub len: u32,
    pub kind: FrameKind,
    pub first_block: u64,
}

/// One block or zero run of a work unit, in block order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Item {
    Zero {
        first: u64,
        count: u64,
    },
    Block {
        frame: usize,
        block: u64,
        slot: u16,
        digest: Digest,
    },
}

/// A unit of restore work.
#[derive(Debug, Default)]
pub(super) struct Work {
    pub fetches: Vec<Fetch>,
    pub frames: Vec<FrameRef>,
    pub items: Vec<Item>,
    /// Data blocks in `items`.
    pub data_blocks: u64,
}

impl Work {
    /// Bytes its range reads fetch.
    pub(super) fn fetched(&self) -> u64 {
        self.fetches
            .iter()
            .map(|f| f.range.end - f.range.start)
            .sum()
    }

    /// The index of frame `offset` of `layer`, if this unit already has it.
    fn frame(&self, layer: usize, offset: u64) -> Option<usize> {
        self.frames
            .iter()
            .rposition(|f| f.offset == offset && self.fetches[f.fetch].layer == layer)
    }

    /// Whether one more data block, from a new frame of `len` stored bytes if
    /// `new_frame`, still fits.
    fn has_room(&self, limits: UnitLimits, block_size: u64, new_frame: Option<u32>) -> bool {
        let fetch_ok = new_frame.is_none_or(|len| self.fetched() + u64::from(len) <= limits.fetch);
        self.items.is_empty()
            || (self.items.len() < MAX_ITEMS
                && (self.data_blocks + 1) * block_size <= limits.data
                && fetch_ok)
    }

    /// Adds frame `offset` of `layer`, extending a nearby fetch of that archive or
    /// starting a new one; returns its index.
    fn add_frame(
        &mut self,
        layer: usize,
        offset: u64,
        len: u32,
        kind: FrameKind,
        first_block: u64,
    ) -> usize {
        let end = offset + u64::from(len);
        let near = self.fetches.iter().rposition(|f| {
            f.layer == layer && offset >= f.range.end && offset - f.range.end <= MAX_GAP
        });
        let fetch = match near {
            Some(i) => {
                self.fetches[i].range.end = end;
                i
            }
            None => {
                self.fetches.push(Fetch {
                    layer,
                    range: offset..end,
                });
                self.fetches.len() - 1
            }
        };
        self.frames.push(FrameRef {
            fetch,
            offset,
            len,
            kind,
            first_block,
        });
        self.frames.len() - 1
    }
}

/// Which frames to read: `keep(layer, frame_offset)`; blocks of other frames are left
/// out of the units (used by a sampled verify).
pub(crate) type FrameFilter = std::sync::Arc<dyn Fn(usize, u64) -> bool + Send + Sync>;

/// Walks the point with `cursor` and sends work units in block order, with the data
/// blocks of the frames `keep` accepts (all of them without a filter).
///
/// # Errors
/// [`ReadError`] if an index segment fails; the receiver sees the channel close.
pub(super) async fn plan_works(
    mut cursor: ChainCursor,
    blocks: u64,
    block_size: u64,
    limits: UnitLimits,
    keep: Option<FrameFilter>,
    tx: Sender<Work>,
) -> Result<(), ReadError> {
    let mut w = Work::default();
    while let Some(r) = cursor.next(blocks).await? {
        match r {
            Resolved::Zero { first, count } => {
                if w.items.len() >= MAX_ITEMS {
                    send(&tx, &mut w).await;
                }
                match w.items.last_mut() {
                    Some(Item::Zero { first: f, count: c }) if *f + *c == first => *c += count,
                    _ => w.items.push(Item::Zero { first, count }),
                }
            }
            Resolved::Data { layer, entry } => {
                let EntryKind::Data {
                    frame,
                    frame_offset,
                    frame_len,
                    slot,
                    digest,
                } = entry.kind
                else {
                    unreachable!("Resolved::Data holds a data entry")
                };
                if keep.as_ref().is_some_and(|k| !k(layer, frame_offset)) {
                    continue;
                }
                let known = w.frame(layer, frame_offset);
                // A frame's run of consecutive blocks is not cut between units (each
                // unit would decode it, and a merge could not copy it whole): a unit
                // may exceed its data limit by one frame's content (at most 16 MiB,
                // 256 KiB in thinarc's archives).
                let continues = known.is_some()
                    && matches!(w.items.last(), Some(&Item::Block { frame, block, slot: s, .. })
                        if Some(frame) == known && block + 1 == entry.block && s + 1 == slot);
                if !continues
                    && !w.has_room(limits, block_size, known.is_none().then_some(frame_len))
                {
                    send(&tx, &mut w).await;
                }
                let index = match w.frame(layer, frame_offset) {
                    Some(i) => i,
                    None => w.add_frame(
                        layer,
                        frame_offset,
                        frame_len,
                        frame,
                        entry.block.saturating_sub(u64::from(slot)),
                    ),
                };
                w.items.push(Item::Block {
                    frame: index,
                    block: entry.block,
                    slot,
                    digest,
                });
                w.data_blocks += 1;
            }
        }
    }
    send(&tx, &mut w).await;
    Ok(())
}

async fn send(tx: &Sender<Work>, w: &mut Work) {
    let w = std::mem::take(w);
    if !w.items.is_empty() {
        // A closed channel means the consumer failed; it reports its own error.
        let _ = tx.send(w).await;
    }
}
