//! The validating reader: every rule of FORMAT.md §13, once, as sans-IO stages over the
//! byte ranges a caller fetched (§13.2), in the order a reader meets them:
//!
//! 1. [`check_ends`]: the preamble and the trailer (from the first and the last bytes
//!    of the file) and the layout they describe;
//! 2. [`check_header`]: the header, bytes `0 .. body_offset`;
//! 3. [`decode_directory`]: the directory;
//! 4. [`decode_segment`](super::decode_segment): each index segment;
//! 5. [`IndexCheck`]: the whole index, fed entry by entry in block order: frames,
//!    trailer counts, the tiling of the body, and a full archive's coverage and image
//!    digest;
//! 6. [`check_frame_content`] and [`BlockCheck`]: each decoded frame and block.
//!
//! Readers that fetch ranges (`repo::RemoteArchive`, the point reader) and
//! [`ArchiveReader`] (a whole archive in memory: tests, vectors, tools) drive these same
//! functions, so a new reader of points plugs in by driving them too.

use std::collections::BTreeMap;
use std::ops::Range;

use super::{
    ArchiveKey, DIR_ENTRY_LEN, Digest, Digester, DirEntry, END_MAGIC, EntryKind, FormatError,
    FrameKind, Geometry, Header, ImageHasher, IndexEntry, PREAMBLE_LEN, Preamble, RepoKey, TAG_LEN,
    TRAILER_LEN, Trailer, decode_segment, decompress_frame,
};

/// Stages 2 to 4 of §13.2: the preamble from `head` (the first bytes of the file, at
/// least [`PREAMBLE_LEN`] unless the file is shorter), the trailer from `tail` (the
/// last bytes, at least [`TRAILER_LEN`] unless the file is shorter) and the layout of a
/// file of `len` bytes. Magic and version are reported before anything else.
///
/// # Errors
/// [`FormatError::BadMagic`], [`FormatError::UnsupportedVersion`],
/// [`FormatError::Truncated`] (also for a file without its end magic),
/// [`FormatError::ChecksumMismatch`] or [`FormatError::Corrupt`].
pub fn check_ends(head: &[u8], tail: &[u8], len: u64) -> Result<(Preamble, Trailer), FormatError> {
    let pre = Preamble::decode(head)?;
    let min = (PREAMBLE_LEN + TRAILER_LEN) as u64 + u64::from(pre.header_len);
    if len < min || tail.len() < TRAILER_LEN {
        return Err(FormatError::Truncated {
            what: "archive",
            needed: min,
            available: len,
        });
    }
    let tail = &tail[tail.len() - TRAILER_LEN..];
    if tail[TRAILER_LEN - END_MAGIC.len()..] != END_MAGIC {
        // The preamble is fine, so this is an archive whose end is missing: most
        // often an interrupted write, which must be reported as such, not as "not
        // an archive". Its real length is unknown; it needs at least one more byte.
        return Err(FormatError::Truncated {
            what: "archive without end magic",
            needed: len + 1,
            available: len,
        });
    }
    let trailer = Trailer::decode(tail)?;
    trailer.check_layout(len)?;
    let head_end = PREAMBLE_LEN as u64 + u64::from(pre.header_len);
    if trailer.body_offset != head_end {
        return Err(FormatError::corrupt(
            "trailer",
            format!(
                "body offset {} but header ends at {head_end}",
                trailer.body_offset
            ),
        ));
    }
    Ok((pre, trailer))
}

/// Stage 5 of §13.2: the header from `head`, bytes `0 .. trailer.body_offset` of the
/// file, against `header_sha256`; returns it with its geometry.
///
/// # Errors
/// [`FormatError::ChecksumMismatch`], or [`FormatError::Corrupt`] for a header that
/// breaks a rule of §5.2.
pub fn check_header(head: &[u8], trailer: &Trailer) -> Result<(Header, Geometry), FormatError> {
    check_sum("header", head, trailer.body_offset, trailer.header_sha256)?;
    let pre = Preamble::decode(head)?;
    let header = Header::decode_format(&head[PREAMBLE_LEN..], pre.major)?;
    let geometry = header.geometry()?;
    Ok((header, geometry))
}

impl Trailer {
    /// Checks that the trailer's offsets describe a file of exactly `len` bytes.
    ///
    /// # Errors
    /// [`FormatError::Truncated`] when the file is shorter than the trailer implies,
    /// [`FormatError::Corrupt`] for any other inconsistency.
    pub fn check_layout(&self, len: u64) -> Result<(), FormatError> {
        let dir_len = u64::from(self.directory_entries) * DIR_ENTRY_LEN as u64;
        let implied = self
            .directory_offset
            .checked_add(dir_len + TRAILER_LEN as u64);
        match implied {
            Some(n) if n == len => {}
            Some(n) if n > len => {
                return Err(FormatError::Truncated {
                    what: "archive",
                    needed: n,
                    available: len,
                });
            }
            _ => {
                return Err(FormatError::corrupt(
                    "trailer",
                    format!(
                        "directory at {} with {} entries does not end a {len}-byte file",
                        self.directory_offset, self.directory_entries
                    ),
                ));
            }
        }
        if self.body_offset <= PREAMBLE_LEN as u64 || self.body_offset > self.directory_offset {
            return Err(FormatError::corrupt(
                "trailer",
                format!(
                    "body offset {} not between the preamble and the directory at {}",
                    self.body_offset, self.directory_offset
                ),
            ));
        }
        Ok(())
    }
}

/// Checks that `bytes`, the `what` of an archive, are `len` bytes with SHA-256 `sha256`.
fn check_sum(
    what: &'static str,
    bytes: &[u8],
    len: u64,
    sha256: Digest,
) -> Result<(), FormatError> {
    if bytes.len() as u64 != len {
        return Err(FormatError::Truncated {
            what,
            needed: len,
            available: bytes.len() as u64,
        });
    }
    let actual = Digest::of(bytes);
    if actual != sha256 {
        return Err(FormatError::ChecksumMismatch {
            what: what.into(),
            expected: sha256,
            actual,
        });
    }
    Ok(())
}

/// Decodes and validates the directory of the archive with `header`: checksum,
/// segments in block order, inside the body and not overlapping.
///
/// # Errors
/// [`FormatError::ChecksumMismatch`] or [`FormatError::Corrupt`].
pub fn decode_directory(
    bytes: &[u8],
    trailer: &Trailer,
    header: &Header,
    geometry: &Geometry,
) -> Result<Vec<DirEntry>, FormatError> {
    let expected_len = u64::from(trailer.directory_entries) * DIR_ENTRY_LEN as u64;
    check_sum("directory", bytes, expected_len, trailer.directory_sha256)?;
    let mut out: Vec<DirEntry> = Vec::with_capacity(trailer.directory_entries as usize);
    let (mut next_block, mut next_offset) = (0u64, trailer.body_offset);
    let mut blocks = 0u64;
    for chunk in bytes.chunks_exact(DIR_ENTRY_LEN) {
        let d = DirEntry {
            sealed: header.encryption.is_some(),
            ..DirEntry::decode(chunk.try_into().expect("chunks_exact"))?
        };
        if d.first_block < next_block || d.end_block > geometry.blocks() {
            return Err(FormatError::corrupt(
                "directory",
                format!(
                    "segment blocks {}..{} out of order or past the volume end {}",
                    d.first_block,
                    d.end_block,
                    geometry.blocks()
                ),
            ));
        }
        let seg_end = d.offset.checked_add(d.len());
        if d.offset < next_offset || seg_end.is_none_or(|end| end > trailer.directory_offset) {
            return Err(FormatError::corrupt(
                "directory",
                format!(
                    "segment at offset {} overlaps or lies outside the body",
                    d.offset
                ),
            ));
        }
        blocks += d.end_block - d.first_block;
        next_block = d.end_block;
        next_offset = d.offset + d.len();
        out.push(d);
    }
    let held = trailer.data_blocks.saturating_add(trailer.zero_blocks);
    if blocks < held {
        return Err(FormatError::corrupt(
            "directory",
            format!("segments span {blocks} blocks, trailer counts {held}"),
        ));
    }
    Ok(out)
}

/// Stage 5 of §13.3 over the whole index: fed every entry of an archive in block order
/// (segment after segment), it checks the entries of each frame against each other,
/// that frames and segments tile the body exactly, the trailer's counts and, for a full
/// archive, that the index covers the volume and gives the trailer's image digest.
/// Memory: one frame's entries, and the runs of the body covered so far (one run for
/// an archive written in order).
pub struct IndexCheck {
    geometry: Geometry,
    /// Bytes sealing adds to each stored frame (format 2).
    tag_len: u32,
    trailer: Trailer,
    /// Entries of the frame being collected (a frame's entries may span two segments).
    frame: Vec<IndexEntry>,
    data_blocks: u64,
    zero_blocks: u64,
    frame_bytes: u64,
    body: Tiling,
    /// A full archive's image digest, while its entries follow each other (none for
    /// a delta, or after a gap, which `push` reports).
    image: Option<ImageHasher>,
}

impl IndexCheck {
    /// A check of the archive with `header`, `trailer`, `geometry` and the (decoded)
    /// `directory`, whose digests `digester` computes.
    pub fn new(
        header: &Header,
        trailer: &Trailer,
        geometry: Geometry,
        directory: &[DirEntry],
        digester: &Digester,
    ) -> Self {
        let mut body = Tiling::default();
        for d in directory {
            // The directory's own rules keep segments apart and inside the body.
            let _ = body.add(d.offset, d.len());
        }
        IndexCheck {
            geometry,
            tag_len: if header.encryption.is_some() {
                TAG_LEN as u32
            } else {
                0
            },
            trailer: *trailer,
            frame: Vec::new(),
            data_blocks: 0,
            zero_blocks: 0,
            frame_bytes: 0,
            body,
            image: header
                .parent
                .is_none()
                .then(|| ImageHasher::with(geometry, digester)),
        }
    }

    /// Takes the next entry of the index.
    ///
    /// # Errors
    /// [`FormatError::Corrupt`] for a frame whose entries disagree or that overlaps
    /// another frame or a segment (reported as its entries end), or a full archive
    /// with blocks no entry covers. The check can go on after an error.
    pub fn push(&mut self, e: &IndexEntry) -> Result<(), FormatError> {
        let closed = match e.kind {
            EntryKind::Data { frame_offset, .. } => {
                let same = matches!(
                    self.frame.first().map(|h| h.kind),
                    Some(EntryKind::Data { frame_offset: o, .. }) if o == frame_offset
                );
                let closed = if same { Ok(()) } else { self.close_frame() };
                self.frame.push(*e);
                closed
            }
            EntryKind::Zero { .. } => {
                self.zero_blocks += e.count();
                self.close_frame()
            }
        };
        if let Some(at) = self.image.as_ref().map(ImageHasher::position)
            && at != e.block
        {
            self.image = None;
            closed?;
            return Err(FormatError::corrupt(
                "index",
                format!("full archive holds no entry for blocks {at}..{}", e.block),
            ));
        }
        if let Some(h) = &mut self.image {
            match e.kind {
                EntryKind::Data { digest, .. } => h.data(&digest),
                EntryKind::Zero { .. } => h.zeros(e.count()),
            }
        }
        closed
    }

    fn close_frame(&mut self) -> Result<(), FormatError> {
        let group = std::mem::take(&mut self.frame);
        let Some(&IndexEntry {
            kind:
                EntryKind::Data {
                    frame,
                    frame_offset,
                    frame_len,
                    ..
                },
            ..
        }) = group.first()
        else {
            return Ok(());
        };
        self.data_blocks += group.len() as u64;
        self.frame_bytes += u64::from(frame_len);
        let needed = frame_content_len(&self.geometry, &group, frame_offset)?;
        // A raw frame's content is its stored bytes: the index alone shows a wrong
        // length (a zstd frame's content size is checked as it is decoded).
        if frame == FrameKind::Raw {
            let inner = frame_len.checked_sub(self.tag_len).unwrap_or(u32::MAX);
            check_frame_content(frame_offset, inner as usize, needed)?;
        }
        self.body.add(frame_offset, u64::from(frame_len))
    }

    /// Ends the check once every entry was pushed.
    ///
    /// # Errors
    /// The first of: a problem with the last frame, trailer counts that differ from
    /// the index ([`FormatError::Corrupt`]), frames and segments that do not tile the
    /// body, a full archive that does not cover the volume, or whose image digest
    /// differs ([`FormatError::ChecksumMismatch`]).
    pub fn finish(mut self) -> Result<(), FormatError> {
        self.close_frame()?;
        let t = &self.trailer;
        let (data, zero, bytes) = (self.data_blocks, self.zero_blocks, self.frame_bytes);
        if (data, zero, bytes) != (t.data_blocks, t.zero_blocks, t.frame_bytes) {
            return Err(FormatError::corrupt(
                "trailer",
                format!(
                    "counts {} data blocks, {} zero blocks, {} frame bytes; the index has {data}, {zero}, {bytes}",
                    t.data_blocks, t.zero_blocks, t.frame_bytes
                ),
            ));
        }
        self.body.finish(t.body_offset..t.directory_offset)?;
        let Some(h) = self.image else {
            return Ok(());
        };
        let actual = h.finish().map_err(|e| {
            FormatError::corrupt(
                "index",
                format!("full archive does not cover the volume: {e}"),
            )
        })?;
        if actual != t.image_digest {
            return Err(FormatError::ChecksumMismatch {
                what: "image".into(),
                expected: t.image_digest,
                actual,
            });
        }
        Ok(())
    }
}

/// The runs of an archive's body covered by frames and segments so far, keyed by start.
#[derive(Default)]
struct Tiling(BTreeMap<u64, u64>);

impl Tiling {
    /// Adds bytes `offset .. offset + len`, merging with the runs it touches.
    fn add(&mut self, offset: u64, len: u64) -> Result<(), FormatError> {
        let end = offset.saturating_add(len);
        let before = self.0.range(..=offset).next_back().map(|(&s, &e)| (s, e));
        let after = self.0.range(offset + 1..).next().map(|(&s, &e)| (s, e));
        if before.is_some_and(|(_, e)| e > offset) || after.is_some_and(|(s, _)| s < end) {
            return Err(FormatError::corrupt(
                "body",
                format!("frame or segment at offset {offset} overlaps another"),
            ));
        }
        let (mut start, mut stop) = (offset, end);
        if let Some((s, _)) = before.filter(|&(_, e)| e == offset) {
            self.0.remove(&s);
            start = s;
        }
        if let Some((s, e)) = after.filter(|&(s, _)| s == end) {
            self.0.remove(&s);
            stop = e;
        }
        self.0.insert(start, stop);
        Ok(())
    }

    /// Checks that the runs are exactly `body`.
    fn finish(&self, body: Range<u64>) -> Result<(), FormatError> {
        let mut at = body.start;
        for (&offset, &end) in &self.0 {
            if offset != at {
                return Err(FormatError::corrupt(
                    "body",
                    format!("gap or overlap at offset {at} (next frame or segment at {offset})"),
                ));
            }
            at = end;
        }
        if at != body.end {
            return Err(FormatError::corrupt(
                "body",
                format!(
                    "frames and segments end at {at}, directory starts at {}",
                    body.end
                ),
            ));
        }
        Ok(())
    }
}

/// Checks a frame's content length as the frame declares it (its `frame_len` when raw,
/// its zstd `Frame_Content_Size`) against what the blocks of its index entries need
/// (§6.1), when all of them are known.
///
/// # Errors
/// [`FormatError::Corrupt`] naming the frame.
pub fn check_frame_content(
    frame_offset: u64,
    declared: usize,
    needed: usize,
) -> Result<(), FormatError> {
    if declared != needed {
        return Err(FormatError::corrupt(
            "frame",
            format!(
                "frame at {frame_offset} declares {declared} content bytes, its blocks need {needed}"
            ),
        ));
    }
    Ok(())
}

/// Checks that a decoded frame holding block `block` at `slot`, of an archive with
/// `geometry`, is whole blocks from its first block (§6.1: a frame's content is its
/// blocks' bytes in order), as far as one block shows it: its content ends on a block
/// boundary, or at the end of the volume. For a reader that decodes a frame without
/// every entry of it at hand (a restore reading part of an older archive).
///
/// # Errors
/// [`FormatError::Corrupt`] naming the frame's first block.
pub fn check_frame_extent(
    geometry: &Geometry,
    content_len: usize,
    block: u64,
    slot: u16,
) -> Result<(), FormatError> {
    let first = block.saturating_sub(u64::from(slot));
    let end = geometry.offset(first).saturating_add(content_len as u64);
    let bs = u64::from(geometry.block_size().get());
    if end > geometry.size() || (!end.is_multiple_of(bs) && end != geometry.size()) {
        return Err(FormatError::corrupt(
            "frame",
            format!(
                "the frame from block {first} declares {content_len} content bytes, not whole blocks of the volume"
            ),
        ));
    }
    Ok(())
}

/// The check of each block cut out of a decoded frame (§13.3, frames and blocks): it
/// lies inside the frame, its digest (plain or keyed) is its entry's digest, and it is
/// not all zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockCheck {
    geometry: Geometry,
    digester: Digester,
    /// The digest of an all-zero block of full length.
    zero: Digest,
}

impl BlockCheck {
    /// The check for blocks of a volume with `geometry` whose digests `digester`
    /// computes.
    pub fn new(geometry: Geometry, digester: &Digester) -> Self {
        BlockCheck {
            geometry,
            zero: digester.zero_block(u64::from(geometry.block_size().get())),
            digester: digester.clone(),
        }
    }

    /// The geometry checked against.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// The digest function checked with.
    pub fn digester(&self) -> &Digester {
        &self.digester
    }

    /// Cuts block `block` (at `slot`) out of the decoded frame `content` and checks it
    /// against `digest`.
    ///
    /// # Errors
    /// [`FormatError::ChecksumMismatch`] naming the block, or [`FormatError::Corrupt`]
    /// for a block outside the frame or stored as data though all zero.
    pub fn block<'a>(
        &self,
        content: &'a [u8],
        block: u64,
        slot: u16,
        digest: Digest,
    ) -> Result<&'a [u8], FormatError> {
        let bs = u64::from(self.geometry.block_size().get());
        let start = u64::from(slot) * bs;
        let len = self.geometry.block_len(block);
        let Some(data) = content.get(start as usize..(start + len) as usize) else {
            return Err(FormatError::corrupt(
                "frame",
                format!("block {block} at slot {slot} lies outside the frame"),
            ));
        };
        let actual = self.digester.block(data);
        if actual != digest {
            return Err(FormatError::ChecksumMismatch {
                what: format!("block {block}"),
                expected: digest,
                actual,
            });
        }
        // Only the volume's last block can be short: its zero digest is computed then.
        let zero = if len == bs {
            self.zero
        } else {
            self.digester.zero_block(len)
        };
        if digest == zero {
            return Err(FormatError::corrupt(
                "index",
                format!("block {block} is stored as data but is all zero"),
            ));
        }
        Ok(data)
    }
}

/// Reads a whole archive held in memory through the same stages as a ranged reader.
///
/// Used by tests, the test vectors and tools.
pub struct ArchiveReader<'a> {
    bytes: &'a [u8],
    /// The decoded header.
    pub header: Header,
    /// The decoded trailer.
    pub trailer: Trailer,
    directory: Vec<DirEntry>,
    geometry: Geometry,
    /// The key of an encrypted archive, when the repository key was given.
    key: Option<ArchiveKey>,
}

impl<'a> ArchiveReader<'a> {
    /// Opens an archive: [`check_ends`], [`check_header`], [`decode_directory`].
    /// An encrypted archive opens too, but only its structure can be read.
    ///
    /// # Errors
    /// The first [`FormatError`] found.
    pub fn open(bytes: &'a [u8]) -> Result<Self, FormatError> {
        Self::open_with(bytes, None)
    }

    /// Opens an archive as [`open`](Self::open) does, and an encrypted one with `key`
    /// (its data key unwrapped, so that its index and frames can be read).
    ///
    /// # Errors
    /// The first [`FormatError`] found; [`FormatError::Corrupt`] (`"encryption"`) for
    /// an encrypted archive whose data key `key` does not unwrap.
    pub fn open_with(bytes: &'a [u8], key: Option<&RepoKey>) -> Result<Self, FormatError> {
        let (_, trailer) = check_ends(bytes, bytes, bytes.len() as u64)?;
        let (header, geometry) = check_header(&bytes[..trailer.body_offset as usize], &trailer)?;
        let dir = trailer.directory_offset as usize..bytes.len() - TRAILER_LEN;
        let directory = decode_directory(&bytes[dir], &trailer, &header, &geometry)?;
        let key = match key {
            Some(k) if header.encryption.is_some() => Some(ArchiveKey::open(k, &header)?),
            _ => None,
        };
        Ok(ArchiveReader {
            bytes,
            header,
            trailer,
            directory,
            geometry,
            key,
        })
    }

    /// The digest function of the archive's blocks (keyed in format 2; plain when the
    /// key was not given).
    pub fn digester(&self) -> Digester {
        self.key
            .as_ref()
            .map_or(Digester::Plain, |k| k.digester().clone())
    }

    /// The stored frame at `frame_offset` opened (format 2) as the 1.x frame it seals.
    fn frame(
        &self,
        frame_offset: u64,
        frame_len: u32,
        first_block: u64,
    ) -> Result<std::borrow::Cow<'a, [u8]>, FormatError> {
        let stored = self.stored(frame_offset, frame_len);
        match (&self.header.encryption, &self.key) {
            (None, _) => Ok(stored.into()),
            (Some(_), Some(k)) => Ok(k.open_frame(frame_offset, first_block, stored)?.into()),
            (Some(_), None) => Err(FormatError::InvalidInput(format!(
                "the sealed frame at offset {frame_offset} needs the archive's key"
            ))),
        }
    }

    /// The volume geometry.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn stored(&self, offset: u64, len: u32) -> &'a [u8] {
        &self.bytes[offset as usize..(offset + u64::from(len)) as usize]
    }

    /// All index entries, in block order.
    ///
    /// # Errors
    /// The first corrupt segment.
    pub fn entries(&self) -> Result<Vec<IndexEntry>, FormatError> {
        let body = self.trailer.body_offset..self.trailer.directory_offset;
        let mut out = Vec::new();
        for d in &self.directory {
            let seg = self.stored(d.offset, d.len() as u32);
            out.extend(decode_segment(
                seg,
                d,
                &self.geometry,
                body.clone(),
                self.key.as_ref(),
            )?);
        }
        Ok(out)
    }

    /// Content of the data block described by `entry`, checked with [`BlockCheck`].
    ///
    /// # Errors
    /// [`FormatError::Corrupt`] if the frame does not decode,
    /// [`FormatError::ChecksumMismatch`] if the block's digest differs.
    pub fn read_block(
        &self,
        entry: &IndexEntry,
        frame_entries: &[IndexEntry],
    ) -> Result<Vec<u8>, FormatError> {
        let EntryKind::Data {
            frame,
            frame_offset,
            frame_len,
            slot,
            digest,
        } = entry.kind
        else {
            return Ok(vec![0; self.geometry.block_len(entry.block) as usize]);
        };
        let first = entry.block - u64::from(slot);
        let content = decompress_frame(
            frame,
            &self.frame(frame_offset, frame_len, first)?,
            frame_content_len(&self.geometry, frame_entries, frame_offset)?,
        )?;
        BlockCheck::new(self.geometry, &self.digester())
            .block(&content, entry.block, slot, digest)
            .map(<[u8]>::to_vec)
    }

    /// A full verification: the whole index through [`IndexCheck`], and every frame
    /// decoded once with each of its blocks through [`BlockCheck`].
    ///
    /// # Errors
    /// The first problem found.
    pub fn verify(&self) -> Result<(), FormatError> {
        let entries = self.entries()?;
        let digester = self.digester();
        let blocks = BlockCheck::new(self.geometry, &digester);
        let mut index = IndexCheck::new(
            &self.header,
            &self.trailer,
            self.geometry,
            &self.directory,
            &digester,
        );
        let mut i = 0;
        while i < entries.len() {
            let EntryKind::Data {
                frame,
                frame_offset,
                frame_len,
                ..
            } = entries[i].kind
            else {
                index.push(&entries[i])?;
                i += 1;
                continue;
            };
            let group = frame_group(&entries[i..], frame_offset);
            for e in group {
                index.push(e)?;
            }
            let stored = self.frame(frame_offset, frame_len, entries[i].block)?;
            let needed = frame_content_len(&self.geometry, group, frame_offset)?;
            let declared = super::frame::frame_content_len(frame, &stored)?;
            check_frame_content(frame_offset, declared, needed)?;
            let content = decompress_frame(frame, &stored, needed)?;
            for g in group {
                let EntryKind::Data { slot, digest, .. } = g.kind else {
                    unreachable!("frame_group only returns data entries");
                };
                blocks.block(&content, g.block, slot, digest)?;
            }
            i += group.len();
        }
        index.finish()
    }
}

/// The run of entries at the start of `entries` that share the frame at `frame_offset`.
pub fn frame_group(entries: &[IndexEntry], frame_offset: u64) -> &[IndexEntry] {
    let n = entries
        .iter()
        .take_while(
            |e| matches!(e.kind, EntryKind::Data { frame_offset: o, .. } if o == frame_offset),
        )
        .count();
    &entries[..n]
}

/// Content length of the frame at `frame_offset` given all entries that reference it:
/// blocks of one frame are consecutive, numbered from slot 0, and agree on the frame's
/// kind and stored length.
///
/// # Errors
/// [`FormatError::Corrupt`] if the slots are not 0, 1, 2... on consecutive blocks or the
/// entries disagree about the frame.
pub fn frame_content_len(
    geometry: &Geometry,
    group: &[IndexEntry],
    frame_offset: u64,
) -> Result<usize, FormatError> {
    let Some(head) = group.first() else {
        return Ok(0);
    };
    let bad = |block: u64| {
        FormatError::corrupt(
            "index",
            format!(
                "frame at {frame_offset}: block {block} has a slot out of sequence or disagrees about the frame"
            ),
        )
    };
    let EntryKind::Data {
        frame: kind,
        frame_len: stored_len,
        ..
    } = head.kind
    else {
        return Err(bad(head.block));
    };
    let mut len = 0u64;
    for (i, e) in group.iter().enumerate() {
        match e.kind {
            EntryKind::Data {
                frame,
                frame_offset: o,
                frame_len,
                slot,
                ..
            } if o == frame_offset
                && frame == kind
                && frame_len == stored_len
                && usize::from(slot) == i
                && e.block == head.block + i as u64 =>
            {
                len += geometry.block_len(e.block);
            }
            _ => return Err(bad(e.block)),
        }
    }
    Ok(len as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{ArchiveWriter, BlockSize, EncodedFrame, FrameKind, compress_frame};

    fn small_archive() -> Vec<u8> {
        let h = crate::format::header::test_header(3 * 4096);
        let mut out = Vec::new();
        let mut w = ArchiveWriter::new(&h, None, &mut out).expect("header");
        let blocks = [vec![1u8; 4096], vec![2u8; 4096]];
        let mut c = zstd::bulk::Compressor::new(1).expect("zstd");
        let (kind, bytes) = compress_frame(&blocks.concat(), &mut c).expect("compress");
        let digests: Vec<Digest> = blocks.iter().map(|b| Digest::of(b)).collect();
        w.push_frame(
            &EncodedFrame {
                first_block: 0,
                kind,
                bytes,
                digests: digests.clone(),
            },
            &mut out,
        )
        .expect("frame");
        w.push_zeros(2, 1, &mut out).expect("zeros");
        let mut img = ImageHasher::new(h.geometry().expect("geometry"));
        digests.iter().for_each(|d| img.data(d));
        img.zeros(1);
        w.finish(img.finish().expect("image"), &mut out);
        out
    }

    #[test]
    fn a_small_archive_reads_back() {
        let a = small_archive();
        let r = ArchiveReader::open(&a).expect("open");
        r.verify().expect("verify");
        let e = r.entries().expect("entries");
        assert_eq!(e.len(), 3);
        assert_eq!(
            r.read_block(&e[1], &e[..2]).expect("block"),
            vec![2u8; 4096]
        );
        assert_eq!(
            r.read_block(&e[2], &[]).expect("zero block"),
            vec![0u8; 4096]
        );
        assert_eq!(
            frame_content_len(&r.geometry(), &e[..2], r.trailer.body_offset).expect("len"),
            8192
        );
    }

    #[test]
    fn a_cut_archive_is_truncated_not_foreign() {
        let a = small_archive();
        for n in [
            0,
            5,
            16,
            100,
            a.len() / 2,
            a.len() - TRAILER_LEN,
            a.len() - 1,
        ] {
            assert!(
                matches!(
                    ArchiveReader::open(&a[..n]),
                    Err(FormatError::Truncated { .. })
                ),
                "cut to {n}"
            );
        }
        let mut foreign = a.clone();
        foreign[0] = b'P';
        assert!(matches!(
            ArchiveReader::open(&foreign),
            Err(FormatError::BadMagic { .. })
        ));
    }

    #[test]
    fn frame_entries_must_agree() {
        let a = small_archive();
        let r = ArchiveReader::open(&a).expect("open");
        let e = r.entries().expect("entries");
        let g = r.geometry();
        let off = r.trailer.body_offset;
        let with = |f: fn(&mut EntryKind)| {
            let mut group = e[..2].to_vec();
            f(&mut group[1].kind);
            frame_content_len(&g, &group, off)
        };
        assert!(
            with(|k| if let EntryKind::Data { slot, .. } = k {
                *slot = 0
            })
            .is_err(),
            "slot out of sequence"
        );
        assert!(
            with(|k| if let EntryKind::Data { frame_len, .. } = k {
                *frame_len += 1
            })
            .is_err(),
            "frame length"
        );
        assert!(
            with(|k| if let EntryKind::Data { frame, .. } = k {
                *frame = FrameKind::Raw
            })
            .is_err(),
            "kind"
        );
        let mut gap = e[..2].to_vec();
        gap[1].block = 2;
        assert!(
            frame_content_len(&g, &gap, off).is_err(),
            "blocks not consecutive"
        );
        assert!(
            frame_content_len(&g, &e[2..], off).is_err(),
            "zero entry in a frame"
        );
    }

    #[test]
    fn directory_offsets_that_overflow_are_corrupt() {
        let g = Geometry::new(4096, BlockSize::new(4096).expect("valid"));
        let h = crate::format::header::test_header(4096);
        let mut dir = Vec::new();
        DirEntry {
            offset: u64::MAX - 10,
            entries: 1,
            first_block: 0,
            end_block: 1,
            sha256: Digest::default(),
            sealed: false,
        }
        .encode(&mut dir);
        let t = Trailer {
            body_offset: 100,
            directory_offset: 1000,
            directory_entries: 1,
            data_blocks: u64::MAX,
            zero_blocks: u64::MAX,
            frame_bytes: 0,
            header_sha256: Digest::default(),
            directory_sha256: Digest::of(&dir),
            image_digest: Digest::default(),
            trailer_sha256: Digest::default(),
        };
        assert!(matches!(
            decode_directory(&dir, &t, &h, &g),
            Err(FormatError::Corrupt { .. })
        ));
        let mut ok = Vec::new();
        DirEntry {
            offset: 100,
            entries: 1,
            first_block: 0,
            end_block: 1,
            sha256: Digest::default(),
            sealed: false,
        }
        .encode(&mut ok);
        let t = Trailer {
            directory_sha256: Digest::of(&ok),
            ..t
        };
        assert!(
            matches!(
                decode_directory(&ok, &t, &h, &g),
                Err(FormatError::Corrupt { .. })
            ),
            "counts overflow"
        );
        assert!(matches!(
            decode_directory(&ok[..10], &t, &h, &g),
            Err(FormatError::Truncated { .. })
        ));
    }

    #[test]
    fn frames_and_segments_must_tile_the_body() {
        let mut t = Tiling::default();
        t.add(300, 100).expect("segment");
        t.add(100, 100).expect("frame");
        assert!(t.add(150, 10).is_err(), "inside a frame");
        assert!(t.add(250, 60).is_err(), "overlapping a segment");
        assert!(t.finish(100..400).is_err(), "a gap at 200");
        t.add(200, 100).expect("the gap filled");
        assert_eq!(t.0.len(), 1, "runs merge");
        t.finish(100..400).expect("tiled");
        assert!(t.finish(100..401).is_err(), "short of the directory");
        Tiling::default().finish(50..50).expect("an empty body");
    }

    #[test]
    fn a_zero_block_stored_as_data_is_corrupt() {
        let g = Geometry::new(4096 + 100, BlockSize::new(4096).expect("valid"));
        let check = BlockCheck::new(g, &Digester::Plain);
        let zeros = vec![0u8; 4096];
        let full = Digest::of(&zeros);
        assert!(matches!(
            check.block(&zeros, 0, 0, full),
            Err(FormatError::Corrupt { what: "index", .. })
        ));
        let short = Digest::of(&zeros[..100]);
        assert!(matches!(
            check.block(&zeros[..100], 1, 0, short),
            Err(FormatError::Corrupt { what: "index", .. })
        ));
        let mut one = zeros.clone();
        one[7] = 1;
        assert_eq!(
            check.block(&one, 0, 0, Digest::of(&one)).expect("data"),
            &one[..]
        );
        assert!(matches!(
            check.block(&one, 0, 0, full),
            Err(FormatError::ChecksumMismatch { .. })
        ));
        assert!(
            check.block(&one, 0, 1, Digest::of(&one)).is_err(),
            "slot outside"
        );
    }

    #[test]
    fn the_index_check_finds_counts_gaps_and_image() {
        let a = small_archive();
        let r = ArchiveReader::open(&a).expect("open");
        let e = r.entries().expect("entries");
        let run = |trailer: &Trailer, entries: &[IndexEntry]| {
            let mut c = IndexCheck::new(
                &r.header,
                trailer,
                r.geometry(),
                &r.directory,
                &Digester::Plain,
            );
            entries.iter().try_for_each(|x| c.push(x))?;
            c.finish()
        };
        run(&r.trailer, &e).expect("the archive as written");
        let counts = Trailer {
            zero_blocks: 2,
            ..r.trailer
        };
        assert!(matches!(
            run(&counts, &e),
            Err(FormatError::Corrupt {
                what: "trailer",
                ..
            })
        ));
        let image = Trailer {
            image_digest: Digest::default(),
            ..r.trailer
        };
        assert!(matches!(
            run(&image, &e),
            Err(FormatError::ChecksumMismatch { .. })
        ));
        assert!(
            matches!(
                run(&r.trailer, &e[1..]),
                Err(FormatError::Corrupt { what: "index", .. })
            ),
            "a full archive without block 0"
        );
        assert!(run(&r.trailer, &e[..2]).is_err(), "nor its last block");
    }
}
