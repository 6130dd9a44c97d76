//! All integration tests, built as one binary (see Cargo.toml `[[test]]`).

mod chain;
mod cli;
mod faults;
mod format;
mod lvm;
mod lvm_vm;
mod s3;
mod util;
