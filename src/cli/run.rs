//! `thinarc run`: the nightly job ([`thinarc::nightly::run`]) on the config file's
//! volumes, printing each step; the exit code says whether every step succeeded (1
//! if one failed, 4 if none failed but one warned). `--dry-run` prints what it would
//! back up ([`thinarc::nightly::dry_run`]).

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::{Ctx, print_json};
use thinarc::config::{Config, DEFAULT_PATH};
use thinarc::nightly::{Observer, Shown, Step};
use thinarc::progress::Progress;

/// Arguments of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The config file.
    #[arg(long, short = 'c', env = "THINARC_CONFIG", default_value = DEFAULT_PATH)]
    pub config: PathBuf,
    /// Print the steps as JSON.
    #[arg(long)]
    pub json: bool,
    /// List what would be backed up (every volume, patterns expanded, with its source,
    /// full or delta and why; patterns that match nothing; volumes that are gone),
    /// touching nothing: no lock, no snapshot, no record.
    #[arg(long)]
    pub dry_run: bool,
}

impl RunArgs {
    /// Whether the config asks for low-priority mode (read early, before the runtime
    /// starts its threads; a config that does not load is reported by the run).
    pub fn low_priority(&self) -> bool {
        Config::load(&self.config).is_ok_and(|c| c.low_priority)
    }
}

/// Runs every configured step, printing each as it ends.
pub async fn run(args: RunArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let ctx = ctx.with_config(&config);
    let printer = Printer {
        args: &args,
        ctx: &ctx,
    };
    let report = if args.dry_run {
        ctx.without_alerts();
        thinarc::nightly::dry_run(&ctx, &config, &printer).await?
    } else {
        thinarc::nightly::run(&ctx, &config, &printer).await?
    };
    if args.json {
        print_json(&report)?;
    }
    report.check()?;
    let warnings = report.warnings();
    if !warnings.is_empty() {
        return Err(super::ProblemsFound {
            by: "run",
            count: warnings.len(),
            location: config.path.display().to_string(),
        }
        .into());
    }
    Ok(())
}

/// Prints each step of the run as it ends (unless `--json` or `--quiet`), and shows
/// the progress of its backups and copies.
struct Printer<'a> {
    args: &'a RunArgs,
    ctx: &'a Ctx,
}

impl Observer for Printer<'_> {
    fn show(&self, what: String, progress: Arc<Progress>) -> Box<dyn Shown> {
        self.ctx.show(what, progress)
    }

    fn step(&self, step: &Step) {
        if !self.args.json && !self.ctx.quiet {
            println!(
                "{} {}: {}{}",
                step.operation.name(),
                step.volume,
                match (step.ok, step.warning) {
                    (false, _) => "FAILED: ",
                    (true, true) => "WARNING: ",
                    (true, false) => "",
                },
                step.detail
            );
        }
    }
}
