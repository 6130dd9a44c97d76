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

use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::archive::Preread;
use super::marker::CommitMarker;
use super::{Repository, VolumeName};

/// `format` of a summary.
pub(super) const FORMAT: &str = "thinarc-volume-summary";
/// `version` of a summary this build writes and reads.
pub(super) const VERSION: u32 = 1;
/// A summary larger than this is not read (a volume of thousands of points is read
/// point by point instead).
pub(crate) const MAX_SUMMARY: u64 = 16 << 20;

/// The summary as stored.
#[derive(Serialize, Deserialize)]
pub(super) struct SummaryFile {
    pub(super) format: String,
    pub(super) version: u32,
    pub(super) repository: String,
    pub(super) volume: String,
    pub(super) points: Vec<Entry>,
    /// SHA-256 of `points` as serialised (compact JSON), hex: a summary damaged at
    /// rest is ignored whole.
    pub(super) sha256: String,
}

/// The checksum of `points`.
pub(super) fn checksum(points: &[Entry]) -> String {
    let json = serde_json::to_vec(points).expect("summary entries serialise");
    hex::encode(Sha256::digest(json))
}

/// One committed point.
#[derive(Serialize, Deserialize)]
pub(super) struct Entry {
    /// Name of the commit marker under `commits/`.
    pub(super) marker: String,
    /// Size and ETag of the marker object as listed.
    pub(super) marker_size: u64,
    pub(super) marker_etag: String,
    /// The marker's contents.
    pub(super) commit: CommitMarker,
    /// Size and ETag of the archive object as listed.
    pub(super) archive_size: u64,
    pub(super) archive_etag: String,
    /// `Preread::head` and `Preread::tail`, hex.
    pub(super) head: String,
    pub(super) tail: String,
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
    /// The summary of `volume` if `objects` (one listing of its folder) show one,
    /// keeping only the entries whose marker (and, for the bytes, archive) the listing
    /// shows unchanged. Anything
    /// wrong with it makes it empty.
    pub(crate) async fn read_summary(
        &self,
        volume: &VolumeName,
        objects: &[ObjectMeta],
    ) -> Summary {
        let key = volume.summary_key();
        let Some(meta) = objects.iter().find(|m| m.location == key) else {
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
            objects.iter().map(|m| (&m.location, m)).collect();
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
}
