//! thinarc: block-level backups of LVM thin volumes, block devices and image files as
//! chains of immutable, self-describing delta archives in a local or object-store
//! repository.
//!
//! Floors, from the top down; imports point down, and no command imports another:
//!
//! - the binary: `main.rs` and `cli` (argument parsing and printing; not part of the
//!   library, which never names `clap`);
//! - the nightly job (`nightly`, to come from `src/cli/run.rs`);
//! - [`config`] (what the nightly job is told to do);
//! - the commands: [`backup`], [`restore`], [`prune`], [`verify`], [`copy`], [`status`];
//! - [`point`]: reading a point of a chain and rebuilding its archive;
//! - the nouns: [`repo`] (the repository on `object_store`), [`source`] (where blocks
//!   come from), [`target`] (where restored blocks go);
//! - tools: [`lvm`] (command wrappers), [`throttle`] (rate limits, low priority);
//! - ground: [`format`](mod@format) (bytes in, bytes out), [`size`], [`quote`], [`cleanup`],
//!   [`logging`], [`progress`].
//!
//! Each module opens with what it owns and what it must not import; the integration
//! test `floors` holds the same table and fails on an import that points up.

pub mod backup;
pub mod cleanup;
pub mod config;
pub mod copy;
pub mod format;
pub mod logging;
pub mod lvm;
pub mod point;
pub mod progress;
pub mod prune;
pub mod quote;
pub mod repo;
pub mod restore;
pub mod size;
pub mod source;
pub mod status;
pub mod target;
pub mod throttle;
pub mod verify;
