//! `thinarc backup`: back up an image file or block device.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use super::{Ctx, human, print_json, source_spec};
use thinarc::backup::{BackupOptions, dry_run_lvm};
use thinarc::format::BlockSize;
use thinarc::lvm::PoolLimits;
use thinarc::nightly::Need;
use thinarc::nightly::backup_volume;
use thinarc::repo::VolumeName;
use thinarc::size::parse_size;
use thinarc::source::consistent::Consistency;
use thinarc::source::{SourceSpec, parse_changed_blocks};

/// Arguments of `backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Image file or block device to back up, or `lvm:VG/LV` for a thin LV (read
    /// through a thin snapshot; changed blocks from the pool's metadata).
    #[arg(value_parser = source_spec())]
    pub source: SourceSpec,
    /// Volume name [default: the source's file name; `VG/LV` for `lvm:VG/LV`].
    #[arg(long)]
    pub volume: Option<VolumeName>,
    /// Block size of a new volume: a power of two from 4K to 16M [default: 64K]. An
    /// existing volume keeps its block size.
    #[arg(long, value_name = "SIZE", value_parser = block_size)]
    pub block_size: Option<BlockSize>,
    /// File listing the byte ranges changed since the last backup, one `OFFSET LENGTH`
    /// per line: only those are read.
    #[arg(long, value_name = "FILE")]
    pub changed_blocks: Option<PathBuf>,
    /// lvm: refuse when the thin pool's data usage is above PCT percent.
    #[arg(long, value_name = "PCT", default_value_t = 90.0, value_parser = percent)]
    pub max_pool_data: f64,
    /// lvm: refuse when the thin pool's metadata usage is above PCT percent.
    #[arg(long, value_name = "PCT", default_value_t = 80.0, value_parser = percent)]
    pub max_pool_metadata: f64,
    /// lvm: print pool health, stray snapshots and what the backup would do; create
    /// nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Write a full archive starting a new chain, even when the volume has points
    /// (the volume keeps its name and history; the new point does not depend on any
    /// older archive). A backup does this by itself when the previous point's chain
    /// is damaged.
    #[arg(long)]
    pub full: bool,
    /// Run CMD with `sh -c` before the snapshot (before the read, for a file or
    /// device); its failure stops the backup. Killed after 5 minutes.
    #[arg(long, value_name = "CMD")]
    pub pre_snapshot: Option<String>,
    /// Run CMD with `sh -c` once the snapshot is taken (after the read, for a file or
    /// device), whatever happened, when --pre-snapshot succeeded.
    #[arg(long, value_name = "CMD")]
    pub post_snapshot: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

fn percent(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("{s:?} is not a percentage from 0 to 100")),
    }
}

/// clap's parser of `--block-size`: a size (`64K`) that is a block size.
fn block_size(s: &str) -> Result<BlockSize, String> {
    let bytes = parse_size(s)?;
    u32::try_from(bytes)
        .ok()
        .and_then(|b| BlockSize::new(b).ok())
        .ok_or_else(|| format!("{s:?} is not a power of two from 4K to 16M"))
}

impl BackupArgs {
    /// What clap alone cannot check (see [`super::Cli::parse_checked`]).
    pub(super) fn check(&self) -> Result<(), String> {
        if self.source.lv().is_none() && self.dry_run {
            return Err("--dry-run applies to lvm:VG/LV sources only".into());
        }
        Ok(())
    }
}

/// Runs a backup.
pub async fn run(args: BackupArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let lv = args.source.lv();
    let volume = match (&args.volume, &args.source) {
        (Some(v), _) => v.clone(),
        (None, SourceSpec::Lvm(lv)) => VolumeName::new(&lv.to_string())?,
        (None, SourceSpec::Path(path)) => {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .with_context(|| {
                    format!(
                        "cannot derive a volume name from {}: pass --volume",
                        path.display()
                    )
                })?;
            VolumeName::new(&name).context("pass a valid --volume")?
        }
    };
    let mut opts = BackupOptions::new(volume.clone());
    opts.threads = ctx.threads;
    opts.read_limit = ctx.read_limit.clone();
    opts.full = args.full;
    opts.hooks.pre = args.pre_snapshot.clone();
    opts.hooks.post = args.post_snapshot.clone();
    opts.block_size = args.block_size;
    if let Some(file) = &args.changed_blocks {
        // Read on the blocking pool: a FIFO (`<(...)`) may wait for its writer, and a
        // signal must still end the command.
        let text = tokio::fs::read_to_string(file)
            .await
            .with_context(|| format!("cannot read --changed-blocks {}", file.display()))?;
        opts.changed_blocks = Some(parse_changed_blocks(&text, &file.display().to_string())?);
    }
    let limits = PoolLimits {
        max_data: args.max_pool_data,
        max_metadata: args.max_pool_metadata,
    };
    if let (Some(lv), true) = (lv, args.dry_run) {
        let repo = ctx.open().await?;
        let catalog = repo.catalog(&opts.volume).await?;
        let plan = dry_run_lvm(&repo, catalog, lv, &opts, limits).await?;
        if args.json {
            return print_json(&plan);
        }
        let pct = |p: Option<f64>| p.map_or("?".into(), |p| format!("{p:.2}%"));
        println!(
            "pool {}: data {}, metadata {}: {}",
            plan.pool,
            pct(plan.pool_data_percent),
            pct(plan.pool_metadata_percent),
            plan.pool_problem.as_deref().unwrap_or("ok")
        );
        if plan.metadata_snapshot_reserved {
            println!(
                "pool {}: a metadata snapshot is reserved (left by an interrupted run): would release it",
                plan.pool
            );
        }
        for s in &plan.strays {
            println!("stray snapshot {s}: would remove it");
        }
        if plan.pool_problem.is_some() {
            println!("would refuse the backup: nothing would be created");
        } else {
            println!(
                "would create snapshot {} and make a {}",
                plan.snapshot, plan.action
            );
        }
        return Ok(());
    }
    ctx.unlock(Need::Write, "backup").await?;
    let report = backup_volume(ctx, ctx.location()?, &args.source, opts, limits, None, ctx).await?;
    if args.json {
        print_json(&report)?;
    } else if !ctx.quiet {
        println!(
            "{} {} seq {} archive {}: {} blocks recorded, read {}, stored {} in {:.1}s, {}-consistent",
            volume,
            match report.kind {
                thinarc::backup::ArchiveKind::Full => "full",
                thinarc::backup::ArchiveKind::Delta => "delta",
            },
            report.seq,
            report.archive,
            report.blocks_changed,
            human(report.bytes_read),
            human(report.stored_bytes),
            report.seconds,
            match report.consistency {
                Consistency::Crash => "crash",
                Consistency::Application => "application",
            }
        );
    }
    Ok(())
}
