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
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs a restore.
pub async fn run(args: RestoreArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let volume = VolumeName::new(&args.volume)?;
    let repo = ctx.open().await?;
    let opts = RestoreOptions {
        at: args.at.clone(),
        force: args.force,
        threads: ctx.threads,
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
    if args.json {
        print_json(&report)?;
    } else if !ctx.quiet {
        println!(
            "restored {} seq {} archive {} to {}: {} written, image digest {} verified in {:.1}s",
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
