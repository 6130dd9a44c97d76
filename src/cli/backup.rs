//! `thinarc backup`: back up an image file or block device.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;

use super::{Ctx, human, parse_size, print_json, progress::Display};
use crate::backup::{BackupOptions, backup};
use crate::format::BlockSize;
use crate::progress::Progress;
use crate::repo::{VolumeLock, VolumeName};
use crate::source::{RawSource, parse_changed_blocks};

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
    if let Some(bs) = args.block_size {
        let bs = u32::try_from(bs).ok().map(BlockSize::new);
        opts.block_size = Some(bs.context("--block-size is too large")??);
    }
    if let Some(file) = &args.changed_blocks {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read --changed-blocks {}", file.display()))?;
        opts.changed_blocks = Some(parse_changed_blocks(&text, &file.display().to_string())?);
    }
    let source = RawSource::open(&args.source)?;
    let repo = ctx.open().await?;
    let lock = VolumeLock::acquire(&repo, &volume, "backup").await?;
    for w in lock.broken() {
        eprintln!("warning: {w}");
    }
    let progress = Arc::new(Progress::default());
    let display = Display::start(
        ctx.progress_mode(),
        format!("backup {volume}"),
        progress.clone(),
    );
    let result = lock.guard(backup(&repo, source, &opts, progress)).await;
    display.finish().await;
    let released = lock.release().await;
    let mut report = result.with_context(|| {
        format!(
            "backup of {} to volume {volume} failed",
            args.source.display()
        )
    })?;
    if let Err(e) = released {
        report
            .warnings
            .push(format!("releasing the lock failed: {e}"));
    }
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
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
