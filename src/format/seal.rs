//! Sealing and opening the frames and index segments of an encrypted (format 2.0)
//! archive (FORMAT.md section 18).
//!
//! Each archive has a fresh random 32-byte data key DK, wrapped in its header with age
//! to the repository's recipient. The AEAD key is
//! `HKDF-SHA256(salt = archive_id, ikm = DK, info = "thinarc-v2 aead")`, used with
//! ChaCha20-Poly1305. A frame's or segment's nonce is its kind byte, three zero bytes
//! and its offset (unique in the archive); its associated data binds it to the volume,
//! the archive, the seq, the volume name, its kind, offset and blocks, so a frame or
//! segment moved anywhere else fails authentication.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::{
    DigestKey, Digester, DirEntry, ENCRYPTION_SCHEME, EncryptionInfo, FormatError, Header, RepoKey,
    WriterKey,
};

/// Bytes the AEAD adds to what it seals (the Poly1305 tag).
pub const TAG_LEN: usize = 16;
/// HKDF `info` of the archive's AEAD key.
const AEAD_INFO: &[u8] = b"thinarc-v2 aead";
/// First bytes of every associated data.
const AAD_DOMAIN: &[u8] = b"thinarc-v2";
/// Kind byte of a frame (nonce and associated data).
const KIND_FRAME: u8 = 1;
/// Kind byte of an index segment.
const KIND_SEGMENT: u8 = 2;

/// The AEAD key of one archive, the associated data prefix of its header fields, and
/// the repository's keyed digest function.
pub struct ArchiveKey {
    aead: ChaCha20Poly1305,
    digester: Digester,
    /// `"thinarc-v2" || volume_id || archive_id || seq || name length || name`.
    aad_prefix: Vec<u8>,
}

impl std::fmt::Debug for ArchiveKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ArchiveKey(..)")
    }
}

fn id_bytes(what: &'static str, hex_id: &str) -> Result<[u8; 16], FormatError> {
    let mut out = [0u8; 16];
    hex::decode_to_slice(hex_id, &mut out).map_err(|_| {
        FormatError::corrupt("header", format!("{what} {hex_id:?} is not 32 hex digits"))
    })?;
    Ok(out)
}

impl ArchiveKey {
    /// The key of the archive with `header` and data key `dk`, in a repository with
    /// digest key `digest_key`.
    ///
    /// # Errors
    /// [`FormatError::Corrupt`] for header ids that are not 32 hex digits or a volume
    /// name longer than 65535 bytes.
    pub fn new(
        dk: &[u8; 32],
        header: &Header,
        digest_key: &DigestKey,
    ) -> Result<ArchiveKey, FormatError> {
        let archive_id = id_bytes("archive_id", &header.archive_id)?;
        let volume_id = id_bytes("volume_id", &header.volume_id)?;
        let hk = Hkdf::<Sha256>::new(Some(&archive_id), dk);
        let mut k = Zeroizing::new([0u8; 32]);
        hk.expand(AEAD_INFO, &mut k[..])
            .expect("32 bytes is a valid HKDF-SHA256 length");
        let name = header.volume_name.as_bytes();
        let name_len = u16::try_from(name.len())
            .map_err(|_| FormatError::corrupt("header", "volume name longer than 65535 bytes"))?;
        let mut aad_prefix = Vec::with_capacity(AAD_DOMAIN.len() + 42 + name.len());
        aad_prefix.extend_from_slice(AAD_DOMAIN);
        aad_prefix.extend_from_slice(&volume_id);
        aad_prefix.extend_from_slice(&archive_id);
        aad_prefix.extend_from_slice(&header.seq.to_le_bytes());
        aad_prefix.extend_from_slice(&name_len.to_le_bytes());
        aad_prefix.extend_from_slice(name);
        Ok(ArchiveKey {
            aead: ChaCha20Poly1305::new(Key::from_slice(&k[..])),
            digester: Digester::Keyed(digest_key.clone()),
            aad_prefix,
        })
    }

    /// The keyed digest function of the archive's blocks and image.
    pub fn digester(&self) -> &Digester {
        &self.digester
    }

    /// A fresh data key for a new archive with `header`, wrapped to `writer`'s
    /// recipient: the header gets its `encryption` map, and the archive's key is
    /// returned.
    ///
    /// # Errors
    /// [`FormatError::InvalidInput`] if age cannot wrap the key.
    pub fn create(writer: &WriterKey, header: &mut Header) -> Result<ArchiveKey, FormatError> {
        let mut dk = Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut dk[..]).expect("the OS random source works");
        let wrapped_key = age::encrypt(&writer.recipient, &dk[..])
            .map_err(|e| FormatError::InvalidInput(format!("wrapping the data key: {e}")))?;
        header.encryption = Some(EncryptionInfo {
            scheme: ENCRYPTION_SCHEME.into(),
            key_id: writer.key_id().to_string(),
            wrapped_key,
        });
        ArchiveKey::new(&dk, header, &writer.digest_key)
    }

    /// The key of an existing encrypted archive with `header`: its data key unwrapped
    /// with `key`.
    ///
    /// # Errors
    /// [`FormatError::Corrupt`] (`"encryption"`) when the header is not encrypted, is
    /// encrypted under another key pair, or its wrapped key does not unwrap.
    pub fn open(key: &RepoKey, header: &Header) -> Result<ArchiveKey, FormatError> {
        let Some(enc) = &header.encryption else {
            return Err(FormatError::corrupt(
                "encryption",
                "the archive is not encrypted",
            ));
        };
        if enc.key_id != key.key_id().to_string() {
            return Err(FormatError::corrupt(
                "encryption",
                format!(
                    "the archive is encrypted under key {}, not the repository's key {}",
                    enc.key_id,
                    key.key_id()
                ),
            ));
        }
        let dk = age::decrypt(key.identity(), &enc.wrapped_key)
            .map(Zeroizing::new)
            .map_err(|e| {
                FormatError::corrupt(
                    "encryption",
                    format!("the wrapped data key does not unwrap: {e}"),
                )
            })?;
        let dk: &[u8; 32] = dk[..].try_into().map_err(|_| {
            FormatError::corrupt(
                "encryption",
                format!("the wrapped data key holds {} bytes, not 32", dk.len()),
            )
        })?;
        ArchiveKey::new(dk, header, &key.writer().digest_key)
    }

    fn nonce(kind: u8, offset: u64) -> Nonce {
        let mut n = [0u8; 12];
        n[0] = kind;
        n[4..].copy_from_slice(&offset.to_le_bytes());
        Nonce::from(n)
    }

    fn aad(&self, kind: u8, offset: u64, first_block: u64, segment: Option<(u64, u32)>) -> Vec<u8> {
        let mut aad = Vec::with_capacity(self.aad_prefix.len() + 29);
        aad.extend_from_slice(&self.aad_prefix);
        aad.push(kind);
        aad.extend_from_slice(&offset.to_le_bytes());
        aad.extend_from_slice(&first_block.to_le_bytes());
        if let Some((end_block, entries)) = segment {
            aad.extend_from_slice(&end_block.to_le_bytes());
            aad.extend_from_slice(&entries.to_le_bytes());
        }
        aad
    }

    fn seal(&self, kind: u8, offset: u64, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        self.aead
            .encrypt(&Self::nonce(kind, offset), Payload { msg: plain, aad })
            .expect("ChaCha20-Poly1305 seals any length the format allows")
    }

    fn open_bytes(
        &self,
        kind: u8,
        offset: u64,
        aad: &[u8],
        stored: &[u8],
    ) -> Result<Vec<u8>, FormatError> {
        let what = if kind == KIND_FRAME {
            "frame"
        } else {
            "index segment"
        };
        if stored.len() < TAG_LEN {
            return Err(FormatError::Truncated {
                what,
                needed: TAG_LEN as u64,
                available: stored.len() as u64,
            });
        }
        self.aead
            .decrypt(&Self::nonce(kind, offset), Payload { msg: stored, aad })
            .map_err(|_| {
                FormatError::corrupt(
                    what,
                    format!("{what} at offset {offset} fails authentication (altered, moved or from another archive)"),
                )
            })
    }

    /// Seals the 1.x stored frame `inner` (zstd or raw) written at `offset`, whose
    /// slot 0 is block `first_block`.
    pub fn seal_frame(&self, offset: u64, first_block: u64, inner: &[u8]) -> Vec<u8> {
        let aad = self.aad(KIND_FRAME, offset, first_block, None);
        self.seal(KIND_FRAME, offset, &aad, inner)
    }

    /// Opens the sealed frame at `offset` whose slot 0 is block `first_block`.
    ///
    /// # Errors
    /// [`FormatError::Corrupt`] (`"frame"`) when it fails authentication.
    pub fn open_frame(
        &self,
        offset: u64,
        first_block: u64,
        stored: &[u8],
    ) -> Result<Vec<u8>, FormatError> {
        let aad = self.aad(KIND_FRAME, offset, first_block, None);
        self.open_bytes(KIND_FRAME, offset, &aad, stored)
    }

    /// Seals the plain entries of the segment `dir` locates (whose `offset`,
    /// `first_block`, `end_block` and `entries` are set).
    pub fn seal_segment(&self, dir: &DirEntry, plain: &[u8]) -> Vec<u8> {
        let aad = self.aad(
            KIND_SEGMENT,
            dir.offset,
            dir.first_block,
            Some((dir.end_block, dir.entries)),
        );
        self.seal(KIND_SEGMENT, dir.offset, &aad, plain)
    }

    /// Opens the sealed segment `dir` locates.
    ///
    /// # Errors
    /// [`FormatError::Corrupt`] (`"index segment"`) when it fails authentication.
    pub fn open_segment(&self, dir: &DirEntry, stored: &[u8]) -> Result<Vec<u8>, FormatError> {
        let aad = self.aad(
            KIND_SEGMENT,
            dir.offset,
            dir.first_block,
            Some((dir.end_block, dir.entries)),
        );
        self.open_bytes(KIND_SEGMENT, dir.offset, &aad, stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::header::test_header;

    #[test]
    fn a_sealed_frame_opens_only_where_it_was_sealed() {
        let owner = RepoKey::generate();
        let mut h = test_header(8192);
        let key = ArchiveKey::create(owner.writer(), &mut h).expect("create");
        let sealed = key.seal_frame(100, 3, b"frame bytes");
        assert_eq!(sealed.len(), 11 + TAG_LEN);
        let again = ArchiveKey::open(&owner, &h).expect("unwrap");
        assert_eq!(
            again.open_frame(100, 3, &sealed).expect("open"),
            b"frame bytes"
        );
        assert!(again.open_frame(101, 3, &sealed).is_err(), "moved");
        assert!(again.open_frame(100, 4, &sealed).is_err(), "other block");
        let mut flipped = sealed.clone();
        *flipped.last_mut().expect("tag") ^= 1;
        assert!(again.open_frame(100, 3, &flipped).is_err(), "flipped tag");
        assert!(again.open_frame(100, 3, &sealed[..5]).is_err(), "truncated");
        let mut renamed = h.clone();
        renamed.volume_name = "w".into();
        let other = ArchiveKey::open(&owner, &renamed).expect("unwrap");
        assert!(
            other.open_frame(100, 3, &sealed).is_err(),
            "other volume name"
        );
        let mut reseq = h.clone();
        reseq.seq = 2;
        let other = ArchiveKey::open(&owner, &reseq).expect("unwrap");
        assert!(other.open_frame(100, 3, &sealed).is_err(), "other seq");
        assert!(
            ArchiveKey::open(&RepoKey::generate(), &h).is_err(),
            "another key pair"
        );
    }

    #[test]
    fn a_sealed_segment_is_bound_to_its_directory_entry_and_the_wrapped_key_checked() {
        let owner = RepoKey::generate();
        let mut h = test_header(8192);
        let key = ArchiveKey::create(owner.writer(), &mut h).expect("create");
        let dir = DirEntry {
            offset: 500,
            entries: 1,
            first_block: 0,
            end_block: 2,
            sha256: crate::format::Digest::default(),
            sealed: true,
        };
        let sealed = key.seal_segment(&dir, &[7; 64]);
        assert_eq!(sealed.len(), 64 + TAG_LEN);
        assert_eq!(key.open_segment(&dir, &sealed).expect("open"), vec![7; 64]);
        for moved in [
            DirEntry { offset: 564, ..dir },
            DirEntry {
                end_block: 1,
                ..dir
            },
            DirEntry {
                first_block: 1,
                ..dir
            },
        ] {
            assert!(key.open_segment(&moved, &sealed).is_err(), "{moved:?}");
        }
        assert!(
            key.open_frame(500, 0, &sealed).is_err(),
            "a segment is no frame at the same offset"
        );
        let mut bad = h.clone();
        if let Some(e) = bad.encryption.as_mut() {
            e.wrapped_key[40] ^= 1;
        }
        let e = ArchiveKey::open(&owner, &bad).expect_err("damaged wrapped key");
        assert!(e.to_string().contains("does not unwrap"), "{e}");
    }
}
