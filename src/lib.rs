//! thinarc: block-level backups of LVM thin volumes, block devices and image files as
//! chains of immutable, self-describing delta archives in a local or object-store
//! repository.
//!
//! # Floors
//!
//! Imports point down, never up or sideways between commands:
//!
//! ```text
//! main (the binary: src/main.rs)
//!  └ cli            argument parsing (clap) and printing; one file per subcommand
//!     └ nightly     the job floor: each command as an operator runs it (records,
//!                   alerts, lock errors, messages) and the nightly run
//!        └ commands backup, restore, prune, copy, verify, status, serve (none imports
//!                   another)
//!           └ point reading a point of a chain, and the merge engine
//!              └ repo, source, target   the repository; where blocks come from and go
//!                 └ format              the archive format: sans-IO, bytes in and out
//! ```
//!
//! Beside them sit small leaves every floor may use (`size`, `quote`, `progress`,
//! `buffers`, `logging`, `lvm`, `throttle`, `cleanup`, `hook`, `nbd`); [`config`] reads `thinarc.toml` into the
//! nouns of the floors below it, on a floor of its own between `nightly` and the
//! commands. Each module opens with what it owns and what it must not import; the
//! integration test `floors` holds the same table and fails on an import that points up.
//!
//! # The library and the binary
//!
//! `cli` is a module of the binary, not of this library: the library does not import
//! `clap` and prints nothing. An embedder calls the same functions the binary does:
//! [`nightly`] for a command as `thinarc` runs it, or a command module directly. The
//! rules a command must keep are inside the library: [`backup::backup`] and
//! [`backup::backup_lvm`] take the volume's lock themselves (a second backup of the
//! volume gets [`repo::LockError::Held`]), as [`prune::prune`], [`copy::copy`] and
//! [`nightly::repair`] do. (`clap` is still a dependency of the package: Cargo cannot
//! make a dependency binary-only inside one package, and splitting the binary into a
//! workspace member is not worth it; the library simply never names it.)
//!
//! A command lists each volume's catalog once and passes it down
//! ([`repo::Repository::catalog_listings`] counts the listings).

pub mod backup;
pub mod buffers;
pub mod cleanup;
pub mod config;
pub mod copy;
pub mod format;
pub mod hook;
pub mod logging;
pub mod lvm;
pub mod nbd;
pub mod nightly;
pub mod point;
pub mod progress;
pub mod prune;
pub mod quote;
pub mod repo;
pub mod restore;
pub mod serve;
pub mod size;
pub mod source;
pub mod status;
pub mod target;
pub mod throttle;
pub mod verify;
