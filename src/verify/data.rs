//! Reading and checking block data: restore's fetch and decode pipeline
//! ([`read_units_with`]) over one archive at a time, recording bad blocks instead of
//! failing, and dropping the data once checked. A sample keeps the frames whose
//! seeded hash falls below the percentage.

use std::sync::Arc;

use futures::StreamExt;

use super::{DataCheck, VerifyOptions};
use crate::format::Digest;
use crate::point::ReadError;
use crate::point::read::{Decoded, FrameFilter, OnBad, ReadMode, read_units_with, unit_buffers};
use crate::progress::Progress;
use crate::repo::{Chain, ChainCursor, RemoteArchive, Repository, VolumeName};

/// What a data check of one archive found.
pub(super) struct Checked {
    /// Data blocks read and checked.
    pub blocks: u64,
    /// Bytes read.
    pub bytes: u64,
    /// (blocks concerned, in block order; none for the whole archive, description).
    pub problems: Vec<(Vec<u64>, String)>,
}

/// Whether the sample with `seed` covering `percent` % takes the frame at
/// `frame_offset` of archive `archive_id`: a SHA-256 of the three, as a fraction.
pub(super) fn sampled(seed: u64, percent: f64, archive_id: &str, frame_offset: u64) -> bool {
    let mut key = Vec::with_capacity(48);
    key.extend_from_slice(&seed.to_le_bytes());
    key.extend_from_slice(archive_id.as_bytes());
    key.extend_from_slice(&frame_offset.to_le_bytes());
    let h = Digest::of(&key);
    let x = u64::from_le_bytes(h.0[..8].try_into().expect("8 bytes"));
    (x as f64 / u64::MAX as f64) * 100.0 < percent
}

/// Reads and checks the data blocks of `archive` (all, or a sample).
pub(super) async fn check_data(
    repo: &Repository,
    volume: &VolumeName,
    archive: &Arc<RemoteArchive>,
    opts: &VerifyOptions,
    progress: &Arc<Progress>,
) -> Checked {
    let keep: Option<FrameFilter> = match opts.data {
        DataCheck::Sample { percent, seed } => {
            let id = archive.commit.archive_id.clone();
            Some(Arc::new(move |_, offset| {
                sampled(seed, percent, id.as_str(), offset)
            }))
        }
        _ => None,
    };
    // The archive alone, as a one-archive chain: its own blocks, whatever its parent.
    let chain = Arc::new(Chain {
        volume: volume.clone(),
        archives: vec![archive.clone()],
    });
    let pool = unit_buffers(opts.threads);
    let recycle = pool.clone();
    let mode = ReadMode {
        keep,
        on_bad: OnBad::Record,
        stored: false,
        whole_frames: true,
    };
    let blocks = archive.geometry().blocks();
    let mut units = read_units_with(
        repo,
        chain.clone(),
        ChainCursor::new(&chain),
        blocks,
        opts.threads,
        pool,
        mode,
        move |d: Decoded| -> Result<_, ReadError> {
            let bytes: u64 = d.buf.len() as u64;
            let bad: usize = d.bad.iter().map(|b| 1 + b.also.len()).sum();
            let seen = (d.digests.len() + bad) as u64;
            recycle.give(d.buf);
            Ok((seen, bytes, d.fetched, d.bad))
        },
    );
    let mut checked = Checked {
        blocks: 0,
        bytes: 0,
        problems: Vec::new(),
    };
    while let Some(unit) = units.stream.next().await {
        match unit {
            Ok((seen, bytes, fetched, bad)) => {
                checked.blocks += seen;
                checked.bytes += fetched;
                progress.add(bytes);
                for b in bad {
                    let problem = match b.also.as_slice() {
                        [] => b.error.to_string(),
                        also => format!(
                            "{} (its frame also holds block{} {}, lost with it)",
                            b.error,
                            if also.len() == 1 { "" } else { "s" },
                            also.iter()
                                .map(u64::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    };
                    let mut blocks = vec![b.block];
                    blocks.extend(b.also);
                    checked.problems.push((blocks, problem));
                }
            }
            Err(e) => {
                checked
                    .problems
                    .push((Vec::new(), format!("reading block data stopped: {e}")));
                break;
            }
        }
    }
    if let Err(e) = units.finish().await {
        checked
            .problems
            .push((Vec::new(), format!("reading the index: {e}")));
    }
    checked
}

#[cfg(test)]
mod tests {
    use super::sampled;

    #[test]
    fn samples_take_their_share_and_depend_on_the_seed() {
        let take = |seed, percent| {
            (0..20_000u64)
                .filter(|&f| sampled(seed, percent, "a1b2", f * 262_144))
                .count()
        };
        let five = take(1, 5.0);
        assert!((800..1200).contains(&five), "5% of 20000 frames: {five}");
        assert_eq!(take(1, 5.0), five, "the same seed, the same frames");
        assert_ne!(take(2, 5.0), five, "another seed, other frames");
        assert_eq!(take(3, 100.0), 20_000);
    }
}
