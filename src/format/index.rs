//! The block index: fixed-size entries grouped in segments, and the directory that
//! locates the segments.

use super::{
    ArchiveKey, DIR_ENTRY_LEN, Digest, ENTRY_LEN, FormatError, FrameKind, Geometry,
    MAX_FRAME_CONTENT, MAX_FRAME_LEN, SEGMENT_MAX_ENTRIES, TAG_LEN, le,
};

/// What an index entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A run of `count` blocks that read as zero; no payload.
    Zero { count: u32 },
    /// One data block, at position `slot` of the frame at `frame_offset`.
    Data {
        frame: FrameKind,
        frame_offset: u64,
        frame_len: u32,
        slot: u16,
        digest: Digest,
    },
}

/// One index entry: a data block or a run of zero blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// First block this entry covers.
    pub block: u64,
    /// What it holds.
    pub kind: EntryKind,
}

const KIND_ZERO: u8 = 0;
const KIND_ZSTD: u8 = 1;
const KIND_RAW: u8 = 2;

impl IndexEntry {
    /// Number of blocks the entry covers.
    pub fn count(&self) -> u64 {
        match self.kind {
            EntryKind::Zero { count } => u64::from(count),
            EntryKind::Data { .. } => 1,
        }
    }

    /// One past the last block the entry covers (saturating: `block` may come from a
    /// damaged file).
    pub fn end(&self) -> u64 {
        self.block.saturating_add(self.count())
    }

    /// Appends the 64-byte encoding.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (count, kind, slot, off, len, digest) = match self.kind {
            EntryKind::Zero { count } => (count, KIND_ZERO, 0u16, 0u64, 0u32, Digest::default()),
            EntryKind::Data {
                frame,
                frame_offset,
                frame_len,
                slot,
                digest,
            } => {
                let k = match frame {
                    FrameKind::Zstd => KIND_ZSTD,
                    FrameKind::Raw => KIND_RAW,
                };
                (1, k, slot, frame_offset, frame_len, digest)
            }
        };
        out.extend_from_slice(&self.block.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        out.push(kind);
        out.push(0);
        out.extend_from_slice(&slot.to_le_bytes());
        out.extend_from_slice(&off.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&digest.0);
    }

    /// Decodes one 64-byte entry and checks the rules that need no context.
    ///
    /// # Errors
    /// [`FormatError::Corrupt`] for an unknown kind, non-zero reserved bytes or
    /// inconsistent fields.
    pub fn decode(b: &[u8; ENTRY_LEN]) -> Result<Self, FormatError> {
        let block = u64::from_le_bytes(le(b, 0));
        let count = u32::from_le_bytes(le(b, 8));
        let kind = b[12];
        let slot = u16::from_le_bytes(le(b, 14));
        let frame_offset = u64::from_le_bytes(le(b, 16));
        let frame_len = u32::from_le_bytes(le(b, 24));
        let digest = Digest(le(b, 32));
        let bad = |d: String| FormatError::corrupt("index entry", format!("block {block}: {d}"));
        if b[13] != 0 || b[28..32] != [0; 4] {
            return Err(bad("reserved bytes are not zero".into()));
        }
        let frame = match kind {
            KIND_ZERO => {
                if count == 0
                    || slot != 0
                    || frame_offset != 0
                    || frame_len != 0
                    || digest != Digest::default()
                {
                    return Err(bad("zero run with count 0 or non-zero frame fields".into()));
                }
                return Ok(IndexEntry {
                    block,
                    kind: EntryKind::Zero { count },
                });
            }
            KIND_ZSTD => FrameKind::Zstd,
            KIND_RAW => FrameKind::Raw,
            k => return Err(bad(format!("unknown entry kind {k}"))),
        };
        if count != 1 || frame_len == 0 || u64::from(frame_len) > MAX_FRAME_LEN {
            return Err(bad(format!(
                "data entry with count {count}, frame length {frame_len}"
            )));
        }
        Ok(IndexEntry {
            block,
            kind: EntryKind::Data {
                frame,
                frame_offset,
                frame_len,
                slot,
                digest,
            },
        })
    }
}

/// Locates one index segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirEntry {
    /// Absolute offset of the segment in the archive.
    pub offset: u64,
    /// Number of entries in the segment.
    pub entries: u32,
    /// First block covered by the segment.
    pub first_block: u64,
    /// One past the last block covered by the segment.
    pub end_block: u64,
    /// SHA-256 of the segment bytes (as stored: sealed in format 2).
    pub sha256: Digest,
    /// Whether the segment is sealed (format 2.0: its stored bytes end with the AEAD
    /// tag). Not encoded: the archive's format says it.
    pub sealed: bool,
}

impl DirEntry {
    /// Length of the stored segment in bytes.
    pub fn len(&self) -> u64 {
        self.plain_len() + if self.sealed { TAG_LEN as u64 } else { 0 }
    }

    /// Length of the segment's plain entries in bytes.
    pub fn plain_len(&self) -> u64 {
        u64::from(self.entries) * ENTRY_LEN as u64
    }

    /// Whether the segment has no entries (never true for a decoded entry).
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Appends the 64-byte encoding.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.entries.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&self.first_block.to_le_bytes());
        out.extend_from_slice(&self.end_block.to_le_bytes());
        out.extend_from_slice(&self.sha256.0);
    }

    /// Decodes one 64-byte directory entry.
    ///
    /// # Errors
    /// [`FormatError::Corrupt`] for non-zero reserved bytes or a bad entry count.
    pub fn decode(b: &[u8; DIR_ENTRY_LEN]) -> Result<Self, FormatError> {
        let d = DirEntry {
            offset: u64::from_le_bytes(le(b, 0)),
            entries: u32::from_le_bytes(le(b, 8)),
            first_block: u64::from_le_bytes(le(b, 16)),
            end_block: u64::from_le_bytes(le(b, 24)),
            sha256: Digest(le(b, 32)),
            sealed: false,
        };
        if b[12..16] != [0; 4] {
            return Err(FormatError::corrupt(
                "directory",
                "reserved bytes are not zero",
            ));
        }
        if d.entries == 0
            || d.entries as usize > SEGMENT_MAX_ENTRIES
            || d.first_block >= d.end_block
        {
            return Err(FormatError::corrupt(
                "directory",
                format!(
                    "segment at {} has {} entries covering blocks {}..{}",
                    d.offset, d.entries, d.first_block, d.end_block
                ),
            ));
        }
        Ok(d)
    }
}

/// Checks one stored index segment's length and checksum against its directory entry:
/// all a reader without the key can check of a sealed segment.
///
/// # Errors
/// [`FormatError::Truncated`] or [`FormatError::ChecksumMismatch`].
pub fn check_segment_sum(bytes: &[u8], dir: &DirEntry) -> Result<(), FormatError> {
    if bytes.len() as u64 != dir.len() {
        return Err(FormatError::Truncated {
            what: "index segment",
            needed: dir.len(),
            available: bytes.len() as u64,
        });
    }
    let actual = Digest::of(bytes);
    if actual != dir.sha256 {
        return Err(FormatError::ChecksumMismatch {
            what: format!("index segment at offset {}", dir.offset),
            expected: dir.sha256,
            actual,
        });
    }
    Ok(())
}

/// Decodes and validates one index segment against its directory entry, opening it
/// with `key` when it is sealed.
///
/// Checks the segment checksum, that entries are sorted and non-overlapping, lie in
/// `dir.first_block..dir.end_block` and within the volume, that data frames lie inside
/// `body` (the byte range holding frames) and that a frame's slots fit its content.
///
/// # Errors
/// [`FormatError::ChecksumMismatch`] or [`FormatError::Corrupt`] (also a sealed
/// segment that fails authentication); [`FormatError::InvalidInput`] for a sealed
/// segment without its archive's key.
pub fn decode_segment(
    bytes: &[u8],
    dir: &DirEntry,
    geometry: &Geometry,
    body: std::ops::Range<u64>,
    key: Option<&ArchiveKey>,
) -> Result<Vec<IndexEntry>, FormatError> {
    check_segment_sum(bytes, dir)?;
    let opened;
    let bytes = match (dir.sealed, key) {
        (false, _) => bytes,
        (true, Some(key)) => {
            opened = key.open_segment(dir, bytes)?;
            &opened[..]
        }
        (true, None) => {
            return Err(FormatError::InvalidInput(format!(
                "the sealed index segment at offset {} needs the archive's key",
                dir.offset
            )));
        }
    };
    let blocks = geometry.blocks();
    let max_slots = MAX_FRAME_CONTENT / u64::from(geometry.block_size().get());
    let mut next = dir.first_block;
    let mut out = Vec::with_capacity(dir.entries as usize);
    for chunk in bytes.chunks_exact(ENTRY_LEN) {
        let e = IndexEntry::decode(chunk.try_into().expect("chunks_exact"))?;
        let bad =
            |d: String| FormatError::corrupt("index segment", format!("block {}: {d}", e.block));
        if e.block < next {
            return Err(bad(format!(
                "entries out of order or overlapping (expected block >= {next})"
            )));
        }
        if e.end() > dir.end_block || e.end() > blocks {
            return Err(bad(format!(
                "runs past segment end {} or volume end {blocks}",
                dir.end_block
            )));
        }
        if let EntryKind::Data {
            frame_offset,
            frame_len,
            slot,
            ..
        } = e.kind
        {
            let end = frame_offset.checked_add(u64::from(frame_len));
            if frame_offset < body.start || end.is_none_or(|end| end > body.end) {
                return Err(bad(format!(
                    "frame {frame_offset}+{frame_len} outside the block data {body:?}"
                )));
            }
            if u64::from(slot) >= max_slots || u64::from(slot) > e.block {
                return Err(bad(format!("slot {slot} impossible for this block size")));
            }
        }
        next = e.end();
        out.push(e);
    }
    if out.first().map(|e| e.block) != Some(dir.first_block) || next != dir.end_block {
        return Err(FormatError::corrupt(
            "index segment",
            format!(
                "entries do not span the directory's blocks {}..{}",
                dir.first_block, dir.end_block
            ),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::BlockSize;

    fn data(block: u64, frame_offset: u64, slot: u16) -> IndexEntry {
        IndexEntry {
            block,
            kind: EntryKind::Data {
                frame: FrameKind::Zstd,
                frame_offset,
                frame_len: 100,
                slot,
                digest: Digest::of(b"b"),
            },
        }
    }

    fn zero(block: u64, count: u32) -> IndexEntry {
        IndexEntry {
            block,
            kind: EntryKind::Zero { count },
        }
    }

    fn encoded(e: &IndexEntry) -> [u8; ENTRY_LEN] {
        let mut b = Vec::new();
        e.encode(&mut b);
        b.try_into().expect("64 bytes")
    }

    #[test]
    fn entries_round_trip_field_by_field() {
        let e = data(0x0102, 0x0a0b, 3);
        let b = encoded(&e);
        assert_eq!(&b[0..8], &0x0102u64.to_le_bytes());
        assert_eq!(&b[8..12], &1u32.to_le_bytes());
        assert_eq!(b[12], 1);
        assert_eq!(&b[14..16], &3u16.to_le_bytes());
        assert_eq!(&b[16..24], &0x0a0bu64.to_le_bytes());
        assert_eq!(&b[24..28], &100u32.to_le_bytes());
        assert_eq!(&b[32..], &Digest::of(b"b").0);
        assert_eq!(IndexEntry::decode(&b).expect("decode"), e);
        let raw = IndexEntry {
            kind: EntryKind::Data {
                frame: FrameKind::Raw,
                frame_offset: 9,
                frame_len: 4096,
                slot: 0,
                digest: Digest::of(b"r"),
            },
            block: 1,
        };
        assert_eq!(encoded(&raw)[12], 2);
        assert_eq!(IndexEntry::decode(&encoded(&raw)).expect("decode"), raw);
        let z = zero(5, 7);
        let zb = encoded(&z);
        assert_eq!(zb[12], 0);
        assert_eq!(&zb[13..], &[0; 51]);
        assert_eq!(IndexEntry::decode(&zb).expect("decode"), z);
        assert_eq!((z.count(), z.end()), (7, 12));
        assert_eq!(zero(u64::MAX, 5).end(), u64::MAX, "end saturates");
    }

    #[test]
    fn bad_entries_are_corrupt() {
        let d = encoded(&data(1, 10, 0));
        let z = encoded(&zero(1, 1));
        type Mutate = fn(&mut [u8; 64]);
        let cases: Vec<(&str, [u8; 64], Mutate)> = vec![
            ("unknown kind", d, |b| b[12] = 3),
            ("reserved byte 13", d, |b| b[13] = 1),
            ("reserved bytes 28..32", d, |b| b[30] = 1),
            ("data count 2", d, |b| b[8] = 2),
            ("data frame_len 0", d, |b| b[24..28].fill(0)),
            ("data frame too long", d, |b| {
                b[24..28].copy_from_slice(&(MAX_FRAME_LEN as u32 + 1).to_le_bytes())
            }),
            ("zero count 0", z, |b| b[8..12].fill(0)),
            ("zero with digest", z, |b| b[40] = 1),
            ("zero with slot", z, |b| b[14] = 1),
            ("zero with frame offset", z, |b| b[16] = 1),
            ("zero with frame length", z, |b| b[24] = 1),
        ];
        for (what, mut b, f) in cases {
            f(&mut b);
            assert!(
                matches!(IndexEntry::decode(&b), Err(FormatError::Corrupt { .. })),
                "{what}"
            );
        }
    }

    fn dir_entry(offset: u64, entries: &[IndexEntry]) -> (DirEntry, Vec<u8>) {
        let mut bytes = Vec::new();
        entries.iter().for_each(|e| e.encode(&mut bytes));
        let d = DirEntry {
            offset,
            entries: entries.len() as u32,
            first_block: entries[0].block,
            end_block: entries[entries.len() - 1].end(),
            sha256: Digest::of(&bytes),
            sealed: false,
        };
        (d, bytes)
    }

    #[test]
    fn directory_entries_round_trip_and_are_checked() {
        let (d, _) = dir_entry(1000, &[zero(0, 3), data(3, 16, 0)]);
        let mut b = Vec::new();
        d.encode(&mut b);
        assert_eq!(b.len(), DIR_ENTRY_LEN);
        let arr: [u8; 64] = b.clone().try_into().expect("64");
        assert_eq!(DirEntry::decode(&arr).expect("decode"), d);
        assert_eq!((d.len(), d.is_empty()), (128, false));
        let mut reserved = arr;
        reserved[12] = 1;
        let mut none = arr;
        none[8..12].fill(0);
        let mut many = arr;
        many[8..12].copy_from_slice(&(SEGMENT_MAX_ENTRIES as u32 + 1).to_le_bytes());
        let mut inverted = arr;
        inverted[24..32].fill(0);
        for (what, x) in [
            ("reserved", reserved),
            ("no entries", none),
            ("too many", many),
            ("first >= end", inverted),
        ] {
            assert!(
                matches!(DirEntry::decode(&x), Err(FormatError::Corrupt { .. })),
                "{what}"
            );
        }
    }

    fn geometry(blocks: u64) -> Geometry {
        Geometry::new(blocks * 4096, BlockSize::new(4096).expect("valid"))
    }

    #[test]
    fn segments_are_checked_against_directory_volume_and_body() {
        let g = geometry(10);
        let body = 16..5000;
        let good = [zero(0, 2), data(2, 100, 0), data(3, 100, 1), zero(5, 1)];
        let (d, b) = dir_entry(4000, &good);
        assert_eq!(
            decode_segment(&b, &d, &g, body.clone(), None).expect("good"),
            good
        );
        assert!(matches!(
            decode_segment(&b[..64], &d, &g, body.clone(), None),
            Err(FormatError::Truncated { .. })
        ));
        let mut flipped = b.clone();
        flipped[70] ^= 1;
        assert!(matches!(
            decode_segment(&flipped, &d, &g, body.clone(), None),
            Err(FormatError::ChecksumMismatch { .. })
        ));

        let bad: Vec<(&str, Vec<IndexEntry>)> = vec![
            ("out of order", vec![data(3, 100, 1), data(2, 100, 0)]),
            ("overlapping", vec![zero(0, 3), data(2, 100, 0)]),
            ("past the volume", vec![zero(8, 3)]),
            ("overflowing block", vec![zero(u64::MAX - 1, 5)]),
            ("frame outside the body", vec![data(0, 4990, 0)]),
            ("frame before the body", vec![data(0, 0, 0)]),
            ("slot beyond the block", vec![data(1, 100, 2)]),
            ("slot beyond the frame limit", vec![data(5000, 100, 4096)]),
        ];
        let big = geometry(10_000);
        for (what, entries) in bad {
            let (d, b) = dir_entry(4000, &entries);
            let g = if what.starts_with("slot beyond the frame") {
                &big
            } else {
                &g
            };
            assert!(
                matches!(
                    decode_segment(&b, &d, g, body.clone(), None),
                    Err(FormatError::Corrupt { .. })
                ),
                "{what}"
            );
        }
        // Entries must span exactly the directory's blocks.
        let (mut d, b) = dir_entry(4000, &good);
        d.end_block = 7;
        assert!(matches!(
            decode_segment(&b, &d, &g, body.clone(), None),
            Err(FormatError::Corrupt { .. })
        ));
        let shifted = [zero(1, 1), data(2, 100, 0)];
        let (mut d, b) = dir_entry(4000, &shifted);
        d.first_block = 0;
        assert!(
            decode_segment(&b, &d, &g, body, None).is_err(),
            "first entry after first_block"
        );
    }
}
