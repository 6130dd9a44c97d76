//! An archive taken apart and laid out again: an invalid vector changes one part (a
//! frame, an entry, the header, a gap) and [`Parts::assemble`] recomputes every offset,
//! count and checksum, so that only the rule it meant to break is broken.

use thinarc::format::{
    ArchiveReader, Digest, DirEntry, EntryKind, IndexEntry, MAGIC, Trailer, VERSION_MAJOR,
};

/// The pieces of an archive, in the order the reference writer lays them out: preamble
/// and header, the frames, then the index segments, the directory and the trailer.
#[derive(Clone)]
pub struct Parts {
    /// Minor version in the preamble.
    pub minor: u16,
    /// The CBOR header (its length goes into the preamble).
    pub header: Vec<u8>,
    /// Stored frames, in body order.
    pub frames: Vec<Vec<u8>>,
    /// Bytes after the frames that no entry describes.
    pub gap: Vec<u8>,
    /// The index; a data entry's `frame_offset` is the number of its frame in `frames`.
    pub entries: Vec<IndexEntry>,
    /// Entries per segment.
    pub per_segment: usize,
    /// The trailer's image digest.
    pub image: Digest,
}

impl Parts {
    /// Takes a valid archive apart.
    pub fn of(bytes: &[u8]) -> Parts {
        let r = ArchiveReader::open(bytes).expect("a valid archive");
        let mut offsets: Vec<u64> = Vec::new();
        let mut frames = Vec::new();
        let entries = r
            .entries()
            .expect("entries")
            .into_iter()
            .map(|mut e| {
                if let EntryKind::Data {
                    frame_offset,
                    frame_len,
                    ..
                } = &mut e.kind
                {
                    let n = offsets.iter().position(|o| o == frame_offset);
                    let n = n.unwrap_or_else(|| {
                        let at = *frame_offset as usize;
                        frames.push(bytes[at..at + *frame_len as usize].to_vec());
                        offsets.push(*frame_offset);
                        offsets.len() - 1
                    });
                    *frame_offset = n as u64;
                }
                e
            })
            .collect();
        Parts {
            minor: u16::from_le_bytes([bytes[10], bytes[11]]),
            header: bytes[16..r.trailer.body_offset as usize].to_vec(),
            frames,
            gap: Vec::new(),
            entries,
            per_segment: 4096,
            image: r.trailer.image_digest,
        }
    }

    /// Replaces frame `n` by `bytes`, with its new stored length in its entries.
    pub fn set_frame(&mut self, n: usize, bytes: Vec<u8>) {
        for e in &mut self.entries {
            if let EntryKind::Data {
                frame_offset,
                frame_len,
                ..
            } = &mut e.kind
                && *frame_offset == n as u64
            {
                *frame_len = bytes.len() as u32;
            }
        }
        self.frames[n] = bytes;
    }

    /// Lays the archive out: frames, gap, segments of `per_segment` entries, directory,
    /// trailer with the counts the index gives and every checksum.
    pub fn assemble(&self) -> Vec<u8> {
        let mut v = MAGIC.to_vec();
        v.extend(VERSION_MAJOR.to_le_bytes());
        v.extend(self.minor.to_le_bytes());
        v.extend((self.header.len() as u32).to_le_bytes());
        v.extend(&self.header);
        let body_offset = v.len() as u64;
        let mut at = Vec::new();
        for f in &self.frames {
            at.push(v.len() as u64);
            v.extend(f);
        }
        v.extend(&self.gap);
        let (mut data_blocks, mut zero_blocks) = (0, 0);
        let entries: Vec<IndexEntry> = self
            .entries
            .iter()
            .map(|e| {
                let mut e = *e;
                match &mut e.kind {
                    EntryKind::Data { frame_offset, .. } => {
                        *frame_offset = at[*frame_offset as usize];
                        data_blocks += 1;
                    }
                    EntryKind::Zero { count } => zero_blocks += u64::from(*count),
                }
                e
            })
            .collect();
        let mut directory = Vec::new();
        for chunk in entries.chunks(self.per_segment) {
            let mut seg = Vec::new();
            chunk.iter().for_each(|e| e.encode(&mut seg));
            DirEntry {
                offset: v.len() as u64,
                entries: chunk.len() as u32,
                first_block: chunk[0].block,
                end_block: chunk[chunk.len() - 1].end(),
                sha256: Digest::of(&seg),
                sealed: false,
            }
            .encode(&mut directory);
            v.extend(seg);
        }
        let mut t = Trailer {
            body_offset,
            directory_offset: v.len() as u64,
            directory_entries: (directory.len() / 64) as u32,
            data_blocks,
            zero_blocks,
            frame_bytes: self.frames.iter().map(|f| f.len() as u64).sum(),
            header_sha256: Digest::of(&v[..body_offset as usize]),
            directory_sha256: Digest::of(&directory),
            image_digest: self.image,
            trailer_sha256: Digest::default(),
        };
        v.extend(&directory);
        t.encode(&mut v);
        v
    }
}
