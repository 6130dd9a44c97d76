//! The repository vector (`format-spec/vectors/repository/`, FORMAT.md 15 and 16)
//! read as an outsider would: a small reader written from the spec alone (object names,
//! marker JSON, archives through `thinarc::format`) must find the listing and images of
//! `expected.json`, and so must the real `thinarc list --json` and `thinarc restore`, on
//! a local copy of the tree and on the S3 test server under the same keys.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use thinarc::format::ArchiveReader;

use crate::format::chain_point;
use crate::util::{TempRepo, s3};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("format-spec/vectors/repository")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(root().join("expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("expected.json parses")
}

/// Every file of the tree as (key, path): the key is the path below `tree/` with `/`.
fn files(dir: &Path, prefix: &str, out: &mut Vec<(String, PathBuf)>) {
    for e in std::fs::read_dir(dir).expect("read tree") {
        let e = e.expect("entry");
        let name = e.file_name().into_string().expect("utf-8 name");
        let key = format!("{prefix}{name}");
        if e.file_type().expect("type").is_dir() {
            files(&e.path(), &format!("{key}/"), out);
        } else {
            out.push((key, e.path()));
        }
    }
}

fn hex_sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// A marker key's seq and generation (15): 12 digits, optionally `.` and 6 digits from
/// 000001. Anything else in `commits/` is not a marker.
fn marker_key(name: &str) -> Option<(u64, u32)> {
    let digits = |s: &str, n| s.len() == n && s.bytes().all(|c| c.is_ascii_digit());
    let (seq, generation) = name.split_once('.').unwrap_or((name, "000000"));
    let ok =
        digits(seq, 12) && digits(generation, 6) && (name.len() == 12 || generation != "000000");
    ok.then(|| {
        (
            seq.parse().expect("digits"),
            generation.parse().expect("digits"),
        )
    })
}

/// Lists the repository at `tree` by FORMAT.md 15 alone, in the shape of
/// `expected.json`'s `volumes`.
fn spec_listing(tree: &Path) -> Value {
    let config: Value =
        serde_json::from_slice(&std::fs::read(tree.join("config")).expect("config")).expect("json");
    assert_eq!(
        (config["kind"].as_str(), config["version"].as_u64()),
        (Some("thinarc-repository"), Some(1))
    );
    let mut volumes = Vec::new();
    let mut keys: Vec<String> = std::fs::read_dir(tree.join("volumes"))
        .expect("volumes/")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    keys.sort();
    for key in keys {
        // A `/` of the volume name is `%7E` in the key segment (15).
        let name = key.replace("%7E", "/");
        let dir = tree.join("volumes").join(&key);
        let mut newest: BTreeMap<u64, (u32, String)> = BTreeMap::new();
        for e in std::fs::read_dir(dir.join("commits")).expect("commits/") {
            let file = e.expect("entry").file_name().into_string().expect("utf-8");
            let Some((seq, generation)) = marker_key(&file) else {
                continue;
            };
            if newest.get(&seq).is_none_or(|(g, _)| *g < generation) {
                newest.insert(seq, (generation, file));
            }
        }
        let mut archives: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let mut markers: BTreeMap<u64, Value> = BTreeMap::new();
        for (seq, (_, file)) in &newest {
            let m: Value = serde_json::from_slice(
                &std::fs::read(dir.join("commits").join(file)).expect("marker"),
            )
            .expect("marker json");
            let archive = m["archive"].as_str().expect("archive");
            let object = m["object"].as_str().expect("object");
            assert_eq!(
                object,
                format!("{seq:012}-{archive}.tarc"),
                "{key}/{file}: object"
            );
            let bytes = std::fs::read(dir.join("archives").join(object)).expect("archive object");
            assert_eq!(
                Some(bytes.len() as u64),
                m["size"].as_u64(),
                "{object}: size"
            );
            let r = ArchiveReader::open(&bytes).expect("archive opens");
            r.verify().expect("archive verifies");
            assert_eq!(
                Some(r.trailer.trailer_sha256.to_hex().as_str()),
                m["digest"].as_str()
            );
            assert_eq!(
                (r.header.archive_id.as_str(), r.header.seq),
                (archive, *seq)
            );
            archives.insert(*seq, bytes);
            markers.insert(*seq, m);
        }
        let readers: BTreeMap<u64, ArchiveReader<'_>> = archives
            .iter()
            .map(|(s, b)| (*s, ArchiveReader::open(b).expect("opens")))
            .collect();
        let mut points = Vec::new();
        for (seq, r) in &readers {
            // The chain, through the archives committed at each parent seq (11.4 link rule).
            let mut chain = vec![r];
            while let Some(p) = &chain.last().expect("chain").header.parent {
                let parent = &readers[&p.seq];
                let by_id =
                    parent.header.archive_id == p.id && parent.trailer.trailer_sha256 == p.digest;
                let by_image = p.image == Some(parent.trailer.image_digest);
                assert!(by_id || by_image, "{name} seq {seq}: parent link");
                assert_eq!(parent.header.volume_id, r.header.volume_id);
                chain.push(parent);
            }
            chain.reverse();
            let chain: Vec<ArchiveReader<'_>> = chain
                .iter()
                .map(|c| ArchiveReader::open(&archives[&c.header.seq]).expect("opens"))
                .collect();
            let blocks = chain_point(&chain);
            let h = &r.header;
            points.push(json!({
                "seq": seq,
                "archive": h.archive_id,
                "object": markers[seq]["object"],
                "parent": h.parent.as_ref().map(|p| p.id.clone()),
                "parent_archive": h.parent.as_ref().map(|p| readers[&p.seq].header.archive_id.clone()),
                "parent_seq": h.parent.as_ref().map(|p| p.seq),
                "created": h.created,
                "size": h.size,
                "block_size": h.block_size,
                "image_digest": r.trailer.image_digest.to_hex(),
                "archive_digest": r.trailer.trailer_sha256.to_hex(),
                "image_sha256": hex_sha(&blocks.concat()),
                "block_sha256": blocks.iter().map(|b| hex_sha(b)).collect::<Vec<_>>(),
            }));
        }
        volumes.push(json!({"name": name, "key": key, "points": points}));
    }
    Value::Array(volumes)
}

#[test]
fn repository_vector_reads_from_the_spec_alone() {
    let want = expected();
    let tree = root().join("tree");
    assert_eq!(spec_listing(&tree), want["volumes"]);
    let mut all = Vec::new();
    files(&tree, "", &mut all);
    let keys: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
    for i in want["ignored"].as_array().expect("ignored") {
        let o = i["object"].as_str().expect("object");
        assert!(keys.iter().any(|k| k.starts_with(o)), "the tree holds {o}");
    }
    assert!(
        keys.contains(&"volumes/vg0%7Eweb/commits/000000000005#1"),
        "a temporary marker"
    );
}

/// `thinarc list --json` and `thinarc restore` of every point against `expected.json`.
fn check_thinarc(t: &TempRepo) {
    let want = expected();
    let listed = t.json(&["list"]);
    let listed = listed.as_array().expect("a list");
    let mut n = 0;
    for v in want["volumes"].as_array().expect("volumes") {
        let name = v["name"].as_str().expect("name");
        for p in v["points"].as_array().expect("points") {
            n += 1;
            let got = listed
                .iter()
                .find(|l| l["volume"] == name && l["seq"] == p["seq"])
                .unwrap_or_else(|| panic!("{name} seq {} not listed: {listed:?}", p["seq"]));
            for (field, key) in [
                ("id", "archive"),
                ("parent", "parent_archive"),
                ("parent_seq", "parent_seq"),
                ("created", "created"),
                ("size", "size"),
                ("block_size", "block_size"),
                ("image_digest", "image_digest"),
                ("archive_digest", "archive_digest"),
            ] {
                assert_eq!(got[field], p[key], "{name} seq {}: {field}", p["seq"]);
            }
            // The archive a point was built on, when a prune has replaced it since.
            let built_on = (p["parent"] != p["parent_archive"]).then(|| &p["parent"]);
            assert_eq!(got.get("built_on"), built_on, "{name} seq {}", p["seq"]);
            let out = t.path(&format!("{}-{}.img", name.replace('/', "-"), p["seq"]));
            let seq = p["seq"].to_string();
            t.ok(&["restore", name, out.to_str().expect("utf-8"), "--at", &seq]);
            let image = std::fs::read(&out).expect("restored image");
            assert_eq!(
                Some(hex_sha(&image).as_str()),
                p["image_sha256"].as_str(),
                "{name} seq {seq}: image"
            );
        }
    }
    assert_eq!(
        listed.len(),
        n,
        "only the committed points are listed: {listed:?}"
    );
}

#[test]
fn repository_vector_lists_and_restores_on_a_file_system() {
    let t = TempRepo::uninit();
    let mut all = Vec::new();
    files(&root().join("tree"), "", &mut all);
    for (key, path) in &all {
        let to = t.repo().join(key);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::copy(path, &to).expect("copy");
    }
    check_thinarc(&t);
}

#[test]
fn repository_vector_lists_and_restores_in_an_object_store() {
    let t = TempRepo::s3_uninit();
    let store = s3::moto().store(t.bucket());
    let mut all = Vec::new();
    files(&root().join("tree"), "", &mut all);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for (key, path) in &all {
        // The object key is the tree's path as it is: `vg0%7Eweb` is those 9 characters.
        let key = Key::parse(format!("repo/{key}")).expect("key");
        let body = PutPayload::from(std::fs::read(path).expect("read"));
        rt.block_on(store.put(&key, body)).expect("put");
    }
    let listed = rt
        .block_on(futures::TryStreamExt::try_collect::<Vec<_>>(
            store.list(Some(&Key::from("repo/volumes"))),
        ))
        .expect("list");
    assert!(
        listed
            .iter()
            .any(|o| o.location.as_ref() == "repo/volumes/vg0%7Eweb/commits/000000000001"),
        "the S3 key holds %7E literally"
    );
    check_thinarc(&t);
}

/// Commits archive `bytes` into the local repository at `repo` under volume key `key`:
/// the archive object at its header's seq and id, and its marker (FORMAT.md 15).
fn commit(repo: &Path, key: &str, bytes: &[u8]) -> u64 {
    let r = ArchiveReader::open(bytes).expect("a valid archive");
    let (seq, id) = (r.header.seq, r.header.archive_id.clone());
    let object = format!("{seq:012}-{id}.tarc");
    let dir = repo.join("volumes").join(key);
    std::fs::create_dir_all(dir.join("archives")).expect("mkdir");
    std::fs::create_dir_all(dir.join("commits")).expect("mkdir");
    std::fs::write(dir.join("archives").join(&object), bytes).expect("write archive");
    let marker = json!({"archive": id, "object": object, "size": bytes.len(),
        "digest": r.trailer.trailer_sha256.to_hex()});
    std::fs::write(
        dir.join("commits").join(format!("{seq:012}")),
        marker.to_string(),
    )
    .expect("write marker");
    seq
}

/// The first chain rule of FORMAT.md 13.3 that `delta` breaks against `chain` (oldest
/// first, each committed at its seq), as an error kind of 13.1.
fn spec_chain_error(chain: &[Vec<u8>], delta: &[u8]) -> Option<&'static str> {
    let mut readers: Vec<ArchiveReader<'_>> = chain
        .iter()
        .map(|b| ArchiveReader::open(b).expect("chain member"))
        .collect();
    readers.push(ArchiveReader::open(delta).expect("the delta opens alone"));
    for i in 1..readers.len() {
        let child = &readers[i].header;
        let link = child.parent.as_ref().expect("a delta");
        let parent = &readers[i - 1];
        let by_id =
            parent.header.archive_id == link.id && parent.trailer.trailer_sha256 == link.digest;
        let by_image = link.image == Some(parent.trailer.image_digest);
        if link.seq != parent.header.seq
            || !(by_id || by_image)
            || parent.header.volume_id != child.volume_id
            || parent.header.block_size != child.block_size
        {
            return Some("Corrupt");
        }
    }
    let g = readers.last().expect("delta").geometry();
    let point = chain_point(&readers);
    let digest = crate::format::spec_image_digest(g.size(), g.block_size().get(), &point);
    (digest != readers.last().expect("delta").trailer.image_digest.to_hex())
        .then_some("ChecksumMismatch")
}

/// Every `chains/NAME.tarc` is a valid archive alone, breaks the chain rule its json
/// names against its chain, and is refused by `thinarc verify --data` (exit 4) and
/// `thinarc restore` (exit 1) in a repository holding its chain.
#[test]
fn chain_vectors_break_their_chain() {
    let vectors = root().parent().expect("vectors/").to_path_buf();
    let mut n = 0;
    for e in std::fs::read_dir(vectors.join("chains")).expect("chains/") {
        let path = e.expect("entry").path();
        if path.extension().is_none_or(|x| x != "tarc") {
            continue;
        }
        n += 1;
        let name = path
            .file_stem()
            .expect("stem")
            .to_string_lossy()
            .into_owned();
        let j: Value =
            serde_json::from_slice(&std::fs::read(path.with_extension("json")).expect("json"))
                .expect("json parses");
        let delta = std::fs::read(&path).expect("vector");
        let r = ArchiveReader::open(&delta).expect("valid alone");
        r.verify().unwrap_or_else(|e| panic!("{name}: {e}"));
        let chain: Vec<Vec<u8>> = j["chain"]
            .as_array()
            .expect("chain")
            .iter()
            .map(|c| std::fs::read(vectors.join(c.as_str().expect("path"))).expect("chain member"))
            .collect();
        assert_eq!(
            spec_chain_error(&chain, &delta),
            j["error"].as_str(),
            "{name}"
        );

        let t = TempRepo::new();
        chain.iter().for_each(|b| {
            commit(&t.repo(), "v", b);
        });
        let seq = commit(&t.repo(), "v", &delta).to_string();
        let v = t.run(&["verify", "v", "--data"]);
        assert_eq!(v.code, Some(4), "{name}: verify --data\n{}", v.show());
        let out = t.path("out.img");
        let r = t.run(&["restore", "v", out.to_str().expect("utf-8"), "--at", &seq]);
        assert_eq!(r.code, Some(1), "{name}: restore\n{}", r.show());
    }
    assert!(n >= 6, "chain vectors missing");
}
