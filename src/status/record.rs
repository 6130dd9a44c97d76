//! Result records: what each backup, prune, copy, verify and repair did, kept where
//! `status` reads them.
//!
//! Every operation on a volume writes a record when it starts (result `running`) and
//! overwrites it when it ends (`success` or `failure`, with the error text). Per volume
//! and operation three records are kept: the last run, the last success and the last
//! failure, so the space used is fixed however long thinarc runs.
//!
//! They are written to two places, for different failures:
//! - **the repository** (`volumes/<volume>/records/<operation>.<last|success|failure>.json`):
//!   `status` works from any machine that can read the repository, and the history
//!   survives the loss of the backed-up host;
//! - **the local state directory** (`<state-dir>/records/<repository>/<volume>/...`, same
//!   names): a run that could not reach the repository (network down, bad credentials,
//!   bucket gone) is exactly the failure monitoring must see, and only a local record
//!   can hold it.
//!
//! `status` reads both and shows the newer record of each kind. Records are reports,
//! not the catalog: deleting them loses history, never data.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::repo::{ArchiveId, RepoError, Repository, VolumeListing, VolumeName, hostname};

/// The operation a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// `backup`.
    Backup,
    /// `prune`.
    Prune,
    /// `copy` (recorded on the source repository's volume).
    Copy,
    /// `verify`.
    Verify,
    /// `repair` (not its `--dry-run`).
    Repair,
}

impl Operation {
    /// Every operation, in display order.
    pub const ALL: [Operation; 5] = [
        Operation::Backup,
        Operation::Prune,
        Operation::Copy,
        Operation::Verify,
        Operation::Repair,
    ];

    /// The lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Backup => "backup",
            Operation::Prune => "prune",
            Operation::Copy => "copy",
            Operation::Verify => "verify",
            Operation::Repair => "repair",
        }
    }
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Started and not finished (or killed before it could say).
    Running,
    /// Finished successfully.
    Success,
    /// Failed; `error` says why.
    Failure,
    /// A backup's volume was discovered by a pattern (`discovered_by`) whose LV is no
    /// longer selected: the run reported it once and backs it up no more; its points
    /// are kept. Stored as the `last` record only.
    Gone,
}

/// One operation's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The operation.
    pub operation: Operation,
    /// The volume.
    pub volume: String,
    /// The repository location as given.
    pub repository: String,
    /// Host that ran it.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// Start time.
    pub started: DateTime<Utc>,
    /// End time (`None` while running).
    pub finished: Option<DateTime<Utc>>,
    /// Outcome.
    pub result: Outcome,
    /// The archive written or checked (backup: the new point's archive id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveId>,
    /// Sequence number of that point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Bytes read from the source (backup) or the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_read: Option<u64>,
    /// Bytes written to the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_written: Option<u64>,
    /// A backup's point: `crash` or `application` consistent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<crate::source::consistent::Consistency>,
    /// What went wrong (for `gone`: why the LV is no longer selected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A backup of an LV a pattern selected: the pattern, `lvm:VG/GLOB` or
    /// `lvm:VG/POOL/GLOB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovered_by: Option<String>,
}

impl Record {
    /// A `running` record of `operation` on `volume` in `repository`, started now.
    pub fn start(operation: Operation, volume: &VolumeName, repository: &str) -> Record {
        Record {
            operation,
            volume: volume.to_string(),
            repository: repository.to_string(),
            host: hostname(),
            pid: std::process::id(),
            started: Utc::now(),
            finished: None,
            result: Outcome::Running,
            archive: None,
            seq: None,
            bytes_read: None,
            bytes_written: None,
            consistency: None,
            error: None,
            discovered_by: None,
        }
    }

    /// The record finished now with `result`.
    pub fn finish(mut self, result: Result<(), String>) -> Record {
        self.finished = Some(Utc::now());
        match result {
            Ok(()) => self.result = Outcome::Success,
            Err(e) => {
                self.result = Outcome::Failure;
                self.error = Some(e);
            }
        }
        self
    }

    /// The record finished now as `gone`: the LV the pattern `discovered_by` selected
    /// is no longer selected, for the reason `why`.
    pub fn gone(mut self, discovered_by: &str, why: String) -> Record {
        self.finished = Some(Utc::now());
        self.result = Outcome::Gone;
        self.discovered_by = Some(discovered_by.to_string());
        self.error = Some(why);
        self
    }

    /// When the record was last updated: its end, or its start while running.
    pub fn time(&self) -> DateTime<Utc> {
        self.finished.unwrap_or(self.started)
    }

    /// The slots this record is stored under: always `last`, plus `success` or
    /// `failure` once finished.
    fn slots(&self) -> &'static [Slot] {
        match self.result {
            Outcome::Running | Outcome::Gone => &[Slot::Last],
            Outcome::Success => &[Slot::Last, Slot::Success],
            Outcome::Failure => &[Slot::Last, Slot::Failure],
        }
    }
}

/// Which of a volume's three records of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The last run, whatever its outcome.
    Last,
    /// The last successful run.
    Success,
    /// The last failed run.
    Failure,
}

impl Slot {
    /// Every slot.
    pub const ALL: [Slot; 3] = [Slot::Last, Slot::Success, Slot::Failure];

    fn name(self) -> &'static str {
        match self {
            Slot::Last => "last",
            Slot::Success => "success",
            Slot::Failure => "failure",
        }
    }
}

/// File (and object) name of a record.
fn file_name(operation: Operation, slot: Slot) -> String {
    format!("{}.{}.json", operation.name(), slot.name())
}

/// Where records go.
#[derive(Debug, Clone)]
pub struct Records {
    /// The repository location (names the local directory).
    location: String,
    /// The local state directory, if any.
    state_dir: Option<PathBuf>,
}

impl Records {
    /// Records of the repository at `location`, also kept under `state_dir`.
    pub fn new(location: &str, state_dir: Option<PathBuf>) -> Records {
        // One local directory per repository, however its path was spelled.
        let location = match crate::repo::parse_location(location) {
            Ok(crate::repo::Location::Local(p)) => std::path::absolute(&p)
                .map(|a| std::fs::canonicalize(&a).unwrap_or(a))
                .unwrap_or(p)
                .display()
                .to_string(),
            _ => location.to_string(),
        };
        Records {
            location,
            state_dir,
        }
    }

    /// The local directory of `volume`'s records.
    fn local_dir(&self, volume: &str) -> Option<PathBuf> {
        let hash = hex::encode(&Sha256::digest(self.location.as_bytes())[..8]);
        self.state_dir.as_ref().map(|d| {
            d.join("records")
                .join(format!("{}-{hash}", sanitize(&self.location)))
                .join(volume.replace('/', "~"))
        })
    }

    /// Writes `record` locally and, if `repo` is given, into the repository. Both are
    /// attempted; the errors of those that failed are returned as warnings.
    pub async fn write(&self, repo: Option<&Repository>, record: &Record) -> Vec<String> {
        let mut warnings = Vec::new();
        let body = serde_json::to_vec_pretty(record).expect("records serialize");
        if let Some(dir) = self.local_dir(&record.volume) {
            for slot in record.slots() {
                let path = dir.join(file_name(record.operation, *slot));
                if let Err(e) =
                    std::fs::create_dir_all(&dir).and_then(|()| write_atomic(&path, &body))
                {
                    warnings.push(format!(
                        "cannot write result record {}: {e}",
                        path.display()
                    ));
                }
            }
        }
        if let Some(repo) = repo {
            for slot in record.slots() {
                if let Err(e) =
                    put_record(repo, &record.volume, record.operation, *slot, &body).await
                {
                    warnings.push(format!("cannot write result record to the repository: {e}"));
                    break;
                }
            }
        }
        warnings
    }

    /// The newer of the local and repository record of `volume`'s `operation` in
    /// `slot`. Unreadable records are skipped (they are reports, not data).
    pub async fn read(
        &self,
        repo: Option<&Repository>,
        volume: &str,
        operation: Operation,
        slot: Slot,
    ) -> Option<Record> {
        self.read_listed(repo, None, volume, operation, slot).await
    }

    /// As [`read`](Self::read), with `listing`, the volume's folder as listed: a record
    /// it does not show is not asked for.
    pub async fn read_listed(
        &self,
        repo: Option<&Repository>,
        listing: Option<&VolumeListing>,
        volume: &str,
        operation: Operation,
        slot: Slot,
    ) -> Option<Record> {
        let local = self.local_dir(volume).and_then(|d| {
            let bytes = std::fs::read(d.join(file_name(operation, slot))).ok()?;
            serde_json::from_slice::<Record>(&bytes).ok()
        });
        let listed = |l: &VolumeListing| {
            record_key(volume, operation, slot).is_ok_and(|key| l.contains(&key))
        };
        let remote = match repo {
            Some(_) if listing.is_some_and(|l| !listed(l)) => None,
            Some(repo) => get_record(repo, volume, operation, slot).await,
            None => None,
        };
        match (local, remote) {
            (Some(a), Some(b)) => Some(if b.time() > a.time() { b } else { a }),
            (a, b) => a.or(b),
        }
    }

    /// Volumes with local records (a volume whose every backup failed has no point in
    /// the repository, but must still show up in `status`).
    pub fn local_volumes(&self) -> Vec<String> {
        let Some(dir) = self.local_dir("") else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut v: Vec<String> = entries
            .filter_map(|e| Some(e.ok()?.file_name().to_str()?.replace('~', "/")))
            .collect();
        v.sort();
        v
    }
}

fn record_key(
    volume: &str,
    operation: Operation,
    slot: Slot,
) -> Result<object_store::path::Path, RepoError> {
    Ok(VolumeName::new(volume)?
        .records_prefix()
        .join(file_name(operation, slot)))
}

async fn put_record(
    repo: &Repository,
    volume: &str,
    operation: Operation,
    slot: Slot,
    body: &[u8],
) -> Result<(), RepoError> {
    let key = record_key(volume, operation, slot)?;
    repo.store()
        .put(&key, body.to_vec().into())
        .await
        .map_err(RepoError::store("write record", &key))?;
    Ok(())
}

async fn get_record(
    repo: &Repository,
    volume: &str,
    operation: Operation,
    slot: Slot,
) -> Option<Record> {
    let key = record_key(volume, operation, slot).ok()?;
    let bytes = repo.store().get(&key).await.ok()?.bytes().await.ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Writes `path` via a temporary file and a rename, so a reader sees the old or the new
/// content, never a part.
pub(crate) fn write_atomic(path: &Path, body: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile_in(dir, path)?;
    tmp.1.write_all(body)?;
    tmp.1.sync_all()?;
    std::fs::rename(&tmp.0, path)
}

/// A new temporary file next to `path`.
fn tempfile_in(dir: &Path, path: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let file = std::fs::File::create(&tmp)?;
    Ok((tmp, file))
}

/// A location as a readable directory name.
fn sanitize(location: &str) -> String {
    let s: String = location
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    s.trim_matches('_').chars().take(48).collect()
}
