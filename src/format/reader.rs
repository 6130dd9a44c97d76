//! Validating decoders for whole archives and for the pieces a ranged reader fetches.

use super::{
    DIR_ENTRY_LEN, Digest, DirEntry, END_MAGIC, EntryKind, FormatError, Geometry, Header,
    ImageHasher, IndexEntry, PREAMBLE_LEN, Preamble, TRAILER_LEN, Trailer, decode_segment,
    decompress_frame, zero_block_digest,
};

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

/// Decodes and validates the directory: checksum, segments in block order, inside the
/// body and not overlapping.
///
/// # Errors
/// [`FormatError::ChecksumMismatch`] or [`FormatError::Corrupt`].
pub fn decode_directory(
    bytes: &[u8],
    trailer: &Trailer,
    geometry: &Geometry,
) -> Result<Vec<DirEntry>, FormatError> {
    let expected_len = u64::from(trailer.directory_entries) * DIR_ENTRY_LEN as u64;
    if bytes.len() as u64 != expected_len {
        return Err(FormatError::Truncated {
            what: "directory",
            needed: expected_len,
            available: bytes.len() as u64,
        });
    }
    let actual = Digest::of(bytes);
    if actual != trailer.directory_sha256 {
        return Err(FormatError::ChecksumMismatch {
            what: "directory".into(),
            expected: trailer.directory_sha256,
            actual,
        });
    }
    let mut out: Vec<DirEntry> = Vec::with_capacity(trailer.directory_entries as usize);
    let (mut next_block, mut next_offset) = (0u64, trailer.body_offset);
    let mut blocks = 0u64;
    for chunk in bytes.chunks_exact(DIR_ENTRY_LEN) {
        let d = DirEntry::decode(chunk.try_into().expect("chunks_exact"))?;
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

/// Reads a whole archive held in memory, checking everything it touches.
///
/// Used by tests, the test vectors and tools; the repository reads the same structures
/// with range reads.
pub struct ArchiveReader<'a> {
    bytes: &'a [u8],
    /// The decoded header.
    pub header: Header,
    /// The decoded trailer.
    pub trailer: Trailer,
    directory: Vec<DirEntry>,
    geometry: Geometry,
}

impl<'a> ArchiveReader<'a> {
    /// Opens an archive: preamble (magic, version), trailer, layout, header checksum,
    /// header, directory.
    ///
    /// # Errors
    /// The first [`FormatError`] found.
    pub fn open(bytes: &'a [u8]) -> Result<Self, FormatError> {
        let pre = Preamble::decode(bytes)?;
        let min = (PREAMBLE_LEN + TRAILER_LEN) as u64 + u64::from(pre.header_len);
        if (bytes.len() as u64) < min {
            return Err(FormatError::Truncated {
                what: "archive",
                needed: min,
                available: bytes.len() as u64,
            });
        }
        let tail = &bytes[bytes.len() - TRAILER_LEN..];
        if tail[TRAILER_LEN - END_MAGIC.len()..] != END_MAGIC {
            // The preamble is fine, so this is an archive whose end is missing: most
            // often an interrupted write, which must be reported as such, not as "not
            // an archive". Its real length is unknown; it needs at least one more byte.
            return Err(FormatError::Truncated {
                what: "archive without end magic",
                needed: bytes.len() as u64 + 1,
                available: bytes.len() as u64,
            });
        }
        let trailer = Trailer::decode(tail)?;
        trailer.check_layout(bytes.len() as u64)?;
        let head_end = PREAMBLE_LEN + pre.header_len as usize;
        if trailer.body_offset != head_end as u64 {
            return Err(FormatError::corrupt(
                "trailer",
                format!(
                    "body offset {} but header ends at {head_end}",
                    trailer.body_offset
                ),
            ));
        }
        let actual = Digest::of(&bytes[..head_end]);
        if actual != trailer.header_sha256 {
            return Err(FormatError::ChecksumMismatch {
                what: "header".into(),
                expected: trailer.header_sha256,
                actual,
            });
        }
        let header = Header::decode(&bytes[PREAMBLE_LEN..head_end])?;
        let geometry = header.geometry()?;
        let dir_start = trailer.directory_offset as usize;
        let directory = decode_directory(
            &bytes[dir_start..bytes.len() - TRAILER_LEN],
            &trailer,
            &geometry,
        )?;
        Ok(ArchiveReader {
            bytes,
            header,
            trailer,
            directory,
            geometry,
        })
    }

    /// The volume geometry.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// All index entries, in block order.
    ///
    /// # Errors
    /// The first corrupt segment.
    pub fn entries(&self) -> Result<Vec<IndexEntry>, FormatError> {
        let body = self.trailer.body_offset..self.trailer.directory_offset;
        let mut out = Vec::new();
        for d in &self.directory {
            let seg = &self.bytes[d.offset as usize..(d.offset + d.len()) as usize];
            out.extend(decode_segment(seg, d, &self.geometry, body.clone())?);
        }
        Ok(out)
    }

    /// Content of the data block described by `entry`, checked against its digest.
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
        let stored =
            &self.bytes[frame_offset as usize..(frame_offset + u64::from(frame_len)) as usize];
        let content = decompress_frame(
            frame,
            stored,
            frame_content_len(&self.geometry, frame_entries, frame_offset)?,
        )?;
        block_from_frame(&self.geometry, &content, entry.block, slot, digest).map(<[u8]>::to_vec)
    }

    /// Checks every block of the archive against its digest (decoding each frame once),
    /// that no data block is all zero, that the trailer's counts match the index, that
    /// frames and segments tile the body exactly and, for a full archive, that the image
    /// digest recomputed from the blocks matches the trailer.
    ///
    /// # Errors
    /// The first problem found.
    pub fn verify(&self) -> Result<(), FormatError> {
        let entries = self.entries()?;
        let bs = u64::from(self.geometry.block_size().get());
        let zero_full = zero_block_digest(bs);
        let mut hasher = ImageHasher::new(self.geometry);
        // Byte ranges of segments and frames: together they must tile the body.
        let mut pieces: Vec<(u64, u64)> =
            self.directory.iter().map(|d| (d.offset, d.len())).collect();
        let (mut data_blocks, mut zero_blocks, mut frame_bytes) = (0u64, 0u64, 0u64);
        let mut i = 0;
        while i < entries.len() {
            let e = entries[i];
            let EntryKind::Data {
                frame,
                frame_offset,
                frame_len,
                ..
            } = e.kind
            else {
                hasher.zeros(e.count());
                zero_blocks += e.count();
                i += 1;
                continue;
            };
            let group = frame_group(&entries[i..], frame_offset);
            let stored =
                &self.bytes[frame_offset as usize..(frame_offset + u64::from(frame_len)) as usize];
            let content_len = frame_content_len(&self.geometry, group, frame_offset)?;
            // Ranged readers size a frame from its own header (the zstd content size),
            // so it must agree with what the index implies.
            let declared = super::frame::frame_content_len(frame, stored)?;
            if declared != content_len {
                return Err(FormatError::corrupt(
                    "frame",
                    format!(
                        "frame at {frame_offset} declares {declared} content bytes, its blocks need {content_len}"
                    ),
                ));
            }
            let content = decompress_frame(frame, stored, content_len)?;
            for g in group {
                let EntryKind::Data { slot, digest, .. } = g.kind else {
                    unreachable!("frame_group only returns data entries");
                };
                let block = block_from_frame(&self.geometry, &content, g.block, slot, digest)?;
                let len = block.len() as u64;
                if digest
                    == if len == bs {
                        zero_full
                    } else {
                        zero_block_digest(len)
                    }
                {
                    return Err(FormatError::corrupt(
                        "index",
                        format!("block {} is stored as data but is all zero", g.block),
                    ));
                }
                hasher.data(&digest);
            }
            pieces.push((frame_offset, u64::from(frame_len)));
            data_blocks += group.len() as u64;
            frame_bytes += u64::from(frame_len);
            i += group.len();
        }
        let t = &self.trailer;
        if (data_blocks, zero_blocks, frame_bytes) != (t.data_blocks, t.zero_blocks, t.frame_bytes)
        {
            return Err(FormatError::corrupt(
                "trailer",
                format!(
                    "counts {} data blocks, {} zero blocks, {} frame bytes; the index has {data_blocks}, {zero_blocks}, {frame_bytes}",
                    t.data_blocks, t.zero_blocks, t.frame_bytes
                ),
            ));
        }
        pieces.sort_unstable();
        let mut at = t.body_offset;
        for (offset, len) in pieces {
            if offset != at {
                return Err(FormatError::corrupt(
                    "body",
                    format!("gap or overlap at offset {at} (next frame or segment at {offset})"),
                ));
            }
            at = offset + len;
        }
        if at != t.directory_offset {
            return Err(FormatError::corrupt(
                "body",
                format!(
                    "frames and segments end at {at}, directory starts at {}",
                    t.directory_offset
                ),
            ));
        }
        if self.header.parent.is_none() {
            let actual = hasher.finish().map_err(|e| {
                FormatError::corrupt(
                    "index",
                    format!("full archive does not cover the volume: {e}"),
                )
            })?;
            if actual != self.trailer.image_digest {
                return Err(FormatError::ChecksumMismatch {
                    what: "image".into(),
                    expected: self.trailer.image_digest,
                    actual,
                });
            }
        }
        Ok(())
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

/// Cuts block `block` (at `slot`) out of a decoded frame and checks its digest.
///
/// # Errors
/// [`FormatError::ChecksumMismatch`] naming the block.
pub fn block_from_frame<'a>(
    geometry: &Geometry,
    content: &'a [u8],
    block: u64,
    slot: u16,
    digest: Digest,
) -> Result<&'a [u8], FormatError> {
    let bs = u64::from(geometry.block_size().get());
    let start = u64::from(slot) * bs;
    let end = start + geometry.block_len(block);
    let Some(data) = content.get(start as usize..end as usize) else {
        return Err(FormatError::corrupt(
            "frame",
            format!("block {block} at slot {slot} lies outside the frame"),
        ));
    };
    let actual = Digest::of(data);
    if actual != digest {
        return Err(FormatError::ChecksumMismatch {
            what: format!("block {block}"),
            expected: digest,
            actual,
        });
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{ArchiveWriter, BlockSize, EncodedFrame, FrameKind, compress_frame};

    fn small_archive() -> Vec<u8> {
        let h = crate::format::header::test_header(3 * 4096);
        let mut out = Vec::new();
        let mut w = ArchiveWriter::new(&h, &mut out).expect("header");
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
        let mut dir = Vec::new();
        DirEntry {
            offset: u64::MAX - 10,
            entries: 1,
            first_block: 0,
            end_block: 1,
            sha256: Digest::default(),
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
            decode_directory(&dir, &t, &g),
            Err(FormatError::Corrupt { .. })
        ));
        let mut ok = Vec::new();
        DirEntry {
            offset: 100,
            entries: 1,
            first_block: 0,
            end_block: 1,
            sha256: Digest::default(),
        }
        .encode(&mut ok);
        let t = Trailer {
            directory_sha256: Digest::of(&ok),
            ..t
        };
        assert!(
            matches!(
                decode_directory(&ok, &t, &g),
                Err(FormatError::Corrupt { .. })
            ),
            "counts overflow"
        );
        assert!(matches!(
            decode_directory(&ok[..10], &t, &g),
            Err(FormatError::Truncated { .. })
        ));
    }
}
