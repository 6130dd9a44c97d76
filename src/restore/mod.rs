//! Restore: rebuild a point of a volume onto a file or block device.
//!
//! The chain is resolved first; a streaming merge of its indexes ([`ChainCursor`])
//! says where each block comes from, so every block is read once, from the newest
//! archive holding it. The point reader ([`crate::point`]) groups blocks into work
//! units, runs of nearby frames of one archive read with one range read, fetches them
//! concurrently and decodes and checks them on the blocking pool; one blocking thread
//! writes them in block order to the target ([`crate::target`]), and the image digest is
//! recomputed in block order from the digests of the blocks actually written.
//!
//! The volume's catalog is listed and the chain resolved once per restore (onto an LV
//! too; `--since` is resolved from the same list). Restore only reads the repository
//! and takes no lock.
//!
//! Commands floor. Imports only `format`, `lvm`, `point`, `progress`, `repo`, `source`
//! and `target`; must not import another command module (`backup`, `prune`, `verify`,
//! `copy`, `status`), `config` or `cli`.

mod lv;

pub use lv::{LvRestoreReport, restore_to_lv};

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use futures::TryStreamExt;
use serde::Serialize;

use crate::format::{Digest, Digester, FormatError, Geometry, ImageHasher};
use crate::point::ReadError;
use crate::point::read::{BufferPool, Decoded, Span, read_units, unit_buffers};
use crate::progress::Progress;
use crate::repo::{
    ArchiveId, Chain, ChainCursor, Commit, PointSelector, RepoError, Repository, VolumeName,
};
use crate::source::{RawSource, SourceError, source_image_digest};
use crate::target::{BeyondVolume, FileTarget, TargetError};

/// Decoded units waiting for the writer. One is enough to keep it busy (writing a
/// unit into the page cache takes a millisecond or two, decoding one several), and
/// each unit held is up to 4 MiB of the restore's peak RSS: units alive are at most
/// `threads` decoding (or decoded, waiting for room here), this one and the one being
/// written.
const WRITE_QUEUE: usize = 1;

/// Bytes written between two starts of writeback ([`FileTarget::start_writeback`]).
const WRITEBACK_BYTES: u64 = 32 << 20;

/// Which point to restore and how.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The point.
    pub at: PointSelector,
    /// Restore even onto the backup's own source.
    pub force: bool,
    /// Blocks decoded and written in parallel.
    pub threads: usize,
    /// The target is a block device that reads zero everywhere (a new thin LV): zero
    /// blocks are not written.
    pub fresh_target: bool,
    /// Incremental restore: the target already holds this point, so only the blocks
    /// that changed between it and `at` are written.
    pub since: Option<PointSelector>,
    /// With `since`: do not read the target to check that it holds that point.
    pub trust_target: bool,
}

impl RestoreOptions {
    /// Restore point `at`: not forced, one thread per core, not incremental.
    pub fn new(at: PointSelector) -> Self {
        RestoreOptions {
            at,
            force: false,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            since: None,
            trust_target: false,
            fresh_target: false,
        }
    }
}

/// The result of a successful restore.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    /// Volume name.
    pub volume: String,
    /// Archive id of the point.
    pub archive: ArchiveId,
    /// Sequence number of the point.
    pub seq: u64,
    /// Volume size in bytes.
    pub size: u64,
    /// Archives read.
    pub chain_length: usize,
    /// Bytes of block data written.
    pub bytes_written: u64,
    /// Bytes read from the repository (frames).
    pub bytes_fetched: u64,
    /// Image digest, recomputed from what was written (incremental: from the
    /// unchanged blocks' recorded digests and the written blocks' checked ones).
    pub image_digest: String,
    /// Incremental restore: the seq of the point the target held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// Incremental restore: whether the target was read and found to hold that point
    /// (false with `trust_target`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_checked: Option<bool>,
    /// Whether the target is known to hold the image whose digest is `image_digest`:
    /// every block was written and checked, or (incremental) the target was checked
    /// before the changed blocks were, or an LV was read back. False after
    /// `--trust-target` without a read-back: only the written blocks were checked.
    pub image_verified: bool,
    /// What was done with an existing target's bytes past the volume's size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beyond_volume: Option<BeyondVolume>,
    /// Things the user should know.
    pub warnings: Vec<String>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Why a restore failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// The repository failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The target failed.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// Reading the point's blocks failed (the archive is named).
    #[error(transparent)]
    Read(#[from] ReadError),
    /// A block or frame did not check out.
    #[error("archive {key}: {source}")]
    Corrupt { key: String, source: FormatError },
    /// The image digest of what was written is not the point's.
    #[error(
        "restored image digest {actual} does not match archive {archive} ({expected}); the target is not a faithful copy"
    )]
    ImageMismatch {
        archive: ArchiveId,
        expected: Digest,
        actual: Digest,
    },
    /// The target is the backup's own source.
    #[error(
        "target {target} is the source of volume {volume} (recorded in its archives); restoring over it destroys the live data: choose another target or pass --force"
    )]
    TargetIsSource { target: String, volume: String },
    /// `--since` names a point that is not an ancestor of the restored one.
    #[error(
        "--since {since}: seq {seq} is not an earlier point of the chain of seq {at} (its chain is {chain}); restore without --since, or name a point of that chain"
    )]
    SinceNotInChain {
        since: String,
        seq: u64,
        at: u64,
        chain: String,
    },
    /// `--since` onto a target that does not exist.
    #[error(
        "--since needs an existing target holding that point; {target} does not exist (restore without --since first)"
    )]
    SinceWithoutTarget { target: String },
    /// The target does not hold the `--since` point.
    #[error(
        "target {target} does not hold seq {seq} (its image digest is {actual}, seq {seq}'s is {expected}); nothing was written: restore without --since, or name the point the target holds"
    )]
    TargetNotAtSince {
        target: String,
        seq: u64,
        expected: Digest,
        actual: Digest,
    },
    /// The target could not be read to check it.
    #[error("reading target {target} to check it holds seq {seq}: {source}")]
    TargetUnreadable {
        target: String,
        seq: u64,
        source: SourceError,
    },
    /// A pipeline task died.
    #[error("restore task failed: {0}")]
    Task(String),
    /// The target LV could not be found, created or used.
    #[error(transparent)]
    Lvm(#[from] crate::lvm::LvmError),
    /// Reading the target back gave another image digest.
    #[error(
        "read back from {target}: image digest {actual} is not the restored point's {expected}; the device did not keep what was written"
    )]
    ReadbackMismatch {
        target: String,
        expected: String,
        actual: String,
    },
}

/// Restores the point `opts.at` of `volume` onto `target`.
///
/// # Errors
/// [`RestoreError`]. A new target file is removed on failure.
pub async fn restore(
    repo: &Repository,
    volume: &VolumeName,
    target: &Path,
    opts: &RestoreOptions,
    progress: Arc<Progress>,
) -> Result<RestoreReport, RestoreError> {
    let started = Instant::now();
    repo.read_key("restore")?;
    let commits = repo.existing_commits(volume).await?;
    let chain = repo.resolve(&commits, &opts.at).await?;
    restore_chain(repo, &commits, chain, target, opts, progress, started).await
}

/// [`restore`] of `chain`, the point `opts.at` of the volume whose committed points
/// are `commits`, which the caller listed and resolved (once: `--since` is resolved
/// from the same list).
///
/// # Errors
/// As [`restore`].
async fn restore_chain(
    repo: &Repository,
    commits: &[Commit],
    chain: Chain,
    target: &Path,
    opts: &RestoreOptions,
    progress: Arc<Progress>,
    started: Instant,
) -> Result<RestoreReport, RestoreError> {
    let volume = chain.volume.clone();
    let tip = chain.tip().clone();
    if !opts.force
        && let Some(id) = FileTarget::identity(target)
        && chain
            .archives
            .iter()
            .any(|a| FileTarget::identity(Path::new(&a.header.source.path)) == Some(id))
    {
        return Err(RestoreError::TargetIsSource {
            target: target.display().to_string(),
            volume: volume.to_string(),
        });
    }
    let geometry = tip.geometry();
    let since = match &opts.since {
        Some(at) => Some(since_point(repo, commits, &chain, at, target, opts, &progress).await?),
        None => None,
    };
    progress.set_total(geometry.size());
    let mut out = if since.is_some() {
        FileTarget::open_growing(target, geometry.size())?
    } else {
        FileTarget::open(target, geometry.size())?
    };
    if opts.fresh_target {
        out = out.assume_zeroed();
    }
    let mut warnings = out.notices().to_vec();
    let beyond_volume = out.beyond_volume();
    let out = Arc::new(out);

    // One thread writes, in block order: concurrent writes to one file contend on its
    // lock, and sequential writes are what devices like best.
    let (wtx, mut wrx) = tokio::sync::mpsc::channel::<Decoded>(WRITE_QUEUE);
    let pool = unit_buffers(opts.threads);
    // Another thread starts the disk on what was written (in block order, so up to an
    // offset) while the restore goes on: the fsync at the end then has little left.
    let (ftx, frx) = std::sync::mpsc::channel::<std::ops::Range<u64>>();
    let flusher = {
        let out = out.clone();
        tokio::task::spawn_blocking(move || {
            frx.iter()
                .for_each(|r| out.start_writeback(r.start, r.end - r.start))
        })
    };
    let writer = {
        let (out, pool) = (out.clone(), pool.clone());
        tokio::task::spawn_blocking(move || -> Result<u64, RestoreError> {
            let (mut written, mut flushed) = (0, 0);
            while let Some(d) = wrx.blocking_recv() {
                let end = d.spans.last().map_or(flushed, |s| {
                    geometry.offset(span_first(s)) + span_bytes(s, &geometry)
                });
                written += write_unit(d, &out, &geometry, &pool)?;
                if end >= flushed + WRITEBACK_BYTES {
                    // The flusher is gone only if it panicked; the fsync still runs.
                    let _ = ftx.send(flushed..end);
                    flushed = end;
                }
            }
            Ok(written)
        })
    };
    let chain = Arc::new(chain);
    let cursor = match &since {
        // Only what archives after the --since point decide, and everything past the
        // size that point had.
        Some(s) => ChainCursor::segment(&chain, s.layer + 1, s.boundary).floor_until(s.blocks),
        None => ChainCursor::new(&chain),
    };
    let mut units = read_units(
        repo,
        chain.clone(),
        cursor,
        geometry.blocks(),
        opts.threads,
        pool,
        Ok::<_, RestoreError>,
    );
    let mut hasher = ImageHasher::with(geometry, chain.tip().digester());
    // Incremental: blocks not written keep the --since point's content, which is the
    // restored point's too; their recorded digests fill the gaps.
    let mut unchanged = since.as_ref().map(|_| ChainCursor::new(&chain));
    let mut fetched = 0u64;
    let streamed: Result<(), RestoreError> = async {
        loop {
            // Room in the writer's queue first, then the next unit: no decoded unit
            // waits here for room.
            let Ok(slot) = wtx.reserve().await else {
                break; // the writer failed; its error is reported below
            };
            let Some(d) = units.stream.try_next().await? else {
                break;
            };
            fetched += d.fetched;
            for span in &d.spans {
                progress.add(span_bytes(span, &geometry));
                if let Some(c) = unchanged.as_mut() {
                    c.feed(&mut hasher, span_first(span)).await?;
                }
                match span {
                    Span::Zero { count, .. } => hasher.zeros(*count),
                    Span::Data { digests, .. } => d.digests[digests.clone()]
                        .iter()
                        .for_each(|g| hasher.data(g)),
                }
            }
            slot.send(d);
        }
        if let Some(c) = unchanged.as_mut() {
            c.feed(&mut hasher, geometry.blocks()).await?;
        }
        Ok(())
    }
    .await;
    drop(wtx);
    let written = writer.await;
    // Before any error returns: the flusher holds the target, whose drop removes a new
    // file's temporary name.
    let flushed = flusher.await;
    let written = written.map_err(|e| RestoreError::Task(e.to_string()))??;
    flushed.map_err(|e| RestoreError::Task(e.to_string()))?;
    streamed?;
    units.finish().await?;
    let actual = hasher.finish().map_err(|source| RestoreError::Corrupt {
        key: tip.key().to_string(),
        source,
    })?;
    if actual != tip.trailer.image_digest {
        return Err(RestoreError::ImageMismatch {
            archive: tip.commit.archive_id.clone(),
            expected: tip.trailer.image_digest,
            actual,
        });
    }
    Arc::into_inner(out)
        .expect("all writers finished")
        .finish()?;
    Ok(RestoreReport {
        volume: volume.to_string(),
        archive: tip.commit.archive_id.clone(),
        seq: tip.header.seq,
        size: geometry.size(),
        chain_length: chain.archives.len(),
        bytes_written: written,
        bytes_fetched: fetched,
        image_digest: actual.to_hex(),
        since: since.as_ref().map(|s| s.seq),
        target_checked: since.as_ref().map(|s| s.checked),
        image_verified: since.as_ref().is_none_or(|s| s.checked),
        beyond_volume,
        warnings: {
            warnings.extend(since.as_ref().filter(|s| !s.checked).map(|s| {
                format!(
                    "--trust-target: {} was assumed to hold seq {} without reading it; if it did not, the restored image is corrupt",
                    target.display(),
                    s.seq
                )
            }));
            warnings
        },
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The `--since` point, within the restored point's chain.
struct Since {
    /// Its position in the chain.
    layer: usize,
    seq: u64,
    /// Its volume size in blocks: blocks from here on are all written.
    blocks: u64,
    /// The block whose length differs between the two points, if the size changed.
    boundary: Option<u64>,
    /// Whether the target was read and found to hold it.
    checked: bool,
}

/// Finds the `--since` point `at` in `chain` and checks that `target` holds it.
async fn since_point(
    repo: &Repository,
    commits: &[crate::repo::Commit],
    chain: &crate::repo::Chain,
    at: &PointSelector,
    target: &Path,
    opts: &RestoreOptions,
    progress: &Arc<Progress>,
) -> Result<Since, RestoreError> {
    let base = repo.resolve(commits, at).await?;
    let base = base.tip();
    let tip = chain.tip();
    // A point is identified by its seq and image (a pruned chain may hold a merged
    // archive standing for the same point).
    let layer = chain
        .archives
        .iter()
        .position(|a| {
            a.header.seq == base.header.seq && a.trailer.image_digest == base.trailer.image_digest
        })
        .ok_or_else(|| RestoreError::SinceNotInChain {
            since: at.to_string(),
            seq: base.header.seq,
            at: tip.header.seq,
            chain: chain
                .archives
                .iter()
                .map(|a| a.header.seq.to_string())
                .collect::<Vec<_>>()
                .join(" "),
        })?;
    if FileTarget::identity(target).is_none() {
        return Err(RestoreError::SinceWithoutTarget {
            target: target.display().to_string(),
        });
    }
    let (old, new) = (base.geometry(), tip.geometry());
    let checked = !opts.trust_target;
    if checked {
        let actual = target_image_digest(
            target,
            (old, base.digester()),
            base.header.seq,
            opts.threads,
            progress,
        )
        .await?;
        if actual != base.trailer.image_digest {
            return Err(RestoreError::TargetNotAtSince {
                target: target.display().to_string(),
                seq: base.header.seq,
                expected: base.trailer.image_digest,
                actual,
            });
        }
    }
    Ok(Since {
        layer,
        seq: base.header.seq,
        blocks: old.blocks(),
        boundary: (old.size() != new.size())
            .then(|| old.blocks().min(new.blocks()).checked_sub(1))
            .flatten(),
        checked,
    })
}

/// The image digest of the first `geometry.size()` bytes of `target`, which should
/// hold point `seq` (read in full on both cores, as backup reads a source).
///
/// # Errors
/// [`RestoreError::TargetUnreadable`].
async fn target_image_digest(
    target: &Path,
    (geometry, digester): (Geometry, &Digester),
    seq: u64,
    threads: usize,
    progress: &Arc<Progress>,
) -> Result<Digest, RestoreError> {
    let unreadable = |source| RestoreError::TargetUnreadable {
        target: target.display().to_string(),
        seq,
        source,
    };
    let source = RawSource::open(target)
        .and_then(|s| s.prefix(geometry.size()))
        .map_err(unreadable)?;
    source_image_digest(
        source,
        geometry.block_size(),
        digester,
        threads,
        progress.clone(),
    )
    .await
    .map_err(unreadable)
}

/// The first block a span covers.
fn span_first(span: &Span) -> u64 {
    match span {
        Span::Zero { first, .. } | Span::Data { first, .. } => *first,
    }
}

/// Volume bytes a span covers.
fn span_bytes(span: &Span, g: &Geometry) -> u64 {
    let (first, count) = match span {
        Span::Zero { first, count } => (*first, *count),
        Span::Data { first, digests, .. } => (*first, digests.len() as u64),
    };
    g.offset(first + count).min(g.size()) - g.offset(first)
}

/// Writes a decoded unit and hands its buffer back; returns the bytes of block data
/// written.
fn write_unit(
    d: Decoded,
    out: &FileTarget,
    g: &Geometry,
    pool: &BufferPool,
) -> Result<u64, RestoreError> {
    for span in &d.spans {
        match span {
            Span::Data { first, bytes, .. } => {
                out.write_at(g.offset(*first), &d.buf[bytes.clone()])?
            }
            Span::Zero { first, .. } => out.zero(g.offset(*first), span_bytes(span, g))?,
        }
    }
    let written = d.buf.len() as u64;
    pool.give(d.buf);
    Ok(written)
}
