//! The commands of a job: each records its outcome, takes its locks (through the
//! command below it) and names what failed. `run` shares the per-volume ones.

use std::sync::Arc;

use serde::Serialize;

use super::{Job, JobError, Observer, held};
use crate::backup::{BackupError, BackupOptions, BackupReport, backup, backup_lvm};
use crate::copy::{CopyError, CopyOptions, CopyReport, check_source};
use crate::lvm::PoolLimits;
use crate::progress::Progress;
use crate::prune::{PruneError, PruneOptions, PruneReport, RetentionPolicy};
use crate::repo::{
    PointSelector, RepairAction, RepairScope, RepoError, Repository, VolumeLock, VolumeName,
    break_locks,
};
use crate::source::{RawSource, SourceSpec};
use crate::status::{Operation, Record};

/// Backs `source` (a file, a device or `lvm:VG/LV`) up as `opts.volume` into the
/// repository at `location`, holding the volume's lock (the backup takes it); records
/// the outcome (with the pattern that selected the LV, `discovered_by`, if any) and
/// logs it. `thinarc backup` and `run` call it.
///
/// # Errors
/// [`JobError::Lock`] when another run holds the volume, else [`JobError::Backup`].
pub async fn backup_volume(
    job: &Job,
    location: &str,
    source: &SourceSpec,
    mut opts: BackupOptions,
    limits: PoolLimits,
    discovered_by: Option<&str>,
    observer: &dyn Observer,
) -> Result<BackupReport, JobError> {
    let volume = opts.volume.clone();
    let mut started = Record::start(Operation::Backup, &volume, location);
    started.discovered_by = discovered_by.map(str::to_string);
    // A write-only host keeps the digests of its last point there.
    opts.state_dir.get_or_insert_with(|| job.state_dir.clone());
    let failed = |error: BackupError| match error {
        BackupError::Lock(e) if held(&e) => JobError::Lock(e),
        error => JobError::Backup {
            path: source.to_string(),
            volume: volume.to_string(),
            error: Box::new(error),
        },
    };
    if let SourceSpec::Path(path) = source
        && let Err(e) = RawSource::check_kind(path)
    {
        // Refused before the repository is touched; the failure is recorded on this
        // host only.
        let e = failed(e.into());
        let record = started.finish(Err(super::error_message(&e)));
        job.write_record(location, None, record).await;
        return Err(e);
    }
    let work = async |repo: &Repository| {
        let raw = match source {
            SourceSpec::Lvm(_) => None,
            SourceSpec::Path(path) => Some(RawSource::open(path)?),
        };
        let progress = Arc::new(Progress::default());
        let shown = observer.show(format!("backup {volume}"), progress.clone());
        let result = match (source, raw) {
            (SourceSpec::Lvm(lv), _) => backup_lvm(repo, lv, &opts, limits, progress).await,
            (SourceSpec::Path(_), Some(raw)) => backup(repo, raw, &opts, progress).await,
            (SourceSpec::Path(_), None) => {
                unreachable!("a file or device source was opened above")
            }
        };
        shown.finish().await;
        result
    };
    let describe = |r: &BackupReport, rec: &mut Record| {
        rec.archive = Some(r.archive.clone());
        rec.seq = Some(r.seq);
        rec.bytes_read = Some(r.bytes_read);
        rec.bytes_written = Some(r.stored_bytes);
        rec.consistency = Some(r.consistency);
    };
    // The record says what failed; the error also names the backup.
    let report = job
        .recorded(location, started, work, BackupError::Repo, describe)
        .await
        .map_err(failed)?;
    tracing::info!(
        volume = %volume,
        seq = report.seq,
        archive = %report.archive,
        bytes_read = report.bytes_read,
        stored_bytes = report.stored_bytes,
        seconds = report.seconds,
        "backup committed"
    );
    for w in &report.warnings {
        tracing::warn!(volume = %volume, "{w}");
    }
    Ok(report)
}

/// Prunes `volume` (else every volume) of the repository at `location`, one after
/// another, telling `observer` of each report. `thinarc prune` calls it.
///
/// # Errors
/// As [`prune_volume`]; the volumes pruned before stay pruned.
pub async fn prune(
    job: &Job,
    location: &str,
    volume: Option<VolumeName>,
    opts: &PruneOptions,
    observer: &dyn Observer,
) -> Result<Vec<PruneReport>, JobError> {
    let repo = job.open(location).await?;
    let volumes = match volume {
        Some(v) => vec![v],
        None => repo.volumes().await?,
    };
    let mut reports = Vec::new();
    for v in &volumes {
        let r = prune_volume(job, location, v, opts).await?;
        observer.pruned(&r);
        reports.push(r);
    }
    Ok(reports)
}

/// Prunes `volume` of the repository at `location` (the prune takes the volume's
/// lock), recording the outcome (a dry run is not recorded). `run` calls it.
///
/// # Errors
/// [`JobError::Lock`] when another run holds the volume, else [`JobError::Prune`] (or
/// [`JobError::Repo`] when the repository cannot be opened).
pub async fn prune_volume(
    job: &Job,
    location: &str,
    volume: &VolumeName,
    opts: &PruneOptions,
) -> Result<PruneReport, JobError> {
    let work = async |repo: &Repository| {
        crate::prune::prune(repo, volume, opts)
            .await
            .map_err(|error| match error {
                PruneError::Lock(e) if held(&e) => JobError::Lock(e),
                error => JobError::Prune {
                    volume: volume.to_string(),
                    error: Box::new(error),
                },
            })
    };
    let report = if opts.dry_run {
        work(&job.open(location).await?).await?
    } else {
        let describe = |r: &PruneReport, rec: &mut Record| {
            rec.bytes_read = Some(r.bytes_read);
            rec.bytes_written = Some(r.bytes_written);
        };
        job.recorded(
            location,
            Record::start(Operation::Prune, volume, location),
            work,
            JobError::Repo,
            describe,
        )
        .await?
    };
    for w in &report.warnings {
        tracing::warn!(volume = %volume, "{w}");
    }
    Ok(report)
}

/// Copies `volume` (else every volume) of the repository at `location` (unlocked) to
/// `to`, volume by volume, and sums the reports; logs their warnings. A named volume
/// (and its point `at`) is checked first: bad input is refused unrecorded, before the
/// destination is unlocked (with the command line's key sources) or created (by the
/// first volume copied). `thinarc copy` calls it.
///
/// # Errors
/// [`JobError::Repo`] for an unknown volume or point, as
/// [`Job::unlock_destination`], or as [`copy_volume`]; the volumes copied before
/// stay copied.
pub async fn copy(
    job: &Job,
    location: &str,
    to: &str,
    volume: Option<VolumeName>,
    at: Option<PointSelector>,
    consolidate: bool,
    observer: &dyn Observer,
) -> Result<CopyReport, JobError> {
    let src = job.open(location).await?;
    let (volumes, checked) = match volume {
        Some(v) => {
            check_copy_source(&src, &v, at.as_ref(), consolidate, to).await?;
            (vec![v], true)
        }
        None => (src.volumes().await?, false),
    };
    let existed = job
        .unlock_destination(to, job.key_sources(), observer)
        .await?;
    let mut report = CopyReport {
        destination: to.to_string(),
        existed,
        ..CopyReport::default()
    };
    for v in &volumes {
        let copy = Copy {
            location,
            to,
            volume: v,
            at: at.clone(),
            consolidate,
        };
        let r = copy.recorded(job, checked, observer).await?;
        report.initialised |= r.initialised;
        report.copied.extend(r.copied);
        report.present += r.present;
        report.bytes_read += r.bytes_read;
        report.bytes_written += r.bytes_written;
        report.seconds += r.seconds;
        report.warnings.extend(r.warnings);
    }
    for w in &report.warnings {
        tracing::warn!("{w}");
    }
    Ok(report)
}

/// Copies `volume` of the repository at `location` to `to` (created on first use,
/// once the volume and its point `at` are checked; the copy takes the destination
/// volume's lock), recording the outcome, a failed check too. `run` calls it.
///
/// # Errors
/// [`JobError::Lock`] for the destination volume's lock, [`JobError::Destination`],
/// [`JobError::SameRepository`], [`JobError::Copy`], or [`JobError::Repo`] (an
/// unknown volume or point among them).
pub async fn copy_volume(
    job: &Job,
    location: &str,
    to: &str,
    volume: &VolumeName,
    at: Option<PointSelector>,
    consolidate: bool,
    observer: &dyn Observer,
) -> Result<CopyReport, JobError> {
    let copy = Copy {
        location,
        to,
        volume,
        at,
        consolidate,
    };
    copy.recorded(job, false, observer).await
}

/// [`check_source`] of a copy to `to`: an unknown volume or point is the
/// repository's error, a point refused for its damage the copy's.
///
/// # Errors
/// [`JobError::Repo`] or [`JobError::Copy`].
async fn check_copy_source(
    src: &Repository,
    volume: &VolumeName,
    at: Option<&PointSelector>,
    consolidate: bool,
    to: &str,
) -> Result<(), JobError> {
    check_source(src, volume, at, consolidate)
        .await
        .map_err(|e| match e {
            CopyError::Repo(e) => JobError::Repo(e),
            error => JobError::Copy {
                to: to.to_string(),
                error: Box::new(error),
            },
        })
}

/// One volume's copy, as [`copy`] and [`copy_volume`] ask for it.
struct Copy<'a> {
    location: &'a str,
    to: &'a str,
    volume: &'a VolumeName,
    at: Option<PointSelector>,
    consolidate: bool,
}

impl Copy<'_> {
    /// Makes the copy, recording its outcome; its source is checked first unless the
    /// caller did (`checked`), and the destination is opened (or created) after.
    async fn recorded(
        self,
        job: &Job,
        checked: bool,
        observer: &dyn Observer,
    ) -> Result<CopyReport, JobError> {
        let Copy {
            location,
            to,
            volume,
            at,
            consolidate,
        } = self;
        let work = async |src: &Repository| {
            // Bad input is refused before the destination is created.
            if !checked {
                check_copy_source(src, volume, at.as_ref(), consolidate, to).await?;
            }
            let (dest, initialised) = job.destination(location, src, to).await?;
            if dest.config().id == src.config().id {
                return Err(JobError::SameRepository {
                    to: to.to_string(),
                    location: location.to_string(),
                });
            }
            let kept = dest.clone();
            let dest = job.limit_uploads(dest);
            let opts = CopyOptions {
                volume: Some(volume.clone()),
                at,
                consolidate,
                threads: job.threads,
            };
            let progress = Arc::new(Progress::default());
            let shown = observer.show(format!("copy {volume} to {to}"), progress.clone());
            let result = crate::copy::copy(src, &dest, initialised, &opts, progress).await;
            shown.finish().await;
            // A destination this copy created is not left behind half made; one that
            // stays is kept open for the next copy there.
            let removed = result.is_err()
                && initialised
                && match dest.remove_created().await {
                    Ok(removed) => removed,
                    Err(e) => {
                        tracing::warn!("removing {to}, created by the failed copy: {e}");
                        false
                    }
                };
            if removed {
                tracing::info!("removed {to}: this copy created it and failed");
            } else {
                job.keep_destination(to, kept);
            }
            match result {
                Ok(r) => Ok(r),
                // A locked destination volume keeps its own message (and exit code 3).
                Err(CopyError::Lock(e)) => Err(JobError::Lock(e)),
                Err(error) => Err(JobError::Copy {
                    to: to.to_string(),
                    error: Box::new(error),
                }),
            }
        };
        let describe = |r: &CopyReport, rec: &mut Record| {
            if let Some(p) = r.copied.last() {
                rec.seq = Some(p.seq);
                rec.archive = Some(p.archive.clone());
            }
            rec.bytes_read = Some(r.bytes_read);
            rec.bytes_written = Some(r.bytes_written);
        };
        job.recorded(
            location,
            Record::start(Operation::Copy, volume, location),
            work,
            JobError::Repo,
            describe,
        )
        .await
    }
}

/// What `repair` is asked to do.
#[derive(Debug, Clone, Copy, Default)]
pub struct RepairOptions {
    /// First remove unreadable lock objects and locks of dead runs on this host.
    pub break_lock: bool,
    /// Also unlist every point that depends on damaged data.
    pub drop_damaged: bool,
    /// Change nothing; say what would be done.
    pub dry_run: bool,
}

/// What `repair` did (or would do).
#[derive(Debug, Serialize)]
pub struct RepairReport {
    /// The volume.
    pub volume: String,
    /// Nothing was changed.
    pub dry_run: bool,
    /// What was done to the catalog.
    pub actions: Vec<RepairAction>,
    /// Lock objects removed by `--break-lock`, one sentence each.
    pub locks_removed: Vec<String>,
    /// Points unlisted by `--drop-damaged`.
    pub dropped: Vec<u64>,
}

/// Repairs `volume` of the repository at `location`: with `break_lock`, first removes unreadable and dead
/// lock objects; then, holding the volume's lock, sets corrupt commit markers aside and
/// commits again the complete archives whose marker is lost or wrong; with
/// `drop_damaged`, unlists the points that depend on damaged data (through prune, which
/// takes the lock again). `thinarc repair` calls it.
///
/// # Errors
/// [`JobError::Lock`] (a live run holds the volume: exit code 3),
/// [`JobError::NewestDamaged`], [`JobError::DropDamaged`], or [`JobError::Repo`].
pub async fn repair(
    job: &Job,
    location: &str,
    volume: &VolumeName,
    opts: RepairOptions,
) -> Result<RepairReport, JobError> {
    // A name with no point, archive or problem is a typo, not a volume with nothing
    // to repair: the error names the known volumes, and nothing is recorded for it.
    // (`--break-lock` may still clear the lock of a first backup that died before its
    // archive.)
    let repo = job.open(location).await?;
    if !opts.break_lock
        && let Err(e @ RepoError::VolumeNotFound { .. }) = repo.existing_commits(volume).await
    {
        return Err(e.into());
    }
    let work = async |repo: &Repository| repair_opened(job, repo, volume, &opts).await;
    if opts.dry_run {
        return work(&repo).await;
    }
    // Recorded: `status` tells a verify failure that a repair resolved since from one
    // still true.
    job.recorded(
        location,
        Record::start(Operation::Repair, volume, location),
        work,
        JobError::Repo,
        |_, _| {},
    )
    .await
}

/// [`repair`] on `repo`, opened at its location.
async fn repair_opened(
    job: &Job,
    repo: &Repository,
    volume: &VolumeName,
    opts: &RepairOptions,
) -> Result<RepairReport, JobError> {
    let locks_removed = if opts.break_lock {
        break_locks(repo, volume, opts.dry_run).await?
    } else {
        Vec::new()
    };
    let actions = if opts.dry_run {
        repo.repair_catalog(volume, RepairScope::All, true).await?
    } else {
        let lock = VolumeLock::acquire(repo, volume, "repair")
            .await
            .map_err(JobError::Lock)?;
        for w in lock.broken() {
            tracing::warn!("{w}");
        }
        let result = lock
            .guard(async {
                repo.repair_catalog(volume, RepairScope::All, false)
                    .await
                    .map_err(JobError::Repo)
            })
            .await;
        let released = lock.release().await;
        let actions = result?;
        if let Err(e) = released {
            tracing::warn!("releasing the lock failed: {e}");
        }
        actions
    };
    let dropped = if opts.drop_damaged {
        drop_damaged(job, repo, volume, opts.dry_run).await?
    } else {
        Vec::new()
    };
    Ok(RepairReport {
        volume: volume.to_string(),
        dry_run: opts.dry_run,
        actions,
        locks_removed,
        dropped,
    })
}

/// Unlists the points of `volume` that depend on damaged data, through prune with
/// those points as a forced drop set (everything else is kept).
async fn drop_damaged(
    job: &Job,
    repo: &Repository,
    volume: &VolumeName,
    dry_run: bool,
) -> Result<Vec<u64>, JobError> {
    let rows = repo.describe(volume).await?;
    let listed = repo.commits(volume).await?;
    let damaged: Vec<u64> = rows
        .iter()
        .filter(|r| r.damage.is_some() && listed.iter().any(|c| c.seq == r.seq))
        .map(|r| r.seq)
        .collect();
    if let Some(newest) = listed.last()
        && damaged.contains(&newest.seq)
    {
        return Err(JobError::NewestDamaged {
            volume: volume.to_string(),
            seq: newest.seq,
        });
    }
    if damaged.is_empty() {
        return Ok(damaged);
    }
    let mut opts = PruneOptions::new(RetentionPolicy {
        last: Some(u32::MAX),
        ..RetentionPolicy::default()
    });
    opts.drop = damaged;
    opts.dry_run = dry_run;
    opts.threads = job.threads;
    let report = crate::prune::prune(repo, volume, &opts)
        .await
        .map_err(|e| JobError::DropDamaged(Box::new(e)))?;
    for w in &report.warnings {
        tracing::warn!(volume = %volume, "{w}");
    }
    let listed: Vec<u64> = if dry_run {
        Vec::new()
    } else {
        let commits = repo.commits(volume).await?;
        // The records of the archives no point names any more go with them (readers
        // ignore them; status and the next backup need not list them again).
        for r in repo.damage_records(volume).await? {
            if !commits.iter().any(|c| c.archive_id == r.archive) {
                repo.clear_damage(volume, &r.archive).await?;
            }
        }
        commits.iter().map(|c| c.seq).collect()
    };
    Ok(report
        .points
        .iter()
        .filter(|p| !p.keep && !listed.contains(&p.seq))
        .map(|p| p.seq)
        .collect())
}
