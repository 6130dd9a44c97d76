//! The report of a run: its steps, each what it did (backup, prune, copy, discover,
//! gone) and how it went, shared by [`run`](super::run) and the discovery of pattern
//! volumes.

use serde::Serialize;

use super::JobError;
use crate::backup::ArchiveKind;

/// What a step of a run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// A backup (in a dry run: what it would write).
    Backup,
    /// A prune after a backup or a copy.
    Prune,
    /// A copy to another repository.
    Copy,
    /// A pattern's discovery, when it failed or matched nothing.
    Discover,
    /// A volume a pattern backed up whose LV is no longer selected.
    Gone,
}

impl Action {
    /// The lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Action::Backup => "backup",
            Action::Prune => "prune",
            Action::Copy => "copy",
            Action::Discover => "discover",
            Action::Gone => "gone",
        }
    }
}

/// One step of a run and how it went.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// `backup`, `prune`, `copy`, `discover` or `gone`.
    pub operation: Action,
    /// The volume (a `discover` step: the pattern, `lvm:VG/POOL/GLOB`).
    pub volume: String,
    /// The repository written (the destination for a copy).
    pub repository: String,
    /// Whether it succeeded.
    pub ok: bool,
    /// It succeeded but warns (a pattern that matched nothing): the run exits with
    /// code 4 if no step failed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub warning: bool,
    /// What it did, or the error.
    pub detail: String,
    /// A backup's source (`lvm:VG/LV` or a path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The pattern that selected the LV, for a backup of a discovered volume.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovered_by: Option<String>,
    /// In a dry run: the archive a backup would write, `full` or `delta`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<ArchiveKind>,
}

impl Step {
    /// A step of `operation` on `volume` in `repository` that did `Ok(what)` or failed
    /// with `Err(error)`; no warning, source, pattern or kind.
    pub(super) fn new(
        operation: Action,
        volume: impl ToString,
        repository: &str,
        result: Result<String, String>,
    ) -> Step {
        Step {
            operation,
            volume: volume.to_string(),
            repository: repository.to_string(),
            ok: result.is_ok(),
            warning: false,
            detail: result.unwrap_or_else(|e| e),
            source: None,
            discovered_by: None,
            kind: None,
        }
    }
}

/// The steps of a run, in order.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(transparent)]
pub struct RunReport {
    /// Each step.
    pub steps: Vec<Step>,
}

impl RunReport {
    /// Whether every step succeeded.
    ///
    /// # Errors
    /// [`JobError::StepsFailed`] naming the failed steps.
    pub fn check(&self) -> Result<(), JobError> {
        let failed: Vec<String> = self
            .steps
            .iter()
            .filter(|s| !s.ok)
            .map(|s| format!("{} {}", s.operation.name(), s.volume))
            .collect();
        if failed.is_empty() {
            return Ok(());
        }
        Err(JobError::StepsFailed {
            failed: failed.len(),
            total: self.steps.len(),
            what: failed.join(", "),
        })
    }

    /// The steps that succeeded with a warning.
    pub fn warnings(&self) -> Vec<&Step> {
        self.steps.iter().filter(|s| s.warning).collect()
    }
}
