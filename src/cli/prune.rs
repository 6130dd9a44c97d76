//! `thinarc prune`: thin a volume's history by a retention policy.

use std::time::Duration;

use clap::Args;

use super::{Ctx, human, print_json};
use thinarc::nightly::Need;
use thinarc::nightly::Observer;
use thinarc::prune::{PolicyError, PruneOptions, PruneReport, Retention, RetentionSpec};
use thinarc::repo::VolumeName;

/// Arguments of `prune`. At least one `--keep-*` option is required: a policy
/// without any would keep only the newest point. The options are checked by the
/// library, as a config's `retention` table is ([`RetentionSpec::check`]).
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Only this volume (default: every volume).
    pub volume: Option<VolumeName>,
    /// Keep the N newest points.
    #[arg(long, value_name = "N")]
    pub keep_last: Option<u32>,
    /// Keep the newest point of each of the N newest hours (UTC) that have points.
    #[arg(long, value_name = "N")]
    pub keep_hourly: Option<u32>,
    /// Keep the newest point of each of the N newest days (UTC) that have points.
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<u32>,
    /// Keep the newest point of each of the N newest ISO weeks that have points.
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<u32>,
    /// Keep the newest point of each of the N newest months that have points.
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<u32>,
    /// Keep the newest point of each of the N newest years that have points.
    #[arg(long, value_name = "N")]
    pub keep_yearly: Option<u32>,
    /// Keep every point created within DURATION before the newest one (e.g. 7d, 1y6m,
    /// 36h; units y, m, w, d, h).
    #[arg(long, value_name = "DURATION")]
    pub keep_within: Option<String>,
    /// Rewrite a kept point as a full archive when its chain would hold more than N
    /// archives (reads and writes a whole image: see the README's cost model).
    #[arg(long, value_name = "N")]
    pub max_chain_length: Option<u32>,
    /// Print what would be kept, dropped and rewritten; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Delete superseded archives (dropped points, replaced archives) at once instead
    /// of after the 1-hour grace period. Frees space on a full repository; use it only
    /// when no restore, copy or verify is reading the volume.
    #[arg(long, conflicts_with = "grace")]
    pub no_grace: bool,
    /// Seconds superseded archives stay readable before deletion (tests).
    #[arg(long, hide = true, value_name = "SECONDS")]
    pub grace: Option<u64>,
}

impl PruneArgs {
    /// The retention the options give, checked as a config's retention table is.
    ///
    /// # Errors
    /// [`PolicyError`] naming the option.
    pub(super) fn retention(&self) -> Result<Retention, PolicyError> {
        RetentionSpec {
            keep_last: self.keep_last,
            keep_hourly: self.keep_hourly,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            keep_yearly: self.keep_yearly,
            keep_within: self.keep_within.clone(),
            max_chain_length: self.max_chain_length,
        }
        .check()
    }
}

/// Runs a prune over one or every volume.
pub async fn run(args: PruneArgs, ctx: &Ctx) -> anyhow::Result<()> {
    // Checked by Cli::parse_checked already.
    let retention = args.retention()?;
    let mut opts = PruneOptions::new(retention.policy);
    opts.max_chain_length = retention.max_chain_length;
    opts.dry_run = args.dry_run;
    if let Some(g) = args.grace {
        opts.grace = Duration::from_secs(g);
    }
    if args.no_grace {
        opts.grace = Duration::ZERO;
    }
    let volume = args.volume.clone();
    ctx.unlock(Need::Read, "prune").await?;
    let reports = thinarc::nightly::prune(
        ctx,
        ctx.location()?,
        volume,
        &opts,
        &Printer { args: &args, ctx },
    )
    .await?;
    if args.json {
        print_json(&reports)?;
    }
    Ok(())
}

/// Prints each volume's prune as it ends (unless `--json` or `--quiet`).
struct Printer<'a> {
    args: &'a PruneArgs,
    ctx: &'a Ctx,
}

impl Observer for Printer<'_> {
    fn pruned(&self, report: &PruneReport) {
        if !self.args.json && !self.ctx.quiet {
            print_human(report);
        }
    }
}

fn print_human(r: &PruneReport) {
    let verb = if r.dry_run { "would" } else { "will" };
    println!(
        "volume {}{}:",
        r.volume,
        if r.dry_run { " (dry run)" } else { "" }
    );
    for p in &r.points {
        let what = match (p.keep, p.rewrite) {
            (false, _) => "drop".to_string(),
            (true, None) => "keep".to_string(),
            (true, Some(w)) => {
                let onto = p
                    .new_parent
                    .map_or("as a full archive".to_string(), |s| format!("onto seq {s}"));
                let merged: Vec<String> = p.merged.iter().map(u64::to_string).collect();
                format!(
                    "keep, {} {onto} (archives of seq {})",
                    serde_json::to_value(w)
                        .expect("serialises")
                        .as_str()
                        .unwrap_or("rewrite"),
                    merged.join(", ")
                )
            }
        };
        println!(
            "  seq {:>5}  {}  {:<44}  {}",
            p.seq,
            p.created,
            what,
            p.reasons.join(", ")
        );
    }
    println!(
        "  {verb} read at most {}, write about {} (estimate), delete {} {}",
        human(r.read_estimate),
        human(r.write_estimate),
        human(r.delete_bytes),
        if r.grace.is_zero() {
            "at once (--no-grace)"
        } else {
            "after the grace period"
        }
    );
    if !r.dry_run {
        println!(
            "  rewrote {} archive(s): read {}, wrote {}; deleted {} expired object(s) ({}) in {:.1}s",
            r.merges.len(),
            human(r.bytes_read),
            human(r.bytes_written),
            r.objects_deleted,
            human(r.bytes_deleted),
            r.seconds
        );
        if r.bytes_waiting > 0 {
            println!(
                "  {} of superseded archives kept for the grace period (`--no-grace` deletes them at once)",
                human(r.bytes_waiting)
            );
        }
    }
}
