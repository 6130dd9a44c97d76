//! Copy: makes another repository (a directory, a USB disk, another bucket) hold
//! points of this one, so that it alone restores them.
//!
//! - A **plain copy** transfers, in sequence order, the archives of the chosen points
//!   that the destination lacks, byte for byte: each archive object is streamed in
//!   8 MiB ranged reads into a multipart upload (memory: a few parts), then committed
//!   with its own create-if-absent marker, as a backup commits. A point is committed
//!   only after its archive is complete, and only after its parent is, so an
//!   interrupted copy leaves every destination point restorable or absent, and the next
//!   copy carries on.
//! - **`--consolidate`** writes one full archive of the chosen point into the
//!   destination with the merge engine ([`crate::point::merge`]): the blocks are read
//!   from the chain once each and recompressed, no access to the source volume.
//! - A point the destination already holds (the same archive, or another archive of
//!   the same point: same seq and image digest, such as a consolidated full) is not
//!   transferred again: copying is idempotent. A delta whose parent the destination
//!   holds as another archive of the same point links to it by the parent's image
//!   digest (FORMAT.md 11.4); a delta without `parent.image` (format 1.0) is rewritten
//!   by the merge engine onto that parent.
//!
//! The destination's volume lock is held while copying into it. The source is only
//! read and is not locked: a prune of the source keeps superseded archives for a
//! grace period, and if an archive vanishes mid-copy the copy fails before committing
//! that point. Each source volume's catalog is listed once.
//!
//! Commands floor. Imports only `format`, `point`, `progress` and `repo`; must not read
//! sources or write targets, nor import another command module (`backup`, `restore`,
//! `prune`, `verify`, `status`), `config` or `cli`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::format::Digest;
use crate::point::{MergeError, MergeOptions, merge};
use crate::progress::Progress;
use crate::repo::{
    ArchiveId, ArchiveUpload, Chain, Commit, DamageRecord, LEFTOVER_GRACE, LockError, PointInfo,
    PointSelector, RemoteArchive, RepoError, Repository, VolumeLock, VolumeName,
};

/// Bytes of one ranged read of an archive being copied.
const READ_BYTES: u64 = 8 << 20;
/// Ranged reads in flight while copying an archive.
const READS_IN_FLIGHT: usize = 2;

/// The ranges of an object of `size` bytes read in [`READ_BYTES`] pieces.
fn part_ranges(size: u64) -> impl Iterator<Item = std::ops::Range<u64>> {
    (0..size.div_ceil(READ_BYTES)).map(move |i| i * READ_BYTES..((i + 1) * READ_BYTES).min(size))
}

/// What to copy.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// One volume, or every volume.
    pub volume: Option<VolumeName>,
    /// One point (with its chain, for a plain copy), or every point.
    pub at: Option<PointSelector>,
    /// Write one full archive of the point (`at`, default the latest).
    pub consolidate: bool,
    /// Workers for a consolidation.
    pub threads: usize,
}

/// How a point reached the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyKind {
    /// The archive object, byte for byte.
    Copied,
    /// A full archive made from the chain (`--consolidate`).
    Consolidated,
    /// A format 1.0 delta rewritten onto the destination's archive of its parent.
    Rewritten,
}

/// One point written to the destination.
#[derive(Debug, Clone, Serialize)]
pub struct CopiedPoint {
    /// Volume name.
    pub volume: String,
    /// Sequence number.
    pub seq: u64,
    /// The archive id in the destination.
    pub archive: ArchiveId,
    /// How.
    pub kind: CopyKind,
    /// Size of the archive object written.
    pub stored_bytes: u64,
}

/// The result of a copy.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CopyReport {
    /// The destination location.
    pub destination: String,
    /// Whether the destination repository was created by this copy.
    pub initialised: bool,
    /// Whether the destination existed before this copy (`thinarc copy`; it is
    /// created only when a point is to be copied).
    pub existed: bool,
    /// Points written.
    pub copied: Vec<CopiedPoint>,
    /// Chosen points the destination already held.
    pub present: u64,
    /// Bytes read from the source repository.
    pub bytes_read: u64,
    /// Bytes written to the destination.
    pub bytes_written: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Problems that did not stop the copy (stale locks broken, cleanup).
    pub warnings: Vec<String>,
}

/// Why a copy failed. Points committed before the failure stay; nothing partial is
/// committed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CopyError {
    /// A repository failed, or an archive is corrupt (named).
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The destination volume is locked, or the lock was lost.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The consolidation (or a rewrite) failed.
    #[error(transparent)]
    Merge(#[from] Box<MergeError>),
    /// The destination holds another volume under the same name.
    #[error(
        "{destination} holds a different volume named {volume} (volume id {dest_id}, this repository's is {src_id}); copy to another destination or rename"
    )]
    OtherVolume {
        destination: String,
        volume: String,
        dest_id: String,
        src_id: String,
    },
    /// A plain copy between repositories that do not share the key material: the
    /// archives would not open there (FORMAT.md section 18).
    #[error(
        "{destination} is {dest_keys}, this repository is {src_keys}: archives cannot be copied as they are between them; use `thinarc copy --consolidate` (it re-encrypts the point for the destination)"
    )]
    KeysDiffer {
        destination: String,
        src_keys: String,
        dest_keys: String,
    },
    /// The point to consolidate depends on damage recorded in the source.
    #[error("{volume} seq {seq} cannot be consolidated: it {damage}; nothing was copied")]
    Damaged {
        volume: String,
        seq: u64,
        damage: String,
    },
    /// The consolidation met damaged data no record names yet.
    #[error(
        "{volume} seq {seq} cannot be consolidated: {error}; nothing was copied: run `thinarc verify --data {volume}` to record the damage, then follow the way back it names"
    )]
    DamageFound {
        volume: String,
        seq: u64,
        error: Box<MergeError>,
    },
    /// The destination holds another point under the same seq.
    #[error(
        "{destination} volume {volume} seq {seq} is a different point (image digest {dest_image}, here {src_image}); it was not written by copying from this repository"
    )]
    Diverged {
        destination: String,
        volume: String,
        seq: u64,
        dest_image: Digest,
        src_image: Digest,
    },
}

/// Checks that `src` holds what a copy chooses (the volume, and the point `at` when
/// given) before the destination is opened or created: a copy refused for bad input
/// leaves no destination behind. A consolidation (`consolidate`) is also refused when
/// its point (`at`, default the latest) depends on damage recorded in `src`: it would
/// fail on the damaged data after writing into the destination.
///
/// # Errors
/// [`CopyError::Repo`] with [`RepoError::VolumeNotFound`], [`RepoError::PointNotFound`],
/// or what reading the catalog meets; [`CopyError::Damaged`].
pub async fn check_source(
    src: &Repository,
    volume: &VolumeName,
    at: Option<&PointSelector>,
    consolidate: bool,
) -> Result<(), CopyError> {
    let commits = src.existing_commits(volume).await?;
    let chain = match at {
        Some(at) => Some(src.resolve(&commits, at).await?),
        None => None,
    };
    if !consolidate {
        return Ok(());
    }
    let records = src.damage_records(volume).await?;
    if records.is_empty() {
        return Ok(());
    }
    let chain = match chain {
        Some(c) => c,
        None => src.resolve(&commits, &PointSelector::Latest).await?,
    };
    if !chain
        .archives
        .iter()
        .any(|a| records.iter().any(|r| r.archive == a.commit.archive_id))
    {
        return Ok(());
    }
    // The damage and its way back as `list` and `status` say them for the point.
    let seq = chain.tip().commit.seq;
    match src
        .describe(volume)
        .await?
        .into_iter()
        .find(|r| r.seq == seq)
    {
        Some(PointInfo {
            damage: Some(damage),
            ..
        }) => Err(CopyError::Damaged {
            volume: volume.to_string(),
            seq,
            damage,
        }),
        _ => Ok(()),
    }
}

/// Copies points of `src` into `dest` as `opts` say, holding `dest`'s volume lock per
/// volume.
///
/// # Errors
/// [`CopyError`]; points committed before the error stay committed.
pub async fn copy(
    src: &Repository,
    dest: &Repository,
    initialised: bool,
    opts: &CopyOptions,
    progress: Arc<Progress>,
) -> Result<CopyReport, CopyError> {
    let started = Instant::now();
    let keys = |r: &Repository| r.config().encryption.as_ref().map(|e| e.key_id.clone());
    if opts.consolidate {
        // Before any work: reading needs the source's key, writing the destination's.
        src.read_key("copy --consolidate")?;
        dest.write_key("copy --consolidate")?;
    } else if keys(src) != keys(dest) {
        let describe = |k: Option<String>| match k {
            Some(k) => format!("encrypted under key {k}"),
            None => "not encrypted".to_string(),
        };
        return Err(CopyError::KeysDiffer {
            destination: dest.location().to_string(),
            src_keys: describe(keys(src)),
            dest_keys: describe(keys(dest)),
        });
    }
    let volumes = match &opts.volume {
        Some(v) => vec![v.clone()],
        None => src.volumes().await?,
    };
    let mut report = CopyReport {
        destination: dest.location().to_string(),
        initialised,
        existed: !initialised,
        copied: Vec::new(),
        present: 0,
        bytes_read: 0,
        bytes_written: 0,
        seconds: 0.0,
        warnings: Vec::new(),
    };
    for volume in &volumes {
        let commits = src.existing_commits(volume).await?;
        let damage = src.damage_records(volume).await?;
        let lock = VolumeLock::acquire(dest, volume, "copy").await?;
        report.warnings.extend(lock.broken().iter().cloned());
        let mut run = VolumeCopy {
            src,
            dest,
            volume,
            commits: &commits,
            damage: &damage,
            dest_points: HashMap::new(),
            report: &mut report,
            progress: &progress,
            opts,
            committed_at: None,
        };
        let result = lock.guard(run.execute()).await;
        // Cleaning needs the lock: it removes partial leftovers at once.
        if result.is_ok()
            && let Some(now) = run.committed_at
            && let Err(e) = dest.clean_leftovers(volume, now, LEFTOVER_GRACE).await
        {
            report
                .warnings
                .push(format!("cleaning leftovers of {volume} failed: {e}"));
        }
        if let Err(e) = lock.release().await {
            report
                .warnings
                .push(format!("releasing the lock of {volume}: {e}"));
        }
        result?;
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The copy of one volume.
struct VolumeCopy<'a> {
    src: &'a Repository,
    dest: &'a Repository,
    volume: &'a VolumeName,
    commits: &'a [Commit],
    /// The source's damage records of the volume: a plain copy carries them along.
    damage: &'a [DamageRecord],
    /// The destination's points by seq, opened on demand.
    dest_points: HashMap<u64, Arc<RemoteArchive>>,
    report: &'a mut CopyReport,
    progress: &'a Arc<Progress>,
    opts: &'a CopyOptions,
    /// The store's time of the last commit (for leftover cleanup).
    committed_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl VolumeCopy<'_> {
    async fn execute(&mut self) -> Result<(), CopyError> {
        for c in self.dest.commits(self.volume).await? {
            let a = RemoteArchive::open(self.dest, &c).await?;
            self.dest_points.insert(c.seq, Arc::new(a));
        }
        let at = self.opts.at.clone().unwrap_or(PointSelector::Latest);
        if self.opts.consolidate {
            let chain = self.src.resolve(self.commits, &at).await?;
            if self.already_has(chain.tip())? {
                return Ok(());
            }
            return match self
                .merge_into_dest(&chain, None, CopyKind::Consolidated)
                .await
            {
                Err(CopyError::Merge(error)) if error.is_damage() => Err(CopyError::DamageFound {
                    volume: self.volume.to_string(),
                    seq: chain.tip().commit.seq,
                    error,
                }),
                result => result,
            };
        }
        // The points to copy: every point, or the chain of one.
        let wanted: Vec<Arc<RemoteArchive>> = match &self.opts.at {
            Some(at) => self.src.resolve(self.commits, at).await?.archives,
            None => {
                let mut all = Vec::new();
                for c in self.commits {
                    all.push(Arc::new(RemoteArchive::open(self.src, c).await?));
                }
                all
            }
        };
        self.progress.set_total(
            wanted
                .iter()
                .filter(|a| !self.dest_points.contains_key(&a.commit.seq))
                .map(|a| a.commit.size)
                .sum(),
        );
        for a in &wanted {
            if self.already_has(a)? {
                continue;
            }
            let parent_ok = match &a.header.parent {
                None => true,
                Some(p) => match self.dest_points.get(&p.seq) {
                    Some(d) => {
                        (d.header.archive_id == p.id && d.trailer.trailer_sha256 == p.digest)
                            || p.image == Some(d.trailer.image_digest)
                    }
                    // Not in the destination (dropped there by its own prune): the
                    // chain is copied from its start, so this cannot be reached
                    // unless the destination lost it; the commit then fails to link.
                    None => true,
                },
            };
            if parent_ok {
                self.copy_archive(a).await?;
            } else {
                self.rewrite(a).await?;
            }
        }
        Ok(())
    }

    /// Whether the destination holds the point of `a` already (counted as present);
    /// an error when it holds another point under that seq or another volume.
    fn already_has(&mut self, a: &RemoteArchive) -> Result<bool, CopyError> {
        if let Some(d) = self.dest_points.values().next()
            && d.header.volume_id != a.header.volume_id
        {
            return Err(CopyError::OtherVolume {
                destination: self.dest.location().to_string(),
                volume: self.volume.to_string(),
                dest_id: d.header.volume_id.clone(),
                src_id: a.header.volume_id.clone(),
            });
        }
        let Some(d) = self.dest_points.get(&a.commit.seq) else {
            return Ok(false);
        };
        // Image digests under different digest keys (a consolidation into an
        // encrypted repository with other keys, or out of one) cannot be compared:
        // the point is taken as present.
        let comparable = d.digester() == a.digester();
        if comparable && d.trailer.image_digest != a.trailer.image_digest {
            return Err(CopyError::Diverged {
                destination: self.dest.location().to_string(),
                volume: self.volume.to_string(),
                seq: a.commit.seq,
                dest_image: d.trailer.image_digest,
                src_image: a.trailer.image_digest,
            });
        }
        self.report.present += 1;
        Ok(true)
    }

    /// Streams the archive object of `a` into the destination and commits it.
    async fn copy_archive(&mut self, a: &RemoteArchive) -> Result<(), CopyError> {
        let c = &a.commit;
        let mut upload =
            ArchiveUpload::start(self.dest, self.volume, c.seq, &c.archive_id, c.size).await?;
        // Ranged reads of one part each, two in flight: the bytes are checked to come
        // back whole, and the upload sends a part while the next is read.
        let streamed = async {
            let mut reads = futures::stream::iter(part_ranges(c.size))
                .map(|r| a.read(r))
                .buffered(READS_IN_FLIGHT);
            let mut read = 0u64;
            while let Some(chunk) = reads.try_next().await? {
                read += chunk.len() as u64;
                upload.write(&chunk).await?;
                self.progress.add(chunk.len() as u64);
            }
            Ok::<_, RepoError>(read)
        }
        .await;
        let read = match streamed {
            Ok(n) => n,
            Err(e) => {
                upload.abort().await;
                return Err(e.into());
            }
        };
        self.report.bytes_read += read;
        let published = upload.commit(c.digest).await?;
        // The bytes are copied as they are: known damage goes with them, so the
        // destination's verify and status report it instead of a clean copy.
        if let Some(record) = self.damage.iter().find(|r| r.archive == c.archive_id) {
            self.dest.write_damage(self.volume, record).await?;
            self.report.warnings.push(format!(
                "seq {} (archive {}) is recorded damaged in the source ({}): copied as it is, with its damage record; the destination reports it until a new backup or `thinarc repair {} --drop-damaged` there",
                c.seq, c.archive_id, record.detail, self.volume
            ));
        }
        self.committed(
            c.seq,
            c.archive_id.clone(),
            CopyKind::Copied,
            published.size,
            published.committed_at,
            Some(published.commit),
        )
        .await
    }

    /// Writes `a`'s point as a delta on the destination's archive of its parent (a
    /// delta without `parent.image` cannot link to a consolidated parent).
    async fn rewrite(&mut self, a: &RemoteArchive) -> Result<(), CopyError> {
        let chain = self
            .src
            .resolve(self.commits, &PointSelector::Seq(a.commit.seq))
            .await?;
        let parent_seq = a.header.parent.as_ref().map(|p| p.seq);
        let parent = chain
            .archives
            .iter()
            .position(|x| Some(x.header.seq) == parent_seq);
        self.merge_into_dest(&chain, parent, CopyKind::Rewritten)
            .await
    }

    /// Writes the point `chain` ends at into the destination with the merge engine: on
    /// the archive at `parent` in the chain, or as a full archive.
    async fn merge_into_dest(
        &mut self,
        chain: &Chain,
        parent: Option<usize>,
        kind: CopyKind,
    ) -> Result<(), CopyError> {
        let method = match kind {
            CopyKind::Consolidated => "consolidate",
            _ => "merge",
        };
        let r = merge(
            self.src,
            chain,
            parent,
            self.dest,
            self.volume,
            &MergeOptions {
                threads: self.opts.threads,
                // The snapshot named by `lvm` belongs to the source repository's host.
                keep_lvm: false,
                ..MergeOptions::new(method)
            },
        )
        .await
        .map_err(Box::new)?;
        self.report.bytes_read += r.bytes_read;
        self.committed(r.seq, r.archive, kind, r.stored_bytes, r.committed_at, None)
            .await
    }

    /// Records a point committed in the destination and opens it there (its parent for
    /// the next delta): by its `commit`, or (after a merge) found in the destination's
    /// catalog.
    async fn committed(
        &mut self,
        seq: u64,
        archive: ArchiveId,
        kind: CopyKind,
        stored_bytes: u64,
        at: Option<chrono::DateTime<chrono::Utc>>,
        commit: Option<Commit>,
    ) -> Result<(), CopyError> {
        self.committed_at = at.or(self.committed_at);
        self.report.bytes_written += stored_bytes;
        self.report.copied.push(CopiedPoint {
            volume: self.volume.to_string(),
            seq,
            archive: archive.clone(),
            kind,
            stored_bytes,
        });
        let commit = match commit {
            Some(c) => c,
            None => self
                .dest
                .commits(self.volume)
                .await?
                .into_iter()
                .find(|c| c.seq == seq && c.archive_id == archive)
                .ok_or_else(|| RepoError::CommitUnknown {
                    key: self.volume.commit_key(seq, 0).to_string(),
                    detail: "the marker just written is not listed".into(),
                })?,
        };
        let opened = RemoteArchive::open(self.dest, &commit).await?;
        self.dest_points.insert(seq, Arc::new(opened));
        Ok(())
    }
}
