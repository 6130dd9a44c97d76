//! Block digests and the image digest of a point in time: SHA-256 in format 1, keyed
//! (HMAC-SHA256 under the repository's digest key) in format 2 (FORMAT.md section 18).

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::{Digest as _, Sha256};

use super::{DigestKey, FormatError, Geometry, IMAGE_DIGEST_DOMAIN, IMAGE_DIGEST_DOMAIN_KEYED};

type HmacSha256 = Hmac<Sha256>;

/// The digest function of an archive's blocks and image: plain SHA-256 (format 1.x,
/// unencrypted repositories) or HMAC-SHA256 under the repository's digest key (format
/// 2.0), so that stored digests reveal nothing about content to someone without it.
/// Writers, readers and the source hashers all take one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Digester {
    /// SHA-256.
    #[default]
    Plain,
    /// HMAC-SHA256 under the digest key.
    Keyed(DigestKey),
}

impl Digester {
    /// The digest function of an archive written with `key` (`None`: unencrypted).
    pub fn for_key(key: Option<&DigestKey>) -> Digester {
        key.map_or(Digester::Plain, |k| Digester::Keyed(k.clone()))
    }

    /// Whether the digests are keyed.
    pub fn is_keyed(&self) -> bool {
        matches!(self, Digester::Keyed(_))
    }

    fn state(&self) -> DigestState {
        match self {
            Digester::Plain => DigestState::Plain(Sha256::new()),
            Digester::Keyed(k) => DigestState::Keyed(
                HmacSha256::new_from_slice(k.as_bytes()).expect("HMAC takes any key length"),
            ),
        }
    }

    /// The digest of one block's bytes.
    pub fn block(&self, data: &[u8]) -> Digest {
        match self {
            Digester::Plain => Digest::of(data),
            Digester::Keyed(_) => {
                let mut s = self.state();
                s.update(data);
                s.finish()
            }
        }
    }

    /// The digest of an all-zero block of `len` bytes (what a zero entry stands for).
    pub fn zero_block(&self, len: u64) -> Digest {
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        let mut s = self.state();
        let mut left = len;
        while left > 0 {
            let n = left.min(ZEROS.len() as u64) as usize;
            s.update(&ZEROS[..n]);
            left -= n as u64;
        }
        s.finish()
    }
}

/// A running plain or keyed digest.
enum DigestState {
    Plain(Sha256),
    Keyed(HmacSha256),
}

impl DigestState {
    fn update(&mut self, data: &[u8]) {
        match self {
            DigestState::Plain(h) => h.update(data),
            DigestState::Keyed(h) => h.update(data),
        }
    }

    fn finish(self) -> Digest {
        match self {
            DigestState::Plain(h) => Digest(h.finalize().into()),
            DigestState::Keyed(h) => Digest(h.finalize().into_bytes().into()),
        }
    }
}

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

/// The SHA-256 of an all-zero block of `len` bytes (what a zero entry stands for in
/// format 1).
pub fn zero_block_digest(len: u64) -> Digest {
    Digester::Plain.zero_block(len)
}

/// A stretch of a point's blocks as the image digest sees it: a run of zero blocks,
/// or one data block by its digest. Zero runs cost O(1) whatever their length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageRun {
    /// This many zero blocks.
    Zeros(u64),
    /// One data block.
    Data(Digest),
}

/// Computes the image digest of one point in time from its blocks, in block order.
///
/// The digest is SHA-256 over `"thinarc-image-v1" || size u64le || block_size u32le`
/// followed by one record per maximal run of zero blocks (`0x00 || count u64le`) and one
/// per data block (`0x01 || sha256(block)`). It only needs the per-block digests, so a
/// delta computes it without reading unchanged data, and a zero run costs O(1) whatever
/// its length. Consecutive zero runs fed separately are merged, so the result does not
/// depend on how an index happened to split them. Keyed (format 2): HMAC-SHA256 under
/// the digest key over the same stream, with domain `"thinarc-image-v2"` and keyed
/// block digests.
pub struct ImageHasher {
    sha: DigestState,
    zero_run: u64,
    next_block: u64,
    blocks: u64,
}

impl ImageHasher {
    /// Starts the plain (format 1) digest of an image with `geometry`.
    pub fn new(geometry: Geometry) -> Self {
        Self::with(geometry, &Digester::Plain)
    }

    /// Starts the digest of an image with `geometry` under `digester`.
    pub fn with(geometry: Geometry, digester: &Digester) -> Self {
        let mut sha = digester.state();
        sha.update(if digester.is_keyed() {
            IMAGE_DIGEST_DOMAIN_KEYED
        } else {
            IMAGE_DIGEST_DOMAIN
        });
        sha.update(&geometry.size().to_le_bytes());
        sha.update(&geometry.block_size().get().to_le_bytes());
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
        self.sha.update(&[1u8]);
        self.sha.update(&digest.0);
        self.next_block += 1;
    }

    /// Adds a run of blocks.
    pub fn feed(&mut self, run: &ImageRun) {
        match run {
            ImageRun::Zeros(n) => self.zeros(*n),
            ImageRun::Data(d) => self.data(d),
        }
    }

    fn flush_zeros(&mut self) {
        if self.zero_run > 0 {
            self.sha.update(&[0u8]);
            self.sha.update(&self.zero_run.to_le_bytes());
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
        Ok(self.sha.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::BlockSize;

    #[test]
    fn hex_round_trip() {
        let d = Digest::of(b"abc");
        assert_eq!(
            d.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Digest::from_hex(&d.to_hex()).expect("hex"), d);
        assert_eq!(
            Digest::from_hex(&d.to_hex().to_uppercase()).expect("hex"),
            d
        );
        assert!(Digest::from_hex("abc").is_err());
        assert!(Digest::from_hex(&"g".repeat(64)).is_err());
        assert_eq!(format!("{d}"), d.to_hex());
    }

    #[test]
    fn zero_block_digest_hashes_zeros() {
        for len in [0u64, 1, 4096, (64 << 10) + 1, 200_000] {
            assert_eq!(
                zero_block_digest(len),
                Digest::of(&vec![0; len as usize]),
                "{len}"
            );
        }
    }

    fn geometry(size: u64) -> Geometry {
        Geometry::new(size, BlockSize::new(4096).expect("valid"))
    }

    #[test]
    fn image_digest_matches_the_definition() {
        let d = Digest::of(b"block");
        let mut h = ImageHasher::new(geometry(3 * 4096));
        h.data(&d);
        h.zeros(1);
        h.zeros(1);
        assert_eq!(h.position(), 3);
        let mut want = Vec::new();
        want.extend_from_slice(b"thinarc-image-v1");
        want.extend_from_slice(&12288u64.to_le_bytes());
        want.extend_from_slice(&4096u32.to_le_bytes());
        want.push(1);
        want.extend_from_slice(&d.0);
        want.push(0);
        want.extend_from_slice(&2u64.to_le_bytes());
        assert_eq!(h.finish().expect("3 blocks"), Digest::of(&want));
    }

    #[test]
    fn zero_runs_are_merged_whatever_the_split() {
        let d = Digest::of(b"x");
        let run = |parts: &[u64]| {
            let mut h = ImageHasher::new(geometry(7 * 4096));
            h.data(&d);
            parts.iter().for_each(|&n| h.zeros(n));
            h.data(&d);
            h.finish().expect("7 blocks")
        };
        assert_eq!(run(&[5]), run(&[2, 3]));
        assert_eq!(run(&[5]), run(&[1, 0, 1, 1, 2]));
    }

    #[test]
    fn keyed_digests_are_hmac_sha256_under_the_digest_key() {
        let key = DigestKey::from_bytes([7; 32]);
        let keyed = Digester::Keyed(key.clone());
        let mac = |data: &[u8]| {
            let mut m = HmacSha256::new_from_slice(key.as_bytes()).expect("key");
            m.update(data);
            Digest(m.finalize().into_bytes().into())
        };
        assert_eq!(keyed.block(b"block"), mac(b"block"));
        assert_ne!(keyed.block(b"block"), Digest::of(b"block"));
        assert_eq!(keyed.zero_block(70_000), mac(&[0; 70_000]));
        let d = keyed.block(b"block");
        let mut h = ImageHasher::with(geometry(2 * 4096), &keyed);
        h.data(&d);
        h.zeros(1);
        let mut want = Vec::new();
        want.extend_from_slice(b"thinarc-image-v2");
        want.extend_from_slice(&8192u64.to_le_bytes());
        want.extend_from_slice(&4096u32.to_le_bytes());
        want.push(1);
        want.extend_from_slice(&d.0);
        want.push(0);
        want.extend_from_slice(&1u64.to_le_bytes());
        assert_eq!(h.finish().expect("2 blocks"), mac(&want));
    }

    #[test]
    fn a_digest_of_the_wrong_block_count_is_refused() {
        let mut h = ImageHasher::new(geometry(2 * 4096));
        h.zeros(3);
        assert!(h.finish().is_err());
        assert!(ImageHasher::new(geometry(1)).finish().is_err());
    }
}
