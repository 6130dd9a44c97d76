//! Commit markers (FORMAT.md §15): the small JSON object `commits/<seq>` that makes
//! an archive part of the repository, and the checks a marker passes when read.

use object_store::ObjectStoreExt;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use super::layout::{ArchiveId, archive_object};
use super::{RepoError, Repository};
use crate::format::Digest;
use crate::quote::excerpt;

/// Contents of a commit marker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitMarker {
    /// Archive id (checked as it is parsed).
    pub archive: ArchiveId,
    /// Object name of the archive under the volume's `archives/` folder.
    pub object: String,
    /// Size of the archive object in bytes.
    pub size: u64,
    /// Archive digest (the trailer checksum), 64 lowercase hex digits as written.
    #[serde(deserialize_with = "lowercase_digest")]
    pub digest: Digest,
}

/// A marker's digest exactly as writers write it: 64 lowercase hex digits (a flipped
/// byte that turns a letter upper case is damage too, not another spelling).
fn lowercase_digest<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
    let s = String::deserialize(d)?;
    if s.bytes().any(|c| c.is_ascii_uppercase()) {
        return Err(serde::de::Error::custom(
            "digest is not 64 lowercase hex digits",
        ));
    }
    Digest::from_hex(&s).map_err(serde::de::Error::custom)
}

/// Reads the commit marker `key` of `seq` and checks it (see [`check_marker`]).
pub(crate) async fn read_marker(
    repo: &Repository,
    key: &Path,
    seq: u64,
) -> Result<CommitMarker, RepoError> {
    let bad = |detail: String| RepoError::BadCommit {
        key: key.to_string(),
        detail,
    };
    let bytes = repo
        .store()
        .get(key)
        .await
        .map_err(RepoError::store("read", key))?;
    let bytes = bytes.bytes().await.map_err(RepoError::store("read", key))?;
    if bytes.len() > 4096 {
        return Err(bad(format!(
            "{} bytes is too large for a commit marker",
            bytes.len()
        )));
    }
    let m: CommitMarker = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    check_marker(seq, &m).map_err(bad)?;
    Ok(m)
}

/// The consistency rules of a marker of `seq` that need no archive I/O: `object` is
/// `<seq>-<archive>.tarc`, so a flipped byte in either makes the pair disagree; `size`
/// holds at least a preamble and a trailer. (`archive`, 32 lowercase hex digits, and
/// `digest` are checked as they are parsed.)
pub(crate) fn check_marker(seq: u64, m: &CommitMarker) -> Result<(), String> {
    let object = archive_object(seq, &m.archive);
    if m.object != object {
        return Err(format!(
            "archive {} and object {} disagree: the object of seq {seq} and that archive is {object:?}",
            m.archive,
            excerpt(&m.object)
        ));
    }
    let least = (crate::format::PREAMBLE_LEN + crate::format::TRAILER_LEN) as u64;
    if m.size < least {
        return Err(format!(
            "size {} is smaller than any archive ({least} bytes)",
            m.size
        ));
    }
    Ok(())
}
