//! Encrypted (format 2.0) vectors in `vectors/encrypted/` (FORMAT.md sections 16, 18).
//!
//! The published test key is `test-key.txt` (the repository key as a key slot wraps
//! it: the age identity, a newline, the digest key in hex) and the data key of every
//! vector is fixed: `sha256("thinarc test vector data key")`, wrapped once to the test
//! key's recipient into `data-key.age` (age wrapping is randomized, so both files are
//! made once and read back by later runs: the vectors stay byte for byte the same).
//!
//! `valid/NAME.tarc` opens and verifies with the test key; `NAME.json` gives the
//! header, the SHA-256 of every decoded block (`null` for a zero block), the keyed
//! image digest and the SHA-256 of the whole point. `invalid/NAME.tarc` is refused
//! with the test key; `NAME.json` gives the stage (`open` or `verify`) and a piece of
//! the error message.

use std::path::Path;

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use thinarc::format::{
    ArchiveKey, ArchiveReader, ArchiveWriter, Digest, ENCRYPTION_SCHEME, EncodedFrame,
    EncryptionInfo, Header, ImageHasher, PREAMBLE_LEN, RepoKey, TRAILER_LEN, Trailer,
    compress_frame,
};

use super::{BS, BSU, Generator, header, parent_of, text};

/// The test key and the fixed data key, made on the first run.
fn keys(dir: &Path) -> (RepoKey, [u8; 32], Vec<u8>) {
    let key_file = dir.join("test-key.txt");
    let key = match std::fs::read(&key_file) {
        Ok(b) => RepoKey::from_secret_bytes(&b).expect("test key"),
        Err(_) => {
            let k = RepoKey::generate();
            std::fs::create_dir_all(dir).expect("create dir");
            let mut text = k.to_secret_bytes().to_vec();
            text.push(b'\n');
            std::fs::write(&key_file, text).expect("write test key");
            k
        }
    };
    let dk: [u8; 32] = Sha256::digest(b"thinarc test vector data key").into();
    let wrapped_file = dir.join("data-key.age");
    let wrapped = match std::fs::read(&wrapped_file) {
        Ok(b) => b,
        Err(_) => {
            let w = age::encrypt(&key.writer().recipient, &dk).expect("wrap");
            std::fs::write(&wrapped_file, &w).expect("write wrapped key");
            w
        }
    };
    (key, dk, wrapped)
}

/// The blocks of a vector image (`None`: zero).
type Blocks = Vec<Option<Vec<u8>>>;

impl Generator {
    /// Writes an encrypted archive of `blocks` (frames of the runs `frames`, zero runs
    /// for `zeros`) with header `h`.
    fn build_sealed(
        &mut self,
        (key, dk, wrapped): (&RepoKey, &[u8; 32], &[u8]),
        h: &Header,
        blocks: &Blocks,
        runs: &[(u64, u64, bool)],
    ) -> (Vec<u8>, Trailer) {
        let mut h = h.clone();
        h.encryption = Some(EncryptionInfo {
            scheme: ENCRYPTION_SCHEME.into(),
            key_id: key.key_id().to_string(),
            wrapped_key: wrapped.to_vec(),
        });
        let ak = ArchiveKey::new(dk, &h, &key.writer().digest_key).expect("archive key");
        let digester = ak.digester().clone();
        let mut out = Vec::new();
        let mut w = ArchiveWriter::with_key(&h, ak, &mut out).expect("header");
        for &(first, count, data) in runs {
            if !data {
                w.push_zeros(first, count, &mut out).expect("zeros");
                continue;
            }
            let content: Vec<Vec<u8>> = (first..first + count)
                .map(|b| blocks[b as usize].clone().expect("data"))
                .collect();
            let (kind, bytes) =
                compress_frame(&content.concat(), &mut self.compressor).expect("compress");
            let frame = EncodedFrame {
                first_block: first,
                kind,
                bytes,
                digests: content.iter().map(|b| digester.block(b)).collect(),
            };
            w.push_frame(&frame, &mut out).expect("frame");
        }
        let mut img = ImageHasher::with(h.geometry().expect("geometry"), &digester);
        for b in blocks {
            match b {
                Some(d) => img.data(&digester.block(d)),
                None => img.zeros(1),
            }
        }
        let t = w.finish(img.finish().expect("image"), &mut out);
        (out, t)
    }

    pub(super) fn encrypted(&mut self) {
        let dir = self.out.join("encrypted");
        let (key, dk, wrapped) = keys(&dir);
        let k = (&key, &dk, &wrapped[..]);
        // enc-full: 6 blocks, a zstd frame of two text blocks, a zero block, a raw
        // frame of noise, two zero blocks.
        let mut rng = super::Rng(0x656e_6372_7970_7431);
        let full: Blocks = vec![
            Some(text("e0", BSU)),
            Some(text("e1", BSU)),
            None,
            Some(rng.noise(BSU)),
            None,
            None,
        ];
        let size = 6 * u64::from(BS);
        let hf = header("e0000000000000000000000000000001", 1, None, size);
        let runs = [(0, 2, true), (2, 1, false), (3, 1, true), (4, 2, false)];
        let (bf, tf) = self.build_sealed(k, &hf, &full, &runs);
        self.enc_valid("enc-full", &bf, &key, &full, &[]);
        // enc-delta: block 1 changes, block 4 gets data.
        let mut delta = full.clone();
        delta[1] = Some(text("e1-changed", BSU));
        delta[4] = Some(rng.noise(BSU));
        let hd = header(
            "e0000000000000000000000000000002",
            2,
            Some(parent_of(&hf, &tf)),
            size,
        );
        let (bd, _) = self.build_sealed(k, &hd, &delta, &[(1, 1, true), (4, 1, true)]);
        self.enc_valid("enc-delta", &bd, &key, &delta, &["enc-full"]);
        // The same point in another archive of the volume (another archive id): its
        // frames and segment lie at the same offsets.
        let h2 = header("e0000000000000000000000000000003", 3, None, size);
        let (b2, _) = self.build_sealed(k, &h2, &full, &runs);

        let r = ArchiveReader::open_with(&bf, Some(&key)).expect("open");
        let entries = r.entries().expect("entries");
        let (frame_start, frame_end) = entries
            .iter()
            .find_map(|e| match e.kind {
                thinarc::format::EntryKind::Data {
                    frame_offset,
                    frame_len,
                    ..
                } => Some((
                    frame_offset as usize,
                    (frame_offset + u64::from(frame_len)) as usize,
                )),
                _ => None,
            })
            .expect("a frame");
        let seg = tf.directory_offset as usize - (entries.len() * 64 + 16);

        let mut v = bf.clone();
        v[frame_end - 1] ^= 0x01;
        self.enc_invalid(
            "enc-flipped-tag",
            &v,
            "verify",
            "fails authentication",
            "enc-full with the last byte of its first frame's tag flipped",
        );
        let mut v = bf.clone();
        v[frame_start..frame_end].copy_from_slice(&b2[frame_start..frame_end]);
        self.enc_invalid("enc-frame-swapped", &v, "verify", "fails authentication",
            "enc-full with its first frame taken from another archive of the volume (same offset, same content)");
        let mut v = bf.clone();
        v[seg..tf.directory_offset as usize]
            .copy_from_slice(&b2[seg..tf.directory_offset as usize]);
        reseal(&mut v);
        self.enc_invalid("enc-segment-moved", &v, "verify", "index segment at offset",
            "enc-full with its index segment taken from another archive of the volume, checksums recomputed");
        let mut v = bf.clone();
        v.truncate(frame_end - 5);
        self.enc_invalid(
            "enc-truncated",
            &v,
            "open",
            "truncated",
            "enc-full cut inside its first frame's ciphertext",
        );
        let renamed = Header {
            volume_name: "vg0/vectorz".into(),
            ..header_of(&bf)
        };
        self.enc_invalid("enc-other-volume", &with_header(&bf, &renamed), "verify",
            "fails authentication",
            "enc-full relabelled as volume vg0/vectorz (same length), checksums recomputed: every frame and segment names the volume");
        let mut other_key = header_of(&bf);
        if let Some(e) = other_key.encryption.as_mut() {
            e.key_id = RepoKey::generate().key_id().to_string();
        }
        self.enc_invalid(
            "enc-wrong-key-id",
            &with_header(&bf, &other_key),
            "open",
            "is encrypted under key",
            "enc-full naming another key id, checksums recomputed",
        );
        let mut bad_wrap = header_of(&bf);
        if let Some(e) = bad_wrap.encryption.as_mut() {
            let n = e.wrapped_key.len();
            e.wrapped_key[n - 1] ^= 0x01;
        }
        self.enc_invalid(
            "enc-bad-wrapped-key",
            &with_header(&bf, &bad_wrap),
            "open",
            "does not unwrap",
            "enc-full with a flipped byte in its wrapped data key, checksums recomputed",
        );
    }

    fn enc_valid(
        &mut self,
        name: &str,
        bytes: &[u8],
        key: &RepoKey,
        blocks: &Blocks,
        chain: &[&str],
    ) {
        let r = ArchiveReader::open_with(bytes, Some(key)).expect("open");
        r.verify().expect("verify");
        let mut point = Vec::new();
        for b in blocks {
            point.extend(b.clone().unwrap_or_else(|| vec![0; BSU]));
        }
        let j = json!({
            "description": format!("format 2.0 {name}, readable with test-key.txt"),
            "file_sha256": hex::encode(Sha256::digest(bytes)),
            "header": serde_json::to_value(&r.header).expect("header"),
            "chain": chain,
            "blocks": blocks.iter().map(|b| b.as_ref().map(|d| hex::encode(Sha256::digest(d)))).collect::<Vec<_>>(),
            "image_digest": r.trailer.image_digest.to_hex(),
            "point_sha256": hex::encode(Sha256::digest(&point)),
        });
        self.write(&format!("encrypted/valid/{name}.tarc"), bytes);
        self.write_json(&format!("encrypted/valid/{name}.json"), &j);
    }

    fn enc_invalid(&mut self, name: &str, bytes: &[u8], stage: &str, error: &str, what: &str) {
        self.write(&format!("encrypted/invalid/{name}.tarc"), bytes);
        let j: Value = json!({ "description": what, "stage": stage, "error": error });
        self.write_json(&format!("encrypted/invalid/{name}.json"), &j);
    }
}

fn header_of(bytes: &[u8]) -> Header {
    ArchiveReader::open(bytes).expect("open").header
}

/// `bytes` with the header `h` (of the same encoded length), checksums recomputed.
fn with_header(bytes: &[u8], h: &Header) -> Vec<u8> {
    let mut enc = Vec::new();
    h.encode(&mut enc).expect("encode");
    let mut v = bytes.to_vec();
    assert_eq!(
        enc.len(),
        ArchiveReader::open(bytes).unwrap().trailer.body_offset as usize
    );
    v[..enc.len()].copy_from_slice(&enc);
    assert!(v[..PREAMBLE_LEN] == bytes[..PREAMBLE_LEN]);
    reseal(&mut v);
    v
}

/// Recomputes the segment checksum (one segment), the header and directory checksums
/// and the trailer.
fn reseal(v: &mut [u8]) {
    let n = v.len();
    let mut t = Trailer::decode(&v[n - TRAILER_LEN..]).expect("trailer");
    let dir = t.directory_offset as usize;
    let entries = u32::from_le_bytes(v[dir + 8..dir + 12].try_into().unwrap()) as usize;
    let seg = u64::from_le_bytes(v[dir..dir + 8].try_into().unwrap()) as usize;
    let sum = Digest::of(&v[seg..seg + entries * 64 + 16]);
    v[dir + 32..dir + 64].copy_from_slice(&sum.0);
    t.header_sha256 = Digest::of(&v[..t.body_offset as usize]);
    t.directory_sha256 = Digest::of(&v[dir..n - TRAILER_LEN]);
    let mut out = Vec::new();
    t.encode(&mut out);
    v[n - TRAILER_LEN..].copy_from_slice(&out);
}
