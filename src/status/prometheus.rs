//! The status as a node_exporter textfile (Prometheus text exposition format 0.0.4).
//!
//! Every series carries `volume` and `repository` labels. Timestamps are Unix seconds;
//! a metric whose value is unknown (no success yet) is left out rather than written as
//! 0, so `absent()` and `time() - metric` alerts behave. Suggested alerts:
//! `time() - thinarc_last_success_timestamp_seconds > 26*3600` (no good backup for a
//! day) and `thinarc_last_run_success == 0`.

use std::fmt::Write as _;
use std::path::Path;

use super::{Operation, Outcome, Status, VolumeStatus};

/// One metric family: name, type, help, and how to get a value from a volume.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: fn(&VolumeStatus) -> Option<f64>,
}

fn ts(t: chrono::DateTime<chrono::Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

const FAMILIES: &[Family] = &[
    Family {
        name: "thinarc_last_success_timestamp_seconds",
        kind: "gauge",
        help: "End time of the last successful backup (left out once the volume is gone).",
        value: |v| {
            (!v.gone)
                .then_some(v.backup.last_success.as_ref())?
                .map(|r| ts(r.time()))
        },
    },
    Family {
        name: "thinarc_last_failure_timestamp_seconds",
        kind: "gauge",
        help: "End time of the last failed backup.",
        value: |v| v.backup.last_failure.as_ref().map(|r| ts(r.time())),
    },
    Family {
        name: "thinarc_last_run_success",
        kind: "gauge",
        help: "1 if the last finished backup succeeded, 0 if it failed.",
        value: |v| {
            let last = [&v.backup.last_success, &v.backup.last_failure]
                .into_iter()
                .flatten()
                .max_by_key(|r| r.time())?;
            Some(f64::from(u8::from(last.result == Outcome::Success)))
        },
    },
    Family {
        name: "thinarc_volume_gone",
        kind: "gauge",
        help: "1 once a discovery pattern no longer selects the volume's LV (no longer backed up; its points kept).",
        value: |v| Some(f64::from(u8::from(v.gone))),
    },
    Family {
        name: "thinarc_backup_running",
        kind: "gauge",
        help: "1 while a backup is recorded as started and not finished.",
        value: |v| {
            Some(f64::from(u8::from(
                v.backup
                    .last
                    .as_ref()
                    .is_some_and(|r| r.result == Outcome::Running),
            )))
        },
    },
    Family {
        name: "thinarc_last_backup_read_bytes",
        kind: "gauge",
        help: "Bytes read from the source by the last successful backup.",
        value: |v| v.backup.last_success.as_ref()?.bytes_read.map(|b| b as f64),
    },
    Family {
        name: "thinarc_last_backup_written_bytes",
        kind: "gauge",
        help: "Bytes stored by the last successful backup.",
        value: |v| {
            v.backup
                .last_success
                .as_ref()?
                .bytes_written
                .map(|b| b as f64)
        },
    },
    Family {
        name: "thinarc_points",
        kind: "gauge",
        help: "Committed points of the volume.",
        value: |v| Some(v.points as f64),
    },
    Family {
        name: "thinarc_chain_length",
        kind: "gauge",
        help: "Archives a restore of the newest point reads (1 = a full archive).",
        value: |v| Some(v.chain_length as f64),
    },
    Family {
        name: "thinarc_stored_bytes",
        kind: "gauge",
        help: "Bytes of all archives of the volume in the repository.",
        value: |v| Some(v.stored_bytes as f64),
    },
    Family {
        name: "thinarc_newest_point_timestamp_seconds",
        kind: "gauge",
        help: "Creation time of the newest point.",
        value: |v| v.newest.as_ref().map(|n| ts(n.created)),
    },
    Family {
        name: "thinarc_locks",
        kind: "gauge",
        help: "Lock objects on the volume (a run in progress, or a stale lock of a dead run).",
        value: |v| Some(v.locks.len() as f64),
    },
    Family {
        name: "thinarc_stale_locks",
        kind: "gauge",
        help: "Lock objects not refreshed within their TTL (a run died holding the lock).",
        value: |v| Some(v.locks.iter().filter(|l| l.stale).count() as f64),
    },
    Family {
        name: "thinarc_stray_snapshots",
        kind: "gauge",
        help: "thinarc snapshots of an LVM source other than its base (left by interrupted runs).",
        value: |v| Some(v.snapshots.iter().filter(|s| !s.base).count() as f64),
    },
    Family {
        name: "thinarc_damaged_points",
        kind: "gauge",
        help: "Listed points that cannot be restored (damaged archive or chain, or depending on recorded damaged data).",
        value: |v| Some(v.damage.damaged_points as f64),
    },
    Family {
        name: "thinarc_corrupt_markers",
        kind: "gauge",
        help: "Commit markers that cannot be read (`thinarc repair` sets them aside).",
        value: |v| Some(v.damage.corrupt_markers as f64),
    },
    Family {
        name: "thinarc_uncommitted_archives",
        kind: "gauge",
        help: "Complete archives whose commit marker is lost (`thinarc repair` commits them again).",
        value: |v| Some(v.damage.orphans as f64),
    },
    Family {
        name: "thinarc_problems",
        kind: "gauge",
        help: "Problems found reading the volume's catalog (0 = none).",
        value: |v| Some(v.problems.len() as f64),
    },
];

/// Per-operation families, labelled with `operation`.
const OPERATION_FAMILIES: &[(&str, &str, bool)] = &[
    (
        "thinarc_operation_last_success_timestamp_seconds",
        "End time of the last successful run of the operation.",
        true,
    ),
    (
        "thinarc_operation_last_failure_timestamp_seconds",
        "End time of the last failed run of the operation.",
        false,
    ),
];

/// Escapes a label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders the status of one or more repositories in the text exposition format
/// (each metric family once, with a series per repository and volume).
pub fn render(statuses: &[Status]) -> String {
    let mut out = String::new();
    let volumes = || {
        statuses
            .iter()
            .flat_map(|s| s.volumes.iter().map(move |v| (label(&s.repository), v)))
    };
    for f in FAMILIES {
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
        for (repo, v) in volumes() {
            if let Some(value) = (f.value)(v) {
                let _ = writeln!(
                    out,
                    "{}{{volume=\"{}\",repository=\"{repo}\"}} {value}",
                    f.name,
                    label(&v.volume)
                );
            }
        }
    }
    for (name, help, success) in OPERATION_FAMILIES {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (repo, v) in volumes() {
            for op in Operation::ALL {
                let o = v.operation(op);
                let r = if *success {
                    &o.last_success
                } else {
                    &o.last_failure
                };
                if let Some(r) = r {
                    let _ = writeln!(
                        out,
                        "{name}{{volume=\"{}\",repository=\"{repo}\",operation=\"{}\"}} {}",
                        label(&v.volume),
                        op.name(),
                        ts(r.time())
                    );
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP thinarc_status_timestamp_seconds When this status was taken.\n# TYPE thinarc_status_timestamp_seconds gauge"
    );
    for s in statuses {
        let _ = writeln!(
            out,
            "thinarc_status_timestamp_seconds{{repository=\"{}\"}} {}",
            label(&s.repository),
            ts(s.time)
        );
    }
    out
}

/// Why a textfile is not written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TextfileError {
    /// The textfile's folder is missing (or not a folder): it belongs to the
    /// collector, so a missing one is a typo, and it is not created.
    #[error(
        "cannot write the textfile {path}: {folder} {problem}; it should be node_exporter's textfile directory (--collector.textfile.directory): fix the path, or create the folder"
    )]
    NoFolder {
        path: String,
        folder: String,
        problem: &'static str,
    },
    /// Writing failed.
    #[error("cannot write the textfile {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Checks that the folder of the textfile `path` exists; before any work, so that a
/// typo is refused at once.
///
/// # Errors
/// [`TextfileError::NoFolder`].
pub fn check_folder(path: &Path) -> Result<(), TextfileError> {
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let problem = match std::fs::metadata(folder) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => "is not a folder",
        Err(_) => "does not exist",
    };
    Err(TextfileError::NoFolder {
        path: path.display().to_string(),
        folder: folder.display().to_string(),
        problem,
    })
}

/// Writes `statuses` to `path` atomically (node_exporter may read it at any moment),
/// into its existing folder.
///
/// # Errors
/// [`TextfileError`].
pub fn write(path: &Path, statuses: &[Status]) -> Result<(), TextfileError> {
    check_folder(path)?;
    super::record::write_atomic(path, render(statuses).as_bytes()).map_err(|source| {
        TextfileError::Write {
            path: path.display().to_string(),
            source,
        }
    })
}
