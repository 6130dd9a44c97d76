//! The catalog at scale (issue 14 item 4): requests per command, counted through
//! [`Repository::requests`], on ~20 volumes x 5 points, local and on the S3 test
//! server. Commands over every volume list `volumes/` once; the per-volume summary
//! saves every marker and archive read, and a summary that is missing, stale or
//! tampered with gives the same output as none. On a server whose listings show no
//! ETag (moto behind [`etagless`]), the summary keys each object by its
//! modification time instead, at the same cost.

use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sha2::Digest as _;
use thinarc::backup::{BackupOptions, backup, dry_run};
use thinarc::config::Config;
use thinarc::nightly::{self, Given, Job, Unobserved};
use thinarc::repo::{DamageKind, DamageRecord, DamageScope, Repository, RequestCounts, VolumeName};
use thinarc::source::RawSource;
use thinarc::status::{Records, gather};

use crate::util::etagless::etagless;
use crate::util::{TempRepo, make_image, s3, thinarc_env, write};

const VOLUMES: usize = 20;
const POINTS: usize = 5;

/// A handle on `t`'s repository (local, or the S3 test server) with fresh counts.
pub(crate) async fn open(t: &TempRepo) -> Repository {
    if let Some(endpoint) = t.s3_endpoint() {
        let store =
            object_store::prefix::PrefixStore::new(s3::store_at(endpoint, t.bucket()), "repo");
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
    point_of(t, repo, (&volume(i), i), p).await;
}

/// Backs up one more point of volume `name` from image `i` (a block changed).
pub(crate) async fn point_of(
    t: &TempRepo,
    repo: &Repository,
    (name, i): (&VolumeName, usize),
    p: usize,
) {
    let img = t.path(&format!("v{i}.img"));
    let mut data = make_image(256 << 10, i as u64);
    for q in 0..=p {
        data[(q * 70_000) % (256 << 10)] ^= 0xff;
    }
    write(&img, &data);
    let source = RawSource::open(&img).unwrap();
    backup(
        repo,
        source,
        &BackupOptions::new(name.clone()),
        Arc::default(),
    )
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

    // A dry run's parent lookup: the volume listed and its summary read; the index
    // of the chain is left to the backup (which checks it before it builds on it).
    let lookup = open(&t).await;
    let catalog = lookup.catalog(&volume(0)).await.unwrap();
    dry_run(&lookup, catalog, &BackupOptions::new(volume(0)))
        .await
        .unwrap();
    let cost = lookup.requests();
    assert_eq!(
        (cost.list, cost.get, cost.head),
        (1, 1, 0),
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

/// The same on the S3 test server behind a proxy whose listings show no ETag (as
/// s3s-fs lists): summaries keyed by modification time cost the same.
#[tokio::test(flavor = "multi_thread")]
async fn catalog_at_scale_s3_without_etags() {
    let before = etagless().stripped();
    catalog_at_scale(TempRepo::s3_without_etags()).await;
    assert!(etagless().stripped() > before, "the proxy cut no ETag");
}

/// A point's archive rewritten in place and a marker added since the summary, on
/// `t`, whose listings show ETags or (`etags` false) do not: the summary entries
/// are keyed by what they show, and every count is the same either way.
async fn rewritten_archive_and_added_marker(t: TempRepo, etags: bool) {
    let repo = open(&t).await;
    for i in 0..2 {
        for p in 0..POINTS {
            point(&t, &repo, i, p).await;
        }
    }
    let store = repo.store().clone();
    let summary: serde_json::Value =
        serde_json::from_slice(&get(&store, &summary_key(0)).await).unwrap();
    let points = summary["points"].as_array().unwrap();
    assert_eq!(points.len(), POINTS, "{summary:#}");
    for p in points {
        for object in ["marker", "archive"] {
            let (etag, modified) = (
                &p[format!("{object}_etag")],
                &p[format!("{object}_modified")],
            );
            assert_eq!(
                (etag.is_string(), modified.is_null()),
                (etags, etags),
                "{p:#}"
            );
            assert_eq!(
                (etag.is_null(), modified.is_string()),
                (!etags, !etags),
                "{p:#}"
            );
        }
    }
    let counts = |c: RequestCounts| (c.list, c.get, c.head);
    let (rows, cost) = listed(&t).await;
    assert_eq!(counts(cost), (1, 2, 0), "list: one listing, two summaries");
    let (shown, cost) = status(&t).await;
    assert_eq!(
        counts(cost),
        (1, 2, 0),
        "status: one listing, two summaries"
    );
    assert!(!rows.contains("damage"), "{rows}");
    assert!(shown.contains("[],"), "no problem: {shown}");

    // vm00: point 3's archive rewritten in place, a header byte changed (the same
    // size), in a later second than it was written (moto lists whole seconds).
    let key = archive_key(&repo, 0, 3).await;
    let mut archive = get(&store, &key).await;
    archive[100] ^= 0x55;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    put(&store, &key, archive).await;
    // Read as without a summary: its head and tail (which fail their checks), then
    // its listed size (HEAD) and head and tail again, to tell a wrong marker from a
    // damaged archive; `status` opens the newest chain once more, so twice.
    let (rows, cost) = listed(&t).await;
    assert_eq!(
        counts(cost),
        (1, 2 + 4, 1),
        "list: the rewritten archive read"
    );
    assert!(rows.contains("damage"), "{rows}");
    let (shown, cost) = status(&t).await;
    assert_eq!(
        counts(cost),
        (1, 2 + 2 * 4, 2),
        "status: the rewritten archive read"
    );
    let saved = [
        get(&store, &summary_key(0)).await,
        get(&store, &summary_key(1)).await,
    ];
    for i in 0..2 {
        store.delete(&summary_key(i)).await.unwrap();
    }
    assert_eq!(listed(&t).await.0, rows, "list as without a summary");
    assert_eq!(status(&t).await.0, shown, "status as without a summary");
    for (i, s) in saved.iter().enumerate() {
        put(&store, &summary_key(i), s.clone()).await;
    }

    // vm01: a point added by a writer, the summary put back as it was before: the new
    // marker is read, and its archive's head and tail (by `status` twice, as above).
    point(&t, &repo, 1, POINTS).await;
    put(&store, &summary_key(1), saved[1].clone()).await;
    let (rows, cost) = listed(&t).await;
    assert_eq!(counts(cost), (1, 2 + 4 + 3, 1), "list: the new point read");
    assert_eq!(rows.matches("\"seq\"").count(), 2 * POINTS + 1, "{rows}");
    let (shown, cost) = status(&t).await;
    assert_eq!(
        counts(cost),
        (1, 2 + 2 * 4 + 1 + 2 * 2, 2),
        "status: the new point read"
    );
    for i in 0..2 {
        store.delete(&summary_key(i)).await.unwrap();
    }
    assert_eq!(listed(&t).await.0, rows, "list as without a summary");
    assert_eq!(status(&t).await.0, shown, "status as without a summary");
}

/// On the S3 test server (listings with ETags): an archive rewritten in place is
/// read and checked, a marker added since the summary is read.
#[tokio::test(flavor = "multi_thread")]
async fn rewritten_archive_and_added_marker_s3() {
    rewritten_archive_and_added_marker(TempRepo::s3(), true).await;
}

/// The same behind a proxy whose listings show no ETag (as s3s-fs lists): summary
/// entries keyed by size and modification time; `list` and `status` cost one
/// listing and one GET per volume as with ETags; an archive rewritten in place (the
/// same size, a later time) is read and checked, its damage shown as without a
/// summary; a marker added since the summary is read.
#[tokio::test(flavor = "multi_thread")]
async fn rewritten_archive_and_added_marker_s3_without_etags() {
    let before = etagless().stripped();
    rewritten_archive_and_added_marker(TempRepo::s3_without_etags(), false).await;
    assert!(etagless().stripped() > before, "the proxy cut no ETag");
}

/// `run --dry-run` of `n` volumes named in a config (one more with no point yet), as
/// the nightly job plans them on the repository `repo` (kept open for the job).
async fn planned(t: &TempRepo, repo: &Repository, n: usize) -> (Vec<String>, RequestCounts) {
    planned_of(t, repo, 0..=n).await
}

/// `run --dry-run` of the volumes `named` (by index) on the repository `repo`.
async fn planned_of(
    t: &TempRepo,
    repo: &Repository,
    named: impl IntoIterator<Item = usize>,
) -> (Vec<String>, RequestCounts) {
    let mut text = format!(
        "state_dir = \"{}\"\n[repositories.main]\nlocation = \"{}\"\n",
        t.path("state").display(),
        t.location()
    );
    for i in named {
        text.push_str(&format!(
            "[[volumes]]\nname = \"{}\"\nsource = \"{}\"\n",
            volume(i),
            t.path(&format!("v{i}.img")).display()
        ));
    }
    let path = t.path("thinarc.toml");
    let config = Config::parse(&path, &text).unwrap();
    let job = Job::new(Given::default()).with_config(&config);
    let before = repo.requests();
    job.keep_open(repo.clone());
    let report = nightly::dry_run(&job, &config, &Unobserved).await.unwrap();
    let lines = report
        .steps
        .iter()
        .map(|s| format!("{} {}: {}", s.ok, s.volume, s.detail))
        .collect();
    (lines, repo.requests() - before)
}

async fn run_dry_run_at_scale(t: TempRepo) {
    const PLANNED: usize = 20;
    let repo = open(&t).await;
    for i in 0..PLANNED {
        for p in 0..3 {
            point(&t, &repo, i, p).await;
        }
    }
    let img = |i: usize| t.path(&format!("v{i}.img")).display().to_string();
    write(
        &t.path(&format!("v{PLANNED}.img")),
        &make_image(256 << 10, 99),
    );
    let store = repo.store().clone();
    // vm01: the newest archive's header flipped in place; vm02: recorded damaged
    // as a whole (a damage record, as `verify` writes it).
    let key = archive_key(&repo, 1, 3).await;
    let mut archive = get(&store, &key).await;
    archive[100] ^= 0x55;
    put(&store, &key, archive).await;
    let damaged = repo.commits(&volume(2)).await.unwrap();
    let damaged = &damaged[1];
    repo.write_damage(
        &volume(2),
        &DamageRecord::new(
            &damaged.archive_id,
            damaged.seq,
            &damaged.object,
            (DamageKind::Archive, DamageScope::Structure),
            "planted by the test".into(),
            "verify",
        ),
    )
    .await
    .unwrap();

    // One listing of `volumes/`, one summary per volume, vm02's damage record, and
    // vm01's flipped archive read from the object (its summary entry no longer
    // matches it): head and tail as the chain is resolved, and again (with the
    // sizes) as the new chain looks for the newest readable archive. No index.
    let (lines, cost) = planned(&t, &repo, PLANNED).await;
    assert_eq!(
        (cost.list, cost.get, cost.head, cost.put),
        (1, PLANNED as u64 + 1 + 8, 2, 0),
        "{cost:?}"
    );
    let delta = |i: usize| {
        format!(
            "true {}: from {}: would write a delta archive: reads the whole source and stores the blocks whose digest differs from seq 3's",
            volume(i),
            img(i)
        )
    };
    assert_eq!(lines.len(), PLANNED + 1, "{lines:#?}");
    assert_eq!(lines[0], delta(0));
    assert!(
        lines[1].starts_with(&format!(
            "true {}: from {}: would write a full archive: seq 3 cannot be built on (",
            volume(1),
            img(1)
        )) && lines[1].ends_with("): this backup writes a full archive starting a new chain"),
        "{}",
        lines[1]
    );
    assert_eq!(
        lines[2],
        format!(
            "true {}: from {}: would write a full archive: seq 3 cannot be built on (damaged archive {} (seq 2): planted by the test): this backup writes a full archive starting a new chain",
            volume(2),
            img(2),
            damaged.archive_id
        )
    );
    for (i, line) in lines.iter().enumerate().take(PLANNED).skip(3) {
        assert_eq!(*line, delta(i));
    }
    assert_eq!(
        lines[PLANNED],
        format!(
            "true {}: from {}: would write a full archive: the volume has no point yet: reads the whole source",
            volume(PLANNED),
            img(PLANNED)
        )
    );

    // The archives are the truth: without summaries, the same plans, still one
    // listing.
    for i in 0..PLANNED {
        store.delete(&summary_key(i)).await.unwrap();
    }
    let (bare, bare_cost) = planned(&t, &repo, PLANNED).await;
    assert_eq!(bare, lines, "the same plans without summaries");
    assert_eq!(bare_cost.list, 1, "{bare_cost:?}");
    assert!(bare_cost.get > cost.get, "{bare_cost:?}");
}

/// Local repository: `run --dry-run` of 20 volumes lists `volumes/` once and reads
/// one summary per volume; a damaged newest archive, a recorded damage and a volume
/// with no point are planned as before, and without summaries the plans are the same.
#[tokio::test(flavor = "multi_thread")]
async fn run_dry_run_at_scale_local() {
    run_dry_run_at_scale(TempRepo::new()).await;
}

/// The same on the S3 test server.
#[tokio::test(flavor = "multi_thread")]
async fn run_dry_run_at_scale_s3() {
    run_dry_run_at_scale(TempRepo::s3()).await;
}

/// What the start of `thinarc -v run` (or of a dry run, `dry`) cost: its log line
/// `first backup starts` (a dry run's `first plan starts`), with the requests so far.
fn run_start(t: &TempRepo, config: &std::path::Path, dry: bool) -> String {
    let mut env = t.env_pairs();
    env.push(crate::run::fake_lvs(t));
    let mut args = vec!["-v", "run", "--config", config.to_str().unwrap()];
    if dry {
        args.push("--dry-run");
    }
    let o = thinarc_env(&args, &env);
    assert_eq!(o.code, Some(4), "the pattern matches no LV: {}", o.show());
    let (starts, not) = match dry {
        true => ("first plan starts", "first backup starts"),
        false => ("first backup starts", "first plan starts"),
    };
    assert!(!o.stderr.contains(not), "{}", o.show());
    let line = o
        .stderr
        .lines()
        .find(|l| l.contains(starts))
        .unwrap_or_else(|| panic!("{}", o.show()));
    line[line.find("list=").unwrap()..].to_string()
}

async fn run_start_at_scale(t: TempRepo) {
    // Volumes of VG pve that a pattern matches but whose LVs are gone (`lvs` shows
    // none of them), without result records; the run's first backup is of a file.
    let repo = open(&t).await;
    for i in 0..VOLUMES {
        let name = VolumeName::new(&format!("pve/vm-5{i:02}-disk-0")).unwrap();
        for p in 0..2 {
            point_of(&t, &repo, (&name, i), p).await;
        }
    }
    write(&t.path("a.img"), &make_image(256 << 10, 98));
    let config = t.path("p.toml");
    write(
        &config,
        format!(
            "state_dir = \"{}\"\n[repositories.r]\nlocation = \"{}\"\n[[volumes]]\nsource = \"lvm:pve/vm-5*\"\n[[volumes]]\nname = \"a\"\nsource = \"{}\"\n",
            t.path("state").display(),
            t.location(),
            t.path("a.img").display()
        )
        .as_bytes(),
    );
    // `volumes/` listed once; no result record asked for (the listing shows none),
    // no volume listed on its own. (The handle counts what follows its opening: the
    // config read at open is not in these counts.)
    assert_eq!(run_start(&t, &config, true), "list=1 get=0");
    assert_eq!(run_start(&t, &config, false), "list=1 get=0");
}

/// Local repository: a run's start (unlock, discovery of a pattern over a repository
/// of 20 volumes whose LVs are gone) reads the config once and lists `volumes/` once.
#[tokio::test(flavor = "multi_thread")]
async fn run_start_at_scale_local() {
    run_start_at_scale(TempRepo::new()).await;
}

/// The same on the S3 test server.
#[tokio::test(flavor = "multi_thread")]
async fn run_start_at_scale_s3() {
    run_start_at_scale(TempRepo::s3()).await;
}

/// A volume whose newest archive was damaged at rest (its header or trailer flipped,
/// its object truncated, its summary gone) is planned by `run --dry-run` from the
/// same reads however many volumes the config names: itself alone (each named volume
/// listed on its own) or 17 (the repository listed once, at least `LIST_ALL_FROM` =
/// 16 named): the same plan line.
async fn dry_run_plan_does_not_depend_on_the_volumes_named(t: TempRepo) {
    const DAMAGED: usize = 4;
    let repo = open(&t).await;
    for i in 0..DAMAGED {
        for p in 0..3 {
            point(&t, &repo, i, p).await;
        }
    }
    let store = repo.store().clone();
    for i in 0..DAMAGED {
        let key = archive_key(&repo, i, 3).await;
        let mut archive = get(&store, &key).await;
        let len = archive.len();
        match i {
            0 => archive[100] ^= 0x55,
            1 => archive[len - 20] ^= 0x55,
            2 => archive.truncate(len / 2),
            _ => store.delete(&summary_key(i)).await.unwrap(),
        }
        put(&store, &key, archive).await;
    }
    let (among, cost) = planned_of(&t, &open(&t).await, 0..=16).await;
    assert_eq!((among.len(), cost.list), (17, 1), "listed once: {cost:?}");
    for (i, among) in among.iter().enumerate().take(DAMAGED) {
        let (alone, _) = planned_of(&t, &open(&t).await, [i]).await;
        assert_eq!(&alone[0], among, "volume {i}");
        let kind = if i == DAMAGED - 1 { "delta" } else { "full" };
        assert!(
            alone[0].starts_with(&format!(
                "true {}: from {}: would write a {kind} archive: ",
                volume(i),
                t.path(&format!("v{i}.img")).display()
            )),
            "{}",
            alone[0]
        );
    }
}

/// Local repository.
#[tokio::test(flavor = "multi_thread")]
async fn dry_run_plan_does_not_depend_on_the_volumes_named_local() {
    dry_run_plan_does_not_depend_on_the_volumes_named(TempRepo::new()).await;
}

/// The same on the S3 test server.
#[tokio::test(flavor = "multi_thread")]
async fn dry_run_plan_does_not_depend_on_the_volumes_named_s3() {
    dry_run_plan_does_not_depend_on_the_volumes_named(TempRepo::s3()).await;
}

/// A server that does not implement ListMultipartUploads (s3s-fs answers HTTP 501):
/// `status` of every volume asks it once, not once more per volume, and reports the
/// answer on each volume (exit 1: it cannot tell what killed uploads cost).
#[tokio::test(flavor = "multi_thread")]
async fn status_on_a_server_without_upload_listing_asks_once() {
    let t = TempRepo::s3_without_etags();
    etagless().refuse_uploads(t.bucket());
    let repo = open(&t).await;
    for i in 0..3 {
        point(&t, &repo, i, 0).await;
    }
    let before = etagless().refused();
    let out = t.run(&["status"]);
    assert_eq!(
        etagless().refused() - before,
        1,
        "ListMultipartUploads asked once"
    );
    assert_eq!(out.code, Some(1), "{}", out.show());
    let problem = format!("incomplete uploads of {}: ", t.location());
    let both = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(both.matches(&problem).count(), 3, "{}", out.show());
    assert!(both.contains("501"), "{}", out.show());
}
