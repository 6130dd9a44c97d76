//! The catalog at scale (issue 14 item 4): requests per command, counted through
//! [`Repository::requests`], on ~20 volumes x 5 points, local and on the S3 test
//! server. Commands over every volume list `volumes/` once; the per-volume summary
//! saves every marker and archive read, and a summary that is missing, stale or
//! tampered with gives the same output as none.

use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sha2::Digest as _;
use thinarc::backup::{BackupOptions, backup, dry_run};
use thinarc::repo::{Repository, RequestCounts, VolumeName};
use thinarc::source::RawSource;
use thinarc::status::{Records, gather};

use crate::util::{TempRepo, make_image, s3, write};

const VOLUMES: usize = 20;
const POINTS: usize = 5;

/// A handle on `t`'s repository (local, or the S3 test server) with fresh counts.
async fn open(t: &TempRepo) -> Repository {
    if t.location().starts_with("s3://") {
        let store = object_store::prefix::PrefixStore::new(s3::moto().store(t.bucket()), "repo");
        Repository::open(Arc::new(store), t.location())
            .await
            .unwrap()
    } else {
        Repository::open_location(t.location()).await.unwrap()
    }
}

fn volume(i: usize) -> VolumeName {
    VolumeName::new(&format!("vm{i:02}/disk")).unwrap()
}

fn summary_key(i: usize) -> Path {
    Path::from(format!("volumes/vm{i:02}~disk/summary"))
}

/// Backs up one more point of volume `i` (a block changed), through the library.
async fn point(t: &TempRepo, repo: &Repository, i: usize, p: usize) {
    let img = t.path(&format!("v{i}.img"));
    let mut data = make_image(256 << 10, i as u64);
    for q in 0..=p {
        data[(q * 70_000) % (256 << 10)] ^= 0xff;
    }
    write(&img, &data);
    let source = RawSource::open(&img).unwrap();
    backup(repo, source, &BackupOptions::new(volume(i)), Arc::default())
        .await
        .unwrap();
}

/// Every volume's rows as `list` prints them (JSON), and what listing them cost.
async fn listed(t: &TempRepo) -> (String, RequestCounts) {
    let repo = open(t).await;
    let rows: Vec<_> = repo
        .describe_all()
        .await
        .unwrap()
        .into_iter()
        .map(|(v, r)| (v.to_string(), r.map_err(|e| e.to_string())))
        .collect();
    (
        serde_json::to_string_pretty(&rows).unwrap(),
        repo.requests(),
    )
}

/// What `status` shows of every volume (ages left out), and what it cost.
async fn status(t: &TempRepo) -> (String, RequestCounts) {
    let repo = open(t).await;
    let records = Records::new(t.location(), Some(t.path("state")));
    let s = gather(Some(&repo), t.location(), &records, None, None)
        .await
        .unwrap();
    let shown: Vec<_> = s
        .volumes
        .iter()
        .map(|v| {
            let newest = v.newest.as_ref().map(|n| (n.seq, n.archive.clone()));
            let damage = serde_json::to_string(&v.damage).unwrap();
            (
                &v.volume,
                v.points,
                v.chain_length,
                v.stored_bytes,
                newest,
                &v.problems,
                damage,
            )
        })
        .collect();
    (format!("{shown:#?}"), repo.requests())
}

async fn get(store: &Arc<dyn ObjectStore>, key: &Path) -> Vec<u8> {
    store
        .get(key)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec()
}

async fn put(store: &Arc<dyn ObjectStore>, key: &Path, bytes: Vec<u8>) {
    store.put(key, PutPayload::from(bytes)).await.unwrap();
}

/// The archive object of point `seq` of volume `i`.
async fn archive_key(repo: &Repository, i: usize, seq: u64) -> Path {
    let commits = repo.commits(&volume(i)).await.unwrap();
    commits.iter().find(|c| c.seq == seq).unwrap().archive_key()
}

async fn catalog_at_scale(t: TempRepo) {
    let repo = open(&t).await;
    for i in 0..VOLUMES {
        for p in 0..POINTS {
            point(&t, &repo, i, p).await;
        }
    }
    let store = repo.store().clone();

    // Every volume listed: one listing of `volumes/`, one summary read per volume,
    // no marker or archive read.
    let (rows, cost) = listed(&t).await;
    let per_volume = |n: usize| n as u64 * VOLUMES as u64;
    assert_eq!(cost.list, 1, "list: one listing {cost:?}");
    assert_eq!(
        cost.get,
        per_volume(1),
        "list: one summary per volume {cost:?}"
    );
    assert_eq!(cost.head, 0, "{cost:?}");
    assert!(
        rows.matches("\"seq\"").count() == VOLUMES * POINTS,
        "{rows}"
    );
    assert!(!rows.contains("damage"), "{rows}");
    let (shown, cost) = status(&t).await;
    assert_eq!(cost.list, 1, "status: one listing {cost:?}");
    assert_eq!(
        cost.get,
        per_volume(1),
        "status: one summary per volume {cost:?}"
    );
    assert_eq!(cost.head, 0, "{cost:?}");

    // A backup's parent lookup: the volume listed, its summary read, and the index
    // of the chain (one segment per archive here), which the backup checks before it
    // builds on it and reads anyway.
    let lookup = open(&t).await;
    dry_run(&lookup, &BackupOptions::new(volume(0)))
        .await
        .unwrap();
    let cost = lookup.requests();
    let chain = POINTS as u64;
    assert_eq!(
        (cost.list, cost.get, cost.head),
        (1, 1 + chain, 0),
        "parent lookup {cost:?}"
    );

    // Without summaries: the same output, from every marker and archive.
    let summaries: Vec<Vec<u8>> = futures::future::join_all((0..VOLUMES).map(|i| {
        let store = store.clone();
        async move { get(&store, &summary_key(i)).await }
    }))
    .await;
    for i in 0..VOLUMES {
        store.delete(&summary_key(i)).await.unwrap();
    }
    let (bare_rows, bare) = listed(&t).await;
    assert_eq!(bare_rows, rows, "list without summaries");
    assert_eq!(bare.list, 1, "{bare:?}");
    assert!(
        bare.get >= per_volume(3 * POINTS),
        "a marker and two archive reads per point: {bare:?}"
    );
    assert_eq!(status(&t).await.0, shown, "status without summaries");
    for (i, s) in summaries.iter().enumerate() {
        put(&store, &summary_key(i), s.clone()).await;
    }

    // Stale and damaged summaries.
    // vm00: a point added by a writer that did not refresh the summary.
    point(&t, &repo, 0, POINTS).await;
    put(&store, &summary_key(0), summaries[0].clone()).await;
    // vm01: a point pruned (its marker gone, its archive tombstoned).
    t.ok(&["prune", "vm01/disk", "--keep-last", "2"]);
    put(&store, &summary_key(1), summaries[1].clone()).await;
    // vm02: a digit of a marker's digest changed in the summary, vm06: of an
    // archive's header; vm03: not a summary at all.
    for (i, member) in [(2, "\"digest\":\""), (6, "\"head\":\"")] {
        let mut flipped = summaries[i].clone();
        let at = String::from_utf8_lossy(&flipped).find(member).unwrap() + member.len() + 20;
        flipped[at] = if flipped[at] == b'0' { b'1' } else { b'0' };
        put(&store, &summary_key(i), flipped).await;
    }
    put(&store, &summary_key(3), b"not a summary".to_vec()).await;
    // vm07: an archive's header damaged in the summary, its checksum recomputed: the
    // copied bytes fail the archive's own checks, and the archive is read instead.
    let text = String::from_utf8(summaries[7].clone()).unwrap();
    let (start, end) = (
        text.find("\"points\":").unwrap() + 9,
        text.find(",\"sha256\":").unwrap(),
    );
    let mut points = text[start..end].to_string().into_bytes();
    let at = String::from_utf8_lossy(&points)
        .find("\"head\":\"")
        .unwrap()
        + 8
        + 40;
    points[at] = if points[at] == b'0' { b'1' } else { b'0' };
    let points = String::from_utf8(points).unwrap();
    let sum = hex::encode(sha2::Sha256::digest(points.as_bytes()));
    let forged = format!("{}{points},\"sha256\":\"{sum}\"}}", &text[..start]);
    put(&store, &summary_key(7), forged.into_bytes()).await;
    // vm04: an archive's header flipped in place; vm05: an archive deleted.
    let key = archive_key(&repo, 4, 3).await;
    let mut archive = get(&store, &key).await;
    archive[100] ^= 0x55;
    put(&store, &key, archive).await;
    let deleted = archive_key(&repo, 5, POINTS as u64).await;
    store.delete(&deleted).await.unwrap();

    let (rows, cost) = listed(&t).await;
    let (shown, _) = status(&t).await;
    assert!(rows.contains("damage"), "{rows}");
    assert!(
        shown.contains(&format!("{deleted}")) || shown.contains("missing"),
        "status shows the deleted archive: {shown}"
    );
    for i in 0..VOLUMES {
        let _ = store.delete(&summary_key(i)).await;
    }
    let (bare_rows, bare) = listed(&t).await;
    assert_eq!(
        rows, bare_rows,
        "stale summaries give the same listing as none"
    );
    assert_eq!(status(&t).await.0, shown, "the same status as none");
    assert!(
        cost.get < bare.get,
        "the valid summaries still save reads: {cost:?} {bare:?}"
    );
}

/// Local repository: `list` and `status` of every volume list once and read only
/// the summaries; stale, tampered or missing summaries change nothing but the reads.
#[tokio::test(flavor = "multi_thread")]
async fn catalog_at_scale_local() {
    catalog_at_scale(TempRepo::new()).await;
}

/// The same on the S3 test server.
#[tokio::test(flavor = "multi_thread")]
async fn catalog_at_scale_s3() {
    catalog_at_scale(TempRepo::s3()).await;
}
