//! Whole-pool discovery in a run: a pattern volume of the config expanded into the
//! thin LVs it selects now (`lvs`, through [`crate::lvm::LvPattern::select`]), a
//! pattern that selects nothing reported as a warning, and the volumes a pattern
//! backed up whose LV is no longer selected recorded once as `gone`.

use std::collections::HashSet;

use super::step::{Action, Step};
use super::{Job, error_message};
use crate::config::Discovery;
use crate::lvm::{LvInfo, LvName, Lvm};
use crate::repo::{PointSelector, Repository, VolumeName};
use crate::source::lvm::{remove_snapshot, snapshots_of};
use crate::status::{Operation, Outcome, Record, Slot};

/// The volumes `d` selects now, each with its LV (sorted by LV name), and the steps
/// that say what discovery found: a failure (the VG cannot be listed, the pool is not
/// a thin pool), the warning that nothing matched, and each volume gone since the last
/// run (recorded `gone` unless `dry_run`). `skip` leaves out volumes another entry
/// backs up (by name, or an earlier pattern).
pub(super) async fn discover(
    job: &Job,
    location: &str,
    d: &Discovery,
    skip: impl Fn(&VolumeName) -> bool,
    dry_run: bool,
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
    steps.extend(gone(job, location, d, &names, &lvs, &skip, dry_run).await);
    found.retain(|(n, _)| !skip(n));
    (found, steps)
}

/// The volumes of the repository at `location` whose last backup came from `d` and
/// whose LV is not among `selected` (`lvs` being the VG's LVs now) and that no other
/// entry backs up (`skip`): each is recorded as `gone` (unless `dry_run`) and
/// reported as a step, once: a volume whose last record is already `gone` is left
/// alone.
async fn gone(
    job: &Job,
    location: &str,
    d: &Discovery,
    selected: &[&VolumeName],
    lvs: &[LvInfo],
    skip: &dyn Fn(&VolumeName) -> bool,
    dry_run: bool,
) -> Vec<Step> {
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
    let mut candidates: Vec<String> = match repo.volumes().await {
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
        let Some(last) = records
            .read(Some(&repo), &name, Operation::Backup, Slot::Last)
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
        let snapshots = stale_snapshots(&repo, &volume, lvs, dry_run).await;
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
/// the LV uuid its newest point records: they only served its next delta, and would
/// hold pool space for ever (the LV's data, when the LV itself was removed). Returns
/// what to add to the step's line: what was (or would be) removed, or why not.
async fn stale_snapshots(
    repo: &Repository,
    volume: &VolumeName,
    lvs: &[LvInfo],
    dry_run: bool,
) -> String {
    let newest = async {
        let commits = repo.commits(volume).await.ok()?;
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
