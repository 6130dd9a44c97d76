//! `thinarc restore`: restore a point onto a file or block device.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;

use super::{Ctx, human, print_json, progress::Display};
use crate::progress::Progress;
use crate::repo::{PointSelector, VolumeName};
use crate::restore::{RestoreOptions, restore};

/// Arguments of `restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Volume to restore.
    pub volume: String,
    /// Target: a new file, an existing file (overwritten) or a block device.
    pub target: PathBuf,
    /// Point to restore: an archive id (or unique prefix), a sequence number, or
    /// `latest`.
    #[arg(long, default_value = "latest", value_parser = PointSelector::parse)]
    pub at: PointSelector,
    /// Restore even when the target is the volume's own backup source.
    #[arg(long)]
    pub force: bool,
    /// Incremental restore onto a replica: TARGET already holds this point (an archive
    /// id, prefix or sequence number), so only the blocks changed since are written.
    /// TARGET is read first to check it.
    #[arg(long, value_name = "ARCHIVE", value_parser = PointSelector::parse)]
    pub since: Option<PointSelector>,
    /// With --since: skip reading TARGET to check that it holds that point.
    #[arg(long, requires = "since")]
    pub trust_target: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs a restore.
pub async fn run(args: RestoreArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let volume = VolumeName::new(&args.volume)?;
    let repo = ctx.open().await?;
    let opts = RestoreOptions {
        force: args.force,
        since: args.since.clone(),
        trust_target: args.trust_target,
        ..RestoreOptions::new(args.at.clone())
    };
    let progress = Arc::new(Progress::default());
    let display = Display::start(
        ctx.progress_mode(),
        format!("restore {volume}"),
        progress.clone(),
    );
    let result = restore(&repo, &volume, &args.target, &opts, progress).await;
    display.finish().await;
    let report = result
        .with_context(|| format!("restore of {volume} to {} failed", args.target.display()))?;
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    if args.json {
        print_json(&report)?;
    } else if !ctx.quiet {
        let since = report
            .since
            .map(|s| format!(" (changes since seq {s})"))
            .unwrap_or_default();
        println!(
            "restored {} seq {} archive {} to {}{since}: {} written, image digest {} verified in {:.1}s",
            volume,
            report.seq,
            report.archive,
            args.target.display(),
            human(report.bytes_written),
            report.image_digest,
            report.seconds
        );
    }
    Ok(())
}
