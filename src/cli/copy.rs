//! `thinarc copy`: copy points to another repository, or consolidate one point there.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;

use super::{Ctx, human, print_json, progress::Display};
use thinarc::copy::{CopyError, CopyKind, CopyOptions, CopyReport, copy, open_or_init};
use thinarc::progress::Progress;
use thinarc::repo::{PointSelector, Repository, VolumeName};
use thinarc::status::{Operation, Record};

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

/// Runs a copy, volume by volume.
pub async fn run(args: CopyArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let volumes = match args.volume.as_deref().map(VolumeName::new).transpose()? {
        Some(v) => vec![v],
        None => ctx.open().await?.volumes().await?,
    };
    let mut report = CopyReport {
        destination: args.to.clone(),
        ..CopyReport::default()
    };
    for v in &volumes {
        let r = copy_volume(
            ctx,
            ctx.location()?,
            &args.to,
            v,
            args.at.clone(),
            args.consolidate,
        )
        .await?;
        report.initialised |= r.initialised;
        report.copied.extend(r.copied);
        report.present += r.present;
        report.bytes_read += r.bytes_read;
        report.bytes_written += r.bytes_written;
        report.seconds += r.seconds;
        report.warnings.extend(r.warnings);
    }
    for w in &report.warnings {
        tracing::warn!("{w}");
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

/// Copies `volume` of the repository at `location` to `to` (created on first use),
/// recording the outcome: the part of `copy` that `run` shares.
pub(super) async fn copy_volume(
    ctx: &Ctx,
    location: &str,
    to: &str,
    volume: &VolumeName,
    at: Option<PointSelector>,
    consolidate: bool,
) -> anyhow::Result<CopyReport> {
    let work = async |src: &Repository| {
        let (dest, initialised) = open_or_init(to)
            .await
            .with_context(|| format!("cannot open or create the destination {to}"))?;
        if dest.config().id == src.config().id {
            anyhow::bail!("{to} is this repository ({location}): copy to another one");
        }
        let dest = ctx.limit_uploads(dest);
        let opts = CopyOptions {
            volume: Some(volume.clone()),
            at,
            consolidate,
            threads: ctx.threads,
        };
        let progress = Arc::new(Progress::default());
        let display = Display::start(
            ctx.progress_mode(),
            format!("copy {volume} to {to}"),
            progress.clone(),
        );
        let result = copy(src, &dest, initialised, &opts, progress).await;
        display.finish().await;
        match result {
            Ok(r) => Ok(r),
            // A locked destination volume keeps its own message (and exit code 3).
            Err(CopyError::Lock(e)) => Err(e.into()),
            Err(e) => Err(anyhow::Error::new(e).context(format!("copy to {to} failed"))),
        }
    };
    let describe = |r: &CopyReport, rec: &mut Record| {
        if let Some(p) = r.copied.last() {
            rec.seq = Some(p.seq);
            rec.archive = Some(p.archive.clone());
        }
        rec.bytes_read = Some(r.bytes_read);
        rec.bytes_written = Some(r.bytes_written);
    };
    ctx.recorded(location, Operation::Copy, volume, work, describe)
        .await
}
