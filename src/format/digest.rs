//! SHA-256 block digests and the image digest of a point in time.

use std::fmt;

use sha2::{Digest as _, Sha256};

use super::{FormatError, Geometry, IMAGE_DIGEST_DOMAIN};

/// A SHA-256 digest, shown as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// SHA-256 of `data`.
    pub fn of(data: &[u8]) -> Digest {
        Digest(Sha256::digest(data).into())
    }

    /// Parses 64 hex digits.
    ///
    /// # Errors
    /// [`FormatError::Corrupt`] when `s` is not 64 hex digits.
    pub fn from_hex(s: &str) -> Result<Digest, FormatError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|e| {
            FormatError::corrupt("digest", format!("{s:?} is not 64 hex digits: {e}"))
        })?;
        Ok(Digest(out))
    }

    /// The digest as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

/// The digest of an all-zero block of `len` bytes (what a zero entry stands for).
pub fn zero_block_digest(len: u64) -> Digest {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    let mut h = Sha256::new();
    let mut left = len;
    while left > 0 {
        let n = left.min(ZEROS.len() as u64) as usize;
        h.update(&ZEROS[..n]);
        left -= n as u64;
    }
    Digest(h.finalize().into())
}

/// Computes the image digest of one point in time from its blocks, in block order.
///
/// The digest is SHA-256 over `"thinarc-image-v1" || size u64le || block_size u32le`
/// followed by one record per maximal run of zero blocks (`0x00 || count u64le`) and one
/// per data block (`0x01 || sha256(block)`). It only needs the per-block digests, so a
/// delta computes it without reading unchanged data, and a zero run costs O(1) whatever
/// its length. Consecutive zero runs fed separately are merged, so the result does not
/// depend on how an index happened to split them.
pub struct ImageHasher {
    sha: Sha256,
    zero_run: u64,
    next_block: u64,
    blocks: u64,
}

impl ImageHasher {
    /// Starts the digest of an image with `geometry`.
    pub fn new(geometry: Geometry) -> Self {
        let mut sha = Sha256::new();
        sha.update(IMAGE_DIGEST_DOMAIN);
        sha.update(geometry.size().to_le_bytes());
        sha.update(geometry.block_size().get().to_le_bytes());
        ImageHasher {
            sha,
            zero_run: 0,
            next_block: 0,
            blocks: geometry.blocks(),
        }
    }

    /// Index of the next block the hasher expects.
    pub fn position(&self) -> u64 {
        self.next_block
    }

    /// Adds `count` zero blocks.
    pub fn zeros(&mut self, count: u64) {
        self.zero_run += count;
        self.next_block += count;
    }

    /// Adds one data block by its digest.
    pub fn data(&mut self, digest: &Digest) {
        self.flush_zeros();
        self.sha.update([1u8]);
        self.sha.update(digest.0);
        self.next_block += 1;
    }

    fn flush_zeros(&mut self) {
        if self.zero_run > 0 {
            self.sha.update([0u8]);
            self.sha.update(self.zero_run.to_le_bytes());
            self.zero_run = 0;
        }
    }

    /// Finishes the digest.
    ///
    /// # Errors
    /// [`FormatError::InvalidInput`] if the blocks fed do not add up to the image.
    pub fn finish(mut self) -> Result<Digest, FormatError> {
        if self.next_block != self.blocks {
            return Err(FormatError::InvalidInput(format!(
                "image digest fed {} blocks, image has {}",
                self.next_block, self.blocks
            )));
        }
        self.flush_zeros();
        Ok(Digest(self.sha.finalize().into()))
    }
}
