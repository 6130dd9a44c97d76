//! Encrypted repositories (issue 12, FORMAT.md section 18) through the library:
//! chains restore byte for byte, locally and on the moto S3 server; nothing of the
//! content shows in the repository (no marker string, no plain SHA-256 of a block);
//! each tampering kind is one clear error naming the object, with nothing written; a
//! write-only host backs up but cannot read; copies between keys; and random chains
//! with merges and consolidated copies restore exactly.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use proptest::prelude::*;
use thinarc::backup::{ArchiveKind, BackupError, BackupOptions, BackupReport, backup};
use thinarc::copy::{CopyError, CopyOptions, copy};
use thinarc::format::{ArchiveReader, BlockSize, Digest, EntryKind, Keys, RepoKey};
use thinarc::point::{MergeOptions, merge};
use thinarc::repo::{PointSelector, Repository, VolumeName};
use thinarc::source::RawSource;
use thinarc::verify::{DataCheck, VerifyOptions, verify};

use crate::chain::{
    LibRepo, MAX_SIZE, Op, backup_file, local_store, op, restore_every_point, restore_seq, runtime,
};
use crate::merge::{build_chain, grow_and_shrink_steps};
use crate::util::s3::moto;
use crate::util::{Rng, make_image, read, write};

/// A new encrypted repository on the local file system, opened with `keys(key)`.
async fn encrypted(key: &RepoKey, keys: Keys) -> LibRepo {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("repo");
    let repo = Repository::create_checked(
        local_store(&root),
        &root.display().to_string(),
        true,
        Some(key.writer()),
    )
    .await
    .expect("create encrypted repository")
    .with_keys(keys)
    .expect("keys of this repository");
    LibRepo { dir, repo }
}

/// An owner's handle on a new encrypted repository, with its key.
async fn owned() -> (LibRepo, RepoKey) {
    let key = RepoKey::generate();
    let again = RepoKey::from_secret_bytes(&key.to_secret_bytes()).expect("key");
    (encrypted(&key, Keys::Owner(again)).await, key)
}

/// The same repository opened again with `keys`.
async fn reopen(t: &LibRepo, keys: Keys) -> Repository {
    let root = t.dir.path().join("repo");
    Repository::open(local_store(&root), &root.display().to_string())
        .await
        .expect("open")
        .with_keys(keys)
        .expect("keys")
}

fn owner(key: &RepoKey) -> Keys {
    Keys::Owner(RepoKey::from_secret_bytes(&key.to_secret_bytes()).expect("key"))
}

/// Every file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The archive objects of `volume`, oldest first.
fn archives(t: &LibRepo, volume: &str) -> Vec<PathBuf> {
    let mut a = files(
        &t.dir
            .path()
            .join("repo/volumes")
            .join(volume)
            .join("archives"),
    );
    a.sort();
    a
}

#[tokio::test(flavor = "multi_thread")]
async fn encrypted_chain_restores_byte_for_byte() {
    let (t, key) = owned().await;
    let volume = VolumeName::new("enc").unwrap();
    let points = build_chain(&t, &volume, 200_000, 3, &grow_and_shrink_steps()).await;
    restore_every_point(&t.repo, t.dir.path(), &volume, &points).await;
    for a in archives(&t, "enc") {
        let bytes = read(&a);
        assert_eq!(&bytes[8..12], &[2, 0, 0, 0], "format 2.0: {}", a.display());
        let r = ArchiveReader::open_with(&bytes, Some(&key)).expect("open");
        r.verify().expect("verify with the key");
        let locked = ArchiveReader::open(&bytes).expect("structure opens without a key");
        assert!(locked.entries().is_err(), "the index needs the key");
    }
    let report = verify(
        &t.repo,
        &VerifyOptions {
            volume: Some(volume.clone()),
            data: DataCheck::All,
            source: None,
            threads: 2,
        },
        Arc::default(),
    )
    .await
    .expect("verify --data");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    // Without a key: structure only, clean.
    let locked = reopen(&t, Keys::Locked).await;
    let report = verify(
        &locked,
        &VerifyOptions {
            volume: Some(volume.clone()),
            data: DataCheck::Off,
            source: None,
            threads: 2,
        },
        Arc::default(),
    )
    .await
    .expect("structural verify without a key");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[tokio::test(flavor = "multi_thread")]
async fn encrypted_chain_restores_byte_for_byte_on_s3() {
    let moto = moto();
    let key = RepoKey::generate();
    let repo = Repository::create_checked(
        moto.store(&moto.bucket()),
        "s3://enc",
        true,
        Some(key.writer()),
    )
    .await
    .expect("create")
    .with_keys(owner(&key))
    .expect("keys");
    let t = LibRepo {
        dir: tempfile::tempdir().unwrap(),
        repo,
    };
    let volume = VolumeName::new("enc").unwrap();
    let points = build_chain(&t, &volume, 150_000, 4, &grow_and_shrink_steps()).await;
    restore_every_point(&t.repo, t.dir.path(), &volume, &points).await;
}

/// A recognisable marker in the source appears in no object of the repository, and
/// no stored digest (block, image, anywhere in any object) is the plain SHA-256 of
/// a block or of the image.
#[tokio::test(flavor = "multi_thread")]
async fn nothing_of_the_content_shows_in_the_repository() {
    let (t, _) = owned().await;
    let volume = VolumeName::new("m").unwrap();
    let marker = b"THINARC-SECRET-MARKER-7f3a9c";
    let mut img = make_image(400_000, 5);
    for (i, chunk) in img.chunks_mut(4096).enumerate() {
        if i % 3 == 0 {
            for w in chunk.chunks_mut(marker.len()) {
                let n = w.len();
                w.copy_from_slice(&marker[..n]);
            }
        }
    }
    let src = t.path("m.img");
    write(&src, &img);
    backup_file(&t.repo, &volume, &src, None)
        .await
        .expect("full");
    Rng::new(9).fill(&mut img[10_000..20_000]);
    write(&src, &img);
    backup_file(&t.repo, &volume, &src, None)
        .await
        .expect("delta");
    let mut plain: HashSet<[u8; 32]> = img.chunks(4096).map(|b| Digest::of(b).0).collect();
    plain.insert(Digest::of(&img).0);
    for f in files(&t.dir.path().join("repo")) {
        let bytes = read(&f);
        assert!(
            !bytes.windows(marker.len()).any(|w| w == marker),
            "the marker shows in {}",
            f.display()
        );
        assert!(
            !bytes.windows(32).any(|w| plain.contains(w)),
            "a plain SHA-256 of the content shows in {}",
            f.display()
        );
    }
}

/// Restoring `seq` of `volume` from `repo` into a new file fails; returns the error
/// and checks that nothing was written.
async fn restore_fails(repo: &Repository, volume: &str, seq: u64, dir: &Path) -> String {
    let out = dir.join(format!("out-{volume}-{seq}.img"));
    let e = restore_seq(repo, &VolumeName::new(volume).unwrap(), seq, &out)
        .await
        .expect_err("restore must fail");
    assert!(!out.exists(), "nothing written: {e}");
    e.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_archives_are_named_and_nothing_is_restored() {
    let (t, key) = owned().await;
    let src = t.path("v.img");
    write(&src, &make_image(300_000, 7));
    for v in ["v", "w"] {
        let volume = VolumeName::new(v).unwrap();
        backup_file(&t.repo, &volume, &src, None)
            .await
            .expect("full");
    }
    let [a] = &archives(&t, "v")[..] else {
        panic!("one archive")
    };
    let original = read(a);
    let r = ArchiveReader::open_with(&original, Some(&key)).expect("open");
    let Some(EntryKind::Data {
        frame_offset,
        frame_len,
        ..
    }) = r
        .entries()
        .unwrap()
        .iter()
        .map(|e| e.kind)
        .find(|k| matches!(k, EntryKind::Data { .. }))
    else {
        panic!("a data block")
    };
    let (start, end) = (
        frame_offset as usize,
        (frame_offset + u64::from(frame_len)) as usize,
    );
    let name = a.file_name().unwrap().to_str().unwrap().to_string();

    // A flipped tag byte.
    let mut bytes = original.clone();
    bytes[end - 1] ^= 0x40;
    write(a, &bytes);
    let e = restore_fails(&t.repo, "v", 1, t.dir.path()).await;
    assert!(
        e.contains(&name)
            && e.contains(&format!(
                "frame at offset {frame_offset} fails authentication"
            )),
        "{e}"
    );

    // A frame swapped in from another archive of the volume (same offset, same
    // length: the same content in a new chain).
    write(a, &original);
    let volume = VolumeName::new("v").unwrap();
    let mut opts = BackupOptions::new(volume.clone());
    opts.full = true;
    opts.block_size = Some(BlockSize::new(4096).unwrap());
    backup(
        &t.repo,
        RawSource::open(&src).unwrap(),
        &opts,
        Arc::default(),
    )
    .await
    .expect("second full");
    let other = read(&archives(&t, "v")[1]);
    let mut bytes = original.clone();
    bytes[start..end].copy_from_slice(&other[start..end]);
    assert_ne!(bytes, original, "another archive's frame differs");
    write(a, &bytes);
    let e = restore_fails(&t.repo, "v", 1, t.dir.path()).await;
    assert!(
        e.contains(&name) && e.contains("fails authentication"),
        "{e}"
    );
    write(a, &original);

    // A truncated archive.
    write(a, &original[..original.len() - 10]);
    let e = restore_fails(&t.repo, "v", 1, t.dir.path()).await;
    assert!(e.contains(&name) && e.contains("truncated"), "{e}");
    write(a, &original);

    // An archive under another volume's name: w's archives copied over v's.
    let w = archives(&t, "w").remove(0);
    let vdir = t.dir.path().join("repo/volumes/v");
    std::fs::remove_dir_all(&vdir).unwrap();
    copy_dir(&t.dir.path().join("repo/volumes/w"), &vdir);
    let e = restore_fails(&t.repo, "v", 1, t.dir.path()).await;
    assert!(
        e.contains(w.file_name().unwrap().to_str().unwrap())
            && e.contains("belongs to volume \"w\", not to v"),
        "{e}"
    );

    // An archive encrypted under a key this repository does not list.
    let (stranger, stranger_key) = owned().await;
    backup_file(&stranger.repo, &volume, &src, None)
        .await
        .expect("full");
    std::fs::remove_dir_all(&vdir).unwrap();
    copy_dir(&stranger.dir.path().join("repo/volumes/v"), &vdir);
    let e = restore_fails(&t.repo, "v", 1, t.dir.path()).await;
    assert!(
        e.contains(&format!(
            "is encrypted under key {}, which this repository does not list",
            stranger_key.key_id()
        )),
        "{e}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

/// A backup of `path` by a host with state directory `state` (`None`: none).
async fn backup_host(
    repo: &Repository,
    volume: &VolumeName,
    path: &Path,
    changed: Option<Vec<std::ops::Range<u64>>>,
    state: Option<&Path>,
) -> Result<BackupReport, BackupError> {
    let mut opts = BackupOptions::new(volume.clone());
    opts.block_size = Some(BlockSize::new(4096).unwrap());
    opts.changed_blocks = changed.map(Into::into);
    opts.threads = 2;
    opts.state_dir = state.map(Path::to_path_buf);
    backup(repo, RawSource::open(path).unwrap(), &opts, Arc::default()).await
}

/// A host with only the writer key backs up deltas on the digests it kept of its
/// last point (a full, saying why, when they are missing or stale) and reads
/// nothing back; a key holder restores every point.
#[tokio::test(flavor = "multi_thread")]
async fn write_only_host_backs_up_deltas_but_cannot_read() {
    let (t, key) = owned().await;
    let writer = reopen(&t, Keys::Writer(key.writer().clone())).await;
    let state = t.path("state");
    let volume = VolumeName::new("wo").unwrap();
    let src = t.path("wo.img");
    let mut img = make_image(200_000, 11);
    let mut points = Vec::new();
    write(&src, &img);
    let r = backup_host(&writer, &volume, &src, None, Some(&state))
        .await
        .unwrap();
    points.push(img.clone());
    assert_eq!(
        (r.kind, r.warnings.len()),
        (ArchiveKind::Full, 0),
        "{:?}",
        r.warnings
    );
    let mut step = async |img: &mut Vec<u8>, at: usize, changed: bool, state: Option<&Path>| {
        Rng::new(at as u64).fill(&mut img[at..at + 5000]);
        write(&src, img);
        let list = changed.then(|| std::iter::once(at as u64..at as u64 + 5000).collect());
        let r = backup_host(&writer, &volume, &src, list, state)
            .await
            .expect("backup by the writer");
        points.push(img.clone());
        r
    };
    let r = step(&mut img, 0, false, Some(&state)).await;
    assert_eq!(
        (r.kind, r.method.as_str()),
        (ArchiveKind::Delta, "scan"),
        "{:?}",
        r.warnings
    );
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    let r = step(&mut img, 50_000, true, Some(&state)).await;
    assert_eq!(
        (r.kind, r.method.as_str()),
        (ArchiveKind::Delta, "changed-blocks")
    );
    assert_eq!(r.bytes_read, 8192, "only the listed blocks are read");
    // Without its state directory: a full, and why.
    let r = step(&mut img, 100_000, false, None).await;
    assert_eq!(r.kind, ArchiveKind::Full);
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    assert!(
        r.warnings[0].contains("no state directory"),
        "{:?}",
        r.warnings
    );
    // Its state is now stale (seq 3, the newest point is 4): a full, and why.
    let r = step(&mut img, 150_000, false, Some(&state)).await;
    assert_eq!(r.kind, ArchiveKind::Full);
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    assert!(
        r.warnings[0].contains("its state")
            && r.warnings[0].contains("is of seq 3, not of the newest point seq 4"),
        "{:?}",
        r.warnings
    );
    let r = step(&mut img, 20_000, false, Some(&state)).await;
    assert_eq!(r.kind, ArchiveKind::Delta, "{:?}", r.warnings);
    // Nothing of the index or the data can be read back.
    let e = restore_fails(&writer, "wo", 2, t.dir.path()).await;
    assert!(
        e.contains("restore needs the repository key (a writer key only encrypts)"),
        "{e}"
    );
    let e = verify(
        &writer,
        &VerifyOptions {
            volume: Some(volume.clone()),
            data: DataCheck::All,
            source: None,
            threads: 2,
        },
        Arc::default(),
    )
    .await
    .expect_err("verify --data needs the key");
    assert!(
        e.to_string()
            .contains("verify --data needs the repository key"),
        "{e}"
    );
    // A locked handle cannot even write.
    let locked = reopen(&t, Keys::Locked).await;
    let e = backup_file(&locked, &volume, &src, None)
        .await
        .expect_err("no key");
    assert!(
        e.to_string()
            .starts_with("backup needs a key of encrypted repository"),
        "{e}"
    );
    restore_every_point(&t.repo, t.dir.path(), &volume, &points).await;
}

/// A plain copy needs the same key material on both sides; a consolidated copy
/// re-encrypts for the destination, or writes format 1 into an unencrypted one.
#[tokio::test(flavor = "multi_thread")]
async fn copies_between_keys() {
    let (t, key) = owned().await;
    let volume = VolumeName::new("c").unwrap();
    let points = build_chain(&t, &volume, 150_000, 8, &grow_and_shrink_steps()).await;
    let plain = LibRepo::new().await;
    let (other, _) = owned().await;
    let all = |consolidate| CopyOptions {
        volume: Some(volume.clone()),
        at: None,
        consolidate,
        threads: 2,
    };
    for dest in [&plain.repo, &other.repo] {
        let e = copy(&t.repo, dest, false, &all(false), Arc::default())
            .await
            .expect_err("plain copy between keys");
        assert!(matches!(e, CopyError::KeysDiffer { .. }), "{e}");
        assert!(
            e.to_string().contains("use `thinarc copy --consolidate`"),
            "{e}"
        );
        copy(&t.repo, dest, false, &all(true), Arc::default())
            .await
            .expect("copy --consolidate");
        let out = t.path("c-out.img");
        restore_seq(dest, &volume, points.len() as u64, &out)
            .await
            .expect("restore the consolidated point");
        assert_eq!(&read(&out), points.last().unwrap());
    }
    let plain_archive = read(&archives(&plain, "c")[0]);
    assert_eq!(
        &plain_archive[8..10],
        &[1, 0],
        "format 1 into a plain repository"
    );
    // The same key pair: a plain copy, byte for byte, needing no key.
    let twin = encrypted(&key, Keys::Locked).await;
    let locked = reopen(&t, Keys::Locked).await;
    copy(&locked, &twin.repo, false, &all(false), Arc::default())
        .await
        .expect("plain copy under the same key");
    assert_eq!(
        archives(&twin, "c")
            .iter()
            .map(|a| read(a))
            .collect::<Vec<_>>(),
        archives(&t, "c")
            .iter()
            .map(|a| read(a))
            .collect::<Vec<_>>()
    );
    let twin = reopen(&twin, owner(&key)).await;
    restore_every_point(&twin, t.dir.path(), &volume, &points).await;
}

/// Consolidates `volume`'s point `seq` of `t` into `dest` as a full archive.
async fn consolidate(t: &Repository, dest: &Repository, volume: &VolumeName, seq: u64) {
    let commits = t.commits(volume).await.unwrap();
    let chain = t.resolve(&commits, &PointSelector::Seq(seq)).await.unwrap();
    let dv = VolumeName::new(&format!("{}-{seq}", volume.as_str())).unwrap();
    merge(
        t,
        &chain,
        None,
        dest,
        &dv,
        &MergeOptions::new("consolidate"),
    )
    .await
    .unwrap_or_else(|e| panic!("consolidate seq {seq}: {e}"));
}

async fn check_chain(size: usize, seed: u64, steps: Vec<(Op, bool)>, x: usize, fold: bool) {
    let (t, _) = owned().await;
    let volume = VolumeName::new("p").unwrap();
    let points = build_chain(&t, &volume, size, seed, &steps).await;
    let x = 1 + (x % points.len()) as u64;
    // A merge in place (prune's engine): the point as a full of the next generation.
    if fold {
        let commits = t.repo.commits(&volume).await.unwrap();
        let chain = t
            .repo
            .resolve(&commits, &PointSelector::Seq(x))
            .await
            .unwrap();
        let mut opts = MergeOptions::new("merge");
        opts.generation = commits.iter().find(|c| c.seq == x).unwrap().generation + 1;
        opts.threads = 2;
        merge(&t.repo, &chain, None, &t.repo, &volume, &opts)
            .await
            .expect("merge");
    }
    restore_every_point(&t.repo, t.dir.path(), &volume, &points).await;
    // Consolidated copies into an unencrypted repository and one with other keys.
    let plain = LibRepo::new().await;
    let (other, _) = owned().await;
    for dest in [&plain, &other] {
        consolidate(&t.repo, &dest.repo, &volume, x).await;
        let dv = VolumeName::new(&format!("p-{x}")).unwrap();
        let out = t.path("p-out.img");
        restore_seq(&dest.repo, &dv, x, &out)
            .await
            .expect("restore copy");
        assert_eq!(read(&out), points[x as usize - 1], "copy of seq {x}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    /// Random chains on an encrypted repository, with a merge and consolidated copies
    /// (re-encrypted, or decrypted into a plain repository), restore byte for byte.
    #[test]
    fn encrypted_chains_with_merges_and_copies_restore_exactly(
        size in 0..=MAX_SIZE,
        seed in any::<u64>(),
        steps in proptest::collection::vec((op(), any::<bool>()), 1..5),
        x in any::<usize>(),
        fold in any::<bool>(),
    ) {
        runtime().block_on(check_chain(size, seed, steps, x, fold));
    }
}

/// The description of vector `path`.
fn describe(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&read(&path.with_extension("json"))).expect("json")
}

/// Decodes the valid encrypted vector `name` with `key` and checks it against its
/// description; returns its point (a delta's built on its parent's).
fn point(dir: &Path, key: &RepoKey, name: &str) -> Vec<u8> {
    let path = dir.join("valid").join(format!("{name}.tarc"));
    let bytes = read(&path);
    let j = describe(&path);
    let r = ArchiveReader::open_with(&bytes, Some(key)).expect("open");
    r.verify().unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
        serde_json::to_value(&r.header).unwrap(),
        j["header"],
        "{name}"
    );
    assert_eq!(r.trailer.image_digest.to_hex(), j["image_digest"], "{name}");
    let mut img = match j["chain"].as_array().unwrap().last() {
        Some(parent) => point(dir, key, parent.as_str().unwrap()),
        None => vec![0; r.geometry().size() as usize],
    };
    let entries = r.entries().unwrap();
    for e in &entries {
        let EntryKind::Data { frame_offset, .. } = e.kind else {
            let (at, end) = (e.block as usize * 4096, e.end() as usize * 4096);
            img[at..end].fill(0);
            continue;
        };
        let group: Vec<_> = entries
            .iter()
            .filter(
                |g| matches!(g.kind, EntryKind::Data { frame_offset: o, .. } if o == frame_offset),
            )
            .copied()
            .collect();
        let block = r.read_block(e, &group).unwrap();
        let at = e.block as usize * 4096;
        img[at..at + block.len()].copy_from_slice(&block);
    }
    for (b, want) in j["blocks"].as_array().unwrap().iter().enumerate() {
        let got = &img[b * 4096..(b + 1) * 4096];
        match want.as_str() {
            Some(sha) => assert_eq!(Digest::of(got).to_hex(), sha, "{name} block {b}"),
            None => assert!(got.iter().all(|&x| x == 0), "{name} block {b}"),
        }
    }
    assert_eq!(Digest::of(&img).to_hex(), j["point_sha256"], "{name}");
    assert!(
        ArchiveReader::open(&bytes)
            .expect("structure")
            .entries()
            .is_err(),
        "{name}: the index needs the key"
    );
    img
}

/// The encrypted test vectors (FORMAT.md 16, 18): the valid ones open with the
/// published test key and decode to their described content (a delta through its
/// chain); each tampered one is refused at its stage with its error; without the key
/// only the structure opens.
#[test]
fn encrypted_vectors_decode_with_the_test_key_and_tampered_ones_fail() {
    let dir = crate::format::vector_dir("encrypted");
    let key = RepoKey::from_secret_bytes(&read(&dir.join("test-key.txt"))).expect("test key");
    point(&dir, &key, "enc-full");
    point(&dir, &key, "enc-delta");
    let mut invalid = files(&dir.join("invalid"));
    invalid.retain(|p| p.extension().is_some_and(|e| e == "tarc"));
    assert_eq!(invalid.len(), 7, "one vector per tampering kind");
    for path in invalid {
        let j = describe(&path);
        let bytes = read(&path);
        let e = match ArchiveReader::open_with(&bytes, Some(&key)) {
            Err(e) => {
                assert_eq!(j["stage"], "open", "{}: {e}", path.display());
                e
            }
            Ok(r) => {
                assert_eq!(j["stage"], "verify", "{}", path.display());
                r.verify().expect_err("tampered")
            }
        };
        let want = j["error"].as_str().unwrap();
        assert!(e.to_string().contains(want), "{}: {e}", path.display());
    }
}
