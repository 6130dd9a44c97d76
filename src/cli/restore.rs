//! `thinarc restore`: restore a point onto a file or block device.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;

use super::{Ctx, human, print_json, progress::Display};
use thinarc::lvm::{LvName, check_lv_name};
use thinarc::nightly::Need;
use thinarc::progress::Progress;
use thinarc::repo::{PointSelector, VolumeName};
use thinarc::restore::{RestoreOptions, RestoreReport, restore, restore_to_lv};
use thinarc::size::parse_size;
use thinarc::source::{SourceSpec, SourceSpecError};
use thinarc::target::BeyondVolume;
use thinarc::target::lv::LvTargetOptions;

/// Arguments of `restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Volume to restore.
    pub volume: VolumeName,
    /// Target: a new file, an existing file (overwritten), a block device, or
    /// `lvm:VG/LV`.
    #[arg(value_parser = target_spec())]
    pub target: SourceSpec,
    /// Point to restore: an archive id (or unique prefix), a sequence number, or
    /// `latest`.
    #[arg(long, default_value = "latest", value_parser = PointSelector::parse)]
    pub at: PointSelector,
    /// Restore even when the target is the volume's own backup source; overwrite an
    /// existing target LV.
    #[arg(long)]
    pub force: bool,
    /// lvm: create the target LV (a thin LV with --pool, else a plain LV).
    #[arg(long)]
    pub create: bool,
    /// lvm: thin pool for a created LV (`POOL` or `VG/POOL`).
    #[arg(long, value_name = "POOL", value_parser = pool_name)]
    pub pool: Option<String>,
    /// lvm: size of a created LV (default: the volume's size).
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// lvm: do not read the LV back to check its image digest.
    #[arg(long)]
    pub no_readback: bool,
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

/// clap's parser of TARGET: [`SourceSpec::parse`]'s rules (`lvm:VG/LV` or a path),
/// its messages speaking of a target.
fn target_spec() -> impl clap::builder::TypedValueParser<Value = SourceSpec> {
    use clap::builder::TypedValueParser as _;
    clap::builder::OsStringValueParser::new().try_map(|s| {
        SourceSpec::parse(s).map_err(|e| match e {
            SourceSpecError::Empty => {
                "an empty target: use lvm:VG/LV or the path of a file or block device".into()
            }
            SourceSpecError::LvmShape => "an LVM target is written lvm:VG/LV".into(),
            e => e.to_string(),
        })
    })
}

/// clap's parser of `--pool`: `POOL` or `VG/POOL`, by LVM's naming rules.
fn pool_name(s: &str) -> Result<String, String> {
    match s.split_once('/') {
        Some(_) => LvName::parse(s).map(|_| s.to_owned()),
        None => check_lv_name(s).map(|()| s.to_owned()),
    }
    .map_err(|e| e.to_string())
}

impl RestoreArgs {
    /// What clap alone cannot check (see [`super::Cli::parse_checked`]).
    pub(super) fn check(&self) -> Result<(), String> {
        if self.target.lv().is_none()
            && (self.create || self.pool.is_some() || self.size.is_some() || self.no_readback)
        {
            return Err(
                "--create, --pool, --size and --no-readback apply to lvm:VG/LV targets only".into(),
            );
        }
        Ok(())
    }
}

/// Runs a restore.
pub async fn run(args: RestoreArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let volume = args.volume.clone();
    let repo = ctx.open_unlocked(Need::Read, "restore").await?;
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
    let result = match &args.target {
        SourceSpec::Lvm(lv) => {
            let target = LvTargetOptions {
                create: args.create,
                pool: args.pool.clone(),
                size: args.size,
                force: args.force,
            };
            restore_to_lv(
                &repo,
                &volume,
                lv,
                &target,
                &opts,
                !args.no_readback,
                progress,
            )
            .await
            .map(|r| r.restore)
        }
        SourceSpec::Path(path) => restore(&repo, &volume, path, &opts, progress).await,
    };
    display.finish().await;
    let report =
        result.with_context(|| format!("restore of {volume} to {} failed", args.target))?;
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    if args.json {
        print_json(&report)?;
    } else if !ctx.quiet {
        println!("{}", summary(&report, &args.target.to_string()));
        if let Some(beyond) = report.beyond_volume {
            println!("{}", beyond_line(beyond, &args.target.to_string()));
        }
    }
    Ok(())
}

/// The line that ends a restore: "verified" only when the image digest was established
/// for the whole target.
fn summary(report: &RestoreReport, target: &str) -> String {
    let since = report
        .since
        .map(|s| format!(" (changes since seq {s})"))
        .unwrap_or_default();
    let head = format!(
        "restored {} seq {} archive {} to {target}{since}: {} written",
        report.volume,
        report.seq,
        report.archive,
        human(report.bytes_written),
    );
    if report.image_verified {
        format!(
            "{head}, image digest {} verified in {:.1}s",
            report.image_digest, report.seconds
        )
    } else {
        format!(
            "{head} in {:.1}s; written blocks checked; target not verified (--trust-target)",
            report.seconds
        )
    }
}

/// What happened to the target's bytes past the volume's end.
fn beyond_line(beyond: BeyondVolume, target: &str) -> String {
    match beyond {
        BeyondVolume::Trimmed { bytes } => format!(
            "{target} was longer than the volume: its last {bytes} bytes were cut off, so it holds exactly the image"
        ),
        BeyondVolume::Untouched { bytes } => format!(
            "{target} is longer than the volume: its last {bytes} bytes were left untouched"
        ),
    }
}
