//! The nightly job (`thinarc run`): backs up every configured volume one after
//! another (a pattern volume expanded into the thin LVs it selects now: see
//! [`super::discover`]), prunes each by its retention, then makes the offline copies
//! and prunes them, and writes the Prometheus textfile. A failed step is recorded and
//! reported, and the run goes on with the next; [`RunReport::check`] says whether
//! every step succeeded, [`RunReport::warnings`] what it warns of. [`dry_run`] says
//! what a run would back up, touching nothing.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use futures::StreamExt;

use super::discover::{Listed, Listings, discover};
use super::step::{Action, RunReport, Step};
use super::{
    Job, JobError, Need, Observer, backup_volume, copy_volume, error_message, prune_volume,
};
use crate::backup::{ArchiveKind, BackupOptions, dry_run_lvm};
use crate::config::{Config, Retention, Select, Volume};
use crate::lvm::PoolLimits;
use crate::prune::PruneOptions;
use crate::repo::VolumeName;
use crate::size::human;
use crate::source::{RawSource, SourceSpec};
use crate::status::{RunLock, gather, prometheus};

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
    let _lock = start(job, config, observer, false).await?;
    tracing::info!(config = %config.path.display(), volumes = config.volumes.len(), "run started");
    let report = steps(job, config, observer, false).await;
    if let Some(path) = &config.prometheus {
        let mut statuses = Vec::new();
        for location in config.repositories.values() {
            let records = job.records(location);
            let repo = job.open_plain(location).await;
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
            tracing::warn!("{e}");
        }
    }
    let failed = report.steps.iter().filter(|s| !s.ok).count();
    let requests = job.requests();
    tracing::info!(
        steps = report.steps.len(),
        failed,
        list = requests.list,
        get = requests.get,
        put = requests.put,
        "run finished"
    );
    Ok(report)
}

/// What [`run`] would back up, as its steps: each volume (patterns expanded) with its
/// source and the archive it would write (`full` or `delta`) and why, the patterns
/// that match nothing, and the volumes that would be recorded as gone. Takes no lock,
/// creates no snapshot, writes no record; prunes and copies are not planned. Each
/// encrypted repository is unlocked with the keys given (never prompting), so that a
/// plan reads what the backup would read.
///
/// # Errors
/// As [`run`] before its steps: the textfile's folder is missing, or a key given
/// does not unlock its repository.
pub async fn dry_run(
    job: &Job,
    config: &Config,
    observer: &dyn Observer,
) -> Result<RunReport, JobError> {
    start(job, config, observer, true).await?;
    Ok(steps(job, config, observer, true).await)
}

/// What a run (or a dry run: `dry`) does before its steps: refuses a textfile whose
/// folder is missing, takes the run lock (not for a dry run, which it returns),
/// opens each repository once from now on and unlocks them (see [`unlock_all`]).
///
/// # Errors
/// [`JobError::Textfile`], [`JobError::RunLock`], or as [`unlock_all`]: nothing was
/// done.
async fn start(
    job: &Job,
    config: &Config,
    observer: &dyn Observer,
    dry: bool,
) -> Result<Option<RunLock>, JobError> {
    if let Some(path) = &config.prometheus {
        prometheus::check_folder(path)?;
    }
    let lock = match dry {
        true => None,
        false => Some(RunLock::acquire(&job.state_dir).map_err(JobError::RunLock)?),
    };
    job.open_once();
    unlock_all(job, config, observer, dry).await?;
    Ok(lock)
}

/// A dry run plans the volumes of a repository from one listing of its `volumes/`
/// (see [`Listings`]) when the config selects them by a pattern (discovery lists it
/// anyway) or names at least this many there; fewer are each listed on their own. A
/// listing costs one request per 1,000 objects: about 16 volumes of 30 points.
const LIST_ALL_FROM: usize = 16;

/// The repositories (by name in `config`) whose volumes a dry run plans from one
/// listing (see [`LIST_ALL_FROM`]).
fn listed_whole(config: &Config) -> HashSet<&str> {
    let mut named: BTreeMap<&str, usize> = BTreeMap::new();
    let mut whole = HashSet::new();
    for v in &config.volumes {
        match v.select {
            Select::One { .. } => *named.entry(v.repository.as_str()).or_default() += 1,
            Select::Pattern(_) => {
                whole.insert(v.repository.as_str());
            }
        }
    }
    whole.extend(
        named
            .into_iter()
            .filter(|(_, n)| *n >= LIST_ALL_FROM)
            .map(|(r, _)| r),
    );
    whole
}

/// The steps of a run (or of a dry run: backups planned only).
async fn steps(job: &Job, config: &Config, observer: &dyn Observer, dry: bool) -> RunReport {
    let mut report = RunReport::default();
    let mut step = |step: Step| {
        if !step.ok {
            tracing::error!(operation = step.operation.name(), volume = %step.volume, "{}", step.detail);
        } else if step.warning {
            tracing::warn!(operation = step.operation.name(), volume = %step.volume, "{}", step.detail);
        } else {
            tracing::info!(operation = step.operation.name(), volume = %step.volume, "{}", step.detail);
        }
        observer.step(&step);
        report.steps.push(step);
    };

    // A volume configured by name is backed up by its own entry, whatever patterns
    // also select its LV; among patterns, the first that selects an LV backs it up.
    let named: HashSet<(&str, &VolumeName)> = config
        .volumes
        .iter()
        .filter_map(|v| match &v.select {
            Select::One { name, .. } => Some((v.repository.as_str(), name)),
            Select::Pattern(_) => None,
        })
        .collect();
    let mut taken: HashSet<(String, VolumeName)> = HashSet::new();
    let mut discovered: BTreeMap<&str, Vec<VolumeName>> = BTreeMap::new();
    let mut listings = Listings::default();
    let whole = listed_whole(config);
    // What the run's start cost (unlock, discovery): logged as its first backup
    // begins (a dry run's first plan: it backs nothing up).
    let started = Instant::now();
    let log_start = || {
        let requests = job.requests();
        tracing::info!(
            seconds = started.elapsed().as_secs_f64(),
            list = requests.list,
            get = requests.get,
            "first {} starts",
            if dry { "plan" } else { "backup" }
        );
    };
    let mut first = true;
    // A dry run's steps, planned once every entry is expanded.
    let mut plans: Vec<Plan> = Vec::new();
    for v in &config.volumes {
        let location = &config.repositories[&v.repository];
        let targets: Vec<(VolumeName, SourceSpec, Option<String>)> = match &v.select {
            Select::One { name, source } => vec![(name.clone(), source.clone(), None)],
            Select::Pattern(d) => {
                let skip = |n: &VolumeName| {
                    named.contains(&(v.repository.as_str(), n))
                        || taken.contains(&(v.repository.clone(), n.clone()))
                };
                let (names, notes) = discover(job, location, d, skip, dry, &mut listings).await;
                for n in notes {
                    match dry {
                        true => plans.push(Plan::Done(n)),
                        false => step(n),
                    }
                }
                names
                    .into_iter()
                    .map(|(n, lv)| (n, SourceSpec::Lvm(lv), Some(d.source())))
                    .collect()
            }
        };
        for (name, source, pattern) in targets {
            taken.insert((v.repository.clone(), name.clone()));
            if pattern.is_some() {
                discovered
                    .entry(v.repository.as_str())
                    .or_default()
                    .push(name.clone());
            }
            let target = Target {
                location,
                volume: v,
                name,
                source,
                pattern,
            };
            if dry {
                plans.push(Plan::Backup(target));
                continue;
            }
            if std::mem::take(&mut first) {
                log_start();
            }
            let backed_up = backup_step(job, &target, observer).await;
            let ok = backed_up.ok;
            step(backed_up);
            // Pruning follows a good backup; after a failed one the history is left as
            // is.
            if let (true, Some(retention)) = (ok, &v.retention) {
                step(prune_step(job, location, &target.name, retention).await);
            }
        }
    }
    if dry {
        if plans.iter().any(|p| matches!(p, Plan::Backup(_))) {
            log_start();
        }
        // The volumes of a repository listed whole are planned from one listing,
        // taken now (a repository that cannot be opened or listed fails each plan
        // as it would alone).
        for (name, location) in &config.repositories {
            if whole.contains(name.as_str())
                && let Ok(repo) = job.open(location).await
            {
                let _ = listings.of(location, &repo).await;
            }
        }
        let (listings, whole) = (&listings, &whole);
        let mut planned = futures::stream::iter(plans)
            .map(|plan| async move {
                match plan {
                    Plan::Done(step) => step,
                    Plan::Backup(target) => {
                        let listed = whole
                            .contains(target.volume.repository.as_str())
                            .then(|| listings.get(target.location))
                            .flatten();
                        plan_backup(job, &target, listed).await
                    }
                }
            })
            .buffered(PLANS_AT_ONCE);
        while let Some(s) = planned.next().await {
            step(s);
        }
        return report;
    }

    for c in &config.copies {
        let from = &config.repositories[&c.from];
        let mut volumes = c.volumes.clone();
        if c.discovered {
            for n in discovered.get(c.from.as_str()).into_iter().flatten() {
                if !volumes.contains(n) {
                    volumes.push(n.clone());
                }
            }
        }
        for volume in &volumes {
            let result = copy_volume(job, from, &c.to, volume, None, c.consolidate, observer).await;
            let copied = result.is_ok();
            let detail = match &result {
                Ok(r) if r.copied.is_empty() => Ok(format!("{} already holds it", c.to)),
                Ok(r) => Ok(format!(
                    "{} point(s) to {}{}: wrote {} in {:.1}s",
                    r.copied.len(),
                    c.to,
                    if c.consolidate { " (consolidated)" } else { "" },
                    human(r.bytes_written),
                    r.seconds
                )),
                Err(e) => Err(error_message(e)),
            };
            step(Step::new(Action::Copy, volume, &c.to, detail));
            if let (true, Some(retention)) = (copied, &c.retention) {
                step(prune_step(job, &c.to, volume, retention).await);
            }
        }
    }
    report
}

/// A step of a dry run: one found while expanding the config (discovery), or a backup
/// to plan.
enum Plan<'a> {
    Done(Step),
    Backup(Target<'a>),
}

/// Backups a dry run plans at once (their summaries read concurrently, as many as
/// `list` and `status` read).
const PLANS_AT_ONCE: usize = 32;

/// One backup of a run: a configured volume's settings (`volume`) applied to the
/// volume `name` (itself, or an LV its pattern selected: `pattern`), read from
/// `source`, into the repository at `location`.
struct Target<'a> {
    location: &'a str,
    volume: &'a Volume,
    name: VolumeName,
    source: SourceSpec,
    pattern: Option<String>,
}

impl Target<'_> {
    /// The backup options and pool limits of the volume's settings.
    fn options(&self, job: &Job) -> (BackupOptions, PoolLimits) {
        let v = self.volume;
        let mut opts = BackupOptions::new(self.name.clone());
        opts.block_size = v.block_size;
        opts.threads = job.threads;
        opts.read_limit = job.read_limit.clone();
        opts.hooks = v.hooks.clone();
        opts.freeze = v.freeze.clone();
        // A write-only host keeps the digests of its last point there (a dry run reads
        // it).
        opts.state_dir = Some(job.state_dir.clone());
        let defaults = PoolLimits::default();
        let limits = PoolLimits {
            max_data: v.max_pool_data.map_or(defaults.max_data, f64::from),
            max_metadata: v.max_pool_metadata.map_or(defaults.max_metadata, f64::from),
        };
        (opts, limits)
    }

    /// The backup step of this target with `detail`.
    fn step(&self, detail: Result<String, String>) -> Step {
        Step {
            source: Some(self.source.to_string()),
            discovered_by: self.pattern.clone(),
            ..Step::new(Action::Backup, &self.name, self.location, detail)
        }
    }
}

/// Backs `target` up, as a step.
async fn backup_step(job: &Job, target: &Target<'_>, observer: &dyn Observer) -> Step {
    let (opts, limits) = target.options(job);
    let result = backup_volume(
        job,
        target.location,
        &target.source,
        opts,
        limits,
        target.pattern.as_deref(),
        observer,
    )
    .await;
    target.step(match &result {
        Ok(r) => Ok(format!(
            "seq {} archive {}: read {}, stored {} in {:.1}s",
            r.seq,
            r.archive,
            human(r.bytes_read),
            human(r.stored_bytes),
            r.seconds
        )),
        Err(e) => Err(error_message(e)),
    })
}

/// What a backup of `target` would write, and why, as a step: read from the catalog
/// (from `listed`, the repository's volume folders as listed, if given; else the
/// volume listed on its own: only the listing differs) and (for an LV) `lvs` and the pool's status; nothing is
/// locked, created or recorded.
async fn plan_backup(job: &Job, target: &Target<'_>, listed: Option<Listed>) -> Step {
    let (opts, limits) = target.options(job);
    let source = &target.source;
    let planned: Result<(ArchiveKind, String), String> = async {
        let repo = job
            .open(target.location)
            .await
            .map_err(|e| error_message(&e))?;
        let name = &target.name;
        // The same reads whichever listing (so the plan never depends on how many
        // volumes the config names): the volume's folder, its summary, and what the
        // summary does not vouch for.
        let catalog = async || {
            let listing = match &listed {
                Some(all) => all.get(name).cloned().unwrap_or_default(),
                None => repo
                    .list_volume(name)
                    .await
                    .map_err(|e| error_message(&e))?,
            };
            repo.catalog_listed(name, listing)
                .await
                .map_err(|e| error_message(&e))
        };
        match source {
            SourceSpec::Lvm(lv) => {
                let plan = dry_run_lvm(&repo, catalog().await?, lv, &opts, limits)
                    .await
                    .map_err(|e| error_message(&e))?;
                match plan.pool_problem {
                    Some(problem) => Err(format!("would be refused: {problem}")),
                    None => Ok((plan.kind, plan.action)),
                }
            }
            SourceSpec::Path(path) => {
                // Opened (not read) to find what the backup would fail on: the kind
                // is checked first, so a FIFO is never opened.
                RawSource::check_kind(path).map_err(|e| error_message(&e))?;
                drop(RawSource::open(path).map_err(|e| error_message(&e))?);
                crate::backup::dry_run(&repo, catalog().await?, &opts)
                    .await
                    .map_err(|e| error_message(&e))
            }
        }
    }
    .await;
    let from = match &target.pattern {
        Some(p) => format!("from {source} (selected by {p})"),
        None => format!("from {source}"),
    };
    let detail = match &planned {
        Ok((kind, why)) => Ok(format!(
            "{from}: would write a {} archive: {why}",
            match kind {
                ArchiveKind::Full => "full",
                ArchiveKind::Delta => "delta",
            }
        )),
        Err(e) => Err(format!("{from}: {e}")),
    };
    Step {
        kind: planned.ok().map(|(k, _)| k),
        ..target.step(detail)
    }
}

/// Unlocks each encrypted repository of `config` once, before any work, for what the
/// run does with it: backups need a writer key; prunes (a volume with retention) and
/// copies (source and destination) the repository key. Each repository's key
/// sources are its table's, else the command line's; a copy's destination is tried
/// with its source's.
///
/// A dry run (`dry`) unlocks each repository with the keys given only
/// ([`Need::IfGiven`]: never prompting, locked without a key source) and leaves the
/// copies' destinations alone.
///
/// # Errors
/// As [`Job::unlock`]: the run stops before any work.
async fn unlock_all<'a>(
    job: &Job,
    config: &'a Config,
    observer: &dyn Observer,
    dry: bool,
) -> Result<(), JobError> {
    // What each repository is unlocked for: the strongest need, the action that
    // needs it, and what the run does there (named when unlocking fails).
    let mut needs: BTreeMap<&str, (Need, &str, Vec<String>)> = BTreeMap::new();
    let mut need = |repository: &'a str, need: Need, action: &'static str, what: String| {
        let e = needs
            .entry(repository)
            .or_insert((need, action, Vec::new()));
        if need > e.0 {
            (e.0, e.1) = (need, action);
        }
        e.2.push(what);
    };
    for v in &config.volumes {
        let what = match v.retention {
            Some(_) => {
                need(&v.repository, Need::Read, "prune", String::new());
                format!("backup and prune of {}", v.label())
            }
            None => format!("backup of {}", v.label()),
        };
        need(&v.repository, Need::Write, "backup", what);
    }
    for c in &config.copies {
        need(&c.from, Need::Read, "copy", format!("copy to {}", c.to));
    }
    let sources = |name: &str| config.keys.get(name).unwrap_or(job.key_sources());
    let failed = |name: &str, what: Vec<String>, error: JobError| JobError::Unlock {
        repository: name.to_string(),
        location: config.repositories[name].clone(),
        what: what
            .into_iter()
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()
            .join(", "),
        error: Box::new(error),
    };
    for (name, (need, action, what)) in needs {
        let location = &config.repositories[name];
        let need = if dry { Need::IfGiven } else { need };
        job.unlock(location, sources(name), need, action, observer)
            .await
            .map_err(|e| failed(name, what, e))?;
    }
    // A destination that does not exist yet is created by its first copy, once the
    // copy's source is checked.
    for c in config.copies.iter().filter(|_| !dry) {
        job.unlock_destination(&c.to, sources(&c.from), observer)
            .await
            .map_err(|e| failed(&c.from, vec![format!("copy to {}", c.to)], e))?;
    }
    Ok(())
}

/// Prunes `volume` of the repository at `location` by `retention`, as a step.
async fn prune_step(job: &Job, location: &str, volume: &VolumeName, retention: &Retention) -> Step {
    let mut opts = PruneOptions::new(retention.policy.clone());
    opts.max_chain_length = retention.max_chain_length;
    let result = prune_volume(job, location, volume, &opts).await;
    let detail = match &result {
        Ok(r) => Ok(format!(
            "kept {} of {} point(s), {} rewritten: read {}, wrote {} in {:.1}s",
            r.points.iter().filter(|p| p.keep).count(),
            r.points.len(),
            r.merges.len(),
            human(r.bytes_read),
            human(r.bytes_written),
            r.seconds
        )),
        Err(e) => Err(error_message(e)),
    };
    Step::new(Action::Prune, volume, location, detail)
}
