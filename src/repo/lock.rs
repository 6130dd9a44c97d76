//! Per-volume locks: at most one writer (backup, prune, copy) works on a volume at a
//! time. Read-only commands (list, restore, verify) take no lock.
//!
//! The store offers create-if-absent but no conditional replace or delete (the local
//! file system has no `PutMode::Update`), so there is no single lock object to swap.
//! Instead, as in restic, every holder writes its own uniquely named lock object,
//! `volumes/<volume>/locks/<start>-<random>`, and then lists the volume's locks:
//!
//! - a lock whose object was last modified longer ago than its TTL (measured against
//!   the last-modified time of the lock just written, i.e. the store's clock) is
//!   *stale*: its holder died or lost the store. It is deleted and reported;
//! - if no other live lock is listed, the lock is held;
//! - if another live lock has an older key, this run lost: it deletes its own object
//!   and fails with [`LockError::Held`];
//! - if the other live locks all have newer keys, their writers will see this older
//!   lock and back off, so this run re-lists for a few seconds until they are gone.
//!
//! A run wins only when a listing made after its own object was written shows no
//! other live lock. Of two racing runs, the one whose listing came second sees the
//! other's object, so at most one of them holds the lock. (Ordering by key alone would
//! not be safe: a run whose older-keyed object lands late would win against one that
//! had already listed.)
//!
//! While held, a background task rewrites the object every quarter TTL, first
//! checking that it still exists. If it was removed (broken as stale by another run)
//! or could not be refreshed for three quarters of the TTL, the lock is *lost*:
//! [`VolumeLock::guard`] stops the operation with [`LockError::Lost`].

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{RepoError, Repository, VolumeName};

/// How long a lock stays live without a refresh, unless `THINARC_LOCK_TTL` says
/// otherwise.
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(600);
/// Environment variable overriding the TTL of locks this process takes (seconds).
pub const LOCK_TTL_ENV: &str = "THINARC_LOCK_TTL";
/// How long a run whose lock is the oldest waits for newer contenders to back off.
const CONTENTION_WAIT: Duration = Duration::from_secs(3);
/// Pause between listings while waiting for contenders.
const CONTENTION_POLL: Duration = Duration::from_millis(100);

/// The contents of a lock object: who holds the volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockInfo {
    /// The volume.
    pub volume: String,
    /// Host name of the holder.
    pub host: String,
    /// Process id of the holder.
    pub pid: u32,
    /// What the holder does: `backup`, `prune`, `copy`.
    pub operation: String,
    /// When the holder started, RFC 3339 UTC (the holder's clock).
    pub started: String,
    /// The holder refreshes its lock well within this many seconds; a lock not
    /// refreshed for longer is stale.
    pub ttl_seconds: f64,
}

impl LockInfo {
    fn ttl(&self) -> Duration {
        Duration::try_from_secs_f64(self.ttl_seconds).unwrap_or(DEFAULT_LOCK_TTL)
    }
}

/// Why a lock could not be taken or was lost.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// Another live run holds the volume.
    #[error(
        "{volume} is locked by {host} pid {pid} since {since} ({operation}); wait for that run to finish, or if it is gone, run again once its lock is older than {ttl}s without a refresh (it is then broken as stale)"
    )]
    Held {
        volume: String,
        host: String,
        pid: u32,
        since: String,
        operation: String,
        ttl: u64,
    },
    /// The lock was removed or could not be refreshed while the operation ran.
    #[error(
        "lost the lock of {volume}: {detail}; the run was stopped so that two writers never work on the volume at once (run it again)"
    )]
    Lost { volume: String, detail: String },
    /// `THINARC_LOCK_TTL` is not a positive number of seconds.
    #[error("{LOCK_TTL_ENV}={value:?} is not a positive number of seconds")]
    BadTtl { value: String },
    /// The store failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
}

/// The TTL for new locks: `THINARC_LOCK_TTL` seconds, or [`DEFAULT_LOCK_TTL`].
///
/// # Errors
/// [`LockError::BadTtl`] when the variable is set to something else.
pub fn lock_ttl() -> Result<Duration, LockError> {
    match std::env::var(LOCK_TTL_ENV) {
        Ok(v) => v
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(Duration::from_secs_f64)
            .ok_or(LockError::BadTtl { value: v }),
        Err(_) => Ok(DEFAULT_LOCK_TTL),
    }
}

/// A held lock on one volume. Release it with [`release`](Self::release); a lock that
/// is dropped instead is deleted in the background (see [`settle_dropped_locks`]).
#[derive(Debug)]
pub struct VolumeLock {
    repo: Repository,
    volume: VolumeName,
    key: Path,
    info: LockInfo,
    broken: Vec<String>,
    lost: watch::Receiver<Option<String>>,
    stop: Option<oneshot::Sender<()>>,
    refresher: Option<JoinHandle<()>>,
}

impl VolumeLock {
    /// Takes the lock of `volume` for `operation`, with the TTL of [`lock_ttl`].
    ///
    /// # Errors
    /// [`LockError::Held`] naming the holder when another live run holds it,
    /// [`LockError::BadTtl`], or [`LockError::Repo`] when the store fails.
    pub async fn acquire(
        repo: &Repository,
        volume: &VolumeName,
        operation: &str,
    ) -> Result<VolumeLock, LockError> {
        Self::acquire_with_ttl(repo, volume, operation, lock_ttl()?).await
    }

    /// Takes the lock of `volume` for `operation`, promising to refresh it within
    /// `ttl`.
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire).
    pub async fn acquire_with_ttl(
        repo: &Repository,
        volume: &VolumeName,
        operation: &str,
        ttl: Duration,
    ) -> Result<VolumeLock, LockError> {
        let now = Utc::now();
        let info = LockInfo {
            volume: volume.to_string(),
            host: hostname(),
            pid: std::process::id(),
            operation: operation.to_string(),
            started: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            ttl_seconds: ttl.as_secs_f64(),
        };
        let name = format!(
            "{}-{}",
            now.format("%Y%m%dT%H%M%S%.6fZ"),
            &super::new_id()[..16]
        );
        let key = volume.locks_prefix().join(name.as_str());
        let body = PutPayload::from(serde_json::to_vec_pretty(&info).expect("lock serialises"));
        // From here until the lock is held, a cancelled acquire (a signal) must still
        // remove the object it may have written. The write runs as its own task, so a
        // cancelled acquire cannot leave it half done; the deletion waits for it (else
        // the object could land after it was deleted).
        let (written_tx, written) = watch::channel(false);
        let put = tokio::spawn({
            let (repo, key, body) = (repo.clone(), key.clone(), body.clone());
            async move {
                let r = repo.put_create(&key, body).await;
                let _ = written_tx.send(true);
                r
            }
        });
        let mut pending = Pending {
            repo: Some(repo.clone()),
            key: key.clone(),
            written,
        };
        put.await
            .map_err(|e| object_store::Error::JoinError { source: e })
            .and_then(|r| r)
            .map_err(RepoError::store("write lock", &key))?;
        let mut broken = Vec::new();
        match contend(repo, volume, &key, &mut broken).await {
            Ok(()) => pending.repo = None,
            Err(e) => {
                pending.repo = None;
                let _ = repo.store().delete(&key).await;
                return Err(e);
            }
        }
        let (lost_tx, lost) = watch::channel(None);
        let (stop_tx, stop_rx) = oneshot::channel();
        let refresher = tokio::spawn(refresh_loop(
            repo.clone(),
            key.clone(),
            body,
            ttl,
            lost_tx,
            stop_rx,
        ));
        Ok(VolumeLock {
            repo: repo.clone(),
            volume: volume.clone(),
            key,
            info,
            broken,
            lost,
            stop: Some(stop_tx),
            refresher: Some(refresher),
        })
    }

    /// Who holds the lock: this process.
    pub fn info(&self) -> &LockInfo {
        &self.info
    }

    /// The key of this lock's object.
    pub fn key(&self) -> &Path {
        &self.key
    }

    /// Stale locks of other runs that were broken to take this one, one sentence each
    /// (callers print them as warnings).
    pub fn broken(&self) -> &[String] {
        &self.broken
    }

    /// Whether the lock is still held.
    ///
    /// # Errors
    /// [`LockError::Lost`] once it was lost.
    pub fn check(&self) -> Result<(), LockError> {
        match self.lost.borrow().as_ref() {
            Some(detail) => Err(self.lost_error(detail)),
            None => Ok(()),
        }
    }

    /// Resolves with [`LockError::Lost`] once the lock is lost; pending while held.
    pub async fn lost(&self) -> LockError {
        let mut rx = self.lost.clone();
        match rx.wait_for(Option::is_some).await {
            Ok(detail) => self.lost_error(detail.as_deref().unwrap_or_default()),
            // The refresher ended without reporting a loss: it was stopped.
            Err(_) => std::future::pending().await,
        }
    }

    /// Runs `work` while the lock is held: if the lock is lost first, `work` is
    /// dropped (which unwinds it, like an interruption) and [`LockError::Lost`] is
    /// returned.
    ///
    /// # Errors
    /// `work`'s error, or the lost lock.
    pub async fn guard<T, E: From<LockError>>(
        &self,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        tokio::select! {
            r = work => r,
            lost = self.lost() => Err(lost.into()),
        }
    }

    /// Stops refreshing and deletes the lock object.
    ///
    /// # Errors
    /// [`LockError::Repo`] if the object could not be deleted (it goes stale after
    /// its TTL and is then broken by the next run).
    pub async fn release(mut self) -> Result<(), LockError> {
        let (stop, refresher) = (self.stop.take(), self.refresher.take());
        delete_after(self.repo.clone(), self.key.clone(), stop, refresher).await
    }

    fn lost_error(&self, detail: &str) -> LockError {
        LockError::Lost {
            volume: self.volume.to_string(),
            detail: detail.to_string(),
        }
    }
}

impl Drop for VolumeLock {
    fn drop(&mut self) {
        let (stop, refresher) = (self.stop.take(), self.refresher.take());
        if stop.is_some() {
            schedule_delete(self.repo.clone(), self.key.clone(), stop, refresher);
        } // else released
    }
}

/// A lock object written by an acquire that has not finished: deleted if the acquire
/// is dropped midway.
struct Pending {
    repo: Option<Repository>,
    key: Path,
    /// Becomes true once the write of the lock object has finished.
    written: watch::Receiver<bool>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(repo) = self.repo.take() {
            let mut written = self.written.clone();
            let key = self.key.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let task = rt.spawn(async move {
                    // Closed without `true`: the write task died; delete anyway.
                    let _ = written.wait_for(|done| *done).await;
                    delete_after(repo, key, None, None).await
                });
                DROPPED.lock().expect("dropped locks").push(task);
            }
        }
    }
}

/// Deletes a lock object in the background (from a `Drop`), registered for
/// [`settle_dropped_locks`].
fn schedule_delete(
    repo: Repository,
    key: Path,
    stop: Option<oneshot::Sender<()>>,
    refresher: Option<JoinHandle<()>>,
) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            let task = rt.spawn(delete_after(repo, key, stop, refresher));
            DROPPED.lock().expect("dropped locks").push(task);
        }
        Err(_) => {
            if let Some(r) = refresher {
                r.abort();
            }
        }
    }
}

/// Deletions of locks that were dropped without [`VolumeLock::release`] (an operation
/// unwound by an error or a signal).
static DROPPED: Mutex<Vec<JoinHandle<Result<(), LockError>>>> = Mutex::new(Vec::new());

/// Waits (at most five seconds) for the deletion of locks that were dropped without
/// being released, so that an interrupted run does not leave its lock behind. Call it
/// before the runtime shuts down.
pub async fn settle_dropped_locks() {
    let tasks: Vec<_> = std::mem::take(&mut *DROPPED.lock().expect("dropped locks"));
    let _ = tokio::time::timeout(Duration::from_secs(5), futures::future::join_all(tasks)).await;
}

/// Stops the refresher, waits until its in-flight rewrite (if any) has finished so it
/// cannot re-create the object, then deletes the object.
async fn delete_after(
    repo: Repository,
    key: Path,
    stop: Option<oneshot::Sender<()>>,
    refresher: Option<JoinHandle<()>>,
) -> Result<(), LockError> {
    if let Some(stop) = stop {
        let _ = stop.send(());
    }
    if let Some(r) = refresher {
        let _ = r.await;
    }
    match repo.store().delete(&key).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(RepoError::store("delete lock", &key)(e).into()),
    }
}

/// Lists the volume's locks until this run (`own`) holds the lock or has lost, breaking
/// stale locks on the way (described in `broken`).
async fn contend(
    repo: &Repository,
    volume: &VolumeName,
    own: &Path,
    broken: &mut Vec<String>,
) -> Result<(), LockError> {
    let deadline = Instant::now() + CONTENTION_WAIT;
    loop {
        let metas = repo.list(&volume.locks_prefix()).await?;
        let Some(mine) = metas.iter().find(|m| &m.location == own) else {
            return Err(LockError::Lost {
                volume: volume.to_string(),
                detail: format!("its lock object {own} disappeared while it was being taken"),
            });
        };
        // The store's clock: when it wrote our own lock.
        let store_now = mine.last_modified;
        let mut live: Vec<(Path, LockInfo)> = Vec::new();
        for m in metas.iter().filter(|m| &m.location != own) {
            let Some(info) = read_lock(repo, &m.location, volume).await? else {
                continue; // released meanwhile
            };
            let age = age(store_now, m.last_modified);
            if age > info.ttl() {
                match repo.store().delete(&m.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => {
                        return Err(RepoError::store("break stale lock", &m.location)(e).into());
                    }
                }
                broken.push(format!(
                    "broke the stale lock of {} held by {} pid {} since {} ({}): not refreshed for {}s, longer than its TTL of {}s",
                    info.volume,
                    info.host,
                    info.pid,
                    info.started,
                    info.operation,
                    age.as_secs(),
                    info.ttl().as_secs()
                ));
            } else {
                live.push((m.location.clone(), info));
            }
        }
        let Some((oldest, holder)) = live.into_iter().min_by(|a, b| a.0.cmp(&b.0)) else {
            return Ok(());
        };
        if oldest < *own || Instant::now() >= deadline {
            return Err(LockError::Held {
                volume: volume.to_string(),
                ttl: holder.ttl().as_secs(),
                host: holder.host,
                pid: holder.pid,
                since: holder.started,
                operation: holder.operation,
            });
        }
        // Ours is older: the newer contenders will see it and back off.
        tokio::time::sleep(CONTENTION_POLL).await;
    }
}

/// A lock object found on a volume, as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct HeldLock {
    /// Who holds it.
    #[serde(flatten)]
    pub info: LockInfo,
    /// Seconds since it was last written (refreshed), by this host's clock.
    pub age_seconds: f64,
    /// Whether it is older than its TTL: its run died, and the next run breaks it.
    pub stale: bool,
}

/// The lock objects on `volume` now (none when no run holds it).
///
/// # Errors
/// [`RepoError`] when the locks cannot be listed or read.
pub async fn held_locks(
    repo: &Repository,
    volume: &VolumeName,
) -> Result<Vec<HeldLock>, RepoError> {
    let now = Utc::now();
    let mut out = Vec::new();
    for m in repo.list(&volume.locks_prefix()).await? {
        if let Some(info) = read_lock(repo, &m.location, volume).await? {
            let age = age(now, m.last_modified);
            out.push(HeldLock {
                stale: age > info.ttl(),
                age_seconds: age.as_secs_f64(),
                info,
            });
        }
    }
    Ok(out)
}

/// How much older `then` is than `now` (zero if it is newer).
fn age(now: DateTime<Utc>, then: DateTime<Utc>) -> Duration {
    (now - then).to_std().unwrap_or_default()
}

/// Reads another run's lock object; `None` if it is gone. An unreadable object still
/// counts as a lock, held by an unknown run with the default TTL.
async fn read_lock(
    repo: &Repository,
    key: &Path,
    volume: &VolumeName,
) -> Result<Option<LockInfo>, RepoError> {
    let bytes = match repo.store().get(key).await {
        Ok(r) => r.bytes().await,
        Err(e) => Err(e),
    };
    match bytes {
        Ok(b) => Ok(Some(serde_json::from_slice(&b).unwrap_or_else(|_| {
            LockInfo {
                volume: volume.to_string(),
                host: format!("an unknown host (unreadable lock object {key})"),
                pid: 0,
                operation: "unknown".into(),
                started: "an unknown time".into(),
                ttl_seconds: DEFAULT_LOCK_TTL.as_secs_f64(),
            }
        }))),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(RepoError::store("read lock", key)(e)),
    }
}

/// Rewrites the lock every quarter TTL until stopped; reports a loss on `lost`.
async fn refresh_loop(
    repo: Repository,
    key: Path,
    body: PutPayload,
    ttl: Duration,
    lost: watch::Sender<Option<String>>,
    mut stop: oneshot::Receiver<()>,
) {
    let interval = ttl / 4;
    // Others break the lock once the store has not seen a refresh for a TTL; give up
    // well before that.
    let patience = ttl * 3 / 4;
    let mut last_ok = Instant::now();
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let deadline = last_ok + patience;
        let detail = match tokio::time::timeout_at(deadline, refresh_once(&repo, &key, &body)).await
        {
            Ok(Ok(())) => {
                last_ok = Instant::now();
                continue;
            }
            Ok(Err(Refresh::Gone)) => format!(
                "its lock object {key} was removed, most likely broken as stale by another run"
            ),
            // Retried at the next interval.
            Ok(Err(Refresh::Failed(_))) if Instant::now() < deadline => continue,
            Ok(Err(Refresh::Failed(e))) => {
                format!("could not refresh it for {}s: {e}", patience.as_secs())
            }
            Err(_) => format!(
                "could not refresh it for {}s (the store did not answer)",
                patience.as_secs()
            ),
        };
        let _ = lost.send(Some(detail));
        return;
    }
}

enum Refresh {
    Gone,
    Failed(object_store::Error),
}

/// Checks that the lock object still exists, then rewrites it (a new last-modified
/// time).
async fn refresh_once(repo: &Repository, key: &Path, body: &PutPayload) -> Result<(), Refresh> {
    match repo.store().head(key).await {
        Ok(_) => {}
        Err(object_store::Error::NotFound { .. }) => return Err(Refresh::Gone),
        Err(e) => return Err(Refresh::Failed(e)),
    }
    repo.store()
        .put(key, body.clone())
        .await
        .map(|_| ())
        .map_err(Refresh::Failed)
}

/// This machine's host name.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    if rc == 0 && len > 0 {
        String::from_utf8_lossy(&buf[..len]).into_owned()
    } else {
        "unknown-host".into()
    }
}
