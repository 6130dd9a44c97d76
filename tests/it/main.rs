//! All integration tests, built as one binary (see Cargo.toml `[[test]]`).

mod chain;
mod cli;
mod copy;
mod faults;
mod format;
mod honest;
mod linger;
mod lock;
mod lvm;
mod lvm_vm;
mod merge;
mod prune;
mod prune_cli;
mod run;
mod s3;
mod since;
mod status;
mod throttle;
mod util;
mod verify;
