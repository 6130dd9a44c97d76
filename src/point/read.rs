//! Reading the blocks of a point: the fetch and decode pipeline shared by restore and
//! by merges (prune, consolidated copies).
//!
//! A [`ChainCursor`] says where each block comes from; [`plan`](super::plan) groups its
//! runs into work units (coalesced range reads); units are fetched concurrently, then
//! decoded and checked block by block on the blocking pool, several at a time, and come
//! back in block order as [`Decoded`] units. A caller-supplied step runs on each unit on
//! the blocking pool too (restore passes it through; a merge compresses it).

use std::cell::RefCell;
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::task::AtomicWaker;
use futures::{StreamExt, TryStreamExt};
use tokio::task::JoinHandle;
use tokio_util::task::AbortOnDropHandle;

use super::ReadError;
pub(crate) use super::plan::FrameFilter;
use super::plan::{Item, UnitLimits, Work, plan_works};
use crate::format::{
    BlockCheck, Digest, FrameDecoder, FrameKind, check_frame_content, check_frame_extent,
    stored_frame_content_len,
};
use crate::repo::{Chain, ChainCursor, Repository};

/// Work unit size and range reads in flight, by store. Bigger reads matter most
/// locally: a local file read restarts its readahead on every request (from disk, cold
/// cache, on the 4 GiB bench image: 2 MiB units x 4 took 6.9 s, 4 MiB x 3 5.3 s at
/// 60 MB peak RSS). An object store answers each request after a latency the reads in
/// flight have to cover, which depends on the store and the network: there the window
/// starts small and grows while the reader waits for its reads (see [`Window`]), up to
/// a budget of 16 MiB of fetched bytes held (in flight, or fetched and not decoded
/// yet: [`Held`]), up to 9 reads of the bench image's units (4 MiB of blocks, 1.7 MiB
/// compressed). With 20 ms per request, 8 MiB topped out near 250 MiB/s (a 1 GiB
/// restore 5.9 s against 4.2 s without the delay); 16 MiB hides it (3.9 s against
/// 3.7 s). Peak RSS is what bounds the budget (the 64 MiB goal of issue 14): 16 MiB
/// held, at most `threads` + 2 decoded units of 4 MiB (restore), the connections' read
/// buffers and the binary's pages (README, *Memory of a restore from S3*).
fn tuning(repo: &Repository) -> (UnitLimits, Window) {
    let limits = UnitLimits {
        fetch: 4 << 20,
        data: 4 << 20,
    };
    if repo.is_local() {
        (limits, Window::fixed(3))
    } else {
        (limits, Window::adaptive(2, 16 << 20))
    }
}

/// How many range reads a reader keeps in flight: `reads`, and more while the reads
/// are what it waits for. A read it had to wait for, when all of `reads` were in
/// flight, widens the window by one; reads are only started while the bytes held
/// (in flight, and fetched but not decoded yet: [`Held`]) stay within `budget` (a
/// reader holding nothing may always start one, however large).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    reads: usize,
    /// Most reads in flight.
    most: usize,
    budget: u64,
}

impl Window {
    fn fixed(reads: usize) -> Window {
        Window {
            reads,
            most: reads,
            budget: u64::MAX,
        }
    }

    fn adaptive(reads: usize, budget: u64) -> Window {
        Window {
            reads,
            most: usize::MAX,
            budget,
        }
    }

    /// Whether a read of `len` bytes may start with `count` reads in flight and `bytes`
    /// held (those of the reads in flight among them).
    fn admits(&self, count: usize, bytes: u64, len: u64) -> bool {
        (count == 0 && bytes == 0) || (count < self.reads && bytes + len <= self.budget)
    }

    /// After a read the reader waited for with `count` reads in flight: wider when the
    /// count was the limit (not the budget).
    fn waited(&mut self, count: usize) {
        if count >= self.reads && self.reads < self.most {
            self.reads += 1;
        }
    }
}

/// The fetched bytes a reader holds, and the reader to wake when some are let go.
#[derive(Debug, Default)]
struct Holding {
    bytes: AtomicU64,
    reader: AtomicWaker,
}

/// Fetched bytes a reader holds, counted against its window's budget from the start
/// of their read until this is dropped (after their unit is decoded; a merge's unit
/// may keep some of them beyond, the stored frames it copies whole).
#[derive(Debug)]
struct Held {
    bytes: u64,
    of: Arc<Holding>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.of.bytes.fetch_sub(self.bytes, Ordering::Relaxed);
        self.of.reader.wake();
    }
}

/// The works `rx` yields, fetched with the reads in flight that `window` allows, in
/// order; each with its [`Held`] bytes, so that the budget bounds both the reads in
/// flight and the fetched units waiting for or being decoded. Each read runs as its
/// own task, so that reads progress while the reader is busy elsewhere (writing a unit,
/// waiting for a decode) and the latency of an object store is hidden then too;
/// dropping the stream, or its first error, aborts the reads still running (a restore
/// stopped by SIGINT or a bad block leaves none behind).
fn fetch_ahead<F, Fut>(
    mut rx: tokio::sync::mpsc::Receiver<Work>,
    mut window: Window,
    fetch: F,
) -> impl futures::Stream<Item = Result<(Work, Vec<Bytes>, Held), ReadError>>
where
    F: Fn(Work) -> Fut,
    Fut: Future<Output = Result<(Work, Vec<Bytes>), ReadError>> + Send + 'static,
{
    let mut reads = futures::stream::FuturesOrdered::new();
    let held = Arc::new(Holding::default());
    let (mut next, mut planned) = (None::<Work>, false);
    // Reads in flight when the reader last found the oldest one not done yet.
    let mut waited = None;
    futures::stream::poll_fn(move |cx| {
        held.reader.register(cx.waker());
        loop {
            if next.is_none() && !planned {
                match rx.poll_recv(cx) {
                    Poll::Ready(Some(w)) => next = Some(w),
                    Poll::Ready(None) => planned = true,
                    Poll::Pending => {}
                }
            }
            match next.take() {
                Some(w)
                    if window.admits(
                        reads.len(),
                        held.bytes.load(Ordering::Relaxed),
                        w.fetched(),
                    ) =>
                {
                    held.bytes.fetch_add(w.fetched(), Ordering::Relaxed);
                    reads.push_back(AbortOnDropHandle::new(tokio::spawn(fetch(w))));
                }
                w => {
                    next = w;
                    break;
                }
            }
        }
        match reads.poll_next_unpin(cx) {
            Poll::Ready(Some(done)) => {
                match done.unwrap_or_else(|e| Err(ReadError::Task(format!("range read: {e}")))) {
                    Ok((w, b)) => {
                        if let Some(count) = waited.take() {
                            window.waited(count);
                        }
                        let held = Held {
                            bytes: w.fetched(),
                            of: held.clone(),
                        };
                        Poll::Ready(Some(Ok((w, b, held))))
                    }
                    Err(e) => {
                        // The other reads are of no use now: aborted, and no more started.
                        reads = futures::stream::FuturesOrdered::new();
                        (next, planned) = (None, true);
                        Poll::Ready(Some(Err(e)))
                    }
                }
            }
            Poll::Ready(None) if planned && next.is_none() => Poll::Ready(None),
            Poll::Ready(None) => Poll::Pending,
            Poll::Pending => {
                waited = Some(reads.len());
                Poll::Pending
            }
        }
    })
}

/// A run of a decoded unit, in block order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Span {
    /// `count` blocks from `first` read as zero.
    Zero { first: u64, count: u64 },
    /// Consecutive data blocks from `first`: their bytes are `buf[bytes]`, their
    /// digests `digests[digests]` of the unit.
    Data {
        first: u64,
        bytes: Range<usize>,
        digests: Range<usize>,
    },
}

/// A decoded and checked work unit.
#[derive(Default)]
pub(crate) struct Decoded {
    /// The unit's block data, consecutive blocks adjacent.
    pub buf: Vec<u8>,
    /// The unit's runs, in block order (with gaps where the cursor skipped blocks).
    pub spans: Vec<Span>,
    /// Digests of the unit's data blocks, in order.
    pub digests: Vec<Digest>,
    /// Bytes read from the repository.
    pub fetched: u64,
    /// Blocks that did not check out ([`OnBad::Record`] only; not in `buf`, `spans`
    /// or `digests`).
    pub bad: Vec<BadBlock>,
    /// With [`ReadMode::stored`]: the unit's frames as stored, and where each data
    /// block came from (empty otherwise).
    pub stored: StoredFrames,
}

/// The stored frames of a decoded unit, for a merge that copies the frames surviving
/// whole instead of recompressing them.
#[derive(Debug, Default)]
pub(crate) struct StoredFrames {
    /// Each frame of the unit as stored (a slice of the fetched bytes), with its kind.
    pub frames: Vec<(FrameKind, Bytes)>,
    /// Per data block of the unit (parallel to [`Decoded::digests`]): the index of
    /// its frame in `frames`, and its slot in that frame.
    pub blocks: Vec<(usize, u16)>,
}

/// How a decode treats a block that does not check out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum OnBad {
    /// Fail the stream with [`ReadError::Corrupt`] (restore, merges).
    #[default]
    Fail,
    /// Record it in [`Decoded::bad`] and go on (verify).
    Record,
}

/// A block that did not check out, recorded in [`OnBad::Record`] mode.
#[derive(Debug)]
pub(crate) struct BadBlock {
    /// The block (the first of its frame when the frame itself does not decode).
    pub block: u64,
    /// When the frame itself does not decode: the frame's other blocks the read
    /// needed, which are lost with it (in block order).
    pub also: Vec<u64>,
    /// The archive holding it.
    pub key: String,
    /// What is wrong.
    pub error: crate::format::FormatError,
}

/// What [`read_units_with`] reads and how it treats bad blocks.
#[derive(Clone, Default)]
pub(crate) struct ReadMode {
    /// Only the frames this accepts (all without one): a sampled verify.
    pub keep: Option<FrameFilter>,
    /// What a block that does not check out does.
    pub on_bad: OnBad,
    /// Keep the stored frames in [`Decoded::stored`] (merges).
    pub stored: bool,
    /// The point is one archive whose frames are read whole (verify): each frame's
    /// content length as the frame declares it is checked against its blocks
    /// ([`check_frame_content`]).
    pub whole_frames: bool,
}

/// The part of a [`ReadMode`] a decode needs.
#[derive(Clone, Copy)]
struct Flags {
    on_bad: OnBad,
    stored: bool,
    whole_frames: bool,
}

pub(crate) use crate::buffers::BufferPool;

/// The pool of unit buffers a reader of `threads` decoding threads hands back: as many
/// as units in flight (decoding, queued and being written), so that on any number of
/// cores the steady state allocates none.
pub(crate) fn unit_buffers(threads: usize) -> Arc<BufferPool> {
    Arc::new(BufferPool::new(threads.max(1) + 6))
}

/// The decoded units of a point, in block order.
pub(crate) struct Units<T, E> {
    /// The units, each passed through the caller's step.
    pub stream: BoxStream<'static, Result<T, E>>,
    /// The planner; its error (an unreadable index) is reported by [`finish`](Self::finish).
    planner: JoinHandle<Result<(), ReadError>>,
}

impl<T, E> Units<T, E> {
    /// Waits for the planner after the stream ended.
    ///
    /// # Errors
    /// The planner's error.
    pub(crate) async fn finish(self) -> Result<(), ReadError> {
        drop(self.stream);
        self.planner
            .await
            .map_err(|e| ReadError::Task(e.to_string()))?
    }
}

/// Streams the runs `cursor` yields over `chain` (whose tip is the point read), up to
/// block `end`, as decoded units passed through `step` on the blocking pool; `threads`
/// units are decoded at a time. Every data block is checked with the format's
/// [`BlockCheck`], and the index of every archive read in full with its `IndexCheck`
/// ([`ChainCursor::checked`]).
pub(crate) fn read_units<T, E, F>(
    repo: &Repository,
    chain: Arc<Chain>,
    cursor: ChainCursor,
    end: u64,
    threads: usize,
    pool: Arc<BufferPool>,
    step: F,
) -> Units<T, E>
where
    T: Send + 'static,
    E: From<ReadError> + Send + 'static,
    F: Fn(Decoded) -> Result<T, E> + Send + Sync + 'static,
{
    read_units_with(
        repo,
        chain,
        cursor,
        end,
        threads,
        pool,
        ReadMode::default(),
        step,
    )
}

/// [`read_units`] reading only the frames `mode.keep` accepts, recording bad blocks
/// instead of failing with `mode.on_bad` [`OnBad::Record`], and keeping the stored
/// frames with `mode.stored`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn read_units_with<T, E, F>(
    repo: &Repository,
    chain: Arc<Chain>,
    cursor: ChainCursor,
    end: u64,
    threads: usize,
    pool: Arc<BufferPool>,
    mode: ReadMode,
    step: F,
) -> Units<T, E>
where
    T: Send + 'static,
    E: From<ReadError> + Send + 'static,
    F: Fn(Decoded) -> Result<T, E> + Send + Sync + 'static,
{
    let flags = Flags {
        on_bad: mode.on_bad,
        stored: mode.stored,
        whole_frames: mode.whole_frames,
    };
    let (limits, window) = tuning(repo);
    let (tx, rx) = tokio::sync::mpsc::channel::<Work>(8);
    let block_size = u64::from(chain.tip().geometry().block_size().get());
    let planner = tokio::spawn(plan_works(
        cursor.checked(),
        end,
        block_size,
        limits,
        mode.keep,
        tx,
    ));
    let step = Arc::new(step);
    let reader = chain.clone();
    let stream = fetch_ahead(rx, window, move |w| fetch(reader.clone(), w))
        .map_err(E::from)
        .map_ok(move |(w, bytes, held)| {
            let (chain, pool, step) = (chain.clone(), pool.clone(), step.clone());
            async move {
                tokio::task::spawn_blocking(move || {
                    let decoded = decode(&chain, w, bytes, &pool, flags);
                    drop(held);
                    step(decoded?)
                })
                .await
                .map_err(|e| E::from(ReadError::Task(e.to_string())))?
            }
        })
        .try_buffered(threads.max(1))
        .boxed();
    Units { stream, planner }
}

/// Reads the byte ranges of a work unit.
async fn fetch(chain: Arc<Chain>, w: Work) -> Result<(Work, Vec<Bytes>), ReadError> {
    let reads = w
        .fetches
        .iter()
        .map(|f| chain.archives[f.layer].read(f.range.clone()));
    let bytes = futures::future::try_join_all(reads).await?;
    Ok((w, bytes))
}

/// Per-thread decoding state, reused across work units so that steady-state decoding
/// allocates nothing: a zstd context, the block check of the chain's geometry, and per
/// archive of the chain the index of the frame it holds decoded and that frame's
/// content.
struct Scratch {
    decoder: FrameDecoder,
    check: Option<BlockCheck>,
    frames: Vec<(Option<usize>, Vec<u8>)>,
}

thread_local! {
    static SCRATCH: RefCell<Option<Scratch>> = const { RefCell::new(None) };
}

/// Decodes the frames of `w` one at a time, checks every block against its digest and
/// copies it into the unit's buffer; blocks adjacent on the volume become one span.
fn decode(
    chain: &Chain,
    w: Work,
    bytes: Vec<Bytes>,
    pool: &BufferPool,
    flags: Flags,
) -> Result<Decoded, ReadError> {
    SCRATCH.with_borrow_mut(|slot| {
        let scratch = match slot {
            Some(s) => s,
            None => slot.insert(Scratch {
                decoder: FrameDecoder::new().map_err(|source| ReadError::Corrupt {
                    key: String::new(),
                    source,
                })?,
                check: None,
                frames: Vec::new(),
            }),
        };
        let mut buf = pool.take();
        buf.clear();
        decode_with(chain, w, bytes, buf, scratch, flags)
    })
}

fn decode_with(
    chain: &Chain,
    w: Work,
    bytes: Vec<Bytes>,
    buf: Vec<u8>,
    scratch: &mut Scratch,
    flags: Flags,
) -> Result<Decoded, ReadError> {
    let Flags {
        on_bad,
        stored,
        whole_frames,
    } = flags;
    let geometry = chain.tip().geometry();
    let digester = chain.tip().digester();
    let check = match &scratch.check {
        Some(c) if c.geometry() == geometry && c.digester() == digester => c.clone(),
        _ => scratch
            .check
            .insert(BlockCheck::new(geometry, digester))
            .clone(),
    };
    // Names the archive only when there is an error: this sits on the per-block path.
    let (fetches, frames) = (&w.fetches, &w.frames);
    let key_of = |frame: usize| {
        chain.archives[fetches[frames[frame].fetch].layer]
            .key()
            .to_string()
    };
    let corrupt = |frame: usize| {
        move |source| ReadError::Corrupt {
            key: key_of(frame),
            source,
        }
    };
    let mut d = Decoded {
        buf,
        spans: Vec::new(),
        digests: Vec::with_capacity(w.data_blocks as usize),
        fetched: bytes.iter().map(|b| b.len() as u64).sum(),
        bad: Vec::new(),
        stored: StoredFrames::default(),
    };
    if stored {
        // A merge copies frames as 1.x frames: a sealed one is opened here (and
        // sealed again by the writer of the merged archive).
        d.stored.frames = frames
            .iter()
            .enumerate()
            .map(|(f, r)| {
                let start = (r.offset - fetches[r.fetch].range.start) as usize;
                let raw = bytes[r.fetch].slice(start..start + r.len as usize);
                let layer = &chain.archives[fetches[r.fetch].layer];
                if !layer.is_encrypted() {
                    return Ok((r.kind, raw));
                }
                let opened = layer
                    .open_frame(r.offset, r.first_block, &raw)
                    .map_err(corrupt(f))?;
                Ok((r.kind, Bytes::from(opened.into_owned())))
            })
            .collect::<Result<_, ReadError>>()?;
        d.stored.blocks.reserve(w.data_blocks as usize);
    }
    // Exactly: a pooled buffer smaller than this unit would otherwise double, up to
    // twice a unit's limit, and keep that size in the pool.
    d.buf
        .reserve_exact((w.data_blocks * u64::from(geometry.block_size().get())) as usize);
    // The current frame of each archive: an archive's frames come in increasing
    // order, so one per archive means each frame is decoded once even when newer
    // archives' blocks interleave with its blocks.
    scratch
        .frames
        .resize_with(chain.archives.len(), Default::default);
    for (decoded, _) in &mut scratch.frames {
        *decoded = None;
    }
    // A frame that did not decode (Record mode), and where its first block was
    // recorded in `d.bad`: its other blocks are added there.
    let mut failed: Option<(usize, usize)> = None;
    // With whole frames: per frame, its first block, the content its blocks need and
    // the content length it declares.
    let mut sizes: Vec<(u64, usize, Option<usize>)> = Vec::new();
    if whole_frames {
        sizes.resize(w.frames.len(), (0, 0, None));
    }
    for item in &w.items {
        match *item {
            Item::Zero { first, count } => d.spans.push(Span::Zero { first, count }),
            Item::Block {
                frame: f,
                block,
                slot,
                digest,
            } => {
                if let Some((first, needed, _)) = sizes.get_mut(f) {
                    if *needed == 0 {
                        *first = block;
                    }
                    *needed += geometry.block_len(block) as usize;
                }
                if let Some((_, at)) = failed.filter(|&(frame, _)| frame == f) {
                    d.bad[at].also.push(block);
                    continue;
                }
                let r = &w.frames[f];
                let (decoded, content) = &mut scratch.frames[w.fetches[r.fetch].layer];
                if *decoded != Some(f) {
                    let start = (r.offset - w.fetches[r.fetch].range.start) as usize;
                    let stored = &bytes[r.fetch][start..start + r.len as usize];
                    *decoded = None;
                    let layer = &chain.archives[w.fetches[r.fetch].layer];
                    let decoder = &mut scratch.decoder;
                    // The decrypt, right before the frame is decoded (merges opened
                    // their stored frames above).
                    let opened = if flags.stored {
                        Ok(std::borrow::Cow::Borrowed(&d.stored.frames[f].1[..]))
                    } else {
                        layer.open_frame(r.offset, r.first_block, stored)
                    };
                    let done = opened.and_then(|stored| {
                        let len = stored_frame_content_len(r.kind, &stored)?;
                        check_frame_extent(&layer.geometry(), len, block, slot)?;
                        decoder.decode_into(r.kind, &stored, len, content)
                    });
                    match (done, on_bad) {
                        (Ok(_), _) => {
                            *decoded = Some(f);
                            if let Some(size) = sizes.get_mut(f) {
                                size.2 = Some(content.len());
                            }
                        }
                        (Err(error), OnBad::Record) => {
                            let key = key_of(f);
                            failed = Some((f, d.bad.len()));
                            d.bad.push(BadBlock {
                                block,
                                also: Vec::new(),
                                key,
                                error,
                            });
                            continue;
                        }
                        (Err(e), OnBad::Fail) => return Err(corrupt(f)(e)),
                    }
                }
                let data = match check.block(content, block, slot, digest) {
                    Ok(data) => data,
                    Err(error) if on_bad == OnBad::Record => {
                        d.bad.push(BadBlock {
                            block,
                            also: Vec::new(),
                            key: key_of(f),
                            error,
                        });
                        continue;
                    }
                    Err(e) => return Err(corrupt(f)(e)),
                };
                let bytes = d.buf.len()..d.buf.len() + data.len();
                d.buf.extend_from_slice(data);
                d.digests.push(digest);
                if stored {
                    d.stored.blocks.push((f, slot));
                }
                let digests = d.digests.len() - 1..d.digests.len();
                match d.spans.last_mut() {
                    Some(Span::Data {
                        first,
                        bytes: b,
                        digests: g,
                    }) if *first + g.len() as u64 == block => {
                        b.end = bytes.end;
                        g.end = digests.end;
                    }
                    _ => d.spans.push(Span::Data {
                        first: block,
                        bytes,
                        digests,
                    }),
                }
            }
        }
    }
    for (f, &(block, needed, declared)) in sizes.iter().enumerate() {
        let Some(declared) = declared else { continue };
        match check_frame_content(w.frames[f].offset, declared, needed) {
            Ok(()) => {}
            Err(error) if on_bad == OnBad::Record => d.bad.push(BadBlock {
                block,
                also: Vec::new(),
                key: key_of(f),
                error,
            }),
            Err(e) => return Err(corrupt(f)(e)),
        }
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use bytes::Bytes;
    use futures::StreamExt;

    use super::super::plan::Fetch;
    use super::{ReadError, Window, Work, fetch_ahead};
    use crate::format::FormatError;
    use crate::repo::RepoError;

    type Fetched = Result<(Work, Vec<Bytes>), ReadError>;

    /// A planner's channel holding `n` (empty) works.
    fn planned(n: usize) -> tokio::sync::mpsc::Receiver<Work> {
        planned_of(n, 0)
    }

    /// A planner's channel holding `n` works, each one range read of `len` bytes.
    fn planned_of(n: usize, len: u64) -> tokio::sync::mpsc::Receiver<Work> {
        let (tx, rx) = tokio::sync::mpsc::channel(n);
        for _ in 0..n {
            let fetches = match len {
                0 => Vec::new(),
                _ => vec![Fetch {
                    layer: 0,
                    range: 0..len,
                }],
            };
            tx.try_send(Work {
                fetches,
                ..Work::default()
            })
            .unwrap();
        }
        rx
    }

    /// Waits until only `left` holders of `live` remain (the fetch tasks holding it
    /// ended), or fails after a second.
    async fn until_held_by(live: &Arc<()>, left: usize) {
        for _ in 0..100 {
            if Arc::strong_count(live) == left {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "{} holders of a fetch's guard, not {left}",
            Arc::strong_count(live)
        );
    }

    #[tokio::test]
    async fn dropping_the_reader_aborts_its_range_reads() {
        let live = Arc::new(());
        let guard = live.clone();
        let mut reads = Box::pin(fetch_ahead(planned(5), Window::fixed(3), move |_| {
            let held = guard.clone();
            async move {
                let _held = held;
                std::future::pending::<Fetched>().await
            }
        }));
        let waited = tokio::time::timeout(Duration::from_millis(50), reads.next()).await;
        assert!(waited.is_err(), "no read ends");
        // The test, the fetch function and the 3 reads of the window.
        until_held_by(&live, 5).await;
        drop(reads);
        until_held_by(&live, 1).await;
    }

    #[tokio::test]
    async fn a_failed_range_read_is_reported_with_its_object_and_range_and_stops_the_others() {
        let live = Arc::new(());
        let guard = live.clone();
        let calls = AtomicUsize::new(0);
        let mut reads = Box::pin(fetch_ahead(planned(5), Window::fixed(3), move |_| {
            let (held, call) = (guard.clone(), calls.fetch_add(1, Ordering::Relaxed));
            async move {
                let _held = held;
                if call > 0 {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                Err(ReadError::Repo(RepoError::Corrupt {
                    key: "volumes/vm/archives/1.tarc".into(),
                    source: FormatError::Truncated {
                        what: "archive object",
                        needed: 8 << 20,
                        available: 6 << 20,
                    },
                }))
            }
        }));
        let err = reads.next().await.unwrap().unwrap_err();
        assert_eq!(
            err.to_string(),
            "archive volumes/vm/archives/1.tarc is corrupt: truncated: archive object needs \
             8388608 bytes, only 6291456 available (run `thinarc verify`; other volumes are \
             unaffected)"
        );
        // The reads in flight are aborted, no more start, and the stream ends.
        until_held_by(&live, 2).await;
        assert!(reads.next().await.is_none());
        assert_eq!(Arc::strong_count(&live), 2);
    }

    #[tokio::test]
    async fn fetched_bytes_count_against_the_budget_until_their_unit_is_decoded() {
        // Reads of 4 MiB, a window of up to 8 reads and 8 MiB held.
        let started = Arc::new(AtomicUsize::new(0));
        let count = started.clone();
        let mut reads = Box::pin(fetch_ahead(
            planned_of(6, 4 << 20),
            Window::adaptive(8, 8 << 20),
            move |w| {
                count.fetch_add(1, Ordering::Relaxed);
                async move { Ok((w, Vec::new())) }
            },
        ));
        let first = reads.next().await.unwrap().unwrap();
        let second = reads.next().await.unwrap().unwrap();
        // Two units held (not decoded yet) fill the budget: no read starts.
        let waited = tokio::time::timeout(Duration::from_millis(50), reads.next()).await;
        assert!(waited.is_err(), "no read starts while the budget is held");
        assert_eq!(started.load(Ordering::Relaxed), 2);
        // One decoded (dropped): the reader is woken and starts one more.
        let pending = tokio::spawn(async move {
            let third = reads.next().await.unwrap().unwrap();
            (reads, third)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(started.load(Ordering::Relaxed), 2);
        drop(first);
        let (mut reads, third) = tokio::time::timeout(Duration::from_secs(1), pending)
            .await
            .expect("dropping a held unit wakes the reader")
            .unwrap();
        assert_eq!(started.load(Ordering::Relaxed), 3);
        drop((second, third));
        let mut rest = 0;
        while let Some(read) = reads.next().await {
            read.unwrap();
            rest += 1;
        }
        assert_eq!((rest, started.load(Ordering::Relaxed)), (3, 6));
    }

    #[tokio::test]
    async fn a_range_read_that_panics_is_a_task_error() {
        let mut reads = Box::pin(fetch_ahead(planned(1), Window::fixed(3), |_| async {
            panic!("injected");
        }));
        let err = reads.next().await.unwrap().unwrap_err();
        assert!(matches!(err, ReadError::Task(ref m) if m.starts_with("range read: task")));
    }

    #[test]
    fn window_grows_only_while_reads_are_waited_for_and_stays_in_budget() {
        let mut w = Window::adaptive(2, 32 << 20);
        assert!(w.admits(1, 4 << 20, 4 << 20));
        assert!(!w.admits(2, 8 << 20, 4 << 20));
        // Waiting with fewer reads than the window (the planner was slow): no wider.
        w.waited(1);
        assert_eq!(w.reads, 2);
        for _ in 0..20 {
            w.waited(w.reads);
        }
        assert!(w.admits(7, 28 << 20, 4 << 20));
        assert!(!w.admits(8, 32 << 20, 4 << 20), "the budget bounds it");
        // One read always starts, however large.
        assert!(w.admits(0, 0, 64 << 20));
        let mut local = Window::fixed(3);
        local.waited(3);
        assert_eq!(local, Window::fixed(3));
    }
}
