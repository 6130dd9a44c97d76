//! Grouping the resolved blocks of a point into work units: one range read each.

use std::ops::Range;

use tokio::sync::mpsc::Sender;

use super::RestoreError;
use crate::format::{Digest, EntryKind, FrameKind};
use crate::repo::{ChainCursor, Resolved};

/// Two frames of one archive closer than this are fetched in one range read.
const MAX_GAP: u64 = 256 << 10;
/// Most bytes fetched by one work unit.
const MAX_FETCH: u64 = 2 << 20;
/// Most frames decoded by one work unit (frames hold at most 256 KiB as thinarc
/// writes them, so this bounds decoded bytes per unit too).
const MAX_FRAMES: usize = 8;
/// Most items in one work unit (bounds zero-only units too).
const MAX_ITEMS: usize = 1024;

/// A frame to decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FrameRef {
    pub offset: u64,
    pub len: u32,
    pub kind: FrameKind,
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

/// A unit of restore work: one range read of one archive (`layer`) and the blocks and
/// zero runs it completes, in block order.
#[derive(Debug, Default)]
pub(super) struct Work {
    pub layer: Option<usize>,
    pub range: Range<u64>,
    pub frames: Vec<FrameRef>,
    pub items: Vec<Item>,
}

impl Work {
    /// Whether the data block at `frame_offset` of `layer` can join this unit.
    fn accepts(&self, layer: usize, frame_offset: u64, frame_len: u32) -> bool {
        if self.items.len() >= MAX_ITEMS {
            return false;
        }
        match self.layer {
            None => true,
            Some(l) if l != layer => false,
            Some(_) => {
                let same = self.frames.last().is_some_and(|f| f.offset == frame_offset);
                same || (self.frames.len() < MAX_FRAMES
                    && frame_offset >= self.range.end
                    && frame_offset - self.range.end <= MAX_GAP
                    && frame_offset + u64::from(frame_len) - self.range.start <= MAX_FETCH)
            }
        }
    }
}

/// Walks the point with `cursor` and sends work units in block order.
///
/// # Errors
/// [`RestoreError`] if an index segment fails; the receiver sees the channel close.
pub(super) async fn plan_works(
    mut cursor: ChainCursor,
    blocks: u64,
    tx: Sender<Work>,
) -> Result<(), RestoreError> {
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
                if !w.accepts(layer, frame_offset, frame_len) {
                    send(&tx, &mut w).await;
                }
                if w.layer.is_none() {
                    w.layer = Some(layer);
                    w.range = frame_offset..frame_offset;
                }
                if w.frames.last().is_none_or(|f| f.offset != frame_offset) {
                    w.frames.push(FrameRef {
                        offset: frame_offset,
                        len: frame_len,
                        kind: frame,
                    });
                    w.range.end = frame_offset + u64::from(frame_len);
                }
                w.items.push(Item::Block {
                    frame: w.frames.len() - 1,
                    block: entry.block,
                    slot,
                    digest,
                });
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
