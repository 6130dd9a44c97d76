//! `status`: per volume, what is stored and how the last runs went — from the
//! repository's catalog and the result records ([`record`]) — as text, JSON or a
//! Prometheus textfile ([`prometheus`]). Each volume's catalog is listed once; status
//! reads, and renders nothing but data (the binary prints).
//!
//! Commands floor. Imports only `format`, `lvm`, `repo` and `source`; must not import
//! `point`, `target`, another command module (`backup`, `restore`, `prune`, `verify`,
//! `copy`), `config` or `cli`.

pub mod alert;
pub mod prometheus;
pub mod record;
mod run_lock;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::format::{Header, LvmSnapshot};
use crate::lvm::LvName;
use futures::StreamExt;
use std::collections::HashSet;

use crate::repo::{
    CatalogProblem, HeldLock, PointSelector, RepoError, Repository, VolumeCatalog, VolumeName,
    held_locks, held_locks_listed,
};
use crate::source::lvm::{LvmPlan, ThinarcSnapshot};
pub use record::{Operation, Outcome, Record, Records, Slot};
pub use run_lock::{RunLock, RunLockError, RunLocked};

/// The records of one operation on one volume.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OperationStatus {
    /// The last run, whatever its outcome (`running` if it has not finished).
    pub last: Option<Record>,
    /// The last successful run.
    pub last_success: Option<Record>,
    /// The last failed run.
    pub last_failure: Option<Record>,
}

/// The newest point of a volume.
#[derive(Debug, Clone, Serialize)]
pub struct NewestPoint {
    /// Sequence number.
    pub seq: u64,
    /// Archive id.
    pub archive: String,
    /// Creation time.
    pub created: DateTime<Utc>,
    /// Age at the time of the status, in seconds.
    pub age_seconds: f64,
}

/// Everything `status` says about one volume.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeStatus {
    /// The volume.
    pub volume: String,
    /// Committed points.
    pub points: usize,
    /// Archives behind the newest point (1 = a full archive).
    pub chain_length: usize,
    /// Bytes of all archive objects of the volume.
    pub stored_bytes: u64,
    /// The newest point, if any.
    pub newest: Option<NewestPoint>,
    /// Backup records.
    pub backup: OperationStatus,
    /// Prune records.
    pub prune: OperationStatus,
    /// Copy records.
    pub copy: OperationStatus,
    /// Verify records.
    pub verify: OperationStatus,
    /// Repair records.
    pub repair: OperationStatus,
    /// What resolved the failure of the last verify, when the volume shows no damage
    /// now: the record of that verify says what was true then, not now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify_resolved: Option<Resolved>,
    /// Lock objects on the volume: a run holds it now (or died holding it: `stale`).
    pub locks: Vec<HeldLock>,
    /// thinarc's snapshots of an LVM source, when its volume group is on this host:
    /// the base of the next delta, and strays the next backup removes.
    pub snapshots: Vec<ThinarcSnapshot>,
    /// Incomplete multipart uploads of the volume (S3): left by killed runs, aborted
    /// by its next backup, prune or copy once older than the grace period.
    pub incomplete_uploads: usize,
    /// When the oldest of them was started.
    pub oldest_upload: Option<DateTime<Utc>>,
    /// Problems found while gathering the status (e.g. an unreadable archive).
    pub problems: Vec<String>,
    /// Damage of the volume's catalog and archives (all zero for a sound volume).
    pub damage: DamageCounts,
    /// The volume was backed up by a discovery pattern that no longer selects its LV
    /// (its last backup record is `gone`): not backed up any more, not a failure.
    pub gone: bool,
}

/// The successful operation after a failed verify that left the volume showing no
/// damage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resolved {
    /// `repair` (it unlisted or re-committed what verify found) or `backup` (it
    /// replaced it: re-committed a newest point, stored damaged blocks again).
    pub by: Operation,
    /// When it finished.
    pub at: DateTime<Utc>,
}

/// What is damaged in a volume, from its catalog and damage records (no block data is
/// read).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DamageCounts {
    /// Commit markers that cannot be read or parsed.
    pub corrupt_markers: usize,
    /// Complete archives whose seq has no valid marker (a lost marker).
    pub orphans: usize,
    /// Listed points that cannot be restored: their archive or chain is damaged, or they
    /// depend on recorded damaged data.
    pub damaged_points: usize,
    /// Whether the last successful backup's point is no longer listed.
    pub lost_success: bool,
}

impl DamageCounts {
    /// Whether anything is damaged.
    pub fn any(&self) -> bool {
        *self != DamageCounts::default()
    }
}

impl VolumeStatus {
    /// The records of `operation`.
    pub fn operation(&self, operation: Operation) -> &OperationStatus {
        match operation {
            Operation::Backup => &self.backup,
            Operation::Prune => &self.prune,
            Operation::Copy => &self.copy,
            Operation::Verify => &self.verify,
            Operation::Repair => &self.repair,
        }
    }

    fn operation_mut(&mut self, operation: Operation) -> &mut OperationStatus {
        match operation {
            Operation::Backup => &mut self.backup,
            Operation::Prune => &mut self.prune,
            Operation::Copy => &mut self.copy,
            Operation::Verify => &mut self.verify,
            Operation::Repair => &mut self.repair,
        }
    }

    /// What resolved the last verify's failure: the volume shows no damage or problem
    /// now (the catalog and archives are the truth), and a repair, else a backup,
    /// succeeded after that verify. `None` when the last verify did not fail, or what
    /// it found may still be there.
    fn verify_resolved(&self) -> Option<Resolved> {
        let failed = self
            .verify
            .last
            .as_ref()
            .filter(|r| r.result == Outcome::Failure)?;
        if self.damage.any() || !self.problems.is_empty() {
            return None;
        }
        [Operation::Repair, Operation::Backup]
            .into_iter()
            .find_map(|by| {
                let at = self.operation(by).last_success.as_ref()?.time();
                (at > failed.time()).then_some(Resolved { by, at })
            })
    }

    /// Whether the volume looks healthy: its last backup succeeded and nothing is
    /// wrong with what is stored.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
            && !self.damage.any()
            && self
                .backup
                .last
                .as_ref()
                .is_none_or(|r| r.result != Outcome::Failure)
    }
}

/// The status of every volume of a repository.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The repository location.
    pub repository: String,
    /// When the status was taken.
    pub time: DateTime<Utc>,
    /// Volumes, by name.
    pub volumes: Vec<VolumeStatus>,
}

/// Why the status could not be gathered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StatusError {
    /// The repository's volumes cannot be listed.
    #[error(transparent)]
    Repo(#[from] crate::repo::RepoError),
    /// The volume asked for is neither in the repository nor in the records.
    #[error("no volume named {name} in {location}, and no records of it")]
    UnknownVolume { name: String, location: String },
}

/// Gathers the status of `volume` (or every volume) of `repo`, reading `records`.
/// `repo` is `None` when the repository cannot be opened: the local records still tell
/// what happened.
///
/// # Errors
/// [`StatusError::UnknownVolume`] for an unknown `volume` with no records anywhere;
/// [`StatusError::Repo`] when the volumes cannot be listed.
pub async fn gather(
    repo: Option<&Repository>,
    location: &str,
    records: &Records,
    volume: Option<&VolumeName>,
    unreachable: Option<String>,
) -> Result<Status, StatusError> {
    let time = Utc::now();
    // Every volume's catalog from one listing of the repository, built a few at a time
    // as the loop reads them and dropped once its volume is described; the volumes
    // with local records merged in, in name order.
    let local: Vec<String> = match volume {
        Some(v) => vec![v.to_string()],
        None => records.local_volumes(),
    };
    let mut local = local.into_iter().peekable();
    let listed = match (repo, volume) {
        (Some(repo), None) => Some(repo.catalogs().await?),
        _ => None,
    };
    let mut listed = std::pin::pin!(futures::stream::iter(listed).flatten().peekable());
    // The incomplete uploads of every volume, listed once when every volume is shown.
    let all_uploads = match (repo, volume) {
        (Some(repo), None) => Some(repo.pending_uploads(None).await),
        _ => None,
    };
    let mut volumes = Vec::new();
    loop {
        let next_listed = listed.as_mut().peek().await.map(|(v, _)| v.to_string());
        let (name, listed_catalog) = match (local.peek(), next_listed) {
            (None, None) => break,
            (Some(l), n) if n.as_ref().is_none_or(|n| l < n) => {
                (local.next().unwrap_or_default(), None)
            }
            (l, n) => {
                if l == n.as_ref() {
                    local.next();
                }
                match listed.next().await {
                    Some((v, c)) => (v.to_string(), Some(c)),
                    None => break,
                }
            }
        };
        let mut s = VolumeStatus {
            volume: name.clone(),
            points: 0,
            chain_length: 0,
            stored_bytes: 0,
            newest: None,
            backup: OperationStatus::default(),
            prune: OperationStatus::default(),
            copy: OperationStatus::default(),
            verify: OperationStatus::default(),
            repair: OperationStatus::default(),
            verify_resolved: None,
            locks: Vec::new(),
            snapshots: Vec::new(),
            incomplete_uploads: 0,
            oldest_upload: None,
            problems: unreachable.iter().cloned().collect(),
            damage: DamageCounts::default(),
            gone: false,
        };
        let catalog = match (repo, VolumeName::new(&name)) {
            (Some(repo), Ok(v)) => Some(match listed_catalog {
                Some(c) => c,
                None => repo.catalog(&v).await,
            }),
            _ => None,
        };
        let listing = catalog
            .as_ref()
            .and_then(|c| c.as_ref().ok())
            .map(|c| c.listing());
        for op in Operation::ALL {
            let slot = |slot| records.read_listed(repo, listing, &name, op, slot);
            let o = s.operation_mut(op);
            o.last = slot(Slot::Last).await;
            o.last_success = slot(Slot::Success).await;
            o.last_failure = slot(Slot::Failure).await;
        }
        s.gone = s
            .backup
            .last
            .as_ref()
            .is_some_and(|r| r.result == Outcome::Gone);
        if let (Some(repo), Ok(v), Some(c)) = (repo, VolumeName::new(&name), catalog) {
            let locks = match &c {
                Ok(c) => held_locks_listed(repo, &v, c.listing()).await,
                Err(_) => held_locks(repo, &v).await,
            };
            describe(repo, &v, c, time, &mut s).await;
            match locks {
                Ok(locks) => s.locks = locks,
                Err(e) => s.problems.push(format!("cannot list locks: {e}")),
            }
            // A listing of every volume's uploads that failed is not tried again per
            // volume (a server without ListMultipartUploads answers each the same).
            let uploads = match &all_uploads {
                Some(Ok(all)) => Ok(Repository::uploads_of(&v, all)),
                Some(Err(e)) => Err(e.to_string()),
                None => repo
                    .pending_uploads(Some(&v))
                    .await
                    .map_err(|e| e.to_string()),
            };
            match uploads {
                Ok(u) => {
                    s.incomplete_uploads = u.len();
                    s.oldest_upload = u.iter().map(|u| u.initiated).min();
                }
                Err(e) => s.problems.push(e),
            }
        }
        lost_success(&mut s);
        s.verify_resolved = s.verify_resolved();
        if volume.is_some() && s.points == 0 && s.backup.last.is_none() && repo.is_some() {
            return Err(StatusError::UnknownVolume {
                name,
                location: location.to_string(),
            });
        }
        volumes.push(s);
    }
    Ok(Status {
        repository: location.to_string(),
        time,
        volumes,
    })
}

/// How far in the future (by this host's clock) the newest point may have been
/// created before `status` reports the writer's clock: hosts kept by NTP differ by
/// far less.
const CLOCK_AHEAD_TOLERANCE: std::time::Duration = std::time::Duration::from_secs(300);

/// Reports a last successful backup whose point is no longer listed (its marker lost).
fn lost_success(s: &mut VolumeStatus) {
    let Some(seq) = s.backup.last_success.as_ref().and_then(|r| r.seq) else {
        return;
    };
    if s.points > 0 && s.newest.as_ref().is_some_and(|n| n.seq < seq) {
        s.damage.lost_success = true;
        s.problems.push(format!(
            "the last successful backup committed seq {seq}, which is not listed (newest listed: seq {}): its commit marker is lost or corrupt; run `thinarc repair {}`",
            s.newest.as_ref().map_or(0, |n| n.seq),
            s.volume
        ));
    }
}

/// Fills the catalog part of `s`: points, chain length, stored bytes, newest point,
/// damage.
async fn describe(
    repo: &Repository,
    volume: &VolumeName,
    catalog: Result<VolumeCatalog, RepoError>,
    now: DateTime<Utc>,
    s: &mut VolumeStatus,
) {
    // Listed once: the rows, the counts and the newest chain all come from it.
    let catalog = match catalog {
        Ok(c) => c,
        Err(e) => {
            s.problems.push(e.to_string());
            return;
        }
    };
    let rows = match repo.describe_catalog(volume, &catalog).await {
        Ok(p) => p,
        Err(crate::repo::RepoError::VolumeNotFound { .. }) => return,
        Err(e) => {
            s.problems.push(e.to_string());
            return;
        }
    };
    for p in &catalog.problems {
        match p {
            CatalogProblem::CorruptMarker { .. } => s.damage.corrupt_markers += 1,
            CatalogProblem::Orphan(_) => s.damage.orphans += 1,
        }
    }
    let listed: HashSet<u64> = catalog.commits.iter().map(|c| c.seq).collect();
    for r in rows.iter().filter(|r| r.damage.is_some()) {
        if listed.contains(&r.seq) {
            s.damage.damaged_points += 1;
        }
        s.problems.push(format!(
            "seq {}: {}",
            r.seq,
            r.damage.as_deref().unwrap_or_default()
        ));
    }
    s.points = listed.len();
    let points: Vec<_> = rows
        .into_iter()
        .filter(|r| listed.contains(&r.seq) && !r.created.is_empty())
        .collect();
    s.stored_bytes = points.iter().map(|p| p.stored_bytes).sum();
    if let Some(p) = points.last() {
        let created = DateTime::parse_from_rfc3339(&p.created)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or(now);
        let age = (now - created).as_seconds_f64();
        // A writer's clock ahead of this host's would make the newest point look
        // fresh until that time: say so rather than show an age of 0.
        if -age > CLOCK_AHEAD_TOLERANCE.as_secs_f64() {
            s.problems.push(format!(
                "seq {} was created at {}, {:.0}s after this host's clock ({}): a writer's clock is ahead (check NTP), so the age of the newest point cannot be told",
                p.seq,
                p.created,
                -age,
                now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ));
        }
        s.newest = Some(NewestPoint {
            seq: p.seq,
            archive: p.id.clone(),
            created,
            age_seconds: age.max(0.0),
        });
    }
    if catalog.commits.is_empty() {
        // Nothing committed intact: the catalog's problems above say why.
        return;
    }
    match repo.resolve(&catalog.commits, &PointSelector::Latest).await {
        Ok(chain) => {
            s.chain_length = chain.archives.len();
            let tip = &chain.tip().header;
            // A gone volume's LV is no longer backed up (and may not exist): its
            // snapshots were removed when it went.
            if let (Some(rec), false) = (&tip.lvm, s.gone) {
                snapshots(tip, rec, s);
            }
        }
        Err(e) => s.problems.push(e.to_string()),
    }
}

/// Lists thinarc's snapshots of the LV `rec` names, `tip` being the latest point's
/// header, if its volume group is active on this host (a monitoring host that only
/// reads the repository has no LVM to ask).
fn snapshots(tip: &Header, rec: &LvmSnapshot, s: &mut VolumeStatus) {
    if !std::path::Path::new("/dev").join(&rec.vg).is_dir() {
        return;
    }
    let lv = LvName {
        vg: rec.vg.clone(),
        lv: rec.lv.clone(),
    };
    match LvmPlan::inspect(&lv, Some(tip)).map(|plan| plan.snapshots()) {
        Ok(list) => s.snapshots = list,
        Err(e) => s
            .problems
            .push(format!("cannot list the snapshots of {lv}: {e}")),
    }
}
