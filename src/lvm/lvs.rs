//! `lvs --reportformat json` output.

use std::collections::HashMap;

use super::LvmError;

/// One LV as `lvs` reports it (the fields of `LVS_FIELDS` in `cmd.rs`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LvInfo {
    /// LV name.
    pub lv_name: String,
    /// VG name.
    pub vg_name: String,
    /// LV uuid.
    pub lv_uuid: String,
    /// The ten `lv_attr` characters.
    pub lv_attr: String,
    /// Size in bytes.
    pub size: u64,
    /// Segment type: `thin`, `thin-pool`, `linear`, ...
    pub segtype: String,
    /// Thin pool of a thin LV.
    pub pool_lv: String,
    /// Origin of a snapshot.
    pub origin: String,
    /// Thin device id of a thin LV.
    pub thin_id: Option<u64>,
    /// Tags.
    pub tags: Vec<String>,
    /// Data usage percent (pools and thin LVs).
    pub data_percent: Option<f64>,
    /// Metadata usage percent (pools).
    pub metadata_percent: Option<f64>,
    /// Health: empty when fine, else e.g. `out_of_data`, `metadata_read_only`,
    /// `failed`.
    pub health: String,
    /// Chunk size in bytes (pools).
    pub chunk_size: u64,
}

impl LvInfo {
    fn attr(&self, i: usize) -> char {
        self.lv_attr.chars().nth(i).unwrap_or('-')
    }

    /// Whether the LV is active.
    pub fn is_active(&self) -> bool {
        self.attr(4) == 'a'
    }

    /// Whether the LV's device is open (mounted, or held by a process).
    pub fn is_open(&self) -> bool {
        self.attr(5) == 'o'
    }

    /// Whether the LV is writable.
    pub fn is_writable(&self) -> bool {
        self.attr(1) == 'w'
    }

    /// Whether a thin pool zeroes newly provisioned chunks.
    pub fn zeroes_new_chunks(&self) -> bool {
        self.attr(7) == 'z'
    }

    /// Whether the LV carries `tag`.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }
}

/// Parses `lvs --reportformat json --units b --nosuffix -o ...`.
///
/// # Errors
/// [`LvmError::Parse`] for malformed JSON or a malformed number.
pub fn parse_lvs(json: &str) -> Result<Vec<LvInfo>, LvmError> {
    #[derive(serde::Deserialize)]
    struct Report {
        report: Vec<Section>,
    }
    #[derive(serde::Deserialize)]
    struct Section {
        #[serde(default)]
        lv: Vec<HashMap<String, String>>,
    }
    let what = "lvs";
    let r: Report =
        serde_json::from_str(json).map_err(|e| LvmError::parse(what, format!("bad JSON: {e}")))?;
    let mut out = Vec::new();
    for row in r.report.into_iter().flat_map(|s| s.lv) {
        let get = |k: &str| row.get(k).map(|v| v.trim().to_string()).unwrap_or_default();
        let num = |k: &str| -> Result<Option<u64>, LvmError> {
            let v = get(k);
            if v.is_empty() {
                return Ok(None);
            }
            v.parse()
                .map(Some)
                .map_err(|_| LvmError::parse(what, format!("{k} {v:?} is not a number")))
        };
        let pct = |k: &str| -> Result<Option<f64>, LvmError> {
            let v = get(k);
            if v.is_empty() {
                return Ok(None);
            }
            v.parse()
                .map(Some)
                .map_err(|_| LvmError::parse(what, format!("{k} {v:?} is not a percentage")))
        };
        // Hidden sub-LVs are reported in brackets: [pool_tdata].
        let name = get("lv_name");
        out.push(LvInfo {
            lv_name: name
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            vg_name: get("vg_name"),
            lv_uuid: get("lv_uuid"),
            lv_attr: get("lv_attr"),
            size: num("lv_size")?.unwrap_or(0),
            segtype: get("segtype"),
            pool_lv: get("pool_lv")
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            origin: get("origin"),
            thin_id: num("thin_id")?,
            tags: get("lv_tags")
                .split(',')
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect(),
            data_percent: pct("data_percent")?,
            metadata_percent: pct("metadata_percent")?,
            health: get("lv_health_status"),
            chunk_size: num("chunk_size")?.unwrap_or(0),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lvs_json() {
        // Captured from lvm2 2.03.16 in the VM test (`lvs` of a VG with a pool, a
        // thin LV and a thinarc snapshot).
        let json = include_str!("../../tests/data/lvm/lvs.json");
        let lvs = parse_lvs(json).unwrap();
        let pool = lvs.iter().find(|l| l.lv_name == "pool").unwrap();
        assert_eq!(pool.segtype, "thin-pool");
        assert!(pool.data_percent.is_some() && pool.metadata_percent.is_some());
        assert_eq!(pool.chunk_size, 64 << 10);
        assert!(pool.zeroes_new_chunks());
        let thin = lvs.iter().find(|l| l.lv_name == "thin").unwrap();
        assert_eq!(thin.segtype, "thin");
        assert_eq!(thin.pool_lv, "pool");
        assert_eq!(thin.thin_id, Some(1));
        assert!(thin.is_active() && thin.is_writable());
        let snap = lvs.iter().find(|l| l.has_tag("thinarc")).unwrap();
        assert_eq!(snap.origin, "thin");
        assert!(!snap.is_writable());
        assert!(lvs.iter().any(|l| l.lv_name == "pool_tmeta"));
    }

    #[test]
    fn rejects_bad_numbers() {
        let json = r#"{"report":[{"lv":[{"lv_name":"x","lv_size":"12x"}]}]}"#;
        assert_eq!(
            parse_lvs(json).unwrap_err().to_string(),
            "cannot parse the output of lvs: lv_size \"12x\" is not a number"
        );
        assert!(parse_lvs("  Volume group \"x\" not found").is_err());
    }
}
