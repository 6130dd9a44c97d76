//! The library's entry points in one program: create a repository, back up an image
//! twice (a full, then a delta), list the points, and restore both.
//!
//! Run with `cargo run --example backup_restore`.

use std::sync::Arc;

use thinarc::backup::{BackupOptions, backup};
use thinarc::repo::{PointSelector, Repository, VolumeName};
use thinarc::restore::{RestoreOptions, restore};
use thinarc::source::RawSource;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let location = dir.path().join("repo").display().to_string();
    let repo = Repository::create_location(&location, true, None).await?;
    let volume = VolumeName::new("demo/disk")?;

    // An 8 MiB image: some text, the rest zero.
    let image = dir.path().join("disk.img");
    let mut data = vec![0u8; 8 << 20];
    for (i, b) in data[..1 << 20].iter_mut().enumerate() {
        *b = b"thinarc example "[i % 16];
    }
    std::fs::write(&image, &data)?;
    let opts = BackupOptions::new(volume.clone());
    let full = backup(&repo, RawSource::open(&image)?, &opts, Arc::default()).await?;
    println!(
        "full:  seq {} archive {} ({} bytes stored)",
        full.seq, full.archive, full.stored_bytes
    );

    data[5 << 20..(5 << 20) + 4096].fill(0xAB);
    std::fs::write(&image, &data)?;
    let delta = backup(&repo, RawSource::open(&image)?, &opts, Arc::default()).await?;
    println!(
        "delta: seq {} archive {} ({} blocks changed)",
        delta.seq, delta.archive, delta.blocks_changed
    );

    for p in repo.describe(&volume).await? {
        println!(
            "point {} created {} image digest {}",
            p.seq, p.created, p.image_digest
        );
    }

    for seq in [1, 2] {
        let target = dir.path().join(format!("restored-{seq}.img"));
        let ropts = RestoreOptions {
            threads: 2,
            ..RestoreOptions::new(PointSelector::Seq(seq))
        };
        let r = restore(&repo, &volume, &target, &ropts, Arc::default()).await?;
        println!(
            "restored seq {} to {}: digest {}",
            r.seq,
            target.display(),
            r.image_digest
        );
    }
    Ok(())
}
