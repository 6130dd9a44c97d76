//! The merge engine: synthesizes the archive of one point from a segment of its chain.
//!
//! Given the chain of point X (from its full archive to X, as
//! [`Repository::resolve`] returns it) and a parent P on that chain, [`merge`] writes
//! one new archive standing for X: a delta on P holding exactly the blocks that the
//! archives after P up to X decide (FORMAT.md 11.1), plus the boundary block when P
//! and X differ in size (rule 11.3); with no parent, a full archive of X. It is a
//! normal self-describing archive: `source.kind` `"archive"`, `source.method` as the
//! caller says (`"merge"`, `"consolidate"`), X's `seq`, `created` and source path, and
//! `parent.image` set. The new archive is committed into any repository (prune
//! replaces X's archive in its own repository with a higher marker generation; a
//! consolidated copy adds a point to another repository).
//!
//! The work streams: a [`ChainCursor`] over the segment yields the blocks to hold in
//! order; restore's fetch and decode pipeline reads and checks them (each block once,
//! from the newest archive holding it, coalesced range reads); a stored frame all of
//! whose blocks the new archive holds, in order, is copied as it is (its blocks still
//! decoded and checked against their digests); the blocks of partly superseded frames
//! are recompressed on the blocking pool (both cores); everything is appended through
//! [`ArchiveWriter`] to an [`ArchiveUpload`]. So a merge costs about a restore, plus
//! the compression of what newer archives broke up. A copied frame keeps the zstd
//! level it was written with (the header's `compression.level` is informational).
//! Memory is a few work units and upload parts, whatever the volume size; the bytes
//! read are those of the merged archives' blocks that survive, plus the index of P's
//! chain (to recompute the image digest without reading its data).
//!
//! Before committing, the image digest of the new archive's point (its blocks on top
//! of P's point) is recomputed and must equal X's; otherwise nothing is committed.
//!
//! Encryption (FORMAT.md section 18): reading needs the source repository's key, and
//! the new archive is written for the destination's: sealed under a fresh data key in
//! an encrypted one, plain in an unencrypted one. Copied frames are opened on read and
//! sealed again. When the destination's digest function differs from the source's
//! (another key, or none), every block's digest and the image digest are computed
//! again (a full archive only), and X's image digest is checked over the source's
//! digests.
//!
//! ```no_run
//! # async fn demo(repo: &thinarc::repo::Repository) -> Result<(), Box<dyn std::error::Error>> {
//! use thinarc::point::{MergeOptions, merge};
//! use thinarc::repo::{PointSelector, VolumeName};
//!
//! let volume = VolumeName::new("vg0/web")?;
//! let commits = repo.existing_commits(&volume).await?;
//! let chain = repo.resolve(&commits, &PointSelector::Latest).await?;
//! // A full archive of the latest point, into another repository.
//! let other = thinarc::repo::Repository::open_location("/mnt/usb/backup").await?;
//! let report = merge(repo, &chain, None, &other, &volume, &MergeOptions::new("consolidate")).await?;
//! println!("{} bytes written", report.stored_bytes);
//! # Ok(()) }
//! ```

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use futures::TryStreamExt;
use serde::Serialize;

use super::ReadError;
use super::read::{BufferPool, Decoded, ReadMode, Span, read_units_with, unit_buffers};
use crate::format::{
    ArchivePart, ArchiveWriter, Compression, DEFAULT_ZSTD_LEVEL, Digest, Digester, EncodedFrame,
    FRAME_BYTES, FormatError, Geometry, Header, ImageHasher, ImageRun, Op, ParentRef, SourceInfo,
    WriterKey, compress, stored_frame_content_len,
};
use crate::repo::{
    ArchiveId, ArchiveUpload, Chain, ChainCursor, RepoError, Repository, VolumeName, new_archive_id,
};

/// How to write a merged archive.
#[derive(Debug, Clone)]
pub struct MergeOptions {
    /// `source.method` of the new archive: `"merge"` (prune) or `"consolidate"`.
    pub method: String,
    /// Commit marker generation: 0 to add a new point, or one above the point's
    /// current generation to replace its archive.
    pub generation: u32,
    /// zstd level for the recompressed frames (copied frames keep theirs).
    pub zstd_level: i32,
    /// Units decoded and compressed in parallel.
    pub threads: usize,
    /// Whether the new archive keeps the point's `lvm` header key (the LVM thin
    /// snapshot the point was read from, the base of the volume's next LVM backup).
    /// True for a merge within the point's own repository; false for an archive
    /// written into another repository, whose backups must not take (and, once they
    /// commit, remove) the source repository's snapshot as their base.
    pub keep_lvm: bool,
}

impl MergeOptions {
    /// Defaults: generation 0, the default zstd level, one worker per core, the
    /// `lvm` key kept (a merge in the point's own repository).
    pub fn new(method: &str) -> Self {
        MergeOptions {
            method: method.to_string(),
            generation: 0,
            zstd_level: DEFAULT_ZSTD_LEVEL,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            keep_lvm: true,
        }
    }
}

/// A committed merged archive.
#[derive(Debug, Clone, Serialize)]
pub struct MergeReport {
    /// Volume name.
    pub volume: String,
    /// Sequence number of the point (X's).
    pub seq: u64,
    /// Marker generation it was committed under.
    pub generation: u32,
    /// The new archive's id.
    pub archive: ArchiveId,
    /// The archive it replaces or copies (X's archive id).
    pub replaces: ArchiveId,
    /// The new parent's archive id (`None`: a full archive).
    pub parent: Option<ArchiveId>,
    /// Archives of the chain whose blocks were merged (those after the parent).
    pub merged_archives: usize,
    /// Blocks the new archive holds (data and zero).
    pub blocks: u64,
    /// Bytes read from the source repository (frames).
    pub bytes_read: u64,
    /// Stored frames copied as they are (all their blocks survive, in order).
    pub frames_reused: u64,
    /// Frames recompressed (from blocks of partly superseded frames).
    pub frames_compressed: u64,
    /// Size of the new archive object.
    pub stored_bytes: u64,
    /// The point's image digest (checked).
    pub image_digest: String,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// When the store says the new marker was written (for grace periods).
    #[serde(skip)]
    pub committed_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Why a merge failed. Nothing was committed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MergeError {
    /// The repository failed, or an archive is corrupt (named).
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// Reading or checking blocks failed (the archive is named).
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The archive could not be built.
    #[error("building the merged archive: {0}")]
    Format(#[from] FormatError),
    /// The parent is not an archive of the chain before the tip.
    #[error("merge of seq {seq}: parent index {parent} is not an earlier archive of its chain")]
    BadParent { seq: u64, parent: usize },
    /// The merged archive would not stand for the same point: a bug or an
    /// inconsistent chain. Nothing was committed.
    #[error(
        "merged archive of {volume} seq {seq} has image digest {actual}, the point has {expected}; nothing was committed"
    )]
    ImageMismatch {
        volume: String,
        seq: u64,
        expected: Digest,
        actual: Digest,
    },
}

impl MergeError {
    /// Whether the merge failed on damaged data (a corrupt, truncated or missing
    /// archive or block, a broken chain) rather than on the store or a bug.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            MergeError::Repo(
                RepoError::Corrupt { .. }
                    | RepoError::Truncated { .. }
                    | RepoError::ChainBroken { .. }
                    | RepoError::BadCommit { .. }
            ) | MergeError::Read(
                ReadError::Corrupt { .. }
                    | ReadError::Repo(RepoError::Corrupt { .. } | RepoError::Truncated { .. })
            )
        )
    }
}

/// Writes and commits one archive standing for the point at the tip of `chain`: a
/// delta on `chain.archives[parent]` holding what the later archives decide, or with
/// `parent` `None` a full archive. `src` is the repository `chain` was resolved in
/// (for read tuning); the result goes to `volume` of `dest` under marker generation
/// `opts.generation`.
///
/// # Errors
/// [`MergeError`]; the upload is aborted and nothing is committed. A corrupt archive
/// is named (by key).
pub async fn merge(
    src: &Repository,
    chain: &Chain,
    parent: Option<usize>,
    dest: &Repository,
    volume: &VolumeName,
    opts: &MergeOptions,
) -> Result<MergeReport, MergeError> {
    let started = Instant::now();
    src.read_key(&opts.method)?;
    let key = dest.write_key(&opts.method)?.cloned();
    let tip = chain.tip().clone();
    let tip_index = chain.archives.len() - 1;
    if let Some(p) = parent.filter(|&p| p >= tip_index) {
        return Err(MergeError::BadParent {
            seq: tip.header.seq,
            parent: p,
        });
    }
    let geometry = tip.geometry();
    let parent_archive = parent.map(|p| chain.archives[p].clone());
    let boundary = parent_archive.as_ref().and_then(|p| {
        let old = p.geometry();
        (old.size() != geometry.size())
            .then(|| old.blocks().min(geometry.blocks()).checked_sub(1))
            .flatten()
    });
    let archive_id = new_archive_id();
    let parent_id = parent_archive.as_ref().map(|p| p.commit.archive_id.clone());
    let header = Header {
        volume_name: volume.to_string(),
        archive_id: archive_id.to_string(),
        parent: parent_archive.as_ref().map(|p| ParentRef {
            id: p.commit.archive_id.to_string(),
            digest: p.trailer.trailer_sha256,
            seq: p.header.seq,
            image: Some(p.trailer.image_digest),
        }),
        compression: Compression {
            algorithm: "zstd".into(),
            level: opts.zstd_level,
        },
        source: SourceInfo {
            kind: "archive".into(),
            path: tip.header.source.path.clone(),
            method: opts.method.clone(),
        },
        lvm: tip.header.lvm.clone().filter(|_| opts.keep_lvm),
        ..tip.header.clone()
    };
    let mut upload = ArchiveUpload::start(
        dest,
        volume,
        header.seq,
        &archive_id,
        geometry.max_archive_len(),
    )
    .await?
    .with_generation(opts.generation);
    let floor = parent.map_or(0, |p| p + 1);
    let written = write(
        src,
        chain,
        floor,
        boundary,
        (&header, key.as_ref()),
        &mut upload,
        opts,
    )
    .await;
    let (stats, image, trailer_sha256) = match written {
        Ok(w) => w,
        Err(e) => {
            upload.abort().await;
            return Err(e);
        }
    };
    if image != tip.trailer.image_digest {
        upload.abort().await;
        return Err(MergeError::ImageMismatch {
            volume: volume.to_string(),
            seq: header.seq,
            expected: tip.trailer.image_digest,
            actual: image,
        });
    }
    let published = upload.commit(trailer_sha256).await?;
    Ok(MergeReport {
        volume: volume.to_string(),
        seq: header.seq,
        generation: opts.generation,
        archive: archive_id,
        replaces: tip.commit.archive_id.clone(),
        parent: parent_id,
        merged_archives: chain.archives.len() - floor,
        blocks: stats.blocks,
        bytes_read: stats.bytes_read,
        frames_reused: stats.frames_reused,
        frames_compressed: stats.frames_compressed,
        stored_bytes: published.size,
        image_digest: image.to_hex(),
        seconds: started.elapsed().as_secs_f64(),
        committed_at: published.committed_at,
    })
}

/// Counters of one merge (or of one unit of it).
#[derive(Debug, Default)]
struct Stats {
    blocks: u64,
    bytes_read: u64,
    frames_reused: u64,
    frames_compressed: u64,
}

/// Streams the archive into `upload`; returns the counters, the image digest of the
/// new archive's point and the archive digest.
async fn write(
    src: &Repository,
    chain: &Chain,
    floor: usize,
    boundary: Option<u64>,
    (header, key): (&Header, Option<&WriterKey>),
    upload: &mut ArchiveUpload,
    opts: &MergeOptions,
) -> Result<(Stats, Digest, Digest), MergeError> {
    let geometry = chain.tip().geometry();
    let blocks = geometry.blocks();
    let mut out = Vec::with_capacity(1 << 20);
    let mut writer = ArchiveWriter::new(header, key, &mut out)?;
    let mut hasher = ImageHasher::with(geometry, writer.digester());
    // Another digest function in the destination: digests are computed again, and
    // the point's image digest is checked over the source's digests.
    let redigest = (writer.digester() != chain.tip().digester()).then(|| writer.digester().clone());
    if redigest.is_some() && floor > 0 {
        return Err(FormatError::InvalidInput(
            "a delta cannot be written into a repository with other keys (consolidate into a full archive)".into(),
        )
        .into());
    }
    let mut src_hasher = redigest
        .as_ref()
        .map(|_| ImageHasher::with(geometry, chain.tip().digester()));
    // The blocks the new archive does not hold are the parent's point's: their digests
    // come from the parent chain's index.
    let parent_chain = (floor > 0).then(|| Chain {
        volume: chain.volume.clone(),
        archives: chain.archives[..floor].to_vec(),
    });
    let mut gaps = parent_chain.as_ref().map(ChainCursor::new);
    let pool = unit_buffers(opts.threads);
    let encode = {
        let (pool, level) = (pool.clone(), opts.zstd_level);
        let frame_blocks = (FRAME_BYTES / u64::from(geometry.block_size().get())).max(1);
        let redigest = redigest.clone();
        move |d: Decoded| encode_unit(d, geometry, frame_blocks, level, redigest.as_ref(), &pool)
    };
    let chain = Arc::new(chain.clone());
    let mode = ReadMode {
        stored: true,
        ..ReadMode::default()
    };
    let mut units = read_units_with(
        src,
        chain.clone(),
        ChainCursor::segment(&chain, floor, boundary),
        blocks,
        opts.threads,
        pool,
        mode,
        encode,
    );
    let mut stats = Stats::default();
    while let Some((spans, src_image, unit)) = units.stream.try_next().await? {
        if let Some(h) = src_hasher.as_mut() {
            src_image.iter().for_each(|run| h.feed(run));
        }
        stats.bytes_read += unit.bytes_read;
        stats.frames_reused += unit.frames_reused;
        stats.frames_compressed += unit.frames_compressed;
        for span in spans {
            // Blocks skipped before the span are the parent's.
            if let Some(g) = gaps.as_mut() {
                g.feed(&mut hasher, span.first).await?;
            }
            stats.blocks += span.apply(&mut writer, &mut hasher, &mut out)?;
        }
        upload.write(&out).await?;
        out.clear();
    }
    units.finish().await?;
    if let Some(g) = gaps.as_mut() {
        g.feed(&mut hasher, blocks).await?;
    }
    let image = hasher.finish()?;
    // The image digest the caller checks: over the source's digests.
    let checked = match src_hasher {
        Some(h) => h.finish()?,
        None => image,
    };
    let trailer = writer.finish(image, &mut out);
    upload.write(&out).await?;
    Ok((stats, checked, trailer.trailer_sha256))
}

/// Turns a decoded unit into archive operations, one batch per span (the blocks
/// between spans are the parent's): zero runs, the stored frames that survive whole
/// copied as they are, and the other data blocks cut into frames of at most
/// `frame_blocks` blocks and recompressed. With `redigest`, every data block's digest
/// is computed again with it. Returns the batches, the unit's runs of the image
/// digest over the source's digests (with `redigest` only) and the unit's counters.
fn encode_unit(
    mut d: Decoded,
    g: Geometry,
    frame_blocks: u64,
    level: i32,
    redigest: Option<&Digester>,
    pool: &BufferPool,
) -> Result<(Vec<ArchivePart>, Vec<ImageRun>, Stats), MergeError> {
    let mut src_image = Vec::new();
    if let Some(digester) = redigest {
        for span in &d.spans {
            match span {
                Span::Zero { count, .. } => src_image.push(ImageRun::Zeros(*count)),
                Span::Data {
                    first,
                    bytes,
                    digests,
                } => {
                    let mut at = bytes.start;
                    for (j, i) in digests.clone().enumerate() {
                        src_image.push(ImageRun::Data(d.digests[i]));
                        let len = g.block_len(first + j as u64) as usize;
                        d.digests[i] = digester.block(&d.buf[at..at + len]);
                        at += len;
                    }
                }
            }
        }
    }
    let bs = u64::from(g.block_size().get()) as usize;
    let mut stats = Stats {
        bytes_read: d.fetched,
        ..Stats::default()
    };
    let mut out = Vec::with_capacity(d.spans.len());
    for span in &d.spans {
        let mut ops = Vec::new();
        let mut image = Vec::new();
        let first = match span {
            Span::Zero { first, .. } | Span::Data { first, .. } => *first,
        };
        match span {
            Span::Zero { first, count } => {
                ops.push(Op::Zeros {
                    first: *first,
                    count: *count,
                });
                image.push(ImageRun::Zeros(*count));
            }
            Span::Data {
                first,
                bytes,
                digests,
            } => {
                // Blocks `fresh..i` of the span are still to be recompressed.
                let (n, mut i, mut fresh) = (digests.len(), 0, 0);
                let mut recompress = |run: Range<usize>, ops: &mut Vec<Op>| {
                    let run_digests =
                        &d.digests[digests.start + run.start..digests.start + run.end];
                    for (c, chunk) in run_digests.chunks(frame_blocks as usize).enumerate() {
                        let at = run.start + c * frame_blocks as usize;
                        let start = bytes.start + at * bs;
                        let end = (start + chunk.len() * bs).min(bytes.end);
                        let (kind, stored) = compress(&d.buf[start..end], level)?;
                        stats.frames_compressed += 1;
                        ops.push(Op::Frame(EncodedFrame {
                            first_block: first + at as u64,
                            kind,
                            bytes: stored,
                            digests: chunk.to_vec(),
                        }));
                    }
                    Ok::<_, MergeError>(())
                };
                while i < n {
                    match whole_frame(&d, g, *first, digests, i) {
                        Some(frame) => {
                            recompress(fresh..i, &mut ops)?;
                            i += frame.digests.len();
                            fresh = i;
                            stats.frames_reused += 1;
                            ops.push(Op::Frame(frame));
                        }
                        None => i += 1,
                    }
                }
                recompress(fresh..n, &mut ops)?;
                image.extend(
                    d.digests[digests.clone()]
                        .iter()
                        .map(|g| ImageRun::Data(*g)),
                );
            }
        }
        out.push(ArchivePart {
            first,
            count: 0,
            bytes_read: 0,
            ops,
            image,
        });
    }
    pool.give(d.buf);
    Ok((out, src_image, stats))
}

/// The stored frame holding block `i` of the data span of `d` from block `first` with
/// digests `digests`, copied as it is when it survives whole from that block on: the
/// block is its slot 0, the span's next blocks are its slots 1, 2... up to its last,
/// and their lengths in the new point's geometry `g` add up to the frame's content
/// (FORMAT.md 6.1). Its content was decoded and every block checked against its
/// digest while reading.
fn whole_frame(
    d: &Decoded,
    g: Geometry,
    first: u64,
    digests: &Range<usize>,
    i: usize,
) -> Option<EncodedFrame> {
    let sources = &d.stored.blocks;
    let at = digests.start + i;
    let (frame, slot) = *sources.get(at)?;
    if slot != 0 {
        return None;
    }
    let (kind, stored) = &d.stored.frames[frame];
    let content = stored_frame_content_len(*kind, stored).ok()? as u64;
    let blocks = content.div_ceil(u64::from(g.block_size().get())) as usize;
    let end = at
        .checked_add(blocks)
        .filter(|&e| blocks > 0 && e <= digests.end)?;
    let first_block = first + i as u64;
    let whole = (at..end).all(|j| sources[j] == (frame, (j - at) as u16))
        && (first_block..first_block + blocks as u64)
            .map(|b| g.block_len(b))
            .sum::<u64>()
            == content;
    whole.then(|| EncodedFrame {
        first_block,
        kind: *kind,
        bytes: stored.to_vec(),
        digests: d.digests[at..end].to_vec(),
    })
}
