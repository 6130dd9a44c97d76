//! `thinarc run`: the nightly job. Backs up every configured volume one after another,
//! prunes each by its retention, then makes the offline copies and prunes them, and
//! writes the Prometheus textfile. A failed step is recorded and reported, and the
//! run goes on with the next; the exit code says whether every step succeeded.

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use super::{Ctx, error_message, human, print_json};
use thinarc::backup::BackupOptions;
use thinarc::config::{Config, DEFAULT_PATH, Retention};
use thinarc::lvm::PoolLimits;
use thinarc::prune::PruneOptions;
use thinarc::repo::{Repository, VolumeName};
use thinarc::status::{Operation, Records, RunLock, gather, prometheus};

/// Arguments of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The config file.
    #[arg(long, short = 'c', env = "THINARC_CONFIG", default_value = DEFAULT_PATH)]
    pub config: PathBuf,
    /// Print the steps as JSON.
    #[arg(long)]
    pub json: bool,
}

impl RunArgs {
    /// Whether the config asks for low-priority mode (read early, before the runtime
    /// starts its threads; a config that does not load is reported by the run).
    pub fn low_priority(&self) -> bool {
        Config::load(&self.config).is_ok_and(|c| c.low_priority)
    }
}

/// Prunes `volume` of the repository at `location` by `retention`, as a step.
async fn prune_step(ctx: &Ctx, location: &str, volume: &VolumeName, retention: &Retention) -> Step {
    let mut opts = PruneOptions::new(retention.policy.clone());
    opts.max_chain_length = retention.max_chain_length;
    let result = super::prune::prune_volume(ctx, location, volume, &opts).await;
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

/// Runs every configured step.
pub async fn run(args: RunArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let ctx = ctx.with_config(&config);
    steps(&args, &ctx, &config).await
}

/// The steps of a run, in order.
async fn steps(args: &RunArgs, ctx: &Ctx, config: &Config) -> anyhow::Result<()> {
    let _lock = RunLock::acquire(&ctx.state_dir)?;
    tracing::info!(config = %config.path.display(), volumes = config.volumes.len(), "run started");
    let mut steps: Vec<Step> = Vec::new();
    let mut report = |step: Step| {
        if step.ok {
            tracing::info!(operation = step.operation.name(), volume = %step.volume, "{}", step.detail);
        } else {
            tracing::error!(operation = step.operation.name(), volume = %step.volume, "{}", step.detail);
        }
        if !args.json && !ctx.quiet {
            println!(
                "{} {}: {}{}",
                step.operation.name(),
                step.volume,
                if step.ok { "" } else { "FAILED: " },
                step.detail
            );
        }
        steps.push(step);
    };

    for v in &config.volumes {
        let location = &config.repositories[&v.repository];
        let mut opts = BackupOptions::new(v.name.clone());
        opts.block_size = v.block_size;
        opts.threads = ctx.threads;
        opts.read_limit = ctx.read_limit.clone();
        let defaults = PoolLimits::default();
        let limits = PoolLimits {
            max_data: v.max_pool_data.map_or(defaults.max_data, f64::from),
            max_metadata: v.max_pool_metadata.map_or(defaults.max_metadata, f64::from),
        };
        let result = super::backup::backup_volume(ctx, location, &v.source, opts, limits).await;
        let backed_up = result.is_ok();
        report(Step {
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
            report(prune_step(ctx, location, &v.name, retention).await);
        }
    }

    for c in &config.copies {
        let from = &config.repositories[&c.from];
        for volume in &c.volumes {
            let result =
                super::copy::copy_volume(ctx, from, &c.to, volume, None, c.consolidate).await;
            let copied = result.is_ok();
            report(Step {
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
                report(prune_step(ctx, &c.to, volume, retention).await);
            }
        }
    }

    if let Some(path) = &config.prometheus {
        let mut statuses = Vec::new();
        for location in config.repositories.values() {
            let records = Records::new(location, Some(ctx.state_dir.clone()));
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

    let failed: Vec<&Step> = steps.iter().filter(|s| !s.ok).collect();
    if args.json {
        print_json(&steps)?;
    }
    tracing::info!(steps = steps.len(), failed = failed.len(), "run finished");
    if failed.is_empty() {
        Ok(())
    } else {
        let what: Vec<String> = failed
            .iter()
            .map(|s| format!("{} {}", s.operation.name(), s.volume))
            .collect();
        anyhow::bail!(
            "{} of {} steps failed: {}",
            failed.len(),
            steps.len(),
            what.join(", ")
        )
    }
}
