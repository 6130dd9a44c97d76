//! Per-volume locks: at most one writer (backup, prune, copy) works on a volume at a
//! time. Read-only commands (list, restore, verify) take no lock.
//!
//! The store offers create-if-absent but no conditional delete (and the local file
//! system has no `PutMode::Update`), so there is no single lock object to swap.
//! Instead, as in restic, every holder writes its own uniquely named lock object,
//! `volumes/<volume>/locks/<start>-<random>`, and then lists the volume's locks:
//!
//! - a lock whose object was last modified longer ago than its TTL (measured against
//!   the last-modified time of the lock just written, i.e. the store's clock) is
//!   *stale*: its holder died or lost the store. It is deleted and reported;
//! - a lock written on this same host (same host name, boot id and pid namespace)
//!   whose process is gone (no such pid, a zombie, or a pid now used by a process
//!   with another start time) is *dead*: it is deleted at once and reported. Locks of
//!   other hosts, and locks of older versions that do not record the process start
//!   time and boot id, wait for their TTL;
//! - an object that cannot be parsed (a flipped byte, a truncated write) counts as a
//!   live lock of an unknown run until it is stale; the refusal
//!   ([`LockError::Unreadable`]) names it, and [`break_locks`] (`thinarc repair
//!   VOLUME --break-lock`) removes it at once when the operator knows no run is going;
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
//! While held, a background task refreshes the object every quarter TTL, in a way
//! that can never re-create it once another run deleted it (see [`Rewrite`]). If it
//! was removed (broken as stale by another run) or could not be refreshed for three
//! quarters of the TTL, the lock is *lost*: [`VolumeLock::guard`] stops the operation
//! with [`LockError::Lost`], and the refresher ends: a lost lock is never written
//! again. Lock objects go through the repository's unthrottled store, so refreshes
//! never wait behind uploads limited by `--upload-limit`.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, PutResult, UpdateVersion};
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
    /// The holder host's boot id (`/proc/sys/kernel/random/boot_id`); absent in locks
    /// written by older versions or where it cannot be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// The holder's pid namespace (`/proc/self/ns/pid`, e.g. `pid:[4026531836]`):
    /// containers share the boot id but not the pids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_namespace: Option<String>,
    /// The holder process's start time in clock ticks after boot (`/proc/PID/stat`
    /// field 22): tells the holder from a later process that reuses its pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_start: Option<u64>,
}

impl LockInfo {
    fn ttl(&self) -> Duration {
        Duration::try_from_secs_f64(self.ttl_seconds).unwrap_or(DEFAULT_LOCK_TTL)
    }

    /// Why the holder is provably gone, if it ran on this host (same host name, boot
    /// id and pid namespace) and its process no longer runs; `None` when it may be
    /// alive or ran elsewhere (or the lock does not say enough to tell).
    fn gone_on_this_host(&self) -> Option<String> {
        let (boot, ns, start) = (
            self.boot_id.as_ref()?,
            self.pid_namespace.as_ref()?,
            self.process_start?,
        );
        if self.host != hostname()
            || Some(boot) != boot_id().as_ref()
            || Some(ns) != pid_namespace().as_ref()
        {
            return None;
        }
        let pid = self.pid;
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Some(format!("process {pid} no longer exists on this host"))
            }
            Err(_) => None,
            Ok(stat) => match parse_stat(&stat)? {
                ('Z' | 'X', _) => Some(format!("process {pid} has exited")),
                (_, now) if now != start => Some(format!(
                    "pid {pid} now belongs to another process (started at tick {now}, the holder at tick {start})"
                )),
                _ => None,
            },
        }
    }
}

/// The state and start time (field 22, clock ticks after boot) of a `/proc/PID/stat`
/// line. The command name (field 2) is in parentheses and may hold anything, so the
/// fields are counted from the last `)`.
fn parse_stat(stat: &str) -> Option<(char, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // `state` was field 3; field 22 is 19 further on.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// This host's boot id, if it can be read.
fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(id.trim().to_string()).filter(|s| !s.is_empty())
}

/// This process's pid namespace, if it can be read.
fn pid_namespace() -> Option<String> {
    let ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
    Some(ns.to_string_lossy().into_owned())
}

/// This process's start time in clock ticks after boot.
fn own_process_start() -> Option<u64> {
    parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?).map(|(_, start)| start)
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
    /// A lock object of the volume cannot be read or parsed (a flipped byte, a
    /// truncated write): it counts as held by an unknown run until it is stale.
    #[error(
        "{volume} is locked by an unreadable lock object {key} ({detail}); if no run of {volume} is going, remove it with `thinarc repair {volume} --break-lock`, else wait: it is broken as stale once it is {ttl}s old"
    )]
    Unreadable {
        volume: String,
        key: String,
        detail: String,
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
            boot_id: boot_id(),
            pid_namespace: pid_namespace(),
            process_start: own_process_start(),
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
                let r = repo.put_create_in(repo.lock_store(), &key, body).await;
                let _ = written_tx.send(true);
                r
            }
        });
        let mut pending = Pending {
            repo: Some(repo.clone()),
            key: key.clone(),
            written,
        };
        let written = put
            .await
            .map_err(|e| object_store::Error::JoinError { source: e })
            .and_then(|r| r)
            .map_err(RepoError::store("write lock", &key))?;
        let mut broken = Vec::new();
        match contend(repo, volume, &key, &mut broken).await {
            Ok(()) => pending.repo = None,
            Err(e) => {
                pending.repo = None;
                let _ = repo.lock_store().delete(&key).await;
                return Err(e);
            }
        }
        let (lost_tx, lost) = watch::channel(None);
        let (stop_tx, stop_rx) = oneshot::channel();
        let rewrite = Rewrite::new(repo, &key, body, written);
        let refresher = tokio::spawn(refresh_loop(
            repo.lock_store().clone(),
            key.clone(),
            rewrite,
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
    match repo.lock_store().delete(&key).await {
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
        let mut live: Vec<(Path, Result<LockInfo, String>)> = Vec::new();
        for m in metas.iter().filter(|m| &m.location != own) {
            let Some(read) = read_lock(repo, &m.location).await? else {
                continue; // released meanwhile
            };
            let age = age(store_now, m.last_modified);
            let ttl = read.as_ref().map_or(DEFAULT_LOCK_TTL, LockInfo::ttl);
            let why = match &read {
                Ok(info) if age > ttl => format!(
                    "stale lock of {} held by {} pid {} since {} ({}): not refreshed for {}s, longer than its TTL of {}s",
                    info.volume,
                    info.host,
                    info.pid,
                    info.started,
                    info.operation,
                    age.as_secs(),
                    ttl.as_secs()
                ),
                Err(detail) if age > ttl => format!(
                    "stale unreadable lock object {} ({detail}): not written for {}s, longer than the default TTL of {}s",
                    m.location,
                    age.as_secs(),
                    ttl.as_secs()
                ),
                Ok(info) => match info.gone_on_this_host() {
                    Some(gone) => format!(
                        "lock of {} held by {} pid {} since {} ({}) at once: {gone}, so its run is dead",
                        info.volume, info.host, info.pid, info.started, info.operation,
                    ),
                    None => {
                        live.push((m.location.clone(), read));
                        continue;
                    }
                },
                Err(_) => {
                    live.push((m.location.clone(), read));
                    continue;
                }
            };
            match repo.lock_store().delete(&m.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    return Err(RepoError::store("break lock", &m.location)(e).into());
                }
            }
            broken.push(format!("broke the {why}"));
        }
        let Some((oldest, holder)) = live.into_iter().min_by(|a, b| a.0.cmp(&b.0)) else {
            return Ok(());
        };
        if oldest < *own || Instant::now() >= deadline {
            return Err(match holder {
                Ok(holder) => LockError::Held {
                    volume: volume.to_string(),
                    ttl: holder.ttl().as_secs(),
                    host: holder.host,
                    pid: holder.pid,
                    since: holder.started,
                    operation: holder.operation,
                },
                Err(detail) => LockError::Unreadable {
                    volume: volume.to_string(),
                    key: oldest.to_string(),
                    detail,
                    ttl: DEFAULT_LOCK_TTL.as_secs(),
                },
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
    /// Seconds since it was last written (refreshed), by this host's clock. (Only
    /// shown: a run that breaks a lock measures its age on the store's clock.)
    pub age_seconds: f64,
    /// Whether its run is dead: older than its TTL, or `dead`. The next run breaks it.
    pub stale: bool,
    /// Why its holder is provably gone, for a lock written on this host by a process
    /// that no longer runs (the next run breaks it at once).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead: Option<String>,
}

/// The lock objects on `volume` now (none when no run holds it).
///
/// # Errors
/// [`RepoError`] when the locks cannot be listed or read.
pub async fn held_locks(
    repo: &Repository,
    volume: &VolumeName,
) -> Result<Vec<HeldLock>, RepoError> {
    let objects = repo.list(&volume.locks_prefix()).await?;
    held_locks_listed(repo, volume, &super::VolumeListing { objects }).await
}

/// [`held_locks`] of the lock objects `listing` shows (the volume's folder as listed).
///
/// # Errors
/// As [`held_locks`].
pub async fn held_locks_listed(
    repo: &Repository,
    volume: &VolumeName,
    listing: &super::VolumeListing,
) -> Result<Vec<HeldLock>, RepoError> {
    let now = Utc::now();
    let mut out = Vec::new();
    for m in listing.locks() {
        if let Some(read) = read_lock(repo, &m.location).await? {
            let info = read.unwrap_or_else(|detail| LockInfo {
                volume: volume.to_string(),
                host: format!(
                    "an unknown host (unreadable lock object {}: {detail})",
                    m.location
                ),
                pid: 0,
                operation: "unknown".into(),
                started: "an unknown time".into(),
                ttl_seconds: DEFAULT_LOCK_TTL.as_secs_f64(),
                boot_id: None,
                pid_namespace: None,
                process_start: None,
            });
            let age = age(now, m.last_modified);
            let dead = info.gone_on_this_host();
            out.push(HeldLock {
                stale: age > info.ttl() || dead.is_some(),
                age_seconds: age.as_secs_f64(),
                dead,
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

/// Reads another run's lock object: `None` if it is gone, `Some(Err(why))` if it
/// cannot be parsed (it still counts as a lock, held by an unknown run with the
/// default TTL).
async fn read_lock(
    repo: &Repository,
    key: &Path,
) -> Result<Option<Result<LockInfo, String>>, RepoError> {
    let bytes = match repo.lock_store().get(key).await {
        Ok(r) => r.bytes().await,
        Err(e) => Err(e),
    };
    match bytes {
        Ok(b) => {
            Ok(Some(serde_json::from_slice(&b).map_err(|e| {
                format!("{} bytes that are not a lock: {e}", b.len())
            })))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(RepoError::store("read lock", key)(e)),
    }
}

/// Removes the lock objects of `volume` that keep it locked although no run can hold
/// them: objects that cannot be read or parsed, and locks of provably dead holders on
/// this host (`thinarc repair VOLUME --break-lock`, for an operator who knows no run
/// of the volume is going). A readable lock of a holder that may be alive is left for
/// the next acquire to refuse. Returns one sentence per removed object (nothing is
/// removed with `dry_run`).
///
/// # Errors
/// [`RepoError::Store`] when listing, reading or deleting fails.
pub async fn break_locks(
    repo: &Repository,
    volume: &VolumeName,
    dry_run: bool,
) -> Result<Vec<String>, RepoError> {
    let mut removed = Vec::new();
    for m in repo.list(&volume.locks_prefix()).await? {
        let why = match read_lock(repo, &m.location).await? {
            None => continue,
            Some(Err(detail)) => format!(
                "unreadable lock object {} ({detail}, last written {})",
                m.location,
                m.last_modified
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            Some(Ok(info)) => match info.gone_on_this_host() {
                Some(gone) => format!(
                    "lock object {} of {} pid {} since {} ({}): {gone}",
                    m.location, info.host, info.pid, info.started, info.operation
                ),
                None => continue,
            },
        };
        if !dry_run {
            match repo.lock_store().delete(&m.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(RepoError::store("break lock", &m.location)(e)),
            }
        }
        removed.push(why);
    }
    Ok(removed)
}

/// How the holder refreshes its lock object (a new last-modified time) so that a
/// refresh can never re-create the object after another run broke (deleted) it: a
/// refresh that was in flight when the process stalled must not bring a lost lock
/// back.
enum Rewrite {
    /// A local repository. object_store 0.14's `LocalFileSystem` has no
    /// `PutMode::Update`, and its put re-creates a deleted file. The closest safe
    /// equivalent: rewrite the (unchanged) content in place through a descriptor
    /// opened without `O_CREAT`. Opening fails once the file was deleted, and a file
    /// deleted after it was opened stays deleted. The write makes the kernel set the
    /// modification time from its own clock, as the store's put does, so a process
    /// with a skewed clock (`faketime`) cannot date its refresh back.
    Touch(PathBuf, PutPayload),
    /// Other stores: a conditional put (`If-Match` on S3) against the version of the
    /// last write. A lock that was deleted fails the precondition instead of coming
    /// back.
    Update(PutPayload, UpdateVersion),
    /// A store that offers neither (it answered `NotImplemented`, or gave no e-tag):
    /// check that the object exists, then overwrite it. A refresh in flight while the
    /// lock is broken may then re-create it, and the object goes stale after its TTL.
    Unconditional(PutPayload),
}

impl Rewrite {
    fn new(repo: &Repository, key: &Path, body: PutPayload, written: PutResult) -> Rewrite {
        match repo.local_file(key) {
            Some(file) => Rewrite::Touch(file, body),
            None => Rewrite::new_for_store(body, written),
        }
    }

    /// For an object store, given what the lock's first write returned.
    fn new_for_store(body: PutPayload, written: PutResult) -> Rewrite {
        match (written.e_tag, written.version) {
            (None, None) => Rewrite::Unconditional(body),
            (e_tag, version) => Rewrite::Update(body, UpdateVersion { e_tag, version }),
        }
    }
}

/// Refreshes the lock every quarter TTL until stopped; reports a loss on `lost` and
/// then ends, never to write the object again.
async fn refresh_loop(
    store: std::sync::Arc<dyn object_store::ObjectStore>,
    key: Path,
    mut rewrite: Rewrite,
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
        if Instant::now() >= deadline {
            // No refresh was even tried: the process itself stood still (stopped,
            // swapping, starved of CPU). Another run may have broken the lock since.
            let detail = format!(
                "it was not refreshed for {:.1}s because this process was stalled, longer than three quarters of its {:.1}s TTL",
                last_ok.elapsed().as_secs_f64(),
                ttl.as_secs_f64()
            );
            let _ = lost.send(Some(detail));
            return;
        }
        let refresh = refresh_once(&*store, &key, &mut rewrite);
        let detail = match tokio::time::timeout_at(deadline, refresh).await {
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

/// Refreshes the lock object once, as `rewrite` says; [`Refresh::Gone`] if it no
/// longer exists.
async fn refresh_once(
    store: &dyn object_store::ObjectStore,
    key: &Path,
    rewrite: &mut Rewrite,
) -> Result<(), Refresh> {
    match rewrite {
        Rewrite::Touch(file, body) => {
            let (file, body) = (file.clone(), body.clone());
            let touched = tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt as _;
                // No `create`: a deleted lock file is not re-created.
                let f = std::fs::OpenOptions::new().write(true).open(&file)?;
                let mut at = 0;
                for chunk in body.iter() {
                    f.write_all_at(chunk, at)?;
                    at += chunk.len() as u64;
                }
                Ok::<(), std::io::Error>(())
            })
            .await
            .map_err(|e| Refresh::Failed(object_store::Error::JoinError { source: e }))?;
            match touched {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Refresh::Gone),
                Err(e) => Err(Refresh::Failed(object_store::Error::Generic {
                    store: "LocalFileSystem",
                    source: Box::new(e),
                })),
            }
        }
        Rewrite::Update(body, version) => {
            let opts = PutOptions {
                mode: PutMode::Update(version.clone()),
                ..Default::default()
            };
            match store.put_opts(key, body.clone(), opts).await {
                Ok(r) => {
                    *version = UpdateVersion {
                        e_tag: r.e_tag,
                        version: r.version,
                    };
                    Ok(())
                }
                Err(
                    object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. },
                ) => Err(Refresh::Gone),
                Err(object_store::Error::NotImplemented { .. }) => {
                    *rewrite = Rewrite::Unconditional(body.clone());
                    Box::pin(refresh_once(store, key, rewrite)).await
                }
                Err(e) => Err(Refresh::Failed(e)),
            }
        }
        Rewrite::Unconditional(body) => {
            match store.head(key).await {
                Ok(_) => {}
                Err(object_store::Error::NotFound { .. }) => return Err(Refresh::Gone),
                Err(e) => return Err(Refresh::Failed(e)),
            }
            store
                .put(key, body.clone())
                .await
                .map(|_| ())
                .map_err(Refresh::Failed)
        }
    }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use object_store::ObjectStore;
    use object_store::memory::InMemory;

    use super::*;

    fn holder(pid: u32) -> LockInfo {
        LockInfo {
            volume: "v".into(),
            host: hostname(),
            pid,
            operation: "backup".into(),
            started: "2026-11-30T00:00:00Z".into(),
            ttl_seconds: 600.0,
            boot_id: boot_id(),
            pid_namespace: pid_namespace(),
            process_start: None,
        }
    }

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let stat =
            "4711 (a) b (c) S 1 4711 4711 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 98765 1000 10\n";
        assert_eq!(parse_stat(stat), Some(('S', 98765)));
        assert_eq!(parse_stat("4711 (short) Z 1 2"), None);
    }

    #[test]
    fn only_a_provably_dead_holder_on_this_host_is_gone() {
        let me = std::process::id();
        let alive = LockInfo {
            process_start: own_process_start(),
            ..holder(me)
        };
        assert_eq!(alive.gone_on_this_host(), None);
        // The same pid with another start time: the pid was reused.
        let reused = LockInfo {
            process_start: own_process_start().map(|s| s + 1),
            ..holder(me)
        };
        assert!(
            reused
                .gone_on_this_host()
                .is_some_and(|w| w.starts_with(&format!("pid {me} now belongs to another process"))),
            "{:?}",
            reused.gone_on_this_host()
        );
        // A pid that exited (and was reaped).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let gone = LockInfo {
            process_start: Some(1),
            ..holder(dead)
        };
        assert_eq!(
            gone.gone_on_this_host(),
            Some(format!("process {dead} no longer exists on this host"))
        );
        // Elsewhere, or without the fields (older versions): the TTL decides.
        for other in [
            LockInfo {
                host: "elsewhere".into(),
                ..gone.clone()
            },
            LockInfo {
                boot_id: Some("another-boot".into()),
                ..gone.clone()
            },
            LockInfo {
                pid_namespace: Some("pid:[1]".into()),
                ..gone.clone()
            },
            LockInfo {
                boot_id: None,
                ..gone.clone()
            },
            LockInfo {
                process_start: None,
                ..gone.clone()
            },
        ] {
            assert_eq!(other.gone_on_this_host(), None, "{other:?}");
        }
    }

    #[tokio::test]
    async fn a_refresh_never_recreates_a_broken_lock() {
        let body = PutPayload::from_static(b"{}");
        // A local repository: the file is rewritten in place, never created.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("lock");
        std::fs::write(&file, b"{}").unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let key = Path::from("lock");
        let mut touch = Rewrite::Touch(file.clone(), body.clone());
        assert!(refresh_once(&*store, &key, &mut touch).await.is_ok());
        std::fs::remove_file(&file).unwrap();
        assert!(matches!(
            refresh_once(&*store, &key, &mut touch).await,
            Err(Refresh::Gone)
        ));
        assert!(!file.exists(), "re-created");
        // Other stores: a put conditional on the version of the last write.
        let written = store.put(&key, body.clone()).await.unwrap();
        let mut update = Rewrite::Update(
            body,
            UpdateVersion {
                e_tag: written.e_tag,
                version: written.version,
            },
        );
        assert!(refresh_once(&*store, &key, &mut update).await.is_ok());
        assert!(refresh_once(&*store, &key, &mut update).await.is_ok());
        store.delete(&key).await.unwrap();
        assert!(matches!(
            refresh_once(&*store, &key, &mut update).await,
            Err(Refresh::Gone)
        ));
        assert!(store.head(&key).await.is_err(), "re-created");
        // A store without conditional updates (object_store's local file system
        // reached without its path): the refresh falls back to check-then-put.
        let local: Arc<dyn ObjectStore> =
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let written = local
            .put(&key, PutPayload::from_static(b"{}"))
            .await
            .unwrap();
        let mut update = Rewrite::new_for_store(PutPayload::from_static(b"{}"), written);
        assert!(refresh_once(&*local, &key, &mut update).await.is_ok());
        assert!(matches!(update, Rewrite::Unconditional(_)));
        local.delete(&key).await.unwrap();
        assert!(matches!(
            refresh_once(&*local, &key, &mut update).await,
            Err(Refresh::Gone)
        ));
    }
}
