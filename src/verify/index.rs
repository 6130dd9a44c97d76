//! Structure checks of one archive's index that need no block data: every segment
//! against its checksum and the entry rules, the entries of each frame against each
//! other, the trailer's counts against the index, and frames plus segments against
//! the size of the body. Streams one segment at a time.

use crate::format::{EntryKind, IndexEntry, frame_content_len};
use crate::repo::RemoteArchive;

/// Tallies of the index, built segment by segment.
#[derive(Default)]
struct Tally {
    data_blocks: u64,
    zero_blocks: u64,
    frame_bytes: u64,
    /// Entries of the frame being collected (a frame's entries may span two
    /// segments); at most one frame's worth.
    frame: Vec<IndexEntry>,
}

impl Tally {
    /// Closes the frame being collected; returns a problem with it, if any.
    fn close_frame(&mut self, archive: &RemoteArchive) -> Option<(Option<u64>, String)> {
        let group = std::mem::take(&mut self.frame);
        let head = group.first()?;
        let EntryKind::Data {
            frame_offset,
            frame_len,
            ..
        } = head.kind
        else {
            unreachable!("only data entries are collected");
        };
        self.data_blocks += group.len() as u64;
        self.frame_bytes += u64::from(frame_len);
        frame_content_len(&archive.geometry(), &group, frame_offset)
            .err()
            .map(|e| (Some(head.block), format!("index: {e}")))
    }
}

/// Checks the index of `archive`; returns the problems found as (first block
/// concerned, description).
pub(super) async fn check_index(archive: &RemoteArchive) -> Vec<(Option<u64>, String)> {
    let mut problems = Vec::new();
    let mut t = Tally::default();
    let mut segment_bytes = 0u64;
    let mut unreadable = false;
    for (i, d) in archive.directory().iter().enumerate() {
        segment_bytes += d.len();
        let entries = match archive.segment(i).await {
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
        for e in entries {
            match e.kind {
                EntryKind::Zero { .. } => {
                    problems.extend(t.close_frame(archive));
                    t.zero_blocks += e.count();
                }
                EntryKind::Data { frame_offset, .. } => {
                    let same = matches!(
                        t.frame.first().map(|h| h.kind),
                        Some(EntryKind::Data { frame_offset: o, .. }) if o == frame_offset
                    );
                    if !same {
                        problems.extend(t.close_frame(archive));
                    }
                    t.frame.push(e);
                }
            }
        }
    }
    problems.extend(t.close_frame(archive));
    if unreadable {
        return problems; // the counts cannot be compared
    }
    let tr = &archive.trailer;
    if (t.data_blocks, t.zero_blocks, t.frame_bytes)
        != (tr.data_blocks, tr.zero_blocks, tr.frame_bytes)
    {
        problems.push((
            None,
            format!(
                "trailer counts {} data blocks, {} zero blocks, {} frame bytes; the index has {}, {}, {}",
                tr.data_blocks, tr.zero_blocks, tr.frame_bytes, t.data_blocks, t.zero_blocks, t.frame_bytes
            ),
        ));
    }
    let body = tr.directory_offset - tr.body_offset;
    if t.frame_bytes + segment_bytes != body {
        problems.push((
            None,
            format!(
                "frames ({} bytes) and index segments ({segment_bytes} bytes) do not fill the {body}-byte body",
                t.frame_bytes
            ),
        ));
    }
    if archive.header.parent.is_none()
        && t.data_blocks + t.zero_blocks != archive.geometry().blocks()
    {
        problems.push((
            None,
            format!(
                "full archive holds {} of the volume's {} blocks",
                t.data_blocks + t.zero_blocks,
                archive.geometry().blocks()
            ),
        ));
    }
    problems
}
