//! `thinarc status`: per volume, the last successful and failed backups, the newest
//! point and its age, chain length and stored bytes; as text, `--json`, or a
//! node_exporter textfile with `--prometheus FILE`.

use std::path::PathBuf;

use clap::Args;

use super::{Ctx, error_message, human, print_json};
use thinarc::nightly::Need;
use thinarc::repo::VolumeName;
use thinarc::status::{
    Operation, Outcome, Record, Records, Status, VolumeStatus, gather, prometheus,
};

/// Arguments of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this volume.
    pub volume: Option<VolumeName>,
    /// Print the status as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also write the status as a Prometheus textfile (atomically) to FILE.
    #[arg(long, value_name = "FILE")]
    pub prometheus: Option<PathBuf>,
}

/// Shows the status. Exits non-zero when the repository cannot be read or a volume's
/// last backup failed, so that the command itself can serve as a check.
pub async fn run(args: StatusArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let location = ctx.location()?;
    let volume = args.volume.clone();
    if let Some(path) = &args.prometheus {
        prometheus::check_folder(path)?;
    }
    let records = Records::new(location, Some(ctx.state_dir.clone()));
    let (repo, unreachable) = match ctx.open().await {
        Ok(r) => (
            Some(ctx.unlock_opened(r, Need::IfGiven, "status").await?),
            None,
        ),
        Err(e) => (
            None,
            Some(format!("repository unreachable: {}", error_message(&e))),
        ),
    };
    let status = gather(
        repo.as_ref(),
        location,
        &records,
        volume.as_ref(),
        unreachable.clone(),
    )
    .await?;
    if let Some(path) = &args.prometheus {
        prometheus::write(path, std::slice::from_ref(&status))?;
    }
    if args.json {
        print_json(&status)?;
    } else {
        print_text(&status);
    }
    if let Some(u) = unreachable {
        anyhow::bail!("{u}");
    }
    let failing: Vec<&str> = status
        .volumes
        .iter()
        .filter(|v| !v.ok())
        .map(|v| v.volume.as_str())
        .collect();
    let damaged = status.volumes.iter().filter(|v| v.damage.any()).count();
    if damaged > 0 {
        return Err(super::ProblemsFound {
            by: "status",
            count: damaged,
            location: format!("{location} (damaged volumes: {})", failing.join(", ")),
        }
        .into());
    }
    if !failing.is_empty() {
        anyhow::bail!("needs attention: {}", failing.join(", "));
    }
    Ok(())
}

fn when(r: &Record) -> String {
    r.time().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn age(seconds: f64) -> String {
    if seconds < 120.0 {
        format!("{seconds:.0}s")
    } else if seconds < 7200.0 {
        format!("{:.0}m", seconds / 60.0)
    } else if seconds < 172_800.0 {
        format!("{:.1}h", seconds / 3600.0)
    } else {
        format!("{:.1}d", seconds / 86400.0)
    }
}

fn print_text(status: &Status) {
    if status.volumes.is_empty() {
        println!("no volumes in {}", status.repository);
        return;
    }
    println!(
        "{:<22} {:<20} {:>4} {:>7} {:>6} {:>5} {:>10}  LAST RUN",
        "VOLUME", "LAST SUCCESS", "SEQ", "AGE", "POINTS", "CHAIN", "STORED"
    );
    for v in &status.volumes {
        print_volume(v);
    }
}

fn print_volume(v: &VolumeStatus) {
    let success = v.backup.last_success.as_ref();
    let last = match &v.backup.last {
        Some(r) if r.result == Outcome::Running => format!("running since {}", when(r)),
        Some(r) if r.result == Outcome::Failure => "FAILED".to_string(),
        Some(r) if r.result == Outcome::Gone => format!("gone since {}", when(r)),
        Some(_) => "ok".to_string(),
        None => "-".to_string(),
    };
    println!(
        "{:<22} {:<20} {:>4} {:>7} {:>6} {:>5} {:>10}  {last}",
        v.volume,
        success.map_or("never".to_string(), when),
        v.newest
            .as_ref()
            .map_or("-".to_string(), |n| n.seq.to_string()),
        v.newest
            .as_ref()
            .map_or("-".to_string(), |n| age(n.age_seconds)),
        v.points,
        v.chain_length,
        human(v.stored_bytes),
    );
    if let Some(oldest) = v.oldest_upload {
        println!(
            "  {} incomplete upload(s), the oldest started {}: the next backup, prune or copy of the volume aborts them once they are 1 hour old",
            v.incomplete_uploads,
            oldest.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
    }
    if let Some(r) = v.backup.last.as_ref().filter(|r| r.result == Outcome::Gone) {
        println!(
            "  gone: {}; it was backed up by the pattern {}, which no longer selects it: its points are kept, and it is backed up no more",
            r.error.as_deref().unwrap_or("no longer selected"),
            r.discovered_by.as_deref().unwrap_or("?")
        );
    }
    if let Some(f) = &v.backup.last_failure {
        println!(
            "  last failure {}: {}",
            when(f),
            f.error.as_deref().unwrap_or("failed")
        );
    }
    for op in [
        Operation::Prune,
        Operation::Copy,
        Operation::Verify,
        Operation::Repair,
    ] {
        if let Some(r) = &v.operation(op).last {
            let what = match r.result {
                Outcome::Running => "running".to_string(),
                Outcome::Success => "ok".to_string(),
                Outcome::Failure => format!("FAILED: {}", r.error.as_deref().unwrap_or("")),
                Outcome::Gone => "gone".to_string(),
            };
            // A failure something resolved since is history, not the present.
            let since = match (&v.verify_resolved, op) {
                (Some(res), Operation::Verify) => format!(
                    "; resolved since: {} {} succeeded and nothing listed depends on damage now",
                    res.by.name(),
                    res.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
                _ => String::new(),
            };
            println!("  last {} {}: {what}{since}", op.name(), when(r));
        }
    }
    for l in &v.locks {
        println!(
            "  locked by {} pid {} since {} ({}){}",
            l.info.host,
            l.info.pid,
            l.info.started,
            l.info.operation,
            match (&l.dead, l.stale) {
                (Some(why), _) => format!(", dead: {why}"),
                (None, true) => format!(", stale: not refreshed for {:.0}s", l.age_seconds),
                (None, false) => String::new(),
            }
        );
    }
    for snap in &v.snapshots {
        if snap.base {
            println!("  base snapshot {}", snap.name);
        } else {
            println!("  stray snapshot {}: the next backup removes it", snap.name);
        }
    }
    let d = &v.damage;
    if d.any() {
        println!(
            "  DAMAGED: {} point(s) cannot be restored, {} corrupt commit marker(s), {} uncommitted complete archive(s){}; see `thinarc verify {}` and the README's \"Damage and repair\"",
            d.damaged_points,
            d.corrupt_markers,
            d.orphans,
            if d.lost_success {
                ", the last successful backup's point is not listed"
            } else {
                ""
            },
            v.volume
        );
    }
    for p in &v.problems {
        println!("  problem: {p}");
    }
}
