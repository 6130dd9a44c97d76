//! Builds the repository of `bench/catalog.sh` through the library: VOLUMES volumes of
//! POINTS points each, on a local directory (the bench then uploads the tree to the S3
//! server). Each volume is a 256 KiB image (4 blocks of 64 KiB): a full backup, then
//! `--changed-blocks` deltas that each rewrite one block.
//!
//! ```text
//! catalog_bench REPO_DIR VOLUMES POINTS
//! ```

use std::sync::Arc;

use futures::StreamExt;

use thinarc::backup::{BackupOptions, backup};
use thinarc::repo::{Repository, VolumeName};
use thinarc::source::{RawSource, parse_changed_blocks};

/// Image size of every volume.
const IMAGE: usize = 256 << 10;
/// Block size (the default).
const BLOCK: usize = 64 << 10;
/// Volumes backed up at once.
const PARALLEL: usize = 4;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, volumes, points] = &args[..] else {
        return Err("usage: catalog_bench REPO_DIR VOLUMES POINTS".into());
    };
    let (volumes, points): (usize, u64) = (volumes.parse()?, points.parse()?);
    let repo = Repository::create_location(dir, true, None).await?;
    let images = tempfile::tempdir()?;
    let started = std::time::Instant::now();
    let mut tasks = futures::stream::iter(0..volumes)
        .map(|i| {
            let image = images.path().join(format!("v{i}.img"));
            let repo = &repo;
            async move { volume(repo, i, &image, points).await }
        })
        .buffer_unordered(PARALLEL);
    let mut done = 0;
    while let Some(r) = tasks.next().await {
        r?;
        done += 1;
        if done % 50 == 0 {
            eprintln!("{done} volumes, {:.0} s", started.elapsed().as_secs_f64());
        }
    }
    Ok(())
}

/// Backs up `points` points of volume `vm-NNNN/disk`.
async fn volume(
    repo: &Repository,
    i: usize,
    image: &std::path::Path,
    points: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let name = VolumeName::new(&format!("vm-{i:04}/disk"))?;
    let mut data: Vec<u8> = (0..IMAGE).map(|b| (b * 31 + i * 7) as u8).collect();
    for p in 0..points {
        let mut opts = BackupOptions::new(name.clone());
        opts.threads = 1;
        if p > 0 {
            let block = (p as usize + i) % (IMAGE / BLOCK);
            data[block * BLOCK] = data[block * BLOCK].wrapping_add(1) ^ (p as u8);
            opts.changed_blocks = Some(parse_changed_blocks(
                &format!("{} {BLOCK}\n", block * BLOCK),
                "generated",
            )?);
        }
        std::fs::write(image, &data)?;
        backup(repo, RawSource::open(image)?, &opts, Arc::default()).await?;
    }
    std::fs::remove_file(image)?;
    Ok(())
}
