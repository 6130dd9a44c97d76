//! `thinarc copy`: copy points to another repository, or consolidate one point there.

use clap::Args;

use super::{Ctx, human, print_json};
use thinarc::copy::CopyKind;
use thinarc::nightly::Need;
use thinarc::repo::{PointSelector, VolumeName};

/// Arguments of `copy`.
#[derive(Debug, Args)]
pub struct CopyArgs {
    /// Destination repository: a directory, file:// or s3:// URL (created on first
    /// use).
    #[arg(long, value_name = "DEST", value_parser = super::location)]
    pub to: String,
    /// Volume to copy (default: every volume).
    pub volume: Option<VolumeName>,
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
    ctx.unlock(Need::Read, "copy").await?;
    let report = thinarc::nightly::copy(
        ctx,
        ctx.location()?,
        &args.to,
        args.volume,
        args.at,
        args.consolidate,
        ctx,
    )
    .await?;
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
        if report.copied.is_empty() && report.present == 0 {
            // Only a copy of every volume can choose nothing: a named volume without
            // a point is refused.
            println!(
                "nothing to copy: {} holds no volume, so no point was chosen; {}",
                ctx.location()?,
                match report.existed {
                    true => format!("{} is unchanged", report.destination),
                    false => format!("{} was not created", report.destination),
                }
            );
        } else if report.copied.is_empty() {
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
