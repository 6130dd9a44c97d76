//! `thinarc backup`: back up an image file or block device.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;

use super::{Ctx, human, parse_size, print_json, progress::Display};
use crate::backup::{BackupOptions, BackupReport, backup};
use crate::format::BlockSize;
use crate::progress::Progress;
use crate::repo::{Repository, VolumeLock, VolumeName};
use crate::source::{RawSource, parse_changed_blocks};
use crate::status::{Operation, Record};

/// Arguments of `backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Image file or block device to back up.
    pub source: PathBuf,
    /// Volume name (default: the source's file name).
    #[arg(long)]
    pub volume: Option<String>,
    /// Block size of a new volume: a power of two from 4K to 16M (default 64K). An
    /// existing volume keeps its block size.
    #[arg(long, value_parser = parse_size)]
    pub block_size: Option<u64>,
    /// File listing the byte ranges changed since the last backup, one `OFFSET LENGTH`
    /// per line: only those are read.
    #[arg(long, value_name = "FILE")]
    pub changed_blocks: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs a backup.
pub async fn run(args: BackupArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let name = match &args.volume {
        Some(v) => v.clone(),
        None => args
            .source
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .with_context(|| {
                format!(
                    "cannot derive a volume name from {}: pass --volume",
                    args.source.display()
                )
            })?,
    };
    let volume = VolumeName::new(&name).context("pass a valid --volume")?;
    let mut opts = BackupOptions::new(volume.clone());
    opts.threads = ctx.threads;
    opts.read_limit = ctx.read_limit.clone();
    if let Some(bs) = args.block_size {
        let bs = u32::try_from(bs).ok().map(BlockSize::new);
        opts.block_size = Some(bs.context("--block-size is too large")??);
    }
    if let Some(file) = &args.changed_blocks {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read --changed-blocks {}", file.display()))?;
        opts.changed_blocks = Some(parse_changed_blocks(&text, &file.display().to_string())?);
    }
    let report = backup_volume(ctx, ctx.location()?, &args.source, opts).await?;
    if args.json {
        print_json(&report)?;
    } else if !ctx.quiet {
        println!(
            "{} {} seq {} archive {}: {} blocks recorded, read {}, stored {} in {:.1}s",
            volume,
            match report.kind {
                crate::backup::ArchiveKind::Full => "full",
                crate::backup::ArchiveKind::Delta => "delta",
            },
            report.seq,
            report.archive,
            report.blocks_changed,
            human(report.bytes_read),
            human(report.stored_bytes),
            report.seconds
        );
    }
    Ok(())
}

/// Backs `source` up as `opts.volume` into the repository at `location`: the part of
/// `backup` that `run` shares. Records the outcome and logs it.
pub(super) async fn backup_volume(
    ctx: &Ctx,
    location: &str,
    source: &Path,
    opts: BackupOptions,
) -> anyhow::Result<BackupReport> {
    let volume = opts.volume.clone();
    let work = async |repo: &Repository| {
        let raw = RawSource::open(source)?;
        let lock = VolumeLock::acquire(repo, &volume, "backup").await?;
        for w in lock.broken() {
            tracing::warn!("{w}");
        }
        let progress = Arc::new(Progress::default());
        let display = Display::start(
            ctx.progress_mode(),
            format!("backup {volume}"),
            progress.clone(),
        );
        tracing::info!(volume = %volume, source = %source.display(), "backup started");
        let result = lock.guard(backup(repo, raw, &opts, progress)).await;
        display.finish().await;
        let released = lock.release().await;
        let mut report = result?;
        if let Err(e) = released {
            report
                .warnings
                .push(format!("releasing the lock failed: {e}"));
        }
        Ok(report)
    };
    let describe = |r: &BackupReport, rec: &mut Record| {
        rec.archive = Some(r.archive.clone());
        rec.seq = Some(r.seq);
        rec.bytes_read = Some(r.bytes_read);
        rec.bytes_written = Some(r.stored_bytes);
    };
    let report = ctx
        .recorded(location, Operation::Backup, &volume, work, describe)
        .await
        .with_context(|| format!("backup of {} to volume {volume} failed", source.display()))?;
    tracing::info!(
        volume = %volume,
        seq = report.seq,
        archive = %report.archive,
        bytes_read = report.bytes_read,
        stored_bytes = report.stored_bytes,
        seconds = report.seconds,
        "backup committed"
    );
    for w in &report.warnings {
        tracing::warn!(volume = %volume, "{w}");
    }
    Ok(report)
}
