//! `thinarc copy`: copy points to another repository, or consolidate one point there.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;

use super::{Ctx, human, print_json, progress::Display};
use crate::copy::{CopyError, CopyKind, CopyOptions, copy, open_or_init};
use crate::progress::Progress;
use crate::repo::{PointSelector, VolumeName};

/// Arguments of `copy`.
#[derive(Debug, Args)]
pub struct CopyArgs {
    /// Destination repository: a directory, file:// or s3:// URL (created on first
    /// use).
    #[arg(long, value_name = "DEST")]
    pub to: String,
    /// Volume to copy (default: every volume).
    pub volume: Option<String>,
    /// Copy only this point (and the archives it is built on): an archive id (or
    /// unique prefix), a sequence number, or `latest`.
    #[arg(long, value_parser = PointSelector::parse, requires = "volume")]
    pub at: Option<PointSelector>,
    /// Write one full archive of the point (--at, default the latest) instead of
    /// copying its chain.
    #[arg(long)]
    pub consolidate: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs a copy.
pub async fn run(args: CopyArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let volume = args.volume.as_deref().map(VolumeName::new).transpose()?;
    let src = ctx.open().await?;
    let (dest, initialised) = open_or_init(&args.to)
        .await
        .with_context(|| format!("cannot open or create the destination {}", args.to))?;
    if dest.config().id == src.config().id {
        anyhow::bail!(
            "{} is this repository ({}): copy to another one",
            args.to,
            ctx.location()?
        );
    }
    let opts = CopyOptions {
        volume,
        at: args.at,
        consolidate: args.consolidate,
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    let progress = Arc::new(Progress::default());
    let display = Display::start(
        ctx.progress_mode(),
        format!("copy to {}", args.to),
        progress.clone(),
    );
    let result = copy(&src, &dest, initialised, &opts, progress).await;
    display.finish().await;
    let report = match result {
        Ok(r) => r,
        // A locked destination volume keeps its own message (and exit code 3).
        Err(CopyError::Lock(e)) => return Err(e.into()),
        Err(e) => return Err(e).with_context(|| format!("copy to {} failed", args.to)),
    };
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    if args.json {
        print_json(&report)?;
    } else if !ctx.quiet {
        if report.initialised {
            println!("created thinarc repository at {}", report.destination);
        }
        for p in &report.copied {
            println!(
                "{} seq {} archive {}: {} ({})",
                p.volume,
                p.seq,
                p.archive,
                match p.kind {
                    CopyKind::Copied => "copied",
                    CopyKind::Consolidated => "consolidated into a full archive",
                    CopyKind::Rewritten => "rewritten onto its parent",
                },
                human(p.stored_bytes)
            );
        }
        if report.copied.is_empty() {
            println!(
                "nothing to copy: {} already holds the {} chosen point(s)",
                report.destination, report.present
            );
        } else {
            println!(
                "copied {} point(s) ({} already there): read {}, wrote {} in {:.1}s",
                report.copied.len(),
                report.present,
                human(report.bytes_read),
                human(report.bytes_written),
                report.seconds
            );
        }
    }
    Ok(())
}
