//! Whole-pool discovery in a run: a pattern volume of the config expanded into the
//! thin LVs it selects now (`lvs`, through [`crate::lvm::LvPattern::select`]), a
//! pattern that selects nothing reported as a warning, and the volumes a pattern
//! backed up whose LV is no longer selected recorded once as `gone`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use super::step::{Action, Step};
use super::{Job, error_message};
use crate::config::Discovery;
use crate::lvm::{LvInfo, LvName, Lvm};
use crate::repo::{PointSelector, RepoError, Repository, VolumeListing, VolumeName};
use crate::source::lvm::{remove_snapshot, snapshots_of};
use crate::status::{Operation, Outcome, Record, Slot};

/// The volume folders of each repository a run looks at as a whole, from one (paged)
/// listing of its `volumes/` taken on first need and kept for the run: discovery's
/// `gone` check and a dry run's plans read it, instead of listing each volume. A
/// backup lists its volume again under its lock (this listing may be old by then).
#[derive(Default)]
pub(super) struct Listings(HashMap<String, Listed>);

/// The volume folders of one repository, by volume.
pub(super) type Listed = Arc<BTreeMap<VolumeName, VolumeListing>>;

impl Listings {
    /// The volume folders of `repo`, opened at `location`.
    ///
    /// # Errors
    /// [`RepoError::Store`] when `volumes/` cannot be listed (tried again next time).
    pub(super) async fn of(
        &mut self,
        location: &str,
        repo: &Repository,
    ) -> Result<Listed, RepoError> {
        if let Some(listed) = self.0.get(location) {
            return Ok(listed.clone());
        }
        let listed = Arc::new(repo.list_volumes().await?.into_iter().collect());
        self.0.insert(location.to_string(), Arc::clone(&listed));
        Ok(listed)
    }

    /// The volume folders of the repository at `location`, if listed already.
    pub(super) fn get(&self, location: &str) -> Option<Listed> {
        self.0.get(location).cloned()
    }
}

/// The volumes `d` selects now, each with its LV (sorted by LV name), and the steps
/// that say what discovery found: a failure (the VG cannot be listed, the pool is not
/// a thin pool), the warning that nothing matched, and each volume gone since the last
/// run (recorded `gone` unless `dry_run`). `skip` leaves out volumes another entry
/// backs up (by name, or an earlier pattern). The repository's volumes are read from
/// `listings`.
pub(super) async fn discover(
    job: &Job,
    location: &str,
    d: &Discovery,
    skip: impl Fn(&VolumeName) -> bool,
    dry_run: bool,
    listings: &mut Listings,
) -> (Vec<(VolumeName, LvName)>, Vec<Step>) {
    let source = d.source();
    let step = |result| Step::new(Action::Discover, &source, location, result);
    // Listed blocking, like every LVM command of a backup: it takes milliseconds.
    let lvs = match Lvm.lvs(&[&d.pattern.vg]) {
        Ok(lvs) => lvs,
        Err(e) => {
            let detail = format!("cannot list the LVs of VG {}: {e}", d.pattern.vg);
            return (Vec::new(), vec![step(Err(detail))]);
        }
    };
    let selected = match d.pattern.select(&lvs, &d.exclude) {
        Ok(s) => s,
        Err(e) => return (Vec::new(), vec![step(Err(e.to_string()))]),
    };
    let mut steps = Vec::new();
    let mut found = Vec::new();
    for lv in selected.iter().cloned() {
        match VolumeName::new(&lv.to_string()) {
            Ok(name) => found.push((name, lv)),
            Err(e) => steps.push(step(Err(format!(
                "LV {lv} cannot be a volume: {e}; exclude it, or back it up under a name of its own"
            )))),
        }
    }
    if selected.is_empty() {
        steps.push(Step {
            warning: true,
            ..step(Ok(format!(
                "{source} matches no thin LV (thinarc's snapshots and the LVs restore created never match): nothing was backed up for it"
            )))
        });
    }
    let names: Vec<&VolumeName> = found.iter().map(|(n, _)| n).collect();
    let seen = Seen {
        selected: &names,
        lvs: &lvs,
        skip: &skip,
    };
    steps.extend(gone(job, location, d, seen, dry_run, listings).await);
    found.retain(|(n, _)| !skip(n));
    (found, steps)
}

/// What discovery saw: the volumes a pattern selects, the VG's LVs now, and which
/// volumes another entry backs up.
struct Seen<'a> {
    selected: &'a [&'a VolumeName],
    lvs: &'a [LvInfo],
    skip: &'a dyn Fn(&VolumeName) -> bool,
}

/// The volumes of the repository at `location` whose last backup came from `d` and
/// whose LV is not among `seen.selected` and that no other entry backs up
/// (`seen.skip`): each is recorded as `gone` (unless `dry_run`) and reported as a step,
/// once: a volume whose last record is already `gone` is left alone. The volumes and
/// their result records are those `listings` shows: one listing of the repository,
/// and a record read only where it shows one.
async fn gone(
    job: &Job,
    location: &str,
    d: &Discovery,
    seen: Seen<'_>,
    dry_run: bool,
    listings: &mut Listings,
) -> Vec<Step> {
    let Seen {
        selected,
        lvs,
        skip,
    } = seen;
    let source = d.source();
    let failed = |e: &(dyn std::error::Error + 'static)| {
        let detail = format!(
            "cannot look for volumes that are gone: {}",
            error_message(e)
        );
        Step::new(Action::Discover, &source, location, Err(detail))
    };
    let repo = match job.open(location).await {
        Ok(r) => r,
        Err(e) => return vec![failed(&e)],
    };
    let records = job.records(location);
    let listed = match listings.of(location, &repo).await {
        Ok(l) => l,
        Err(e) => return vec![failed(&e)],
    };
    let mut candidates: Vec<String> = match repo.volumes_listed(&listed).await {
        Ok(v) => v.iter().map(ToString::to_string).collect(),
        Err(e) => return vec![failed(&e)],
    };
    candidates.extend(records.local_volumes());
    let selected: HashSet<&str> = selected.iter().map(|n| n.as_str()).collect();
    let mut seen = HashSet::new();
    let mut steps = Vec::new();
    for name in candidates {
        if !d.pattern.matches_name(&name) || selected.contains(name.as_str()) {
            continue;
        }
        if !seen.insert(name.clone()) {
            continue;
        }
        let empty = VolumeListing::default();
        let listing = VolumeName::new(&name)
            .ok()
            .and_then(|v| listed.get(&v))
            .unwrap_or(&empty);
        let Some(last) = records
            .read_listed(
                Some(&repo),
                Some(listing),
                &name,
                Operation::Backup,
                Slot::Last,
            )
            .await
        else {
            continue;
        };
        if last.discovered_by.as_deref() != Some(source.as_str()) || last.result == Outcome::Gone {
            continue;
        }
        let Ok(volume) = VolumeName::new(&name) else {
            continue;
        };
        if skip(&volume) {
            continue;
        }
        let exists = lvs
            .iter()
            .any(|l| name == format!("{}/{}", l.vg_name, l.lv_name));
        let why = if exists {
            format!(
                "LV {name} is no longer selected by {source} (excluded, not a thin LV of the pool, or made by thinarc)"
            )
        } else {
            format!("LV {name} no longer exists")
        };
        let snapshots = stale_snapshots(&repo, (&volume, listing), lvs, dry_run).await;
        let detail = if dry_run {
            format!("{why}: would be recorded as gone (its points are kept){snapshots}")
        } else {
            let record =
                Record::start(Operation::Backup, &volume, location).gone(&source, why.clone());
            job.write_record(location, Some(&repo), record).await;
            format!(
                "{why}: recorded as gone; its points are kept, and it is reported once (a later run backs it up again if the pattern selects it again){snapshots}"
            )
        };
        steps.push(Step {
            source: Some(format!("lvm:{volume}")),
            discovered_by: Some(source.clone()),
            ..Step::new(Action::Gone, &volume, location, Ok(detail))
        });
    }
    steps
}

/// Removes (unless `dry_run`) thinarc's snapshots of the gone `volume`'s LV, found by
/// the LV uuid its newest point records (its catalog from `listing`, its folder as
/// listed): they only served its next delta, and would hold pool space for ever (the
/// LV's data, when the LV itself was removed). Returns what to add to the step's
/// line: what was (or would be) removed, or why not.
async fn stale_snapshots(
    repo: &Repository,
    (volume, listing): (&VolumeName, &VolumeListing),
    lvs: &[LvInfo],
    dry_run: bool,
) -> String {
    let newest = async {
        let commits = repo
            .catalog_listed(volume, listing.clone())
            .await
            .ok()?
            .commits;
        let chain = repo.resolve(&commits, &PointSelector::Latest).await.ok()?;
        chain.tip().header.lvm.clone()
    };
    let Some(rec) = newest.await else {
        return String::new();
    };
    let snapshots = snapshots_of(lvs, &rec.lv_uuid);
    if snapshots.is_empty() {
        return String::new();
    }
    let names: Vec<String> = snapshots
        .iter()
        .map(|l| format!("{}/{}", l.vg_name, l.lv_name))
        .collect();
    if dry_run {
        return format!("; would remove its thinarc snapshot {}", names.join(", "));
    }
    for l in &snapshots {
        if let Err(e) = remove_snapshot(&l.vg_name, &l.lv_name) {
            return format!(
                "; its thinarc snapshot {}/{} could not be removed ({e}): remove it with lvremove",
                l.vg_name, l.lv_name
            );
        }
    }
    format!("; removed its thinarc snapshot {}", names.join(", "))
}
