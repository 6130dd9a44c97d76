//! The nightly job (`thinarc run`): backs up every configured volume one after
//! another, prunes each by its retention, then makes the offline copies and prunes
//! them, and writes the Prometheus textfile. A failed step is recorded and reported,
//! and the run goes on with the next; [`RunReport::check`] says whether every step
//! succeeded.

use serde::Serialize;

use std::collections::BTreeMap;

use super::{
    Job, JobError, Need, Observer, backup_volume, copy_volume, error_message, prune_volume,
};
use crate::backup::BackupOptions;
use crate::config::{Config, Retention};
use crate::lvm::PoolLimits;
use crate::prune::PruneOptions;
use crate::repo::{Repository, VolumeName};
use crate::size::human;
use crate::status::{Operation, RunLock, gather, prometheus};

/// One step of a run and how it went.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// `backup`, `prune` or `copy`.
    pub operation: Operation,
    /// The volume.
    pub volume: String,
    /// The repository written (the destination for a copy).
    pub repository: String,
    /// Whether it succeeded.
    pub ok: bool,
    /// What it did, or the error.
    pub detail: String,
}

/// The steps of a run, in order.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(transparent)]
pub struct RunReport {
    /// Each step.
    pub steps: Vec<Step>,
}

impl RunReport {
    /// Whether every step succeeded.
    ///
    /// # Errors
    /// [`JobError::StepsFailed`] naming the failed steps.
    pub fn check(&self) -> Result<(), JobError> {
        let failed: Vec<String> = self
            .steps
            .iter()
            .filter(|s| !s.ok)
            .map(|s| format!("{} {}", s.operation.name(), s.volume))
            .collect();
        if failed.is_empty() {
            return Ok(());
        }
        Err(JobError::StepsFailed {
            failed: failed.len(),
            total: self.steps.len(),
            what: failed.join(", "),
        })
    }
}

/// Runs every step of `config` (whose settings `job` holds: see
/// [`Job::with_config`]), holding the run lock of this host; tells `observer` of each
/// step as it ends, and logs it. A failed step does not stop the run.
///
/// # Errors
/// [`JobError::RunLock`] when another run is going (nothing was done). Failed steps
/// are in the report: see [`RunReport::check`].
pub async fn run(
    job: &Job,
    config: &Config,
    observer: &dyn Observer,
) -> Result<RunReport, JobError> {
    let _lock = RunLock::acquire(&job.state_dir).map_err(JobError::RunLock)?;
    unlock_all(job, config, observer).await?;
    tracing::info!(config = %config.path.display(), volumes = config.volumes.len(), "run started");
    let mut report = RunReport::default();
    let mut step = |step: Step| {
        if step.ok {
            tracing::info!(operation = step.operation.name(), volume = %step.volume, "{}", step.detail);
        } else {
            tracing::error!(operation = step.operation.name(), volume = %step.volume, "{}", step.detail);
        }
        observer.step(&step);
        report.steps.push(step);
    };

    for v in &config.volumes {
        let location = &config.repositories[&v.repository];
        let mut opts = BackupOptions::new(v.name.clone());
        opts.block_size = v.block_size;
        opts.threads = job.threads;
        opts.read_limit = job.read_limit.clone();
        opts.hooks = v.hooks.clone();
        opts.freeze = v.freeze.clone();
        let defaults = PoolLimits::default();
        let limits = PoolLimits {
            max_data: v.max_pool_data.map_or(defaults.max_data, f64::from),
            max_metadata: v.max_pool_metadata.map_or(defaults.max_metadata, f64::from),
        };
        let result = backup_volume(job, location, &v.source, opts, limits, observer).await;
        let backed_up = result.is_ok();
        step(Step {
            operation: Operation::Backup,
            volume: v.name.to_string(),
            repository: location.clone(),
            ok: result.is_ok(),
            detail: match &result {
                Ok(r) => format!(
                    "seq {} archive {}: read {}, stored {} in {:.1}s",
                    r.seq,
                    r.archive,
                    human(r.bytes_read),
                    human(r.stored_bytes),
                    r.seconds
                ),
                Err(e) => error_message(e),
            },
        });
        // Pruning follows a good backup; after a failed one the history is left as is.
        if let (true, Some(retention)) = (backed_up, &v.retention) {
            step(prune_step(job, location, &v.name, retention).await);
        }
    }

    for c in &config.copies {
        let from = &config.repositories[&c.from];
        for volume in &c.volumes {
            let result = copy_volume(job, from, &c.to, volume, None, c.consolidate, observer).await;
            let copied = result.is_ok();
            step(Step {
                operation: Operation::Copy,
                volume: volume.to_string(),
                repository: c.to.clone(),
                ok: result.is_ok(),
                detail: match &result {
                    Ok(r) if r.copied.is_empty() => format!("{} already holds it", c.to),
                    Ok(r) => format!(
                        "{} point(s) to {}{}: wrote {} in {:.1}s",
                        r.copied.len(),
                        c.to,
                        if c.consolidate { " (consolidated)" } else { "" },
                        human(r.bytes_written),
                        r.seconds
                    ),
                    Err(e) => error_message(e),
                },
            });
            if let (true, Some(retention)) = (copied, &c.retention) {
                step(prune_step(job, &c.to, volume, retention).await);
            }
        }
    }

    if let Some(path) = &config.prometheus {
        let mut statuses = Vec::new();
        for location in config.repositories.values() {
            let records = job.records(location);
            let repo = Repository::open_location(location).await;
            let unreachable = repo
                .as_ref()
                .err()
                .map(|e| format!("repository unreachable: {e}"));
            match gather(repo.as_ref().ok(), location, &records, None, unreachable).await {
                Ok(s) => statuses.push(s),
                Err(e) => tracing::warn!("status of {location}: {}", error_message(&e)),
            }
        }
        if let Err(e) = prometheus::write(path, &statuses) {
            tracing::warn!("cannot write {}: {e}", path.display());
        }
    }
    let failed = report.steps.iter().filter(|s| !s.ok).count();
    tracing::info!(steps = report.steps.len(), failed, "run finished");
    Ok(report)
}

/// Unlocks each encrypted repository of `config` once, before any work, for what the
/// run does with it: backups need a writer key; prunes (a volume with retention) and
/// copies (source and destination) the repository key. Each repository's key
/// sources are its table's, else the command line's; a copy's destination is tried
/// with its source's.
///
/// # Errors
/// As [`Job::unlock`]: the run stops before any work.
async fn unlock_all<'a>(
    job: &Job,
    config: &'a Config,
    observer: &dyn Observer,
) -> Result<(), JobError> {
    let mut needs: BTreeMap<&str, (Need, &str)> = BTreeMap::new();
    let mut need = |repository: &'a str, need: Need, action: &'static str| {
        let e = needs.entry(repository).or_insert((need, action));
        if need > e.0 {
            *e = (need, action);
        }
    };
    for v in &config.volumes {
        need(&v.repository, Need::Write, "backup");
        if v.retention.is_some() {
            need(&v.repository, Need::Read, "prune");
        }
    }
    for c in &config.copies {
        need(&c.from, Need::Read, "copy");
    }
    let sources = |name: &str| config.keys.get(name).unwrap_or(job.key_sources());
    for (name, (need, action)) in needs {
        let location = &config.repositories[name];
        job.unlock(location, sources(name), need, action, observer)
            .await?;
    }
    for c in &config.copies {
        let from = &config.repositories[&c.from];
        job.unlock_destination(from, &c.to, sources(&c.from), observer)
            .await?;
    }
    Ok(())
}

/// Prunes `volume` of the repository at `location` by `retention`, as a step.
async fn prune_step(job: &Job, location: &str, volume: &VolumeName, retention: &Retention) -> Step {
    let mut opts = PruneOptions::new(retention.policy.clone());
    opts.max_chain_length = retention.max_chain_length;
    let result = prune_volume(job, location, volume, &opts).await;
    Step {
        operation: Operation::Prune,
        volume: volume.to_string(),
        repository: location.to_string(),
        ok: result.is_ok(),
        detail: match &result {
            Ok(r) => format!(
                "kept {} of {} point(s), {} rewritten: read {}, wrote {} in {:.1}s",
                r.points.iter().filter(|p| p.keep).count(),
                r.points.len(),
                r.merges.len(),
                human(r.bytes_read),
                human(r.bytes_written),
                r.seconds
            ),
            Err(e) => error_message(e),
        },
    }
}
