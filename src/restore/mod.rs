//! Restore: rebuild a point of a volume onto a file or block device.
//!
//! The chain is resolved first; a streaming merge of its indexes ([`ChainCursor`])
//! says where each block comes from, so every block is read once, from the newest
//! archive holding it. Blocks are grouped into [`Work`] units (see [`plan`]): runs of
//! nearby frames of one archive become one range read. Range reads run concurrently,
//! decoding, checking and writing run on the blocking pool, and the image digest is
//! recomputed in block order from the digests of the blocks actually written.

mod lv;
mod plan;
pub(crate) mod read;
mod readback;

pub use lv::{LvRestoreReport, restore_to_lv};
pub use readback::read_back;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use futures::TryStreamExt;
use serde::Serialize;

use crate::format::{Digest, FormatError, Geometry, ImageHasher};
use crate::progress::Progress;
use crate::repo::{ChainCursor, PointSelector, RepoError, Repository, VolumeName};
use crate::target::{FileTarget, TargetError};
use read::{BufferPool, Decoded, Span, read_units};

/// Decoded units waiting for the writer.
const WRITE_QUEUE: usize = 2;

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
}

/// The result of a successful restore.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    /// Volume name.
    pub volume: String,
    /// Archive id of the point.
    pub archive: String,
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
    /// Image digest, recomputed from what was written.
    pub image_digest: String,
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
    /// A block or frame did not check out.
    #[error("archive {key}: {source}")]
    Corrupt { key: String, source: FormatError },
    /// The image digest of what was written is not the point's.
    #[error(
        "restored image digest {actual} does not match archive {archive} ({expected}); the target is not a faithful copy"
    )]
    ImageMismatch {
        archive: String,
        expected: Digest,
        actual: Digest,
    },
    /// The target is the backup's own source.
    #[error(
        "target {target} is the source of volume {volume} (recorded in its archives); restoring over it destroys the live data: choose another target or pass --force"
    )]
    TargetIsSource { target: String, volume: String },
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
    let commits = repo.existing_commits(volume).await?;
    let chain = repo.resolve(&commits, &opts.at).await?;
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
    progress.set_total(geometry.size());
    let mut out = FileTarget::open(target, geometry.size())?;
    if opts.fresh_target {
        out = out.assume_zeroed();
    }
    let out = Arc::new(out);

    // One thread writes, in block order: concurrent writes to one file contend on its
    // lock, and sequential writes are what devices like best.
    let (wtx, mut wrx) = tokio::sync::mpsc::channel::<Decoded>(WRITE_QUEUE);
    let pool = Arc::new(BufferPool::default());
    let writer = {
        let (out, pool) = (out.clone(), pool.clone());
        tokio::task::spawn_blocking(move || -> Result<u64, RestoreError> {
            let mut written = 0;
            while let Some(d) = wrx.blocking_recv() {
                written += write_unit(d, &out, &geometry, &pool)?;
            }
            Ok(written)
        })
    };
    let chain = Arc::new(chain);
    let mut units = read_units(
        repo,
        chain.clone(),
        ChainCursor::new(&chain),
        geometry.blocks(),
        opts.threads,
        pool,
        Ok::<_, RestoreError>,
    );
    let mut hasher = ImageHasher::new(geometry);
    let mut fetched = 0u64;
    let streamed: Result<(), RestoreError> = async {
        while let Some(d) = units.stream.try_next().await? {
            fetched += d.fetched;
            for span in &d.spans {
                progress.add(span_bytes(span, &geometry));
                match span {
                    Span::Zero { count, .. } => hasher.zeros(*count),
                    Span::Data { digests, .. } => d.digests[digests.clone()]
                        .iter()
                        .for_each(|g| hasher.data(g)),
                }
            }
            if wtx.send(d).await.is_err() {
                break; // the writer failed; its error is reported below
            }
        }
        Ok(())
    }
    .await;
    drop(wtx);
    let written = writer
        .await
        .map_err(|e| RestoreError::Task(e.to_string()))??;
    streamed?;
    units.finish().await?;
    let actual = hasher.finish().map_err(|source| RestoreError::Corrupt {
        key: tip.key().to_string(),
        source,
    })?;
    if actual != tip.trailer.image_digest {
        return Err(RestoreError::ImageMismatch {
            archive: tip.header.archive_id.clone(),
            expected: tip.trailer.image_digest,
            actual,
        });
    }
    Arc::into_inner(out)
        .expect("all writers finished")
        .finish()?;
    Ok(RestoreReport {
        volume: volume.to_string(),
        archive: tip.header.archive_id.clone(),
        seq: tip.header.seq,
        size: geometry.size(),
        chain_length: chain.archives.len(),
        bytes_written: written,
        bytes_fetched: fetched,
        image_digest: actual.to_hex(),
        seconds: started.elapsed().as_secs_f64(),
    })
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
