//! Random reads of one point: what an NBD export serves.
//!
//! The chain is resolved once, by the caller. A read is cut into *chunks* (aligned runs
//! of blocks, [`CHUNK_BYTES`] or one block); a chunk not in the cache is read with
//! the same pipeline restore uses (`read_units_with`: ranged reads of the frames
//! that hold its blocks, each frame decoded once, every block checked against its
//! digest with the format's `BlockCheck`) and kept, decoded, in a bounded LRU cache.
//! Concurrent reads of one chunk wait for one fetch. A block that does not check out
//! fails the reads that touch it ([`RandomError::Damaged`], naming archive and block)
//! and no other read: its chunk is decoded in record mode (`OnBad::Record`).
//!
//! A client reading sequentially ([`ReadStream`]) gets its next chunks loaded ahead
//! on other tasks ([`RandomReader::read_ahead`]), at most a quarter of the cache; a
//! chunk being loaded counts against the cache as well as the chunks held, so the
//! cache limit bounds both.
//!
//! [`RandomReader::extents`] answers which runs read as zero from the index alone
//! (a [`ChainCursor`]), without reading block data.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use futures::TryStreamExt;
use tokio::sync::OnceCell;

use super::ReadError;
use super::read::{BufferPool, Decoded, OnBad, ReadMode, Span, read_units_with};
use crate::format::Geometry;
use crate::repo::{Chain, ChainCursor, Repository, Resolved, SegmentCache};

/// The size of a cache chunk: large enough that a sequential reader's chunks cost
/// a handful of range reads, small enough that a random 4 KiB read does not
/// fetch much more than its frame.
pub const CHUNK_BYTES: u64 = 1 << 20;
/// Chunks read at once: each holds its fetched and its decoded bytes until it is
/// cached, so concurrent misses (a client with many requests in flight) are bounded
/// here, not by the cache.
const LOADS: usize = 4;
/// Chunks loaded ahead of a sequential reader (at most a quarter of the cache).
const AHEAD: u64 = 8;

/// Why a random read failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RandomError {
    /// The range does not lie inside the volume.
    #[error("bytes {start}..{end} lie outside the {size}-byte volume")]
    OutOfRange { start: u64, end: u64, size: u64 },
    /// A block of the range did not check out.
    #[error("archive {key}: block {block}: {detail}")]
    Damaged {
        key: String,
        block: u64,
        detail: String,
    },
    /// The repository failed (a store error after its retries, an unreadable index).
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// A decoded chunk: its block data and runs as the pipeline produced them, and the
/// blocks that did not check out.
struct Chunk {
    decoded: Decoded,
    /// (block, archive key, what is wrong).
    bad: Vec<(u64, String, String)>,
    /// Where its buffer goes back when it is dropped (evicted, and no read uses it).
    buffers: Arc<BufferPool>,
}

impl Drop for Chunk {
    fn drop(&mut self) {
        self.buffers.give(std::mem::take(&mut self.decoded.buf));
    }
}

impl Chunk {
    fn cost(&self) -> u64 {
        (self.decoded.buf.capacity() + 64 * self.decoded.spans.len()) as u64 + 256
    }
}

type Slot = Arc<OnceCell<Arc<Chunk>>>;

/// The chunks held, by first block, with their last use.
#[derive(Default)]
struct Lru {
    slots: HashMap<u64, (Slot, u64)>,
    tick: u64,
    /// Bytes held by the chunks that are loaded.
    held: u64,
}

/// Reads any byte range of one point, checked, through a bounded cache.
pub struct RandomReader {
    repo: Repository,
    chain: Arc<Chain>,
    geometry: Geometry,
    chunk_blocks: u64,
    cache_limit: u64,
    lru: Mutex<Lru>,
    /// Decoded index segments: a read's cursor finds its blocks without reading the
    /// index again.
    segments: Arc<SegmentCache>,
    /// Bounds the chunks being read ([`LOADS`]).
    loads: tokio::sync::Semaphore,
    /// Buffers of evicted chunks, decoded into again: a steady stream of loads
    /// allocates nothing.
    buffers: Arc<BufferPool>,
}

/// Where one client's reads have got to, to tell a sequential reader from a random
/// one: a read that starts where the one before ended, or up to a chunk past it (a
/// client skipping a hole it learnt of from block status), continues a stream.
#[derive(Debug, Default, Clone)]
pub struct ReadStream {
    end: u64,
    /// Reads in a row that continued the one before.
    streak: u32,
}

impl ReadStream {
    /// Notes a read of `range`; whether it is the second (or later) in a row to
    /// continue the one before.
    fn sequential(&mut self, range: &Range<u64>) -> bool {
        let continues = range.start >= self.end && range.start - self.end <= CHUNK_BYTES;
        self.streak = if continues { self.streak + 1 } else { 0 };
        self.end = range.end;
        self.streak >= 2
    }
}

impl RandomReader {
    /// A reader of the point `chain` ends at, caching at most about `cache_limit`
    /// bytes of decoded chunks (at least one chunk).
    pub fn new(repo: &Repository, chain: Chain, cache_limit: u64) -> RandomReader {
        let geometry = chain.tip().geometry();
        let bs = u64::from(geometry.block_size().get());
        // A segment holds up to 4096 entries (256 KiB decoded): a few per archive
        // keep a sequential reader and a working set from re-reading the index.
        let segments = Arc::new(SegmentCache::new(16 + 4 * chain.archives.len()));
        RandomReader {
            segments,
            loads: tokio::sync::Semaphore::new(LOADS),
            buffers: Arc::new(BufferPool::new(LOADS)),
            repo: repo.clone(),
            chain: Arc::new(chain),
            geometry,
            chunk_blocks: (CHUNK_BYTES / bs).max(1),
            cache_limit,
            lru: Mutex::new(Lru::default()),
        }
    }

    /// The chain served.
    pub fn chain(&self) -> &Chain {
        &self.chain
    }

    /// The volume's size in bytes.
    pub fn size(&self) -> u64 {
        self.geometry.size()
    }

    /// Bytes of decoded chunks held now.
    pub fn cached(&self) -> u64 {
        self.lru.lock().expect("cache lock").held
    }

    fn check_range(&self, range: &Range<u64>) -> Result<(), RandomError> {
        if range.start > range.end || range.end > self.size() {
            return Err(RandomError::OutOfRange {
                start: range.start,
                end: range.end,
                size: self.size(),
            });
        }
        Ok(())
    }

    /// Fills `out` with the point's bytes from `offset`.
    ///
    /// # Errors
    /// [`RandomError::OutOfRange`], [`RandomError::Damaged`] for a block that does not
    /// check out, [`RandomError::Read`] when the repository fails.
    pub async fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), RandomError> {
        let range = offset..offset + out.len() as u64;
        self.check_range(&range)?;
        if out.is_empty() {
            return Ok(());
        }
        let bs = u64::from(self.geometry.block_size().get());
        let chunk_bytes = self.chunk_blocks * bs;
        let mut pos = range.start;
        while pos < range.end {
            let first = pos / chunk_bytes * self.chunk_blocks;
            let chunk = self.chunk(first).await?;
            let chunk_start = first * bs;
            let until = range.end.min(chunk_start + chunk_bytes);
            copy_out(
                &chunk,
                bs,
                pos..until,
                &mut out[(pos - range.start) as usize..(until - range.start) as usize],
            )?;
            pos = until;
        }
        Ok(())
    }

    /// The chunk starting at block `first`, from the cache or read now.
    async fn chunk(&self, first: u64) -> Result<Arc<Chunk>, RandomError> {
        let slot = {
            let mut lru = self.lru.lock().expect("cache lock");
            lru.tick += 1;
            let tick = lru.tick;
            let (slot, used) = lru.slots.entry(first).or_default();
            *used = tick;
            slot.clone()
        };
        let mut loaded = false;
        let chunk = slot
            .get_or_try_init(|| async {
                loaded = true;
                let _permit = self.loads.acquire().await.expect("never closed");
                // Room for what the load fetches and decodes, made before it starts.
                let room = 2 * self.chunk_blocks * u64::from(self.geometry.block_size().get());
                self.hold(first, room);
                let chunk = self.load(first).await;
                let mut lru = self.lru.lock().expect("cache lock");
                lru.held = lru.held.saturating_sub(room);
                drop(lru);
                chunk.map(Arc::new)
            })
            .await?
            .clone();
        if loaded {
            self.hold(first, chunk.cost());
        }
        Ok(chunk)
    }

    /// Notes that the client `stream` reads `range`; once it reads sequentially,
    /// the next 8 chunks (`AHEAD`) are loaded ahead ([`Self::prefetch`]).
    /// Random reads load nothing ahead.
    pub fn read_ahead(self: &Arc<Self>, stream: &mut ReadStream, range: Range<u64>) {
        if stream.sequential(&range) {
            let chunk_bytes = self.chunk_blocks * u64::from(self.geometry.block_size().get());
            self.prefetch(range.end..range.end.saturating_add(AHEAD * chunk_bytes));
        }
    }

    /// Starts loading, each on a task of its own, the chunks of bytes `range` that
    /// are neither cached nor being loaded, as far as a quarter of the cache goes.
    /// A chunk that fails to load is not kept: the read that needs it tries again
    /// and reports the error.
    pub fn prefetch(self: &Arc<Self>, range: Range<u64>) {
        let chunk_bytes = self.chunk_blocks * u64::from(self.geometry.block_size().get());
        let end = range.end.min(self.size());
        let most = self.cache_limit / 4 / chunk_bytes;
        let chunks = (range.start / chunk_bytes..end.div_ceil(chunk_bytes)).take(most as usize);
        let mut lru = self.lru.lock().expect("cache lock");
        for c in chunks {
            let first = c * self.chunk_blocks;
            if lru.slots.contains_key(&first) {
                continue;
            }
            lru.tick += 1;
            let tick = lru.tick;
            lru.slots.insert(first, (Slot::default(), tick));
            let reader = self.clone();
            tokio::spawn(async move {
                if let Err(e) = reader.chunk(first).await {
                    tracing::debug!("reading block {first} ahead failed: {e}");
                }
            });
        }
    }

    /// Counts `cost` more bytes held and evicts the least recently used chunks past
    /// the limit (never the chunk `first`).
    fn hold(&self, first: u64, cost: u64) {
        let mut lru = self.lru.lock().expect("cache lock");
        lru.held += cost;
        while lru.held > self.cache_limit {
            let oldest = lru
                .slots
                .iter()
                .filter(|(k, (s, _))| **k != first && s.initialized())
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k);
            let Some(k) = oldest else { break };
            if let Some((slot, _)) = lru.slots.remove(&k) {
                let cost = slot.get().map_or(0, |c| c.cost());
                lru.held = lru.held.saturating_sub(cost);
            }
        }
    }

    /// Reads and checks the blocks of the chunk starting at block `first`.
    async fn load(&self, first: u64) -> Result<Chunk, RandomError> {
        let end = (first + self.chunk_blocks).min(self.geometry.blocks());
        let mut cursor = ChainCursor::new(&self.chain).with_segments(&self.segments);
        cursor.seek(first);
        let mode = ReadMode {
            on_bad: OnBad::Record,
            ..ReadMode::default()
        };
        let mut units = read_units_with(
            &self.repo,
            self.chain.clone(),
            cursor,
            end,
            1,
            self.buffers.clone(),
            mode,
            Ok::<Decoded, ReadError>,
        );
        let mut parts = Vec::new();
        while let Some(d) = units.stream.try_next().await? {
            parts.push(d);
        }
        units.finish().await?;
        Ok(merge_units(parts, self.buffers.clone()))
    }

    /// The runs of `range` that read as zero (`true`) or hold data (`false`), from
    /// the chain's indexes alone, as (length in bytes, zero); at most `max` runs
    /// (at least one), covering the start of `range`.
    ///
    /// # Errors
    /// [`RandomError::OutOfRange`], [`RandomError::Read`].
    pub async fn extents(
        &self,
        range: Range<u64>,
        max: usize,
    ) -> Result<Vec<(u64, bool)>, RandomError> {
        self.check_range(&range)?;
        let bs = u64::from(self.geometry.block_size().get());
        let mut cursor = ChainCursor::new(&self.chain).with_segments(&self.segments);
        cursor.seek(range.start / bs);
        let end = range.end.div_ceil(bs);
        let mut runs: Vec<(u64, bool)> = Vec::new();
        while let Some(r) = cursor.next(end).await.map_err(ReadError::from)? {
            let (blocks, zero) = match r {
                Resolved::Zero { first, count } => (first..first + count, true),
                Resolved::Data { entry, .. } => (entry.block..entry.block + 1, false),
            };
            let bytes = (blocks.start * bs).max(range.start)..(blocks.end * bs).min(range.end);
            let len = bytes.end - bytes.start;
            let full = runs.len() == max.max(1);
            match runs.last_mut() {
                Some((l, z)) if *z == zero => *l += len,
                _ if full => break,
                _ => runs.push((len, zero)),
            }
        }
        Ok(runs)
    }
}

/// One chunk from the units the pipeline yielded (usually one).
fn merge_units(parts: Vec<Decoded>, buffers: Arc<BufferPool>) -> Chunk {
    let mut bad = Vec::new();
    let mut parts = parts.into_iter();
    let mut d = parts.next().unwrap_or_default();
    let mut take_bad = |d: &mut Decoded| {
        for b in d.bad.drain(..) {
            let error = b.error.to_string();
            bad.extend(b.also.iter().map(|&x| (x, b.key.clone(), error.clone())));
            bad.push((b.block, b.key, error));
        }
    };
    take_bad(&mut d);
    for mut p in parts {
        take_bad(&mut p);
        let base = d.buf.len();
        d.buf.extend_from_slice(&p.buf);
        d.spans.extend(p.spans.into_iter().map(|s| match s {
            Span::Data {
                first,
                bytes,
                digests,
            } => Span::Data {
                first,
                bytes: bytes.start + base..bytes.end + base,
                digests,
            },
            zero => zero,
        }));
    }
    d.digests = Vec::new();
    d.buf.shrink_to_fit();
    Chunk {
        decoded: d,
        bad,
        buffers,
    }
}

/// Copies bytes `range` of the volume (inside `chunk`) into `out`.
fn copy_out(chunk: &Chunk, bs: u64, range: Range<u64>, out: &mut [u8]) -> Result<(), RandomError> {
    let mut pos = range.start;
    for span in &chunk.decoded.spans {
        let (first, blocks_end, data) = match span {
            Span::Zero { first, count } => (*first, first + count, None),
            Span::Data { first, bytes, .. } => (
                *first,
                first + (bytes.len() as u64).div_ceil(bs),
                Some(&chunk.decoded.buf[bytes.clone()]),
            ),
        };
        let (start, end) = (first * bs, blocks_end * bs);
        if end <= pos {
            continue;
        }
        if start > pos || pos >= range.end {
            break;
        }
        let until = range.end.min(end);
        let dst = &mut out[(pos - range.start) as usize..(until - range.start) as usize];
        match data {
            None => dst.fill(0),
            Some(data) => {
                // The volume's last block may be short: bytes past it do not exist
                // (the range was checked against the volume's size).
                let from = (pos - start) as usize;
                dst.copy_from_slice(&data[from..from + dst.len()]);
            }
        }
        pos = until;
    }
    if pos < range.end {
        // A block missing from the spans did not check out.
        let block = pos / bs;
        let (key, detail) = chunk
            .bad
            .iter()
            .find(|(b, _, _)| *b == block)
            .or(chunk.bad.iter().rev().find(|(b, _, _)| *b <= block))
            .or(chunk.bad.first())
            .map(|(_, k, d)| (k.clone(), d.clone()))
            .unwrap_or_else(|| (String::new(), "block missing from its chunk".into()));
        return Err(RandomError::Damaged { key, block, detail });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{CHUNK_BYTES, ReadStream};

    #[test]
    fn a_stream_is_sequential_from_its_second_continuing_read() {
        // The first read from the start of the volume continues the empty stream.
        let mut s = ReadStream::default();
        assert!(!s.sequential(&(0..4096)));
        assert!(s.sequential(&(4096..8192)));
        assert!(s.sequential(&(8192..12288)));
        let mut s = ReadStream::default();
        assert!(!s.sequential(&(5 << 20..(5 << 20) + 4096)));
        assert!(!s.sequential(&((5 << 20) + 4096..(5 << 20) + 8192)));
        assert!(s.sequential(&((5 << 20) + 8192..(5 << 20) + 12288)));
        // A hole of up to a chunk skipped (block status told the client) continues it.
        assert!(s.sequential(
            &((5 << 20) + 12288 + CHUNK_BYTES..(5 << 20) + 12288 + CHUNK_BYTES + 4096)
        ));
        // Backwards, or far ahead: random, and the streak starts again.
        assert!(!s.sequential(&(0..4096)));
        assert!(!s.sequential(&(4096..8192)));
        assert!(!s.sequential(&(1 << 30..(1 << 30) + 4096)));
        assert!(!s.sequential(&(1 << 20..(1 << 20) + 4096)));
    }
}
