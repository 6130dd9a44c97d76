//! Structure checks of one archive's index that need no block data: every segment
//! against its checksum and the entry rules, then the whole index through the format's
//! [`IndexCheck`](crate::format::IndexCheck) (frames, trailer counts, the tiling of the
//! body, a full archive's coverage and image digest). Streams one segment at a time.
//! Without the key, an encrypted archive's segments are checked against their
//! checksums only (the unkeyed checksum tree covers the sealed bytes). Segments are
//! read through the volume's segment cache, where the points' image digests find them.

use std::sync::Arc;

use crate::repo::{RemoteArchive, RepoError, SegmentCache};

/// Checks the index of `archive`; returns the problems found as (first block
/// concerned, description).
pub(super) async fn check_index(
    archive: &Arc<RemoteArchive>,
    segments: &SegmentCache,
) -> Vec<(Option<u64>, String)> {
    let corrupt = |source| {
        super::describe(&RepoError::Corrupt {
            key: archive.key().to_string(),
            source,
        })
    };
    let mut problems = Vec::new();
    let mut check = archive.index_check();
    let mut unreadable = false;
    let readable = archive.is_readable();
    for (i, d) in archive.directory().iter().enumerate() {
        let entries = if readable {
            segments.segment(archive, i).await
        } else {
            archive.check_segment_sum(i).await.map(|()| Arc::default())
        };
        let entries = match entries {
            Ok(e) => e,
            Err(e) => {
                problems.push((
                    Some(d.first_block),
                    format!(
                        "index segment {i} (blocks {}..{}): {}",
                        d.first_block,
                        d.end_block,
                        super::describe(&e)
                    ),
                ));
                unreadable = true;
                continue;
            }
        };
        for e in entries.iter() {
            if let Err(source) = check.push(e) {
                problems.push((Some(e.block), corrupt(source)));
            }
        }
    }
    // Without every segment, the whole-index rules cannot be checked.
    if readable
        && !unreadable
        && let Err(source) = check.finish()
    {
        problems.push((None, corrupt(source)));
    }
    problems
}
