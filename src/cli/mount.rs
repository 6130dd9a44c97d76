//! `thinarc mount` and `thinarc umount`: a point's file system through a kernel NBD
//! device.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use super::{Ctx, signals::interrupted};
use thinarc::nightly::Need;
use thinarc::repo::{PointSelector, VolumeName};
use thinarc::serve::{MountOptions, ServeOptions, mount, umount};
use thinarc::size::parse_size;

/// Arguments of `mount`.
#[derive(Debug, Args)]
pub struct MountArgs {
    /// Volume to mount.
    pub volume: VolumeName,
    /// Directory to mount its file system on.
    pub mountpoint: PathBuf,
    /// Point to mount: an archive id (or unique prefix), a sequence number, or `latest`.
    #[arg(long, default_value = "latest", value_parser = PointSelector::parse)]
    pub at: PointSelector,
    /// Mount read-write, writes kept in this copy-on-write overlay file (see `serve
    /// --overlay`); without it the file system is mounted read-only.
    #[arg(long, value_name = "FILE")]
    pub overlay: Option<PathBuf>,
    /// The partition to mount, for a partitioned image (they are listed when none is
    /// named).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub partition: Option<u32>,
    /// Decoded data kept in memory for repeated reads.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "256MiB")]
    pub cache: u64,
}

/// Arguments of `umount`.
#[derive(Debug, Args)]
pub struct UmountArgs {
    /// The mountpoint of a `thinarc mount`, or an NBD device (`/dev/nbdN`) a killed
    /// mount left behind.
    pub target: PathBuf,
}

/// Mounts and serves until `thinarc umount` or a signal; both end it cleanly.
pub async fn run(args: MountArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let repo = ctx.open_unlocked(Need::Read, "mount").await?;
    let opts = MountOptions {
        serve: ServeOptions {
            at: args.at.clone(),
            cache: args.cache,
            overlay: args.overlay.clone(),
        },
        partition: args.partition,
    };
    let quiet = ctx.quiet;
    let mp = args.mountpoint.display().to_string();
    let stop = async {
        let signal = interrupted().await;
        tracing::info!("{signal}: unmounting");
    };
    mount(&repo, &args.volume, &opts, &args.mountpoint, stop, |m| {
        if !quiet {
            println!(
                "mounted {} ({}) on {mp} from {} ({}); end with `thinarc umount {mp}`",
                args.volume, m.options, m.source, m.device
            );
        }
    })
    .await
    .with_context(|| format!("cannot mount {} on {mp}", args.volume))?;
    Ok(())
}

/// Unmounts and disconnects.
pub async fn run_umount(args: UmountArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let device = umount(&args.target)
        .with_context(|| format!("cannot unmount {}", args.target.display()))?;
    if !ctx.quiet {
        println!(
            "unmounted {} and disconnected {device}",
            args.target.display()
        );
    }
    Ok(())
}
