//! The streaming, sans-IO archive writer.

use sha2::{Digest as _, Sha256};

use super::{
    ArchiveKey, Digest, Digester, DirEntry, EntryKind, FormatError, FrameKind, Geometry, Header,
    IndexEntry, MAX_FRAME_CONTENT, MAX_FRAME_LEN, SEGMENT_MAX_ENTRIES, Trailer, WriterKey,
};

/// A compressed frame ready to be appended: consecutive data blocks from `first_block`.
#[derive(Debug, Clone)]
pub struct EncodedFrame {
    /// Block number of the frame's first block.
    pub first_block: u64,
    /// How `bytes` are stored.
    pub kind: FrameKind,
    /// The stored frame (format 1.x; the writer seals it in format 2).
    pub bytes: Vec<u8>,
    /// Digest of each block of the frame, in order (the archive's [`Digester`]).
    pub digests: Vec<Digest>,
}

/// Writes one archive in a single pass with memory bounded by one index segment.
///
/// Blocks must be pushed in increasing block order. Every call appends the bytes to add
/// to the archive to `out`; the caller sends them wherever the archive goes. Frames are
/// followed by an index segment every [`SEGMENT_MAX_ENTRIES`] entries, and
/// [`finish`](Self::finish) appends the last segment, the directory and the trailer.
/// Given a writer key, it writes format 2.0: frames and segments sealed under a fresh
/// data key, digests keyed.
pub struct ArchiveWriter {
    key: Option<ArchiveKey>,
    digester: Digester,
    geometry: Geometry,
    offset: u64,
    body_offset: u64,
    header_sha256: Digest,
    next_block: u64,
    pending: Vec<IndexEntry>,
    directory: Vec<u8>,
    directory_entries: u32,
    data_blocks: u64,
    zero_blocks: u64,
    frame_bytes: u64,
    zero_full: Digest,
}

impl ArchiveWriter {
    /// Starts an archive with `header`, encrypted (format 2.0) when given `key`;
    /// appends preamble and header to `out`. The header written is `header` with the
    /// `encryption` map of the archive's fresh data key.
    ///
    /// # Errors
    /// [`FormatError::InvalidInput`] if the header is invalid or too large.
    pub fn new(
        header: &Header,
        key: Option<&WriterKey>,
        out: &mut Vec<u8>,
    ) -> Result<Self, FormatError> {
        let mut header = header.clone();
        header.encryption = None;
        let key = key
            .map(|k| ArchiveKey::create(k, &mut header))
            .transpose()?;
        Self::start(&header, key, out)
    }

    /// Starts an encrypted archive with `header`, which holds the `encryption` map of
    /// the data key `key` was made from ([`ArchiveKey::new`]): for test vectors, whose
    /// data key is fixed. [`new`](Self::new) draws a fresh one.
    ///
    /// # Errors
    /// [`FormatError::InvalidInput`] if the header is invalid, too large, or has no
    /// `encryption` map.
    pub fn with_key(
        header: &Header,
        key: ArchiveKey,
        out: &mut Vec<u8>,
    ) -> Result<Self, FormatError> {
        if header.encryption.is_none() {
            return Err(FormatError::InvalidInput(
                "an archive key needs a header with its encryption map".into(),
            ));
        }
        Self::start(header, Some(key), out)
    }

    fn start(
        header: &Header,
        key: Option<ArchiveKey>,
        out: &mut Vec<u8>,
    ) -> Result<Self, FormatError> {
        let geometry = header
            .geometry()
            .map_err(|e| FormatError::InvalidInput(e.to_string()))?;
        let digester = key
            .as_ref()
            .map_or(Digester::Plain, |k| k.digester().clone());
        let start = out.len();
        header.encode(out)?;
        let head = &out[start..];
        Ok(ArchiveWriter {
            zero_full: digester.zero_block(u64::from(geometry.block_size().get())),
            key,
            digester,
            geometry,
            offset: head.len() as u64,
            body_offset: head.len() as u64,
            header_sha256: Digest::of(head),
            next_block: 0,
            pending: Vec::with_capacity(SEGMENT_MAX_ENTRIES),
            directory: Vec::new(),
            directory_entries: 0,
            data_blocks: 0,
            zero_blocks: 0,
            frame_bytes: 0,
        })
    }

    /// The digest function of this archive's blocks and image.
    pub fn digester(&self) -> &Digester {
        &self.digester
    }

    /// Bytes emitted so far.
    pub fn len(&self) -> u64 {
        self.offset
    }

    /// Whether nothing has been emitted (never true: the header is always there).
    pub fn is_empty(&self) -> bool {
        self.offset == 0
    }

    fn check_order(&self, first: u64, count: u64) -> Result<(), FormatError> {
        if first < self.next_block
            || first.saturating_add(count) > self.geometry.blocks()
            || count == 0
        {
            return Err(FormatError::InvalidInput(format!(
                "blocks {first}+{count} out of order (next is {}) or past the volume end ({})",
                self.next_block,
                self.geometry.blocks()
            )));
        }
        Ok(())
    }

    /// Records `count` zero blocks starting at `first`.
    ///
    /// # Errors
    /// [`FormatError::InvalidInput`] if the blocks are out of order or out of range.
    pub fn push_zeros(
        &mut self,
        first: u64,
        count: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), FormatError> {
        self.check_order(first, count)?;
        self.zero_blocks += count;
        self.next_block = first + count;
        let (mut at, mut left) = (first, count);
        while left > 0 {
            if let Some(IndexEntry {
                block,
                kind: EntryKind::Zero { count: c },
            }) = self.pending.last_mut()
                && *block + u64::from(*c) == at
                && *c < u32::MAX
            {
                let add = left.min(u64::from(u32::MAX - *c));
                *c += add as u32;
                at += add;
                left -= add;
                continue;
            }
            let n = left.min(u64::from(u32::MAX));
            self.push_entry(
                IndexEntry {
                    block: at,
                    kind: EntryKind::Zero { count: n as u32 },
                },
                out,
            );
            at += n;
            left -= n;
        }
        Ok(())
    }

    /// Appends a frame and records its blocks.
    ///
    /// # Errors
    /// [`FormatError::InvalidInput`] if the blocks are out of order, the frame is too
    /// large, or a block is all zero (zero blocks must be pushed as zeros).
    pub fn push_frame(
        &mut self,
        frame: &EncodedFrame,
        out: &mut Vec<u8>,
    ) -> Result<(), FormatError> {
        let count = frame.digests.len() as u64;
        self.check_order(frame.first_block, count)?;
        let content: u64 = (frame.first_block..frame.first_block + count)
            .map(|b| self.geometry.block_len(b))
            .sum();
        // Refuse what a reader would reject: oversized frames and raw frames whose length
        // is not their content's.
        let frame_len = u32::try_from(frame.bytes.len()).ok().filter(|&n| {
            content <= MAX_FRAME_CONTENT
                && n > 0
                && u64::from(n) <= MAX_FRAME_LEN
                && (frame.kind != FrameKind::Raw || u64::from(n) == content)
        });
        let Some(frame_len) = frame_len else {
            return Err(FormatError::InvalidInput(format!(
                "frame at block {} holds {content} bytes in {} stored bytes",
                frame.first_block,
                frame.bytes.len()
            )));
        };
        if frame.kind == FrameKind::Zstd
            && super::frame::frame_content_len(frame.kind, &frame.bytes).ok()
                != Some(content as usize)
        {
            return Err(FormatError::InvalidInput(format!(
                "zstd frame at block {} does not declare its content size {content}",
                frame.first_block
            )));
        }
        for (i, d) in frame.digests.iter().enumerate() {
            let b = frame.first_block + i as u64;
            let len = self.geometry.block_len(b);
            let zero = if len == u64::from(self.geometry.block_size().get()) {
                self.zero_full
            } else {
                self.digester.zero_block(len)
            };
            if *d == zero {
                return Err(FormatError::InvalidInput(format!(
                    "block {b} is all zero but pushed as data"
                )));
            }
        }
        let frame_offset = self.offset;
        let frame_len = match &self.key {
            None => {
                out.extend_from_slice(&frame.bytes);
                frame_len
            }
            Some(key) => {
                let sealed = key.seal_frame(frame_offset, frame.first_block, &frame.bytes);
                out.extend_from_slice(&sealed);
                u32::try_from(sealed.len())
                    .ok()
                    .filter(|&n| u64::from(n) <= MAX_FRAME_LEN)
                    .ok_or_else(|| {
                        FormatError::InvalidInput(format!(
                            "sealed frame at block {} of {} bytes is too large",
                            frame.first_block,
                            sealed.len()
                        ))
                    })?
            }
        };
        self.offset += u64::from(frame_len);
        self.frame_bytes += u64::from(frame_len);
        self.data_blocks += count;
        self.next_block = frame.first_block + count;
        for (slot, digest) in frame.digests.iter().enumerate() {
            let kind = EntryKind::Data {
                frame: frame.kind,
                frame_offset,
                frame_len,
                slot: slot as u16,
                digest: *digest,
            };
            self.push_entry(
                IndexEntry {
                    block: frame.first_block + slot as u64,
                    kind,
                },
                out,
            );
        }
        Ok(())
    }

    fn push_entry(&mut self, entry: IndexEntry, out: &mut Vec<u8>) {
        if self.pending.len() == SEGMENT_MAX_ENTRIES {
            self.flush_segment(out);
        }
        self.pending.push(entry);
    }

    fn flush_segment(&mut self, out: &mut Vec<u8>) {
        let (Some(first), Some(last)) = (self.pending.first(), self.pending.last()) else {
            return;
        };
        let start = out.len();
        for e in &self.pending {
            e.encode(out);
        }
        let mut dir = DirEntry {
            offset: self.offset,
            entries: self.pending.len() as u32,
            first_block: first.block,
            end_block: last.end(),
            sha256: Digest::default(),
            sealed: self.key.is_some(),
        };
        if let Some(key) = &self.key {
            let sealed = key.seal_segment(&dir, &out[start..]);
            out.truncate(start);
            out.extend_from_slice(&sealed);
        }
        dir.sha256 = Digest::of(&out[start..]);
        self.offset += (out.len() - start) as u64;
        dir.encode(&mut self.directory);
        self.directory_entries += 1;
        self.pending.clear();
    }

    /// Appends the last segment, the directory and the trailer, and returns the trailer
    /// (its `trailer_sha256` is the archive digest).
    pub fn finish(mut self, image_digest: Digest, out: &mut Vec<u8>) -> Trailer {
        self.flush_segment(out);
        let directory_offset = self.offset;
        out.extend_from_slice(&self.directory);
        let mut t = Trailer {
            body_offset: self.body_offset,
            directory_offset,
            directory_entries: self.directory_entries,
            data_blocks: self.data_blocks,
            zero_blocks: self.zero_blocks,
            frame_bytes: self.frame_bytes,
            header_sha256: self.header_sha256,
            directory_sha256: Digest(Sha256::digest(&self.directory).into()),
            image_digest,
            trailer_sha256: Digest::default(),
        };
        t.encode(out);
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::ArchiveReader;
    use crate::format::header::test_header as header;

    fn frame(first: u64, blocks: &[&[u8]]) -> EncodedFrame {
        EncodedFrame {
            first_block: first,
            kind: FrameKind::Raw,
            bytes: blocks.concat(),
            digests: blocks.iter().map(|b| Digest::of(b)).collect(),
        }
    }

    #[test]
    fn adjacent_zero_runs_merge_and_segments_hold_4096_entries() {
        let blocks = 2 * SEGMENT_MAX_ENTRIES as u64 + 10;
        let mut out = Vec::new();
        let mut w = ArchiveWriter::new(&header(blocks * 4096), None, &mut out).expect("header");
        w.push_zeros(0, 2, &mut out).expect("zeros");
        w.push_zeros(2, 3, &mut out).expect("zeros");
        let block = [1u8; 4096];
        for b in 5..blocks {
            w.push_frame(&frame(b, &[&block]), &mut out).expect("frame");
        }
        let t = w.finish(Digest::default(), &mut out);
        assert_eq!(t.archive_len(), out.len() as u64);
        assert_eq!(
            (t.data_blocks, t.zero_blocks, t.directory_entries),
            (blocks - 5, 5, 3)
        );
        let r = ArchiveReader::open(&out).expect("open");
        let e = r.entries().expect("entries");
        assert_eq!(
            e[0],
            IndexEntry {
                block: 0,
                kind: EntryKind::Zero { count: 5 }
            }
        );
        assert_eq!(e.len() as u64, blocks - 4);
    }

    #[test]
    fn zero_runs_longer_than_u32_are_split() {
        let blocks = u64::from(u32::MAX) + 10;
        let mut out = Vec::new();
        let mut w = ArchiveWriter::new(&header(blocks * 4096), None, &mut out).expect("header");
        w.push_zeros(0, blocks, &mut out).expect("zeros");
        let t = w.finish(Digest::default(), &mut out);
        let r = ArchiveReader::open(&out).expect("open");
        let e = r.entries().expect("entries");
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].count(), u64::from(u32::MAX));
        assert_eq!(e[1].end(), blocks);
        assert_eq!(t.zero_blocks, blocks);
    }

    #[test]
    fn bad_input_is_refused() {
        let mut out = Vec::new();
        let mut w = ArchiveWriter::new(&header(3 * 4096 + 100), None, &mut out).expect("header");
        let full = [9u8; 4096];
        let zero = [0u8; 4096];
        assert!(
            w.push_frame(&frame(0, &[&full, &zero]), &mut out).is_err(),
            "all-zero block as data"
        );
        assert!(
            w.push_frame(&frame(3, &[&[0u8; 100]]), &mut out).is_err(),
            "short all-zero block as data"
        );
        let mut short_raw = frame(0, &[&full]);
        short_raw.bytes.pop();
        assert!(
            w.push_frame(&short_raw, &mut out).is_err(),
            "raw frame shorter than its content"
        );
        let mut long = frame(0, &[&full]);
        long.kind = FrameKind::Zstd;
        long.bytes = vec![1; MAX_FRAME_LEN as usize + 1];
        assert!(
            w.push_frame(&long, &mut out).is_err(),
            "stored frame above the limit"
        );
        assert!(
            w.push_frame(&frame(3, &[&full]), &mut out).is_err(),
            "short last block given in full"
        );
        let mut c = zstd::bulk::Compressor::new(1).expect("zstd");
        c.set_parameter(zstd::stream::raw::CParameter::ContentSizeFlag(false))
            .expect("flag");
        let no_size = EncodedFrame {
            kind: FrameKind::Zstd,
            bytes: c.compress(&full).expect("zstd"),
            ..frame(0, &[&full])
        };
        assert!(
            w.push_frame(&no_size, &mut out).is_err(),
            "zstd frame without content size"
        );
        let mut c = zstd::bulk::Compressor::new(1).expect("zstd");
        let wrong_size = EncodedFrame {
            kind: FrameKind::Zstd,
            bytes: c.compress(&full[..4000]).expect("zstd"),
            ..frame(0, &[&full])
        };
        assert!(
            w.push_frame(&wrong_size, &mut out).is_err(),
            "zstd frame of another content size"
        );
        w.push_frame(&frame(1, &[&full]), &mut out).expect("frame");
        assert!(w.push_zeros(1, 1, &mut out).is_err(), "out of order");
        assert!(w.push_zeros(2, 0, &mut out).is_err(), "empty run");
        assert!(w.push_zeros(2, 3, &mut out).is_err(), "past the end");
        assert!(
            ArchiveWriter::new(
                &Header {
                    block_size: 100,
                    ..header(1)
                },
                None,
                &mut Vec::new()
            )
            .is_err()
        );
    }
}
