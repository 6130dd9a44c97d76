//! Damage records: what verify (or a failed read) found wrong with an archive, kept at
//! `volumes/<v>/damage/<archive-id>` so that later runs act on it without reading block
//! data again: the next backup stores damaged blocks again, or starts a new chain when
//! an archive of its parent's chain is structurally damaged; `status` counts the points
//! that depend on damage.
//!
//! A record is derived information: deleting it is safe (verify writes it again), and
//! readers ignore it for the catalog. A record of an archive that no point names any
//! more is ignored.

use chrono::Utc;
use futures::StreamExt;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::{ArchiveId, RepoError, Repository, VolumeName};

/// Most block indexes one record lists; more damaged blocks make the record
/// [`DamageKind::Archive`].
pub const MAX_DAMAGED_BLOCKS: usize = 4096;

/// How much of an archive is damaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DamageKind {
    /// Some data blocks (listed): the rest of the archive reads.
    Blocks,
    /// The archive as a whole: missing, truncated, or a bad header, index or trailer.
    Archive,
}

/// What check found the damage, and so which check clears the record once it finds
/// the archive whole again (README "Damage and repair").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DamageScope {
    /// The archive's structure: object, header, directory, index or trailer. Any
    /// `verify` reads all of it, and clears the record when it finds it whole.
    Structure,
    /// Block data (frames): only a `verify --data` that reads all of the archive's
    /// data clears the record. A record without the field (written before it
    /// existed) counts as data: no structural check can prove it wrong.
    #[default]
    Data,
}

impl DamageScope {
    /// The command that clears a record of this scope once the archive is whole.
    pub fn cleared_by(self) -> &'static str {
        match self {
            DamageScope::Structure => "thinarc verify",
            DamageScope::Data => "thinarc verify --data",
        }
    }
}

/// One damage record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DamageRecord {
    /// Archive id.
    pub archive: ArchiveId,
    /// Seq of the point the archive belongs to.
    pub seq: u64,
    /// Archive object name.
    pub object: String,
    /// Blocks or the whole archive.
    pub kind: DamageKind,
    /// Damaged block indexes, sorted (kind `blocks`).
    pub blocks: Vec<u64>,
    /// What was found.
    pub detail: String,
    /// When, RFC 3339.
    pub found_at: String,
    /// Which command found it.
    pub found_by: String,
    /// Which check found it: what a check must read to clear it.
    #[serde(default)]
    pub found_in: DamageScope,
}

impl DamageRecord {
    /// A record of `kind` for archive `archive` (id), `object` at `seq`, found by a
    /// check of `found_in`.
    pub fn new(
        archive: &ArchiveId,
        seq: u64,
        object: &str,
        (kind, found_in): (DamageKind, DamageScope),
        detail: String,
        found_by: &str,
    ) -> Self {
        DamageRecord {
            archive: archive.clone(),
            seq,
            object: object.to_string(),
            kind,
            blocks: Vec::new(),
            detail,
            found_at: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            found_by: found_by.to_string(),
            found_in,
        }
    }

    /// Adds damaged `blocks` (kind `blocks`); past [`MAX_DAMAGED_BLOCKS`] the record
    /// becomes kind `archive`.
    pub fn add_blocks(&mut self, blocks: impl IntoIterator<Item = u64>) {
        self.blocks.extend(blocks);
        self.blocks.sort_unstable();
        self.blocks.dedup();
        if self.blocks.len() > MAX_DAMAGED_BLOCKS {
            self.kind = DamageKind::Archive;
            self.blocks.clear();
        }
    }
}

impl Repository {
    /// Every readable damage record of `volume` (an unreadable one is ignored: it is
    /// derived information).
    ///
    /// # Errors
    /// [`RepoError::Store`] when listing fails.
    pub async fn damage_records(
        &self,
        volume: &VolumeName,
    ) -> Result<Vec<DamageRecord>, RepoError> {
        let objects = self.list(&volume.damage_prefix()).await?;
        Ok(self
            .damage_records_listed(&super::VolumeListing { objects })
            .await)
    }

    /// The readable damage records `listing` shows (see
    /// [`damage_records`](Self::damage_records)).
    pub async fn damage_records_listed(&self, listing: &super::VolumeListing) -> Vec<DamageRecord> {
        futures::stream::iter(listing.folder("damage"))
            .map(|m| async move {
                let bytes = self
                    .store()
                    .get(&m.location)
                    .await
                    .ok()?
                    .bytes()
                    .await
                    .ok()?;
                serde_json::from_slice::<DamageRecord>(&bytes).ok()
            })
            .buffered(16)
            .filter_map(|r| async move { r })
            .collect()
            .await
    }

    /// Writes `record`, replacing any record of the same archive.
    ///
    /// # Errors
    /// [`RepoError::Store`].
    pub async fn write_damage(
        &self,
        volume: &VolumeName,
        record: &DamageRecord,
    ) -> Result<(), RepoError> {
        let key = volume.damage_prefix().join(record.archive.as_str());
        let body = serde_json::to_vec_pretty(record).expect("a damage record serialises");
        self.store()
            .put(&key, PutPayload::from(body))
            .await
            .map_err(RepoError::store("write damage record", &key))?;
        Ok(())
    }

    /// Removes the damage record of archive `archive` (id), if any.
    ///
    /// # Errors
    /// [`RepoError::Store`].
    pub async fn clear_damage(
        &self,
        volume: &VolumeName,
        archive: &ArchiveId,
    ) -> Result<(), RepoError> {
        let key = volume.damage_prefix().join(archive.as_str());
        self.delete("delete damage record", &key).await
    }
}

/// What damage the point a chain ends at depends on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainDamage {
    /// An archive of the chain recorded damaged as a whole: (archive id, seq, detail).
    pub archive: Option<(ArchiveId, u64, String)>,
    /// Blocks the point takes from an archive recorded damaged in those blocks:
    /// (block, archive id, seq), by block.
    pub blocks: Vec<(u64, ArchiveId, u64)>,
}

impl ChainDamage {
    /// Whether the point depends on no recorded damage.
    pub fn is_empty(&self) -> bool {
        self.archive.is_none() && self.blocks.is_empty()
    }

    /// The way back for the point of `volume` that depends on this damage, by what
    /// the volume holds newer than it (README "Damage and repair"): the next backup
    /// heals the volume, not an older point, which stays damaged until
    /// `repair --drop-damaged` unlists it.
    pub fn way_back(&self, volume: &VolumeName, newer: Newer) -> String {
        let next = match self.archive {
            Some(_) => "the next backup starts a new chain",
            None => "the next backup stores these blocks again",
        };
        let drop = format!("`thinarc repair {volume} --drop-damaged` unlists this point");
        match newer {
            Newer::Nothing => next.to_string(),
            Newer::Whole(seq) => format!("seq {seq} is whole: restore it; {drop}"),
            Newer::Damaged => format!("{next} in a new point; then {drop}"),
        }
    }
}

/// What a volume holds newer than a point that depends on damage: what the point's
/// way back is ([`ChainDamage::way_back`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Newer {
    /// Nothing: the point is the newest, and the next backup heals the volume.
    Nothing,
    /// A point that depends on no damage (the newest such): its seq.
    Whole(u64),
    /// Only points that depend on damage too.
    Damaged,
}

impl Newer {
    /// What the volume holds newer than the point `seq`, given its points that
    /// depend on no damage (`whole`) and its newest point.
    pub fn than(seq: u64, whole: impl IntoIterator<Item = u64>, newest: u64) -> Newer {
        match whole.into_iter().filter(|w| *w > seq).max() {
            Some(w) => Newer::Whole(w),
            None if seq >= newest => Newer::Nothing,
            None => Newer::Damaged,
        }
    }
}

impl std::fmt::Display for ChainDamage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some((id, seq, detail)) = &self.archive {
            return write!(f, "damaged archive {id} (seq {seq}): {detail}");
        }
        let mut archives: Vec<(&ArchiveId, u64)> =
            self.blocks.iter().map(|(_, a, s)| (a, *s)).collect();
        archives.sort_unstable();
        archives.dedup();
        let names: Vec<String> = archives
            .iter()
            .map(|(a, s)| format!("archive {a} (seq {s})"))
            .collect();
        write!(
            f,
            "{} damaged block(s) of {}, first block {}",
            self.blocks.len(),
            names.join(", "),
            self.blocks.first().map_or(0, |b| b.0)
        )
    }
}

/// The damage of `records` that the point `chain` ends at depends on: an archive of the
/// chain damaged as a whole, or damaged blocks the point takes from their archive (no
/// newer archive of the chain holds them). Reads index segments, no block data.
///
/// # Errors
/// [`RepoError`] when an index segment of the chain cannot be read.
pub async fn chain_damage(
    chain: &super::Chain,
    records: &[DamageRecord],
) -> Result<ChainDamage, RepoError> {
    let mut out = ChainDamage::default();
    let mut blocks: Vec<(u64, usize, &DamageRecord)> = Vec::new();
    for r in records {
        let Some(layer) = chain
            .archives
            .iter()
            .position(|a| a.commit.archive_id == r.archive)
        else {
            continue;
        };
        match r.kind {
            DamageKind::Archive => {
                out.archive = Some((r.archive.clone(), r.seq, r.detail.clone()));
                return Ok(out);
            }
            DamageKind::Blocks => blocks.extend(r.blocks.iter().map(|&b| (b, layer, r))),
        }
    }
    blocks.sort_unstable_by_key(|(b, layer, _)| (*b, *layer));
    let end = chain.tip().geometry().blocks();
    let mut cursor = super::ChainCursor::new(chain);
    for (b, layer, r) in blocks {
        if b >= end || out.blocks.last().is_some_and(|l| l.0 == b) {
            continue;
        }
        cursor.seek(b);
        if let Some(super::Resolved::Data { layer: l, .. }) = cursor.next(b + 1).await?
            && l == layer
        {
            out.blocks.push((b, r.archive.clone(), r.seq));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_lists_are_sorted_deduplicated_and_bounded() {
        let id = crate::repo::new_archive_id();
        let mut r = DamageRecord::new(
            &id,
            2,
            "x.tarc",
            (DamageKind::Blocks, DamageScope::Data),
            "d".into(),
            "t",
        );
        r.add_blocks([9, 3, 9]);
        assert_eq!((r.kind, r.blocks.clone()), (DamageKind::Blocks, vec![3, 9]));
        r.add_blocks(0..=MAX_DAMAGED_BLOCKS as u64);
        assert_eq!(
            r.kind,
            DamageKind::Archive,
            "too many blocks: the whole archive"
        );
        assert!(r.blocks.is_empty());
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["kind"], "archive");
        assert_eq!(json["found_by"], "t");
        assert_eq!(json["found_in"], "data");
        // A record written before `found_in` existed counts as data damage.
        let mut old = json.clone();
        old.as_object_mut().unwrap().remove("found_in");
        let old: DamageRecord = serde_json::from_value(old).unwrap();
        assert_eq!(old.found_in, DamageScope::Data);
    }
}
