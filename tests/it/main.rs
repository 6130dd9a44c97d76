//! All integration tests, built as one binary (see Cargo.toml `[[test]]`).

mod campaign;
mod chain;
mod cli;
mod clock;
mod copy;
mod damage;
mod exit_codes;
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
mod s3_faults;
mod since;
mod space;
mod status;
mod throttle;
mod util;
mod verify;
