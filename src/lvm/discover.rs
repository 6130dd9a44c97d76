//! Whole-pool discovery: which thin LVs of a volume group a pattern names
//! (`VG/GLOB`, or `VG/POOL/GLOB` for the thin LVs of one pool), from `lvs` output.
//!
//! thinarc's own LVs are never selected, whatever their names: its snapshots carry the
//! tag [`SNAPSHOT_TAG`] and the LVs `restore --create` makes carry [`RESTORED_TAG`],
//! both given by the `lvcreate` that creates them, so no LV of thinarc's exists
//! untagged even for an instant. Only thin LVs (segment type `thin`) are selected.

use super::name::broken_rule;
use super::{LvInfo, LvName, LvNameError, LvmError, NamePart, NameRule};

/// Tag on every snapshot thinarc creates.
pub const SNAPSHOT_TAG: &str = "thinarc";

/// Tag on every LV `restore --create` creates: discovery never selects it (remove it
/// with `lvchange --deltag thinarc-restored VG/LV` to have the LV backed up by a
/// pattern).
pub const RESTORED_TAG: &str = "thinarc-restored";

/// Whether `lv` was made by thinarc (a snapshot, or an LV a restore created).
pub fn made_by_thinarc(lv: &LvInfo) -> bool {
    lv.has_tag(SNAPSHOT_TAG) || lv.has_tag(RESTORED_TAG)
}

/// Why a pattern cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatternError {
    /// Not `VG/GLOB` or `VG/POOL/GLOB`.
    #[error("{} is not VG/LV-PATTERN or VG/POOL/LV-PATTERN", crate::quote::excerpt(.0))]
    Shape(String),
    /// The VG or pool name breaks LVM's rules.
    #[error(transparent)]
    Name(#[from] LvNameError),
    /// The LV pattern holds a character that is neither a name character nor `*` `?`.
    #[error(
        "LV pattern {} contains {character:?}: use letters, digits, + _ . - and the wildcards * and ?",
        crate::quote::excerpt(.pattern)
    )]
    Character {
        /// The pattern.
        pattern: String,
        /// The character.
        character: char,
    },
}

/// A glob on LV names: `*` matches any run of characters, `?` any one character.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LvGlob(String);

impl LvGlob {
    /// Parses an LV-name glob: letters, digits, `+ _ . -`, `*` and `?`; one without
    /// wildcards must be a valid LV name.
    ///
    /// # Errors
    /// [`PatternError`] naming the character or the broken rule.
    pub fn parse(s: &str) -> Result<LvGlob, PatternError> {
        if s.is_empty() {
            return Err(PatternError::Shape(s.to_string()));
        }
        if let Some(c) = s
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || "+_.-*?".contains(c)))
        {
            return Err(PatternError::Character {
                pattern: s.to_string(),
                character: c,
            });
        }
        if !s.contains(['*', '?'])
            && let Some(rule) = broken_rule(NamePart::Lv, s)
        {
            return Err(invalid(NamePart::Lv, s, rule));
        }
        Ok(LvGlob(s.to_string()))
    }

    /// Whether `name` matches the whole glob.
    pub fn matches(&self, name: &str) -> bool {
        glob_match(self.0.as_bytes(), name.as_bytes())
    }

    /// The glob as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for LvGlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Matches `name` against `glob` (`*`, `?`), by the usual backtracking over the last
/// `*`: linear in practice, never exponential.
fn glob_match(glob: &[u8], name: &[u8]) -> bool {
    let (mut g, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match glob.get(g) {
            Some(b'*') => {
                star = Some((g, n));
                g += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                g += 1;
                n += 1;
            }
            _ => match star {
                Some((sg, sn)) => {
                    g = sg + 1;
                    n = sn + 1;
                    star = Some((sg, sn + 1));
                }
                None => return false,
            },
        }
    }
    glob[g..].iter().all(|&c| c == b'*')
}

fn invalid(part: NamePart, name: &str, rule: NameRule) -> PatternError {
    PatternError::Name(LvNameError::Invalid {
        part,
        name: name.to_string(),
        rule,
    })
}

/// A discovery pattern: the thin LVs of volume group `vg` (of `pool` only, if given)
/// whose names match `lv`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LvPattern {
    /// The volume group (a name, not a glob).
    pub vg: String,
    /// The thin pool (a name), for the `VG/POOL/GLOB` form.
    pub pool: Option<String>,
    /// The LV names.
    pub lv: LvGlob,
}

impl LvPattern {
    /// Whether `s` (the part after `lvm:`) is a pattern rather than one `VG/LV`: it
    /// holds a wildcard (`*`, `?`). Anything else is parsed as `VG/LV`.
    pub fn is_pattern(s: &str) -> bool {
        s.contains(['*', '?'])
    }

    /// Parses `VG/GLOB` or `VG/POOL/GLOB` (the part after `lvm:`); the VG and pool are
    /// names checked by lvm(8)'s rules.
    ///
    /// # Errors
    /// [`PatternError`].
    pub fn parse(s: &str) -> Result<LvPattern, PatternError> {
        let parts: Vec<&str> = s.split('/').collect();
        let (vg, pool, lv) = match parts[..] {
            [vg, lv] => (vg, None, lv),
            [vg, pool, lv] => (vg, Some(pool), lv),
            _ => return Err(PatternError::Shape(s.to_string())),
        };
        if vg.is_empty() || lv.is_empty() || pool.is_some_and(str::is_empty) {
            return Err(PatternError::Shape(s.to_string()));
        }
        if let Some(rule) = broken_rule(NamePart::Vg, vg) {
            return Err(invalid(NamePart::Vg, vg, rule));
        }
        if let Some(pool) = pool {
            if pool.contains(['*', '?']) {
                return Err(PatternError::Shape(s.to_string()));
            }
            if let Some(rule) = broken_rule(NamePart::Lv, pool) {
                return Err(invalid(NamePart::Lv, pool, rule));
            }
        }
        Ok(LvPattern {
            vg: vg.to_string(),
            pool: pool.map(str::to_string),
            lv: LvGlob::parse(lv)?,
        })
    }

    /// Whether the volume name `VG/LV` could come from this pattern (same VG, the LV
    /// name matches; the pool cannot be told from a name).
    pub fn matches_name(&self, name: &str) -> bool {
        name.split_once('/')
            .is_some_and(|(vg, lv)| vg == self.vg && self.lv.matches(lv))
    }

    /// The thin LVs of `lvs` (the `lvs` report of this VG) that the pattern selects,
    /// sorted by name: thin LVs of the VG (and pool) whose names match and match none
    /// of `exclude`, leaving out thinarc's own ([`made_by_thinarc`]).
    ///
    /// # Errors
    /// [`LvmError::Unusable`] when the pattern names a pool that is not a thin pool of
    /// the VG.
    pub fn select(&self, lvs: &[LvInfo], exclude: &[LvGlob]) -> Result<Vec<LvName>, LvmError> {
        if let Some(pool) = &self.pool
            && !lvs
                .iter()
                .any(|l| l.vg_name == self.vg && &l.lv_name == pool && l.segtype == "thin-pool")
        {
            return Err(LvmError::Unusable(format!(
                "{}/{pool} is not a thin pool (pattern lvm:{self})",
                self.vg
            )));
        }
        let mut out: Vec<LvName> = lvs
            .iter()
            .filter(|l| {
                l.vg_name == self.vg
                    && l.segtype == "thin"
                    && self.pool.as_ref().is_none_or(|p| &l.pool_lv == p)
                    && !made_by_thinarc(l)
                    && self.lv.matches(&l.lv_name)
                    && !exclude.iter().any(|x| x.matches(&l.lv_name))
            })
            .map(|l| LvName {
                vg: l.vg_name.clone(),
                lv: l.lv_name.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.lv.cmp(&b.lv));
        Ok(out)
    }
}

impl std::fmt::Display for LvPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.pool {
            Some(pool) => write!(f, "{}/{pool}/{}", self.vg, self.lv),
            None => write!(f, "{}/{}", self.vg, self.lv),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lvm::parse_lvs;
    use proptest::prelude::*;

    /// `lvs` of a Proxmox-like VG `pve`: pool `data` with VM disks, a template, a
    /// user's snapshot, a thinarc snapshot and an LV a restore created; pool `other`
    /// with one disk; a plain LV `root`. Written in the shape of `lvs.json` (captured
    /// from lvm2 2.03.16): the same fields, attributes and tags as real LVs of each kind.
    fn pve() -> Vec<LvInfo> {
        parse_lvs(include_str!("../../tests/data/lvm/lvs-discovery.json")).unwrap()
    }

    fn names(v: Vec<LvName>) -> Vec<String> {
        v.into_iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn globs() {
        let g = |s: &str| LvGlob::parse(s).unwrap();
        assert!(g("vm-*-disk-*").matches("vm-100-disk-0"));
        assert!(g("vm-*-disk-*").matches("vm-1-disk-"));
        assert!(!g("vm-*-disk-*").matches("base-100-disk-0"));
        assert!(!g("vm-*-disk-*").matches("vm-100-disk"));
        assert!(g("*").matches(""));
        assert!(g("vm-10?-*").matches("vm-101-disk-0"));
        assert!(!g("vm-10?-*").matches("vm-1000-disk-0"));
        assert!(g("a*b*c").matches("aXbYbZc"));
        assert!(!g("a*b*c").matches("aXbYbZ"));
        assert!(g("web").matches("web") && !g("web").matches("web1"));
    }

    proptest! {
        /// `*` alone matches everything; a name matches itself as a glob; `PREFIX*`
        /// matches exactly the names starting with PREFIX.
        #[test]
        fn glob_agrees_with_simple_cases(name in "[a-z0-9_.-]{0,20}", prefix in "[a-z]{0,4}") {
            prop_assert!(glob_match(b"*", name.as_bytes()));
            prop_assert!(glob_match(name.as_bytes(), name.as_bytes()));
            let glob = format!("{prefix}*");
            prop_assert_eq!(glob_match(glob.as_bytes(), name.as_bytes()), name.starts_with(&prefix));
        }
    }

    #[test]
    fn patterns_parse_and_print() {
        let p = LvPattern::parse("pve/vm-*-disk-*").unwrap();
        assert_eq!((p.vg.as_str(), p.pool.as_deref()), ("pve", None));
        assert_eq!(p.to_string(), "pve/vm-*-disk-*");
        let p = LvPattern::parse("vg0/pool/*").unwrap();
        assert_eq!(p.pool.as_deref(), Some("pool"));
        assert_eq!(p.to_string(), "vg0/pool/*");
        assert!(LvPattern::is_pattern("vg0/pool/*"));
        assert!(LvPattern::is_pattern("vg0/web-?"));
        assert!(!LvPattern::is_pattern("vg0/pool/web"));
        assert!(!LvPattern::is_pattern("vg0/web"));
        for (given, message) in [
            ("vg0", "\"vg0\" is not VG/LV-PATTERN or VG/POOL/LV-PATTERN"),
            (
                "vg0/a/b/*",
                "\"vg0/a/b/*\" is not VG/LV-PATTERN or VG/POOL/LV-PATTERN",
            ),
            (
                "/vm-*",
                "\"/vm-*\" is not VG/LV-PATTERN or VG/POOL/LV-PATTERN",
            ),
            (
                "vg0//*",
                "\"vg0//*\" is not VG/LV-PATTERN or VG/POOL/LV-PATTERN",
            ),
            (
                "vg*/web",
                "VG name \"vg*\" contains '*': only letters, digits and + _ . - are allowed (lvm(8), VALID NAMES)",
            ),
            (
                "vg0/p*/*",
                "\"vg0/p*/*\" is not VG/LV-PATTERN or VG/POOL/LV-PATTERN",
            ),
            (
                "vg0/vm-[0-9]*",
                "LV pattern \"vm-[0-9]*\" contains '[': use letters, digits, + _ . - and the wildcards * and ?",
            ),
            (
                "vg0/pool_tdata/*",
                "LV name \"pool_tdata\" contains \"_tdata\", which LVM reserves for its internal LVs (lvm(8), VALID NAMES)",
            ),
        ] {
            assert_eq!(
                LvPattern::parse(given).unwrap_err().to_string(),
                message,
                "{given}"
            );
        }
    }

    #[test]
    fn a_pattern_selects_thin_lvs_but_never_thinarcs_own() {
        let lvs = pve();
        let p = LvPattern::parse("pve/vm-*-disk-*").unwrap();
        assert_eq!(
            names(p.select(&lvs, &[]).unwrap()),
            [
                "pve/vm-100-disk-0",
                "pve/vm-100-disk-1",
                "pve/vm-101-disk-0",
                "pve/vm-200-disk-0"
            ]
        );
        // The thinarc snapshot vm-100-disk-0-thinarc-... and the restored
        // vm-100-disk-9 match the glob by name: their tags keep them out.
        let all = LvPattern::parse("pve/*").unwrap();
        let got = names(all.select(&lvs, &[]).unwrap());
        assert_eq!(
            got,
            [
                "pve/base-102-disk-0",
                "pve/snap_vm-100-disk-0_before",
                "pve/vm-100-disk-0",
                "pve/vm-100-disk-1",
                "pve/vm-101-disk-0",
                "pve/vm-200-disk-0"
            ]
        );
        assert!(
            got.iter()
                .all(|n| !n.contains("thinarc") && n != "pve/vm-100-disk-9")
        );
        // Only thin LVs: not the pool, its hidden LVs, nor the plain LV root.
        assert!(!got.contains(&"pve/root".to_string()));
    }

    #[test]
    fn the_pool_form_and_exclude() {
        let lvs = pve();
        let p = LvPattern::parse("pve/data/*").unwrap();
        let exclude = [
            LvGlob::parse("snap_*").unwrap(),
            LvGlob::parse("vm-101-disk-0").unwrap(),
        ];
        assert_eq!(
            names(p.select(&lvs, &exclude).unwrap()),
            [
                "pve/base-102-disk-0",
                "pve/vm-100-disk-0",
                "pve/vm-100-disk-1"
            ]
        );
        let other = LvPattern::parse("pve/other/*").unwrap();
        assert_eq!(
            names(other.select(&lvs, &[]).unwrap()),
            ["pve/vm-200-disk-0"]
        );
        // A pattern that matches nothing selects nothing (the run warns).
        let none = LvPattern::parse("pve/data/ct-*").unwrap();
        assert!(none.select(&lvs, &[]).unwrap().is_empty());
        for pool in ["nope", "root"] {
            let e = LvPattern::parse(&format!("pve/{pool}/*"))
                .unwrap()
                .select(&lvs, &[])
                .unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("pve/{pool} is not a thin pool (pattern lvm:pve/{pool}/*)")
            );
        }
    }

    #[test]
    fn volume_names_from_a_pattern() {
        let p = LvPattern::parse("pve/data/vm-*").unwrap();
        assert!(p.matches_name("pve/vm-100-disk-0"));
        assert!(!p.matches_name("pve2/vm-100-disk-0"));
        assert!(!p.matches_name("pve/base-102-disk-0"));
        assert!(!p.matches_name("web.img"));
    }
}
