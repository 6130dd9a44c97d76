//! The job floor: the commands as an operator runs them, and the nightly job.
//!
//! Owns what a command decides around the pipelines below it: the settings of a job
//! (the command line's over the config file's), the result records of each operation
//! (start, outcome, the operation in progress when a signal stops it), the failures
//! the on-failure hook is told about, which errors mean "locked" (exit code 3), the
//! messages that name the failed operation, and the nightly run ([`run()`]): every
//! configured volume in order, backup then prune, then the copies, the run lock and
//! the Prometheus textfile. Each function here is what one subcommand calls; the
//! binary only parses arguments, calls it, and prints (through [`Observer`] while it
//! runs).
//!
//! Floors: it sits above the commands ([`crate::backup`], [`crate::prune`],
//! [`crate::copy`], [`crate::status`], …), which must not import it; it must not
//! print (the binary prints) and knows nothing of argument parsing.
//!
//! Nightly floor. Imports any module of the library; must not import `cli`.

mod commands;
mod discover;
mod run;
mod step;
mod unlock;

pub use commands::{
    RepairOptions, RepairReport, backup_volume, copy, copy_volume, prune, prune_volume, repair,
};
pub use run::{dry_run, run};
pub use step::{Action, RunReport, Step};
pub use unlock::{Need, PASSWORD_ENV, new_passphrase, passphrase};

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;

use crate::backup::BackupError;
use crate::config::Config;
use crate::copy::CopyError;
use crate::progress::Progress;
use crate::prune::{PruneError, PruneReport};
use crate::repo::{KeyError, LockError, RepoError, Repository, RequestCounts};
use crate::status::alert::Alert;
use crate::status::prometheus::TextfileError;
use crate::status::{Outcome, Record, Records, RunLockError, RunLocked};
use crate::throttle::RateLimiter;

/// Why a job's operation failed. The message names the operation (`backup of … to
/// volume … failed`), except for a lock, whose message is complete as it is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// The volume is locked by another run (see [`is_locked`]), or its lock failed.
    #[error("{0}")]
    Lock(#[from] LockError),
    /// Another `thinarc run` is going (see [`is_locked`]), or the run lock cannot be
    /// taken.
    #[error("{0}")]
    RunLock(#[source] RunLockError),
    /// The config's textfile cannot be written (its folder is missing).
    #[error(transparent)]
    Textfile(#[from] TextfileError),
    /// The repository failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The key material could not be read, or opens no key slot.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// A backup failed; nothing was committed.
    #[error("backup of {path} to volume {volume} failed")]
    Backup {
        path: String,
        volume: String,
        #[source]
        error: Box<BackupError>,
    },
    /// A prune failed.
    #[error("prune of {volume} failed")]
    Prune {
        volume: String,
        #[source]
        error: Box<PruneError>,
    },
    /// The prune of `repair --drop-damaged` failed.
    #[error(transparent)]
    DropDamaged(Box<PruneError>),
    /// A copy failed; points committed before stay committed.
    #[error("copy to {to} failed")]
    Copy {
        to: String,
        #[source]
        error: Box<CopyError>,
    },
    /// The copy's destination cannot be opened or created.
    #[error("cannot open or create the destination {to}")]
    Destination {
        to: String,
        #[source]
        error: Box<RepoError>,
    },
    /// The copy's destination is its source.
    #[error("{to} is this repository ({location}): copy to another one")]
    SameRepository { to: String, location: String },
    /// `repair --drop-damaged` while the newest point depends on damage.
    #[error(
        "the newest point of {volume} (seq {seq}) depends on damaged data: run `thinarc backup` first (it stores damaged blocks again, or starts a new chain), then `thinarc repair {volume} --drop-damaged`"
    )]
    NewestDamaged { volume: String, seq: u64 },
    /// `thinarc run` cannot unlock a repository of its config: nothing was done.
    #[error("cannot unlock repository {repository} ({location}) for the {what}")]
    Unlock {
        /// The repository's name in the config.
        repository: String,
        /// Its location.
        location: String,
        /// What the run does there: `backup of VOLUME`, `copy to DEST`...
        what: String,
        /// Why (a `JobError`: boxed as a trait object, so that it is itself in the
        /// error's chain, as the exit code's checks need).
        #[source]
        error: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A signal stopped the command (see [`Job::interrupted`]).
    #[error("{0}")]
    Interrupted(String),
    /// Steps of a nightly run failed (each was recorded and reported).
    #[error("{failed} of {total} steps failed: {what}")]
    StepsFailed {
        failed: usize,
        total: usize,
        /// `operation volume` of each failed step.
        what: String,
    },
}

/// Whether `e` is (or was caused by) a volume locked by another run, or another
/// `thinarc run` going on: such errors keep their own message and exit with code 3.
pub fn is_locked(e: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(e), |c| c.source()).any(|c| {
        c.downcast_ref::<LockError>().is_some_and(held)
            || matches!(
                c.downcast_ref::<RunLockError>(),
                Some(RunLockError::Locked(_))
            )
            || c.is::<RunLocked>()
    })
}

/// Whether `e` says another run holds the volume (or its lock cannot be read): its
/// message is complete as it is, and the command exits with code 3.
fn held(e: &LockError) -> bool {
    matches!(e, LockError::Held { .. } | LockError::Unreadable { .. })
}

/// The error and its causes on one line, skipping a cause whose text the message
/// already holds (object_store errors repeat their sources in their own text).
pub fn error_message(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    for cause in std::iter::successors(Some(e), |c| c.source()) {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

/// What the caller (the binary) shows while a job runs. Every method has a default
/// that shows nothing: [`Unobserved`].
pub trait Observer {
    /// An operation with progress starts: show `progress`, labelled `what`, until the
    /// returned display is finished.
    fn show(&self, what: String, progress: Arc<Progress>) -> Box<dyn Shown> {
        let _ = (what, progress);
        Box::new(())
    }
    /// A prune of one volume finished (by [`prune()`]).
    fn pruned(&self, report: &PruneReport) {
        let _ = report;
    }
    /// A step of a nightly run finished (by [`run()`]).
    fn step(&self, step: &Step) {
        let _ = step;
    }
    /// Asks for a passphrase, `prompt` (twice with `confirm`): `None` when there is
    /// no one to ask (no terminal).
    fn passphrase(
        &self,
        prompt: &str,
        confirm: bool,
    ) -> Option<std::io::Result<zeroize::Zeroizing<String>>> {
        let _ = (prompt, confirm);
        None
    }
}

/// A display started by [`Observer::show`].
pub trait Shown: Send {
    /// Stops it, and resolves once it is cleared.
    fn finish(self: Box<Self>) -> BoxFuture<'static, ()>;
}

impl Shown for () {
    fn finish(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

/// An observer that shows nothing (for embedders and tests).
#[derive(Debug, Default, Clone, Copy)]
pub struct Unobserved;

impl Observer for Unobserved {}

/// Settings given on the command line, which win over a config file's.
#[derive(Debug, Clone, Default)]
pub struct Given {
    /// Source reads, bytes per second.
    pub read_limit: Option<u64>,
    /// Uploads, bytes per second.
    pub upload_limit: Option<u64>,
    /// Worker threads.
    pub threads: Option<u16>,
    /// Where result records are kept on this host.
    pub state_dir: Option<PathBuf>,
    /// The on-failure hook.
    pub on_failure: Option<String>,
    /// Where key material comes from (a config's repository table overrides them for
    /// that repository).
    pub keys: crate::config::KeySources,
}

/// State of a job shared by a job and those derived from it by
/// [`Job::with_config`], so that an interruption and the final alert see it.
#[derive(Default)]
struct Shared {
    /// The on-failure hook.
    on_failure: Mutex<Option<String>>,
    /// The record of the operation in progress, finished as interrupted if a signal
    /// stops the command.
    current: Mutex<Option<(Option<Repository>, Records, Record)>>,
    /// Failures of the command, for the on-failure hook.
    failures: Mutex<Vec<Record>>,
    /// Keys unlocked by [`Job::unlock`] and the slot that opened them, by repository
    /// location.
    keys: Mutex<std::collections::HashMap<String, unlock::Unlocked>>,
    /// Repositories opened once for the whole job (a nightly run: see
    /// [`Job::open_once`]), by location, as opened (without keys or upload limit);
    /// `None`: each [`Job::open`] opens again.
    opened: Mutex<Option<std::collections::HashMap<String, Repository>>>,
    /// Copy destinations this job opened (unlocking them) or created, by location,
    /// holding their keys: a copy takes its destination's handle
    /// ([`Job::destination`]) and gives it back when done, so that a command opens
    /// each destination once.
    destinations: Mutex<std::collections::HashMap<String, Repository>>,
}

/// One command's job: its settings, and the records and failures of its operations.
pub struct Job {
    given: Given,
    /// Worker threads for hashing, compression and decoding.
    pub threads: usize,
    /// Limit on source reads.
    pub read_limit: Option<Arc<RateLimiter>>,
    /// Limit on uploads.
    pub upload_limit: Option<Arc<RateLimiter>>,
    /// Where result records are kept on this host.
    pub state_dir: PathBuf,
    shared: Arc<Shared>,
}

impl Job {
    /// A job with the `given` settings (defaults for the others).
    pub fn new(given: Given) -> Job {
        let shared = Arc::new(Shared {
            on_failure: Mutex::new(given.on_failure.clone()),
            ..Shared::default()
        });
        Job::settle(given, None, shared)
    }

    /// This job with `config`'s settings where the command line gave none (the
    /// records and failures stay shared with this job).
    pub fn with_config(&self, config: &Config) -> Job {
        if self.given.on_failure.is_none() {
            *self.shared.on_failure.lock().expect("not poisoned") = config.on_failure.clone();
        }
        Job::settle(self.given.clone(), Some(config), self.shared.clone())
    }

    /// A dry run alerts no one: the on-failure hook (of the command line or a config)
    /// is not run when it fails.
    pub fn without_alerts(&self) {
        *self.shared.on_failure.lock().expect("not poisoned") = None;
    }

    fn settle(given: Given, config: Option<&Config>, shared: Arc<Shared>) -> Job {
        let limit = |rate: Option<u64>| rate.map(|r| Arc::new(RateLimiter::new(r)));
        Job {
            threads: given
                .threads
                .or(config.and_then(|c| c.threads))
                .map_or_else(
                    || std::thread::available_parallelism().map_or(2, |n| n.get()),
                    usize::from,
                ),
            read_limit: limit(given.read_limit.or(config.and_then(|c| c.read_limit))),
            upload_limit: limit(given.upload_limit.or(config.and_then(|c| c.upload_limit))),
            state_dir: given
                .state_dir
                .clone()
                .or(config.map(|c| c.state_dir.clone()))
                .unwrap_or_else(default_state_dir),
            given,
            shared,
        }
    }

    /// Opens the repository at `location` (with the upload limit, if any, and the keys
    /// [`Job::unlock`] unlocked for it).
    ///
    /// # Errors
    /// [`RepoError`] as [`Repository::open_location`].
    pub async fn open(&self, location: &str) -> Result<Repository, RepoError> {
        let repo = self.open_plain(location).await?;
        Ok(self.limit_uploads(self.keyed(location, repo)?))
    }

    /// The repository at `location` as opened, without keys or upload limit: the
    /// handle opened before if the job opens each repository once.
    ///
    /// # Errors
    /// [`RepoError`] as [`Repository::open_location`] (a failure is not kept: the
    /// next call tries again).
    async fn open_plain(&self, location: &str) -> Result<Repository, RepoError> {
        let kept = |o: &Option<std::collections::HashMap<String, Repository>>| {
            o.as_ref().and_then(|m| m.get(location).cloned())
        };
        if let Some(repo) = kept(&self.shared.opened.lock().expect("not poisoned")) {
            return Ok(repo);
        }
        let repo = Repository::open_location(location).await?;
        // Kept only when the job opens each repository once.
        if let Some(m) = self.shared.opened.lock().expect("not poisoned").as_mut() {
            m.insert(location.to_string(), repo.clone());
        }
        Ok(repo)
    }

    /// From now on this job (and those sharing its state) opens each repository
    /// once: [`Job::open`] gives clones of the first handle (with the keys unlocked
    /// since), so that a nightly run reads each repository's config once, not once
    /// per step.
    pub fn open_once(&self) {
        let mut opened = self.shared.opened.lock().expect("not poisoned");
        opened.get_or_insert_with(Default::default);
    }

    /// This job opens each repository once (see [`Job::open_once`]) and takes `repo`
    /// (opened by the caller, e.g. on a store of its own) as the one at its location.
    pub fn keep_open(&self, repo: Repository) {
        let mut opened = self.shared.opened.lock().expect("not poisoned");
        let opened = opened.get_or_insert_with(Default::default);
        opened.insert(repo.location().to_string(), repo);
    }

    /// The requests made through the repositories this job opened once (see
    /// [`Job::open_once`]), summed over them.
    pub fn requests(&self) -> RequestCounts {
        let opened = self.shared.opened.lock().expect("not poisoned");
        opened
            .iter()
            .flat_map(|m| m.values())
            .map(Repository::requests)
            .fold(RequestCounts::default(), |a, b| a + b)
    }

    /// `repo` with this job's upload limit, if any.
    pub fn limit_uploads(&self, repo: Repository) -> Repository {
        match &self.upload_limit {
            Some(limit) => repo.with_upload_limit(limit.clone()),
            None => repo,
        }
    }

    /// The result records of the repository at `location` (this host's copy under
    /// the state directory).
    pub fn records(&self, location: &str) -> Records {
        Records::new(location, Some(self.state_dir.clone()))
    }

    /// Runs `work` on the repository at `location` as the operation `record` (just
    /// started) is about, recording its start and outcome (see [`crate::status::record`]); `describe`
    /// adds the result's details to the success record. A repository that cannot be
    /// opened fails the operation with `unopened`'s error. The record holds the
    /// message of `work`'s error.
    async fn recorded<T, E: std::error::Error + 'static>(
        &self,
        location: &str,
        record: Record,
        work: impl AsyncFnOnce(&Repository) -> Result<T, E>,
        unopened: impl FnOnce(RepoError) -> E,
        describe: impl FnOnce(&T, &mut Record),
    ) -> Result<T, E> {
        let records = self.records(location);
        let repo = self.open(location).await;
        for w in records.write(repo.as_ref().ok(), &record).await {
            tracing::warn!("{w}");
        }
        *self.shared.current.lock().expect("not poisoned") =
            Some((repo.as_ref().ok().cloned(), records.clone(), record.clone()));
        let (repo, result) = match repo {
            Ok(repo) => {
                let result = work(&repo).await;
                (Some(repo), result)
            }
            Err(e) => (None, Err(unopened(e))),
        };
        self.shared.current.lock().expect("not poisoned").take();
        let mut record = record.finish(result.as_ref().map(|_| ()).map_err(|e| error_message(e)));
        if let Ok(value) = &result {
            describe(value, &mut record);
        } else {
            self.failed(&record);
        }
        for w in records.write(repo.as_ref(), &record).await {
            tracing::warn!("{w}");
        }
        result
    }

    /// Keeps a failure `record` for the on-failure hook.
    fn failed(&self, record: &Record) {
        self.shared
            .failures
            .lock()
            .expect("not poisoned")
            .push(record.clone());
    }

    /// Writes a finished `record` of an operation on the repository at `location`
    /// (`repo` if it could be opened); a failure is also kept for the on-failure hook.
    pub async fn write_record(&self, location: &str, repo: Option<&Repository>, record: Record) {
        if record.result == Outcome::Failure {
            self.failed(&record);
        }
        for w in self.records(location).write(repo, &record).await {
            tracing::warn!("{w}");
        }
    }

    /// Finishes the operation in progress, if any, as failed with `why` (a signal
    /// stopped the command).
    async fn abandon(&self, why: &str) {
        let current = self.shared.current.lock().expect("not poisoned").take();
        if let Some((repo, records, record)) = current {
            let record = record.finish(Err(why.to_string()));
            self.failed(&record);
            records.write(repo.as_ref(), &record).await;
        }
    }

    /// The command was stopped by `signal` (it was dropped, which unwinds it like an
    /// error: an upload in progress is aborted, a new restore target's temporary file
    /// deleted): waits for the dropped uploads' aborts, finishes the operation in
    /// progress as failed, and returns the error that says what happened.
    pub async fn interrupted(&self, signal: &str) -> JobError {
        let uploads = crate::repo::settle_dropped_uploads().await;
        let cut = match (uploads.aborted, uploads.failed.first()) {
            (_, Some(e)) => format!(
                "; a partial upload could not be removed ({e}): the next run of the volume removes it"
            ),
            (0, None) => String::new(),
            (_, None) => ", and the partial upload was removed".into(),
        };
        let why = format!("interrupted by {signal}: nothing partial was committed{cut}");
        self.abandon(&why).await;
        JobError::Interrupted(why)
    }

    /// Ends `command`, which failed with the message `error` if any: lets the aborts
    /// of uploads and the deletions of locks that an error or a signal dropped finish,
    /// then runs the on-failure hook.
    pub async fn finish(&self, command: &str, error: Option<String>) {
        crate::repo::settle_dropped_uploads().await;
        crate::repo::settle_dropped_locks().await;
        if let Some(error) = error {
            self.alert(command, &error).await;
        }
    }

    /// Runs the on-failure hook, if any, for `command` which failed with `error`,
    /// telling it the failures recorded so far.
    async fn alert(&self, command: &str, error: &str) {
        let Some(hook) = self.shared.on_failure.lock().expect("not poisoned").clone() else {
            return;
        };
        let alert = Alert {
            command: command.to_string(),
            error: error.to_string(),
            failures: std::mem::take(&mut *self.shared.failures.lock().expect("not poisoned")),
        };
        if let Err(h) = alert.send(&hook).await {
            tracing::warn!("on-failure command: {h}");
        }
    }
}

/// Where result records are kept by default: `/var/lib/thinarc` for root, else
/// `$XDG_STATE_HOME/thinarc` or `~/.local/state/thinarc`.
fn default_state_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from(crate::config::DEFAULT_STATE_DIR);
    }
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir)
        .join("thinarc")
}
