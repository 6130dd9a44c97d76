//! `thinarc repair`: bring a damaged volume's catalog back.

use clap::Args;

use super::{Ctx, print_json};
use thinarc::prune::{PruneOptions, RetentionPolicy, prune};
use thinarc::repo::{RepairAction, RepairScope, Repository, VolumeLock, VolumeName, break_locks};

/// Arguments of `repair`.
#[derive(Debug, Args)]
pub struct RepairArgs {
    /// The volume to repair.
    pub volume: String,
    /// Also unlist every point that depends on damaged data (through prune: what a
    /// kept point needs is merged into it first). Refused while the newest point
    /// itself depends on damage: run a backup first.
    #[arg(long)]
    pub drop_damaged: bool,
    /// First remove the volume's lock objects that cannot be read or parsed, and locks
    /// of provably dead runs on this host, printing what they were. Use it only when
    /// you know no run of the volume is going; a readable lock of a live run is still
    /// refused (exit code 3).
    #[arg(long)]
    pub break_lock: bool,
    /// Print what would be done; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What `repair` did.
#[derive(Debug, serde::Serialize)]
struct RepairReport {
    volume: String,
    dry_run: bool,
    actions: Vec<RepairAction>,
    /// Lock objects removed by `--break-lock`, one sentence each.
    locks_removed: Vec<String>,
    /// Points unlisted by `--drop-damaged`.
    dropped: Vec<u64>,
}

/// With `--break-lock`, first removes unreadable and dead lock objects; then sets
/// corrupt commit markers aside and commits again the complete archives whose marker is
/// lost or wrong (holding the volume's lock); with `--drop-damaged`, unlists the points
/// that depend on damaged data.
pub async fn run(args: RepairArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let volume = VolumeName::new(&args.volume)?;
    let repo = ctx.open().await?;
    let locks_removed = if args.break_lock {
        break_locks(&repo, &volume, args.dry_run).await?
    } else {
        Vec::new()
    };
    let actions = if args.dry_run {
        repo.repair_catalog(&volume, RepairScope::All, true).await?
    } else {
        let lock = VolumeLock::acquire(&repo, &volume, "repair").await?;
        for w in lock.broken() {
            tracing::warn!("{w}");
        }
        let result = lock
            .guard(async {
                anyhow::Ok(
                    repo.repair_catalog(&volume, RepairScope::All, false)
                        .await?,
                )
            })
            .await;
        let released = lock.release().await;
        let actions = result?;
        if let Err(e) = released {
            tracing::warn!("releasing the lock failed: {e}");
        }
        actions
    };
    let dropped = if args.drop_damaged {
        drop_damaged(&repo, &volume, args.dry_run, ctx).await?
    } else {
        Vec::new()
    };
    let report = RepairReport {
        volume: volume.to_string(),
        dry_run: args.dry_run,
        actions,
        locks_removed,
        dropped,
    };
    if args.json {
        return print_json(&report);
    }
    let verb = if args.dry_run { "would " } else { "" };
    for l in &report.locks_removed {
        println!("{verb}remove {l}");
    }
    for a in &report.actions {
        println!("{verb}{a}");
    }
    for seq in &report.dropped {
        println!("{verb}drop seq {seq}: it depends on damaged data");
    }
    if !ctx.quiet
        && report.actions.is_empty()
        && report.dropped.is_empty()
        && report.locks_removed.is_empty()
    {
        println!("volume {volume}: nothing to repair in the catalog");
    }
    Ok(())
}

/// Unlists the points of `volume` that depend on damaged data, through prune with
/// those points as a forced drop set (everything else is kept).
async fn drop_damaged(
    repo: &Repository,
    volume: &VolumeName,
    dry_run: bool,
    ctx: &Ctx,
) -> anyhow::Result<Vec<u64>> {
    let rows = repo.describe(volume).await?;
    let listed = repo.commits(volume).await?;
    let damaged: Vec<u64> = rows
        .iter()
        .filter(|r| r.damage.is_some() && listed.iter().any(|c| c.seq == r.seq))
        .map(|r| r.seq)
        .collect();
    if let Some(newest) = listed.last()
        && damaged.contains(&newest.seq)
    {
        anyhow::bail!(
            "the newest point of {volume} (seq {}) depends on damaged data: run `thinarc backup` first (it stores damaged blocks again, or starts a new chain), then `thinarc repair {volume} --drop-damaged`",
            newest.seq
        );
    }
    if damaged.is_empty() {
        return Ok(damaged);
    }
    let mut opts = PruneOptions::new(RetentionPolicy {
        last: Some(u32::MAX),
        ..RetentionPolicy::default()
    });
    opts.drop = damaged;
    opts.dry_run = dry_run;
    opts.threads = ctx.threads;
    let report = prune(repo, volume, &opts).await?;
    for w in &report.warnings {
        tracing::warn!(volume = %volume, "{w}");
    }
    let listed: Vec<u64> = if dry_run {
        Vec::new()
    } else {
        repo.commits(volume).await?.iter().map(|c| c.seq).collect()
    };
    Ok(report
        .points
        .iter()
        .filter(|p| !p.keep && !listed.contains(&p.seq))
        .map(|p| p.seq)
        .collect())
}
