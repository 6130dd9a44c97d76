//! One step of `bench/crypt.sh`: a backup, `--changed-blocks` delta or restore of an
//! image through the library, into a plain or an encrypted repository (the CLI's
//! `init` of an encrypted repository comes with the key commands).
//!
//! ```text
//! crypt_bench plain|enc REPO_DIR full IMAGE
//! crypt_bench plain|enc REPO_DIR delta IMAGE CHANGED_FILE
//! crypt_bench plain|enc REPO_DIR restore TARGET
//! ```
//!
//! The encrypted repository's key is kept in `REPO_DIR.key` (a benchmark only).

use std::path::Path;
use std::sync::Arc;

use thinarc::backup::{BackupOptions, backup};
use thinarc::format::{Keys, RepoKey};
use thinarc::repo::{PointSelector, Repository, VolumeName};
use thinarc::restore::{RestoreOptions, restore};
use thinarc::source::{RawSource, parse_changed_blocks};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, mode, dir, step, path, rest @ ..] = &args[..] else {
        return Err(
            "usage: crypt_bench plain|enc REPO_DIR full|delta|restore PATH [CHANGED]".into(),
        );
    };
    let key_file = format!("{dir}.key");
    let repo = match Repository::open_location(dir).await {
        Ok(r) => r,
        Err(_) if mode == "enc" => {
            let key = RepoKey::generate();
            std::fs::write(&key_file, key.to_secret_bytes())?;
            Repository::create_location(dir, true, Some(key.writer())).await?
        }
        Err(_) => Repository::create_location(dir, true, None).await?,
    };
    let repo = if mode == "enc" {
        repo.with_keys(Keys::Owner(RepoKey::from_secret_bytes(&std::fs::read(
            &key_file,
        )?)?))?
    } else {
        repo
    };
    let volume = VolumeName::new("bench")?;
    let started = std::time::Instant::now();
    match step.as_str() {
        "full" | "delta" => {
            let mut opts = BackupOptions::new(volume);
            if let [changed] = rest {
                opts.changed_blocks = Some(parse_changed_blocks(
                    &std::fs::read_to_string(changed)?,
                    changed,
                )?);
            }
            let r = backup(
                &repo,
                RawSource::open(Path::new(path))?,
                &opts,
                Arc::default(),
            )
            .await?;
            println!(
                "{mode} {step}: {:.2} s, {} bytes read, {} stored",
                started.elapsed().as_secs_f64(),
                r.bytes_read,
                r.stored_bytes
            );
        }
        "restore" => {
            let opts = RestoreOptions::new(PointSelector::Latest);
            restore(&repo, &volume, Path::new(path), &opts, Arc::default()).await?;
            println!("{mode} restore: {:.2} s", started.elapsed().as_secs_f64());
        }
        s => return Err(format!("unknown step {s}").into()),
    }
    Ok(())
}
