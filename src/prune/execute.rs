//! Running a prune on one volume: read the points, decide, plan, then apply the plan in
//! the crash-safe order of FORMAT.md section 15, freeing space before it needs any:
//!
//! 1. what needs no rewrite: dropped points that no kept point depends on are unlisted
//!    (tombstoned, newest first), then leftovers and archives whose tombstone is older
//!    than the grace period are deleted (with `--no-grace`, every superseded archive);
//! 2. on a local repository, the space the rewrites need is checked against the free
//!    space: a prune that cannot finish refuses before it writes an archive;
//! 3. rewrite the kept points that need it, in seq order, each committed as the next
//!    marker generation of its seq (the merge engine checks the image digest first);
//! 4. only once every rewrite is committed: tombstone the archives of the other dropped
//!    points and the replaced archives, then delete their markers;
//! 5. clean up again, as in step 1.
//!
//! A crash before step 4 leaves every point listed (rewritten ones under their new
//! archive) except dropped ones nothing depended on; a crash in step 4 leaves
//! tombstoned archives that are still there; the next prune, or the next backup's
//! cleanup, finishes the job.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;

use super::{Node, Plan, PointPlan, PointTime, PolicyError, RetentionPolicy, Rewrite, plan};
use crate::format::{BlockSize, Geometry};
use crate::point::{MergeError, MergeOptions, MergeReport, merge};
use crate::repo::{
    ArchiveId, Commit, LEFTOVER_GRACE, LockError, PointSelector, RemoteArchive, RepoError,
    Repository, VolumeLock, VolumeName, clock_went_back,
};

/// Archive headers read concurrently while planning.
const HEADER_READS: usize = 16;

/// How to prune.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Which points to keep.
    pub policy: RetentionPolicy,
    /// Consolidate a kept point into a full archive when its chain would hold more
    /// archives than this.
    pub max_chain_length: Option<u32>,
    /// Only plan.
    pub dry_run: bool,
    /// How long superseded archives stay readable (zero: `--no-grace`).
    pub grace: Duration,
    /// Units merged in parallel.
    pub threads: usize,
    /// Points dropped whatever the policy says (`repair --drop-damaged`).
    pub drop: Vec<u64>,
}

impl PruneOptions {
    /// Options for `policy`: no chain limit, the default grace period.
    pub fn new(policy: RetentionPolicy) -> Self {
        PruneOptions {
            policy,
            max_chain_length: None,
            dry_run: false,
            grace: LEFTOVER_GRACE,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            drop: Vec::new(),
        }
    }
}

/// One point as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PointReport {
    /// Sequence number.
    pub seq: u64,
    /// Archive id before the prune.
    pub archive: ArchiveId,
    /// Creation time.
    pub created: String,
    /// Whether the point stays.
    pub keep: bool,
    /// The rules keeping it.
    pub reasons: Vec<String>,
    /// Why it is rewritten, if it is.
    pub rewrite: Option<Rewrite>,
    /// The new parent's seq (`None`: a full archive) when rewritten.
    pub new_parent: Option<u64>,
    /// Seqs whose archives are merged into its new archive.
    pub merged: Vec<u64>,
    /// Archives of its chain after the prune.
    pub chain_length: u32,
}

/// The result of pruning one volume.
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    /// Volume name.
    pub volume: String,
    /// Whether nothing was changed.
    pub dry_run: bool,
    /// Every point, in seq order.
    pub points: Vec<PointReport>,
    /// Planned: bytes the rewrites read at most.
    pub read_estimate: u64,
    /// Planned: bytes the rewrites write, an estimate (the merged archives' sizes).
    pub write_estimate: u64,
    /// Planned: bytes of archives dropped or replaced, deleted after the grace period.
    pub delete_bytes: u64,
    /// The rewrites done.
    pub merges: Vec<MergeReport>,
    /// Bytes read by the rewrites.
    pub bytes_read: u64,
    /// Bytes written by the rewrites.
    pub bytes_written: u64,
    /// Archive objects deleted now (superseded longer than the grace period ago, or
    /// leftovers).
    pub objects_deleted: usize,
    /// Bytes of the archive objects deleted now.
    pub bytes_deleted: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Incomplete multipart uploads of killed runs aborted (S3).
    pub uploads_aborted: usize,
    /// The grace period superseded archives were given (zero: deleted at once).
    #[serde(rename = "grace_seconds", serialize_with = "seconds")]
    pub grace: Duration,
    /// Bytes of superseded archives still kept for the grace period after the prune
    /// (`--no-grace` deletes them).
    pub bytes_waiting: u64,
    /// Problems that did not stop the prune (stale locks broken, releasing the lock).
    pub warnings: Vec<String>,
}

/// Why a prune failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PruneError {
    /// The policy cannot be used.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The repository failed, or an archive is corrupt (named).
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The volume is locked by another run, or the lock was lost.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// A rewrite failed: the rewrites committed before it stand, nothing was deleted.
    #[error(
        "cannot rewrite seq {seq} of {volume}: {source}; nothing was deleted, the points rewritten before it stand"
    )]
    Merge {
        volume: String,
        seq: u64,
        source: MergeError,
    },
    /// A point planned to be dropped is still the parent of a remaining point.
    #[error(
        "seq {seq} of {volume} is still the parent of seq {child}; it was not dropped (run prune again)"
    )]
    StillNeeded {
        volume: String,
        seq: u64,
        child: u64,
    },
    /// A local repository has too little free space for the rewrites; nothing was
    /// rewritten (what needed no rewrite was done).
    #[error(
        "need {need} MiB free on {location} for the merged archive{plural} of {seqs}, have {have} MiB: {hint}"
    )]
    NoSpace {
        location: String,
        need: u64,
        have: u64,
        plural: &'static str,
        seqs: String,
        hint: String,
    },
    /// A creation time that is not RFC 3339.
    #[error("archive {archive} of {volume} has an unreadable creation time {created:?}")]
    BadTime {
        volume: String,
        archive: ArchiveId,
        created: String,
    },
}

/// A committed point with its archive's header read (`None`: the archive cannot be
/// read; the point is damaged, and counts as a full archive created with the point
/// before it).
struct Point {
    commit: Commit,
    archive: Option<RemoteArchive>,
    created: DateTime<Utc>,
}

/// A point's archive and its creation time.
type Opened = (RemoteArchive, DateTime<Utc>);

/// Reads every committed point of `volume`.
async fn points(repo: &Repository, volume: &VolumeName) -> Result<Vec<Point>, PruneError> {
    let commits = repo.existing_commits(volume).await?;
    let read: Vec<Result<Option<Opened>, PruneError>> = futures::stream::iter(commits.clone())
        .map(|c| async move {
            let archive = match RemoteArchive::open(repo, &c).await {
                Ok(a) => a,
                Err(e @ RepoError::Store { .. }) => return Err(PruneError::Repo(e)),
                Err(_) => return Ok(None),
            };
            let created = DateTime::parse_from_rfc3339(&archive.header.created)
                .map_err(|_| PruneError::BadTime {
                    volume: volume.to_string(),
                    archive: c.archive_id.clone(),
                    created: archive.header.created.clone(),
                })?
                .with_timezone(&Utc);
            Ok(Some((archive, created)))
        })
        .buffered(HEADER_READS)
        .collect()
        .await;
    let mut out: Vec<Point> = Vec::with_capacity(commits.len());
    for (commit, r) in commits.into_iter().zip(read) {
        let point = match r? {
            Some((archive, created)) => Point {
                commit,
                archive: Some(archive),
                created,
            },
            None => Point {
                commit,
                archive: None,
                created: out.last().map_or(DateTime::UNIX_EPOCH, |p| p.created),
            },
        };
        out.push(point);
    }
    Ok(out)
}

/// Prunes `volume` of `repo` by `opts`, holding the volume's lock (a dry run takes
/// none: it only reads).
///
/// # Errors
/// [`PruneError`]; [`PruneError::Lock`] when another run holds the volume. What was
/// committed before an error stays consistent: every point listed before is still
/// listed and restorable, rewritten ones under their new archive.
pub async fn prune(
    repo: &Repository,
    volume: &VolumeName,
    opts: &PruneOptions,
) -> Result<PruneReport, PruneError> {
    opts.policy.check()?;
    if opts.dry_run {
        return prune_locked(repo, volume, opts).await;
    }
    let lock = VolumeLock::acquire(repo, volume, "prune").await?;
    let result = lock.guard(prune_locked(repo, volume, opts)).await;
    let broken = lock.broken().to_vec();
    let released = lock.release().await;
    let mut report = result?;
    report.warnings.extend(broken);
    if let Err(e) = released {
        report
            .warnings
            .push(format!("releasing the lock failed: {e}"));
    }
    Ok(report)
}

async fn prune_locked(
    repo: &Repository,
    volume: &VolumeName,
    opts: &PruneOptions,
) -> Result<PruneReport, PruneError> {
    let started = Instant::now();
    let pts = points(repo, volume).await?;
    let times: Vec<PointTime> = pts
        .iter()
        .map(|p| PointTime {
            seq: p.commit.seq,
            created: p.created,
        })
        .collect();
    let mut decisions = opts.policy.apply(&times)?;
    for d in decisions.iter_mut().filter(|d| opts.drop.contains(&d.seq)) {
        d.keep = false;
        d.reasons.clear();
    }
    let nodes: Vec<Node> = pts
        .iter()
        .map(|p| Node {
            seq: p.commit.seq,
            parent: p
                .archive
                .as_ref()
                .and_then(|a| a.header.parent.as_ref())
                .map(|q| q.seq),
            parent_image: p
                .archive
                .as_ref()
                .and_then(|a| a.header.parent.as_ref())
                .is_some_and(|q| q.image.is_some()),
            stored: p.commit.size,
        })
        .collect();
    let plan = plan(&nodes, &decisions, opts.max_chain_length);
    let mut report = report(volume, &pts, &plan, opts);
    // The policy goes by seq; say where a writer's clock ran backwards.
    report.warnings.extend(pts.iter().filter_map(|p| {
        let archive = p.archive.as_ref()?;
        let parent = archive.header.parent.as_ref()?;
        let parent = pts.iter().find(|q| q.commit.seq == parent.seq)?;
        clock_went_back(&archive.header, &parent.archive.as_ref()?.header)
    }));
    if opts.dry_run {
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }

    // Merges read block data: in an encrypted repository they need its key, which is
    // asked for before anything is changed.
    if plan.rewrites().next().is_some() {
        repo.read_key("prune (to merge points)")?;
    }

    // 1. What needs no rewrite: dropped points no kept point depends on (newest first,
    // so a listed point's ancestors stay listed), then expired and partial leftovers.
    let early = independent_drops(&pts, &plan);
    for &seq in early.iter().rev() {
        repo.retire(volume, seq, &format!("seq {seq} dropped by prune"))
            .await?;
    }
    clean(repo, volume, opts, &mut report).await?;

    // 2. Room for the rewrites (their archives go up before anything they replace
    // can be deleted).
    if let Some(e) = check_space(repo, volume, &pts, &plan, &report) {
        return Err(e);
    }

    // 3. Rewrites, in seq order; each sees the ones before it.
    // A rewrite that needs damaged data is skipped: the points it would have merged
    // stay, and the rest of the plan runs.
    let mut spared: Vec<u64> = Vec::new();
    for p in plan.rewrites() {
        let r = match rewrite(repo, volume, p.seq, p.new_parent, p.rewrite, opts).await {
            Ok(r) => r,
            Err(source) if source.is_damage() => {
                report.warnings.push(format!(
                    "seq {} was not rewritten, it needs damaged data ({source}); seq(s) {:?} stay listed (see `thinarc verify {volume}`)",
                    p.seq, p.merged
                ));
                spared.extend(&p.merged);
                continue;
            }
            Err(source) => {
                return Err(PruneError::Merge {
                    volume: volume.to_string(),
                    seq: p.seq,
                    source,
                });
            }
        };
        report.bytes_read += r.bytes_read;
        report.bytes_written += r.stored_bytes;
        report.merges.push(r);
    }

    // 4. Drop the rest: only points no remaining point names as parent.
    let dropped: Vec<u64> = plan
        .dropped()
        .map(|p| p.seq)
        .filter(|s| !early.contains(s) && !spared.contains(s))
        .collect();
    if !dropped.is_empty() {
        for p in points(repo, volume).await? {
            if let Some(parent) = p.archive.as_ref().and_then(|a| a.header.parent.as_ref())
                && !dropped.contains(&p.commit.seq)
                && dropped.contains(&parent.seq)
            {
                return Err(PruneError::StillNeeded {
                    volume: volume.to_string(),
                    seq: parent.seq,
                    child: p.commit.seq,
                });
            }
        }
    }
    for &seq in dropped.iter().rev() {
        repo.retire(volume, seq, &format!("seq {seq} dropped by prune"))
            .await?;
    }

    // 5. Superseded generations (tombstoned first) and expired archives.
    clean(repo, volume, opts, &mut report).await?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Dropped points that no kept point depends on now (no kept point's chain goes
/// through them): they are unlisted before any rewrite, freeing their space first.
fn independent_drops(pts: &[Point], plan: &Plan) -> Vec<u64> {
    // `None`: the point's archive could not be read, so its parent is unknown.
    let parent = |seq: u64| -> Option<Option<u64>> {
        let p = pts.iter().find(|p| p.commit.seq == seq)?;
        p.archive
            .as_ref()
            .map(|a| a.header.parent.as_ref().map(|q| q.seq))
    };
    let mut needed = std::collections::HashSet::new();
    // Below a needed point whose archive cannot be read, everything stays needed.
    let mut unknown_below = 0;
    for p in plan.points.iter().filter(|p| p.keep) {
        let mut at = p.seq;
        loop {
            match parent(at) {
                Some(Some(up)) if needed.insert(up) => at = up,
                Some(_) => break,
                None => {
                    unknown_below = unknown_below.max(at);
                    break;
                }
            }
        }
    }
    plan.dropped()
        .map(|p| p.seq)
        .filter(|s| !needed.contains(s) && *s >= unknown_below)
        .collect()
}

/// Cleans leftovers and superseded archives past `opts.grace`, adding to `report`.
async fn clean(
    repo: &Repository,
    volume: &VolumeName,
    opts: &PruneOptions,
    report: &mut PruneReport,
) -> Result<(), PruneError> {
    let now = repo.store_time(volume).await?;
    let cleaned = repo.clean_leftovers(volume, now, opts.grace).await?;
    report.objects_deleted += cleaned.objects.len();
    report.bytes_deleted += cleaned.bytes;
    report.bytes_waiting = cleaned.waiting_bytes;
    report.uploads_aborted += cleaned.uploads.len();
    report.warnings.extend(cleaned.warnings);
    Ok(())
}

/// Bytes a merged archive's header may take beyond the header of the point it stands
/// for: the merge changes its method and its parent (a parent map, a few hundred
/// bytes), nothing else.
const HEADER_SLACK: u64 = 4096;

/// Bytes the rewritten archive of `p` takes at most: the archives merged into it, and
/// never more than a whole archive of the point: the image, its index, and the
/// point's own header give or take its parent ([`HEADER_SLACK`]).
fn merged_size(pts: &[Point], p: &PointPlan) -> u64 {
    let stored: u64 = pts
        .iter()
        .filter(|q| p.merged.contains(&q.commit.seq))
        .map(|q| q.commit.size)
        .sum();
    let whole = pts.iter().find(|q| q.commit.seq == p.seq).and_then(|q| {
        let a = q.archive.as_ref()?;
        BlockSize::new(a.header.block_size).ok().map(|b| {
            Geometry::new(a.header.size, b).archive_len_bound(a.trailer.body_offset + HEADER_SLACK)
        })
    });
    whole.map_or(stored, |l| stored.min(l))
}

/// On a local repository, the refusal of rewrites whose archives do not fit in the
/// free space.
fn check_space(
    repo: &Repository,
    volume: &VolumeName,
    pts: &[Point],
    plan: &Plan,
    report: &PruneReport,
) -> Option<PruneError> {
    let rewrites: Vec<&PointPlan> = plan.rewrites().collect();
    let need: u64 = rewrites.iter().map(|p| merged_size(pts, p)).sum();
    let have = repo.free_space().filter(|&have| need > have)?;
    const MIB: u64 = 1 << 20;
    let seqs: Vec<String> = rewrites.iter().map(|p| p.seq.to_string()).collect();
    let hint = if report.bytes_waiting > 0 {
        format!(
            "`thinarc prune {volume} --no-grace` with the same --keep options deletes the {} MiB of superseded archives kept for the grace period first (only when no restore is reading them); or free space on it",
            report.bytes_waiting.div_ceil(MIB)
        )
    } else {
        "nothing more can be deleted without these rewrites: free space on it or move the repository to a larger disk".to_string()
    };
    Some(PruneError::NoSpace {
        location: repo.location().to_string(),
        need: need.div_ceil(MIB),
        have: have / MIB,
        plural: if seqs.len() == 1 { "" } else { "s" },
        seqs: format!(
            "{} {}",
            if seqs.len() == 1 { "seq" } else { "seqs" },
            seqs.join(", ")
        ),
        hint,
    })
}

/// Rewrites the archive of point `seq` onto the point `parent` (or as a full).
async fn rewrite(
    repo: &Repository,
    volume: &VolumeName,
    seq: u64,
    parent: Option<u64>,
    why: Option<Rewrite>,
    opts: &PruneOptions,
) -> Result<MergeReport, MergeError> {
    let commits = repo.commits(volume).await?;
    let chain = repo.resolve(&commits, &PointSelector::Seq(seq)).await?;
    let floor = match parent {
        None => None,
        Some(p) => Some(
            chain
                .archives
                .iter()
                .position(|a| a.header.seq == p)
                .ok_or(MergeError::BadParent {
                    seq,
                    parent: p as usize,
                })?,
        ),
    };
    let mut mopts = MergeOptions::new(if why == Some(Rewrite::Consolidate) {
        "consolidate"
    } else {
        "merge"
    });
    mopts.generation = chain.tip().commit.generation + 1;
    mopts.threads = opts.threads;
    merge(repo, &chain, floor, repo, volume, &mopts).await
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

fn report(volume: &VolumeName, pts: &[Point], plan: &Plan, opts: &PruneOptions) -> PruneReport {
    let points = plan
        .points
        .iter()
        .map(|p| {
            let pt = pts
                .iter()
                .find(|q| q.commit.seq == p.seq)
                .expect("planned from these points");
            PointReport {
                seq: p.seq,
                archive: pt.commit.archive_id.clone(),
                created: pt
                    .archive
                    .as_ref()
                    .map_or_else(|| "(damaged)".to_string(), |a| a.header.created.clone()),
                keep: p.keep,
                reasons: p.reasons.clone(),
                rewrite: p.rewrite,
                new_parent: p.new_parent,
                merged: p.merged.clone(),
                chain_length: p.chain_length,
            }
        })
        .collect();
    PruneReport {
        volume: volume.to_string(),
        dry_run: opts.dry_run,
        grace: opts.grace,
        points,
        read_estimate: plan.read_estimate,
        write_estimate: plan.write_estimate,
        delete_bytes: plan.delete_bytes,
        merges: Vec::new(),
        bytes_read: 0,
        bytes_written: 0,
        objects_deleted: 0,
        bytes_deleted: 0,
        bytes_waiting: 0,
        uploads_aborted: 0,
        seconds: 0.0,
        warnings: Vec::new(),
    }
}
