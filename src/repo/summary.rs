//! The summary of a volume (`volumes/<v>/summary`, FORMAT.md §15.5): derived, optional
//! and safe to delete. For each committed point it keeps what a catalog reader would
//! otherwise fetch object by object: the commit marker, and the bytes of its archive
//! that [`RemoteArchive::open`](super::RemoteArchive::open) reads (preamble and header,
//! directory and trailer). An entry is used only while the listing shows the marker
//! and the archive object unchanged (same size and ETag); the bytes then go through
//! the same checks as bytes read from the archive. A summary that is missing,
//! unparsable, of another repository or volume, or stale costs only the reads it
//! would have saved.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::catalog::{VolumeCatalog, VolumeListing};
use super::marker::CommitMarker;
use super::{RemoteArchive, RepoError, Repository, VolumeName};

/// `format` of a summary.
const FORMAT: &str = "thinarc-volume-summary";
/// `version` of a summary this build writes and reads.
const VERSION: u32 = 1;
/// A summary larger than this is not read (a volume of thousands of points is read
/// point by point instead).
pub(crate) const MAX_SUMMARY: u64 = 16 << 20;
/// Archives opened at once to write a summary.
const OPENS: usize = 16;

/// The bytes of an archive that opening it reads: `head` from its first byte to the
/// body, `tail` from its directory to its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Preread {
    pub head: Bytes,
    pub tail: Bytes,
}

/// The summary as stored.
#[derive(Serialize, Deserialize)]
struct SummaryFile {
    format: String,
    version: u32,
    repository: String,
    volume: String,
    points: Vec<Entry>,
    /// SHA-256 of `points` as serialised (compact JSON), hex: a summary damaged at
    /// rest is ignored whole.
    sha256: String,
}

/// The checksum of `points`.
fn checksum(points: &[Entry]) -> String {
    let json = serde_json::to_vec(points).expect("summary entries serialise");
    hex::encode(Sha256::digest(json))
}

/// One committed point.
#[derive(Serialize, Deserialize)]
struct Entry {
    /// Name of the commit marker under `commits/`.
    marker: String,
    /// Size and ETag of the marker object as listed.
    marker_size: u64,
    marker_etag: String,
    /// The marker's contents.
    commit: CommitMarker,
    /// Size and ETag of the archive object as listed.
    archive_size: u64,
    archive_etag: String,
    /// `Preread::head` and `Preread::tail`, hex.
    head: String,
    tail: String,
}

/// What a reader may use of a volume's summary: by marker name, the marker and, when
/// the archive object is unchanged, its pre-read bytes.
#[derive(Debug, Default)]
pub(crate) struct Summary {
    entries: HashMap<String, (CommitMarker, Option<Arc<Preread>>)>,
}

impl Summary {
    /// The marker named `name`, and the archive's bytes if still valid.
    pub(crate) fn get(&self, name: &str) -> Option<&(CommitMarker, Option<Arc<Preread>>)> {
        self.entries.get(name)
    }
}

/// Whether `meta` is listed with this size and a matching ETag.
fn unchanged(meta: Option<&&ObjectMeta>, size: u64, etag: &str) -> bool {
    meta.is_some_and(|m| m.size == size && m.e_tag.as_deref() == Some(etag))
}

impl Repository {
    /// The summary of `volume` if `listing` shows one, keeping only the entries whose
    /// marker (and, for the bytes, archive) the listing shows unchanged. Anything
    /// wrong with it makes it empty.
    pub(crate) async fn read_summary(
        &self,
        volume: &VolumeName,
        listing: &VolumeListing,
    ) -> Summary {
        let key = volume.summary_key();
        let Some(meta) = listing.get(&key) else {
            return Summary::default();
        };
        if meta.size > MAX_SUMMARY {
            return Summary::default();
        }
        let bytes = match self.store().get(&key).await {
            Ok(r) => r.bytes().await.ok(),
            Err(_) => None,
        };
        let Some(file) = bytes.and_then(|b| serde_json::from_slice::<SummaryFile>(&b).ok()) else {
            return Summary::default();
        };
        if file.format != FORMAT
            || file.version != VERSION
            || file.repository != self.config().id
            || file.volume != volume.as_str()
            || file.sha256 != checksum(&file.points)
        {
            return Summary::default();
        }
        let objects: HashMap<&Path, &ObjectMeta> =
            listing.objects().map(|m| (&m.location, m)).collect();
        let mut entries = HashMap::new();
        for e in file.points {
            let marker = volume.commits_prefix().join(e.marker.as_str());
            if !unchanged(objects.get(&marker), e.marker_size, &e.marker_etag) {
                continue;
            }
            let archive = volume.archives_prefix().join(e.commit.object.as_str());
            let preread = match (hex::decode(&e.head), hex::decode(&e.tail)) {
                (Ok(head), Ok(tail))
                    if unchanged(objects.get(&archive), e.archive_size, &e.archive_etag)
                        && e.archive_size == e.commit.size =>
                {
                    Some(Arc::new(Preread {
                        head: head.into(),
                        tail: tail.into(),
                    }))
                }
                _ => None,
            };
            entries.insert(e.marker, (e.commit, preread));
        }
        Summary { entries }
    }

    /// Writes the summary of `volume` for `catalog`, a catalog just listed: every
    /// committed point whose marker and archive the listing shows with an ETag, and
    /// whose archive opens (its bytes come from the summary it replaces where that is
    /// still valid).
    ///
    /// # Errors
    /// [`RepoError::Store`] when the summary cannot be written (a caller warns).
    pub(crate) async fn write_summary(
        &self,
        volume: &VolumeName,
        catalog: &VolumeCatalog,
    ) -> Result<(), RepoError> {
        let listing = &catalog.listing;
        let opened: Vec<Option<Entry>> = futures::stream::iter(&catalog.commits)
            .map(|c| async move {
                let marker = listing.get(&c.key)?;
                let archive = listing.get(&c.archive_key())?;
                let ends = RemoteArchive::open(self, c).await.ok()?.ends()?;
                Some(Entry {
                    marker: c.key.filename()?.to_string(),
                    marker_size: marker.size,
                    marker_etag: marker.e_tag.clone()?,
                    commit: CommitMarker {
                        archive: c.archive_id.clone(),
                        object: c.object.clone(),
                        size: c.size,
                        digest: c.digest,
                    },
                    archive_size: archive.size,
                    archive_etag: archive.e_tag.clone()?,
                    head: hex::encode(&ends.head),
                    tail: hex::encode(&ends.tail),
                })
            })
            .buffered(OPENS)
            .collect()
            .await;
        let points: Vec<Entry> = opened.into_iter().flatten().collect();
        let file = SummaryFile {
            format: FORMAT.into(),
            version: VERSION,
            repository: self.config().id.clone(),
            volume: volume.to_string(),
            sha256: checksum(&points),
            points,
        };
        let key = volume.summary_key();
        let body = serde_json::to_vec(&file).expect("a summary serialises");
        self.store()
            .put(&key, PutPayload::from(body))
            .await
            .map_err(RepoError::store("write", &key))?;
        Ok(())
    }

    /// Lists `volume` and writes its summary (see [`write_summary`]): what `repair`
    /// calls after it changed the committed set, under the volume's lock (backup,
    /// prune and copy write it as they clean leftovers). A failure is returned as a
    /// warning: the summary is derived, and readers do without it.
    ///
    /// [`write_summary`]: Repository::write_summary
    pub(crate) async fn refresh_summary(&self, volume: &VolumeName) -> Option<String> {
        let result = async {
            self.write_summary(volume, &self.catalog(volume).await?)
                .await
        };
        result.await.err().map(|e| summary_warning(volume, &e))
    }
}

/// The warning of a summary of `volume` that could not be written.
pub(crate) fn summary_warning(volume: &VolumeName, e: &RepoError) -> String {
    format!(
        "cannot write the summary of {volume} (`list` and `status` read each point instead): {e}"
    )
}
