//! Object keys of the repository.
//!
//! ```text
//! config                                              repository config (JSON)
//! volumes/<volume>/archives/<seq>-<archive-id>.tarc   archive objects
//! volumes/<volume>/commits/<seq>                      commit markers (JSON)
//! volumes/<volume>/records/<op>.<slot>.json           result records (status)
//! volumes/<volume>/locks/<start>-<random>             lock objects (JSON, see lock.rs)
//! volumes/<volume>/commits/<seq>.<generation>         markers of replaced archives
//! volumes/<volume>/tombstones/<archive object name>   when an archive was superseded
//! volumes/<volume>/clock                              a probe for the store's clock
//! volumes/<volume>/damaged/<marker name>              corrupt markers set aside by repair
//! volumes/<volume>/damage/<archive-id>                damage records (JSON, derived)
//! volumes/<volume>/summary                            markers and archive ends (JSON, derived)
//! ```
//! `<seq>` is the sequence number as 12 decimal digits so keys sort in history order;
//! `<generation>` is 6 decimal digits from 000001 (a point whose archive was replaced
//! by a merge; the highest generation of a seq wins); `<volume>` is the volume name
//! with `/` written as `~`, which object_store percent-encodes: the key (and the
//! directory of a local store) is `vg0%7Eweb` (FORMAT.md 15).

use object_store::path::Path;

use super::RepoError;
pub use crate::format::{ArchiveId, ArchiveIdPrefix, InvalidArchiveId};

/// Key of the repository config.
pub(crate) fn config_key() -> Path {
    Path::from("config")
}

/// Prefix holding every volume.
pub(crate) fn volumes_prefix() -> Path {
    Path::from("volumes")
}

/// A validated volume name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VolumeName(String);

impl VolumeName {
    /// Checks a volume name: 1 to 128 characters from `A-Z a-z 0-9 . _ + -` in
    /// segments separated by single `/` (as in `vg0/web`), not starting with `.`.
    ///
    /// # Errors
    /// [`RepoError::InvalidName`] saying what is wrong.
    pub fn new(name: &str) -> Result<Self, RepoError> {
        let bad = |reason| {
            Err(RepoError::InvalidName {
                name: name.to_string(),
                reason,
            })
        };
        if name.is_empty() || name.len() > 128 {
            return bad("must be 1 to 128 characters");
        }
        for seg in name.split('/') {
            if seg.is_empty() {
                return bad("empty segment (leading, trailing or double '/')");
            }
            if seg.starts_with('.') {
                return bad("a segment starts with '.'");
            }
            if !seg
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"._+-".contains(&c))
            {
                return bad("only letters, digits, '.', '_', '+', '-' and '/' are allowed");
            }
        }
        Ok(VolumeName(name.to_string()))
    }

    /// Recovers a name from its key segment, as written or as listed: object_store
    /// percent-encodes `~` in listed paths (`vm%7Eweb`), and `~` is the only character
    /// of a key segment that it encodes.
    pub(crate) fn from_key(seg: &str) -> Result<Self, RepoError> {
        Self::new(&seg.replace("%7E", "~").replace('~', "/"))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn key(&self) -> String {
        self.0.replace('/', "~")
    }

    pub(crate) fn prefix(&self) -> Path {
        volumes_prefix().join(self.key())
    }

    pub(crate) fn commits_prefix(&self) -> Path {
        self.prefix().join("commits")
    }

    pub(crate) fn records_prefix(&self) -> Path {
        self.prefix().join("records")
    }

    pub(crate) fn archives_prefix(&self) -> Path {
        self.prefix().join("archives")
    }

    pub(crate) fn locks_prefix(&self) -> Path {
        self.prefix().join("locks")
    }

    /// Key of the commit marker of generation `generation` of point `seq` (0: the
    /// point's first archive).
    pub(crate) fn commit_key(&self, seq: u64, generation: u32) -> Path {
        match generation {
            0 => self.commits_prefix().join(format!("{seq:012}")),
            g => self.commits_prefix().join(format!("{seq:012}.{g:06}")),
        }
    }

    pub(crate) fn tombstones_prefix(&self) -> Path {
        self.prefix().join("tombstones")
    }

    /// Key of the tombstone of archive object `object`.
    pub(crate) fn tombstone_key(&self, object: &str) -> Path {
        self.tombstones_prefix().join(object)
    }

    /// Where `repair` sets corrupt commit markers aside.
    pub(crate) fn damaged_prefix(&self) -> Path {
        self.prefix().join("damaged")
    }

    /// Where damage records are kept.
    pub(crate) fn damage_prefix(&self) -> Path {
        self.prefix().join("damage")
    }

    /// Key of the volume's summary (derived, see `summary.rs`).
    pub(crate) fn summary_key(&self) -> Path {
        self.prefix().join("summary")
    }

    /// Key of the object written to read the store's clock.
    pub(crate) fn clock_key(&self) -> Path {
        self.prefix().join("clock")
    }

    pub(crate) fn archive_key(&self, seq: u64, archive_id: &ArchiveId) -> Path {
        self.archives_prefix()
            .join(archive_object(seq, archive_id).as_str())
    }
}

impl std::str::FromStr for VolumeName {
    type Err = RepoError;

    /// As [`VolumeName::new`] (so a command-line argument is checked as it is parsed).
    fn from_str(name: &str) -> Result<Self, RepoError> {
        VolumeName::new(name)
    }
}

impl std::fmt::Display for VolumeName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name of archive `archive_id` of point `seq` under a volume's `archives/`:
/// `<seq as 12 digits>-<archive id>.tarc` (FORMAT.md 15); parsed by
/// `archive::parse_archive_name`.
pub(crate) fn archive_object(seq: u64, archive_id: &ArchiveId) -> String {
    format!("{seq:012}-{archive_id}.tarc")
}

/// A new random archive id.
pub fn new_archive_id() -> ArchiveId {
    ArchiveId::parse(&new_id()).expect("new_id gives 32 lowercase hex digits")
}

/// A new random 128-bit id as 32 lowercase hex digits (archive and volume ids).
pub fn new_id() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the OS random number generator failed");
    hex::encode(b)
}

/// Parses the sequence number and generation of a commit key's last segment:
/// `<seq>` (generation 0) or `<seq>.<generation>`.
pub(crate) fn parse_commit_key(seg: &str) -> Option<(u64, u32)> {
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|c| c.is_ascii_digit());
    let (seq, generation) = match seg.split_once('.') {
        None => (seg, None),
        Some((seq, g)) => (seq, Some(g)),
    };
    if !digits(seq, 12) {
        return None;
    }
    let generation = match generation {
        None => 0,
        Some(g) if digits(g, 6) => g.parse().ok().filter(|&g| g > 0)?,
        Some(_) => return None,
    };
    Some((seq.parse().ok()?, generation))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_object_names() {
        let id = ArchiveId::parse("0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(
            archive_object(7, &id),
            "000000000007-0123456789abcdef0123456789abcdef.tarc"
        );
        assert_ne!(new_archive_id(), new_archive_id());
    }

    #[test]
    fn commit_keys_round_trip() {
        let v = VolumeName::new("vg0/web").unwrap();
        for (seq, g) in [(1, 0), (42, 1), (999_999_999_999, 999_999)] {
            let key = v.commit_key(seq, g);
            assert_eq!(parse_commit_key(key.filename().unwrap()), Some((seq, g)));
        }
        assert_eq!(
            v.commit_key(7, 2).as_ref(),
            "volumes/vg0%7Eweb/commits/000000000007.000002"
        );
        for bad in [
            "1",
            "00000000001",
            "000000000001.",
            "000000000001.1",
            "000000000001.000000",
            "000000000001.00000a",
            "x00000000001",
        ] {
            assert_eq!(parse_commit_key(bad), None, "{bad}");
        }
    }
}
