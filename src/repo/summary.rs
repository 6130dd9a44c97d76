//! The summary of a volume (`volumes/<v>/summary`, FORMAT.md §15.5): derived, optional
//! and safe to delete. For each committed point it keeps what a catalog reader would
//! otherwise fetch object by object: the commit marker, and the bytes of its archive
//! that [`RemoteArchive::open`](super::RemoteArchive::open) reads (preamble and header,
//! directory and trailer). An entry is used only while the listing shows the marker
//! and the archive object unchanged (same size and ETag, or where the listing shows
//! no ETag, the same modification time); the bytes then go through the same checks
//! as bytes read from the archive. A summary that is missing, unparsable, of another
//! repository or volume, or stale costs only the reads it would have saved.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat};
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

/// One committed point. Each object is known by its size and, as the listing shows
/// it, its ETag or (where the listing shows none) its modification time; an entry
/// of the latter kind has no `*_etag` member, so a reader of version 1 before these
/// members fails to parse the summary and reads every point, never trusting it.
#[derive(Serialize, Deserialize)]
pub(super) struct Entry {
    /// Name of the commit marker under `commits/`.
    pub(super) marker: String,
    /// Size of the marker object as listed, and its ETag or modification time.
    pub(super) marker_size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) marker_etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) marker_modified: Option<String>,
    /// The marker's contents.
    pub(super) commit: CommitMarker,
    /// Size of the archive object as listed, and its ETag or modification time.
    pub(super) archive_size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) archive_etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) archive_modified: Option<String>,
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

/// The ETag a listing shows for `meta` (an empty one identifies nothing: none).
fn listed_etag(meta: &ObjectMeta) -> Option<&str> {
    meta.e_tag.as_deref().filter(|t| !t.is_empty())
}

/// What an entry records of the object `meta` as listed besides its size: its ETag,
/// or where the listing shows none, its modification time (RFC 3339, UTC, as precise
/// as the listing gives it).
pub(super) fn listed_version(meta: &ObjectMeta) -> (Option<String>, Option<String>) {
    match listed_etag(meta) {
        Some(etag) => (Some(etag.to_string()), None),
        None => (
            None,
            Some(
                meta.last_modified
                    .to_rfc3339_opts(SecondsFormat::AutoSi, true),
            ),
        ),
    }
}

/// Whether `meta` is listed with this size and the recorded ETag, or where it is
/// listed without one and the entry has none, the recorded modification time.
fn unchanged(
    meta: Option<&&ObjectMeta>,
    size: u64,
    etag: Option<&str>,
    modified: Option<&str>,
) -> bool {
    meta.is_some_and(|m| {
        m.size == size
            && match (listed_etag(m), etag, modified) {
                (Some(listed), Some(etag), _) => listed == etag,
                (None, None, Some(modified)) => {
                    DateTime::parse_from_rfc3339(modified).is_ok_and(|t| t == m.last_modified)
                }
                _ => false,
            }
    })
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
            if !unchanged(
                objects.get(&marker),
                e.marker_size,
                e.marker_etag.as_deref(),
                e.marker_modified.as_deref(),
            ) {
                continue;
            }
            let archive = volume.archives_prefix().join(e.commit.object.as_str());
            let preread = match (hex::decode(&e.head), hex::decode(&e.tail)) {
                (Ok(head), Ok(tail))
                    if unchanged(
                        objects.get(&archive),
                        e.archive_size,
                        e.archive_etag.as_deref(),
                        e.archive_modified.as_deref(),
                    ) && e.archive_size == e.commit.size =>
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

#[cfg(test)]
mod tests {
    use super::*;

    const COMMIT: &str = r#""commit":{"archive":"c0000000000000000000000000000003","object":"3-c0000000000000000000000000000003.tarc","size":4096,"digest":"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"}"#;

    /// An entry as JSON, with `marker` and `archive` the members naming each object's
    /// version.
    fn entry_json(marker: &str, archive: &str) -> String {
        format!(
            r#"{{"marker":"3","marker_size":120,{marker},{COMMIT},"archive_size":4096,{archive},"head":"00","tail":"11"}}"#
        )
    }

    fn listed(etag: Option<&str>, modified: &str, size: u64) -> ObjectMeta {
        ObjectMeta {
            location: Path::from("volumes/v/commits/3"),
            last_modified: DateTime::parse_from_rfc3339(modified).unwrap().into(),
            size,
            e_tag: etag.map(str::to_string),
            version: None,
        }
    }

    #[test]
    fn an_entry_keyed_by_etag_serialises_as_version_1_did() {
        let json = entry_json(r#""marker_etag":"\"m1\"""#, r#""archive_etag":"\"a1\"""#);
        let entry: Entry = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string(&entry).unwrap(), json);
    }

    #[test]
    fn an_entry_keyed_by_modification_time_is_unparsable_to_a_reader_of_version_1() {
        let json = entry_json(
            r#""marker_modified":"2026-12-01T02:38:25.123Z""#,
            r#""archive_modified":"2026-12-01T02:38:26Z""#,
        );
        let entry: Entry = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string(&entry).unwrap(), json);
        // Version 1 before the `*_modified` members required both ETags: such a
        // reader ignores the whole summary (and reads every point).
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Version1Keys {
            marker_etag: String,
            archive_etag: String,
        }
        let old = serde_json::from_str::<Version1Keys>(&json).unwrap_err();
        assert_eq!(
            old.to_string(),
            format!(
                "missing field `marker_etag` at line 1 column {}",
                json.len()
            )
        );
    }

    #[test]
    fn an_object_is_known_by_its_etag_or_where_listed_without_one_its_time() {
        let at = "2026-12-01T02:38:25.123Z";
        assert_eq!(
            listed_version(&listed(Some("\"e\""), at, 1)),
            (Some("\"e\"".into()), None)
        );
        for etag in [None, Some("")] {
            assert_eq!(
                listed_version(&listed(etag, at, 1)),
                (None, Some(at.into()))
            );
        }
        assert_eq!(
            listed_version(&listed(None, "2026-12-01T02:38:25Z", 1)),
            (None, Some("2026-12-01T02:38:25Z".into()))
        );
    }

    #[test]
    fn an_entry_is_used_only_while_the_listing_shows_the_same_version() {
        let at = "2026-12-01T02:38:25.123Z";
        let check =
            |m: &ObjectMeta, size, etag, modified| unchanged(Some(&m), size, etag, modified);
        // By ETag: the same size and ETag; a new ETag, size, or none listed is stale.
        let e = listed(Some("\"e\""), at, 10);
        assert!(check(&e, 10, Some("\"e\""), None));
        assert!(!check(&e, 10, Some("\"f\""), None));
        assert!(!check(&e, 11, Some("\"e\""), None));
        assert!(!check(&listed(None, at, 10), 10, Some("\"e\""), None));
        // By time: only while the listing shows no ETag, the same size and instant
        // (however RFC 3339 spells it); a later write is stale.
        for etag in [None, Some("")] {
            let m = listed(etag, at, 10);
            assert!(check(&m, 10, None, Some(at)));
            assert!(check(&m, 10, None, Some("2026-12-01T02:38:25.123+00:00")));
            assert!(check(
                &m,
                10,
                None,
                Some("2026-12-01T03:38:25.123000+01:00")
            ));
            assert!(!check(&m, 11, None, Some(at)));
            assert!(!check(&m, 10, None, Some("2026-12-01T02:38:25.122Z")));
            assert!(!check(&m, 10, None, Some("2026-12-01T02:38:25Z")));
            assert!(!check(&m, 10, None, Some("not a time")));
            assert!(!check(&m, 10, None, None));
        }
        // A time-keyed entry where the listing now shows an ETag (another server, or
        // an object copied in) is stale, as is an object no longer listed.
        assert!(!check(&e, 10, None, Some(at)));
        assert!(!unchanged(None, 10, None, Some(at)));
    }
}
