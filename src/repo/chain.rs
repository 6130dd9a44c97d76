//! Resolving a point from its chain: a streaming merge of the archives' indexes that
//! yields, in block order, where each block of the point comes from.
//!
//! Memory is one index segment per archive of the chain, whatever the volume size.
//!
//! A cursor may also walk only what a *segment* of the chain decides (the archives
//! above a floor): that is what a merged archive replacing those archives must hold
//! (see [`ChainCursor::segment`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{Chain, RemoteArchive, RepoError};
use crate::format::{Digest, EntryKind, ImageHasher, IndexCheck, IndexEntry};

/// Where a run of blocks of a point comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    /// `count` blocks from `first` read as zero.
    Zero { first: u64, count: u64 },
    /// One data block held by archive `layer` of the chain (0 = the full).
    Data { layer: usize, entry: IndexEntry },
}

impl Resolved {
    /// One past the last block covered.
    pub fn end(&self) -> u64 {
        match self {
            Resolved::Zero { first, count } => first + count,
            Resolved::Data { entry, .. } => entry.block + 1,
        }
    }

    /// The block digest of a data block, `None` for zero blocks.
    pub fn digest(&self) -> Option<Digest> {
        match self {
            Resolved::Data {
                entry:
                    IndexEntry {
                        kind: EntryKind::Data { digest, .. },
                        ..
                    },
                ..
            } => Some(*digest),
            _ => None,
        }
    }
}

struct Layer {
    archive: Arc<RemoteArchive>,
    /// Blocks at or past `limit` are not visible through this layer: some archive from
    /// this one to the tip had a smaller volume.
    limit: u64,
    next_segment: usize,
    entries: Arc<Vec<IndexEntry>>,
    pos: usize,
    /// The whole-index check of this archive ([`ChainCursor::checked`]), while every
    /// segment is read in order; dropped when one is skipped.
    check: Option<IndexCheck>,
    /// Where decoded segments are kept between cursors ([`ChainCursor::with_segments`]).
    segments: Option<Arc<SegmentCache>>,
}

/// Decoded index segments kept for the cursors of one chain that come back to them
/// (random reads start a cursor per read; verify walks the points of a volume, each
/// through the chain of the one before), bounded in segments or in bytes. Each kept
/// segment holds its archive, so the archive's address keys it safely.
pub struct SegmentCache {
    limit: Limit,
    inner: Mutex<Kept>,
}

/// How much a [`SegmentCache`] keeps.
#[derive(Clone, Copy)]
enum Limit {
    /// At most this many segments, the least recently used dropped first.
    Segments(usize),
    /// At most this many bytes of decoded entries; once full, further segments are
    /// read each time they are needed (a scan in chain order would evict every segment
    /// before its next use).
    Bytes(usize),
}

#[derive(Default)]
struct Kept {
    tick: u64,
    bytes: usize,
    segments: HashMap<(usize, usize), KeptSegment>,
}

struct KeptSegment {
    archive: Arc<RemoteArchive>,
    entries: Arc<Vec<IndexEntry>>,
    used: u64,
}

impl KeptSegment {
    fn bytes(&self) -> usize {
        self.entries.len() * std::mem::size_of::<IndexEntry>()
    }
}

impl SegmentCache {
    /// A cache of at most `limit` segments (at least one), the least recently used
    /// dropped first.
    pub fn new(limit: usize) -> SegmentCache {
        SegmentCache {
            limit: Limit::Segments(limit.max(1)),
            inner: Mutex::default(),
        }
    }

    /// A cache of at most `limit` bytes of decoded entries, keeping the segments read
    /// first (see [`retain`](Self::retain)).
    pub fn bytes(limit: usize) -> SegmentCache {
        SegmentCache {
            limit: Limit::Bytes(limit),
            inner: Mutex::default(),
        }
    }

    /// Drops the segments of archives that are not in `chain`.
    pub fn retain(&self, chain: &Chain) {
        let mut inner = self.inner.lock().expect("segment cache lock");
        inner
            .segments
            .retain(|_, s| chain.archives.iter().any(|a| Arc::ptr_eq(a, &s.archive)));
        inner.bytes = inner.segments.values().map(KeptSegment::bytes).sum();
    }

    /// Segment `i` of `archive`, read and checked on a miss.
    ///
    /// # Errors
    /// As [`RemoteArchive::segment`].
    pub async fn segment(
        &self,
        archive: &Arc<RemoteArchive>,
        i: usize,
    ) -> Result<Arc<Vec<IndexEntry>>, RepoError> {
        let key = (Arc::as_ptr(archive) as usize, i);
        {
            let mut inner = self.inner.lock().expect("segment cache lock");
            inner.tick += 1;
            let tick = inner.tick;
            if let Some(kept) = inner.segments.get_mut(&key) {
                kept.used = tick;
                return Ok(kept.entries.clone());
            }
        }
        let entries = Arc::new(archive.segment(i).await?);
        let kept = KeptSegment {
            archive: archive.clone(),
            entries: entries.clone(),
            used: 0,
        };
        let mut inner = self.inner.lock().expect("segment cache lock");
        if let Limit::Bytes(limit) = self.limit
            && inner.bytes + kept.bytes() > limit
        {
            return Ok(entries);
        }
        inner.tick += 1;
        let tick = inner.tick;
        inner.bytes += kept.bytes();
        if let Some(old) = inner
            .segments
            .insert(key, KeptSegment { used: tick, ..kept })
        {
            inner.bytes -= old.bytes();
        }
        if let Limit::Segments(limit) = self.limit {
            while inner.segments.len() > limit {
                let oldest = inner
                    .segments
                    .iter()
                    .min_by_key(|(_, s)| s.used)
                    .map(|(k, _)| *k);
                if let Some(k) = oldest
                    && let Some(old) = inner.segments.remove(&k)
                {
                    inner.bytes -= old.bytes();
                }
            }
        }
        Ok(entries)
    }
}

impl Layer {
    /// The first entry of this layer that ends after block `p`, loading segments as
    /// needed (segments that end before `p` are skipped unread).
    async fn entry_after(&mut self, p: u64) -> Result<Option<IndexEntry>, RepoError> {
        loop {
            while self.pos < self.entries.len() && self.entries[self.pos].end() <= p {
                self.pos += 1;
            }
            if let Some(e) = self.entries.get(self.pos) {
                return Ok(Some(*e));
            }
            let dir = self.archive.directory();
            while self.next_segment < dir.len() && dir[self.next_segment].end_block <= p {
                self.next_segment += 1;
                self.check = None;
            }
            if self.next_segment == dir.len() {
                return Ok(None);
            }
            self.entries = match &self.segments {
                Some(cache) => cache.segment(&self.archive, self.next_segment).await?,
                None => Arc::new(self.archive.segment(self.next_segment).await?),
            };
            if let Some(check) = &mut self.check {
                for e in self.entries.iter() {
                    check
                        .push(e)
                        .map_err(|source| self.archive.corrupt(source))?;
                }
            }
            self.pos = 0;
            self.next_segment += 1;
        }
    }
}

/// A forward-only cursor over the blocks of a chain's point.
pub struct ChainCursor {
    layers: Vec<Layer>,
    pos: u64,
    /// Layers below this index are the new parent's chain: runs they decide are
    /// skipped (0: nothing is skipped).
    floor: usize,
    /// A block yielded even when the layers below the floor decide it.
    boundary: Option<u64>,
    /// The floor applies to blocks below this one only; from here on every run is
    /// yielded, whoever decides it.
    floor_end: u64,
}

impl ChainCursor {
    /// A cursor at block 0 of the point `chain` ends at.
    pub fn new(chain: &Chain) -> Self {
        let mut limit = u64::MAX;
        let mut layers: Vec<Layer> = chain
            .archives
            .iter()
            .rev()
            .map(|a| {
                limit = limit.min(a.geometry().blocks());
                Layer {
                    archive: a.clone(),
                    limit,
                    next_segment: 0,
                    entries: Arc::default(),
                    pos: 0,
                    check: None,
                    segments: None,
                }
            })
            .collect();
        layers.reverse();
        ChainCursor {
            layers,
            pos: 0,
            floor: 0,
            boundary: None,
            floor_end: u64::MAX,
        }
    }

    /// A cursor over the runs of the point `chain` ends at that archives
    /// `floor..` of the chain decide: blocks they hold, and blocks they make read as
    /// zero because one of them had a smaller volume (FORMAT.md 11.1). Runs decided by
    /// archives below `floor` (or by none, when `floor > 0`) are skipped, except block
    /// `boundary`, which is always yielded. With `floor = 0` this is [`new`](Self::new).
    ///
    /// These are exactly the blocks a delta replacing archives `floor..` must hold to
    /// stand for the same point on top of archive `floor - 1` (plus the boundary block
    /// of a size change, rule 11.3). Index segments below the floor are read only for
    /// the boundary block.
    pub fn segment(chain: &Chain, floor: usize, boundary: Option<u64>) -> Self {
        ChainCursor {
            floor,
            boundary,
            ..ChainCursor::new(chain)
        }
    }

    /// This cursor with its floor applying only below block `end`: from `end` on, every
    /// run of the point is yielded (an incremental restore must write the blocks past
    /// the size its target held).
    pub fn floor_until(self, end: u64) -> Self {
        ChainCursor {
            floor_end: end,
            ..self
        }
    }

    /// This cursor reading index segments through `cache`, which keeps them for the
    /// next cursor over the same chain.
    pub fn with_segments(mut self, cache: &Arc<SegmentCache>) -> Self {
        for layer in &mut self.layers {
            layer.segments = Some(cache.clone());
        }
        self
    }

    /// This cursor checking the whole index of each archive whose segments it reads
    /// all, in order (FORMAT.md §13.3: a reader checks what it reads): the entries of
    /// each frame, the trailer's counts, the tiling of the body and a full archive's
    /// image digest. The last checks run when the cursor reaches its end.
    pub fn checked(mut self) -> Self {
        for layer in &mut self.layers {
            layer.check = Some(layer.archive.index_check());
        }
        self
    }

    /// Ends the checks of [`checked`](Self::checked) for the archives whose segments
    /// were all read.
    fn finish_checks(&mut self) -> Result<(), RepoError> {
        for layer in &mut self.layers {
            if layer.next_segment == layer.archive.directory().len()
                && let Some(check) = layer.check.take()
            {
                check
                    .finish()
                    .map_err(|source| layer.archive.corrupt(source))?;
            }
        }
        Ok(())
    }

    /// Moves forward to block `p` (never backwards).
    pub fn seek(&mut self, p: u64) {
        self.pos = self.pos.max(p);
    }

    /// The next run of the point, ending at or before `end`; `None` once the cursor
    /// reached `end`. Blocks past every archive's volume size read as zero, so `end`
    /// may lie beyond the chain's volume (a volume that grew).
    ///
    /// # Errors
    /// [`RepoError`] when an index segment cannot be read or is corrupt.
    pub async fn next(&mut self, end: u64) -> Result<Option<Resolved>, RepoError> {
        loop {
            let p = self.pos;
            if p >= end {
                self.finish_checks()?;
                return Ok(None);
            }
            let (r, skip) = self.step(p, end).await?;
            self.pos = r.end();
            if !skip {
                return Ok(Some(r));
            }
        }
    }

    /// The run at block `p`, and whether it lies below the floor (to be skipped).
    async fn step(&mut self, p: u64, end: u64) -> Result<(Resolved, bool), RepoError> {
        let mut bound = end;
        // The boundary block is a run of its own.
        let at_boundary = match self.boundary {
            Some(b) if b == p => {
                bound = bound.min(p + 1);
                true
            }
            Some(b) if b > p => {
                bound = bound.min(b);
                false
            }
            _ => false,
        };
        if p < self.floor_end {
            bound = bound.min(self.floor_end);
        }
        let floor = if at_boundary || p >= self.floor_end {
            0
        } else {
            self.floor
        };
        for (i, layer) in self.layers.iter_mut().enumerate().rev() {
            let below = i < floor;
            if below {
                // Everything from here down is the parent's: skip up to the next
                // block a layer above the floor decides.
                return Ok((
                    Resolved::Zero {
                        first: p,
                        count: bound - p,
                    },
                    true,
                ));
            }
            if p >= layer.limit {
                break;
            }
            bound = bound.min(layer.limit);
            match layer.entry_after(p).await? {
                Some(e) if e.block <= p => {
                    let r = match e.kind {
                        EntryKind::Data { .. } => Resolved::Data { layer: i, entry: e },
                        EntryKind::Zero { .. } => Resolved::Zero {
                            first: p,
                            count: e.end().min(bound) - p,
                        },
                    };
                    return Ok((r, false));
                }
                Some(e) => bound = bound.min(e.block),
                None => {}
            }
        }
        // Cut by a smaller volume at or above the floor, or (with floor 0) held by no
        // archive: zero.
        Ok((
            Resolved::Zero {
                first: p,
                count: bound - p,
            },
            false,
        ))
    }

    /// Feeds `hasher` with this point's blocks from `hasher.position()` up to `end`
    /// (without reading block data), moving the cursor there.
    ///
    /// # Errors
    /// As [`next`](Self::next).
    pub async fn feed(&mut self, hasher: &mut ImageHasher, end: u64) -> Result<(), RepoError> {
        self.seek(hasher.position());
        while let Some(r) = self.next(end).await? {
            match r {
                Resolved::Zero { count, .. } => hasher.zeros(count),
                data => hasher.data(&data.digest().expect("data block has a digest")),
            }
        }
        Ok(())
    }

    /// Digests of blocks `first..first + count` (`None` = zero), moving the cursor past
    /// them.
    ///
    /// # Errors
    /// As [`next`](Self::next).
    pub async fn digests(
        &mut self,
        first: u64,
        count: u64,
    ) -> Result<Vec<Option<Digest>>, RepoError> {
        self.seek(first);
        let mut out = Vec::with_capacity(count as usize);
        while let Some(r) = self.next(first + count).await? {
            match r {
                Resolved::Zero { count, .. } => {
                    out.extend(std::iter::repeat_n(None, count as usize))
                }
                data => out.push(data.digest()),
            }
        }
        Ok(out)
    }
}
