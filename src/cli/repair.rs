//! `thinarc repair`: bring a damaged volume's catalog back.

use clap::Args;

use super::{Ctx, print_json};
use thinarc::nightly::{Need, RepairOptions, repair};
use thinarc::repo::VolumeName;

/// Arguments of `repair`.
#[derive(Debug, Args)]
pub struct RepairArgs {
    /// The volume to repair.
    pub volume: VolumeName,
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

/// With `--break-lock`, first removes unreadable and dead lock objects; then sets
/// corrupt commit markers aside and commits again the complete archives whose marker is
/// lost or wrong (holding the volume's lock); with `--drop-damaged`, unlists the points
/// that depend on damaged data.
pub async fn run(args: RepairArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let volume = args.volume.clone();
    let opts = RepairOptions {
        break_lock: args.break_lock,
        drop_damaged: args.drop_damaged,
        dry_run: args.dry_run,
    };
    // Dropping what depends on damaged blocks reads the indexes that hold them again.
    let need = if args.drop_damaged {
        Need::Read
    } else {
        Need::IfGiven
    };
    ctx.unlock(need, "repair").await?;
    let report = repair(ctx, ctx.location()?, &volume, opts).await?;
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
