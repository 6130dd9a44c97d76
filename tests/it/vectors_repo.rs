//! The format vectors through the production path: each vector is committed as the
//! archive of a point in a real repository (archive object and commit marker written as
//! FORMAT.md §15 lays them out), then `thinarc verify --data` and `thinarc restore` run
//! on it. Every invalid vector must be rejected by both with its error kind; every
//! valid one (with its `chain`) verifies and restores byte for byte to its `point`.
//! The directory is iterated, so vectors added later are covered too.

use object_store::ObjectStoreExt;
use object_store::path::Path as Key;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use thinarc::format::{Header, PREAMBLE_LEN, Preamble, TRAILER_LEN};

use crate::format::{vector_dir, vectors};
use crate::util::TempRepo;
use crate::util::s3::moto;

/// A repository of the vectors: one volume per vector, written straight into the
/// local directory or the S3 bucket.
struct VectorRepo {
    t: TempRepo,
    rt: tokio::runtime::Runtime,
}

/// The seq and archive id a marker names for `bytes`: the header's when it decodes, or
/// seq 1 and a made-up id (the reader fails before it compares them).
fn identity(bytes: &[u8]) -> (u64, String) {
    match header(bytes) {
        Some(h) => (h.seq, h.archive_id),
        None => (1, "0badbadbadbadbadbadbadbadbadbad1".into()),
    }
}

/// The header of an archive, if its preamble and header decode.
fn header(bytes: &[u8]) -> Option<Header> {
    Preamble::decode(bytes).ok().and_then(|p| {
        let end = PREAMBLE_LEN + p.header_len as usize;
        Header::decode(bytes.get(PREAMBLE_LEN..end)?).ok()
    })
}

/// The valid vectors a delta (an invalid vector derived from a valid delta) builds on,
/// oldest first, found by the parent ids of their headers.
fn ancestors(bytes: &[u8]) -> Vec<Vec<u8>> {
    let valid: Vec<Vec<u8>> = vectors("valid").into_iter().map(|(_, b, _)| b).collect();
    let mut chain = Vec::new();
    let mut parent = header(bytes).and_then(|h| h.parent).map(|p| p.id);
    while let Some(id) = parent {
        let Some(b) = valid.iter().find(|b| identity(b).1 == id) else {
            break;
        };
        parent = header(b).and_then(|h| h.parent).map(|p| p.id);
        chain.push(b.clone());
    }
    chain.reverse();
    chain
}

impl VectorRepo {
    fn new(s3: bool) -> Self {
        VectorRepo {
            t: if s3 { TempRepo::s3() } else { TempRepo::new() },
            rt: tokio::runtime::Runtime::new().expect("runtime"),
        }
    }

    fn put(&self, key: &str, bytes: &[u8]) {
        if self.t.location().starts_with("s3://") {
            let store = moto().store(self.t.bucket());
            self.rt
                .block_on(store.put(&Key::from(format!("repo/{key}")), bytes.to_vec().into()))
                .expect("put");
        } else {
            let path = self.t.repo().join(key);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, bytes).expect("write");
        }
    }

    /// Commits `bytes` as an archive of `volume`. The marker names the archive's size
    /// and trailer digest; a file shorter than a preamble and a trailer cannot be named
    /// by a valid marker (its size is at least 200), so the marker names 200 bytes
    /// for it, as it would for an archive cut after its commit.
    fn commit(&self, volume: &str, bytes: &[u8]) {
        let (seq, id) = identity(bytes);
        let object = format!("{seq:012}-{id}.tarc");
        let digest = match bytes.len().checked_sub(TRAILER_LEN) {
            Some(t) if bytes.len() >= PREAMBLE_LEN + TRAILER_LEN => {
                hex::encode(&bytes[t + 144..t + 176])
            }
            _ => "00".repeat(32),
        };
        let size = bytes.len().max(PREAMBLE_LEN + TRAILER_LEN);
        let marker = serde_json::json!({
            "archive": id, "object": object, "size": size, "digest": digest,
        });
        self.put(&format!("volumes/{volume}/archives/{object}"), bytes);
        self.put(
            &format!("volumes/{volume}/commits/{seq:012}"),
            marker.to_string().as_bytes(),
        );
    }
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("{v} is not a string"))
}

/// The words the message of each error kind (FORMAT.md §13.1) carries.
fn kind_words(kind: &str) -> &'static str {
    match kind {
        "BadMagic" => "bad magic",
        "UnsupportedVersion" => "unsupported format version",
        "Truncated" => "truncated",
        "ChecksumMismatch" => "checksum mismatch",
        "Corrupt" => "corrupt",
        k => panic!("unknown error kind {k}"),
    }
}

/// Commits each invalid vector as a volume of its own and checks that verify --data
/// and restore reject it with its kind.
fn invalid_vectors_rejected(r: &VectorRepo, only: Option<&[&str]>) {
    let (mut checked, mut failed) = (0, Vec::new());
    for (name, bytes, json) in vectors("invalid") {
        if only.is_some_and(|o| !o.contains(&name.as_str())) {
            continue;
        }
        let volume = format!("bad-{name}");
        for a in ancestors(&bytes) {
            r.commit(&volume, &a);
        }
        r.commit(&volume, &bytes);
        let kind = json["error"].as_str().expect("error kind");
        let words = kind_words(kind);
        let (_, id) = identity(&bytes);

        let v = r.t.run(&["verify", &volume, "--data"]);
        let named = format!("{}{}", v.stdout, v.stderr)
            .lines()
            .any(|l| l.contains(&id) && l.to_lowercase().contains(words));
        if v.code != Some(4) || !named {
            failed.push(format!(
                "{name}: verify --data must exit 4 with a line naming archive {id} and {kind} ({words:?})\n{}",
                v.show()
            ));
        }

        let target = r.t.path(&format!("{name}.img"));
        let o =
            r.t.run(&["restore", &volume, target.to_str().expect("utf-8")]);
        if o.code != Some(1) || !o.stderr.to_lowercase().contains(words) {
            failed.push(format!(
                "{name}: restore must exit 1 saying {kind} ({words:?})\n{}",
                o.show()
            ));
        }
        let left: Vec<_> = std::fs::read_dir(r.t.dir.path())
            .expect("list")
            .filter_map(|e| {
                let n = e.ok()?.file_name().to_string_lossy().into_owned();
                n.contains(&format!("{name}.img")).then_some(n)
            })
            .collect();
        if !left.is_empty() {
            failed.push(format!("{name}: restore left {left:?}"));
        }
        checked += 1;
    }
    assert!(checked > 0, "no invalid vector checked");
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}

/// Commits each valid vector with its chain as a volume of its own; verify --data finds
/// nothing and restore gives the vector's point, block by block.
fn valid_vectors_restore(r: &VectorRepo, only: Option<&[&str]>) {
    let mut checked = 0;
    for (name, bytes, json) in vectors("valid") {
        if only.is_some_and(|o| !o.contains(&name.as_str())) {
            continue;
        }
        let volume = format!("good-{name}");
        for c in json["chain"].as_array().expect("chain") {
            let file = vector_dir("valid").join(c.as_str().expect("chain file"));
            r.commit(&volume, &std::fs::read(file).expect("chain member"));
        }
        r.commit(&volume, &bytes);

        let v = r.t.run(&["verify", &volume, "--data"]);
        assert_eq!(v.code, Some(0), "{name}: verify --data\n{}", v.show());

        let target = r.t.path(&format!("{name}.img"));
        r.t.ok(&["restore", &volume, target.to_str().expect("utf-8")]);
        let image = std::fs::read(&target).expect("restored image");
        let point = &json["point"];
        let bs = json["header"]["block_size"].as_u64().expect("block size") as usize;
        let digests: Vec<[u8; 32]> = image.chunks(bs).map(|b| Sha256::digest(b).into()).collect();
        assert_eq!(
            hex::encode(Sha256::digest(digests.concat())),
            s(&point["block_digests_sha256"]),
            "{name}: block digests"
        );
        // Small vectors list every block.
        if let Some(blocks) = point["blocks"].as_array() {
            assert_eq!(blocks.len(), digests.len(), "{name}: blocks");
            let len: u64 = blocks.iter().map(|b| b["len"].as_u64().expect("len")).sum();
            assert_eq!(len, image.len() as u64, "{name}: restored image length");
            for (i, (b, d)) in blocks.iter().zip(&digests).enumerate() {
                assert_eq!(hex::encode(d), s(&b["sha256"]), "{name}: block {i}");
            }
        }
        checked += 1;
    }
    assert!(checked > 0, "no valid vector checked");
}

#[test]
fn invalid_vectors_rejected_by_verify_and_restore() {
    invalid_vectors_rejected(&VectorRepo::new(false), None);
}

#[test]
fn valid_vectors_verify_and_restore() {
    valid_vectors_restore(&VectorRepo::new(false), None);
}

#[test]
fn vectors_on_s3() {
    let r = VectorRepo::new(true);
    invalid_vectors_rejected(
        &r,
        Some(&[
            "zero-data-block",
            "trailer-counts",
            "truncated-10",
            "flip-frame",
        ]),
    );
    valid_vectors_restore(&r, Some(&["delta-regrow", "full-segments"]));
}
