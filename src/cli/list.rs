//! `thinarc list`: volumes and their points.

use clap::Args;

use super::{Ctx, human, print_json};
use thinarc::nightly::Need;
use thinarc::repo::{PointInfo, VolumeName};

/// Arguments of `list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this volume.
    pub volume: Option<VolumeName>,
    /// Print a JSON array of points.
    #[arg(long)]
    pub json: bool,
}

/// Lists points. A volume that cannot be read is reported and the others are still
/// listed; so are damaged points, marked as such. The exit code is then non-zero.
pub async fn run(args: ListArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let repo = ctx.open_unlocked(Need::IfGiven, "list").await?;
    let described = match &args.volume {
        // One volume asked for: its error is the command's (one `error:` line).
        Some(v) => vec![(v.clone(), Ok(repo.describe(v).await?))],
        None => repo.describe_all().await?,
    };
    let mut points: Vec<PointInfo> = Vec::new();
    let mut failed = Vec::new();
    for (v, described) in described {
        match described {
            Ok(p) => points.extend(p),
            Err(e) => {
                eprintln!("error: volume {v}: {e}");
                failed.push(v.to_string());
            }
        }
    }
    if args.json {
        print_json(&points)?;
    } else {
        println!(
            "{:<20} {:>5} {:<32} {:<24} {:>10} {:>8} {:>10}  PARENT (SEQ ARCHIVE)",
            "VOLUME", "SEQ", "ARCHIVE", "CREATED", "SIZE", "BLOCKS", "STORED"
        );
        for p in &points {
            println!(
                "{:<20} {:>5} {:<32} {:<24} {:>10} {:>8} {:>10}  {}",
                p.volume,
                p.seq,
                p.id,
                p.created,
                human(p.size),
                p.blocks,
                human(p.stored_bytes),
                match (p.parent_seq, &p.parent) {
                    (Some(seq), Some(id)) => format!("{seq} {id}"),
                    _ => "-".into(),
                }
            );

            if let Some(d) = &p.damage {
                println!("  DAMAGED: {d}");
            }
        }
    }
    if !failed.is_empty() {
        anyhow::bail!("could not list volume(s) {}", failed.join(", "));
    }
    let mut damaged: Vec<&str> = points
        .iter()
        .filter(|p| p.damage.is_some())
        .map(|p| p.volume.as_str())
        .collect();
    damaged.dedup();
    if !damaged.is_empty() {
        anyhow::bail!(
            "volume(s) {} have damaged points: `thinarc verify VOLUME` names what depends on what, and the README's \"Damage and repair\" gives the way back",
            damaged.join(", ")
        );
    }
    Ok(())
}
