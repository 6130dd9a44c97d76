//! thinarc: block-level backups of LVM thin volumes, block devices and image files as
//! chains of immutable, self-describing delta archives in a local or object-store
//! repository.
//!
//! Layers, with dependencies pointing one way: [`format`] (bytes in, bytes out) ←
//! [`repo`] (the repository on `object_store`: layout, publish, catalog, chains) ←
//! [`source`] (where blocks come from) and [`target`] (where restored blocks go) ←
//! [`backup`] and [`restore`] (the pipelines) ← `cli`.

pub mod backup;
pub mod cleanup;
pub mod config;
pub mod copy;
pub mod format;
pub mod logging;
pub mod lvm;
pub mod nightly;
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
