//! All integration tests, built as one binary (see Cargo.toml `[[test]]`).

mod chain;
mod cli;
mod faults;
mod format;
mod run;
mod s3;
mod status;
mod throttle;
mod util;
