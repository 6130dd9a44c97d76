//! Removing leftovers: archive objects that no commit marker names (an interrupted or
//! losing backup), and, on a local repository, the staging files of interrupted
//! uploads. Only objects older than a grace period are touched, so a backup that is
//! still uploading (its marker not yet written) is never disturbed.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use object_store::ObjectStoreExt;

use super::{RepoError, Repository, VolumeName};

/// How old an uncommitted object must be before it is removed.
pub const LEFTOVER_GRACE: Duration = Duration::from_secs(3600);

impl Repository {
    /// Removes leftovers of `volume` older than [`LEFTOVER_GRACE`] relative to `now`,
    /// which should be a time read from the store itself (the last-modified time of an
    /// object just written), so the local clock does not matter. Returns the names
    /// removed.
    ///
    /// # Errors
    /// [`RepoError::Store`] if listing or deleting fails.
    pub async fn clean_leftovers(
        &self,
        volume: &VolumeName,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, RepoError> {
        let committed: HashSet<String> = self
            .commits(volume)
            .await?
            .into_iter()
            .map(|c| c.object)
            .collect();
        let cutoff = now - LEFTOVER_GRACE;
        let prefix = volume.archives_prefix();
        let metas = self.list(&prefix).await?;
        let mut removed = Vec::new();
        for m in metas {
            let Some(name) = m.location.filename().map(str::to_string) else {
                continue;
            };
            if committed.contains(&name) || m.last_modified >= cutoff {
                continue;
            }
            match self.store().delete(&m.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => removed.push(name),
                Err(e) => return Err(RepoError::store("delete leftover", &m.location)(e)),
            }
        }
        if let Some(root) = &self.local_root {
            removed.extend(clean_staging(&root.join(prefix.as_ref()), cutoff));
        }
        Ok(removed)
    }
}

/// Removes `*.tarc#N` staging files of the local store older than `cutoff`. Best
/// effort: a file that cannot be removed is left for the next run.
fn clean_staging(dir: &std::path::Path, cutoff: DateTime<Utc>) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let staging = name
            .split_once(".tarc#")
            .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()));
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| DateTime::<Utc>::from(t) < cutoff);
        if staging && old && std::fs::remove_file(e.path()).is_ok() {
            removed.push(name);
        }
    }
    removed
}
