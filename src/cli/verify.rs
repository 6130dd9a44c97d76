//! `thinarc verify`: check the repository's structure, and optionally its block data
//! and a source, listing every problem.

use std::sync::Arc;

use clap::Args;

use super::{Ctx, human, print_json, progress::Display, source_spec};
use thinarc::nightly::Need;
use thinarc::progress::Progress;
use thinarc::repo::{Repository, VolumeName};
use thinarc::source::SourceSpec;
use thinarc::status::{Operation, Record};
use thinarc::verify::{DataCheck, Problem, VerifyError, VerifyOptions, VerifyReport, verify};

/// Arguments of `verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Volume to verify (default: every volume).
    pub volume: Option<VolumeName>,
    /// Also read every data block and check its SHA-256.
    #[arg(long, conflicts_with = "data_subset")]
    pub data: bool,
    /// Read a sample of the block data: this percentage of each archive's frames,
    /// chosen by a hash of a random seed (printed; repeat a sample with --seed).
    #[arg(long, value_name = "P%", value_parser = parse_percent)]
    pub data_subset: Option<f64>,
    /// Seed of the --data-subset sample (default: a new random one per run).
    #[arg(long, requires = "data_subset")]
    pub seed: Option<u64>,
    /// Compare this image file or block device with the latest point of VOLUME; for
    /// `lvm:VG/LV`, the LV's thinarc base snapshot (what the latest point was read from).
    #[arg(long, value_name = "SOURCE", requires = "volume", value_parser = source_spec())]
    pub source: Option<SourceSpec>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Verify found problems, or status a damaged volume (exit code 4).
#[derive(Debug, thiserror::Error)]
#[error("{by} found {count} problem{} in {location} (listed above)", if *count == 1 { "" } else { "s" })]
pub struct ProblemsFound {
    /// The command that found them.
    pub by: &'static str,
    /// How many.
    pub count: usize,
    /// The repository.
    pub location: String,
}

/// Records verify's outcome for each volume it checked (or the one it was asked to
/// check, if it could not run).
async fn record(
    ctx: &Ctx,
    location: &str,
    repo: &Repository,
    only: Option<&VolumeName>,
    started: chrono::DateTime<chrono::Utc>,
    result: &Result<VerifyReport, VerifyError>,
) {
    let outcomes: Vec<(String, Result<(), String>)> = match result {
        Ok(report) => report
            .volumes
            .iter()
            .map(|v| {
                let problems: Vec<&Problem> =
                    report.problems.iter().filter(|p| &p.volume == v).collect();
                let outcome = match problems.first() {
                    None => Ok(()),
                    Some(first) => Err(format!("{} problem(s); first: {first}", problems.len())),
                };
                (v.clone(), outcome)
            })
            .collect(),
        Err(e) => only
            .map(|v| (v.to_string(), Err(e.to_string())))
            .into_iter()
            .collect(),
    };
    for (volume, outcome) in outcomes {
        let Ok(volume) = VolumeName::new(&volume) else {
            continue;
        };
        let mut rec = Record::start(Operation::Verify, &volume, location);
        rec.started = started;
        if let Ok(report) = result {
            rec.bytes_read = Some(report.bytes_read);
        }
        ctx.write_record(location, Some(repo), rec.finish(outcome))
            .await;
    }
}

fn parse_percent(s: &str) -> Result<f64, String> {
    let p: f64 = s
        .strip_suffix('%')
        .unwrap_or(s)
        .parse()
        .map_err(|_| format!("{s:?} is not a percentage (e.g. 5%)"))?;
    if p > 0.0 && p <= 100.0 {
        Ok(p)
    } else {
        Err(format!("{s:?} must be more than 0% and at most 100%"))
    }
}

/// Runs verify.
pub async fn run(args: VerifyArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let volume = args.volume.clone();
    let data = match (args.data, args.data_subset) {
        (true, _) => DataCheck::All,
        (false, Some(percent)) => DataCheck::Sample {
            percent,
            seed: args.seed.unwrap_or_else(|| {
                let mut b = [0u8; 8];
                getrandom::fill(&mut b).expect("the OS random number generator failed");
                u64::from_le_bytes(b) >> 1
            }),
        },
        (false, None) => DataCheck::Off,
    };
    let opts = VerifyOptions {
        volume,
        data,
        source: args.source,
        threads: ctx.threads,
    };
    let only = opts.volume.clone();
    let started = chrono::Utc::now();
    let location = ctx.location()?;
    // The structure is checked without a key; block data and a source need one.
    let repo = if opts.data != DataCheck::Off || opts.source.is_some() {
        ctx.open_unlocked(Need::Read, "verify of block data")
            .await?
    } else {
        ctx.open().await?
    };
    let progress = Arc::new(Progress::default());
    let display = Display::start(ctx.progress_mode(), "verify".into(), progress.clone());
    let result = verify(&repo, &opts, progress).await;
    display.finish().await;
    record(ctx, location, &repo, only.as_ref(), started, &result).await;
    let report = result?;
    for w in &report.warnings {
        tracing::warn!("{w}");
    }
    if args.json {
        print_json(&report)?;
    } else {
        for p in &report.problems {
            println!("problem: {p}");
        }
        if let Some(oldest) = report.incomplete_uploads.iter().map(|u| u.initiated).min() {
            println!(
                "{} incomplete upload(s) of killed runs, the oldest started {}: the next backup, prune or copy of the volume aborts them once they are 1 hour old",
                report.incomplete_uploads.len(),
                oldest.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
        }
        if let Some(s) = &report.source {
            println!(
                "source {} {} seq {} ({})",
                s.source,
                if s.matches { "matches" } else { "DIFFERS from" },
                s.seq,
                s.actual
            );
        }
        if !ctx.quiet {
            println!(
                "verified {} volume(s), {} archive(s), {} point(s); data: {}, {} blocks checked, {} read; {} problem(s) in {:.1}s",
                report.volumes.len(),
                report.archives,
                report.points,
                report.data,
                report.data_blocks_checked,
                human(report.bytes_read),
                report.problems.len(),
                report.seconds
            );
        }
    }
    if report.problems.is_empty() {
        Ok(())
    } else {
        Err(ProblemsFound {
            by: "verify",
            count: report.problems.len(),
            location: ctx.location()?.to_string(),
        }
        .into())
    }
}
