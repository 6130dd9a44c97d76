//! The configuration file of `thinarc run`: repositories, volumes, retention and
//! offline copies (TOML; the reference is `examples/thinarc.toml`).
//!
//! Everything is checked when the file is loaded, before any work starts: unknown
//! keys, wrong types, bad sizes, rates and durations, repository locations that do not
//! parse, references to repositories or volumes that are not defined. Sources and
//! retention tables go through the parsers `backup SOURCE` and `prune --keep-*` use
//! ([`SourceSpec::parse`], [`crate::prune::RetentionSpec::check`]). Each error names
//! the file, the line and column, and what is wrong.
//!
//! A volume's source may be a discovery pattern (`lvm:VG/GLOB`, `lvm:VG/POOL/GLOB`,
//! with `exclude` globs: [`Select::Pattern`]); the run expands it against `lvs`, each
//! thin LV becoming the volume named by its `VG/LV`. The pattern is checked here.
//!
//! Above the commands, below the nightly job that reads it: it turns the file into the
//! types the commands take (`prune`'s retention policy, `source`'s source specs).
//! Imports only `format`, `lvm`, `prune`, `quote`, `repo`, `size`, `source` and
//! `throttle`;
//! must not import another command module or `cli`.

mod value;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

/// A volume's or copy's retention: the type `prune`'s options build, by the same check.
pub use crate::prune::Retention;
pub use value::{Rate, Size};

use crate::format::BlockSize;
use crate::lvm::{LvGlob, LvPattern};
use crate::prune::RetentionSpec;
use crate::repo::{VolumeName, parse_location};
use crate::source::SourceSpec;
use crate::source::consistent::{
    DEFAULT_FREEZE_TIMEOUT, DEFAULT_HOOK_TIMEOUT, Freeze, FreezeTarget, Hooks,
};

/// Where `thinarc run` looks for its config without `--config`.
pub const DEFAULT_PATH: &str = "/etc/thinarc/thinarc.toml";
/// Default local state directory (result records).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/thinarc";

/// A config file that cannot be used: `FILE:LINE:COLUMN: what is wrong`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid or not consistent.
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
}

/// A loaded and checked config.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    /// Directory for local result records.
    pub state_dir: PathBuf,
    /// Command run (by `sh -c`) when a run had failures.
    pub on_failure: Option<String>,
    /// Prometheus textfile written at the end of a run.
    pub prometheus: Option<PathBuf>,
    /// Limit on source reads, bytes per second.
    pub read_limit: Option<u64>,
    /// Limit on uploads, bytes per second.
    pub upload_limit: Option<u64>,
    /// Worker threads.
    pub threads: Option<u16>,
    /// Nice 19 and idle I/O.
    pub low_priority: bool,
    /// Repositories by name.
    pub repositories: BTreeMap<String, String>,
    /// Where the key material of a repository comes from, by repository name (only
    /// repositories whose table names a source; the others use the command line's).
    pub keys: BTreeMap<String, KeySources>,
    /// Volumes, in the order they are backed up.
    pub volumes: Vec<Volume>,
    /// Offline copies, made after all backups and prunes.
    pub copies: Vec<Copy>,
}

/// One configured volume, or the volumes a pattern discovers.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    /// What to back up, and under which name.
    pub select: Select,
    /// Repository name (a key of [`Config::repositories`]).
    pub repository: String,
    /// Block size of a new volume.
    pub block_size: Option<BlockSize>,
    /// Refuse a snapshot above this thin-pool data usage (percent).
    pub max_pool_data: Option<u8>,
    /// Refuse a snapshot above this thin-pool metadata usage (percent).
    pub max_pool_metadata: Option<u8>,
    /// Retention applied by a prune after the backup; none = keep everything.
    pub retention: Option<Retention>,
    /// `pre_snapshot`, `post_snapshot` and `hook_timeout` (seconds).
    pub hooks: Hooks,
    /// `freeze` (`lvm:` sources only), `freeze_timeout` (seconds) and
    /// `freeze_required` (default true).
    pub freeze: Option<Freeze>,
}

/// What a `[[volumes]]` entry backs up.
#[derive(Debug, Clone, PartialEq)]
pub enum Select {
    /// One source, backed up as `name`.
    One {
        /// Volume name in the repository.
        name: VolumeName,
        /// `lvm:VG/LV`, or the absolute path of a block device or an image file.
        source: SourceSpec,
    },
    /// Every thin LV the pattern selects when the run starts, each backed up as the
    /// volume named by its `VG/LV`.
    Pattern(Discovery),
}

/// A discovery pattern and its exclusions.
#[derive(Debug, Clone, PartialEq)]
pub struct Discovery {
    /// `VG/GLOB` or `VG/POOL/GLOB`.
    pub pattern: LvPattern,
    /// LV-name globs left out.
    pub exclude: Vec<LvGlob>,
}

impl Discovery {
    /// The source as written: `lvm:VG/GLOB` or `lvm:VG/POOL/GLOB`.
    pub fn source(&self) -> String {
        format!("lvm:{}", self.pattern)
    }
}

impl Volume {
    /// The volume's name, or for a pattern its source (`lvm:VG/POOL/*`): what
    /// messages call it.
    pub fn label(&self) -> String {
        match &self.select {
            Select::One { name, .. } => name.to_string(),
            Select::Pattern(d) => d.source(),
        }
    }
}

/// One offline copy target.
#[derive(Debug, Clone, PartialEq)]
pub struct Copy {
    /// Source repository name.
    pub from: String,
    /// Destination location (path or URL).
    pub to: String,
    /// Volumes to copy: those named in the file, or when it names none, every volume
    /// of `from` with a name in the config (see `discovered`).
    pub volumes: Vec<VolumeName>,
    /// The file names no volumes: also copy every volume the run discovered for
    /// `from` by a pattern.
    pub discovered: bool,
    /// Write one full archive of the latest point instead of the chain.
    pub consolidate: bool,
    /// Retention applied to the destination after copying.
    pub retention: Option<Retention>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: Option<PathBuf>,
    on_failure: Option<String>,
    prometheus: Option<PathBuf>,
    rate_limit: Option<Rate>,
    read_limit: Option<Rate>,
    upload_limit: Option<Rate>,
    threads: Option<Spanned<u16>>,
    #[serde(default)]
    low_priority: bool,
    #[serde(default)]
    repositories: BTreeMap<String, RawRepository>,
    #[serde(default)]
    volumes: Vec<Spanned<RawVolume>>,
    #[serde(default)]
    copies: Vec<Spanned<RawCopy>>,
}

/// Where the key material of an encrypted repository comes from: the command line's
/// global options (and their environment variables), or a repository table of the
/// config (`password_file`, `password_command`, `identity_file`, `writer_key_file`).
/// The job floor reads them, once per command, when the command needs a key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySources {
    /// A file whose first line is the passphrase.
    pub password_file: Option<PathBuf>,
    /// A command (`sh -c`) that prints the passphrase.
    pub password_command: Option<String>,
    /// An age identity file that opens a recipient slot.
    pub identity_file: Option<PathBuf>,
    /// A writer key file (`thinarc key export-writer`): backups only.
    pub writer_key_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRepository {
    location: Spanned<String>,
    password_file: Option<PathBuf>,
    password_command: Option<String>,
    identity_file: Option<PathBuf>,
    writer_key_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVolume {
    name: Option<Spanned<String>>,
    source: Spanned<String>,
    repository: Option<Spanned<String>>,
    block_size: Option<Spanned<Size>>,
    max_pool_data: Option<Spanned<u8>>,
    max_pool_metadata: Option<Spanned<u8>>,
    retention: Option<Spanned<RetentionSpec>>,
    pre_snapshot: Option<String>,
    post_snapshot: Option<String>,
    hook_timeout: Option<Spanned<u64>>,
    freeze: Option<Spanned<String>>,
    freeze_timeout: Option<Spanned<u64>>,
    freeze_required: Option<bool>,
    exclude: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCopy {
    from: Option<Spanned<String>>,
    to: Spanned<String>,
    #[serde(default)]
    volumes: Vec<Spanned<String>>,
    #[serde(default)]
    consolidate: bool,
    retention: Option<Spanned<RetentionSpec>>,
}

/// Checks one value, keeping its span for the error.
struct Checker<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Checker<'_> {
    fn error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let before = &self.text[..span.start.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        ConfigError::Invalid {
            path: self.path.display().to_string(),
            line,
            column,
            message: message.into(),
        }
    }
}

impl Config {
    /// Reads and checks the config file at `path`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, line and problem.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Parses and checks config `text` read from `path`.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the line and problem.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let c = Checker { path, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            c.error(
                e.span().unwrap_or(0..0),
                crate::quote::bounded(&e.message().trim_end().replace('\n', " ")),
            )
        })?;
        let mut repositories = BTreeMap::new();
        let mut keys = BTreeMap::new();
        for (name, r) in &raw.repositories {
            parse_location(r.location.get_ref()).map_err(|e| {
                c.error(
                    r.location.span(),
                    format!(
                        "repository {name}: bad location {}: {e}",
                        crate::quote::excerpt(r.location.get_ref())
                    ),
                )
            })?;
            repositories.insert(name.clone(), r.location.get_ref().clone());
            let sources = KeySources {
                password_file: r.password_file.clone(),
                password_command: r.password_command.clone(),
                identity_file: r.identity_file.clone(),
                writer_key_file: r.writer_key_file.clone(),
            };
            if sources != KeySources::default() {
                keys.insert(name.clone(), sources);
            }
        }
        let repository = |given: Option<&Spanned<String>>, at: Range<usize>, what: &str| match given
        {
            Some(r) if repositories.contains_key(r.get_ref()) => Ok(r.get_ref().clone()),
            Some(r) => Err(c.error(
                r.span(),
                format!(
                    "{what}: no repository named {:?} (defined: {})",
                    r.get_ref(),
                    known(repositories.keys())
                ),
            )),
            None if repositories.len() == 1 => Ok(repositories.keys().next().expect("one").clone()),
            None if repositories.is_empty() => Err(c.error(
                at,
                format!("{what}: no repository defined (add a [repositories.NAME] table)"),
            )),
            None => Err(c.error(
                at,
                format!(
                    "{what}: say which repository (one of {})",
                    known(repositories.keys())
                ),
            )),
        };
        let retention = |r: &Option<Spanned<RetentionSpec>>, what: &str| match r {
            Some(r) => r
                .get_ref()
                .check()
                .map(Some)
                .map_err(|e| c.error(r.span(), format!("{what}: retention: {e}"))),
            None => Ok(None),
        };
        let percent = |v: &Option<Spanned<u8>>, key: &str| match v {
            Some(p) if !(1..=100).contains(p.get_ref()) => Err(c.error(
                p.span(),
                format!("{key} = {} is not a percentage from 1 to 100", p.get_ref()),
            )),
            Some(p) => Ok(Some(*p.get_ref())),
            None => Ok(None),
        };

        let mut volumes: Vec<Volume> = Vec::new();
        for v in &raw.volumes {
            let span = v.span();
            let v = v.get_ref();
            let select = select(&c, v)?;
            let what = match &select {
                Select::One { name, .. } => format!("volume {name}"),
                Select::Pattern(d) => format!("volume {}", d.source()),
            };
            let repository = repository(v.repository.as_ref(), span.clone(), &what)?;
            if let (Select::One { name, .. }, Some(at)) = (&select, &v.name)
                && volumes.iter().any(|o| {
                    matches!(&o.select, Select::One { name: n, .. } if n == name)
                        && o.repository == repository
                })
            {
                return Err(c.error(
                    at.span(),
                    format!("volume {name} is configured twice for repository {repository}"),
                ));
            }
            let block_size = match &v.block_size {
                Some(s) => Some(
                    u32::try_from(s.get_ref().0)
                        .ok()
                        .and_then(|b| BlockSize::new(b).ok())
                        .ok_or_else(|| {
                            c.error(
                                s.span(),
                                format!(
                                    "block_size = {} is not a power of two from 4K to 16M",
                                    s.get_ref().0
                                ),
                            )
                        })?,
                ),
                None => None,
            };
            let seconds = |v: &Option<Spanned<u64>>, key: &str, default: Duration| match v {
                Some(t) if *t.get_ref() == 0 => Err(c.error(
                    t.span(),
                    format!("{what}: {key} = 0: give the limit in seconds, at least 1"),
                )),
                Some(t) => Ok(Duration::from_secs(*t.get_ref())),
                None => Ok(default),
            };
            let hooks = Hooks {
                pre: v.pre_snapshot.clone(),
                post: v.post_snapshot.clone(),
                timeout: seconds(&v.hook_timeout, "hook_timeout", DEFAULT_HOOK_TIMEOUT)?,
            };
            let one_lv = match &select {
                Select::One { source, .. } => source.lv().is_some(),
                Select::Pattern(_) => false,
            };
            let freeze = match &v.freeze {
                Some(f) if matches!(select, Select::Pattern(_)) => {
                    return Err(c.error(
                        f.span(),
                        format!("{what}: freeze names the file system or guest of one LV, and a pattern selects many: give each such LV its own [[volumes]] entry (its name then wins over the pattern), or quiesce with pre_snapshot and post_snapshot ($THINARC_VOLUME says which LV)"),
                    ));
                }
                Some(f) if !one_lv => {
                    return Err(c.error(
                        f.span(),
                        format!("{what}: freeze applies to lvm:VG/LV sources only (it covers the snapshot; a file or device source has none: use pre_snapshot and post_snapshot)"),
                    ));
                }
                Some(f) => Some(Freeze {
                    target: FreezeTarget::parse(f.get_ref())
                        .map_err(|e| c.error(f.span(), format!("{what}: freeze: {e}")))?,
                    timeout: seconds(&v.freeze_timeout, "freeze_timeout", DEFAULT_FREEZE_TIMEOUT)?,
                    required: v.freeze_required.unwrap_or(true),
                }),
                None => None,
            };
            volumes.push(Volume {
                hooks,
                freeze,
                select,
                repository,
                block_size,
                max_pool_data: percent(&v.max_pool_data, "max_pool_data")?,
                max_pool_metadata: percent(&v.max_pool_metadata, "max_pool_metadata")?,
                retention: retention(&v.retention, &what)?,
            });
        }
        if volumes.is_empty() {
            return Err(c.error(
                0..0,
                "no volumes configured (add a [[volumes]] table with name and source, or a source pattern)",
            ));
        }

        let mut copies = Vec::new();
        for k in &raw.copies {
            let span = k.span();
            let k = k.get_ref();
            let what = format!("copy to {}", k.to.get_ref());
            parse_location(k.to.get_ref())
                .map_err(|e| c.error(k.to.span(), format!("{what}: bad location: {e}")))?;
            let from = repository(k.from.as_ref(), span, &what)?;
            if repositories.get(&from) == Some(k.to.get_ref()) {
                return Err(c.error(
                    k.to.span(),
                    format!("{what}: the destination is the source repository {from}"),
                ));
            }
            let mut names = Vec::new();
            for n in &k.volumes {
                let name =
                    VolumeName::new(n.get_ref()).map_err(|e| c.error(n.span(), e.to_string()))?;
                let configured = |v: &Volume| {
                    v.repository == from
                        && match &v.select {
                            Select::One { name: n, .. } => *n == name,
                            Select::Pattern(d) => d.pattern.matches_name(name.as_str()),
                        }
                };
                if !volumes.iter().any(configured) {
                    return Err(c.error(
                        n.span(),
                        format!(
                            "{what}: volume {name} is not configured for repository {from} (by name or by a source pattern)"
                        ),
                    ));
                }
                names.push(name);
            }
            let discovered = names.is_empty();
            if discovered {
                names = volumes
                    .iter()
                    .filter(|v| v.repository == from)
                    .filter_map(|v| match &v.select {
                        Select::One { name, .. } => Some(name.clone()),
                        Select::Pattern(_) => None,
                    })
                    .collect();
            }
            copies.push(Copy {
                from,
                to: k.to.get_ref().clone(),
                volumes: names,
                discovered,
                consolidate: k.consolidate,
                retention: retention(&k.retention, &what)?,
            });
        }

        if let Some(t) = &raw.threads
            && *t.get_ref() == 0
        {
            return Err(c.error(t.span(), "threads must be at least 1"));
        }
        Ok(Config {
            path: path.to_path_buf(),
            state_dir: raw
                .state_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            on_failure: raw.on_failure,
            prometheus: raw.prometheus,
            read_limit: raw.read_limit.or(raw.rate_limit).map(|r| r.0),
            upload_limit: raw.upload_limit.or(raw.rate_limit).map(|r| r.0),
            threads: raw.threads.map(|t| *t.get_ref()),
            low_priority: raw.low_priority,
            repositories,
            keys,
            volumes,
            copies,
        })
    }
}

/// What a `[[volumes]]` entry selects: one `name` and `source`, or a pattern source
/// (`lvm:VG/GLOB`, `lvm:VG/POOL/GLOB`) with its `exclude` globs and no `name`.
fn select(c: &Checker<'_>, v: &RawVolume) -> Result<Select, ConfigError> {
    let source = v.source.get_ref();
    let pattern = source
        .strip_prefix("lvm:")
        .filter(|s| LvPattern::is_pattern(s));
    let Some(pattern) = pattern else {
        let Some(name) = &v.name else {
            return Err(c.error(
                v.source.span(),
                format!(
                    "volume with source {}: give it a name (only a pattern source, lvm:VG/LV-PATTERN or lvm:VG/POOL/LV-PATTERN, names its volumes itself)",
                    crate::quote::excerpt(source)
                ),
            ));
        };
        let name =
            VolumeName::new(name.get_ref()).map_err(|e| c.error(name.span(), e.to_string()))?;
        let source = parse_source(source)
            .map_err(|e| c.error(v.source.span(), format!("volume {name}: {e}")))?;
        if let Some(x) = &v.exclude {
            return Err(c.error(
                x.span(),
                format!("volume {name}: exclude applies to a pattern source (lvm:VG/LV-PATTERN or lvm:VG/POOL/LV-PATTERN) only"),
            ));
        }
        return Ok(Select::One { name, source });
    };
    let quoted = crate::quote::excerpt(source);
    let pattern = LvPattern::parse(pattern)
        .map_err(|e| c.error(v.source.span(), format!("source {quoted}: {e}")))?;
    let what = format!("volume lvm:{pattern}");
    if let Some(name) = &v.name {
        return Err(c.error(
            name.span(),
            format!("{what}: a pattern source names each volume by its LV's VG/LV: remove name"),
        ));
    }
    let mut exclude = Vec::new();
    for x in v.exclude.iter().flat_map(|x| x.get_ref()) {
        let given = x.get_ref();
        let glob = match given.split_once('/') {
            Some((vg, lv)) if vg == pattern.vg => lv,
            Some(_) => {
                return Err(c.error(
                    x.span(),
                    format!(
                        "{what}: exclude {}: not in VG {} (exclude LV names of the pattern's VG, as GLOB or {}/GLOB)",
                        crate::quote::excerpt(given),
                        pattern.vg,
                        pattern.vg
                    ),
                ));
            }
            None => given.as_str(),
        };
        exclude.push(LvGlob::parse(glob).map_err(|e| {
            c.error(
                x.span(),
                format!("{what}: exclude {}: {e}", crate::quote::excerpt(given)),
            )
        })?);
    }
    Ok(Select::Pattern(Discovery { pattern, exclude }))
}

/// A volume source: `lvm:VG/LV` (by the same parser as `backup SOURCE`), or an absolute
/// path (a run does not depend on its working directory).
fn parse_source(source: &str) -> Result<SourceSpec, String> {
    let quoted = crate::quote::excerpt(source);
    match SourceSpec::parse(source) {
        Ok(SourceSpec::Path(p)) if !p.is_absolute() => Err(format!(
            "source {quoted}: use lvm:VG/LV or an absolute path to a device or image file"
        )),
        Ok(spec) => Ok(spec),
        Err(e) => Err(format!("source {quoted}: {e}")),
    }
}

/// `"a", "b"` for an error message.
fn known<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<String> = names.map(|n| format!("{n:?}")).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests;
