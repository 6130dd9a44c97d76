//! The fixed-size trailer at the end of every archive.

use super::{Digest, END_MAGIC, FormatError, TRAILER_LEN, le};

/// The trailer: where the index is, checksums of everything before it, the image digest
/// and counts. Its own SHA-256 (`trailer_sha256`) is the archive digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    /// Offset where the body (frames and segments) starts: 16 + header length.
    pub body_offset: u64,
    /// Offset of the directory.
    pub directory_offset: u64,
    /// Number of directory entries (index segments).
    pub directory_entries: u32,
    /// Blocks held as data.
    pub data_blocks: u64,
    /// Blocks held as zero.
    pub zero_blocks: u64,
    /// Bytes of stored frames.
    pub frame_bytes: u64,
    /// SHA-256 of preamble and header.
    pub header_sha256: Digest,
    /// SHA-256 of the directory.
    pub directory_sha256: Digest,
    /// Image digest of the point in time this archive completes.
    pub image_digest: Digest,
    /// SHA-256 of the trailer's first 144 bytes: the archive digest.
    pub trailer_sha256: Digest,
}

const CHECKED_LEN: usize = 144;

impl Trailer {
    /// Encodes the trailer, computing `trailer_sha256` from the other fields.
    pub fn encode(&mut self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.body_offset.to_le_bytes());
        out.extend_from_slice(&self.directory_offset.to_le_bytes());
        out.extend_from_slice(&self.directory_entries.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&self.data_blocks.to_le_bytes());
        out.extend_from_slice(&self.zero_blocks.to_le_bytes());
        out.extend_from_slice(&self.frame_bytes.to_le_bytes());
        out.extend_from_slice(&self.header_sha256.0);
        out.extend_from_slice(&self.directory_sha256.0);
        out.extend_from_slice(&self.image_digest.0);
        self.trailer_sha256 = Digest::of(&out[start..]);
        out.extend_from_slice(&self.trailer_sha256.0);
        out.extend_from_slice(&END_MAGIC);
        debug_assert_eq!(out.len() - start, TRAILER_LEN);
    }

    /// Decodes the last [`TRAILER_LEN`] bytes of an archive: end magic, then checksum.
    ///
    /// # Errors
    /// [`FormatError::Truncated`], [`FormatError::BadMagic`] (a truncated or foreign
    /// file), [`FormatError::ChecksumMismatch`] or [`FormatError::Corrupt`].
    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        if b.len() != TRAILER_LEN {
            return Err(FormatError::Truncated {
                what: "trailer",
                needed: TRAILER_LEN as u64,
                available: b.len() as u64,
            });
        }
        if b[176..184] != END_MAGIC {
            return Err(FormatError::BadMagic {
                expected: hex::encode(END_MAGIC),
                found: hex::encode(&b[176..184]),
            });
        }
        let stored = Digest(le(b, CHECKED_LEN));
        let actual = Digest::of(&b[..CHECKED_LEN]);
        if stored != actual {
            return Err(FormatError::ChecksumMismatch {
                what: "trailer".into(),
                expected: stored,
                actual,
            });
        }
        if b[20..24] != [0; 4] {
            return Err(FormatError::corrupt(
                "trailer",
                "reserved bytes are not zero",
            ));
        }
        Ok(Trailer {
            body_offset: u64::from_le_bytes(le(b, 0)),
            directory_offset: u64::from_le_bytes(le(b, 8)),
            directory_entries: u32::from_le_bytes(le(b, 16)),
            data_blocks: u64::from_le_bytes(le(b, 24)),
            zero_blocks: u64::from_le_bytes(le(b, 32)),
            frame_bytes: u64::from_le_bytes(le(b, 40)),
            header_sha256: Digest(le(b, 48)),
            directory_sha256: Digest(le(b, 80)),
            image_digest: Digest(le(b, 112)),
            trailer_sha256: stored,
        })
    }

    /// Total archive size implied by the trailer (saturating for a damaged trailer).
    pub fn archive_len(&self) -> u64 {
        self.directory_offset.saturating_add(
            u64::from(self.directory_entries) * super::DIR_ENTRY_LEN as u64 + TRAILER_LEN as u64,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Trailer {
        Trailer {
            body_offset: 300,
            directory_offset: 9000,
            directory_entries: 2,
            data_blocks: 10,
            zero_blocks: 20,
            frame_bytes: 8000,
            header_sha256: Digest::of(b"h"),
            directory_sha256: Digest::of(b"d"),
            image_digest: Digest::of(b"i"),
            trailer_sha256: Digest::default(),
        }
    }

    #[test]
    fn round_trip_and_archive_digest() {
        let mut t = sample();
        let mut b = Vec::new();
        t.encode(&mut b);
        assert_eq!(b.len(), TRAILER_LEN);
        assert_eq!(t.trailer_sha256, Digest::of(&b[..144]));
        assert_eq!(&b[176..], &END_MAGIC);
        assert_eq!(Trailer::decode(&b).expect("decode"), t);
        assert_eq!(t.archive_len(), 9000 + 128 + 184);
    }

    #[test]
    fn checks_in_order() {
        let mut b = Vec::new();
        sample().encode(&mut b);
        assert!(matches!(
            Trailer::decode(&b[1..]),
            Err(FormatError::Truncated { .. })
        ));
        let mut m = b.clone();
        m[183] ^= 1;
        m[0] ^= 1;
        assert!(
            matches!(Trailer::decode(&m), Err(FormatError::BadMagic { .. })),
            "end magic first"
        );
        let mut c = b.clone();
        c[20] = 1;
        assert!(
            matches!(
                Trailer::decode(&c),
                Err(FormatError::ChecksumMismatch { .. })
            ),
            "checksum second"
        );
        let sum = Digest::of(&c[..144]);
        c[144..176].copy_from_slice(&sum.0);
        assert!(
            matches!(Trailer::decode(&c), Err(FormatError::Corrupt { .. })),
            "reserved last"
        );
    }

    #[test]
    fn archive_len_saturates() {
        let t = Trailer {
            directory_offset: u64::MAX - 10,
            ..sample()
        };
        assert_eq!(t.archive_len(), u64::MAX);
    }
}
