//! All integration tests, built as one binary (see Cargo.toml `[[test]]`).

mod chain;
mod cli;
mod copy;
mod faults;
mod format;
mod lock;
mod merge;
mod prune;
mod prune_cli;
mod s3;
mod util;
mod verify;
